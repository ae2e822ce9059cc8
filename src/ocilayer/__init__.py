"""ocilayer: container filesystem layers to OCI layer tar streams, and back.

The main entry points mirror hcsshim's: `export_layer_to_tar` writes a layer
directory (diffed against its parents) as a layer tar, `export_changes` yields the
same changes as entries for callers that want no tar, and `import_layer_from_tar`
applies a layer tar to a directory.

The names below are imported on first use, so `import ocilayer` and the command
line start fast, and Ctrl-C during start-up ends the command cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SOURCES = {
    "AppliedLayer": "ocilayer.apply",
    "import_layer_from_tar": "ocilayer.apply",
    "Compression": "ocilayer.compression",
    "Descriptor": "ocilayer.digest",
    "ChangeKind": "ocilayer.entry",
    "Entry": "ocilayer.entry",
    "FileType": "ocilayer.entry",
    "Cancelled": "ocilayer.errors",
    "LayerError": "ocilayer.errors",
    "OcilayerError": "ocilayer.errors",
    "OutputError": "ocilayer.errors",
    "TarFormatError": "ocilayer.errors",
    "UnsafePathError": "ocilayer.errors",
    "export_changes": "ocilayer.export",
    "export_layer_to_tar": "ocilayer.export",
    "XattrPolicy": "ocilayer.xattrs",
}

__all__ = [
    "AppliedLayer",
    "Cancelled",
    "ChangeKind",
    "Compression",
    "Descriptor",
    "Entry",
    "FileType",
    "LayerError",
    "OcilayerError",
    "OutputError",
    "TarFormatError",
    "UnsafePathError",
    "XattrPolicy",
    "__version__",
    "export_changes",
    "export_layer_to_tar",
    "import_layer_from_tar",
]

if TYPE_CHECKING:
    from ocilayer.apply import AppliedLayer, import_layer_from_tar
    from ocilayer.compression import Compression
    from ocilayer.digest import Descriptor
    from ocilayer.entry import ChangeKind, Entry, FileType
    from ocilayer.errors import (
        Cancelled,
        LayerError,
        OcilayerError,
        OutputError,
        TarFormatError,
        UnsafePathError,
    )
    from ocilayer.export import export_changes, export_layer_to_tar
    from ocilayer.xattrs import XattrPolicy


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'ocilayer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
