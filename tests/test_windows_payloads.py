"""Payload formats inside backup streams and tar records: EAs, reparse points, FILETIMEs."""

from __future__ import annotations

import pytest

from ocilayer.tarformat.encoder import format_pax_time
from ocilayer.windows.backuptar import GO_ZERO_TIME_NS
from ocilayer.windows.ea import (
    ExtendedAttribute,
    ExtendedAttributeError,
    decode_extended_attributes,
    encode_extended_attributes,
)
from ocilayer.windows.fileinfo import (
    FileBasicInfo,
    filetime_to_ns,
    ns_to_filetime,
    parse_pax_time,
)
from ocilayer.windows.reparse import (
    IO_REPARSE_TAG_SYMLINK,
    ReparsePoint,
    ReparsePointError,
    decode_reparse_point,
    encode_reparse_point,
)

EAS = [ExtendedAttribute(b"foo", b"bar"), ExtendedAttribute(b"fizz", b"buzz")]
EA_VECTOR = (
    b"\x10\x00\x00\x00\x00\x03\x03\x00foo\x00bar\x00"
    b"\x00\x00\x00\x00\x00\x04\x04\x00fizz\x00buzz\x00\x00\x00"
)


def test_ea_vector_encodes() -> None:
    assert len(EA_VECTOR) == 36
    assert encode_extended_attributes(EAS) == EA_VECTOR


def test_ea_vector_decodes() -> None:
    assert decode_extended_attributes(EA_VECTOR) == EAS


def test_ea_last_entry_needs_no_padding() -> None:
    assert decode_extended_attributes(EA_VECTOR[:-3]) == EAS


def test_ea_truncated_fails() -> None:
    with pytest.raises(ExtendedAttributeError, match="needs 8 bytes, 4 left"):
        decode_extended_attributes(EA_VECTOR[:20])
    with pytest.raises(ExtendedAttributeError, match="runs past the end of the buffer"):
        decode_extended_attributes(EA_VECTOR[:12])


def test_ea_empty_is_empty() -> None:
    assert encode_extended_attributes([]) == b""
    assert decode_extended_attributes(b"") == []


def test_ea_flags_kept_and_limits() -> None:
    item = ExtendedAttribute(b"N", b"v", 0x80)
    assert decode_extended_attributes(encode_extended_attributes([item])) == [item]
    with pytest.raises(ExtendedAttributeError, match="256 bytes; the maximum is 255"):
        encode_extended_attributes([ExtendedAttribute(b"n" * 256, b"")])
    with pytest.raises(ExtendedAttributeError, match="65536 bytes; the maximum is 65535"):
        encode_extended_attributes([ExtendedAttribute(b"n", bytes(65536))])


def test_symlink_to_drive_path_bytes() -> None:
    encoded = encode_reparse_point(ReparsePoint("C:\\foo", False))
    nt = "\\??\\C:\\foo".encode("utf-16-le")
    target = "C:\\foo".encode("utf-16-le")
    assert len(encoded) == 56
    assert encoded == (
        IO_REPARSE_TAG_SYMLINK.to_bytes(4, "little")
        + (48).to_bytes(2, "little")
        + bytes(2)
        + bytes.fromhex("0000140016000c00")
        + bytes(4)  # flags: absolute
        + nt
        + b"\x00\x00"
        + target
        + b"\x00\x00"
    )


def test_mount_point_bytes() -> None:
    encoded = encode_reparse_point(ReparsePoint("C:\\d", True))
    assert encoded[:4] == bytes.fromhex("030000a0")
    # 8 + (8 + 1) * 2 + (4 + 1) * 2 and no flags field.
    assert int.from_bytes(encoded[4:6], "little") == 36
    assert len(encoded) == 44
    assert decode_reparse_point(encoded) == ReparsePoint("C:\\d", True)


@pytest.mark.parametrize(
    ("target", "nt_name", "flags"),
    [
        ("\\\\?\\C:\\x", "\\??\\C:\\x", 0),
        ("\\\\server\\share", "\\??\\UNC\\server\\share", 0),
        ("dir\\file", "dir\\file", 1),
        ("\\rooted", "\\rooted", 1),
    ],
)
def test_symlink_substitute_names(target: str, nt_name: str, flags: int) -> None:
    encoded = encode_reparse_point(ReparsePoint(target, False))
    assert int.from_bytes(encoded[16:20], "little") == flags
    substitute_length = int.from_bytes(encoded[10:12], "little")
    assert encoded[20 : 20 + substitute_length].decode("utf-16-le") == nt_name
    assert decode_reparse_point(encoded) == ReparsePoint(target, False)


def test_reparse_unknown_tag_rejected() -> None:
    data = bytes.fromhex("1b000080") + bytes(20)
    with pytest.raises(ReparsePointError, match="unsupported reparse point tag 0x8000001B"):
        decode_reparse_point(data)


def test_reparse_short_buffer_rejected() -> None:
    encoded = encode_reparse_point(ReparsePoint("C:\\foo", False))
    with pytest.raises(ReparsePointError, match="runs past the"):
        decode_reparse_point(encoded[:30])


def test_filetime_to_pax_examples() -> None:
    assert format_pax_time(filetime_to_ns(132444736001234567)) == b"1600000000.1234567"
    assert format_pax_time(filetime_to_ns(132444736000000000)) == b"1600000000"
    assert format_pax_time(-500_000_000) == b"-0.5"


def test_filetime_wraps_like_int64() -> None:
    assert filetime_to_ns(0) == 6802270473709551616
    # FILETIME 0xFFFF_FFFF_FFFF_FFFF is -1 as Go reads it into an int64.
    assert filetime_to_ns(2**64 - 1) == 6802270473709551516


def test_pax_time_parsing() -> None:
    assert parse_pax_time(b"1600000000.1234567") == 1600000000123456700
    assert parse_pax_time(b"-0.5") == -500_000_000
    assert parse_pax_time(b"5.") == 5_000_000_000
    assert parse_pax_time(b"1.1234567891") == 1_123_456_789
    for bad in (b"", b"x", b"1.2x", b"--1", b"1e3", b"99999999999999999999"):
        with pytest.raises(ValueError):
            parse_pax_time(bad)


def test_ns_to_filetime_truncates_toward_zero() -> None:
    assert ns_to_filetime(1600000000123456789) == 132444736001234567
    assert ns_to_filetime(-150) == 116444736000000000 - 1
    assert ns_to_filetime(GO_ZERO_TIME_NS) == 0x00AC4663BED0AE15


def test_basic_info_pack_layout() -> None:
    info = FileBasicInfo(1, 2, 3, 4, 0x20)
    packed = info.pack()
    assert packed == (
        (1).to_bytes(8, "little")
        + (2).to_bytes(8, "little")
        + (3).to_bytes(8, "little")
        + (4).to_bytes(8, "little")
        + (0x20).to_bytes(4, "little")
        + bytes(4)
    )
    assert FileBasicInfo.unpack(packed) == info
