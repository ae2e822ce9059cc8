"""The C packer of base layer exports: the same tar bytes as the pure-Python writer.

Most tests export a tree twice through the public API, once with the packer and once
with OCILAYER_PURE_PYTHON=1, and require equal bytes and descriptors. The edge cases
also check which lane wrote each entry (the packer, or Python through
`entry_from_node`) and the header fields the packer wrote. The error tests compare
the LayerError of both lanes, and the cancel test checks that the packer's worker
thread stops.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import resource
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from capabilities import CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, capabilities_dropped
from layer_helpers import export_bytes, write
from ocilayer import Cancelled, Compression, LayerError, XattrPolicy, export_layer_to_tar
from ocilayer import export as export_module
from ocilayer.digest import Descriptor
from ocilayer.entry import Entry
from ocilayer.progress import Progress
from ocilayer.sources import packed as packed_module
from ocilayer.sources.overlay import OverlaySource
from ocilayer.sources.packed import PackedEntries, load_packer, packed_changes
from ocilayer.sources.snapshot import SnapshotSource
from ocilayer.writer import LayerTarWriter
from rawtar import RawEntry, assert_tars_equal, header_checksum, header_field, split_tar
from treegen import TreeGenOptions, generate_pair
from trees import (
    DEFAULT_MTIME_NS,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    Node,
    Socket,
    Symlink,
    TreeSpec,
    build_tree,
)

pytestmark = pytest.mark.usefixtures("as_root")

PURE_PYTHON = "OCILAYER_PURE_PYTHON"
DEFAULT_MTIME = DEFAULT_MTIME_NS // 10**9
MIB = 1 << 20
# Largest value of a 7-digit octal field (uid, gid): larger ids need a PAX record.
OCTAL_7_MAX = 0o7777777
# vfs_cap_data revision 2 with cap_net_raw in the permitted set.
NET_RAW_CAPABILITY = bytes.fromhex("0000000200200000000000000000000000000000")
PACKER = "packer"
PYTHON = "python"

MakeTree = Callable[[str, TreeSpec], Path]


@pytest.fixture(autouse=True)
def packer_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test with the packer on, even when the suite runs with it turned off."""
    monkeypatch.delenv(PURE_PYTHON, raising=False)


def export_both(monkeypatch: pytest.MonkeyPatch, tree: Path, **options: object) -> bytes:
    """Export `tree` with and without the packer, check that both match and return the tar.

    The descriptors and the final Progress totals (entries and tar bytes) must be equal
    too.
    """
    results: list[tuple[bytes, Descriptor, tuple[int, int]]] = []
    for pure_python in (False, True):
        if pure_python:
            monkeypatch.setenv(PURE_PYTHON, "1")
        assert (load_packer() is None) == pure_python
        progress = Progress("export", stream=io.StringIO())
        data, descriptor = export_bytes(
            tree,
            check_peers=False,
            progress=progress,
            **options,  # type: ignore[arg-type]
        )
        results.append((data, descriptor, (progress.entries, progress.bytes)))
    monkeypatch.delenv(PURE_PYTHON)

    (packed, packed_descriptor, packed_totals), (pure, pure_descriptor, pure_totals) = results
    assert_tars_equal(packed, pure, "packer", "pure Python")
    assert packed_descriptor == pure_descriptor
    assert packed_totals == pure_totals
    return packed


def lanes(
    tree: Path,
    xattrs: XattrPolicy = XattrPolicy.ALL,
    source_date_epoch: int | None = None,
    keep_nanoseconds: bool = False,
) -> dict[bytes, str]:
    """Map each layer path (no trailing `/`) to the lane that writes it: PACKER or PYTHON.

    The data of consecutive PACKED items is joined before it is split into entries,
    because a large file's data runs on over several items.
    """
    items = packed_changes(SnapshotSource(tree, xattrs=xattrs), source_date_epoch, keep_nanoseconds)
    assert items is not None
    found: dict[bytes, str] = {}
    packed = bytearray()
    for item in items:
        if isinstance(item, PackedEntries):
            packed += item.data
            continue
        found.update(packed_names(bytes(packed)))
        packed.clear()
        found[item.path] = PYTHON
    found.update(packed_names(bytes(packed)))
    return found


def packed_names(data: bytes) -> dict[bytes, str]:
    layout = split_tar(data)
    assert layout.trailer == b"", "packed data ends inside an entry"
    return {entry.name.rstrip(b"/"): PACKER for entry in layout.entries}


def entry_named(data: bytes, name: bytes) -> RawEntry:
    """Return the one entry of a tar stream whose full name (PAX path included) is `name`."""
    matches = [entry for entry in split_tar(data).entries if entry.name == name]
    assert len(matches) == 1, f"{len(matches)} entries named {name!r}"
    return matches[0]


def assert_plain_header(
    entry: RawEntry,
    *,
    typeflag: bytes,
    size: int = 0,
    mode: int = 0o644,
    mtime: int = DEFAULT_MTIME,
    uid: int = 0,
    gid: int = 0,
    linkname: bytes = b"",
) -> None:
    """Check every field of a USTAR header with the whole name in the name field, no PAX."""
    header = entry.header
    assert entry.pax == {}
    assert len(entry.blocks) == 512
    assert header_field(header, "name") == entry.name.ljust(100, b"\0")
    assert header_field(header, "mode") == b"%07o\0" % mode
    assert header_field(header, "uid") == b"%07o\0" % uid
    assert header_field(header, "gid") == b"%07o\0" % gid
    assert header_field(header, "size") == b"%011o\0" % size
    assert header_field(header, "mtime") == b"%011o\0" % mtime
    assert header_field(header, "chksum") == b"%06o\0 " % header_checksum(header)
    assert header_field(header, "typeflag") == typeflag
    assert header_field(header, "linkname") == linkname.ljust(100, b"\0")
    assert header_field(header, "magic") + header_field(header, "version") == b"ustar\x0000"
    assert header_field(header, "uname") == bytes(32)
    assert header_field(header, "gname") == bytes(32)
    assert header_field(header, "devmajor") == b"0000000\0"
    assert header_field(header, "devminor") == b"0000000\0"
    assert header_field(header, "prefix") == bytes(155)
    assert header_field(header, "padding") == bytes(12)


