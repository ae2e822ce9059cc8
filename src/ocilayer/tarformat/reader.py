"""Streaming tar reader: a layer tar stream in, entries out.

The reader parses headers itself instead of using `tarfile`, so that names stay raw
bytes, times keep their nanoseconds, an error can give the stream offset, and memory
stays flat however many entries the layer has. It reads the formats that layer
producers write:

- USTAR, with the prefix field, and old V7 headers.
- PAX extended headers. Their `path`, `linkpath`, `size`, `uid`, `gid`, `mtime`,
  `atime` and `ctime` records win over the header fields, whatever those hold.
  `SCHILY.xattr.*` and `LIBARCHIVE.xattr.*` records become xattrs. PAX global
  headers are skipped, as containerd and moby skip them.
- GNU long names and long link names, and base-256 numeric fields.

Numbers must fit in a signed 64-bit integer, as in Go's reader: a larger base-256
field or PAX `size`, `uid`, `gid`, `mtime`, `atime` or `ctime` record raises
TarFormatError, so containerd cannot apply such a layer either. Times within that
range are kept as they are, before 1970 too. The applier sets them, and Linux then
clamps a time to the range of the target filesystem (ext4: 1901 to 2446).

Where the formats leave a choice, the reader follows Go's `archive/tar`, which
containerd and docker read layers with: hardlinks, symlinks, devices, FIFOs and
directories have no data whatever their size field contains, and one zero block ends
the archive. Unlike Go, the reader rejects a stream that stops at a header boundary
without the zero blocks, because a truncated download would otherwise apply as a
shorter layer. A stream of zero bytes is the empty layer.

Entry paths follow the entry record's rules (see `ocilayer.entry`): a leading `/`
and `.` components are dropped, so `/etc/passwd` and `./etc/passwd` both name
`etc/passwd` under the layer root. A `..` component removes the one before it, and a
name whose `..` would climb above the root raises UnsafePathError. Hardlink targets
are cleaned the same way; symlink targets are kept verbatim.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from ocilayer.entry import ChangeKind, Entry, FileType, new_entry
from ocilayer.errors import TarFormatError, UnsafePathError, show
from ocilayer.streams import IntoReader
from ocilayer.tarformat.encoder import byte_sum

BLOCK_SIZE = 512
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"

# Go's reader caps PAX headers and GNU long names at 1 MiB; a bigger one is an attack
# on memory rather than a real name.
MAX_SPECIAL_SIZE = 1 << 20

# Go's reader parses numbers into int64 and rejects a header whose value does not fit.
MAX_INT64 = (1 << 63) - 1
_MAX_INT64_DIGITS = len(str(MAX_INT64))
# Error messages cut names and numbers longer than these to this many bytes.
_MAX_SHOWN_NUMBER = 24

_ZERO_BLOCK = bytes(BLOCK_SIZE)
# The header fields, name to prefix, as struct unpacks them (typeflag is one byte).
_USTAR_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s")
# The checksum is computed with its own eight bytes taken as spaces.
_CHECKSUM_SPACES = 8 * 0x20
_COPY_CHUNK = 1 << 20
_PAX_TIME = re.compile(rb"^(-?)(\d+)(?:\.(\d*))?$")

_TYPES = {
    b"0": FileType.REGULAR,
    b"\x00": FileType.REGULAR,
    # Contiguous files are regular files on every system but a few old Unixes.
    b"7": FileType.REGULAR,
    b"1": FileType.HARDLINK,
    b"2": FileType.SYMLINK,
    b"3": FileType.CHAR,
    b"4": FileType.BLOCK,
    b"5": FileType.DIRECTORY,
    b"6": FileType.FIFO,
    # A GNU incremental dump directory: a directory whose data lists its names.
    b"D": FileType.DIRECTORY,
}
_PAX_HEADER = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONG_NAME = b"L"
_GNU_LONG_LINK = b"K"
_GNU_VOLUME = b"V"
_GNU_SPARSE = b"S"


class Readable(Protocol):
    """A stream the reader can read from: a file, a decompressor, a hashing reader."""

    def read(self, size: int = -1, /) -> bytes: ...


def clean_entry_path(raw: bytes) -> bytes:
    """Clean a tar name into an entry path relative to the layer root.

    Raises UnsafePathError when a `..` component would climb above the root.
    """
    if (
        raw[:1] not in (b"", b"/", b".")
        and raw[-1:] != b"/"
        and b"/." not in raw
        and b"//" not in raw
    ):
        return raw  # already clean: no empty, `.` or `..` component
    parts: list[bytes] = []
    for component in raw.split(b"/"):
        if component in (b"", b"."):
            continue
        if component == b"..":
            if not parts:
                raise UnsafePathError(f"entry {show(raw)}: '..' climbs above the layer root")
            parts.pop()
            continue
        parts.append(component)
    return b"/".join(parts)


class _Header:
    """The fields of one entry after PAX records and GNU long names are applied."""

    __slots__ = (
        "atime_ns", "ctime_ns", "devmajor", "devminor", "gid", "linkname", "mode",
        "mtime_ns", "name", "offset", "size", "typeflag", "uid", "xattrs",
    )  # fmt: skip

    def __init__(
        self,
        offset: int,
        name: bytes,
        typeflag: bytes,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        linkname: bytes,
        devmajor: int,
        devminor: int,
    ) -> None:
        self.offset = offset
        self.name = name
        self.typeflag = typeflag
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.atime_ns: int | None = None
        self.ctime_ns: int | None = None
        self.xattrs: dict[bytes, bytes] = {}


class _Pushback:
    """A stream with a reusable buffer of bytes read ahead, served before the rest.

    `buffer[start:end]` holds bytes read from `stream` that nobody has read yet. The
    buffer is filled with `readinto` where the stream has it, so reading ahead
    allocates nothing once the buffer has its size.
    """

    __slots__ = ("buffer", "end", "into", "start", "stream", "view")

    def __init__(self, stream: Readable) -> None:
        self.stream = stream
        self.into = IntoReader(stream)
        self.buffer = bytearray()
        self.view = memoryview(self.buffer)
        self.start = self.end = 0

    def read(self, size: int = -1, /) -> bytes:
        start, end = self.start, self.end
        if start == end:
            return self.stream.read(size)
        stop = end if size < 0 else min(end, start + size)
        data = self.view[start:stop].tobytes()
        self.start = stop
        if size < 0:
            return data + self.stream.read()
        if len(data) < size:
            return data + self.stream.read(size - len(data))
        return data

    def readinto(self, target: memoryview) -> int:
        """Read into `target`: the bytes read ahead first, then straight from the stream."""
        start, end = self.start, self.end
        if start == end:
            return self.into(target)
        count = min(len(target), end - start)
        target[:count] = self.view[start : start + count]
        self.start = start + count
        return count

    def fill(self, size: int) -> tuple[memoryview, int]:
        """Make at least `size` bytes available unless the stream ends; return (view, start).

        The view covers the buffer up to its last valid byte. Its bytes stay as they are
        until the next call of any method.
        """
        start, end = self.start, self.end
        available = end - start
        if available < size:
            # Twice the size, so that the bytes left over move once per `size` read.
            target = 2 * size
            if len(self.buffer) < target:
                grown = bytearray(target)
                grown[:available] = self.view[start:end]
                self.buffer, self.view = grown, memoryview(grown)
            elif available:
                self.view[:available] = self.view[start:end]
            start, end = 0, available
            while end < target:
                got = self.into(self.view[end:target])
                if not got:
                    break
                end += got
            self.start, self.end = start, end
        return self.view[:end], start


class TarReader:
    """Iterate over the entries of a tar stream, reading the stream once, in order.

    The content of a regular file is available through `entry.open()` until the next
    entry is requested; it can be read once. `offset` is the number of bytes consumed
    from the stream, and `entry_name` and `entry_offset` describe the current entry
    for error messages. After the end-of-archive marker the reader stops reading, so
    the caller can drain and hash any bytes that follow.
    """

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        # readinto for the stream before any read-ahead, when it is not a _Pushback.
        self._into = IntoReader(stream)
        self.offset = 0
        self.entry_name = b""
        self.entry_offset = 0
        self._content: _EntryContent | None = None
        # Data and padding bytes of the current entry that the caller has not read.
        self._pending_skip = 0

    def __iter__(self) -> Iterator[Entry]:
        while True:
            self._finish_entry()
            header = self._next_header()
            if header is None:
                return
            entry = self._to_entry(header)
            if entry is not None:
                yield entry

    # Read-ahead for callers that take whole entries from the raw bytes

    def read_ahead(self, size: int) -> tuple[memoryview, int]:
        """Finish the current entry and return (data, position): the next bytes of the stream.

        The stream's next bytes are `data[position:]`, at least `size` of them unless
        the stream ends first. None of them counts as read until `consume` is called.
        """
        self._finish_entry()
        stream = self._stream
        if not isinstance(stream, _Pushback):
            stream = self._stream = _Pushback(stream)
        return stream.fill(size)

    def consume(self, count: int) -> None:
        """Count the first `count` bytes that `read_ahead` returned as read."""
        stream = self._stream
        assert isinstance(stream, _Pushback)
        assert count <= stream.end - stream.start
        stream.start += count
        self.offset += count

    # Reading raw bytes

    def _read_exact(self, count: int, what: str) -> bytes:
        data = self._read_up_to(count)
        if len(data) < count:
            raise TarFormatError(
                f"tar stream is truncated at offset {self.offset}: expected {count - len(data)} "
                f"more bytes of {what}"
            )
        return data

    def _read_up_to(self, count: int) -> bytes:
        data = self._stream.read(count)
        self.offset += len(data)
        if len(data) == count or not data:
            return data
        chunks = [data]
        remaining = count - len(data)
        while remaining:
            chunk = self._stream.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
            self.offset += len(chunk)
        return b"".join(chunks)

    def _skip(self, count: int, what: str) -> None:
        while count:
            chunk = self._stream.read(min(count, _COPY_CHUNK))
            if not chunk:
                raise TarFormatError(
                    f"tar stream is truncated at offset {self.offset}: expected {count} "
                    f"more bytes of {what}"
                )
            count -= len(chunk)
            self.offset += len(chunk)

    def _finish_entry(self) -> None:
        """Skip what is left of the current entry's data and padding."""
        if self._content is not None:
            self._pending_skip += self._content.close_and_count()
            self._content = None
        if self._pending_skip:
            count, self._pending_skip = self._pending_skip, 0
            self._skip(count, f"entry {show(self.entry_name)}")

    # Headers

    def _next_header(self) -> _Header | None:
        """Read the next entry header with its extended headers, or None at the end."""
        pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        extended = False
        # The entry starts at its first extended header, if it has any.
        entry_start = self.offset
        while True:
            start = self.offset
            if not extended:
                entry_start = start
            block = self._read_up_to(BLOCK_SIZE)
            if not block:
                if start == 0:
                    return None
                what = "an extended header" if extended else "the last entry"
                raise TarFormatError(
                    f"tar stream ends at offset {start} after {what}, "
                    "without the end-of-archive marker"
                )
            if len(block) < BLOCK_SIZE:
                if start == 0:
                    raise TarFormatError(
                        f"the stream is {len(block)} bytes, shorter than one tar header "
                        f"({BLOCK_SIZE} bytes); it is not a tar, or it was cut short"
                    )
                raise TarFormatError(
                    f"tar stream is truncated inside the header at offset {start}; the "
                    "stream is cut short or not a tar"
                )
            if block == _ZERO_BLOCK:
                if extended:
                    raise TarFormatError(
                        f"end-of-archive marker at offset {start} follows an extended header"
                    )
                self._check_end(start)
                return None

            header = _parse_block(block, start)
            typeflag = header.typeflag
            if typeflag == _PAX_GLOBAL:
                # Extended headers before a global header describe the global header.
                self._read_special(header)
                pax, long_name, long_link, extended = {}, None, None, False
                continue
            if typeflag in (_PAX_HEADER, _GNU_LONG_NAME, _GNU_LONG_LINK):
                data = self._read_special(header)
                extended = True
                if typeflag == _PAX_HEADER:
                    pax.update(_parse_pax(data, header.name, start))
                elif typeflag == _GNU_LONG_NAME:
                    long_name = _cstring(data)
                elif typeflag == _GNU_LONG_LINK:
                    long_link = _cstring(data)
                continue
            if long_name is not None:
                header.name = long_name
            if long_link is not None:
                header.linkname = long_link
            header.offset = entry_start
            if pax:
                _apply_pax(header, pax)
            return header

    def _check_end(self, start: int) -> None:
        """Read the block after a first zero block: a second zero block, or nothing."""
        block = self._read_up_to(BLOCK_SIZE)
        if block and block != _ZERO_BLOCK:
            raise TarFormatError(
                f"tar stream has data at offset {start + BLOCK_SIZE} after a zero block"
            )

    def _read_special(self, header: _Header) -> bytes:
        if header.size > MAX_SPECIAL_SIZE:
            raise TarFormatError(
                f"extended header at offset {header.offset} is {header.size} bytes, "
                f"more than the maximum of {MAX_SPECIAL_SIZE}"
            )
        data = self._read_exact(header.size, f"the extended header at offset {header.offset}")
        self._skip(-header.size % BLOCK_SIZE, "padding")
        return data

    def _to_entry(self, header: _Header) -> Entry | None:
        self.entry_name = header.name
        self.entry_offset = header.offset
        typeflag = header.typeflag
        if typeflag == _GNU_VOLUME:
            self._pending_skip = _padded(header.size)
            return None
        if typeflag == _GNU_SPARSE:
            # TODO: expand GNU sparse entries; layers SHOULD NOT contain them (image-spec).
            raise TarFormatError(
                f"entry {show(header.name)} at offset {header.offset} is a GNU sparse file, "
                "which is not supported"
            )
        file_type = _TYPES.get(typeflag)
        if file_type is None:
            raise TarFormatError(
                f"entry {show(header.name)} at offset {header.offset} has the unsupported "
                f"type {show(typeflag)}"
            )
        if typeflag == b"\x00" and header.name.endswith(b"/"):
            file_type = FileType.DIRECTORY

        if file_type is FileType.REGULAR or typeflag == b"D":
            self._pending_skip = _padded(header.size)
        size = header.size if file_type is FileType.REGULAR else 0

        try:
            path = clean_entry_path(header.name)
            linkname = header.linkname
            if file_type is FileType.HARDLINK:
                linkname = clean_entry_path(header.linkname)
        except UnsafePathError as error:
            raise UnsafePathError(f"{error} (offset {header.offset})") from None

        kind = ChangeKind.ADD
        base = path[path.rfind(b"/") + 1 :]
        if base.startswith(WHITEOUT_PREFIX):
            kind, path = _whiteout_target(path, base, header)

        opener = None
        if file_type is FileType.REGULAR and kind is ChangeKind.ADD:
            content = _EntryContent(self, header.size, header.name)
            self._content = content
            self._pending_skip = -header.size % BLOCK_SIZE
            opener = content.claim
        # Every field in Entry's order, which skips the keyword constructor's cost.
        return new_entry(Entry, (
            path, kind, file_type, header.mode & 0o7777, header.uid, header.gid,
            header.mtime_ns, header.atime_ns, header.ctime_ns, size, linkname,
            header.devmajor, header.devminor, header.xattrs, None, 1, None, opener, None, None,
        ))  # fmt: skip


