"""Tar header encoder that writes the bytes Go's `archive/tar` writes.

containerd, docker, umoci and hcsshim all write layers through Go's `archive/tar`,
so the same header must give the same bytes here, or one layer gets two diff_ids.
The rules below follow Go's writer (checked against Go 1.19 by the round-trip tests):

- USTAR when every field fits, PAX when a field does not or when extra records exist,
  never GNU. A header Go could only write as GNU raises `TarFormatError`.
- A name longer than 100 bytes is split at the last `/` that leaves a prefix of at
  most 155 bytes and a name of at most 100 bytes, before PAX is considered.
- The PAX extended header is named `<dir>/PaxHeaders.0/<base>`, has zero mode, ids
  and mtime, and contains its records sorted by key.
- devmajor and devminor are written as `0000000` for every entry, uname and gname are
  NUL-filled when empty, and the archive ends with exactly two zero blocks.
"""

from __future__ import annotations

import posixpath
from zlib import adler32

from ocilayer.errors import TarFormatError, show

BLOCK_SIZE = 512
END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

NAME_SIZE = 100
PREFIX_SIZE = 155

_MAGIC_USTAR = b"ustar\x0000"
_PAX_TYPE = b"x"
# Keys that Go's writer derives from header fields; a caller cannot set them directly.
_BASIC_KEYS = frozenset(
    [b"path", b"linkpath", b"size", b"uid", b"gid", b"uname", b"gname", b"mtime", b"atime",
     b"ctime"]
)  # fmt: skip
_HEADER_ONLY_TYPES = frozenset([b"1", b"2", b"3", b"4", b"5", b"6"])


class TarHeader:
    """The fields of one tar entry, as Go's `tar.Header` has them.

    Times are Unix nanoseconds; `atime_ns` and `ctime_ns` are written only when set.
    `format_pax` mirrors `hdr.Format = tar.FormatPAX`: when False, Go rounds the mtime
    to the nearest second and drops atime and ctime before it chooses a format.
    `pax_records` holds extra records such as `SCHILY.xattr.*`.

    A plain class rather than a dataclass, which would load `dataclasses` and
    `inspect` in every command: about 10 ms of start-up.
    """

    __slots__ = (
        "atime_ns",
        "ctime_ns",
        "devmajor",
        "devminor",
        "format_pax",
        "gid",
        "gname",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "pax_records",
        "size",
        "typeflag",
        "uid",
        "uname",
    )  # fmt: skip

    def __init__(
        self,
        name: bytes,
        typeflag: bytes = b"0",
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime_ns: int = 0,
        atime_ns: int | None = None,
        ctime_ns: int | None = None,
        linkname: bytes = b"",
        uname: bytes = b"",
        gname: bytes = b"",
        devmajor: int = 0,
        devminor: int = 0,
        pax_records: dict[bytes, bytes] | None = None,
        format_pax: bool = True,
    ) -> None:
        self.name = name
        self.typeflag = typeflag
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.atime_ns = atime_ns
        self.ctime_ns = ctime_ns
        self.linkname = linkname
        self.uname = uname
        self.gname = gname
        self.devmajor = devmajor
        self.devminor = devminor
        self.pax_records: dict[bytes, bytes] = {} if pax_records is None else pax_records
        self.format_pax = format_pax

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TarHeader):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"TarHeader({fields})"


def fits_octal(value: int, width: int) -> bool:
    """Return whether `value` fits a NUL-terminated octal field of `width` bytes."""
    return value >= 0 and (width >= 22 or value < 1 << (3 * (width - 1)))


def format_pax_time(ns: int) -> bytes:
    """Format a PAX time record value: seconds, then nanoseconds without trailing zeros."""
    secs, nsecs = divmod(ns, 1_000_000_000)
    if nsecs == 0:
        return str(secs).encode()
    sign = ""
    if secs < 0:
        sign = "-"
        secs = -(secs + 1)
        nsecs = 1_000_000_000 - nsecs
    return f"{sign}{secs}.{nsecs:09d}".rstrip("0").encode()


def format_pax_record(key: bytes, value: bytes) -> bytes:
    """Format one `"<len> <key>=<value>\\n"` record, where len counts the whole record."""
    size = len(key) + len(value) + 3
    size += len(str(size))
    record = b"%d %s=%s\n" % (size, key, value)
    if len(record) != size:
        record = b"%d %s=%s\n" % (len(record), key, value)
    return record


def split_ustar_path(name: bytes) -> tuple[bytes, bytes] | None:
    """Split a long ASCII name into USTAR (prefix, name) the way Go does, or return None."""
    length = len(name)
    if length <= NAME_SIZE or not name.isascii():
        return None
    if length > PREFIX_SIZE + 1:
        length = PREFIX_SIZE + 1
    elif name[length - 1] == 0x2F:
        length -= 1
    cut = name.rfind(b"/", 0, length)
    suffix_len = len(name) - cut - 1
    if cut <= 0 or suffix_len > NAME_SIZE or suffix_len == 0 or cut > PREFIX_SIZE:
        return None
    return name[:cut], name[cut + 1 :]


