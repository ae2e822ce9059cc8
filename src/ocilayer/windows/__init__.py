"""Windows container layers as hcsshim and go-winio write and read them, on every OS.

- `export_windows_layer` writes a transport folder or base layer folder as a layer
  tar (on a Windows host, a layer of the Windows storage, through the HCS).
- `import_windows_layer` writes a layer tar into a new transport or base layer folder.
- `convert_to_windows` writes a plain Linux tree or layer tar as a Windows layer tar.
"""

from ocilayer.windows.apply import import_windows_layer
from ocilayer.windows.convert import DEFAULT_SECURITY_DESCRIPTOR, convert_to_windows
from ocilayer.windows.export import WindowsLayout, export_windows_layer
from ocilayer.windows.fileinfo import FileBasicInfo

__all__ = [
    "DEFAULT_SECURITY_DESCRIPTOR",
    "FileBasicInfo",
    "WindowsLayout",
    "convert_to_windows",
    "export_windows_layer",
    "import_windows_layer",
]
