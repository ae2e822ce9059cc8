"""Snapshot source: a full directory tree, diffed against its merged parent layers.

Without parents every path is an addition (a base layer). With parents the changes
are those of continuity's `fs.Changes` double walk, which containerd's WriteDiff
uses, so the same trees give the same changes in the same order:

- a path only in the lower view is a DELETE, and paths below a deleted directory are
  dropped (one whiteout deletes the subtree);
- a path only in the tree is an ADD;
- a path in both is a MODIFY unless `same_file` finds it unchanged. An unchanged
  non-directory with more than one link is still reported, as UNMODIFIED, because
  the tar writer needs every name of a hardlink group.

Comparing file contents takes about a third of the time of a diff of two similar trees.
When the optional C extension `ocilayer._compare` is built, those reads run on its
own thread while the walk goes on, and the changes still leave in walk order.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ocilayer.entry import EMPTY_XATTRS, ChangeKind, Entry, FileType, new_entry
from ocilayer.errors import LayerError, reason, show
from ocilayer.native import load_extension
from ocilayer.sources.union import (
    WHITEOUT_PREFIX,
    Node,
    walk_key,
    walk_tree,
    walk_union,
)
from ocilayer.xattrs import XattrPolicy, read_capability, read_xattrs

Change = tuple[ChangeKind, Node]

_COMPARE_CHUNK = 1 << 20


def _files_equal(first: bytes, second: bytes, size: int) -> bool:
    """Compare the bytes of two files that lstat showed as regular and `size` long.

    Plain descriptors, because a buffered file object costs two more system calls to
    open. O_NONBLOCK keeps a FIFO swapped in since the walk from blocking the open.
    Such a FIFO reads short, and a file whose length is not `size` never compares
    equal.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    first_fd = os.open(first, flags)
    try:
        second_fd = os.open(second, flags)
        try:
            compared = 0
            while True:
                # Sized reads: a small file costs no 1 MiB buffer and one read, and the
                # byte past `size` shows a file that grew.
                want = min(size + 1 - compared, _COMPARE_CHUNK)
                chunk = os.read(first_fd, want)
                if chunk != os.read(second_fd, want):
                    return False
                compared += len(chunk)
                if len(chunk) < want:
                    # A regular file reads short only at its end.
                    return compared == size
                if compared > size:
                    return False
        finally:
            os.close(second_fd)
    finally:
        os.close(first_fd)


def metadata_verdict(lower: Node, upper: Node) -> bool | None:
    """Decide whether a path present in both trees is unchanged, by continuity's rules.

    Type, permissions, owner and device number must match, and so must the
    `security.capability` bytes (no other xattr is compared). For a non-directory,
    size and mtime seconds must match too. When both mtimes have zero nanoseconds
    (so a tar round trip may have cut them), the content decides: symlink targets
    are read here, and for regular files with data None is returned, meaning that
    their bytes decide. Otherwise the nanoseconds decide.
    """
    a, b = lower.st, upper.st
    if a.st_dev == b.st_dev and a.st_ino == b.st_ino:
        return True
    if (a.st_mode, a.st_uid, a.st_gid, a.st_rdev) != (b.st_mode, b.st_uid, b.st_gid, b.st_rdev):
        return False
    if read_capability(lower.full) != read_capability(upper.full):
        return False
    if stat.S_ISDIR(a.st_mode):
        return True
    if a.st_size != b.st_size:
        return False
    a_secs, a_nanos = divmod(a.st_mtime_ns, 1_000_000_000)
    b_secs, b_nanos = divmod(b.st_mtime_ns, 1_000_000_000)
    if a_secs != b_secs:
        return False
    if a_nanos == 0 and b_nanos == 0:
        if stat.S_ISLNK(a.st_mode):
            return os.readlink(lower.full) == os.readlink(upper.full)
        if a.st_size == 0:
            return True
        return None
    return a_nanos == b_nanos


def same_file(lower: Node, upper: Node) -> bool:
    """Decide whether a path present in both trees is unchanged, reading file bytes if needed.

    Raises LayerError, naming `upper`, when either version cannot be read.
    """
    verdict = _checked_verdict(lower, upper)
    if verdict is not None:
        return verdict
    try:
        return _files_equal(lower.full, upper.full, lower.st.st_size)
    except OSError as error:
        raise _comparison_failed(error, upper) from error


