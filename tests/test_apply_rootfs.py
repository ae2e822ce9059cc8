"""Applying layers to a root filesystem: types, metadata, replacement, whiteouts, streams."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from apply_helpers import (
    MTIME_NS,
    CancellingReader,
    apply,
    block_device,
    char_device,
    directory,
    entry,
    fifo,
    file,
    get_xattr,
    hardlink,
    listing,
    raw_pax_entry,
    same_inode,
    symlink,
    tar,
    whiteout,
    with_header_field,
)
from ocilayer.apply import ApplyError, DiffIdMismatchError, import_layer_from_tar
from ocilayer.apply.errors import ApplyInterrupted
from ocilayer.apply.paths import remove_tree
from ocilayer.compression import Compression
from ocilayer.errors import Cancelled, TarFormatError, UnsafePathError, show
from ocilayer.tarformat.encoder import END_OF_ARCHIVE

pytestmark = pytest.mark.usefixtures("as_root")

CAPABILITY = bytes.fromhex("0000000200300000000000000000000000000000")
T1 = 1_500_000_000 * 10**9 + 123_456_789


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(".wh..ocilayer-")]


# Types and metadata


def test_every_type_with_owner_mode_and_content(tmp_path: Path) -> None:
    data = tar(
        directory("etc/", 0o750, uid=1, gid=2),
        file("etc/hosts", "127.0.0.1 localhost\n", 0o640, uid=3, gid=4),
        hardlink("etc/hosts.allow", "etc/hosts"),
        symlink("etc/link", "../usr/lib", uid=5, gid=6),
        char_device("dev/null", 1, 3),
        block_device("dev/sda", 8, 0),
        fifo("run/initctl", 0o600),
        file("caf\u00e9/\udcff-name", "odd"),
    )
    result = apply(data, tmp_path / "root")
    assert listing(tmp_path / "root", owners=True) == {
        "caf\u00e9": "d 755 0:0",
        "caf\u00e9/\udcff-name": "f 644 'odd' 0:0",
        "dev": "d 755 0:0",
        "dev/null": "c 1:3 666 0:0",
        "dev/sda": "b 8:0 660 0:0",
        "etc": "d 750 1:2",
        "etc/hosts": "f 640 '127.0.0.1 localhost\\n' links=2 3:4",
        "etc/hosts.allow": "f 640 '127.0.0.1 localhost\\n' links=2 3:4",
        "etc/link": "l -> ../usr/lib 5:6",
        "run": "d 755 0:0",
        "run/initctl": "p 600 0:0",
    }
    assert result.size == 23
    assert result.diff_id == sha256(data)
    assert result.compression is Compression.NONE


def test_times_are_kept_to_the_nanosecond(tmp_path: Path) -> None:
    data = tar(
        directory("d/", mtime_ns=T1),
        file("d/f", "x", mtime_ns=T1 + 1),
        symlink("d/l", "f", mtime_ns=T1 + 2),
        entry("d/g", mtime_ns=-1_500_000_000, atime_ns=7 * 10**9),
    )
    root = tmp_path / "root"
    apply(data, root)
    assert os.lstat(root / "d").st_mtime_ns == T1
    assert os.lstat(root / "d/f").st_mtime_ns == T1 + 1
    assert os.lstat(root / "d/l").st_mtime_ns == T1 + 2
    assert os.lstat(root / "d/g").st_mtime_ns == -1_500_000_000
    assert os.lstat(root / "d/g").st_atime_ns == 7 * 10**9


def test_times_at_int64_limits_apply(tmp_path: Path) -> None:
    """The largest tar times are set as given, and the kernel stores what the filesystem can."""
    latest, earliest = ((1 << 63) - 1) * 10**9, -(1 << 63) * 10**9
    root = tmp_path / "root"
    apply(tar(file("late", mtime_ns=latest), directory("early/", mtime_ns=earliest)), root)
    reference = tmp_path / "reference"
    reference.touch()
    for name, mtime_ns in (("late", latest), ("early", earliest)):
        os.utime(reference, ns=(mtime_ns, mtime_ns))
        assert os.lstat(root / name).st_mtime_ns == os.lstat(reference).st_mtime_ns


def test_directory_times_survive_later_children(tmp_path: Path) -> None:
    data = tar(
        directory("a/", mtime_ns=T1),
        directory("a/b/", mtime_ns=T1 + 5),
        file("a/b/c", "1"),
        file("a/z", "2"),
        whiteout("a/.wh.gone"),
    )
    root = tmp_path / "root"
    apply(data, root)
    assert os.lstat(root / "a").st_mtime_ns == T1
    assert os.lstat(root / "a/b").st_mtime_ns == T1 + 5


def test_setuid_and_capability_survive_chown(tmp_path: Path) -> None:
    data = tar(
        file(
            "usr/bin/ping",
            b"\x7fELF",
            0o4755,
            uid=1000,
            gid=1000,
            xattrs={b"security.capability": CAPABILITY},
        ),
        directory("shared/", 0o2775, uid=1000, gid=50),
    )
    root = tmp_path / "root"
    apply(data, root)
    ping = root / "usr/bin/ping"
    assert stat.S_IMODE(os.lstat(ping).st_mode) == 0o4755
    assert (os.lstat(ping).st_uid, os.lstat(ping).st_gid) == (1000, 1000)
    assert get_xattr(ping, b"security.capability") == CAPABILITY
    getcap = subprocess.run(["getcap", str(ping)], capture_output=True, text=True, check=True)
    assert getcap.stdout.split()[-1] == "cap_net_admin,cap_net_raw=p"
    assert stat.S_IMODE(os.lstat(root / "shared").st_mode) == 0o2775


def test_new_directories_without_owner_permissions(tmp_path: Path) -> None:
    """A new directory's owner and mode are set through a descriptor opened for reading."""
    data = tar(
        directory("locked/", 0o000, uid=1000, gid=1000),
        file("locked/inside", b"x"),
        directory("search-only/", 0o111),
        directory("search-only/below/", 0o3750, uid=5, gid=6, xattrs={b"user.k": b"v"}),
    )
    root = tmp_path / "root"
    apply(data, root)
    assert listing(root, owners=True) == {
        "locked": "d 0 1000:1000",
        "locked/inside": "f 644 'x' 0:0",
        "search-only": "d 111 0:0",
        "search-only/below": "d 3750 5:6",
    }
    assert get_xattr(root / "search-only/below", b"user.k") == b"v"
    assert lstat_below(root, "locked").st_mtime_ns == MTIME_NS
    assert lstat_below(root, "search-only/below").st_mtime_ns == MTIME_NS


