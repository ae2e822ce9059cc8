"""Tar source: an existing layer tar read back as entries, to recompress or relocate it.

Whiteouts and opaque markers come back as DELETE and OPAQUE entries, so the tar
writer writes them in its own fixed form. With `prefix`, every name moves under that
directory, hardlink targets included, whatever record (ustar field or PAX `path`)
held the name in the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from ocilayer.compression import open_decompressor
from ocilayer.entry import ChangeKind, Entry, FileType
from ocilayer.sources.snapshot import _relative
from ocilayer.tarformat.reader import TarReader
from ocilayer.xattrs import CAPABILITY, XattrPolicy, is_host_specific


class TarSource:
    """Layer reader over a layer tar stream (plain, gzip or zstd, detected from its bytes).

    Parent directories that the input lacks are written as mode 0755, owner 0:0,
    mtime 0, the way appliers create implied parents.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        prefix: bytes = b"",
        xattrs: XattrPolicy = XattrPolicy.ALL,
    ) -> None:
        tar_stream, _ = open_decompressor(stream)
        self._reader = TarReader(tar_stream)
        self.prefix = _relative(prefix) if prefix else b""
        self.xattrs = xattrs
        # Directory entries seen so far, for parent lookups; only directories are kept.
        self._directories: dict[bytes, Entry] = {}

    def changes(self) -> Iterator[Entry]:
        for entry in self._reader:
            entry = self._relocate(entry)
            if entry.type is FileType.DIRECTORY and entry.kind is ChangeKind.ADD:
                self._directories[entry.path] = entry
            yield entry

    def lookup(self, path: bytes) -> Entry:
        known = self._directories.get(path)
        if known is not None:
            return known
        return Entry(path=path, kind=ChangeKind.MODIFY, type=FileType.DIRECTORY, mode=0o755)

    def _relocate(self, entry: Entry) -> Entry:
        changes: dict[str, Any] = {}
        if self.prefix:
            changes["path"] = _join(self.prefix, entry.path)
            if entry.type is FileType.HARDLINK:
                changes["linkname"] = _join(self.prefix, entry.linkname)
        if entry.xattrs:
            changes["xattrs"] = {
                name: value for name, value in entry.xattrs.items() if self._keeps(name)
            }
        if not changes:
            return entry
        return entry._replace(**changes)

    def _keeps(self, name: bytes) -> bool:
        if self.xattrs is XattrPolicy.NONE:
            return False
        if self.xattrs is XattrPolicy.CAPABILITY:
            return name == CAPABILITY
        return not is_host_specific(name)


def _join(prefix: bytes, path: bytes) -> bytes:
    return prefix + b"/" + path if path else prefix