def _checked_verdict(lower: Node, upper: Node) -> bool | None:
    """Return `metadata_verdict`, raising LayerError (naming `upper`) when a read fails."""
    try:
        return metadata_verdict(lower, upper)
    except OSError as error:
        raise _comparison_failed(error, upper) from error


def _is_linked(st: os.stat_result) -> bool:
    return st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode)


def _merge_walks(
    lower: Iterable[Node], upper: Iterable[Node]
) -> Iterator[tuple[ChangeKind | None, Node, Node | None]]:
    """Merge two walks in walk order (continuity's double walk), without comparing.

    Yields (DELETE, lower node, None), (ADD, upper node, None), or (None, upper node,
    lower node) for a path in both trees, which the caller compares.
    """
    lower_it, upper_it = iter(lower), iter(upper)
    low = next(lower_it, None)
    up = next(upper_it, None)
    # The walk keys of `low` and `up`, computed once per node.
    low_key = None if low is None else walk_key(low.path)
    up_key = None if up is None else walk_key(up.path)
    # Prefix of a deleted directory ("dir/"): lower paths below it need no whiteout.
    removed_dir: bytes | None = None
    while low is not None or up is not None:
        if up_key is None or (low_key is not None and low_key < up_key):
            assert low is not None
            if removed_dir is not None and low.path.startswith(removed_dir):
                low = next(lower_it, None)
                low_key = None if low is None else walk_key(low.path)
                continue
            if stat.S_ISDIR(low.st.st_mode):
                removed_dir = low.path + b"/"
            else:
                removed_dir = None
            yield ChangeKind.DELETE, low, None
            low = next(lower_it, None)
            low_key = None if low is None else walk_key(low.path)
        elif low_key is None or low_key > up_key:
            assert up is not None
            removed_dir = None
            yield ChangeKind.ADD, up, None
            up = next(upper_it, None)
            up_key = None if up is None else walk_key(up.path)
        else:
            assert up is not None and low is not None
            if stat.S_ISDIR(low.st.st_mode) and not stat.S_ISDIR(up.st.st_mode):
                removed_dir = low.path + b"/"
            else:
                removed_dir = None
            yield None, up, low
            low = next(lower_it, None)
            up = next(upper_it, None)
            low_key = None if low is None else walk_key(low.path)
            up_key = None if up is None else walk_key(up.path)


def diff_walks(
    lower: Iterable[Node], upper: Iterable[Node], comparer: Any = None
) -> Iterator[Change]:
    """Merge two walks into changes, in walk order (continuity's double walk).

    With `comparer`, an `ocilayer._compare.Comparer`, file contents are compared on
    its thread while the walk goes on; see `_diff_ahead`.
    """
    if comparer is not None:
        yield from _diff_ahead(_merge_walks(lower, upper), comparer)
        return
    for kind, node, low in _merge_walks(lower, upper):
        verdict = None if low is None else same_file(low, node)
        change = _change(kind, node, verdict)
        if change is not None:
            yield change


def _comparison_failed(error: OSError, node: Node) -> LayerError:
    """Return the error for a path whose two versions could not be compared."""
    name = error.filename if isinstance(error.filename, bytes) else node.full
    return LayerError(
        f"cannot compare {show(node.full)} with its version in the parent layers: "
        f"{reason(error, name)}; export from layers that are not in use"
    )


def _change(kind: ChangeKind | None, node: Node, verdict: object) -> Change | None:
    """Return the change of a merged path, given the verdict of its comparison."""
    if kind is not None:
        return kind, node
    if not verdict:
        return ChangeKind.MODIFY, node
    if _is_linked(node.st):
        return ChangeKind.UNMODIFIED, node
    return None


# The maximum number of changes the diff holds back while the oldest waits for its
# comparison. The Comparer's capacity must be at least this.
LOOK_AHEAD = 512
_PENDING = object()