def _whiteout_target(path: bytes, base: bytes, header: _Header) -> tuple[ChangeKind, bytes]:
    """Return the change a whiteout name stands for and the path it applies to."""
    parent = path[: len(path) - len(base)].rstrip(b"/")
    if base == OPAQUE_MARKER:
        return ChangeKind.OPAQUE, parent
    target = base[len(WHITEOUT_PREFIX) :]
    if target in (b"", b".", b".."):
        raise UnsafePathError(
            f"entry {show(header.name)} at offset {header.offset}: invalid whiteout name "
            f"{show(base)}, a whiteout must name a file in its own directory"
        )
    return ChangeKind.DELETE, parent + b"/" + target if parent else target


class _EntryContent(io.RawIOBase):
    """The data of the current regular file, read straight from the tar stream."""

    def __init__(self, reader: TarReader, size: int, name: bytes) -> None:
        self._reader = reader
        self._remaining = size
        self._name = name
        self._claimed = False
        self._valid = True

    def claim(self) -> BinaryIO:
        if self._claimed or not self._valid:
            raise ValueError(
                f"the content of tar entry {show(self._name)} can be opened once, "
                "before the next entry is read"
            )
        self._claimed = True
        return self  # type: ignore[return-value]

    def close_and_count(self) -> int:
        """Invalidate the content and return how many of its bytes were not read."""
        self._valid = False
        remaining, self._remaining = self._remaining, 0
        return remaining

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        """Read up to `size` bytes, or all that is left when `size` is negative.

        The bytes come straight from the stream, without the buffer copy of readinto.
        """
        if size < 0:
            return b"".join(iter(lambda: self.read(_COPY_CHUNK), b""))
        if not self._valid:
            raise ValueError(f"the content of tar entry {show(self._name)} is no longer available")
        count = min(size, self._remaining)
        if count == 0:
            return b""
        reader = self._reader
        data = reader._stream.read(count)
        if not data:
            raise TarFormatError(
                f"tar stream is truncated at offset {reader.offset}: entry "
                f"{show(self._name)} is missing {self._remaining} bytes of data"
            )
        self._remaining -= len(data)
        reader.offset += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read into `buffer` straight from the stream, with no copy in between."""
        if not self._valid:
            raise ValueError(f"the content of tar entry {show(self._name)} is no longer available")
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._remaining)
        if count == 0:
            return 0
        reader = self._reader
        stream = reader._stream
        if isinstance(stream, _Pushback):
            got = stream.readinto(view[:count])
        else:
            got = reader._into(view[:count])
        if not got:
            raise TarFormatError(
                f"tar stream is truncated at offset {reader.offset}: entry "
                f"{show(self._name)} is missing {self._remaining} bytes of data"
            )
        self._remaining -= got
        reader.offset += got
        return got


def _padded(size: int) -> int:
    return size + -size % BLOCK_SIZE


def _cstring(data: bytes) -> bytes:
    end = data.find(b"\x00")
    return data if end < 0 else data[:end]


def _parse_number(field: bytes, what: str, where: str) -> int:
    """Parse an octal or base-256 numeric header field; `where` names the header."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            value = int.from_bytes(field, "big", signed=True)
        else:
            value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if not -MAX_INT64 - 1 <= value <= MAX_INT64:
            raise TarFormatError(
                f"{where}: the base-256 {what} field {field.hex()} is out of range; tar "
                "numbers must fit in a signed 64-bit integer"
            )
        return value
    text = field.replace(b"\x00", b" ").strip()
    if not text:
        return 0
    # isdigit first, because int() also accepts a sign, `_` and a `0o` prefix.
    if not text.isdigit():
        raise TarFormatError(f"{where} has an invalid {what} field {show(field)}")
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"{where} has an invalid {what} field {show(field)}") from None


