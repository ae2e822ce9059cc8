"""Time ocilayer against GNU tar, bsdtar, pigz, gzip, zstd, umoci and containerd's WriteDiff.

Each group of commands works on one input tree (see build_trees.py). A group runs
one untimed warm-up round, then `--runs` timed rounds. In each round hyperfine runs
every command of the group once, back to back, so the commands are interleaved and
the page cache stays warm. Before each command, an untimed `sync` writes back what
the previous one wrote. The table shows the median of the timed rounds. Outputs
go to files under `<work dir>/out`; extractions go to a fresh directory every run
(the previous one is moved aside, because creating files right after deleting many
is several times slower on ext4). The moved-aside trees are deleted before the next
extraction group, followed by a minute's pause, and at the end. Outputs over 1 GiB
(the exports of the four 1 GiB files) are deleted once their sizes are recorded.
Before an extraction group, the free space is checked against what its
moved-aside trees will take.

Peak RSS comes from one more run of each command under `/usr/bin/time -f %M`; for
a pipeline it is the largest process of the pipeline.

Usage: run.py [--work-dir DIR] [--runs N] [--ocilayer REV] [GROUP ...]
(run.py --list shows the groups)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from build_trees import build_base_rootfs, build_big_tree, build_next_rootfs, build_small_tree
from common import (
    DEFAULT_WORK_DIR,
    REPO,
    WORKING_TREE,
    Ocilayer,
    build_writediff,
    human_bytes,
    ocilayer_at,
    run,
)
from machine import describe_machine


@dataclass
class Command:
    """One timed command line (run by a shell), its output file and its per-run preparation."""

    label: str
    line: str
    output: Path | None = None
    prepare: str | None = None


@dataclass
class Comparison:
    """A ratio to report: the ocilayer command, the peer, and the target ratios.

    The targets are the project's speed goals: ocilayer's time (and output size) as a
    multiple of the peer's, at most.
    """

    ours: str
    peer: str
    target: float | None = None
    size_target: float | None = None


@dataclass
class Group:
    name: str
    title: str
    commands: list[Command]
    comparisons: list[Comparison]
    # Timed rounds when the group needs fewer than --runs (peak RSS varies little).
    max_runs: int | None = None
    # The layer tar that the commands extract, for the disk space check.
    extracts: Path | None = None


@dataclass
class Result:
    """Measurements of one command: run times in seconds, peak RSS and output size."""

    group: str
    label: str
    line: str
    times: list[float] = field(default_factory=list)
    # User plus system CPU seconds of each run: less sensitive than wall time to other
    # work on the machine, but it hides waiting for I/O.
    cpu_times: list[float] = field(default_factory=list)
    peak_rss_kib: int | None = None
    output_bytes: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


class Workspace:
    """The work directory: input trees, outputs, extraction targets and the umoci image."""

    def __init__(self, work_dir: Path, ocilayer: Ocilayer) -> None:
        self.work_dir = work_dir
        self.program = ocilayer
        self.out = work_dir / "out"
        self.trash = work_dir / "trash"
        self.ocilayer = ocilayer.shell
        self.out.mkdir(parents=True, exist_ok=True)
        self.trash.mkdir(parents=True, exist_ok=True)

    def discard_trash(self) -> None:
        """Delete the old extraction targets in a background process that outlives this one.

        Deleting millions of files takes minutes, and it is left to the end (see the
        module docstring). A run started while it goes on shares the disk with it.
        """
        if not self.trash.exists():
            return
        doomed = self.trash.with_name(f"trash-{time.time_ns()}")
        self.trash.rename(doomed)
        subprocess.Popen(["rm", "-rf", "--", str(doomed)], start_new_session=True)
        print(f"deleting {doomed} in the background", file=sys.stderr)

    def empty_trash(self) -> None:
        """Delete the old extraction targets now, then wait INODE_PAUSE seconds."""
        if not any(self.trash.iterdir()):
            return
        print(f"deleting {self.trash}, then pausing {INODE_PAUSE} s", file=sys.stderr, flush=True)
        shutil.rmtree(self.trash)
        self.trash.mkdir()
        subprocess.run(["sync"], check=True)
        time.sleep(INODE_PAUSE)

    def check_space(self, group: Group, runs: int) -> None:
        """Exit with a message when the disk cannot hold every extraction of `group`."""
        if group.extracts is None:
            return
        extractions = sum(1 for item in group.commands if item.prepare) * (runs + 2)
        # Here the 200k-file tree took 790 MB on ext4 for its 565 MB tar: 1.4 times.
        needed = int(group.extracts.stat().st_size * 1.5) * extractions
        free = shutil.disk_usage(self.trash).free
        if free < needed:
            raise SystemExit(
                f"{group.name} keeps {extractions} extracted trees of about "
                f"{human_bytes(needed // extractions)} until it ends, {human_bytes(needed)} "
                f"in all, but {self.trash.parent} has {human_bytes(free)} free: free some "
                "space or pass fewer --runs"
            )

    def fresh_dir_prepare(self, target: Path) -> str:
        """Return a shell line that moves `target` aside and creates it empty."""
        quoted, trash = shlex.quote(str(target)), shlex.quote(str(self.trash))
        return f'if [ -e {quoted} ]; then mv {quoted} {trash}/"$(date +%s%N)"; fi; mkdir {quoted}'


# Runs ocilayer without its C extensions, for a row that shows what they bring.
PURE_PYTHON = "OCILAYER_PURE_PYTHON=1"
# Seconds to wait after deleting many files. On an ext4 without a journal, as here,
# the inode allocator skips free inodes deleted less than 60 s ago, or 360 s ago
# while their inode table block is dirty (recently_deleted in fs/ext4/ialloc.c).
# New files dirty those blocks again, and after 60 s extractions were still 2-4x slower.
INODE_PAUSE = 370
# Outputs larger than this are deleted once their sizes are recorded.
KEPT_OUTPUT_BYTES = 1 << 30


def export_group(ws: Workspace, name: str, title: str, tree: Path, pure: bool = True) -> Group:
    """Uncompressed export of `tree` to a file: ocilayer (also in pure Python), GNU tar, bsdtar."""
    source = shlex.quote(str(tree))
    outputs = {tool: ws.out / f"{name}-{tool}.tar" for tool in ("ocilayer", "gnutar", "bsdtar")}
    commands = [
        Command("ocilayer export", f"{ws.ocilayer} export {source} -o {outputs['ocilayer']}",
                outputs["ocilayer"]),
        Command("GNU tar -cf", f"tar -cf {outputs['gnutar']} -C {source} .", outputs["gnutar"]),
        Command("bsdtar -cf", f"bsdtar -cf {outputs['bsdtar']} -C {source} .", outputs["bsdtar"]),
    ]  # fmt: skip
    comparisons = [
        Comparison("ocilayer export", "GNU tar -cf", target=1.0),
        Comparison("ocilayer export", "bsdtar -cf"),
    ]
    if pure:
        # --json makes the export compute the sha256 digests, which a plain export skips.
        commands.append(Command(
            "ocilayer export --json",
            f"{ws.ocilayer} export {source} -o {outputs['ocilayer']} --json > /dev/null",
            outputs["ocilayer"],
        ))  # fmt: skip
        comparisons.append(Comparison("ocilayer export --json", "GNU tar -cf"))
        commands.append(Command(
            "ocilayer export, pure Python",
            f"{PURE_PYTHON} {ws.ocilayer} export {source} -o {outputs['ocilayer']}",
            outputs["ocilayer"],
        ))  # fmt: skip
        comparisons.append(Comparison("ocilayer export, pure Python", "GNU tar -cf"))
    return Group(name, title, commands, comparisons)


def compress_group(ws: Workspace, base: Path) -> Group:
    """gzip and zstd exports of the rootfs against tar piped into pigz, gzip and zstd."""
    source = shlex.quote(str(base))
    tar = f"tar -cf - -C {source} ."
    ours_gz, pigz_gz, gzip_gz = (
        ws.out / f"rootfs.{tool}.tar.gz" for tool in ("ocilayer", "pigz", "gzip")
    )
    ours_zst, zstd_zst = (ws.out / f"rootfs.{tool}.tar.zst" for tool in ("ocilayer", "zstd"))
    commands = [
        Command(
            "ocilayer export --compression gzip",
            f"{ws.ocilayer} export {source} --compression gzip -o {ours_gz}",
            ours_gz,
        ),
        Command("tar | pigz -6", f"{tar} | pigz -6 > {pigz_gz}", pigz_gz),
        Command("tar | gzip -6", f"{tar} | gzip -6 > {gzip_gz}", gzip_gz),
        Command(
            "ocilayer export --compression zstd",
            f"{ws.ocilayer} export {source} --compression zstd -o {ours_zst}",
            ours_zst,
        ),
        Command("tar | zstd -T0 -3", f"{tar} | zstd -q -T0 -3 -c > {zstd_zst}", zstd_zst),
        Command(
            "ocilayer export --compression zstd --json",
            f"{ws.ocilayer} export {source} --compression zstd -o {ours_zst} --json > /dev/null",
            ours_zst,
        ),
    ]
    comparisons = [
        Comparison("ocilayer export --compression gzip", "tar | pigz -6", 0.5, size_target=1.10),
        Comparison("ocilayer export --compression gzip", "tar | gzip -6"),
        Comparison("ocilayer export --compression zstd", "tar | zstd -T0 -3", 1.0, size_target=1.0),
        Comparison("ocilayer export --compression zstd --json", "tar | zstd -T0 -3"),
    ]
    return Group("compress-rootfs", "rootfs, compressed export", commands, comparisons)


def prepare_umoci(ws: Workspace, base: Path, next_tree: Path) -> tuple[Path, Path]:
    """Build an OCI image layout whose bundle's rootfs is the changed rootfs.

    The bundle's mtree manifest describes `rootfs/base` as it is on disk (copied with
    its nanosecond times and then repacked with --refresh-bundle), and its rootfs is
    then replaced by a copy of `rootfs/next`. So every `umoci repack` of the bundle
    computes the same change as `ocilayer export next --parent base`, and repeating
    it (without --refresh-bundle) repeats the same work.
    """
    root = ws.work_dir / "umoci"
    layout, bundle = root / "layout", root / "bundle"
    marker = root.with_name("umoci.done")
    if marker.exists():
        return layout, bundle
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:base"])
    run(["umoci", "unpack", "--image", f"{layout}:base", bundle])
    (bundle / "rootfs").rmdir()
    run(["cp", "-a", "--", base, bundle / "rootfs"])
    run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", bundle])
    shutil.rmtree(bundle / "rootfs")
    run(["cp", "-a", "--", next_tree, bundle / "rootfs"])
    marker.touch()
    return layout, bundle


def diff_group(ws: Workspace, base: Path, next_tree: Path) -> Group:
    """Export the rootfs change as a diff layer: ocilayer, umoci repack, containerd's WriteDiff."""
    lower, upper = shlex.quote(str(base)), shlex.quote(str(next_tree))
    diff_tar, diff_gz = ws.out / "diff-ocilayer.tar", ws.out / "diff-ocilayer.tar.gz"
    commands = [
        Command("ocilayer export --parent",
                f"{ws.ocilayer} export {upper} --parent {lower} -o {diff_tar}", diff_tar),
        Command("ocilayer export --parent, gzip",
                f"{ws.ocilayer} export {upper} --parent {lower} -o {diff_gz}", diff_gz),
        Command("ocilayer export --parent --json",
                f"{ws.ocilayer} export {upper} --parent {lower} -o {diff_tar} --json > /dev/null",
                diff_tar),
        Command("ocilayer export --parent, pure Python",
                f"{PURE_PYTHON} {ws.ocilayer} export {upper} --parent {lower} -o {diff_tar}",
                diff_tar),
    ]  # fmt: skip
    comparisons = []
    layout, bundle = prepare_umoci(ws, base, next_tree)
    commands.append(Command("umoci repack (gzip)", f"umoci repack --image {layout}:next {bundle}"))
    comparisons.append(Comparison("ocilayer export --parent, gzip", "umoci repack (gzip)", 0.3))
    comparisons.append(Comparison("ocilayer export --parent", "umoci repack (gzip)", 0.3))
    writediff = build_writediff(ws.work_dir)
    if writediff is not None:
        cd_tar = ws.out / "diff-containerd.tar"
        commands.append(
            Command("containerd WriteDiff", f"{writediff} {lower} {upper} > {cd_tar}", cd_tar)
        )
        comparisons.append(Comparison("ocilayer export --parent", "containerd WriteDiff", 1.0))
        comparisons.append(Comparison("ocilayer export --parent --json", "containerd WriteDiff"))
        comparisons.append(
            Comparison("ocilayer export --parent, pure Python", "containerd WriteDiff")
        )
    return Group("diff-rootfs", "rootfs diff layer (rootfs/next against rootfs/base)",
                 commands, comparisons)  # fmt: skip


