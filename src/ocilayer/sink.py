"""Output files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ocilayer.errors import OutputError
from ocilayer.logs import get_logger
from ocilayer.native import load_extension

log = get_logger("ocilayer")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def open_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open an output path for a layer: atomically for a file, directly for anything else.

    A symlink is followed, so `-o link` updates the file the link points at. A file
    with several hard links gets a new inode, so its other names keep the old
    content. A path that exists and is not a regular file (a device such as
    /dev/null, a FIFO) is written in place: renaming a temporary file over it would
    replace the device.
    """
    try:
        is_regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        is_regular = True
    if is_regular:
        with atomic_output(os.path.realpath(path)) as raw:
            yield raw
        return
    # open() follows the link, including /proc's magic links such as /dev/stdout.
    with _OutputFile(path, "wb") as raw:
        yield raw


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`, and rename it to `path` when the block succeeds.

    If the block raises (KeyboardInterrupt included), the temporary file is removed
    and `path` is left as it was. A new file gets mode 0666 minus the umask, as a
    file created with open() would. A file that is replaced keeps its permission
    bits, and its owner when this process may give it. A file that this process may
    not write is not replaced, because `tar -cf` or `cp` would not overwrite it
    either. The data of a replacing file is sent to disk while it is written (see
    `_EarlyWriteback`).
    """
    target = os.fspath(path)
    try:
        old: os.stat_result | None = os.stat(target)
    except OSError:  # missing, or unreadable: creating the temporary file reports it
        old = None
    replaces = old is not None and stat.S_ISREG(old.st_mode)
    if replaces and not os.access(target, os.W_OK):
        raise OutputError(f"{target!r} is read-only; make it writable or remove it first")
    handle, temporary = _create_beside(target)
    try:
        if old is not None and replaces:
            with contextlib.suppress(PermissionError):
                os.fchown(handle, old.st_uid, old.st_gid)
            os.fchmod(handle, old.st_mode & 0o777)
        else:
            os.fchmod(handle, 0o666 & ~_umask())
        start = _writeback_start(handle) if replaces else None
        raw = _OutputFile(handle, "wb") if start is None else _EarlyWriteback(handle, start)
        with raw:
            yield raw
        try:
            os.replace(temporary, target)
        except OSError as error:
            raise OutputError(
                f"cannot replace {target!r} with the new layer: {error.strerror or error}"
            ) from error
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: str) -> None:
    """Remove a temporary output; a failure is logged, so that the first error is raised."""
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot remove %r: %s; remove it by hand", temporary, error.strerror)


def _create_beside(target: str) -> tuple[int, str]:
    """Create a new file `.<name>.<random>.partial` beside `target`; return fd and path.

    tempfile.mkstemp does the same, but importing tempfile (with shutil and random)
    costs every command about 5 ms of start-up.
    """
    directory = os.path.dirname(os.path.abspath(target))
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        name = f".{os.path.basename(target)}.{os.urandom(6).hex()}.partial"
        temporary = os.path.join(directory, name)
        try:
            return os.open(temporary, flags, 0o600), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target!r} after 100 tries")


# The f_type that fstatfs gives for ext2, ext3 and ext4.
_EXT4_MAGIC = 0xEF53


def _writeback_start(handle: int) -> Callable[[int, int, int], None] | None:
    """Return the call that starts a range's writeback when `handle` is on ext4, or None.

    Other filesystems do not write the data in the rename, so starting it early would
    only add work.
    """
    # NOTE: an ext4 mounted with noauto_da_alloc does not write the data in the rename,
    # and the mount options are not read here, so there the early start adds work.
    module = load_extension("_writeback")
    if module is None or module.filesystem_magic(handle) != _EXT4_MAGIC:
        return None
    return module.start  # type: ignore[no-any-return]


class _OutputFile(io.FileIO):
    """An unbuffered output file whose `write` writes every byte or raises OSError.

    `os.write` may write less than it was given, for example up to a file size limit
    (RLIMIT_FSIZE), and the layer's writers count every byte as written.
    """

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        with memoryview(data) as view, view.cast("B") as octets:
            total = len(octets)
            written = super().write(octets) or 0
            while written < total:
                count = super().write(octets[written:])
                if not count:
                    raise OSError(errno.EIO, "a write to the output wrote nothing")
                written += count
        return total


class _EarlyWriteback(_OutputFile):
    """A file that starts the writeback of each STEP bytes once they are written.

    With its default auto_da_alloc option, ext4 writes all of a new file's data in the
    rename that replaces an older file. For an 84 MB layer that took 60 ms at the end
    of the run. Started while the layer grows, the same writes overlap the export.
    """

    STEP = 8 << 20

    def __init__(self, handle: int, start: Callable[[int, int, int], None]) -> None:
        super().__init__(handle, "wb")
        self._start: Callable[[int, int, int], None] | None = start
        self._written = 0
        self._sent = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        count = super().write(data)
        self._written += count
        if self._written - self._sent >= self.STEP and self._start is not None:
            try:
                self._start(self.fileno(), self._sent, self._written - self._sent)
            except OSError:  # The rename writes the data in any case.
                self._start = None
            self._sent = self._written
        return count
