"""Paths and helpers shared by the benchmark scripts.

Every input and output lives under one work directory (`bench-work/` in the repository
root by default, git-ignored), so a rerun finds the trees it built before.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = REPO / "bench-work"
WRITEDIFF_SOURCE = REPO / "tests" / "go" / "writediff"
# Debian's containerd sources (golang-github-containerd-containerd-dev) live in this GOPATH.
DEBIAN_GOPATH = "/usr/share/gocode"


WORKING_TREE = "worktree"
# The call that pip's `ocilayer` console script makes (the entry point in pyproject.toml).
_SCRIPT = "import sys; from ocilayer.cli import entry_point; sys.exit(entry_point())"


@dataclass(frozen=True)
class Ocilayer:
    """How to run one version of ocilayer: a commit's `src/` on PYTHONPATH, or the
    working tree.

    Benchmarks measure a commit by default, because the working tree may hold
    someone's unfinished change while the numbers are taken.
    """

    version: str
    src: Path

    @property
    def argv(self) -> list[str]:
        """The command as the `ocilayer` script that pip installs runs it.

        `python -m ocilayer` would add runpy's imports, about 10 ms, that the
        installed command does not pay.
        """
        return [sys.executable, "-c", _SCRIPT]

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.src))

    @property
    def shell(self) -> str:
        """The command as a shell prefix, environment included."""
        return f"PYTHONPATH={shlex.quote(str(self.src))} {shlex.join(self.argv)}"


def ocilayer_at(revision: str, work_dir: Path) -> Ocilayer:
    """Return ocilayer at a git revision of this repository (or WORKING_TREE).

    A revision's `src/` is extracted with `git archive` under `work_dir/ocilayer/`.
    The dependencies come from the environment running this script.
    """
    if revision == WORKING_TREE:
        _build_extensions(REPO)
        return _compiled(Ocilayer("working tree", REPO / "src"))
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", f"{revision}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    target = work_dir / "ocilayer" / commit
    if not (target / "src").exists():
        target.mkdir(parents=True, exist_ok=True)
        # setup.py builds the C extensions (since 3a7f222); it reads pyproject.toml,
        # which names README.md.
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", commit],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        paths = ["src", *(name for name in _BUILD_FILES if name in listed)]
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, *paths], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        _build_extensions(target)
    return _compiled(Ocilayer(f"commit {commit}", target / "src"))


_BUILD_FILES = ("setup.py", "pyproject.toml", "README.md")


def _build_extensions(root: Path) -> None:
    """Build the C extensions of the sources in `root` in place, as `pip install` would.

    A revision without setup.py has none, and runs in pure Python.
    """
    if (root / "setup.py").exists():
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=root, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip


def _compiled(ocilayer: Ocilayer) -> Ocilayer:
    """Write the bytecode of `ocilayer.src`, as `pip install` does, and return it.

    Without it every timed run would compile the sources again, about 0.1 s, when the
    environment sets PYTHONDONTWRITEBYTECODE (this machine does).
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ocilayer.src)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return ocilayer


def run(command: Sequence[str | os.PathLike[str]], **kwargs: object) -> None:
    """Run a command, echoing it to stderr. Raise CalledProcessError when it fails."""
    print("+", shlex.join(str(part) for part in command), file=sys.stderr, flush=True)
    subprocess.run([str(part) for part in command], check=True, **kwargs)  # type: ignore[call-overload]


def timed(command: Sequence[str | os.PathLike[str]], stdout: Path | None = None) -> float:
    """Run a command once, its output into `stdout` when given, and return its wall seconds."""
    args = [str(part) for part in command]
    start = time.perf_counter()
    if stdout is None:
        subprocess.run(args, check=True)
    else:
        with open(stdout, "wb") as out:
            subprocess.run(args, check=True, stdout=out)
    return time.perf_counter() - start


def apt_mirror() -> str:
    """Return the Debian mirror that apt on this machine uses for bookworm.

    Reads the deb822 `*.sources` files first, then the one-line `sources.list` files.
    """
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1)
                for line in stanza.splitlines()
                if re.match(r"^[A-Za-z-]+:", line)
            )
            suites = fields.get("Suites", "").split()
            enabled = fields.get("Enabled", "yes").strip() != "no"
            if enabled and "bookworm" in suites and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line + " ")
            if match:
                return match.group(1)
    raise SystemExit("no bookworm mirror found in /etc/apt/sources.list{,.d}; pass --mirror URL")


def build_writediff(work_dir: Path) -> Path | None:
    """Build the containerd WriteDiff helper of the tests into `work_dir/bin`.

    Returns None, with a message on stderr, when its source or Go is missing, so that
    callers can leave containerd out instead of failing.
    """
    main = WRITEDIFF_SOURCE / "main.go"
    if not main.exists():
        print(f"containerd helper {main} is missing: containerd rows skipped", file=sys.stderr)
        return None
    binary = work_dir / "bin" / "writediff"
    if binary.exists() and binary.stat().st_mtime >= main.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=DEBIAN_GOPATH, GOFLAGS="")
    try:
        run(["go", "build", "-o", binary, "."], cwd=WRITEDIFF_SOURCE, env=env)
    except (OSError, subprocess.CalledProcessError) as error:
        print(
            f"building {WRITEDIFF_SOURCE} failed ({error}): containerd rows skipped",
            file=sys.stderr,
        )
        return None
    return binary


def human_bytes(count: float) -> str:
    """Format a byte count with a binary unit, e.g. `1.5 GiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
