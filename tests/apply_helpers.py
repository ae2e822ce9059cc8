"""Helpers for apply tests: a declarative tar builder, an exact tree listing, overlay mounts.

Tars are built with ocilayer's Go-compatible encoder, so each entry is exactly what a
Go producer (containerd, docker) would write for the same header. `listing` renders a
tree as one short line per path so that a test can assert the whole result at once.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from ocilayer.apply import AppliedLayer, import_layer_from_tar
from ocilayer.tarformat.encoder import (
    END_OF_ARCHIVE,
    TarHeader,
    data_padding,
    encode_header,
    format_pax_record,
)

# 2020-09-13T12:26:40Z.
MTIME_NS = 1_600_000_000 * 10**9

Name = str | bytes


def _raw(value: Name) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def entry(
    name: Name,
    typeflag: bytes = b"0",
    *,
    content: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime_ns: int = MTIME_NS,
    atime_ns: int | None = None,
    linkname: Name = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: Mapping[bytes, bytes] | None = None,
    pax: Mapping[bytes, bytes] | None = None,
) -> bytes:
    """Encode one tar entry: its header blocks, then its data padded to a block."""
    records = dict(pax or {})
    for key, value in (xattrs or {}).items():
        records[b"SCHILY.xattr." + key] = value
    header = TarHeader(
        name=_raw(name),
        typeflag=typeflag,
        mode=mode,
        uid=uid,
        gid=gid,
        size=len(content),
        mtime_ns=mtime_ns,
        atime_ns=atime_ns,
        linkname=_raw(linkname),
        devmajor=devmajor,
        devminor=devminor,
        pax_records=records,
    )
    return encode_header(header) + content + data_padding(len(content))


def raw_pax_entry(name: Name, records: Mapping[bytes, bytes], typeflag: bytes = b"0") -> bytes:
    """Encode an empty entry after a PAX header with exactly `records`, unchecked.

    The encoder rejects records that contradict the header fields, so tests of what a
    reader does with odd records (huge numbers, long paths) build them here.
    """
    data = b"".join(format_pax_record(key, value) for key, value in records.items())
    pax = encode_header(TarHeader(name=b"PaxHeaders.0/x", typeflag=b"x", size=len(data)))
    return (
        pax
        + data
        + data_padding(len(data))
        + encode_header(TarHeader(name=_raw(name), typeflag=typeflag))
    )


def file(name: Name, content: bytes | str = b"", mode: int = 0o644, **fields: object) -> bytes:
    data = content.encode() if isinstance(content, str) else content
    return entry(name, b"0", content=data, mode=mode, **fields)  # type: ignore[arg-type]


def directory(name: Name, mode: int = 0o755, **fields: object) -> bytes:
    return entry(name, b"5", mode=mode, **fields)  # type: ignore[arg-type]


def symlink(name: Name, target: Name, **fields: object) -> bytes:
    return entry(name, b"2", mode=0o777, linkname=target, **fields)  # type: ignore[arg-type]


def hardlink(name: Name, target: Name, **fields: object) -> bytes:
    return entry(name, b"1", linkname=target, **fields)  # type: ignore[arg-type]


def whiteout(name: Name) -> bytes:
    """A whiteout as containerd writes it: an empty regular file, mode 0, time 0."""
    return entry(name, b"0", mode=0, mtime_ns=0)


def fifo(name: Name, mode: int = 0o644, **fields: object) -> bytes:
    return entry(name, b"6", mode=mode, **fields)  # type: ignore[arg-type]


def char_device(name: Name, major: int, minor: int, mode: int = 0o666) -> bytes:
    return entry(name, b"3", mode=mode, devmajor=major, devminor=minor)


def block_device(name: Name, major: int, minor: int, mode: int = 0o660) -> bytes:
    return entry(name, b"4", mode=mode, devmajor=major, devminor=minor)


def tar(*entries: bytes, end: bytes = END_OF_ARCHIVE) -> bytes:
    """Join entries into a tar stream with Go's end-of-archive marker."""
    return b"".join(entries) + end


