"""Sorted tree walks: one directory, or several layers merged as overlayfs merges lowerdirs.

A walk yields `Node`s in the order of continuity's `fs.Changes`: pre-order depth
first, each directory's names sorted as bytes. That is the order of full paths
compared byte by byte with `/` taken as the lowest byte (see `walk_key`), so two
walks can be merged in one linear pass.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

from ocilayer.errors import LayerError, reason, show

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
# AUFS kept its own metadata under names with this prefix; none of it is file content.
WHITEOUT_META_PREFIX = b".wh..wh."
OVERLAY_XATTR_NAMESPACES = (b"trusted.", b"user.")


class Node(NamedTuple):
    """One path of a walked tree: its relative path, its lstat and its path on disk."""

    path: bytes
    st: os.stat_result
    full: bytes


def walk_key(path: bytes) -> bytes:
    """Return the sort key of a path in walk order (`/` sorts below every other byte)."""
    return path.replace(b"/", b"\x00")


def get_xattr(full: bytes, name: bytes) -> bytes | None:
    """Read one xattr without following symlinks; None when it is absent or unsupported."""
    try:
        return os.getxattr(full, name, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return None
        raise


def is_overlay_opaque(
    full: bytes, namespaces: tuple[bytes, ...] = OVERLAY_XATTR_NAMESPACES
) -> bool:
    """Whether a directory carries `overlay.opaque=y` in one of `namespaces`.

    The value `x` only marks a directory that may contain xattr whiteouts, so it is
    not opaque.
    """
    return any(get_xattr(full, ns + b"overlay.opaque") == b"y" for ns in namespaces)


def is_overlay_whiteout(
    st: os.stat_result, full: bytes, namespaces: tuple[bytes, ...] = OVERLAY_XATTR_NAMESPACES
) -> bool:
    """Whether a file is an overlayfs whiteout: a 0/0 char device, or an xattr whiteout.

    An xattr whiteout is a zero-size regular file carrying `overlay.whiteout` in one
    of `namespaces`.
    """
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return any(get_xattr(full, ns + b"overlay.whiteout") is not None for ns in namespaces)
    return False


def _scan(
    directory: bytes, seen: os.stat_result | None = None
) -> list[tuple[bytes, os.stat_result, bytes]]:
    """List a directory: (name, lstat, path) of each child.

    With `seen`, the lstat the walk took of `directory`, the directory is opened
    without following a symlink and must still be that one. A directory swapped for
    a symlink or another directory since then raises LayerError instead of leading
    the walk out of the tree.
    """
    try:
        if seen is None:
            with os.scandir(directory) as entries:
                return [(e.name, e.stat(follow_symlinks=False), e.path) for e in entries]
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
                raise LayerError(
                    f"cannot read directory {show(directory)}: it was replaced "
                    "while it was being read; export from a layer that is not in use"
                )
            # A scandir of a descriptor gives str names.
            with os.scandir(fd) as entries:
                named = [(os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in entries]
            return [(name, st, os.path.join(directory, name)) for name, st in named]
        finally:
            os.close(fd)
    except OSError as error:
        quoted = show(directory)
        raise LayerError(f"cannot read directory {quoted}: {reason(error, directory)}") from error


def walk_tree(root: bytes) -> Iterator[Node]:
    """Walk one directory tree (the root itself excluded), lstat-ing every path once.

    The walk keeps its own stack, so a tree deeper than Python's recursion limit
    walks like any other.
    """
    stack = [(iter(sorted(_scan(root))), b"")]
    while stack:
        entries, prefix = stack[-1]
        for name, st, full in entries:
            path = prefix + name
            yield Node(path, st, full)
            if stat.S_ISDIR(st.st_mode):
                stack.append((iter(sorted(_scan(full, st))), path + b"/"))
                break
        else:
            stack.pop()


class _Chosen:
    """The visible version of one name while merging layers, and the lower dirs below it."""

    __slots__ = ("dirs", "full", "sealed", "st")

    def __init__(self, st: os.stat_result, full: bytes) -> None:
        self.st = st
        self.full = full
        self.dirs = [full] if stat.S_ISDIR(st.st_mode) else []
        # Set once a lower layer has a non-directory here, because it hides the layers below.
        self.sealed = not self.dirs


def walk_union(layers: list[bytes]) -> Iterator[Node]:
    """Walk the merged view of `layers` (lowest first), as an overlay mount shows it.

    Whiteouts (`.wh.<name>` files, 0/0 char devices, xattr whiteouts) hide the name in
    the layers below theirs, opaque directories (`.wh..wh..opq` or `overlay.opaque=y`)
    hide everything below them, and a non-directory hides same-named directories
    below it. No whiteout or marker appears in the view.
    """
    yield from _walk_merged(list(reversed(layers)), b"")


def _walk_merged(dirs: list[bytes], prefix: bytes) -> Iterator[Node]:
    """Walk the merge of `dirs` (top-most first) below `prefix`, with its own stack."""
    stack = [_merged_children(dirs, prefix)]
    while stack:
        for path, item in stack[-1]:
            yield Node(path, item.st, item.full)
            if item.dirs:
                stack.append(_merged_children(item.dirs, path + b"/"))
                break
        else:
            stack.pop()


def _merged_children(dirs: list[bytes], prefix: bytes) -> Iterator[tuple[bytes, _Chosen]]:
    """Return the visible children of one merged directory, sorted by name."""
    chosen: dict[bytes, _Chosen] = {}
    hidden: set[bytes] = set()
    for directory in dirs:
        whiteouts: set[bytes] = set()
        opaque = False
        for name, st, full in _scan(directory):
            if name.startswith(WHITEOUT_PREFIX):
                if name == OPAQUE_MARKER:
                    opaque = True
                elif not name.startswith(WHITEOUT_META_PREFIX):
                    whiteouts.add(name[len(WHITEOUT_PREFIX) :])
                continue
            if is_overlay_whiteout(st, full):
                whiteouts.add(name)
                continue
            if name in hidden:
                continue
            known = chosen.get(name)
            if known is None:
                chosen[name] = _Chosen(st, full)
            elif not known.sealed:
                if stat.S_ISDIR(st.st_mode):
                    known.dirs.append(full)
                else:
                    known.sealed = True
        # A layer's whiteouts hide the layers below it, never its own entries.
        hidden |= whiteouts
        if opaque or is_overlay_opaque(directory):
            break
    return iter([(prefix + name, chosen[name]) for name in sorted(chosen)])
