"""ctypes bindings to vmcompute.dll and kernel32 for the Windows host steps.

Import this module only on Windows. `Vmcompute` is the VmcomputeBinding of hcs.py,
and `WindowsHostFiles` serves the layer readers through GetFileInformationByHandleEx and
BackupRead, opening every object with backup semantics and without following
reparse points, as hcsshim does.

NOTE: no test runs these bindings (the test hosts are Linux); hcs.py's sequence is
tested against a fake binding, and the argument layouts follow hcsshim's syscall
declarations without having been run here.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32", "ocilayer.windows.win32api is for Windows hosts only"

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from ctypes import wintypes  # noqa: E402
from typing import BinaryIO, cast  # noqa: E402

from ocilayer.errors import LayerError  # noqa: E402
from ocilayer.windows.fileinfo import BASIC_INFO_SIZE, FileBasicInfo  # noqa: E402
from ocilayer.windows.hcs import LayerDescriptor  # noqa: E402
from ocilayer.windows.hostfiles import LinkInfo  # noqa: E402

GENERIC_READ = 0x80000000
FILE_SHARE_READ = 0x1
OPEN_EXISTING = 3
FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
# FILE_INFO_BY_HANDLE_CLASS values.
FILE_BASIC_INFO_CLASS = 0
FILE_STANDARD_INFO_CLASS = 1
FILE_ID_INFO_CLASS = 0x12


class _DriverInfo(ctypes.Structure):
    _fields_ = [("Flavour", ctypes.c_int), ("HomeDir", wintypes.LPCWSTR)]


class _Guid(ctypes.Structure):
    _fields_ = [("Data", ctypes.c_ubyte * 16)]


class _LayerDescriptor(ctypes.Structure):
    _fields_ = [("LayerId", _Guid), ("Flags", wintypes.DWORD), ("Path", wintypes.LPCWSTR)]


class _StandardInfo(ctypes.Structure):
    _fields_ = [
        ("AllocationSize", ctypes.c_longlong),
        ("EndOfFile", ctypes.c_longlong),
        ("NumberOfLinks", wintypes.DWORD),
        ("DeletePending", ctypes.c_ubyte),
        ("Directory", ctypes.c_ubyte),
    ]


class _IdInfo(ctypes.Structure):
    _fields_ = [("VolumeSerialNumber", ctypes.c_ulonglong), ("FileId", ctypes.c_ubyte * 16)]


class Vmcompute:
    """The layer functions of vmcompute.dll, with the filter driver's driver info."""

    def __init__(self) -> None:
        self._dll = ctypes.WinDLL("vmcompute.dll")
        self._info = _DriverInfo(1, "")
        for name in (
            "ActivateLayer",
            "DeactivateLayer",
            "PrepareLayer",
            "UnprepareLayer",
            "ExportLayer",
            "NameToGuid",
        ):
            getattr(self._dll, name).restype = ctypes.c_long

    @staticmethod
    def _descriptors(parents: Sequence[LayerDescriptor]) -> ctypes.Array[_LayerDescriptor]:
        array = (_LayerDescriptor * len(parents))()
        for slot, parent in zip(array, parents, strict=True):
            slot.LayerId.Data[:] = list(parent.layer_id)
            slot.Flags = parent.flags
            slot.Path = parent.path
        return array

    def activate_layer(self, path: str) -> int:
        return int(self._dll.ActivateLayer(ctypes.byref(self._info), path))

    def deactivate_layer(self, path: str) -> int:
        return int(self._dll.DeactivateLayer(ctypes.byref(self._info), path))

    def prepare_layer(self, path: str, parents: Sequence[LayerDescriptor]) -> int:
        array = self._descriptors(parents)
        return int(self._dll.PrepareLayer(ctypes.byref(self._info), path, array, len(parents)))

    def unprepare_layer(self, path: str) -> int:
        return int(self._dll.UnprepareLayer(ctypes.byref(self._info), path))

    def export_layer(
        self, path: str, export_folder: str, parents: Sequence[LayerDescriptor]
    ) -> int:
        array = self._descriptors(parents)
        return int(
            self._dll.ExportLayer(
                ctypes.byref(self._info), path, export_folder, array, len(parents)
            )
        )

    def name_to_guid(self, name: str) -> tuple[int, bytes]:
        guid = _Guid()
        hresult = int(self._dll.NameToGuid(name, ctypes.byref(guid)))
        return hresult, bytes(guid.Data)


