"""The hashing streams behind every diff_id and blob digest."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from layer_helpers import write
from ocilayer import Compression, export_layer_to_tar
from ocilayer.digest import HashingReader, HashingWriter


def expected(*pieces: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()


def test_writer_and_reader_hash_and_count() -> None:
    data = bytes(range(256)) * 9000
    target = io.BytesIO()
    writer = HashingWriter(target)
    for start in range(0, len(data), 70_000):
        writer.write(data[start : start + 70_000])
    assert (writer.size, writer.digest, target.getvalue()) == (len(data), expected(data), data)

    reader = HashingReader(io.BytesIO(data))
    assert reader.read(10) == data[:10]
    reader.drain()
    assert (reader.size, reader.digest) == (len(data), expected(data))


class _ReadOnly:
    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


@pytest.mark.parametrize("source", [io.BytesIO, _ReadOnly], ids=["readinto", "read-only"])
def test_reader_readinto_hashes_what_it_fills(source: type) -> None:
    data = bytes(range(256)) * 900
    reader = HashingReader(source(data))
    buffer = bytearray(70_000)
    assert reader.read(10) == data[:10]
    got = [data[:10]]
    while count := reader.readinto(memoryview(buffer)):
        got.append(bytes(buffer[:count]))
    assert b"".join(got) == data
    assert (reader.size, reader.digest) == (len(data), expected(data))


def test_counting_only_streams_have_no_digest() -> None:
    data = bytes(range(256)) * 300
    target = io.BytesIO()
    writer = HashingWriter(target, hashing=False)
    writer.write(data)
    assert (writer.size, writer.digest, writer.hasher, target.getvalue()) == (
        len(data),
        None,
        None,
        data,
    )
    reader = HashingReader(io.BytesIO(data), hashing=False)
    reader.drain()
    assert (reader.size, reader.digest) == (len(data), None)


@pytest.mark.parametrize("compression", list(Compression), ids=lambda codec: codec.value)
def test_export_without_digests_same_blob(tmp_path: Path, compression: Compression) -> None:
    tree = tmp_path / "tree"
    write(tree / "etc" / "hosts", b"127.0.0.1 localhost\n" * 100, mtime=1_800_000_000)
    write(tree / "big", bytes(range(256)) * 8000, mtime=1_800_000_000)
    hashed, unhashed = io.BytesIO(), io.BytesIO()
    full = export_layer_to_tar(hashed, tree, compression=compression)
    bare = export_layer_to_tar(unhashed, tree, compression=compression, digests=False)
    assert unhashed.getvalue() == hashed.getvalue()
    assert full.digest == expected(hashed.getvalue())
    assert bare == (full.media_type, None, full.size, None)