def pattern(size: int) -> bytes:
    """Return `size` reproducible bytes, seeded by the size."""
    return random.Random(size).randbytes(size)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


# The extension


def test_packer_built_and_loaded() -> None:
    packer = load_packer()

    assert packer is not None, (
        "ocilayer._packer is not built: run `pip install -e .` with a C compiler"
    )
    assert packer.__name__ == "ocilayer._packer"
    assert packer.PACKED == 0
    assert packer.UNUSUAL == 1
    assert packer.FAILED == 2
    assert callable(packer.DirPacker)


def test_packer_turned_off_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PURE_PYTHON, "1")
    assert load_packer() is None
    monkeypatch.setenv(PURE_PYTHON, "")
    assert load_packer() is not None


def test_dirpacker_item_shapes(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree) -> None:
    """One directory's items: runs of finished entries, and the children left to Python."""
    spec: TreeSpec = {
        "a": File(b"aa"),
        "b": Fifo(),
        "c/inner": File(b"i"),
        "d": File(b"dd"),
        "e": File(),
    }
    tree = make_tree("tree", spec)
    packer = load_packer()
    assert packer is not None

    items = list(packer.DirPacker(os.fsencode(tree), b"", True, False))

    by_name = {
        entry.name: entry.raw() for entry in split_tar(export_both(monkeypatch, tree)).entries
    }
    assert len(items) == 4
    assert items[0] == (packer.PACKED, by_name[b"a"], 1, None)
    assert items[1] == (packer.UNUSUAL, b"b")
    inner = os.lstat(tree / "c")
    assert items[2] == (packer.PACKED, by_name[b"c/"], 1, (b"c", inner.st_dev, inner.st_ino))
    assert items[3] == (packer.PACKED, by_name[b"d"] + by_name[b"e"], 2, None)


# Misuse of DirPacker and directories replaced during the walk


def test_dirpacker_rejects_second_init(make_tree: MakeTree) -> None:
    tree = os.fsencode(make_tree("tree", {"a": File(b"a"), "b/c": File(b"c")}))
    packer = load_packer()
    assert packer is not None
    walker = packer.DirPacker(tree, b"", True, False)
    walker.pause()
    with pytest.raises(RuntimeError, match="already initialised"):
        walker.__init__(tree, b"", True, False)
    # One run: the file `a` and the header of `b/`, which the caller walks next.
    assert [item[0] for item in walker] == [packer.PACKED]


def test_dirpacker_rejects_nul_in_path(make_tree: MakeTree) -> None:
    tree = os.fsencode(make_tree("tree", {"a": File(b"a")}))
    packer = load_packer()
    assert packer is not None
    with pytest.raises(ValueError, match="null byte"):
        packer.DirPacker(tree + b"\x00/etc", b"", True, False)


def test_dirpacker_rejects_use_from_two_threads(make_tree: MakeTree) -> None:
    tree = make_tree("tree", {f"f{index:03}": File(bytes(60_000)) for index in range(60)})
    packer = load_packer()
    assert packer is not None
    walker = packer.DirPacker(os.fsencode(tree), b"", True, False)
    errors: list[BaseException] = []
    stop = threading.Event()

    def pause_repeatedly() -> None:
        while not stop.is_set():
            try:
                walker.pause()
            except RuntimeError as error:
                errors.append(error)

    helper = threading.Thread(target=pause_repeatedly)
    helper.start()
    try:
        for _ in walker:
            pass
    finally:
        stop.set()
        helper.join()
    # Every refused call names the reason; none crashed the interpreter.
    assert all("in use by another thread" in str(error) for error in errors)


def test_dirpacker_identity_mismatch(make_tree: MakeTree) -> None:
    tree = make_tree("tree", {"a/x": File(b"x"), "b/y": File(b"y")})
    packer = load_packer()
    assert packer is not None
    other = os.lstat(tree / "b")
    with pytest.raises(packer.DirectoryChanged, match="replaced"):
        packer.DirPacker(
            os.fsencode(tree / "a"), b"a/", True, False, None, (other.st_dev, other.st_ino)
        )


def test_dirpacker_does_not_follow_symlinked_child(make_tree: MakeTree, tmp_path: Path) -> None:
    tree = make_tree("tree", {"a/x": File(b"x")})
    identity = os.lstat(tree / "a")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"secret")
    (tree / "a").rename(tmp_path / "moved")
    (tree / "a").symlink_to(outside)
    packer = load_packer()
    assert packer is not None
    with pytest.raises(OSError):
        packer.DirPacker(
            os.fsencode(tree / "a"), b"a/", True, False, None, (identity.st_dev, identity.st_ino)
        )