def to_ascii(value: bytes) -> bytes:
    """Drop every non-ASCII byte and NUL, as Go's writer does for names in a PAX header."""
    if value.isascii():
        return value
    return bytes(b for b in value if 0 < b < 0x80)


def pax_header_name(name: bytes) -> bytes:
    """Return the name of the PAX extended header for an entry called `name`."""
    cut = name.rfind(b"/") + 1
    directory, base = name[:cut], name[cut:]
    joined = b"/".join(part for part in (directory, b"PaxHeaders.0", base) if part)
    cleaned = posixpath.normpath(joined)
    # Go's path.Clean reduces any run of leading slashes to one; normpath keeps two.
    if cleaned.startswith(b"//") and not cleaned.startswith(b"///"):
        cleaned = cleaned[1:]
    return cleaned


def _put_string(block: bytearray, offset: int, width: int, value: bytes) -> None:
    """Copy `value` into a field, NUL-terminated when shorter, cut when longer.

    A cut value whose field would end in `/` gets a NUL after its last non-slash byte,
    so that a reader of the cut name does not take a file for a directory.
    """
    block[offset : offset + min(len(value), width)] = value[:width]
    if len(value) < width:
        block[offset + len(value)] = 0
    elif len(value) > width and value[width - 1] == 0x2F:
        kept = len(value[:width].rstrip(b"/"))
        block[offset + kept] = 0


def _put_octal(block: bytearray, offset: int, width: int, value: int) -> None:
    if not fits_octal(value, width):
        value = 0
    digits = b"%o" % value
    if len(digits) < width - 1:
        digits = b"0" * (width - 1 - len(digits)) + digits
    _put_string(block, offset, width, digits)


def byte_sum(block: bytes | bytearray) -> int:
    """Return the sum of the bytes of a 512-byte block, the tar header checksum.

    Adler-32 keeps the byte sum plus one modulo 65521 in its low 16 bits. A half
    block sums to at most 256 * 255 = 65280, below the modulus, so two halves give
    the exact sum in C instead of a Python loop over 512 integers.
    """
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def _finish_block(block: bytearray) -> bytes:
    """Set magic and version, then the checksum: six octal digits, NUL, space."""
    block[257:265] = _MAGIC_USTAR
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % byte_sum(block)
    return bytes(block)


def _data_padding(size: int) -> bytes:
    return bytes(-size % BLOCK_SIZE)


def _ustar_block(h: TarHeader, name: bytes, prefix: bytes, mtime: int, ascii_only: bool) -> bytes:
    block = bytearray(BLOCK_SIZE)

    def text(value: bytes) -> bytes:
        return to_ascii(value) if ascii_only else value

    _put_string(block, 0, 100, text(name))
    _put_octal(block, 100, 8, h.mode)
    _put_octal(block, 108, 8, h.uid)
    _put_octal(block, 116, 8, h.gid)
    _put_octal(block, 124, 12, h.size)
    _put_octal(block, 136, 12, mtime)
    block[156:157] = h.typeflag
    _put_string(block, 157, 100, text(h.linkname))
    _put_string(block, 265, 32, text(h.uname))
    _put_string(block, 297, 32, text(h.gname))
    _put_octal(block, 329, 8, h.devmajor)
    _put_octal(block, 337, 8, h.devminor)
    if prefix:
        _put_string(block, 345, 155, prefix)
    return _finish_block(block)


def _pax_extended_header(name: bytes, records: dict[bytes, bytes]) -> bytes:
    data = b"".join(format_pax_record(key, records[key]) for key in sorted(records))
    header_name = to_ascii(pax_header_name(name))[:NAME_SIZE].rstrip(b"/")
    block = bytearray(BLOCK_SIZE)
    _put_string(block, 0, 100, header_name)
    _put_octal(block, 100, 8, 0)
    _put_octal(block, 108, 8, 0)
    _put_octal(block, 116, 8, 0)
    _put_octal(block, 124, 12, len(data))
    _put_octal(block, 136, 12, 0)
    block[156:157] = _PAX_TYPE
    return _finish_block(block) + data + _data_padding(len(data))


def _check_record(key: bytes, value: bytes, entry: bytes) -> None:
    if not key or b"=" in key or b"\x00" in key:
        raise TarFormatError(f"{show(entry)}: invalid PAX record key {show(key)}")
    if key in (b"path", b"linkpath", b"uname", b"gname") and b"\x00" in value:
        raise TarFormatError(f"{show(entry)}: PAX record {key.decode()} contains a NUL byte")


_USTAR_TAIL = _MAGIC_USTAR + bytes(64)
_BLOCK_END = bytes(167)
_OCTAL_7_MAX = (1 << 21) - 1
_OCTAL_11_MAX = (1 << 33) - 1


