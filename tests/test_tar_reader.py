"""The streaming tar reader: formats, PAX precedence, whiteout names, errors and memory."""

from __future__ import annotations

import io
import subprocess
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apply_helpers import (
    MTIME_NS,
    block_device,
    char_device,
    directory,
    entry,
    fifo,
    file,
    hardlink,
    symlink,
    tar,
    whiteout,
    with_header_field,
)
from ocilayer.entry import ChangeKind, Entry, FileType
from ocilayer.errors import TarFormatError, UnsafePathError
from ocilayer.tarformat import reader as reader_module
from ocilayer.tarformat.encoder import (
    END_OF_ARCHIVE,
    TarHeader,
    encode_header,
    format_pax_record,
)
from ocilayer.tarformat.reader import BLOCK_SIZE as BLOCK
from ocilayer.tarformat.reader import TarReader, clean_entry_path, read_entries
from trees import Dir, Fifo, File, Hardlink, Node, Symlink, build_tree

EIGHT_GIB = 8 << 30
CAPABILITY = bytes.fromhex("0000000200300000000000000000000000000000")


def read_all(data: bytes) -> list[tuple[Entry, bytes]]:
    """Read every entry with its content (read before the next entry is requested)."""
    result = []
    for item in read_entries(io.BytesIO(data)):
        content = item.open().read() if item.opener is not None else b""
        result.append((item, content))
    return result


def summary(data: bytes) -> list[tuple[bytes, str, str, int, bytes, bytes]]:
    """(path, kind, type, mode, linkname, content) of each entry."""
    return [
        (item.path, item.kind.name, item.type.name, item.mode, item.linkname, content)
        for item, content in read_all(data)
    ]


class ZeroStream:
    """A stream of `head`, then `zeros` zero bytes, then `tail`, made up as it is read."""

    def __init__(self, head: bytes, zeros: int, tail: bytes) -> None:
        self._head = head
        self._zeros_left = zeros
        self._tail = tail

    def read(self, size: int = -1) -> bytes:
        if self._head:
            chunk, self._head = self._head[:size], self._head[size:]
            return chunk
        if self._zeros_left:
            count = min(size, self._zeros_left, 1 << 20)
            self._zeros_left -= count
            return bytes(count)
        chunk, self._tail = self._tail[:size], self._tail[size:]
        return chunk


# Formats


def test_ustar_entries_of_every_type() -> None:
    data = tar(
        directory("etc/", 0o755, uid=1, gid=2),
        file("etc/hosts", "127.0.0.1 localhost\n", 0o644, uid=3, gid=4),
        hardlink("etc/hosts.allow", "etc/hosts"),
        symlink("etc/link", "../usr/lib"),
        char_device("dev/null", 1, 3),
        block_device("dev/sda", 8, 0),
        fifo("run/fifo", 0o600),
    )
    items = read_all(data)

    assert [(item.path, item.type) for item, _ in items] == [
        (b"etc", FileType.DIRECTORY),
        (b"etc/hosts", FileType.REGULAR),
        (b"etc/hosts.allow", FileType.HARDLINK),
        (b"etc/link", FileType.SYMLINK),
        (b"dev/null", FileType.CHAR),
        (b"dev/sda", FileType.BLOCK),
        (b"run/fifo", FileType.FIFO),
    ]

    hosts, content = items[1]
    assert content == b"127.0.0.1 localhost\n"
    assert (hosts.mode, hosts.uid, hosts.gid, hosts.size) == (0o644, 3, 4, 20)
    assert hosts.mtime_ns == MTIME_NS
    assert hosts.kind is ChangeKind.ADD
    assert (items[0][0].uid, items[0][0].gid) == (1, 2)
    assert items[2][0].linkname == b"etc/hosts"
    assert items[3][0].linkname == b"../usr/lib"
    assert (items[4][0].devmajor, items[4][0].devminor) == (1, 3)
    assert (items[5][0].devmajor, items[5][0].devminor) == (8, 0)
    assert items[6][0].mode == 0o600


