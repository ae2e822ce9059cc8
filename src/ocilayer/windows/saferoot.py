"""Names of a Windows layer, checked and opened relative to a root without leaving it.

hcsshim opens every path of an import relative to the layer root with
`OBJ_DONT_REPARSE`, so no component may be a reparse point. It rejects names with a
leading `\\`, with NUL, and with `:`, which also catches drive letters and stray
alternate data streams. The same rules hold here, and on POSIX hosts every component is opened with
`O_NOFOLLOW` relative to its parent's descriptor, so a symbolic link cannot lead out.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from ocilayer.errors import UnsafePathError, show

# The longest path the Windows API takes, in UTF-16 code units.
MAX_PATH_UNITS = 32767

_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def show_name(name: str) -> str:
    """Return a layer name quoted for a message, escaped as `errors.show` escapes bytes."""
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte decodes to
        encoded = name.encode("utf-8", "backslashreplace")
    return show(encoded)


def clean_layer_name(name: str) -> str:
    """Check a relative layer path and return it cleaned, with `\\` separators.

    Either separator is accepted. Empty and `.` components are dropped, as Go's
    `filepath.Clean` drops them. Raises UnsafePathError for an absolute name, a `..`
    component, `:` or NUL, or a name too long for the Windows API.
    """
    text = name.replace("/", "\\")
    if text.startswith("\\"):
        raise UnsafePathError(f"{show_name(name)}: absolute names are not allowed in a layer")
    if ":" in text:
        raise UnsafePathError(f"{show_name(name)}: ':' is not allowed in a layer path")
    if "\x00" in text:
        raise UnsafePathError(f"{show_name(name)}: NUL is not allowed in a layer path")
    parts = [part for part in text.split("\\") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{show_name(name)}: '..' is not allowed in a layer path")
    if not parts:
        raise UnsafePathError(f"{show_name(name)}: the layer root itself cannot be an entry")
    cleaned = "\\".join(parts)
    if len(cleaned.encode("utf-16-le", "surrogatepass")) // 2 > MAX_PATH_UNITS:
        raise UnsafePathError(
            f"{show_name(name)}: longer than {MAX_PATH_UNITS} UTF-16 units, the Windows limit"
        )
    return cleaned


def clean_link_target(name: str, target: str) -> str:
    """Clean a hard link target with clean_layer_name, naming both paths when it is unsafe."""
    try:
        return clean_layer_name(target)
    except UnsafePathError as error:
        reason = str(error).removeprefix(f"{show_name(target)}: ")
        raise UnsafePathError(
            f"invalid hard link {show_name(name)} -> {show_name(target)}: {reason}"
        ) from error


def has_path_prefix(name: str, prefix: str) -> bool:
    """Return whether `name` is strictly below `prefix` (case-sensitive, as hcsshim compares)."""
    return name.startswith(prefix + "\\")


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class LayerRoot:
    """A directory that entries are written into, by cleaned relative names."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, _DIRECTORY_FLAGS)
        self._cached: tuple[str, int] | None = None

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LayerRoot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def host_path(self, name: str) -> str:
        """Return the host path of a cleaned name, for reading and for messages."""
        return os.path.join(self.path, *name.split("\\"))

    @contextlib.contextmanager
    def parent(self, name: str, *, cache: bool = True) -> Iterator[tuple[int, str]]:
        """Open the parent directory of `name` without following links.

        Yields the parent's descriptor and the base name. Raises UnsafePathError when
        a component is a symbolic link, and FileNotFoundError when one is missing. With
        `cache`, the descriptor stays open for the next name in the same directory
        (entries come grouped by directory), until another directory or close().
        """
        directory, _, base = name.rpartition("\\")
        if cache and self._cached is not None and self._cached[0] == directory:
            yield self._cached[1], base
            return
        fd = self._open_chain(directory, name)
        if not cache:
            try:
                yield fd, base
            finally:
                os.close(fd)
            return
        if self._cached is not None:
            os.close(self._cached[1])
        self._cached = (directory, fd)
        yield fd, base

    def _open_chain(self, directory: str, name: str) -> int:
        fd = os.dup(self._fd)
        try:
            for part in directory.split("\\") if directory else []:
                try:
                    child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                except OSError as error:
                    if _is_link(part, fd):
                        raise UnsafePathError(
                            f"{show_name(name)}: component {show_name(part)} is a link; "
                            "layers may not write through links"
                        ) from error
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def mkdir(self, name: str) -> None:
        """Create a directory; its parent must exist and the name must be new."""
        with self.parent(name) as (fd, base):
            os.mkdir(base, 0o755, dir_fd=fd)

    def create(self, name: str) -> int:
        """Create a new regular file for writing and return its descriptor."""
        with self.parent(name) as (fd, base):
            return os.open(base, _CREATE_FLAGS, 0o644, dir_fd=fd)

    def open_directory(self, name: str) -> int:
        """Open an existing directory (not through a link) and return its descriptor."""
        with self.parent(name) as (fd, base):
            return os.open(base, _DIRECTORY_FLAGS, dir_fd=fd)

    def link(self, target: str, name: str) -> None:
        """Create `name` as a new hard link to `target`, both relative to this root."""
        # The target's parent is opened uncached, because the name's may replace the cache.
        with (
            self.parent(target, cache=False) as (target_fd, target_base),
            self.parent(name) as (fd, base),
        ):
            os.link(target_base, base, src_dir_fd=target_fd, dst_dir_fd=fd, follow_symlinks=False)

    def lexists(self, name: str) -> bool:
        try:
            with self.parent(name) as (fd, base):
                os.stat(base, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True
