"""The C file runs of apply: the same tree, result and errors as the pure-Python applier.

After the applier has applied an entry, `ocilayer._filerun` creates the plain regular
files and symlinks that follow it in one directory. Most tests apply one layer twice,
once with the C code and once with OCILAYER_PURE_PYTHON=1, each into a fresh target
(with the same lower layer or parent layer), and require equal results: the tree
(types, modes, owners, mtimes, atimes, sizes, allocated blocks, content, xattrs and
hardlink groups), the AppliedLayer, the error type and message, and the final
Progress totals. A counting wrapper around `create_files` shows which files the C
code created, so that each edge case is known to reach it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, NamedTuple

import pytest
import zstandard

from apply_helpers import (
    MTIME_NS,
    CancellingReader,
    apply,
    directory,
    entry,
    file,
    hardlink,
    symlink,
    tar,
    whiteout,
)
from capabilities import CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, capabilities_dropped
from ocilayer import XattrPolicy, export_layer_to_tar
from ocilayer.apply import AppliedLayer, ApplyError, import_layer_from_tar
from ocilayer.apply.filerun import FileRuns
from ocilayer.errors import Cancelled
from ocilayer.progress import Progress
from ocilayer.tarformat.encoder import format_pax_record
from rawtar import BLOCK, HEADER_FIELDS, header_checksum
from treegen import TreeGenOptions, build_pair, generate_pair
from trees import read_xattrs

pytestmark = pytest.mark.usefixtures("as_root")

PURE_PYTHON = "OCILAYER_PURE_PYTHON"
MAX_DATA = 1 << 18
MTIME = MTIME_NS // 10**9
KIB = 1 << 10
MIB = 1 << 20
# The largest values of a 7-digit (uid, gid) and an 11-digit (mtime) octal field.
OCTAL_7_MAX = 0o7777777
OCTAL_11_MAX = 0o77777777777
USTAR_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"

Target = Literal["rootfs", "overlay"]
# One group of a C run's result: a directory relative to the run's first one, its
# mode and mtime when the run created it (mode -1 when not), and the names created in it.
Group = tuple[bytes, int, int, list[bytes]]
Prepare = Callable[[Path, Path], None]

_FIELD_SLICES = {name: slice(offset, offset + width) for name, offset, width in HEADER_FIELDS}


@pytest.fixture(autouse=True)
def c_lane_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test with the C code on, even when the suite runs with it turned off."""
    monkeypatch.delenv(PURE_PYTHON, raising=False)


def filerun_module() -> ModuleType:
    return importlib.import_module("ocilayer._filerun")


# The C function itself, which the counting wrapper below calls.
CREATE_FILES = filerun_module().create_files


# Raw tar entries, every header byte under the test's control


def ustar_header(
    name: bytes,
    *,
    size: int = 0,
    prefix: bytes = b"",
    typeflag: bytes = b"0",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    magic: bytes = USTAR_MAGIC,
    raw: dict[str, bytes] | None = None,
) -> bytes:
    """Build a USTAR header block. `raw` sets fields byte for byte before the checksum."""
    block = bytearray(BLOCK)
    values = {
        "name": name,
        "mode": b"%07o\x00" % mode,
        "uid": b"%07o\x00" % uid,
        "gid": b"%07o\x00" % gid,
        "size": b"%011o\x00" % size,
        "mtime": b"%011o\x00" % mtime,
        "typeflag": typeflag,
        "magic": magic[:6],
        "version": magic[6:],
        "devmajor": b"0000000\x00",
        "devminor": b"0000000\x00",
        "prefix": prefix,
    }
    values.update(raw or {})
    for field_name, value in values.items():
        where = _FIELD_SLICES[field_name]
        width = where.stop - where.start
        assert len(value) <= width, f"{field_name} value {value!r} is wider than {width}"
        block[where] = value.ljust(width, b"\x00")
    block[148:156] = b"%06o\x00 " % header_checksum(bytes(block))
    return bytes(block)


def raw_file(name: bytes, content: bytes = b"", **fields: object) -> bytes:
    """Encode a regular file entry with `ustar_header`, its data padded to a whole block."""
    block = ustar_header(name, size=len(content), **fields)  # type: ignore[arg-type]
    return block + content + bytes(-len(content) % BLOCK)


def with_checksum(entry_bytes: bytes, checksum: bytes) -> bytes:
    """Return the entry with its checksum field replaced by `checksum`."""
    return entry_bytes[:148] + checksum.ljust(8, b"\x00") + entry_bytes[156:]


def signed_checksum(block: bytes) -> bytes:
    """Return the checksum field of the old writers that summed the bytes as signed chars."""
    summed = block[:148] + b" " * 8 + block[156:]
    total = sum(byte - 256 if byte > 0x7F else byte for byte in summed)
    return b"%06o\x00 " % total


