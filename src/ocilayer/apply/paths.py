"""Resolve entry paths inside the target root through directory file descriptors.

Every directory is opened relative to its parent with `O_PATH | O_NOFOLLOW |
O_DIRECTORY`, starting from a descriptor of the root, so the kernel never resolves a whole
path and never follows a symlink on its own. Symlinks met on the way to an entry's
parent are followed here with chroot semantics: an absolute target restarts at the
root, and `..` at the root stays at the root. A link can therefore lead anywhere inside
the root but never out of it: escaping links are clamped to the root, as containerd,
umoci and `openat2(RESOLVE_IN_ROOT)` resolve them. The last component of a path is
never followed.

Positions are tracked as *real* paths (relative to the root, made only of directories),
which is what the applier records to know which paths the current layer created.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from typing import NamedTuple, Protocol

from ocilayer.apply.errors import ApplyError
from ocilayer.entry import parent_of
from ocilayer.errors import UnsafePathError, show

# Linux gives up after 40 symlinks in one lookup (ELOOP); so does the resolver.
MAX_SYMLINKS = 40
# Linux's limit on a path given to a system call, the final NUL included (ENAMETOOLONG).
PATH_MAX = 4096
_OPEN_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FOR_LISTING = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Resolved directories stay open between entries, up to this many.
_CACHE_SIZE = 256


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    """Return the lstat of `name` in `dir_fd`, or None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_directory(dir_fd: int, name: bytes) -> int:
    """Open the directory `name` in `dir_fd` as an O_PATH descriptor, never through a link."""
    return os.open(name, _OPEN_DIRECTORY, dir_fd=dir_fd)


def open_real_directory(root_fd: int, path: bytes) -> int | None:
    """Open a real directory path (no symlinks in it), or return None if it is not one."""
    fd = os.dup(root_fd)
    try:
        for component in path.split(b"/") if path else ():
            child = open_directory(fd, component)
            os.close(fd)
            fd = child
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    return fd


def list_directory(dir_fd: int) -> list[bytes]:
    """Return the names in a directory given by an O_PATH descriptor."""
    readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return [os.fsencode(name) for name in os.listdir(readable)]
    finally:
        os.close(readable)


def remove_tree(dir_fd: int, name: bytes, *, make_writable: bool = False) -> None:
    """Remove the directory `name` in `dir_fd` and everything below it.

    The walk keeps a stack of open directories instead of recursing, so any depth
    works, and opens each directory relative to its parent with O_NOFOLLOW, so a
    symlink is removed and never followed. With `make_writable`, a directory whose
    owner lacks read, write or search permission gets them first (for an unprivileged
    owner, who needs them to empty it).
    """
    # Each frame: an open directory, its name in the frame below, its subdirectories left.
    frames: list[tuple[int, bytes, list[bytes]]] = []
    try:
        frames.append(_open_for_removal(dir_fd, name, make_writable))
        while frames:
            fd, directory, subdirectories = frames[-1]
            if subdirectories:
                frames.append(_open_for_removal(fd, subdirectories.pop(), make_writable))
                continue
            frames.pop()
            os.close(fd)
            parent_fd = frames[-1][0] if frames else dir_fd
            os.rmdir(directory, dir_fd=parent_fd)
    finally:
        for fd, _, _ in frames:
            os.close(fd)


