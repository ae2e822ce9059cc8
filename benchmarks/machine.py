"""Describe the machine a benchmark ran on: CPU, memory, disk, kernel and tool versions."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "not found"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "not found"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    return "unknown"


def _disk(path: Path) -> str:
    """Return the filesystem type, device and size that hold `path`."""
    fields = _output(["findmnt", "--noheadings", "--output", "FSTYPE,SOURCE,SIZE",
                      "--target", str(path)])  # fmt: skip
    rotational = _output(["lsblk", "--noheadings", "--nodeps", "--output", "ROTA,MODEL",
                          fields.split()[1] if len(fields.split()) > 1 else "/"])  # fmt: skip
    return f"{fields} (lsblk ROTA,MODEL: {rotational})"


def describe_machine(work_dir: Path) -> dict[str, str]:
    """Return what a reader needs to compare numbers across machines."""
    return {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
        "memory": _memory(),
        "work dir filesystem": _disk(work_dir),
        "kernel": platform.release(),
        # Other work on the machine skews timings; the 1-minute load shows whether there was any.
        "load average (1, 5, 15 min)": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "Python": platform.python_version(),
        "C compiler (builds the extensions)": _output(["cc", "--version"]),
        "GNU tar": _output(["tar", "--version"]),
        "bsdtar": _output(["bsdtar", "--version"]),
        "pigz": _output(["pigz", "--version"]),
        "gzip": _output(["gzip", "--version"]),
        "zstd": _output(["zstd", "--version"]),
        "umoci": _output(["umoci", "--version"]),
        "hyperfine": _output(["hyperfine", "--version"]),
        "go": _output(["go", "version"]),
        "containerd sources": _output(
            ["dpkg-query", "-W", "-f=${Version}", "golang-github-containerd-containerd-dev"]
        ),
    }
