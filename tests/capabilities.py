"""Drop capabilities from the calling thread for a test, so that root meets permission checks.

capset(2) changes only the calling thread, and threads it starts later inherit the
change. The capabilities stay in the permitted set, so they are raised again on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3

# Run a command as user and group 65534 (the `nobody` account), with no supplementary
# groups and no capabilities.
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]

_CAPABILITY_VERSION_3 = 0x20080522


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilityData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextlib.contextmanager
def capabilities_dropped(*numbers: int) -> Iterator[None]:
    """Drop the capabilities `numbers` (each below 32) from this thread's effective set."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapabilityHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapabilityData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    saved = data[0].effective
    for number in numbers:
        data[0].effective &= ~(1 << number)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    try:
        yield
    finally:
        data[0].effective = saved
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed to restore the capabilities")
