"""The change walker: continuity's double-walk cases, at the level of change kinds.

Each case builds a base tree, copies it with `cp -a` and changes the copy; the
expected changes are those continuity's `fs.Changes` reports for the same steps.
Every case runs twice: with file contents compared by `ocilayer._compare`, and in
Python.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from layer_helpers import copy_tree, write
from ocilayer import ChangeKind, export_changes
from ocilayer.entry import Entry, FileType
from ocilayer.native import PURE_PYTHON
from ocilayer.sources.snapshot import SnapshotSource, _files_equal
from ocilayer.sources.union import walk_key

ADD, MODIFY, DELETE = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
T = 1_700_000_000 * 10**9


@pytest.fixture(autouse=True, params=["comparer", "python"])
def compare_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each case with file contents compared on the C comparer's thread, and in Python."""
    if request.param == "python":
        monkeypatch.setenv(PURE_PYTHON, "1")
    else:
        monkeypatch.delenv(PURE_PYTHON, raising=False)


def changes(lower: Path, upper: Path) -> list[tuple[ChangeKind, str]]:
    return [(e.kind, "/" + e.path.decode()) for e in export_changes(upper, [lower])]


# Version 2 capability sets (cap_net_raw permitted, then cap_net_admin as well).
CAPABILITY_A = bytes.fromhex("0100000200200000000000000000000000000000")
CAPABILITY_B = bytes.fromhex("0100000200300000000000000000000000000000")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    return lower, upper


