"""Byte-level tests of the tar encoder against the layout Go's archive/tar writes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocilayer.errors import TarFormatError
from ocilayer.tarformat.encoder import (
    END_OF_ARCHIVE,
    TarHeader,
    byte_sum,
    encode_header,
    encode_plain_ustar,
    format_pax_record,
    format_pax_time,
    pax_header_name,
    split_ustar_path,
)

EMPTY_TAR_DIFF_ID = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def field(block: bytes, start: int, end: int) -> bytes:
    return block[start:end]


def checksum_ok(block: bytes) -> bool:
    stored = int(block[148:154], 8)
    return stored == sum(block[:148]) + 8 * 0x20 + sum(block[156:512])


def pax_records(blocks: bytes) -> dict[bytes, bytes]:
    size = int(blocks[124:135], 8)
    data = blocks[512 : 512 + size]
    records = {}
    while data:
        length = int(data.split(b" ", 1)[0])
        record, data = data[:length], data[length:]
        key, _, value = record.split(b" ", 1)[1].partition(b"=")
        records[key] = value[:-1]
    return records


def test_empty_archive_digest() -> None:
    assert len(END_OF_ARCHIVE) == 1024
    assert hashlib.sha256(END_OF_ARCHIVE).hexdigest() == EMPTY_TAR_DIFF_ID


def test_directory_header_layout() -> None:
    block = encode_header(TarHeader(b"etc/", b"5", 0o755, 0, 0, mtime_ns=1_700_000_000 * 10**9))
    assert len(block) == 512
    assert field(block, 0, 100) == b"etc/" + bytes(96)
    assert field(block, 100, 108) == b"0000755\x00"
    assert field(block, 108, 116) == b"0000000\x00"
    assert field(block, 116, 124) == b"0000000\x00"
    assert field(block, 124, 136) == b"00000000000\x00"
    assert field(block, 136, 148) == b"%011o\x00" % 1_700_000_000
    assert field(block, 156, 157) == b"5"
    assert field(block, 257, 265) == b"ustar\x0000"
    assert field(block, 265, 329) == bytes(64)
    assert field(block, 329, 345) == b"0000000\x000000000\x00"
    assert field(block, 345, 512) == bytes(167)
    assert field(block, 154, 156) == b"\x00 "
    assert checksum_ok(block)


def test_whiteout_header_layout() -> None:
    block = encode_header(TarHeader(b"d1/.wh.f1"))
    assert field(block, 0, 9) == b"d1/.wh.f1"
    assert field(block, 100, 108) == b"0000000\x00"
    assert field(block, 136, 148) == b"00000000000\x00"
    assert field(block, 156, 157) == b"0"
    assert len(block) == 512


def test_capability_goes_to_pax_header() -> None:
    capability = bytes.fromhex("0000000200300000000000000000000000000000")
    blocks = encode_header(
        TarHeader(
            b"usr/bin/ping",
            mode=0o755,
            size=8,
            pax_records={b"SCHILY.xattr.security.capability": capability},
        )
    )
    assert len(blocks) == 3 * 512
    assert field(blocks, 0, 100).rstrip(b"\x00") == b"usr/bin/PaxHeaders.0/ping"
    assert field(blocks, 156, 157) == b"x"
    assert field(blocks, 100, 108) == b"0000000\x00"
    assert field(blocks, 136, 148) == b"00000000000\x00"
    assert field(blocks, 329, 345) == bytes(16)
    assert pax_records(blocks) == {b"SCHILY.xattr.security.capability": capability}
    main = blocks[1024:]
    assert field(main, 0, 100).rstrip(b"\x00") == b"usr/bin/ping"
    assert field(main, 329, 345) == b"0000000\x000000000\x00"
    assert checksum_ok(blocks[:512])
    assert checksum_ok(main)


def test_long_name_uses_last_fitting_slash() -> None:
    name = b"pppppppppp/qqqqqqqqqq/rrrrrrrrrr/" + b"s" * 80
    assert len(name) == 113
    block = encode_header(TarHeader(name))
    assert len(block) == 512
    assert field(block, 345, 500).rstrip(b"\x00") == b"pppppppppp/qqqqqqqqqq/rrrrrrrrrr"
    assert field(block, 0, 100).rstrip(b"\x00") == b"s" * 80


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"a" * 100, None),
        (b"a" * 101, None),
        (b"d/" + b"a" * 100, ("d", "a" * 100)),
        (b"d/" + b"a" * 101, None),
        (b"p" * 155 + b"/" + b"n", ("p" * 155, "n")),
        (b"p" * 156 + b"/" + b"n", None),
        (b"d/" + b"x" * 99 + b"/", ("d", "x" * 99 + "/")),
        (b"d/" + b"x" * 120 + b"/", None),
        ("d/é".encode() + b"a" * 100, None),
    ],
)
def test_split_ustar_path(name: bytes, expected: tuple[str, str] | None) -> None:
    result = split_ustar_path(name)
    if expected is None:
        assert result is None
    else:
        assert result == (expected[0].encode(), expected[1].encode())


def test_non_ascii_name_needs_path_record() -> None:
    name = "café/naïve".encode()
    blocks = encode_header(TarHeader(name))
    assert pax_records(blocks) == {b"path": name}
    assert field(blocks, 0, 100).rstrip(b"\x00") == b"caf/PaxHeaders.0/nave"
    assert field(blocks[1024:], 0, 100).rstrip(b"\x00") == b"caf/nave"


def test_non_utf8_name_survives_in_path_record() -> None:
    name = b"bad\xff\xfename"
    blocks = encode_header(TarHeader(name))
    assert pax_records(blocks) == {b"path": name}


def test_large_ids_use_pax_and_zero_fields() -> None:
    blocks = encode_header(TarHeader(b"big-owner", uid=4294967294, gid=1000240000))
    assert pax_records(blocks) == {b"gid": b"1000240000", b"uid": b"4294967294"}
    main = blocks[1024:]
    assert field(main, 108, 116) == b"0000000\x00"
    assert field(main, 116, 124) == b"0000000\x00"


def test_largest_ustar_uid_fits() -> None:
    block = encode_header(TarHeader(b"f", uid=2097151))
    assert len(block) == 512
    assert field(block, 108, 116) == b"7777777\x00"
    blocks = encode_header(TarHeader(b"f", uid=2097152))
    assert pax_records(blocks) == {b"uid": b"2097152"}


def test_size_of_eight_gib() -> None:
    fits = encode_header(TarHeader(b"big", size=8589934591))
    assert len(fits) == 512
    assert field(fits, 124, 136) == b"77777777777\x00"
    blocks = encode_header(TarHeader(b"big", size=8589934592))
    assert pax_records(blocks) == {b"size": b"8589934592"}
    assert field(blocks[1024:], 124, 136) == b"00000000000\x00"


@pytest.mark.parametrize(
    ("mtime_ns", "record"),
    [
        (1_700_000_000_123_456_789, b"1700000000.123456789"),
        (1_700_000_000_100_000_000, b"1700000000.1"),
        (-1_000_000_000, b"-1"),
        (-1, b"-0.000000001"),
        (-1_500_000_000, b"-1.5"),
        (8_589_934_592 * 10**9, b"8589934592"),
    ],
)
def test_mtime_records(mtime_ns: int, record: bytes) -> None:
    assert format_pax_time(mtime_ns) == record
    blocks = encode_header(TarHeader(b"f", mtime_ns=mtime_ns))
    assert pax_records(blocks) == {b"mtime": record}


def test_mtime_before_2242_fits_ustar() -> None:
    block = encode_header(TarHeader(b"f", mtime_ns=2_147_483_648 * 10**9))
    assert len(block) == 512
    assert field(block, 136, 148) == b"%011o\x00" % 2_147_483_648


def test_unrequested_format_rounds_mtime() -> None:
    block = encode_header(TarHeader(b"f", mtime_ns=1_600_000_000 * 10**9, format_pax=False))
    rounded = encode_header(TarHeader(b"f", mtime_ns=1_599_999_999_500_000_000, format_pax=False))
    assert block == rounded


def test_pax_record_length_counts_itself() -> None:
    assert format_pax_record(b"path", b"a" * 4) == b"13 path=aaaa\n"
    # 98 bytes plus a 2-digit length make 100, whose 3 digits make the record 101 long.
    record = format_pax_record(b"k", b"v" * 94)
    assert record.startswith(b"101 k=")
    assert len(record) == 101


def test_pax_header_names() -> None:
    assert pax_header_name(b"foo") == b"PaxHeaders.0/foo"
    assert pax_header_name(b"a/b/") == b"a/b/PaxHeaders.0"
    assert pax_header_name(b"a//b") == b"a/PaxHeaders.0/b"


def test_records_sorted_by_key() -> None:
    blocks = encode_header(
        TarHeader(
            "ü".encode(),
            uid=1 << 30,
            pax_records={b"SCHILY.xattr.user.b": b"2", b"SCHILY.xattr.user.a": b"1"},
        )
    )
    size = int(blocks[124:135], 8)
    data = blocks[512 : 512 + size]
    keys = [line.split(b" ", 1)[1].split(b"=", 1)[0] for line in data.splitlines()]
    assert keys == [b"SCHILY.xattr.user.a", b"SCHILY.xattr.user.b", b"path", b"uid"]


def test_xattr_value_may_hold_nul() -> None:
    blocks = encode_header(TarHeader(b"f", pax_records={b"SCHILY.xattr.user.k": b"\x00a\x00"}))
    assert pax_records(blocks) == {b"SCHILY.xattr.user.k": b"\x00a\x00"}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            TarHeader(b"dev", b"3", devmajor=1 << 21),
            "'dev': devmajor 2097152 does not fit a tar header",
        ),
        (TarHeader(b"f", mode=1 << 21), "'f': mode 2097152 does not fit a tar header"),
        (TarHeader(b"f/", b"0"), "'f/': a file name may not end with '/'"),
        (TarHeader("é\x00".encode()), "'é\\x00': PAX record path contains a NUL byte"),
    ],
)
def test_unencodable_headers_raise(header: TarHeader, message: str) -> None:
    with pytest.raises(TarFormatError) as raised:
        encode_header(header)
    assert str(raised.value) == message


def test_truncated_pax_main_name_drops_trailing_slash() -> None:
    name = b"d/" + b"y" * 200 + b"/"
    blocks = encode_header(TarHeader(name, b"5", 0o755))
    main = blocks[-512:]
    assert field(main, 0, 100) == b"d/" + b"y" * 98
    assert pax_records(blocks) == {b"path": name}


@given(
    name=st.one_of(
        st.binary(min_size=1, max_size=120),
        st.text("ab/.-", min_size=1, max_size=104).map(str.encode),
    ),
    linkname=st.one_of(st.binary(max_size=110), st.text("xy/", max_size=101).map(str.encode)),
    typeflag=st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5", b"6"]),
    mode=st.integers(0, (1 << 21) + 5),
    uid=st.integers(0, (1 << 21) + 5),
    gid=st.integers(0, 70000),
    size=st.integers(0, (1 << 33) + 5),
    mtime=st.integers(-5, (1 << 33) + 5),
    devmajor=st.integers(0, 4096),
    devminor=st.integers(0, 1 << 20),
)
@settings(max_examples=3000)
def test_plain_ustar_matches_general_encoder(
    name: bytes,
    linkname: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    devmajor: int,
    devminor: int,
) -> None:
    name = name.replace(b"\x00", b"n")
    linkname = linkname.replace(b"\x00", b"l")
    fast = encode_plain_ustar(
        name, typeflag, mode, uid, gid, size, mtime, linkname, devmajor, devminor
    )
    if fast is None:
        return
    header = TarHeader(name, typeflag, mode, uid, gid, size, mtime * 10**9, linkname=linkname,
                       devmajor=devmajor, devminor=devminor)  # fmt: skip
    assert fast == encode_header(header)


@given(st.binary(min_size=512, max_size=512))
def test_byte_sum_equals_sum(block: bytes) -> None:
    assert byte_sum(block) == sum(block)


def test_byte_sum_of_largest_block() -> None:
    assert byte_sum(b"\xff" * 512) == 512 * 255