def _parse_block(block: bytes, offset: int) -> _Header:
    """Parse a header block; a block with anything unusual goes to the checked parser.

    The fast path takes octal numbers and the unsigned checksum. Base-256 numbers, a
    signed checksum, a negative size and every malformed field fall through to
    `_parse_block_checked`, which accepts the same blocks and words the errors.
    """
    (name, mode, uid, gid, size, mtime, checksum, typeflag, linkname, magic, _version,
     _uname, _gname, devmajor, devminor, prefix) = _USTAR_FIELDS.unpack_from(block)  # fmt: skip
    has_devices = magic in (b"ustar\x00", b"ustar ")
    fields = (checksum, mode, uid, gid, size, mtime, *((devmajor, devminor) if has_devices else ()))
    texts = [field.replace(b"\x00", b" ").strip() for field in fields]
    # Only digits, and no field empty: int() also takes signs, `_` and `0o`.
    if not all(texts) or not b"".join(texts).isdigit():
        return _parse_block_checked(block, offset)
    try:
        stored, mode, uid, gid, size, mtime, *devices = [int(text, 8) for text in texts]
    except ValueError:  # an 8 or a 9
        return _parse_block_checked(block, offset)
    if has_devices:
        devmajor, devminor = devices
    if size < 0 or stored != byte_sum(block) - sum(checksum) + _CHECKSUM_SPACES:
        return _parse_block_checked(block, offset)
    name = _cstring(name)
    if magic == b"ustar\x00":
        prefix = _cstring(prefix)
        if prefix:
            name = prefix + b"/" + name
    return _Header(
        offset=offset,
        name=name,
        typeflag=typeflag,
        mode=mode,
        uid=uid,
        gid=gid,
        size=size,
        mtime_ns=mtime * 1_000_000_000,
        linkname=_cstring(linkname),
        devmajor=devmajor if has_devices else 0,
        devminor=devminor if has_devices else 0,
    )