def test_ustar_prefix_field_joins_the_name() -> None:
    name = b"pppppppppp/qqqqqqqqqq/rrrrrrrrrr/" + b"s" * 80
    data = tar(file(name, "x"))
    assert data[345:377] == b"pppppppppp/qqqqqqqqqq/rrrrrrrrrr"
    assert [item.path for item, _ in read_all(data)] == [name]


def test_pax_path_and_linkpath_records() -> None:
    long_name = "dir/" + "a" * 120 + ".txt"
    data = tar(
        file(long_name, "abc"),
        file("caf\u00e9/men\u00fc", "x"),
        hardlink("alias", long_name),
        file(b"bad-\xff-name", "y"),
    )
    assert summary(data) == [
        (long_name.encode(), "ADD", "REGULAR", 0o644, b"", b"abc"),
        ("caf\u00e9/men\u00fc".encode(), "ADD", "REGULAR", 0o644, b"", b"x"),
        (b"alias", "ADD", "HARDLINK", 0o644, long_name.encode(), b""),
        (b"bad-\xff-name", "ADD", "REGULAR", 0o644, b"", b"y"),
    ]


def pax_header(records: dict[bytes, bytes]) -> bytes:
    """Encode a PAX extended header block with exactly these records, in this order."""
    data = b"".join(format_pax_record(key, value) for key, value in records.items())
    header = encode_header(TarHeader(name=b"PaxHeaders.0/x", typeflag=b"x", size=len(data)))
    return header + data + bytes(-len(data) % 512)


@pytest.mark.parametrize(
    "ustar_size", [b"00000000000\x00", b"\x00" * 12, b"77777777777\x00"], ids=["zero", "nul", "max"]
)
def test_pax_size_wins_over_the_ustar_field(ustar_size: bytes) -> None:
    main = with_header_field(encode_header(TarHeader(name=b"big", mode=0o644)), "size", ustar_size)
    data = pax_header({b"size": b"5"}) + main + b"hello" + bytes(507) + tar(file("after", "end"))
    assert summary(data) == [
        (b"big", "ADD", "REGULAR", 0o644, b"", b"hello"),
        (b"after", "ADD", "REGULAR", 0o644, b"", b"end"),
    ]


def test_later_pax_headers_add_to_earlier_ones() -> None:
    records = {b"path": b"first", b"uid": b"5"}
    data = pax_header(records) + pax_header({b"path": b"second"})
    data += encode_header(TarHeader(name=b"ustar-name", uid=1)) + END_OF_ARCHIVE
    ((item, _),) = read_all(data)
    assert (item.path, item.uid) == (b"second", 5)


@pytest.mark.parametrize("size", [EIGHT_GIB - 1, EIGHT_GIB], ids=["8GiB-1", "8GiB"])
def test_eight_gib_entry_then_small_file(size: int) -> None:
    header = TarHeader(name=b"big", size=size, mode=0o644, mtime_ns=MTIME_NS)
    head = encode_header(header)
    assert (b"size=8589934592" in head) is (size == EIGHT_GIB)
    tail = bytes(-size % 512) + tar(file("after", "end"))
    reader = TarReader(ZeroStream(head, size, tail))
    names = []
    for item in reader:
        names.append((item.path, item.size))
        if item.path == b"after":
            assert item.open().read() == b"end"
    assert names == [(b"big", size), (b"after", 3)]
    assert reader.offset == len(head) + size + len(tail)


def test_pax_ids_win_over_ustar_fields() -> None:
    data = tar(file("big-owner", uid=4294967294, gid=1000240000))
    assert data[156:157] == b"x"
    assert b" uid=4294967294\n" in data[512:1024]
    assert data[1024 + 108 : 1024 + 116] == b"0000000\x00"
    ((item, _),) = read_all(data)
    assert (item.uid, item.gid) == (4294967294, 1000240000)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (b"1700000000.123456789", 1_700_000_000_123_456_789),
        (b"1700000000.5", 1_700_000_000_500_000_000),
        (b"1700000000.1234567891234", 1_700_000_000_123_456_789),
        (b"-1", -1_000_000_000),
        (b"-1.5", -1_500_000_000),
        (b"8589934592", 8_589_934_592 * 10**9),
    ],
)
def test_pax_mtime_keeps_nanoseconds(record: bytes, expected: int) -> None:
    records = {b"mtime": record, b"atime": b"12.25", b"ctime": b"13"}
    data = pax_header(records) + encode_header(TarHeader(name=b"f")) + END_OF_ARCHIVE
    ((item, _),) = read_all(data)
    assert item.mtime_ns == expected
    assert item.atime_ns == 12_250_000_000
    assert item.ctime_ns == 13_000_000_000