def test_simple_diff(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    write(lower / "etc/hosts", b"mydomain 10.0.0.1")
    write(lower / "etc/profile", b"PATH=/usr/bin")
    write(lower / "etc/unchanged", b"PATH=/usr/bin")
    write(lower / "etc/unexpected", b"#!/bin/sh")
    copy_tree(lower, upper)
    write(upper / "etc/hosts", b"mydomain 10.0.0.120")
    os.chmod(upper / "etc/profile", 0o666)
    (upper / "root").mkdir(mode=0o700)
    write(upper / "root/.bashrc", b"PATH=/usr/sbin:/usr/bin")
    (upper / "etc/unexpected").unlink()

    assert changes(lower, upper) == [
        (MODIFY, "/etc/hosts"),
        (MODIFY, "/etc/profile"),
        (DELETE, "/etc/unexpected"),
        (ADD, "/root"),
        (ADD, "/root/.bashrc"),
    ]


def test_empty_file_with_whole_second_time(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    empty = write(lower / "etc/empty", b"")
    os.utime(empty, ns=(T, T))
    copy_tree(lower, upper)
    assert changes(lower, upper) == []


def test_nested_deletion(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    (lower / "d0").mkdir()
    write(lower / "d1/d2/f1", b"mydomain 10.0.0.1")
    assert changes(lower, upper) == [(DELETE, "/d0"), (DELETE, "/d1")]


def test_directory_replaced_by_file(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    write(lower / "dir1/f1", b"#####")
    write(lower / "dir1/f2/f3", b"#!/bin/sh")
    copy_tree(lower, upper)
    write(upper / "dir1/f11", b"#New file here")
    shutil.rmtree(upper / "dir1/f2")
    write(upper / "dir1/f2", b"Now file", 0o666)

    assert changes(lower, upper) == [(ADD, "/dir1/f11"), (MODIFY, "/dir1/f2")]


def test_remove_directory_tree_next_to_dash(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    (lower / "dir1/dir2/dir3").mkdir(parents=True)
    write(lower / "dir1/f1", b"f1")
    write(lower / "dir1/dir2/f2", b"f2")
    write(lower / "dir1-before/f2", b"f2")
    copy_tree(lower, upper)
    shutil.rmtree(upper / "dir1")

    assert changes(lower, upper) == [(DELETE, "/dir1")]


def test_file_replaced_by_directory(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    write(lower / "dir1", b"a file, not a directory")
    write(upper / "dir1/dir2/f1", b"also a file")

    assert changes(lower, upper) == [
        (MODIFY, "/dir1"),
        (ADD, "/dir1/dir2"),
        (ADD, "/dir1/dir2/f1"),
    ]


def test_parent_directory_permission_unchanged(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    for name, mode in (("dir1", 0o700), ("dir2", 0o751), ("dir3", 0o777)):
        (lower / name).mkdir()
        os.chmod(lower / name, mode)
    copy_tree(lower, upper)
    write(upper / "dir1/d/f", b"irrelevant")
    os.chmod(upper / "dir1/d", 0o700)
    write(upper / "dir1/f", b"irrelevant")
    write(upper / "dir2/f", b"irrelevant")
    write(upper / "dir3/f", b"irrelevant")

    assert changes(lower, upper) == [
        (ADD, "/dir1/d"),
        (ADD, "/dir1/d/f"),
        (ADD, "/dir1/f"),
        (ADD, "/dir2/f"),
        (ADD, "/dir3/f"),
    ]


def test_update_with_same_time(pair: tuple[Path, Path]) -> None:
    lower, upper = pair
    t1, t2 = T + 5, T + 6
    cases = {
        # name: (lower content, lower mtime, upper content, upper mtime)
        "file-modified-time": (b"1", t1, b"2", t2),
        "file-no-change": (b"1", t1, b"1", t1),
        "file-same-time": (b"1", t1, b"2", t1),
        "file-truncated-time-1": (b"1", T, b"1", t1),
        "file-truncated-time-2": (b"1", T, b"2", T),
        "file-truncated-time-3": (b"1", t1, b"1", T),
    }
    for name, (old, old_time, new, new_time) in cases.items():
        os.utime(write(lower / name, old), ns=(old_time, old_time))
        os.utime(write(upper / name, new), ns=(new_time, new_time))

    assert changes(lower, upper) == [
        (MODIFY, "/file-modified-time"),
        (MODIFY, "/file-truncated-time-1"),
        (MODIFY, "/file-truncated-time-2"),
        (MODIFY, "/file-truncated-time-3"),
    ]


@pytest.mark.parametrize("mtime_ns", [0, 42])
def test_symlink_times_are_no_change(pair: tuple[Path, Path], mtime_ns: int) -> None:
    lower, upper = pair
    write(lower / "foo", b"foo")
    os.symlink("/foo", lower / "lnk0")
    os.utime(lower / "lnk0", ns=(424242 * 10**9 + 42, mtime_ns), follow_symlinks=False)
    copy_tree(lower, upper)

    assert changes(lower, upper) == []


def test_base_layer_is_all_additions(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "etc/hosts", b"h")
    write(tree / "a-b", b"x")
    (tree / "a").mkdir()
    entries = list(export_changes(tree))
    assert [(e.kind, e.path) for e in entries] == [
        (ADD, b"a"),
        (ADD, b"a-b"),
        (ADD, b"etc"),
        (ADD, b"etc/hosts"),
    ]


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        (b"dir1/1", b"dir1-1"),
        (b"dir1/dir2", b"dir1/dir2/"),
        (b"a/b", b"a-b"),
        (b"a-b", b"a.txt"),
        (b"a.txt", b"a0"),
        (b"a", b"a/b"),
        ("dir/é".encode(), "dir-é".encode()),
        (b"d\xff/x", b"d\xff0"),
        ("日本/a".encode(), "日本語".encode()),
    ],
)
def test_walk_order_puts_separator_lowest(smaller: bytes, larger: bytes) -> None:
    assert walk_key(smaller) < walk_key(larger)


def test_snapshot_entry_fields_match_lstat(tmp_path: Path) -> None:
    """The snapshot reader builds entries from a positional tuple; check every field."""
    root = tmp_path / "layer"
    root.mkdir()
    write(root / "f", b"data")
    os.chmod(root / "f", 0o2751)
    os.setxattr(root / "f", b"user.k", b"v")
    st = os.lstat(root / "f")
    (item,) = [change for change in SnapshotSource(root).changes() if change.path == b"f"]
    assert item == Entry(
        path=b"f",
        kind=ChangeKind.ADD,
        type=FileType.REGULAR,
        mode=0o2751,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=4,
        xattrs={b"user.k": b"v"},
        link_key=(st.st_dev, st.st_ino),
        nlink=1,
        source_path=os.fsencode(root / "f"),
        content=b"data",
    )


def test_content_compare_sizes_and_fifos(tmp_path: Path) -> None:
    """The content comparison behind zero-nanosecond mtimes, on files that changed since lstat."""
    big = bytes(range(256)) * 8192  # 2 MiB, more than one read
    for name, data in (("a", big), ("b", big), ("c", big[:-1] + b"x"), ("small", b"abc")):
        write(tmp_path / name, data)
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo2")
    path = {
        name: os.fsencode(tmp_path / name) for name in ("a", "b", "c", "small", "fifo", "fifo2")
    }
    assert _files_equal(path["a"], path["b"], len(big))
    assert not _files_equal(path["a"], path["c"], len(big))
    # Both files grew by the same bytes after the walk saw them smaller.
    assert not _files_equal(path["a"], path["b"], len(big) - 10)
    # FIFOs swapped in after the walk: no blocking, and never equal.
    assert not _files_equal(path["fifo"], path["fifo2"], 3)
    assert not _files_equal(path["small"], path["fifo"], 3)


def test_capability_alone_decides_a_change(pair: tuple[Path, Path]) -> None:
    """Only `security.capability` is compared among xattrs: added, changed or removed."""
    lower, upper = pair
    for name in ("added", "changed", "removed", "same", "user-only"):
        write(lower / name, b"#!/bin/sh")
    os.setxattr(lower / "changed", "security.capability", CAPABILITY_A)
    os.setxattr(lower / "removed", "security.capability", CAPABILITY_A)
    os.setxattr(lower / "same", "security.capability", CAPABILITY_A)
    copy_tree(lower, upper)
    os.setxattr(upper / "added", "security.capability", CAPABILITY_A)
    os.setxattr(upper / "changed", "security.capability", CAPABILITY_B)
    os.removexattr(upper / "removed", "security.capability")
    os.setxattr(upper / "user-only", "user.note", b"not compared")
    assert changes(lower, upper) == [
        (MODIFY, "/added"),
        (MODIFY, "/changed"),
        (MODIFY, "/removed"),
    ]
