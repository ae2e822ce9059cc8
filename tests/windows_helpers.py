"""Helpers for the Windows layer tests: transport folders built byte by byte, a raw tar
parser independent of ocilayer and of tarfile, and Go's archive/tar as a second reader."""

from __future__ import annotations

import atexit
import base64
import functools
import io
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ocilayer.windows.backupstream import BackupHeader, encode_stream
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.hostfiles import XATTR_BASIC_INFO, XATTR_SECURITY_DESCRIPTOR

TESTS = Path(__file__).resolve().parent
Stream = tuple[BackupHeader, bytes]


def backup_stream(*streams: Stream) -> bytes:
    """Encode streams (header, payload) one after the other."""
    return b"".join(encode_stream(header, payload) for header, payload in streams)


def set_basic_info(path: Path, info: FileBasicInfo) -> None:
    os.setxattr(path, XATTR_BASIC_INFO, info.pack(), follow_symlinks=False)


def write_transport_file(
    path: Path, attributes: int, info: FileBasicInfo, *streams: Stream
) -> Path:
    """Write a transport file: 4 attribute bytes, then the backup stream; times in xattrs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(attributes.to_bytes(4, "little") + backup_stream(*streams))
    set_basic_info(path, info)
    return path


def write_plain(path: Path, content: bytes, info: FileBasicInfo, sd: bytes | None = None) -> Path:
    """Write an ordinary file (a hive, a base layer file) with its Windows metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    set_basic_info(path, info)
    if sd is not None:
        os.setxattr(path, XATTR_SECURITY_DESCRIPTOR, sd)
    return path


def make_dir(path: Path, info: FileBasicInfo, sd: bytes | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    set_basic_info(path, info)
    if sd is not None:
        os.setxattr(path, XATTR_SECURITY_DESCRIPTOR, sd)
    return path


def tombstones(*lines: str) -> bytes:
    return "\ufeffVersion 1.0\n".encode() + b"".join(line.encode() + b"\n" for line in lines)


@dataclass
class RawEntry:
    """One tar entry decoded field by field from its 512-byte header blocks."""

    name: bytes
    mode: bytes
    uid: bytes
    gid: bytes
    size: bytes
    mtime: bytes
    typeflag: bytes
    linkname: bytes
    magic: bytes
    uname: bytes
    gname: bytes
    devmajor: bytes
    devminor: bytes
    prefix: bytes
    pax_name: bytes | None = None
    pax: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""

    @property
    def records(self) -> dict[bytes, bytes]:
        return dict(self.pax)

    @property
    def full_name(self) -> bytes:
        return self.records.get(b"path", self.name)


def _field(block: bytes, start: int, size: int) -> bytes:
    return block[start : start + size].split(b"\x00", 1)[0]


def _check_checksum(block: bytes) -> None:
    expected = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    assert block[148:156] == b"%06o\x00 " % expected, "header checksum mismatch"


def parse_pax(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse PAX records in stream order, checking each length prefix."""
    records = []
    while data:
        length_text, _, _ = data.partition(b" ")
        length = int(length_text)
        record = data[:length]
        assert record.endswith(b"\n"), record
        key, _, value = record[len(length_text) + 1 : -1].partition(b"=")
        records.append((key, value))
        data = data[length:]
    return records


def parse_tar(data: bytes) -> list[RawEntry]:
    """Decode every entry of a tar stream; assert the two zero end blocks and nothing after."""
    entries: list[RawEntry] = []
    offset = 0
    pending_pax: tuple[bytes, list[tuple[bytes, bytes]]] | None = None
    while True:
        block = data[offset : offset + 512]
        assert len(block) == 512, f"tar stream ends inside a header at {offset}"
        if block == bytes(512):
            assert data[offset:] == bytes(1024), "expected exactly two zero blocks at the end"
            return entries
        _check_checksum(block)
        size = int(_field(block, 124, 12) or b"0", 8)
        typeflag = block[156:157]
        offset += 512
        payload = data[offset : offset + size]
        offset += size + (-size % 512)
        if typeflag == b"x":
            assert block[329:345] == bytes(16), "x header devmajor and devminor"
            assert block[345:500] == bytes(155), "x header prefix"
            pending_pax = (_field(block, 0, 100), parse_pax(payload))
            continue
        entry = RawEntry(
            name=_field(block, 0, 100),
            mode=block[100:108],
            uid=block[108:116],
            gid=block[116:124],
            size=block[124:136],
            mtime=block[136:148],
            typeflag=typeflag,
            linkname=_field(block, 157, 100),
            magic=block[257:265],
            uname=_field(block, 265, 32),
            gname=_field(block, 297, 32),
            devmajor=block[329:337],
            devminor=block[337:345],
            prefix=_field(block, 345, 155),
        )
        if pending_pax is not None:
            entry.pax_name, entry.pax = pending_pax
            pending_pax = None
        if b"size" in entry.records:
            size = int(entry.records[b"size"])
        if typeflag == b"0":
            entry.data = payload
        entries.append(entry)


def tar_data_of(data: bytes) -> dict[bytes, bytes]:
    """Map the full name of every regular entry to its data."""
    return {entry.full_name: entry.data for entry in parse_tar(data) if entry.typeflag == b"0"}


@functools.cache
def tarcopy_binary() -> str:
    """Build tests/go/tarcopy once per run into a temporary directory and return its path."""
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to check tars with Go's archive/tar")
    out = tempfile.mkdtemp(prefix="ocilayer-go-")
    atexit.register(shutil.rmtree, out, True)
    binary = os.path.join(out, "tarcopy")
    env = dict(os.environ, GO111MODULE="off", GOCACHE=os.path.join(out, "cache"))
    subprocess.run(
        ["go", "build", "-o", binary, "."], cwd=TESTS / "go" / "tarcopy", env=env, check=True
    )
    return binary


def go_copy(data: bytes) -> bytes:
    """Read a tar with Go's archive/tar and write every entry back with it."""
    result = subprocess.run([tarcopy_binary()], input=data, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def go_list(data: bytes) -> list[dict[str, object]]:
    """Return Go's view of every header: fields and PAX records (values as bytes)."""
    result = subprocess.run(
        [tarcopy_binary(), "-list"], input=data, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    headers = []
    for line in io.StringIO(result.stdout.decode()):
        item = json.loads(line)
        item["name"] = base64.b64decode(item["name"] or "")
        item["linkname"] = base64.b64decode(item["linkname"] or "")
        item["pax"] = {k.encode(): base64.b64decode(v or "") for k, v in item["pax"].items()}
        headers.append(item)
    return headers


def assert_go_reads_identically(data: bytes) -> None:
    """Assert that Go re-encodes the tar to the same bytes and reports the same PAX records."""
    assert go_copy(data) == data
    ours = [entry.records for entry in parse_tar(data)]
    theirs = [header["pax"] for header in go_list(data)]
    assert theirs == ours
