"""Set the metadata of applied files: owner, xattrs, mode and times, in that order.

The order matters: chown clears setuid and setgid bits and the `security.capability`
xattr, so the mode and the capability come after it, and the capability is the last
xattr set. Times come last of all because every other change touches the ctime only,
but creating children changes a directory's mtime, so directory times are set once
more after the whole layer (see the applier).

Nothing here follows a symlink: files are changed through a descriptor, or by name
relative to a directory descriptor with `follow_symlinks=False`, and a symlink never
gets chmod (Linux has no mode on symlinks).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable

from ocilayer.apply.errors import UNMAPPED_ID, ApplyError
from ocilayer.entry import Entry, FileType
from ocilayer.errors import show
from ocilayer.logs import get_logger
from ocilayer.xattrs import is_host_specific

logger = get_logger("ocilayer.apply")

CAPABILITY_XATTR = b"security.capability"
# Overlay-private xattrs in a tar could forge whiteouts, opaque directories or
# redirects in an overlay upper directory, so they are never applied.
_OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
# Valid ids are 0 to 2^32 - 2: chown takes 2^32 - 1 to mean "leave unchanged".
MAX_ID = (1 << 32) - 2


def proc_path(dir_fd: int, name: bytes) -> bytes:
    """Name `name` in `dir_fd` through /proc, for calls that take no directory descriptor.

    The kernel follows the /proc link of the directory to the directory itself, and the
    caller passes `follow_symlinks=False` so that `name` is not followed.
    NOTE: so setting xattrs needs /proc mounted; without it they fail with ENOENT.
    """
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


class MetadataWriter:
    """Apply an entry's metadata as far as the privileges and the options allow.

    With `rootless`, ownership is not applied (files keep the applying user), and xattrs
    that need privileges are skipped with a warning. Warnings go to the
    `ocilayer.apply` logger, once for each kind of problem and xattr name, with a
    count at the end (see `log_summary`).
    """

    def __init__(self, *, rootless: bool) -> None:
        self.rootless = rootless
        self._own_ids = (os.geteuid(), os.getegid())
        self._warned: dict[tuple[str, bytes], int] = {}

    def warn(self, kind: str, key: bytes, message: str) -> None:
        count = self._warned.get((kind, key), 0)
        self._warned[(kind, key)] = count + 1
        if count == 0:
            logger.warning("%s", message)

    def log_summary(self) -> None:
        for (kind, key), count in sorted(self._warned.items()):
            if count > 1:
                subject = f"{kind} {show(key)}" if key else kind
                logger.warning("%s: %d entries in all", subject, count)

    def creates_with_mode(self, entry: Entry, dir_fd: int) -> bool:
        """Return whether the regular file of `entry` is created in `dir_fd` with its mode.

        That is a file without xattrs or special bits that this process's ids are to
        own, in a directory of the process's group (any file without xattrs or special
        bits, rootless). `apply_to_created` then sets its metadata. Any other file is
        created with mode 0600, and `apply_to_fd` sets everything. In a directory of
        another group, a setgid bit or the grpid mount option would give that group
        the file's group bits until the fchown, while the data is written.
        """
        if entry.mode & 0o7000 or entry.xattrs:
            return False
        if self.rootless:
            return True
        return (entry.uid, entry.gid) == self._own_ids and os.fstat(dir_fd).st_gid == entry.gid

    def apply_to_created(self, fd: int, entry: Entry) -> None:
        """Set the metadata of the regular file `fd`, created with the entry's mode.

        The umask may have cleared some of the mode's bits, so one fstat shows whether
        fchmod is needed, and fchown too, in case the create gave another owner.
        """
        st = os.fstat(fd)
        if not self.rootless and (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            _chown(entry, os.fchown, fd)
        if stat.S_IMODE(st.st_mode) != entry.mode:
            os.fchmod(fd, entry.mode)
        mtime = entry.mtime_ns
        atime = mtime if entry.atime_ns is None else entry.atime_ns
        os.utime(fd, ns=(atime, mtime))

    def apply_to_fd(self, fd: int, entry: Entry) -> None:
        """Set the metadata of the open regular file `fd`."""
        self.apply_all_but_times(fd, entry, entry.mode)
        mtime = entry.mtime_ns
        atime = mtime if entry.atime_ns is None else entry.atime_ns
        os.utime(fd, ns=(atime, mtime))

    def apply_all_but_times(self, fd: int, entry: Entry, mode: int) -> None:
        """Set the owner, xattrs and `mode` of the open file `fd`, but not its times.

        The applier sets a new directory's times after the last entry of the layer,
        because every child created in it changes its mtime.
        """
        if not self.rootless:
            _chown(entry, os.fchown, fd)
        if entry.xattrs:
            for key, value in self._xattrs(entry):
                self._set_xattr(fd, key, value, entry)
        os.fchmod(fd, mode)

    def apply_at(
        self,
        dir_fd: int,
        name: bytes,
        entry: Entry,
        *,
        mode: int | None = None,
        replace_xattrs: bool = False,
    ) -> None:
        """Set the metadata of `name` in `dir_fd` without following it.

        `mode` overrides the entry's mode (the applier keeps directories writable
        until the end of a rootless apply). With `replace_xattrs`, xattrs that the
        entry does not carry are removed first, except host-specific ones.
        """
        if not self.rootless:
            _chown(entry, _chown_at, name, dir_fd)
        path = proc_path(dir_fd, name)
        if replace_xattrs:
            self._remove_other_xattrs(path, entry)
        for key, value in self._xattrs(entry):
            self._set_xattr(path, key, value, entry)
        if entry.type is not FileType.SYMLINK:
            os.chmod(name, entry.mode if mode is None else mode, dir_fd=dir_fd,
                     follow_symlinks=False)  # fmt: skip
        os.utime(name, ns=entry_times(entry), dir_fd=dir_fd, follow_symlinks=False)

    def _remove_other_xattrs(self, path: bytes, entry: Entry) -> None:
        """Remove the xattrs of `path` that `entry` does not carry.

        SELinux labels, NFSv4 ACLs and overlay xattrs stay: they belong to the host or
        to overlayfs, and no layer carries them.
        """
        for key in os.listxattr(path, follow_symlinks=False):
            name = os.fsencode(key)
            if name in entry.xattrs or is_host_specific(name):
                continue
            try:
                os.removexattr(path, key, follow_symlinks=False)
            except OSError as error:
                if error.errno == errno.ENODATA:
                    continue
                if not self._tolerable(error, name, entry):
                    raise
                self.warn(
                    "kept xattr",
                    name,
                    f"entry {show(entry.path)}: could not remove xattr {show(name)} "
                    f"({os.strerror(error.errno or 0)}); kept",
                )

    def _xattrs(self, entry: Entry) -> Iterable[tuple[bytes, bytes]]:
        """Yield the xattrs to set, `security.capability` last."""
        capability = None
        for key, value in entry.xattrs.items():
            if key.startswith(_OVERLAY_XATTR_PREFIXES):
                self.warn(
                    "skipped overlay xattr",
                    key,
                    f"entry {show(entry.path)}: skipped the overlay-private xattr {show(key)}; "
                    "a layer may not set overlay whiteouts or redirects directly",
                )
            elif key == CAPABILITY_XATTR:
                capability = value
            else:
                yield key, value
        if capability is not None:
            yield CAPABILITY_XATTR, capability

    def _set_xattr(self, target: int | bytes, key: bytes, value: bytes, entry: Entry) -> None:
        """Set one xattr on a descriptor or, without following it, on a path."""
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as error:
            if not self._tolerable(error, key, entry):
                raise
            reason = os.strerror(error.errno) if error.errno else str(error)
            self.warn(
                "skipped xattr",
                key,
                f"entry {show(entry.path)}: could not set xattr {show(key)} ({reason}); skipped",
            )

    def _tolerable(self, error: OSError, key: bytes, entry: Entry) -> bool:
        """Return whether a failed setxattr may be skipped with a warning.

        A filesystem without xattr support is skipped. So are user.* xattrs on files
        other than regular files and directories, because Linux never allows them, and
        in a rootless apply, anything that needs privileges.
        """
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return True
        if error.errno != errno.EPERM:
            return False
        if self.rootless:
            return True
        return key.startswith(b"user.") and entry.type not in (
            FileType.REGULAR,
            FileType.DIRECTORY,
        )


def _chown(entry: Entry, chown: Callable[..., None], *target: object) -> None:
    """Call `chown(*target, uid, gid)` with the entry's checked owner."""
    uid, gid = checked_ids(entry)
    try:
        chown(*target, uid, gid)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        raise ApplyError(
            f"cannot give {show(entry.path)} the owner {uid}:{gid}: the id is not mapped in this "
            "user namespace",
            hint=UNMAPPED_ID,
        ) from None