def encode_plain_ustar(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes | None:
    """Encode the common header in one step, or return None when it needs `encode_header`.

    The common header has an ASCII name and link name of at most 100 bytes, fields
    that fit their octal width, a whole-second mtime (Unix seconds) and no PAX
    records; it gives the same bytes as `encode_header`, which the tests check.
    """
    if (
        len(name) > NAME_SIZE
        or len(linkname) > NAME_SIZE
        or not name.isascii()
        or not linkname.isascii()
        or not 0 <= uid <= _OCTAL_7_MAX
        or not 0 <= gid <= _OCTAL_7_MAX
        or not 0 <= mode <= _OCTAL_7_MAX
        or not 0 <= size <= _OCTAL_11_MAX
        or not 0 <= mtime <= _OCTAL_11_MAX
        or not 0 <= devmajor <= _OCTAL_7_MAX
        or not 0 <= devminor <= _OCTAL_7_MAX
        or (typeflag in (b"0", b"3", b"4", b"6") and name.endswith(b"/"))
    ):
        return None
    block = b"%s%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00        %s%s%s%07o\x00%07o\x00%s" % (
        name.ljust(NAME_SIZE, b"\x00"),
        mode,
        uid,
        gid,
        size,
        mtime,
        typeflag,
        linkname.ljust(NAME_SIZE, b"\x00"),
        _USTAR_TAIL,
        devmajor,
        devminor,
        _BLOCK_END,
    )
    return b"%s%06o\x00 %s" % (block[:148], byte_sum(block), block[156:])


def encode_header(h: TarHeader) -> bytes:
    """Encode the header blocks of one entry (a PAX header first when needed).

    Raises TarFormatError when Go's writer would reject the header: a mode or
    device number too large for its octal field, a regular file or device whose
    name ends in `/`, or a record with NUL where none may be.
    """
    if h.typeflag in (b"0", b"3", b"4", b"6") and h.name.endswith(b"/"):
        raise TarFormatError(f"{show(h.name)}: a file name may not end with '/'")
    mtime_ns, atime_ns, ctime_ns = h.mtime_ns, h.atime_ns, h.ctime_ns
    if not h.format_pax:
        mtime_ns = (mtime_ns + 500_000_000) // 1_000_000_000 * 1_000_000_000
        atime_ns = ctime_ns = None

    records: dict[bytes, bytes] = {}
    ustar_ok = True
    prefer_pax = False
    split = None

    name = h.name
    if not name.isascii() or len(name) > NAME_SIZE:
        split = split_ustar_path(name)
        if split is None:
            ustar_ok = False
        records[b"path"] = name
    for key, value, width in (
        (b"linkpath", h.linkname, 100),
        (b"uname", h.uname, 32),
        (b"gname", h.gname, 32),
    ):
        if not value.isascii() or len(value) > width:
            ustar_ok = False
            records[key] = value

    for label, number in (("mode", h.mode), ("devmajor", h.devmajor), ("devminor", h.devminor)):
        if not fits_octal(number, 8):
            raise TarFormatError(f"{show(name)}: {label} {number} does not fit a tar header")
    for key, number, width in ((b"uid", h.uid, 8), (b"gid", h.gid, 8), (b"size", h.size, 12)):
        if not fits_octal(number, width):
            ustar_ok = False
            records[key] = str(number).encode()

    mtime, mtime_nanos = divmod(mtime_ns, 1_000_000_000)
    if not fits_octal(mtime, 12):
        ustar_ok = False
    if mtime_nanos or not fits_octal(mtime, 12):
        prefer_pax = True
        records[b"mtime"] = format_pax_time(mtime_ns)
    for key, ns in ((b"atime", atime_ns), (b"ctime", ctime_ns)):
        if ns is not None:
            ustar_ok = False
            prefer_pax = True
            records[key] = format_pax_time(ns)

    for key, value in h.pax_records.items():
        if key not in records and key not in _BASIC_KEYS:
            records[key] = value
    if h.pax_records:
        ustar_ok = False
    if h.format_pax and prefer_pax:
        ustar_ok = False

    if ustar_ok:
        if split is not None:
            return _ustar_block(h, split[1], split[0], mtime, ascii_only=False)
        return _ustar_block(h, name, b"", mtime, ascii_only=False)

    if not records:
        # Only possible for a header whose format was not requested and that still
        # cannot be USTAR; Go would pick GNU here, which layer writers never produce.
        raise TarFormatError(f"{show(name)}: header needs the GNU tar format")
    for key, value in records.items():
        _check_record(key, value, name)
    return _pax_extended_header(name, records) + _ustar_block(h, name, b"", mtime, ascii_only=True)


def data_padding(size: int) -> bytes:
    """Return the zero bytes that pad `size` bytes of entry data to a whole block."""
    return _data_padding(size)
