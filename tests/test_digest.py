"""The background sha256 behind every diff_id and blob digest."""

from __future__ import annotations

import gc
import hashlib
import io
import threading

import pytest

from ocilayer.digest import BackgroundSha256, HashingReader, HashingWriter

MIB = 1 << 20


def expected(*pieces: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()


def hashing_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("ocilayer-sha")]


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [0],
        [512, 3, 4096],
        [MIB],
        [MIB - 1, 1, MIB + 7],
        [5, 3 * MIB, 512],
        [512] * 5000,
    ],
    ids=["nothing", "empty", "small", "one-batch", "around-batches", "big-between", "many"],
)
def test_digest_equals_hashlib_for_any_split(sizes: list[int]) -> None:
    pieces = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    hasher = BackgroundSha256()
    for piece in pieces:
        hasher.update(piece)
    assert hasher.digest == expected(*pieces)
    assert hasher.digest == expected(*pieces)  # read twice, same digest


def test_hasher_copies_reused_buffers() -> None:
    """A bytearray or memoryview changed after update must not change the digest."""
    buffer = bytearray(b"a" * (2 * MIB))
    hasher = BackgroundSha256()
    hasher.update(buffer)
    hasher.update(memoryview(buffer)[:MIB])
    buffer[:] = b"b" * len(buffer)
    assert hasher.digest == expected(b"a" * (3 * MIB))


def test_hasher_thread_ends_with_digest() -> None:
    hasher = BackgroundSha256()
    hasher.update(bytes(3 * MIB))
    assert len(hashing_threads()) == 1
    hasher.digest  # noqa: B018 - the property finishes the hash
    assert hashing_threads() == []


def test_hasher_abandoned_thread_ends() -> None:
    """An export that fails never reads the digest, and its thread must still end."""
    hasher = BackgroundSha256()
    hasher.update(bytes(2 * MIB))
    (thread,) = hashing_threads()
    del hasher
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


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
