"""Apply a layer into an overlayfs upper directory.

The target contains only this layer's changes; the parent layers below it are given
separately and are never written. Whiteouts and opaque markers become what overlayfs
reads (Linux `Documentation/filesystems/overlayfs.rst`):

- a whiteout becomes a 0/0 character device, or, without CAP_MKNOD or in a rootless
  apply, a zero-size file with the `overlay.whiteout` xattr whose directory carries
  `overlay.opaque=x` (an "xwhiteout", read by Linux 6.7 and later). NOTE: Linux reads
  xwhiteouts only in lower layers, so such a directory works once it is stacked as a
  lower layer, which is how container runtimes use applied layers;
- an opaque marker sets `overlay.opaque=y` on its directory. Linux ignores that xattr
  on the root of a layer, so a marker at the root instead gets a whiteout for every
  name the parent layers show there;
- a directory that replaces a whiteout or another non-directory of the upper
  directory, or that is created where the parent layers have a whiteout, is marked
  opaque, so the lower directory of that name stays hidden.

The xattrs are in the `trusted.` namespace, or in `user.` (overlayfs' `userxattr`
mount option) for a rootless apply, without CAP_MKNOD, or inside a user namespace.

Directories that the layer needs but does not list get the owner, mode, times and
xattrs of the same directory in the parent layers, so the merged view does not change.
containerd does the same. Directories that the parent layers lack get 0755 and 0:0.
A whiteout for a path that the parent layers do not show is left out, with the
directories created for it. Without parent layers the applier cannot tell what a
whiteout hides, so every whiteout is created, with its parent directories.

NOTE: a layer entry that is itself a 0/0 character device is created as one, and
overlayfs then reads it as a whiteout, so it hides the path instead of showing a device.

Paths are resolved in the merged view: a symlink of the parent layers is followed
(inside the root) as it would be on the mounted overlay. A hardlink to a file of the
parent layers first copies that file up, as overlayfs does on link(2).
"""

from __future__ import annotations

import os
import stat

from ocilayer.apply.applier import Applier, ApplyOptions, DirectoryChain, Origin
from ocilayer.apply.lower import LowerFile, LowerView, Visibility
from ocilayer.apply.metadata import copy_xattrs, proc_path
from ocilayer.apply.paths import Location, lstat_at
from ocilayer.entry import Entry, parent_of

WHITEOUT_DEVICE = os.makedev(0, 0)
_COPY_CHUNK = 1 << 20


