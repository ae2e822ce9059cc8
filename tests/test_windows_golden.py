"""The worked example of a diff-layer export: a transport folder built byte by byte, and
every header field and PAX record of the tar it exports to."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from ocilayer.windows import WindowsLayout, export_windows_layer
from ocilayer.windows.backupstream import BackupHeader, StreamId
from ocilayer.windows.fileinfo import FileBasicInfo
from windows_helpers import (
    assert_go_reads_identically,
    make_dir,
    parse_tar,
    tombstones,
    write_plain,
    write_transport_file,
)

SD = bytes.fromhex("0100048014000000240000000000000000000000010100000000000512000000")
SD64 = base64.b64encode(SD)

# System_Delta: its write time (with a 100 ns fraction) and change time stand in for
# the times of Files and Hives.
DELTA = FileBasicInfo(
    creation_time=132444700000000000,
    last_access_time=132444710000000000,
    last_write_time=132444736001234567,  # 1600000000.1234567
    change_time=132444736010000000,  # 1600000001
    attributes=0x20,
)
DIR_A = FileBasicInfo(
    creation_time=132444735000000000,  # 1599999900
    last_access_time=132444736020000001,  # 1600000002.0000001
    last_write_time=132444736030000000,  # 1600000003
    change_time=132444736040000000,  # 1600000004
    attributes=0,  # a transport file's own attributes are never used
)
FILE_X = FileBasicInfo(
    creation_time=132444736050000000,  # 1600000005
    last_access_time=132444736060000000,  # 1600000006
    last_write_time=132444736075000000,  # 1600000007.5
    change_time=132444736080000000,  # 1600000008
)
CONTENT = b"testing 1 2 3\n"
HIVE = b"regf" + bytes(60)


def build_example(root: Path) -> None:
    make_dir(root / "Files", FileBasicInfo(attributes=0x10))
    make_dir(root / "Files" / "a", FileBasicInfo(attributes=0x10))
    write_transport_file(
        root / "Files" / "a.$wcidirs$",
        0x10,
        DIR_A,
        (BackupHeader(StreamId.SECURITY, len(SD)), SD),
    )
    write_transport_file(
        root / "Files" / "a" / "x.txt",
        0x20,
        FILE_X,
        (BackupHeader(StreamId.SECURITY, len(SD)), SD),
        (BackupHeader(StreamId.DATA, len(CONTENT)), CONTENT),
        (BackupHeader(StreamId.ALTERNATE_DATA, 2, ":z:$DATA"), b"zz"),
    )
    make_dir(root / "Hives", FileBasicInfo(attributes=0x10))
    write_plain(root / "Hives" / "System_Delta", HIVE, DELTA)
    # The reader ignores these two.
    write_transport_file(root / "Files.$wcidirs$", 0x10, FileBasicInfo())
    write_transport_file(root / "Hives.$wcidirs$", 0x10, FileBasicInfo())
    (root / "tombstones.txt").write_bytes(tombstones("\\a\\old.txt"))


def export(root: Path) -> bytes:
    out = io.BytesIO()
    export_windows_layer(out, root, layout=WindowsLayout.TRANSPORT)
    return out.getvalue()


ZERO7 = b"0000000\x00"
ZERO11 = b"00000000000\x00"
USTAR = b"ustar\x0000"


def octal11(value: int) -> bytes:
    return b"%011o\x00" % value


def test_worked_example_entries_and_fields(tmp_path: Path) -> None:
    build_example(tmp_path)
    data = export(tmp_path)
    entries = parse_tar(data)

    expected = [
        # name, pax header name, mode, size, mtime seconds, typeflag, records
        (
            b"Files",
            b"PaxHeaders.0/Files",
            b"0040000\x00",
            0,
            1600000000,
            b"5",
            [
                (b"LIBARCHIVE.creationtime", b"1600000000.1234567"),
                (b"MSWINDOWS.fileattr", b"16"),
                (b"atime", b"1600000000.1234567"),
                (b"ctime", b"1600000001"),
                (b"mtime", b"1600000000.1234567"),
            ],
        ),
        (
            b"Files/a",
            b"Files/PaxHeaders.0/a",
            b"0040000\x00",
            0,
            1600000003,
            b"5",
            [
                (b"LIBARCHIVE.creationtime", b"1599999900"),
                (b"MSWINDOWS.fileattr", b"16"),
                (b"MSWINDOWS.rawsd", SD64),
                (b"atime", b"1600000002.0000001"),
                (b"ctime", b"1600000004"),
            ],
        ),
        (b"Files/a/.wh.old.txt", None, ZERO7, 0, 0, b"0", []),
        (
            b"Files/a/x.txt",
            b"Files/a/PaxHeaders.0/x.txt",
            b"0100000\x00",
            14,
            1600000007,
            b"0",
            [
                (b"LIBARCHIVE.creationtime", b"1600000005"),
                (b"MSWINDOWS.fileattr", b"32"),
                (b"MSWINDOWS.rawsd", SD64),
                (b"atime", b"1600000006"),
                (b"ctime", b"1600000008"),
                (b"mtime", b"1600000007.5"),
            ],
        ),
        (
            b"Files/a/x.txt:z",
            b"Files/a/PaxHeaders.0/x.txt:z",
            b"0100000\x00",
            2,
            1600000007,
            b"0",
            [
                (b"atime", b"1600000006"),
                (b"ctime", b"1600000008"),
                (b"mtime", b"1600000007.5"),
            ],
        ),
        (
            b"Hives",
            b"PaxHeaders.0/Hives",
            b"0040000\x00",
            0,
            1600000000,
            b"5",
            [
                (b"LIBARCHIVE.creationtime", b"1600000000.1234567"),
                (b"MSWINDOWS.fileattr", b"16"),
                (b"atime", b"1600000000.1234567"),
                (b"ctime", b"1600000001"),
                (b"mtime", b"1600000000.1234567"),
            ],
        ),
        (
            b"Hives/System_Delta",
            b"Hives/PaxHeaders.0/System_Delta",
            b"0100000\x00",
            len(HIVE),
            1600000000,
            b"0",
            [
                (b"LIBARCHIVE.creationtime", b"1600000000.1234567"),
                (b"MSWINDOWS.fileattr", b"32"),
                (b"atime", b"1600000000.1234567"),
                (b"ctime", b"1600000001"),
                (b"mtime", b"1600000000.1234567"),
            ],
        ),
    ]
    assert [entry.name for entry in entries] == [row[0] for row in expected]
    for entry, (name, pax_name, mode, size, mtime, typeflag, records) in zip(
        entries, expected, strict=True
    ):
        assert entry.pax_name == pax_name, name
        assert entry.mode == mode, name
        assert entry.uid == ZERO7, name
        assert entry.gid == ZERO7, name
        assert entry.size == octal11(size), name
        assert entry.mtime == octal11(mtime), name
        assert entry.typeflag == typeflag, name
        assert entry.linkname == b"", name
        assert entry.magic == USTAR, name
        assert entry.uname == b"", name
        assert entry.gname == b"", name
        assert entry.devmajor == ZERO7, name
        assert entry.devminor == ZERO7, name
        assert entry.prefix == b"", name
        assert entry.pax == records, name


def test_worked_example_data_and_layout(tmp_path: Path) -> None:
    build_example(tmp_path)
    data = export(tmp_path)
    entries = {entry.name: entry for entry in parse_tar(data)}
    assert entries[b"Files/a/x.txt"].data == CONTENT
    assert entries[b"Files/a/x.txt:z"].data == b"zz"
    assert entries[b"Hives/System_Delta"].data == HIVE
    # Files: x block, one block of records, main block; the whiteout: one block;
    # x.txt also has one data block; the trailer is two zero blocks.
    blocks = 3 + 3 + 1 + (3 + 1) + (3 + 1) + 3 + (3 + 1) + 2
    assert len(data) == blocks * 512
    assert data.endswith(bytes(1024))


def test_worked_example_go_reads_identically(tmp_path: Path) -> None:
    build_example(tmp_path)
    assert_go_reads_identically(export(tmp_path))
