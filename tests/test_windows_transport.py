"""Transport folders: the tombstones file, the walk order of the reader, and the writer's
checks on names, parents, links and deletions."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocilayer.errors import Cancelled, LayerError, UnsafePathError
from ocilayer.windows import WindowsLayout, export_windows_layer
from ocilayer.windows.backupstream import BackupHeader, StreamAttribute, StreamId
from ocilayer.windows.export import write_tar_from_layer
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.layeritem import LayerItem
from ocilayer.windows.reparse import ReparsePoint, encode_reparse_point
from ocilayer.windows.tarstream import TarWriter
from ocilayer.windows.transport import (
    TransportReader,
    backup_stream_size,
    format_tombstones,
    parse_tombstones,
)
from ocilayer.windows.transport_writer import TransportWriter
from windows_helpers import (
    make_dir,
    parse_tar,
    tombstones,
    write_plain,
    write_transport_file,
)

DIR = FileBasicInfo(1, 2, 3, 4, 0x10)
FILE = FileBasicInfo(5, 6, 7, 8, 0x20)
BOM_HEADER = b"\xef\xbb\xbfVersion 1.0"


def test_tombstones_parsed_and_grouped() -> None:
    data = BOM_HEADER + b"\r\n\\a\\old.txt\r\n\\a\\b\\gone\n\\top\n\\a\\other"
    assert parse_tombstones(data) == {
        "Files\\a": ["Files\\a\\old.txt", "Files\\a\\other"],
        "Files\\a\\b": ["Files\\a\\b\\gone"],
        "Files": ["Files\\top"],
    }


def test_tombstones_first_character_dropped_unchecked() -> None:
    assert parse_tombstones(BOM_HEADER + b"\nXa\\.\\b\\..\\c\n") == {"Files\\a": ["Files\\a\\c"]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Version 1.0\n", "invalid tombstones file"),
        (b"", "invalid tombstones file"),
        (BOM_HEADER + b"\n\n", "line 2 is empty"),
        (BOM_HEADER + b"\n\\" + b"a" * 65536 + b"\n", "line 2 is longer than 64 KiB"),
    ],
)
def test_tombstones_errors(data: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        parse_tombstones(data)


def test_tombstones_format() -> None:
    text = format_tombstones(["Files\\a\\old.txt", "Files\\x"])
    assert text == BOM_HEADER + b"\n\\a\\old.txt\n\\x\n"
    assert parse_tombstones(text) == {"Files\\a": ["Files\\a\\old.txt"], "Files": ["Files\\x"]}


def minimal_folder(root: Path) -> None:
    make_dir(root / "Files", DIR)
    make_dir(root / "Hives", DIR)
    write_plain(root / "Hives" / "System_Delta", b"hive", FILE)


def data_file(path: Path, content: bytes = b"x", info: FileBasicInfo = FILE) -> None:
    write_transport_file(path, 0x20, info, (BackupHeader(StreamId.DATA, len(content)), content))


def dir_file(root: Path, name: str) -> None:
    make_dir(root / name, DIR)
    write_transport_file(root / (name + ".$wcidirs$"), 0x10, DIR)


def names(root: Path) -> list[str]:
    return [item.name for item in TransportReader(root).items()]


def test_walk_order_and_skips(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    dir_file(tmp_path, "Files/b")
    dir_file(tmp_path, "Files/B")
    data_file(tmp_path / "Files/b/z")
    data_file(tmp_path / "Files/a.txt")
    data_file(tmp_path / "Files/\u00e9")
    (tmp_path / "Files/$RECYCLE.BIN").mkdir()
    data_file(tmp_path / "Files/$RECYCLE.BIN/junk")
    # A file (not a directory) with the recycle bin's name is not skipped.
    dir_file(tmp_path, "Files/sub")
    data_file(tmp_path / "Files/sub/$Recycle.Bin")
    make_dir(tmp_path / "UtilityVM", DIR)
    (tmp_path / "tombstones.txt").write_bytes(tombstones("\\b\\gone", "\\top", "\\missing\\x"))
    assert names(tmp_path) == [
        "Files",
        "Files\\top",
        "Files\\B",
        "Files\\a.txt",
        "Files\\b",
        "Files\\b\\gone",
        "Files\\b\\z",
        "Files\\sub",
        "Files\\sub\\$Recycle.Bin",
        "Files\\\u00e9",
        "Hives",
        "Hives\\System_Delta",
        "UtilityVM",
    ]


def test_tombstone_items_have_no_info(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    (tmp_path / "tombstones.txt").write_bytes(tombstones("\\gone"))
    items = list(TransportReader(tmp_path).items())
    assert items[1] == LayerItem("Files\\gone")


def test_missing_tombstones_file(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    with pytest.raises(LayerError, match=r"tombstones\.txt' is missing"):
        names(tmp_path)


def test_missing_system_delta(tmp_path: Path) -> None:
    make_dir(tmp_path / "Files", DIR)
    (tmp_path / "tombstones.txt").write_bytes(tombstones())
    with pytest.raises(LayerError, match="System_Delta' is missing"):
        names(tmp_path)


def test_missing_directory_metadata(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    (tmp_path / "Files/d").mkdir()
    (tmp_path / "tombstones.txt").write_bytes(tombstones())
    with pytest.raises(LayerError, match=r"d\.\$wcidirs\$' is missing"):
        names(tmp_path)


def test_short_transport_file(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    (tmp_path / "Files/f").write_bytes(b"\x20\x00")
    (tmp_path / "tombstones.txt").write_bytes(tombstones())
    with pytest.raises(LayerError, match="starts with 4 bytes of attributes; it has 2 bytes"):
        names(tmp_path)


def test_sparse_size_from_blocks(tmp_path: Path) -> None:
    sparse = StreamAttribute.SPARSE
    path = write_transport_file(
        tmp_path / "f",
        0x220,
        FILE,
        (BackupHeader(StreamId.DATA, 0, attributes=sparse), b""),
        (BackupHeader(StreamId.SPARSE_BLOCK, 3, attributes=sparse, offset=10), b"abc"),
        (BackupHeader(StreamId.SPARSE_BLOCK, 0, attributes=sparse, offset=100), b""),
    )
    with open(path, "rb") as handle:
        handle.seek(4)
        assert backup_stream_size(handle, "f") == 100
    empty = write_transport_file(tmp_path / "e", 0x20, FILE)
    with open(empty, "rb") as handle:
        handle.seek(4)
        assert backup_stream_size(handle, "e") == 0


def items_then_cancel(event: threading.Event) -> Iterator[LayerItem]:
    yield LayerItem("Files\\a")
    event.set()
    yield LayerItem("Files\\b")


def test_cancel_stops_without_trailer() -> None:
    cancel = threading.Event()
    out = io.BytesIO()
    with pytest.raises(Cancelled):
        write_tar_from_layer(items_then_cancel(cancel), TarWriter(out), cancel)
    data = out.getvalue()
    # The first whiteout was written (one block, maybe still buffered), never the trailer.
    assert not data.endswith(bytes(1024)) or data == b""


def test_cancel_before_start_writes_nothing(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    (tmp_path / "tombstones.txt").write_bytes(tombstones())
    cancel = threading.Event()
    cancel.set()
    out = io.BytesIO()
    with pytest.raises(Cancelled):
        export_windows_layer(out, tmp_path, cancel=cancel, layout=WindowsLayout.TRANSPORT)
    assert out.getvalue() == b""


def test_hardlinked_transport_files_become_links(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    data_file(tmp_path / "Files/first", b"shared")
    os.link(tmp_path / "Files/first", tmp_path / "Files/second")
    (tmp_path / "tombstones.txt").write_bytes(tombstones())
    out = io.BytesIO()
    export_windows_layer(out, tmp_path)
    entries = {entry.name: entry for entry in parse_tar(out.getvalue())}
    link = entries[b"Files/second"]
    assert entries[b"Files/first"].data == b"shared"
    assert link.typeflag == b"1"
    assert link.mode == b"0000644\x00"
    assert link.linkname == b"Files/first"
    assert link.size == b"00000000000\x00"
    assert [key for key, _ in link.pax] == [
        b"LIBARCHIVE.creationtime",
        b"MSWINDOWS.fileattr",
        b"atime",
        b"ctime",
        b"mtime",
    ]


def test_parents_cannot_be_given_off_windows(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="parent layers are used only on a Windows host"):
        export_windows_layer(io.BytesIO(), tmp_path, [tmp_path / "parent"])


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[TransportWriter]:
    layer = TransportWriter(tmp_path)
    yield layer
    layer.abort()


def add(layer: TransportWriter, name: str, info: FileBasicInfo, payload: bytes = b"") -> None:
    layer.add(name, info).write(payload)


def test_writer_requires_parents(writer: TransportWriter) -> None:
    with pytest.raises(LayerError, match="its parent directory is not in the layer yet"):
        add(writer, "Files\\a\\b", FILE)


def test_writer_rejects_duplicates(writer: TransportWriter) -> None:
    add(writer, "Files", DIR)
    add(writer, "Files\\a", FILE)
    with pytest.raises(LayerError, match="appears twice in the layer"):
        add(writer, "Files/a", FILE)


def test_writer_escapes_names_in_errors(writer: TransportWriter) -> None:
    add(writer, "Files", DIR)
    # A byte that is not UTF-8 (kept as a surrogate) and a terminal escape sequence.
    hostile = b"Files\\bad\xff\x1b[31m".decode("utf-8", "surrogateescape")
    add(writer, hostile, FILE)
    with pytest.raises(LayerError) as raised:
        add(writer, hostile, FILE)
    assert str(raised.value) == r"'Files\\bad\xff\x1b[31m' appears twice in the layer"
    with pytest.raises(UnsafePathError) as unsafe:
        add(writer, "Files\\" + "x" * 300 + ":s", FILE)
    assert str(unsafe.value) == (
        "'Files\\\\" + "x" * 194 + "'... (308 bytes): ':' is not allowed in a layer path"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Files\\a:b", "':' is not allowed"),
        ("C:\\Files", "':' is not allowed"),
        ("\\Files\\a", "absolute names are not allowed"),
        ("Files\\..\\..\\a", "'..' is not allowed"),
        ("Files\\a\x00b", "NUL is not allowed"),
    ],
)
def test_writer_rejects_unsafe_names(writer: TransportWriter, name: str, message: str) -> None:
    with pytest.raises(UnsafePathError, match=message):
        add(writer, name, FILE)


def test_writer_rejects_reserved_names(writer: TransportWriter) -> None:
    add(writer, "Files", DIR)
    with pytest.raises(LayerError, match="reserved by the transport folder layout"):
        add(writer, "Files\\x.$wcidirs$", FILE)
    with pytest.raises(LayerError, match="reserved by the transport folder layout"):
        add(writer, "tombstones.txt", FILE)


def test_writer_rejects_children_of_reparse_directory(writer: TransportWriter) -> None:
    add(writer, "Files", DIR)
    reparse = encode_reparse_point(ReparsePoint("C:\\elsewhere", True))
    stream = writer.add("Files\\j", FileBasicInfo(1, 2, 3, 4, 0x410))
    stream.write(bytes.fromhex("08000000 00000000") + len(reparse).to_bytes(8, "little"))
    stream.write(bytes(4) + reparse)
    with pytest.raises(
        LayerError, match="its parent directory 'Files\\\\\\\\j' is a reparse point"
    ):
        add(writer, "Files\\j\\inside", FILE)


def test_writer_tombstone_rules(writer: TransportWriter) -> None:
    writer.remove("Files\\a\\b")
    with pytest.raises(LayerError, match="invalid tombstone 'Hives"):
        writer.remove("Hives\\x")
    with pytest.raises(LayerError, match="no way to delete utility VM files"):
        writer.remove("UtilityVM\\Files\\x")


def test_writer_utility_vm_rules(writer: TransportWriter) -> None:
    with pytest.raises(LayerError, match="missing UtilityVM directory"):
        add(writer, "UtilityVM\\Files", DIR)
    add(writer, "UtilityVM", DIR)
    with pytest.raises(LayerError, match="invalid UtilityVM layer"):
        add(writer, "UtilityVM\\Other", DIR)


def test_writer_link_rules(writer: TransportWriter) -> None:
    add(writer, "Files", DIR)
    add(writer, "Files\\d", DIR)
    add(writer, "Hives", DIR)
    add(writer, "Hives\\h", FILE)
    with pytest.raises(LayerError, match="failed to find link target for 'Files\\\\\\\\l'"):
        writer.add_link("Files\\l", "Files\\nothing")
    with pytest.raises(LayerError, match="invalid hard link 'Files\\\\\\\\l' -> 'Hives"):
        writer.add_link("Files\\l", "Hives\\h")
    with pytest.raises(LayerError, match="the target is a directory"):
        writer.add_link("Files\\l", "Files\\d")
    with pytest.raises(UnsafePathError, match=r"'\.\.' is not allowed"):
        writer.add_link("Files\\l", "Files\\..\\..\\outside")


def test_writer_does_not_follow_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "layer"
    target.mkdir()
    layer = TransportWriter(target)
    add(layer, "Files", DIR)
    layer.abort()
    os.symlink(outside, target / "Files" / "escape")
    layer = TransportWriter(target)
    with pytest.raises(UnsafePathError, match="component 'escape' is a link"):
        add(layer, "Files\\escape\\file", FILE)
    layer.abort()
    assert list(outside.iterdir()) == []


def test_whiteout_prefixed_name_rejected(tmp_path: Path) -> None:
    minimal_folder(tmp_path)
    data_file(tmp_path / "Files/.wh.secret")
    (tmp_path / "tombstones.txt").write_bytes(tombstones())
    with pytest.raises(LayerError, match="would be read as a whiteout"):
        export_windows_layer(io.BytesIO(), tmp_path)
