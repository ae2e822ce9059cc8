"""Windows layer import: a layer tar into a transport folder or a base layer folder.

The loop is hcsshim's writeLayerFromTar. A whiteout (`.wh.` base name) removes the
path it names, and a hardlink entry (type 1) adds a link. Anything else is added with
the FILE_BASIC_INFO of its header and a backup stream built from the header and from
the alternate data stream entries that follow it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from typing import BinaryIO, Protocol

from ocilayer.compression import open_decompressor
from ocilayer.errors import Cancelled, LayerError, show
from ocilayer.logs import get_logger
from ocilayer.tarformat.encoder import TarHeader
from ocilayer.windows.backupstream import BackupStreamWriter
from ocilayer.windows.backuptar import (
    SddlConverter,
    file_info_from_header,
    write_backup_stream_from_tar_file,
)
from ocilayer.windows.baselayer import BaseLayerWriter
from ocilayer.windows.export import WHITEOUT_PREFIX, PathArg, WindowsLayout
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.tarstream import TarInput
from ocilayer.windows.transport_writer import TransportWriter

log = get_logger("ocilayer")


class LayerWriter(Protocol):
    """Interface of a layer folder writer, as the import loop uses it."""

    def add(self, name: str, info: FileBasicInfo) -> BinaryIO: ...

    def add_link(self, name: str, target: str) -> None: ...

    def remove(self, name: str) -> None: ...

    def finish_entry(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def write_layer_from_tar(
    tar: TarInput,
    layer: LayerWriter,
    cancel: threading.Event | None = None,
    sddl_converter: SddlConverter | None = None,
) -> int:
    """Write every entry of `tar` into `layer` and return the bytes of file data written.

    The count is of regular file data only, alternate data streams excluded, as
    hcsshim counts it.
    """
    total = 0
    header = tar.next()
    while header is not None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("Windows layer import cancelled")
        current = header
        try:
            header, size = _write_entry(tar, current, layer, sddl_converter)
        except OSError as error:
            raise LayerError(
                f"entry {show(current.name)}: writing it into the layer folder failed: "
                f"{error.strerror or error}{_hint(error)}"
            ) from error
        total += size
    return total


def _write_entry(
    tar: TarInput, header: TarHeader, layer: LayerWriter, sddl_converter: SddlConverter | None
) -> tuple[TarHeader | None, int]:
    """Write the entry of `header`; return the next header and the file data size."""
    directory, _, base = header.name.rpartition(b"/")
    if base.startswith(WHITEOUT_PREFIX.encode()):
        deleted = base[len(WHITEOUT_PREFIX) :]
        layer.remove(_decode(directory + b"/" + deleted if directory else deleted))
        return tar.next(), 0
    if header.typeflag == b"1":
        layer.add_link(_decode(header.name), _decode(header.linkname))
        return tar.next(), 0
    name, size, info = file_info_from_header(header)
    sink = layer.add(name, info)
    following = write_backup_stream_from_tar_file(
        BackupStreamWriter(sink, source=name), tar, header, sddl_converter=sddl_converter
    )
    layer.finish_entry()
    return following, size


def _hint(error: OSError) -> str:
    """Return what to do about a failed write, after a semicolon, or nothing."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; free space on the target filesystem and import again"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "; import into a directory that this user may write"
    return ""


def _prepare_target(path: str) -> bool:
    """Make sure `path` is an empty directory; return whether it was created here."""
    try:
        os.mkdir(path)
        return True
    except FileNotFoundError:
        raise LayerError(
            f"cannot create the layer folder {path!r}: its parent directory does not exist; "
            "create it first"
        ) from None
    except FileExistsError:
        if not os.path.isdir(path) or os.listdir(path):
            raise LayerError(
                f"{path!r} exists and is not an empty directory; import into a new directory"
            ) from None
        return False


def import_windows_layer(
    reader: BinaryIO,
    path: PathArg,
    *,
    layout: WindowsLayout = WindowsLayout.TRANSPORT,
    cancel: threading.Event | None = None,
    sddl_converter: SddlConverter | None = None,
) -> int:
    """Import a Windows layer tar (plain, gzip or zstd) into a new layer folder at `path`.

    `layout` TRANSPORT writes the folder that vmcompute's ImportLayer reads, BASE the
    real files of a parentless layer. `sddl_converter` turns the legacy SDDL form of
    a security descriptor into binary (a Windows API call); without it such entries
    fail. Returns the bytes of file data written. On failure, a folder created here is
    removed; an existing empty folder is emptied again.

    Raises LayerError or UnsafePathError naming the entry, TarFormatError for a
    malformed tar, Cancelled when `cancel` is set.
    """
    target = os.fspath(path)
    created = _prepare_target(target)
    tar: TarInput | None = None
    layer: LayerWriter | None = None
    try:
        stream, _ = open_decompressor(reader)
        tar = TarInput(stream)
        if layout is WindowsLayout.TRANSPORT:
            layer = TransportWriter(target)
        else:
            layer = BaseLayerWriter(target)
        total = write_layer_from_tar(tar, layer, cancel, sddl_converter)
        layer.close()
    except BaseException:
        try:
            if layer is not None:
                layer.abort()
        except Exception as error:  # the first error is the one to report
            log.debug("aborting the layer folder %r after a failure: %s", target, error)
        finally:
            _remove_partial(target, created)
        raise
    finally:
        if tar is not None:
            tar.close()
    return total


def _remove_partial(target: str, created: bool) -> None:
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for name in os.listdir(target):
        full = os.path.join(target, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