def test_ids_above_the_ustar_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("big-owner", uid=4294967294, gid=1000240000)), root)
    st = os.lstat(root / "big-owner")
    assert (st.st_uid, st.st_gid) == (4294967294, 1000240000)


def test_id_that_chown_cannot_take_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match=r"'nobody-left'.*uid 4294967295 is out of range"):
        apply(tar(file("nobody-left", uid=4294967295)), tmp_path / "root")


def test_xattrs_of_files_and_directories(tmp_path: Path) -> None:
    label = b"unconfined_u:object_r:default_t:s0\x00"
    data = tar(
        directory("d/", xattrs={b"user.dir": b"1"}),
        file("d/f", xattrs={b"user.key": b"value", b"security.selinux": label}),
    )
    root = tmp_path / "root"
    apply(data, root)
    assert get_xattr(root / "d", b"user.dir") == b"1"
    assert get_xattr(root / "d/f", b"user.key") == b"value"
    assert get_xattr(root / "d/f", b"security.selinux") == label


def test_symlink_user_xattr_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    with caplog.at_level(logging.WARNING, logger="ocilayer.apply"):
        apply(tar(symlink("l", "target", xattrs={b"user.key": b"v"})), root)
    assert os.readlink(root / "l") == "target"
    assert [record.getMessage() for record in caplog.records] == [
        "entry 'l': could not set xattr 'user.key' (Operation not permitted); skipped"
    ]


def test_repeated_warnings_counted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An xattr name with a terminal escape sequence, skipped on three symlinks.
    xattrs = {b"user.\x1b[31mred": b"v"}
    layer = tar(*(symlink(f"l{index}", "target", xattrs=xattrs) for index in range(3)))
    with caplog.at_level(logging.WARNING, logger="ocilayer.apply"):
        apply(layer, tmp_path / "root")
    assert [record.getMessage() for record in caplog.records] == [
        "entry 'l0': could not set xattr 'user.\\x1b[31mred' (Operation not permitted); skipped",
        "skipped xattr 'user.\\x1b[31mred': 3 entries in all",
    ]


def test_overlay_xattrs_in_a_layer_are_never_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xattrs = {b"trusted.overlay.opaque": b"y", b"user.overlay.redirect": b"/x", b"user.ok": b"1"}
    root = tmp_path / "root"
    with caplog.at_level(logging.WARNING, logger="ocilayer.apply"):
        apply(tar(directory("d/", xattrs=xattrs)), root)
    assert get_xattr(root / "d", b"trusted.overlay.opaque") is None
    assert get_xattr(root / "d", b"user.overlay.redirect") is None
    assert get_xattr(root / "d", b"user.ok") == b"1"
    assert len(caplog.records) == 2


def test_root_entry_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    apply(tar(directory("./", 0o777, uid=5), file("./a", "1")), root)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700
    assert os.lstat(root).st_uid == 0
    assert listing(root) == {"a": "f 644 '1'"}


@pytest.mark.parametrize("name", ["./", "", "/"])
def test_non_directory_root_is_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafePathError, match="names the root but is a symlink"):
        apply(tar(directory("etc/"), symlink(name, "/etc/")), tmp_path / "root")


def test_implied_directories_get_0755_whatever_the_umask(tmp_path: Path) -> None:
    data = tar(
        directory("/etc/subdir", 0o644),
        directory("/etc/subdir2/", 0o600),
        directory("/etc/subdir2/more", 0o400),
        directory("/other/noparent-1/1", 0o777),
        file("/other/noparent-2/2/f"),
    )
    root = tmp_path / "root"
    old = os.umask(0o027)
    try:
        apply(data, root)
    finally:
        os.umask(old)
    assert listing(root, owners=True) == {
        "etc": "d 755 0:0",
        "etc/subdir": "d 644 0:0",
        "etc/subdir2": "d 600 0:0",
        "etc/subdir2/more": "d 400 0:0",
        "other": "d 755 0:0",
        "other/noparent-1": "d 755 0:0",
        "other/noparent-1/1": "d 777 0:0",
        "other/noparent-2": "d 755 0:0",
        "other/noparent-2/2": "d 755 0:0",
        "other/noparent-2/2/f": "f 644 '' 0:0",
    }


# Replacing what lower layers left


def test_directory_replaces_file_and_file_replaces_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("was-file", "old"), directory("was-dir/"), file("was-dir/child", "c")), root)
    apply(tar(directory("was-file/", 0o700), file("was-dir", "new")), root)
    assert listing(root) == {"was-dir": "f 644 'new'", "was-file": "d 700"}


def test_directory_over_directory_keeps_children_and_takes_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(directory("d/", 0o755), file("d/old", "1")), root)
    apply(tar(directory("d/", 0o700, uid=9, mtime_ns=T1), file("d/new", "2")), root)
    assert listing(root, owners=True) == {
        "d": "d 700 9:0",
        "d/new": "f 644 '2' 0:0",
        "d/old": "f 644 '1' 0:0",
    }
    assert os.lstat(root / "d").st_mtime_ns == T1


def test_directory_over_directory_replaces_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    label = b"system_u:object_r:container_file_t:s0\x00"
    old = {b"user.old": b"1", b"user.both": b"old", b"security.selinux": label}
    apply(tar(directory("d/", xattrs=old)), root)
    apply(tar(directory("d/", xattrs={b"user.both": b"new", b"user.added": b"2"})), root)
    assert get_xattr(root / "d", b"user.old") is None
    assert get_xattr(root / "d", b"user.both") == b"new"
    assert get_xattr(root / "d", b"user.added") == b"2"
    assert get_xattr(root / "d", b"security.selinux") == label


def test_file_over_file_is_a_new_inode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("f", "old"), hardlink("g", "f")), root)
    before = os.lstat(root / "g").st_ino
    apply(tar(file("f", "new")), root)
    assert listing(root) == {"f": "f 644 'new'", "g": "f 644 'old'"}
    assert os.lstat(root / "g").st_ino == before


def test_symlink_replaces_directory_tree(tmp_path: Path) -> None:
    """A directory replaced by a symlink, and a stray whiteout under the old name."""
    root = tmp_path / "root"
    apply(tar(directory("a/"), directory("b/"), directory("c/"), file("a/a", "a\n")), root)
    apply(tar(symlink("a", "/b"), whiteout("a/.wh.a")), root)
    assert listing(root) == {"a": "l -> /b", "b": "d 755", "c": "d 755"}


