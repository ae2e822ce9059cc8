"""Tar streams as Go's `archive/tar` writes and reads them, for the Windows recipe.

`TarWriter` keeps Go's bookkeeping of entry sizes: a regular entry must get exactly
its size in data before the next header or the end of the archive, and header-only
types (links, directories, devices) get none. `TarInput` reads a tar stream in order
with Python's `tarfile` and hands out the same `TarHeader` the encoder takes, with the
PAX records as raw bytes and the times in nanoseconds.
"""

from __future__ import annotations

import struct
import tarfile
from typing import IO, BinaryIO

from ocilayer.errors import TarFormatError, show
from ocilayer.tarformat.encoder import (
    END_OF_ARCHIVE,
    TarHeader,
    data_padding,
    encode_header,
)
from ocilayer.windows.fileinfo import parse_pax_time

_BUFFER_SIZE = 1 << 20
_ZEROS = bytes(1 << 16)
# Types whose entries carry no data, whatever their size field contains (isHeaderOnlyType).
_HEADER_ONLY_TYPES = frozenset([b"1", b"2", b"3", b"4", b"5", b"6"])


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class TarWriter:
    """Write entries to `out` with the exact bytes and size checks of Go's tar writer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buffer = bytearray()
        self._name = b""
        self._remaining = 0
        self._padding = 0
        self.entries_written = 0

    def write_header(self, header: TarHeader) -> None:
        """Finish the previous entry and write the header blocks of the next one."""
        self._finish_entry()
        self._emit(encode_header(header))
        self._name = header.name
        self._remaining = 0 if header.typeflag in _HEADER_ONLY_TYPES else header.size
        self._padding = len(data_padding(self._remaining))
        self.entries_written += 1

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write data of the current entry; more than its size raises TarFormatError."""
        if len(data) > self._remaining:
            raise TarFormatError(
                f"{show(self._name)}: {len(data)} bytes of data where only {self._remaining} "
                "remain of the entry size (write too long)"
            )
        self._remaining -= len(data)
        self._emit(data)

    def write_zeros(self, count: int) -> None:
        """Write `count` zero bytes of data, for the holes of a sparse file."""
        while count > 0:
            chunk = min(count, len(_ZEROS))
            self.write(memoryview(_ZEROS)[:chunk])
            count -= chunk

    def close(self) -> None:
        """Finish the last entry, write the two end-of-archive blocks and flush."""
        self._finish_entry()
        self._emit(END_OF_ARCHIVE)
        self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._out.write(self._buffer)
            self._buffer = bytearray()

    def _finish_entry(self) -> None:
        if self._remaining:
            raise TarFormatError(
                f"{show(self._name)}: missed writing {self._remaining} bytes of the entry data; "
                "the size in the header does not match the data"
            )
        self._emit(bytes(self._padding))
        self._padding = 0

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= _BUFFER_SIZE:
            self.flush()


def header_from_member(member: tarfile.TarInfo) -> TarHeader:
    """Convert a member read by `tarfile` into a TarHeader as Go's reader fills one.

    A type flag of NUL becomes `0`. For a name ending in `/`, `tarfile` has already
    made it `5` and dropped the slash, as it drops it from every directory name. Times come from
    the PAX records at full precision when present, else from the header (seconds).
    """
    records = {_raw(key): _raw(value) for key, value in member.pax_headers.items()}
    name = _raw(member.name)
    typeflag = member.type
    if typeflag == tarfile.AREGTYPE:
        typeflag = b"5" if name.endswith(b"/") else b"0"
    try:
        mtime_ns = (
            parse_pax_time(records[b"mtime"])
            if b"mtime" in records
            else int(member.mtime) * 1_000_000_000
        )
        atime_ns = parse_pax_time(records[b"atime"]) if b"atime" in records else None
        ctime_ns = parse_pax_time(records[b"ctime"]) if b"ctime" in records else None
    except ValueError as error:
        raise TarFormatError(f"{show(name)}: {error}") from error
    return TarHeader(
        name=name,
        typeflag=typeflag,
        mode=member.mode,
        uid=member.uid,
        gid=member.gid,
        size=member.size,
        mtime_ns=mtime_ns,
        atime_ns=atime_ns,
        ctime_ns=ctime_ns,
        linkname=_raw(member.linkname),
        uname=_raw(member.uname),
        gname=_raw(member.gname),
        devmajor=member.devmajor,
        devminor=member.devminor,
        pax_records=records,
    )


# tarfile raises ValueError for numbers past Python's digit limit, struct.error for
# oversized base-256 fields, and OverflowError for times past the platform's range.
# NOTE: tarfile ignores a PAX size or uid it cannot parse instead of raising; the
# Linux reader (ocilayer.tarformat.reader) rejects those.
_READ_ERRORS = (tarfile.TarError, ValueError, OverflowError, struct.error)


def _describe(error: Exception) -> str:
    if isinstance(error, ValueError | OverflowError | struct.error):
        return "a header number is malformed or does not fit 64 bits"
    return str(error)


class TarInput:
    """Read a tar stream entry by entry: `next()` for the header, `read()` for its data."""

    def __init__(self, raw: BinaryIO) -> None:
        try:
            # The archive lives as long as this reader; close() closes it.
            self._archive = tarfile.open(  # noqa: SIM115
                fileobj=raw, mode="r|", encoding="utf-8", errors="surrogateescape"
            )
        except _READ_ERRORS as error:
            raise TarFormatError(f"invalid tar stream: {_describe(error)}") from error
        self._data: IO[bytes] | None = None
        self._name = b""
        self._remaining = 0

    def next(self) -> TarHeader | None:
        """Skip the rest of the current entry and return the next header, or None at the end."""
        while self.read(_BUFFER_SIZE):
            pass
        try:
            member = self._archive.next()
        except _READ_ERRORS as error:
            message = f"invalid tar stream after {show(self._name)}: {_describe(error)}"
            raise TarFormatError(message) from error
        if member is None:
            self._data = None
            return None
        header = header_from_member(member)
        self._name = header.name
        self._data = self._archive.extractfile(member) if member.isreg() else None
        self._remaining = member.size if self._data is not None else 0
        return header

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` bytes of the current entry's data; b"" at its end."""
        if self._data is None or self._remaining == 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        try:
            data = self._data.read(size)
        except (tarfile.TarError, OSError) as error:
            raise TarFormatError(
                f"{show(self._name)}: cannot read the entry data: {error}"
            ) from error
        if not data:
            raise TarFormatError(f"{show(self._name)}: the tar stream ends inside the entry data")
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._archive.close()
