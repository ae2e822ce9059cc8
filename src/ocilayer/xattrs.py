"""The extended attributes a layer carries, and reading them from disk."""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Mapping

from ocilayer.entry import EMPTY_XATTRS

CAPABILITY = b"security.capability"


class XattrPolicy(enum.Enum):
    """The choice of xattrs an export carries as `SCHILY.xattr.*` records.

    ALL carries every xattr except host-specific ones (see `is_host_specific`).
    CAPABILITY carries only `security.capability`, as containerd and moby do.
    NONE carries none.
    """

    ALL = "all"
    CAPABILITY = "capability"
    NONE = "none"


def is_host_specific(name: bytes) -> bool:
    """Whether an xattr describes the host rather than the file, so it never enters a layer.

    SELinux labels and NFSv4 ACLs belong to the host's policy, and `overlay.*` in any
    namespace is overlayfs bookkeeping (whiteouts, opaque, redirects, origins).
    """
    if name in (b"security.selinux", b"system.nfs4_acl"):
        return True
    namespace, _, rest = name.partition(b".")
    return rest.startswith(b"overlay.") and namespace in (b"trusted", b"user")


_IGNORED_ERRNOS = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
_CAPABILITY_NAME = os.fsdecode(CAPABILITY)


def read_capability(full: bytes | int) -> bytes:
    """Return `security.capability` of a path (not following symlinks) or fd, or `b""`.

    The names are listed first: most files have no capability, and a listing that
    lacks it costs less than the OSError of a getxattr that finds nothing.
    """
    follow = isinstance(full, int)  # os rejects follow_symlinks=False with an fd
    try:
        if _CAPABILITY_NAME not in os.listxattr(full, follow_symlinks=follow):
            return b""
        return os.getxattr(full, CAPABILITY, follow_symlinks=follow)
    except OSError as error:
        if error.errno in _IGNORED_ERRNOS:
            return b""
        raise


def read_xattrs(full: bytes | int, policy: XattrPolicy) -> Mapping[bytes, bytes]:
    """Read the xattrs that `policy` keeps, of a path (not following symlinks) or an fd.

    An open file descriptor saves the kernel a path lookup per call. Empty values
    are left out: a PAX record with an empty value means "unset" to readers such as
    GNU tar, so it cannot carry them.
    """
    if policy is XattrPolicy.NONE:
        return EMPTY_XATTRS
    if policy is XattrPolicy.CAPABILITY:
        value = read_capability(full)
        return {CAPABILITY: value} if value else EMPTY_XATTRS
    # An fd is never a symlink, and os rejects follow_symlinks=False with one.
    follow = isinstance(full, int)
    try:
        names = os.listxattr(full, follow_symlinks=follow)
    except OSError as error:
        if error.errno in _IGNORED_ERRNOS:
            return EMPTY_XATTRS
        raise
    if not names:
        return EMPTY_XATTRS
    found: dict[bytes, bytes] = {}
    for text_name in names:
        name = os.fsencode(text_name)
        if is_host_specific(name):
            continue
        try:
            value = os.getxattr(full, name, follow_symlinks=follow)
        except OSError as error:
            if error.errno in _IGNORED_ERRNOS:
                continue
            raise
        if value:
            found[name] = value
    return found