def _diff_ahead(
    merged: Iterator[tuple[ChangeKind | None, Node, Node | None]], comparer: Any
) -> Iterator[Change]:
    """Turn merged walks into changes, with file contents compared on the comparer's thread.

    A path whose content decides is queued on the comparer, and the walk goes on to
    the next paths. Changes leave in walk order: the oldest leaves once its
    comparison has finished, or when LOOK_AHEAD changes wait behind it.
    """
    waiting: deque[tuple[ChangeKind | None, Node, object]] = deque()
    try:
        for kind, node, low in merged:
            if kind is None:
                assert low is not None
                verdict: object = _checked_verdict(low, node)
                if verdict is None:
                    comparer.submit(low.full, node.full, low.st.st_size)
                    verdict = _PENDING
                waiting.append((None, node, verdict))
            else:
                waiting.append((kind, node, None))
            while waiting:
                kind, node, verdict = waiting[0]
                if verdict is _PENDING:
                    if len(waiting) < LOOK_AHEAD and not comparer.ready():
                        break
                    verdict = _take(comparer, node)
                waiting.popleft()
                change = _change(kind, node, verdict)
                if change is not None:
                    yield change
        for kind, node, verdict in waiting:
            if verdict is _PENDING:
                verdict = _take(comparer, node)
            change = _change(kind, node, verdict)
            if change is not None:
                yield change
    finally:
        comparer.close()


def _take(comparer: Any, node: Node) -> bool:
    """Return the oldest queued comparison's result, raising LayerError naming `node`."""
    try:
        return bool(comparer.take())
    except OSError as error:
        raise _comparison_failed(error, node) from error


# Regular files up to this size are read when their entry is made, through the same
# descriptor as their xattrs.
READ_AHEAD_SIZE = 1 << 16


