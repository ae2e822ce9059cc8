"""The directories an apply creates for its target, and their removal after a failure.

A failed apply removes the target and the missing parents that it created, while they
are still empty. The layer may have replaced one of them since, for example with a
symlink to a directory elsewhere, so a path resolved at removal time could lead
outside the target. Each created directory is therefore held open, with its parent,
from its mkdir on. The open descriptor keeps its inode number from being reused, and
the removal looks the name up in the parent it was created in, never through a path.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from typing import NamedTuple

# Directories held open at most: two descriptors each. A deeper chain of new
# directories is created, but only its first MAX_HELD levels are removed on failure.
MAX_HELD = 32
_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenDirectory(NamedTuple):
    """A directory this apply created: its parent, its name there, and itself, all open."""

    parent_fd: int
    name: str
    fd: int


class NewDirectories:
    """The directories created for one target, deepest last."""

    def __init__(self) -> None:
        self._held: list[_OpenDirectory] = []

    def __len__(self) -> int:
        return len(self._held)

    def make_target(self, name: str) -> None:
        """Create the target directory `name` and its missing parents.

        Only directories that this call's own mkdir made are held, so a failed apply
        never removes one that existed (`missing/../existing` makes `missing` and finds
        `existing`) or that another process made at the same time.
        """
        missing: list[str] = []
        current = name
        while not self._make(current):
            head, tail = os.path.split(current)
            if not tail:
                head, tail = os.path.split(head)
            if not head or not tail:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), current)
            missing.append(current)
            current = head
        for current in reversed(missing):
            if os.path.basename(current.rstrip(os.sep)) in (os.curdir, os.pardir):
                continue  # `new/.` or `new/..` is a directory once `new` is
            self._make(current)

    def _make(self, path: str) -> bool:
        """Create `path` unless it is a directory; return False when its parent is missing."""
        # SIGINT waits until the new directory is held, so that no interrupt leaves it
        # created but unknown.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            try:
                os.mkdir(path)
            except FileNotFoundError:
                return False
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
                return True
            self._hold(path)
            return True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _hold(self, path: str) -> None:
        if len(self._held) >= MAX_HELD:
            return
        trimmed = path.rstrip(os.sep)
        parent_fd = os.open(os.path.dirname(trimmed) or os.curdir, _FLAGS)
        name = os.path.basename(trimmed)
        try:
            fd = os.open(name, _FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        except BaseException:
            os.close(parent_fd)
            raise
        self._held.append(_OpenDirectory(parent_fd, name, fd))

    def remove_empty(self) -> set[tuple[int, int]]:
        """Remove the held directories that are still there and empty, deepest first.

        Return the (device, inode) of each directory removed.
        """
        removed: set[tuple[int, int]] = set()
        for parent_fd, name, fd in reversed(self._held):
            try:
                opened = os.fstat(fd)
                found = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if not stat.S_ISDIR(found.st_mode):
                    continue
                if (found.st_dev, found.st_ino) != (opened.st_dev, opened.st_ino):
                    continue
                os.rmdir(name, dir_fd=parent_fd)
                removed.add((opened.st_dev, opened.st_ino))
            except OSError:
                continue
        return removed

    def all_removed(self, removed: set[tuple[int, int]]) -> bool:
        """Return whether `removed` (from `remove_empty`) has every held directory."""
        return bool(self._held) and len(removed) == len(self._held)

    def close(self) -> None:
        """Close the descriptors that hold the directories."""
        for parent_fd, _, fd in self._held:
            os.close(fd)
            os.close(parent_fd)
        self._held.clear()