_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_kernel32.CreateFileW.restype = wintypes.HANDLE
_kernel32.CreateFileW.argtypes = [
    wintypes.LPCWSTR,
    wintypes.DWORD,
    wintypes.DWORD,
    ctypes.c_void_p,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.HANDLE,
]
_kernel32.GetFileInformationByHandleEx.argtypes = [
    wintypes.HANDLE,
    ctypes.c_int,
    ctypes.c_void_p,
    wintypes.DWORD,
]
_kernel32.BackupRead.argtypes = [
    wintypes.HANDLE,
    ctypes.c_void_p,
    wintypes.DWORD,
    ctypes.POINTER(wintypes.DWORD),
    wintypes.BOOL,
    wintypes.BOOL,
    ctypes.POINTER(ctypes.c_void_p),
]


def _fail(what: str, path: str) -> LayerError:
    error = ctypes.get_last_error()
    return LayerError(f"{what} failed for {path!r}: {ctypes.FormatError(error)} ({error})")


@contextlib.contextmanager
def _open(path: str) -> Iterator[int]:
    handle = _kernel32.CreateFileW(
        path,
        GENERIC_READ,
        FILE_SHARE_READ,
        None,
        OPEN_EXISTING,
        FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT,
        None,
    )
    if handle is None or handle == INVALID_HANDLE_VALUE:
        raise _fail("CreateFileW", path)
    try:
        yield handle
    finally:
        _kernel32.CloseHandle(handle)


def _query(
    handle: int, info_class: int, buffer: ctypes.Array[ctypes.c_char] | ctypes.Structure, path: str
) -> None:
    if not _kernel32.GetFileInformationByHandleEx(
        handle, info_class, ctypes.byref(buffer), ctypes.sizeof(buffer)
    ):
        raise _fail("GetFileInformationByHandleEx", path)


class _BackupReader(io.RawIOBase):
    """BackupRead over an open handle, as a readable stream."""

    def __init__(self, handle: int, include_security: bool, path: str) -> None:
        self._handle = handle
        self._security = include_security
        self._path = path
        self._context = ctypes.c_void_p()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = wintypes.DWORD()
        chunk = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        if not _kernel32.BackupRead(
            self._handle,
            chunk,
            len(buffer),
            ctypes.byref(count),
            False,
            self._security,
            ctypes.byref(self._context),
        ):
            raise _fail("BackupRead", self._path)
        return count.value

    def close(self) -> None:
        if self._context.value:
            count = wintypes.DWORD()
            _kernel32.BackupRead(
                self._handle, None, 0, ctypes.byref(count), True, False,
                ctypes.byref(self._context),
            )  # fmt: skip
            self._context = ctypes.c_void_p()
        super().close()


class WindowsHostFiles:
    """HostFiles served by the Win32 API."""

    def basic_info(self, path: str) -> FileBasicInfo:
        buffer = ctypes.create_string_buffer(BASIC_INFO_SIZE)
        with _open(path) as handle:
            _query(handle, FILE_BASIC_INFO_CLASS, buffer, path)
        return FileBasicInfo.unpack(buffer.raw)

    def link_info(self, path: str) -> LinkInfo:
        standard = _StandardInfo()
        identity = _IdInfo()
        with _open(path) as handle:
            _query(handle, FILE_STANDARD_INFO_CLASS, standard, path)
            _query(handle, FILE_ID_INFO_CLASS, identity, path)
        return LinkInfo(int(standard.NumberOfLinks), bytes(identity.FileId))

    def size(self, path: str) -> int:
        st = os.lstat(path)
        return 0 if stat.S_ISDIR(st.st_mode) else st.st_size

    @contextlib.contextmanager
    def open_backup(self, path: str, *, include_security: bool) -> Iterator[BinaryIO]:
        with _open(path) as handle:
            reader = _BackupReader(handle, include_security, path)
            try:
                yield cast(BinaryIO, io.BufferedReader(reader, 1 << 16))
            finally:
                reader.close()