def test_directory_swapped_after_pause(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A directory replaced by a symlink while a subdirectory is walked stops the export."""
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "inner").write_bytes(b"i")
    (tree / "a" / "secret").write_bytes(b"in")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside the tree")
    packer = load_packer()
    assert packer is not None
    # The walk itself, without the read-ahead thread, so that the swap happens exactly
    # while a/b is walked.
    items = packed_module._walk(SnapshotSource(tree), packer, None, False)
    swapped = False
    with pytest.raises(LayerError, match="cannot read directory") as raised:
        for item in items:
            inside = isinstance(item, PackedEntries) and b"a/b/inner" in item.data
            if inside and not swapped:
                # The walk is inside a/b now, and opens a again by its path afterwards.
                (tree / "a").rename(tmp_path / "moved")
                (tree / "a").symlink_to(outside)
                swapped = True
            assert not (isinstance(item, PackedEntries) and b"outside the tree" in item.data)
    assert swapped
    assert repr(os.fsdecode(tree / "a")) in str(raised.value)


def test_long_root_same_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Children whose full path reaches PATH_MAX fail the same way on both paths."""
    # The root's path is just short of PATH_MAX (4096), its child's path is not. Both
    # are made through directory descriptors, because no single path reaches the child.
    root = tmp_path
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(os.fsencode(root)) < 4040:
            name = "d" * min(200, 4040 - len(os.fsencode(root)) - 1)
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, root = child, root / name
        file_fd = os.open("f" * 60, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"data")
        os.close(file_fd)
    finally:
        os.close(fd)
    errors = []
    for pure in (False, True):
        if pure:
            monkeypatch.setenv(PURE_PYTHON, "1")
        with pytest.raises(LayerError) as raised:
            export_layer_to_tar(io.BytesIO(), root)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
    assert "File name too long" in errors[0]


# Generated trees and the option matrix

# The generator puts in every file type, hardlinks (of symlinks, FIFOs and devices
# too), long and non-UTF-8 names, xattrs and capabilities, owners past the USTAR limit,
# mtimes before 1970 and past 2^33 seconds, and nanoseconds in half of the mtimes. Long
# and non-ASCII names put whole subtrees in the Python lane, so two of the three
# variants leave some of them out to give the packer a larger share.
RANDOM_TREES = [
    TreeGenOptions(size=80, changes=0, sockets=True),
    TreeGenOptions(size=80, changes=0, sockets=True, long_names=False),
    TreeGenOptions(size=120, changes=0, sockets=True, long_names=False, non_utf8_names=False),
]
# Most generated mtimes lie within 10^6 seconds of this one, so it clamps about half.
MIDDLE_EPOCH = 1_600_000_000
OPTION_MATRIX = [
    {"xattrs": xattrs, "source_date_epoch": epoch, "keep_nanoseconds": keep}
    for xattrs in XattrPolicy
    for epoch in (None, MIDDLE_EPOCH, 2**34, 0)
    for keep in (False, True)
]


@pytest.mark.parametrize("seed", range(18))
def test_random_tree_identical(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seed: int) -> None:
    pair = generate_pair(seed, RANDOM_TREES[seed % len(RANDOM_TREES)])
    tree = build_tree(tmp_path / "tree", pair.lower)

    assert PACKER in lanes(tree).values()
    assert PYTHON in lanes(tree).values()
    for options in OPTION_MATRIX:
        try:
            export_both(monkeypatch, tree, **options)
        except AssertionError as error:
            raise AssertionError(f"seed {seed}, options {options}:\n{error}") from None


# Targeted edge cases: the lane of each entry and the header the packer wrote


@pytest.mark.parametrize("parent", ["", "p/"])
@pytest.mark.parametrize(
    ("kind", "length", "lane"),
    [("file", 100, PACKER), ("file", 101, PYTHON), ("dir", 100, PACKER), ("dir", 101, PYTHON)],
)
def test_name_length_limit(
    monkeypatch: pytest.MonkeyPatch,
    make_tree: MakeTree,
    parent: str,
    kind: str,
    length: int,
    lane: str,
) -> None:
    # A directory's tar name ends in '/', which counts towards the 100 bytes.
    is_dir = kind == "dir"
    path = parent + "n" * (length - len(parent) - is_dir)
    node = Dir() if is_dir else File(b"x")
    tree = make_tree("tree", {path: node, parent + "z": File(b"after")})

    data = export_both(monkeypatch, tree)

    found = lanes(tree)
    assert found[path.encode()] == lane
    assert found[(parent + "z").encode()] == PACKER
    name = path.encode() + (b"/" if is_dir else b"")
    assert len(name) == length
    entry = entry_named(data, name)
    if lane == PACKER:
        typeflag = b"5" if is_dir else b"0"
        assert_plain_header(entry, typeflag=typeflag, size=0 if is_dir else 1,
                            mode=0o755 if is_dir else 0o644)  # fmt: skip


def test_ascii_child_of_non_ascii_dir(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree) -> None:
    spec: TreeSpec = {"café/x": File(b"x"), "café/sub/y": File(b"y"), "d/x": File(b"x")}
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {
        "café".encode(): PYTHON,
        "café/sub".encode(): PYTHON,
        "café/sub/y".encode(): PYTHON,
        "café/x".encode(): PYTHON,
        b"d": PACKER,
        b"d/x": PACKER,
    }
    assert entry_named(data, "café/x".encode()).pax == {b"path": "café/x".encode()}
    assert_plain_header(entry_named(data, b"d/x"), typeflag=b"0", size=1)


@pytest.mark.parametrize(
    ("target", "lane"),
    [
        (b"t" * 100, PACKER),
        (b"t" * 101, PYTHON),
        ("café".encode(), PYTHON),
        (b"raw-\xff", PYTHON),
        (b"/usr/lib/x", PACKER),
    ],
)
def test_symlink_target(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, target: bytes, lane: str
) -> None:
    tree = make_tree("tree", {"link": Symlink(target), "z": File(b"after")})

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {b"link": lane, b"z": PACKER}
    entry = entry_named(data, b"link")
    assert entry.linkname == target
    if lane == PACKER:
        assert_plain_header(entry, typeflag=b"2", mode=0o777, linkname=target)
    else:
        assert entry.pax == {b"linkpath": target}


def test_hardlinked_symlink_and_file(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree) -> None:
    spec: TreeSpec = {
        "f": File(b"data"),
        "g": Hardlink(b"f"),
        "s": Symlink(b"target"),
        "t": Hardlink(b"s"),
        "z": File(b"after"),
    }
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {b"f": PYTHON, b"g": PYTHON, b"s": PYTHON, b"t": PYTHON, b"z": PACKER}
    entries = split_tar(data).entries
    assert [(entry.name, entry.typeflag, entry.linkname) for entry in entries] == [
        (b"f", b"0", b""),
        (b"g", b"1", b"f"),
        (b"s", b"2", b"target"),
        (b"t", b"1", b"s"),
        (b"z", b"0", b""),
    ]
    assert entries[0].data == b"data"
    assert_plain_header(entries[4], typeflag=b"0", size=5)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 65536, 65537, MIB, MIB + 1, 3 * MIB + 5])