class OverlayApplier(Applier):
    """Apply entries to an overlay upper directory above the `lower` parent layers."""

    def __init__(
        self,
        root_fd: int,
        options: ApplyOptions,
        lower: LowerView,
        *,
        xattr_namespace: bytes,
        xwhiteouts: bool,
        **kwargs: object,
    ) -> None:
        super().__init__(root_fd, options, **kwargs)  # type: ignore[arg-type]
        self.lower = lower
        self.opaque_key = xattr_namespace + b"overlay.opaque"
        self.whiteout_key = xattr_namespace + b"overlay.whiteout"
        self.xwhiteouts = xwhiteouts
        # Directories whose lower contents this layer hides: opaque ones and new ones.
        self.opaque_dirs: set[bytes] = set()

    # Looking below

    def hidden_by_layer(self, path: bytes) -> bool:
        """Return whether a directory of this layer hides `path` in the parent layers."""
        if not self.opaque_dirs:
            return False
        # Check whichever is fewer, the opaque directories or the ancestors of `path`,
        # so that a deep path costs no more than a few comparisons of its length.
        if len(self.opaque_dirs) <= path.count(b"/") + 1:
            return any(
                not directory or path.startswith(directory + b"/") for directory in self.opaque_dirs
            )
        cut = len(path)
        while cut > 0:
            cut = path.rfind(b"/", 0, cut)
            if (path[:cut] if cut > 0 else b"") in self.opaque_dirs:
                return True
        return False

    def lower_lookup(self, path: bytes) -> tuple[Visibility, LowerFile | None]:
        if not self.lower or self.hidden_by_layer(path):
            return Visibility.MISSING, None
        return self.lower.lookup(path)

    def lower_symlink(self, path: bytes) -> bytes | None:
        _, found = self.lower_lookup(path)
        if found is None:
            return None
        try:
            if stat.S_ISLNK(found.stat.st_mode):
                return os.readlink(found.name, dir_fd=found.dir_fd)
            return None
        finally:
            found.close()

    # Directories

    def initialise_directory(
        self, dir_fd: int, path: bytes, name: bytes, replaced: os.stat_result | None
    ) -> None:
        visibility, found = self.lower_lookup(path)
        try:
            if replaced is None and found is not None and stat.S_ISDIR(found.stat.st_mode):
                self._copy_directory_attributes(found, dir_fd, path, name)
            else:
                super().initialise_directory(dir_fd, path, name, replaced)
        finally:
            if found is not None:
                found.close()
        if replaced is not None or visibility is Visibility.WHITEOUT:
            self.set_opaque(dir_fd, name, path)

    def _copy_directory_attributes(
        self, found: LowerFile, dir_fd: int, path: bytes, name: bytes
    ) -> None:
        st = found.stat
        if not self.options.rootless:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
        copy_xattrs(found.path, proc_path(dir_fd, name), skip_trusted=self.options.rootless)
        mode = stat.S_IMODE(st.st_mode)
        os.chmod(name, mode | 0o700 if self.options.rootless else mode, dir_fd=dir_fd,
                 follow_symlinks=False)  # fmt: skip
        self.record_directory(path, st.st_atime_ns, st.st_mtime_ns, mode)

    def directory_created(self, location: Location, replaced: os.stat_result | None) -> None:
        if replaced is None:
            visibility, found = self.lower_lookup(location.path)
            if found is not None:
                found.close()
            if visibility is not Visibility.WHITEOUT:
                return
        self.set_opaque(location.dir_fd, location.name, location.path)

    def set_opaque(self, dir_fd: int, name: bytes, path: bytes) -> None:
        os.setxattr(proc_path(dir_fd, name), self.opaque_key, b"y", follow_symlinks=False)
        self.opaque_dirs.add(path)

    # Whiteouts

    def whiteout(self, entry: Entry) -> None:
        if not self._whiteout(entry):
            self._remove_created_directories()

    def _whiteout(self, entry: Entry) -> bool:
        """Apply a whiteout; return False when it changed nothing that must stay."""
        location = self.resolver.resolve_parent(entry.path, create=True, whiteout=True)
        if location is None:
            return False
        path = location.path
        origin = self.layer_paths.get(path)
        if origin is not None:
            # The layer's own file stays; a directory of the layer must hide the lower one.
            if origin is not Origin.OTHER:
                self.set_opaque(location.dir_fd, location.name, path)
            return True
        if path in self.whiteouts:
            return True
        if self.hidden_by_layer(path):
            return False
        existing = lstat_at(location.dir_fd, location.name)
        if existing is not None:
            self.remove(location.dir_fd, location.name, existing)
        if self._hides_something(path):
            self.make_whiteout(location.dir_fd, location.name)
        elif existing is None:
            return False
        self.whiteouts.add(path)
        return True

    def _hides_something(self, path: bytes) -> bool:
        """Return whether a whiteout at `path` hides a file of the parent layers.

        Without parent layers nothing is known, so every whiteout is kept.
        """
        if not self.lower:
            return True
        visibility, found = self.lower_lookup(path)
        if found is not None:
            found.close()
        return visibility is Visibility.FOUND

    def _remove_created_directories(self) -> None:
        """Remove the directories created for a whiteout that turned out to hide nothing."""
        chain = DirectoryChain(self.root_fd)
        try:
            # Deepest first, so each directory is empty when it is removed.
            for path, first_length in reversed(self.created_directories):
                while len(path) >= first_length:
                    parent = parent_of(path)
                    parent_fd = chain.open(parent)
                    if parent_fd is not None:
                        os.rmdir(path[path.rfind(b"/") + 1 :], dir_fd=parent_fd)
                    self.opaque_dirs.discard(path)
                    path = parent
        finally:
            chain.close()
        self.created_directories.clear()
        self.resolver.invalidate()

    def make_whiteout(self, dir_fd: int, name: bytes) -> None:
        if not self.xwhiteouts:
            os.mknod(name, stat.S_IFCHR, WHITEOUT_DEVICE, dir_fd=dir_fd)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
        try:
            os.setxattr(fd, self.whiteout_key, b"y")
        finally:
            os.close(fd)
        directory = b"/proc/self/fd/%d" % dir_fd
        try:
            current = os.getxattr(directory, self.opaque_key)
        except OSError:
            current = None
        if current != b"y":
            os.setxattr(directory, self.opaque_key, b"x")

    def opaque(self, entry: Entry) -> None:
        directory = self.resolver.resolve_directory(entry.path, create=True, whiteout=True)
        if directory is None:
            return
        fd, path = directory
        self.remove_lower_children(fd, path)
        if path:
            os.setxattr(b"/proc/self/fd/%d" % fd, self.opaque_key, b"y")
        else:
            self._hide_lower_root()
        self.opaque_dirs.add(path)

    def _hide_lower_root(self) -> None:
        if not self.lower or b"" in self.opaque_dirs:
            return
        for name in self.lower.list_directory(b""):
            origin = self.layer_paths.get(name)
            if origin is Origin.OTHER:
                continue
            if origin is not None:
                self.set_opaque(self.root_fd, name, name)
            elif lstat_at(self.root_fd, name) is None:
                self.make_whiteout(self.root_fd, name)

    # Hardlinks to files of the parent layers

    def find_link_target(self, entry: Entry) -> tuple[Location, os.stat_result] | None:
        found = super().find_link_target(entry)
        if found is None and self._copy_up(entry.linkname):
            found = super().find_link_target(entry)
        return found

    def _copy_up(self, path: bytes) -> bool:
        """Copy a non-directory of the parent layers into the upper directory."""
        _, found = self.lower_lookup(path)
        if found is None:
            return False
        try:
            if stat.S_ISDIR(found.stat.st_mode):
                return False
            location = self.resolver.resolve_parent(path, create=True)
            assert location is not None
            self._copy_file(found, location)
        finally:
            found.close()
        return True

    def _copy_file(self, found: LowerFile, location: Location) -> None:
        """Copy a lower file under a temporary name, then rename it into place."""
        st, dir_fd = found.stat, location.dir_fd
        name = self.new_temp_name(dir_fd)
        if stat.S_ISREG(st.st_mode):
            source = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                target = os.open(name, flags, 0o600, dir_fd=dir_fd)
                try:
                    while chunk := os.read(source, _COPY_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(target, view) :]
                finally:
                    os.close(target)
            finally:
                os.close(source)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(found.name, dir_fd=found.dir_fd), name, dir_fd=dir_fd)
        else:
            os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dir_fd)
        if not self.options.rootless:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
        copy_xattrs(found.path, proc_path(dir_fd, name), skip_trusted=self.options.rootless)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd,
                 follow_symlinks=False)  # fmt: skip
        self.rename_temp(name, dir_fd, location.name)
