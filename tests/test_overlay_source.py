"""Export from overlayfs upper directories, made by the kernel's overlayfs where possible."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from layer_helpers import export_bytes, read_tar, shorts, write
from ocilayer import LayerError
from ocilayer.export import open_source
from ocilayer.sources.overlay import OverlaySource


@contextlib.contextmanager
def mounted(tmp_path: Path, lowers: list[Path], options: str = "") -> Iterator[Path]:
    """Mount an overlay of `lowers` (lowest first) with a fresh upper; yield the merged dir."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for path in (upper, work, merged):
        path.mkdir()
    lowerdir = ":".join(str(p) for p in reversed(lowers))
    mount_options = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    if options:
        mount_options += "," + options
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", mount_options, str(merged)],
                   check=True)  # fmt: skip
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def overlay_and_snapshot(
    tmp_path: Path, lower: Path, change: object, options: str = ""
) -> tuple[bytes, bytes]:
    """Apply `change(merged)` through an overlay mount; export the upper and the merged view."""
    with mounted(tmp_path, [lower], options) as merged:
        change(merged)  # type: ignore[operator]
        snapshot, _ = export_bytes(merged, [lower])
    overlay, _ = export_bytes(tmp_path / "upper", [lower], source="overlay")
    return overlay, snapshot


def base_tree(root: Path) -> Path:
    write(root / "etc" / "hosts", b"127.0.0.1 localhost\n", mtime=1_600_000_000)
    write(root / "etc" / "motd", b"hello\n", mtime=1_600_000_000)
    write(root / "usr" / "bin" / "tool", b"#!/bin/sh\n", 0o755, mtime=1_600_000_000)
    write(root / "usr" / "share" / "doc" / "a", b"doc a", mtime=1_600_000_000)
    write(root / "usr" / "share" / "doc" / "b", b"doc b", mtime=1_600_000_000)
    write(root / "var" / "lib" / "state", b"0", mtime=1_600_000_000)
    os.symlink("hosts", root / "etc" / "hosts.link")
    return root