def test_file_size(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, size: int) -> None:
    content = pattern(size)
    tree = make_tree("tree", {"d/f": File(content), "d/z": File(b"after")})

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {b"d": PACKER, b"d/f": PACKER, b"d/z": PACKER}
    entry = entry_named(data, b"d/f")
    assert entry.data == content
    assert data[entry.offset : entry.offset + len(entry.raw())] == entry.raw()
    assert_plain_header(entry, typeflag=b"0", size=size)


def test_large_file_spans_items(tmp_path: Path) -> None:
    """A file's data runs on over the next PACKED items, which carry no header."""
    content = pattern(3 * MIB + 5)
    write(tmp_path / "tree" / "big", content, mtime=DEFAULT_MTIME)

    items = packed_changes(SnapshotSource(tmp_path / "tree"), None, False)
    assert items is not None
    runs = list(items)

    assert all(isinstance(run, PackedEntries) for run in runs)
    packed = [run for run in runs if isinstance(run, PackedEntries)]
    assert len(packed) >= 3
    assert [run.entries for run in packed] == [1] + [0] * (len(packed) - 1)
    assert [run.directories for run in packed] == [()] * len(packed)
    (entry,) = split_tar(b"".join(run.data for run in packed)).entries
    assert entry.data == content
    assert_plain_header(entry, typeflag=b"0", size=len(content))


