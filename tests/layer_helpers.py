"""Helpers for export tests: build trees, export them, and read tars back as plain records."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import peers
from ocilayer import Compression, XattrPolicy, export_layer_to_tar
from ocilayer.digest import Descriptor
from ocilayer.xattrs import is_host_specific


@dataclass(frozen=True)
class Item:
    """One tar entry as the tests compare it: raw name, type flag, metadata, PAX records, data."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: bytes
    devmajor: int
    devminor: int
    pax: dict[str, bytes] = field(default_factory=dict)
    data: bytes = b""

    def short(self) -> str:
        """Render as CASES-style shorthand: `<type> <name> [-> link]`."""
        kind = {b"0": "f", b"1": "h", b"2": "l", b"3": "c", b"4": "b", b"5": "d", b"6": "p"}
        text = f"{kind[self.type]} {self.name.decode('utf-8', 'surrogateescape')}"
        if self.type == b"0" and self.name.rsplit(b"/", 1)[-1].startswith(b".wh."):
            text = "w" + text[1:]
        if self.linkname:
            text += f" -> {self.linkname.decode('utf-8', 'surrogateescape')}"
        return text


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def read_tar(data: bytes) -> list[Item]:
    """Read every entry of a tar stream with Python's tarfile (a reader independent of ours)."""
    items = []
    with tarfile.open(
        fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as archive:
        for member in archive:
            content = b""
            if member.isreg():
                extracted = archive.extractfile(member)
                assert extracted is not None
                content = extracted.read()
            name = _raw(member.name)
            if member.isdir():
                name += b"/"
            items.append(
                Item(
                    name=name,
                    type=member.type,
                    mode=member.mode,
                    uid=member.uid,
                    gid=member.gid,
                    size=member.size,
                    mtime=member.mtime,
                    linkname=_raw(member.linkname),
                    devmajor=member.devmajor,
                    devminor=member.devminor,
                    pax={k: _raw(v) for k, v in member.pax_headers.items()},
                    data=content,
                )
            )
    return items


def shorts(data: bytes) -> list[str]:
    return [item.short() for item in read_tar(data)]


def export_bytes(
    layer: Path,
    parents: list[Path] | None = None,
    *,
    check_peers: bool = True,
    **options: object,
) -> tuple[bytes, Descriptor]:
    """Export a layer to memory and return the tar bytes and the descriptor.

    Unless `check_peers` is False, the uncompressed tar is also checked by real
    readers (see `check_with_peers`).
    """
    out = io.BytesIO()
    options.setdefault("xattrs", XattrPolicy.ALL)
    descriptor = export_layer_to_tar(out, layer, parents or [], **options)  # type: ignore[arg-type]
    data = out.getvalue()
    if check_peers and options.get("compression") in (None, Compression.NONE):
        check_with_peers(data, layer, parents or [], options)
    return data, descriptor


def _xattr_filter(policy: object) -> Callable[[bytes], bool] | bool:
    if policy is XattrPolicy.NONE:
        return False
    if policy is XattrPolicy.CAPABILITY:
        return lambda name: name == b"security.capability"
    return lambda name: not is_host_specific(name)


def check_with_peers(
    data: bytes, layer: Path, parents: list[Path], options: dict[str, object]
) -> None:
    """Check a layer tar with GNU tar, bsdtar and Go, and apply it with GNU tar.

    GNU tar and bsdtar must list exactly our entries without a warning, Go's
    archive/tar must write the same bytes back, and for a snapshot export with at
    most one parent, GNU tar applying the layer onto a copy of the parent (or onto an
    empty directory) must give a tree equal to the layer.
    """
    names = [item.name for item in read_tar(data)]
    assert peers.gnu_tar_list(data) == names
    assert peers.bsdtar_list(data) == names
    assert peers.go_roundtrip(data) == data
    if options.get("include") or options.get("source", "snapshot") != "snapshot":
        return
    if len(parents) > 1:
        return
    work = Path(tempfile.mkdtemp(prefix="ocilayer-apply-"))
    try:
        dest = work / "dest"
        if parents:
            copy_tree_to(parents[0], dest)
            peers.gnu_tar_apply_layer(data, dest, allowed_warnings=peers.GNU_TAR_TIMESTAMP_WARNINGS)
        else:
            peers.gnu_tar_extract(data, dest, allowed_warnings=peers.GNU_TAR_TIMESTAMP_WARNINGS)
        if options.get("source_date_epoch") is not None:
            mtimes = "ignore"
        else:
            mtimes = "seconds"
        peers.assert_trees_equal(
            layer,
            dest,
            xattrs=_xattr_filter(options.get("xattrs")),
            mtimes=mtimes,  # type: ignore[arg-type]
            directory_mtimes=not parents,
            exclude=lambda path: stat.S_ISSOCK(os.lstat(layer / os.fsdecode(path)).st_mode),
        )
    finally:
        shutil.rmtree(work)


def copy_tree_to(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    copy_tree(source, target)


def write(path: Path, content: bytes = b"", mode: int = 0o644, mtime: int | None = None) -> Path:
    """Create a regular file with its parents, a mode and optionally an mtime (seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return path


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree keeping metadata and hardlinks (cp -a), so it diffs as unchanged."""
    import subprocess

    subprocess.run(["cp", "-a", f"{source}/.", str(target)], check=True)
