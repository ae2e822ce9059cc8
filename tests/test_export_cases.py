"""Hand-over export cases: trees that layer tools got wrong, with the right layer."""

from __future__ import annotations

import gzip
import io
import os
import socket
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from layer_helpers import copy_tree, export_bytes, read_tar, shorts, write
from ocilayer import Compression, XattrPolicy, export_layer_to_tar

EMPTY_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
# vfs_cap_data revision 2 for cap_net_admin,cap_net_raw=p.
PING_CAPABILITY = bytes.fromhex("0000000200300000000000000000000000000000")


def snapshot_pair(tmp_path: Path) -> tuple[Path, Path]:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    return lower, upper


def test_new_hardlink_rewrites_whole_group(tmp_path: Path) -> None:
    lower, upper = snapshot_pair(tmp_path)
    write(lower / "f1", b"data\n")
    os.link(lower / "f1", lower / "f2")
    os.link(lower / "f1", lower / "f3")
    copy_tree(lower, upper)
    os.link(upper / "f1", upper / "f4")
    os.link(upper / "f1", upper / "f5")

    data, _ = export_bytes(upper, [lower])

    assert shorts(data) == ["f f4", "h f1 -> f4", "h f2 -> f4", "h f3 -> f4", "h f5 -> f4"]
    assert read_tar(data)[0].data == b"data\n"


def test_filtered_name_never_becomes_link_target(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "bim", b"")
    (tree / "bin").mkdir()
    os.link(tree / "bim", tree / "bin" / "failplz")

    data, _ = export_bytes(tree, include=[b"bin/"])

    items = read_tar(data)
    assert [item.short() for item in items] == ["d bin/", "f bin/failplz"]
    assert items[1].mode == 0o644
    assert items[1].size == 0


def test_every_link_points_at_data_carrier(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "tmp" / "end", b"payload")
    for number in range(1, 11):
        os.link(tree / "tmp" / "end", tree / "tmp" / f"link{number}")

    data, _ = export_bytes(tree)

    order = [1, 10, 2, 3, 4, 5, 6, 7, 8, 9]
    assert shorts(data) == ["d tmp/", "f tmp/end"] + [f"h tmp/link{n} -> tmp/end" for n in order]


def test_deleted_directory_is_one_whiteout(tmp_path: Path) -> None:
    lower, upper = snapshot_pair(tmp_path)
    write(lower / "test" / "test", b"")

    data, _ = export_bytes(upper, [lower])

    assert shorts(data) == ["w .wh.test"]


def test_directory_replaced_by_symlink(tmp_path: Path) -> None:
    lower, upper = snapshot_pair(tmp_path)
    for name in ("a", "b", "c"):
        (lower / name).mkdir()
    write(lower / "a" / "a", b"a\n")
    copy_tree(lower, upper)
    (upper / "a" / "a").unlink()
    (upper / "a").rmdir()
    os.symlink("/b", upper / "a")

    data, _ = export_bytes(upper, [lower])

    assert shorts(data) == ["l a -> /b"]


def test_whiteout_written_after_its_directory(tmp_path: Path) -> None:
    layer1, layer2, snapshot = tmp_path / "l1", tmp_path / "l2", tmp_path / "snap"
    (layer1 / "test").mkdir(parents=True)
    write(layer2 / "test" / "testfile", b"12345")
    (snapshot / "test").mkdir(parents=True)
    os.chmod(snapshot / "test", os.stat(layer2 / "test").st_mode & 0o7777)
    write(snapshot / "usr" / "local" / "bin" / "testfile", b"12345")

    data, _ = export_bytes(snapshot, [layer1, layer2])

    assert shorts(data) == [
        "d test/",
        "w test/.wh.testfile",
        "d usr/",
        "d usr/local/",
        "d usr/local/bin/",
        "f usr/local/bin/testfile",
    ]


