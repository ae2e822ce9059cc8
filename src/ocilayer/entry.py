"""The entry record: the one type that crosses module boundaries.

Layer readers produce entries, tar writers and appliers consume them. A path is
bytes, relative to the layer root, `/`-separated, with no leading `./` or `/` and
no trailing `/`, so names that are not valid UTF-8 pass through unchanged.
"""

# No `from __future__ import annotations` in this module: typing.NamedTuple turns each
# string annotation into a ForwardRef by compiling it, which cost about 1.2 ms of every
# command's start-up for these records.
import enum
import stat
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import BinaryIO, NamedTuple

from ocilayer.errors import show

EMPTY_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})


class ChangeKind(enum.IntEnum):
    """The kind of difference from the lower layers (the values of continuity's ChangeKind)."""

    # Unchanged, but reported because it shares an inode with a changed file.
    UNMODIFIED = 0
    ADD = 1
    MODIFY = 2
    DELETE = 3
    # The directory hides everything below it that comes from lower layers.
    OPAQUE = 4


class FileType(enum.Enum):
    """File type of an entry; the value is the tar typeflag, or empty for sockets."""

    REGULAR = b"0"
    HARDLINK = b"1"
    SYMLINK = b"2"
    CHAR = b"3"
    BLOCK = b"4"
    DIRECTORY = b"5"
    FIFO = b"6"
    SOCKET = b""

    @property
    def description(self) -> str:
        """The type in words, for messages: "regular file", "symlink", ..."""
        return _DESCRIPTIONS[self]

    @classmethod
    def from_mode(cls, st_mode: int) -> "FileType":
        """Map the type bits of `st_mode` to a file type."""
        return _TYPE_BY_IFMT[stat.S_IFMT(st_mode)]


_TYPE_BY_IFMT = {
    stat.S_IFREG: FileType.REGULAR,
    stat.S_IFDIR: FileType.DIRECTORY,
    stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFCHR: FileType.CHAR,
    stat.S_IFBLK: FileType.BLOCK,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCKET,
}
_DESCRIPTIONS = {
    FileType.REGULAR: "regular file",
    FileType.HARDLINK: "hardlink",
    FileType.SYMLINK: "symlink",
    FileType.CHAR: "character device",
    FileType.BLOCK: "block device",
    FileType.DIRECTORY: "directory",
    FileType.FIFO: "FIFO",
    FileType.SOCKET: "socket",
}


class AlternateStream(NamedTuple):
    """A named NTFS data stream of a Windows file (`name:stream`)."""

    name: str
    size: int
    opener: Callable[[], BinaryIO] | None = None


class WindowsMetadata(NamedTuple):
    """Windows-only file metadata, carried in `MSWINDOWS.*` PAX records."""

    attributes: int = 0
    security_descriptor: bytes | None = None
    creation_time_ns: int | None = None
    reparse_data: bytes | None = None
    extended_attributes: tuple[tuple[str, bytes, int], ...] = ()
    streams: tuple[AlternateStream, ...] = ()


class Entry(NamedTuple):
    """One path of a layer changeset with its metadata and a way to read its content.

    `kind` names the change. A DELETE entry names the deleted path and an OPAQUE
    entry names the directory, and neither uses the metadata fields. `mode` contains
    the permission bits with setuid, setgid and sticky (07777), never type bits.
    `link_key` identifies the inode for hardlink grouping (device and inode on
    Linux, the file id on Windows); only non-directories with `nlink > 1` form
    groups. Content comes from `content` when the reader read it ahead, else from
    `source_path` (a file on disk), else from `opener`.

    A NamedTuple rather than a frozen dataclass: readers make one per path, and a
    tuple is built in a third of the time.
    """

    path: bytes
    kind: ChangeKind = ChangeKind.ADD
    type: FileType = FileType.REGULAR
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    ctime_ns: int | None = None
    size: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[bytes, bytes] = EMPTY_XATTRS
    link_key: Hashable | None = None
    nlink: int = 1
    source_path: bytes | None = None
    opener: Callable[[], BinaryIO] | None = None
    windows: WindowsMetadata | None = None
    # The whole data of a small regular file, when the reader has already read it.
    content: bytes | None = None

    @property
    def is_dir(self) -> bool:
        return self.type is FileType.DIRECTORY

    @property
    def hardlinked(self) -> bool:
        """Whether the entry belongs to a hardlink group."""
        return self.link_key is not None and self.nlink > 1 and self.type is not FileType.DIRECTORY

    def open(self) -> BinaryIO:
        """Open the content of a regular file for reading."""
        if self.content is not None:
            import io

            return io.BytesIO(self.content)
        if self.source_path is not None:
            return open(self.source_path, "rb")
        if self.opener is not None:
            return self.opener()
        raise ValueError(f"entry {show(self.path)} has no content to read")


# Builds an Entry from a tuple of all its fields in order: `new_entry(Entry, values)`.
# The readers call it once per path. It took 0.24 us where the keyword constructor
# with 16 fields took 1.95 us (timeit on the 2-core benchmark machine).
new_entry = tuple.__new__


def parent_of(path: bytes) -> bytes:
    """Return the parent of a relative entry path, `b""` for the layer root."""
    cut = path.rfind(b"/")
    return path[:cut] if cut > 0 else b""


def base_of(path: bytes) -> bytes:
    return path[path.rfind(b"/") + 1 :]
