"""Merging parent layers as overlayfs does: whiteouts, opaque directories, shadowing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layer_helpers import write
from ocilayer.errors import LayerError
from ocilayer.sources.union import walk_tree, walk_union


def merged(*layers: Path) -> list[str]:
    return [node.path.decode() for node in walk_union([os.fsencode(p) for p in layers])]


def whiteout_device(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, 0)


def test_upper_layer_wins_and_directories_merge(tmp_path: Path) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    write(low / "a" / "x", b"low x")
    write(low / "a" / "y", b"low y")
    write(high / "a" / "x", b"high x")
    write(high / "a" / "z", b"high z")

    nodes = list(walk_union([os.fsencode(low), os.fsencode(high)]))

    assert [n.path for n in nodes] == [b"a", b"a/x", b"a/y", b"a/z"]
    assert nodes[1].full == os.fsencode(high / "a" / "x")
    assert nodes[2].full == os.fsencode(low / "a" / "y")


def test_file_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    low, mid, high = tmp_path / "low", tmp_path / "mid", tmp_path / "high"
    write(low / "a" / "x", b"")
    write(low / "a" / "y", b"")
    write(mid / "a" / ".wh.x", b"")
    write(mid / "a" / ".wh.y", b"")
    # A layer's own entry stays visible next to its whiteout of the same name.
    write(mid / "a" / "y", b"mid y")
    write(high / "a" / "x", b"back again")

    assert merged(low, mid, high) == ["a", "a/x", "a/y"]
    assert merged(low, mid) == ["a", "a/y"]


@pytest.mark.parametrize("namespace", ["trusted", "user"])
def test_device_and_xattr_whiteouts(tmp_path: Path, namespace: str) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    for name in ("dev", "xattr", "kept"):
        write(low / name / "f", b"")
    whiteout_device(high / "dev")
    write(high / "xattr", b"")
    os.setxattr(high / "xattr", f"{namespace}.overlay.whiteout", b"")
    # A non-empty file is never a whiteout, whatever xattr it carries.
    write(high / "kept" / "f", b"data")
    os.setxattr(high / "kept" / "f", f"{namespace}.overlay.whiteout", b"")

    assert merged(low, high) == ["kept", "kept/f"]


@pytest.mark.parametrize("marker", ["file", "trusted", "user", "not-opaque"])
def test_opaque_directories(tmp_path: Path, marker: str) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    write(low / "d" / "old", b"")
    write(high / "d" / "new", b"")
    if marker == "file":
        write(high / "d" / ".wh..wh..opq", b"")
    elif marker == "not-opaque":
        os.setxattr(high / "d", "trusted.overlay.opaque", b"x")
    else:
        os.setxattr(high / "d", f"{marker}.overlay.opaque", b"y")

    expected = ["d", "d/new"] if marker != "not-opaque" else ["d", "d/new", "d/old"]
    assert merged(low, high) == expected


def test_non_directory_shadows_lower_directory(tmp_path: Path) -> None:
    low, mid, high = tmp_path / "low", tmp_path / "mid", tmp_path / "high"
    write(low / "c" / "under", b"")
    write(mid / "c", b"a file now")
    (high / "c").mkdir(parents=True)
    write(high / "c" / "top", b"")

    assert merged(low, mid) == ["c"]
    assert merged(low, mid, high) == ["c", "c/top"]


def test_missing_middle_layer_is_transparent(tmp_path: Path) -> None:
    low, mid, high = tmp_path / "low", tmp_path / "mid", tmp_path / "high"
    write(low / "a" / "b" / "deep", b"")
    write(mid / "other", b"")
    write(high / "a" / "b" / "top", b"")

    assert merged(low, mid, high) == ["a", "a/b", "a/b/deep", "a/b/top", "other"]


def test_aufs_metadata_never_listed(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    write(layer / ".wh..wh.plnk" / "1234.5", b"")
    write(layer / ".wh..wh.aufs", b"")
    write(layer / "f", b"")

    assert merged(layer) == ["f"]


def test_snapshot_diffed_against_layers_with_whiteouts(tmp_path: Path) -> None:
    from layer_helpers import export_bytes, shorts

    base, change, snapshot = tmp_path / "base", tmp_path / "change", tmp_path / "snap"
    write(base / "etc" / "a", b"a", mtime=1_600_000_000)
    write(base / "etc" / "b", b"b", mtime=1_600_000_000)
    write(change / "etc" / ".wh.a", b"")
    os.utime(change / "etc", (1_600_000_000, 1_600_000_000))
    write(snapshot / "etc" / "b", b"b", mtime=1_600_000_000)
    write(snapshot / "etc" / "a", b"new a", mtime=1_600_000_000)

    data, _ = export_bytes(snapshot, [base, change], check_peers=False)

    # etc/a is gone in the merged parents, so the snapshot adds it back.
    assert shorts(data) == ["d etc/", "f etc/a"]


def test_walk_tree_stops_at_swapped_directory(tmp_path: Path) -> None:
    """A directory swapped for a symlink after its lstat is not followed out of the tree."""
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x").write_bytes(b"in")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"outside")
    walk = walk_tree(os.fsencode(tree))
    first = next(walk)
    assert first.path == b"a"
    (tree / "a").rename(tmp_path / "moved")
    (tree / "a").symlink_to(outside)
    with pytest.raises(LayerError, match="cannot read directory") as raised:
        next(walk)
    assert repr(os.fsdecode(tree / "a")) in str(raised.value)


def test_walk_tree_stops_at_replaced_directory(tmp_path: Path) -> None:
    """A directory replaced by another directory after its lstat raises LayerError."""
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    walk = walk_tree(os.fsencode(tree))
    assert next(walk).path == b"a"
    (tree / "a").rename(tmp_path / "moved")
    (tree / "a").mkdir()
    with pytest.raises(LayerError, match="replaced while it was being read"):
        next(walk)
