"""Raw tar blocks for byte-level checks: split a stream into entries, edit, and compare.

This reader is deliberately small and independent of ocilayer's: it understands
USTAR headers and PAX extended headers (type `x`), which is all that Go's writer
produces, and keeps every entry's blocks exactly as they were read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

BLOCK = 512

# (name, offset, width) of the fields of a USTAR header block.
HEADER_FIELDS = (
    ("name", 0, 100),
    ("mode", 100, 8),
    ("uid", 108, 8),
    ("gid", 116, 8),
    ("size", 124, 12),
    ("mtime", 136, 12),
    ("chksum", 148, 8),
    ("typeflag", 156, 1),
    ("linkname", 157, 100),
    ("magic", 257, 6),
    ("version", 263, 2),
    ("uname", 265, 32),
    ("gname", 297, 32),
    ("devmajor", 329, 8),
    ("devminor", 337, 8),
    ("prefix", 345, 155),
    ("padding", 500, 12),
)
_FIELD_SLICES = {name: slice(offset, offset + width) for name, offset, width in HEADER_FIELDS}


def header_field(block: bytes, name: str) -> bytes:
    """Return the raw bytes of one field of a header block."""
    return block[_FIELD_SLICES[name]]


def parse_number(raw: bytes) -> int:
    """Parse a numeric header field: octal text, or base-256 when the high bit is set."""
    if raw and raw[0] & 0x80:
        value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
        return value - (1 << (8 * len(raw) - 1)) if raw[0] & 0x40 else value
    text = raw.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def header_checksum(block: bytes) -> int:
    """Return the checksum of a header block, its checksum field counted as spaces."""
    return sum(block[:148]) + 8 * 0x20 + sum(block[156:])


def _cstring(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def parse_pax_records(data: bytes) -> dict[bytes, bytes]:
    """Parse `"<len> <key>=<value>\\n"` records, checking every length."""
    records: dict[bytes, bytes] = {}
    position = 0
    while position < len(data):
        space = data.index(b" ", position)
        length = int(data[position:space])
        record = data[position : position + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError(f"invalid PAX record at byte {position}: {record!r}")
        key, _, value = record[space - position + 1 : -1].partition(b"=")
        records[key] = value
        position += length
    return records


@dataclass(frozen=True, slots=True, repr=False)
class RawEntry:
    """One entry of a tar stream, with its blocks exactly as stored.

    `blocks` holds every header block of the entry: a PAX extended header with its
    records when present, then the USTAR header. `data` is the content without the
    padding to a whole block. `name`, `linkname` and `size` include PAX overrides.
    """

    offset: int
    blocks: bytes
    data: bytes
    pax: dict[bytes, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"RawEntry(offset={self.offset}, {describe_entry(self)})"

    @property
    def header(self) -> bytes:
        """The USTAR header block that ends `blocks`."""
        return self.blocks[-BLOCK:]

    @property
    def typeflag(self) -> bytes:
        return self.header[156:157]

    @property
    def name(self) -> bytes:
        if b"path" in self.pax:
            return self.pax[b"path"]
        prefix = _cstring(header_field(self.header, "prefix"))
        name = _cstring(header_field(self.header, "name"))
        return prefix + b"/" + name if prefix else name

    @property
    def basename(self) -> bytes:
        return self.name.rstrip(b"/").rpartition(b"/")[2]

    @property
    def linkname(self) -> bytes:
        if b"linkpath" in self.pax:
            return self.pax[b"linkpath"]
        return _cstring(header_field(self.header, "linkname"))

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def mode(self) -> int:
        return parse_number(header_field(self.header, "mode"))

    @property
    def mtime(self) -> int:
        return parse_number(header_field(self.header, "mtime"))

    @property
    def is_whiteout(self) -> bool:
        return self.typeflag == b"0" and self.basename.startswith(b".wh.")

    def raw(self) -> bytes:
        """Return the entry's bytes as stored: header blocks, data and padding."""
        return self.blocks + self.data + bytes(-len(self.data) % BLOCK)


@dataclass(frozen=True, slots=True)
class TarLayout:
    entries: list[RawEntry]
    trailer: bytes


def split_tar(data: bytes) -> TarLayout:
    """Split a tar stream into entries and the trailer (the zero blocks and anything after).

    Raises ValueError on a bad checksum, a truncated entry or a header type this
    reader does not know (GNU long names, sparse files, global PAX headers).
    """
    entries: list[RawEntry] = []
    position = 0
    while position + BLOCK <= len(data):
        start = position
        pax: dict[bytes, bytes] = {}
        block = data[position : position + BLOCK]
        if block == bytes(BLOCK):
            break
        if block[156:157] == b"x":
            size = parse_number(header_field(_checked(block, position), "size"))
            records = data[position + BLOCK : position + BLOCK + size]
            pax = parse_pax_records(records)
            position += BLOCK + size + (-size % BLOCK)
            block = data[position : position + BLOCK]
        typeflag = _checked(block, position)[156:157]
        if typeflag in (b"x", b"g", b"L", b"K", b"S"):
            raise ValueError(f"tar header type {typeflag!r} at byte {position} is not supported")
        size = parse_number(header_field(block, "size"))
        if b"size" in pax:
            size = int(pax[b"size"])
        if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        blocks = data[start : position + BLOCK]
        content = data[position + BLOCK : position + BLOCK + size]
        if len(content) != size:
            raise ValueError(f"tar entry at byte {start} is truncated")
        entries.append(RawEntry(start, blocks, content, pax))
        position += BLOCK + size + (-size % BLOCK)
    return TarLayout(entries, data[position:])