def test_merge_joins_short_runs() -> None:
    """Short runs are joined up to MERGE_SIZE, and a long run or an entry ends the join."""
    limit = packed_module.MERGE_SIZE
    fifo = cast(Entry, object())  # passed on as it is, never read
    small = [PackedEntries(bytes([n]) * (limit // 4), 2, (b"d%d" % n,)) for n in range(6)]
    long_run = PackedEntries(b"L" * limit, 1, ())
    items: list[Entry | PackedEntries] = [*small[:5], long_run, small[5], fifo, small[0]]

    merged = list(packed_module._merged(iter(items)))

    first, second = merged[0], merged[1]
    assert isinstance(first, PackedEntries)
    assert first == PackedEntries(b"".join(run.data for run in small[:4]), 8,
                                  (b"d0", b"d1", b"d2", b"d3"))  # fmt: skip
    assert second == small[4]  # alone before the long run, so not copied
    assert merged[2:] == [long_run, small[5], fifo, small[0]]


@pytest.mark.parametrize("size", [MIB, 2 * MIB])
def test_sparse_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, size: int) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "sparse", "wb") as handle:
        handle.truncate(size)
        handle.write(b"head")
        handle.seek(size // 2 + 3)
        handle.write(b"middle")
    os.utime(tree / "sparse", ns=(DEFAULT_MTIME_NS, DEFAULT_MTIME_NS))
    expected = bytearray(size)
    expected[:4] = b"head"
    expected[size // 2 + 3 : size // 2 + 9] = b"middle"

    data = export_both(monkeypatch, tree)

    # Sparse files over 1 MiB go to Python, which copies around their holes.
    assert lanes(tree) == {b"sparse": PACKER if size <= MIB else PYTHON}
    entry = entry_named(data, b"sparse")
    assert entry.data == expected
    assert_plain_header(entry, typeflag=b"0", size=size)


XATTR_TREE: TreeSpec = {
    # The packer lists the xattrs of a file with data through its descriptor, and those
    # of other paths by name.
    "data": File(b"x", xattrs={b"user.test": b"v"}),
    "dir": Dir(xattrs={b"user.test": b"d"}),
    "dir/child": File(b"c"),
    "empty": File(xattrs={b"user.test": b"e"}),
    "host": File(b"h", xattrs={b"user.overlay.redirect": b"r"}),
    "ping": File(b"ELF", mode=0o755, xattrs={b"security.capability": NET_RAW_CAPABILITY}),
    "plain": File(b"p"),
}


@pytest.mark.parametrize("policy", list(XattrPolicy))
def test_xattrs_by_policy(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, policy: XattrPolicy
) -> None:
    tree = make_tree("tree", XATTR_TREE)

    data = export_both(monkeypatch, tree, xattrs=policy)

    # The packer only checks whether a path has xattrs, so with a policy other than
    # NONE every path that has any goes to Python, which applies the policy.
    with_xattrs = PACKER if policy is XattrPolicy.NONE else PYTHON
    assert lanes(tree, xattrs=policy) == {
        b"data": with_xattrs,
        b"dir": with_xattrs,
        b"dir/child": PACKER,
        b"empty": with_xattrs,
        b"host": with_xattrs,
        b"ping": with_xattrs,
        b"plain": PACKER,
    }
    user = policy is XattrPolicy.ALL
    capability = policy is not XattrPolicy.NONE
    pax = {entry.name: entry.pax for entry in split_tar(data).entries}
    assert pax[b"data"] == ({b"SCHILY.xattr.user.test": b"v"} if user else {})
    assert pax[b"dir/"] == ({b"SCHILY.xattr.user.test": b"d"} if user else {})
    assert pax[b"empty"] == ({b"SCHILY.xattr.user.test": b"e"} if user else {})
    assert pax[b"host"] == {}
    capability_record = {b"SCHILY.xattr.security.capability": NET_RAW_CAPABILITY}
    assert pax[b"ping"] == (capability_record if capability else {})
    assert_plain_header(entry_named(data, b"dir/child"), typeflag=b"0", size=1)
    assert_plain_header(entry_named(data, b"plain"), typeflag=b"0", size=1)
    if policy is XattrPolicy.NONE:
        assert_plain_header(entry_named(data, b"data"), typeflag=b"0", size=1)
        assert_plain_header(entry_named(data, b"dir/"), typeflag=b"5", mode=0o755)


@pytest.mark.parametrize(
    ("uid", "gid", "lane"),
    [
        (OCTAL_7_MAX, OCTAL_7_MAX, PACKER),
        (OCTAL_7_MAX + 1, 0, PYTHON),
        (0, OCTAL_7_MAX + 1, PYTHON),
        (OCTAL_7_MAX + 1, OCTAL_7_MAX + 1, PYTHON),
    ],
)
def test_owner_limit(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, uid: int, gid: int, lane: str
) -> None:
    spec: TreeSpec = {
        "d": Dir(uid=uid, gid=gid),
        "f": File(b"x", uid=uid, gid=gid),
        "l": Symlink(b"f", uid=uid, gid=gid),
    }
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {b"d": lane, b"f": lane, b"l": lane}
    entries = {entry.name: entry for entry in split_tar(data).entries}
    if lane == PACKER:
        assert_plain_header(entries[b"d/"], typeflag=b"5", mode=0o755, uid=uid, gid=gid)
        assert_plain_header(entries[b"f"], typeflag=b"0", size=1, uid=uid, gid=gid)
        assert_plain_header(entries[b"l"], typeflag=b"2", mode=0o777, uid=uid, gid=gid,
                            linkname=b"f")  # fmt: skip
        return
    expected_pax = {}
    if uid > OCTAL_7_MAX:
        expected_pax[b"uid"] = str(uid).encode()
    if gid > OCTAL_7_MAX:
        expected_pax[b"gid"] = str(gid).encode()
    for name in (b"d/", b"f", b"l"):
        assert entries[name].pax == expected_pax, name


@pytest.mark.parametrize(
    ("mtime_ns", "lane", "pax"),
    [
        (-(10**9), PYTHON, {b"mtime": b"-1"}),
        # Cut to whole seconds, -1 ns is -1 s.
        (-1, PYTHON, {b"mtime": b"-1"}),
        (0, PACKER, {}),
        ((2**33 - 1) * 10**9, PACKER, {}),
        (2**33 * 10**9, PYTHON, {b"mtime": b"8589934592"}),
    ],
)
def test_mtime_range(
    monkeypatch: pytest.MonkeyPatch,
    make_tree: MakeTree,
    mtime_ns: int,
    lane: str,
    pax: dict[bytes, bytes],
) -> None:
    spec: TreeSpec = {
        "d": Dir(mtime_ns=mtime_ns),
        "f": File(b"x", mtime_ns=mtime_ns),
        "l": Symlink(b"f", mtime_ns=mtime_ns),
    }
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {b"d": lane, b"f": lane, b"l": lane}
    entries = {entry.name: entry for entry in split_tar(data).entries}
    for name in (b"d/", b"f", b"l"):
        assert entries[name].pax == pax, name
    if lane == PACKER:
        mtime = mtime_ns // 10**9
        assert_plain_header(entries[b"d/"], typeflag=b"5", mode=0o755, mtime=mtime)
        assert_plain_header(entries[b"f"], typeflag=b"0", size=1, mtime=mtime)
        assert_plain_header(entries[b"l"], typeflag=b"2", mode=0o777, mtime=mtime,
                            linkname=b"f")  # fmt: skip


@pytest.mark.parametrize("keep_nanoseconds", [False, True])
def test_nanoseconds(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, keep_nanoseconds: bool
) -> None:
    spec: TreeSpec = {
        "dir": Dir(mtime_ns=DEFAULT_MTIME_NS + 5),
        "dir/whole": File(b"w"),
        "fraction": File(b"f", mtime_ns=DEFAULT_MTIME_NS + 123),
        "link": Symlink(b"whole", mtime_ns=DEFAULT_MTIME_NS + 7),
        "whole": File(b"w"),
    }
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree, keep_nanoseconds=keep_nanoseconds)

    fraction_lane = PYTHON if keep_nanoseconds else PACKER
    assert lanes(tree, keep_nanoseconds=keep_nanoseconds) == {
        b"dir": fraction_lane,
        b"dir/whole": PACKER,
        b"fraction": fraction_lane,
        b"link": fraction_lane,
        b"whole": PACKER,
    }
    entries = {entry.name: entry for entry in split_tar(data).entries}
    assert_plain_header(entries[b"whole"], typeflag=b"0", size=1)
    assert_plain_header(entries[b"dir/whole"], typeflag=b"0", size=1)
    if keep_nanoseconds:
        assert entries[b"dir/"].pax == {b"mtime": b"1600000000.000000005"}
        assert entries[b"fraction"].pax == {b"mtime": b"1600000000.000000123"}
        assert entries[b"link"].pax == {b"mtime": b"1600000000.000000007"}
    else:
        assert_plain_header(entries[b"fraction"], typeflag=b"0", size=1)
        assert_plain_header(entries[b"dir/"], typeflag=b"5", mode=0o755)


@pytest.mark.parametrize("keep_nanoseconds", [False, True])
def test_source_date_epoch(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, keep_nanoseconds: bool
) -> None:
    epoch = 1_600_000_000
    second = 10**9
    spec: TreeSpec = {
        "dir": Dir(mtime_ns=1_700_000_000 * second),
        "future": File(b"f", mtime_ns=(2**33 + 5) * second),
        "new": File(b"n", mtime_ns=1_700_000_000 * second),
        "new-fraction": File(b"n", mtime_ns=1_700_000_000 * second + 1),
        "old": File(b"o", mtime_ns=1_500_000_000 * second),
        "past": File(b"p", mtime_ns=-5 * second),
    }
    tree = make_tree("tree", spec)

    data = export_both(
        monkeypatch, tree, source_date_epoch=epoch, keep_nanoseconds=keep_nanoseconds
    )

    # The packer clamps before it checks the USTAR range, so "future" fits once clamped.
    assert lanes(tree, source_date_epoch=epoch, keep_nanoseconds=keep_nanoseconds) == {
        b"dir": PACKER,
        b"future": PACKER,
        b"new": PACKER,
        b"new-fraction": PYTHON if keep_nanoseconds else PACKER,
        b"old": PACKER,
        b"past": PYTHON,
    }
    entries = {entry.name: entry for entry in split_tar(data).entries}
    assert_plain_header(entries[b"dir/"], typeflag=b"5", mode=0o755, mtime=epoch)
    for name in (b"future", b"new", b"new-fraction"):
        assert_plain_header(entries[name], typeflag=b"0", size=1, mtime=epoch)
    assert_plain_header(entries[b"old"], typeflag=b"0", size=1, mtime=1_500_000_000)
    assert entries[b"past"].pax == {b"mtime": b"-5"}


@pytest.mark.parametrize("epoch", [2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1])
def test_epoch_beyond_int64(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, epoch: int
) -> None:
    tree = make_tree("tree", {"d/f": File(b"x")})

    data = export_both(monkeypatch, tree, source_date_epoch=epoch)

    assert [entry.name for entry in split_tar(data).entries] == [b"d/", b"d/f"]


def test_special_files(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree) -> None:
    spec: TreeSpec = {
        "a": File(b"a"),
        "dev/null": Device("char", 1, 3, mode=0o666),
        "dev/z": File(b"z"),
        "fifo": Fifo(mode=0o600),
        "sock": Socket(),
        "z": File(b"z"),
    }
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree)

    assert lanes(tree) == {
        b"a": PACKER,
        b"dev": PACKER,
        b"dev/null": PYTHON,
        b"dev/z": PACKER,
        b"fifo": PYTHON,
        b"sock": PYTHON,
        b"z": PACKER,
    }
    entries = split_tar(data).entries
    assert [(entry.name, entry.typeflag) for entry in entries] == [
        (b"a", b"0"),
        (b"dev/", b"5"),
        (b"dev/null", b"3"),
        (b"dev/z", b"0"),
        (b"fifo", b"6"),
        (b"z", b"0"),
    ]
    device = entries[2].header
    assert header_field(device, "devmajor") == b"0000001\0"
    assert header_field(device, "devminor") == b"0000003\0"
    assert header_field(device, "mode") == b"0000666\0"
    assert_plain_header(entries[3], typeflag=b"0", size=1)
    assert_plain_header(entries[5], typeflag=b"0", size=1)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_compressed_identical(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, compression: Compression
) -> None:
    """The blob must match too, or one layer would get two digests.

    The lanes split the same tar into different writes, so a codec whose output depends
    on the write sizes gives different blobs.
    """
    spec: dict[str, Node] = {f"small/f{number:03d}": File(pattern(700)) for number in range(300)}
    spec["big"] = File(pattern(3 * MIB + 5))
    spec["fifo"] = Fifo()
    tree = make_tree("tree", spec)

    results: list[tuple[bytes, Descriptor]] = []
    for pure_python in (False, True):
        if pure_python:
            monkeypatch.setenv(PURE_PYTHON, "1")
        results.append(export_bytes(tree, check_peers=False, compression=compression, threads=2))

    (packed_blob, packed_descriptor), (pure_blob, pure_descriptor) = results
    assert packed_descriptor == pure_descriptor
    assert packed_blob == pure_blob
    assert packed_descriptor.media_type == compression.media_type


def test_unusual_child_inside_runs(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree) -> None:
    """A directory of several runs of small files, with a FIFO between two of its runs."""
    spec: dict[str, Node] = {f"big/f{number:04d}": File(pattern(1000)) for number in range(2400)}
    spec["big/f1199-fifo"] = Fifo()
    tree = make_tree("tree", spec)

    data = export_both(monkeypatch, tree)

    items = packed_changes(SnapshotSource(tree), None, False)
    assert items is not None
    runs = list(items)
    kinds = ["fifo" if isinstance(run, Entry) else "run" for run in runs]
    assert kinds.count("fifo") == 1
    fifo = kinds.index("fifo")
    fifo_entry = runs[fifo]
    assert isinstance(fifo_entry, Entry)
    assert fifo_entry.path == b"big/f1199-fifo"
    # The directory header ends the first run, and at least two runs of files come on
    # each side of the FIFO.
    assert fifo >= 3
    assert len(runs) - fifo - 1 >= 2
    before = [run for run in runs[:fifo] if isinstance(run, PackedEntries)]
    after = [run for run in runs[fifo + 1 :] if isinstance(run, PackedEntries)]
    assert before[0].data == entry_named(data, b"big/").raw()
    assert before[0].directories == (b"big",)
    assert [run.directories for run in before[1:] + after] == [()] * (len(runs) - 2)
    assert sum(run.entries for run in before + after) == 2401
    # The run before the FIFO ends with the last file before it, whole.
    assert split_tar(b"".join(run.data for run in before)).entries[-1].name == b"big/f1199"
    assert split_tar(b"".join(run.data for run in after)).entries[0].name == b"big/f1200"


def test_deep_tree_within_descriptor_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A tree deeper than the descriptor limit: each level must close its directory."""
    from ocilayer.apply.paths import remove_tree

    depth = 1100
    tree = tmp_path / "tree"
    tree.mkdir()
    # Build level by level relative to the previous one, holding one descriptor.
    directory = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=directory)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = child
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=directory)
        os.write(leaf, b"x")
        os.close(leaf)
    finally:
        os.close(directory)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(soft, open_descriptors() + 64)
    assert depth > limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        data = export_both(monkeypatch, tree)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # pytest's own clean-up recurses once per level and fails on this tree.
        parent = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        try:
            remove_tree(parent, b"tree")
        finally:
            os.close(parent)

    names = [entry.name for entry in split_tar(data).entries]
    assert len(names) == depth + 1
    assert names[0] == b"d/"
    assert names[-1] == b"d/" * depth + b"leaf"


@pytest.mark.parametrize("spelling", ["{tree}/.", "{tree}//", "tree"])
def test_root_spelling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spelling: str) -> None:
    """The packer opens directories again by path, so the root may be relative or unclean."""
    build_tree(tmp_path / "tree", {"a/b/c": File(b"c"), "a/d": File(b"d"), "e": Fifo()})
    monkeypatch.chdir(tmp_path)

    data = export_both(monkeypatch, Path(spelling.format(tree=tmp_path / "tree")))

    names = [entry.name for entry in split_tar(data).entries]
    assert names == [b"a/", b"a/b/", b"a/b/c", b"a/d", b"e"]


# Errors, compared with the pure-Python path


def export_error(monkeypatch: pytest.MonkeyPatch, tree: Path, *, pure: bool) -> LayerError:
    """Export `tree` with or without the packer and return the LayerError it raises."""
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    else:
        monkeypatch.delenv(PURE_PYTHON, raising=False)
    try:
        with pytest.raises(LayerError) as excinfo:
            export_layer_to_tar(io.BytesIO(), tree)
    finally:
        monkeypatch.delenv(PURE_PYTHON, raising=False)
    return excinfo.value


@pytest.mark.parametrize("path", [".wh.foo", "d/.wh.foo", "d/.wh..wh..opq", "d/.wh.dir/x"])
def test_whiteout_name_rejected(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, path: str
) -> None:
    tree = make_tree("tree", {"a": File(b"a"), path: File(b"w"), "z": File(b"z")})

    packed = export_error(monkeypatch, tree, pure=False)
    pure = export_error(monkeypatch, tree, pure=True)

    assert str(packed) == str(pure)
    assert "starts with '.wh.'" in str(packed)


def permission_bits_enforced() -> contextlib.AbstractContextManager[None]:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that mode 000 stops root too."""
    return capabilities_dropped(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)


@pytest.mark.parametrize("unreadable", ["d", "d/f", "big"])
def test_unreadable_path(
    monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree, unreadable: str
) -> None:
    spec: TreeSpec = {
        "a": File(b"a"),
        "big": File(pattern(2 * MIB)),
        "d/f": File(b"f"),
        "z": File(b"z"),
    }
    tree = make_tree("tree", spec)
    os.chmod(tree / unreadable, 0)

    with permission_bits_enforced():
        packed = export_error(monkeypatch, tree, pure=False)
        pure = export_error(monkeypatch, tree, pure=True)

    assert str(packed) == str(pure)
    assert os.fsdecode(tree / unreadable) in str(packed)
    assert "Permission denied" in str(packed)


class RemoveAfter(Progress):
    """A progress display that removes a directory once `entries` entries are written."""

    def __init__(self, entries: int, directory: Path) -> None:
        super().__init__("export", stream=io.StringIO())
        self.after = entries
        self.directory = directory
        self.removed = False

    def update(self, entries: int, size: int) -> None:
        super().update(entries, size)
        if not self.removed and entries >= self.after:
            shutil.rmtree(self.directory)
            self.removed = True


# The walk runs on a worker thread, at most a few runs of about 1 MiB ahead of the
# writer. Each removal below waits behind a 16 MiB file, which the worker cannot finish
# before the removal.
LEAD_SIZE = 16 * MIB


@pytest.mark.parametrize("pure", [False, True])
def test_directory_removed_before_walk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pure: bool
) -> None:
    tree = tmp_path / "tree"
    write(tree / "a", bytes(LEAD_SIZE))
    write(tree / "b" / "f", b"f")
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    progress = RemoveAfter(1, tree / "b")

    with pytest.raises(LayerError) as excinfo:
        export_layer_to_tar(io.BytesIO(), tree, progress=progress)

    assert progress.removed
    # The packer fails listing b in tree; the pure path, reading b's entry.
    if pure:
        expected = f"cannot read '{tree}/b': No such file or directory"
    else:
        expected = f"cannot read directory '{tree}': No such file or directory: '{tree}/b'"
    assert str(excinfo.value) == expected


