"""Random pairs of trees for the containerd oracle: a lower tree and an upper derived from it.

`generate_pair(seed)` returns two tree specs (see `trees.py`) and the list of changes
made, the same for the same seed and options on every machine. The changes cover
what a layer diff must get right. There are additions, deletions of files and whole
directories, type changes, chmod and chown, and content changes that the mtime and
size do or do not reveal. There are hardlinks (new names for old groups, links across
directories, groups split apart), symlinks, long and non-UTF-8 names, xattrs, FIFOs
and devices.

Some changes are invisible to continuity's rules by design: a content change with the
same size and the same non-zero nanosecond mtime, a hardlink group split into copies
with equal metadata, and a change of user xattrs only. Their paths are listed in
`TreePair.hidden`, because a layer made from the pair may not reproduce them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from trees import (
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    Node,
    Socket,
    Symlink,
    build_tree,
    link_target,
    normalize_spec,
)

T = TypeVar("T")
Spec = dict[bytes, Node]
INode = File | Dir | Symlink | Fifo | Device | Socket

SECOND = 10**9
BASE_MTIME = 1_600_000_000

# The header of a version-2 vfs_cap_data value (VFS_CAP_REVISION_2 with the effective
# flag). Linux 6.18 rejects version 1 and bad headers with EINVAL, and stores a version-3
# value whose root id is 0 as version 2, so version 2 is what a tree can hold as given.
_CAPABILITY_HEADER = b"\x01\x00\x00\x02"
CAPABILITY = b"security.capability"


@dataclass(frozen=True, slots=True)
class TreeGenOptions:
    """What the generator may put in the trees; the defaults use everything root can make."""

    size: int = 40
    changes: int = 25
    devices: bool = True
    owners: bool = True
    capabilities: bool = True
    user_xattrs: bool = True
    long_names: bool = True
    non_utf8_names: bool = True
    pre_epoch_mtimes: bool = True
    sockets: bool = False


@dataclass(slots=True)
class TreePair:
    """A generated lower and upper spec, the changes between them and their hidden paths."""

    seed: int
    lower: Spec
    upper: Spec
    changes: list[str] = field(default_factory=list)
    # Path -> why a layer made from the pair may miss its change: "content" (same size
    # and nanosecond mtime), "hardlinks" (group split) or "xattrs" (user xattrs only).
    hidden: dict[bytes, str] = field(default_factory=dict)

    def describe(self) -> str:
        """Render the seed and the change list, for a failure message."""
        lines = [f"tree pair for seed {self.seed}: {len(self.lower)} lower paths, changes:"]
        lines += [f"  {change}" for change in self.changes]
        return "\n".join(lines)


def build_pair(root: Path, pair: TreePair) -> tuple[Path, Path]:
    """Build the pair as `root/lower` and `root/upper` and return both paths."""
    return build_tree(root / "lower", pair.lower), build_tree(root / "upper", pair.upper)


# Names, times, owners and contents.

_SHORT_NAMES = [
    b"a", b"b", b"c", b"etc", b"usr", b"lib", b"bin", b"a-b", b"a.b", b"a0", b"A", b"a b",
    b"x.txt", b"x-y.conf", b".hidden", b"..dots", b"z", b"data", b"back\\slash", b"tab",
]  # fmt: skip
_UTF8_NAMES = ["café", "日本語", "naïve-ß", "émoji-😀"]
_NON_UTF8_NAMES = [b"caf\xe9", b"\xff\xfe", b"bad\x80name", b"\xc3\x28", b"latin1-\xe0\xe8"]


class _Random:
    """The seeded source of every random choice, with the domain's value pools."""

    def __init__(self, seed: int, options: TreeGenOptions) -> None:
        self.rng = random.Random(seed)
        self.options = options

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def pick(self, items: Iterable[T]) -> T:
        pool = list(items)
        return pool[self.rng.randrange(len(pool))]

    def name(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.08 and self.options.long_names:
            length = self.rng.randrange(101, 256)
            if self.chance(0.3):
                return "ł".encode() * (length // 2)
            return (b"long-" * length)[:length]
        if roll < 0.14 and self.options.non_utf8_names:
            return self.pick(_NON_UTF8_NAMES) + str(self.rng.randrange(100)).encode()
        if roll < 0.22:
            return self.pick(_UTF8_NAMES).encode() + str(self.rng.randrange(100)).encode()
        base = self.pick(_SHORT_NAMES)
        return base if self.chance(0.5) else base + str(self.rng.randrange(1000)).encode()

    def mtime(self) -> int:
        roll = self.rng.random()
        if roll < 0.05 and self.options.pre_epoch_mtimes:
            return -self.rng.randrange(1, 10**9) * SECOND + self.rng.randrange(SECOND)
        if roll < 0.08:
            # Past 2^33 seconds the USTAR mtime field overflows and Go writes a PAX record.
            return (2**33 + self.rng.randrange(10**6)) * SECOND
        seconds = (BASE_MTIME + self.rng.randrange(-(10**6), 10**6)) * SECOND
        return seconds if self.chance(0.5) else seconds + self.rng.randrange(1, SECOND)

    def owner(self) -> tuple[int, int]:
        if not self.options.owners or self.chance(0.7):
            return 0, 0
        # 2^21 and above overflow the USTAR uid and gid fields, so Go writes PAX records.
        return self.pick([(1000, 1000), (65534, 65534), (0, 5), (2**21, 0), (7, 2**21 + 7),
                          (4_000_000, 4_000_000), (2**32 - 2, 1)])  # fmt: skip

    def file_mode(self) -> int:
        return self.pick([0o644] * 6 + [0o755, 0o600, 0o444, 0o4755, 0o2755, 0o6711, 0o1644,
                                        0o000, 0o777])  # fmt: skip

    def dir_mode(self) -> int:
        return self.pick([0o755] * 6 + [0o700, 0o1777, 0o2775, 0o555, 0o777, 0o000])

    def content(self) -> bytes:
        size = self.pick([0, 1, 2, 17, 100, 511, 512, 513, 1000, 4096, 40_000])
        if self.chance(0.3):
            return bytes([self.rng.randrange(256)]) * size
        return self.rng.randbytes(size)

    def capability(self) -> bytes:
        # Permitted and inheritable sets, low 32 capabilities then the high ones.
        permitted_low = self.rng.randrange(1, 2**32).to_bytes(4, "little")
        permitted_high = self.rng.randrange(2**9).to_bytes(4, "little")
        return _CAPABILITY_HEADER + permitted_low + bytes(4) + permitted_high + bytes(4)

    def xattrs(self, regular_file: bool) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        if self.options.user_xattrs and self.chance(0.25):
            key = self.pick([b"user.test", b"user.mime_type", "user.ünï".encode(), b"user.z"])
            found[key] = self.pick([b"v", b"with\x00nul", b"\xff\xfe raw", b"", b"x" * 300])
        if regular_file and self.options.capabilities and self.chance(0.12):
            found[CAPABILITY] = self.capability()
        return found

    def symlink_target(self, spec: Spec) -> bytes:
        roll = self.rng.random()
        if roll < 0.3 and spec:
            return b"../" * self.rng.randrange(3) + self.pick(sorted(spec))
        if roll < 0.45:
            return self.pick([b"/etc/passwd", b"/", b"/usr/lib/x"])
        if roll < 0.55:
            return b"dir/" * self.rng.randrange(26, 80) + b"end"
        if roll < 0.6 and self.options.non_utf8_names:
            return b"raw-\xff-target"
        return self.pick([b"nowhere", b"a", b".", b"..", b"x y"])


# Spec edits that keep hardlink groups and parents consistent.


def _descendants(spec: Spec, path: bytes) -> list[bytes]:
    prefix = path + b"/"
    return [p for p in spec if p.startswith(prefix)]


def group_of(spec: Spec, path: bytes) -> list[bytes]:
    """Return every name of the inode at `path`, sorted, or `[path]` for a lone name."""
    node = spec.get(path)
    if node is None or isinstance(node, Dir):
        return [path]
    owner = link_target(spec, path)
    names = [
        other
        for other, node in spec.items()
        if isinstance(node, Hardlink) and link_target(spec, other) == owner
    ]
    return sorted([owner, *names])


def _detach(spec: Spec, path: bytes) -> None:
    """Make `path` leave its hardlink group, moving the inode to another name if it owns it."""
    node = spec[path]
    if isinstance(node, Hardlink):
        return
    others = [p for p in group_of(spec, path) if p != path]
    if not others:
        return
    new_owner = others[0]
    spec[new_owner] = node
    for other in others[1:]:
        spec[other] = Hardlink(new_owner)


def remove_path(spec: Spec, path: bytes) -> list[bytes]:
    """Remove a path and everything below it, and return the removed paths."""
    removed = [*sorted(_descendants(spec, path), reverse=True), path]
    for gone in removed:
        _detach(spec, gone)
        del spec[gone]
    return removed


def set_node(spec: Spec, path: bytes, node: Node) -> None:
    """Put `node` at `path`, replacing what was there (and its children) as a new inode."""
    if path in spec:
        remove_path(spec, path)
    parent = path.rpartition(b"/")[0]
    while parent and parent not in spec:
        spec[parent] = Dir()
        parent = parent.rpartition(b"/")[0]
    spec[path] = node


def inode_node(spec: Spec, path: bytes) -> INode:
    """Return the node that carries the inode's attributes for `path`."""
    node = spec[link_target(spec, path)]
    assert not isinstance(node, Hardlink)
    return node


def update_inode(spec: Spec, path: bytes, **changes: object) -> None:
    """Change attributes of the inode at `path`, and so of every name of that inode."""
    owner = link_target(spec, path)
    spec[owner] = replace(spec[owner], **changes)  # type: ignore[arg-type]


# Growing a tree.

_MAX_PARENT_LENGTH = 600


def _directories_under(spec: Spec, under: bytes = b"") -> list[bytes]:
    """Return `under` and the directories below it that are short enough to nest in."""
    prefix = under + b"/" if under else b""
    found = [
        path
        for path, node in spec.items()
        if isinstance(node, Dir) and path.startswith(prefix) and len(path) < _MAX_PARENT_LENGTH
    ]
    return [under, *sorted(found)]


def _inode_paths(spec: Spec) -> list[bytes]:
    """Return the non-directory paths, sorted."""
    return sorted(p for p, n in spec.items() if not isinstance(n, Dir))


def _new_path(source: _Random, spec: Spec, parent: bytes) -> bytes:
    while True:
        name = source.name()
        path = parent + b"/" + name if parent else name
        if path not in spec and not name.startswith(b".wh."):
            return path


def _new_node(source: _Random, spec: Spec, kind: str) -> Node:
    uid, gid = source.owner()
    mtime = source.mtime()
    match kind:
        case "dir":
            return Dir(source.dir_mode(), uid, gid, mtime, source.xattrs(regular_file=False))
        case "file":
            content = source.content()
            xattrs = source.xattrs(regular_file=True)
            return File(content, source.file_mode(), uid, gid, mtime, xattrs)
        case "symlink":
            return Symlink(source.symlink_target(spec), uid, gid, mtime)
        case "hardlink" if _inode_paths(spec):
            return Hardlink(link_target(spec, source.pick(_inode_paths(spec))))
        case "fifo":
            return Fifo(source.file_mode(), uid, gid, mtime)
        case "char" | "block":
            # Major 0 is left out: a 0/0 character device is an overlayfs whiteout.
            major, minor = source.rng.randrange(1, 4096), source.rng.randrange(2**20)
            device_kind: Literal["char", "block"] = "char" if kind == "char" else "block"
            return Device(device_kind, major, minor, source.file_mode(), uid, gid, mtime)
        case "socket":
            return Socket(source.file_mode(), uid, gid, mtime)
    return File(source.content(), source.file_mode(), uid, gid, mtime)


def _node_kinds(options: TreeGenOptions) -> list[str]:
    kinds = ["dir"] * 5 + ["file"] * 9 + ["symlink"] * 3 + ["hardlink"] * 3 + ["fifo"]
    if options.devices:
        kinds += ["char", "block"]
    if options.sockets:
        kinds += ["socket"]
    return kinds


def grow(
    source: _Random, spec: Spec, count: int, kinds: list[str] | None = None, under: bytes = b""
) -> list[bytes]:
    """Add `count` random nodes to directories at or below `under`, and return their paths."""
    kinds = kinds or _node_kinds(source.options)
    added: list[bytes] = []
    for _ in range(count):
        if source.options.long_names and source.chance(0.03):
            # A chain of long directory names, so that whole paths pass 256 bytes.
            parent = source.pick(_directories_under(spec, under))
            for _ in range(3):
                component = source.pick(_SHORT_NAMES) + b"-" + b"d" * source.rng.randrange(90, 150)
                parent = parent + b"/" + component if parent else component
                set_node(spec, parent, Dir(mtime_ns=source.mtime()))
                added.append(parent)
        parent = source.pick(_directories_under(spec, under))
        path = _new_path(source, spec, parent)
        set_node(spec, path, _new_node(source, spec, source.pick(kinds)))
        added.append(path)
    return added


# Changes from the lower tree to the upper tree.


class _Changer:
    """Applies random changes to `pair.upper`, each to paths no earlier change touched.

    Keeping changes apart keeps `pair.hidden` exact: a later change could otherwise
    reveal a hidden one, for example a new name linked to a silently changed file.
    """

    def __init__(self, source: _Random, pair: TreePair) -> None:
        self.source = source
        self.pair = pair
        self.upper = pair.upper
        self.touched: set[bytes] = set()

    def _affected(self, path: bytes) -> set[bytes]:
        affected = {path}
        for name in [path, *_descendants(self.upper, path)]:
            affected.add(name)
            if name in self.upper:
                affected.update(group_of(self.upper, name))
        return affected

    def free(self, path: bytes) -> bool:
        return not self._affected(path) & self.touched

    def touch(self, path: bytes) -> None:
        self.touched |= self._affected(path)

    def pick_path(self, accept: Callable[[bytes, Node], bool]) -> bytes | None:
        candidates = [
            path
            for path, node in sorted(self.upper.items())
            if accept(path, node) and self.free(path)
        ]
        return self.source.pick(candidates) if candidates else None

    def pick_inode(self, types: tuple[type, ...]) -> bytes | None:
        """Pick a free path whose inode is one of `types` (any name of a hardlink group)."""
        return self.pick_path(lambda p, n: isinstance(inode_node(self.upper, p), types))

    def hide(self, paths: Iterable[bytes], reason: str) -> None:
        for path in paths:
            self.pair.hidden[path] = reason

    # Each change returns its description, or None when no path fits it.

    def add(self) -> str | None:
        kinds = [kind for kind in _node_kinds(self.source.options) if kind != "hardlink"]
        added = grow(self.source, self.upper, self.source.rng.randrange(1, 4), kinds)
        for path in added:
            self.touch(path)
        return "add " + ", ".join(repr(path) for path in added)

    def delete_file(self) -> str | None:
        path = self.pick_path(lambda p, n: not isinstance(n, Dir))
        if path is None:
            return None
        self.touch(path)
        remove_path(self.upper, path)
        return f"delete {path!r}"

    def delete_dir(self) -> str | None:
        path = self.pick_path(lambda p, n: isinstance(n, Dir))
        if path is None:
            return None
        self.touch(path)
        removed = remove_path(self.upper, path)
        return f"delete directory {path!r} ({len(removed)} paths)"

    def change_type(self) -> str | None:
        path = self.pick_path(lambda p, n: True)
        if path is None:
            return None
        self.touch(path)
        old = inode_node(self.upper, path)
        kinds = {
            Dir: ["file", "symlink", "fifo"],
            File: ["dir", "symlink", "fifo"],
            Symlink: ["file", "dir"],
            Fifo: ["file", "dir"],
            Device: ["file", "char", "block"],
            Socket: ["file"],
        }[type(old)]
        kind = self.source.pick(kinds)
        set_node(self.upper, path, _new_node(self.source, self.upper, kind))
        if kind == "dir" and self.source.chance(0.6):
            for child in grow(self.source, self.upper, 2, ["file", "dir", "symlink"], path):
                self.touch(child)
        self.touch(path)
        return f"change type of {path!r}: {type(old).__name__} -> {kind}"

    def chmod(self) -> str | None:
        path = self.pick_inode((File, Dir, Fifo, Device))
        if path is None:
            return None
        old = inode_node(self.upper, path)
        assert not isinstance(old, Symlink | Socket)
        mode = self.source.dir_mode() if isinstance(old, Dir) else self.source.file_mode()
        if mode == old.mode:
            mode ^= 0o020
        self.touch(path)
        update_inode(self.upper, path, mode=mode)
        return f"chmod {path!r} {old.mode:o} -> {mode:o}"

    def chown(self) -> str | None:
        path = self.pick_inode((File, Dir, Fifo, Device, Symlink))
        if path is None or not self.source.options.owners:
            return None
        old = inode_node(self.upper, path)
        uid, gid = self.source.owner()
        if (uid, gid) == (old.uid, old.gid):
            uid += 1
        self.touch(path)
        update_inode(self.upper, path, uid=uid, gid=gid)
        return f"chown {path!r} {old.uid}:{old.gid} -> {uid}:{gid}"

    def change_content(self) -> str | None:
        path = self.pick_inode((File,))
        if path is None:
            return None
        old = inode_node(self.upper, path)
        assert isinstance(old, File)
        nanos = old.mtime_ns % SECOND

        # continuity compares size, then mtime, and reads the content only when both
        # mtimes are whole seconds. A same-size change under a nanosecond mtime hides.
        variants = ["resize", "mtime nanoseconds"]
        if old.content and nanos == 0:
            variants.append("same size and whole-second mtime")
        if nanos:
            variants.append("mtime truncated to seconds")
        if old.content and nanos:
            variants.append("same size and nanosecond mtime")
        variant = self.source.pick(variants)
        self.touch(path)

        same_size = self.source.rng.randbytes(len(old.content))
        if same_size == old.content:
            same_size = bytes(b ^ 1 for b in old.content)
        match variant:
            case "resize":
                content = old.content + self.source.content() + b"+"
                update_inode(self.upper, path, content=content, mtime_ns=self.source.mtime())
            case "mtime nanoseconds":
                new_nanos = (nanos + self.source.rng.randrange(1, SECOND)) % SECOND
                update_inode(self.upper, path, mtime_ns=old.mtime_ns - nanos + new_nanos)
            case "same size and whole-second mtime":
                update_inode(self.upper, path, content=same_size)
            case "mtime truncated to seconds":
                update_inode(self.upper, path, mtime_ns=old.mtime_ns - nanos)
            case _:
                update_inode(self.upper, path, content=same_size)
                self.hide(group_of(self.upper, path), "content")
        return f"change content of {path!r}: {variant}"

    def retarget(self) -> str | None:
        path = self.pick_inode((Symlink,))
        if path is None:
            return None
        old = inode_node(self.upper, path)
        assert isinstance(old, Symlink)
        self.touch(path)
        if self.source.chance(0.5):
            target = old.target + b"-new"
            update_inode(self.upper, path, target=target, mtime_ns=self.source.mtime())
            return f"retarget {path!r} to {target!r}"
        # The same length and mtime: only a target comparison can see this change.
        target = old.target[:-1] + (b"y" if old.target[-1:] != b"y" else b"z")
        update_inode(self.upper, path, target=target)
        if old.mtime_ns % SECOND:
            self.hide(group_of(self.upper, path), "content")
        return f"retarget {path!r} to {target!r} keeping length and mtime"

    def link(self) -> str | None:
        path = self.pick_inode((File, Symlink, Fifo, Device))
        if path is None:
            return None
        self.touch(path)
        parent = self.source.pick(_directories_under(self.upper))
        new = _new_path(self.source, self.upper, parent)
        set_node(self.upper, new, Hardlink(link_target(self.upper, path)))
        self.touch(new)
        return f"hardlink {new!r} to {path!r}"

    def split_link(self) -> str | None:
        path = self.pick_path(lambda p, n: len(group_of(self.upper, p)) > 1)
        if path is None:
            return None
        group = group_of(self.upper, path)
        self.touch(path)
        set_node(self.upper, path, inode_node(self.upper, path))
        self.hide(group, "hardlinks")
        return f"split {path!r} from hardlink group {group!r} as an equal copy"

    def change_capability(self) -> str | None:
        path = self.pick_inode((File,))
        if path is None or not self.source.options.capabilities:
            return None
        old = inode_node(self.upper, path)
        assert isinstance(old, File)
        xattrs = dict(old.xattrs)
        if CAPABILITY in xattrs and self.source.chance(0.5):
            del xattrs[CAPABILITY]
        else:
            xattrs[CAPABILITY] = self.source.capability()
        self.touch(path)
        update_inode(self.upper, path, xattrs=xattrs)
        return f"change security.capability of {path!r}"

    def change_user_xattr(self) -> str | None:
        path = self.pick_inode((File, Dir))
        if path is None or not self.source.options.user_xattrs:
            return None
        old = inode_node(self.upper, path)
        assert isinstance(old, File | Dir)
        xattrs = {**old.xattrs, b"user.changed": self.source.rng.randbytes(8)}
        self.touch(path)
        update_inode(self.upper, path, xattrs=xattrs)
        self.hide(group_of(self.upper, path), "xattrs")
        return f"change user xattrs of {path!r}"

    def touch_dir(self) -> str | None:
        path = self.pick_path(lambda p, n: isinstance(n, Dir))
        if path is None:
            return None
        self.touch(path)
        update_inode(self.upper, path, mtime_ns=self.source.mtime())
        return f"change only the mtime of directory {path!r}"

    def replace_dir(self) -> str | None:
        path = self.pick_path(lambda p, n: isinstance(n, Dir))
        if path is None:
            return None
        self.touch(path)
        set_node(self.upper, path, _new_node(self.source, self.upper, "dir"))
        for child in grow(self.source, self.upper, 3, ["file", "dir", "symlink", "fifo"], path):
            self.touch(child)
        return f"replace directory {path!r} with a new one"


_CHANGE_WEIGHTS = {
    _Changer.add: 5,
    _Changer.delete_file: 3,
    _Changer.delete_dir: 2,
    _Changer.change_type: 3,
    _Changer.chmod: 2,
    _Changer.chown: 2,
    _Changer.change_content: 5,
    _Changer.retarget: 1,
    _Changer.link: 3,
    _Changer.split_link: 1,
    _Changer.change_capability: 1,
    _Changer.change_user_xattr: 1,
    _Changer.touch_dir: 1,
    _Changer.replace_dir: 1,
}


def generate_pair(seed: int, options: TreeGenOptions | None = None) -> TreePair:
    """Generate a lower tree spec and an upper spec changed from it, reproducibly per seed."""
    options = options or TreeGenOptions()
    source = _Random(seed, options)
    lower: Spec = {}
    grow(source, lower, options.size)
    pair = TreePair(seed, lower, dict(lower))
    changer = _Changer(source, pair)
    changes = [change for change, weight in _CHANGE_WEIGHTS.items() for _ in range(weight)]
    for _ in range(options.changes):
        description = source.pick(changes)(changer)
        if description is not None:
            pair.changes.append(description)
    # Fail here, not in build_tree, if an edit broke a parent or a hardlink.
    normalize_spec(pair.lower)
    normalize_spec(pair.upper)
    return pair
