"""The walk of a base layer through the C packer, `ocilayer._packer`.

A snapshot with no parent layers and no `include` is one sorted tree walk in which
every path is an addition. The C packer walks each directory and writes the finished
tar entries of its common children: regular files with one link (sparse ones only up
to 1 MiB), directories and symlinks, with no xattrs and a USTAR-sized header. It runs
on a worker thread, a few runs of about 1 MiB ahead of the writer. Every other child
becomes an `Entry` here, built as `SnapshotSource.changes` builds it, for the Python
writer. The tar bytes are the same either way, which the tests check on the same
trees with and without the packer.

The packer is an optional C extension: without a compiler at install time, or with
OCILAYER_PURE_PYTHON set to a non-empty value, every export takes the Python path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

from ocilayer.entry import ChangeKind, Entry
from ocilayer.errors import LayerError, reason, show
from ocilayer.logs import get_logger
from ocilayer.native import load_extension
from ocilayer.readahead import read_ahead
from ocilayer.sources.snapshot import SnapshotSource, changed_size, check_name, entry_from_node
from ocilayer.sources.union import Node
from ocilayer.xattrs import XattrPolicy

log = get_logger("ocilayer")


class PackedEntries(NamedTuple):
    """Finished tar entries: headers, file data and padding.

    `directories` are the layer paths of the directories whose headers are in `data`.
    """

    data: bytes
    entries: int
    directories: tuple[bytes, ...]


# Runs shorter than this are joined before they pass to the writer's thread: the
# rootfs export has 1,473 runs with a median of 512 bytes, each a hand-over between
# threads. Joined, a zstd export of it took 524 ms instead of 534 ms.
MERGE_SIZE = 256 << 10


def load_packer() -> ModuleType | None:
    """Return the C packer module, or None when it is not built or is turned off."""
    return load_extension("_packer")


def packed_changes(
    source: object, source_date_epoch: int | None, keep_nanoseconds: bool
) -> Iterator[Entry | PackedEntries] | None:
    """Return the changes of `source` with the common entries packed, or None.

    None means the packer cannot take this source (it is not a base snapshot, or the
    packer is not available), so the caller uses `source.changes()`.
    """
    if not isinstance(source, SnapshotSource) or source.parents or source.include:
        return None
    if source_date_epoch is not None and not -(1 << 63) <= source_date_epoch < 1 << 63:
        return None  # the C packer takes a 64-bit epoch
    packer = load_packer()
    if packer is None:
        log.debug("the C packer is not built or is turned off; exporting in pure Python")
        return None
    # The packer releases the GIL while it walks, so a worker thread walks while this
    # thread hashes and writes the previous run.
    return read_ahead(_merged(_walk(source, packer, source_date_epoch, keep_nanoseconds)))


def _merged(items: Iterator[Entry | PackedEntries]) -> Iterator[Entry | PackedEntries]:
    """Join consecutive runs shorter than MERGE_SIZE until a joined run reaches MERGE_SIZE.

    A longer run and an `Entry` pass on as they are, after the runs joined so far.
    """
    pending: list[PackedEntries] = []
    size = 0
    for item in items:
        if isinstance(item, PackedEntries) and len(item.data) < MERGE_SIZE:
            pending.append(item)
            size += len(item.data)
            if size >= MERGE_SIZE:
                yield _join(pending)
                pending, size = [], 0
            continue
        if pending:
            yield _join(pending)
            pending, size = [], 0
        yield item
    if pending:
        yield _join(pending)


def _join(runs: list[PackedEntries]) -> PackedEntries:
    if len(runs) == 1:
        return runs[0]
    data = b"".join(run.data for run in runs)
    directories = tuple(path for run in runs for path in run.directories)
    return PackedEntries(data, sum(run.entries for run in runs), directories)


def _walk(
    source: SnapshotSource,
    packer: ModuleType,
    source_date_epoch: int | None,
    keep_nanoseconds: bool,
) -> Iterator[Entry | PackedEntries]:
    check_xattrs = source.xattrs is not XattrPolicy.NONE

    def open_directory(full: bytes, prefix: bytes, identity: tuple[int, int] | None) -> Any:
        try:
            return packer.DirPacker(
                full, prefix, check_xattrs, keep_nanoseconds, source_date_epoch, identity
            )
        except OSError as error:
            raise _unreadable(full, error) from error

    # Each level: the packer of a directory, its path on disk and its prefix in the layer.
    stack = [(open_directory(source.root, b"", None), source.root, b"")]
    while stack:
        directory_packer, directory, prefix = stack[-1]
        try:
            item = next(directory_packer, None)
        except OSError as error:
            raise _unreadable(directory, error) from error
        if item is None:
            stack.pop()
            continue

        if item[0] == packer.PACKED:
            _, data, count, child = item
            if child is None:
                yield PackedEntries(data, count, ())
                continue
            name, dev, ino = child
            path = prefix + name
            yield PackedEntries(data, count, (path,))
            full = os.path.join(directory, name)
            stack.append((open_directory(full, path + b"/", (dev, ino)), full, path + b"/"))
            continue

        name = item[1]
        path, full = prefix + name, os.path.join(directory, name)
        if item[0] == packer.FAILED:
            # A file whose header and some data were already passed on.
            if item[2] == 0:
                raise changed_size(full, item[3])
            raise LayerError(f"cannot read {show(full)}: {os.strerror(item[2])}")

        # An unusual child: the Python reader builds its entry, with its own checks.
        try:
            st = os.lstat(full)
        except OSError as error:
            raise _unreadable(directory, error) from error
        node = check_name(Node(path, st, full))
        yield entry_from_node(node, ChangeKind.ADD, source.xattrs, read_ahead=True)
        if stat.S_ISDIR(st.st_mode):
            directory_packer.pause()
            identity = (st.st_dev, st.st_ino)
            stack.append((open_directory(full, path + b"/", identity), full, path + b"/"))


def _unreadable(directory: bytes, error: OSError) -> LayerError:
    return LayerError(f"cannot read directory {show(directory)}: {reason(error, directory)}")
