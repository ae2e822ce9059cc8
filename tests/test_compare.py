"""The content comparisons of a diff export on their own thread (`ocilayer._compare`).

The Comparer is tested directly: results in submit order, files that changed since
the walk, FIFOs, errors naming the file, and its limits. Then diff exports of the
same trees with and without it must give the same changes and the same tar bytes,
including trees with more pending comparisons than the diff looks ahead.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from layer_helpers import copy_tree, write
from ocilayer import ChangeKind, LayerError, export_changes, export_layer_to_tar
from ocilayer.native import PURE_PYTHON, load_extension
from ocilayer.sources import snapshot, union
from ocilayer.sources.snapshot import LOOK_AHEAD, _files_equal
from ocilayer.sources.union import Node

T = 1_700_000_000 * 10**9


@pytest.fixture(autouse=True)
def extensions_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test with the extensions on, even when the suite runs with them off."""
    monkeypatch.delenv(PURE_PYTHON, raising=False)


def comparer_module() -> ModuleType:
    module = load_extension("_compare")
    assert module is not None, (
        "ocilayer._compare is not built: run `pip install -e .` with a C compiler"
    )
    return module


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_extension_built_and_turned_off_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert comparer_module().__name__ == "ocilayer._compare"
    monkeypatch.setenv(PURE_PYTHON, "1")
    assert load_extension("_compare") is None


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    big = bytes(range(256)) * 8192  # 2 MiB, several reads of the comparer's chunk
    contents = {
        "a": big,
        "b": big,
        "c": big[:-1] + b"x",
        "first-byte": b"x" + big[1:],
        "small": b"abc",
        "small2": b"abc",
    }
    for name, data in contents.items():
        write(tmp_path / name, data)
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo2")
    names = [*contents, "fifo", "fifo2"]
    return {name: os.fsencode(tmp_path / name) for name in names}


def test_comparer_gives_results_in_submit_order(files: dict[str, bytes]) -> None:
    """Each case as the Python comparison decides it, in the order queued."""
    size = 2 * 1024 * 1024
    cases = [
        ("a", "b", size, True),
        ("a", "c", size, False),
        ("a", "first-byte", size, False),
        # Both files grew by the same bytes after the walk saw them smaller.
        ("a", "b", size - 10, False),
        # Both shrank: the walk saw them larger than they are.
        ("small", "small2", 4, False),
        ("small", "small2", 3, True),
        # FIFOs swapped in after the walk: no blocking, and never equal.
        ("fifo", "fifo2", 3, False),
        ("small", "fifo", 3, False),
    ]
    comparer = comparer_module().Comparer(len(cases))
    for first, second, length, _ in cases:
        comparer.submit(files[first], files[second], length)
    results = [comparer.take() for _ in cases]
    comparer.close()
    assert results == [expected for *_, expected in cases]
    assert [_files_equal(files[a], files[b], n) for a, b, n, _ in cases] == results


def test_comparer_error_names_the_file(files: dict[str, bytes], tmp_path: Path) -> None:
    missing = os.fsencode(tmp_path / "gone")
    comparer = comparer_module().Comparer()
    comparer.submit(files["a"], missing, 5)
    comparer.submit(missing, files["a"], 5)
    comparer.submit(files["small"], files["small2"], 3)
    for _ in range(2):
        with pytest.raises(FileNotFoundError) as raised:
            comparer.take()
        assert raised.value.filename == missing
    # A failed comparison does not disturb the next one.
    assert comparer.take() is True
    comparer.close()


def test_comparer_does_not_follow_symlinks(files: dict[str, bytes], tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "small")
    comparer = comparer_module().Comparer()
    comparer.submit(files["small"], os.fsencode(link), 3)
    with pytest.raises(OSError) as raised:
        comparer.take()
    assert raised.value.filename == os.fsencode(link)
    comparer.close()