def pattern(size: int, seed: int = 0) -> bytes:
    """Return `size` bytes that are not all zero (and differ between seeds)."""
    unit = hashlib.sha256(b"%d" % seed).digest()
    return (unit * (size // len(unit) + 1))[:size]


# One lane's result


class PathState(NamedTuple):
    """The attributes of one path that both lanes must give. Times of the test's run are "now"."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    blocks: int | None
    mtime: int | str
    atime: int | str
    rdev: tuple[int, int] | None
    link_target: bytes | None
    xattrs: tuple[tuple[bytes, bytes], ...]
    content: str | None
    links: tuple[bytes, ...]


def snapshot_tree(root: Path, window: tuple[int, int]) -> dict[bytes, PathState]:
    """Describe every path below `root` without following symlinks.

    Each path is stat'ed before anything reads it, so reading does not change the
    atimes that are compared. Times inside `window` (the test's own run) are the
    applier's "now", for directories that the layer changes but does not list, so
    they compare as one value.
    """
    base = os.fsencode(root)
    stats: dict[bytes, os.stat_result] = {}
    pending = [b""]
    while pending:
        relative = pending.pop()
        directory_path = os.path.join(base, relative) if relative else base
        for name in sorted(os.listdir(directory_path)):
            path = relative + b"/" + name if relative else name
            stats[path] = os.lstat(os.path.join(base, path))
            if stat.S_ISDIR(stats[path].st_mode):
                pending.append(path)

    def when(ns: int) -> int | str:
        return "now" if window[0] <= ns <= window[1] else ns

    inodes: dict[tuple[int, int], list[bytes]] = {}
    for path, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            inodes.setdefault((st.st_dev, st.st_ino), []).append(path)
    states: dict[bytes, PathState] = {}
    for path, st in sorted(stats.items()):
        full = os.path.join(base, path)
        kind = stat.S_IFMT(st.st_mode)
        content = None
        if kind == stat.S_IFREG:
            with open(full, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
        device = kind in (stat.S_IFCHR, stat.S_IFBLK)
        states[path] = PathState(
            kind=f"{kind:o}",
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind in (stat.S_IFREG, stat.S_IFLNK) else 0,
            blocks=st.st_blocks if kind == stat.S_IFREG else None,
            mtime=when(st.st_mtime_ns),
            atime=when(st.st_atime_ns),
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if device else None,
            link_target=os.readlink(full) if kind == stat.S_IFLNK else None,
            xattrs=tuple(sorted(read_xattrs(full).items())),
            content=content,
            links=tuple(sorted(inodes.get((st.st_dev, st.st_ino), []))),
        )
    return states


def outside_state(outside: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Return (mode, inode, mtime, content) of each file in `outside`, which has no subdirectories.

    Atimes are left out, because reading a file for the comparison changes its atime.
    """
    state = {}
    for path in sorted(outside.iterdir()):
        st = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        state[path.name] = (st.st_mode, st.st_ino, st.st_mtime_ns, content)
    return state


@dataclass
class LaneResult:
    """The outcome of applying a layer in one lane."""

    target: Path
    result: AppliedLayer | None
    # The type name and the message, with the target path replaced by `<target>`.
    error: tuple[str, str] | None
    progress: tuple[int, int]
    # Paths of the files and symlinks that the C code created, in order.
    created_in_c: list[bytes]
    exception: BaseException | None = None


class CreatedInC:
    """A wrapper around `create_files` of the C module that records the paths it created."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[bytes] = []

        def counting(
            data: bytes,
            position: int,
            dir_fd: int,
            directory_path: bytes,
            chown: bool,
            directories: bool,
        ) -> tuple[int, list[Group], int]:
            consumed, groups, data_bytes = CREATE_FILES(
                data, position, dir_fd, directory_path, chown, directories
            )
            for relative, mode, _, names in groups:
                path = b"/".join(part for part in (directory_path, relative) if part)
                if mode >= 0:
                    self.paths.append(path + b"/")
                self.paths.extend(b"/".join((path, name)) if path else name for name in names)
            return consumed, groups, data_bytes

        monkeypatch.setattr(filerun_module(), "create_files", counting)


def apply_lane(
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
    root: Path,
    parents: Sequence[Path],
    *,
    pure: bool,
    **options: object,
) -> LaneResult:
    """Apply `data` to `root` in one lane, catching the error it raises."""
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    else:
        monkeypatch.delenv(PURE_PYTHON, raising=False)
    created = CreatedInC(monkeypatch)
    progress = Progress("apply", stream=io.StringIO())
    result = None
    error = None
    exception = None
    try:
        result = import_layer_from_tar(
            io.BytesIO(data),
            root,
            parents,
            progress=progress,
            **options,  # type: ignore[arg-type]
        )
    except Exception as raised:
        exception = raised
        error = (type(raised).__name__, str(raised).replace(os.fspath(root), "<target>"))
    finally:
        monkeypatch.delenv(PURE_PYTHON, raising=False)
    return LaneResult(
        root, result, error, (progress.entries, progress.bytes), created.paths, exception
    )


@dataclass(frozen=True)
class Case:
    """A layer to apply in both lanes.

    `lower` is applied first, into the target for a rootfs target or as the parent
    layer of an overlay target. `prepare(target, outside)` then changes the target
    before the layer is applied, with `outside` a directory next to the target that
    the apply must not change.
    """

    layer: bytes
    lower: bytes | None = None
    prepare: Prepare | None = None


def compare_lanes(
    monkeypatch: pytest.MonkeyPatch,
    base: Path,
    case: Case,
    *,
    target: Target = "rootfs",
    rootless: bool = False,
    **options: object,
) -> LaneResult:
    """Apply `case` with and without the C code and assert equal outcomes.

    Returns the C lane's result. `outside/canary` (see Case) must be unchanged.
    """
    outside = base / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "canary").write_bytes(b"canary")
    parents: list[Path] = []
    if case.lower is not None and target == "overlay":
        parent = base / "parent"
        monkeypatch.setenv(PURE_PYTHON, "1")
        apply(case.lower, parent, target="overlay")
        parents.append(parent)
    before_outside = outside_state(outside)

    started = time.time_ns()
    lanes: dict[bool, LaneResult] = {}
    for pure in (False, True):
        lane_target = base / ("python" if pure else "c") / "target"
        lane_target.mkdir(parents=True)
        if case.lower is not None and target == "rootfs":
            monkeypatch.setenv(PURE_PYTHON, "1")
            apply(case.lower, lane_target)
        if case.prepare is not None:
            case.prepare(lane_target, outside)
            before_outside = outside_state(outside)
        lanes[pure] = apply_lane(
            monkeypatch,
            case.layer,
            lane_target,
            parents,
            pure=pure,
            target=target,
            rootless=rootless,
            **options,
        )
        assert outside_state(outside) == before_outside, "the apply changed outside/"
    # File times come from the kernel's coarse clock, which may lag time_ns() by a tick.
    window = (started - 10**9, time.time_ns() + 10**9)

    in_c, pure_python = lanes[False], lanes[True]
    assert pure_python.created_in_c == []
    assert in_c.error == pure_python.error
    assert in_c.result == pure_python.result
    # After an error the totals are those of the last update, which the lanes call at
    # different times: Python before each entry, C after each run.
    if in_c.error is None:
        assert in_c.progress == pure_python.progress
    if isinstance(in_c.exception, ApplyError) and isinstance(pure_python.exception, ApplyError):
        assert in_c.exception.entry == pure_python.exception.entry
        assert in_c.exception.offset == pure_python.exception.offset
        assert in_c.exception.hint == pure_python.exception.hint
    assert_same_trees(in_c.target, pure_python.target, window)
    return in_c


def assert_same_trees(in_c: Path, pure_python: Path, window: tuple[int, int]) -> None:
    """Assert equal trees, listing each differing attribute of each path."""
    tree_c = snapshot_tree(in_c, window)
    tree_python = snapshot_tree(pure_python, window)
    problems = []
    for path in sorted(tree_c.keys() | tree_python.keys()):
        state_c, state_python = tree_c.get(path), tree_python.get(path)
        if state_c is None or state_python is None:
            problems.append(f"{path!r} exists only in the {'C' if state_c else 'Python'} lane")
            continue
        for field_name, value_c, value_python in zip(
            PathState._fields, state_c, state_python, strict=True
        ):
            if value_c != value_python:
                problems.append(f"{path!r} {field_name}: C {value_c!r}, Python {value_python!r}")
    assert not problems, "trees differ:\n  " + "\n  ".join(problems[:30])


TARGETS = [
    pytest.param("rootfs", False, id="rootfs"),
    pytest.param("rootfs", True, id="rootfs-rootless"),
    pytest.param("overlay", False, id="overlay"),
    pytest.param("overlay", True, id="overlay-rootless"),
]


# The extension


def test_extension_built_and_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("ocilayer._filerun")

    assert module.MAX_DATA == MAX_DATA
    assert callable(module.create_files)
    monkeypatch.setenv(PURE_PYTHON, "1")
    assert FileRuns.start(object()) is None  # type: ignore[arg-type]


def test_plain_run_created_in_c(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    names = [b"d/f%02d" % number for number in range(50)]
    layer = tar(directory("d/"), *(file(name, pattern(100, len(name))) for name in names))

    in_c = compare_lanes(monkeypatch, tmp_path, Case(layer))

    # The applier may create the first file of the run, the C code creates the others.
    assert in_c.created_in_c[-49:] == names[1:]
    assert in_c.result is not None
    assert in_c.result.size == 50 * 100
    assert in_c.progress == (51, len(layer))


def test_create_files_stops_at_directory(tmp_path: Path) -> None:
    """Without `directories`, the C code stops at a directory and returns what it consumed."""
    run = file("d/a", "a") + file("d/b", "bb") + directory("d/sub/") + file("d/c", "c")
    target = tmp_path / "target"
    (target / "d").mkdir(parents=True)
    dir_fd = os.open(target / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        result = CREATE_FILES(run, 0, dir_fd, b"d", True, False)
    finally:
        os.close(dir_fd)

    assert result == (4 * BLOCK, [(b"", -1, 0, [b"a", b"b"])], 3)
    assert sorted(os.listdir(target / "d")) == ["a", "b"]
    assert os.lstat(target / "d/b").st_mtime_ns == MTIME_NS


def test_create_files_goes_down_and_back_up(tmp_path: Path) -> None:
    """With `directories`, a run creates directories, enters them and comes back up."""
    run = (
        file("d/a", "a")
        + directory("d/sub/", 0o750, uid=7, gid=8)
        + file("d/sub/x", "xx")
        + directory("d/sub/deeper/")
        + symlink("d/sub/deeper/link", "../x")
        + file("d/b", "b")
        + directory("d/other/", 0o2755)
        + file("d/other/y", "y")
        + file("elsewhere/z", "z")
    )
    target = tmp_path / "target"
    (target / "d").mkdir(parents=True)
    dir_fd = os.open(target / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        consumed, groups, data_bytes = CREATE_FILES(run, 0, dir_fd, b"d", True, True)
    finally:
        os.close(dir_fd)

    assert consumed == len(run) - len(file("elsewhere/z", "z"))
    assert groups == [
        (b"", -1, 0, [b"a"]),
        (b"sub", 0o750, MTIME, [b"x"]),
        (b"sub/deeper", 0o755, MTIME, [b"link"]),
        (b"", -1, 0, [b"b"]),
        (b"other", 0o2755, MTIME, [b"y"]),
    ]
    assert data_bytes == 5
    sub = os.lstat(target / "d/sub")
    assert (stat.S_IMODE(sub.st_mode), sub.st_uid, sub.st_gid) == (0o750, 7, 8)
    assert stat.S_IMODE(os.lstat(target / "d/other").st_mode) == 0o2755
    assert os.readlink(target / "d/sub/deeper/link") == "../x"
    assert (target / "d/other/y").read_bytes() == b"y"
    assert not (target / "elsewhere").exists()


def test_create_files_rejects_bad_arguments(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError, match=r"^position 1025 is outside the buffer of 1024 "):
            CREATE_FILES(bytes(1024), 1025, dir_fd, b"", True, True)
        with pytest.raises(ValueError, match=r"^position -1 is outside"):
            CREATE_FILES(bytes(1024), -1, dir_fd, b"", True, True)
        with pytest.raises(ValueError, match=r"^directory path of 4096 bytes is too long"):
            CREATE_FILES(bytes(1024), 0, dir_fd, b"d" * 4096, True, True)
    finally:
        os.close(dir_fd)
    assert os.listdir(tmp_path) == []


def test_create_files_depth_limit(tmp_path: Path) -> None:
    """A run goes down at most MAX_DEPTH levels; the applier takes the next directory."""
    max_depth = filerun_module().MAX_DEPTH
    run = b"".join(directory("n/" * level) for level in range(1, max_depth + 3))
    target = tmp_path / "target"
    target.mkdir()
    dir_fd = os.open(target, os.O_PATH | os.O_DIRECTORY)
    try:
        consumed, groups, _ = CREATE_FILES(run, 0, dir_fd, b"", True, True)
    finally:
        os.close(dir_fd)
    assert consumed == max_depth * BLOCK
    assert [relative for relative, *_ in groups] == [
        b"/".join([b"n"] * level) for level in range(1, max_depth + 1)
    ]
    assert (target / ("n/" * max_depth)).is_dir()
    assert not (target / ("n/" * (max_depth + 1))).exists()


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_create_files_takes_any_buffer(tmp_path: Path, kind: type) -> None:
    """The reader passes a view of its reusable buffer; the result is that of bytes."""
    target = tmp_path / "target"
    target.mkdir()
    data = file("a", "abc") + file("b", "") + directory("c/")
    dir_fd = os.open(target, os.O_PATH | os.O_DIRECTORY)
    try:
        result = CREATE_FILES(kind(bytearray(b"x" * 7 + data)), 7, dir_fd, b"", True, False)
    finally:
        os.close(dir_fd)
    assert result == (2 * BLOCK + BLOCK, [(b"", -1, 0, [b"a", b"b"])], 3)
    assert sorted(os.listdir(target)) == ["a", "b"]
    assert (target / "a").read_bytes() == b"abc"


def test_create_files_buffer_changed_midway(tmp_path: Path) -> None:
    """A buffer changed during the call never makes C use a name it did not check.

    Another thread keeps turning the names of the headers into `../escape` (with a
    valid checksum) and back while the run is created. Whatever each header read as,
    every file created is one of the names checked, inside the target directory.
    """
    count = 300
    headers = [file(b"f%03d" % index, "x") for index in range(count)]
    hostile = [file(b"../escape%03d" % index, "x") for index in range(count)]
    for attempt in range(20):
        target = tmp_path / f"target{attempt}" / "inner"
        target.mkdir(parents=True)
        buffer = bytearray(b"".join(headers))
        stop = threading.Event()

        def flip(buffer: bytearray = buffer, stop: threading.Event = stop) -> None:
            turn = 0
            while not stop.is_set():
                source = hostile if turn % 2 == 0 else headers
                for index in range(0, count, 3):
                    start = index * 2 * BLOCK
                    buffer[start : start + BLOCK] = source[index][:BLOCK]
                turn += 1

        flipper = threading.Thread(target=flip)
        flipper.start()
        dir_fd = os.open(target, os.O_PATH | os.O_DIRECTORY)
        try:
            _, groups, _ = CREATE_FILES(memoryview(buffer), 0, dir_fd, b"", True, True)
        finally:
            os.close(dir_fd)
            stop.set()
            flipper.join()
        names = [name for _, _, _, group_names in groups for name in group_names]
        assert all(b"/" not in name for name in names)
        assert sorted(os.listdir(target)) == sorted(os.fsdecode(name) for name in names)
        assert os.listdir(target.parent) == ["inner"]


def test_starts_run_checks_next_header() -> None:
    starts_run = filerun_module().starts_run
    data = file("d/a", "a") + directory("d/sub/") + file("e/b", "b")
    assert starts_run(data, 0, b"d", False) is True
    assert starts_run(data, 0, b"e", False) is False
    assert starts_run(data, 2 * BLOCK, b"d", False) is False
    assert starts_run(data, 2 * BLOCK, b"d", True) is True
    assert starts_run(data, 2 * BLOCK, b"", True) is False
    assert starts_run(data, 3 * BLOCK, b"e", False) is True
    assert starts_run(data, len(data) - 100, b"e", False) is False


def test_directories_keep_descriptors_low(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Many directory entries in a row open no more descriptors with C than without."""
    import resource

    layer = b"".join(directory(f"e{index:03}/") for index in range(300))
    layer = tar(layer + file("z/f", "f"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 200, hard))
    try:
        for pure in (False, True):
            if pure:
                monkeypatch.setenv("OCILAYER_PURE_PYTHON", "1")
            target = tmp_path / f"target-{pure}"
            import_layer_from_tar(io.BytesIO(layer), target)
            assert (target / "z" / "f").read_bytes() == b"f"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _FailingReader(io.RawIOBase):
    """A layer source that raises EIO once `limit` bytes have been read."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = data
        self._limit = limit
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._position >= self._limit:
            raise OSError(5, "Input/output error")
        count = min(len(buffer), self._limit - self._position)
        buffer[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count


def test_source_read_error_names_an_entry(tmp_path: Path) -> None:
    """A read error of the source met while reading ahead is an ApplyError with context."""
    layer = tar(b"".join(file(f"d/f{index:04}", "x" * 3000) for index in range(400)))
    reader = io.BufferedReader(_FailingReader(layer, 600_000))
    with pytest.raises(ApplyError, match=r"^entry 'd/f\d{4}' \(offset \d+\): Input/output error"):
        import_layer_from_tar(reader, tmp_path / "target")


# Directories in the C runs

NESTED_LAYER = tar(
    directory("top/"),
    file("top/a", "a"),
    directory("top/sub/", 0o750, uid=7, gid=8),
    file("top/sub/x", "x"),
    directory("top/sub/deeper/", 0o700),
    symlink("top/sub/deeper/up", "../x"),
    directory("top/sub/deeper/deepest/", 0o555),
    file("top/sub/b", "b"),
    directory("top/other/", 0o3775),
    file("top/z", "z"),
    directory("second/"),
    directory("second/inner/", 0o711),
    file("second/inner/f", "f"),
)


@pytest.mark.parametrize(("target", "rootless"), TARGETS)
def test_nested_directories_created_in_c(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, target: Target, rootless: bool
) -> None:
    in_c = compare_lanes(
        monkeypatch, tmp_path, Case(NESTED_LAYER), target=target, rootless=rootless
    )
    if target == "overlay":
        # The overlay applier's hook for new directories keeps them in Python.
        assert not any(path.endswith(b"/") for path in in_c.created_in_c)
        return
    assert in_c.created_in_c == [
        b"top/a",
        b"top/sub/",
        b"top/sub/x",
        b"top/sub/deeper/",
        b"top/sub/deeper/up",
        b"top/sub/deeper/deepest/",
        b"top/sub/b",
        b"top/other/",
        b"top/z",
        b"second/inner/",
        b"second/inner/f",
    ]


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
@pytest.mark.parametrize(
    "later",
    [
        file("x/y/.wh.f"),
        file("x/y/.wh..wh..opq"),
        file(".wh.x"),
        entry("x/y/f", b"6"),
        directory("x/y/", 0o500),
    ],
    ids=["whiteout", "opaque", "whiteout-parent", "duplicate", "directory-again"],
)
def test_absolute_names_at_the_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, later: bytes, rootless: bool
) -> None:
    """`/x/` is the layer's `x`: C took it as `/x` and lost the layer's own paths."""
    layer = tar(
        file("top", "t"),
        directory("/x/"),
        directory("/x/y/", 0o750),
        file("/x/y/f", "1"),
        file("/x/g", "2"),
        later,
    )
    in_c = compare_lanes(monkeypatch, tmp_path, Case(layer), rootless=rootless)
    assert not any(path.startswith(b"/") for path in in_c.created_in_c)


def existing_directory_and_file(target: Path, outside: Path) -> None:
    """Put a directory at top/sub and a file at top/other before the layer."""
    (target / "top/sub").mkdir(parents=True)
    (target / "top/sub/old").write_bytes(b"old")
    os.chmod(target / "top/sub", 0o700)
    (target / "top/other").write_bytes(b"a file")


def test_directories_that_exist_go_to_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A directory that exists is merged, and a file in the way replaced, by the applier."""
    in_c = compare_lanes(
        monkeypatch, tmp_path, Case(NESTED_LAYER, prepare=existing_directory_and_file)
    )
    assert b"top/sub/" not in in_c.created_in_c
    assert b"top/other/" not in in_c.created_in_c
    assert b"top/sub/deeper/" in in_c.created_in_c
    assert (in_c.target / "top/sub/old").read_bytes() == b"old"
    assert stat.S_IMODE(os.lstat(in_c.target / "top/sub").st_mode) == 0o750
    assert stat.S_ISDIR(os.lstat(in_c.target / "top/other").st_mode)


def test_tree_deeper_than_a_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Past MAX_DEPTH levels the applier takes a directory, and a new run starts below it."""
    depth = filerun_module().MAX_DEPTH + 20
    entries = [directory("d/")]
    for level in range(1, depth + 1):
        path = "d/" + "n/" * level
        entries += [directory(path), file(path + "f", str(level))]
    in_c = compare_lanes(monkeypatch, tmp_path, Case(tar(*entries)))
    created_directories = [path for path in in_c.created_in_c if path.endswith(b"/")]
    assert len(created_directories) == depth - 1
    assert len(in_c.created_in_c) == 2 * depth - 1


# Files created with their own mode

MODE_LAYER = tar(
    directory("d/"),
    file("d/lead", "lead"),
    *(file(f"d/m{mode:04o}", "x", mode) for mode in (0o644, 0o600, 0o755, 0o664, 0o000, 0o777)),
    file("d/setuid", "s", 0o4755),
    file("d/setgid-group", "g", 0o2750, gid=50),
    file("d/other-owner", "o", 0o640, uid=1000, gid=1000),
    directory("shared/", 0o2775, gid=50),
    file("shared/lead", "lead"),
    file("shared/root-group", "r", 0o644),
    file("shared/own-group", "o", 0o644, gid=50),
)
MODE_EXPECTED = {
    "d/m0644": (0o644, 0, 0),
    "d/m0600": (0o600, 0, 0),
    "d/m0755": (0o755, 0, 0),
    "d/m0664": (0o664, 0, 0),
    "d/m0000": (0o000, 0, 0),
    "d/m0777": (0o777, 0, 0),
    "d/setuid": (0o4755, 0, 0),
    "d/setgid-group": (0o2750, 0, 50),
    "d/other-owner": (0o640, 1000, 1000),
    "shared/root-group": (0o644, 0, 0),
    "shared/own-group": (0o644, 0, 50),
}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_files_created_with_their_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, umask: int
) -> None:
    """Files get the entry's mode and owner under any umask, in a setgid directory too."""
    previous = os.umask(umask)
    try:
        in_c = compare_lanes(monkeypatch, tmp_path, Case(MODE_LAYER))
    finally:
        os.umask(previous)
    for path, expected in MODE_EXPECTED.items():
        st = os.lstat(in_c.target / path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == expected, path
    assert b"shared/own-group" in in_c.created_in_c
    assert b"d/m0000" in in_c.created_in_c


def traced_apply(layer: Path, target: Path, calls: str, *, pure: bool) -> list[str]:
    """Run `ocilayer apply` under strace with umask 022; return the trace of `calls`."""
    trace_path = target.parent / "trace"
    env = {name: value for name, value in os.environ.items() if name != PURE_PYTHON}
    if pure:
        env[PURE_PYTHON] = "1"
    subprocess.run(
        ["strace", "-f", "-o", str(trace_path), "-e", f"trace={calls}",
         sys.executable, "-m", "ocilayer", "apply", str(layer), str(target)],
        check=True, env=env, stdout=subprocess.DEVNULL, umask=0o022,
    )  # fmt: skip
    return trace_path.read_text().splitlines()


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_own_files_skip_fchown_and_fchmod(tmp_path: Path, pure: bool) -> None:
    """Files this process owns with their mode need no fchown or fchmod after the create."""
    own = [file(f"d/f{index:02}", "x", 0o644) for index in range(40)]
    other = [file(f"e/f{index:02}", "x", 0o644, uid=1000) for index in range(10)]
    layer_path = tmp_path / "layer.tar"
    layer_path.write_bytes(tar(directory("d/"), *own, directory("e/"), *other))
    lines = traced_apply(layer_path, tmp_path / "target", "fchown,fchmod", pure=pure)
    calls = [line.split("(")[0].split()[-1] for line in lines]
    # Only the other owner's 10 files, created with mode 0600, and the directories d
    # and e need them: none of the 40 files of this process's ids.
    assert calls.count("fchown") == 10 + 2
    assert calls.count("fchmod") == 10 + 2
    st = os.lstat(tmp_path / "target/e/f03")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, 1000)


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_other_group_directory_gets_private_create(tmp_path: Path, pure: bool) -> None:
    """In a setgid directory of another group, a file is created 0600, not 0770.

    The kernel gives the new file the directory's group, and with the entry's mode
    that group could open the file while its data is written, before the fchown.
    """
    names = {"own": ["own0", "own1", "own2"], "other": ["other0", "other1", "other2"]}
    layer_path = tmp_path / "layer.tar"
    layer_path.write_bytes(
        tar(*(file(f"{parent}/{name}", "x", 0o770) for parent in names for name in names[parent]))
    )
    target = tmp_path / "target"
    for parent, gid in (("own", 0), ("other", 60)):
        (target / parent).mkdir(parents=True)
        os.chown(target / parent, 0, gid)
        os.chmod(target / parent, 0o2775)
    # A create reads like: openat(5, "own0", O_WRONLY|O_CREAT|O_EXCL|..., 0770) = 6
    creates = {}
    for line in traced_apply(layer_path, target, "openat", pure=pure):
        if "O_CREAT" in line:
            name = line.split('"')[1]
            creates[name] = line.rsplit(")", 1)[0].rsplit(", ", 1)[1]
    assert creates == {
        "own0": "0770", "own1": "0770", "own2": "0770",
        "other0": "0600", "other1": "0600", "other2": "0600",
    }  # fmt: skip
    for parent in names:
        for name in names[parent]:
            st = os.lstat(target / parent / name)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o770, 0, 0), name


# Layers exported by ocilayer from generated trees

# The base layer of each of these seeds has runs of plain files for the C code.
GENERATED_SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize(("target", "rootless"), TARGETS)
@pytest.mark.parametrize("seed", GENERATED_SEEDS)
def test_generated_layers_identical(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seed: int, target: Target, rootless: bool
) -> None:
    pair = generate_pair(seed, TreeGenOptions(size=80, changes=25))
    lower_tree, upper_tree = build_pair(tmp_path / "trees", pair)
    layers = []
    for tree, parents in ((lower_tree, []), (upper_tree, [lower_tree])):
        buffer = io.BytesIO()
        export_layer_to_tar(buffer, tree, parents, xattrs=XattrPolicy.ALL)
        layers.append(buffer.getvalue())
    base_layer, diff_layer = layers

    base_in_c = compare_lanes(
        monkeypatch, tmp_path / "base", Case(base_layer), target=target, rootless=rootless
    )
    compare_lanes(
        monkeypatch,
        tmp_path / "diff",
        Case(diff_layer, lower=base_layer),
        target=target,
        rootless=rootless,
    )

    assert base_in_c.created_in_c, pair.describe()
    if target == "rootfs":
        assert any(path.endswith(b"/") for path in base_in_c.created_in_c), pair.describe()


# Hand-made layers: sizes, names, headers and what the target already contains


def canary_symlinks(target: Path, outside: Path) -> None:
    """Put symlinks to `outside` at d/link (to a file) and d/dangling (to a missing name)."""
    (target / "d").mkdir(exist_ok=True)
    os.symlink(outside / "canary", target / "d/link")
    os.symlink(outside / "missing", target / "d/dangling")


def outside_directory_symlink(target: Path, outside: Path) -> None:
    """Make `escape` a symlink to the directory `outside`."""
    os.symlink(outside, target / "escape")


SIZES = [0, 1, 511, 512, 4095, 4096, 65536, MAX_DATA, MAX_DATA + 1]
SIZE_LAYER = tar(
    file("d/lead", "lead"),
    *(file(f"d/s{size}", pattern(size, size)) for size in SIZES),
    file("d/z4095", bytes(4095)),
    file("d/z4096", bytes(4096)),
    file("d/z8192", bytes(8192)),
    file("d/z300k", bytes(300 * KIB)),
    file("d/after", "after"),
)
# A run of 1.7 MiB, which crosses several read-ahead buffers of about 513 KiB, with a
# few large files in it that the C code does and does not take.
LONG_RUN_FILES = 400
LONG_RUN_LAYER = tar(
    directory("d/"),
    *(file(f"d/small{number:04d}", pattern(1000, number)) for number in range(LONG_RUN_FILES)),
    file("d/big", pattern(MAX_DATA, 1)),
    *(file(f"d/mid{number:02d}", pattern(200 * KIB, number)) for number in range(4)),
    file("d/bigger", pattern(MAX_DATA + 1, 2)),
    file("d/last", "last"),
)

CASES: dict[str, Case] = {
    "sizes": Case(SIZE_LAYER),
    "long-run": Case(LONG_RUN_LAYER),
    "root-directory-run": Case(tar(file("r1", "1"), file("r2", "2"), file("r3", "3"))),
    "name-field-full": Case(
        tar(file("r0", "0"), raw_file(b"n" * 100, b"full name field"), file("r1", "1"))
    ),
    "ustar-prefix": Case(
        tar(
            file("p" * 120 + "/first", "1"),
            raw_file(b"second", b"2", prefix=b"p" * 120),
            raw_file(b"p" * 98 + b"/x", b"not in the run"),
            raw_file(b"third", b"3", prefix=b"p" * 120),
            raw_file(b"fourth", b"4", prefix=b"p" * 120 + b"/"),
            raw_file(b"fifth", b"5", prefix=b"p" * 120),
            raw_file(b"sub/sixth", b"6", prefix=b"p" * 120),
            raw_file(b"seventh", b"7", prefix=b"p" * 120),
            raw_file(b"eighth", b"8", prefix=b"p" * 120, magic=b"ustar\x00  "),
        )
    ),
    "name-spellings": Case(
        tar(
            file("d/a", "a"),
            raw_file(b"./d/b", b"b"),
            raw_file(b"d//c", b"c"),
            raw_file(b"d/./e", b"e"),
            raw_file(b"d/../x", b"x"),
            raw_file(b"/d/g", b"g"),
            raw_file(b"d/h/", b"h"),
            raw_file(b"d/i", b"i"),
            raw_file(b"d/j", b"j"),
        )
    ),
    "odd-name-fields": Case(
        tar(
            file("d/a", "a"),
            raw_file(b"d/...", b"three dots"),
            raw_file(b"d/.hidden", b"hidden"),
            raw_file(b"d/.wh", b"not a whiteout"),
            raw_file(b"d/ab\x00after the end of the name", b"ab"),
            raw_file(b"cd", b"cd", prefix=b"d\x00after the end of the prefix"),
            raw_file(b"d/with-linkname", b"l", raw={"linkname": b"ignored"}),
            raw_file(b"d/\xff\xfe", b"not UTF-8"),
            raw_file(b"d/last", b"last"),
        )
    ),
    "empty-name-with-prefix": Case(tar(file("d/a", "a"), raw_file(b"", b"x", prefix=b"d"))),
    "dot-name-inside-run": Case(tar(file("d/a", "a"), file("d/b", "b"), raw_file(b"d/.", b"dot"))),
    "dot-dot-name-inside-run": Case(
        tar(file("d/a", "a"), file("d/b", "b"), raw_file(b"d/..", b"dot-dot"))
    ),
    "other-directory": Case(
        tar(file("a/1", "a1"), file("b/1", "b1"), file("b/2", "b2"), file("a/2", "a2"))
    ),
    "directory-inside-run": Case(
        tar(file("d/a", "a"), directory("d/sub/"), file("d/b", "b"), file("d/c", "c"))
    ),
    "other-types-inside-run": Case(
        tar(
            file("d/a", "a"),
            file("d/b", "b"),
            symlink("d/link", "b"),
            file("d/c", "c"),
            hardlink("d/hard", "d/c"),
            file("d/e", "e"),
            entry("d/fifo", b"6"),
            file("d/f", "f"),
        )
    ),
    "hardlink-to-c-file": Case(
        tar(file("d/a", "a"), file("d/b", "b"), hardlink("d/h", "d/b"), hardlink("e/h", "d/b"))
    ),
    "metadata": Case(
        tar(
            file("d/lead", "lead", 0o644),
            raw_file(b"d/setuid", b"u", mode=0o4755, uid=1000, gid=1000),
            raw_file(b"d/setgid", b"g", mode=0o2755, uid=1000, gid=50),
            raw_file(b"d/sticky", b"s", mode=0o1777),
            raw_file(b"d/all", b"7777", mode=0o7777, uid=OCTAL_7_MAX, gid=OCTAL_7_MAX),
            raw_file(b"d/none", b"0", mode=0),
            raw_file(b"d/type-bits", b"t", mode=0o100755),
            raw_file(b"d/owner-0", b"o", uid=0, gid=OCTAL_7_MAX),
            raw_file(b"d/epoch", b"e", mtime=0),
            raw_file(b"d/max-mtime", b"m", mtime=OCTAL_11_MAX),
            raw_file(b"d/12-digit-mtime", b"m", raw={"mtime": b"100000000000"}),
            raw_file(b"d/space-fields", b"s", raw={"mode": b"   644 ", "uid": b"  1750 \x00"}),
            raw_file(b"d/leading-nul", b"n", raw={"gid": b"\x00\x00\x001750"}),
            raw_file(b"d/8-digit-mode", b"8", raw={"mode": b"00000640"}),
        )
    ),
    "duplicate-in-run": Case(
        tar(file("d/a", "a"), file("d/b", "b"), file("d/c", "c"), file("d/b", "again"))
    ),
    "duplicate-of-first": Case(tar(file("d/a", "a"), file("d/a", "again"))),
    "duplicate-of-implied-directory": Case(
        tar(file("d/sub/x", "x"), file("d/a", "a"), file("d/sub", "file over directory"))
    ),
    "duplicate-through-symlink": Case(
        tar(
            symlink("link", "real"),
            file("real/a", "a"),
            file("real/b", "b"),
            file("link/b", "again"),
        )
    ),
    "existing-files-replaced": Case(
        tar(file("d/x", "x"), file("d/a", "new a", 0o600, uid=7), file("d/b", "new b")),
        lower=tar(
            directory("d/"),
            file("d/a", "old a", 0o755, uid=1, xattrs={b"user.old": b"1"}),
            file("d/b", "old b"),
            hardlink("d/c", "d/b"),
        ),
    ),
    "existing-directory-replaced": Case(
        tar(file("d/x", "x"), file("d/a", "file over directory"), file("d/y", "y")),
        lower=tar(directory("d/a/"), file("d/a/child", "c"), directory("d/a/sub/")),
    ),
    "existing-symlinks-to-outside": Case(
        tar(
            file("d/first", "first"),
            file("d/link", "replaces the symlink"),
            file("d/dangling", "replaces the dangling symlink"),
            file("d/last", "last"),
        ),
        prepare=canary_symlinks,
    ),
    "run-through-symlink-to-outside": Case(
        tar(file("escape/a", "a"), file("escape/canary", "not the canary"), file("escape/b", "b")),
        prepare=outside_directory_symlink,
    ),
    "whiteouts-before-runs": Case(
        tar(
            whiteout("d/.wh.old"),
            file("d/a", "a"),
            file("d/b", "b"),
            file("d/c", "c"),
            whiteout("e/.wh..wh..opq"),
            file("e/a", "a"),
            file("e/b", "b"),
        ),
        lower=tar(file("d/old", "o"), file("e/old", "o")),
    ),
    "whiteouts-after-runs": Case(
        tar(
            file("d/a", "a"),
            file("d/b", "b"),
            file("d/c", "c"),
            whiteout("d/.wh.old"),
            whiteout("d/.wh.b"),
            file("e/a", "a"),
            file("e/b", "b"),
            whiteout("e/.wh..wh..opq"),
            file("e/c", "c"),
        ),
        lower=tar(file("d/old", "o"), file("e/old", "o"), file("e/b", "lower b")),
    ),
    "whiteout-name-inside-run": Case(
        tar(
            file("d/a", "a"),
            file("d/.wh.old", ""),
            file("d/b", "b"),
            file("d/c", "c"),
        ),
        lower=tar(file("d/old", "o"), file("d/c", "lower c")),
    ),
    "symlinks-in-run": Case(
        tar(
            file("d/a", "a"),
            symlink("d/rel", "a"),
            symlink("d/abs", "/etc/passwd"),
            symlink("d/up", "../../../../outside/canary"),
            symlink("d/dangling", "nowhere"),
            raw_file(b"d/full-target", typeflag=b"2", mode=0o777, raw={"linkname": b"t" * 100}),
            symlink("d/owned", "a", uid=1000, gid=2000),
            symlink("d/epoch", "a", mtime_ns=0),
            raw_file(b"d/odd-mode", typeflag=b"2", mode=0o4644, raw={"linkname": b"a"}),
            symlink("d/non-ascii", b"caf\xe9"),
            file("d/b", "b"),
        )
    ),
    "symlink-with-size-field": Case(
        tar(
            file("d/a", "a"),
            symlink("d/l", "a"),
            ustar_header(b"d/sized", typeflag=b"2", size=5, raw={"linkname": b"a"}),
            file("d/b", "b"),
        )
    ),
    "symlink-with-empty-target": Case(
        tar(file("d/a", "a"), symlink("d/l", "a"), raw_file(b"d/empty", typeflag=b"2"))
    ),
    "symlinks-over-existing": Case(
        tar(
            file("d/a", "a"),
            symlink("d/file", "a"),
            symlink("d/dir", "a"),
            symlink("d/link", "a"),
            symlink("d/new", "a"),
        ),
        lower=tar(
            file("d/file", "f"), directory("d/dir/"), file("d/dir/x"), symlink("d/link", "x")
        ),
    ),
    "duplicate-symlink-in-run": Case(
        tar(file("d/a", "a"), symlink("d/l", "a"), symlink("d/m", "a"), symlink("d/l", "b"))
    ),
    "directory-over-symlink-in-run": Case(
        tar(file("d/a", "a"), symlink("d/l", "a"), symlink("d/m", "a"), directory("d/l/"))
    ),
    "paths-through-new-symlinks": Case(
        tar(
            file("d/a", "a"),
            symlink("d/s", "real"),
            symlink("d/t", "/escape-target"),
            file("d/s/x", "x"),
            file("d/t/y", "y"),
            file("d/t/z", "z"),
        )
    ),
    "whiteout-after-symlink-in-run": Case(
        tar(file("d/a", "a"), symlink("d/m", "a"), whiteout("d/.wh.m"), file("d/b", "b")),
        lower=tar(file("d/other", "lower")),
    ),
    "hardlink-to-symlink-in-run": Case(
        tar(file("d/a", "a"), symlink("d/l", "a"), hardlink("d/h", "d/l"))
    ),
    "root-entry-then-files": Case(
        tar(directory("./"), file("a", "a"), file("b", "b"), directory("d/"), file("d/x", "x"))
    ),
    "directory-entries-start-runs": Case(
        tar(
            directory("d/", 0o750, uid=5),
            file("d/a", "a"),
            file("d/b", "b"),
            directory("d/sub/", 0o700),
            file("d/sub/c", "c"),
            symlink("d/sub/l", "c"),
            directory("e/"),
            directory("e/f/"),
            file("e/g", "g"),
            file("e/h", "h"),
        )
    ),
    "read-only-directory-run": Case(
        tar(directory("ro/", 0o555), file("ro/a", "a"), file("ro/b", "b", 0o400))
    ),
    "trailing-bytes-after-end": Case(
        tar(file("d/a", "a"), file("d/b", "b")) + b"bytes after the end-of-archive marker"
    ),
}

# Paths that the C code creates, for the cases whose edges must reach it. Which entries
# start a run is the applier's choice, so a lane may create more in C than listed.
CREATED_IN_C: dict[str, list[bytes]] = {
    "sizes": [
        b"d/s0",
        b"d/s1",
        b"d/s511",
        b"d/s512",
        b"d/s4095",
        b"d/s4096",
        b"d/s65536",
        b"d/s262144",
        b"d/z4095",
        b"d/after",
    ],
    "root-directory-run": [b"r2", b"r3"],
    "name-field-full": [b"n" * 100, b"r1"],
    "ustar-prefix": [b"p" * 120 + b"/second", b"p" * 120 + b"/fifth"],
    "name-spellings": [b"d/i", b"d/j"],
    "other-directory": [b"b/2"],
    "directory-inside-run": [b"d/c"],
    "duplicate-in-run": [b"d/b", b"d/c"],
    "existing-symlinks-to-outside": [b"d/last"],
    "run-through-symlink-to-outside": [b"escape/canary", b"escape/b"],
    "odd-name-fields": [
        b"d/...",
        b"d/.hidden",
        b"d/.wh",
        b"d/ab",
        b"d/cd",
        b"d/with-linkname",
        b"d/\xff\xfe",
        b"d/last",
    ],
    "dot-name-inside-run": [b"d/b"],
    "dot-dot-name-inside-run": [b"d/b"],
    "symlinks-in-run": [
        b"d/rel",
        b"d/abs",
        b"d/up",
        b"d/dangling",
        b"d/full-target",
        b"d/owned",
        b"d/epoch",
        b"d/odd-mode",
        b"d/b",
    ],
    "symlink-with-size-field": [b"d/l", b"d/b"],
    "symlink-with-empty-target": [b"d/l"],
    "duplicate-symlink-in-run": [b"d/l", b"d/m"],
    "directory-over-symlink-in-run": [b"d/l", b"d/m"],
    "paths-through-new-symlinks": [b"d/s", b"d/t", b"d/t/z"],
    "whiteout-after-symlink-in-run": [b"d/m"],
    "hardlink-to-symlink-in-run": [b"d/l"],
    "root-entry-then-files": [b"b", b"d/x"],
    "directory-entries-start-runs": [b"d/b", b"d/sub/l", b"e/h"],
    "read-only-directory-run": [b"ro/b"],
    "whiteouts-after-runs": [b"d/b", b"d/c"],
}


@pytest.mark.parametrize(("target", "rootless"), TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_made_layer_identical(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, target: Target, rootless: bool
) -> None:
    case = CASES[name]

    in_c = compare_lanes(monkeypatch, tmp_path, case, target=target, rootless=rootless)

    missing = [path for path in CREATED_IN_C.get(name, []) if path not in in_c.created_in_c]
    assert missing == [], f"created by the applier, not in C: {missing}"


def test_long_run_crosses_read_ahead_buffers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    in_c = compare_lanes(monkeypatch, tmp_path, Case(LONG_RUN_LAYER))

    smalls = [b"d/small%04d" % number for number in range(1, LONG_RUN_FILES)]
    mids = [b"d/mid%02d" % number for number in range(4)]
    expected = [*smalls, b"d/big", *mids, b"d/last"]
    assert [path for path in in_c.created_in_c if path != b"d/small0000"] == expected


def test_zero_files_become_holes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    in_c = compare_lanes(monkeypatch, tmp_path, Case(SIZE_LAYER))

    for name in ("z4096", "z8192", "z300k"):
        assert os.lstat(in_c.target / "d" / name).st_blocks == 0, name
    assert os.lstat(in_c.target / "d/z4095").st_blocks > 0


@pytest.mark.parametrize("rootless", [False, True], ids=["rootful", "rootless"])
def test_mode_bits_survive_chown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rootless: bool
) -> None:
    in_c = compare_lanes(monkeypatch, tmp_path, CASES["metadata"], rootless=rootless)

    expected = {
        "setuid": (0o4755, 1000, 1000),
        "setgid": (0o2755, 1000, 50),
        "sticky": (0o1777, 0, 0),
        "all": (0o7777, OCTAL_7_MAX, OCTAL_7_MAX),
        "none": (0, 0, 0),
        "type-bits": (0o755, 0, 0),
    }
    for name, (mode, uid, gid) in expected.items():
        st = os.lstat(in_c.target / "d" / name)
        assert b"d/" + name.encode() in in_c.created_in_c
        assert stat.S_IMODE(st.st_mode) == mode, name
        # A rootless apply keeps the applying user, root here, as the owner.
        assert (st.st_uid, st.st_gid) == ((0, 0) if rootless else (uid, gid)), name
    assert os.lstat(in_c.target / "d/epoch").st_mtime_ns == 0
    assert os.lstat(in_c.target / "d/max-mtime").st_mtime_ns == OCTAL_11_MAX * 10**9


def test_duplicate_in_run_names_the_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    in_c = compare_lanes(monkeypatch, tmp_path, CASES["duplicate-in-run"])

    assert in_c.error == (
        "TarFormatError",
        "entry 'd/b' (offset 3072): duplicate path 'd/b': an earlier entry of this layer "
        "already created it, and a layer may hold each path only once",
    )


def test_symlinks_to_outside_are_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    in_c = compare_lanes(monkeypatch, tmp_path, CASES["existing-symlinks-to-outside"])

    assert (in_c.target / "d/link").read_bytes() == b"replaces the symlink"
    assert not (in_c.target / "d/link").is_symlink()
    assert not (tmp_path / "outside/missing").exists()
    assert (tmp_path / "outside/canary").read_bytes() == b"canary"


# Headers that the C code must leave to the applier, each inside a run

BAD_CHECKSUM = with_checksum(raw_file(b"d/bad", b"x"), b"0000001\x00")
HIGH_BYTE_NAME = ustar_header(b"d/caf\xe9", size=1)
SIGNED_CHECKSUM_FILE = (
    with_checksum(HIGH_BYTE_NAME, signed_checksum(HIGH_BYTE_NAME)) + b"s" + bytes(BLOCK - 1)
)
PAX_COMMENT = format_pax_record(b"comment", b"made by hand")
HEADER_VARIANTS: dict[str, bytes] = {
    "bad-checksum": BAD_CHECKSUM,
    "signed-checksum": SIGNED_CHECKSUM_FILE,
    "mode-digit-9": raw_file(b"d/bad", b"x", raw={"mode": b"0000649\x00"}),
    "size-letter": raw_file(b"d/bad", b"x", raw={"size": b"0000000000x\x00"}),
    "mtime-sign": raw_file(b"d/bad", b"x", raw={"mtime": b"-0000000001\x00"}),
    "devmajor-letter": raw_file(b"d/bad", b"x", raw={"devmajor": b"000000z\x00"}),
    "empty-mode": raw_file(b"d/v", b"x", raw={"mode": b""}),
    "empty-devminor": raw_file(b"d/v", b"x", raw={"devminor": b""}),
    "base-256-uid": raw_file(b"d/v", b"x", raw={"uid": b"\x80" + (1000).to_bytes(7, "big")}),
    "base-256-size": raw_file(b"d/v", b"x", raw={"size": b"\x80" + (1).to_bytes(11, "big")}),
    "gnu-magic": raw_file(b"d/v", b"x", magic=GNU_MAGIC),
    "v7-header": raw_file(b"d/v", b"x", magic=bytes(8)),
    "typeflag-nul": raw_file(b"d/v", b"x", typeflag=b"\x00"),
    "typeflag-7": raw_file(b"d/v", b"x", typeflag=b"7"),
    "typeflag-unknown": raw_file(b"d/v", b"x", typeflag=b"Z"),
    "pax-path": entry("d/v-\u00e9", content=b"x"),
    "pax-mtime-nanoseconds": entry("d/v", content=b"x", mtime_ns=MTIME_NS + 123_456_789),
    "pax-atime": entry("d/v", content=b"x", atime_ns=MTIME_NS - 5),
    "pax-xattrs": entry("d/v", content=b"x", xattrs={b"user.key": b"value"}),
    "pax-uid-over-ustar": entry("d/v", content=b"x", uid=OCTAL_7_MAX + 1),
    "pax-global": tar(entry("pax_global_header", b"g", content=PAX_COMMENT), end=b"")
    + raw_file(b"d/v", b"x"),
    "gnu-long-name": tar(entry("././@LongLink", b"L", content=b"d/v\x00"), end=b"")
    + raw_file(b"d/ignored", b"x"),
}


@pytest.mark.parametrize(("target", "rootless"), TARGETS)
@pytest.mark.parametrize("variant", sorted(HEADER_VARIANTS))
def test_header_variant_inside_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str, target: Target, rootless: bool
) -> None:
    layer = tar(
        file("d/a", "a"),
        file("d/b", "b"),
        HEADER_VARIANTS[variant],
        file("d/c", "c"),
        file("d/e", "e"),
    )

    in_c = compare_lanes(monkeypatch, tmp_path, Case(layer), target=target, rootless=rootless)

    assert b"d/b" in in_c.created_in_c
    if in_c.error is None:
        assert b"d/c" in in_c.created_in_c
        assert b"d/e" in in_c.created_in_c


# Truncated streams

# The applier applies d/a, and the C code creates d/b (700 bytes) and d/c (100 bytes).
TRUNCATED_BASE = tar(file("d/a", "a"), file("d/b", pattern(700)), file("d/c", pattern(100)))
B_HEADER = 2 * BLOCK
B_DATA = 3 * BLOCK
C_HEADER = 5 * BLOCK
CUTS = {
    "in-first-file-padding": BLOCK + 100,
    "at-run-header": B_HEADER,
    "in-run-header": B_HEADER + 100,
    "in-run-data": B_DATA + 300,
    "in-run-padding": B_DATA + 700 + 100,
    "after-run-entry": C_HEADER,
    "in-last-padding": C_HEADER + BLOCK + 200,
    "at-end-marker": 7 * BLOCK,
    "in-end-marker": 7 * BLOCK + 100,
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_truncated_stream_same_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cut: str
) -> None:
    layer = TRUNCATED_BASE[: CUTS[cut]]

    in_c = compare_lanes(monkeypatch, tmp_path, Case(layer))

    assert in_c.error is not None
    assert in_c.error[0] == "TarFormatError"


# Runs around files of zeros larger than the copy chunk of 1 MiB, which become holes.
COMPRESSED_LAYER = tar(
    *(file(f"d/a{number:03d}", pattern(2000, number)) for number in range(300)),
    file("d/zeros", bytes(3 * MIB)),
    *(file(f"d/b{number:03d}", pattern(2000, number)) for number in range(300)),
    file("d/mixed", b"x" + bytes(2 * MIB) + b"y"),
    *(file(f"d/c{number:03d}", pattern(2000, number)) for number in range(300)),
)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_layer_identical(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, codec: str
) -> None:
    if codec == "gzip":
        blob = gzip.compress(COMPRESSED_LAYER, compresslevel=1, mtime=0)
    else:
        blob = zstandard.ZstdCompressor(level=1).compress(COMPRESSED_LAYER)

    in_c = compare_lanes(monkeypatch, tmp_path, Case(blob))

    assert in_c.result is not None
    assert in_c.result.diff_id == "sha256:" + hashlib.sha256(COMPRESSED_LAYER).hexdigest()
    assert len(in_c.created_in_c) >= 897
    assert os.lstat(in_c.target / "d/zeros").st_blocks == 0


# Failures inside the C code: the applier takes the entry and fails the same way


# d/c and d/e get owner 1000, which needs CAP_CHOWN to set and, once set, CAP_FOWNER
# for the mode and times that follow.
FOREIGN_OWNER_LAYERS = {
    "file": tar(
        file("d/a", "a"),
        file("d/b", "b"),
        file("d/c", "c", uid=1000, gid=1000),
        file("d/e", "e", uid=1000, gid=1000),
    ),
    "symlink": tar(
        file("d/a", "a"),
        file("d/b", "b"),
        symlink("d/c", "a", uid=1000, gid=1000),
        symlink("d/e", "a", uid=1000, gid=1000),
    ),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN_OWNER_LAYERS))
