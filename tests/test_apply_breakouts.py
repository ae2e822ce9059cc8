"""Layers crafted to write, link or chmod outside the target: all must stay inside.

Each test builds `victim/` next to the target `root/` and checks afterwards that
nothing in it changed. Two kinds of input get two results, as the apply module
documents: a name or hardlink target whose `..` climbs above the root is rejected
with UnsafePathError, and a symlink that points outside is followed inside the root
(clamped), like a chroot would.

The table follows the cases of containerd's `pkg/archive` breakout test and moby's
`go-archive` untar tests, written here in this project's terms. Where containerd
expects a same-layer whiteout or a duplicate path to act, the case is split into a
lower layer and the layer under test. This applier follows the image spec: whiteouts
affect lower layers only, and a path may appear once.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from apply_helpers import (
    apply,
    directory,
    file,
    hardlink,
    listing,
    same_inode,
    symlink,
    tar,
    whiteout,
)
from ocilayer.errors import OcilayerError, UnsafePathError
from ocilayer.tarformat.encoder import TarHeader, encode_header

pytestmark = pytest.mark.usefixtures("as_root")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the target with files a breakout would change."""
    path = tmp_path / "victim"
    path.mkdir()
    (path / "passwd").write_text("host")
    (path / "hello").write_text("hello")
    (path / "perm400").write_text("...")
    (path / "perm400").chmod(0o400)
    (path / "also-exists-outside-root").write_text("...")
    (path / "also-exists-outside-root").chmod(0o640)
    return path


def snapshot(path: Path) -> dict[str, tuple[str, int, int]]:
    """Listing, owners and times of a tree, to prove it did not change."""
    lines = listing(path, owners=True)
    return {
        name: (line, os.lstat(path / name).st_mtime_ns, os.lstat(path / name).st_ino)
        for name, line in lines.items()
    }


@pytest.fixture
def guarded(tmp_path: Path, victim: Path) -> Callable[[], None]:
    """Return a check that nothing outside `root/` changed since the fixture ran."""
    before = snapshot(victim)
    siblings = sorted(path.name for path in tmp_path.iterdir())

    def check() -> None:
        assert snapshot(victim) == before
        assert sorted(path.name for path in tmp_path.iterdir() if path.name != "root") == [
            name for name in siblings if name != "root"
        ]

    return check


Check = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    name: str
    layer: bytes
    check: Check
    lower: bytes | None = None


def content(path: str, expected: str) -> Check:
    def check(root: Path) -> None:
        assert (root / path).read_text() == expected

    return check


def same_file(first: str, second: str) -> Check:
    """Both names are one inode (the names are real paths, no symlinks in them)."""

    def check(root: Path) -> None:
        assert same_inode(root / first, root / second)

    return check


def symlink_to(path: str, target: str) -> Check:
    def check(root: Path) -> None:
        assert stat.S_ISLNK(os.lstat(root / path).st_mode)
        assert os.readlink(root / path) == target

    return check


def missing(path: str) -> Check:
    def check(root: Path) -> None:
        assert not os.path.lexists(root / path)

    return check


def every(*checks: Check) -> Check:
    def check(root: Path) -> None:
        for one in checks:
            one(root)

    return check


ETC = (directory("etc", 0o770), file("/etc/passwd", "inside"))

