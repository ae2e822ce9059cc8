"""Hashing and counting streams: the diff_id and the blob digest in one pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from ocilayer.streams import IntoReader

if TYPE_CHECKING:
    import hashlib


def _sha256() -> hashlib._Hash:
    import hashlib  # loads OpenSSL: a few milliseconds that a run without digests saves

    return hashlib.sha256()


def format_digest(hasher: hashlib._Hash) -> str:
    """Return a digest as `sha256:<hex>`."""
    return f"{hasher.name}:{hasher.hexdigest()}"


class HashingWriter:
    """A write-only stream that hashes and counts what passes to `target`.

    `target` may be None to only hash and count. With `hashing` false it only counts,
    and `digest` is None: sha256 costs more CPU than writing the bytes to a file.
    """

    def __init__(self, target: BinaryIO | None, *, hashing: bool = True) -> None:
        self._target = target
        self.hasher = _sha256() if hashing else None
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.hasher is not None:
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
    def digest(self) -> str | None:
        return None if self.hasher is None else format_digest(self.hasher)


class HashingReader:
    """A read-only stream that hashes and counts what it reads from `source`.

    With `hashing` false it only counts, and `digest` is None.
    """

    def __init__(self, source: BinaryIO, *, hashing: bool = True) -> None:
        self._source = source
        self._into = IntoReader(source)
        self.hasher = _sha256() if hashing else None
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if self.hasher is not None:
            self.hasher.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into `buffer`, without a copy when the source's readinto works."""
        with memoryview(buffer) as view:
            count = self._into(view)
            if self.hasher is not None:
                self.hasher.update(view[:count])
        self.size += count
        return count

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end, so that bytes after the tar end blocks count too."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str | None:
        return None if self.hasher is None else format_digest(self.hasher)


class Descriptor(NamedTuple):
    """An OCI content descriptor of a layer blob, with the diff_id of its tar.

    `digest` and `diff_id` are None when the export was asked for no digests.
    """

    media_type: str
    digest: str | None
    size: int
    diff_id: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "diffID": self.diff_id,
        }