def test_stray_whiteout_never_reaches_through_the_new_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(directory("a/"), file("a/a", "old"), directory("b/"), file("b/a", "keep")), root)
    apply(tar(symlink("a", "/b"), whiteout("a/.wh.a")), root)
    assert listing(root) == {"a": "l -> /b", "b": "d 755", "b/a": "f 644 'keep'"}


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[Path]:
    """A target directory whose contents are removed after the test, however deep.

    pytest's own cleanup calls shutil.rmtree, which recurses once per level and
    fails on trees deeper than about 1,000 directories.
    """
    root = tmp_path / "root"
    yield root
    if root.exists():
        parent_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        try:
            remove_tree(parent_fd, b"root")
        finally:
            os.close(parent_fd)


def make_deep_tree(base: Path, depth: int) -> Path:
    """Create `depth` nested directories `d` under `base`, with a file at the bottom."""
    path = base
    for _ in range(depth):
        path = path / "d"
        path.mkdir()
    (path / "leaf").write_text("x")
    return path


def test_whiteout_removes_a_deep_tree(deep_root: Path) -> None:
    """Deeper than Python's recursion limit of 1,000, which recursive removal hits."""
    root = deep_root
    apply(tar(file("keep", "k")), root)
    make_deep_tree(root, 1100)
    apply(tar(whiteout(".wh.d")), root)
    assert listing(root) == {"keep": "f 644 'k'"}


def test_tree_removal_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub/file").write_text("o")
    root = tmp_path / "root"
    apply(tar(directory("d/"), directory("d/e/"), file("d/e/f", "f")), root)
    (root / "d/e/to-dir").symlink_to(outside)
    (root / "d/to-sub").symlink_to("../../outside/sub")
    apply(tar(whiteout(".wh.d")), root)
    assert listing(root) == {}
    assert listing(outside) == {"sub": "d 755", "sub/file": "f 644 'o'"}


@pytest.mark.parametrize("replacing", [False, True], ids=["new-name", "existing-name"])
@pytest.mark.parametrize("call", ["open", "symlink", "link", "mknod"])
def test_interrupt_after_create_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, replacing: bool
) -> None:
    """A KeyboardInterrupt right after the create returns, before any cleanup code.

    A new name is created in place; an existing one is replaced through a temporary
    file. Either way the interrupted entry leaves nothing behind, and an existing file
    keeps its content.
    """
    root = tmp_path / "root"
    before = tar(file("target", "t"), file("old", "o")) if replacing else tar(file("target", "t"))
    apply(before, root)
    expected = listing(root)
    name = "old" if replacing else "new"
    layers = {
        "open": tar(file(name, "x")),
        "symlink": tar(symlink(name, "target")),
        "link": tar(hardlink(name, "target")),
        "mknod": tar(fifo(name)),
    }
    real_call = getattr(os, call)

    def interrupted(*args: object, **kwargs: object) -> object:
        result = real_call(*args, **kwargs)
        created = args[1] if call in ("symlink", "link") else args[0]
        if created == name.encode() or (
            isinstance(created, bytes) and created.startswith(b".wh..ocilayer-")
        ):
            if isinstance(result, int):
                os.close(result)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(os, call, interrupted)
    with pytest.raises(KeyboardInterrupt):
        apply(layers[call], root)
    monkeypatch.undo()
    assert temp_files(root) == []
    assert listing(root) == expected


# Long paths and deep trees