CASES = [
    Case(
        "symlink-absolute",
        tar(
            directory("etc", 0o755),
            symlink("localetc", "/etc"),
            file("/localetc/unbroken", "unbroken"),
        ),
        content("etc/unbroken", "unbroken"),
    ),
    Case(
        "symlink-up-and-out",
        tar(
            directory("etc", 0o755),
            directory("dummy", 0o755),
            symlink("localetc", "/dummy/../etc"),
            file("/localetc/unbroken", "unbroken"),
        ),
        content("etc/unbroken", "unbroken"),
    ),
    Case(
        "symlink-multiple-absolute",
        tar(
            directory("etc", 0o755),
            directory("dummy", 0o755),
            symlink("/dummy/etc", "/etc"),
            symlink("localetc", "/dummy/etc"),
            file("/dummy/etc/unbroken", "unbroken"),
        ),
        content("etc/unbroken", "unbroken"),
    ),
    Case(
        "symlink-multiple-relative",
        tar(
            directory("etc", 0o755),
            directory("dummy", 0o755),
            symlink("/dummy/etc", "/etc"),
            symlink("localetc", "./dummy/etc"),
            file("/dummy/etc/unbroken", "unbroken"),
        ),
        content("etc/unbroken", "unbroken"),
    ),
    Case(
        "symlink-empty-file",
        tar(file("/localetc/emptied", "")),
        content("etc/emptied", ""),
        lower=tar(directory("etc"), file("etc/emptied", "notempty"), symlink("localetc", "/etc")),
    ),
    Case(
        "hardlink-relative",
        tar(
            *ETC,
            directory("breakouts", 0o755),
            symlink("breakouts/d1", "../../etc"),
            hardlink("breakouts/mypasswd", "/breakouts/d1/passwd"),
        ),
        same_file("breakouts/mypasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-down-and-out",
        tar(
            *ETC,
            directory("breakouts", 0o755),
            directory("downandout", 0o755),
            symlink("breakouts/d1", "../downandout/../../etc"),
            hardlink("breakouts/mypasswd", "/breakouts/d1/passwd"),
        ),
        same_file("breakouts/mypasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-absolute",
        tar(*ETC, symlink("localetc", "/etc"), hardlink("localpasswd", "/localetc/passwd")),
        same_file("localpasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-relative-long",
        tar(
            *ETC,
            symlink("localetc", "../../../../../../../etc"),
            hardlink("localpasswd", "/localetc/passwd"),
        ),
        same_file("localpasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-relative-up-and-out",
        tar(
            *ETC,
            symlink("localetc", "upandout/../../../etc"),
            hardlink("localpasswd", "/localetc/passwd"),
        ),
        same_file("localpasswd", "etc/passwd"),
    ),
    Case(
        "hardlink-direct-absolute",
        tar(*ETC, hardlink("localpasswd", "/etc/passwd")),
        same_file("localpasswd", "etc/passwd"),
    ),
    Case(
        "symlink-parent-relative",
        tar(
            *ETC,
            symlink("localetc/sub/..", "/etc/"),
            hardlink("/localetc/localpasswd", "/etc/passwd"),
        ),
        every(symlink_to("localetc", "/etc/"), same_file("etc/localpasswd", "etc/passwd")),
    ),
    Case(
        "symlink-slash-ended",
        tar(*ETC, directory("localetc/", 0o770), hardlink("/localetc/localpasswd", "/etc/passwd")),
        same_file("localetc/localpasswd", "etc/passwd"),
    ),
    Case(
        "symlink-override-directory",
        tar(symlink("localetc", "/etc"), hardlink("/localetc/localpasswd", "/etc/passwd")),
        every(symlink_to("localetc", "/etc"), same_file("etc/localpasswd", "etc/passwd")),
        lower=tar(directory("etc/"), file("etc/passwd", "inside"), directory("localetc/")),
    ),
    Case(
        "symlink-override-directory-relative",
        tar(symlink("localetc", "../../etc"), hardlink("/localetc/localpasswd", "/etc/passwd")),
        every(symlink_to("localetc", "../../etc"), same_file("etc/localpasswd", "etc/passwd")),
        lower=tar(directory("etc/"), file("etc/passwd", "inside"), directory("localetc/")),
    ),
    Case(
        "directory-override-symlink",
        tar(directory("/localetc/"), hardlink("/localetc/localpasswd", "/etc/passwd")),
        every(same_file("localetc/localpasswd", "etc/passwd"), missing("etc/localpasswd")),
        lower=tar(directory("etc/"), file("etc/passwd", "inside"), symlink("localetc", "/etc")),
    ),
    Case(
        "directory-override-symlink-and-hardlink",
        tar(directory("/localetc/"), file("/localetc/localpasswd", "different")),
        every(
            content("localetc/localpasswd", "different"),
            content("etc/passwd", "inside"),
            content("etc/localpasswd", "inside"),
        ),
        lower=tar(
            directory("etc/"),
            file("etc/passwd", "inside"),
            symlink("localetc", "etc"),
            hardlink("/localetc/localpasswd", "/etc/passwd"),
        ),
    ),
    Case(
        "whiteout-symlink",
        tar(whiteout(".wh.localetc")),
        every(content("etc/passwd", "all users"), missing("localetc")),
        lower=tar(directory("etc/"), file("etc/passwd", "all users"), symlink("localetc", "/etc")),
    ),
    Case(
        "whiteout-symlink-path",
        tar(whiteout("localetc/.wh.whitedout")),
        every(content("etc/passwd", "all users"), missing("etc/whitedout")),
        lower=tar(
            directory("etc/"),
            file("etc/passwd", "all users"),
            file("etc/whitedout", "ahhhh whiteout"),
            symlink("localetc", "/etc"),
        ),
    ),
    Case(
        "whiteout-directory-name",
        tar(file(".wh.etc/somefile", "non-empty")),
        every(content("etc/passwd", "all users"), content(".wh.etc/somefile", "non-empty")),
        lower=tar(directory("etc/"), file("etc/passwd", "all users"), symlink("localetc", "/etc")),
    ),
    Case(
        "whiteout-dead-symlink-parent",
        tar(whiteout("localetc/.wh.etc")),
        every(content("etc/passwd", "all users"), missing("dne")),
        lower=tar(directory("etc/"), file("etc/passwd", "all users"), symlink("localetc", "/dne")),
    ),
    Case(
        "whiteout-relative-path",
        tar(whiteout("dne/../.wh.etc")),
        every(missing("etc"), missing("dne")),
        lower=tar(directory("etc/"), file("etc/passwd", "all users"), symlink("localetc", "/dne")),
    ),
    Case(
        "hardlink-symlink-before-create-target",
        tar(
            directory("etc", 0o770),
            symlink("localpasswd", "/etc/passwd"),
            hardlink("localpasswd-dup", "localpasswd"),
            file("/etc/passwd", "after"),
        ),
        every(
            symlink_to("localpasswd-dup", "/etc/passwd"),
            same_file("localpasswd-dup", "localpasswd"),
        ),
    ),
    Case(
        "hardlink-symlink-relative",
        tar(
            *ETC,
            symlink("passwdlink", "../../../../../etc/passwd"),
            hardlink("localpasswd", "/passwdlink"),
        ),
        every(
            symlink_to("localpasswd", "../../../../../etc/passwd"),
            same_file("localpasswd", "passwdlink"),
        ),
    ),
    Case(
        "hardlink-symlink-absolute",
        tar(*ETC, symlink("passwdlink", "/etc/passwd"), hardlink("localpasswd", "/passwdlink")),
        every(symlink_to("localpasswd", "/etc/passwd"), same_file("localpasswd", "passwdlink")),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_breakout_stays_inside(tmp_path: Path, guarded: Callable[[], None], case: Case) -> None:
    root = tmp_path / "root"
    if case.lower is not None:
        apply(case.lower, root)
    apply(case.layer, root)
    case.check(root)
    guarded()


REJECTED = [
    ("hardlink-direct-relative", tar(*ETC, hardlink("localpasswd", "../../../../../etc/passwd"))),
    ("symlink-named-parent", tar(*ETC, symlink("..", "/etc/"))),
    ("symlink-named-empty", tar(*ETC, symlink("", "/etc/"))),
    ("file-dot-dot", tar(file("../escape", "x"))),
    ("file-up-and-out", tar(file("a/../../escape", "x"))),
    ("file-parent-of-victim", tar(file("../victim/dotdot", "x"))),
    ("file-slash-dot-dot", tar(file("/../victim/slash-dotdot", "x"))),
    ("entry-dot-dot", tar(directory(".."))),
    ("entry-dot-dot-pwned", tar(file("../pwned", "x"))),
    ("entry-dot-dot-dot-dot-pwned", tar(file("../../pwned", "x"))),
    ("hardlink-to-victim", tar(hardlink("loophole-victim", "../victim/hello"))),
    ("hardlink-slash-dot-dot", tar(hardlink("loophole-victim", "/../victim/hello"))),
    ("hardlink-sibling-prefix", tar(hardlink("secret", "../root-evil/secret"))),
    ("whiteout-root", tar(whiteout(".wh.."))),
    ("whiteout-root-parent", tar(whiteout(".wh..."))),
    ("whiteout-parent", tar(whiteout("etc/.wh..."))),
    ("whiteout-current-directory", tar(whiteout("etc/.wh.."))),
    ("whiteout-empty-name", tar(whiteout(".wh."))),
]


@pytest.mark.parametrize(("name", "layer"), REJECTED, ids=[name for name, _ in REJECTED])
def test_escaping_name_is_rejected(
    tmp_path: Path, guarded: Callable[[], None], name: str, layer: bytes
) -> None:
    root = tmp_path / "root"
    apply(tar(directory("etc/"), file("etc/passwd", "inside")), root)
    before = listing(root)
    with pytest.raises(UnsafePathError):
        apply(layer, root)
    guarded()
    if name.startswith("whiteout"):
        assert listing(root) == before


def test_escaping_name_error_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError) as raised:
        apply(tar(file("a/../../escape", "x")), tmp_path / "root")
    assert str(raised.value) == (
        "entry 'a/../../escape': '..' climbs above the layer root (offset 0)"
    )


def test_absolute_symlink_to_the_host_resolves_inside(
    tmp_path: Path, victim: Path, guarded: Callable[[], None]
) -> None:
    root = tmp_path / "root"
    apply(tar(symlink("localvictim", str(victim)), file("localvictim/passwd", "written")), root)
    inside = root / str(victim).lstrip("/")
    assert (inside / "passwd").read_text() == "written"
    assert os.readlink(root / "localvictim") == str(victim)
    guarded()


def test_hardlink_through_host_symlink(
    tmp_path: Path, victim: Path, guarded: Callable[[], None]
) -> None:
    root = tmp_path / "root"
    with pytest.raises(OcilayerError, match="names 'localvictim/hello', which does not exist"):
        apply(
            tar(symlink("localvictim", str(victim)), hardlink("linked", "localvictim/hello")), root
        )
    assert not os.path.lexists(root / "linked")
    guarded()


def test_chmod_never_follows_a_hardlinked_symlink(
    tmp_path: Path, victim: Path, guarded: Callable[[], None]
) -> None:
    """A hardlink to a symlink that points at a host file, with a mode in its header."""
    root = tmp_path / "root"
    link_name = str(victim / "also-exists-outside-root")
    apply(
        tar(
            symlink(link_name, str(victim / "perm400")),
            hardlink("sketchylink", link_name, mode=0o777),
        ),
        root,
    )
    assert stat.S_IMODE(os.lstat(victim / "perm400").st_mode) == 0o400
    assert stat.S_IMODE(os.lstat(victim / "also-exists-outside-root").st_mode) == 0o640
    inside = root / link_name.lstrip("/")
    assert same_inode(root / "sketchylink", inside)
    assert os.readlink(root / "sketchylink") == str(victim / "perm400")
    guarded()


def test_write_through_hardlinked_symlink_replaces_the_link(
    tmp_path: Path, victim: Path, guarded: Callable[[], None]
) -> None:
    root = tmp_path / "root"
    apply(tar(symlink("symlink", "../victim/hello"), hardlink("hardlink", "symlink")), root)
    apply(tar(file("hardlink", "overwritten"), file("symlink", "also")), root)
    assert listing(root) == {"hardlink": "f 644 'overwritten'", "symlink": "f 644 'also'"}
    guarded()


def test_writes_through_escaping_symlinks_land_inside(
    tmp_path: Path, guarded: Callable[[], None]
) -> None:
    root = tmp_path / "root"
    apply(
        tar(
            symlink("dotdot", "../victim"),
            file("dotdot/through-relative", "1"),
            directory("dir/"),
            symlink("dir/loophole", "../../victim"),
            file("dir/loophole/newdir/newfile", "2"),
            directory("inner/"),
            symlink("inner/go_up", ".."),
            symlink("inner/go_up/escape", "../victim"),
            file("inner/go_up/escape/newfile", "3"),
            symlink("up", "../../.."),
            file("up/a/b/c", "4"),
        ),
        root,
    )
    assert listing(root) == {
        "a": "d 755",
        "a/b": "d 755",
        "a/b/c": "f 644 '4'",
        "dir": "d 755",
        "dir/loophole": "l -> ../../victim",
        "dotdot": "l -> ../victim",
        "escape": "l -> ../victim",
        "inner": "d 755",
        "inner/go_up": "l -> ..",
        "up": "l -> ../../..",
        "victim": "d 755",
        "victim/newdir": "d 755",
        "victim/newdir/newfile": "f 644 '2'",
        "victim/newfile": "f 644 '3'",
        "victim/through-relative": "f 644 '1'",
    }
    guarded()


def test_symlink_loop_is_an_error(tmp_path: Path, guarded: Callable[[], None]) -> None:
    with pytest.raises(UnsafePathError, match="too many levels of symbolic links"):
        apply(tar(symlink("a", "b"), symlink("b", "a"), file("a/x", "1")), tmp_path / "root")
    guarded()


def test_override_path_through_symlink_to_root(tmp_path: Path, guarded: Callable[[], None]) -> None:
    root = tmp_path / "root"
    apply(tar(symlink("foo", "/"), file("foo/tmp/breakout-file", "x")), root)
    assert listing(root) == {
        "foo": "l -> /",
        "tmp": "d 755",
        "tmp/breakout-file": "f 644 'x'",
    }
    guarded()


def test_global_header_creates_nothing(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        header = tarfile.TarInfo("foo/bar")
        header.type = tarfile.XGLTYPE
        header.pax_headers = {"comment": "x"}
        archive.addfile(header)
    root = tmp_path / "root"
    apply(buffer.getvalue(), root)
    assert listing(root) == {}


# The other attack classes of the Docker, containerd and umoci advisories


def test_no_external_decompressor_runs(tmp_path: Path) -> None:
    """Decompression never runs a program found on PATH (Docker ran the image's xz once)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    marker = tmp_path / "ran"
    for program in ("gzip", "gunzip", "pigz", "unpigz", "igzip", "zstd", "unzstd", "xz"):
        fake = fake_bin / program
        fake.write_text(f"#!/bin/sh\necho {program} >> {marker}\nexit 1\n")
        fake.chmod(0o755)
    layer = tar(file("hello", "hello"))
    blobs = {
        "gzip": gzip.compress(layer, mtime=0),
        "zstd": zstandard.ZstdCompressor().compress(layer),
    }
    for codec, blob in blobs.items():
        script = (
            "import sys\n"
            "from ocilayer.apply import import_layer_from_tar\n"
            f"import_layer_from_tar(sys.stdin.buffer, {str(tmp_path / codec)!r})\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=blob,
            capture_output=True,
            env={**os.environ, "PATH": str(fake_bin)},
        )
        assert result.returncode == 0, result.stderr
        assert listing(tmp_path / codec) == {"hello": "f 644 'hello'"}
    assert not marker.exists()


@pytest.mark.slow
def test_decompression_bomb_keeps_memory_flat(tmp_path: Path) -> None:
    """A 1 GiB file of zeros in a 1 MiB gzip applies with bounded memory and disk."""
    size = 1 << 30
    blob = tmp_path / "bomb.tar.gz"
    # Concatenated gzip members form one stream, so one small member repeats.
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    with open(blob, "wb") as output:
        output.write(gzip.compress(encode_header(TarHeader(name=b"zeros", size=size)), mtime=0))
        for _ in range(size >> 20):
            output.write(zeros)
        output.write(gzip.compress(bytes(1024), mtime=0))
    assert blob.stat().st_size < 2 << 20
    script = (
        "import resource, sys\n"
        "from ocilayer.apply import import_layer_from_tar\n"
        f"import_layer_from_tar(open({str(blob)!r}, 'rb'), {str(tmp_path / 'root')!r})\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout)
    assert peak_kib < 150 * 1024, f"peak resident memory {peak_kib} KiB"
    st = os.lstat(tmp_path / "root/zeros")
    assert st.st_size == size
    assert st.st_blocks * 512 < 16 << 20


def test_directory_swapped_for_a_symlink_during_apply(
    tmp_path: Path, victim: Path, guarded: Callable[[], None]
) -> None:
    """A racing process swaps a directory for a symlink to the host while files go in."""
    root = tmp_path / "root"
    apply(tar(directory("dir/")), root)
    layer = tar(*(file(f"dir/sub{index % 10}/f{index}", "x") for index in range(3000)))
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(root / "dir", root / "moved")
                os.symlink(victim, root / "dir")
                os.unlink(root / "dir")
                os.rename(root / "moved", root / "dir")

    racer = threading.Thread(target=swap)
    racer.start()
    try:
        with contextlib.suppress(OcilayerError):
            apply(layer, root)
    finally:
        stop.set()
        racer.join()
    guarded()
    assert sorted(path.name for path in victim.iterdir()) == [
        "also-exists-outside-root",
        "hello",
        "passwd",
        "perm400",
    ]