def _parse_block_checked(block: bytes, offset: int) -> _Header:
    try:
        stored = _parse_number(block[148:156], "checksum", f"header at offset {offset}")
    except TarFormatError as error:
        raise TarFormatError(f"{error}; the stream is corrupt or not a tar") from None
    summed = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(summed)
    # Some old writers summed the bytes as signed chars; readers accept both sums.
    if stored != unsigned and stored != unsigned - 256 * sum(1 for b in summed if b > 0x7F):
        raise TarFormatError(
            f"invalid tar header at offset {offset}: checksum {stored:o} does not match "
            f"the header bytes ({unsigned:o}); the stream is corrupt or not a tar"
        )

    name = _cstring(block[0:100])
    magic = block[257:263]
    if magic == b"ustar\x00":
        prefix = _cstring(block[345:500])
        if prefix:
            name = prefix + b"/" + name

    where = f"entry {show(name)} at offset {offset}"

    def number(start: int, end: int, what: str) -> int:
        return _parse_number(block[start:end], what, where)

    size = number(124, 136, "size")
    if size < 0:
        raise TarFormatError(f"{where} has a negative size {size}")
    has_devices = magic in (b"ustar\x00", b"ustar ")
    return _Header(
        offset=offset,
        name=name,
        typeflag=block[156:157],
        mode=number(100, 108, "mode"),
        uid=number(108, 116, "uid"),
        gid=number(116, 124, "gid"),
        size=size,
        mtime_ns=number(136, 148, "mtime") * 1_000_000_000,
        linkname=_cstring(block[157:257]),
        devmajor=number(329, 337, "devmajor") if has_devices else 0,
        devminor=number(337, 345, "devminor") if has_devices else 0,
    )