def _checked(block: bytes, position: int) -> bytes:
    if len(block) != BLOCK:
        raise ValueError(f"tar stream ends inside a header at byte {position}")
    stored = parse_number(header_field(block, "chksum"))
    computed = header_checksum(block)
    if stored != computed:
        raise ValueError(
            f"tar header at byte {position} stores checksum {stored}, "
            f"but its bytes sum to {computed}"
        )
    return block


def with_header_field(block: bytes, name: str, value: bytes) -> bytes:
    """Return a header block with one field replaced and the checksum recomputed."""
    edited = bytearray(block)
    edited[_FIELD_SLICES[name]] = value.ljust(len(edited[_FIELD_SLICES[name]]), b"\0")
    edited[148:156] = b"%06o\0 " % header_checksum(bytes(edited))
    return bytes(edited)


def filter_entries(data: bytes, keep: Callable[[RawEntry], bool]) -> bytes:
    """Return the tar stream without the entries for which `keep` is false."""
    layout = split_tar(data)
    return b"".join(entry.raw() for entry in layout.entries if keep(entry)) + layout.trailer


def normalize_whiteout_mtimes(data: bytes, not_before: int, not_after: int) -> bytes:
    """Set the mtime of every whiteout to 0, after checking it lies in [not_before, not_after].

    containerd 1.6 writes the time its ChangeWriter was created as each whiteout's
    mtime, where containerd 2.x and ocilayer write 0. A whiteout mtime that is neither
    0 nor inside the window raises AssertionError, so nothing else is masked.
    """
    layout = split_tar(data)
    pieces = []
    for entry in layout.entries:
        if entry.is_whiteout and entry.mtime != 0:
            if not not_before <= entry.mtime <= not_after:
                raise AssertionError(
                    f"whiteout {entry.name!r} has mtime {entry.mtime}, "
                    f"outside the run [{not_before}, {not_after}]"
                )
            header = with_header_field(entry.header, "mtime", b"%011o" % 0)
            entry = RawEntry(entry.offset, entry.blocks[:-BLOCK] + header, entry.data, entry.pax)
        pieces.append(entry.raw())
    return b"".join(pieces) + layout.trailer


# Comparison.


def describe_entry(entry: RawEntry) -> str:
    """Render an entry as one line: type, name, and link target or size."""
    text = f"{entry.typeflag.decode('ascii', 'replace')} {entry.name!r}"
    if entry.linkname:
        text += f" -> {entry.linkname!r}"
    elif entry.size:
        text += f" ({entry.size} bytes)"
    return text


def entry_differences(actual: RawEntry, expected: RawEntry) -> list[str]:
    """List, field by field, how two entries differ (empty when their bytes are equal)."""
    problems = []
    for name, _, _ in HEADER_FIELDS:
        got = header_field(actual.header, name)
        want = header_field(expected.header, name)
        if got != want:
            problems.append(f"header field {name}: {got!r} != {want!r}")
    for key in sorted(actual.pax.keys() | expected.pax.keys()):
        got_value, want_value = actual.pax.get(key), expected.pax.get(key)
        if got_value != want_value:
            problems.append(f"PAX record {key!r}: {got_value!r} != {want_value!r}")
    if actual.pax and expected.pax:
        got_pax, want_pax = actual.blocks[:BLOCK], expected.blocks[:BLOCK]
        for name, _, _ in HEADER_FIELDS:
            if header_field(got_pax, name) != header_field(want_pax, name):
                got, want = header_field(got_pax, name), header_field(want_pax, name)
                problems.append(f"PAX header field {name}: {got!r} != {want!r}")
    elif bool(actual.pax) != bool(expected.pax):
        problems.append(f"PAX header present: {bool(actual.pax)} != {bool(expected.pax)}")
    if not problems and actual.blocks != expected.blocks:
        problems.append("PAX record bytes differ (order or encoding)")
    if actual.data != expected.data:
        problems.append(f"data differs ({actual.size} bytes != {expected.size} bytes)")
    return problems


def assert_tars_equal(
    actual: bytes, expected: bytes, actual_label: str = "actual", expected_label: str = "expected"
) -> None:
    """Assert that two tar streams are equal byte for byte, explaining the first difference.

    The message names the first differing entry and each differing header field,
    PAX record or data, and lists the entries of both streams around it.
    """
    if actual == expected:
        return
    got, want = split_tar(actual), split_tar(expected)
    labels = f"{actual_label} != {expected_label}"
    for index in range(max(len(got.entries), len(want.entries))):
        got_entry = got.entries[index] if index < len(got.entries) else None
        want_entry = want.entries[index] if index < len(want.entries) else None
        if got_entry is not None and want_entry is not None:
            problems = entry_differences(got_entry, want_entry)
            if not problems:
                continue
            detail = "\n  ".join(problems)
            heading = f"tar entry {index} differs ({labels}), {got_entry.name!r}:\n  {detail}"
        else:
            heading = f"tar entry {index} exists only in one stream ({labels})"
        raise AssertionError(heading + "\n" + _side_by_side(got, want, index, labels))
    raise AssertionError(
        f"tar trailers differ ({labels}): {len(got.trailer)} bytes "
        f"{'all zero' if not any(got.trailer) else 'not all zero'} != {len(want.trailer)} bytes "
        f"{'all zero' if not any(want.trailer) else 'not all zero'}"
    )


def _side_by_side(got: TarLayout, want: TarLayout, index: int, labels: str) -> str:
    start = max(0, index - 5)
    lines = [f"entries {start}.. ({labels}):"]
    for position in range(start, min(index + 6, max(len(got.entries), len(want.entries)))):
        left = describe_entry(got.entries[position]) if position < len(got.entries) else "-"
        right = describe_entry(want.entries[position]) if position < len(want.entries) else "-"
        marker = "  " if left == right else "=>"
        lines.append(f"{marker} {position}: {left}  |  {right}")
    return "\n".join(lines)
