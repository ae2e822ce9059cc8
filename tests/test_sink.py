"""Output files: the atomic rename, and the early writeback of a file that replaces another."""

from __future__ import annotations

import errno
import io
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from capabilities import AS_NOBODY
from ocilayer import Compression, export_layer_to_tar, sink
from ocilayer.errors import OutputError
from ocilayer.native import PURE_PYTHON, load_extension

STEP = sink._EarlyWriteback.STEP


@pytest.fixture(autouse=True)
def extensions_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test with the extensions on, even when the suite runs with them off."""
    monkeypatch.delenv(PURE_PYTHON, raising=False)


def test_extension_starts_range_writeback(tmp_path: Path) -> None:
    module = load_extension("_writeback")
    assert module is not None, "ocilayer._writeback is not built: run `pip install -e .`"
    path = tmp_path / "f"
    with open(path, "wb") as handle:
        handle.write(b"x" * 100_000)
        handle.flush()
        assert module.start(handle.fileno(), 0, 100_000) is None
    with pytest.raises(OSError) as failure:
        module.start(987_654, 0, 10)
    assert failure.value.errno == 9  # EBADF
    with pytest.raises(ValueError, match="must not be negative"):
        module.start(0, -1, 10)
    # stat -f prints the same f_type, in hex.
    f_type_hex = subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    with open(path, "rb") as handle:
        assert module.filesystem_magic(handle.fileno()) == int(f_type_hex, 16)


def test_replacing_output_writes_back_each_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def record(fd: int, offset: int, size: int) -> None:
        calls.append((offset, size))

    monkeypatch.setattr(sink, "_writeback_start", lambda handle: record)
    target = tmp_path / "layer.tar"
    target.write_bytes(b"old")
    with sink.atomic_output(target) as raw:
        assert isinstance(raw, sink._EarlyWriteback)
        for _ in range(5):
            raw.write(b"a" * (STEP // 2 + 1))
        assert target.read_bytes() == b"old"
    # A range starts once STEP bytes are waiting. The rename writes the rest.
    assert calls == [(0, STEP + 2), (STEP + 2, STEP + 2)]
    assert target.stat().st_size == 5 * (STEP // 2 + 1)
    assert [p.name for p in tmp_path.iterdir()] == ["layer.tar"]


def test_new_output_has_no_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a rename over an existing file writes the data out, so a new file is left alone."""
    monkeypatch.setattr(sink, "_writeback_start", lambda handle: pytest.fail("writeback asked"))
    target = tmp_path / "layer.tar"
    with sink.atomic_output(target) as raw:
        assert type(raw) is not sink._EarlyWriteback
        raw.write(b"b" * (STEP + 1))
    assert target.stat().st_size == STEP + 1


def test_failed_writeback_stops_trying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def failing(fd: int, offset: int, size: int) -> None:
        calls.append(offset)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(sink, "_writeback_start", lambda handle: failing)
    target = tmp_path / "layer.tar"
    target.write_bytes(b"old")
    with sink.atomic_output(target) as raw:
        for _ in range(3):
            raw.write(b"c" * STEP)
    assert calls == [0]
    assert target.stat().st_size == 3 * STEP


def test_failed_export_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "layer.tar"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), sink.atomic_output(target) as raw:
        raw.write(b"d" * (STEP + 5))
        raise RuntimeError("the export failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["layer.tar"]


def _traced_export(tmp_path: Path, output: Path, pure: bool) -> list[str]:
    layer = tmp_path / "layer"
    layer.mkdir(exist_ok=True)
    # Random bytes, so that zstd leaves the output about as large as the tar.
    (layer / "data").write_bytes(os.urandom(20 << 20))
    env = {name: value for name, value in os.environ.items() if name != PURE_PYTHON}
    if pure:
        env[PURE_PYTHON] = "1"
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-o", str(trace), "-e", "trace=sync_file_range",
         sys.executable, "-m", "ocilayer", "export", str(layer), "-o", str(output),
         "--compression", "zstd"],
        check=True, env=env,
    )  # fmt: skip
    return [line for line in trace.read_text().splitlines() if "sync_file_range(" in line]


