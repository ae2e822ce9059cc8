"""Reparse points (REPARSE_DATA_BUFFER) for symbolic links and mount points (junctions).

Layout, little-endian: tag u32, ReparseDataLength u16, Reserved u16, then
SubstituteNameOffset, SubstituteNameLength, PrintNameOffset and PrintNameLength
(u16 each, byte offsets into the path buffer), a Flags u32 for symbolic links only,
and the UTF-16LE path buffer. The tar form keeps only the print name (as the link
name) and whether the point is a mount point, so the substitute name is rebuilt from
the print name on import.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from ocilayer.errors import LayerError

IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
IO_REPARSE_TAG_SYMLINK = 0xA000000C
# Symbolic link flag: the substitute name is relative to the link's directory.
SYMLINK_FLAG_RELATIVE = 1

_HEADER = struct.Struct("<IHHHHHH")
_NAMES = struct.Struct("<HHHH")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ReparsePointError(LayerError):
    """Reparse data is malformed or of a kind a tar cannot carry."""


class ReparsePoint(NamedTuple):
    """A symbolic link or a mount point: its print name and which of the two it is."""

    target: str
    is_mount_point: bool


def decode_reparse_point(data: bytes) -> ReparsePoint:
    """Decode the print name and kind of a symbolic link or mount point.

    Raises ReparsePointError for any other tag or a buffer too short for its names.
    """
    if len(data) < 16:
        raise ReparsePointError(f"reparse data is {len(data)} bytes; at least 16 are needed")
    tag = int.from_bytes(data[:4], "little")
    if tag == IO_REPARSE_TAG_MOUNT_POINT:
        is_mount_point = True
    elif tag == IO_REPARSE_TAG_SYMLINK:
        is_mount_point = False
    else:
        raise ReparsePointError(
            f"unsupported reparse point tag 0x{tag:08X}; only symbolic links "
            f"(0x{IO_REPARSE_TAG_SYMLINK:08X}) and mount points "
            f"(0x{IO_REPARSE_TAG_MOUNT_POINT:08X}) can go into a tar"
        )
    body = data[8:]
    _, _, print_offset, print_length = _NAMES.unpack_from(body)
    start = 8 + print_offset + (0 if is_mount_point else 4)
    end = start + print_length // 2 * 2
    if start + print_length > len(body):
        raise ReparsePointError(
            f"reparse print name (bytes {start}-{end} after the header) runs past the "
            f"{len(body)}-byte buffer"
        )
    text = body[start:end].decode("utf-16-le", "surrogatepass")
    return ReparsePoint(_LONE_SURROGATE.sub("\ufffd", text), is_mount_point)


def _nt_name(target: str) -> tuple[str, bool]:
    """Return the NT (substitute) name of a print name, and whether it is relative."""
    if target.startswith("\\\\?\\"):
        return "\\??\\" + target[4:], False
    if target.startswith("\\\\"):
        return "\\??\\UNC\\" + target[2:], False
    if len(target) >= 2 and target[0].isascii() and target[0].isalpha() and target[1] == ":":
        return "\\??\\" + target, False
    return target, True


def encode_reparse_point(point: ReparsePoint) -> bytes:
    """Encode a symbolic link or mount point, with the substitute name first.

    Lengths wrap at 16 bits as go-winio's do; a target that long cannot be a valid path.
    """
    nt_name, relative = _nt_name(point.target)
    nt_units = nt_name.encode("utf-16-le", "surrogatepass")
    target_units = point.target.encode("utf-16-le", "surrogatepass")
    size = 8 + len(nt_units) + 2 + len(target_units) + 2
    tag = IO_REPARSE_TAG_MOUNT_POINT
    flags = b""
    if not point.is_mount_point:
        tag = IO_REPARSE_TAG_SYMLINK
        size += 4
        flags = (SYMLINK_FLAG_RELATIVE if relative else 0).to_bytes(4, "little")
    header = _HEADER.pack(
        tag,
        size & 0xFFFF,
        0,
        0,
        len(nt_units) & 0xFFFF,
        (len(nt_units) + 2) & 0xFFFF,
        len(target_units) & 0xFFFF,
    )
    return header + flags + nt_units + b"\x00\x00" + target_units + b"\x00\x00"