def _open_for_removal(
    dir_fd: int, name: bytes, make_writable: bool
) -> tuple[int, bytes, list[bytes]]:
    """Open a directory, remove its non-directories and return it with its subdirectories."""
    if make_writable:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
            os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd, follow_symlinks=False)
    fd = os.open(name, _OPEN_FOR_LISTING, dir_fd=dir_fd)
    subdirectories: list[bytes] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                child = os.fsencode(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    subdirectories.append(child)
                else:
                    os.unlink(child, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, name, subdirectories


def _check_real_length(path: bytes, real: bytes) -> None:
    """Raise ApplyError when symlinks on the way make `path` longer than Linux allows."""
    if len(real) >= PATH_MAX:
        raise ApplyError(
            f"{show(path)} leads through symlinks to a path of {len(real)} bytes or "
            f"more; Linux paths are at most {PATH_MAX - 1} bytes"
        )


class Tree(Protocol):
    """Interface that the resolver needs from the applier that owns the target."""

    def is_layer_path(self, path: bytes) -> bool:
        """Return whether the current layer created or whited out the real path `path`."""

    def lower_symlink(self, path: bytes) -> bytes | None:
        """Return the target of a symlink at `path` in the parent layers, if any."""

    def make_directory(
        self, dir_fd: int, dir_path: bytes, name: bytes, existing: os.stat_result | None
    ) -> None:
        """Create the missing directory `name`, replacing the non-directory `existing`."""

    def enter_directory(self, dir_fd: int, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Prepare the existing directory `name` (real path `path`) before the walk enters it."""


class Location(NamedTuple):
    """Destination of an entry: a directory descriptor, its real path and the last component.

    `dir_fd` belongs to the resolver and stays valid until its `end_entry()`.
    """

    dir_fd: int
    dir_path: bytes
    name: bytes

    @property
    def path(self) -> bytes:
        return join(self.dir_path, self.name)


class Resolver:
    """Resolve paths inside the root held by `root_fd`; see the module documentation.

    With `whiteout=True` the walk returns None at a non-directory that the current
    layer created, a symlink included, and at a path that it whited out. A whiteout
    or opaque marker names a path of the lower layers, and this layer has already
    replaced or removed whatever was there.
    """

    def __init__(self, root_fd: int, tree: Tree) -> None:
        self.root_fd = root_fd
        self._tree = tree
        self._cache: dict[bytes, tuple[int, bytes]] = {}
        # Descriptors handed out during the current entry, closed at its end.
        self._retired: list[int] = []

    def resolve_parent(
        self, path: bytes, *, create: bool, whiteout: bool = False
    ) -> Location | None:
        """Resolve the directory that contains `path`; None if it is missing and not created."""
        directory = self.resolve_directory(parent_of(path), create=create, whiteout=whiteout)
        if directory is None:
            return None
        cut = path.rfind(b"/")
        location = Location(directory[0], directory[1], path[cut + 1 :])
        _check_real_length(path, location.path)
        return location

    def resolve_directory(
        self, path: bytes, *, create: bool, whiteout: bool = False
    ) -> tuple[int, bytes] | None:
        """Resolve the directory `path` to a descriptor and its real path."""
        if not path:
            return self.root_fd, b""
        if not whiteout and path in self._cache:
            return self._cache[path]
        start_fd, start_real, rest = self._start(path, whiteout)
        result = self._walk(path, start_fd, start_real, rest, create, whiteout)
        if result is None:
            return None
        fd, real, owned, through_lower = result
        if owned:
            # A path resolved through a lower layer's symlink is not cached: the layer
            # may put its own entry at that name later, without replacing anything
            # here, and later entries must follow that one.
            if whiteout or through_lower:
                self._retired.append(fd)
            else:
                self._cache[path] = (fd, real)
        return fd, real

    def invalidate(self) -> None:
        """Forget every resolution; call after anything in the target is removed."""
        self._retired.extend(fd for fd, _ in self._cache.values())
        self._cache.clear()

    def end_entry(self) -> None:
        """Close the descriptors that the current entry no longer needs."""
        if len(self._cache) > _CACHE_SIZE:
            self.invalidate()
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def close(self) -> None:
        self.invalidate()
        self.end_entry()

    def _start(self, path: bytes, whiteout: bool) -> tuple[int, bytes, list[bytes]]:
        """Find the longest resolved prefix of `path` to start the walk from."""
        components = path.split(b"/")
        if not whiteout:
            for count in range(len(components) - 1, 0, -1):
                cached = self._cache.get(b"/".join(components[:count]))
                if cached is not None:
                    return cached[0], cached[1], components[count:]
        return self.root_fd, b"", components

    def _walk(
        self,
        path: bytes,
        fd: int,
        real: bytes,
        components: list[bytes],
        create: bool,
        whiteout: bool,
    ) -> tuple[int, bytes, bool, bool] | None:
        """Walk `components` from the directory `fd` (real path `real`).

        Returns the final descriptor, its real path, whether the caller owns it and
        whether the walk followed a lower layer's symlink.
        """
        owned = False
        through_lower = False
        pending = deque(components)
        hops = 0

        def move_to(new_fd: int, new_real: bytes) -> None:
            nonlocal fd, real, owned
            if owned:
                os.close(fd)
            fd, real, owned = new_fd, new_real, new_fd != self.root_fd

        try:
            while pending:
                component = pending.popleft()
                if component in (b"", b"."):
                    continue
                if component == b"..":
                    if real:
                        parent = parent_of(real)
                        parent_fd = open_real_directory(self.root_fd, parent)
                        if parent_fd is None:
                            raise UnsafePathError(f"directory {show(parent)} vanished during apply")
                        move_to(parent_fd, parent)
                    continue

                child = join(real, component)
                _check_real_length(path, child)
                existing = lstat_at(fd, component)
                target: bytes | None = None
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    self._tree.enter_directory(fd, child, component, existing)
                    move_to(open_directory(fd, component), child)
                    continue
                if whiteout and self._tree.is_layer_path(child):
                    # The current layer put a non-directory here or whited the path out,
                    # so nothing of the parent layers is left below it to hide.
                    return self._give_up(fd, owned)
                if existing is not None and stat.S_ISLNK(existing.st_mode):
                    target = os.readlink(component, dir_fd=fd)
                elif existing is None:
                    target = self._tree.lower_symlink(child)
                    through_lower = through_lower or target is not None

                if target is None:
                    if existing is None and pending and pending[0] == b"..":
                        # A missing name that the next `..` takes back is skipped, as
                        # containerd's resolver does, instead of created or failed on.
                        pending.popleft()
                        continue
                    if not create:
                        return self._give_up(fd, owned)
                    self._tree.make_directory(fd, real, component, existing)
                    move_to(open_directory(fd, component), child)
                    continue

                hops += 1
                if hops > MAX_SYMLINKS:
                    raise UnsafePathError(
                        f"too many levels of symbolic links while resolving {show(path)}"
                    )
                if target.startswith(b"/"):
                    move_to(self.root_fd, b"")
                pending.extendleft(reversed(target.split(b"/")))
        except BaseException:
            if owned:
                os.close(fd)
            raise
        return fd, real, owned, through_lower

    @staticmethod
    def _give_up(fd: int, owned: bool) -> None:
        if owned:
            os.close(fd)
        return None
