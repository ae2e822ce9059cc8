"""ocilayer: container filesystem layers to OCI layer tar streams, and back.

The main entry points mirror hcsshim's: `export_layer_to_tar` writes a layer
directory (diffed against its parents) as a layer tar, `export_changes` yields the
same changes as entries for callers that want no tar, and `import_layer_from_tar`
applies a layer tar to a directory.
"""

from ocilayer.apply import AppliedLayer, import_layer_from_tar
from ocilayer.compression import Compression
from ocilayer.digest import Descriptor
from ocilayer.entry import ChangeKind, Entry, FileType
from ocilayer.errors import Cancelled, LayerError, OcilayerError, TarFormatError, UnsafePathError
from ocilayer.export import export_changes, export_layer_to_tar
from ocilayer.xattrs import XattrPolicy

__version__ = "0.1.0"

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
    "TarFormatError",
    "UnsafePathError",
    "XattrPolicy",
    "__version__",
    "export_changes",
    "export_layer_to_tar",
    "import_layer_from_tar",
]
