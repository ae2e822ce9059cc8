"""Reading into a caller's buffer from any readable stream, with or without readinto."""

from __future__ import annotations

import io
from typing import Any

# The errors of a readinto that a stream has in name only. io.RawIOBase's own
# readinto, inherited by a subclass that defines read() alone, raises the first.
_NO_READINTO = (NotImplementedError, io.UnsupportedOperation)


class IntoReader:
    """Call as `into(view)`: fill `view` from a stream and return the bytes read.

    It uses the stream's readinto, which copies no bytes in between, while that works.
    A stream without one, or whose readinto raises NotImplementedError or
    io.UnsupportedOperation, is read with read() and copied into the view from then
    on. Like readinto, a call may return fewer bytes than asked for; 0 means the end.
    """

    __slots__ = ("_readinto", "_stream")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)

    def __call__(self, view: memoryview) -> int:
        if self._readinto is not None:
            try:
                return int(self._readinto(view))
            except _NO_READINTO:
                self._readinto = None
        data = self._stream.read(len(view))
        count = len(data)
        view[:count] = data
        return count