def lstat_below(root: Path, path: str) -> os.stat_result:
    """lstat `path` under `root` one component at a time, for paths beyond PATH_MAX."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        *directories, name = path.split("/")
        for component in directories:
            child = os.open(component, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def test_path_of_4095_bytes_applies(tmp_path: Path) -> None:
    longest = "/".join(["c" * 255] * 16)
    assert len(longest) == 4095
    apply(tar(file(longest, "deep")), tmp_path / "root")
    assert lstat_below(tmp_path / "root", longest).st_size == 4


PATH_MAX_RULE = "Linux paths are at most 4095 bytes (PATH_MAX is 4096 with the final NUL)"


def test_paths_of_path_max_are_rejected(tmp_path: Path) -> None:
    name = "/".join(["c" * 255] * 16) + "x"
    with pytest.raises(ApplyError) as raised:
        apply(tar(file(name)), tmp_path / "root")
    assert str(raised.value) == (
        f"entry '{'c' * 200}'... (4096 bytes) (offset 0): the entry's path is 4096 bytes "
        f"long after cleaning; {PATH_MAX_RULE}"
    )
    target = "/".join(["c" * 255] * 20)
    with pytest.raises(ApplyError) as raised:
        apply(tar(file("target"), hardlink("link", target)), tmp_path / "root")
    assert str(raised.value) == (
        "entry 'link' (offset 512): the entry's hardlink target is 5119 bytes long after "
        f"cleaning; {PATH_MAX_RULE}"
    )
    assert listing(tmp_path / "root") == {"target": "f 644 ''"}


def test_megabyte_path_is_rejected_in_short(deep_root: Path) -> None:
    """A 1 MiB PAX path (4,000 components of 255 bytes) once used 3.4 GB to apply."""
    name = "/".join(["c" * 255] * 4000)
    layer = tar(raw_pax_entry("x", {b"path": name.encode()}))
    tracemalloc.start()
    try:
        with pytest.raises(ApplyError) as raised:
            apply(layer, deep_root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    shown = "c" * 200
    assert str(raised.value) == (
        f"entry '{shown}'... (1023999 bytes) (offset 0): the entry's path is 1023999 bytes "
        "long after cleaning; Linux paths are at most 4095 bytes (PATH_MAX is 4096 with "
        "the final NUL)"
    )
    assert peak < 16 << 20, f"peak {peak} bytes"
    assert not deep_root.exists()


@pytest.mark.parametrize(
    ("name", "resolved", "real_length"),
    [("l/" + "f" * 255, "l/" + "f" * 255, 4351), ("l/d/f", "l/d", 4097)],
    ids=["file", "parent"],
)
def test_symlinks_cannot_lengthen_a_path_past_path_max(
    tmp_path: Path, name: str, resolved: str, real_length: int
) -> None:
    longest = "/".join(["c" * 255] * 16)
    prefix = tar(directory(longest + "/"), symlink("l", longest), end=b"")
    with pytest.raises(ApplyError) as raised:
        apply(prefix + tar(file(name, "x")), tmp_path / "root")
    assert str(raised.value) == (
        f"entry {show(name.encode())} (offset {len(prefix)}): "
        f"{show(resolved.encode())} leads through symlinks to a path of {real_length} bytes "
        "or more; Linux paths are at most 4095 bytes"
    )
    assert lstat_below(tmp_path / "root", longest).st_nlink == 2


def test_deep_unique_chains_use_little_memory(deep_root: Path) -> None:
    """Each chain's 1,000 ancestors were once stored as keys of up to 2 KB each."""
    chain = "/".join(["a"] * 1000)
    layer = tar(*(file(f"x{index}/{chain}/f") for index in range(10)))
    tracemalloc.start()
    try:
        apply(layer, deep_root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"peak {peak} bytes"
    assert lstat_below(deep_root, f"x9/{chain}/f").st_size == 0


def test_deep_tree_opens_each_directory_few_times(
    deep_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting directory times reopened every directory from the root: quadratic."""
    depth = 1000
    layer = tar(*(directory("d/" * level) for level in range(1, depth + 1)))
    opened = 0
    real_open = os.open

    def counting_open(*args: object, **kwargs: object) -> int:
        nonlocal opened
        opened += 1
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    apply(layer, deep_root)
    monkeypatch.undo()
    # A few opens per level (metadata, the walk to its children, the times at the
    # end), not one per level above it.
    assert opened < 6 * depth, f"{opened} opens for {depth} levels"
    assert lstat_below(deep_root, "d/" * (depth - 1) + "d").st_mtime_ns == MTIME_NS


# Hardlinks


def test_hardlink_to_symlink_links_the_symlink(tmp_path: Path) -> None:
    data = tar(
        directory("tmp/", 0o1777),
        file("tmp/zzz"),
        symlink("tmp/xxx", "/tmp/zzz"),
        hardlink("tmp/yyy", "tmp/xxx"),
    )
    root = tmp_path / "root"
    apply(data, root)
    assert listing(root) == {
        "tmp": "d 1777",
        "tmp/xxx": "l -> /tmp/zzz links=2",
        "tmp/yyy": "l -> /tmp/zzz links=2",
        "tmp/zzz": "f 644 ''",
    }
    assert same_inode(root / "tmp/xxx", root / "tmp/yyy")


def test_hardlink_to_a_lower_layer_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("usr/bin/perlbug", "perl")), root)
    apply(tar(hardlink("usr/bin/perlthanks", "/usr/bin/perlbug")), root)
    assert same_inode(root / "usr/bin/perlthanks", root / "usr/bin/perlbug")


def test_hardlink_group_grows_across_layers(tmp_path: Path) -> None:
    """Adding names to an old hardlink group: the new layer names every member."""
    root = tmp_path / "root"
    apply(tar(file("f1", "data\n"), hardlink("f2", "f1"), hardlink("f3", "f1")), root)
    apply(
        tar(
            file("f1", "data\n"),
            hardlink("f2", "f1"),
            hardlink("f3", "f1"),
            hardlink("f4", "f1"),
            hardlink("f5", "f1"),
        ),
        root,
    )
    inodes = {os.lstat(root / f"f{index}").st_ino for index in range(1, 6)}
    assert len(inodes) == 1
    assert os.lstat(root / "f1").st_nlink == 5


def test_hardlink_sets_no_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("f", "x", 0o600, uid=7), hardlink("g", "f", mode=0o777, uid=9)), root)
    assert listing(root, owners=True) == {
        "f": "f 600 'x' links=2 7:0",
        "g": "f 600 'x' links=2 7:0",
    }


def test_hardlink_to_a_missing_file_names_both(tmp_path: Path) -> None:
    with pytest.raises(ApplyError) as raised:
        apply(tar(file("a", "1"), hardlink("b", "missing")), tmp_path / "root")
    message = str(raised.value)
    assert message.startswith("entry 'b' (offset 1024): hardlink 'b' names 'missing'")
    assert raised.value.entry == b"b"
    assert raised.value.offset == 1024


def test_hardlink_to_a_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match="names the directory 'd'"):
        apply(tar(directory("d/"), hardlink("l", "d")), tmp_path / "root")


# Whiteouts and opaque markers


def test_whiteouts_across_four_layers(tmp_path: Path) -> None:
    """Plain and opaque whiteouts over a stack of layers, checked after each layer."""
    root = tmp_path / "root"
    apply(
        tar(
            file(".baz"), directory("bar/"), file("bar/bax"), directory("bar/bay/"), file("baz"),
            directory("foo/"), file("foo/.abc"), directory("foo/.bcd/"), file("foo/.bcd/a"),
            directory("foo/cde/"), file("foo/cde/def"), file("foo/cde/efg"), file("foo/fgh"),
            file("foobar"),
        ),
        root,
    )  # fmt: skip
    apply(
        tar(
            file(".bay"), whiteout(".wh.baz"), directory("foo/"), file("foo/.bce"),
            whiteout("foo/.wh..wh..opq"), directory("foo/cde/"), file("foo/cde/efg"),
        ),
        root,
    )  # fmt: skip
    assert sorted(listing(root)) == [
        ".bay", ".baz", "bar", "bar/bax", "bar/bay", "foo", "foo/.bce", "foo/cde",
        "foo/cde/efg", "foobar",
    ]  # fmt: skip
    apply(
        tar(
            file(".bay"), whiteout(".wh..baz"), whiteout(".wh.foobar"), directory("foo/"),
            file("foo/.abc"), whiteout("foo/.wh.cde"), directory("bar/"),
        ),
        root,
    )  # fmt: skip
    assert sorted(listing(root)) == [
        ".bay", "bar", "bar/bax", "bar/bay", "foo", "foo/.abc", "foo/.bce",
    ]  # fmt: skip
    apply(tar(file(".abc"), whiteout(".wh..wh..opq"), file("foobar")), root)
    assert sorted(listing(root)) == [".abc", "foobar"]


def test_whiteout_of_missing_path_or_parent_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(directory("test/"), file("test/test")), root)
    apply(tar(whiteout(".wh.test"), whiteout("test/.wh.test"), whiteout("x/y/.wh.z")), root)
    assert listing(root) == {}


def test_whiteout_spares_same_layer_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("fileA", "lowerA"), file("fileB", "lowerB"), file("fileC", "lowerC")), root)
    apply(
        tar(
            whiteout(".wh.fileB"),
            file("fileA", "upperA"),
            file("fileB", "upperB"),
            whiteout(".wh.fileA"),
            whiteout(".wh.fileC"),
        ),
        root,
    )
    assert listing(root) == {"fileA": "f 644 'upperA'", "fileB": "f 644 'upperB'"}


def test_directory_whiteout_spares_layer_children(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(directory("d/"), file("d/old", "1")), root)
    apply(tar(file("d/new", "2"), whiteout(".wh.d")), root)
    assert listing(root) == {"d": "d 755", "d/new": "f 644 '2'", "d/old": "f 644 '1'"}


@pytest.mark.parametrize("marker_last", [False, True], ids=["marker-in-place", "marker-last"])
def test_opaque_marker_after_same_layer_entries(tmp_path: Path, marker_last: bool) -> None:
    root = tmp_path / "root"
    apply(tar(directory("d/"), file("d/old", "o")), root)
    entries = [
        directory("d/"),
        directory("d/.config/", mtime_ns=T1),
        file("d/.config/x", "1"),
        whiteout("d/.wh..wh..opq"),
        file("d/new", "n"),
    ]
    if marker_last:
        entries.append(entries.pop(3))
    apply(tar(*entries), root)
    assert listing(root) == {
        "d": "d 755",
        "d/.config": "d 755",
        "d/.config/x": "f 644 '1'",
        "d/new": "f 644 'n'",
    }
    assert os.lstat(root / "d/.config").st_mtime_ns == T1


@pytest.mark.parametrize("marker_last", [False, True], ids=["marker-first", "marker-last"])
def test_opaque_marker_keeps_implied_ancestors(tmp_path: Path, marker_last: bool) -> None:
    root = tmp_path / "root"
    apply(tar(directory("a/"), directory("a/b/"), directory("a/b/c/"), file("a/b/c/bar")), root)
    entries = [
        directory("a/"),
        whiteout("a/.wh..wh..opq"),
        file("a/b/c/foo", "f"),
        file("a/x/y/z", "z"),
    ]
    if marker_last:
        entries.append(entries.pop(1))
    apply(tar(*entries), root)
    assert listing(root) == {
        "a": "d 755",
        "a/b": "d 755",
        "a/b/c": "d 755",
        "a/b/c/foo": "f 644 'f'",
        "a/x": "d 755",
        "a/x/y": "d 755",
        "a/x/y/z": "f 644 'z'",
    }


def test_nested_opaque_markers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("a/1"), file("a/b/2"), file("a/b/c/3"), file("a/b/c/d/4")), root)
    apply(
        tar(
            whiteout("a/b/c/.wh..wh..opq"),
            file("a/b/c/new"),
            whiteout("a/.wh..wh..opq"),
            file("a/b/kept"),
        ),
        root,
    )
    assert listing(root) == {
        "a": "d 755",
        "a/b": "d 755",
        "a/b/c": "d 755",
        "a/b/c/new": "f 644 ''",
        "a/b/kept": "f 644 ''",
    }


def test_opaque_marker_without_directory_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("lower/keep-not")), root)
    apply(tar(whiteout("lower/.wh..wh..opq"), whiteout("fresh/sub/.wh..wh..opq")), root)
    assert listing(root) == {"fresh": "d 755", "fresh/sub": "d 755", "lower": "d 755"}


def test_opaque_marker_over_lower_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("d", "was a file")), root)
    apply(tar(whiteout("d/.wh..wh..opq"), file("d/x")), root)
    assert listing(root) == {"d": "d 755", "d/x": "f 644 ''"}


# Duplicates


def test_duplicate_file_is_rejected(tmp_path: Path) -> None:
    data = tar(file("etc/motd", "one"), file("etc/motd", "two"))
    with pytest.raises(TarFormatError) as raised:
        apply(data, tmp_path / "root")
    assert str(raised.value) == (
        "entry 'etc/motd' (offset 1024): duplicate path 'etc/motd': an earlier entry of "
        "this layer already created it, and a layer may hold each path only once"
    )


def test_duplicate_through_a_symlink_is_rejected(tmp_path: Path) -> None:
    data = tar(directory("etc/"), symlink("localetc", "etc"), file("etc/a"), file("localetc/a"))
    with pytest.raises(TarFormatError, match="duplicate path 'etc/a'"):
        apply(data, tmp_path / "root")


def test_directory_then_file_at_one_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TarFormatError, match="duplicate path 'x'"):
        apply(tar(directory("x/"), file("x")), tmp_path / "root")


def test_file_where_the_layer_put_children_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TarFormatError, match="earlier entries of this layer are inside"):
        apply(tar(file("x/y"), file("x")), tmp_path / "root")
    with pytest.raises(TarFormatError, match="later entry of this layer is inside it"):
        apply(tar(file("p"), file("p/q")), tmp_path / "other")


def test_repeated_directory_takes_the_later_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(directory("d/", 0o755), file("d/f"), directory("d/", 0o700, mtime_ns=T1)), root)
    assert listing(root) == {"d": "d 700", "d/f": "f 644 ''"}
    assert os.lstat(root / "d").st_mtime_ns == T1


# Devices without CAP_MKNOD


SPECIAL_FILES = tar(
    directory("dev/"),
    fifo("dev/initctl", 0o600),
    char_device("dev/null", 1, 3, 0o666),
    file("etc/keep", "1"),
)


def test_special_files_as_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(SPECIAL_FILES, root)
    assert listing(root) == {
        "dev": "d 755",
        "dev/initctl": "p 600",
        "dev/null": "c 1:3 666",
        "etc": "d 755",
        "etc/keep": "f 644 '1'",
    }


def run_without_mknod(
    layer: Path, target: Path, **options: object
) -> subprocess.CompletedProcess[str]:
    """Apply a layer in a child process whose capabilities lack CAP_MKNOD."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from ocilayer.apply import import_layer_from_tar\n"
        f"import_layer_from_tar(open({str(layer)!r}, 'rb'), {str(target)!r}, **{options!r})\n"
    )
    command = f"exec {sys.executable} -c {_quote(script)}"
    return subprocess.run(
        ["capsh", "--drop=cap_mknod", "--", "-c", command], capture_output=True, text=True
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_device_without_mknod_is_a_clear_error(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(SPECIAL_FILES)
    result = run_without_mknod(layer, tmp_path / "root")
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        "ocilayer.apply.errors.ApplyError: entry 'dev/null' (offset 1024): cannot create "
        "device node 'dev/null' (1:3): creating device nodes needs CAP_MKNOD; apply as root, "
        "or pass skip_devices=True to skip device nodes with a warning"
    )
    assert temp_files(tmp_path / "root") == []


def test_device_without_mknod_is_skipped_on_request(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(SPECIAL_FILES)
    result = run_without_mknod(layer, tmp_path / "root", skip_devices=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "skipped device node 'dev/null' (1:3): creating device nodes needs CAP_MKNOD\n"
    )
    assert listing(tmp_path / "root") == {
        "dev": "d 755",
        "dev/initctl": "p 600",
        "etc": "d 755",
        "etc/keep": "f 644 '1'",
    }


def test_skipped_devices_counted_at_end(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(tar(char_device("null", 1, 3), char_device("zero", 1, 5)))
    result = run_without_mknod(layer, tmp_path / "root", skip_devices=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "skipped device node 'null' (1:3): creating device nodes needs CAP_MKNOD\n"
        "skipped device node: 2 entries in all\n"
    )


def run_in_user_namespace(
    layer: bytes, target: Path, **options: object
) -> subprocess.CompletedProcess[str]:
    """Apply a layer read from stdin inside a new user namespace that maps only root."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from ocilayer.apply import import_layer_from_tar\n"
        f"import_layer_from_tar(sys.stdin.buffer, {str(target)!r}, **{options!r})\n"
    )
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", script],
        input=layer.decode("latin-1"),
        encoding="latin-1",
        capture_output=True,
    )


def test_special_files_in_a_user_namespace(tmp_path: Path) -> None:
    result = run_in_user_namespace(SPECIAL_FILES, tmp_path / "root", skip_devices=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "skipped device node 'dev/null' (1:3): creating device nodes needs CAP_MKNOD\n"
    )
    assert listing(tmp_path / "root") == {
        "dev": "d 755",
        "dev/initctl": "p 600",
        "etc": "d 755",
        "etc/keep": "f 644 '1'",
    }


def test_unmapped_owner_names_the_id(tmp_path: Path) -> None:
    layer = tar(file("big-owner", uid=4294967294, gid=1000240000))
    result = run_in_user_namespace(layer, tmp_path / "root")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ocilayer.apply.errors.ApplyError: entry 'big-owner' (offset 0): cannot give "
        "'big-owner' the owner 4294967294:1000240000: the id is not mapped in this user "
        "namespace; map it, or pass rootless=True to apply no file owners"
    )
    assert temp_files(tmp_path / "root") == []


def test_device_numbers_out_of_range_are_rejected(tmp_path: Path) -> None:
    data = tar(entry("dev/big", b"3", pax={b"SCHILY.devmajor": b"4294967296"}))
    with pytest.raises(TarFormatError, match="device major number 4294967296 is out of range"):
        apply(data, tmp_path / "root")


# Rootless


def run_as_nobody(
    layer: bytes, target: Path, **options: object
) -> subprocess.CompletedProcess[str]:
    """Apply a layer read from stdin as the unprivileged user 65534."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from ocilayer.apply import import_layer_from_tar\n"
        f"import_layer_from_tar(sys.stdin.buffer, {str(target)!r}, **{options!r})\n"
    )
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", script],
        input=layer.decode("latin-1"),
        encoding="latin-1",
        capture_output=True,
    )  # fmt: skip


@pytest.fixture
def nobody_target() -> Iterator[Path]:
    """An empty directory owned by user 65534, in a parent that user can enter."""
    parent = Path(tempfile.mkdtemp(prefix="ocilayer-rootless-"))
    parent.chmod(0o755)
    target = parent / "root"
    target.mkdir()
    os.chown(target, 65534, 65534)
    try:
        yield target
    finally:
        for path in target.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(parent)


ROOTLESS_LAYER = tar(
    directory("ro/", 0o555, uid=0),
    file("ro/f", "x", 0o4755, uid=0, xattrs={b"trusted.t": b"1", b"user.u": b"2"}),
    directory("ro/sub/", 0o500),
    file("ro/sub/g", "y", 0o400),
)


def test_rootless_apply_keeps_the_users_ownership(nobody_target: Path) -> None:
    target = nobody_target
    result = run_as_nobody(ROOTLESS_LAYER, target, rootless=True)
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr
        == "entry 'ro/f': could not set xattr 'trusted.t' (Operation not permitted); skipped\n"
    )
    assert listing(target, owners=True) == {
        "ro": "d 555 65534:65534",
        "ro/f": "f 4755 'x' 65534:65534",
        "ro/sub": "d 500 65534:65534",
        "ro/sub/g": "f 400 'y' 65534:65534",
    }
    assert get_xattr(target / "ro/f", b"user.u") == b"2"


def test_unprivileged_apply_without_rootless_fails_with_a_hint(nobody_target: Path) -> None:
    result = run_as_nobody(ROOTLESS_LAYER, nobody_target)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ocilayer.apply.errors.ApplyError: entry 'ro/' (offset 0): Operation not permitted; "
        "apply as root, or pass rootless=True to apply no file owners and skip the xattrs that "
        "need privileges"
    )


