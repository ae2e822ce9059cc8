"""Apply against real tools and as a property: GNU tar, bsdtar, and export round trips.

Trees come from `treegen`, which puts every file type, hardlinks, user xattrs and
capabilities, long and non-UTF-8 names, odd modes, owners above the USTAR limit and
times before 1970 and after 2242 into them.
"""

from __future__ import annotations

import dataclasses
import io
import re
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apply_helpers import apply, mounted_overlay
from ocilayer import export_layer_to_tar
from peers import GNU_TAR_TIMESTAMP_WARNINGS, gnu_tar_extract
from treegen import TreeGenOptions, TreePair, generate_pair
from trees import Dir, File, Hardlink, Node, assert_trees_equal, build_tree, link_target

pytestmark = pytest.mark.usefixtures("as_root")

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def without_empty_xattrs(spec: dict[bytes, Node]) -> dict[bytes, Node]:
    """Drop empty xattr values, which a PAX record cannot carry (it would mean "unset")."""
    cleaned: dict[bytes, Node] = {}
    for path, node in spec.items():
        if isinstance(node, File | Dir) and any(not value for value in node.xattrs.values()):
            xattrs = {key: value for key, value in node.xattrs.items() if value}
            node = dataclasses.replace(node, xattrs=xattrs)
        cleaned[path] = node
    return cleaned


def only_file_hardlinks(spec: dict[bytes, Node]) -> dict[bytes, Node]:
    """Turn second names of non-regular files into copies.

    GNU tar 1.34 and bsdtar 3.6 archive a second name of a device node as a second
    device node, not as a hardlink, so such groups cannot survive their archives.
    """
    copied: dict[bytes, Node] = {}
    for path, node in spec.items():
        if isinstance(node, Hardlink):
            target = spec[link_target(spec, path)]
            if not isinstance(target, File):
                node = target
        copied[path] = node
    return copied


def random_tree(
    root: Path, seed: int, *, file_hardlinks_only: bool = False, **options: bool
) -> Path:
    pair = generate_pair(seed, TreeGenOptions(changes=0, **options))
    spec = without_empty_xattrs(pair.lower)
    if file_hardlinks_only:
        spec = only_file_hardlinks(spec)
    return build_tree(root, spec)


def export(tree: Path, *parents: Path, **options: object) -> bytes:
    buffer = io.BytesIO()
    export_layer_to_tar(buffer, tree, parents, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def gnu_tar_create(tree: Path) -> bytes:
    command = ["tar", "--create", "--file=-", "--format=pax", "--xattrs",
               "--xattrs-include=*", "--numeric-owner", f"--directory={tree}", "."]  # fmt: skip
    result = subprocess.run(command, capture_output=True, check=True, env={"LC_ALL": "C"})
    assert result.stderr == b""
    return result.stdout


# bsdtar stores a name it cannot convert to UTF-8 from the locale as raw bytes (PAX
# `hdrcharset=BINARY`) and warns about it. In the C locale that is every non-ASCII name.
_BSDTAR_CHARSET_WARNING = re.compile(rb": Can't translate (pathname|linkname) '[^']*' to UTF-8")


def bsdtar_create(tree: Path) -> bytes:
    command = ["bsdtar", "--create", "--file=-", "--numeric-owner", "-C", str(tree), "."]
    result = subprocess.run(command, capture_output=True, check=True, env={"LC_ALL": "C"})
    assert _BSDTAR_CHARSET_WARNING.sub(b"", result.stderr) == b""
    return result.stdout


# Archives written by GNU tar and bsdtar


@pytest.mark.parametrize("seed", range(5))
def test_gnu_tar_archive_applies_exactly(tmp_path: Path, seed: int) -> None:
    tree = random_tree(tmp_path / "tree", seed, file_hardlinks_only=True)
    apply(gnu_tar_create(tree), tmp_path / "applied")
    assert_trees_equal(tree, tmp_path / "applied", mtimes="exact")


@pytest.mark.parametrize("seed", range(5))
def test_bsdtar_archive_applies_exactly(tmp_path: Path, seed: int) -> None:
    # bsdtar 3.6 keeps nanoseconds only in entries that need a PAX header anyway. It also
    # writes a negative fractional time as its floor plus a positive fraction, which GNU
    # tar and Go (and so ocilayer) read as another time. So times are compared in whole
    # seconds, and none comes before 1970.
    tree = random_tree(tmp_path / "tree", seed, file_hardlinks_only=True, pre_epoch_mtimes=False)
    apply(bsdtar_create(tree), tmp_path / "applied")
    assert_trees_equal(tree, tmp_path / "applied", mtimes="seconds")


@pytest.mark.parametrize("seed", range(5))
def test_gnu_tar_and_ocilayer_extract_alike(tmp_path: Path, seed: int) -> None:
    """GNU tar extracting ocilayer's export equals ocilayer applying GNU tar's archive."""
    tree = random_tree(tmp_path / "tree", seed, file_hardlinks_only=True)
    by_gnu_tar = tmp_path / "by-gnu-tar"
    gnu_tar_extract(export(tree), by_gnu_tar, allowed_warnings=GNU_TAR_TIMESTAMP_WARNINGS)
    by_ocilayer = tmp_path / "by-ocilayer"
    apply(gnu_tar_create(tree), by_ocilayer)
    assert_trees_equal(by_gnu_tar, by_ocilayer, mtimes="seconds")
    assert_trees_equal(tree, by_gnu_tar, mtimes="seconds")


# Properties


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS)
def test_export_apply_export_round_trip(seed: int) -> None:
    """Export, apply to an empty directory and export again: the same bytes, the same tree."""
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        tree = random_tree(base / "tree", seed)
        first = export(tree, keep_nanoseconds=True)
        applied = base / "applied"
        result = apply(first, applied)
        second = export(applied, keep_nanoseconds=True)
        assert first == second, f"seed {seed}: the second export differs"
        assert_trees_equal(tree, applied, mtimes="exact")
        assert result.size == content_bytes(applied)


def content_bytes(root: Path) -> int:
    """Return the size of every regular file inode below `root`, each inode counted once."""
    sizes = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(sizes.values())


def changed_pair(root: Path, seed: int) -> tuple[TreePair, Path, Path]:
    pair = generate_pair(seed)
    pair.lower = without_empty_xattrs(pair.lower)
    pair.upper = without_empty_xattrs(pair.upper)
    return pair, build_tree(root / "lower", pair.lower), build_tree(root / "upper", pair.upper)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS)
def test_two_layer_stack_in_both_targets(seed: int) -> None:
    """A base layer and a diff, applied in order, rebuild the upper tree in both targets.

    Directory mtimes are not compared: a diff leaves out a directory whose only change
    is its mtime, as containerd's does.
    """
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        pair, lower, upper = changed_pair(base, seed)
        layers = [export(lower), export(upper, lower)]

        def hidden(path: bytes) -> bool:
            return any(path == item or path.startswith(item + b"/") for item in pair.hidden)

        rootfs = base / "rootfs"
        for layer in layers:
            apply(layer, rootfs)
        assert_trees_equal(upper, rootfs, exclude=hidden, directory_mtimes=False)

        uppers: list[Path] = []
        for index, layer in enumerate(layers):
            target = base / f"layer{index}"
            apply(layer, target, *uppers, target="overlay")
            uppers.append(target)
        with mounted_overlay(uppers, base / "merged") as merged:
            assert_trees_equal(upper, merged, exclude=hidden, directory_mtimes=False)
