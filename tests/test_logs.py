"""The package's loggers: `logging` loaded only for a message, and the command line's stderr.

The command line configures a level and a stderr format. A command that logs nothing
never imports `logging`; one that logs prints the same lines as before. Library
callers who configure nothing get every message through `logging`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layer_helpers import write
from ocilayer import cli, logs

# Runs the command line, then prints which of the modules loaded only on demand were
# loaded: logging, two that argparse and the tar reader no longer need, and the
# overlay target's modules.
PROBE = """
import sys
from ocilayer.cli import main
try:
    status = main(sys.argv[1:])
finally:
    optional = ("logging", "shutil", "base64", "ocilayer.apply.lower", "ocilayer.apply.overlay")
    loaded = [name for name in optional if name in sys.modules]
    print("loaded:", ",".join(loaded), file=sys.stderr)
sys.exit(status)
"""


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def restore_logs() -> Iterator[None]:
    """Undo `configure` and the handler it installs, for the tests after this one."""
    yield
    package = logging.getLogger("ocilayer")
    if logs._handler is not None:
        package.removeHandler(logs._handler)
    package.setLevel(logging.NOTSET)
    logs._threshold = logs._stderr_format = logs._handler = None


def test_quiet_commands_never_load_logging(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "etc" / "hosts", b"127.0.0.1 localhost\n")
    output = tmp_path / "layer.tar"
    exported = probe("export", str(tree), "-o", str(output))
    assert (exported.returncode, exported.stderr) == (0, "loaded: \n")
    applied = probe("apply", str(output), str(tmp_path / "target"))
    assert (applied.returncode, applied.stderr) == (0, "loaded: \n")
    # Help still lays out as argparse does, without shutil's terminal size.
    helped = probe("export", "--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: ocilayer export")
    assert helped.stderr == "loaded: \n"


def test_warning_and_debug_lines_on_stderr(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(os.fsdecode(tree / "control.sock"))
        output = str(tmp_path / "layer.tar")
        plain = probe("export", str(tree), "-o", output)
        debug = probe("export", "--debug", str(tree), "-o", output)
        pure = subprocess.run(
            [sys.executable, "-c", PROBE, "--debug", "export", str(tree), "-o", output],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OCILAYER_PURE_PYTHON": "1"},
        )
    warning = "ocilayer: WARNING: skipped 1 socket(s), which a tar cannot hold: control.sock\n"
    assert plain.returncode == 0
    assert plain.stderr == warning + "loaded: logging\n"
    assert debug.stderr == warning + "loaded: logging\n"
    assert pure.stderr.splitlines() == [
        "ocilayer: DEBUG: the C packer is not built or is turned off; exporting in pure Python",
        warning.rstrip("\n"),
        "loaded: logging",
    ]


def test_unconfigured_messages_reach_logging(caplog: pytest.LogCaptureFixture) -> None:
    """Without `configure` (library use), every level reaches logging, from the caller."""
    log = logs.get_logger("ocilayer.apply")
    with caplog.at_level(logging.DEBUG, logger="ocilayer"):
        log.debug("a %s message", "debug")
        log.warning("a warning")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ocilayer.apply", "DEBUG", "a debug message"),
        ("ocilayer.apply", "WARNING", "a warning"),
    ]
    assert {r.funcName for r in caplog.records} == {"test_unconfigured_messages_reach_logging"}


@pytest.mark.usefixtures("restore_logs")
def test_configure_filters_and_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.get_logger("ocilayer")
    logs.configure(logs.INFO, "x: %(levelname)s: %(message)s")
    log.debug("dropped")
    log.warning("first")
    # Configured again, as a second command in one process does: the handler is replaced.
    logs.configure(logs.DEBUG, "y: %(message)s")
    log.debug("second")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == ["x: WARNING: first", "y: second", "y: failed"]
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"
    handlers = [h for h in logging.getLogger("ocilayer").handlers if h is logs._handler]
    assert len(handlers) == 1


def test_library_logging_after_the_command_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A command run in-process leaves no level, threshold or handler behind."""
    tree = tmp_path / "tree"
    write(tree / "etc" / "hosts", b"127.0.0.1 localhost\n")
    assert cli.main(["export", str(tree), "-o", str(tmp_path / "layer.tar")]) == 0
    with caplog.at_level(logging.DEBUG, logger="ocilayer"):
        logs.get_logger("ocilayer.apply").debug("after the command")
    assert [r.getMessage() for r in caplog.records] == ["after the command"]
    assert logs._handler is None
    assert logging.getLogger("ocilayer").handlers == []