def test_comparer_limits(files: dict[str, bytes]) -> None:
    module = comparer_module()
    with pytest.raises(ValueError, match="capacity"):
        module.Comparer(0)
    comparer = module.Comparer(2)
    with pytest.raises(RuntimeError, match="no comparison is queued"):
        comparer.take()
    comparer.submit(files["a"], files["b"], 1)
    comparer.submit(files["a"], files["b"], 1)
    with pytest.raises(RuntimeError, match="queue is full"):
        comparer.submit(files["a"], files["b"], 1)
    with pytest.raises(ValueError, match="embedded null"):
        module.Comparer().submit(b"a\0b", files["b"], 1)
    comparer.close()
    comparer.close()
    with pytest.raises(ValueError, match="closed"):
        comparer.submit(files["a"], files["b"], 1)
    with pytest.raises(ValueError, match="closed"):
        comparer.take()


def test_comparer_rejects_sizes_out_of_range(files: dict[str, bytes]) -> None:
    comparer = comparer_module().Comparer()
    with pytest.raises(ValueError, match="negative"):
        comparer.submit(files["a"], files["b"], -1)
    with pytest.raises(OverflowError):
        comparer.submit(files["a"], files["b"], 1 << 64)
    comparer.close()


@pytest.fixture
def huge_pair(tmp_path: Path) -> tuple[bytes, bytes, int]:
    """Two equal sparse files of 64 GiB: comparing them reads for many seconds."""
    size = 64 << 30
    paths = []
    for name in ("first", "second"):
        path = tmp_path / name
        with open(path, "wb") as handle:
            handle.truncate(size)
        paths.append(os.fsencode(path))
    return paths[0], paths[1], size


def test_take_interrupted_by_ctrl_c(
    huge_pair: tuple[bytes, bytes, int],
) -> None:
    """take() handles signals while it waits, and close() stops between two chunks."""
    comparer = comparer_module().Comparer()
    comparer.submit(*huge_pair)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            comparer.take()
        interrupted = time.monotonic() - started
        comparer.close()
        closed = time.monotonic() - started
    finally:
        timer.cancel()
    # Reading 128 GiB of holes takes far longer than these bounds on any disk.
    assert interrupted < 5
    assert closed < 5


def test_comparer_made_before_fork_fails_in_the_child(
    huge_pair: tuple[bytes, bytes, int],
) -> None:
    comparer = comparer_module().Comparer()
    comparer.submit(*huge_pair)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's status carries the result
        status = 1
        try:
            comparer.take()
        except RuntimeError as error:
            status = 0 if "fork()" in str(error) else 2
        comparer.close()
        del comparer
        os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    comparer.close()


def test_comparer_thread_ends_on_close_and_on_release(files: dict[str, bytes]) -> None:
    """A Comparer dropped with queued work stops its thread; close() joins it."""
    module = comparer_module()
    before = threads()
    comparer = module.Comparer(64)
    for _ in range(64):
        comparer.submit(files["a"], files["b"], 2 * 1024 * 1024)
    assert threads() == before + 1
    comparer.close()
    assert threads() == before
    dropped = module.Comparer(64)
    for _ in range(64):
        dropped.submit(files["a"], files["b"], 2 * 1024 * 1024)
    del dropped
    assert threads() == before


def many_compared_files(tmp_path: Path, count: int) -> tuple[Path, Path]:
    """Two trees of `count` files with whole-second mtimes, so each pair is read.

    Every seventh file differs in its last byte, every eleventh has a second link,
    and a few other changes sit between them.
    """
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for index in range(count):
        path = write(lower / f"d{index % 13}" / f"f{index:05}", b"%05d" % index * 300)
        os.utime(path, ns=(T, T))
        if index % 11 == 0:
            os.link(path, path.with_name(path.name + ".link"))
    copy_tree(lower, upper)
    for index in range(0, count, 7):
        path = upper / f"d{index % 13}" / f"f{index:05}"
        data = path.read_bytes()
        path.write_bytes(data[:-1] + b"!")
        os.utime(path, ns=(T, T))
    (upper / "d3" / "f00003").unlink()
    write(upper / "d4" / "new", b"new")
    os.chmod(upper / "d5" / "f00005", 0o600)
    return lower, upper


