"""Run a command with stderr on a pseudo-terminal, as a user at a terminal would."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Sequence


def run_on_terminal(argv: Sequence[str]) -> tuple[int, bytes]:
    """Run `argv` with stderr on a pseudo-terminal; return its exit status and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        list(argv), stdout=subprocess.DEVNULL, stderr=terminal, stdin=subprocess.DEVNULL
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO once the command has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=60), shown


def last_line(shown: bytes) -> bytes:
    """Return the last redraw of a progress line.

    The terminal turns each "\\n" into "\\r\\n", and each redraw starts with "\\r".
    """
    return shown.replace(b"\r\n", b"\n").split(b"\r")[-1].strip()
