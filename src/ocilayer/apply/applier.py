"""Apply entries to a directory: the rules that the rootfs and overlay targets share.

Rules, in the words of the OCI image spec where it has them:

- An entry replaces whatever is at its path, except that a directory over a directory
  is kept and gets the entry's metadata, xattrs included: xattrs the entry does not
  carry are removed (but SELinux labels and NFSv4 ACLs stay). containerd only adds
  xattrs here, so a layer from a writer that carries only `security.capability`
  removes user xattrs from the directories it lists.
- Every non-directory is created under a temporary name in its directory and gets its
  content and metadata there. Then it is renamed over the old path, so a failed or
  cancelled apply never leaves a half-written file where a good one was. Temporary
  names start with `.wh.`, a prefix that no file of a layer can have.
- The layer's own paths, and every directory above them, are recorded (in a
  `PathTree`, which stores each path once), because whiteouts and opaque markers
  hide only what the lower layers contain. So are the
  paths that its whiteouts removed: a later whiteout or opaque marker below such a
  path has nothing left to hide and changes nothing.
- A layer contains each path once (image-spec: "duplicate entries ... MUST NOT" exist), so
  a second entry for a path raises TarFormatError: with two different files at one
  path the tools disagree on which wins. A directory repeated as a directory is
  accepted and takes the later entry's metadata, because BuildKit once wrote parent
  directories twice and such layers are still pulled.
- A hardlink links the named path itself, never what a symlink there points to, and
  sets no metadata, so it cannot change a file outside the root through a symlink.
- Directory times are set again after the last entry, because creating children
  changes them.
- An entry path or hardlink target of PATH_MAX (4096) bytes or more is rejected:
  Linux cannot name such a file in one system call, so other tools could not read
  the tree. The cap also keeps each path's cost in memory and time bounded.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ocilayer.apply.errors import NEEDS_MKNOD, ApplyError
from ocilayer.apply.metadata import MetadataWriter, entry_times
from ocilayer.apply.paths import (
    PATH_MAX,
    Location,
    Resolver,
    join,
    list_directory,
    lstat_at,
    open_directory,
    remove_tree,
)
from ocilayer.apply.pathtree import PathTree
from ocilayer.entry import ChangeKind, Entry, FileType, parent_of
from ocilayer.errors import TarFormatError, UnsafePathError, show
from ocilayer.logs import get_logger

logger = get_logger("ocilayer.apply")

TEMP_PREFIX = b".wh..ocilayer-"
_COPY_CHUNK = 1 << 20
_OPEN_NEW_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ZEROS = bytes(_COPY_CHUNK)
# Zero runs of at least a filesystem block are written as holes.
_HOLE_SIZE = 4096


def _fill(readinto: Callable[[memoryview], int], view: memoryview) -> int:
    """Fill `view` from `readinto` unless the data ends first; return the bytes read.

    Whole chunks keep the holes where they were when chunks came from read(): at the
    same offsets from the start of the file, however the stream splits its reads.
    """
    count = readinto(view)
    while count and count < len(view):
        more = readinto(view[count:])
        if not more:
            break
        count += more
    return count


def _all_zero(buffer: bytearray, count: int) -> bool:
    """Return whether the first `count` bytes of `buffer` are zero."""
    if count == len(buffer):
        return buffer == _ZEROS  # memcmp, which stops at the first difference
    # A shorter chunk is compared as a copy, made only when its first byte is zero.
    return buffer[0] == 0 and buffer[:count] == _ZEROS[:count]


_MAX_DEVICE_NUMBER = (1 << 32) - 1
_DEVICE_TYPES = {
    FileType.CHAR: stat.S_IFCHR,
    FileType.BLOCK: stat.S_IFBLK,
    FileType.FIFO: stat.S_IFIFO,
}

_T = TypeVar("_T")


class Origin(enum.Enum):
    """Origin of a path that the current layer put in place."""

    # An ancestor directory of one of the layer's entries.
    ANCESTOR = enum.auto()
    DIRECTORY = enum.auto()
    OTHER = enum.auto()


class ApplyOptions(NamedTuple):
    """Choices of the caller.

    `rootless` applies no ownership and skips xattrs that need privileges.
    `skip_devices` skips device nodes that cannot be created for lack of CAP_MKNOD,
    with a warning, instead of failing.
    """

    rootless: bool = False
    skip_devices: bool = False


class Applier:
    """Apply entries to the directory `root_fd`; subclasses give whiteouts their meaning."""

    def __init__(
        self,
        root_fd: int,
        options: ApplyOptions,
        check_cancelled: Callable[[], None] = lambda: None,
    ) -> None:
        self.root_fd = root_fd
        self.options = options
        self.resolver = Resolver(root_fd, self)
        self.metadata = MetadataWriter(rootless=options.rootless)
        self.layer_paths: PathTree[Origin] = PathTree(Origin.ANCESTOR)
        # Paths whose lower content a whiteout of this layer removed or hid.
        self.whiteouts: set[bytes] = set()
        # Directories that make_directory created for the current entry, as runs of
        # nested directories: (path of the deepest, length of the first one's path).
        # A run stores one path, so a deep entry costs memory linear in its length.
        self.created_directories: list[tuple[bytes, int]] = []
        # Directories whose times to set at the end, keyed as `record_directory` keys
        # them, with (atime, mtime, mode). A later entry replaces an earlier one, and
        # `finish` adds the directories of `restore_modes` with None times.
        self.directory_times: dict[bytes, tuple[int | None, int | None, int]] = {}
        # Rootless: the modes of existing directories that were given owner rwx to
        # work in them, restored at the end unless the layer sets its own.
        self.restore_modes: dict[bytes, int] = {}
        self._euid = os.geteuid()
        # (directory descriptor, name) of the temporary file of the current entry, set
        # before the file is created and cleared once it is renamed into place.
        self._pending_temp: tuple[int, bytes] | None = None
        self.bytes_written = 0
        # The buffer that file data is read into, made for the first file copied.
        self._copy_buffer: bytearray | None = None
        self._check_cancelled = check_cancelled

    def close(self) -> None:
        self.resolver.close()

    # The resolver's questions (ocilayer.apply.paths.Tree)

    def is_layer_path(self, path: bytes) -> bool:
        return path in self.layer_paths or path in self.whiteouts

    def lower_symlink(self, path: bytes) -> bytes | None:
        return None

    def make_directory(
        self, dir_fd: int, dir_path: bytes, name: bytes, existing: os.stat_result | None
    ) -> None:
        """Create a directory that an entry needs but the layer does not list."""
        path = join(dir_path, name)
        if existing is not None:
            if self.layer_paths.get(path) is not None:
                raise TarFormatError(
                    f"entry path {show(path)} is not a directory, but a later entry of this "
                    "layer is inside it"
                )
            self.remove(dir_fd, name, existing)
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        runs = self.created_directories
        if runs and runs[-1][0] == dir_path:
            runs[-1] = (path, runs[-1][1])
        else:
            runs.append((path, len(path)))
        self.initialise_directory(dir_fd, path, name, existing)

    def enter_directory(self, dir_fd: int, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Give the owner rwx on a directory before a rootless apply works in it.

        An unprivileged user cannot create files in a 0555 directory that an earlier
        layer left, even their own, so the mode is widened here and restored by
        `finish`. Directories of other users are left for the kernel to refuse.
        """
        mode = stat.S_IMODE(st.st_mode)
        if not self.options.rootless or mode & 0o700 == 0o700 or st.st_uid != self._euid:
            return
        os.chmod(name, mode | 0o700, dir_fd=dir_fd, follow_symlinks=False)
        self.restore_modes.setdefault(path, mode)

    def initialise_directory(
        self, dir_fd: int, path: bytes, name: bytes, replaced: os.stat_result | None
    ) -> None:
        """Give a directory created for an entry's parent its owner and mode."""
        if not self.options.rootless:
            os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(name, 0o755, dir_fd=dir_fd, follow_symlinks=False)

    # Entries

    def apply(self, entry: Entry) -> None:
        _check_path_lengths(entry)
        try:
            if entry.kind is ChangeKind.DELETE:
                self.whiteout(entry)
            elif entry.kind is ChangeKind.OPAQUE:
                self.opaque(entry)
            else:
                self.add(entry)
        finally:
            # Whatever stopped the entry (an error, Cancelled, KeyboardInterrupt), its
            # temporary file goes before the resolver closes the directory it is in.
            self._remove_pending_temp()
            self._record_created_directories()
            self.resolver.end_entry()

    def new_temp_name(self, dir_fd: int) -> bytes:
        """Return a fresh temporary name in `dir_fd`, removed if the entry fails."""
        temp = TEMP_PREFIX + os.urandom(8).hex().encode()
        self._pending_temp = (dir_fd, temp)
        return temp

    def rename_temp(self, temp: bytes, dir_fd: int, name: bytes) -> None:
        """Rename the temporary file `temp` over `name`, both in `dir_fd`."""
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self._pending_temp = None

    def _remove_pending_temp(self) -> None:
        pending, self._pending_temp = self._pending_temp, None
        if pending is not None:
            _unlink_quietly(*pending)

    def _record_created_directories(self) -> None:
        """Record the directories created for the current entry as the layer's own.

        Only the deepest directory of each run is stored, and none that is already a
        member (an ancestor of the entry), because `layer_paths` counts ancestors.
        """
        runs, self.created_directories = self.created_directories, []
        for deepest, _ in runs:
            if deepest not in self.layer_paths:
                self.layer_paths[deepest] = Origin.ANCESTOR

    def whiteout(self, entry: Entry) -> None:
        raise NotImplementedError

    def opaque(self, entry: Entry) -> None:
        raise NotImplementedError

    def add(self, entry: Entry) -> None:
        if not entry.path:
            if entry.type is FileType.DIRECTORY:
                # NOTE: the root's own metadata is left alone, as containerd and moby do.
                return
            raise UnsafePathError(
                f"entry names the root but is a {entry.type.name.lower()}; only a "
                "directory may stand for the layer root"
            )
        location = self.resolver.resolve_parent(entry.path, create=True)
        assert location is not None
        self._check_duplicate(entry, location.path)
        if entry.type is FileType.DIRECTORY:
            self._add_directory(entry, location)
            origin = Origin.DIRECTORY
        else:
            if not self._add_non_directory(entry, location):
                return
            origin = Origin.OTHER
        self.layer_paths[location.path] = origin

    def _check_duplicate(self, entry: Entry, path: bytes) -> None:
        origin = self.layer_paths.get(path)
        if origin is None or (entry.is_dir and origin is not Origin.OTHER):
            return
        if origin is Origin.ANCESTOR:
            raise TarFormatError(
                f"cannot create a {entry.type.description} at {show(path)}: earlier entries "
                "of this layer are inside that path"
            )
        raise TarFormatError(
            f"duplicate path {show(path)}: an earlier entry of this layer already created "
            "it, and a layer may hold each path only once"
        )

    def _add_directory(self, entry: Entry, location: Location) -> None:
        dir_fd, name = location.dir_fd, location.name
        mode = entry.mode | 0o700 if self.options.rootless else entry.mode
        # mkdir comes first, so a new directory costs no lstat. Only a clash is examined.
        existing = None
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            merged = False
        except FileExistsError:
            existing = lstat_at(dir_fd, name)
            merged = existing is not None and stat.S_ISDIR(existing.st_mode)
            if not merged:
                if existing is not None:
                    self.remove(dir_fd, name, existing)
                os.mkdir(name, 0o700, dir_fd=dir_fd)
        if merged:
            self.metadata.apply_at(dir_fd, name, entry, mode=mode, replace_xattrs=True)
        else:
            self.directory_created(location, existing)
            # Through a descriptor, owner and mode take four system calls in all. By
            # name, glibc's chmod that does not follow symlinks takes four on its own.
            fd = os.open(name, _OPEN_NEW_DIRECTORY, dir_fd=dir_fd)
            try:
                self.metadata.apply_all_but_times(fd, entry, mode)
            finally:
                os.close(fd)
        atime, mtime = entry_times(entry)
        self.record_directory(location.path, atime, mtime, entry.mode)

    def record_directory(self, path: bytes, atime: int, mtime: int, mode: int) -> None:
        """Record the times and mode to give directory `path` after the last entry."""
        # Stored under the key that `finish` sorts by, so that sorting needs no copies.
        self.directory_times[path.replace(b"/", b"\x00")] = (atime, mtime, mode)

    def directory_created(self, location: Location, replaced: os.stat_result | None) -> None:
        """Hook run when an entry creates a new directory, before its metadata is set."""

    def _add_non_directory(self, entry: Entry, location: Location) -> bool:
        """Create a non-directory entry; return False when it was skipped.

        A new path is created under its own name: every create is exclusive and does
        not follow a symlink, so an existing name makes it fail instead of being
        overwritten. An existing path is replaced by a temporary file renamed over it,
        so a reader never sees it half written.
        """
        if entry.type is FileType.HARDLINK:
            return self._add_hardlink(entry, location, lstat_at(location.dir_fd, location.name))
        if entry.type not in (FileType.REGULAR, FileType.SYMLINK, *_DEVICE_TYPES):
            raise TarFormatError(f"entry {show(entry.path)} has the unsupported type {entry.type}")
        dir_fd = location.dir_fd
        try:
            created = self._create(entry, dir_fd, location.name)
        except FileExistsError:
            existing = lstat_at(dir_fd, location.name)
            temp = self.new_temp_name(dir_fd)
            created = self._create(entry, dir_fd, temp)
            if created:
                self.replace(location, temp, existing)
        self._pending_temp = None
        return created

    def _create(self, entry: Entry, dir_fd: int, name: bytes) -> bool:
        """Create the entry as `name` in `dir_fd`; return False when it was skipped."""
        if entry.type is FileType.REGULAR:
            self._write_regular(entry, dir_fd, name)
            return True
        if entry.type is FileType.SYMLINK:
            self._created_by(os.symlink, dir_fd, name, entry.linkname, name, dir_fd=dir_fd)
        elif not self._make_node(entry, dir_fd, name):
            return False
        self.metadata.apply_at(dir_fd, name, entry)
        return True

    def _created_by(
        self, create: Callable[..., _T], dir_fd: int, name: bytes, /, *args: Any, **kwargs: Any
    ) -> _T:
        """Call the exclusive `create(*args, **kwargs)` of `name` in `dir_fd`.

        The name is marked for removal before the call, so an interrupt right after a
        successful create still removes the new file. When the create fails with
        OSError it made nothing, and the mark is dropped: the name may belong to a
        file that was already there.
        """
        self._pending_temp = (dir_fd, name)
        try:
            return create(*args, **kwargs)
        except OSError:
            self._pending_temp = None
            raise

    def _write_regular(self, entry: Entry, dir_fd: int, name: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with_mode = self.metadata.creates_with_mode(entry, dir_fd)
        mode = entry.mode if with_mode else 0o600
        fd = self._created_by(os.open, dir_fd, name, name, flags, mode, dir_fd=dir_fd)
        try:
            ends_in_hole = False
            buffer = self._copy_buffer
            if buffer is None:
                buffer = self._copy_buffer = bytearray(_COPY_CHUNK)
            with entry.open() as content, memoryview(buffer) as view:
                # entry.open() gives the reader's raw stream, which has readinto.
                readinto = content.readinto  # type: ignore[attr-defined]
                while count := _fill(readinto, view):
                    self._check_cancelled()
                    self.bytes_written += count
                    ends_in_hole = count >= _HOLE_SIZE and _all_zero(buffer, count)
                    if ends_in_hole:
                        os.lseek(fd, count, os.SEEK_CUR)
                        continue
                    written = os.write(fd, view[:count])
                    while written < count:
                        written += os.write(fd, view[written:count])
            if ends_in_hole:
                # Seeking past the end does not grow a file. (A truncate in every case
                # would cost ext4 a journal transaction per file.)
                os.ftruncate(fd, entry.size)
            if with_mode:
                self.metadata.apply_to_created(fd, entry)
            else:
                self.metadata.apply_to_fd(fd, entry)
        finally:
            os.close(fd)

    def _make_node(self, entry: Entry, dir_fd: int, name: bytes) -> bool:
        """Create a device node or FIFO; return False when a device is skipped."""
        for label, number in (("major", entry.devmajor), ("minor", entry.devminor)):
            if not 0 <= number <= _MAX_DEVICE_NUMBER:
                raise TarFormatError(f"device {label} number {number} is out of range")
        device = os.makedev(entry.devmajor, entry.devminor)
        kind = _DEVICE_TYPES[entry.type] | 0o600
        try:
            self._created_by(os.mknod, dir_fd, name, name, kind, device, dir_fd=dir_fd)
        except PermissionError:
            if entry.type is FileType.FIFO:
                raise
            if self.options.skip_devices:
                self.metadata.warn(
                    "skipped device node",
                    b"",
                    f"skipped device node {show(entry.path)} ({entry.devmajor}:{entry.devminor}): "
                    "creating device nodes needs CAP_MKNOD",
                )
                return False
            raise ApplyError(
                f"cannot create device node {show(entry.path)} ({entry.devmajor}:"
                f"{entry.devminor}): creating device nodes needs CAP_MKNOD",
                hint=NEEDS_MKNOD,
            ) from None
        return True

    def _add_hardlink(
        self, entry: Entry, location: Location, existing: os.stat_result | None
    ) -> bool:
        found = self.find_link_target(entry)
        if found is None:
            raise ApplyError(
                f"hardlink {show(entry.path)} names {show(entry.linkname)}, which does not "
                "exist; a hardlink must name a file that an earlier entry or a lower layer "
                "created"
            )
        target, target_stat = found
        if stat.S_ISDIR(target_stat.st_mode):
            raise ApplyError(
                f"hardlink {show(entry.path)} names the directory {show(entry.linkname)}; only "
                "files can be hardlinked"
            )
        if existing is not None and (existing.st_dev, existing.st_ino) == (
            target_stat.st_dev,
            target_stat.st_ino,
        ):
            return True
        temp = self.new_temp_name(location.dir_fd)
        os.link(target.name, temp, src_dir_fd=target.dir_fd, dst_dir_fd=location.dir_fd,
                follow_symlinks=False)  # fmt: skip
        self.replace(location, temp, existing)
        return True

    def find_link_target(self, entry: Entry) -> tuple[Location, os.stat_result] | None:
        """Find the file a hardlink names, without following a symlink at its end."""
        target = self.resolver.resolve_parent(entry.linkname, create=False)
        if target is None:
            return None
        target_stat = lstat_at(target.dir_fd, target.name)
        return None if target_stat is None else (target, target_stat)

    # Changing the tree

    def replace(self, location: Location, temp: bytes, existing: os.stat_result | None) -> None:
        """Rename the prepared `temp` over the entry's path."""
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            self.remove(location.dir_fd, location.name, existing)
        elif existing is not None and stat.S_ISLNK(existing.st_mode):
            self.resolver.invalidate()
        self.rename_temp(temp, location.dir_fd, location.name)

    def remove(self, dir_fd: int, name: bytes, existing: os.stat_result) -> None:
        """Remove `name` from `dir_fd`, a whole tree if it is a directory."""
        if stat.S_ISDIR(existing.st_mode):
            remove_tree(dir_fd, name, make_writable=self.options.rootless)
        else:
            os.unlink(name, dir_fd=dir_fd)
        if stat.S_ISDIR(existing.st_mode) or stat.S_ISLNK(existing.st_mode):
            self.resolver.invalidate()

    def remove_lower_children(self, dir_fd: int, dir_path: bytes) -> None:
        """Remove everything in a directory that the current layer did not create.

        Directories of the layer are kept and searched the same way.
        """
        pending: list[tuple[int, bytes, bool]] = [(dir_fd, dir_path, False)]
        try:
            while pending:
                fd, path, owned = pending.pop()
                try:
                    for name in list_directory(fd):
                        child = join(path, name)
                        existing = lstat_at(fd, name)
                        origin = self.layer_paths.get(child)
                        if existing is None:
                            continue
                        if origin is None:
                            self.remove(fd, name, existing)
                        elif origin is not Origin.OTHER and stat.S_ISDIR(existing.st_mode):
                            pending.append((open_directory(fd, name), child, True))
                finally:
                    if owned:
                        os.close(fd)
        finally:
            for fd, _, owned in pending:
                if owned:
                    os.close(fd)

    # The end of the layer

    def finish(self) -> None:
        """Set directory times and, rootless, the final modes after the last entry.

        Directories are visited children first, so a final mode without search
        permission never blocks the way to a directory below it. The walk keeps the
        current chain of directories open, so a deep tree takes time linear in its size.
        """
        # A directory of this layer keeps the times and mode of its entry. The others
        # that rootless mode opened up get their modes back, and keep their times.
        final = self.directory_times
        for path, mode in self.restore_modes.items():
            final.setdefault(path.replace(b"/", b"\x00"), (None, None, mode))
        # With `/` as NUL, a directory sorts right before its descendants, so in
        # reverse order every descendant comes before its ancestors.
        chain = DirectoryChain(self.root_fd)
        try:
            for key in sorted(final, reverse=True):
                path = key.replace(b"\x00", b"/")
                parent_fd = chain.open(parent_of(path))
                if parent_fd is None:
                    continue
                name = path[path.rfind(b"/") + 1 :]
                existing = lstat_at(parent_fd, name)
                if existing is None or not stat.S_ISDIR(existing.st_mode):
                    continue
                atime, mtime, mode = final[key]
                if self.options.rootless:
                    os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
                if atime is not None and mtime is not None:
                    os.utime(name, ns=(atime, mtime), dir_fd=parent_fd, follow_symlinks=False)
        finally:
            chain.close()
        self.metadata.log_summary()


class DirectoryChain:
    """The open directories from the root down to the last one asked for."""

    def __init__(self, root_fd: int) -> None:
        self._paths: list[bytes] = [b""]
        self._fds: list[int] = [root_fd]

    def open(self, path: bytes) -> int | None:
        """Return a descriptor of the real directory `path`, or None if it is not one.

        Directories of the chain that are not ancestors of `path` are closed.
        """
        while len(self._paths) > 1 and not _is_same_or_below(path, self._paths[-1]):
            self._paths.pop()
            os.close(self._fds.pop())
        top = self._paths[-1]
        rest = path[len(top) + 1 :] if top else path
        for component in rest.split(b"/") if rest else ():
            try:
                fd = open_directory(self._fds[-1], component)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                return None
            self._paths.append(join(self._paths[-1], component))
            self._fds.append(fd)
        return self._fds[-1]

    def close(self) -> None:
        for fd in self._fds[1:]:
            os.close(fd)
        del self._paths[1:], self._fds[1:]


def _is_same_or_below(path: bytes, directory: bytes) -> bool:
    return path == directory or path.startswith(directory + b"/")


def _check_path_lengths(entry: Entry) -> None:
    """Raise ApplyError for an entry path or hardlink target that Linux cannot name."""
    if len(entry.path) < PATH_MAX and len(entry.linkname) < PATH_MAX:
        return
    paths = [("path", entry.path)]
    if entry.type is FileType.HARDLINK:
        paths.append(("hardlink target", entry.linkname))
    for label, path in paths:
        if len(path) >= PATH_MAX:
            raise ApplyError(
                f"the entry's {label} is {len(path)} bytes long after cleaning; Linux "
                f"paths are at most {PATH_MAX - 1} bytes (PATH_MAX is {PATH_MAX} with the "
                "final NUL)"
            )


def _unlink_quietly(dir_fd: int, name: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
