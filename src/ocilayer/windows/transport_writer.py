"""Write a transport folder (the layout vmcompute's ImportLayer reads) from layer entries.

The rules are those of hcsshim's legacyLayerWriter, for the parts that land in the
import folder:

- a path under `Files\\` becomes a transport file: the 4 attribute bytes, then the
  backup stream as it comes. A directory is also created, with its transport file
  `<dir>.$wcidirs$` beside it;
- `Files`, `Hives` and what is below `Hives` are ordinary files and directories (a
  directory also gets a `.$wcidirs$`), restored from the backup stream without the
  security descriptor;
- `UtilityVM` and `UtilityVM\\Files\\...` are ordinary files and directories, restored
  with the security descriptor;
- a parent must be added before its children, no name may be added twice, and
  nothing may be added below a directory that is a reparse point;
- deleted paths under `Files\\` go to `tombstones.txt` in the order they come.

Differences from hcsshim, where the import folder cannot express what it does after
ImportLayer: hardlinks are hard links between transport files (so both names must be
under `Files\\`, or both under `UtilityVM\\Files\\`), and a deleted path under
`UtilityVM\\Files\\` is rejected.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from ocilayer.errors import LayerError
from ocilayer.windows.backupstream import BackupStreamReader, StreamId
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.hostfiles import XATTR_BASIC_INFO, restore_backup, set_xattr
from ocilayer.windows.saferoot import (
    LayerRoot,
    clean_layer_name,
    clean_link_target,
    has_path_prefix,
    show_name,
)
from ocilayer.windows.transport import (
    ATTRIBUTES_SIZE,
    DIRECTORY_SUFFIX,
    FILES,
    TOMBSTONES_FILE,
    UTILITY_VM,
    UTILITY_VM_FILES,
    format_tombstones,
)

# Backup streams of ordinary files are held here until they are restored.
_SPOOL_MEMORY = 8 << 20


def new_spool() -> BinaryIO:
    """Return a temporary stream that stays in memory while small."""
    return cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY))


@dataclass(slots=True)
class PendingEntry:
    """The entry being written: the stream the caller fills, and what completes it."""

    stream: BinaryIO
    finish: Callable[[], None]
    # What abort() closes besides the stream: a descriptor that finish() would close.
    release: Callable[[], None] | None = None


class PendingWriter:
    """The part of a layer writer that keeps the entry being written and its root."""

    _pending: PendingEntry | None
    _root: LayerRoot

    def abort(self) -> None:
        """Stop after a failure, leaving what was written so far."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                try:
                    pending.stream.close()
                finally:
                    if pending.release is not None:
                        pending.release()
        finally:
            self._root.close()

    def finish_entry(self) -> None:
        """Complete the entry being written, so that a failed write is reported with it."""
        self._finish()

    def _finish(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.finish()


class TransportWriter(PendingWriter):
    """Write entries into a new transport folder at `root` (which must exist and be empty)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = LayerRoot(root)
        self._tombstones: list[str] = []
        # Every name added so far, file or link (False) or directory (True).
        self._added: dict[str, bool] = {}
        self._reparse_dirs: set[str] = set()
        self._pending: PendingEntry | None = None
        self._has_utility_vm = False

    def add(self, name: str, info: FileBasicInfo) -> BinaryIO:
        """Add a file or directory; write its backup stream into the returned stream."""
        self._finish()
        name = self._check_new(name)
        self._added[name] = info.is_dir
        if name == UTILITY_VM or has_path_prefix(name, UTILITY_VM):
            self._check_utility_vm(name)
            return self._add_ordinary(name, info, include_security=True, directory_file=False)
        if has_path_prefix(name, FILES):
            return self._add_transport_file(name, info)
        return self._add_ordinary(name, info, include_security=False, directory_file=True)

    def add_link(self, name: str, target: str) -> None:
        """Add `name` as a hard link to `target`, which this layer added earlier."""
        self._finish()
        name = self._check_new(name)
        target = clean_link_target(name, target)

        def allowed(path: str) -> bool:
            return has_path_prefix(path, FILES) or has_path_prefix(path, UTILITY_VM_FILES)

        if not allowed(name) or not allowed(target):
            raise LayerError(
                f"invalid hard link {show_name(name)} -> {show_name(target)}: both names must "
                f"be under {FILES}\\ or {UTILITY_VM_FILES}\\"
            )
        if target not in self._added:
            # NOTE: hcsshim also finds targets in the parent layers, after ImportLayer;
            # a transport folder cannot point into them.
            raise LayerError(
                f"failed to find link target for {show_name(name)} -> {show_name(target)}: "
                "the target must come earlier in the same layer"
            )
        if self._added[target]:
            raise LayerError(
                f"invalid hard link {show_name(name)} -> {show_name(target)}: the target is a "
                "directory"
            )
        if has_path_prefix(name, FILES) != has_path_prefix(target, FILES):
            raise LayerError(
                f"hard link {show_name(name)} -> {show_name(target)} joins {FILES}\\ and "
                f"{UTILITY_VM_FILES}\\, "
                "which a transport folder stores differently; import it as a base layer"
            )
        self._root.link(target, name)
        self._added[name] = False

    def remove(self, name: str) -> None:
        """Record a deleted path; only paths under `Files\\` can be deleted."""
        self._finish()
        name = clean_layer_name(name)
        if has_path_prefix(name, FILES):
            self._tombstones.append(name)
        elif has_path_prefix(name, UTILITY_VM_FILES):
            raise LayerError(
                f"cannot delete {show_name(name)}: a transport folder has no way to delete "
                "utility VM files"
            )
        else:
            raise LayerError(
                f"invalid tombstone {show_name(name)}: only paths under {FILES}\\ can be deleted"
            )

    def close(self) -> None:
        """Complete the last entry and write tombstones.txt."""
        try:
            self._finish()
            fd = self._root.create(TOMBSTONES_FILE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(format_tombstones(self._tombstones))
        finally:
            self._root.close()

    def _check_new(self, name: str) -> str:
        name = clean_layer_name(name)
        if name.endswith(DIRECTORY_SUFFIX) or name == TOMBSTONES_FILE:
            raise LayerError(
                f"{show_name(name)}: this name is reserved by the transport folder layout"
            )
        if name in self._added:
            raise LayerError(f"{show_name(name)} appears twice in the layer")
        parent = name
        while "\\" in parent:
            parent = parent.rsplit("\\", 1)[0]
            if parent in self._reparse_dirs:
                raise LayerError(
                    f"cannot add {show_name(name)}: its parent directory {show_name(parent)} "
                    "is a reparse point"
                )
        return name

    def _check_utility_vm(self, name: str) -> None:
        if name == UTILITY_VM:
            self._has_utility_vm = True
        elif not (name == UTILITY_VM_FILES or has_path_prefix(name, UTILITY_VM_FILES)):
            raise LayerError(
                f"invalid UtilityVM layer: {show_name(name)} is not under {UTILITY_VM_FILES}"
            )
        elif not self._has_utility_vm:
            raise LayerError(f"missing UtilityVM directory: it must come before {show_name(name)}")

    def _create(self, name: str) -> int:
        try:
            return self._root.create(name)
        except FileNotFoundError:
            raise LayerError(
                f"cannot add {show_name(name)}: its parent directory is not in the layer yet"
            ) from None
        except FileExistsError:
            raise LayerError(f"{show_name(name)} appears twice in the layer") from None

    def _mkdir(self, name: str) -> None:
        try:
            self._root.mkdir(name)
        except FileNotFoundError:
            raise LayerError(
                f"cannot add {show_name(name)}: its parent directory is not in the layer yet"
            ) from None
        except FileExistsError:
            raise LayerError(f"{show_name(name)} appears twice in the layer") from None

    def _add_transport_file(self, name: str, info: FileBasicInfo) -> BinaryIO:
        path = name
        if info.is_dir:
            self._mkdir(name)
            path += DIRECTORY_SUFFIX
        fd = self._create(path)
        stream = os.fdopen(fd, "wb")
        set_xattr(fd, XATTR_BASIC_INFO, info.pack(), self._root.host_path(path))
        stream.write(info.attributes.to_bytes(ATTRIBUTES_SIZE, "little"))

        def finish() -> None:
            stream.close()
            if info.is_dir and self._has_reparse_data(path):
                self._reparse_dirs.add(name)

        self._pending = PendingEntry(stream, finish)
        return stream

    def _has_reparse_data(self, path: str) -> bool:
        with open(self._root.host_path(path), "rb") as handle:
            handle.seek(ATTRIBUTES_SIZE)
            reader = BackupStreamReader(handle, origin=ATTRIBUTES_SIZE, source=path)
            while (header := reader.next()) is not None:
                if header.id == StreamId.REPARSE_DATA:
                    return True
        return False

    def _add_ordinary(
        self, name: str, info: FileBasicInfo, *, include_security: bool, directory_file: bool
    ) -> BinaryIO:
        where = self._root.host_path(name)
        if info.is_dir:
            self._mkdir(name)
            fd = self._root.open_directory(name)
        else:
            fd = self._create(name)
        set_xattr(fd, XATTR_BASIC_INFO, info.pack(), where)
        spool = new_spool()

        def finish() -> None:
            try:
                if info.is_dir and directory_file:
                    self._write_directory_file(name, info, spool)
                spool.seek(0)
                restore_backup(fd, spool, include_security=include_security, where=where)
                if info.is_dir and self._stream_has_reparse(spool):
                    self._reparse_dirs.add(name)
            finally:
                os.close(fd)
                spool.close()

        self._pending = PendingEntry(spool, finish, functools.partial(os.close, fd))
        return spool

    def _stream_has_reparse(self, spool: BinaryIO) -> bool:
        spool.seek(0)
        reader = BackupStreamReader(spool)
        while (header := reader.next()) is not None:
            if header.id == StreamId.REPARSE_DATA:
                return True
        return False

    def _write_directory_file(self, name: str, info: FileBasicInfo, spool: BinaryIO) -> None:
        path = name + DIRECTORY_SUFFIX
        fd = self._create(path)
        with os.fdopen(fd, "wb") as handle:
            set_xattr(fd, XATTR_BASIC_INFO, info.pack(), self._root.host_path(path))
            handle.write(info.attributes.to_bytes(ATTRIBUTES_SIZE, "little"))
            spool.seek(0)
            shutil.copyfileobj(spool, handle)
