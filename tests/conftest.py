"""Session fixtures for the whole suite: the Go helpers, tree building and root checks.

The helpers themselves live in `peers.py`, `trees.py` and `rawtar.py`, which tests
import directly (pytest puts this folder on `sys.path`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers
from trees import TreeSpec, build_tree


@pytest.fixture(scope="session", autouse=True)
def go_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the Go helpers of this session into one temporary folder, each at most once."""
    path = tmp_path_factory.mktemp("go-helpers")
    peers.set_go_build_dir(path)
    return path


@pytest.fixture(scope="session")
def go_tarcopy(go_build_dir: Path) -> Path:
    """The `tarcopy` binary (Go's archive/tar reader and writer)."""
    return peers.build_go_helper("tarcopy")


@pytest.fixture(scope="session")
def go_writediff(go_build_dir: Path) -> Path:
    """The `writediff` binary (containerd's archive.WriteDiff)."""
    return peers.build_go_helper("writediff")


@pytest.fixture
def as_root() -> None:
    """Fail, never skip, a test that needs root (owners, devices, capabilities)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root to set owners, devices and capabilities; CI runs as root")


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[[str, TreeSpec], Path]:
    """Return a function that builds a spec into `tmp_path/<name>` and returns that path."""

    def make(name: str, spec: TreeSpec) -> Path:
        return build_tree(tmp_path / name, spec)

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    timings = peers.go_build_seconds()
    if timings:
        text = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in sorted(timings.items()))
        terminalreporter.write_line(f"Go helper builds: {text}")


@pytest.fixture
def shared_directory() -> Iterator[Path]:
    """A 0755 directory that user 65534 can enter, outside root's 0700 pytest tree."""
    directory = Path(tempfile.mkdtemp(prefix="ocilayer-cli-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)