OUT_OF_RANGE = "is out of range; tar numbers must fit in a signed 64-bit integer"
FIVE_THOUSAND_NINES = "999999999999999999999999'... (5000 bytes)"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ({b"size": b"9" * 5000}, f"PAX size record '{FIVE_THOUSAND_NINES} {OUT_OF_RANGE}"),
        ({b"uid": b"9" * 5000}, f"PAX uid record '{FIVE_THOUSAND_NINES} {OUT_OF_RANGE}"),
        ({b"gid": b"9223372036854775808"}, f"PAX gid record '9223372036854775808' {OUT_OF_RANGE}"),
        ({b"mtime": b"9" * 5000}, f"PAX mtime record '{FIVE_THOUSAND_NINES} {OUT_OF_RANGE}"),
        (
            {b"mtime": b"99999999999999999999"},
            f"PAX mtime record '99999999999999999999' {OUT_OF_RANGE}",
        ),
        (
            {b"atime": b"-9223372036854775809.5"},
            f"PAX atime record '-9223372036854775809' {OUT_OF_RANGE}",
        ),
        (
            {b"ctime": b"9" * 5000 + b".5"},
            f"PAX ctime record '{FIVE_THOUSAND_NINES} {OUT_OF_RANGE}",
        ),
        (
            {b"SCHILY.devmajor": b"9" * 5000},
            f"PAX SCHILY.devmajor record '{FIVE_THOUSAND_NINES} {OUT_OF_RANGE}",
        ),
    ],
    ids=["size", "uid", "gid", "mtime-digits", "mtime", "atime", "ctime", "devmajor"],
)
def test_out_of_range_pax_numbers_raise(records: dict[bytes, bytes], message: str) -> None:
    data = pax_header(records) + encode_header(TarHeader(name=b"f")) + END_OF_ARCHIVE
    with pytest.raises(TarFormatError) as raised:
        read_all(data)
    assert str(raised.value) == f"entry 'f' at offset 0: {message}"


def test_out_of_range_error_names_pax_path() -> None:
    records = {b"size": b"9" * 20, b"path": b"named"}
    first = file("first", "1")
    data = first + pax_header(records) + encode_header(TarHeader(name=b"f")) + END_OF_ARCHIVE
    with pytest.raises(TarFormatError) as raised:
        read_all(data)
    assert str(raised.value) == (
        f"entry 'named' at offset {len(first)}: PAX size record '99999999999999999999' "
        f"{OUT_OF_RANGE}"
    )


def test_pax_numbers_at_int64_limits() -> None:
    records = {
        b"mtime": b"9223372036854775807.999999999",
        b"atime": b"-9223372036854775808",
        b"uid": b"0" * 5000 + b"7",
    }
    data = pax_header(records) + encode_header(TarHeader(name=b"f")) + END_OF_ARCHIVE
    ((item, _),) = read_all(data)
    assert item.mtime_ns == 9_223_372_036_854_775_807_999_999_999
    assert item.atime_ns == -9_223_372_036_854_775_808_000_000_000
    assert item.uid == 7


def raw_pax_header(body: bytes) -> bytes:
    header = encode_header(TarHeader(name=b"PaxHeaders.0/x", typeflag=b"x", size=len(body)))
    return header + body + bytes(-len(body) % 512)


def test_pax_record_length_with_5000_digits() -> None:
    data = raw_pax_header(b"9" * 5000 + b" path=x\n")
    data += encode_header(TarHeader(name=b"f")) + END_OF_ARCHIVE
    with pytest.raises(TarFormatError) as raised:
        read_all(data)
    assert str(raised.value) == (
        "PAX header 'PaxHeaders.0/x' at offset 0 has an invalid record length "
        f"'{FIVE_THOUSAND_NINES} at byte 0"
    )