def open_regular(path: bytes, seen: os.stat_result | None = None) -> int:
    """Open a file that the walk saw as a regular file, failing if it no longer is one.

    O_NONBLOCK keeps a FIFO swapped in after the walk from blocking the open, and
    O_NOFOLLOW keeps a symlink from leading elsewhere. The type is checked after opening,
    and with `seen` (the walk's lstat) the device and inode too, so that a file reached
    through a directory swapped since the walk is not read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (
        seen is not None and (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino)
    ):
        os.close(fd)
        raise LayerError(
            f"{show(path)} is no longer a regular file, or not the one the walk "
            "found; export from a layer that is not in use"
        )
    os.set_blocking(fd, True)
    return fd


def _read_small(node: Node, size: int, policy: XattrPolicy) -> tuple[bytes, Mapping[bytes, bytes]]:
    """Read a small file whole, and its xattrs through the same descriptor.

    A byte more than expected shows that the file grew.
    """
    try:
        fd = open_regular(node.full, node.st)
        try:
            xattrs = read_xattrs(fd, policy)
            data = os.read(fd, size + 1)
        finally:
            os.close(fd)
    except OSError as error:
        raise LayerError(f"cannot read {show(node.full)}: {reason(error, node.full)}") from error
    if len(data) != size:
        raise changed_size(node.full, size)
    return data, xattrs


def changed_size(full: bytes, size: int) -> LayerError:
    """Return the error for a file whose length changed while it was being read."""
    return LayerError(
        f"{show(full)} changed size while it was being read (expected {size} "
        "bytes); export from a layer that is not in use"
    )


def entry_from_node(
    node: Node,
    kind: ChangeKind,
    policy: XattrPolicy,
    st: os.stat_result | None = None,
    *,
    read_ahead: bool = False,
) -> Entry:
    """Build the entry of a path on disk from its lstat.

    With `read_ahead`, a regular file of at most READ_AHEAD_SIZE bytes is read now
    and its data carried in the entry.
    """
    st = st or node.st
    file_type = FileType.from_mode(st.st_mode)
    linkname = b""
    devmajor = devminor = 0
    content = None
    xattrs = None
    if file_type is FileType.REGULAR:
        if read_ahead and 0 < st.st_size <= READ_AHEAD_SIZE and kind is not ChangeKind.UNMODIFIED:
            content, xattrs = _read_small(node, st.st_size, policy)
    elif file_type is FileType.CHAR or file_type is FileType.BLOCK:
        devmajor, devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    try:
        if file_type is FileType.SYMLINK:
            linkname = os.readlink(node.full)
        if xattrs is None:
            xattrs = _path_xattrs(node.full, file_type, policy)
    except OSError as error:
        raise LayerError(f"cannot read {show(node.full)}: {reason(error, node.full)}") from error
    regular = file_type is FileType.REGULAR
    # Every field in Entry's order, because this runs once per path of the layer.
    return new_entry(Entry, (
        node.path, kind, file_type, st.st_mode & 0o7777, st.st_uid, st.st_gid,
        st.st_mtime_ns, None, None, st.st_size if regular else 0, linkname, devmajor,
        devminor, xattrs, (st.st_dev, st.st_ino), st.st_nlink, node.full if regular else None,
        None, None, content,
    ))  # fmt: skip


def _path_xattrs(full: bytes, file_type: FileType, policy: XattrPolicy) -> Mapping[bytes, bytes]:
    if file_type is FileType.SOCKET:
        return EMPTY_XATTRS
    return read_xattrs(full, policy)


def check_name(node: Node) -> Node:
    name = node.path[node.path.rfind(b"/") + 1 :]
    if name.startswith(WHITEOUT_PREFIX):
        raise LayerError(
            f"{show(node.full)}: a file name that starts with '.wh.' would be read "
            "as a whiteout by every layer applier; rename or remove it before exporting"
        )
    return node


def _inside(path: bytes, subtrees: tuple[bytes, ...]) -> bool:
    return any(path == top or path.startswith(top + b"/") for top in subtrees)


class SnapshotSource:
    """Layer reader over a full tree, diffed against its parent layers (lowest first).

    `include` limits the changes to the given subtrees (relative paths); parent
    directories of included changes are still written by the tar writer.
    """

    def __init__(
        self,
        path: str | bytes | os.PathLike[str],
        parent_layer_paths: Iterable[str | bytes | os.PathLike[str]] = (),
        *,
        xattrs: XattrPolicy = XattrPolicy.ALL,
        include: Iterable[bytes] = (),
    ) -> None:
        self.root = _directory(path)
        self.parents = [_directory(parent, "parent layer") for parent in parent_layer_paths]
        self.xattrs = xattrs
        self.include = included_paths(include)
        check_included(self.include, [self.root, *self.parents])

    def changes(self) -> Iterator[Entry]:
        """Yield the changes of the layer as entries, in walk order."""
        upper = (check_name(node) for node in walk_tree(self.root))
        if self.parents:
            compare = load_extension("_compare")
            comparer = None if compare is None else compare.Comparer(LOOK_AHEAD)
            changes: Iterable[Change] = diff_walks(walk_union(self.parents), upper, comparer)
        else:
            changes = ((ChangeKind.ADD, node) for node in upper)
        for kind, node in changes:
            if self.include and not _inside(node.path, self.include):
                continue
            if kind is ChangeKind.DELETE:
                yield Entry(path=node.path, kind=kind)
            else:
                yield entry_from_node(node, kind, self.xattrs, read_ahead=True)

    def lookup(self, path: bytes) -> Entry:
        """Return the current state of a directory of the layer, as a MODIFY entry."""
        full = os.path.join(self.root, path)
        node = Node(path, os.lstat(full), full)
        return entry_from_node(node, ChangeKind.MODIFY, self.xattrs)


def _relative(path: bytes) -> bytes:
    """Normalise a path inside the layer: no `./`, no leading or trailing `/`."""
    cleaned = posixpath.normpath(b"/" + path).lstrip(b"/")
    return cleaned


def _directory(path: str | bytes | os.PathLike[str], what: str = "layer") -> bytes:
    full = os.fsencode(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise LayerError(
            f"{what} directory {show(full)} does not exist; pass the directory "
            "that contains the layer's files"
        ) from None
    except OSError as error:
        quoted = show(full)
        raise LayerError(f"cannot read {what} directory {quoted}: {reason(error, full)}") from None
    if not stat.S_ISDIR(st.st_mode):
        # A layer given as a file is most often a layer tar, which the tar source reads.
        hint = ", or add --source tar to read a layer tar" if what == "layer" else ""
        raise LayerError(f"{what} {show(full)} is not a directory; pass a layer directory{hint}")
    return full


def included_paths(include: Iterable[bytes]) -> tuple[bytes, ...]:
    """Normalise `include` paths; the layer root (`.` or `/`) means the whole layer."""
    paths = tuple(_relative(top) for top in include)
    return () if b"" in paths else paths


def check_included(include: tuple[bytes, ...], roots: list[bytes]) -> None:
    """Raise LayerError for an `include` path found in none of the layer directories.

    A path found only in a parent is valid: its deletion is a change.
    """
    for top in include:
        if not any(os.path.lexists(os.path.join(root, top)) for root in roots):
            raise LayerError(
                f"--include {show(top)} is not in the layer or its parents; "
                "give a path relative to the layer directory"
            )


LayerLookup = Callable[[bytes], Entry]
