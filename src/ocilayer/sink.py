"""Output files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`, and rename it to `path` when the block succeeds.

    If the block raises (KeyboardInterrupt included), the temporary file is removed
    and `path` is left as it was. The file gets mode 0666 minus the umask, as a
    file created with open() would.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".partial"
    )
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb", buffering=0) as raw:
            yield raw
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
