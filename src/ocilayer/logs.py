"""The package's loggers, with `logging` imported only when a message is passed on.

A command that logs nothing would otherwise pay for importing `logging` and the
modules it loads: about 7 ms of the 53 ms an empty export took on the benchmark
machine (hyperfine).
The loggers here carry the standard names ("ocilayer", "ocilayer.apply"), and a
message goes to `logging.getLogger(name)` as usual. The one difference: after
`configure`, which the command line calls, a message below the configured level is
dropped without importing `logging`, until `unconfigure`.
"""

from __future__ import annotations

import sys
from typing import Any

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

# The level set by `configure`, below which messages are dropped here; None until then.
_threshold: int | None = None
# The stderr format of `configure`, installed when the first message is passed on.
_stderr_format: str | None = None
# The stderr handler installed last, replaced when `configure` is called again.
_handler: Any = None


class Logger:
    """A named logger whose methods import `logging` on the first message passed on."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, message: str, *args: object) -> None:
        self._log(DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        self._log(INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._log(WARNING, message, args)

    def exception(self, message: str, *args: object) -> None:
        """Log at ERROR level with the exception being handled."""
        self._log(ERROR, message, args, exc_info=True)

    def _log(self, level: int, message: str, args: tuple[object, ...], **extra: Any) -> None:
        if _threshold is not None and level < _threshold:
            return
        # stacklevel 3 names the caller of debug() and the others, not this module.
        _standard_logger(self.name).log(level, message, *args, stacklevel=3, **extra)


def get_logger(name: str) -> Logger:
    return Logger(name)


def configure(level: int, stderr_format: str) -> None:
    """Send the package's messages at `level` and above to stderr in `stderr_format`.

    The handler is installed when the first message at that level is logged.
    """
    global _threshold, _stderr_format
    _threshold = level
    _stderr_format = stderr_format


def unconfigure() -> None:
    """Undo `configure` when the command returns: remove its handler and level.

    A process that goes on after the command, such as a test run or a program that
    calls the command line in-process, then logs as if it had never been called.
    """
    global _threshold, _stderr_format, _handler
    if _handler is not None:
        import logging

        package = logging.getLogger("ocilayer")
        package.removeHandler(_handler)
        package.setLevel(logging.NOTSET)
    _threshold = _stderr_format = _handler = None


def _standard_logger(name: str) -> Any:
    global _stderr_format, _handler
    import logging

    if _stderr_format is not None:
        package = logging.getLogger("ocilayer")
        if _handler is not None:
            package.removeHandler(_handler)
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(_stderr_format))
        package.addHandler(_handler)
        package.setLevel(_threshold if _threshold is not None else logging.NOTSET)
        _stderr_format = None
    return logging.getLogger(name)