def test_rootless_directory_without_search_permission(nobody_target: Path) -> None:
    """Final modes are set children first, so 0600 on `d` cannot block `d/sub`."""
    layer = tar(
        directory("d/", 0o600, mtime_ns=T1),
        directory("d/sub/", 0o700, mtime_ns=T1 + 1),
        file("d/sub/f", "x"),
    )
    result = run_as_nobody(layer, nobody_target, rootless=True)
    assert result.returncode == 0, result.stderr
    assert listing(nobody_target) == {"d": "d 600", "d/sub": "d 700", "d/sub/f": "f 644 'x'"}
    assert os.lstat(nobody_target / "d").st_mtime_ns == T1
    assert os.lstat(nobody_target / "d/sub").st_mtime_ns == T1 + 1


def test_rootless_second_layer_into_read_only_directories(nobody_target: Path) -> None:
    """Layer 1 leaves 0555 and 0500 directories that layer 2 must still write into."""
    first = run_as_nobody(ROOTLESS_LAYER, nobody_target, rootless=True)
    assert first.returncode == 0, first.stderr
    second = tar(file("ro/new", "n"), file("ro/sub/g", "z", 0o400), whiteout("ro/.wh.f"))
    result = run_as_nobody(second, nobody_target, rootless=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert listing(nobody_target) == {
        "ro": "d 555",
        "ro/new": "f 644 'n'",
        "ro/sub": "d 500",
        "ro/sub/g": "f 400 'z'",
    }
    third = tar(directory("ro/", 0o750), file("ro/sub/h", "h"))
    result = run_as_nobody(third, nobody_target, rootless=True)
    assert result.returncode == 0, result.stderr
    assert listing(nobody_target) == {
        "ro": "d 750",
        "ro/new": "f 644 'n'",
        "ro/sub": "d 500",
        "ro/sub/g": "f 400 'z'",
        "ro/sub/h": "f 644 'h'",
    }


def test_rootless_whiteout_removes_read_only_tree(nobody_target: Path) -> None:
    first = run_as_nobody(ROOTLESS_LAYER, nobody_target, rootless=True)
    assert first.returncode == 0, first.stderr
    (nobody_target / "keep").mkdir()
    os.chown(nobody_target / "keep", 65534, 65534)
    result = run_as_nobody(tar(whiteout(".wh.ro")), nobody_target, rootless=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert listing(nobody_target) == {"keep": "d 755"}


# Streams, digests and compression


def hello_layer() -> bytes:
    return tar(file("hello", "hello"))


def zstd_with_skippable_frame(data: bytes) -> bytes:
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"skip"
    return skippable + zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("encode", "compression"),
    [
        (lambda data: data, Compression.NONE),
        (lambda data: gzip.compress(data, mtime=0), Compression.GZIP),
        (lambda data: zstandard.ZstdCompressor().compress(data), Compression.ZSTD),
        (zstd_with_skippable_frame, Compression.ZSTD),
    ],
    ids=["plain", "gzip", "zstd", "zstd-skippable"],
)
def test_codec_is_detected_from_magic_bytes(
    tmp_path: Path, encode: object, compression: Compression
) -> None:
    assert callable(encode)
    layer = hello_layer()
    result = apply(encode(layer), tmp_path / "root")
    assert listing(tmp_path / "root") == {"hello": "f 644 'hello'"}
    assert result.compression is compression
    assert result.diff_id == sha256(layer)
    assert result.size == 5


@pytest.mark.parametrize("size", [0, 1024, 10240])
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_empty_layers_change_nothing(tmp_path: Path, size: int, gzipped: bool) -> None:
    root = tmp_path / "root"
    apply(tar(file("existing", "1")), root)
    blob = gzip.compress(bytes(size), mtime=0) if gzipped else bytes(size)
    result = apply(blob, root)
    assert listing(root) == {"existing": "f 644 '1'"}
    assert result.diff_id == sha256(bytes(size))
    assert result.size == 0


def test_diff_id_covers_bytes_after_the_end_marker(tmp_path: Path) -> None:
    data = hello_layer() + b"trailing junk"
    result = apply(data, tmp_path / "root")
    assert result.diff_id == sha256(data)


def test_expected_diff_id_is_checked(tmp_path: Path) -> None:
    data = hello_layer()
    assert apply(data, tmp_path / "a", expected_diff_id=sha256(data)).diff_id == sha256(data)
    with pytest.raises(DiffIdMismatchError) as raised:
        apply(data, tmp_path / "b", expected_diff_id=sha256(b"other"))
    assert raised.value.actual == sha256(data)
    assert str(raised.value).startswith(f"wrong diff_id: expected {sha256(b'other')}, ")


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_apply_without_digest_same_result(tmp_path: Path, gzipped: bool) -> None:
    data = tar(file("dir/a", "1"), file("dir/b", "22")) + b"trailing junk"
    blob = gzip.compress(data, mtime=0) if gzipped else data
    hashed = apply(blob, tmp_path / "hashed")
    unhashed = apply(blob, tmp_path / "unhashed", digest=False)
    assert unhashed.diff_id is None
    assert hashed.diff_id == sha256(data)
    codec = Compression.GZIP if gzipped else Compression.NONE
    assert (unhashed.size, unhashed.compression) == (hashed.size, hashed.compression) == (3, codec)
    assert listing(tmp_path / "unhashed") == listing(tmp_path / "hashed")


def test_expected_diff_id_needs_the_digest(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected_diff_id needs digest=True"):
        apply(hello_layer(), tmp_path / "root", expected_diff_id=sha256(b""), digest=False)
    assert not (tmp_path / "root").exists()


def test_corrupt_gzip_is_an_error(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(hello_layer(), mtime=0))
    blob[20] ^= 0xFF
    with pytest.raises(Exception, match="gzip stream is corrupt"):
        apply(bytes(blob), tmp_path / "root")


class ZeroStream:
    """A stream of `head`, then `zeros` zero bytes, then `tail`, made up as it is read."""

    def __init__(self, head: bytes, zeros: int, tail: bytes) -> None:
        self._head, self._zeros_left, self._tail = head, zeros, tail

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = 1 << 20
        if self._head:
            chunk, self._head = self._head[:size], self._head[size:]
            return chunk
        if self._zeros_left:
            count = min(size, self._zeros_left, 1 << 20)
            self._zeros_left -= count
            return bytes(count)
        chunk, self._tail = self._tail[:size], self._tail[size:]
        return chunk


@pytest.mark.slow
def test_eight_gib_file_applies_as_a_hole(tmp_path: Path) -> None:
    from ocilayer.tarformat.encoder import TarHeader, encode_header

    size = 8 << 30
    head = encode_header(TarHeader(name=b"big", size=size, mode=0o644, mtime_ns=MTIME_NS))
    tail = tar(file("after", "end"))
    root = tmp_path / "root"
    result = import_layer_from_tar(ZeroStream(head, size, tail), root)  # type: ignore[arg-type]
    st = os.lstat(root / "big")
    assert st.st_size == size
    assert st.st_blocks < 1024
    assert (root / "after").read_bytes() == b"end"
    assert result.size == size + 3


@pytest.mark.parametrize(
    "content",
    [
        b"head" + bytes(3 << 20) + b"tail",
        b"head" + bytes(3 << 20),
        bytes(5000),
        bytes(1 << 20),
        bytes((1 << 20) + 5000),
        bytes(5000) + b"x",
        bytes((1 << 20) + 5000) + b"x",
    ],
    ids=[
        "hole-inside",
        "hole-at-end",
        "small-zeros",
        "one-chunk-of-zeros",
        "zeros-past-a-chunk",
        "zeros-then-a-byte",
        "zero-chunk-then-zeros-and-a-byte",
    ],
)
@pytest.mark.parametrize("readinto", [True, False], ids=["readinto", "read-only-stream"])
def test_zero_runs_keep_the_content(tmp_path: Path, content: bytes, readinto: bool) -> None:
    """Chunks of zeros become holes; the bytes read back are the entry's, whole or short."""
    root = tmp_path / "root"
    data = tar(file("f", content), file("g", "after"))
    stream = io.BytesIO(data) if readinto else _ReadOnly(data)
    result = import_layer_from_tar(stream, root)  # type: ignore[arg-type]
    assert (root / "f").read_bytes() == content
    assert (root / "g").read_bytes() == b"after"
    assert result.size == len(content) + 5
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


class _ReadOnly:
    """A stream with read() only, as some decompressors and wrappers are."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def test_truncated_stream_keeps_the_old_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("etc/motd", "good")), root)
    data = tar(file("etc/motd", b"x" * 5000))
    with pytest.raises(TarFormatError, match="entry 'etc/motd' is missing"):
        apply(data[:2000], root)
    assert (root / "etc/motd").read_bytes() == b"good"
    assert temp_files(root) == []


def test_truncated_stream_error_names_the_offset(tmp_path: Path) -> None:
    with pytest.raises(TarFormatError, match="ends at offset 1024 after the last entry"):
        apply(tar(file("a", "1"), end=b""), tmp_path / "root")


# Cancellation


def test_cancel_before_the_first_entry(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="before its first entry; the new target was removed"):
        apply(hello_layer(), tmp_path / "root", cancel=cancel)
    # The apply created the target and nothing in it, so it removed it again.
    assert not (tmp_path / "root").exists()


def test_made_directory_swapped_for_symlink_not_followed(tmp_path: Path) -> None:
    """A layer that replaces a made parent with a symlink cannot steer the clean-up outside."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    data = tar(symlink("new", str(victim)), file("big", b"x" * 100_000))
    # The target is `work` itself, reached through the new directories new and new/sub.
    with pytest.raises(TarFormatError):
        apply(data[:5000], Path(f"{work}/new/sub/../.."))
    assert (victim / "sub").is_dir()
    assert os.readlink(work / "new") == str(victim)


def test_failed_apply_removes_each_empty_made_dir(tmp_path: Path) -> None:
    """`x/../y` makes x and y: y contains the applied file and stays, the empty x goes."""
    data = tar(file("a", "1"), file("big", b"x" * 100_000))
    with pytest.raises(TarFormatError):
        apply(data[:5000], Path(f"{tmp_path}/x/../y"))
    assert sorted(os.listdir(tmp_path)) == ["y"]
    assert listing(tmp_path / "y") == {"a": "f 644 '1'"}


def test_cancel_into_dotdot_target_keeps_message(tmp_path: Path) -> None:
    """With target `new/..`, removing new does not remove the target, so it is partly applied."""
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="was cancelled; the target is partly applied"):
        apply(hello_layer(), Path(f"{tmp_path}/new/.."), cancel=cancel)
    assert os.listdir(tmp_path) == []


def test_interrupt_while_making_target_removes_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt that lands as the target's mkdir returns leaves no new directory."""
    real_mkdir = os.mkdir
    created_names: list[str] = []

    def interrupted_mkdir(path: str, *args: object, **kwargs: object) -> None:
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
        created_names.append(path)
        if len(created_names) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "mkdir", interrupted_mkdir)
    with pytest.raises(ApplyInterrupted) as raised:
        apply(hello_layer(), tmp_path / "n1" / "n2" / "n3")
    monkeypatch.undo()
    assert created_names == ["n1", "n2", "n3"]  # each by name in its parent's descriptor
    assert raised.value.target_removed
    assert os.listdir(tmp_path) == []