@pytest.mark.parametrize(
    "capability", [CAP_CHOWN, CAP_FOWNER], ids=["without-cap-chown", "without-cap-fowner"]
)
def test_failed_system_call_hands_entry_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capability: int, kind: str
) -> None:
    with capabilities_dropped(capability):
        in_c = compare_lanes(monkeypatch, tmp_path, Case(FOREIGN_OWNER_LAYERS[kind]))

    assert b"d/b" in in_c.created_in_c
    assert b"d/c" not in in_c.created_in_c
    assert in_c.error == (
        "ApplyError",
        "entry 'd/c' (offset 2048): Operation not permitted; apply as root, or pass "
        "rootless=True to apply no file owners and skip the xattrs that need privileges",
    )
    assert sorted(os.listdir(in_c.target / "d")) == ["a", "b"]


@pytest.mark.parametrize("rootless", [False, True], ids=["rootful", "rootless"])
def test_read_only_directory_same_result(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rootless: bool
) -> None:
    """Without CAP_DAC_OVERRIDE, root cannot create files in a 0555 directory of the layer.

    A rootless apply gives the owner rwx while the layer is applied, so it succeeds.
    """
    layer = CASES["read-only-directory-run"].layer

    with capabilities_dropped(CAP_DAC_OVERRIDE):
        in_c = compare_lanes(monkeypatch, tmp_path, Case(layer), rootless=rootless)

    if rootless:
        assert in_c.error is None
        assert b"ro/b" in in_c.created_in_c
    else:
        assert in_c.error == (
            "ApplyError",
            "entry 'ro/a' (offset 512): Permission denied; check that this user may write "
            "to the target, or apply as root",
        )
        assert os.listdir(in_c.target / "ro") == []


