"""Codecs: detection by magic bytes, reproducible writers, and strict streaming readers."""

from __future__ import annotations

import gzip
import io
import os
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from ocilayer.compression import (
    Compression,
    CompressionError,
    detect_compression,
    open_compressor,
    open_decompressor,
)

DATA = os.urandom(1 << 16) * 8 + b"tail" * 1000
SKIPPABLE = (0x184D2A5F).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"


def read_all(blob: bytes) -> tuple[bytes, Compression]:
    reader, compression = open_decompressor(io.BytesIO(blob))
    return reader.read(), compression


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", Compression.GZIP),
        (b"\x28\xb5\x2f\xfd\x00\x00\x00\x00", Compression.ZSTD),
        ((0x184D2A50).to_bytes(4, "little") + bytes(4), Compression.ZSTD),
        ((0x184D2A5F).to_bytes(4, "little") + bytes(4), Compression.ZSTD),
        ((0x184D2A60).to_bytes(4, "little") + bytes(4), Compression.NONE),
        (b"\x50\x2a\x4d", Compression.NONE),
        (b"", Compression.NONE),
        (b"etc/\x00\x00\x00\x00", Compression.NONE),
    ],
)
def test_detection_by_magic(head: bytes, expected: Compression) -> None:
    assert detect_compression(head) is expected


@pytest.mark.parametrize(
    "blob",
    [
        gzip.compress(DATA, mtime=0),
        gzip.compress(DATA[:1000], mtime=0) + gzip.compress(DATA[1000:], mtime=0),
        zstd(DATA),
        zstd(DATA[:1000]) + zstd(DATA[1000:]),
        SKIPPABLE + zstd(DATA),
        zstd(DATA[:5]) + SKIPPABLE + zstd(DATA[5:]),
        DATA,
    ],
    ids=[
        "gzip",
        "gzip-members",
        "zstd",
        "zstd-frames",
        "zstd-skippable",
        "zstd-inner-skip",
        "plain",
    ],
)
def test_streams_decode_whole(blob: bytes) -> None:
    data, _ = read_all(blob)
    assert data == DATA


class Unseekable(io.RawIOBase):
    """A pipe-like stream: bytes from `data` in reads of at most 1000, no seeking."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(memoryview(buffer)[:1000])


@pytest.mark.parametrize("short", [False, True], ids=["tar", "3-bytes"])
def test_plain_stream_reads_from_its_position(tmp_path: Path, short: bool) -> None:
    body = b"abc" if short else DATA
    blob = tmp_path / "layer.tar"
    blob.write_bytes(b"skipped" + body)
    with open(blob, "rb") as raw:
        raw.read(7)
        reader, compression = open_decompressor(raw)
        assert (reader.read(), compression) == (body, Compression.NONE)
    # The same bytes through a stream that cannot go back over the magic bytes.
    reader, compression = open_decompressor(io.BufferedReader(Unseekable(body)))
    assert (reader.read(), compression) == (body, Compression.NONE)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("cut", [9, 100, 0.5, -1])
def test_truncated_stream_raises(codec: str, cut: float) -> None:
    blob = gzip.compress(DATA, mtime=0) if codec == "gzip" else zstd(DATA)
    end = int(len(blob) * cut) if isinstance(cut, float) else cut
    with pytest.raises(CompressionError, match="truncated"):
        read_all(blob[:end])


def test_garbage_after_frames_raises() -> None:
    with pytest.raises(CompressionError, match="zstd stream is corrupt"):
        read_all(zstd(DATA) + b"junk-after")
    with pytest.raises(CompressionError, match="data after the last gzip member is not gzip"):
        read_all(gzip.compress(DATA, mtime=0) + b"junk-after")


def test_zstd_bomb_reads_in_bounded_memory() -> None:
    blob = zstandard.ZstdCompressor(level=19).compress(bytes(512 << 20))
    assert len(blob) < 1 << 20
    reader, _ = open_decompressor(io.BytesIO(blob))
    total = 0
    tracemalloc.start()
    while chunk := reader.read(1 << 20):
        total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 512 << 20
    assert peak < 16 << 20


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_output_independent_of_threads(compression: Compression) -> None:
    blobs = set()
    for threads in (1, 2, 4):
        out = io.BytesIO()
        writer = open_compressor(out, compression, threads=threads)
        writer.write(DATA * 4)
        writer.close()
        blobs.add(out.getvalue())
    (blob,) = blobs
    assert read_all(blob) == (DATA * 4, compression)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("layer.tar", Compression.NONE),
        ("layer.tar.gz", Compression.GZIP),
        ("layer.TGZ", Compression.GZIP),
        ("layer.tar.zst", Compression.ZSTD),
        ("layer.tar.zstd", Compression.ZSTD),
        ("blob", Compression.NONE),
    ],
)
def test_codec_from_filename(name: str, expected: Compression) -> None:
    assert Compression.from_filename(name) is expected


def test_media_types() -> None:
    assert Compression.NONE.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert Compression.GZIP.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert Compression.ZSTD.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
