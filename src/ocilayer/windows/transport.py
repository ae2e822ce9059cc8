"""The transport folder that vmcompute's ExportLayer writes and ImportLayer reads: reader.

Layout, relative to the folder:

- `Files\\...`: one transport file per changed path. For a file it is the file
  itself; for a directory it is the sibling `<dir>.$wcidirs$` (the directory also
  exists, empty of metadata). A transport file contains the Win32 attributes as a
  little-endian u32, then the file's backup stream. Its own times are the path's times.
- `Hives\\...` and `UtilityVM\\...`: ordinary files and directories.
- `tombstones.txt`: the UTF-8 BOM and `Version 1.0` on the first line, then one deleted
  path per line, relative to `Files` with a leading `\\`.
- `Files.$wcidirs$` and `Hives.$wcidirs$`, which the reader ignores.

The reader walks the folder as hcsshim's legacyLayerReader does: pre-order with each
directory's names sorted bytewise, the deleted paths of a directory right after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from ocilayer.errors import LayerError
from ocilayer.windows.backupstream import BackupStreamReader, StreamAttribute, StreamId
from ocilayer.windows.hostfiles import HostFiles, PortableHostFiles
from ocilayer.windows.layeritem import LayerItem
from ocilayer.windows.saferoot import has_path_prefix

FILES = "Files"
HIVES = "Hives"
UTILITY_VM = "UtilityVM"
UTILITY_VM_FILES = "UtilityVM\\Files"
SYSTEM_DELTA = "Hives\\System_Delta"
RECYCLE_BIN = "Files\\$Recycle.Bin"
TOMBSTONES_FILE = "tombstones.txt"
TOMBSTONES_HEADER = b"\xef\xbb\xbfVersion 1.0"
DIRECTORY_SUFFIX = ".$wcidirs$"
ATTRIBUTES_SIZE = 4

# bufio.Scanner's default limit, which hcsshim's tombstones reader keeps.
_MAX_TOMBSTONE_LINE = 64 * 1024


def clean_windows_path(path: str) -> str:
    """Clean a relative Windows path as Go's `filepath.Clean` does on Windows."""
    parts: list[str] = []
    for part in path.replace("/", "\\").split("\\"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        else:
            parts.append(part)
    return "\\".join(parts) or "."


def parent_path(path: str) -> str:
    """Return the parent of a cleaned relative path, `.` for a top-level name."""
    cut = path.rfind("\\")
    return path[:cut] if cut > 0 else "."


def parse_tombstones(data: bytes, where: str = TOMBSTONES_FILE) -> dict[str, list[str]]:
    """Parse tombstones.txt into the deleted paths (`Files\\...`) grouped by parent directory.

    Lines end with LF and an optional CR before it. Raises LayerError for a wrong
    first line, an empty line or a line longer than 64 KiB.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line.removesuffix(b"\r") for line in lines]
    if not lines or lines[0] != TOMBSTONES_HEADER:
        raise LayerError(
            f"{where}: invalid tombstones file; the first line must be the UTF-8 BOM and "
            "'Version 1.0'"
        )
    grouped: dict[str, list[str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if len(line) > _MAX_TOMBSTONE_LINE:
            raise LayerError(f"{where}: line {number} is longer than 64 KiB")
        if not line:
            raise LayerError(f"{where}: line {number} is empty; each line names a deleted path")
        # The first character is the leading `\`, which is dropped unchecked.
        rest = line.decode("utf-8", "surrogateescape")[1:]
        deleted = clean_windows_path(FILES + "\\" + rest)
        grouped.setdefault(parent_path(deleted), []).append(deleted)
    return grouped


def format_tombstones(deleted: list[str]) -> bytes:
    """Format tombstones.txt for deleted paths under `Files\\`."""
    lines = [TOMBSTONES_HEADER]
    for path in deleted:
        lines.append(("\\" + path[len(FILES) + 1 :]).encode("utf-8", "surrogateescape"))
    return b"\n".join(lines) + b"\n"


def sorted_names(directory: str) -> list[str]:
    """List a directory's names sorted as bytes, the order hcsshim walks in."""
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise LayerError(f"cannot list {directory!r}: {error.strerror}") from error
    return sorted(names, key=os.fsencode)


class TransportReader:
    """Read a transport folder as the items of a layer, in hcsshim's order."""

    def __init__(self, root: str | os.PathLike[str], host: HostFiles | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.host = host or PortableHostFiles()

    def _host_path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("\\"))

    def items(self) -> Iterator[LayerItem]:
        """Yield the layer's items; the tombstones of a directory follow it at once."""
        tombstones_path = self._host_path(TOMBSTONES_FILE)
        try:
            with open(tombstones_path, "rb") as handle:
                tombstones = parse_tombstones(handle.read(), tombstones_path)
        except FileNotFoundError:
            raise LayerError(
                f"{tombstones_path!r} is missing; a transport folder always has one "
                "(is this a base layer folder?)"
            ) from None
        for name in sorted_names(self.root):
            yield from self._walk(name, tombstones)

    def _walk(self, name: str, tombstones: dict[str, list[str]]) -> Iterator[LayerItem]:
        full = self._host_path(name)
        st = os.lstat(full)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and name.casefold() == RECYCLE_BIN.casefold():
            return
        if name != TOMBSTONES_FILE and not name.endswith(DIRECTORY_SUFFIX):
            yield self._item(name, is_dir)
            for deleted in tombstones.get(name, []) if is_dir else []:
                yield LayerItem(deleted)
        if is_dir:
            for child in sorted_names(full):
                yield from self._walk(f"{name}\\{child}", tombstones)

    def _item(self, name: str, is_dir: bool) -> LayerItem:
        if has_path_prefix(name, FILES):
            return self._transport_item(name, is_dir)
        full = self._host_path(name)
        info = self.host.basic_info(full)
        if name in (FILES, HIVES):
            # The import leaves these two with arbitrary times, so System_Delta's stand in.
            delta = self._host_path(SYSTEM_DELTA)
            if not os.path.lexists(delta):
                raise LayerError(f"{delta!r} is missing; the times of Files and Hives come from it")
            attributes = info.attributes
            info = dataclasses.replace(self.host.basic_info(delta), attributes=attributes)
        info = dataclasses.replace(
            info, creation_time=info.last_write_time, last_access_time=info.last_write_time
        )

        def open_stream() -> contextlib.AbstractContextManager[BinaryIO]:
            return self.host.open_backup(full, include_security=False)

        return LayerItem(
            name,
            size=self.host.size(full),
            info=info,
            link=self.host.link_info(full),
            open_stream=open_stream,
        )

    def _transport_item(self, name: str, is_dir: bool) -> LayerItem:
        path = self._host_path(name) + (DIRECTORY_SUFFIX if is_dir else "")
        if not os.path.lexists(path):
            raise LayerError(f"{path!r} is missing: the metadata of directory {name!r}")
        info = self.host.basic_info(path)
        with open(path, "rb") as handle:
            prefix = handle.read(ATTRIBUTES_SIZE)
            if len(prefix) != ATTRIBUTES_SIZE:
                raise LayerError(
                    f"{path!r}: a transport file starts with 4 bytes of attributes; "
                    f"it has {len(prefix)} bytes"
                )
            size = 0 if is_dir else backup_stream_size(handle, path)
        info = dataclasses.replace(info, attributes=int.from_bytes(prefix, "little"))

        def open_stream() -> contextlib.AbstractContextManager[BinaryIO]:
            return _open_at(path, ATTRIBUTES_SIZE)

        return LayerItem(
            name,
            size=size,
            info=info,
            link=self.host.link_info(path),
            open_stream=open_stream,
            seekable=True,
            origin=ATTRIBUTES_SIZE,
        )


@contextlib.contextmanager
def _open_at(path: str, offset: int) -> Iterator[BinaryIO]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        yield handle


def backup_stream_size(handle: BinaryIO, where: str) -> int:
    """Return the file size that a transport file's backup stream gives, 0 without data.

    A sparse data stream of size 0 is followed by sparse blocks, and the size is the
    furthest end of a block, the terminator's offset included. hcsshim took this rule
    in September 2026; before it such a file was exported with size 0.
    """
    reader = BackupStreamReader(handle, origin=ATTRIBUTES_SIZE, source=where)
    while (header := reader.next()) is not None:
        if header.id != StreamId.DATA:
            continue
        if header.size or not header.attributes & StreamAttribute.SPARSE:
            return header.size
        size = 0
        while (block := reader.next()) is not None and block.id == StreamId.SPARSE_BLOCK:
            size = max(size, block.offset + block.size)
        return size
    return 0


def is_transport_folder(path: str | os.PathLike[str]) -> bool:
    """Return whether `path` looks like a transport folder (it has tombstones.txt)."""
    return os.path.isfile(os.path.join(os.fspath(path), TOMBSTONES_FILE))
