"""Check ocilayer on a real rootfs: GNU tar round trip, and containerd's WriteDiff as oracle.

1. Export the debootstrap rootfs (`rootfs/base`) as a base layer and its changed
   version (`rootfs/next`) as a diff layer with `--parent rootfs/base`.
2. Apply both with GNU tar onto an empty directory and compare the result with
   `rootfs/next` in every attribute (see treecompare.py). GNU tar does not handle
   whiteouts, so before each layer this script does what a layer applier does: it
   deletes each whited-out path and each directory that a non-directory entry
   replaces. Then GNU tar extracts everything but the whiteout entries.
3. Apply the same two layers with ocilayer's own applier and compare again.
4. Export both layers again with `--xattrs capability` and compare them, entry by
   entry and byte by byte, with what containerd's `archive.WriteDiff` writes for the
   same trees. Only the mtime of whiteouts may differ: containerd 1.6 writes the
   current time there, ocilayer writes 0.

Prints entries, bytes and seconds for each export, and every difference found.
Exits 1 when the round trip or the comparison finds a difference.

Usage: real_input.py [--work-dir DIR] [--ocilayer REV] [--allow-directory-mtimes]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from build_trees import build_base_rootfs, build_next_rootfs
from common import (
    DEFAULT_WORK_DIR,
    WORKING_TREE,
    Ocilayer,
    build_writediff,
    human_bytes,
    ocilayer_at,
    run,
)
from tarentries import OPAQUE, RawEntry, compare_layers, read_entries_from
from treecompare import Difference, compare_trees, snapshot_tree

LIST_LIMIT = 30
GNU_TAR_EXTRACT = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"]


@dataclass
class ExportResult:
    """One export: the tool, the layer, and what it wrote."""

    tool: str
    layer: str
    entries: int
    bytes: int
    seconds: float


@dataclass
class Report:
    exports: list[ExportResult] = field(default_factory=list)
    roundtrip: dict[str, list[str]] = field(default_factory=dict)
    directory_mtimes: dict[str, list[str]] = field(default_factory=dict)
    listing_warnings: dict[str, str] = field(default_factory=dict)
    containerd: dict[str, dict[str, object]] = field(default_factory=dict)
    # Whether directory mtimes that fs.Changes does not carry fail the check.
    strict: bool = True

    @property
    def ok(self) -> bool:
        containerd_equal = all(not item["differences"] for item in self.containerd.values())
        roundtrip_equal = all(not problems for problems in self.roundtrip.values())
        if self.strict:
            roundtrip_equal &= all(not problems for problems in self.directory_mtimes.values())
        return containerd_equal and roundtrip_equal and not self.listing_warnings


def _export(
    tool: str,
    layer: str,
    command: list[str | os.PathLike[str]],
    output: Path,
    report: Report,
    env: dict[str, str] | None = None,
) -> list[RawEntry]:
    """Run one export into `output`, time it, and record its size and entry count."""
    start = time.perf_counter()
    with open(output, "wb") as out:
        subprocess.run([str(part) for part in command], check=True, stdout=out, env=env)
    seconds = time.perf_counter() - start
    entries = read_entries_from(str(output))
    result = ExportResult(tool, layer, len(entries), output.stat().st_size, round(seconds, 3))
    report.exports.append(result)
    print(
        f"{tool:10} {layer:5} {result.entries:6} entries {human_bytes(result.bytes):>10} "
        f"{seconds:7.2f} s",
        flush=True,
    )
    return entries


def _clear_for_layer(entries: list[RawEntry], target: Path) -> None:
    """Remove from `target` what the layer deletes or replaces, as a layer applier does.

    A whiteout `.wh.name` deletes `name`, an opaque marker empties its directory, and a
    non-directory entry replaces a directory at its path with everything below it.
    """
    for entry in entries:
        name = entry.name.rstrip(b"/")
        parent, _, base = name.rpartition(b"/")
        directory = target / os.fsdecode(parent)
        if base == OPAQUE:
            for child in directory.iterdir() if directory.is_dir() else ():
                _remove(child)
        elif entry.is_whiteout:
            _remove(directory / os.fsdecode(base[len(b".wh.") :]))
        elif entry.typeflag != b"5":
            existing = target / os.fsdecode(name)
            if existing.is_dir() and not existing.is_symlink():
                shutil.rmtree(existing)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def apply_with_gnu_tar(layer: Path, entries: list[RawEntry], target: Path) -> None:
    """Apply one layer tar onto `target` with GNU tar (whiteouts handled beforehand)."""
    _clear_for_layer(entries, target)
    run([*GNU_TAR_EXTRACT, layer, "-C", target, "--exclude=.wh.*"])


# bsdtar cannot show a PAX path that is not UTF-8 in any locale, and exits 1 for it.
# Go's archive/tar, and so containerd, writes such names the same way.
BSDTAR_NON_UTF8 = re.compile(
    rb"bsdtar: (Pathname|Linkname) can't be converted from UTF-8 to current locale\.\n"
    rb"|bsdtar: Error exit delayed from previous errors\.\n"
)


def _listing_warnings(layer: Path) -> str:
    """Return what GNU tar and bsdtar print on stderr while listing `layer`.

    bsdtar's complaint about non-UTF-8 names is left out (see BSDTAR_NON_UTF8).
    """
    messages = []
    for command in (["tar", "-tvf", str(layer)], ["bsdtar", "-tvf", str(layer)]):
        done = subprocess.run(command, capture_output=True, check=False)
        stderr = done.stderr
        if command[0] == "bsdtar":
            stderr = BSDTAR_NON_UTF8.sub(b"", stderr)
            if done.returncode == 1 and stderr != done.stderr and not stderr:
                continue
        if done.returncode or stderr:
            messages.append(f"{command[0]}: exit {done.returncode}: {stderr.decode()!r}")
    return "\n".join(messages)


def check_roundtrip(
    ocilayer: Ocilayer, base: Path, next_tree: Path, out: Path, report: Report
) -> None:
    """Export base and diff layers (all xattrs), apply both with GNU tar, compare trees."""
    base_tar, diff_tar = out / "base.tar", out / "diff.tar"
    export = [*ocilayer.argv, "export"]
    base_entries = _export("ocilayer", "base", [*export, base], base_tar, report, ocilayer.env)
    diff_entries = _export(
        "ocilayer", "diff", [*export, next_tree, "--parent", base], diff_tar, report, ocilayer.env
    )
    for layer in (base_tar, diff_tar):
        warnings = _listing_warnings(layer)
        if warnings:
            report.listing_warnings[layer.name] = warnings

    target = out / f"applied-{time.time_ns()}"
    target.mkdir()
    apply_with_gnu_tar(base_tar, base_entries, target)
    _record_roundtrip(
        report,
        "GNU tar apply, base layer vs rootfs/base",
        compare_trees(snapshot_tree(base), snapshot_tree(target)),
        [],
    )
    apply_with_gnu_tar(diff_tar, diff_entries, target)
    _record_roundtrip(
        report,
        "GNU tar apply, base + diff layer vs rootfs/next",
        compare_trees(snapshot_tree(next_tree), snapshot_tree(target)),
        diff_entries,
    )


def _record_roundtrip(
    report: Report, label: str, problems: list[Difference], layer: list[RawEntry]
) -> None:
    """Print and record the differences of one round trip.

    A directory whose only difference is its mtime, and that the diff layer does not
    contain, is listed apart. continuity's `fs.Changes`, which containerd's WriteDiff
    uses and ocilayer follows, never compares the mtimes of directories. So a
    directory whose children were added and removed again is not part of the layer.
    """
    in_layer = {entry.name.rstrip(b"/") for entry in layer}
    unchanged_dirs = [
        problem
        for problem in problems
        if problem.type == "dir" and problem.fields == ("mtime",) and problem.path not in in_layer
    ]
    others = [problem for problem in problems if problem not in unchanged_dirs]
    report.roundtrip[label] = [problem.text for problem in others]
    report.directory_mtimes[label] = [problem.text for problem in unchanged_dirs]
    verdict = "equal" if not problems else f"{len(problems)} difference(s)"
    print(f"{label}: {verdict}")
    for problem in others[:LIST_LIMIT]:
        print(f"  {problem.text}")
    if len(others) > LIST_LIMIT:
        print(f"  ... and {len(others) - LIST_LIMIT} more")
    if unchanged_dirs:
        print(
            f"  {len(unchanged_dirs)} directory mtime(s) not carried, because fs.Changes "
            "does not compare directory mtimes:"
        )
        for problem in unchanged_dirs[:LIST_LIMIT]:
            print(f"    {problem.text}")


def check_ocilayer_apply(
    ocilayer: Ocilayer, base: Path, next_tree: Path, out: Path, report: Report
) -> None:
    """Apply the base and diff layers with ocilayer's own applier and compare the trees.

    Uses the layers check_roundtrip wrote. `ocilayer apply` is used when the command
    exists, else apply_layer.py, which calls the same library function.
    """
    probe = subprocess.run(
        [*ocilayer.argv, "apply", "--help"], capture_output=True, check=False, env=ocilayer.env
    )
    if probe.returncode == 0:
        command = [*ocilayer.argv, "apply"]
    else:
        command = [sys.executable, str(Path(__file__).with_name("apply_layer.py"))]
    target = out / f"ocilayer-applied-{time.time_ns()}"
    for layer, tree in (("base", base), ("diff", next_tree)):
        start = time.perf_counter()
        run([*command, out / f"{layer}.tar", target], env=ocilayer.env)
        seconds = time.perf_counter() - start
        print(f"ocilayer apply of the {layer} layer: {seconds:.2f} s")
        layers = "base layer" if layer == "base" else "base + diff layer"
        label = f"ocilayer apply, {layers} vs rootfs/{tree.name}"
        layer_entries = read_entries_from(str(out / "diff.tar")) if layer == "diff" else []
        _record_roundtrip(
            report, label, compare_trees(snapshot_tree(tree), snapshot_tree(target)), layer_entries
        )


def check_containerd(
    ocilayer: Ocilayer, base: Path, next_tree: Path, out: Path, work_dir: Path, report: Report
) -> None:
    """Compare ocilayer's layers (capability xattrs only) with containerd's WriteDiff."""
    writediff = build_writediff(work_dir)
    if writediff is None:
        report.containerd["skipped"] = {"differences": ["containerd helper not built"]}
        return
    pairs = {
        "base": (["", base], [base]),
        "diff": ([base, next_tree], [next_tree, "--parent", base]),
    }
    for layer, (writediff_args, export_args) in pairs.items():
        theirs = _export(
            "containerd",
            layer,
            [writediff, *writediff_args],
            out / f"{layer}-containerd.tar",
            report,
        )
        ours = _export(
            "ocilayer",
            layer,
            [*ocilayer.argv, "export", *export_args, "--xattrs", "capability"],
            out / f"{layer}-capability.tar",
            report,
            ocilayer.env,
        )
        comparison = compare_layers(ours, theirs)
        report.containerd[layer] = asdict(comparison)
        verdict = "identical" if comparison.equal else "DIFFERENT"
        print(
            f"containerd WriteDiff, {layer} layer: {verdict}: {comparison.identical} identical "
            f"entries, {comparison.whiteout_mtime_only} whiteouts differing in mtime only"
        )
        for problem in comparison.differences or []:
            print(f"  {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument(
        "--allow-directory-mtimes",
        action="store_true",
        help="pass even when directory mtimes differ that containerd's change rules leave out",
    )
    parser.add_argument(
        "--ocilayer",
        default="HEAD",
        metavar="REV",
        help=f"git revision of ocilayer to check (default HEAD; {WORKING_TREE!r} for the "
        "working tree as it is)",
    )
    args = parser.parse_args()
    work_dir: Path = args.work_dir.resolve()
    ocilayer = ocilayer_at(args.ocilayer, work_dir)
    print(f"ocilayer: {ocilayer.version}")
    base = build_base_rootfs(work_dir)
    next_tree = build_next_rootfs(work_dir, base)
    out = work_dir / "real-input"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    report = Report(strict=not args.allow_directory_mtimes)
    check_roundtrip(ocilayer, base, next_tree, out, report)
    check_ocilayer_apply(ocilayer, base, next_tree, out, report)
    check_containerd(ocilayer, base, next_tree, out, work_dir, report)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    print(f"report: {out / 'report.json'}")
    if report.listing_warnings:
        print("listing warnings:", json.dumps(report.listing_warnings, indent=2))
    print("result:", "PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