def test_reused_inode_of_made_dir_not_removed(tmp_path: Path) -> None:
    """A directory the layer makes after deleting a made one may reuse its inode number."""
    work = tmp_path / "work"
    work.mkdir()
    layer = tar(symlink("new", "other"), directory("other/"), directory("other/sub/"))
    with pytest.raises(TarFormatError):
        apply(layer[:-1024] + b"x" * 512, Path(f"{work}/new/sub/../.."))
    assert (work / "other" / "sub").is_dir()
    assert os.readlink(work / "new") == "other"


def test_target_through_symlink_and_dotdot(tmp_path: Path) -> None:
    """`link/../new` is `far/new` for the kernel: that is the directory made and removed."""
    (tmp_path / "far" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to("far/deep")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "precious").write_bytes(b"p")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="the new target was removed"):
        apply(hello_layer(), Path(f"{tmp_path}/link/../new"), cancel=cancel)
    assert os.listdir(tmp_path / "far") == ["deep"]
    assert (tmp_path / "new" / "precious").read_bytes() == b"p"


@pytest.mark.parametrize("name", ["p/q/..", "r/s/.", "e//f/./"])
def test_target_ending_in_dots_is_removed(tmp_path: Path, name: str) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="the new target was removed"):
        apply(hello_layer(), Path(f"{tmp_path}/{name}"), cancel=cancel)
    assert os.listdir(tmp_path) == []