# (offset, width) of the USTAR header fields that tests edit.
_FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "typeflag": (156, 1),
    "devmajor": (329, 8),
}


def with_header_field(block: bytes, field: str, value: bytes) -> bytes:
    """Return a header block with one field replaced and its checksum recomputed."""
    offset, width = _FIELDS[field]
    edited = bytearray(block)
    edited[offset : offset + width] = value.ljust(width, b"\x00")
    edited[148:156] = b" " * 8
    edited[148:156] = b"%06o\x00 " % sum(edited)
    return bytes(edited)


def apply(data: bytes, root: Path, *parents: Path, **options: object) -> AppliedLayer:
    """Apply the tar `data` to `root` (parents lowest first, for overlay targets)."""
    return import_layer_from_tar(io.BytesIO(data), root, parents, **options)  # type: ignore[arg-type]


def listing(root: Path, *, owners: bool = False) -> dict[str, str]:
    """Describe every path below `root` in one line, without following symlinks.

    `d 755`, `f 644 'text'`, `l -> target`, `c 1:3 666`, `b 8:0 660`, `p 600`; a
    non-directory with more than one link ends in `links=N`, and with `owners` every
    line ends in `uid:gid`. Names that are not UTF-8 appear surrogate-escaped.
    """
    lines: dict[str, str] = {}
    base = os.fsencode(root)
    pending = [b""]
    while pending:
        relative = pending.pop()
        for name in sorted(os.listdir(os.path.join(base, relative) if relative else base)):
            path = relative + b"/" + name if relative else name
            full = os.path.join(base, path)
            st = os.lstat(full)
            lines[os.fsdecode(path)] = _describe(full, st, owners)
            if stat.S_ISDIR(st.st_mode):
                pending.append(path)
    return dict(sorted(lines.items()))


def _describe(full: bytes, st: os.stat_result, owners: bool) -> str:
    mode = f"{stat.S_IMODE(st.st_mode):o}"
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        text = f"d {mode}"
    elif kind == stat.S_IFREG:
        with open(full, "rb") as handle:
            content = handle.read(200)
        text = f"f {mode} {content.decode('utf-8', 'backslashreplace')!r}"
    elif kind == stat.S_IFLNK:
        text = f"l -> {os.fsdecode(os.readlink(full))}"
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        letter = "c" if kind == stat.S_IFCHR else "b"
        text = f"{letter} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {mode}"
    elif kind == stat.S_IFIFO:
        text = f"p {mode}"
    else:
        text = f"? {kind:o}"
    if kind != stat.S_IFDIR and st.st_nlink > 1:
        text += f" links={st.st_nlink}"
    if owners:
        text += f" {st.st_uid}:{st.st_gid}"
    return text


def same_inode(a: Path, b: Path) -> bool:
    first, second = os.lstat(a), os.lstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def get_xattr(path: Path, name: bytes) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


@contextlib.contextmanager
def mounted_overlay(
    lowers: list[Path], mountpoint: Path, *, userxattr: bool = False
) -> Iterator[Path]:
    """Mount the layer directories `lowers` (lowest first) read-only with overlayfs.

    Fails the test, never skips it, when the mount is not allowed: CI runs as root on
    a kernel with overlayfs.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = "lowerdir=" + ":".join(str(path) for path in reversed(lowers))
    if userxattr:
        options = "userxattr," + options
    if len(lowers) == 1:
        # overlayfs needs two lower layers when there is no upper; add an empty one.
        empty = mountpoint.parent / (mountpoint.name + "-empty")
        empty.mkdir(exist_ok=True)
        options += f":{empty}"
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"mount -t overlay failed ({result.returncode}): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


class CancellingReader(io.RawIOBase):
    """Return `data` in reads of at most `chunk` bytes; set `cancel` once `after` are read."""

    def __init__(self, data: bytes, after: int, cancel: threading.Event, chunk: int = 4096) -> None:
        self._stream = io.BytesIO(data)
        self._after = after
        self._cancel = cancel
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._stream.read(min(len(buffer), self._chunk))
        buffer[: len(chunk)] = chunk
        if self._stream.tell() >= self._after:
            self._cancel.set()
        return len(chunk)
