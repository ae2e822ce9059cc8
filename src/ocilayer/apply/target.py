"""The directories an apply creates for its target, and their removal after a failure.

A failed apply removes the target and the missing parents that it created, while they
are still empty. The layer may have replaced one of them since, for example with a
symlink to a directory elsewhere, so a path resolved at removal time could lead
outside the target. Each directory is therefore created by name in its parent, held
open from then on, and removed by name in that same parent, never through a path.
The open descriptor keeps the directory's inode number from being reused, so a name
that still shows that inode is the directory that was created.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

# Directories held open at most: two descriptors each. With more new levels than
# this, the deepest held one contains the next, so none of them is removed.
MAX_HELD = 32
_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(slots=True)
class _OpenDirectory:
    """A directory this apply created: its parent, its name there, and itself, all open.

    `fd` is -1 while the directory is being created, and stays -1 when an interrupt
    or a failed open came after the mkdir. That only happens before the layer is
    read, so a directory of that name in the parent is then the one this apply made,
    unless another process created the same name in the same instant.
    """

    parent_fd: int
    name: str
    fd: int = -1


class NewDirectories:
    """The directories created for one target, deepest last."""

    def __init__(self) -> None:
        self._open_dirs: list[_OpenDirectory] = []
        # Whether the target directory existed before; None until that is known.
        self.target_existed: bool | None = None

    def make_target(self, name: str) -> None:
        """Create the target directory `name` and its missing parents.

        Only directories that this call's own mkdir made are held, so a failed apply
        never removes one that existed (`missing/../existing` makes `missing` and finds
        `existing`) or that another process made at the same time.
        """
        missing: list[str] = []
        current = name
        while (created := self._make(current)) is None:
            head, tail = os.path.split(current)
            if not tail:
                head, tail = os.path.split(head)
            if not head or not tail:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), current)
            missing.append(current)
            current = head
        if not missing:
            self.target_existed = not created
            return
        for current in reversed(missing):
            if os.path.basename(current.rstrip(os.sep)) in (os.curdir, os.pardir):
                # `new/.` or `new/..` is a directory once `new` is, so the target of
                # `new/..` existed before.
                created = False
                continue
            created = self._make(current)
        self.target_existed = not created

    def _make(self, path: str) -> bool | None:
        """Create `path`; return whether it was made here, or None when its parent is missing."""
        trimmed = path.rstrip(os.sep) or os.sep
        try:
            parent_fd = os.open(os.path.dirname(trimmed) or os.curdir, _FLAGS)
        except FileNotFoundError:
            return None
        name = os.path.basename(trimmed)
        if not name or name in (os.curdir, os.pardir) or len(self._open_dirs) >= MAX_HELD:
            os.close(parent_fd)
            return self._make_unheld(path)
        entry = _OpenDirectory(parent_fd, name)
        # Held before the mkdir, so that an interrupt after it still finds the entry.
        self._open_dirs.append(entry)
        try:
            os.mkdir(name, dir_fd=parent_fd)
        except FileExistsError:
            self._drop(entry)
            if not os.path.isdir(path):
                raise
            return False
        except OSError:
            self._drop(entry)
            raise
        # An interrupt from here on, or one raised as mkdir returned, keeps the entry.
        entry.fd = os.open(name, _FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        return True

    def _make_unheld(self, path: str) -> bool | None:
        try:
            os.mkdir(path)
        except FileNotFoundError:
            return None
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return False
        return True

    def _drop(self, entry: _OpenDirectory) -> None:
        self._open_dirs.remove(entry)
        os.close(entry.parent_fd)

    def remove_empty(self) -> set[tuple[int, int]]:
        """Remove the held directories that are still there and empty, deepest first.

        Return the (device, inode) of each directory removed.
        """
        removed: set[tuple[int, int]] = set()
        for entry in reversed(self._open_dirs):
            try:
                found = os.stat(entry.name, dir_fd=entry.parent_fd, follow_symlinks=False)
                if not stat.S_ISDIR(found.st_mode):
                    continue
                if entry.fd >= 0:
                    opened = os.fstat(entry.fd)
                    if (found.st_dev, found.st_ino) != (opened.st_dev, opened.st_ino):
                        continue
                os.rmdir(entry.name, dir_fd=entry.parent_fd)
                removed.add((found.st_dev, found.st_ino))
            except OSError:
                continue
        return removed

    def close(self) -> None:
        """Close the descriptors that hold the directories."""
        entries, self._open_dirs = self._open_dirs, []
        for entry in entries:
            if entry.fd >= 0:
                os.close(entry.fd)
            os.close(entry.parent_fd)
