"""Windows file times and attributes: FILETIME, FILE_BASIC_INFO and their tar forms.

A FILETIME counts 100-nanosecond intervals since 1601-01-01 UTC as an unsigned 64-bit
number. go-winio turns it into a Go time through `x/sys/windows`, whose arithmetic is
signed 64-bit and wraps on overflow, so FILETIMEs before about 1677 or after about
2262 wrap to other dates. The conversions here wrap the same way, so the tar bytes match.
Such a FILETIME does not survive a trip through a tar: it comes back as another value,
with go-winio as here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ocilayer.errors import show

# Bytes of a malformed time that a message shows.
_SHOWN = 40

# FILETIME of the Unix epoch: 100 ns intervals from 1601-01-01 to 1970-01-01.
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_SPARSE_FILE = 0x200
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

_UINT64 = 1 << 64
_BASIC_INFO = struct.Struct("<QQQQI4x")
BASIC_INFO_SIZE = _BASIC_INFO.size
_SECONDS = re.compile(rb"[+-]?[0-9]+")


def wrap_int64(value: int) -> int:
    """Reduce `value` to a signed 64-bit integer, as Go's int64 arithmetic wraps."""
    value %= _UINT64
    return value - _UINT64 if value >= 1 << 63 else value


def filetime_to_ns(filetime: int) -> int:
    """Convert a FILETIME to Unix nanoseconds as `windows.Filetime.Nanoseconds` does."""
    return wrap_int64((filetime - FILETIME_UNIX_EPOCH) * 100)


def ns_to_filetime(ns: int) -> int:
    """Convert Unix nanoseconds to a FILETIME as `windows.NsecToFiletime` does.

    `ns` is first wrapped to int64, as Go's `Time.UnixNano` wraps for dates outside
    1678-2262, then divided by 100 with truncation toward zero.
    """
    ns = wrap_int64(ns)
    intervals = abs(ns) // 100 * (1 if ns >= 0 else -1)
    return (intervals + FILETIME_UNIX_EPOCH) % _UINT64


def parse_pax_time(text: bytes) -> int:
    """Parse a PAX time record (`secs[.frac]`) into Unix nanoseconds, as Go's reader does.

    The fraction keeps at most nine digits. Raises ValueError for a malformed value.
    """
    seconds_text, _, fraction = text.partition(b".")
    # A signed 64-bit count of seconds has at most 19 digits; more cannot be a time.
    if _SECONDS.fullmatch(seconds_text) is None or len(seconds_text.lstrip(b"-0")) > 19:
        raise ValueError(f"invalid PAX time {show(text, _SHOWN)}")
    seconds = int(seconds_text)
    if wrap_int64(seconds) != seconds:
        raise ValueError(f"PAX time {show(text, _SHOWN)} is out of range")
    if not fraction:
        return seconds * 1_000_000_000
    if not fraction.isdigit():
        raise ValueError(f"invalid PAX time {show(text, _SHOWN)}")
    nanos = int(fraction[:9].ljust(9, b"0"))
    if seconds_text.startswith(b"-"):
        nanos = -nanos
    return seconds * 1_000_000_000 + nanos


@dataclass(frozen=True, slots=True)
class FileBasicInfo:
    """The FILE_BASIC_INFO of a file: four FILETIMEs and the Win32 attributes."""

    creation_time: int = 0
    last_access_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    attributes: int = 0

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & FILE_ATTRIBUTE_DIRECTORY)

    def pack(self) -> bytes:
        """Encode as the 40-byte little-endian FILE_BASIC_INFO structure."""
        return _BASIC_INFO.pack(
            self.creation_time,
            self.last_access_time,
            self.last_write_time,
            self.change_time,
            self.attributes,
        )

    @classmethod
    def unpack(cls, data: bytes) -> FileBasicInfo:
        """Decode a 40-byte FILE_BASIC_INFO structure."""
        if len(data) != BASIC_INFO_SIZE:
            raise ValueError(f"FILE_BASIC_INFO is {BASIC_INFO_SIZE} bytes, got {len(data)}")
        return cls(*_BASIC_INFO.unpack(data))