def test_pax_record_length_with_leading_zeros() -> None:
    # 4,998 zeros and "5014": the record, with " path=named\n", is 5,014 bytes long.
    data = raw_pax_header(b"0" * 4998 + b"5014 path=named\n")
    data += encode_header(TarHeader(name=b"f")) + END_OF_ARCHIVE
    ((item, _),) = read_all(data)
    assert item.path == b"named"


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        (
            "mtime",
            b"\x80" + b"\xff" * 11,
            f"the base-256 mtime field 80ffffffffffffffffffffff {OUT_OF_RANGE}",
        ),
        (
            "mtime",
            b"\xff\x80" + bytes(10),
            f"the base-256 mtime field ff8000000000000000000000 {OUT_OF_RANGE}",
        ),
        (
            "size",
            b"\x80\x00\x00\x01" + bytes(8),
            f"the base-256 size field 800000010000000000000000 {OUT_OF_RANGE}",
        ),
    ],
    ids=["mtime", "negative-mtime", "size"],
)
def test_out_of_range_base256_fields_raise(field: str, raw: bytes, message: str) -> None:
    block = with_header_field(encode_header(TarHeader(name=b"f")), field, raw)
    with pytest.raises(TarFormatError) as raised:
        read_all(block + END_OF_ARCHIVE)
    assert str(raised.value) == f"entry 'f' at offset 0: {message}"


@pytest.mark.parametrize(
    ("field", "raw", "shown"),
    [
        ("mode", b"-000644", r"'-000644\x00'"),
        ("mode", b"+000644", r"'+000644\x00'"),
        ("uid", b"0o17", r"'0o17\x00\x00\x00\x00'"),
        ("size", b"0000000000_5", "'0000000000_5'"),
        ("mtime", b"1 2", r"'1 2" + r"\x00" * 9 + "'"),
    ],
    ids=["minus", "plus", "0o-prefix", "underscore", "inner-space"],
)
def test_octal_fields_take_only_digits(field: str, raw: bytes, shown: str) -> None:
    """Python's int() would take these; Go's and GNU tar's readers reject them."""
    block = with_header_field(encode_header(TarHeader(name=b"f")), field, raw)
    with pytest.raises(TarFormatError) as raised:
        read_all(block + END_OF_ARCHIVE)
    assert str(raised.value) == f"entry 'f' at offset 0 has an invalid {field} field {shown}"


def test_base256_mtime_at_int64_limits() -> None:
    largest = b"\x80" + bytes(3) + ((1 << 63) - 1).to_bytes(8, "big")
    smallest = b"\xff" * 4 + (1 << 63).to_bytes(8, "big")
    data = b"".join(
        with_header_field(encode_header(TarHeader(name=name)), "mtime", raw)
        for name, raw in ((b"largest", largest), (b"smallest", smallest))
    )
    items = read_all(data + END_OF_ARCHIVE)
    assert items[0][0].mtime_ns == ((1 << 63) - 1) * 10**9
    assert items[1][0].mtime_ns == -(1 << 63) * 10**9


def test_gnu_long_names_and_base256_ids(tmp_path: Path) -> None:
    long_name = "d/" + "n" * 150
    long_target = "t/" + "l" * 150
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo(long_name)
        info.size = 2
        info.uid = 4294967294
        info.mtime = 1_600_000_000
        archive.addfile(info, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("s")
        link.type = tarfile.SYMTYPE
        link.linkname = long_target
        archive.addfile(link)
    data = buffer.getvalue()
    assert b"././@LongLink" in data
    items = read_all(data)
    assert [(item.path, item.linkname, content) for item, content in items] == [
        (long_name.encode(), b"", b"ok"),
        (b"s", long_target.encode(), b""),
    ]
    assert items[0][0].uid == 4294967294
    assert items[0][0].mtime_ns == 1_600_000_000 * 10**9


def test_pax_global_header_is_ignored() -> None:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}
    ) as archive:
        info = tarfile.TarInfo("f")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"1"))
    assert split_tar_types(buffer.getvalue())[0] == b"g"
    assert summary(buffer.getvalue()) == [(b"f", "ADD", "REGULAR", 0o644, b"", b"1")]


