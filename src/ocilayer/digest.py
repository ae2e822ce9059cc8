"""Hashing and counting streams: the diff_id and the blob digest in one pass."""

from __future__ import annotations

import hashlib
from typing import BinaryIO, NamedTuple


def format_digest(hasher: hashlib._Hash) -> str:
    """Return a digest as `sha256:<hex>`."""
    return f"{hasher.name}:{hasher.hexdigest()}"


class HashingWriter:
    """A write-only stream that hashes and counts what passes to `target`.

    `target` may be None to only hash and count.
    """

    def __init__(self, target: BinaryIO | None) -> None:
        self._target = target
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        self.size += len(data)
        if self._target is not None:
            self._target.write(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if self._target is not None:
            self._target.flush()

    def close(self) -> None:
        self.flush()

    @property
    def closed(self) -> bool:
        return False

    @property
    def digest(self) -> str:
        return format_digest(self.hasher)


class HashingReader:
    """A read-only stream that hashes and counts what it reads from `source`."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end, so that bytes after the tar end blocks count too."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return format_digest(self.hasher)


class Descriptor(NamedTuple):
    """An OCI content descriptor of a layer blob, with the diff_id of its tar."""

    media_type: str
    digest: str
    size: int
    diff_id: str

    def to_json(self) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "diffID": self.diff_id,
        }
