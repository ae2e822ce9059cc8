"""Overlay source: an overlayfs upper directory over its lower layers.

The upper directory (docker's overlay2 `diff/`, containerd's overlayfs `fs/`) holds
every path the container created or copied up, plus overlay's own records:

- a deleted path is a 0/0 character device, or a zero-size file carrying an
  `overlay.whiteout` xattr (trusted. or user. namespace);
- a directory that hides its lower contents carries `overlay.opaque=y` (`x` only
  marks a directory that may hold xattr whiteouts, and is not opaque);
- a renamed directory carries `overlay.redirect` with its old path, and a file
  copied up for a metadata change only carries `overlay.metacopy` and no data.

Each upper path is compared with the merged lower layers by the snapshot source's
rules, so the changes equal those of a snapshot export of the mounted view. Two
differences remain where the upper directory cannot tell more: an opaque directory
becomes one `.wh..wh..opq` marker instead of a whiteout for each lower child, and a
name added to a lower hardlink group is a copy-up, so the old names are not in it.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Generator, Iterable, Iterator

from ocilayer.entry import ChangeKind, Entry
from ocilayer.errors import LayerError, show
from ocilayer.sources.snapshot import (
    _directory,
    _inside,
    check_included,
    check_name,
    diff_walks,
    entry_from_node,
    included_paths,
    same_file,
)
from ocilayer.sources.union import (
    OPAQUE_MARKER,
    OVERLAY_XATTR_NAMESPACES,
    WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
    Node,
    _scan,
    _walk_merged,
    get_xattr,
    is_overlay_opaque,
    is_overlay_whiteout,
)
from ocilayer.xattrs import XattrPolicy


def _overlay_xattr(
    full: bytes, name: bytes, namespaces: tuple[bytes, ...] = OVERLAY_XATTR_NAMESPACES
) -> bytes | None:
    for namespace in namespaces:
        value = get_xattr(full, namespace + b"overlay." + name)
        if value is not None:
            return value
    return None


def _mount_namespaces(root: bytes) -> tuple[bytes, ...]:
    """Guess which xattr namespace the overlay mount used, from the upper root.

    The kernel marks the upper root of a mount (`overlay.impure`, `overlay.uuid`,
    `overlay.origin`) in the namespace it uses: `trusted.` normally, `user.` with
    the `userxattr` option. In the other namespace, `overlay.*` names are ordinary
    xattrs that any process in the container may set, so they must not steer the
    export. Without marks on the root, both namespaces are read.
    """
    try:
        names = [os.fsencode(name) for name in os.listxattr(root)]
    except OSError:
        return OVERLAY_XATTR_NAMESPACES
    found = tuple(ns for ns in OVERLAY_XATTR_NAMESPACES if any(
        name.startswith(ns + b"overlay.") for name in names))  # fmt: skip
    return found if len(found) == 1 else OVERLAY_XATTR_NAMESPACES


def redirect_origin(path: bytes, redirect: bytes, where: bytes) -> bytes:
    """Return the layer path an `overlay.redirect` value names, for the entry at `path`.

    An absolute redirect is a path from the layer root, a relative one a name in the
    same directory. A value with empty, `.` or `..` components would lead outside
    the layers, so it raises LayerError naming the file `where`.
    """
    if redirect.startswith(b"/"):
        parts = redirect[1:].split(b"/")
    else:
        parent = path.rpartition(b"/")[0]
        parts = [*parent.split(b"/"), redirect] if parent else [redirect]
        if b"/" in redirect:
            parts = [b""]
    if any(part in (b"", b".", b"..") or b"\x00" in part for part in parts):
        raise LayerError(
            f"{show(where)} carries overlay.redirect={show(redirect)}, "
            "which does not name a path inside the layers; the upper directory is damaged "
            "or was crafted, so export the mounted view with --source snapshot instead"
        )
    return b"/".join(parts)


class OverlaySource:
    """Layer reader over an overlayfs upper directory and its lower layers (lowest first)."""

    def __init__(
        self,
        upper: str | bytes | os.PathLike[str],
        parent_layer_paths: Iterable[str | bytes | os.PathLike[str]] = (),
        *,
        xattrs: XattrPolicy = XattrPolicy.ALL,
        include: Iterable[bytes] = (),
    ) -> None:
        self.root = _directory(upper)
        # Top-most first, the order in which overlayfs looks names up.
        self.lowers = [_directory(p, "parent layer") for p in parent_layer_paths][::-1]
        self.xattrs = xattrs
        self.include = included_paths(include)
        check_included(self.include, [self.root, *self.lowers])
        self.namespaces = _mount_namespaces(self.root)
        self._lower_dirs = functools.lru_cache(maxsize=4096)(self._find_lower_dirs)

    def changes(self) -> Iterator[Entry]:
        """Yield the changes of the upper directory as entries, in walk order."""
        for entry in self._walk(self.root, b"", below_opaque=False):
            if not self.include or _inside(entry.path, self.include):
                yield entry

    def lookup(self, path: bytes) -> Entry:
        """Return the merged state of a directory, as a MODIFY entry."""
        full = os.path.join(self.root, path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            node = self.lower_node(path)
            if node is None:
                raise
            return entry_from_node(node, ChangeKind.MODIFY, self.xattrs)
        return entry_from_node(Node(path, st, full), ChangeKind.MODIFY, self.xattrs)

    def lower_node(self, path: bytes) -> Node | None:
        """Look a path up in the merged lower layers, as overlayfs would."""
        for full, st in self._versions(path):
            return Node(path, st, full)
        return None

    def _versions(self, path: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
        """Yield each lower layer's version of `path`, top-most first, until a whiteout."""
        parent, _, name = path.rpartition(b"/")
        for directory in self._lower_dirs(parent):
            full = os.path.join(directory, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                if os.path.lexists(os.path.join(directory, WHITEOUT_PREFIX + name)):
                    return
                continue
            if is_overlay_whiteout(st, full):
                return
            yield full, st

    def _find_lower_dirs(self, path: bytes) -> tuple[bytes, ...]:
        """Return the directories that make up `path` in the lower view, top-most first."""
        if not path:
            dirs = self.lowers
        else:
            dirs = []
            for full, st in self._versions(path):
                # A non-directory hides the directories below it.
                if not stat.S_ISDIR(st.st_mode):
                    break
                dirs.append(full)
        kept: list[bytes] = []
        for directory in dirs:
            kept.append(directory)
            if is_overlay_opaque(directory) or os.path.lexists(
                os.path.join(directory, OPAQUE_MARKER)
            ):
                break
        return tuple(kept)

    def _walk(self, directory: bytes, prefix: bytes, below_opaque: bool) -> Iterator[Entry]:
        """Walk the upper directory with an explicit stack, so any depth works."""
        stack = [(iter(sorted(_scan(directory))), prefix, below_opaque)]
        while stack:
            entries, prefix, below_opaque = stack[-1]
            for name, st, full in entries:
                node = Node(prefix + name, st, full)
                if is_overlay_whiteout(st, full, self.namespaces):
                    if not below_opaque and self.lower_node(node.path) is not None:
                        yield Entry(path=node.path, kind=ChangeKind.DELETE)
                    continue
                if name.startswith(WHITEOUT_META_PREFIX) and not prefix:
                    continue
                check_name(node)
                lower = None if below_opaque else self.lower_node(node.path)
                if not stat.S_ISDIR(st.st_mode):
                    yield from self._file_change(node, lower)
                    continue
                descend = yield from self._directory_changes(node, lower, below_opaque)
                if descend is not None:
                    stack.append((iter(sorted(_scan(full))), node.path + b"/", descend))
                    break
            else:
                stack.pop()

    def _directory_changes(
        self, node: Node, lower: Node | None, below_opaque: bool
    ) -> Generator[Entry, None, bool | None]:
        """Yield a directory's own changes; return whether its lower content is hidden.

        A renamed directory is diffed whole here and returns None: the walk must not
        descend into it.
        """
        redirect = _overlay_xattr(node.full, b"redirect", self.namespaces)
        if redirect is not None:
            yield from self._redirected(node, lower, redirect)
            return None
        if lower is None:
            yield entry_from_node(node, ChangeKind.ADD, self.xattrs)
        elif not same_file(lower, node):
            yield entry_from_node(node, ChangeKind.MODIFY, self.xattrs)
        opaque = is_overlay_opaque(node.full, self.namespaces)
        lower_is_dir = lower is not None and stat.S_ISDIR(lower.st.st_mode)
        if opaque and lower_is_dir:
            yield Entry(path=node.path, kind=ChangeKind.OPAQUE)
        return below_opaque or opaque or not lower_is_dir

    def _file_change(self, node: Node, lower: Node | None) -> Iterator[Entry]:
        data_node = node
        if _overlay_xattr(node.full, b"metacopy", self.namespaces) is not None:
            data_node = self._metacopy_data(node)
        if lower is None:
            kind = ChangeKind.ADD
        elif same_file(lower, data_node):
            if node.st.st_nlink <= 1:
                return
            kind = ChangeKind.UNMODIFIED
        else:
            kind = ChangeKind.MODIFY
        if data_node is node:
            yield entry_from_node(node, kind, self.xattrs, read_ahead=True)
        else:
            # The upper file of a metadata-only copy-up has no data: read the lower one.
            yield _with_source(entry_from_node(node, kind, self.xattrs), data_node.full)

    def _metacopy_data(self, node: Node) -> Node:
        """Find the lower file that contains the data of a metadata-only copy-up."""
        redirect = _overlay_xattr(node.full, b"redirect", self.namespaces)
        if redirect is None:
            origin_path = node.path
        else:
            origin_path = redirect_origin(node.path, redirect, node.full)
        origin = self.lower_node(origin_path)
        if origin is None or not stat.S_ISREG(origin.st.st_mode):
            raise LayerError(
                f"{show(node.full)} is a metadata-only copy-up whose data file "
                f"{show(origin_path)} is not in the given parents; pass every lower "
                "layer with --parent, lowest first"
            )
        if origin.st.st_size != node.st.st_size:
            raise LayerError(
                f"{show(node.full)} is a metadata-only copy-up of "
                f"{show(origin.full)}, but their sizes differ; the parents given "
                "are not the layers this upper directory was made on"
            )
        return Node(node.path, node.st, origin.full)

    def _redirected(self, node: Node, lower: Node | None, redirect: bytes) -> Iterator[Entry]:
        """Diff a renamed directory: its merged contents against the lower view at its path.

        The merged contents are the upper directory over the lower directories of its
        old path (the redirect). Nested redirects and metacopy files inside are not
        followed and raise an error that names them.
        """
        origin = redirect_origin(node.path, redirect, node.full)
        origin_node = self.lower_node(origin)
        sources = [node.full]
        if origin_node is not None and stat.S_ISDIR(origin_node.st.st_mode):
            sources += list(self._lower_dirs(origin))
        if lower is None:
            yield entry_from_node(node, ChangeKind.ADD, self.xattrs)
        elif not same_file(lower, node):
            yield entry_from_node(node, ChangeKind.MODIFY, self.xattrs)
        below: list[bytes] = []
        if lower is not None and stat.S_ISDIR(lower.st.st_mode):
            below = list(self._lower_dirs(node.path))
        prefix = node.path + b"/"
        merged = (self._check_plain(n) for n in _walk_merged(sources, prefix))
        for kind, changed in diff_walks(_walk_merged(below, prefix), merged):
            if kind is ChangeKind.DELETE:
                yield Entry(path=changed.path, kind=kind)
            else:
                yield entry_from_node(changed, kind, self.xattrs)

    def _check_plain(self, node: Node) -> Node:
        for name in (b"redirect", b"metacopy"):
            if _overlay_xattr(node.full, name, self.namespaces) is not None:
                raise LayerError(
                    f"{show(node.full)} carries overlay.{name.decode()} inside a "
                    "renamed directory, which ocilayer cannot follow; export the mounted "
                    "view with --source snapshot instead"
                )
        return check_name(node)


def _with_source(entry: Entry, source: bytes) -> Entry:
    return entry._replace(source_path=source)


def looks_like_upper(path: str | bytes | os.PathLike[str]) -> bool:
    """Whether a directory contains overlayfs records (whiteout devices or overlay xattrs).

    Used by `--source auto`: only positive evidence counts, because an upper
    directory without deletions or copy-ups looks exactly like a plain tree.
    """
    root = _directory(path)
    for directory, names, files in os.walk(root):
        for name in names + files:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            if is_overlay_whiteout(st, full):
                return True
            for key in (b"opaque", b"redirect", b"metacopy", b"origin"):
                if _overlay_xattr(full, key) is not None:
                    return True
    return False
