"""The Windows hand-over cases: sparse files, base layer hardlinks, alternate data streams.
(The Linux-to-Windows layout case is in test_windows_convert.py.)"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from ocilayer.errors import UnsafePathError
from ocilayer.tarformat.encoder import TarHeader
from ocilayer.windows import WindowsLayout, export_windows_layer, import_windows_layer
from ocilayer.windows.backupstream import BackupHeader, BackupStreamError, StreamAttribute, StreamId
from ocilayer.windows.backuptar import write_tar_file_from_backup_stream
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.tarstream import TarWriter
from ocilayer.windows.transport import DIRECTORY_SUFFIX
from windows_helpers import (
    assert_go_reads_identically,
    backup_stream,
    make_dir,
    parse_tar,
    tombstones,
    write_plain,
    write_transport_file,
)

SD = bytes.fromhex("0100048014000000240000000000000000000000010100000000000520020000")
DIR = FileBasicInfo(
    132444736000000000, 132444736000000000, 132444736000000000, 132444736000000001, 0x10
)
FILE = FileBasicInfo(
    132444736000000000, 132444736010000000, 132444736020000000, 132444736030000000, 0x20
)
SPARSE = StreamAttribute.SPARSE
MIB = 1048576


def security() -> tuple[BackupHeader, bytes]:
    return BackupHeader(StreamId.SECURITY, len(SD)), SD


def sparse_data() -> tuple[BackupHeader, bytes]:
    return BackupHeader(StreamId.DATA, 0, attributes=SPARSE), b""


def block(offset: int, content: bytes) -> tuple[BackupHeader, bytes]:
    header = BackupHeader(StreamId.SPARSE_BLOCK, len(content), attributes=SPARSE, offset=offset)
    return header, content


def transport_skeleton(root: Path, *directories: str) -> None:
    make_dir(root / "Files", DIR)
    for directory in directories:
        make_dir(root / directory, DIR)
        write_transport_file(root / (directory + DIRECTORY_SUFFIX), 0x10, DIR, security())
    make_dir(root / "Hives", DIR)
    write_plain(root / "Hives" / "System_Delta", b"regf", FILE)
    (root / "tombstones.txt").write_bytes(tombstones())


# WIN1: the four sparse files, as BackupRead describes them since the 2021 OS change.
SPARSE_FILES = {
    "empty.tmp": ((security(), sparse_data()), b""),
    "holes.tmp": ((security(), sparse_data(), block(MIB, b"")), bytes(MIB)),
    "one.tmp": (
        (security(), (BackupHeader(StreamId.DATA, 16, attributes=SPARSE), b"test sparse data")),
        b"test sparse data",
    ),
    "two.tmp": (
        (
            security(),
            sparse_data(),
            block(0, b"leading data\n"),
            block(MIB, b"trailing data\n"),
            block(MIB + 14, b""),
        ),
        b"leading data\n" + bytes(MIB - 13) + b"trailing data\n",
    ),
}


def test_win1_sparse_files_export_in_full(tmp_path: Path) -> None:
    transport_skeleton(tmp_path, "Files/Windows", "Files/Windows/Temp")
    for name, (streams, _) in SPARSE_FILES.items():
        write_transport_file(tmp_path / "Files/Windows/Temp" / name, 0x220, FILE, *streams)
    out = io.BytesIO()
    export_windows_layer(out, tmp_path, layout=WindowsLayout.TRANSPORT)
    tar_bytes = out.getvalue()
    entries = {entry.name: entry for entry in parse_tar(tar_bytes)}
    for name, (_, content) in SPARSE_FILES.items():
        entry = entries[b"Files/Windows/Temp/" + name.encode()]
        assert entry.size == b"%011o\x00" % len(content), name
        assert entry.data == content, name
        assert entry.records[b"MSWINDOWS.fileattr"] == b"544", name
        assert entry.records[b"MSWINDOWS.rawsd"] == base64.b64encode(SD), name
    assert_go_reads_identically(tar_bytes)


@pytest.mark.parametrize("name", list(SPARSE_FILES))
def test_win1_streaming_and_seekable_agree(name: str) -> None:
    streams, content = SPARSE_FILES[name]
    outputs = []
    for seekable in (False, True):
        out = io.BytesIO()
        tar = TarWriter(out)
        write_tar_file_from_backup_stream(
            tar, io.BytesIO(backup_stream(*streams)), name, len(content), FILE, seekable=seekable
        )
        tar.close()
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    [entry] = parse_tar(outputs[0])
    assert entry.data == content


def test_win1_zero_length_sparse_terminator(tmp_path: Path) -> None:
    transport_skeleton(tmp_path, "Files/Windows", "Files/Windows/Temp")
    write_transport_file(
        tmp_path / "Files/Windows/Temp/DOBDAB.tmp", 0x220, FILE, sparse_data(), block(0, b"")
    )
    out = io.BytesIO()
    export_windows_layer(out, tmp_path)
    entry = {e.name: e for e in parse_tar(out.getvalue())}[b"Files/Windows/Temp/DOBDAB.tmp"]
    assert entry.size == b"00000000000\x00"
    assert entry.data == b""


def base_layer(root: Path) -> None:
    """WIN3 input: one file with two names, in Files and in the utility VM."""
    for directory in ("Files", "Files/Windows", "Files/Windows/System32", "Hives", "UtilityVM"):
        make_dir(root / directory, DIR, SD)
    for directory in ("Files", "Files/Windows", "Files/Windows/System32"):
        make_dir(root / "UtilityVM" / directory, DIR, SD)
    dll = write_plain(root / "Files/Windows/System32/a.dll", b"MZ" + bytes(98), FILE, SD)
    os.link(dll, root / "UtilityVM/Files/Windows/System32/a.dll")
    write_plain(root / "Hives/SYSTEM", b"regf", FILE, SD)
    # Host files of a base layer never go into the tar.
    write_plain(root / "layout", b"vhd", FILE)
    write_plain(root / "UtilityVM/SystemTemplate.vhdx", b"vhdx", FILE)


def shorts(tar_bytes: bytes) -> list[str]:
    kinds = {b"0": "f", b"1": "h", b"5": "d"}
    lines = []
    for entry in parse_tar(tar_bytes):
        line = f"{kinds[entry.typeflag]} {entry.name.decode()}"
        if entry.linkname:
            line += f" -> {entry.linkname.decode()}"
        lines.append(line)
    return lines


def test_win3_base_layer_hardlink_export(tmp_path: Path) -> None:
    base_layer(tmp_path)
    out = io.BytesIO()
    export_windows_layer(out, tmp_path, layout=WindowsLayout.BASE)
    tar_bytes = out.getvalue()
    # NOTE for the reader: the hand-over case also lists `Hives/`, but hcsshim's base
    # layer reader exports only Files and UtilityVM/Files; ProcessBaseLayer rebuilds
    # the hives on import. The data is written once, Files/ first.
    assert shorts(tar_bytes) == [
        "d Files",
        "d Files/Windows",
        "d Files/Windows/System32",
        "f Files/Windows/System32/a.dll",
        "d UtilityVM",
        "d UtilityVM/Files",
        "d UtilityVM/Files/Windows",
        "d UtilityVM/Files/Windows/System32",
        "h UtilityVM/Files/Windows/System32/a.dll -> Files/Windows/System32/a.dll",
    ]
    entries = parse_tar(tar_bytes)
    for entry in entries[:-1]:
        assert entry.records[b"MSWINDOWS.rawsd"] == base64.b64encode(SD)
        assert b"MSWINDOWS.fileattr" in entry.records
    # A hardlink entry keeps the attributes and times of its name, never the descriptor.
    assert b"MSWINDOWS.rawsd" not in entries[-1].records
    assert entries[-1].records[b"MSWINDOWS.fileattr"] == b"32"
    assert entries[3].data == b"MZ" + bytes(98)
    assert entries[-1].mode == b"0000644\x00"
    assert_go_reads_identically(tar_bytes)


def test_win3_base_layer_import_relinks(tmp_path: Path) -> None:
    base_layer(tmp_path / "source")
    out = io.BytesIO()
    export_windows_layer(out, tmp_path / "source", layout=WindowsLayout.BASE)
    target = tmp_path / "imported"
    import_windows_layer(io.BytesIO(out.getvalue()), target, layout=WindowsLayout.BASE)
    first = os.lstat(target / "Files/Windows/System32/a.dll")
    second = os.lstat(target / "UtilityVM/Files/Windows/System32/a.dll")
    assert first.st_ino == second.st_ino
    assert first.st_nlink == 2
    again = io.BytesIO()
    export_windows_layer(again, target, layout=WindowsLayout.BASE)
    assert again.getvalue() == out.getvalue()


def test_win3_link_outside_layer_rejected(tmp_path: Path) -> None:
    out = io.BytesIO()
    tar = TarWriter(out)
    tar.write_header(TarHeader(name=b"Files", typeflag=b"5"))
    tar.write_header(TarHeader(name=b"Files/x", typeflag=b"1", linkname=b"../outside"))
    tar.close()
    with pytest.raises(UnsafePathError) as caught:
        import_windows_layer(io.BytesIO(out.getvalue()), tmp_path / "t", layout=WindowsLayout.BASE)
    assert "'Files\\\\x' -> '../outside'" in str(caught.value)
    assert "'..' is not allowed" in str(caught.value)
    assert not (tmp_path / "t").exists()


ICON = bytes(range(256)) * 264 + bytes(62)
ZONE = b"[ZoneTransfer]\r\nZoneId=3\r\n"


def test_win4_alternate_stream_export_and_import(tmp_path: Path) -> None:
    source = tmp_path / "source"
    transport_skeleton(source)
    write_transport_file(
        source / "Files/icon.ico",
        0x20,
        FILE,
        security(),
        (BackupHeader(StreamId.DATA, len(ICON)), ICON),
        (BackupHeader(StreamId.ALTERNATE_DATA, len(ZONE), ":Zone.Identifier:$DATA"), ZONE),
    )
    out = io.BytesIO()
    export_windows_layer(out, source)
    tar_bytes = out.getvalue()
    entries = parse_tar(tar_bytes)
    names = [entry.name for entry in entries]
    index = names.index(b"Files/icon.ico")
    icon, stream = entries[index], entries[index + 1]
    assert len(ICON) == 67646
    assert icon.size == b"%011o\x00" % 67646
    assert icon.data == ICON
    assert b"MSWINDOWS.fileattr" in icon.records
    assert b"MSWINDOWS.rawsd" in icon.records
    assert stream.name == b"Files/icon.ico:Zone.Identifier"
    assert stream.size == b"%011o\x00" % 26
    assert stream.data == ZONE
    assert stream.mode == icon.mode
    assert stream.mtime == icon.mtime
    assert [key for key, _ in stream.pax] == [b"atime", b"ctime"]
    assert stream.records[b"atime"] == icon.records[b"atime"]
    assert stream.records[b"ctime"] == icon.records[b"ctime"]
    assert_go_reads_identically(tar_bytes)

    target = tmp_path / "imported"
    import_windows_layer(io.BytesIO(tar_bytes), target)
    assert sorted(os.listdir(target / "Files")) == ["icon.ico"]
    assert (target / "Files/icon.ico").read_bytes() == (source / "Files/icon.ico").read_bytes()


def test_win4_sparse_alternate_stream_reported(tmp_path: Path) -> None:
    transport_skeleton(tmp_path)
    sparse_stream = BackupHeader(StreamId.ALTERNATE_DATA, 2, ":s:$DATA", attributes=SPARSE)
    write_transport_file(
        tmp_path / "Files/f",
        0x20,
        FILE,
        (BackupHeader(StreamId.DATA, 1), b"d"),
        (sparse_stream, b"ss"),
    )
    with pytest.raises(BackupStreamError, match="sparse alternate data stream ':s:\\$DATA'"):
        export_windows_layer(io.BytesIO(), tmp_path)