def split_tar_types(data: bytes) -> list[bytes]:
    """Return the typeflag of every header block in order, extended headers included."""
    types = []
    position = 0
    while position + 512 <= len(data) and data[position : position + 512] != bytes(512):
        block = data[position : position + 512]
        types.append(block[156:157])
        size = int(block[124:136].rstrip(b"\x00 ") or b"0", 8)
        data_size = 0 if block[156:157] in b"123456" else size
        position += 512 + data_size + (-data_size % 512)
    return types


def test_binary_xattr_values_stay_bytes() -> None:
    data = tar(file("usr/bin/ping", "\x7fELF", 0o755, xattrs={b"security.capability": CAPABILITY}))
    ((item, _),) = read_all(data)
    assert dict(item.xattrs) == {b"security.capability": CAPABILITY}


def test_libarchive_xattr_records() -> None:
    records = {
        b"LIBARCHIVE.xattr.user.only%20here": b"dmFsdWU",
        b"LIBARCHIVE.xattr.user.%C3%BCn%C3%AF": b"dg==",
        b"SCHILY.xattr.user.%C3%BCn%C3%AF": b"v",
        b"SCHILY.xattr.user.literal%41": b"kept",
    }
    ((item, _),) = read_all(tar(entry("f", pax=records)))
    assert dict(item.xattrs) == {
        b"user.literal%41": b"kept",
        b"user.only here": b"value",
        "user.\u00fcn\u00ef".encode(): b"v",
    }


def test_invalid_base64_xattr_value_is_an_error() -> None:
    with pytest.raises(TarFormatError, match="invalid base64 xattr value"):
        read_all(tar(entry("f", pax={b"LIBARCHIVE.xattr.user.a": b"!!"})))


def test_old_regular_type_with_slash() -> None:
    blocks = file("old", "x")
    header = with_header_field(blocks[:512], "typeflag", b"\x00")
    as_directory = with_header_field(
        with_header_field(header, "name", b"olddir/"), "size", b"00000000000\x00"
    )
    data = header + blocks[512:] + as_directory + END_OF_ARCHIVE
    assert summary(data) == [
        (b"old", "ADD", "REGULAR", 0o644, b"", b"x"),
        (b"olddir", "ADD", "DIRECTORY", 0o644, b"", b""),
    ]


# Names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"etc/passwd", b"etc/passwd"),
        (b"./etc/passwd", b"etc/passwd"),
        (b"/etc/passwd", b"etc/passwd"),
        (b"//etc//./passwd/", b"etc/passwd"),
        (b"dne/../.wh.etc", b".wh.etc"),
        (b"a/b/../../c", b"c"),
        (b"./", b""),
        (b"/", b""),
    ],
)
def test_clean_entry_path(raw: bytes, expected: bytes) -> None:
    assert clean_entry_path(raw) == expected


@pytest.mark.parametrize("raw", [b"..", b"../escape", b"a/../../escape", b"/../victim/x"])
def test_clean_entry_path_rejects_escapes(raw: bytes) -> None:
    with pytest.raises(UnsafePathError, match="climbs above the layer root"):
        clean_entry_path(raw)


def test_escaping_names_raise_with_the_entry_and_offset() -> None:
    data = tar(file("ok", "1"), file("a/../../escape", "2"))
    with pytest.raises(UnsafePathError) as raised:
        read_all(data)
    assert "a/../../escape" in str(raised.value)
    assert "offset 1024" in str(raised.value)


def test_escaping_hardlink_target_raises() -> None:
    data = tar(hardlink("localpasswd", "../../../../../etc/passwd"))
    with pytest.raises(UnsafePathError, match=r"'\.\./\.\./\.\./\.\./\.\./etc/passwd'"):
        read_all(data)


def test_hardlink_targets_are_cleaned_and_symlink_targets_kept() -> None:
    data = tar(hardlink("a", "/usr/bin/perlbug"), symlink("b", "/../../etc//x"))
    assert [item.linkname for item, _ in read_all(data)] == [
        b"usr/bin/perlbug",
        b"/../../etc//x",
    ]