def _parse_pax(data: bytes, name: bytes, offset: int) -> dict[bytes, bytes]:
    """Parse `"<length> <key>=<value>\\n"` records; later records win."""
    records: dict[bytes, bytes] = {}
    position = 0
    # No record is longer than the header's data, so its length has no more digits.
    max_digits = len(str(len(data)))
    while position < len(data):
        if data[position:].strip(b"\x00") == b"":
            break
        space = data.find(b" ", position)
        length_text = data[position:space] if space > position else b""
        if not length_text.isdigit() or len(length_text.lstrip(b"0")) > max_digits:
            raise TarFormatError(
                f"PAX header {show(name)} at offset {offset} has an invalid record "
                f"length {show(length_text, _MAX_SHOWN_NUMBER)} at byte {position}"
            )
        end = position + int(length_text.lstrip(b"0") or b"0")
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError(
                f"PAX header {show(name)} at offset {offset} has a malformed record "
                f"at byte {position}"
            )
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        position = end
    return records


def _parse_pax_int(value: bytes, key: bytes, name: bytes, offset: int) -> int:
    if not value.isdigit():
        raise TarFormatError(
            f"entry {show(name)} at offset {offset} has an invalid PAX {key.decode()} "
            f"record {show(value, _MAX_SHOWN_NUMBER)}"
        )
    return _check_int64(value, key, name, offset)


