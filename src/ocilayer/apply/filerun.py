"""Runs of new files, symlinks and directories, created by the C extension `ocilayer._filerun`.

Most entries of a layer are small regular files, symlinks and directories that come
in the order of a tree walk. After the applier has applied an entry, `FileRuns.follow`
passes the raw tar bytes that come next to `create_files`. That C function creates
the plain entries that follow in the entry's directory and in the new directories
below it (`_filerun.c` says what counts as plain), and stops at the first other
entry, where the applier goes on.

What the C code makes of an entry is what the Python applier makes of it: the
same system calls in the same order, with the same bookkeeping done here afterwards.
The C code finds a duplicate path only when its exclusive create finds the name
taken. As a precaution, runs stop for good at the layer's first whiteout or opaque
marker, after which the applier's records, not only the disk, say which paths exist.

Without a compiler at install time, or with OCILAYER_PURE_PYTHON set to a non-empty
value, the applier creates every file itself.

NOTE: a run keeps a descriptor open for each level it went down, up to 64, and the
directories it creates never enter the resolver's cache of up to 256. Under an
RLIMIT_NOFILE near those numbers, the C and Python paths run out of descriptors
at different entries, or only one of them does.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from ocilayer.apply.applier import Applier, Origin
from ocilayer.apply.paths import PATH_MAX
from ocilayer.entry import ChangeKind, Entry, FileType, parent_of
from ocilayer.errors import OcilayerError
from ocilayer.logs import get_logger
from ocilayer.native import load_extension
from ocilayer.tarformat.reader import BLOCK_SIZE, TarReader

logger = get_logger("ocilayer.apply")

# An entry path in the C code comes from the prefix and name fields of one header.
_MAX_USTAR_PATH = 256


def _load() -> ModuleType | None:
    return load_extension("_filerun")


class FileRuns:
    """Create the plain files and symlinks that follow an applied entry in its directory."""

    def __init__(self, applier: Applier, module: ModuleType) -> None:
        self._applier = applier
        self._create_files = module.create_files
        self._starts_run = module.starts_run
        # The largest entry the C code takes. A run reads ahead at least this much, so
        # that it ends at an entry that the C code does not take, not at the end of
        # the bytes read.
        self._largest_entry = BLOCK_SIZE + module.MAX_DATA
        self._chown = not applier.options.rootless
        # The C code creates a directory only where the applier's hook for new
        # directories does nothing (the overlay target marks some of them opaque).
        self._directories = type(applier).directory_created is Applier.directory_created
        self._stopped = False

    @classmethod
    def start(cls, applier: Applier) -> FileRuns | None:
        """Return the runs for `applier`, or None when the C extension is not available."""
        module = _load()
        if module is None:
            logger.debug("the C file runs are not built or are turned off; applying in pure Python")
            return None
        return cls(applier, module)

    def follow(self, tar: TarReader, entry: Entry, check: Callable[[int], None]) -> int:
        """Create the run that follows `entry`, just applied; return how many entries.

        The run is in the directory `entry` is, or is in when it is not a directory:
        the directory whose entries a tar lists next. `check(count)` is called after
        each batch of `count` entries, at most a read-ahead buffer apart. It stops the
        run by raising, as the applier's cancellation check does.
        """
        if entry.kind is not ChangeKind.ADD:
            self._stopped = True
        if self._stopped:
            return 0
        applier = self._applier
        directory = entry.path if entry.type is FileType.DIRECTORY else parent_of(entry.path)
        data, position = tar.read_ahead(self._largest_entry)
        if not self._starts_run(data, position, directory, self._directories):
            # Resolve only a directory that the next entry is in, as the applier would,
            # so that the resolver keeps no more descriptors than without C.
            return 0
        try:
            resolved = applier.resolver.resolve_directory(directory, create=True)
        except (OSError, OcilayerError):
            # The next entry in that directory, if there is one, meets the same error
            # on the Python path, which reports it with that entry's name.
            return 0
        assert resolved is not None
        dir_fd, real = resolved
        if len(real) + 1 + _MAX_USTAR_PATH >= PATH_MAX:
            return 0  # the applier checks each real path's length; C does not

        created = 0
        while True:
            data, position = tar.read_ahead(self._largest_entry)
            consumed, groups, data_bytes = self._create_files(
                data, position, dir_fd, directory, self._chown, self._directories
            )
            if not consumed:
                return created
            tar.consume(consumed)
            count = self._record(real, groups)
            applier.bytes_written += data_bytes
            created += count
            check(count)
            if len(data) - position - consumed >= self._largest_entry:
                return created  # stopped at an entry it does not take

    def _record(self, real: bytes, groups: list[tuple[bytes, int, int, list[bytes]]]) -> int:
        """Record what a C run created below the real path `real`; return the entry count.

        Each group is a directory's path relative to `real`, its mode and mtime when
        the run created it (mode -1 when it did not), and the names created in it.
        """
        applier = self._applier
        count = 0
        for relative, mode, mtime, names in groups:
            path = real + b"/" + relative if real and relative else real or relative
            if mode >= 0:
                mtime_ns = mtime * 1_000_000_000
                applier.record_directory(path, mtime_ns, mtime_ns, mode)
                applier.layer_paths[path] = Origin.DIRECTORY
                count += 1
            applier.layer_paths.set_children(path, names, Origin.OTHER)
            count += len(names)
        return count