def test_whiteout_names_become_changes() -> None:
    data = tar(
        whiteout(".wh.baz"),
        whiteout("foo/.wh.cde"),
        whiteout("foo/.wh..wh..opq"),
        whiteout(".wh..wh..opq"),
        whiteout(".wh..bay"),
        file(".wh.etc/somefile", "non-empty"),
    )
    assert [(item.kind.name, item.path) for item, _ in read_all(data)] == [
        ("DELETE", b"baz"),
        ("DELETE", b"foo/cde"),
        ("OPAQUE", b"foo"),
        ("OPAQUE", b""),
        ("DELETE", b".bay"),
        ("ADD", b".wh.etc/somefile"),
    ]


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "etc/.wh..", "etc/.wh...", "a/.wh./"])
def test_malformed_whiteouts_raise(name: str) -> None:
    malformed = directory(name) if name.endswith("/") else whiteout(name)
    with pytest.raises(UnsafePathError, match="invalid whiteout name") as raised:
        read_all(tar(file("ok"), malformed))
    whiteout_name = name.rstrip("/").rpartition("/")[2]
    assert str(raised.value) == (
        f"entry '{name}' at offset 512: invalid whiteout name '{whiteout_name}', a whiteout "
        "must name a file in its own directory"
    )


# Truncated and corrupt streams


def test_empty_stream_and_end_markers_hold_no_entries() -> None:
    for data in (b"", bytes(512), bytes(1024), bytes(10240)):
        assert read_all(data) == []


def test_truncated_inside_data_names_the_entry_and_offset() -> None:
    data = tar(file("first", "1"), file("second", b"x" * 2000))
    cut = data[: 1024 + 512 + 100]
    with pytest.raises(TarFormatError) as raised:
        read_all(cut)
    message = str(raised.value)
    assert "truncated at offset 1636" in message
    assert "'second'" in message
    assert "1900 bytes" in message


def test_truncated_inside_a_header_names_the_offset() -> None:
    data = tar(file("first", "1"), file("second", "2"))
    with pytest.raises(TarFormatError, match="inside the header at offset 1024"):
        read_all(data[:1100])


def test_missing_end_marker_is_an_error() -> None:
    data = tar(file("first", "1"), end=b"")
    with pytest.raises(TarFormatError, match=r"ends at offset 1024 .* without the end-of-archive"):
        read_all(data)


def test_end_after_extended_header() -> None:
    blocks = file("caf\u00e9")
    assert blocks[156:157] == b"x"
    with pytest.raises(TarFormatError, match="after an extended header"):
        read_all(blocks[:-512])


def test_bad_checksum_is_an_error_naming_the_offset() -> None:
    data = bytearray(tar(file("first", "1"), file("second", "2")))
    data[1024 + 10] ^= 0x01
    with pytest.raises(TarFormatError, match="invalid tar header at offset 1024: checksum"):
        read_all(bytes(data))


def test_data_after_one_zero_block() -> None:
    data = file("first", "1") + bytes(512) + file("hidden", "2")
    with pytest.raises(TarFormatError, match="data at offset 1536 after a zero block"):
        read_all(data)


def test_oversized_extended_header_is_rejected() -> None:
    header = bytearray(encode_header(TarHeader(name=b"x", typeflag=b"x", size=2 << 20)))
    data = bytes(header) + bytes(2 << 20) + END_OF_ARCHIVE
    with pytest.raises(TarFormatError, match="more than the maximum"):
        read_all(data)


@pytest.mark.parametrize(
    ("typeflag", "message"), [(b"S", "GNU sparse"), (b"Z", "unsupported type")]
)
def test_unsupported_entry_types_raise(typeflag: bytes, message: str) -> None:
    with pytest.raises(TarFormatError, match=message):
        read_all(tar(entry("odd", typeflag)))


def test_pax_sparse_records_raise() -> None:
    with pytest.raises(TarFormatError, match="GNU sparse"):
        read_all(tar(entry("f", pax={b"GNU.sparse.major": b"1"})))


# Streaming


