"""A file of 8 GiB and more: the size needs a PAX record, and readers must find what follows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ocilayer.export import open_source
from ocilayer.writer import LayerTarWriter

EIGHT_GIB = 8 << 30
_ZEROS = bytes(1 << 20)


class SparseFile:
    """A file sink that seeks over all-zero chunks, so an 8 GiB tar costs no disk."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = bytes(data)
        if len(chunk) >= 4096 and chunk == _ZEROS[: len(chunk)]:
            self.handle.seek(len(data), os.SEEK_CUR)
        else:
            self.handle.write(chunk)
        return len(data)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.truncate()
        self.handle.close()


def test_eight_gib_file_then_small_file(tmp_path: Path, go_tarcopy: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "big", "wb") as handle:
        handle.truncate(EIGHT_GIB)
    # "tail" sorts after "big", so its data starts right after the 8 GiB of zeros.
    (tree / "tail").write_bytes(b"end")
    output = tmp_path / "layer.tar"
    sink = SparseFile(output)
    reader = open_source(tree)
    writer = LayerTarWriter(sink, reader.lookup)  # type: ignore[arg-type]
    for entry in reader.changes():
        writer.add(entry)
    writer.close()
    sink.close()

    with open(output, "rb") as handle:
        pax = handle.read(1024)
        main = handle.read(512)
    assert pax[:16] == b"PaxHeaders.0/big"
    assert b"19 size=8589934592\n" in pax[512:]
    assert main[124:136] == b"00000000000\x00"
    assert output.stat().st_size == 1024 + 512 + EIGHT_GIB + 512 + 512 + 1024

    gnu = subprocess.run(["tar", "tvf", str(output)], capture_output=True, check=True)
    assert gnu.stderr == b""
    assert [line.split()[2] for line in gnu.stdout.decode().splitlines()] == [
        str(EIGHT_GIB),
        "3",
    ]
    tail = subprocess.run(["tar", "xOf", str(output), "tail"], capture_output=True, check=True)
    assert tail.stdout == b"end"
    bsd = subprocess.run(["bsdtar", "xOf", str(output), "tail"], capture_output=True, check=True)
    assert bsd.stdout == b"end"
    assert bsd.stderr == b""
    with open(output, "rb") as stream:
        listing = subprocess.run(
            [str(go_tarcopy), "-list"], stdin=stream, capture_output=True, check=True
        )
    sizes = [json.loads(line)["size"] for line in listing.stdout.splitlines()]
    assert sizes == [EIGHT_GIB, 3]
