"""Split a tar stream into entries with their raw header bytes, and compare two streams.

This reader is deliberately independent of ocilayer's code and of `tarfile`: it keeps
every header block as written (PAX extended headers included), so two layers can be
compared byte for byte, entry by entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512

# Name, offset and width of each USTAR header field, for naming what differs.
USTAR_FIELDS = [
    ("name", 0, 100), ("mode", 100, 8), ("uid", 108, 8), ("gid", 116, 8), ("size", 124, 12),
    ("mtime", 136, 12), ("chksum", 148, 8), ("typeflag", 156, 1), ("linkname", 157, 100),
    ("magic", 257, 6), ("version", 263, 2), ("uname", 265, 32), ("gname", 297, 32),
    ("devmajor", 329, 8), ("devminor", 337, 8), ("prefix", 345, 155), ("pad", 500, 12),
]  # fmt: skip
MTIME = slice(136, 148)
CHKSUM = slice(148, 156)
WHITEOUT_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"


@dataclass(frozen=True)
class RawEntry:
    """One tar entry: its full name, type, the raw bytes of all its header blocks
    (a PAX extended header and its records included), and a digest of its data."""

    name: bytes
    typeflag: bytes
    header: bytes
    data_size: int
    data_sha256: str

    @property
    def main_block(self) -> bytes:
        """The entry's own USTAR block (the last header block)."""
        return self.header[-BLOCK:]

    @property
    def is_whiteout(self) -> bool:
        base = self.name.rstrip(b"/").rsplit(b"/", 1)[-1]
        return base.startswith(WHITEOUT_PREFIX)


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:
        # Base-256, as GNU and Go write numbers too large for octal.
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    while data:
        length_text, _, _ = data.partition(b" ")
        length = int(length_text)
        record, data = data[:length], data[length:]
        key, _, value = record[len(length_text) + 1 : -1].partition(b"=")
        records[key] = value
    return records


def _read_exact(stream: BinaryIO, count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise ValueError(f"tar stream ends inside a block ({len(data)} of {count} bytes)")
    return data


def read_entries(stream: BinaryIO) -> Iterator[RawEntry]:
    """Yield the entries of an uncompressed tar stream, up to its end-of-archive block."""
    pending = b""
    records: dict[bytes, bytes] = {}
    while True:
        block = stream.read(BLOCK)
        if len(block) < BLOCK or block == bytes(BLOCK):
            return
        typeflag = block[156:157]
        size = _octal(block[124:136])
        if typeflag in (b"x", b"g"):
            data = _read_exact(stream, size + (-size % BLOCK))
            if typeflag == b"x":
                records.update(_pax_records(data[:size]))
            pending += block + data
            continue
        if b"size" in records:
            size = int(records[b"size"])
        if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        name = records.get(b"path")
        if name is None:
            prefix = block[345:500].split(b"\x00", 1)[0]
            base = block[0:100].split(b"\x00", 1)[0]
            name = prefix + b"/" + base if prefix else base
        hasher = hashlib.sha256()
        remaining = size
        while remaining > 0:
            chunk = _read_exact(stream, min(remaining, 1 << 20))
            hasher.update(chunk)
            remaining -= len(chunk)
        _read_exact(stream, -size % BLOCK)
        yield RawEntry(name, typeflag, pending + block, size, hasher.hexdigest())
        pending = b""
        records = {}


def read_entries_from(path: str) -> list[RawEntry]:
    with open(path, "rb") as stream:
        return list(read_entries(stream))


def differing_fields(ours: bytes, theirs: bytes) -> list[str]:
    """Name the USTAR fields where two header blocks differ, with both values."""
    found = []
    for name, offset, width in USTAR_FIELDS:
        left, right = ours[offset : offset + width], theirs[offset : offset + width]
        if left != right:
            found.append(f"{name}: {left.rstrip(bytes(1))!r} != {right.rstrip(bytes(1))!r}")
    return found


def _without_mtime(block: bytes) -> bytes:
    return block[: MTIME.start] + bytes(MTIME.stop - MTIME.start + 8) + block[CHKSUM.stop :]


@dataclass
class Comparison:
    """Result of comparing ocilayer's layer with a reference layer entry by entry."""

    entries: int = 0
    identical: int = 0
    # Whiteouts whose headers differ only in mtime (containerd writes the current time).
    whiteout_mtime_only: int = 0
    differences: list[str] | None = None

    @property
    def equal(self) -> bool:
        return not self.differences


def compare_layers(ours: list[RawEntry], theirs: list[RawEntry], limit: int = 20) -> Comparison:
    """Compare two layers: entry count, order, header bytes and data.

    The one tolerated difference is the mtime of a whiteout entry (and the checksum
    that follows from it), because containerd 1.6 writes the time of the export there.
    """
    result = Comparison(entries=len(ours), differences=[])
    assert result.differences is not None
    if len(ours) != len(theirs):
        result.differences.append(f"entry count: ocilayer {len(ours)}, reference {len(theirs)}")
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=False)):
        problem = _compare_entry(mine, other)
        if problem is None:
            result.identical += 1
        elif problem == "whiteout-mtime":
            result.whiteout_mtime_only += 1
        else:
            result.differences.append(f"entry {index} {mine.name!r}: {problem}")
    names_ours = {entry.name for entry in ours}
    names_theirs = {entry.name for entry in theirs}
    for name in sorted(names_ours - names_theirs):
        result.differences.append(f"only in ocilayer: {name!r}")
    for name in sorted(names_theirs - names_ours):
        result.differences.append(f"only in reference: {name!r}")
    if len(result.differences) > limit:
        dropped = len(result.differences) - limit
        result.differences = [*result.differences[:limit], f"... and {dropped} more"]
    return result


def _compare_entry(mine: RawEntry, other: RawEntry) -> str | None:
    if mine.name != other.name:
        return f"name differs from reference {other.name!r} (order or set of entries)"
    if mine.data_sha256 != other.data_sha256 or mine.data_size != other.data_size:
        return f"data differs ({mine.data_size} vs {other.data_size} bytes)"
    if mine.header == other.header:
        return None
    if (
        mine.is_whiteout
        and len(mine.header) == len(other.header) == BLOCK
        and _without_mtime(mine.header) == _without_mtime(other.header)
    ):
        return "whiteout-mtime"
    if mine.header[:-BLOCK] != other.header[:-BLOCK]:
        return (
            f"PAX header differs: {mine.header[:-BLOCK]!r} vs reference {other.header[:-BLOCK]!r}"
        )
    return "; ".join(differing_fields(mine.main_block, other.main_block))