def _parse_pax_time(value: bytes, key: bytes, name: bytes, offset: int) -> int:
    """Parse a PAX time (`-12.5`, `1700000000.123456789`) into nanoseconds exactly."""
    match = _PAX_TIME.match(value)
    if match is None:
        raise TarFormatError(
            f"entry {show(name)} at offset {offset} has an invalid PAX {key.decode()} "
            f"record {show(value, _MAX_SHOWN_NUMBER)}"
        )
    sign, seconds_text, fraction = match.groups()
    seconds = _check_int64(sign + seconds_text, key, name, offset)
    nanoseconds = abs(seconds) * 1_000_000_000 + int((fraction or b"")[:9].ljust(9, b"0"))
    return -nanoseconds if sign else nanoseconds


def _check_int64(digits: bytes, key: bytes, name: bytes, offset: int) -> int:
    """Convert decimal digits with an optional `-`, raising TarFormatError beyond int64.

    Leading zeros are stripped first because Python's int() rejects more than 4,300
    digits, zeros included.
    """
    significant = digits.lstrip(b"-").lstrip(b"0")
    value = None
    if len(significant) <= _MAX_INT64_DIGITS:
        value = int(significant or b"0")
        if digits.startswith(b"-"):
            value = -value
    if value is None or not -MAX_INT64 - 1 <= value <= MAX_INT64:
        raise TarFormatError(
            f"entry {show(name)} at offset {offset}: PAX {key.decode()} record "
            f"{show(digits, _MAX_SHOWN_NUMBER)} is out of range; tar numbers must fit in "
            "a signed 64-bit integer"
        )
    return value


