"""What the Windows layer readers need from the host's file system, on any OS.

A Windows host serves them with the Win32 API (`GetFileInformationByHandleEx`,
`BackupRead`). Other hosts keep what their file system cannot hold in extended
attributes of the file, and fall back to `lstat` when those are absent:

- `user.ocilayer.windows.basic_info`: the 40-byte FILE_BASIC_INFO (four FILETIMEs and
  the Win32 attributes). Without it the times come from lstat (the creation time from
  `st_birthtime` where the OS has it, else the mtime), and the attributes are
  FILE_ATTRIBUTE_DIRECTORY for a directory and FILE_ATTRIBUTE_ARCHIVE otherwise.
- `user.ocilayer.windows.security_descriptor`: the self-relative security descriptor.
- `user.ocilayer.windows.extended_attributes`: the FILE_FULL_EA_INFORMATION list.
- `user.ocilayer.windows.reparse_data`: the REPARSE_DATA_BUFFER of a reparse point.

The backup stream of a file on such a host is built from these in the order a
Windows BackupRead gives them: security descriptor, reparse data, data, then EAs.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

from ocilayer.errors import LayerError
from ocilayer.windows.backupstream import (
    BackupHeader,
    BackupStreamReader,
    BackupStreamWriter,
    StreamId,
    encode_stream,
)
from ocilayer.windows.fileinfo import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    FileBasicInfo,
    ns_to_filetime,
)

XATTR_BASIC_INFO = "user.ocilayer.windows.basic_info"
XATTR_SECURITY_DESCRIPTOR = "user.ocilayer.windows.security_descriptor"
XATTR_EXTENDED_ATTRIBUTES = "user.ocilayer.windows.extended_attributes"
XATTR_REPARSE_DATA = "user.ocilayer.windows.reparse_data"

_MISSING_XATTR = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """The link count of a file and the identity shared by all its names."""

    link_count: int
    file_id: Hashable


class HostFiles(Protocol):
    """File metadata and backup streams of objects on the host, by absolute path."""

    def basic_info(self, path: str) -> FileBasicInfo: ...

    def link_info(self, path: str) -> LinkInfo: ...

    def size(self, path: str) -> int: ...

    def open_backup(
        self, path: str, *, include_security: bool
    ) -> contextlib.AbstractContextManager[BinaryIO]: ...


def _get_xattr(target: str | int, name: str) -> bytes | None:
    if sys.platform == "win32":
        raise LayerError("extended attributes stand in for Windows metadata only off Windows")
    try:
        return os.getxattr(target, name, follow_symlinks=False)
    except OSError as error:
        if error.errno in _MISSING_XATTR:
            return None
        raise


def set_xattr(target: int, name: str, value: bytes, where: str) -> None:
    """Store one metadata attribute on an open file; errors name the file and the attribute."""
    if sys.platform == "win32":
        # TODO: write layer folders on Windows hosts with SetFileInformationByHandle and
        # BackupWrite; until then import runs on other hosts only.
        raise LayerError(
            f"{where}: writing Windows layer folders on a Windows host is not supported"
        )
    try:
        os.setxattr(target, name, value)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise LayerError(
                f"{where}: the file system does not support user extended attributes, "
                "which hold Windows metadata on this host; write the layer to another "
                "file system (ext4, xfs, btrfs or tmpfs)"
            ) from error
        raise LayerError(f"{where}: cannot store {name}: {error.strerror}") from error


def _lstat(path: str) -> os.stat_result:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise LayerError(
            f"{path!r} is a symbolic link of the host; a Windows layer folder on this host "
            "keeps reparse points in the user.ocilayer.windows.reparse_data attribute"
        )
    return st


class PortableHostFiles:
    """HostFiles for hosts other than Windows, from lstat and extended attributes."""

    def basic_info(self, path: str) -> FileBasicInfo:
        st = _lstat(path)
        stored = _get_xattr(path, XATTR_BASIC_INFO)
        if stored is not None:
            try:
                return FileBasicInfo.unpack(stored)
            except ValueError as error:
                raise LayerError(f"{path!r}: invalid {XATTR_BASIC_INFO}: {error}") from error
        attributes = FILE_ATTRIBUTE_ARCHIVE
        if stat.S_ISDIR(st.st_mode):
            attributes = FILE_ATTRIBUTE_DIRECTORY
        if _get_xattr(path, XATTR_REPARSE_DATA) is not None:
            attributes |= FILE_ATTRIBUTE_REPARSE_POINT
        birth_ns = getattr(st, "st_birthtime_ns", st.st_mtime_ns)
        return FileBasicInfo(
            creation_time=ns_to_filetime(birth_ns),
            last_access_time=ns_to_filetime(st.st_atime_ns),
            last_write_time=ns_to_filetime(st.st_mtime_ns),
            change_time=ns_to_filetime(st.st_ctime_ns),
            attributes=attributes,
        )

    def link_info(self, path: str) -> LinkInfo:
        st = _lstat(path)
        # NTFS counts one link for a directory, whatever its subdirectories.
        count = 1 if stat.S_ISDIR(st.st_mode) else st.st_nlink
        return LinkInfo(count, (st.st_dev, st.st_ino))

    def size(self, path: str) -> int:
        st = _lstat(path)
        return 0 if stat.S_ISDIR(st.st_mode) else st.st_size

    @contextlib.contextmanager
    def open_backup(self, path: str, *, include_security: bool) -> Iterator[BinaryIO]:
        st = _lstat(path)
        head = b""
        tail = b""
        security = _get_xattr(path, XATTR_SECURITY_DESCRIPTOR) if include_security else None
        if security:
            head += encode_stream(BackupHeader(StreamId.SECURITY, len(security)), security)
        reparse = _get_xattr(path, XATTR_REPARSE_DATA)
        if reparse:
            head += encode_stream(BackupHeader(StreamId.REPARSE_DATA, len(reparse)), reparse)
        extended = _get_xattr(path, XATTR_EXTENDED_ATTRIBUTES)
        if extended:
            tail = encode_stream(BackupHeader(StreamId.EA_DATA, len(extended)), extended)
        if not stat.S_ISREG(st.st_mode):
            yield io.BytesIO(head + tail)
            return
        with open(path, "rb") as content:
            size = os.fstat(content.fileno()).st_size
            head += _data_header(size)
            yield cast(BinaryIO, io.BufferedReader(_Concatenated(head, content, size, tail, path)))


def _data_header(size: int) -> bytes:
    """Encode the header of a data stream of `size` bytes, without the data."""
    out = io.BytesIO()
    BackupStreamWriter(out).write_header(BackupHeader(StreamId.DATA, size))
    return out.getvalue()


class _Concatenated(io.RawIOBase):
    """A read-only stream of `head`, `size` bytes of `content`, then `tail`."""

    def __init__(self, head: bytes, content: BinaryIO, size: int, tail: bytes, path: str) -> None:
        self._parts: list[bytes | tuple[BinaryIO, int]] = [head, (content, size), tail]
        self._path = path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._parts:
            part = self._parts[0]
            if isinstance(part, bytes):
                count = min(len(buffer), len(part))
                buffer[:count] = part[:count]
                if count == len(part):
                    self._parts.pop(0)
                else:
                    self._parts[0] = part[count:]
                if count:
                    return count
                continue
            content, left = part
            if left == 0:
                self._parts.pop(0)
                continue
            data = content.read(min(len(buffer), left, _COPY_CHUNK))
            if not data:
                raise LayerError(
                    f"{self._path!r} shrank while it was being read; "
                    "export from a layer that is not in use"
                )
            buffer[: len(data)] = data
            self._parts[0] = (content, left - len(data))
            return len(data)
        return 0


def restore_backup(fd: int, stream: BinaryIO, *, include_security: bool, where: str) -> None:
    """Apply a backup stream to an open file or directory, as BackupWrite would.

    The data goes into the file, and the security descriptor (only with
    `include_security`), EAs and reparse data into the attributes named above.
    Raises LayerError for an alternate data stream or any other stream this host
    cannot hold.
    """
    reader = BackupStreamReader(stream, source=where)
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    while (header := reader.next()) is not None:
        if header.id == StreamId.DATA:
            if is_dir and header.size:
                raise LayerError(f"{where}: a directory cannot hold a data stream")
            while chunk := reader.read(_COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        elif header.id == StreamId.SECURITY:
            if include_security:
                set_xattr(fd, XATTR_SECURITY_DESCRIPTOR, reader.read_all(), where)
        elif header.id == StreamId.EA_DATA:
            set_xattr(fd, XATTR_EXTENDED_ATTRIBUTES, reader.read_all(), where)
        elif header.id == StreamId.REPARSE_DATA:
            set_xattr(fd, XATTR_REPARSE_DATA, reader.read_all(), where)
        else:
            kind = "alternate data stream" if header.id == StreamId.ALTERNATE_DATA else "stream"
            raise LayerError(
                f"{where}: {kind} {header.name or header.id!r} can only be stored on a Windows "
                "host or inside a transport file (under Files\\)"
            )
