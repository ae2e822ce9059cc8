"""The hashing streams behind every diff_id and blob digest."""

from __future__ import annotations

import hashlib
import io

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