def _decode_base64(value: bytes, offset: int) -> bytes:
    """Decode base64 with or without its `=` padding (libarchive leaves it out)."""
    import base64  # only libarchive's xattr records need it

    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except ValueError:
        raise TarFormatError(
            f"PAX header at offset {offset} has an invalid base64 xattr value {show(value)}"
        ) from None


def _apply_pax(header: _Header, records: dict[bytes, bytes]) -> None:
    offset = header.offset
    name = records.get(b"path", header.name)
    libarchive_xattrs: dict[bytes, bytes] = {}
    for key, value in records.items():
        if key == b"path":
            header.name = value
        elif key == b"linkpath":
            header.linkname = value
        elif key == b"size":
            header.size = _parse_pax_int(value, key, name, offset)
        elif key == b"uid":
            header.uid = _parse_pax_int(value, key, name, offset)
        elif key == b"gid":
            header.gid = _parse_pax_int(value, key, name, offset)
        elif key == b"mtime":
            header.mtime_ns = _parse_pax_time(value, key, name, offset)
        elif key == b"atime":
            header.atime_ns = _parse_pax_time(value, key, name, offset)
        elif key == b"ctime":
            header.ctime_ns = _parse_pax_time(value, key, name, offset)
        elif key.startswith(b"SCHILY.xattr."):
            header.xattrs[key[len(b"SCHILY.xattr.") :]] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            libarchive_xattrs[key[len(b"LIBARCHIVE.xattr.") :]] = _decode_base64(value, offset)
        elif key == b"SCHILY.devmajor":
            header.devmajor = _parse_pax_int(value, key, name, offset)
        elif key == b"SCHILY.devminor":
            header.devminor = _parse_pax_int(value, key, name, offset)
        elif key.startswith(b"GNU.sparse."):
            raise TarFormatError(
                f"entry {show(header.name)} at offset {offset} is a GNU sparse file, "
                "which is not supported"
            )
    # bsdtar writes every xattr twice: `LIBARCHIVE.xattr.<name>` with a URL-encoded name
    # and a base64 value, and `SCHILY.xattr.<name>` with the same encoded name (in the C
    # locale) and the raw value. The pair stands for one xattr with the decoded name.
    if libarchive_xattrs:
        import urllib.parse  # loaded only for bsdtar's records

        for encoded, value in libarchive_xattrs.items():
            header.xattrs.pop(encoded, None)
            header.xattrs[urllib.parse.unquote_to_bytes(encoded)] = value
    for label, text in ((b"path", header.name), (b"linkpath", header.linkname)):
        if b"\x00" in text:
            raise TarFormatError(f"PAX {label.decode()} record at offset {offset} contains NUL")


def read_entries(stream: Readable) -> Iterator[Entry]:
    """Iterate over the entries of a tar stream; see TarReader."""
    return iter(TarReader(stream))
