"""Export on a Windows host: the Host Compute Service steps around the layer readers.

The sequence is hcsshim's ExportLayerToTar. It starts with ActivateLayer, then
PrepareLayer with the parent layers and at once UnprepareLayer, which makes sure the
layer is initialised. With parents, ExportLayer then writes a new temporary folder
that is read as a transport folder. Without parents the layer folder itself is read
as a base layer. The
temporary folder is always removed and DeactivateLayer always runs, even after an
error (its own error is then only logged, as hcsshim ignores it).

The vmcompute functions come through a `VmcomputeBinding`, so the sequence is the
same with the real DLL (`ocilayer.windows.win32api`, loaded only on Windows) and with
a test double.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ocilayer.compression import Compression
from ocilayer.digest import Descriptor
from ocilayer.errors import LayerError
from ocilayer.logs import get_logger
from ocilayer.windows.baselayer import BaseLayerReader
from ocilayer.windows.export import write_items
from ocilayer.windows.hostfiles import HostFiles
from ocilayer.windows.layeritem import LayerItem
from ocilayer.windows.transport import TransportReader

log = get_logger("ocilayer")

# hcsshim serialises PrepareLayer across the process; so does this module.
_PREPARE_LOCK = threading.Lock()

# Common HRESULTs of the layer calls, for messages on hosts without FormatMessage.
_KNOWN_HRESULTS = {
    0x80070002: "the system cannot find the file specified",
    0x80070003: "the system cannot find the path specified",
    0x80070005: "access is denied",
    0x80070020: "the file is in use by another process",
    0x80070057: "the parameter is incorrect",
    0x800700B7: "the file already exists",
}


@dataclass(frozen=True, slots=True)
class LayerDescriptor:
    """A parent layer for vmcompute (WC_LAYER_DESCRIPTOR): its GUID, flags and path."""

    layer_id: bytes
    flags: int
    path: str


class VmcomputeBinding(Protocol):
    """The vmcompute.dll layer functions; each returns the call's HRESULT (0 on success).

    Every call passes the driver info {Flavour: 1 (filter driver), HomeDir: ""}.
    """

    def activate_layer(self, path: str) -> int: ...

    def deactivate_layer(self, path: str) -> int: ...

    def prepare_layer(self, path: str, parents: Sequence[LayerDescriptor]) -> int: ...

    def unprepare_layer(self, path: str) -> int: ...

    def export_layer(
        self, path: str, export_folder: str, parents: Sequence[LayerDescriptor]
    ) -> int: ...

    def name_to_guid(self, name: str) -> tuple[int, bytes]: ...


class HcsError(LayerError):
    """A vmcompute call failed; `hresult` is its HRESULT as an unsigned 32-bit number."""

    def __init__(self, operation: str, path: str, hresult: int) -> None:
        self.operation = operation
        self.path = path
        self.hresult = hresult & 0xFFFFFFFF
        meaning = _KNOWN_HRESULTS.get(self.hresult, "see the Windows error code reference")
        super().__init__(
            f"{operation} failed for layer {path!r} with HRESULT 0x{self.hresult:08X} "
            f"({meaning}); check that the path and its parents are layers of this host's "
            "Windows container storage and that ocilayer runs as an administrator"
        )


def _check(hresult: int, operation: str, path: str) -> None:
    if hresult != 0:
        raise HcsError(operation, path, hresult)


def layer_descriptors(binding: VmcomputeBinding, parents: Sequence[str]) -> list[LayerDescriptor]:
    """Describe parent layers by the GUID vmcompute derives from each folder name."""
    descriptors = []
    for parent in parents:
        name = os.path.basename(os.path.normpath(parent))
        hresult, guid = binding.name_to_guid(name)
        _check(hresult, "NameToGuid", parent)
        descriptors.append(LayerDescriptor(guid, 0, parent))
    return descriptors


def _load_windows_bindings() -> tuple[VmcomputeBinding, HostFiles]:
    if sys.platform == "win32":
        from ocilayer.windows.win32api import Vmcompute, WindowsHostFiles

        return Vmcompute(), WindowsHostFiles()
    raise LayerError("the vmcompute layer calls exist only on a Windows host")


def export_layer_on_host(
    writer: BinaryIO,
    path: str,
    parent_layer_paths: Sequence[str],
    *,
    cancel: threading.Event | None = None,
    compression: Compression = Compression.NONE,
    level: int | None = None,
    threads: int = 0,
    binding: VmcomputeBinding | None = None,
    host: HostFiles | None = None,
    digests: bool = True,
) -> Descriptor:
    """Export a layer of the Windows container storage as a layer tar (see the module doc)."""
    if binding is None or host is None:
        default_binding, default_host = _load_windows_bindings()
        binding = binding or default_binding
        host = host or default_host

    def write(items: Iterator[LayerItem]) -> Descriptor:
        return write_items(
            writer,
            items,
            cancel=cancel,
            compression=compression,
            level=level,
            threads=threads,
            digests=digests,
        )

    _check(binding.activate_layer(path), "ActivateLayer", path)
    try:
        parents = layer_descriptors(binding, parent_layer_paths)
        with _PREPARE_LOCK:
            _check(binding.prepare_layer(path, parents), "PrepareLayer", path)
        _check(binding.unprepare_layer(path), "UnprepareLayer", path)
        if not parents:
            return write(BaseLayerReader(path, host).items())
        folder = tempfile.mkdtemp(prefix="hcs")
        try:
            _check(binding.export_layer(path, folder, parents), "ExportLayer", path)
            return write(TransportReader(folder, host).items())
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        hresult = binding.deactivate_layer(path)
        if hresult != 0:
            log.debug("DeactivateLayer failed for %r with HRESULT 0x%08X", path, hresult)
