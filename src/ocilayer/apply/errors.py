"""Errors of the applier."""

from __future__ import annotations

from typing import NamedTuple

from ocilayer.errors import OcilayerError


class Hint(NamedTuple):
    """What to do next about an error: `library` names parameters, `cli` names options."""

    library: str
    cli: str

    @classmethod
    def same(cls, text: str) -> Hint:
        """Return a hint that names no option, so it reads the same for both."""
        return cls(text, text)


NEEDS_PRIVILEGES = Hint(
    "apply as root, or pass rootless=True to apply no file owners and skip the xattrs "
    "that need privileges",
    "apply as root, or use --rootless to apply no file owners and skip the xattrs that "
    "need privileges",
)
NEEDS_MKNOD = Hint(
    "apply as root, or pass skip_devices=True to skip device nodes with a warning",
    "apply as root, or use --skip-devices to skip device nodes with a warning",
)
UNREADABLE_PARENT = Hint(
    "check that this user may read every directory of parent_layer_paths",
    "check that this user may read every --parent directory",
)
UNMAPPED_ID = Hint(
    "map it, or pass rootless=True to apply no file owners",
    "map it, or use --rootless to apply no file owners",
)


class ApplyError(OcilayerError):
    """An entry could not be applied to the target.

    `entry` is the entry's name in the tar stream and `offset` the stream offset of
    its header, so that the message and the attributes both point at the entry.
    `reason` is the message without `hint`, which str() appends in its library
    wording and `cli_message()` in its command-line wording.
    """

    def __init__(
        self,
        message: str,
        entry: bytes = b"",
        offset: int | None = None,
        *,
        hint: Hint | None = None,
    ) -> None:
        super().__init__(message if hint is None else f"{message}; {hint.library}")
        self.reason = message
        self.entry = entry
        self.offset = offset
        self.hint = hint

    def cli_message(self) -> str:
        """Return the message with the hint worded for the `ocilayer` command."""
        return self.reason if self.hint is None else f"{self.reason}; {self.hint.cli}"


class DiffIdMismatchError(OcilayerError):
    """The diff_id of the applied tar stream is not the expected one."""

    def __init__(self, expected: str, actual: str, *, target_removed: bool = False) -> None:
        what_next = "the new target was removed" if target_removed else "so discard the target"
        super().__init__(
            f"wrong diff_id: expected {expected}, the layer's tar stream has {actual}; "
            f"the layer is corrupt or is not the one the image names, {what_next}"
        )
        self.expected = expected
        self.actual = actual


class ApplyInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) that stopped an apply; `target_removed` is whether the target is gone.

    It is a KeyboardInterrupt, so code that catches that still catches it.
    """

    def __init__(self, target: str, *, target_removed: bool) -> None:
        outcome = "the new target was removed" if target_removed else "the target is partly applied"
        super().__init__(f"apply to {target!r} was interrupted; {outcome}")
        self.target_removed = target_removed
