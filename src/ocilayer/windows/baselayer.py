"""Base (parentless) Windows layer folders: the reader and writer hcsshim uses without parents.

A base layer folder contains the real files: `Files\\...`, the registry `Hives\\`, and
for a layer with a utility VM `UtilityVM\\Files\\...`, plus files of the host
(`layout`, VHDX files, `bcd*.bak`). Only `Files` and, when `UtilityVM\\Files` exists,
`UtilityVM` and `UtilityVM\\Files` with everything below it go into the tar, each read
with its security descriptor and its real times. Import writes the same layout back.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ocilayer.errors import LayerError
from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.hostfiles import (
    XATTR_BASIC_INFO,
    HostFiles,
    PortableHostFiles,
    restore_backup,
    set_xattr,
)
from ocilayer.windows.layeritem import LayerItem
from ocilayer.windows.saferoot import LayerRoot, clean_layer_name, clean_link_target, show_name
from ocilayer.windows.transport import (
    FILES,
    RECYCLE_BIN,
    UTILITY_VM,
    UTILITY_VM_FILES,
    sorted_names,
)
from ocilayer.windows.transport_writer import PendingEntry, PendingWriter, new_spool

# Utility VM boot files that hcsshim also copies, without security, to these layer files.
BCD_BACKUPS = {
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD": "bcd.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG": "bcd.log.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG1": "bcd.log1.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG2": "bcd.log2.bak",
}


class BaseLayerReader:
    """Read a base layer folder as the items of a layer, in hcsshim's order."""

    def __init__(self, root: str | os.PathLike[str], host: HostFiles | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.host = host or PortableHostFiles()

    def items(self) -> Iterator[LayerItem]:
        """Yield `Files` and its tree, then the utility VM's `Files` tree if there is one."""
        if not os.path.isdir(os.path.join(self.root, FILES)):
            raise LayerError(f"{self.root!r} has no {FILES} directory; is it a Windows layer?")
        yield from self._walk(FILES, lambda name: True)
        if not os.path.lexists(os.path.join(self.root, UTILITY_VM, "Files")):
            return

        def in_utility_vm(name: str) -> bool:
            return name == UTILITY_VM_FILES or name.startswith(UTILITY_VM_FILES + "\\")

        yield from self._walk(UTILITY_VM, in_utility_vm, top=True)

    def _walk(
        self, name: str, wanted: Callable[[str], bool], *, top: bool = False
    ) -> Iterator[LayerItem]:
        full = os.path.join(self.root, *name.split("\\"))
        is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
        if not top and not wanted(name):
            return
        if is_dir and name.casefold() == RECYCLE_BIN.casefold():
            return
        yield self._item(name, full)
        if is_dir:
            for child in sorted_names(full):
                yield from self._walk(f"{name}\\{child}", wanted)

    def _item(self, name: str, full: str) -> LayerItem:
        def open_stream() -> contextlib.AbstractContextManager[BinaryIO]:
            return self.host.open_backup(full, include_security=True)

        return LayerItem(
            name,
            size=self.host.size(full),
            info=self.host.basic_info(full),
            link=self.host.link_info(full),
            open_stream=open_stream,
        )


class BaseLayerWriter(PendingWriter):
    """Write entries as the real files of a new base layer folder at `root`.

    Any relative name is accepted (hcsshim's baseLayerWriter accepts any), a parent
    must come before its children, and hard links may join any two names of the layer.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = LayerRoot(root)
        self._pending: PendingEntry | None = None
        self.has_utility_vm = False

    def add(self, name: str, info: FileBasicInfo) -> BinaryIO:
        """Add a file or directory; write its backup stream into the returned stream."""
        self._finish()
        name = clean_layer_name(name)
        if name == UTILITY_VM_FILES:
            self.has_utility_vm = True
        where = self._root.host_path(name)
        try:
            if info.is_dir:
                self._root.mkdir(name)
                fd = self._root.open_directory(name)
            else:
                fd = self._root.create(name)
        except FileNotFoundError:
            raise LayerError(
                f"cannot add {show_name(name)}: its parent directory is not in the layer yet"
            ) from None
        except FileExistsError:
            raise LayerError(f"{show_name(name)} appears twice in the layer") from None
        set_xattr(fd, XATTR_BASIC_INFO, info.pack(), where)
        spool = new_spool()
        backup = BCD_BACKUPS.get(name.replace("\\", "/"))

        def finish() -> None:
            try:
                spool.seek(0)
                restore_backup(fd, spool, include_security=True, where=where)
                if backup is not None:
                    self._write_bcd_backup(backup, spool)
            finally:
                os.close(fd)
                spool.close()

        self._pending = PendingEntry(spool, finish, functools.partial(os.close, fd))
        return spool

    def _write_bcd_backup(self, backup: str, spool: BinaryIO) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._root.host_path(backup))
        fd = self._root.create(backup)
        try:
            spool.seek(0)
            restore_backup(fd, spool, include_security=False, where=self._root.host_path(backup))
        finally:
            os.close(fd)

    def add_link(self, name: str, target: str) -> None:
        """Add `name` as a hard link to `target`, which must already be in the layer."""
        self._finish()
        name = clean_layer_name(name)
        target = clean_link_target(name, target)
        try:
            self._root.link(target, name)
        except FileNotFoundError:
            raise LayerError(
                f"failed to find link target for {show_name(name)} -> {show_name(target)}: "
                "the target must come earlier in the layer"
            ) from None
        except FileExistsError:
            raise LayerError(f"{show_name(name)} appears twice in the layer") from None

    def remove(self, name: str) -> None:
        """Reject a deleted path: a base layer has nothing below it to delete."""
        raise LayerError(
            f"invalid whiteout for {show_name(name)}: a base layer cannot have tombstones"
        )

    def close(self) -> None:
        """Complete the last entry."""
        # NOTE: on Windows hcsshim then runs vmcompute's ProcessBaseLayer and
        # ProcessUtilityVMImage, which build the hives and boot files. No host step runs
        # here, so the folder contains the layer content only.
        try:
            self._finish()
        finally:
            self._root.close()
