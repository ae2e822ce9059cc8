"""Show where ocilayer's export spends its time on one tree.

Two views:

- stages: each step of the export run alone over the whole tree (walk with lstat,
  listxattr, entry creation, header encoding, reading file data, sha256 of the
  stream), then the whole export into a file. Each is timed with `time.perf_counter`
  on a warm page cache. The stages overlap (entry creation includes the walk), so
  read each one against the full export, not as parts that add up exactly.
- profile: the whole export under cProfile (exact call counts, inflated per-call
  cost) or pyinstrument (sampling, low overhead), top functions by own time.

Usage: profile_export.py TREE [--ocilayer REV] [--profiler cprofile|pyinstrument|none]
                           [--top N] [--no-stages]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_WORK_DIR, WORKING_TREE, ocilayer_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("tree", type=Path, help="layer directory to export")
    parser.add_argument("--profiler", choices=["cprofile", "pyinstrument", "none"],
                        default="cprofile")  # fmt: skip
    parser.add_argument("--top", type=int, default=30, help="functions to list (default 30)")
    parser.add_argument("--no-stages", action="store_true", help="skip the stage timings")
    parser.add_argument(
        "--ocilayer",
        default="HEAD",
        metavar="REV",
        help=f"git revision of ocilayer to profile (default HEAD; {WORKING_TREE!r} for the "
        "working tree as it is)",
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args()
    ocilayer = ocilayer_at(args.ocilayer, args.work_dir.resolve())
    sys.path.insert(0, str(ocilayer.src))
    from profile_stages import profile_export, run_stages

    print(f"ocilayer: {ocilayer.version}")
    root = os.fsencode(args.tree.resolve())
    with tempfile.TemporaryDirectory(dir=args.tree.resolve().parent) as scratch:
        output = Path(scratch) / "layer.tar"
        if not args.no_stages:
            print(f"stages on {args.tree} (each timed on its second run):")
            for label, seconds, detail in run_stages(root, output):
                print(f"  {label:42} {seconds:8.3f} s  {detail}")
        if args.profiler != "none":
            profile_export(root, output, args.profiler, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
