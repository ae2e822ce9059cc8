"""Time the single operations that an export of many files, or of big files, is made of.

Sections (all by default, or the ones named):

- syscalls: per-file system calls on the 200k-file tree, by full path and relative
  to a directory file descriptor (open+read+close, lstat, listxattr, scandir).
- entries: the reader side: the walk, `Entry` construction, `entry_from_node` and the
  whole `SnapshotSource.changes()`.
- writer: the writer side alone, on entries read beforehand: `LayerTarWriter.add`
  into a null sink, and `write_layer` into a file.
- bigcopy: ways to copy one 1 GiB file into a file while hashing it with sha256.
- zstd: ocilayer's zstd export of the rootfs with zstandard forced to 0 and 2 threads.

Each timing is one run after one untimed warm-up run, unless said otherwise.

Usage: micro_export.py [--ocilayer REV] [--work-dir DIR] [SECTION ...]
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import DEFAULT_WORK_DIR, WORKING_TREE, ocilayer_at

# zstd comes first because its child processes report peak RSS: a child of a large
# process starts with that process's peak (Linux carries it over fork and exec).
SECTIONS = ["zstd", "syscalls", "entries", "writer", "bigcopy"]
CHUNK = 1 << 20


def _report(label: str, seconds: float, count: int | None = None) -> None:
    per_item = f"  {seconds / count * 1e6:6.2f} us each" if count else ""
    print(f"  {label:66} {seconds:7.3f} s{per_item}", flush=True)


def _time(label: str, work: Callable[[], object], count: int | None = None) -> None:
    work()
    start = time.perf_counter()
    work()
    _report(label, time.perf_counter() - start, count)


def _directories(root: bytes) -> list[tuple[bytes, list[bytes]]]:
    """List the leaf directories of a small-file tree with their sorted file names."""
    found = []
    for top in sorted(os.listdir(root)):
        for sub in sorted(os.listdir(os.path.join(root, top))):
            directory = os.path.join(root, top, sub)
            found.append((directory, sorted(os.listdir(directory))))
    return found


def section_syscalls(work_dir: Path) -> None:
    directories = _directories(os.fsencode(work_dir / "small-200k"))
    paths = [os.path.join(directory, name) for directory, names in directories for name in names]
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

    def open_read_by_path() -> None:
        for path in paths:
            fd = os.open(path, flags)
            os.read(fd, 4097)
            os.close(fd)

    def open_read_by_directory_fd() -> None:
        for directory, names in directories:
            directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            for name in names:
                fd = os.open(name, flags, dir_fd=directory_fd)
                os.read(fd, 4097)
                os.close(fd)
            os.close(directory_fd)

    def open_listxattr_fd_read() -> None:
        for path in paths:
            fd = os.open(path, flags)
            os.listxattr(fd)
            os.read(fd, 4097)
            os.close(fd)

    def lstat_by_path() -> None:
        for path in paths:
            os.lstat(path)

    def fstatat_by_directory_fd() -> None:
        for directory, names in directories:
            directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            for name in names:
                os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
            os.close(directory_fd)

    def listxattr_by_path() -> None:
        for path in paths:
            os.listxattr(path, follow_symlinks=False)

    def scandir_stat() -> None:
        for directory, _ in directories:
            with os.scandir(directory) as entries:
                for entry in entries:
                    entry.stat(follow_symlinks=False)

    count = len(paths)
    print(f"syscalls: {count} files of small-200k")
    _time("open + read + close, by full path", open_read_by_path, count)
    _time("open + read + close, relative to a directory fd", open_read_by_directory_fd, count)
    _time("open + flistxattr(fd) + read + close, by full path", open_listxattr_fd_read, count)
    _time("lstat, by full path", lstat_by_path, count)
    _time("fstatat, relative to a directory fd", fstatat_by_directory_fd, count)
    _time("listxattr, by full path", listxattr_by_path, count)
    _time("scandir + DirEntry.stat", scandir_stat, count)


def section_entries(work_dir: Path) -> None:
    from ocilayer.entry import ChangeKind, Entry, FileType
    from ocilayer.sources.snapshot import SnapshotSource, entry_from_node
    from ocilayer.sources.union import walk_tree
    from ocilayer.xattrs import XattrPolicy

    root = os.fsencode(work_dir / "small-200k")
    nodes = list(walk_tree(root))
    st = nodes[-1].st
    count = len(nodes)

    def build_entries() -> None:
        for node in nodes:
            Entry(path=node.path, kind=ChangeKind.ADD, type=FileType.REGULAR, mode=0o644,
                  uid=0, gid=0, mtime_ns=st.st_mtime_ns, size=st.st_size,
                  link_key=(st.st_dev, st.st_ino), nlink=1, source_path=node.full)  # fmt: skip

    def build_tuples() -> None:
        for node in nodes:
            _ = (node.path, ChangeKind.ADD, FileType.REGULAR, 0o644, 0, 0, st.st_mtime_ns,
                 st.st_size, (st.st_dev, st.st_ino), 1, node.full)  # fmt: skip

    def entries_from_nodes(policy: XattrPolicy) -> Callable[[], None]:
        def build() -> None:
            for node in nodes:
                entry_from_node(node, ChangeKind.ADD, policy)

        return build

    def changes(policy: XattrPolicy) -> Callable[[], None]:
        def walk() -> None:
            for _ in SnapshotSource(root, xattrs=policy).changes():
                pass

        return walk

    print(f"entries: {count} paths of small-200k (reader side)")
    _time("walk_tree (scandir, DirEntry.stat, sort, Node)", lambda: list(walk_tree(root)), count)
    _time("Entry(...) with 11 keyword fields", build_entries, count)
    _time("a tuple of the same values", build_tuples, count)
    _time("entry_from_node, xattrs none", entries_from_nodes(XattrPolicy.NONE), count)
    _time("entry_from_node, xattrs all", entries_from_nodes(XattrPolicy.ALL), count)
    _time("SnapshotSource.changes(), xattrs none", changes(XattrPolicy.NONE), count)
    _time("SnapshotSource.changes(), xattrs all", changes(XattrPolicy.ALL), count)


class _NullSink:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def section_writer(work_dir: Path) -> None:
    for tree in ("small-200k", "rootfs/base"):
        _time_writer(work_dir, tree)
    os.unlink(work_dir / "out" / "micro-writer.tar")


def _time_writer(work_dir: Path, tree: str) -> None:
    from ocilayer.entry import Entry
    from ocilayer.export import write_layer
    from ocilayer.sources.snapshot import SnapshotSource
    from ocilayer.writer import LayerTarWriter

    source = SnapshotSource(os.fsencode(work_dir / tree))
    start = time.perf_counter()
    entries = list(source.changes())
    print(f"writer: {len(entries)} entries of {tree}")
    _report("reader side alone: list(SnapshotSource.changes()), run once",
            time.perf_counter() - start, len(entries))  # fmt: skip

    class Prepared:
        def changes(self) -> list[Entry]:
            return entries

        def lookup(self, path: bytes) -> Entry:
            return source.lookup(path)

    def add_all() -> None:
        writer = LayerTarWriter(_NullSink(), source.lookup)  # type: ignore[arg-type]
        for entry in entries:
            writer.add(entry)
        writer.close()

    def write_file() -> None:
        with open(work_dir / "out" / "micro-writer.tar", "wb", buffering=0) as out:
            write_layer(Prepared(), out)  # type: ignore[arg-type]

    _time("LayerTarWriter.add of every entry into a null sink", add_all, len(entries))
    _time("write_layer into a file (two sha256 passes, file writes)", write_file, len(entries))


def section_bigcopy(work_dir: Path) -> None:
    source = work_dir / "big" / "blob-0.bin"
    target = work_dir / "out" / "micro-big.bin"
    size = source.stat().st_size

    def read_hash_write(hashes: int) -> Callable[[], None]:
        def copy() -> None:
            hashers = [hashlib.sha256() for _ in range(hashes)]
            with open(source, "rb", buffering=0) as reader, open(target, "wb", buffering=0) as out:
                while chunk := reader.read(CHUNK):
                    for hasher in hashers:
                        hasher.update(chunk)
                    out.write(chunk)

        return copy

    def readinto_hash_write() -> None:
        hasher = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with open(source, "rb", buffering=0) as reader, open(target, "wb", buffering=0) as out:
            while count := reader.readinto(buffer):
                hasher.update(view[:count])
                out.write(view[:count])

    def kernel_copy_hash_thread() -> None:
        def hash_mapping() -> None:
            hasher = hashlib.sha256()
            with (
                open(source, "rb") as reader,
                mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ) as mapping,
            ):
                for offset in range(0, size, 8 * CHUNK):
                    hasher.update(mapping[offset : offset + 8 * CHUNK])

        hashing = threading.Thread(target=hash_mapping)
        hashing.start()
        source_fd = os.open(source, os.O_RDONLY)
        target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        remaining = size
        while remaining:
            remaining -= os.copy_file_range(source_fd, target_fd, remaining)
        os.close(source_fd)
        os.close(target_fd)
        hashing.join()

    def gnu_tar() -> None:
        subprocess.run(
            ["tar", "-cf", str(target), "-C", str(source.parent), source.name], check=True
        )

    print(f"bigcopy: {source} ({size} bytes), os.sync() before each, one run each")
    for label, copy in (
        ("read 1 MiB, sha256 twice, write (uncompressed export today)", read_hash_write(2)),
        ("read 1 MiB, sha256 once, write", read_hash_write(1)),
        ("read into one reused buffer, sha256 once, write", readinto_hash_write),
        ("copy_file_range, sha256 of an mmap on a second thread", kernel_copy_hash_thread),
        ("GNU tar -cf of the same file", gnu_tar),
    ):
        os.sync()
        start = time.perf_counter()
        copy()
        _report(label, time.perf_counter() - start)
    target.unlink()


def section_zstd(work_dir: Path) -> None:
    print("zstd: rootfs export with zstandard forced to a thread count, one process each")
    for threads in (0, 2):
        code = (
            "import sys, time, resource, zstandard\n"
            "real = zstandard.ZstdCompressor\n"
            "class Forced(real):\n"
            "    def __init__(self, *args, **kwargs):\n"
            f"        kwargs['threads'] = {threads}\n"
            "        super().__init__(*args, **kwargs)\n"
            "zstandard.ZstdCompressor = Forced\n"
            "from ocilayer import export_layer_to_tar\n"
            "from ocilayer.compression import Compression\n"
            "start = time.perf_counter()\n"
            f"with open({str(work_dir / 'out' / 'micro.tar.zst')!r}, 'wb') as out:\n"
            f"    d = export_layer_to_tar(out, {str(work_dir / 'rootfs' / 'base')!r},"
            " compression=Compression.ZSTD)\n"
            "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "seconds = time.perf_counter() - start\n"
            "print(f'{seconds:.3f} s, {d.size} bytes, peak RSS {rss:.1f} MiB')\n"
        )
        for _ in range(3):
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            print(f"  threads={threads}: {done.stdout.strip()}", flush=True)
    (work_dir / "out" / "micro.tar.zst").unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "sections", nargs="*", metavar="SECTION",
        help=f"sections to run: {', '.join(SECTIONS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--ocilayer", default="HEAD", metavar="REV",
        help=f"git revision to measure (default HEAD; {WORKING_TREE!r} for the working tree)",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args()
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    work_dir = args.work_dir.resolve()
    ocilayer = ocilayer_at(args.ocilayer, work_dir)
    sys.path.insert(0, str(ocilayer.src))
    os.environ["PYTHONPATH"] = str(ocilayer.src)
    print(f"ocilayer: {ocilayer.version}; load average {os.getloadavg()[0]:.2f}")
    (work_dir / "out").mkdir(exist_ok=True)
    sections = {
        "syscalls": section_syscalls, "entries": section_entries, "writer": section_writer,
        "bigcopy": section_bigcopy, "zstd": section_zstd,
    }  # fmt: skip
    for name in args.sections or SECTIONS:
        sections[name](work_dir)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
