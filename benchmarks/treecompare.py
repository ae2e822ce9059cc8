"""Compare two directory trees in every attribute a layer carries.

Names, types, permission bits, owners, mtime in whole seconds (a layer keeps no
more), xattrs, content, symlink targets, device numbers and hardlink groups. The
roots themselves are not compared: a layer has no entry for its root.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Attributes:
    """The attributes a layer records for one path."""

    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    content_sha256: str | None
    link_target: bytes | None
    device: tuple[int, int] | None
    xattrs: tuple[tuple[bytes, bytes], ...]


_TYPES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}  # fmt: skip


def _sha256(path: bytes) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    found = []
    for name in sorted(names):
        value = os.getxattr(path, name, follow_symlinks=False)
        found.append((os.fsencode(name), value))
    return tuple(found)


def _walk(root: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    with os.scandir(root) as entries:
        items = sorted((entry.name, entry.path) for entry in entries)
    for name, full in items:
        st = os.lstat(full)
        path = prefix + name
        yield path, full, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(full, path + b"/")


@dataclass
class TreeSnapshot:
    """Attributes of every path of a tree, and its hardlink groups."""

    paths: dict[bytes, Attributes]
    hardlink_groups: set[frozenset[bytes]]


def snapshot_tree(root: str | os.PathLike[str]) -> TreeSnapshot:
    """Record the attributes of every path below `root`."""
    paths: dict[bytes, Attributes] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for path, full, st in _walk(os.fsencode(root)):
        kind = _TYPES[stat.S_IFMT(st.st_mode)]
        is_device = kind in ("char", "block")
        paths[path] = Attributes(
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime=st.st_mtime_ns // 1_000_000_000,
            size=st.st_size if kind == "file" else 0,
            content_sha256=_sha256(full) if kind == "file" else None,
            link_target=os.readlink(full) if kind == "symlink" else None,
            device=(os.major(st.st_rdev), os.minor(st.st_rdev)) if is_device else None,
            xattrs=_xattrs(full),
        )
        if st.st_nlink > 1 and kind != "dir":
            inodes.setdefault((st.st_dev, st.st_ino), []).append(path)
    groups = {frozenset(names) for names in inodes.values()}
    return TreeSnapshot(paths, groups)


@dataclass(frozen=True)
class Difference:
    """One difference between two trees: the path (None for hardlink groups), its type
    in the expected tree, the names of the attributes that differ, and a description."""

    path: bytes | None
    type: str | None
    fields: tuple[str, ...]
    text: str


def compare_trees(expected: TreeSnapshot, actual: TreeSnapshot) -> list[Difference]:
    """List every difference between two snapshots."""
    problems: list[Difference] = []
    for path in sorted(expected.paths.keys() - actual.paths.keys()):
        problems.append(
            Difference(path, expected.paths[path].type, ("presence",), f"missing: {path!r}")
        )
    for path in sorted(actual.paths.keys() - expected.paths.keys()):
        problems.append(Difference(path, None, ("presence",), f"unexpected: {path!r}"))
    for path in sorted(expected.paths.keys() & actual.paths.keys()):
        want, got = expected.paths[path], actual.paths[path]
        if want == got:
            continue
        fields = tuple(
            name
            for name in Attributes.__dataclass_fields__
            if getattr(want, name) != getattr(got, name)
        )
        shown = "; ".join(
            f"{name} expected {getattr(want, name)!r}, got {getattr(got, name)!r}"
            for name in fields
        )
        problems.append(Difference(path, want.type, fields, f"{path!r} ({want.type}): {shown}"))
    for group in sorted(expected.hardlink_groups - actual.hardlink_groups, key=sorted):
        problems.append(
            Difference(None, None, ("hardlinks",), f"hardlink group missing: {sorted(group)!r}")
        )
    for group in sorted(actual.hardlink_groups - expected.hardlink_groups, key=sorted):
        problems.append(
            Difference(None, None, ("hardlinks",), f"hardlink group unexpected: {sorted(group)!r}")
        )
    return problems