def test_content_opens_once_in_order() -> None:
    reader = iter(read_entries(io.BytesIO(tar(file("a", "1"), file("b", "2")))))
    first = next(reader)
    content = first.open()
    with pytest.raises(ValueError, match="can be opened once"):
        first.open()
    second = next(reader)
    with pytest.raises(ValueError, match="no longer available"):
        content.read()
    assert second.open().read() == b"2"


def test_unread_content_is_skipped() -> None:
    data = tar(file("a", b"x" * 5000), file("b", "2"))
    assert [item.path for item in read_entries(io.BytesIO(data))] == [b"a", b"b"]


def test_memory_stays_flat_across_many_entries() -> None:
    count = 5000

    def stream() -> Iterator[bytes]:
        for index in range(count):
            yield file(f"dir{index % 100}/file{index}", b"x" * 700)
        yield END_OF_ARCHIVE

    class Chunks:
        def __init__(self) -> None:
            self._chunks = stream()
            self._buffer = b""

        def read(self, size: int = -1) -> bytes:
            while len(self._buffer) < size:
                chunk = next(self._chunks, b"")
                if not chunk:
                    break
                self._buffer += chunk
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data

    tracemalloc.start()
    try:
        seen = 0
        for item in TarReader(Chunks()):
            item.open().read()
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    assert peak < 2 << 20, f"peak {peak} bytes while reading {count} entries"


# Archives of real tools


def gnu_and_bsd_archives(tree: Path, tmp_path: Path) -> dict[str, bytes]:
    commands = {
        "gnu-pax": ["tar", "--xattrs", "--format=pax", "-cf", "-", "-C", str(tree), "."],
        "gnu-gnu": ["tar", "--format=gnu", "-cf", "-", "-C", str(tree), "."],
        "bsdtar": ["bsdtar", "-cf", "-", "-C", str(tree), "."],
    }
    return {
        label: subprocess.run(command, capture_output=True, check=True).stdout
        for label, command in commands.items()
    }


def test_gnu_tar_and_bsdtar_archives(tmp_path: Path) -> None:
    spec: dict[str, Node] = {
        "etc": Dir(0o750),
        "etc/hosts": File(b"127.0.0.1 localhost\n", 0o640, uid=7, gid=8),
        "etc/hosts.allow": Hardlink(b"etc/hosts"),
        "etc/" + "long" * 30: File(b"long name"),
        "bin": Symlink(b"usr/bin"),
        "run/fifo": Fifo(0o600),
    }
    tree = build_tree(tmp_path / "tree", spec)
    for label, data in gnu_and_bsd_archives(tree, tmp_path).items():
        ours = [
            (item.path, item.type.name, item.mode, item.uid, item.size, item.linkname, content)
            for item, content in read_all(data)
        ]
        theirs = []
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                name = clean_entry_path(member.name.encode())
                kind = {"0": "REGULAR", "1": "HARDLINK", "2": "SYMLINK", "5": "DIRECTORY",
                        "6": "FIFO"}[member.type.decode()]  # fmt: skip
                extracted = archive.extractfile(member) if member.isreg() else None
                content = extracted.read() if extracted is not None else b""
                link = member.linkname.encode()
                if member.islnk():
                    link = clean_entry_path(link)
                theirs.append((name, kind, member.mode, member.uid, member.size, link, content))
        assert ours == theirs, label


# The header fast path


def _parsed(parse: Callable[[bytes, int], Any], block: bytes) -> object:
    """What a header parser makes of `block`: its fields, or the error's type and text."""
    try:
        header = parse(block, 0)
    except TarFormatError as error:
        return ("error", str(error))
    return {name: getattr(header, name) for name in header.__slots__}


GO_HEADER = encode_header(
    TarHeader(
        name=b"dir/file", mode=0o644, uid=1000, gid=1000, size=5, mtime_ns=1_700_000_000 * 10**9
    )
)


