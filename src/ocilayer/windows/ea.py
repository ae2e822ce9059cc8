"""NTFS extended attributes as a FILE_FULL_EA_INFORMATION list (the EA backup stream).

Each entry is NextEntryOffset u32, Flags u8, NameLength u8, ValueLength u16 (all
little-endian), the name, one NUL, then the value, padded with zeros to a multiple of
4. NextEntryOffset is the padded size, and 0 in the last entry. The encoder pads the
last entry too, and the decoder accepts a last entry without padding, as go-winio does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from ocilayer.errors import LayerError

_ENTRY_HEADER = struct.Struct("<IBBH")


class ExtendedAttributeError(LayerError):
    """An EA list is malformed, or an EA is too large to encode."""


class ExtendedAttribute(NamedTuple):
    """One NTFS extended attribute; the name is raw bytes (usually upper-case ASCII)."""

    name: bytes
    value: bytes
    flags: int = 0


def encode_extended_attributes(attributes: Iterable[ExtendedAttribute]) -> bytes:
    """Encode EAs as a FILE_FULL_EA_INFORMATION list; no EAs give b""."""
    items = list(attributes)
    out = bytearray()
    for index, item in enumerate(items):
        if len(item.name) > 0xFF:
            raise ExtendedAttributeError(
                f"EA name {item.name!r} is {len(item.name)} bytes; the maximum is 255"
            )
        if len(item.value) > 0xFFFF:
            raise ExtendedAttributeError(
                f"EA {item.name!r} value is {len(item.value)} bytes; the maximum is 65535"
            )
        size = _ENTRY_HEADER.size + len(item.name) + 1 + len(item.value)
        padded = (size + 3) & ~3
        next_offset = 0 if index == len(items) - 1 else padded
        out += _ENTRY_HEADER.pack(next_offset, item.flags, len(item.name), len(item.value))
        out += item.name + b"\x00" + item.value + bytes(padded - size)
    return bytes(out)


def decode_extended_attributes(data: bytes) -> list[ExtendedAttribute]:
    """Decode a FILE_FULL_EA_INFORMATION list; b"" gives no EAs."""
    items = []
    while data:
        if len(data) < _ENTRY_HEADER.size:
            raise ExtendedAttributeError(f"EA entry header needs 8 bytes, {len(data)} left")
        next_offset, flags, name_length, value_length = _ENTRY_HEADER.unpack_from(data)
        value_start = _ENTRY_HEADER.size + name_length + 1
        if value_start + value_length > len(data) or next_offset > len(data):
            raise ExtendedAttributeError(
                f"EA entry runs past the end of the buffer ({len(data)} bytes left)"
            )
        name = data[_ENTRY_HEADER.size : _ENTRY_HEADER.size + name_length]
        value = data[value_start : value_start + value_length]
        items.append(ExtendedAttribute(bytes(name), bytes(value), flags))
        data = data[next_offset:] if next_offset else b""
    return items