def _filesystem(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def test_export_over_layer_traces_writeback(tmp_path: Path) -> None:
    assert _filesystem(tmp_path) == "ext2/ext3", "this test needs its tmp_path on ext4"
    output = tmp_path / "layer.tar.zst"
    assert _traced_export(tmp_path, output, pure=False) == []  # a new file
    first = output.read_bytes()
    calls = _traced_export(tmp_path, output, pure=False)
    # Each line is sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) = 0.
    # The ranges follow each other from 0, each at least STEP and less than 256 KiB more.
    ranges = [tuple(int(field) for field in call.split(", ")[1:3]) for call in calls]
    assert len(ranges) == 2, calls  # 20 MiB of random data: 8, 8 and the last 4 MiB
    assert all(call.endswith("SYNC_FILE_RANGE_WRITE) = 0") for call in calls), calls
    assert [offset for offset, _ in ranges] == [0, *(o + n for o, n in ranges[:-1])]
    assert all(STEP <= length < STEP + (1 << 18) for _, length in ranges), ranges
    end = ranges[-1][0] + ranges[-1][1]
    assert 0 < output.stat().st_size - end < STEP + (1 << 18)
    assert first != output.read_bytes()  # the second run's new random data
    assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~_umask()
    assert _traced_export(tmp_path, output, pure=True) == []


def test_no_writeback_off_ext4(tmp_path: Path) -> None:
    """tmpfs does not write the data in the rename, so there is nothing to start early."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], check=True)
    try:
        output = mount / "layer.tar.zst"
        output.write_bytes(b"old")
        assert _filesystem(mount) == "tmpfs"
        assert _traced_export(tmp_path, output, pure=False) == []
        assert output.stat().st_size > 20 << 20
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _export_with_size_limit(
    layer: Path, output: Path, limit: int
) -> subprocess.CompletedProcess[bytes]:
    """Export `layer` to `output` with RLIMIT_FSIZE at `limit` bytes, as `ulimit -f` sets it."""

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "ocilayer", "export", str(layer), "-o", str(output)],
        capture_output=True, check=False, preexec_fn=set_limit,
    )  # fmt: skip


@pytest.mark.parametrize("replaces", [False, True], ids=["new", "replacing"])
def test_short_write_fails_the_export(tmp_path: Path, replaces: bool) -> None:
    """A write cut short by the file size limit fails the export instead of losing bytes."""
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "data").write_bytes(os.urandom(9 << 20))
    output = tmp_path / "out" / "layer.tar"
    output.parent.mkdir()
    if replaces:
        output.write_bytes(b"old")

    # The limit ends inside the last write, which is then written in part.
    result = _export_with_size_limit(layer, output, (9 << 20) + 512)

    assert result.returncode == 1
    assert result.stderr == b"ocilayer: error: cannot write the layer: File too large\n"
    assert os.listdir(output.parent) == (["layer.tar"] if replaces else [])
    if replaces:
        assert output.read_bytes() == b"old"


def _small_layer(directory: Path) -> Path:
    """Make a layer directory with one small file in `directory`."""
    layer = directory / "layer"
    layer.mkdir()
    (layer / "f").write_bytes(b"data")
    return layer


def _export(layer: Path, output: Path, *prefix: str) -> subprocess.CompletedProcess[bytes]:
    """Run `ocilayer export LAYER -o OUTPUT`, after `prefix` (such as a user switch)."""
    command = [*prefix, sys.executable, "-m", "ocilayer", "export", str(layer), "-o", str(output)]
    return subprocess.run(command, capture_output=True, check=False, umask=0o022)


def test_refused_rename_reports_rename(tmp_path: Path) -> None:
    """In an append-only directory the rename fails and so does the clean-up's unlink."""
    layer = _small_layer(tmp_path)
    place = tmp_path / "append-only"
    place.mkdir()
    output = place / "layer.tar"
    output.write_bytes(b"old")
    subprocess.run(["chattr", "+a", str(place)], check=True)
    try:
        result = _export(layer, output)
        left = sorted(os.listdir(place))
    finally:
        subprocess.run(["chattr", "-a", str(place)], check=True)

    assert result.returncode == 1
    (partial,) = [name for name in left if name.endswith(".partial")]
    assert left == [partial, "layer.tar"]
    assert result.stderr.decode() == (
        f"ocilayer: WARNING: cannot remove '{place / partial}': Operation not permitted; "
        "remove it by hand\n"
        f"ocilayer: error: cannot replace '{output}' with the new layer: "
        "Operation not permitted\n"
    )
    assert output.read_bytes() == b"old"


def test_replaced_output_keeps_mode_and_owner(tmp_path: Path) -> None:
    layer = _small_layer(tmp_path)
    output = tmp_path / "layer.tar"
    output.write_bytes(b"old")
    os.chmod(output, 0o640)
    os.chown(output, 1234, 5678)
    result = _export(layer, output)
    assert result.returncode == 0
    st = output.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert output.read_bytes() != b"old"


def test_read_only_output_not_replaced(shared_directory: Path) -> None:
    """A user who may not write the file may not replace it, even in a writable directory."""
    place = shared_directory / "place"
    place.mkdir()
    os.chmod(place, 0o777)
    layer = _small_layer(place)
    output = place / "layer.tar"
    output.write_bytes(b"old")
    os.chmod(output, 0o444)
    os.chown(output, 65534, 65534)
    result = _export(layer, output, *AS_NOBODY)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: '{output}' is read-only; make it writable or remove it first\n"
    )
    assert output.read_bytes() == b"old"
    assert sorted(os.listdir(place)) == ["layer", "layer.tar"]


class _FullDisk(io.RawIOBase):
    """A writable stream that fails with ENOSPC on every write."""

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD], ids=str)
def test_failed_last_compressed_write_is_output_error(
    tmp_path: Path, compression: Compression
) -> None:
    """A small layer's compressed bytes are all written when the compressor closes."""
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "f").write_bytes(b"data")
    with pytest.raises(OutputError) as raised:
        export_layer_to_tar(_FullDisk(), layer, compression=compression)  # type: ignore[arg-type]
    assert str(raised.value) == "cannot write the layer: No space left on device"
