"""The merged view of the parent layers below an overlay upper directory.

The parent layers are overlay layer directories, lowest first, as overlayfs stacks them.
In each, a whiteout hides the name in the layers below; it is a 0/0 character device,
or a zero-size file with an `overlay.whiteout` xattr. A non-directory hides everything
below its path, and a directory with `overlay.opaque=y` hides what the layers below
contain inside it. Both the `trusted.` and the `user.` xattr namespaces count.
Lookups open every component with O_NOFOLLOW, because overlayfs never follows a
symlink from one layer into another either.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Sequence
from typing import NamedTuple

from ocilayer.apply.errors import UNREADABLE_PARENT, ApplyError
from ocilayer.apply.metadata import proc_path
from ocilayer.apply.paths import list_directory, lstat_at, open_directory
from ocilayer.errors import show

_NAMESPACES = (b"trusted.", b"user.")


class Visibility(enum.Enum):
    """Visibility of a path in the merged parent layers."""

    # No layer has the path; the layers below may show the same name elsewhere.
    MISSING = enum.auto()
    # The top-most layer that mentions the path has a whiteout there.
    WHITEOUT = enum.auto()
    # A whiteout, a file or an opaque directory higher up hides the path.
    HIDDEN = enum.auto()
    FOUND = enum.auto()


class LowerFile(NamedTuple):
    """A file of a parent layer; `path` names it through /proc while the view is open."""

    stat: os.stat_result
    dir_fd: int
    name: bytes

    @property
    def path(self) -> bytes:
        return proc_path(self.dir_fd, self.name)

    def close(self) -> None:
        os.close(self.dir_fd)


def is_whiteout(dir_fd: int, name: bytes, st: os.stat_result) -> bool:
    """Return whether `name` is an overlay whiteout, in either form."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    return any(
        _has_xattr(proc_path(dir_fd, name), namespace + b"overlay.whiteout")
        for namespace in _NAMESPACES
    )


def is_opaque(dir_fd: int, name: bytes) -> bool:
    """Return whether the directory `name` carries `overlay.opaque=y`."""
    path = proc_path(dir_fd, name)
    return any(_get_xattr(path, namespace + b"overlay.opaque") == b"y" for namespace in _NAMESPACES)


def _get_xattr(path: bytes, key: bytes) -> bytes | None:
    try:
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return None
        raise


def _has_xattr(path: bytes, key: bytes) -> bool:
    return _get_xattr(path, key) is not None


def _open_layer(path: bytes) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ApplyError(
            f"parent layer directory {show(path)} does not exist; pass the directories of "
            "the layers below the target, lowest first"
        ) from None
    except NotADirectoryError:
        raise ApplyError(
            f"parent layer {show(path)} is not a directory; pass a layer directory"
        ) from None
    except OSError as error:
        raise ApplyError(
            f"cannot open parent layer directory {show(path)}: {error.strerror or error}"
        ) from error


def _unreadable(path: bytes, error: OSError) -> ApplyError:
    return ApplyError(
        f"cannot read {show(path or b'.')} in the parent layers: {error.strerror or error}",
        hint=UNREADABLE_PARENT,
    )


class LowerView:
    """Read-only lookups in the merged parent layers, given lowest first."""

    def __init__(self, parent_paths: Sequence[str | bytes | os.PathLike[str]]) -> None:
        self._layer_fds: list[int] = []
        try:
            for path in parent_paths:
                self._layer_fds.append(_open_layer(os.fsencode(path)))
        except BaseException:
            self.close()
            raise

    def __bool__(self) -> bool:
        return bool(self._layer_fds)

    def close(self) -> None:
        for fd in self._layer_fds:
            os.close(fd)
        self._layer_fds.clear()

    def lookup(self, path: bytes) -> tuple[Visibility, LowerFile | None]:
        """Find what the merged parent layers show at the real path `path`.

        The caller closes the returned file.
        """
        components = path.split(b"/")
        for layer_fd in reversed(self._layer_fds):
            try:
                visibility, found = self._lookup_in(layer_fd, components)
            except OSError as error:
                raise _unreadable(path, error) from error
            if visibility is not Visibility.MISSING:
                return visibility, found
        return Visibility.MISSING, None

    def list_directory(self, path: bytes) -> list[bytes]:
        """Return the names the merged parent layers show in the directory `path`."""
        names: set[bytes] = set()
        hidden: set[bytes] = set()
        components = path.split(b"/") if path else []
        for layer_fd in reversed(self._layer_fds):
            try:
                visibility, directory = self._open_in(layer_fd, components)
            except OSError as error:
                raise _unreadable(path, error) from error
            if directory is None:
                if visibility is Visibility.MISSING:
                    continue
                break
            fd, opaque = directory
            try:
                for name in list_directory(fd):
                    if name in names or name in hidden:
                        continue
                    st = lstat_at(fd, name)
                    if st is not None and is_whiteout(fd, name, st):
                        hidden.add(name)
                    else:
                        names.add(name)
            finally:
                os.close(fd)
            if opaque:
                break
        return sorted(names)

    def _lookup_in(
        self, layer_fd: int, components: list[bytes]
    ) -> tuple[Visibility, LowerFile | None]:
        visibility, directory = self._open_in(layer_fd, components[:-1])
        if directory is None:
            return visibility, None
        fd, opaque = directory
        name = components[-1]
        st = lstat_at(fd, name)
        if st is None:
            os.close(fd)
            return (Visibility.HIDDEN if opaque else Visibility.MISSING), None
        if is_whiteout(fd, name, st):
            os.close(fd)
            return Visibility.WHITEOUT, None
        return Visibility.FOUND, LowerFile(st, fd, name)

    def _open_in(
        self, layer_fd: int, components: list[bytes]
    ) -> tuple[Visibility, tuple[int, bool] | None]:
        """Open a directory of one layer; also return whether it or an ancestor is opaque."""
        fd = os.dup(layer_fd)
        opaque = False
        for component in components:
            st = lstat_at(fd, component)
            if st is None or not stat.S_ISDIR(st.st_mode):
                hides = st is not None or opaque
                os.close(fd)
                return (Visibility.HIDDEN if hides else Visibility.MISSING), None
            opaque = opaque or is_opaque(fd, component)
            child = open_directory(fd, component)
            os.close(fd)
            fd = child
        return Visibility.FOUND, (fd, opaque)
