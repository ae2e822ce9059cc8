"""Convert a plain Linux layer (a tree or a tar) into a Windows layer tar.

This is what go-containerregistry's `crane` and `ko` do to run Linux-built files in
Windows images: every path moves under `Files/`, an empty `Files` and `Hives` come
first, and every header becomes PAX with a security descriptor. Beyond them:

- every header also gets `MSWINDOWS.fileattr`: FILE_ATTRIBUTE_DIRECTORY (16) for
  directories, FILE_ATTRIBUTE_ARCHIVE (32) for files, ARCHIVE and REPARSE_POINT (1056)
  for symbolic links, as NTFS gives new files of each kind;
- hardlink targets move under `Files/` too, so they still point into the layer;
- a parent directory missing from the input is written before its first child
  (mode 0755, time 0), because Windows import needs every parent;
- whiteouts stay whiteouts, with only their name, as hcsshim writes them.

Opaque whiteouts, devices and FIFOs have no Windows form and are rejected, and an
input that already has a `Files` top-level directory is rejected rather than nested.
The other header fields (mode, owner, times, link names, xattr records) are kept.
"""

from __future__ import annotations

import base64
import contextlib
import os
import posixpath
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ocilayer.compression import Compression, open_compressor, open_decompressor
from ocilayer.digest import Descriptor, HashingWriter
from ocilayer.entry import FileType
from ocilayer.errors import Cancelled, LayerError, show
from ocilayer.logs import get_logger
from ocilayer.sources.snapshot import SnapshotSource
from ocilayer.tarformat.encoder import TarHeader
from ocilayer.windows.backuptar import PAX_FILEATTR, PAX_RAWSD
from ocilayer.windows.fileinfo import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
)
from ocilayer.windows.tarstream import TarInput, TarWriter

log = get_logger("ocilayer")

# A self-relative security descriptor whose owner and group are BUILTIN\Users
# (S-1-5-32-545) and that has no DACL, so every user gets full access. It is the one
# go-containerregistry writes, so layers converted by either tool carry the same bytes.
DEFAULT_SECURITY_DESCRIPTOR = base64.b64decode(
    "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="
)

FILES_PREFIX = b"Files/"
_TOP_DIRECTORY_MODE = 0o555
_IMPLIED_DIRECTORY_MODE = 0o755
_WHITEOUT_PREFIX = b".wh."
_OPAQUE_MARKER = b".wh..wh..opq"
_COPY_CHUNK = 1 << 20

Reader = Callable[[int], bytes]
LinuxItem = tuple[TarHeader, Reader | None]


def _attributes(typeflag: bytes) -> int:
    if typeflag == b"5":
        return FILE_ATTRIBUTE_DIRECTORY
    if typeflag == b"2":
        return FILE_ATTRIBUTE_ARCHIVE | FILE_ATTRIBUTE_REPARSE_POINT
    return FILE_ATTRIBUTE_ARCHIVE


def _clean(name: bytes) -> bytes:
    cleaned = posixpath.normpath(b"/" + name).lstrip(b"/")
    return b"" if cleaned in (b"", b".") else cleaned


class _Converter:
    def __init__(self, tar: TarWriter, security_descriptor: bytes) -> None:
        self._tar = tar
        self._rawsd = base64.b64encode(security_descriptor)
        self._directories: set[bytes] = set()

    def windows_header(self, header: TarHeader, name: bytes) -> TarHeader:
        header.name = name
        header.format_pax = True
        # Records that the encoder derives from the fields (path, times) are ignored there.
        header.pax_records = dict(header.pax_records)
        header.pax_records[PAX_FILEATTR] = b"%d" % _attributes(header.typeflag)
        header.pax_records[PAX_RAWSD] = self._rawsd
        return header

    def write_top(self) -> None:
        for name in (b"Files", b"Hives"):
            header = TarHeader(name=name, typeflag=b"5", mode=_TOP_DIRECTORY_MODE)
            self._tar.write_header(self.windows_header(header, name))
        self._directories.add(b"Files")

    def write_parents(self, name: bytes) -> None:
        parent = posixpath.dirname(name)
        if not parent or parent in self._directories:
            return
        self.write_parents(parent)
        header = TarHeader(name=parent, typeflag=b"5", mode=_IMPLIED_DIRECTORY_MODE)
        self._tar.write_header(self.windows_header(header, parent))
        self._directories.add(parent)

    def convert(self, header: TarHeader, read: Reader | None) -> None:
        relative = _clean(header.name)
        if not relative:
            return
        if relative == b"Files" or relative.startswith(FILES_PREFIX):
            raise LayerError(
                f"{show(header.name)}: the input already has a top-level Files directory; it "
                "looks like a Windows layer, which needs no conversion"
            )
        name = FILES_PREFIX + relative
        base = posixpath.basename(relative)
        self.write_parents(name)

        if base == _OPAQUE_MARKER:
            raise LayerError(
                f"{show(header.name)}: opaque whiteouts have no Windows equivalent; export the "
                "layer without them (as a full layer)"
            )
        if base.startswith(_WHITEOUT_PREFIX):
            self._tar.write_header(TarHeader(name=name, format_pax=False))
            return

        if header.typeflag not in (b"0", b"1", b"2", b"5"):
            raise LayerError(
                f"{show(header.name)}: type {header.typeflag.decode()!r} (device or FIFO) has no "
                "Windows equivalent; remove it from the layer"
            )
        if header.typeflag == b"1":
            header.linkname = FILES_PREFIX + _clean(header.linkname)

        self._tar.write_header(self.windows_header(header, name))
        if header.typeflag == b"5":
            self._directories.add(name)
        elif header.typeflag == b"0" and read is not None:
            while chunk := read(_COPY_CHUNK):
                self._tar.write(chunk)


