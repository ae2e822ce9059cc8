"""Generated Windows layers: transport folder -> tar -> transport folder -> tar gives the
same tar bytes and the same transport files, and Go's archive/tar reads every tar back to
the same bytes and PAX records."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocilayer.windows import WindowsLayout, export_windows_layer, import_windows_layer
from ocilayer.windows.backupstream import BackupHeader, StreamAttribute, StreamId
from ocilayer.windows.ea import ExtendedAttribute, encode_extended_attributes
from ocilayer.windows.fileinfo import FILETIME_UNIX_EPOCH, FileBasicInfo
from ocilayer.windows.reparse import ReparsePoint, encode_reparse_point
from windows_helpers import (
    assert_go_reads_identically,
    make_dir,
    tombstones,
    write_plain,
    write_transport_file,
)

Stream = tuple[BackupHeader, bytes]

# FILETIMEs whose Unix nanoseconds fit an int64, the range that survives a tar.
filetimes = st.integers(
    min_value=FILETIME_UNIX_EPOCH - (2**63) // 100 + 1,
    max_value=FILETIME_UNIX_EPOCH + (2**63 - 1) // 100,
)
names = st.text(
    alphabet=st.characters(min_codepoint=32, exclude_characters="\\/:", exclude_categories=["Cs"]),
    min_size=1,
    max_size=10,
).filter(
    lambda name: (
        name not in (".", "..")
        and not name.startswith(".wh.")
        and not name.endswith(".$wcidirs$")
        and name.casefold() != "$recycle.bin"
    )
)
ea_names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._", min_size=1, max_size=8)


@st.composite
def infos(draw: st.DrawFn, directory: bool) -> FileBasicInfo:
    extra = draw(st.sampled_from([0, 0x1, 0x2, 0x4, 0x20, 0x2000, 0x80000]))
    attributes = (0x10 if directory else 0) | extra
    return FileBasicInfo(
        draw(filetimes), draw(filetimes), draw(filetimes), draw(filetimes), attributes
    )


@st.composite
def metadata(draw: st.DrawFn) -> list[Stream]:
    streams: list[Stream] = []
    if draw(st.booleans()):
        sd = draw(st.binary(min_size=1, max_size=60))
        streams.append((BackupHeader(StreamId.SECURITY, len(sd)), sd))
    eas = draw(st.dictionaries(ea_names, st.binary(max_size=20), max_size=3))
    if eas:
        encoded = encode_extended_attributes(
            [ExtendedAttribute(name.encode(), eas[name]) for name in sorted(eas)]
        )
        streams.append((BackupHeader(StreamId.EA_DATA, len(encoded)), encoded))
    return streams


@st.composite
def reparse(draw: st.DrawFn) -> Stream:
    target = draw(st.sampled_from(["C:\\Windows", "..\\x", "\\\\server\\share", "r\u00e9l"]))
    data = encode_reparse_point(ReparsePoint(target, draw(st.booleans())))
    return BackupHeader(StreamId.REPARSE_DATA, len(data)), data


@dataclass
class File:
    info: FileBasicInfo
    streams: list[Stream]
    sparse: bool = False
    links: list[str] = field(default_factory=list)


@dataclass
class Directory:
    info: FileBasicInfo
    streams: list[Stream]
    children: dict[str, File | Directory] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


@st.composite
def files(draw: st.DrawFn) -> File:
    info = draw(infos(False))
    streams = draw(metadata())
    # A file without any data stream is left out: import always writes a data stream for
    # a regular entry (as go-winio does), so its mode comes back as 0100000, not 0.
    kind = draw(st.sampled_from(["data", "data", "empty", "sparse", "reparse"]))
    sparse = kind == "sparse"
    if kind == "data":
        content = draw(st.binary(max_size=700))
        streams.append((BackupHeader(StreamId.DATA, len(content)), content))
    elif kind == "empty":
        streams.append((BackupHeader(StreamId.DATA, 0), b""))
    elif kind == "sparse":
        flag = StreamAttribute.SPARSE
        streams.append((BackupHeader(StreamId.DATA, 0, attributes=flag), b""))
        offset = 0
        for gap, content in draw(
            st.lists(
                st.tuples(st.integers(0, 1500), st.binary(min_size=1, max_size=40)), max_size=3
            )
        ):
            offset += gap
            streams.append(
                (
                    BackupHeader(
                        StreamId.SPARSE_BLOCK, len(content), attributes=flag, offset=offset
                    ),
                    content,
                )
            )
            offset += len(content)
        end = offset + draw(st.integers(0, 600))
        streams.append((BackupHeader(StreamId.SPARSE_BLOCK, 0, attributes=flag, offset=end), b""))
        info = FileBasicInfo(
            info.creation_time,
            info.last_access_time,
            info.last_write_time,
            info.change_time,
            info.attributes | 0x200,
        )
    elif kind == "reparse":
        streams.append(draw(reparse()))
    if kind in ("data", "empty"):
        for stream_name, content in draw(
            st.dictionaries(names, st.binary(max_size=50), max_size=2)
        ).items():
            streams.append(
                (
                    BackupHeader(StreamId.ALTERNATE_DATA, len(content), f":{stream_name}:$DATA"),
                    content,
                )
            )
    return File(info, streams, sparse)


def directories(depth: int) -> st.SearchStrategy[Directory]:
    child: st.SearchStrategy[File | Directory] = files()
    if depth > 0:
        child = st.one_of(files(), directories(depth - 1))
    return st.builds(
        Directory,
        info=infos(True),
        streams=metadata(),
        children=st.dictionaries(names, child, max_size=4),
        deleted=st.lists(names, max_size=2, unique=True),
    )


@st.composite
def layers(draw: st.DrawFn) -> Directory:
    files_root = draw(directories(2))
    plain = [name for name, child in files_root.children.items() if isinstance(child, File)]
    # Give some files a second name: a hard link between transport files.
    for name in plain[:1]:
        link = draw(names)
        if link not in files_root.children and link not in files_root.deleted:
            files_root.children[name].links.append(link)  # type: ignore[union-attr]
    return files_root


def write_directory(path: Path, tree: Directory, counter: Iterator[int]) -> None:
    for name, child in tree.children.items():
        target = path / name
        if isinstance(child, File):
            write_transport_file(target, child.info.attributes, child.info, *child.streams)
            for link in child.links:
                os.link(target, path / link)
        else:
            make_dir(target, FileBasicInfo(attributes=0x10))
            write_transport_file(
                path / (name + ".$wcidirs$"), child.info.attributes, child.info, *child.streams
            )
            write_directory(target, child, counter)


def tombstone_lines(tree: Directory, prefix: str) -> list[str]:
    lines = []
    for name in tree.deleted:
        if name not in tree.children:
            lines.append(f"{prefix}\\{name}")
    for name, child in sorted(tree.children.items(), key=lambda item: item[0].encode()):
        if isinstance(child, Directory):
            lines.extend(tombstone_lines(child, f"{prefix}\\{name}"))
    return lines


def build_folder(root: Path, tree: Directory, delta: FileBasicInfo, with_uvm: bool) -> None:
    make_dir(root / "Files", FileBasicInfo(attributes=tree.info.attributes))
    write_directory(root / "Files", tree, iter(range(10**6)))
    make_dir(root / "Hives", FileBasicInfo(attributes=0x10))
    write_plain(root / "Hives" / "System_Delta", b"regf" + bytes(12), delta)
    write_plain(root / "Hives" / "Software_Delta", b"regf", delta)
    if with_uvm:
        make_dir(
            root / "UtilityVM",
            FileBasicInfo(delta.creation_time, 0, delta.last_write_time, delta.change_time, 0x10),
        )
        make_dir(
            root / "UtilityVM" / "Files",
            FileBasicInfo(0, 0, delta.change_time, delta.last_write_time, 0x10),
        )
        write_plain(root / "UtilityVM" / "Files" / "boot.bin", b"boot", delta)
    (root / "tombstones.txt").write_bytes(tombstones(*tombstone_lines(tree, "")))


def export(root: Path) -> bytes:
    out = io.BytesIO()
    export_windows_layer(out, root, layout=WindowsLayout.TRANSPORT)
    return out.getvalue()


def sparse_paths(tree: Directory, path: str) -> Iterator[str]:
    for name, child in tree.children.items():
        if isinstance(child, File):
            if child.sparse:
                yield f"{path}/{name}"
                yield from (f"{path}/{link}" for link in child.links)
        else:
            yield from sparse_paths(child, f"{path}/{name}")


def transport_files(root: Path) -> dict[str, bytes]:
    found = {}
    for directory, _, file_names in os.walk(root / "Files"):
        for name in file_names:
            full = Path(directory) / name
            found[str(full.relative_to(root))] = full.read_bytes()
    return found


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(tree=layers(), delta=infos(False), with_uvm=st.booleans())
def test_transport_round_trip(tree: Directory, delta: FileBasicInfo, with_uvm: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="ocilayer-win-"))
    try:
        build_folder(work / "first", tree, delta, with_uvm)
        first = export(work / "first")
        import_windows_layer(io.BytesIO(first), work / "second")
        second = export(work / "second")
        assert second == first
        expected = transport_files(work / "first")
        actual = transport_files(work / "second")
        assert actual.keys() == expected.keys()
        skip = set(sparse_paths(tree, "Files"))
        for name, content in expected.items():
            if name not in skip:
                assert actual[name] == content, name
    finally:
        shutil.rmtree(work)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=layers(), delta=infos(False))
def test_go_reads_generated_layers(tree: Directory, delta: FileBasicInfo) -> None:
    work = Path(tempfile.mkdtemp(prefix="ocilayer-win-"))
    try:
        build_folder(work / "layer", tree, delta, True)
        assert_go_reads_identically(export(work / "layer"))
    finally:
        shutil.rmtree(work)
