"""Layer compression: gzip and zstd writers, and readers chosen by magic bytes.

Writers are reproducible: gzip output carries no time and no file name, and the
multi-threaded encoders give the same bytes whatever the thread count (the tests
check both codecs with one, two and four threads).
"""

from __future__ import annotations

import enum
import io
import os
import zlib
from types import ModuleType
from typing import BinaryIO, cast

from ocilayer.errors import OcilayerError
from ocilayer.streams import IntoReader

# The codec modules are imported when first used: together they cost about 50 ms of
# start-up, which a plain tar export never needs.


def _isal_threaded() -> ModuleType | None:
    try:
        from isal import igzip_threaded
    except ImportError:  # pragma: no cover - isal ships wheels for the supported platforms
        return None
    return igzip_threaded


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Skippable zstd frames have a little-endian magic in 0x184D2A50..0x184D2A5F.
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50

MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
_ZSTD_JOB_SIZE = 2 << 20


class Compression(enum.Enum):
    """A layer codec, with its OCI media type suffix and its file name suffixes."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_type(self) -> str:
        if self is Compression.NONE:
            return MEDIA_TYPE_LAYER
        return f"{MEDIA_TYPE_LAYER}+{self.value}"

    @property
    def default_level(self) -> int:
        return {Compression.NONE: 0, Compression.GZIP: 6, Compression.ZSTD: 3}[self]

    @property
    def levels(self) -> range:
        """The levels the codec accepts: zlib's 0-9 for gzip, 1-19 for zstd."""
        return {Compression.NONE: range(0, 1), Compression.GZIP: range(0, 10),
                Compression.ZSTD: range(1, 20)}[self]  # fmt: skip

    @classmethod
    def from_filename(cls, name: str) -> Compression:
        """Choose the codec from a file name: `.tar.gz`/`.tgz` gzip, `.tar.zst` zstd."""
        lowered = name.lower()
        if lowered.endswith((".tar.gz", ".tgz", ".gz")):
            return cls.GZIP
        if lowered.endswith((".tar.zst", ".tar.zstd", ".zst", ".zstd")):
            return cls.ZSTD
        return cls.NONE


class CompressionError(OcilayerError):
    """A compressed stream is corrupt or uses an unsupported codec."""


def _isal_level(level: int) -> int:
    """Map a zlib level (0-9) to the nearest ISA-L level (0-3).

    NOTE: ISA-L has four levels only. Level 2 compresses about as well as zlib level 6
    and runs several times faster, so 3-6 map to it. The mapping is a judgement call.
    """
    if level <= 0:
        return 0
    if level <= 2:
        return 1
    if level <= 6:
        return 2
    return 3


def open_compressor(
    raw: BinaryIO, compression: Compression, level: int | None = None, threads: int = 0
) -> BinaryIO:
    """Return a writable stream that compresses into `raw`; closing it leaves `raw` open.

    `threads` is the number of compression threads, 0 for one per CPU.
    """
    if level is None:
        level = compression.default_level
    if level not in compression.levels:
        raise ValueError(
            f"invalid {compression.value} level {level}: use "
            f"{compression.levels.start}-{compression.levels.stop - 1}"
        )
    if threads <= 0:
        threads = os.cpu_count() or 1
    if compression is Compression.NONE:
        return cast(BinaryIO, _Unclosable(raw))
    if compression is Compression.ZSTD:
        import zstandard

        # A fixed job size keeps the output the same for any thread count. 2 MiB jobs
        # kept the peak RSS of a Debian rootfs export at 57 MiB with two workers (80 MiB
        # with zstd's default), at the same speed and 0.8% more output.
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, job_size=_ZSTD_JOB_SIZE
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
        return cast(BinaryIO, compressor.stream_writer(raw, closefd=False))
    igzip_threaded = _isal_threaded()
    if igzip_threaded is not None:
        # The threaded writer is used even with one thread: its block layout, and so its
        # output, does not depend on the thread count.
        writer = igzip_threaded.open(
            _Unclosable(raw),
            "wb",
            compresslevel=_isal_level(level),
            threads=threads,
            block_size=_GZIP_BLOCK_SIZE,
        )
        return cast(BinaryIO, _FixedBlocks(writer, _GZIP_BLOCK_SIZE))
    import gzip

    return cast(
        BinaryIO,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0, filename=""),
    )


# ISA-L's threaded writer compresses each block on its own, with the previous 32 KiB
# as dictionary.
_GZIP_BLOCK_SIZE = 1 << 20


class _FixedBlocks(io.RawIOBase):
    """Pass data on to `target` in writes of exactly `size` bytes, the last one shorter.

    The threaded ISA-L writer starts a new deflate block where a write ends when that
    write does not fill its buffer, so its output depends on how the data was split
    into writes. Fixed writes make the gzip blob depend on the bytes alone, whichever
    path wrote the tar.
    """

    def __init__(self, target: BinaryIO, size: int) -> None:
        self._target = target
        self._size = size
        self._pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        pending = self._pending
        pending += data
        if len(pending) >= self._size:
            size, start = self._size, 0
            with memoryview(pending) as view:
                while len(pending) - start >= size:
                    self._target.write(view[start : start + size])
                    start += size
            del pending[:start]
        return len(data)

    def flush(self) -> None:
        """Keep a partial block: writing it now would change the blob."""

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._pending:
                self._target.write(self._pending)
                self._pending = bytearray()
            self._target.close()
        finally:
            super().close()


