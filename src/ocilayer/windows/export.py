"""Windows layer export: hcsshim's writeTarFromLayer loop over a layer reader's items.

Each item becomes entries in order. A deleted path becomes a whiteout entry that has
only its name, so Go writes it as USTAR. A later name of a file with several links
becomes a hardlink entry (mode 0644) to the first name written. Anything else goes
through the backuptar rules. Cancellation is checked before each item, and a cancelled export
stops without the end-of-archive blocks.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
from collections.abc import Hashable, Iterable, Iterator
from typing import BinaryIO

from ocilayer.compression import Compression, open_compressor
from ocilayer.digest import Descriptor, HashingWriter
from ocilayer.errors import Cancelled, LayerError
from ocilayer.logs import get_logger
from ocilayer.tarformat.encoder import TarHeader
from ocilayer.windows.backuptar import (
    basic_info_header,
    tar_name,
    write_tar_file_from_backup_stream,
)
from ocilayer.windows.baselayer import BaseLayerReader
from ocilayer.windows.hostfiles import HostFiles
from ocilayer.windows.layeritem import LayerItem
from ocilayer.windows.tarstream import TarWriter
from ocilayer.windows.transport import TransportReader, is_transport_folder

log = get_logger("ocilayer")

PathArg = str | os.PathLike[str]
WHITEOUT_PREFIX = ".wh."


class WindowsLayout(enum.Enum):
    """The two folder layouts of a Windows layer."""

    # What vmcompute's ExportLayer writes and ImportLayer reads: a diff layer.
    TRANSPORT = "transport"
    # The real files of a parentless layer.
    BASE = "base"


def whiteout_header(name: str) -> TarHeader:
    """Return the header of a deleted path: only the name, `<dir>/.wh.<base>`."""
    directory, _, base = name.rpartition("\\")
    whiteout = f"{directory}\\{WHITEOUT_PREFIX}{base}" if directory else WHITEOUT_PREFIX + base
    return TarHeader(name=tar_name(whiteout), format_pax=False)


def hardlink_header(item: LayerItem, first_name: bytes) -> TarHeader:
    """Return the header of a later name of a multi-link file: type 1, mode 0644, size 0."""
    assert item.info is not None
    header = basic_info_header(item.name, 0, item.info)
    header.mode = 0o644
    header.typeflag = b"1"
    header.linkname = first_name
    return header


def write_tar_from_layer(
    items: Iterable[LayerItem], tar: TarWriter, cancel: threading.Event | None = None
) -> None:
    """Write the tar entries of every item, then the end-of-archive blocks.

    Raises Cancelled, before the next item, once `cancel` is set.
    """
    first_names: dict[Hashable, bytes] = {}
    iterator = iter(items)
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("Windows layer export cancelled")
        item = next(iterator, None)
        if item is None:
            break
        if item.info is None:
            tar.write_header(whiteout_header(item.name))
            continue
        if item.name.rpartition("\\")[2].startswith(WHITEOUT_PREFIX):
            # hcsshim writes such a file as it is, and every importer then deletes a path.
            raise LayerError(
                f"{item.name!r}: a file name that starts with '.wh.' would be read as a "
                "whiteout when the layer is applied; rename or remove it before exporting"
            )
        if item.link is not None and item.link.link_count > 1:
            first = first_names.get(item.link.file_id)
            if first is not None:
                tar.write_header(hardlink_header(item, first))
                continue
            first_names[item.link.file_id] = tar_name(item.name)
        if item.open_stream is None:
            raise LayerError(f"{item.name!r} has no backup stream to read")
        with item.open_stream() as stream:
            write_tar_file_from_backup_stream(
                tar,
                stream,
                item.name,
                item.size,
                item.info,
                seekable=item.seekable,
                origin=item.origin,
            )
    tar.close()


def layer_items(
    path: PathArg, layout: WindowsLayout | None = None, host: HostFiles | None = None
) -> Iterator[LayerItem]:
    """Yield the items of a layer folder; without `layout`, tombstones.txt decides."""
    if layout is None:
        layout = WindowsLayout.TRANSPORT if is_transport_folder(path) else WindowsLayout.BASE
    if layout is WindowsLayout.TRANSPORT:
        return TransportReader(path, host).items()
    return BaseLayerReader(path, host).items()


def write_items(
    writer: BinaryIO,
    items: Iterable[LayerItem],
    *,
    cancel: threading.Event | None = None,
    compression: Compression = Compression.NONE,
    level: int | None = None,
    threads: int = 0,
    digests: bool = True,
) -> Descriptor:
    """Write items as a compressed layer tar into `writer` and return its descriptor.

    With `digests` false, no sha256 is computed and both digests are None.
    """
    blob = HashingWriter(writer, hashing=digests)
    compressor = open_compressor(blob, compression, level, threads)  # type: ignore[arg-type]
    tar_bytes = HashingWriter(compressor, hashing=digests)
    try:
        write_tar_from_layer(items, TarWriter(tar_bytes), cancel)  # type: ignore[arg-type]
    except BaseException:
        try:
            compressor.close()
        except Exception as error:  # the first error matters more
            log.debug("closing the compressor after a failure: %s", error)
        raise
    compressor.close()
    blob.flush()
    return Descriptor(compression.media_type, blob.digest, blob.size, tar_bytes.digest)


def export_windows_layer(
    writer: BinaryIO,
    path: PathArg,
    parent_layer_paths: Iterable[PathArg] = (),
    *,
    cancel: threading.Event | None = None,
    layout: WindowsLayout | None = None,
    compression: Compression = Compression.NONE,
    level: int | None = None,
    threads: int = 0,
    digests: bool = True,
) -> Descriptor:
    """Export a Windows layer as a layer tar stream into `writer`, as hcsshim's ExportLayerToTar.

    On a Windows host `path` is a layer of the Windows storage and `parent_layer_paths`
    its parents, lowest first. The layer then goes through the HCS steps (activate,
    prepare, export) first. On other hosts `path` is a transport folder (a diff layer,
    as ExportLayer writes it) or a base layer folder, chosen by `layout` or else by
    whether tombstones.txt exists, and parent layers cannot be given.

    Returns the OCI descriptor of what was written, with the diff_id of the tar (both
    digests None with `digests` false). Raises LayerError for an unreadable layer and
    Cancelled when `cancel` is set.
    """
    parents = [os.fspath(parent) for parent in parent_layer_paths]
    if sys.platform == "win32" and layout is None:
        from ocilayer.windows.hcs import export_layer_on_host

        return export_layer_on_host(
            writer,
            os.fspath(path),
            parents,
            cancel=cancel,
            compression=compression,
            level=level,
            threads=threads,
            digests=digests,
        )
    if parents:
        raise LayerError(
            "parent layers are used only on a Windows host, where vmcompute diffs the layer "
            "against them; on this host give the transport folder that ExportLayer wrote"
        )
    return write_items(
        writer,
        layer_items(path, layout),
        cancel=cancel,
        compression=compression,
        level=level,
        threads=threads,
        digests=digests,
    )