@pytest.mark.parametrize("pure", [False, True])
def test_directory_removed_during_walk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pure: bool
) -> None:
    """Remove d while d/sub/big is copied, with d/z still to come.

    The packer opens d again to go on after d/sub and names d. The pure path listed d
    before, so it fails on d/z instead.
    """
    tree = tmp_path / "tree"
    write(tree / "d" / "sub" / "big", bytes(LEAD_SIZE))
    write(tree / "d" / "z", b"z")
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    # The third entry is d/sub/big, whose file the packer has opened by then.
    progress = RemoveAfter(3, tree / "d")

    with pytest.raises(LayerError) as excinfo:
        export_layer_to_tar(io.BytesIO(), tree, progress=progress)

    assert progress.removed
    if pure:
        expected = f"cannot read '{tree}/d/z': No such file or directory"
    else:
        expected = f"cannot read directory '{tree}/d': No such file or directory"
    assert str(excinfo.value) == expected


@pytest.mark.parametrize("change", ["shrink", "grow"])
def test_file_changes_size_while_streamed(tmp_path: Path, change: str) -> None:
    """A file whose first data was passed on fails with the pure path's error."""
    size = 2 * LEAD_SIZE
    big = write(tmp_path / "tree" / "big", bytes(size))

    def change_size() -> None:
        if change == "shrink":
            os.truncate(big, LEAD_SIZE)
        else:
            with open(big, "ab") as handle:
                handle.write(b"more")

    items = packed_changes(SnapshotSource(tmp_path / "tree"), None, False)
    assert items is not None
    first = next(items)
    assert isinstance(first, PackedEntries)
    assert first.entries == 1
    change_size()
    with pytest.raises(LayerError) as packed:
        for _ in items:
            pass

    # The pure path: the entry is made, then the file changes before its data is copied.
    write(tmp_path / "tree" / "big", bytes(size))
    source = SnapshotSource(tmp_path / "tree")
    (entry,) = source.changes()
    change_size()
    with pytest.raises(LayerError) as pure:
        LayerTarWriter(io.BytesIO(), source.lookup).add(entry)

    assert str(packed.value) == str(pure.value)
    assert str(packed.value) == (
        f"{os.fsdecode(big)!r} changed size while it was being read (expected {size} "
        "bytes); export from a layer that is not in use"
    )