def test_rejected_stream_keeps_an_existing_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(TarFormatError, match="shorter than one tar header"):
        apply(b"hello\n", root)
    assert listing(root) == {}


def test_cancel_during_a_file_keeps_the_old_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("first", "1"), file("big", "old")), root)
    data = tar(file("first", "2"), file("big", b"n" * (8 << 20)), file("last", "3"))
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        import_layer_from_tar(
            io.BufferedReader(CancellingReader(data, 4 << 20, cancel)), root, cancel=cancel
        )
    assert listing(root) == {"big": "f 644 'old'", "first": "f 644 '2'"}
    assert temp_files(root) == []


# Reading the result back through tar


def test_entries_through_an_absolute_name_land_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(tar(file("/abs/file", "a"), hardlink("/abs/link", "/abs/file")), root)
    assert listing(root) == {
        "abs": "d 755",
        "abs/file": "f 644 'a' links=2",
        "abs/link": "f 644 'a' links=2",
    }


def test_end_marker_alone_is_enough(tmp_path: Path) -> None:
    result = apply(END_OF_ARCHIVE, tmp_path / "root")
    assert (
        result.diff_id == "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    )


@pytest.mark.parametrize(
    "layer",
    [
        tar(symlink("old", "")),
        tar(symlink("old", "x" * 4096)),
        tar(
            with_header_field(
                char_device("old", 1, 3), "devmajor", b"\x80" + bytes(3) + b"\x02" + bytes(3)
            )
        ),
    ],
    ids=["empty-symlink-target", "symlink-target-too-long", "device-major-out-of-range"],
)
def test_failed_create_keeps_existing_file(tmp_path: Path, layer: bytes) -> None:
    """A create that fails before the name is looked up must not remove what is there."""
    root = tmp_path / "root"
    apply(tar(file("old", "kept")), root)
    with pytest.raises(ApplyError):
        apply(layer, root)
    assert listing(root) == {"old": "f 644 'kept'"}
    assert temp_files(root) == []
