"""Applying layers into overlayfs upper directories, checked through real overlay mounts.

Each layer goes into its own directory with the earlier ones as parents, the way
container runtimes stack layers. The directories are then mounted as overlayfs lower
layers. The merged view must equal the tree the layers were made from, or the same
layers applied to one root filesystem.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from apply_helpers import (
    apply,
    directory,
    file,
    get_xattr,
    hardlink,
    listing,
    mounted_overlay,
    same_inode,
    symlink,
    tar,
    whiteout,
)
from ocilayer import export_layer_to_tar
from trees import Device, Dir, Fifo, File, Hardlink, Node, Symlink, assert_trees_equal, build_tree

pytestmark = pytest.mark.usefixtures("as_root")

T1 = 1_500_000_000 * 10**9
Spec = Mapping[str, Node]
TRUSTED_OPAQUE = b"trusted.overlay.opaque"
USER_OPAQUE = b"user.overlay.opaque"
USER_WHITEOUT = b"user.overlay.whiteout"


def apply_stack(
    layers: Sequence[bytes], base: Path, name: str = "layer", **options: object
) -> list[Path]:
    """Apply each layer into its own directory, the earlier ones as its parents."""
    directories: list[Path] = []
    for index, layer in enumerate(layers):
        target = base / f"{name}{index}"
        apply(layer, target, *directories, target="overlay", **options)
        directories.append(target)
    return directories


def apply_rootfs(layers: Sequence[bytes], target: Path) -> Path:
    for layer in layers:
        apply(layer, target)
    return target


def export_stack(trees: Sequence[Path]) -> list[bytes]:
    """Export each tree as a layer against the tree before it."""
    layers = []
    for index, tree in enumerate(trees):
        buffer = io.BytesIO()
        export_layer_to_tar(buffer, tree, trees[index - 1 : index])
        layers.append(buffer.getvalue())
    return layers


def whiteout_device(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# Whiteouts and opaque markers in one upper directory


def test_whiteout_becomes_a_character_device(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    apply(tar(directory("etc/"), whiteout("etc/.wh.passwd"), file("etc/hosts", "h")), upper,
          target="overlay")  # fmt: skip
    assert listing(upper) == {"etc": "d 755", "etc/hosts": "f 644 'h'", "etc/passwd": "c 0:0 0"}
    assert get_xattr(upper / "etc", TRUSTED_OPAQUE) is None


def test_opaque_marker_sets_the_xattr(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    layer = tar(
        directory("d/"),
        directory("d/.config/"),
        file("d/.config/x", "1"),
        whiteout("d/.wh..wh..opq"),
        file("d/new", "n"),
    )
    apply(layer, upper, target="overlay")
    assert listing(upper) == {
        "d": "d 755",
        "d/.config": "d 755",
        "d/.config/x": "f 644 '1'",
        "d/new": "f 644 'n'",
    }
    assert get_xattr(upper / "d", TRUSTED_OPAQUE) == b"y"
    assert get_xattr(upper / "d/.config", TRUSTED_OPAQUE) is None


def test_directory_over_a_same_layer_whiteout_is_opaque(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    apply(tar(whiteout(".wh.dir"), file("dir/foo/bar", "b")), upper, target="overlay")
    assert listing(upper) == {"dir": "d 755", "dir/foo": "d 755", "dir/foo/bar": "f 644 'b'"}
    assert get_xattr(upper / "dir", TRUSTED_OPAQUE) == b"y"
    assert get_xattr(upper / "dir/foo", TRUSTED_OPAQUE) is None


def test_whiteout_after_same_layer_directory_makes_it_opaque(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    apply(
        tar(
            directory("x/"), file("x/a", "1"), file("f", "2"), whiteout(".wh.x"), whiteout(".wh.f")
        ),
        upper,
        target="overlay",
    )
    assert listing(upper) == {"f": "f 644 '2'", "x": "d 755", "x/a": "f 644 '1'"}
    assert get_xattr(upper / "x", TRUSTED_OPAQUE) == b"y"


def test_whiteouts_inside_an_opaque_directory_are_dropped(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    apply(
        tar(
            directory("d/"),
            whiteout("d/.wh.before"),
            directory("d/sub/"),
            whiteout("d/sub/.wh..wh..opq"),
            whiteout("d/.wh..wh..opq"),
            whiteout("d/.wh.after"),
            whiteout("d/sub/.wh.deep"),
        ),
        upper,
        target="overlay",
    )
    assert listing(upper) == {"d": "d 755", "d/sub": "d 755"}
    assert get_xattr(upper / "d", TRUSTED_OPAQUE) == b"y"
    assert get_xattr(upper / "d/sub", TRUSTED_OPAQUE) == b"y"


@pytest.mark.parametrize("rootless", [False, True])
def test_whiteout_below_layer_whiteout_ignored(tmp_path: Path, rootless: bool) -> None:
    """The form umoci once wrote: `.wh.test`, then `test/.wh.test` for a deleted child."""
    layers = apply_stack(
        [
            tar(directory("test/"), file("test/test"), directory("keep/"), file("keep/a", "a")),
            tar(
                whiteout(".wh.test"),
                whiteout("test/.wh.test"),
                whiteout("test/sub/.wh.x"),
                whiteout("test/.wh..wh..opq"),
                whiteout(".wh.keep"),
                whiteout("keep/.wh..wh..opq"),
            ),
        ],
        tmp_path,
        rootless=rootless,
    )
    if rootless:
        assert listing(layers[1]) == {"keep": "f 644 ''", "test": "f 644 ''"}
        assert get_xattr(layers[1] / "test", USER_WHITEOUT) == b"y"
        assert get_xattr(layers[1] / "keep", USER_WHITEOUT) == b"y"
    else:
        assert listing(layers[1]) == {"keep": "c 0:0 0", "test": "c 0:0 0"}
    with mounted_overlay(layers, tmp_path / "merged", userxattr=rootless) as merged:
        assert listing(merged) == {}


def test_whiteout_below_layer_file_ignored(tmp_path: Path) -> None:
    layers = apply_stack(
        [
            tar(directory("d/"), file("d/old", "o")),
            tar(file("d", "file"), whiteout("d/.wh.old"), whiteout("d/.wh..wh..opq")),
        ],
        tmp_path,
    )
    assert listing(layers[1]) == {"d": "f 644 'file'"}
    with mounted_overlay(layers, tmp_path / "merged") as merged:
        assert listing(merged) == {"d": "f 644 'file'"}


def test_whiteout_without_parent_entries_creates_them(tmp_path: Path) -> None:
    first = tmp_path / "first"
    apply(tar(whiteout("test/.wh.testfile")), first, target="overlay")
    assert listing(first, owners=True) == {"test": "d 755 0:0", "test/testfile": "c 0:0 0 0:0"}
    second = tmp_path / "second"
    apply(tar(whiteout("root/dirA/dirB/.wh.fileA"), directory("root/", 0o700)), second,
          target="overlay")  # fmt: skip
    assert listing(second) == {
        "root": "d 700",
        "root/dirA": "d 755",
        "root/dirA/dirB": "d 755",
        "root/dirA/dirB/fileA": "c 0:0 0",
    }


def test_existing_upper_content_counts_as_lower(tmp_path: Path) -> None:
    """Applying onto a non-empty upper directory: what it contains counts as lower content."""
    upper = tmp_path / "upper"
    apply(tar(directory("d/"), file("d/old", "o"), file("gone", "g"), file("f", "file")), upper,
          target="overlay")  # fmt: skip
    apply(tar(whiteout(".wh.gone"), whiteout("d/.wh..wh..opq"), directory("f/")), upper,
          target="overlay")  # fmt: skip
    assert listing(upper) == {"d": "d 755", "f": "d 755", "gone": "c 0:0 0"}
    assert get_xattr(upper / "d", TRUSTED_OPAQUE) == b"y"
    assert get_xattr(upper / "f", TRUSTED_OPAQUE) == b"y"


# What the parent layers hold


def test_implied_directories_copy_the_parent_layers_attributes(tmp_path: Path) -> None:
    spec: Spec = {
        "usr": Dir(0o750, uid=5, gid=6, mtime_ns=T1, xattrs={b"user.k": b"v"}),
        "usr/bin": Dir(0o711, mtime_ns=T1 + 1),
        "usr/bin/old": File(b"o"),
    }
    parent = build_tree(tmp_path / "parent", spec)
    upper = tmp_path / "upper"
    apply(tar(file("usr/bin/new", "n"), file("fresh/x", "x")), upper, parent, target="overlay")
    assert listing(upper, owners=True) == {
        "fresh": "d 755 0:0",
        "fresh/x": "f 644 'x' 0:0",
        "usr": "d 750 5:6",
        "usr/bin": "d 711 0:0",
        "usr/bin/new": "f 644 'n' 0:0",
    }
    assert os.lstat(upper / "usr").st_mtime_ns == T1
    assert os.lstat(upper / "usr/bin").st_mtime_ns == T1 + 1
    assert get_xattr(upper / "usr", b"user.k") == b"v"


def test_symlinks_of_parent_layers_are_followed_inside(tmp_path: Path) -> None:
    spec: Spec = {"lib": Symlink(b"usr/lib"), "usr/lib/old": File(b"o")}
    parent = build_tree(tmp_path / "parent", spec)
    upper = tmp_path / "upper"
    apply(tar(file("lib/new", "n")), upper, parent, target="overlay")
    assert listing(upper) == {"usr": "d 755", "usr/lib": "d 755", "usr/lib/new": "f 644 'n'"}


def test_directory_over_a_parent_whiteout_is_opaque(tmp_path: Path) -> None:
    layers = apply_stack(
        [
            tar(file("x/old", "o"), file("y/old", "o")),
            tar(whiteout(".wh.x")),
            tar(directory("x/"), directory("y/")),
        ],
        tmp_path,
    )
    assert get_xattr(layers[2] / "x", TRUSTED_OPAQUE) == b"y"
    assert get_xattr(layers[2] / "y", TRUSTED_OPAQUE) is None
    with mounted_overlay(layers, tmp_path / "merged") as merged:
        assert listing(merged) == {"x": "d 755", "y": "d 755", "y/old": "f 644 'o'"}


def test_hardlink_to_parent_file_copies_up(tmp_path: Path) -> None:
    parent = build_tree(
        tmp_path / "parent",
        {"bin/perlbug": File(b"perl", 0o755, uid=3, mtime_ns=T1, xattrs={b"user.a": b"1"})},
    )
    upper = tmp_path / "upper"
    apply(tar(hardlink("bin/perlthanks", "/bin/perlbug")), upper, parent, target="overlay")
    assert listing(upper, owners=True) == {
        "bin": "d 755 0:0",
        "bin/perlbug": "f 755 'perl' links=2 3:0",
        "bin/perlthanks": "f 755 'perl' links=2 3:0",
    }
    assert same_inode(upper / "bin/perlbug", upper / "bin/perlthanks")
    assert os.lstat(upper / "bin/perlbug").st_mtime_ns == T1
    assert get_xattr(upper / "bin/perlbug", b"user.a") == b"1"


def test_root_opaque_marker_whites_out_every_lower_name(tmp_path: Path) -> None:
    layers = apply_stack(
        [
            tar(file("a", "1"), directory("keep/"), file("keep/old", "o"), file("b", "2")),
            tar(
                whiteout(".wh..wh..opq"), directory("keep/"), file("keep/new", "n"), file("c", "3")
            ),
        ],
        tmp_path,
    )
    assert listing(layers[1]) == {
        "a": "c 0:0 0",
        "b": "c 0:0 0",
        "c": "f 644 '3'",
        "keep": "d 755",
        "keep/new": "f 644 'n'",
    }
    assert get_xattr(layers[1] / "keep", TRUSTED_OPAQUE) == b"y"
    with mounted_overlay(layers, tmp_path / "merged") as merged:
        assert listing(merged) == {"c": "f 644 '3'", "keep": "d 755", "keep/new": "f 644 'n'"}


# Rootless and without CAP_MKNOD


def test_rootless_uses_user_xattrs_and_xwhiteouts(tmp_path: Path) -> None:
    layers = apply_stack(
        [
            tar(directory("d/"), file("d/a", "1"), file("d/b", "2"), directory("o/"), file("o/x")),
            tar(directory("d/"), whiteout("d/.wh.a"), directory("o/"), whiteout("o/.wh..wh..opq")),
        ],
        tmp_path,
        rootless=True,
    )
    upper = layers[1]
    assert listing(upper) == {"d": "d 755", "d/a": "f 644 ''", "o": "d 755"}
    assert get_xattr(upper / "d/a", USER_WHITEOUT) == b"y"
    assert get_xattr(upper / "d", USER_OPAQUE) == b"x"
    assert get_xattr(upper / "o", USER_OPAQUE) == b"y"
    assert get_xattr(upper / "o", TRUSTED_OPAQUE) is None
    with mounted_overlay(layers, tmp_path / "merged", userxattr=True) as merged:
        assert listing(merged) == {"d": "d 755", "d/b": "f 644 '2'", "o": "d 755"}


def test_without_mknod_whiteouts_become_xwhiteouts(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tar(directory("d/"), whiteout("d/.wh.a"), whiteout("o/.wh..wh..opq")))
    upper = tmp_path / "upper"
    script = (
        "from ocilayer.apply import import_layer_from_tar\n"
        f"import_layer_from_tar(open({str(layer)!r}, 'rb'), {str(upper)!r}, target='overlay')\n"
    )
    result = subprocess.run(
        ["capsh", "--drop=cap_mknod", "--", "-c", f'exec {sys.executable} -c "$0"', script],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert listing(upper) == {"d": "d 755", "d/a": "f 644 ''", "o": "d 755"}
    assert get_xattr(upper / "d/a", USER_WHITEOUT) == b"y"
    assert get_xattr(upper / "o", USER_OPAQUE) == b"y"


# Layer stacks: the merged view equals the source trees


STACKS: dict[str, list[Spec]] = {
    "basic": [
        {
            "etc": Dir(0o755),
            "etc/hosts": File(b"127.0.0.1 localhost\n"),
            "etc/hosts.allow": Hardlink(b"etc/hosts"),
            "etc/passwd": File(b"root:x:0:0\n", 0o644),
            "usr/local/lib/libnothing.so": File(b"\0\0", 0o755),
            "usr/local/lib/libnothing.so.2": Symlink(b"libnothing.so"),
            "home/derek": Dir(0o700, uid=1000, gid=1000),
        },
        {
            "etc": Dir(0o755),
            "etc/hosts": File(b"127.0.0.1 localhost\n::1 localhost\n"),
            "etc/hosts.allow": Hardlink(b"etc/hosts"),
            "etc/passwd": File(b"root:x:0:0\n", 0o600),
            "usr/local/lib/libnothing.so": File(b"\0\0", 0o755),
            "home/derek": Dir(0o700, uid=1000, gid=1000),
            "home/derek/.bashrc": File(b"PS1='$ '\n", uid=1000, gid=1000),
            "root": Dir(0o700),
        },
    ],
    "type-changes": [
        {
            "was-dir/a/b": File(b"b"),
            "was-file": File(b"f"),
            "was-link": Symlink(b"was-dir"),
            "dir-to-link/x": File(b"x"),
            "keep": Dir(0o750),
        },
        {
            "was-dir": File(b"now a file"),
            "was-file/child": File(b"c"),
            "was-link/inside": File(b"i"),
            "dir-to-link": Symlink(b"/keep"),
            "keep": Dir(0o750),
        },
        {
            "was-dir": Dir(0o711),
            "was-dir/again": File(b"a"),
            "was-file": Symlink(b"gone"),
            "dir-to-link": Dir(0o755),
            "keep": Dir(0o750),
        },
    ],
    "deletions": [
        {
            "d1/f1": File(b"1"),
            "d2/f1": File(b"1"),
            "d2/f2": File(b"2"),
            "d3/sub/deep/x": File(b"x"),
            "d4/f": File(b"f"),
        },
        {
            "d2/f2": File(b"2", 0o777),
            "d3": Dir(),
            "d4/f": File(b"f"),
            "d4/g": File(b"g"),
        },
        {"d4/g": File(b"g")},
    ],
    "hardlinks": [
        {"f1": File(b"data\n"), "f2": Hardlink(b"f1"), "f3": Hardlink(b"f1"), "d/x": File(b"x")},
        {
            "f1": File(b"data\n"),
            "f2": Hardlink(b"f1"),
            "f3": Hardlink(b"f1"),
            "f4": Hardlink(b"f1"),
            "f5": Hardlink(b"f1"),
            "d/x": File(b"x"),
            "d/y": Hardlink(b"d/x"),
        },
    ],
    "special": [
        {
            "dev/null": Device("char", 1, 3, 0o666),
            "dev/sda": Device("block", 8, 0, 0o660),
            "run/fifo": Fifo(0o600),
            "usr/bin/ping": File(
                b"\x7fELF",
                0o4755,
                xattrs={
                    b"security.capability": bytes.fromhex(
                        "0000000200300000000000000000000000000000"
                    )
                },
            ),
            "srv": Dir(0o1777, xattrs={b"user.note": b"shared"}),
        },
        {
            "dev/null": Device("char", 1, 3, 0o666),
            "run/fifo": Fifo(0o640, uid=7),
            "usr/bin/ping": File(b"\x7fELF2", 0o755),
            "srv": Dir(0o1777, xattrs={b"user.note": b"changed"}),
            "srv/data": File(b"d", uid=4294967294, gid=1000240000),
        },
    ],
}


def build_stack(tmp_path: Path, specs: Sequence[Spec]) -> list[Path]:
    return [build_tree(tmp_path / f"tree{index}", spec) for index, spec in enumerate(specs)]


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_layer_stack_in_both_targets(tmp_path: Path, stack: str) -> None:
    trees = build_stack(tmp_path, STACKS[stack])
    layers = export_stack(trees)
    rootfs = apply_rootfs(layers, tmp_path / "rootfs")
    assert_trees_equal(trees[-1], rootfs)
    uppers = apply_stack(layers, tmp_path)
    with mounted_overlay(uppers, tmp_path / "merged") as merged:
        assert_trees_equal(trees[-1], merged)


HAND_MADE_STACKS: dict[str, list[bytes]] = {
    "opaque-marker-in-place-and-last": [
        tar(directory("d/"), file("d/old", "o"), directory("e/"), file("e/old", "o")),
        tar(
            directory("d/", mtime_ns=T1),
            directory("d/.config/"),
            file("d/.config/x", "1"),
            whiteout("d/.wh..wh..opq"),
            file("d/new", "n"),
            directory("e/"),
            file("e/new", "n"),
            whiteout("e/.wh..wh..opq"),
        ),
    ],
    "whiteouts-across-layers": [
        tar(
            file(".baz"),
            directory("bar/"),
            file("bar/bax"),
            directory("bar/bay/"),
            file("baz"),
            directory("foo/"),
            file("foo/.abc"),
            directory("foo/.bcd/"),
            file("foo/.bcd/a"),
            directory("foo/cde/"),
            file("foo/cde/def"),
            file("foo/cde/efg"),
            file("foo/fgh"),
            file("foobar"),
        ),
        tar(
            file(".bay"),
            whiteout(".wh.baz"),
            directory("foo/"),
            file("foo/.bce"),
            whiteout("foo/.wh..wh..opq"),
            directory("foo/cde/"),
            file("foo/cde/efg"),
        ),
        tar(
            file(".bay"),
            whiteout(".wh..baz"),
            whiteout(".wh.foobar"),
            directory("foo/"),
            file("foo/.abc"),
            whiteout("foo/.wh.cde"),
            directory("bar/"),
        ),
    ],
    "directory-replaced-by-symlink": [
        tar(directory("a/"), directory("b/"), file("b/keep", "k"), file("a/a", "a\n")),
        tar(symlink("a", "/b"), whiteout("a/.wh.a")),
    ],
    "missing-parents": [
        tar(directory("test/"), file("test/testfile", "12345"), file("root/dirA/dirB/fileA")),
        tar(whiteout("test/.wh.testfile"), whiteout(".wh.root")),
        tar(whiteout("root/dirA/dirB/.wh.fileA"), directory("root/"), file("root/new")),
    ],
    "whiteout-under-whiteout": [
        tar(directory("test/"), file("test/test"), file("other")),
        tar(whiteout(".wh.test"), whiteout("test/.wh.test"), whiteout("test/.wh..wh..opq")),
    ],
    "parent-symlinks": [
        tar(directory("usr/lib/"), file("usr/lib/old"), symlink("lib", "usr/lib")),
        tar(file("lib/new", "n"), whiteout("lib/.wh.old")),
    ],
    "hardlink-to-lower-file": [
        tar(file("usr/bin/perlbug", "perl", 0o755)),
        tar(hardlink("usr/bin/perlthanks", "/usr/bin/perlbug")),
    ],
    "opaque-then-recreate": [
        tar(directory("x/"), file("x/a"), directory("x/sub/"), file("x/sub/b")),
        tar(whiteout(".wh.x")),
        tar(directory("x/"), file("x/c", "c")),
        tar(directory("x/"), whiteout("x/.wh.c"), directory("x/sub/"), file("x/sub/d", "d")),
    ],
}


@pytest.mark.parametrize("stack", sorted(HAND_MADE_STACKS))
def test_hand_made_stack_merges_like_rootfs(tmp_path: Path, stack: str) -> None:
    layers = HAND_MADE_STACKS[stack]
    rootfs = apply_rootfs(layers, tmp_path / "rootfs")
    uppers = apply_stack(layers, tmp_path)
    with mounted_overlay(uppers, tmp_path / "merged") as merged:
        assert listing(merged) == listing(rootfs)
        assert_trees_equal(rootfs, merged, directory_mtimes=False)
    rootless = apply_stack(layers, tmp_path, "rootless", rootless=True)
    with mounted_overlay(rootless, tmp_path / "merged-rootless", userxattr=True) as merged:
        assert listing(merged) == listing(rootfs)


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        (
            "opaque-marker-in-place-and-last",
            {
                "d": "d 755",
                "d/.config": "d 755",
                "d/.config/x": "f 644 '1'",
                "d/new": "f 644 'n'",
                "e": "d 755",
                "e/new": "f 644 'n'",
            },
        ),
        (
            "whiteouts-across-layers",
            {
                ".bay": "f 644 ''",
                "bar": "d 755",
                "bar/bax": "f 644 ''",
                "bar/bay": "d 755",
                "foo": "d 755",
                "foo/.abc": "f 644 ''",
                "foo/.bce": "f 644 ''",
            },
        ),
        (
            "opaque-then-recreate",
            {"x": "d 755", "x/sub": "d 755", "x/sub/d": "f 644 'd'"},
        ),
        ("whiteout-under-whiteout", {"other": "f 644 ''"}),
    ],
)
def test_merged_view_of_hand_made_stack(
    tmp_path: Path, stack: str, expected: dict[str, str]
) -> None:
    uppers = apply_stack(HAND_MADE_STACKS[stack], tmp_path)
    with mounted_overlay(uppers, tmp_path / "merged") as merged:
        assert listing(merged) == expected


@pytest.mark.parametrize("pure", [False, True])
def test_layer_symlink_over_lower_symlink_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """After the layer puts its own symlink where a lower one was, paths follow the new one."""
    if pure:
        monkeypatch.setenv("OCILAYER_PURE_PYTHON", "1")
    lower = tmp_path / "lower"
    (lower / "d" / "t").mkdir(parents=True)
    (lower / "d" / "l").symlink_to("t")
    upper = tmp_path / "upper"
    layer = tar(file("d/l/a", "1"), directory("d/"), symlink("d/l", "/u"), file("d/l/b", "2"))
    apply(layer, upper, lower, target="overlay")
    assert listing(upper)["d/t/a"] == "f 644 '1'"
    assert listing(upper)["d/l"] == "l -> /u"
    assert listing(upper)["u/b"] == "f 644 '2'"
    assert "d/t/b" not in listing(upper)