def _tar_items(tar: TarInput) -> Iterator[LinuxItem]:
    while (header := tar.next()) is not None:
        yield header, tar.read


def _tree_items(root: str) -> Iterator[LinuxItem]:
    """Yield the headers of a tree as containerd's OCI recipe writes them."""
    first_names: dict[object, bytes] = {}
    for entry in SnapshotSource(root).changes():
        if entry.type is FileType.SOCKET:
            log.warning("skipped socket %r, which a tar cannot hold", os.fsdecode(entry.path))
            continue
        header = TarHeader(
            name=entry.path,
            typeflag=entry.type.value,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=entry.size,
            mtime_ns=entry.mtime_ns - entry.mtime_ns % 1_000_000_000,
            linkname=entry.linkname,
            devmajor=entry.devmajor,
            devminor=entry.devminor,
            pax_records={b"SCHILY.xattr." + key: value for key, value in entry.xattrs.items()},
        )
        if entry.hardlinked:
            first = first_names.get(entry.link_key)
            if first is not None:
                header.typeflag, header.linkname, header.size = b"1", first, 0
                yield header, None
                continue
            first_names[entry.link_key] = entry.path
        if entry.type is not FileType.REGULAR:
            yield header, None
            continue
        with entry.open() as content:
            yield header, content.read


def convert_to_windows(
    writer: BinaryIO,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    security_descriptor: bytes = DEFAULT_SECURITY_DESCRIPTOR,
    cancel: threading.Event | None = None,
    compression: Compression = Compression.NONE,
    level: int | None = None,
    threads: int = 0,
    digests: bool = True,
) -> Descriptor:
    """Write a Linux layer as a Windows layer tar into `writer` and return its descriptor.

    `source` is a directory tree (every file an addition), a layer tar file, or a
    binary stream of a layer tar. A tar may be gzip or zstd compressed. Every entry
    gets `security_descriptor` (self-relative, binary). With `digests` false, no sha256
    is computed and both digests are None. Raises LayerError for input that has no
    Windows form and Cancelled when `cancel` is set.
    """
    blob = HashingWriter(writer, hashing=digests)
    compressor = open_compressor(blob, compression, level, threads)  # type: ignore[arg-type]
    tar_bytes = HashingWriter(compressor, hashing=digests)
    tar = TarWriter(tar_bytes)  # type: ignore[arg-type]
    converter = _Converter(tar, security_descriptor)
    try:
        with _open_source(source) as items:
            converter.write_top()
            for header, read in items:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("conversion to a Windows layer cancelled")
                converter.convert(header, read)
        tar.close()
    except BaseException:
        try:
            compressor.close()
        except Exception as error:  # the first error matters more
            log.debug("closing the compressor after a failure: %s", error)
        raise
    compressor.close()
    blob.flush()
    return Descriptor(compression.media_type, blob.digest, blob.size, tar_bytes.digest)


@contextlib.contextmanager
def _open_source(source: str | os.PathLike[str] | BinaryIO) -> Iterator[Iterator[LinuxItem]]:
    if not isinstance(source, str | os.PathLike):
        yield from _open_tar(source)
        return
    path = os.fspath(source)
    if os.path.isdir(path):
        yield _tree_items(path)
        return
    with open(path, "rb") as raw:
        yield from _open_tar(raw)


def _open_tar(raw: BinaryIO) -> Iterator[Iterator[LinuxItem]]:
    stream, _ = open_decompressor(raw)
    tar = TarInput(stream)
    try:
        yield _tar_items(tar)
    finally:
        tar.close()
