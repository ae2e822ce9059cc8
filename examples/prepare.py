"""Lay out the example layers for `ocilayer export`.

Git keeps neither file times nor hardlinks, so the trees in `base/` and `next/` are
copied to a work directory first. Every path gets the same fixed mtime and a mode
from its execute bit, so only the real changes show up in the diff, and `next` gets
its hardlink pair (`usr/bin/hello-world` is a second name of `usr/bin/hello`).

Usage: python examples/prepare.py DEST
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

# 2024-01-01T00:00:00Z, in Unix seconds.
FIXED_MTIME = 1_704_067_200


def normalise(root: Path) -> None:
    """Set modes (0755 directories and executables, 0644 files) and the fixed mtime."""
    for directory, names, files in os.walk(root, topdown=False):
        for name in files + names:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode):
                executable = stat.S_ISDIR(mode) or mode & 0o100
                path.chmod(0o755 if executable else 0o644)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    root.chmod(0o755)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python examples/prepare.py DEST", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    dest = Path(sys.argv[1])
    for name in ("base", "next"):
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(here / name, target, symlinks=True)
    os.link(dest / "next/usr/bin/hello", dest / "next/usr/bin/hello-world")
    for name in ("base", "next"):
        normalise(dest / name)
    print(f"example layers ready: {dest / 'base'} and {dest / 'next'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