def ocilayer_apply_line(ws: Workspace) -> tuple[str, str]:
    """Return the label and command prefix that applies a layer with ocilayer.

    The `ocilayer apply` command is used when it exists; before it does, a script calls
    the library's `import_layer_from_tar`, the code the command wraps.
    """
    program = ws.program
    probe = subprocess.run(
        [*program.argv, "apply", "--help"], capture_output=True, check=False, env=program.env
    )
    if probe.returncode == 0:
        return "ocilayer apply", f"{ws.ocilayer} apply"
    script = shlex.quote(str(REPO / "benchmarks" / "apply_layer.py"))
    python = shlex.quote(sys.executable)
    return (
        "ocilayer apply (library API)",
        f"PYTHONPATH={shlex.quote(str(program.src))} {python} {script}",
    )


def apply_group(ws: Workspace, name: str, title: str, tree: Path) -> Group:
    """Extraction of a layer tar of `tree` into a fresh directory: ocilayer, GNU tar, bsdtar."""
    layer = ws.out / f"{name}-input.tar"
    run([*ws.program.argv, "export", tree, "-o", layer], env=ws.program.env)
    label, apply_command = ocilayer_apply_line(ws)
    quoted = shlex.quote(str(layer))
    targets = {tool: ws.out / f"{name}-{tool}" for tool in ("ocilayer", "gnutar", "bsdtar")}
    commands = [
        Command(label, f"{apply_command} {quoted} {targets['ocilayer']}",
                prepare=ws.fresh_dir_prepare(targets["ocilayer"])),
        Command("GNU tar -xf", f"tar -xf {quoted} -C {targets['gnutar']}",
                prepare=ws.fresh_dir_prepare(targets["gnutar"])),
        Command("bsdtar -xf", f"bsdtar -xf {quoted} -C {targets['bsdtar']}",
                prepare=ws.fresh_dir_prepare(targets["bsdtar"])),
    ]  # fmt: skip
    comparisons = [Comparison(label, "GNU tar -xf", 1.0), Comparison(label, "bsdtar -xf")]
    if label == "ocilayer apply":
        # --json makes the apply compute the diff_id, which a plain apply skips.
        json_label = f"{label} --json"
        commands.append(Command(
            json_label, f"{apply_command} {quoted} {targets['ocilayer']} --json > /dev/null",
            prepare=ws.fresh_dir_prepare(targets["ocilayer"]),
        ))  # fmt: skip
        comparisons.append(Comparison(json_label, "GNU tar -xf"))
    pure_label = f"{label}, pure Python"
    commands.append(Command(
        pure_label, f"{PURE_PYTHON} {apply_command} {quoted} {targets['ocilayer']}",
        prepare=ws.fresh_dir_prepare(targets["ocilayer"]),
    ))  # fmt: skip
    comparisons.append(Comparison(pure_label, "GNU tar -xf"))
    return Group(name, title, commands, comparisons, extracts=layer)


