"""Export: a layer reader's entries through the tar writer, compressor and digests to a sink.

The tar bytes feed one sha256 (the diff_id) on their way into the compressor, and the
compressed bytes feed a second sha256 and a byte count on their way to the sink, so
one pass yields both digests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ocilayer.compression import Compression, open_compressor
from ocilayer.digest import Descriptor, HashingWriter
from ocilayer.entry import Entry
from ocilayer.errors import Cancelled, LayerError, layer_write_error, reason, show
from ocilayer.logs import get_logger
from ocilayer.progress import Progress
from ocilayer.sources.packed import PackedEntries, packed_changes
from ocilayer.sources.snapshot import SnapshotSource
from ocilayer.writer import LayerTarWriter, RecipeOptions, socket_warning
from ocilayer.xattrs import XattrPolicy

if TYPE_CHECKING:
    from ocilayer.sources.overlay import OverlaySource

log = get_logger("ocilayer")

PathArg = str | bytes | os.PathLike[str]


class LayerReader(Protocol):
    """The interface of a layer source: its changes, and lookups of its directories."""

    def changes(self) -> Iterator[Entry]: ...

    def lookup(self, path: bytes) -> Entry: ...


SOURCES = ("snapshot", "overlay", "auto", "tar")


def open_source(
    path: PathArg,
    parent_layer_paths: Iterable[PathArg] = (),
    *,
    source: str = "snapshot",
    xattrs: XattrPolicy = XattrPolicy.ALL,
    include: Iterable[bytes] = (),
) -> SnapshotSource | OverlaySource:
    """Open the layer reader for `path`.

    `source` is "snapshot" (a full tree), "overlay" (an overlayfs upper directory)
    or "auto", which picks overlay only when the directory contains overlay records
    (whiteout devices or overlay xattrs), and snapshot otherwise. The "tar" source
    reads a layer tar and is opened by `export_layer_to_tar`, which owns its file.
    """
    if source not in SOURCES or source == "tar":
        raise LayerError(f"unknown source kind {source!r}; use one of {', '.join(SOURCES)}")
    if source in ("auto", "overlay"):
        # Loaded here: a snapshot export, the common case, does not need it (7 ms).
        from ocilayer.sources.overlay import OverlaySource, looks_like_upper

        if source == "overlay" or looks_like_upper(path):
            return OverlaySource(path, parent_layer_paths, xattrs=xattrs, include=include)
    return SnapshotSource(path, parent_layer_paths, xattrs=xattrs, include=include)


def export_changes(
    path: PathArg,
    parent_layer_paths: Iterable[PathArg] = (),
    *,
    source: str = "snapshot",
    xattrs: XattrPolicy = XattrPolicy.ALL,
    include: Iterable[bytes] = (),
) -> Iterator[Entry]:
    """Yield the changes of a layer against its parents, without writing a tar.

    The entries come in the order the tar writer takes them. Parent directories are
    not added here; the tar writer adds them.
    """
    reader = open_source(path, parent_layer_paths, source=source, xattrs=xattrs, include=include)
    return reader.changes()


def write_layer(
    reader: LayerReader,
    writer: BinaryIO,
    *,
    compression: Compression = Compression.NONE,
    level: int | None = None,
    threads: int = 0,
    options: RecipeOptions | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    digests: bool = True,
) -> Descriptor:
    """Write the layer tar of `reader` to `writer`, compressed, and return its descriptor.

    `cancel` is checked before each entry; when it is set, Cancelled is raised and
    the end-of-archive blocks are never written. `progress`, when given, is updated
    after each entry with the entries and tar bytes written so far. With `digests`
    false, the descriptor's digest and diff_id are None and no sha256 is computed.
    """
    compressor: BinaryIO | None = None
    if compression is Compression.NONE:
        # The blob is the tar itself: one hash serves as diff_id and digest.
        tar = blob = HashingWriter(writer, hashing=digests)
    else:
        blob = HashingWriter(writer, hashing=digests)
        try:
            # gzip writes its header here.
            compressor = open_compressor(blob, compression, level, threads)  # type: ignore[arg-type]
        except OSError as error:
            raise layer_write_error(error) from error
        tar = HashingWriter(compressor, hashing=digests)
    options = options or RecipeOptions()
    tar_writer = LayerTarWriter(tar, reader.lookup, options)  # type: ignore[arg-type]
    items: Iterable[Entry | PackedEntries] | None = packed_changes(
        reader, options.source_date_epoch, options.keep_nanoseconds
    )
    if items is None:
        items = reader.changes()
    try:
        for item in items:
            if cancel is not None and cancel.is_set():
                raise Cancelled("export cancelled")
            if isinstance(item, PackedEntries):
                tar_writer.add_packed(item)
            else:
                tar_writer.add(item)
            if progress is not None:
                progress.update(tar_writer.entries_written, tar_writer.size)
        tar_writer.close()
        if progress is not None:
            progress.update(tar_writer.entries_written, tar_writer.size)
    except BaseException:
        # A read-ahead worker stops and closes its directory now, not when the
        # traceback that references this frame is freed.
        close = getattr(items, "close", None)
        if close is not None:
            close()
        if compressor is not None:
            _abandon(compressor)
        raise
    if compressor is not None:
        try:
            compressor.close()  # writes the compressor's last blocks
        except OSError as error:
            raise layer_write_error(error) from error
    blob.flush()
    if tar_writer.skipped_sockets:
        log.warning("%s", socket_warning(tar_writer.skipped_sockets))
    return Descriptor(compression.media_type, blob.digest, blob.size, tar.digest)


def _abandon(compressor: BinaryIO) -> None:
    """Stop a compressor after a failure; what it writes then is discarded with the output."""
    # NOTE: close() compresses what is still buffered, so a cancelled export at a high
    # zstd level with one thread can take seconds to stop (10 s measured at level 19).
    try:
        compressor.close()
    except Exception as error:  # the original error matters more
        log.debug("closing the compressor after a failure: %s", error)


def export_layer_to_tar(
    writer: BinaryIO,
    path: PathArg,
    parent_layer_paths: Iterable[PathArg] = (),
    *,
    cancel: threading.Event | None = None,
    compression: Compression = Compression.NONE,
    level: int | None = None,
    threads: int = 0,
    source_date_epoch: int | None = None,
    keep_nanoseconds: bool = False,
    xattrs: XattrPolicy = XattrPolicy.ALL,
    include: Iterable[bytes] = (),
    source: str = "snapshot",
    prefix: bytes = b"",
    progress: Progress | None = None,
    digests: bool = True,
) -> Descriptor:
    """Export a layer directory as an OCI layer tar stream into `writer`.

    `path` is a full snapshot of the layer (or, with `source="overlay"`, an overlayfs
    upper directory) and `parent_layer_paths` its parent layers, lowest first;
    without parents every path is an addition. The stream is
    compressed with `compression` at `level` using `threads` threads (0: one per
    CPU). `source_date_epoch` (Unix seconds) clamps later mtimes; the environment
    variable SOURCE_DATE_EPOCH is read by the CLI, not here. Returns the OCI
    descriptor of what was written, with the diff_id of the uncompressed tar; with
    `digests` false, no sha256 is computed and both digests are None.

    With `source="tar"`, `path` is a layer tar (plain, gzip or zstd) to rewrite, with
    every name moved under `prefix` when one is given; it takes no parents.

    Raises LayerError for an unreadable layer, Cancelled when `cancel` is set.
    """
    options = RecipeOptions(source_date_epoch=source_date_epoch, keep_nanoseconds=keep_nanoseconds)
    settings = {"compression": compression, "level": level, "threads": threads,
                "options": options, "cancel": cancel, "progress": progress,
                "digests": digests}  # fmt: skip
    if source == "tar":
        if list(parent_layer_paths):
            raise LayerError("a layer tar is already a changeset; it takes no parent layers")
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as error:
            encoded = os.fsencode(path)
            raise LayerError(
                f"cannot open layer tar {show(encoded)}: {reason(error, encoded)}"
            ) from None
        from ocilayer.sources.tarsource import TarSource  # loads the tar reader

        with stream:
            tar_reader = TarSource(stream, prefix=prefix, xattrs=xattrs)
            return write_layer(tar_reader, writer, **settings)  # type: ignore[arg-type]
    if prefix:
        raise LayerError("--prefix applies to a layer tar (source tar) only")
    reader = open_source(path, parent_layer_paths, source=source, xattrs=xattrs, include=include)
    return write_layer(reader, writer, **settings)  # type: ignore[arg-type]
