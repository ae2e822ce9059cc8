"""Malformed numbers in a tar applied to a Windows transport folder: errors, never tracebacks."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ocilayer.errors import UnsafePathError
from ocilayer.tarformat.encoder import BLOCK_SIZE, TarHeader, encode_header, format_pax_record
from ocilayer.windows import import_windows_layer
from ocilayer.windows.fileinfo import FILE_ATTRIBUTE_DIRECTORY, FileBasicInfo
from ocilayer.windows.transport_writer import TransportWriter


def apply_windows(layer: Path, target: Path) -> subprocess.CompletedProcess[bytes]:
    """Run `ocilayer apply --target windows LAYER TARGET` and capture its output."""
    command = [sys.executable, "-m", "ocilayer", "apply", "--target", "windows"]
    return subprocess.run([*command, str(layer), str(target)], capture_output=True, check=False)


def pax_entry(record: bytes) -> bytes:
    """A PAX header holding `record`, then an empty file entry, then the end blocks."""
    header = bytearray(encode_header(TarHeader(b"Files/f", pax_records={b"comment": b"x"})))
    # Replace the PAX data block with the given record.
    data = record + bytes(-len(record) % BLOCK_SIZE)
    pax = bytearray(header[:BLOCK_SIZE])
    pax[124:136] = b"%011o\x00" % len(record)
    pax[148:156] = b"        "
    pax[148:156] = b"%06o\x00 " % sum(pax)
    return bytes(pax) + data + bytes(header[-BLOCK_SIZE:]) + bytes(2 * BLOCK_SIZE)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"9" * 5000 + b" path=x\n", b"a header number is malformed or does not fit 64 bits"),
        (
            format_pax_record(b"mtime", b"1" * 5000),
            b"invalid PAX time '" + b"1" * 40 + b"'... (5000 bytes)\n",
        ),
        (
            format_pax_record(b"mtime", b"1.\x1b]0;title\x07"),
            b"invalid PAX time '1.\\x1b]0;title\\x07'\n",
        ),
        (format_pax_record(b"size", b"1" * 5000), b"ocilayer: error: "),
    ],
    ids=["record-length", "mtime", "mtime-escape", "size"],
)
def test_huge_numbers_fail_cleanly(tmp_path: Path, record: bytes, message: bytes) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(pax_entry(record))
    result = apply_windows(layer, tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.startswith(b"ocilayer: error: ")
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert b"digits" not in result.stderr


def test_full_target_names_the_entry(tmp_path: Path) -> None:
    """A write that fails with ENOSPC names the entry, not just Python's errno text."""
    data = bytes(range(256)) * 1024
    layer = tmp_path / "layer.tar"
    layer.write_bytes(
        encode_header(TarHeader(b"Files", typeflag=b"5", mode=0o755))
        + encode_header(TarHeader(b"Files/small", size=1))
        + b"s" + bytes(BLOCK_SIZE - 1)
        + encode_header(TarHeader(b"Files/big", size=len(data)))
        + data
        + bytes(2 * BLOCK_SIZE)
    )  # fmt: skip
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        result = apply_windows(layer, small / "out")
        left = sorted(os.listdir(small))
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert result.returncode == 1
    assert result.stderr == (
        b"ocilayer: error: entry 'Files/big': writing it into the layer folder failed: "
        b"No space left on device; free space on the target filesystem and import again\n"
    )
    assert left == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello\n", b"invalid tar stream: truncated header"),
        (b"\x1f\x8b\x08\x00broken", b"ocilayer: error: "),
    ],
    ids=["text", "broken-gzip"],
)
def test_input_not_a_tar_leaves_no_folder(tmp_path: Path, data: bytes, message: bytes) -> None:
    layer = tmp_path / "notes.txt"
    layer.write_bytes(data)
    result = apply_windows(layer, tmp_path / "out")
    assert result.returncode == 1
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_failed_abort_keeps_first_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while the folder is cleaned up must not replace the error that stopped it."""
    layer = encode_header(TarHeader(b"Files/../../x", size=0)) + bytes(2 * BLOCK_SIZE)

    def broken_abort(self: TransportWriter) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(TransportWriter, "abort", broken_abort)
    with pytest.raises(UnsafePathError):
        import_windows_layer(io.BytesIO(layer), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_short_write_names_the_entry(tmp_path: Path) -> None:
    """A file write cut short by the file size limit fails, naming the entry."""
    data = bytes(range(256)) * 8192  # 2 MiB
    layer = tmp_path / "layer.tar"
    layer.write_bytes(
        encode_header(TarHeader(b"Files", typeflag=b"5", mode=0o755))
        + encode_header(TarHeader(b"Files/big", size=len(data)))
        + data
        + bytes(2 * BLOCK_SIZE)
    )  # fmt: skip

    def set_limit() -> None:
        # The limit ends 512 bytes before the end of the file data.
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) - 512, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "ocilayer", "apply", "--target", "windows"]
    result = subprocess.run(
        [*command, str(layer), str(tmp_path / "out")],
        capture_output=True, check=False, preexec_fn=set_limit,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(b"ocilayer: error: entry 'Files/big': ")
    assert b"File too large" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["layer.tar"]


@pytest.mark.parametrize("name", ["Files/f", "Hives"], ids=["transport-file", "ordinary"])
def test_abort_closes_every_descriptor(tmp_path: Path, name: str) -> None:
    """abort() closes the entry's and the folder's descriptors, even when a close fails."""
    folder = tmp_path / "out"
    folder.mkdir()
    before = set(os.listdir("/proc/self/fd"))
    writer = TransportWriter(folder)
    writer.add("Files", FileBasicInfo(attributes=FILE_ATTRIBUTE_DIRECTORY))
    writer.add(name, FileBasicInfo(attributes=FILE_ATTRIBUTE_DIRECTORY if name == "Hives" else 0))
    pending = writer._pending
    assert pending is not None
    real_close = pending.stream.close

    def failing_close() -> None:
        real_close()
        raise OSError(5, "Input/output error")

    pending.stream.close = failing_close  # type: ignore[method-assign]
    with pytest.raises(OSError, match="Input/output error"):
        writer.abort()
    assert set(os.listdir("/proc/self/fd")) == before


def test_missing_parent_of_folder(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(bytes(1024))
    result = apply_windows(layer, tmp_path / "missing" / "out")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: cannot create the layer folder '{tmp_path / 'missing' / 'out'}': "
        "its parent directory does not exist; create it first\n"
    )
