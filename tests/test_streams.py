"""Reading into a buffer from streams with a working readinto, a refusing one, or none."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from apply_helpers import file, tar
from ocilayer import import_layer_from_tar
from ocilayer.streams import IntoReader

DATA = bytes(range(256)) * 40


class ReadOnlyRaw(io.RawIOBase):
    """A seekable raw stream that defines read() alone, so its readinto raises."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


class NoReadinto:
    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def read_all(into: IntoReader, chunk: int) -> bytes:
    buffer = bytearray(chunk)
    parts = []
    with memoryview(buffer) as view:
        while count := into(view):
            parts.append(bytes(view[:count]))
    return b"".join(parts)


@pytest.mark.parametrize("stream", [io.BytesIO, ReadOnlyRaw, NoReadinto])
def test_into_reader_reads_every_stream_whole(stream: type) -> None:
    assert read_all(IntoReader(stream(DATA)), 3000) == DATA


@pytest.mark.parametrize("stream", [ReadOnlyRaw, NoReadinto])
def test_apply_from_streams_without_readinto(tmp_path: Path, stream: type) -> None:
    """Such streams applied before readinto was used; they still do, with digests."""
    data = tar(file("big", DATA * 100), file("small", "abc"))
    result = import_layer_from_tar(stream(data), tmp_path / "root")
    assert (tmp_path / "root" / "big").read_bytes() == DATA * 100
    assert (tmp_path / "root" / "small").read_bytes() == b"abc"
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
