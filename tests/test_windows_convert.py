"""Linux layers converted to the Windows layout, from a tar and from a tree."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from ocilayer.errors import LayerError
from ocilayer.tarformat.encoder import TarHeader
from ocilayer.windows import DEFAULT_SECURITY_DESCRIPTOR, convert_to_windows
from ocilayer.windows.tarstream import TarWriter
from windows_helpers import assert_go_reads_identically, parse_tar

SD64 = b"AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="
LONG = b"app/" + b"b" * 110 + b".dll"


def linux_tar(*entries: tuple[TarHeader, bytes]) -> bytes:
    out = io.BytesIO()
    tar = TarWriter(out)
    for header, content in entries:
        tar.write_header(header)
        tar.write(content)
    tar.close()
    return out.getvalue()


def convert(data: bytes) -> bytes:
    out = io.BytesIO()
    convert_to_windows(out, io.BytesIO(data))
    return out.getvalue()


WIN2_INPUT = linux_tar(
    (TarHeader(name=b"app/", typeflag=b"5", mode=0o755, mtime_ns=10**18), b""),
    (TarHeader(name=b"app/main.exe", mode=0o755, size=4, mtime_ns=10**18), b"MZ\x90\x00"),
    (TarHeader(name=LONG, mode=0o644, size=4, mtime_ns=10**18), b"MZ\x00\x00"),
    (TarHeader(name=b"app/alias.exe", typeflag=b"1", linkname=b"app/main.exe"), b""),
)


def test_win2_layout_records_and_links() -> None:
    converted = convert(WIN2_INPUT)
    entries = parse_tar(converted)
    assert [(entry.typeflag, entry.full_name, entry.linkname) for entry in entries] == [
        (b"5", b"Files", b""),
        (b"5", b"Hives", b""),
        (b"5", b"Files/app", b""),
        (b"0", b"Files/app/main.exe", b""),
        (b"0", b"Files/" + LONG, b""),
        (b"1", b"Files/app/alias.exe", b"Files/app/main.exe"),
    ]
    assert entries[0].mode == entries[1].mode == b"0000555\x00"
    for entry in entries:
        # Every header is PAX and carries the descriptor, the long name included.
        assert entry.pax_name is not None, entry.full_name
        assert entry.records[b"MSWINDOWS.rawsd"] == SD64, entry.full_name
    assert entries[4].records[b"path"] == b"Files/" + LONG
    assert [entry.records[b"MSWINDOWS.fileattr"] for entry in entries] == [
        b"16",
        b"16",
        b"16",
        b"32",
        b"32",
        b"32",
    ]
    assert entries[3].data == b"MZ\x90\x00"
    assert entries[3].mode == b"0000755\x00"
    assert_go_reads_identically(converted)


def test_default_security_descriptor_is_builtin_users() -> None:
    assert base64.b64encode(DEFAULT_SECURITY_DESCRIPTOR) == SD64
    users = bytes.fromhex("01020000000000052000000021020000")  # S-1-5-32-545
    assert DEFAULT_SECURITY_DESCRIPTOR[20:36] == users
    assert DEFAULT_SECURITY_DESCRIPTOR[36:52] == users


def test_missing_parents_written_first() -> None:
    data = linux_tar((TarHeader(name=b"./a/b/c.txt", size=1), b"c"))
    names = [(entry.typeflag, entry.name) for entry in parse_tar(convert(data))]
    assert names == [
        (b"5", b"Files"),
        (b"5", b"Hives"),
        (b"5", b"Files/a"),
        (b"5", b"Files/a/b"),
        (b"0", b"Files/a/b/c.txt"),
    ]


def test_whiteouts_and_symlinks() -> None:
    data = linux_tar(
        (TarHeader(name=b"etc/", typeflag=b"5"), b""),
        (TarHeader(name=b"etc/.wh.old", mode=0o644), b""),
        (TarHeader(name=b"etc/link", typeflag=b"2", linkname=b"/etc/target"), b""),
    )
    entries = parse_tar(convert(data))
    whiteout, link = entries[3], entries[4]
    assert whiteout.name == b"Files/etc/.wh.old"
    assert whiteout.pax_name is None
    assert whiteout.mode == b"0000000\x00"
    assert link.linkname == b"/etc/target"
    assert link.records[b"MSWINDOWS.fileattr"] == b"1056"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (TarHeader(name=b"Files/x", size=0), "already has a top-level Files directory"),
        (TarHeader(name=b"d/.wh..wh..opq"), "opaque whiteouts have no Windows equivalent"),
        (TarHeader(name=b"dev/null", typeflag=b"3"), "has no Windows equivalent"),
        (TarHeader(name=b"fifo", typeflag=b"6"), "has no Windows equivalent"),
    ],
)
def test_inputs_without_windows_form_rejected(header: TarHeader, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        convert(linux_tar((header, b"")))


def test_tree_conversion(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_bytes(b"ELF")
    os.link(tmp_path / "bin" / "tool", tmp_path / "bin" / "tool2")
    os.symlink("tool", tmp_path / "bin" / "alias")
    out = io.BytesIO()
    convert_to_windows(out, tmp_path)
    entries = parse_tar(out.getvalue())
    assert [(entry.typeflag, entry.name, entry.linkname) for entry in entries] == [
        (b"5", b"Files", b""),
        (b"5", b"Hives", b""),
        (b"5", b"Files/bin", b""),
        (b"2", b"Files/bin/alias", b"tool"),
        (b"0", b"Files/bin/tool", b""),
        (b"1", b"Files/bin/tool2", b"Files/bin/tool"),
    ]
    assert entries[4].data == b"ELF"


def test_tar_file_source_gzip(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(WIN2_INPUT))
    out = io.BytesIO()
    convert_to_windows(out, path)
    assert out.getvalue() == convert(WIN2_INPUT)
