"""Errors of the applier."""

from __future__ import annotations

from ocilayer.errors import OcilayerError


class ApplyError(OcilayerError):
    """An entry could not be applied to the target.

    `entry` is the entry's name in the tar stream and `offset` the stream offset of
    its header, so that the message and the attributes both point at the entry.
    """

    def __init__(self, message: str, entry: bytes = b"", offset: int | None = None) -> None:
        super().__init__(message)
        self.entry = entry
        self.offset = offset


class DiffIdMismatchError(OcilayerError):
    """The diff_id of the applied tar stream is not the expected one."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            f"wrong diff_id: expected {expected}, the layer's tar stream has {actual}; "
            "the layer is corrupt or is not the one the image names, so discard the target"
        )
        self.expected = expected
        self.actual = actual