class _Unclosable(io.RawIOBase):
    """A pass-through writer whose close does not close the wrapped stream."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()


def detect_compression(head: bytes) -> Compression:
    """Detect the codec from the first bytes of a blob (at least 8 for skippable frames).

    Anything that is neither gzip nor zstd is taken as a plain tar, and so is an empty
    or short stream.
    """
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    if len(head) >= 8:
        magic = int.from_bytes(head[:4], "little")
        if magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
            return Compression.ZSTD
    return Compression.NONE


class _GzipMembers(io.RawIOBase):
    """Streaming reader of concatenated gzip members (what pigz and `cat a.gz b.gz` write)."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self._raw = raw
        self._input = head
        self._inflater = zlib.decompressobj(31)
        # Whether the current member has received any input yet.
        self._in_member = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while True:
            if not self._input:
                self._input = self._raw.read(1 << 16)
                if not self._input:
                    if self._in_member:
                        raise CompressionError("gzip stream is truncated")
                    return 0
            if not self._in_member and not self._input.startswith(GZIP_MAGIC[: len(self._input)]):
                raise CompressionError("data after the last gzip member is not gzip")
            self._in_member = True
            try:
                out = self._inflater.decompress(self._input, len(view))
            except zlib.error as error:
                raise CompressionError(f"gzip stream is corrupt: {error}") from error
            self._input = self._inflater.unconsumed_tail
            if self._inflater.eof:
                # At the end of a member zlib reports the rest of the input as unused
                # data, and the unconsumed tail may repeat the same bytes.
                self._input = self._inflater.unused_data
                self._inflater = zlib.decompressobj(31)
                self._in_member = False
            if out:
                view[: len(out)] = out
                return len(out)


def open_decompressor(raw: BinaryIO) -> tuple[BinaryIO, Compression]:
    """Wrap `raw` in a reader of the tar stream inside it, detecting the codec."""
    head = _read_up_to(raw, 8)
    compression = detect_compression(head)
    if compression is Compression.GZIP:
        return io.BufferedReader(_GzipMembers(raw, head), 1 << 16), compression
    if compression is Compression.ZSTD:
        return io.BufferedReader(_ZstdFrames(raw, head), 1 << 16), compression
    if head and _seekable(raw):
        # A plain tar in a file: go back over the magic bytes and read the file itself,
        # without a buffer and a copy more for every read.
        raw.seek(-len(head), io.SEEK_CUR)
        return raw, compression
    return io.BufferedReader(_Prefixed(head, raw), 1 << 16), compression


def _seekable(raw: BinaryIO) -> bool:
    try:
        return raw.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _read_up_to(raw: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = raw.read(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _Prefixed(io.RawIOBase):
    """A reader that returns `head` and then the rest of `raw`."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw
        self._into = IntoReader(raw)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._into(view)


class _ZstdFrames(io.RawIOBase):
    """Streaming reader of concatenated zstd frames that notices a truncated last frame.

    zstandard's stream reader ends quietly when its input stops inside a frame, so a
    cut-off download would apply as a shorter layer; this reader raises instead.
    Input goes to the decompressor in pieces sized from the last ratio seen, so a
    piece of a highly compressed frame (a "bomb") yields about 1 MiB, not gigabytes.
    """

    _TARGET_OUTPUT = 1 << 20
    _MAX_PIECE = 1 << 17

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._input = head
        self._output = memoryview(b"")
        self._frame: zstandard.ZstdDecompressionObj | None = None
        self._piece = 64

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while not self._output:
            if not self._input:
                self._input = self._raw.read(1 << 16)
                if not self._input:
                    if self._frame is not None:
                        raise CompressionError("zstd stream is truncated inside a frame")
                    return 0
            self._output = memoryview(self._decompress_piece())
        count = min(len(view), len(self._output))
        view[:count] = self._output[:count]
        self._output = self._output[count:]
        return count

    def _decompress_piece(self) -> bytes:
        if self._frame is None:
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
        piece, self._input = self._input[: self._piece], self._input[self._piece :]
        try:
            out = self._frame.decompress(piece)
        except self._zstd.ZstdError as error:
            raise CompressionError(_zstd_message(error)) from error
        # Shrink at once after a high ratio, but grow at most twofold a step, because a
        # piece that yields little (a frame header) predicts nothing about the next.
        ratio = max(len(out) / len(piece), 1.0)
        wanted = int(self._TARGET_OUTPUT / ratio)
        self._piece = max(64, min(self._MAX_PIECE, wanted, 2 * self._piece))
        if self._frame.eof:
            self._input = self._frame.unused_data + self._input
            self._frame = None
        return out


def _zstd_message(error: Exception) -> str:
    text = str(error)
    if "memory" in text or "window" in text.lower():
        return (
            f"zstd frame needs a larger window than ocilayer allows ({text}); it was made "
            "with zstd --long or a high --window-log: recompress the layer without them"
        )
    return f"zstd stream is corrupt: {text}"