@pytest.fixture
def small_filesystems(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Mount two empty 1 MiB tmpfs file systems, one for each lane, and unmount them at the end."""
    mounts = (tmp_path / "tmpfs-c", tmp_path / "tmpfs-python")
    mounted: list[Path] = []
    try:
        for mount in mounts:
            mount.mkdir()
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", str(mount)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                pytest.fail(f"mount -t tmpfs failed ({result.returncode}): {result.stderr}")
            mounted.append(mount)
        yield mounts
    finally:
        for mount in mounted:
            subprocess.run(["umount", str(mount)], check=True)


def test_full_filesystem_hands_entry_back(
    monkeypatch: pytest.MonkeyPatch, small_filesystems: tuple[Path, Path]
) -> None:
    # Five 200 KiB files fit in 1 MiB, the sixth does not.
    layer = tar(
        file("d/a", "a"), *(file(f"d/f{number}", pattern(200 * KIB, number)) for number in range(6))
    )
    started = time.time_ns()
    lanes = [
        apply_lane(monkeypatch, layer, mount / "target", [], pure=pure)
        for mount, pure in zip(small_filesystems, (False, True), strict=True)
    ]
    window = (started - 10**9, time.time_ns() + 10**9)
    in_c, pure_python = lanes

    assert in_c.created_in_c == [b"d/f0", b"d/f1", b"d/f2", b"d/f3", b"d/f4"]
    assert in_c.error == pure_python.error
    assert in_c.error is not None
    assert in_c.error[1].startswith("entry 'd/f5' (offset ")
    assert in_c.error[1].endswith(": No space left on device; the target filesystem is full")
    assert_same_trees(in_c.target, pure_python.target, window)
    assert sorted(os.listdir(in_c.target / "d")) == ["a", "f0", "f1", "f2", "f3", "f4"]


# Cancellation


class CancelAtEntry(Progress):
    """A progress display that sets `cancel` once it has counted `entries` entries."""

    def __init__(self, cancel: threading.Event, entries: int) -> None:
        super().__init__("apply", stream=io.StringIO())
        self.cancel = cancel
        self.after = entries

    def update(self, entries: int, size: int) -> None:
        super().update(entries, size)
        if entries >= self.after:
            self.cancel.set()


RUN_FILES = 1000
CANCEL_LAYER = tar(
    directory("d/"),
    *(file(f"d/f{number:04d}", pattern(3000, number)) for number in range(RUN_FILES)),
    file("z", "z"),
)


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_cancel_from_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pure: bool) -> None:
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    cancel = threading.Event()
    target = tmp_path / "target"

    with pytest.raises(Cancelled) as raised:
        import_layer_from_tar(
            io.BytesIO(CANCEL_LAYER), target, cancel=cancel, progress=CancelAtEntry(cancel, 2)
        )

    assert str(raised.value) == (
        f"apply to {str(target)!r} was cancelled; the target is partly applied, so discard it"
    )
    assert not (target / "z").exists()


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_cancel_stops_inside_long_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pure: bool
) -> None:
    """A cancel set once 1 MiB of a 3.4 MiB run is read stops the apply inside the run.

    import_layer_from_tar documents that `cancel` is checked before each entry. The
    pure Python lane stops within a few entries. The C lane may finish the bytes it has
    read ahead, about 513 KiB at a time, but not the rest of the run.
    """
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    cancel = threading.Event()
    target = tmp_path / "target"
    reader = io.BufferedReader(CancellingReader(CANCEL_LAYER, MIB, cancel, chunk=64 * KIB))

    with pytest.raises(Cancelled):
        import_layer_from_tar(reader, target, cancel=cancel)

    created = len(os.listdir(target / "d"))
    # Each entry takes 3584 bytes of the stream. The limit allows two read-ahead buffers.
    limit = (MIB + 2 * 2 * (BLOCK + MAX_DATA)) // (7 * BLOCK)
    assert created <= limit, f"{created} of {RUN_FILES} run files exist after the cancel"


# Progress totals


def test_progress_totals_equal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    layer = tar(
        directory("d/"),
        *(file(f"d/f{number}", pattern(3000, number)) for number in range(200)),
        whiteout("d/.wh.gone"),
        *(file(f"d/g{number}", pattern(30, number)) for number in range(5)),
        file("e/a", "a"),
        file("e/b", "b"),
    )

    in_c = compare_lanes(monkeypatch, tmp_path, Case(layer))

    assert len(in_c.created_in_c) >= 199
    assert in_c.progress == (1 + 200 + 1 + 5 + 2, len(layer))
