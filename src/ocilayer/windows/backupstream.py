"""The Win32 backup stream format that `BackupRead` writes and `BackupWrite` reads.

A backup stream is a sequence of streams, each a packed 20-byte little-endian header
(WIN32_STREAM_ID: stream id u32, attributes u32, size u64, name size u32), the
stream name in UTF-16LE without a terminator, for a sparse block an int64 offset
(counted in the header's size), then the payload. Nothing pads one stream from the
next. Both classes here stream: neither holds more than one read in memory.
"""

from __future__ import annotations

import enum
import io
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from ocilayer.errors import LayerError

_STREAM_HEADER = struct.Struct("<IIQI")
_OFFSET = struct.Struct("<q")
_SKIP_CHUNK = 1 << 20
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class StreamId(enum.IntEnum):
    """Stream ids of winbase.h (BACKUP_DATA and the rest)."""

    DATA = 1
    EA_DATA = 2
    SECURITY = 3
    ALTERNATE_DATA = 4
    LINK = 5
    PROPERTY_DATA = 6
    OBJECT_ID = 7
    REPARSE_DATA = 8
    SPARSE_BLOCK = 9
    TXFS_DATA = 10
    GHOSTED_FILE_EXTENTS = 11


class StreamAttribute(enum.IntFlag):
    """Stream attribute flags of winbase.h."""

    NORMAL = 0
    MODIFIED_WHEN_READ = 1
    CONTAINS_SECURITY = 2
    CONTAINS_PROPERTIES = 4
    SPARSE = 8
    CONTAINS_GHOSTED_FILE_EXTENTS = 16


