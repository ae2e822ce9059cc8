"""Apply a layer to a full root filesystem: whiteouts delete, opaque markers empty.

The target contains the lower layers already, so a whiteout removes its path and an
opaque marker removes what its directory contains, but neither touches a path that the current
layer created (image-spec: whiteouts "MUST only apply to resources in lower/parent
layers"). Because the layer's paths are recorded with their ancestors, an opaque
marker gives the same result wherever it sits in the stream.
"""

from __future__ import annotations

from ocilayer.apply.applier import Applier
from ocilayer.apply.paths import lstat_at
from ocilayer.entry import Entry


class RootfsApplier(Applier):
    """Apply entries to a directory that already contains the merged lower layers."""

    def whiteout(self, entry: Entry) -> None:
        # A missing parent means there is nothing to delete.
        location = self.resolver.resolve_parent(entry.path, create=False, whiteout=True)
        if location is None or location.path in self.layer_paths:
            return
        existing = lstat_at(location.dir_fd, location.name)
        if existing is not None:
            self.remove(location.dir_fd, location.name, existing)
            self.whiteouts.add(location.path)

    def opaque(self, entry: Entry) -> None:
        directory = self.resolver.resolve_directory(entry.path, create=True, whiteout=True)
        if directory is not None:
            self.remove_lower_children(*directory)
