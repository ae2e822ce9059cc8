"""Entries to a layer tar stream, by the OCI recipe that containerd's WriteDiff follows.

Each change becomes one tar entry:

- a DELETE becomes a whiteout `dir/.wh.name`: an empty regular file with mode 0,
  owner 0:0 and mtime 0, so the same change always gives the same bytes;
- an OPAQUE directory becomes `dir/.wh..wh..opq` right after the directory;
- anything else becomes a header from its metadata: numeric ids with empty user
  and group names, mtime cut to whole seconds (then clamped to SOURCE_DATE_EPOCH),
  no atime or ctime, xattrs as `SCHILY.xattr.*` records, and the file data.

Before any entry, each parent directory not yet written is written, top-down, with
its current metadata. Within a hardlink group the first name written carries the
data and every later name is a hardlink entry to it. Unchanged names of a group
whose file changed are written too, right after the name that carries the data.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Hashable
from typing import BinaryIO, NamedTuple

from ocilayer.entry import ChangeKind, Entry, FileType, parent_of
from ocilayer.errors import LayerError, layer_write_error, reason, show
from ocilayer.logs import get_logger
from ocilayer.sources.packed import PackedEntries
from ocilayer.sources.snapshot import changed_size, open_regular
from ocilayer.sources.union import OPAQUE_MARKER, WHITEOUT_PREFIX
from ocilayer.tarformat.encoder import (
    END_OF_ARCHIVE,
    TarHeader,
    data_padding,
    encode_header,
    encode_plain_ustar,
)

log = get_logger("ocilayer")

_BUFFER_SIZE = 1 << 20
_COPY_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_COPY_CHUNK))
# Files up to this size are read in one call; larger ones are copied around their holes.
_SMALL_FILE = 1 << 16


class RecipeOptions(NamedTuple):
    """Choices of the OCI recipe.

    `source_date_epoch` (Unix seconds) clamps later mtimes down to it.
    `keep_nanoseconds` keeps sub-second mtimes (written as PAX `mtime` records)
    instead of cutting them to whole seconds.
    """

    source_date_epoch: int | None = None
    keep_nanoseconds: bool = False


class LayerTarWriter:
    """Write entries to `out` as an OCI layer tar stream.

    `lookup(path)` returns the current entry of a directory of the layer; it is how
    parent directories of a change are written. Call `close()` to write the two
    end-of-archive blocks; a writer that is not closed leaves them out.
    """

    def __init__(
        self,
        out: BinaryIO,
        lookup: Callable[[bytes], Entry],
        options: RecipeOptions | None = None,
    ) -> None:
        self._out = out
        self._lookup = lookup
        self._options = options or RecipeOptions()
        self._buffer = bytearray()
        self._written_dirs: set[bytes] = set()
        # Hardlink groups: the name that carries the data, and unchanged names seen
        # before any name of their group was written.
        self._link_sources: dict[Hashable, bytes] = {}
        self._pending_links: dict[Hashable, list[Entry]] = {}
        self.skipped_sockets: list[bytes] = []
        self.entries_written = 0
        self._flushed = 0

    @property
    def size(self) -> int:
        """Bytes of tar written so far, buffered bytes included."""
        return self._flushed + len(self._buffer)

    def add(self, entry: Entry) -> None:
        """Write the tar entries for one change."""
        if self._add_plain(entry):
            return
        if entry.kind is ChangeKind.DELETE:
            self._write_whiteout(parent_of(entry.path), WHITEOUT_PREFIX + _base(entry.path))
            return
        if entry.kind is ChangeKind.OPAQUE:
            self._write_whiteout(entry.path, OPAQUE_MARKER)
            return
        if entry.type is FileType.SOCKET:
            self.skipped_sockets.append(entry.path)
            return

        header = self._header(entry)
        followers: list[Entry] = []
        if entry.hardlinked:
            key = entry.link_key
            source = self._link_sources.get(key)
            if source is not None:
                header.typeflag = FileType.HARDLINK.value
                header.linkname = source
                header.size = 0
            elif entry.kind is ChangeKind.UNMODIFIED:
                self._pending_links.setdefault(key, []).append(entry)
                return
            else:
                self._link_sources[key] = header.name.rstrip(b"/")
                followers = self._pending_links.pop(key, [])
        elif entry.kind is ChangeKind.UNMODIFIED:
            return

        self._include_parents(entry.path)
        self._write_header(header, entry.is_dir)
        if header.typeflag == FileType.REGULAR.value and header.size > 0:
            self._copy_data(entry)
        for follower in followers:
            link = self._header(follower)
            link.typeflag = FileType.HARDLINK.value
            link.linkname = header.name
            link.size = 0
            self._include_parents(follower.path)
            self._write_header(link, False)

    def _add_plain(self, entry: Entry) -> bool:
        """Write the most common entry in one step, or return False to take the general path.

        The common entry is an added or modified file, directory or symlink with no
        xattrs, no other names, a USTAR-sized header and (for a file) data already read.
        Its bytes are those the general path writes; the export tests run both.
        """
        kind = entry.kind
        if (
            (kind is not ChangeKind.ADD and kind is not ChangeKind.MODIFY)
            or entry.xattrs
            or (entry.nlink > 1 and entry.type is not FileType.DIRECTORY)
        ):
            return False
        file_type = entry.type
        content = entry.content
        if file_type is FileType.REGULAR:
            if content is None and entry.size:
                return False
        elif file_type is not FileType.DIRECTORY and file_type is not FileType.SYMLINK:
            return False
        mtime = entry.mtime_ns // 1_000_000_000
        options = self._options
        if options.keep_nanoseconds and entry.mtime_ns % 1_000_000_000:
            return False
        epoch = options.source_date_epoch
        if epoch is not None and mtime > epoch:
            mtime = epoch
        is_dir = file_type is FileType.DIRECTORY
        name = entry.path + b"/" if is_dir else entry.path
        block = encode_plain_ustar(
            name, file_type.value, entry.mode, entry.uid, entry.gid,
            entry.size if content is not None else 0, mtime, entry.linkname,
        )  # fmt: skip
        if block is None:
            return False
        if content is not None and len(content) != entry.size:
            raise _changed_size(entry)
        self._include_parents(entry.path)
        if is_dir:
            self._written_dirs.add(entry.path)
        self.entries_written += 1
        if content:
            self._emit(block + content + data_padding(len(content)))
        else:
            self._emit(block)
        return True

    def add_packed(self, packed: PackedEntries) -> None:
        """Write entries that the C packer finished, all of them additions with no parents."""
        self._written_dirs.update(packed.directories)
        self.entries_written += packed.entries
        self._emit(packed.data)

    def add_raw(self, header: TarHeader, data: bytes = b"") -> None:
        """Write a prepared header and its data, with no recipe applied."""
        self._write_header(header, header.typeflag == FileType.DIRECTORY.value)
        if data:
            self._emit(data + data_padding(len(data)))

    def close(self) -> None:
        """Write the end-of-archive blocks and flush."""
        self._emit(END_OF_ARCHIVE)
        self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._write_out(self._buffer)
            self._buffer = bytearray()

    def _write_out(self, data: bytes | bytearray | memoryview) -> None:
        """Write to the destination; its errors are about the output, never an input file."""
        try:
            self._out.write(data)
            self._flushed += len(data)
        except OSError as error:
            raise layer_write_error(error) from error

    def _header(self, entry: Entry) -> TarHeader:
        mtime_ns = entry.mtime_ns
        if not self._options.keep_nanoseconds:
            mtime_ns -= mtime_ns % 1_000_000_000
        epoch = self._options.source_date_epoch
        if epoch is not None and mtime_ns > epoch * 1_000_000_000:
            mtime_ns = epoch * 1_000_000_000
        name = entry.path + b"/" if entry.is_dir else entry.path
        return TarHeader(
            name=name,
            typeflag=entry.type.value,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=entry.size if entry.type is FileType.REGULAR else 0,
            mtime_ns=mtime_ns,
            linkname=entry.linkname,
            devmajor=entry.devmajor,
            devminor=entry.devminor,
            pax_records={b"SCHILY.xattr." + k: v for k, v in entry.xattrs.items()},
        )

    def _write_whiteout(self, directory: bytes, name: bytes) -> None:
        path = directory + b"/" + name if directory else name
        self._include_parents(path)
        self._write_header(TarHeader(name=path), False)

    def _include_parents(self, path: bytes) -> None:
        """Write each parent directory of `path` not yet written, top-down."""
        missing = []
        parent = parent_of(path)
        while parent and parent not in self._written_dirs:
            missing.append(parent)
            parent = parent_of(parent)
        for parent in reversed(missing):
            # The lookup fails for a parent removed after the walk, so name it in the error.
            try:
                entry = self._lookup(parent)
            except OSError as error:
                raise LayerError(
                    f"cannot read parent directory {show(parent)}: {reason(error)}"
                ) from error
            self._written_dirs.add(parent)
            self._write_header(self._header(entry), True)

    def _write_header(self, header: TarHeader, is_dir: bool) -> None:
        if is_dir:
            self._written_dirs.add(header.name.rstrip(b"/"))
        self._emit(_encode(header))
        self.entries_written += 1

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= _BUFFER_SIZE:
            self.flush()
            self._write_out(data)
            return
        self._buffer += data
        if len(self._buffer) >= _BUFFER_SIZE:
            self.flush()

    def _copy_data(self, entry: Entry) -> None:
        try:
            if entry.content is not None:
                if len(entry.content) != entry.size:
                    raise _changed_size(entry)
                self._emit(entry.content)
            elif entry.source_path is not None:
                self._copy_file(entry, entry.source_path)
            else:
                with entry.open() as source:
                    self._copy_stream(entry, source)
        except OSError as error:
            failure = reason(error, entry.source_path)
            raise LayerError(f"cannot read {_show(entry)}: {failure}") from error
        self._emit(data_padding(entry.size))

    def _copy_file(self, entry: Entry, path: bytes) -> None:
        """Copy a file's data, writing its holes as zeros without reading them."""
        # NOTE: no identity check here, because an overlay entry's data may come from a
        # lower layer's file. A directory swapped on the way to `path` is followed.
        fd = open_regular(path)
        if entry.size <= _SMALL_FILE:
            # One read returns the whole file, and a byte more if it grew.
            try:
                data = os.read(fd, entry.size + 1)
            finally:
                os.close(fd)
            if len(data) != entry.size:
                raise _changed_size(entry)
            self._emit(data)
            return
        try:
            position = 0
            size = entry.size
            while position < size:
                try:
                    data_start = min(os.lseek(fd, position, os.SEEK_DATA), size)
                except OSError as error:
                    if error.errno != errno.ENXIO:
                        raise
                    data_start = size
                self._emit_zeros(data_start - position)
                position = data_start
                if position >= size:
                    break
                hole_start = min(os.lseek(fd, position, os.SEEK_HOLE), size)
                os.lseek(fd, position, os.SEEK_SET)
                while position < hole_start:
                    chunk = os.read(fd, min(hole_start - position, _COPY_CHUNK))
                    if not chunk:
                        break
                    self._emit(chunk)
                    position += len(chunk)
                if position < hole_start:
                    break
            current = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if position != size or current != size:
            raise _changed_size(entry)

    def _copy_stream(self, entry: Entry, source: BinaryIO) -> None:
        remaining = entry.size
        while remaining > 0:
            chunk = source.read(min(remaining, _COPY_CHUNK))
            if not chunk:
                break
            self._emit(chunk)
            remaining -= len(chunk)
        if remaining or source.read(1):
            raise _changed_size(entry)

    def _emit_zeros(self, count: int) -> None:
        while count > 0:
            step = min(count, len(_ZEROS))
            self._emit(_ZEROS[:step])
            count -= step


def _changed_size(entry: Entry) -> LayerError:
    where = entry.source_path if entry.source_path is not None else entry.path
    return changed_size(where, entry.size)


def _encode(header: TarHeader) -> bytes:
    """Encode a header, through the one-step USTAR encoder when it fits."""
    seconds, nanoseconds = divmod(header.mtime_ns, 1_000_000_000)
    if not (header.pax_records or nanoseconds or header.uname or header.gname):
        block = encode_plain_ustar(
            header.name,
            header.typeflag,
            header.mode,
            header.uid,
            header.gid,
            header.size,
            seconds,
            header.linkname,
            header.devmajor,
            header.devminor,
        )
        if block is not None:
            return block
    return encode_header(header)


def _base(path: bytes) -> bytes:
    return path[path.rfind(b"/") + 1 :]


def _show(entry: Entry) -> str:
    return show(entry.source_path if entry.source_path is not None else entry.path)


def socket_warning(paths: list[bytes]) -> str:
    """Describe skipped sockets in one warning line."""
    shown = ", ".join(os.fsdecode(path) for path in paths[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return f"skipped {len(paths)} socket(s), which a tar cannot hold: {shown}{more}"


__all__ = ["LayerTarWriter", "RecipeOptions", "socket_warning"]