def test_socket_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = tmp_path / "tree"
    write(tree / "run" / "keep", b"k")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tree / "run" / "agent.sock"))
    server.close()

    data, _ = export_bytes(tree)

    assert shorts(data) == ["d run/", "f run/keep"]
    assert [r.getMessage() for r in caplog.records] == [
        "skipped 1 socket(s), which a tar cannot hold: run/agent.sock"
    ]


class _CheckingSink(io.RawIOBase):
    """A sink that keeps only the first bytes and counts the rest."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if len(self.head) < 4096:
            self.head += bytes(data[: 4096 - len(self.head)])
        self.size += len(data)
        return len(data)


def test_sparse_file_streams_with_bounded_memory(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "var" / "log").mkdir(parents=True)
    lastlog = tree / "var" / "log" / "lastlog"
    with open(lastlog, "wb") as handle:
        handle.truncate(1 << 30)
        handle.write(b"r" * 292)

    sink = _CheckingSink()
    tracemalloc.start()
    export_layer_to_tar(sink, tree)  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert peak < 16 << 20
    # var/, var/log/, the file header, 1 GiB of data, two end blocks.
    assert sink.size == 3 * 512 + (1 << 30) + 1024
    assert sink.head[1024:1536][:15] == b"var/log/lastlog"
    assert sink.head[1536 : 1536 + 292] == b"r" * 292
    assert sink.head[1536 + 292 :] == bytes(len(sink.head) - 1536 - 292)


def test_large_ids_written_as_pax_records(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    path = write(tree / "big-owner", b"")
    os.chown(path, 4294967294, 1000240000)

    data, _ = export_bytes(tree)

    (item,) = read_tar(data)
    assert item.uid == 4294967294
    assert item.gid == 1000240000
    assert item.pax == {"uid": b"4294967294", "gid": b"1000240000"}


def _atime_variant(root: Path, atime: int) -> None:
    write(root / "a", b"1", mtime=1_800_000_000)
    write(root / "d" / "b", b"2", mtime=1_800_000_000)
    os.utime(root / "d", (1_800_000_000, 1_800_000_000))
    for path in (root / "a", root / "d" / "b", root / "d"):
        os.utime(path, ns=(atime, os.stat(path).st_mtime_ns))


def test_fixed_time_gives_identical_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    _atime_variant(first, 1_000 * 10**9)
    _atime_variant(second, 2_000 * 10**9)

    one, _ = export_bytes(first, source_date_epoch=1_700_000_000)
    two, _ = export_bytes(second, source_date_epoch=1_700_000_000)

    assert one == two
    items = read_tar(one)
    assert [item.mtime for item in items] == [1_700_000_000] * 3
    assert all(item.pax == {} for item in items)


def test_older_times_kept_under_source_date_epoch(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "old", b"", mtime=1_600_000_000)
    data, _ = export_bytes(tree, source_date_epoch=1_700_000_000)
    assert read_tar(data)[0].mtime == 1_600_000_000


def test_nanoseconds_kept_on_request(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    path = write(tree / "f", b"")
    os.utime(path, ns=(0, 1_700_000_000_123_456_789))

    cut, _ = export_bytes(tree)
    kept, _ = export_bytes(tree, keep_nanoseconds=True)

    assert read_tar(cut)[0].pax == {}
    assert read_tar(cut)[0].mtime == 1_700_000_000
    assert read_tar(kept)[0].pax == {"mtime": b"1700000000.123456789"}


@pytest.mark.parametrize(
    ("mtime_ns", "pax"),
    [
        (-1_000_000_000, {"mtime": b"-1"}),
        (2_147_483_648 * 10**9, {}),
        (8_589_934_592 * 10**9, {"mtime": b"8589934592"}),
    ],
)
def test_times_outside_ustar_range(tmp_path: Path, mtime_ns: int, pax: dict[str, bytes]) -> None:
    tree = tmp_path / "tree"
    path = write(tree / "f", b"")
    os.utime(path, ns=(0, mtime_ns))
    data, _ = export_bytes(tree)
    assert read_tar(data)[0].pax == pax
    assert read_tar(data)[0].mtime == mtime_ns // 10**9


def test_empty_changeset_is_two_zero_blocks(tmp_path: Path) -> None:
    lower, upper = snapshot_pair(tmp_path)
    write(lower / "etc" / "hosts", b"x")
    copy_tree(lower, upper)

    data, descriptor = export_bytes(upper, [lower])

    assert data == bytes(1024)
    assert descriptor.diff_id == EMPTY_DIFF_ID
    assert descriptor.digest == EMPTY_DIFF_ID
    assert descriptor.size == 1024


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_empty_changeset_compresses_reproducibly(tmp_path: Path, compression: Compression) -> None:
    (tmp_path / "empty").mkdir()
    blobs = set()
    for threads in (1, 2, 4):
        blob, descriptor = export_bytes(tmp_path / "empty", compression=compression,
                                        threads=threads)  # fmt: skip
        assert descriptor.diff_id == EMPTY_DIFF_ID
        blobs.add(blob)
    (blob,) = blobs
    if compression is Compression.GZIP:
        assert blob[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME flag
        assert blob[4:8] == bytes(4)  # mtime 0
        assert blob[8:10] == b"\xff\x00"  # what ISA-L writes for XFL and OS, always
        assert gzip.decompress(blob) == bytes(1024)
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == bytes(1024)


def test_capability_exported_byte_exact(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    ping = write(tree / "usr" / "bin" / "ping", b"ELFBIN\x00\x01", 0o755)
    os.setxattr(ping, "security.capability", PING_CAPABILITY)

    for policy in (XattrPolicy.ALL, XattrPolicy.CAPABILITY):
        data, _ = export_bytes(tree, xattrs=policy)
        item = read_tar(data)[-1]
        assert item.name == b"usr/bin/ping"
        assert item.pax == {"SCHILY.xattr.security.capability": PING_CAPABILITY}
    data, _ = export_bytes(tree, xattrs=XattrPolicy.NONE)
    assert read_tar(data)[-1].pax == {}


def test_host_xattrs_never_exported(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    path = write(tree / "f", b"x")
    os.setxattr(path, "user.keep", b"v")
    os.setxattr(path, "trusted.overlay.origin", b"o")
    os.setxattr(path, "user.overlay.redirect", b"r")

    data, _ = export_bytes(tree)

    assert read_tar(data)[0].pax == {"SCHILY.xattr.user.keep": b"v"}


@pytest.mark.parametrize("spelling", ["{tree}", "{tree}/", "{tree}/.", "{tree}//"])
def test_each_path_once_however_spelled(tmp_path: Path, spelling: str) -> None:
    tree = tmp_path / "tree"
    for name in ("stddef.h", "stdarg.h", "float.h"):
        write(tree / "usr/lib/gcc/x/6.4.0/include" / name, b"h")

    data, _ = export_bytes(Path(spelling.format(tree=tree)))
    sub, _ = export_bytes(tree, include=[b"./usr/lib/", b"usr/lib", b"/usr/lib/gcc"])

    names = [item.name for item in read_tar(data)]
    assert len(names) == len(set(names))
    assert names == [
        b"usr/",
        b"usr/lib/",
        b"usr/lib/gcc/",
        b"usr/lib/gcc/x/",
        b"usr/lib/gcc/x/6.4.0/",
        b"usr/lib/gcc/x/6.4.0/include/",
        b"usr/lib/gcc/x/6.4.0/include/float.h",
        b"usr/lib/gcc/x/6.4.0/include/stdarg.h",
        b"usr/lib/gcc/x/6.4.0/include/stddef.h",
    ]
    assert sub == data


def test_real_whiteout_name_rejected(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "d" / ".wh.evil", b"")
    from ocilayer import LayerError

    with pytest.raises(LayerError, match=r"tree/d/\.wh\.evil'.*starts with '\.wh\.'"):
        export_bytes(tree)


def test_devices_and_fifo(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    os.mknod(tree / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(tree / "dev" / "sda", 0o660 | 0o060000, os.makedev(8, 0))
    os.mknod(tree / "dev" / "big", 0o600 | 0o020000, os.makedev(4095, 1048575))
    os.mkfifo(tree / "dev" / "initctl", 0o600)
    for name in ("null", "sda", "big", "initctl"):
        os.chmod(tree / "dev" / name, {"null": 0o666, "sda": 0o660}.get(name, 0o600))

    data, _ = export_bytes(tree)

    items = {item.name: item for item in read_tar(data)}
    assert [item.short() for item in read_tar(data)] == [
        "d dev/",
        "c dev/big",
        "p dev/initctl",
        "c dev/null",
        "b dev/sda",
    ]
    assert (items[b"dev/null"].devmajor, items[b"dev/null"].devminor) == (1, 3)
    assert items[b"dev/null"].mode == 0o666
    assert (items[b"dev/sda"].devmajor, items[b"dev/sda"].devminor) == (8, 0)
    assert (items[b"dev/big"].devmajor, items[b"dev/big"].devminor) == (4095, 1048575)
    assert items[b"dev/initctl"].size == 0


def test_setuid_setgid_sticky_kept(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "su", b"x", 0o4755)
    write(tree / "sg", b"x", 0o2711)
    (tree / "tmp").mkdir()
    os.chmod(tree / "tmp", 0o1777)

    data, _ = export_bytes(tree)

    assert [(item.name, item.mode) for item in read_tar(data)] == [
        (b"sg", 0o2711),
        (b"su", 0o4755),
        (b"tmp/", 0o1777),
    ]


def test_file_swapped_for_fifo_fails(tmp_path: Path) -> None:
    """A path that became a FIFO after the walk is an error, not a hang."""
    from ocilayer import LayerError
    from ocilayer.entry import Entry
    from ocilayer.writer import LayerTarWriter

    fifo = tmp_path / "swapped"
    os.mkfifo(fifo)
    entry = Entry(path=b"swapped", size=5, source_path=os.fsencode(fifo))
    writer = LayerTarWriter(io.BytesIO(), lambda path: pytest.fail(f"lookup {path!r}"))

    with pytest.raises(LayerError, match=r"swapped' is no longer a regular file"):
        writer.add(entry)


@pytest.mark.parametrize("source", ["snapshot", "overlay"])
def test_tree_deeper_than_recursion_limit(tmp_path: Path, source: str) -> None:
    from ocilayer.apply.paths import remove_tree

    tree = tmp_path / "tree"
    depth = 1100
    deep = str(tree)
    os.mkdir(deep)
    for _ in range(depth):
        deep += "/d"
        os.mkdir(deep)
    write(Path(deep) / "leaf", b"x")
    try:
        data, _ = export_bytes(tree, source=source, check_peers=False)
    finally:
        # pytest's own clean-up recurses once per level and fails on this tree.
        parent = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        try:
            remove_tree(parent, b"tree")
        finally:
            os.close(parent)

    names = [item.name for item in read_tar(data)]
    assert len(names) == depth + 1
    assert names[-1] == b"d/" * depth + b"leaf"


def test_small_file_swapped_after_walk_fails(tmp_path: Path) -> None:
    """A small file replaced by another file after its lstat is not read."""
    from ocilayer import LayerError
    from ocilayer.entry import ChangeKind
    from ocilayer.sources.snapshot import entry_from_node
    from ocilayer.sources.union import Node
    from ocilayer.xattrs import XattrPolicy

    path = tmp_path / "file"
    path.write_bytes(b"first")
    node = Node(b"file", os.lstat(path), os.fsencode(path))
    path.rename(tmp_path / "moved")
    path.write_bytes(b"other")

    with pytest.raises(LayerError, match=r"file' is no longer a regular file, or not the one"):
        entry_from_node(node, ChangeKind.ADD, XattrPolicy.NONE, read_ahead=True)
