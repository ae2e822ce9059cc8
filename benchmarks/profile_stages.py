"""Stage timings and profiles of ocilayer's export, for profile_export.py.

This module imports ocilayer's internal modules, so profile_export.py puts the
chosen version of ocilayer on sys.path before importing it, and it may need an
update when those names change.
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import os
import pstats
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ocilayer.entry import ChangeKind
from ocilayer.export import export_layer_to_tar
from ocilayer.sources.snapshot import SnapshotSource
from ocilayer.sources.union import walk_tree
from ocilayer.writer import LayerTarWriter
from ocilayer.xattrs import XattrPolicy, read_xattrs


def _timed(label: str, work: Callable[[], object], rows: list[tuple[str, float, str]]) -> None:
    work()  # Warm the page cache and the dentry cache first.
    start = time.perf_counter()
    detail = work()
    rows.append((label, time.perf_counter() - start, str(detail or "")))


def stage_walk(root: bytes) -> str:
    count = sum(1 for _ in walk_tree(root))
    return f"{count} paths"


def stage_lstat(root: bytes) -> str:
    paths = [node.full for node in walk_tree(root)]
    start = time.perf_counter()
    for path in paths:
        os.lstat(path)
    return f"{len(paths)} lstat calls alone: {time.perf_counter() - start:.3f} s"


def stage_listxattr(root: bytes) -> str:
    paths = [node.full for node in walk_tree(root)]
    start = time.perf_counter()
    with_xattrs = sum(1 for path in paths if os.listxattr(path, follow_symlinks=False))
    elapsed = time.perf_counter() - start
    return f"{len(paths)} listxattr calls alone: {elapsed:.3f} s, {with_xattrs} paths have xattrs"


def stage_read_xattrs(root: bytes) -> str:
    nodes = list(walk_tree(root))
    start = time.perf_counter()
    for node in nodes:
        if not stat.S_ISSOCK(node.st.st_mode):
            read_xattrs(node.full, XattrPolicy.ALL)
    return f"read_xattrs alone: {time.perf_counter() - start:.3f} s"


def stage_entries(root: bytes) -> str:
    count = sum(1 for _ in SnapshotSource(root).changes())
    return f"{count} entries"


def stage_encode(root: bytes) -> str:
    """Encode every header (no file data) into a discarded buffer."""
    source = SnapshotSource(root)
    entries = [entry for entry in source.changes() if entry.kind is not ChangeKind.DELETE]
    sink = io.BytesIO()
    writer = LayerTarWriter(sink, source.lookup)  # type: ignore[arg-type]
    start = time.perf_counter()
    for entry in entries:
        writer._write_header(writer._header(entry), entry.is_dir)
        if sink.tell() > 64 << 20:
            sink.seek(0)
            sink.truncate()
    elapsed = time.perf_counter() - start
    per_entry = elapsed / max(len(entries), 1) * 1e6
    return f"{len(entries)} headers alone: {elapsed:.3f} s ({per_entry:.1f} us each)"


def stage_read_data(root: bytes) -> str:
    """Open and read every regular file with 1 MiB reads, as the writer does."""
    total = files = 0
    for node in walk_tree(root):
        if stat.S_ISREG(node.st.st_mode):
            with open(node.full, "rb") as source:
                while chunk := source.read(1 << 20):
                    total += len(chunk)
            files += 1
    return f"{files} files, {total} bytes"


def stage_sha256(tar_size: int) -> str:
    block = bytes(1 << 20)
    hasher = hashlib.sha256()
    for _ in range(tar_size >> 20):
        hasher.update(block)
    return f"{tar_size >> 20} MiB"


def run_stages(root: bytes, output: Path) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    _timed("walk (scandir, lstat, sort)", lambda: stage_walk(root), rows)
    _timed("walk + lstat of every path again", lambda: stage_lstat(root), rows)
    _timed("walk + listxattr of every path", lambda: stage_listxattr(root), rows)
    _timed("walk + read_xattrs (policy all)", lambda: stage_read_xattrs(root), rows)
    _timed("walk + entries (SnapshotSource.changes)", lambda: stage_entries(root), rows)
    _timed("entries + header encoding", lambda: stage_encode(root), rows)
    _timed("walk + open and read every file", lambda: stage_read_data(root), rows)

    def full_export() -> str:
        with open(output, "wb") as out:
            descriptor = export_layer_to_tar(out, root)
        return f"{descriptor.size} bytes"

    _timed("full export to a file", full_export, rows)
    tar_size = output.stat().st_size
    _timed("sha256 of as many bytes as the tar", lambda: stage_sha256(tar_size), rows)
    return rows


def profile_export(root: bytes, output: Path, profiler: str, top: int) -> None:
    if profiler == "cprofile":
        profile = cProfile.Profile()
        with open(output, "wb") as out:
            profile.runcall(export_layer_to_tar, out, root)
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)
    elif profiler == "pyinstrument":
        from pyinstrument import Profiler

        sampler = Profiler(interval=0.0005)
        with open(output, "wb") as out:
            sampler.start()
            export_layer_to_tar(out, root)
            sampler.stop()
        print(sampler.output_text(unicode=False, color=False, show_all=False))