def memory_group(ws: Workspace, small_20k: Path, small_200k: Path) -> Group:
    """ocilayer on 20k and 200k files, for peak RSS (the timing is a by-product)."""
    commands = [
        Command(f"ocilayer export {tree.name}",
                f"{ws.ocilayer} export {shlex.quote(str(tree))} -o {ws.out / 'memory.tar'}")
        for tree in (small_20k, small_200k)
    ]  # fmt: skip
    return Group("memory", "peak RSS, 20k against 200k small files", commands, [], max_runs=1)


GROUP_NAMES = [
    "export-rootfs", "export-small", "export-big", "compress-rootfs", "diff-rootfs",
    "apply-rootfs", "apply-small", "memory",
]  # fmt: skip


def build_groups(ws: Workspace, names: list[str]) -> list[Group]:
    """Build the input trees the chosen groups need, and the groups themselves."""
    builders: dict[str, Callable[[], Group]] = {}
    base = build_base_rootfs(ws.work_dir)
    next_tree = build_next_rootfs(ws.work_dir, base)
    builders["export-rootfs"] = lambda: export_group(ws, "export-rootfs", "rootfs", base)
    builders["export-small"] = lambda: export_group(
        ws, "export-small", "200k files of 0-4 KiB", build_small_tree(ws.work_dir, 200_000)
    )
    builders["export-big"] = lambda: export_group(
        ws, "export-big", "four 1 GiB files", build_big_tree(ws.work_dir), pure=False
    )
    builders["compress-rootfs"] = lambda: compress_group(ws, base)
    builders["diff-rootfs"] = lambda: diff_group(ws, base, next_tree)
    builders["apply-rootfs"] = lambda: apply_group(ws, "apply-rootfs", "extract rootfs", base)
    builders["apply-small"] = lambda: apply_group(
        ws, "apply-small", "extract 200k files", build_small_tree(ws.work_dir, 200_000)
    )
    builders["memory"] = lambda: memory_group(
        ws, build_small_tree(ws.work_dir, 20_000), build_small_tree(ws.work_dir, 200_000)
    )
    return [builders[name]() for name in names]