@settings(max_examples=500, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 499), st.sampled_from(b"\x00\x80\xff 01789-_+xu")),
        max_size=6,
    ),
    checksum=st.sampled_from(["stale", "unsigned", "signed"]),
)
def test_fast_header_parse_agrees_with_the_checked_parser(
    edits: list[tuple[int, int]], checksum: str
) -> None:
    """Byte edits anywhere in a Go header, with the checksum left stale or recomputed.

    The fast path must return the same fields as the checked parser, or hand the block
    to it: base-256 numbers, signed checksums and broken fields all take the slow path.
    """
    block = bytearray(GO_HEADER)
    for position, value in edits:
        block[position] = value
    if checksum != "stale":
        block[148:156] = b"        "
        total = sum(block)
        if checksum == "signed":
            total -= 256 * sum(1 for byte in block if byte > 0x7F)
        block[148:156] = b"%06o\x00 " % (total & 0o777777)
    data = bytes(block)
    assert _parsed(reader_module._parse_block, data) == _parsed(
        reader_module._parse_block_checked, data
    )


def test_reader_fills_every_entry_field() -> None:
    """The reader builds entries from a positional tuple; each value lands in its field."""
    records = {
        b"atime": b"1700000001.5",
        b"ctime": b"1700000002.25",
        b"SCHILY.xattr.user.k": b"v",
        b"uid": b"70000",
    }
    main = encode_header(
        TarHeader(name=b"dev", typeflag=b"3", mode=0o4640, gid=9, devmajor=4, devminor=5,
                  mtime_ns=1_700_000_000 * 10**9)
    )  # fmt: skip
    ((item, _),) = read_all(pax_header(records) + main + END_OF_ARCHIVE)
    assert item == Entry(
        path=b"dev",
        kind=ChangeKind.ADD,
        type=FileType.CHAR,
        mode=0o4640,
        uid=70000,
        gid=9,
        mtime_ns=1_700_000_000 * 10**9,
        atime_ns=1_700_000_001_500_000_000,
        ctime_ns=1_700_000_002_250_000_000,
        devmajor=4,
        devminor=5,
        xattrs={b"user.k": b"v"},
    )


class _Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes a call, with or without readinto."""

    def __init__(self, data: bytes, step: int, with_readinto: bool) -> None:
        self._data = memoryview(data)
        self._step = step
        self._position = 0
        if not with_readinto:
            self.readinto = None  # type: ignore[assignment]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = len(self._data)
        end = min(self._position + size, self._position + self._step, len(self._data))
        chunk = self._data[self._position : end].tobytes()
        self._position = end
        return chunk

    def readinto(self, buffer: Any, /) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("with_readinto", [True, False], ids=["readinto", "read"])
@pytest.mark.parametrize("step", [5, 700, 1 << 20])
def test_read_ahead_serves_the_stream_in_order(step: int, with_readinto: bool) -> None:
    """read_ahead and consume see the stream's bytes in order, then entries read on.

    Short reads, a buffer that grows, bytes left over that move to the front of the
    buffer, and streams with and without readinto.
    """
    entries = [file(f"f{index}", bytes([index]) * index * 37) for index in range(40)]
    boundaries = [0]
    for raw in entries:
        boundaries.append(boundaries[-1] + len(raw))
    data = tar(b"".join(entries))
    reader = TarReader(_Trickle(data, step, with_readinto))
    index = 0
    # Each at least two entries long (two entries here take at most 8 blocks).
    for size in (8 * BLOCK, 9 * BLOCK, 40 * BLOCK, 8 * BLOCK, 12 * BLOCK, 30 * BLOCK):
        view, start = reader.read_ahead(size)
        position = boundaries[index]
        assert len(view) - start >= size
        assert bytes(view[start : start + size]) == data[position : position + size]
        # Take two whole entries: the rest of what was read ahead is served again.
        reader.consume(boundaries[index + 2] - position)
        index += 2
    assert reader.offset == boundaries[index]
    rest = list(reader)
    assert [e.path for e in rest] == [b"f%d" % n for n in range(index, 40)]
    assert reader.offset == len(data)


def test_read_ahead_at_the_end_of_the_stream() -> None:
    data = tar(file("only", "abc"))
    reader = TarReader(io.BytesIO(data))
    view, start = reader.read_ahead(1 << 20)
    assert (bytes(view), start) == (data, 0)
    reader.consume(2 * BLOCK)
    assert list(reader) == []
    assert reader.offset == len(data)