class BackupStreamError(LayerError):
    """A backup stream is malformed, or a stream cannot be read or written as asked."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """The header of one stream. `size` counts the payload only, never a sparse offset.

    `id` is an int rather than a StreamId so that unknown ids pass through.
    `offset` is the file offset of a sparse block, 0 for every other stream.
    """

    id: int
    size: int = 0
    name: str = ""
    attributes: int = 0
    offset: int = 0


def decode_stream_name(raw: bytes) -> str:
    """Decode a UTF-16LE stream name, cut at its first NUL.

    Unpaired surrogates become U+FFFD, as Go's `syscall.UTF16ToString` makes them.
    """
    text = raw.decode("utf-16-le", "surrogatepass")
    text = text.partition("\x00")[0]
    return _LONE_SURROGATE.sub("\ufffd", text)


class BackupStreamReader:
    """Read the streams of a backup stream one by one.

    `origin` is the position of the backup stream in its file (4 in a transport file,
    after the attributes), and `source` names the file; both go into error messages.
    """

    def __init__(self, raw: BinaryIO, *, origin: int = 0, source: str = "backup stream") -> None:
        self._raw = raw
        self._origin = origin
        self._source = source
        self._position = 0
        self._remaining = 0
        self._end: int | None = None

    @property
    def position(self) -> int:
        """Bytes consumed so far, counted from the start of the backup stream."""
        return self._position

    def next(self) -> BackupHeader | None:
        """Skip what is left of the current stream and read the next header.

        Returns None at the end of the backup stream. Raises BackupStreamError when
        the input ends inside a header.
        """
        self._skip_rest()
        start = self._position
        fixed = self._read_exact(_STREAM_HEADER.size, allow_empty=True, what="stream header")
        if not fixed:
            return None
        stream_id, attributes, size, name_size = _STREAM_HEADER.unpack(fixed)
        if name_size % 2:
            raise self._error(start, f"stream name size {name_size} is odd; names are UTF-16")
        name = decode_stream_name(self._read_exact(name_size, what="stream name"))
        offset = 0
        if stream_id == StreamId.SPARSE_BLOCK:
            if size < _OFFSET.size:
                raise self._error(start, f"sparse block size {size} cannot hold its offset")
            (offset,) = _OFFSET.unpack(self._read_exact(_OFFSET.size, what="sparse offset"))
            size -= _OFFSET.size
        self._remaining = size
        return BackupHeader(stream_id, size, name, attributes, offset)

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` payload bytes of the current stream; b"" at its end."""
        if size < 0 or size > self._remaining:
            size = self._remaining
        if size == 0:
            return b""
        data = self._raw.read(size)
        if not data:
            raise self._error(self._position, f"{self._remaining} bytes of stream data missing")
        self._position += len(data)
        self._remaining -= len(data)
        return data

    def read_all(self) -> bytes:
        """Read the rest of the current stream."""
        parts = []
        while chunk := self.read(_SKIP_CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def rewind(self, position: int) -> None:
        """Go back to a `position` read earlier; needs a seekable input."""
        self._raw.seek(self._origin + position)
        self._position = position
        self._remaining = 0

    def _skip_rest(self) -> None:
        if self._remaining == 0:
            return
        seekable = False
        try:
            seekable = self._raw.seekable()
        except (AttributeError, OSError):
            seekable = False
        if seekable:
            if self._end is None:
                here = self._raw.tell()
                self._end = self._raw.seek(0, io.SEEK_END)
                self._raw.seek(here)
            end = self._end
            target = self._origin + self._position + self._remaining
            if end < target:
                raise self._error(end - self._origin, "input ends inside a stream")
            self._raw.seek(target)
            self._position += self._remaining
            self._remaining = 0
            return
        while self.read(_SKIP_CHUNK):
            pass

    def _read_exact(self, size: int, *, what: str, allow_empty: bool = False) -> bytes:
        data = self._raw.read(size) if size else b""
        while len(data) < size:
            more = self._raw.read(size - len(data))
            if not more:
                break
            data += more
        if len(data) != size and not (allow_empty and not data):
            raise self._error(self._position, f"input ends inside a {what}")
        self._position += len(data)
        return data

    def _error(self, position: int, reason: str) -> BackupStreamError:
        return BackupStreamError(
            f"{self._source}: invalid backup stream at offset {self._origin + position}: {reason}"
        )


class BackupStreamWriter:
    """Write streams one by one; each header must be followed by exactly its size in bytes."""

    def __init__(self, raw: BinaryIO, *, source: str = "backup stream") -> None:
        self._raw = raw
        self._source = source
        self._remaining = 0

    def write_header(self, header: BackupHeader) -> None:
        """Start a stream. Raises BackupStreamError if the previous one is incomplete."""
        self._check_complete()
        name = header.name.encode("utf-16-le", "surrogatepass")
        size = header.size
        if header.id == StreamId.SPARSE_BLOCK:
            size += _OFFSET.size
        self._raw.write(_STREAM_HEADER.pack(header.id, header.attributes, size, len(name)))
        self._raw.write(name)
        if header.id == StreamId.SPARSE_BLOCK:
            self._raw.write(_OFFSET.pack(header.offset))
        self._remaining = header.size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write payload bytes of the current stream."""
        if len(data) > self._remaining:
            raise BackupStreamError(
                f"{self._source}: {len(data)} bytes written where the stream has "
                f"{self._remaining} left"
            )
        self._raw.write(data)
        self._remaining -= len(data)
        return len(data)

    def close(self) -> None:
        """Check that the last stream was written in full."""
        self._check_complete()

    def _check_complete(self) -> None:
        if self._remaining:
            raise BackupStreamError(
                f"{self._source}: the previous stream is missing {self._remaining} bytes"
            )


def encode_stream(header: BackupHeader, payload: bytes = b"") -> bytes:
    """Encode one whole stream (header and payload) as bytes; handy for small streams."""
    if len(payload) != header.size:
        raise ValueError(f"payload is {len(payload)} bytes but the header says {header.size}")
    out = io.BytesIO()
    writer = BackupStreamWriter(out)
    writer.write_header(header)
    writer.write(payload)
    return out.getvalue()
