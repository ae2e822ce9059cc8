"""Declarative test trees: build a directory tree from a spec, and compare two trees.

A spec maps relative paths (`str` or `bytes`, `/`-separated, no leading or trailing
`/`) to nodes. Missing parent directories are created as `Dir()`. Paths are handled
as bytes throughout, so names that are not valid UTF-8 work. The key `""` sets the
attributes of the root directory itself.

`build_tree` needs root for owners, devices and `security.capability`, as CI has.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

# 2020-09-13T12:26:40Z: a fixed default keeps every tree, and so every tar, reproducible.
DEFAULT_MTIME_NS = 1_600_000_000 * 10**9
NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class File:
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = DEFAULT_MTIME_NS
    xattrs: Mapping[bytes, bytes] = field(default_factory=lambda: NO_XATTRS)


@dataclass(frozen=True, slots=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = DEFAULT_MTIME_NS
    xattrs: Mapping[bytes, bytes] = field(default_factory=lambda: NO_XATTRS)


@dataclass(frozen=True, slots=True)
class Symlink:
    target: bytes
    uid: int = 0
    gid: int = 0
    mtime_ns: int = DEFAULT_MTIME_NS


@dataclass(frozen=True, slots=True)
class Hardlink:
    """Another name for the inode at `target`, a non-directory path of the same spec."""

    target: bytes


@dataclass(frozen=True, slots=True)
class Fifo:
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = DEFAULT_MTIME_NS


@dataclass(frozen=True, slots=True)
class Device:
    kind: Literal["char", "block"]
    major: int
    minor: int
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    mtime_ns: int = DEFAULT_MTIME_NS


@dataclass(frozen=True, slots=True)
class Socket:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = DEFAULT_MTIME_NS


Node = File | Dir | Symlink | Hardlink | Fifo | Device | Socket
# Keys are str or bytes paths. Mapping's key type is invariant, so only Any lets a
# dict[str, File] and a dict[bytes, Node] both pass as a spec.
TreeSpec = Mapping[Any, Node]


def to_bytes(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


def normalize_spec(spec: TreeSpec) -> dict[bytes, Node]:
    """Return the spec with bytes paths, implied parent directories and checked links."""
    nodes: dict[bytes, Node] = {}
    for key, node in spec.items():
        path = to_bytes(key)
        parts = path.split(b"/")
        if path and (path.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts)):
            raise ValueError(f"invalid tree spec path {path!r}: use a relative, clean path")
        if path in nodes:
            raise ValueError(f"tree spec path {path!r} appears twice")
        if path == b"" and not isinstance(node, Dir):
            raise ValueError(f"the tree root must be a Dir, not {node!r}")
        nodes[path] = node
    for path in list(nodes):
        parent = path.rpartition(b"/")[0]
        while parent:
            existing = nodes.setdefault(parent, Dir())
            if not isinstance(existing, Dir):
                raise ValueError(f"tree spec parent {parent!r} of {path!r} is not a Dir")
            parent = parent.rpartition(b"/")[0]
    for path, node in nodes.items():
        if isinstance(node, Hardlink):
            link_target(nodes, path)
    return nodes


def link_target(nodes: Mapping[bytes, Node], path: bytes) -> bytes:
    """Follow a chain of Hardlink nodes from `path` to the node that owns the inode.

    Returns `path` itself when its node is not a Hardlink.
    """
    seen = {path}
    node = nodes[path]
    while isinstance(node, Hardlink):
        path = node.target
        if path in seen or path not in nodes:
            raise ValueError(f"hardlink chain through {path!r} is circular or dangling")
        seen.add(path)
        node = nodes[path]
    if isinstance(node, Dir) and len(seen) > 1:
        raise ValueError(f"hardlink to directory {path!r}")
    return path


def _depth_first(paths: list[bytes]) -> list[bytes]:
    """Sort parents before children, siblings in byte order (the walk order of the tools)."""
    return sorted(paths, key=lambda p: p.split(b"/"))


def build_tree(root: Path, spec: TreeSpec) -> Path:
    """Create the tree described by `spec` under `root` (created if missing) and return root.

    Metadata is applied after every node exists, in the order that keeps it: owner
    (which clears `security.capability` and setuid bits), xattrs, mode, then times,
    children before parents so that creating a child does not move a directory mtime.
    """
    nodes = normalize_spec(spec)
    root.mkdir(parents=True, exist_ok=True)
    base = os.fsencode(root)
    order = _depth_first([p for p in nodes if p])

    for path in order:
        node = nodes[path]
        if not isinstance(node, Hardlink):
            _create(os.path.join(base, path), node)
    for path in order:
        if isinstance(nodes[path], Hardlink):
            target = os.path.join(base, link_target(nodes, path))
            os.link(target, os.path.join(base, path), follow_symlinks=False)

    inodes = [p for p in [b"", *order] if p in nodes and not isinstance(nodes[p], Hardlink)]
    for path in inodes:
        _set_metadata(os.path.join(base, path) if path else base, nodes[path])
    for path in reversed(inodes):
        node = nodes[path]
        assert not isinstance(node, Hardlink)
        full = os.path.join(base, path) if path else base
        os.utime(full, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
    return root


def _create(full: bytes, node: Node) -> None:
    match node:
        case Dir():
            os.mkdir(full)
        case File(content=content):
            with open(full, "xb") as handle:
                handle.write(content)
        case Symlink(target=target):
            os.symlink(target, full)
        case Fifo():
            os.mkfifo(full)
        case Device(kind=kind, major=major, minor=minor):
            type_bits = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
            os.mknod(full, type_bits | 0o600, os.makedev(major, minor))
        case Socket():
            _bind_socket(full)
        case Hardlink():
            raise AssertionError("hardlinks are created after every other node")


def _bind_socket(full: bytes) -> None:
    # A socket address must fit sun_path (108 bytes), so bind a short name relative to
    # the parent directory, then rename the socket to its real name.
    parent = os.path.dirname(full)
    old_cwd = os.getcwd()
    server = socket.socket(socket.AF_UNIX)
    try:
        os.chdir(parent)
        server.bind(b".socket-being-made")
        os.rename(os.path.join(parent, b".socket-being-made"), full)
    finally:
        os.chdir(old_cwd)
        server.close()


def _set_metadata(full: bytes, node: Node) -> None:
    assert not isinstance(node, Hardlink)
    os.chown(full, node.uid, node.gid, follow_symlinks=False)
    if isinstance(node, File | Dir):
        for name in sorted(node.xattrs):
            os.setxattr(full, name, node.xattrs[name], follow_symlinks=False)
    if not isinstance(node, Symlink):
        os.chmod(full, node.mode)


# Tree comparison.

MtimePolicy = Literal["exact", "seconds", "ignore"]
XattrFilter = bool | Callable[[bytes], bool]

_TYPE_NAMES = {
    stat.S_IFREG: "regular file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True, slots=True)
class PathInfo:
    """The attributes of one path that `assert_trees_equal` compares."""

    full_path: bytes
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    rdev: tuple[int, int] | None
    link_target: bytes | None
    xattrs: Mapping[bytes, bytes]
    inode: tuple[int, int]


def read_xattrs(full: bytes) -> dict[bytes, bytes]:
    """Read every extended attribute of a path without following a symlink."""
    names = sorted(os.fsencode(name) for name in os.listxattr(full, follow_symlinks=False))
    return {name: os.getxattr(full, name, follow_symlinks=False) for name in names}


def stat_path(full: bytes) -> PathInfo:
    st = os.lstat(full)
    kind = stat.S_IFMT(st.st_mode)
    is_device = kind in (stat.S_IFCHR, stat.S_IFBLK)
    return PathInfo(
        full_path=full,
        type=_TYPE_NAMES[kind],
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size if kind in (stat.S_IFREG, stat.S_IFLNK) else 0,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if is_device else None,
        link_target=os.readlink(full) if kind == stat.S_IFLNK else None,
        xattrs=read_xattrs(full),
        inode=(st.st_dev, st.st_ino),
    )


def scan_tree(root: Path) -> dict[bytes, PathInfo]:
    """Stat every path below `root` (root excluded) without following symlinks."""
    base = os.fsencode(root)
    found: dict[bytes, PathInfo] = {}
    pending = [b""]
    while pending:
        relative = pending.pop()
        directory = os.path.join(base, relative) if relative else base
        for name in os.listdir(directory):
            path = relative + b"/" + name if relative else name
            info = stat_path(os.path.join(base, path))
            found[path] = info
            if info.type == "directory":
                pending.append(path)
    return found


def hardlink_groups(tree: Mapping[bytes, PathInfo]) -> dict[bytes, tuple[bytes, ...]]:
    """Map each non-directory path to the sorted names in the tree that share its inode."""
    by_inode: dict[tuple[int, int], list[bytes]] = {}
    for path, info in tree.items():
        if info.type != "directory":
            by_inode.setdefault(info.inode, []).append(path)
    return {path: tuple(sorted(paths)) for paths in by_inode.values() for path in paths}


def _same_content(a: bytes, b: bytes) -> bool:
    with open(a, "rb") as first, open(b, "rb") as second:
        while True:
            chunk_a = first.read(1 << 20)
            chunk_b = second.read(1 << 20)
            if chunk_a != chunk_b:
                return False
            if not chunk_a:
                return True


def _mtime_key(info: PathInfo, mtimes: MtimePolicy) -> int | None:
    if mtimes == "exact":
        return info.mtime_ns
    if mtimes == "seconds":
        return info.mtime_ns // 10**9
    return None


def compare_paths(
    a: PathInfo,
    b: PathInfo,
    *,
    xattrs: XattrFilter,
    mtimes: MtimePolicy,
) -> list[tuple[str, object, object]]:
    """Return `(attribute, value in a, value in b)` for each attribute that differs."""
    if a.type != b.type:
        return [("type", a.type, b.type)]
    differences: list[tuple[str, object, object]] = []
    for attribute, value_a, value_b in (
        ("mode", oct(a.mode), oct(b.mode)),
        ("uid", a.uid, b.uid),
        ("gid", a.gid, b.gid),
        ("device numbers", a.rdev, b.rdev),
        ("symlink target", a.link_target, b.link_target),
        ("size", a.size, b.size),
        ("mtime", _mtime_key(a, mtimes), _mtime_key(b, mtimes)),
    ):
        if value_a != value_b:
            differences.append((attribute, value_a, value_b))
    same_size_file = a.type == "regular file" and a.size == b.size
    if same_size_file and not _same_content(a.full_path, b.full_path):
        differences.append(("content", "...", "..."))
    if xattrs is not False:
        keep = (lambda _name: True) if xattrs is True else xattrs
        xattrs_a = {k: v for k, v in a.xattrs.items() if keep(k)}
        xattrs_b = {k: v for k, v in b.xattrs.items() if keep(k)}
        if xattrs_a != xattrs_b:
            differences.append(("xattrs", xattrs_a, xattrs_b))
    return differences


def _path_order(path: bytes) -> list[bytes]:
    return path.split(b"/")


def assert_trees_equal(
    a: Path,
    b: Path,
    *,
    xattrs: XattrFilter = True,
    mtimes: MtimePolicy = "seconds",
    directory_mtimes: bool = True,
    exclude: Callable[[bytes], bool] | None = None,
) -> None:
    """Assert that two trees hold the same paths with the same attributes.

    Every path below the roots is compared, the roots themselves are not. The
    attributes are: type, permission bits with setuid, setgid and sticky, owner ids,
    device numbers, symlink target, size and content of regular files, xattrs, mtime,
    and hardlink group (the other names in the same tree that share the inode).

    `xattrs` is True for all, False for none, or a predicate on the xattr name.
    `mtimes` is "exact" (nanoseconds), "seconds" (truncated, as layer tars keep them)
    or "ignore". `directory_mtimes=False` skips directories, whose mtime a changeset
    does not carry unless the directory itself changed. `exclude` skips paths.
    The message names the first differing path and attribute, then up to 20 more.
    """
    tree_a = {p: i for p, i in scan_tree(a).items() if exclude is None or not exclude(p)}
    tree_b = {p: i for p, i in scan_tree(b).items() if exclude is None or not exclude(p)}
    groups_a = hardlink_groups(tree_a)
    groups_b = hardlink_groups(tree_b)

    problems: list[str] = []
    for path in sorted(tree_a.keys() | tree_b.keys(), key=_path_order):
        info_a, info_b = tree_a.get(path), tree_b.get(path)
        if info_a is None or info_b is None:
            where = "only in a" if info_b is None else "only in b"
            kind = (info_a or info_b).type  # type: ignore[union-attr]
            problems.append(f"{path!r}: {where} ({kind})")
            continue
        policy = mtimes if directory_mtimes or info_a.type != "directory" else "ignore"
        for attribute, value_a, value_b in compare_paths(
            info_a, info_b, xattrs=xattrs, mtimes=policy
        ):
            problems.append(f"{path!r}: {attribute} differs: a={value_a!r}, b={value_b!r}")
        if groups_a.get(path) != groups_b.get(path):
            problems.append(
                f"{path!r}: hardlink group differs: a={groups_a.get(path)!r}, "
                f"b={groups_b.get(path)!r}"
            )
    if problems:
        shown = "\n  ".join(problems[:21])
        more = f"\n  ... and {len(problems) - 21} more" if len(problems) > 21 else ""
        raise AssertionError(f"trees differ (a={a}, b={b}):\n  {shown}{more}")
