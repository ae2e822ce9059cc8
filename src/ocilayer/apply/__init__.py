"""Apply a layer tar stream to a directory: a root filesystem or an overlay upper directory.

`import_layer_from_tar` has the shape of hcsshim's `ImportLayerFromTar(ctx, r, path,
parentLayerPaths)`. It reads the stream once and decompresses gzip or zstd by their
magic bytes. It applies every entry and hashes the whole uncompressed stream, bytes
after the end-of-archive marker included, into the diff_id. It returns the number of
file content bytes written together with that diff_id.

Path safety (see `ocilayer.apply.paths`): a name with a leading `/` is taken relative
to the target, and a name or hardlink target whose `..` climbs above the root is
rejected with UnsafePathError. Symlinks on the way to an entry are followed but clamped
to the root, so an absolute or escaping link resolves inside the target, never outside.
Malformed whiteouts (`.wh.`, `.wh..`, `.wh...`) and duplicate paths are rejected. A
failed apply leaves the target partly applied (whole files only, never a truncated
one), so the caller should discard it, as containerd discards an unfinished snapshot.
Directories that the call created for the target, the target included, are removed
again when the apply fails while they are still empty (see `ocilayer.apply.target`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO, Literal, NamedTuple, NoReturn

from ocilayer.apply.applier import Applier, ApplyOptions
from ocilayer.apply.errors import (
    NEEDS_PRIVILEGES,
    ApplyError,
    ApplyInterrupted,
    DiffIdMismatchError,
    Hint,
)
from ocilayer.apply.filerun import FileRuns
from ocilayer.apply.rootfs import RootfsApplier
from ocilayer.apply.target import NewDirectories
from ocilayer.compression import Compression, open_decompressor
from ocilayer.digest import HashingReader
from ocilayer.errors import Cancelled, TarFormatError, UnsafePathError, show
from ocilayer.progress import Progress
from ocilayer.tarformat.reader import TarReader

if TYPE_CHECKING:
    import threading

__all__ = [
    "AppliedLayer",
    "ApplyError",
    "DiffIdMismatchError",
    "import_layer_from_tar",
]

Target = Literal["rootfs", "overlay"]

_CAP_MKNOD = 27
_HINTS = {
    errno.EPERM: NEEDS_PRIVILEGES,
    errno.EACCES: Hint.same("check that this user may write to the target, or apply as root"),
    errno.ENOSPC: Hint.same("the target filesystem is full"),
    errno.EDQUOT: Hint.same("the disk quota of the target is exhausted"),
    errno.EROFS: Hint.same("the target is on a read-only filesystem"),
}


class AppliedLayer(NamedTuple):
    """The result of an apply: file content bytes written, and the layer's diff_id.

    `diff_id` is None when the apply was asked for no digest.
    """

    size: int
    diff_id: str | None
    compression: Compression


def import_layer_from_tar(
    reader: BinaryIO,
    path: str | os.PathLike[str],
    parent_layer_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    target: Target = "rootfs",
    rootless: bool = False,
    skip_devices: bool = False,
    cancel: threading.Event | None = None,
    expected_diff_id: str | None = None,
    progress: Progress | None = None,
    digest: bool = True,
) -> AppliedLayer:
    """Apply the layer tar stream `reader` (plain, gzip or zstd) to the directory `path`.

    Args:
        reader: the layer blob, read once from its current position to its end.
        path: the target directory, created if missing.
        parent_layer_paths: for an overlay target, the layer directories below it,
            lowest first; they are only read.
        target: "rootfs" for a directory holding the merged lower layers, "overlay"
            for an overlayfs upper directory.
        rootless: apply no ownership, skip xattrs that need privileges, and (overlay)
            write whiteouts and opaque markers in the `user.` xattr namespace. Own
            directories without owner rwx get it while the layer is applied, and
            their modes are restored at the end.
        skip_devices: skip device nodes that cannot be created without CAP_MKNOD,
            with a warning, instead of failing.
        cancel: checked before each entry and while file data is written; when set,
            the apply stops and raises Cancelled.
        expected_diff_id: when given, the diff_id (`sha256:<hex>`) the stream must have.
        progress: when given, updated before each entry with the entries applied
            and the tar bytes read so far.
        digest: compute the diff_id; when false, no sha256 is computed, the result's
            diff_id is None, and `expected_diff_id` must not be given.

    Raises:
        TarFormatError: the stream is truncated or corrupt, or contains a duplicate path.
        UnsafePathError: an entry's name or hardlink target leaves the root, or a
            whiteout name is malformed.
        ApplyError: an entry could not be created; the message names it, and
            `cli_message()` gives it with command-line options in the hint.
        DiffIdMismatchError: the stream's diff_id is not `expected_diff_id`.
        Cancelled: `cancel` was set.
    """
    if target not in ("rootfs", "overlay"):
        raise ValueError(f"invalid target {target!r}: use 'rootfs' or 'overlay'")
    if parent_layer_paths and target != "overlay":
        raise ValueError("parent layers apply to overlay targets only")
    if expected_diff_id is not None and not digest:
        raise ValueError("expected_diff_id needs digest=True: the diff_id is computed to check it")
    options = ApplyOptions(rootless=rootless, skip_devices=skip_devices)

    def check_cancelled() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(
                f"apply to {os.fspath(path)!r} was cancelled; the target is partly "
                "applied, so discard it"
            )

    target_name = os.fspath(path)
    new_dirs = NewDirectories()
    try:
        return _apply(reader, target_name, new_dirs, parent_layer_paths, target, options,
                      rootless, progress, digest, expected_diff_id, check_cancelled)  # fmt: skip
    finally:
        new_dirs.close()


def _apply(
    reader: BinaryIO,
    target_name: str,
    new_dirs: NewDirectories,
    parent_layer_paths: Sequence[str | os.PathLike[str]],
    target: Target,
    options: ApplyOptions,
    rootless: bool,
    progress: Progress | None,
    digest: bool,
    expected_diff_id: str | None,
    check_cancelled: Callable[[], None],
) -> AppliedLayer:
    try:
        root_fd = -1
        try:
            new_dirs.make_target(target_name)
            root_fd = os.open(target_name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            root = os.fstat(root_fd)
        except BaseException as error:
            if root_fd >= 0:
                os.close(root_fd)
            replacement = _after_failure(error, new_dirs, target_name, None)
            if replacement is not None:
                raise replacement from None
            raise
    except FileExistsError:
        raise ApplyError(
            f"target {target_name!r} exists and is not a directory; give the directory "
            "to apply the layer into"
        ) from None
    except NotADirectoryError:
        raise ApplyError(
            f"target {target_name!r} is not a directory, or one of its parents is a "
            "file; give a directory path to apply the layer into"
        ) from None
    except OSError as error:
        raise ApplyError(
            f"cannot create or open the target directory {target_name!r}: "
            f"{error.strerror or error}",
            hint=_HINTS.get(error.errno or 0),
        ) from error
    root_id = (root.st_dev, root.st_ino)
    lower = None
    applier: Applier | None = None
    written = 0
    try:
        if target == "overlay":
            # Loaded here: only an overlay target reads lower layers.
            from ocilayer.apply.lower import LowerView
            from ocilayer.apply.overlay import OverlayApplier

            lower = LowerView(parent_layer_paths)

            privileged = (
                not rootless and _in_initial_user_namespace() and _has_capability(_CAP_MKNOD)
            )
            applier = OverlayApplier(
                root_fd,
                options,
                lower,
                xattr_namespace=b"trusted." if privileged else b"user.",
                xwhiteouts=not privileged,
                check_cancelled=check_cancelled,
            )
        else:
            applier = RootfsApplier(root_fd, options, check_cancelled)
        stream, compression = open_decompressor(reader)
        hashing = HashingReader(stream, hashing=digest)
        tar = TarReader(hashing)
        if progress is not None:
            _apply_entries(tar, applier, _reporting(check_cancelled, progress, hashing))
        else:
            _apply_entries(tar, applier, lambda _count: check_cancelled())
        hashing.drain()
        if progress is not None:
            progress.update(progress.entries, hashing.size)
        written = applier.bytes_written
    except BaseException as error:
        # A stream rejected before its first entry leaves no empty target behind.
        replacement = _after_failure(error, new_dirs, target_name, root_id)
        if replacement is not None:
            raise replacement from None
        raise
    finally:
        if applier is not None:
            applier.close()
        if lower is not None:
            lower.close()
        os.close(root_fd)

    diff_id = hashing.digest
    if expected_diff_id is not None and diff_id != expected_diff_id:
        assert diff_id is not None  # digest is true whenever expected_diff_id is given
        removed = new_dirs.remove_empty()  # an empty layer left the new target empty
        raise DiffIdMismatchError(expected_diff_id, diff_id, target_removed=root_id in removed)
    return AppliedLayer(written, diff_id, compression)


def _after_failure(
    error: BaseException,
    new_dirs: NewDirectories,
    target_name: str,
    root_id: tuple[int, int] | None,
) -> BaseException | None:
    """Remove the empty new directories; return the error to raise instead of `error`, if any.

    `root_id` is the target's (device, inode) once it is open, and None before.
    """
    removed = new_dirs.remove_empty()
    if root_id is not None:
        target_removed = root_id in removed
    else:
        # Stopped while the target was being made: gone unless it existed before.
        target_removed = new_dirs.target_existed is not True and not os.path.lexists(target_name)
    if isinstance(error, Cancelled) and target_removed:
        return Cancelled(
            f"apply to {target_name!r} was cancelled before its first entry; "
            "the new target was removed"
        )
    if isinstance(error, KeyboardInterrupt) and not isinstance(error, ApplyInterrupted):
        return ApplyInterrupted(target_name, target_removed=target_removed)
    return None


def _reporting(
    check_cancelled: Callable[[], None], progress: Progress, hashing: HashingReader
) -> Callable[[int], None]:
    """Wrap the cancellation check so that it also updates `progress`.

    The check runs before each entry, and after each batch of entries created in C
    with the number of entries in the batch.
    """
    entries = 0

    def check(count: int) -> None:
        nonlocal entries
        check_cancelled()
        progress.update(entries, hashing.size)
        entries += count

    return check


def _apply_entries(tar: TarReader, applier: Applier, check: Callable[[int], None]) -> None:
    runs = FileRuns.start(applier)
    for entry in tar:
        check(1)
        try:
            applier.apply(entry)
        except (UnsafePathError, TarFormatError, ApplyError, OSError, ValueError) as error:
            _raise_with_context(error, tar)
        if runs is None:
            continue
        try:
            runs.follow(tar, entry, check)
        except OSError as error:
            # NOTE: a run reads up to about 0.5 MiB ahead, so a read error of the source
            # comes up sooner than without C, named after the last entry applied. A
            # truncated stream found there is raised as the next header read raises it.
            _raise_with_context(error, tar)
    check(0)
    try:
        applier.finish()
    except OSError as error:
        raise ApplyError(
            f"setting directory times and modes after the last entry failed: "
            f"{error.strerror or error}",
            hint=_HINTS.get(error.errno or 0),
        ) from error


def _raise_with_context(error: Exception, tar: TarReader) -> NoReturn:
    """Raise `error` again with the failing entry's name and offset in front."""
    context = f"entry {show(tar.entry_name)} (offset {tar.entry_offset})"
    if isinstance(error, (UnsafePathError, TarFormatError)):
        raise type(error)(f"{context}: {error}") from error
    if isinstance(error, ApplyError):
        raise ApplyError(
            f"{context}: {error.reason}", tar.entry_name, tar.entry_offset, hint=error.hint
        ) from error
    if isinstance(error, OSError):
        raise ApplyError(
            f"{context}: {error.strerror or error}",
            tar.entry_name,
            tar.entry_offset,
            hint=_HINTS.get(error.errno or 0),
        ) from error
    raise ApplyError(f"{context}: {error}", tar.entry_name, tar.entry_offset) from error


def _in_initial_user_namespace() -> bool:
    """Return whether the process runs in the host's user namespace.

    In another user namespace every capability shows as effective, but creating device
    nodes and setting `trusted.*` xattrs still fail.
    """
    try:
        with open("/proc/self/uid_map", encoding="ascii") as uid_map:
            return uid_map.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def _has_capability(number: int) -> bool:
    """Return whether the process has a capability in its effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> number & 1)
    except OSError:
        pass
    return os.geteuid() == 0