@pytest.mark.parametrize("count", [40, 3 * LOOK_AHEAD])
def test_diff_with_comparer_matches_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    lower, upper = many_compared_files(tmp_path, count)
    results = []
    for pure in (False, True):
        if pure:
            monkeypatch.setenv(PURE_PYTHON, "1")
        kinds = [(entry.kind, entry.path) for entry in export_changes(upper, [lower])]
        tar = io.BytesIO()
        descriptor = export_layer_to_tar(tar, upper, [lower])
        results.append((kinds, tar.getvalue(), descriptor))
    assert results[0] == results[1]
    kinds = results[0][0]
    modified = {path for kind, path in kinds if kind is ChangeKind.MODIFY}
    rewritten = range(0, count, 7)
    changed = {f"d{i % 13}/f{i:05}".encode() for i in rewritten} | {b"d5/f00005"}
    # A rewritten file with a second link changed under both names.
    changed |= {f"d{i % 13}/f{i:05}.link".encode() for i in rewritten if i % 11 == 0}
    assert modified == changed
    # The names of other linked files are reported unmodified, for the hardlink table.
    unmodified = {path for kind, path in kinds if kind is ChangeKind.UNMODIFIED}
    linked = {i for i in range(0, count, 11) if i % 7}
    assert unmodified == {
        f"d{i % 13}/f{i:05}{suffix}".encode() for i in linked for suffix in ("", ".link")
    }
    assert (ChangeKind.DELETE, b"d3/f00003") in kinds
    assert (ChangeKind.ADD, b"d4/new") in kinds


def test_diff_stopped_early_joins_the_thread(tmp_path: Path) -> None:
    lower, upper = many_compared_files(tmp_path, 2 * LOOK_AHEAD)
    before = threads()
    changes = export_changes(upper, [lower])
    first = next(changes)
    assert first.kind is ChangeKind.MODIFY
    assert threads() == before + 1
    changes.close()  # type: ignore[attr-defined]
    assert threads() == before


@pytest.mark.parametrize("pure", [False, True], ids=["comparer", "python"])
def test_diff_compare_error_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """A file that vanishes between the walk's lstat and its comparison fails the export."""
    lower, upper = many_compared_files(tmp_path, 30)
    victim = upper / "d12" / "f00025"
    walk_tree = union.walk_tree

    def walk_then_remove(root: bytes) -> Iterator[Node]:
        for node in walk_tree(root):
            if node.full == os.fsencode(victim):
                victim.unlink()  # after its lstat, before its comparison
            yield node

    monkeypatch.setattr(snapshot, "walk_tree", walk_then_remove)
    if pure:
        monkeypatch.setenv(PURE_PYTHON, "1")
    with pytest.raises(LayerError) as raised:
        list(export_changes(upper, [lower]))
    assert str(raised.value) == (
        f"cannot compare '{victim}' with its version in the parent layers: "
        "No such file or directory; export from layers that are not in use"
    )


def test_same_file_names_a_path_it_cannot_read(tmp_path: Path) -> None:
    """The overlay source compares through same_file: a vanished file is a LayerError."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for root in (lower, upper):
        os.utime(write(root / "d0" / "f00000", b"same"), ns=(T, T))
    path = b"d0/f00000"
    nodes = []
    for root in (lower, upper):
        full = os.path.join(os.fsencode(root), path)
        nodes.append(Node(path, os.lstat(full), full))
    os.unlink(nodes[1].full)
    with pytest.raises(LayerError) as raised:
        snapshot.same_file(nodes[0], nodes[1])
    assert str(raised.value) == (
        f"cannot compare '{upper}/d0/f00000' with its version in the parent layers: "
        "No such file or directory; export from layers that are not in use"
    )