def _chown_at(name: bytes, dir_fd: int, uid: int, gid: int) -> None:
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def checked_ids(entry: Entry) -> tuple[int, int]:
    uid, gid = entry.uid, entry.gid
    if not 0 <= uid <= MAX_ID:
        raise ValueError(f"uid {uid} is out of range (0 to {MAX_ID})")
    if not 0 <= gid <= MAX_ID:
        raise ValueError(f"gid {gid} is out of range (0 to {MAX_ID})")
    return uid, gid


def entry_times(entry: Entry) -> tuple[int, int]:
    """Return (atime, mtime) in nanoseconds; an entry without atime gets its mtime."""
    atime = entry.mtime_ns if entry.atime_ns is None else entry.atime_ns
    return atime, entry.mtime_ns


def copy_xattrs(source: bytes, destination: bytes, *, skip_trusted: bool) -> None:
    """Copy the xattrs of one path to another, neither followed, except overlay ones."""
    for key in os.listxattr(source, follow_symlinks=False):
        name = key.encode("utf-8", "surrogateescape")
        if name.startswith(_OVERLAY_XATTR_PREFIXES):
            continue
        if skip_trusted and name.startswith(b"trusted."):
            continue
        value = os.getxattr(source, key, follow_symlinks=False)
        try:
            os.setxattr(destination, key, value, follow_symlinks=False)
        except OSError as error:
            if error.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
