"""Hashing and counting streams: the diff_id and the blob digest in one pass."""

from __future__ import annotations

import hashlib
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import BinaryIO

# Bytes gathered before a batch goes to the hashing thread: large enough that the
# hand-off costs nothing next to the hash, small enough to bound the memory held.
_BATCH = 1 << 20
_QUEUED_BATCHES = 4


def format_digest(hasher: hashlib._Hash) -> str:
    """Return a digest as `sha256:<hex>`."""
    return f"{hasher.name}:{hasher.hexdigest()}"


class BackgroundSha256:
    """sha256 computed on a helper thread while the caller goes on.

    hashlib releases the GIL while it hashes a large buffer, so on a second core the
    hash costs the producer almost nothing. Small updates are gathered into batches
    of 1 MiB first. Bytes objects are handed over as they are; other buffers are
    copied, because their owner may reuse them. The thread starts with the first
    batch and ends at `stop` or `digest`, or when the object is collected.
    """

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._batch = bytearray()
        self._queue: queue.Queue[bytes | bytearray | None] | None = None
        self._thread: threading.Thread | None = None
        self._result: str | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= _BATCH and not self._batch and isinstance(data, bytes):
            self._hand_over(data)
            return
        self._batch += data
        if len(self._batch) >= _BATCH:
            batch, self._batch = self._batch, bytearray()
            self._hand_over(batch)

    def _hand_over(self, batch: bytes | bytearray) -> None:
        if self._queue is None:
            self._queue = queue.Queue(_QUEUED_BATCHES)
            self._thread = threading.Thread(
                target=_hash_batches,
                args=(self._hasher, self._queue),
                name="ocilayer-sha256",
                daemon=True,
            )
            self._thread.start()
            # A caller that stops early on an error never reads the digest.
            weakref.finalize(self, self._queue.put, None)
        self._queue.put(batch)

    def stop(self) -> None:
        """Wait for the batches handed over so far and end the thread.

        Call it when the digest will not be read (after an error). A later update
        starts a new thread.
        """
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        self._queue = self._thread = None

    @property
    def digest(self) -> str:
        """Return `sha256:<hex>` of everything given so far; later updates are an error."""
        if self._result is None:
            self.stop()
            self._hasher.update(self._batch)
            self._batch = bytearray()
            self._result = format_digest(self._hasher)
        return self._result


def _hash_batches(hasher: hashlib._Hash, batches: queue.Queue[bytes | bytearray | None]) -> None:
    while (batch := batches.get()) is not None:
        hasher.update(batch)


class HashingWriter:
    """A write-only stream that hashes and counts what passes to `target`.

    `target` may be None to only hash and count.
    """

    def __init__(self, target: BinaryIO | None) -> None:
        self._target = target
        self._hasher = BackgroundSha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hasher.update(data)
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

    def stop_hashing(self) -> None:
        """End the hashing thread when the digest will not be read (after an error)."""
        self._hasher.stop()

    @property
    def closed(self) -> bool:
        return False

    @property
    def digest(self) -> str:
        return self._hasher.digest


class HashingReader:
    """A read-only stream that hashes and counts what it reads from `source`."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._hasher = BackgroundSha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def stop_hashing(self) -> None:
        """End the hashing thread when the digest will not be read (after an error)."""
        self._hasher.stop()

    def drain(self) -> None:
        """Read to the end, so that bytes after the tar end blocks count too."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return self._hasher.digest


@dataclass(frozen=True, slots=True)
class Descriptor:
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