def run_round(group: Group, json_path: Path, log: Path) -> list[tuple[float, float]]:
    """Run every command of `group` once under hyperfine; return wall and CPU seconds."""
    command = ["hyperfine", "--runs", "1", "--style", "basic", "--export-json", str(json_path)]
    for item in group.commands:
        # sync first, so no command is slowed by writing back the previous one's output.
        command += ["--prepare", f"sync; {item.prepare}" if item.prepare else "sync"]
    for item in group.commands:
        command += ["--command-name", item.label, item.line]
    with open(log, "a") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    data = json.loads(json_path.read_text())
    return [
        (float(result["times"][0]), float(result["user"]) + float(result["system"]))
        for result in data["results"]
    ]


def peak_rss_kib(item: Command, scratch: Path) -> int:
    """Run a command once under GNU time and return its peak RSS in KiB."""
    subprocess.run(["sh", "-c", f"sync; {item.prepare}" if item.prepare else "sync"], check=True)
    report = scratch / "rss.txt"
    subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), "sh", "-c", item.line],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return int(report.read_text().split()[-1])


def measure(group: Group, runs: int, ws: Workspace) -> list[Result]:
    """Run a warm-up round and `runs` timed rounds of a group, then measure peak RSS."""
    results = [Result(group.name, item.label, item.line) for item in group.commands]
    log = ws.out / "hyperfine.log"
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for round_number in range(runs + 1):
            times = run_round(group, scratch / "round.json", log)
            shown = ", ".join(f"{wall:.2f}" for wall, _ in times)
            print(f"  {group.name} round {round_number}: {shown}", file=sys.stderr, flush=True)
            if round_number == 0:
                continue
            for result, (wall, cpu) in zip(results, times, strict=True):
                result.times.append(wall)
                result.cpu_times.append(cpu)
        for item, result in zip(group.commands, results, strict=True):
            result.peak_rss_kib = peak_rss_kib(item, scratch)
            if item.output is not None and item.output.exists():
                result.output_bytes = item.output.stat().st_size
    for item in group.commands:
        output = item.output
        if output is not None and output.exists() and output.stat().st_size > KEPT_OUTPUT_BYTES:
            output.unlink()
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_tables(groups: list[Group], results: dict[str, list[Result]]) -> str:
    """Render the medians and the ratios as Markdown tables."""
    lines = [
        "| group | command | median s | min s | max s | median CPU s | runs | peak RSS | output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group in groups:
        for result in results[group.name]:
            size = human_bytes(result.output_bytes) if result.output_bytes is not None else "-"
            rss = human_bytes((result.peak_rss_kib or 0) * 1024)
            lines.append(
                f"| {group.title} | {_cell(result.label)} | {result.median:.3f}"
                f" | {min(result.times):.3f} | {max(result.times):.3f}"
                f" | {statistics.median(result.cpu_times):.3f}"
                f" | {len(result.times)} | {rss} | {size} |"
            )
    lines += [
        "",
        "| group | ocilayer | peer | time ratio | target | size ratio | size target |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for group in groups:
        by_label = {result.label: result for result in results[group.name]}
        for comparison in group.comparisons:
            ours, peer = by_label[comparison.ours], by_label[comparison.peer]
            ratio = ours.median / peer.median
            target = f"<= {comparison.target:.2f}" if comparison.target else "-"
            size_ratio = "-"
            if comparison.size_target and ours.output_bytes and peer.output_bytes:
                size_ratio = f"{ours.output_bytes / peer.output_bytes:.3f}"
            size_target = f"<= {comparison.size_target:.2f}" if comparison.size_target else "-"
            lines.append(
                f"| {group.title} | {_cell(comparison.ours)} | {_cell(comparison.peer)}"
                f" | {ratio:.2f}x | {target} | {size_ratio} | {size_target} |"
            )
    if "memory" in results:
        small, large = results["memory"]
        if small.peak_rss_kib and large.peak_rss_kib:
            growth = large.peak_rss_kib / small.peak_rss_kib - 1
            lines += ["", f"Peak RSS from 20k to 200k files: {growth:+.1%} (target: within 10%)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help="groups to run (default: all)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per group (default 5)")
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    parser.add_argument(
        "--ocilayer",
        default="HEAD",
        metavar="REV",
        help=f"git revision of ocilayer to time (default HEAD; {WORKING_TREE!r} for the "
        "working tree as it is)",
    )
    args = parser.parse_args()
    if args.list:
        print("\n".join(GROUP_NAMES))
        return 0
    unknown = [name for name in args.groups if name not in GROUP_NAMES]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUP_NAMES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    work_dir = args.work_dir.resolve()
    ocilayer = ocilayer_at(args.ocilayer, work_dir)
    print(f"ocilayer: {ocilayer.version}", file=sys.stderr)
    ws = Workspace(work_dir, ocilayer)
    groups = build_groups(ws, args.groups or GROUP_NAMES)
    results: dict[str, list[Result]] = {}
    # Load average after each group: other work on the machine shows up here.
    loads: dict[str, str] = {}
    try:
        for group in groups:
            print(f"{group.name}: {len(group.commands)} commands, {args.runs} runs",
                  file=sys.stderr, flush=True)  # fmt: skip
            runs = min(args.runs, group.max_runs or args.runs)
            if group.extracts is not None:
                ws.empty_trash()
                ws.check_space(group, runs)
            results[group.name] = measure(group, runs, ws)
            loads[group.name] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    finally:
        ws.discard_trash()

    tables = format_tables(groups, results)
    machine = describe_machine(ws.work_dir)
    report = {
        "ocilayer": ocilayer.version,
        "machine": machine,
        "runs": args.runs,
        "load average after each group": loads,
        "results": {name: [asdict(item) for item in items] for name, items in results.items()},
    }
    (ws.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (ws.out / "results.md").write_text(tables + "\n")
    print(f"- ocilayer: {ocilayer.version}")
    print("\n".join(f"- {key}: {value}" for key, value in machine.items()))
    print()
    print(tables)
    print()
    print("Load average (1, 5, 15 min) after each group:")
    print("\n".join(f"- {name}: {load}" for name, load in loads.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