def test_overlay_export_equals_snapshot_export(tmp_path: Path) -> None:
    lower = base_tree(tmp_path / "lower")

    def change(merged: Path) -> None:
        (merged / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n::1 localhost\n")
        os.chmod(merged / "usr" / "bin" / "tool", 0o700)
        os.chown(merged / "var" / "lib" / "state", 1000, 1000)
        (merged / "etc" / "motd").unlink()
        shutil.rmtree(merged / "usr" / "share" / "doc")
        write(merged / "opt" / "app" / "run", b"new", 0o755)
        os.link(merged / "opt" / "app" / "run", merged / "opt" / "app" / "run2")
        os.symlink("/opt/app/run", merged / "usr" / "bin" / "app")
        os.setxattr(merged / "etc" / "hosts", "user.note", b"changed")
        (merged / "etc" / "hosts.link").unlink()
        os.symlink("motd", merged / "etc" / "hosts.link")

    overlay, snapshot = overlay_and_snapshot(tmp_path, lower, change)

    assert overlay == snapshot
    assert shorts(overlay) == [
        "d etc/",
        "f etc/hosts",
        "l etc/hosts.link -> motd",
        "w etc/.wh.motd",
        "d opt/",
        "d opt/app/",
        "f opt/app/run",
        "h opt/app/run2 -> opt/app/run",
        "d usr/",
        "d usr/bin/",
        "l usr/bin/app -> /opt/app/run",
        "f usr/bin/tool",
        "d usr/share/",
        "w usr/share/.wh.doc",
        "d var/",
        "d var/lib/",
        "f var/lib/state",
    ]
    hosts = read_tar(overlay)[1]
    assert hosts.pax == {"SCHILY.xattr.user.note": b"changed"}


def test_no_overlay_xattr_reaches_tar(tmp_path: Path) -> None:
    lower = base_tree(tmp_path / "lower")

    def change(merged: Path) -> None:
        shutil.rmtree(merged / "usr" / "share")
        (merged / "usr" / "share").mkdir()
        write(merged / "usr" / "share" / "new", b"n")
        (merged / "etc" / "hosts").write_bytes(b"x")

    overlay, _ = overlay_and_snapshot(tmp_path, lower, change)

    for item in read_tar(overlay):
        assert not any(b"overlay." in key.encode() for key in item.pax), item.name


def test_new_directory_marked_opaque_is_plain_directory(tmp_path: Path) -> None:
    lower = base_tree(tmp_path / "lower")

    def change(merged: Path) -> None:
        (merged / "newdir").mkdir(mode=0o700)
        os.chmod(merged / "newdir", 0o700)

    overlay, snapshot = overlay_and_snapshot(tmp_path, lower, change)

    assert overlay == snapshot
    (item,) = read_tar(overlay)
    assert item.short() == "d newdir/"
    assert item.mode == 0o700
    assert item.pax == {}


def test_recreated_directory_becomes_opaque_marker(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    write(lower / "newdir" / "old", b"old")

    def change(merged: Path) -> None:
        shutil.rmtree(merged / "newdir")
        (merged / "newdir").mkdir()

    overlay, snapshot = overlay_and_snapshot(tmp_path, lower, change)

    assert os.getxattr(tmp_path / "upper" / "newdir", "trusted.overlay.opaque") == b"y"
    assert shorts(overlay) == ["d newdir/", "w newdir/.wh..wh..opq"]
    # The merged view cannot show the opaque flag, so the snapshot names the lost child.
    assert shorts(snapshot) == ["d newdir/", "w newdir/.wh.old"]


def test_opaque_marker_precedes_children(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    write(lower / "d" / "old", b"old")
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    write(upper / "d" / ".config" / "x", b"1")
    write(upper / "d" / "new", b"2")

    data, _ = export_bytes(upper, [lower], source="overlay")

    assert shorts(data) == ["d d/", "w d/.wh..wh..opq", "d d/.config/", "f d/.config/x", "f d/new"]


@pytest.mark.parametrize("namespace", ["trusted", "user"])
def test_whiteout_encodings(tmp_path: Path, namespace: str) -> None:
    lower = tmp_path / "lower"
    for name in ("chr", "xattr", "absent-below"):
        write(lower / "dir" / name, b"x")
    write(lower / "opq" / "hidden", b"h")
    write(lower / "notopq" / "kept", b"k")
    upper = tmp_path / "upper"
    (upper / "dir").mkdir(parents=True)
    os.mknod(upper / "dir" / "chr", 0o600 | 0o020000, 0)
    write(upper / "dir" / "xattr", b"")
    os.setxattr(upper / "dir" / "xattr", f"{namespace}.overlay.whiteout", b"")
    os.mknod(upper / "dir" / "never-existed", 0o600 | 0o020000, 0)
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", f"{namespace}.overlay.opaque", b"y")
    (upper / "notopq").mkdir()
    os.setxattr(upper / "notopq", f"{namespace}.overlay.opaque", b"x")

    data, _ = export_bytes(upper, [lower], source="overlay")

    assert shorts(data) == [
        "d dir/",
        "w dir/.wh.chr",
        "w dir/.wh.xattr",
        "d opq/",
        "w opq/.wh..wh..opq",
    ]


def test_copied_up_hardlink_keeps_upper_names_only(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    write(lower / "f1", b"data\n")
    os.link(lower / "f1", lower / "f2")
    os.link(lower / "f1", lower / "f3")

    def change(merged: Path) -> None:
        os.link(merged / "f1", merged / "f4")
        os.link(merged / "f1", merged / "f5")

    overlay, _ = overlay_and_snapshot(tmp_path, lower, change)

    # The copy-up of f1 is unchanged against the lower f1, so it waits for the first
    # changed name of its group (f4) to carry the data, as in a snapshot diff.
    assert shorts(overlay) == ["f f4", "h f1 -> f4", "h f5 -> f4"]
    assert read_tar(overlay)[0].data == b"data\n"


def test_redirect_and_metacopy_read_through_parents(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    write(lower / "dir" / "sub" / "file", b"data", mtime=1_600_000_000)
    write(lower / "meta", b"big content", mtime=1_600_000_000)

    def change(merged: Path) -> None:
        os.rename(merged / "dir", merged / "renamed")
        os.chmod(merged / "meta", 0o600)

    overlay, snapshot = overlay_and_snapshot(tmp_path, lower, change, "redirect_dir=on,metacopy=on")

    upper = tmp_path / "upper"
    assert os.getxattr(upper / "renamed", "trusted.overlay.redirect") == b"dir"
    assert os.getxattr(upper / "meta", "trusted.overlay.metacopy") == b""
    assert overlay == snapshot
    assert shorts(overlay) == [
        "w .wh.dir",
        "f meta",
        "d renamed/",
        "d renamed/sub/",
        "f renamed/sub/file",
    ]
    assert read_tar(overlay)[1].data == b"big content"


def test_metacopy_without_parents_fails(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    write(upper / "meta", b"")
    os.truncate(upper / "meta", 11)
    os.setxattr(upper / "meta", "trusted.overlay.metacopy", b"")

    with pytest.raises(LayerError, match=r"upper/meta' is a metadata-only copy-up"):
        export_bytes(upper, [], source="overlay")


def test_auto_detects_upper_directory_only_with_evidence(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    write(plain / "f", b"x")
    upper = tmp_path / "upper"
    upper.mkdir()
    os.mknod(upper / "gone", 0o600 | 0o020000, 0)

    assert isinstance(open_source(upper, source="auto"), OverlaySource)
    assert not isinstance(open_source(plain, source="auto"), OverlaySource)


@pytest.mark.parametrize(
    ("name", "redirect"),
    [
        ("loot", b"/../outside"),
        ("loot", b"../outside"),
        ("loot", b"a/../../outside"),
        ("loot", b"/etc/./x"),
        ("loot", b"/"),
    ],
)
def test_redirect_outside_layers_rejected(tmp_path: Path, name: str, redirect: bytes) -> None:
    write(tmp_path / "outside" / "secret", b"host data")
    lower = tmp_path / "lower"
    write(lower / "etc" / "x", b"x")
    upper = tmp_path / "upper"
    (upper / name).mkdir(parents=True)
    os.setxattr(upper / name, "user.overlay.redirect", redirect)

    with pytest.raises(LayerError, match=r"upper/loot' carries overlay.redirect=.*not name a path"):
        export_bytes(upper, [lower], source="overlay")


def test_metacopy_redirect_outside_layers_rejected(tmp_path: Path) -> None:
    write(tmp_path / "secret", b"host data")
    lower = tmp_path / "lower"
    lower.mkdir()
    upper = tmp_path / "upper"
    write(upper / "innocent", b"")
    os.truncate(upper / "innocent", 9)
    os.setxattr(upper / "innocent", "trusted.overlay.metacopy", b"")
    os.setxattr(upper / "innocent", "trusted.overlay.redirect", b"/../secret")

    with pytest.raises(LayerError, match=r"upper/innocent' carries overlay.redirect"):
        export_bytes(upper, [lower], source="overlay")


def test_other_namespace_is_plain_xattrs(tmp_path: Path) -> None:
    """With the mount's trusted.* marks on the upper root, user.overlay.* steers nothing."""
    lower = tmp_path / "lower"
    write(lower / "d" / "old", b"old")
    upper = tmp_path / "upper"
    write(upper / "d" / "new", b"new")
    os.setxattr(upper, "trusted.overlay.impure", b"y")
    os.setxattr(upper / "d", "user.overlay.opaque", b"y")
    write(upper / "gone", b"")
    os.setxattr(upper / "gone", "user.overlay.whiteout", b"")

    data, _ = export_bytes(upper, [lower], source="overlay")

    assert shorts(data) == ["d d/", "f d/new", "f gone"]