# Cancellation


def read_ahead_workers() -> list[str]:
    """Return the names of the running threads that walk ahead of an export."""
    names = [thread.name for thread in threading.enumerate()]
    return [name for name in names if name == "ocilayer-read-ahead"]


class CancelAfterFirst(Progress):
    """A progress display that sets `cancel` at its first update."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__("export", stream=io.StringIO())
        self.cancel = cancel
        self.calls = 0

    def update(self, entries: int, size: int) -> None:
        super().update(entries, size)
        self.calls += 1
        self.cancel.set()


def test_cancel_stops_packer_lane(monkeypatch: pytest.MonkeyPatch, make_tree: MakeTree) -> None:
    spec: TreeSpec = {f"f{number:04d}": File(pattern(1000)) for number in range(3000)}
    tree = make_tree("tree", spec)
    full, _ = export_bytes(tree, check_peers=False)
    pulled: list[Entry | PackedEntries] = []

    def counted(source: object, epoch: int | None, keep: bool) -> Iterator[Entry | PackedEntries]:
        items = packed_changes(source, epoch, keep)
        assert items is not None
        for item in items:
            pulled.append(item)
            yield item

    monkeypatch.setattr(export_module, "packed_changes", counted)
    baseline = open_descriptors()
    cancel = threading.Event()
    progress = CancelAfterFirst(cancel)
    sink = io.BytesIO()

    with pytest.raises(Cancelled) as excinfo:
        export_layer_to_tar(sink, tree, cancel=cancel, progress=progress)
    workers_while_raised = read_ahead_workers()
    descriptors_while_raised = open_descriptors() - baseline
    # Release the traceback, and with it the export's frames, before any assert.
    del excinfo
    workers_after_release = read_ahead_workers()

    # write_layer takes the next item before it checks `cancel`, so it took two.
    assert progress.calls == 1
    assert len(pulled) == 2
    first = pulled[0]
    assert isinstance(first, PackedEntries)
    # A run of 1 MiB or more skips the writer's buffer, so the sink contains the first run.
    assert len(first.data) >= MIB
    assert sink.getvalue() == first.data
    assert full.startswith(sink.getvalue())
    assert workers_after_release == []
    # The packer lane must stop when Cancelled is raised, not when the caller drops the
    # exception, because a caller may keep it: concurrent.futures stores it in the Future.
    assert workers_while_raised == []
    assert descriptors_while_raised == 0


# Sources the packer does not take


def test_packed_changes_none_for_other_sources(tmp_path: Path) -> None:
    lower = build_tree(tmp_path / "lower", {"a": File(b"a")})
    tree = build_tree(tmp_path / "tree", {"a": File(b"b"), "d/e": File(b"e")})

    assert packed_changes(SnapshotSource(tree, [lower]), None, False) is None
    assert packed_changes(SnapshotSource(tree, include=[b"d"]), None, False) is None
    assert packed_changes(OverlaySource(tree), None, False) is None
    assert packed_changes(object(), None, False) is None
    # A base snapshot is taken, and an include of the layer root counts as no include.
    assert packed_changes(SnapshotSource(tree), None, False) is not None
    assert packed_changes(SnapshotSource(tree, include=[b"/"]), None, False) is not None


def test_packed_changes_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "tree", {"a": File(b"a")})
    monkeypatch.setenv(PURE_PYTHON, "1")
    assert packed_changes(SnapshotSource(tree), None, False) is None
