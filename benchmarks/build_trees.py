"""Build the benchmark inputs under the work directory, once; reruns reuse them.

- `rootfs/base`: a Debian bookworm minbase rootfs from debootstrap, from the mirror
  that apt on this machine uses.
- `rootfs/next`: a copy of it with the changes of a typical image build. Packages are
  installed with apt-get in a chroot and purged with dpkg, apt's caches cleaned and a
  user added. Then a directory is deleted, files modified, types, modes and owners
  changed, and hardlinks, xattrs, a FIFO, a device node, a long name and a non-UTF-8
  name added.
- `small-20k`, `small-200k`: that many files of 0-4 KiB (random bytes from a fixed
  seed), 100 files a directory, two directory levels.
- `big`: four 1 GiB files.

A tree counts as built when its `<name>.done` marker exists next to it; delete the
marker (and the tree) to rebuild it.

Usage: build_trees.py [--work-dir DIR] [--mirror URL] [rootfs] [small] [big]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from common import DEFAULT_WORK_DIR, apt_mirror, run

# Packages the changed rootfs installs: ca-certificates adds a tree of symlinks,
# iputils-ping a file capability (security.capability), curl a few libraries.
INSTALL_PACKAGES = [
    "ca-certificates", "curl", "iputils-ping", "libcap2-bin", "less", "netbase", "procps",
]  # fmt: skip
PURGE_PACKAGES = ["e2fsprogs", "tzdata"]

SMALL_FILES_PER_DIR = 100
SMALL_DIRS_PER_TOP = 20
SMALL_MAX_SIZE = 4096
BIG_FILE_COUNT = 4
BIG_FILE_SIZE = 1 << 30


def _done(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _build_once(path: Path, build: Callable[[Path], None]) -> Path:
    """Build `path` with `build` unless its marker file exists."""
    marker = _done(path)
    if marker.exists():
        return path
    if path.exists() or path.is_symlink():
        # A half-built tree from an interrupted run.
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path)
    marker.touch()
    return path


def build_base_rootfs(work_dir: Path, mirror: str | None = None) -> Path:
    """Debootstrap a bookworm minbase rootfs into `work_dir/rootfs/base`."""
    source = mirror or apt_mirror()

    def debootstrap(target: Path) -> None:
        run(["debootstrap", "--variant=minbase", "bookworm", target, source])

    return _build_once(work_dir / "rootfs" / "base", debootstrap)


def build_next_rootfs(work_dir: Path, base: Path) -> Path:
    """Copy the base rootfs to `work_dir/rootfs/next` and change it as an image build would."""
    return _build_once(work_dir / "rootfs" / "next", lambda target: _change_rootfs(base, target))


def _chroot(root: Path, *command: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    run(["chroot", root, *command], env=env, stdout=sys.stderr)


def _change_rootfs(base: Path, root: Path) -> None:
    # cp -a keeps hardlinks, xattrs, devices and nanosecond times, so unchanged files
    # stay unchanged for the diff.
    run(["cp", "-a", "--", base, root])

    # Packages come and go through the rootfs's own apt and dpkg, so their databases,
    # logs and triggers change the way a real build changes them.
    _chroot(root, "apt-get", "update")
    _chroot(root, "apt-get", "install", "-y", "--no-install-recommends", *INSTALL_PACKAGES)
    _chroot(root, "dpkg", "--purge", *PURGE_PACKAGES)
    _chroot(root, "apt-get", "clean")
    _chroot(root, "useradd", "--create-home", "--uid", "1000", "--shell", "/bin/bash", "app")
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()

    # A deleted directory: one whiteout for a whole subtree.
    shutil.rmtree(root / "usr/share/doc")
    # Modified content, and a change of mtime alone.
    with open(root / "etc/bash.bashrc", "a") as bashrc:
        bashrc.write("export PS1='app$ '\n")
    (root / "etc/hostname").write_text("bench\n")
    os.utime(root / "etc/issue", ns=(0, 1_700_000_000_000_000_000))
    # Type changes: a file becomes a symlink, a directory with files becomes a file,
    # and an empty directory becomes a symlink.
    (root / "etc/motd").unlink()
    (root / "etc/motd").symlink_to("/run/motd.dynamic")
    shutil.rmtree(root / "usr/share/lintian")
    (root / "usr/share/lintian").write_text("replaced by a file\n")
    (root / "var/opt").rmdir()
    (root / "var/opt").symlink_to("/opt")
    # Modes and owners.
    os.chmod(root / "root", 0o750)
    os.chmod(root / "usr/bin/su", 0o4750)
    os.chown(root / "var/log/apt", 1000, 1000)
    _add_app_files(root / "opt/app")


def _add_app_files(app: Path) -> None:
    """Add files under /opt/app that cover the entry kinds an image build can create."""
    app.mkdir()
    (app / "bin").mkdir()
    data = random.Random(5).randbytes(300_000)
    (app / "bin/server").write_bytes(data)
    os.chmod(app / "bin/server", 0o755)
    # A hardlink group inside the layer, and a new name for an unchanged file of the
    # base (its old names are written as hardlinks to the new one).
    os.link(app / "bin/server", app / "bin/server-hardlink")
    os.link(app.parent.parent / "usr/bin/perl", app / "bin/perl")
    (app / "bin/run").symlink_to("server")
    os.setxattr(app / "bin/server", "user.origin", b"benchmarks")
    os.setxattr(
        app / "bin/server",
        "security.capability",
        bytes.fromhex("0100000200040000000000000000000000000000"),
    )
    os.setxattr(app / "bin", "trusted.note", b"directory xattr")
    os.mkfifo(app / "control.fifo", 0o620)
    os.mknod(app / "fuse", 0o666 | 0o020000, os.makedev(10, 229))
    deep = app / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("long-name-" + "x" * 80)).write_bytes(b"long path\n")
    (app / os.fsdecode(b"caf\xe9-latin1.txt")).write_bytes(b"not UTF-8\n")
    for path in [app, *app.rglob("*")]:
        os.chown(path, 1000, 1000, follow_symlinks=False)


def build_small_tree(work_dir: Path, count: int) -> Path:
    """Build `count` files of 0-4 KiB under `work_dir/small-<count/1000>k`."""

    def fill(root: Path) -> None:
        rng = random.Random(count)
        per_top = SMALL_FILES_PER_DIR * SMALL_DIRS_PER_TOP
        for index in range(count):
            top, rest = divmod(index, per_top)
            sub, number = divmod(rest, SMALL_FILES_PER_DIR)
            directory = root / f"{top:03d}" / f"{sub:02d}"
            if number == 0:
                directory.mkdir(parents=True)
            size = rng.randint(0, SMALL_MAX_SIZE)
            (directory / f"file-{number:03d}.dat").write_bytes(rng.randbytes(size))

    return _build_once(work_dir / f"small-{count // 1000}k", fill)


def build_big_tree(work_dir: Path) -> Path:
    """Build four 1 GiB files of random bytes under `work_dir/big`."""

    def fill(root: Path) -> None:
        root.mkdir()
        rng = random.Random(1)
        chunk_size = 16 << 20
        for index in range(BIG_FILE_COUNT):
            with open(root / f"blob-{index}.bin", "wb") as out:
                for _ in range(BIG_FILE_SIZE // chunk_size):
                    out.write(rng.randbytes(chunk_size))

    return _build_once(work_dir / "big", fill)


def main() -> int:
    parser = argparse.ArgumentParser(description="Build the benchmark input trees.")
    parser.add_argument(
        "trees",
        nargs="*",
        choices=["rootfs", "small", "big"],
        help="which trees to build (default: all)",
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--mirror", help="Debian mirror URL (default: the one apt uses)")
    args = parser.parse_args()
    wanted = set(args.trees or ["rootfs", "small", "big"])
    if "rootfs" in wanted:
        base = build_base_rootfs(args.work_dir, args.mirror)
        print(build_next_rootfs(args.work_dir, base))
    if "small" in wanted:
        print(build_small_tree(args.work_dir, 20_000))
        print(build_small_tree(args.work_dir, 200_000))
    if "big" in wanted:
        print(build_big_tree(args.work_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
