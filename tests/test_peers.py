"""Tests of the test peers themselves: Go's tar, containerd's WriteDiff, GNU tar, bsdtar.

These run without ocilayer's export, so that the oracle is known to be wired right
before any export test relies on it. Go must copy tars made with ocilayer's encoder
byte for byte, and containerd must write the entries its own TestDiffTar cases expect.
The tar tools must list known archives, and the tree helpers must report every change.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import peers
import treegen
from ocilayer.tarformat.encoder import END_OF_ARCHIVE, TarHeader, data_padding, encode_header
from rawtar import (
    RawEntry,
    assert_tars_equal,
    entry_differences,
    header_field,
    normalize_whiteout_mtimes,
    split_tar,
)
from trees import (
    DEFAULT_MTIME_NS,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    Socket,
    Symlink,
    TreeSpec,
    assert_trees_equal,
    build_tree,
)

SECOND = 10**9
MTIME = DEFAULT_MTIME_NS // SECOND
CAPABILITY = b"\x01\x00\x00\x02\x00\x30\x00\x00" + bytes(12)
Item = tuple[TarHeader, bytes]


def make_tar(items: list[Item]) -> bytes:
    """Encode entries with ocilayer's encoder, then the end-of-archive blocks."""
    pieces = [encode_header(header) + data + data_padding(len(data)) for header, data in items]
    return b"".join(pieces) + END_OF_ARCHIVE


def regular(name: bytes, data: bytes = b"", **fields: object) -> Item:
    values: dict[str, object] = {"typeflag": b"0", "mode": 0o644, "size": len(data),
                                 "mtime_ns": MTIME * SECOND, **fields}  # fmt: skip
    return TarHeader(name, **values), data  # type: ignore[arg-type]


def other(name: bytes, typeflag: bytes, **fields: object) -> Item:
    values: dict[str, object] = {"mode": 0o755, "mtime_ns": MTIME * SECOND, **fields}
    return TarHeader(name, typeflag, **values), b""  # type: ignore[arg-type]


# Go's archive/tar reads and rewrites ocilayer's headers unchanged.

LONG_DIR = b"pppppppppp/qqqqqqqqqq/rrrrrrrrrr/" + b"s" * 80
TRICKY_HEADERS: dict[str, list[Item]] = {
    "empty archive": [],
    "113-byte name split into prefix": [regular(LONG_DIR[:33] + b"t" * 80, b"split")],
    "directory name of 101 bytes": [other(b"d" * 100 + b"/", b"5")],
    "name of exactly 100 bytes": [regular(b"n" * 100)],
    "unsplittable long name": [regular(b"a/" + b"x" * 140)],
    "path over 256 bytes": [regular(b"/".join([b"c" * 90] * 3) + b"/end")],
    "non-ASCII UTF-8 name": [regular("café/日本語".encode(), b"utf-8")],
    "non-UTF-8 name": [regular(b"bad\xff\xfename", b"raw")],
    "uid and gid 2^21": [regular(b"owner", uid=2**21, gid=2**21 + 1)],
    "largest uid below 2^21": [regular(b"owner", uid=2**21 - 1, gid=2**21 - 1)],
    "uid 2^32 - 2": [regular(b"owner", uid=2**32 - 2)],
    "negative whole-second mtime": [regular(b"old", mtime_ns=-SECOND)],
    "negative nanosecond mtime": [regular(b"old", mtime_ns=-1_500_000_000)],
    "nanosecond mtime": [regular(b"fine", mtime_ns=MTIME * SECOND + 123_456_789)],
    "mtime at 2^33 seconds": [regular(b"future", mtime_ns=2**33 * SECOND)],
    "atime and ctime": [regular(b"times", atime_ns=5 * SECOND + 1, ctime_ns=6 * SECOND)],
    "xattr values with NUL bytes": [
        regular(
            b"xattrs",
            b"x",
            pax_records={
                b"SCHILY.xattr.user.nul": b"a\x00b\x00",
                b"SCHILY.xattr.security.capability": CAPABILITY,
                b"SCHILY.xattr.user.empty": b"",
            },
        )
    ],
    "symlink target of 150 bytes": [other(b"link", b"2", mode=0o777, linkname=b"t/" * 75)],
    "non-UTF-8 symlink target": [other(b"link", b"2", mode=0o777, linkname=b"\xff\xfe")],
    "hardlink to a long name": [
        regular(b"h/" + b"x" * 120, b"data"),
        other(b"hardlink", b"1", mode=0o644, linkname=b"h/" + b"x" * 120),
    ],
    "devices and FIFO": [
        other(b"null", b"3", mode=0o666, devmajor=1, devminor=3),
        other(b"sda", b"4", mode=0o660, devmajor=8, devminor=0),
        other(b"largest", b"3", devmajor=0o7777777, devminor=0o7777777),
        other(b"fifo", b"6", mode=0o600),
    ],
    "whiteout": [regular(b"d/.wh.gone", mode=0, mtime_ns=0)],
    "setuid, setgid and sticky": [regular(b"modes", mode=0o7755)],
    "user and group names": [regular(b"named", uname=b"root", gname=b"wheel")],
    "data of 513 bytes": [regular(b"padded", b"z" * 513)],
    "unformatted header rounds mtime": [
        regular(b"rounded", mtime_ns=SECOND // 2, format_pax=False)
    ],
}


@pytest.mark.parametrize("case", TRICKY_HEADERS)
def test_go_copies_encoder_bytes(case: str, go_tarcopy: Path) -> None:
    tar_bytes = make_tar(TRICKY_HEADERS[case])

    assert_tars_equal(peers.go_roundtrip(tar_bytes), tar_bytes, "Go", "ocilayer")


@pytest.mark.parametrize("case", TRICKY_HEADERS)
def test_tar_tools_list_encoder_names(case: str) -> None:
    items = TRICKY_HEADERS[case]
    tar_bytes = make_tar(items)
    names = [header.name for header, _ in items]

    assert peers.gnu_tar_list(tar_bytes) == names
    assert peers.bsdtar_list(tar_bytes) == names


def test_go_list_fields(go_tarcopy: Path) -> None:
    items = [
        regular(
            b"caf\xc3\xa9",
            b"12345",
            uid=2**21,
            gid=7,
            mode=0o4755,
            mtime_ns=MTIME * SECOND + 5,
            pax_records={b"SCHILY.xattr.user.k": b"v\x00w"},
        ),
        other(b"dev", b"3", mode=0o600, devmajor=4, devminor=64),
    ]

    first, second = peers.go_list(make_tar(items))

    assert first["name"] == b"caf\xc3\xa9"
    assert first["typeflag"] == "0"
    assert first["mode"] == 0o4755
    assert first["uid"] == 2**21
    assert first["gid"] == 7
    assert first["size"] == 5
    assert first["mtime_ns"] == MTIME * SECOND + 5
    assert first["format"] == "PAX"
    assert first["pax"]["SCHILY.xattr.user.k"] == b"v\x00w"
    assert first["pax"]["uid"] == str(2**21).encode()
    assert second["typeflag"] == "3"
    assert (second["devmajor"], second["devminor"]) == (4, 64)
    assert second["format"] == "USTAR"


@pytest.mark.slow
def test_go_copies_8_gib_entry(go_tarcopy: Path) -> None:
    """A size of 2^33 bytes overflows the octal size field, so a PAX size record is used."""
    size = 2**33
    header = encode_header(TarHeader(name=b"big", mode=0o644, size=size))
    chunk = bytes(1 << 20)
    with subprocess.Popen([go_tarcopy], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        def feed() -> None:
            stdin.write(header)
            for _ in range(size // len(chunk)):
                stdin.write(chunk)
            stdin.write(END_OF_ARCHIVE)
            stdin.close()

        writer = threading.Thread(target=feed)
        writer.start()
        copied_header = stdout.read(len(header))
        nonzero_chunks = 0
        for _ in range(size // len(chunk)):
            nonzero_chunks += stdout.read(len(chunk)) != chunk
        trailer = stdout.read()
        writer.join()

    assert process.wait() == 0
    assert copied_header == header
    assert header_field(header[-512:], "size") == b"00000000000\x00"
    assert nonzero_chunks == 0
    assert trailer == END_OF_ARCHIVE


# containerd's WriteDiff writes the entries of containerd's own TestDiffTar cases.


def dir_item(name: str, mode: int = 0o755) -> Item:
    return other(name.encode(), b"5", mode=mode)


def file_item(name: str, data: bytes, mode: int = 0o644) -> Item:
    return regular(name.encode(), data, mode=mode)


def link_item(name: str, target: str) -> Item:
    return other(name.encode(), b"1", mode=0o644, linkname=target.encode())


def whiteout_item(path: str) -> Item:
    directory, _, base = path.rpartition("/")
    name = f"{directory}/.wh.{base}" if directory else f".wh.{base}"
    return regular(name.encode(), mode=0, mtime_ns=0)


LINK_ME = b"link me"
CONTENT = b"content"

# name -> (lower spec, upper spec, expected entries)
DIFF_TAR_CASES: dict[str, tuple[TreeSpec, TreeSpec, list[Item]]] = {
    "EmptyDiff": ({"etc": Dir()}, {"etc": Dir()}, []),
    "ParentInclusion": (
        {"d1": Dir(), "d2": Dir(0o770)},
        {"d1/d": Dir(0o700), "d2": Dir(0o770), "d2/f": File(b"ok")},
        [
            dir_item("d1/"),
            dir_item("d1/d/", 0o700),
            dir_item("d2/", 0o770),
            file_item("d2/f", b"ok"),
        ],
    ),
    "HardlinkParentInclusion": (
        {
            "d1/f1": File(LINK_ME),
            "d2/f1": File(LINK_ME),
            "d3": Dir(),
            "d4/f1": File(LINK_ME),
            "d5/f1": File(LINK_ME),
            "d6/l1": Hardlink(b"d1/f1"),
            "d6/l2": Hardlink(b"d5/f1"),
        },
        {
            "d1/f1": File(LINK_ME),
            "d2/f1": File(LINK_ME),
            "d2/l1": Hardlink(b"d1/f1"),
            "d3/l1": Hardlink(b"d4/f1"),
            "d4/f1": File(LINK_ME),
            "d5/f1": File(LINK_ME),
            "d6": Dir(),
        },
        [
            dir_item("d2/"),
            file_item("d2/l1", LINK_ME),
            dir_item("d1/"),
            link_item("d1/f1", "d2/l1"),
            dir_item("d3/"),
            file_item("d3/l1", LINK_ME),
            dir_item("d4/"),
            link_item("d4/f1", "d3/l1"),
            dir_item("d6/"),
            whiteout_item("d6/l1"),
            whiteout_item("d6/l2"),
        ],
    ),
    "UpdateDirectoryPermission": (
        {"d1": Dir(), "d2": Dir(0o770)},
        {"d1": Dir(0o777), "d1/d": Dir(0o700), "d2": Dir(0o770), "d2/f": File(b"ok")},
        [
            dir_item("d1/", 0o777),
            dir_item("d1/d/", 0o700),
            dir_item("d2/", 0o770),
            file_item("d2/f", b"ok"),
        ],
    ),
    "HardlinkUpdatedParent": (
        {"d1/f1": File(LINK_ME), "d2/f1": File(LINK_ME), "d3/f1": File(LINK_ME), "d4": Dir()},
        {
            "d1": Dir(0o777),
            "d1/f1": File(LINK_ME),
            "d2/f1": File(LINK_ME),
            "d2/l1": Hardlink(b"d1/f1"),
            "d3/f1": File(LINK_ME),
            "d4": Dir(0o777),
            "d4/l1": Hardlink(b"d3/f1"),
        },
        [
            dir_item("d1/", 0o777),
            dir_item("d2/"),
            file_item("d2/l1", LINK_ME),
            link_item("d1/f1", "d2/l1"),
            dir_item("d4/", 0o777),
            file_item("d4/l1", LINK_ME),
            dir_item("d3/"),
            link_item("d3/f1", "d4/l1"),
        ],
    ),
    "WhiteoutIncludesParents": (
        {
            "d1/f1": File(CONTENT),
            "d2/f1": File(CONTENT),
            "d2/f2": File(CONTENT),
            "d3/f1": File(CONTENT),
            "d4/f1": File(CONTENT),
            "d5/f1": File(CONTENT),
        },
        {
            "d1": Dir(),
            "d2/f2": File(CONTENT, 0o777),
            "d3/f2": File(CONTENT),
            "d4/f0": File(CONTENT),
        },
        [
            dir_item("d1/"),
            whiteout_item("d1/f1"),
            dir_item("d2/"),
            whiteout_item("d2/f1"),
            file_item("d2/f2", CONTENT, 0o777),
            dir_item("d3/"),
            whiteout_item("d3/f1"),
            file_item("d3/f2", CONTENT),
            dir_item("d4/"),
            file_item("d4/f0", CONTENT),
            whiteout_item("d4/f1"),
            whiteout_item("d5"),
        ],
    ),
    "WhiteoutParentRemoval": (
        {"d1": Dir(), "d2/f1": File(CONTENT)},
        {"d3": Dir()},
        [whiteout_item("d1"), whiteout_item("d2"), dir_item("d3/")],
    ),
    "IgnoreSockets": (
        {"f1": File(CONTENT)},
        {"f1": File(CONTENT), "f2": File(CONTENT), "s0": Socket(0o644), "f3": File(CONTENT)},
        [file_item("f2", CONTENT), file_item("f3", CONTENT)],
    ),
}


@pytest.mark.parametrize("case", DIFF_TAR_CASES)
def test_containerd_diff_tar_case(
    case: str, make_tree: Callable[[str, TreeSpec], Path], go_writediff: Path, as_root: None
) -> None:
    lower_spec, upper_spec, expected = DIFF_TAR_CASES[case]
    lower = make_tree("lower", lower_spec)
    upper = make_tree("upper", upper_spec)

    written = peers.containerd_write_diff(lower, upper)

    assert_tars_equal(written, make_tar(expected), "containerd", "expected")


BASE_TREE: TreeSpec = {
    "bin": Dir(),
    "bin/ping": File(b"\x7fELF", 0o4755, xattrs={b"security.capability": CAPABILITY}),
    "bin/ping6": Hardlink(b"bin/ping"),
    "dev/null": Device("char", 1, 3, 0o666),
    "dev/sda": Device("block", 8, 0, 0o660, gid=6),
    "dev/fifo": Fifo(0o600),
    "dev/socket": Socket(),
    "etc": Dir(0o755, xattrs={b"user.ignored": b"yes"}),
    "etc/hosts": File(b"127.0.0.1 localhost\n", mtime_ns=DEFAULT_MTIME_NS + 999_999_999),
    "etc/localtime": Symlink(b"/usr/share/zoneinfo/UTC", mtime_ns=DEFAULT_MTIME_NS),
    "home/user": Dir(0o700, uid=1000, gid=1000),
    "home/user/big-ids": File(b"x", uid=2**21, gid=2**21 + 2),
    "home/user/old": File(b"1969", mtime_ns=-1_500_000_000),
    "home/user/café": File(b"utf-8"),
    b"home/user/bad\xffname": File(b"raw"),
    "home/user/" + "long-" * 30: File(b"long name"),
}


def base_tree_entries() -> list[Item]:
    """The base layer of BASE_TREE as containerd's recipe writes it (walk order)."""
    capability = {b"SCHILY.xattr.security.capability": CAPABILITY}
    return [
        dir_item("bin/"),
        regular(b"bin/ping", b"\x7fELF", mode=0o4755, pax_records=capability),
        other(b"bin/ping6", b"1", mode=0o4755, linkname=b"bin/ping", pax_records=capability),
        dir_item("dev/"),
        other(b"dev/fifo", b"6", mode=0o600),
        other(b"dev/null", b"3", mode=0o666, devmajor=1, devminor=3),
        other(b"dev/sda", b"4", mode=0o660, gid=6, devmajor=8, devminor=0),
        dir_item("etc/"),
        regular(b"etc/hosts", b"127.0.0.1 localhost\n"),
        other(b"etc/localtime", b"2", mode=0o777, linkname=b"/usr/share/zoneinfo/UTC"),
        dir_item("home/"),
        other(b"home/user/", b"5", mode=0o700, uid=1000, gid=1000),
        regular(b"home/user/bad\xffname", b"raw"),
        regular(b"home/user/big-ids", b"x", uid=2**21, gid=2**21 + 2),
        regular(b"home/user/caf\xc3\xa9", b"utf-8"),
        regular(("home/user/" + "long-" * 30).encode(), b"long name"),
        # containerd truncates toward the past: -1.5 s becomes -2 s.
        regular(b"home/user/old", b"1969", mtime_ns=-2 * SECOND),
    ]


def test_containerd_base_layer(
    make_tree: Callable[[str, TreeSpec], Path], go_writediff: Path, as_root: None
) -> None:
    upper = make_tree("upper", BASE_TREE)

    single_walk = peers.containerd_write_diff(None, upper)
    double_walk = peers.containerd_write_diff(make_tree("empty", {}), upper)

    assert_tars_equal(single_walk, make_tar(base_tree_entries()), "containerd", "expected")
    assert_tars_equal(double_walk, single_walk, "containerd with empty lower", "without lower")


def test_containerd_whiteout_mtime_is_now(
    make_tree: Callable[[str, TreeSpec], Path], go_writediff: Path
) -> None:
    lower = make_tree("lower", {"gone": File(b"x"), "kept": File(b"y")})
    upper = make_tree("upper", {"kept": File(b"y")})

    raw = peers.containerd_write_diff(lower, upper, normalize=False)
    normalized = peers.containerd_write_diff(lower, upper)

    raw_entry, normalized_entry = split_tar(raw).entries[0], split_tar(normalized).entries[0]
    assert raw_entry.name == b".wh.gone"
    assert raw_entry.mtime > MTIME
    assert normalized_entry.mtime == 0
    differences = entry_differences(raw_entry, normalized_entry)
    assert [line.split(":")[0] for line in differences] == [
        "header field mtime",
        "header field chksum",
    ]
    assert normalized == make_tar([whiteout_item("gone")])


def test_whiteout_normalization_rejects_other_times() -> None:
    tar_bytes = make_tar([regular(b".wh.gone", mode=0, mtime_ns=12345 * SECOND)])

    with pytest.raises(AssertionError, match=r"whiteout b'\.wh\.gone' has mtime 12345"):
        normalize_whiteout_mtimes(tar_bytes, 20000, 30000)


def test_assert_tars_equal_names_field() -> None:
    expected = make_tar([dir_item("d/"), file_item("d/f", b"data")])
    actual = make_tar([dir_item("d/"), file_item("d/f", b"data", mode=0o600)])

    with pytest.raises(AssertionError) as failure:
        assert_tars_equal(actual, expected)

    message = str(failure.value)
    assert "tar entry 1 differs" in message
    assert "b'd/f'" in message
    assert "header field mode: b'0000600\\x00' != b'0000644\\x00'" in message


# GNU tar and bsdtar: strict listing and extraction.


def test_tar_tools_reject_corrupt_archive() -> None:
    tar_bytes = bytearray(make_tar([file_item("f", b"data")]))
    tar_bytes[148] ^= 1

    with pytest.raises(AssertionError, match="exited with status"):
        peers.gnu_tar_list(bytes(tar_bytes))
    with pytest.raises(AssertionError, match="bsdtar -t exited with status"):
        peers.bsdtar_list(bytes(tar_bytes))


def test_bsdtar_conversion_warnings_counted() -> None:
    tar_bytes = make_tar(
        [
            regular(b"bad\xffname"),
            other(b"link", b"2", mode=0o777, linkname=b"\xfe"),
            other(b"both\xff", b"2", mode=0o777, linkname=b"\xfe"),
            regular("café".encode()),
        ]
    )

    assert peers.bsdtar_list(tar_bytes) == [b"bad\xffname", b"link", b"both\xff", "café".encode()]


def test_gnu_tar_list_allowed_warnings() -> None:
    record = {b"MSWINDOWS.fileattr": b"32"}
    tar_bytes = make_tar([regular(b"Files/x", b"data", pax_records=record)])

    with pytest.raises(AssertionError, match="unknown extended header keyword"):
        peers.gnu_tar_list(tar_bytes)
    allowed = [peers.GNU_TAR_UNKNOWN_KEYWORD]
    assert peers.gnu_tar_list(tar_bytes, allowed_warnings=allowed) == [b"Files/x"]
    assert peers.bsdtar_list(tar_bytes) == [b"Files/x"]


def test_listing_names_unescaped() -> None:
    names = [b"sp ace", b"back\\slash", b"tab\there", b"bell\x07", b"\xc3\xa9"]
    tar_bytes = make_tar([regular(name) for name in names])

    assert peers.gnu_tar_list(tar_bytes) == names
    assert peers.bsdtar_list(tar_bytes) == names


def test_gnu_tar_extract_restores_tree(
    make_tree: Callable[[str, TreeSpec], Path], go_writediff: Path, as_root: None, tmp_path: Path
) -> None:
    source = make_tree("source", {k: v for k, v in BASE_TREE.items() if k != "dev/socket"})
    tar_bytes = peers.containerd_write_diff(None, source)

    peers.gnu_tar_extract(
        tar_bytes, tmp_path / "out", allowed_warnings=[peers.GNU_TAR_OLD_TIMESTAMP]
    )

    # containerd carries only security.capability, and truncates mtimes to seconds.
    assert_trees_equal(tmp_path / "out", source, xattrs=lambda name: name == b"security.capability")


def test_gnu_tar_extract_fails_on_warning(tmp_path: Path) -> None:
    tar_bytes = make_tar([regular(b"old", mtime_ns=-5 * SECOND)])

    with pytest.raises(AssertionError, match="implausibly old time stamp"):
        peers.gnu_tar_extract(tar_bytes, tmp_path / "out")


def test_gnu_tar_apply_layer_replaces_types(
    make_tree: Callable[[str, TreeSpec], Path], go_writediff: Path, as_root: None, tmp_path: Path
) -> None:
    lower: TreeSpec = {
        "dir-to-file/x": File(b"x"),
        "file-to-dir": File(b"abc"),
        "symlink-to-dir": Symlink(b"/etc"),
        "dir-to-symlink/y": File(b"y"),
        "setgid": Dir(0o2775),
        "group/a": File(b"same"),
        "group/b": Hardlink(b"group/a"),
        "gone/sub/z": File(b"z"),
        "gone-file": File(b"1"),
    }
    upper: TreeSpec = {
        "dir-to-file": File(b"now a file"),
        "file-to-dir/new": File(b"n"),
        "symlink-to-dir/in": File(b"i"),
        "dir-to-symlink": Symlink(b"target"),
        "setgid": Dir(0o755),
        "setgid/child": Dir(0o700),
        "group/a": File(b"same"),
        "group/b": Hardlink(b"group/a"),
        "group/c": Hardlink(b"group/a"),
    }
    layer = peers.containerd_write_diff(make_tree("lower", lower), make_tree("upper", upper))
    applied = make_tree("applied", lower)

    peers.gnu_tar_apply_layer(layer, applied)

    assert_trees_equal(applied, tmp_path / "upper", xattrs=False, directory_mtimes=False)


def test_gnu_tar_apply_layer_needs_whiteout_target(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    layer = make_tar([whiteout_item("missing")])

    with pytest.raises(AssertionError, match="names a path missing"):
        peers.gnu_tar_apply_layer(layer, tmp_path / "dest")


def test_run_tool_fails_on_stderr() -> None:
    with pytest.raises(AssertionError, match="wrote to stderr:\nnoise"):
        peers.run_tool(["sh", "-c", "echo noise >&2"])


def test_run_tool_allows_listed_stderr() -> None:
    output = peers.run_tool(
        ["sh", "-c", "echo out; echo expected >&2; exit 3"],
        allowed_stderr=[re.compile(rb"expected")],
        allowed_exit=3,
    )

    assert output == b"out\n"


# Tree specs and tree comparison.


def test_build_tree_sets_every_attribute(
    make_tree: Callable[[str, TreeSpec], Path], as_root: None
) -> None:
    root = make_tree("tree", BASE_TREE)

    ping = os.lstat(root / "bin/ping")
    assert stat.S_IMODE(ping.st_mode) == 0o4755
    assert ping.st_nlink == 2
    assert os.getxattr(root / "bin/ping", "security.capability") == CAPABILITY
    assert os.lstat(root / "bin/ping6").st_ino == ping.st_ino
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(os.lstat(root / "dev/sda").st_mode)
    assert os.lstat(root / "dev/sda").st_gid == 6
    assert stat.S_ISFIFO(os.lstat(root / "dev/fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(root / "dev/socket").st_mode)
    assert os.getxattr(root / "etc", "user.ignored") == b"yes"
    assert os.lstat(root / "etc/hosts").st_mtime_ns == DEFAULT_MTIME_NS + 999_999_999
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.lstat(root / "etc/localtime").st_mtime_ns == DEFAULT_MTIME_NS
    home = os.lstat(root / "home/user")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o700)
    assert home.st_mtime_ns == DEFAULT_MTIME_NS
    assert os.lstat(root / "home/user/old").st_mtime_ns == -1_500_000_000
    assert os.path.exists(os.fsencode(root) + b"/home/user/bad\xffname")


def test_build_tree_rejects_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relative, clean path"):
        build_tree(tmp_path / "a", {"../escape": File()})
    with pytest.raises(ValueError, match="is not a Dir"):
        build_tree(tmp_path / "b", {"f": File(), "f/child": File()})
    with pytest.raises(ValueError, match="circular or dangling"):
        build_tree(tmp_path / "c", {"l": Hardlink(b"missing")})
    with pytest.raises(ValueError, match="hardlink to directory"):
        build_tree(tmp_path / "d", {"d": Dir(), "l": Hardlink(b"d")})


SAME_TREE: TreeSpec = {
    "d": Dir(0o750),
    "d/f": File(b"data", xattrs={b"user.k": b"v"}),
    "d/g": Hardlink(b"d/f"),
    "d/h": File(b"data"),
    "s": Symlink(b"target"),
    "c": Device("char", 5, 1),
}

# Case -> (changed entries of the second tree, expected message fragment).
TREE_DIFFERENCES: dict[str, tuple[TreeSpec, str]] = {
    "mode": ({"d": Dir(0o755)}, "b'd': mode differs: a='0o750', b='0o755'"),
    "owner": ({"d/h": File(b"data", uid=7)}, "b'd/h': uid differs: a=0, b=7"),
    "content": ({"d/h": File(b"DATA")}, "b'd/h': content differs"),
    "size": ({"d/h": File(b"datum")}, "b'd/h': size differs: a=4, b=5"),
    "xattrs": (
        {"d/f": File(b"data", xattrs={b"user.k": b"w"})},
        "b'd/f': xattrs differs: a={b'user.k': b'v'}, b={b'user.k': b'w'}",
    ),
    "symlink target": ({"s": Symlink(b"other")}, "b's': symlink target differs"),
    "device numbers": ({"c": Device("char", 5, 2)}, "b'c': device numbers differs"),
    "type": ({"c": Fifo()}, "b'c': type differs: a='character device', b='fifo'"),
    "mtime": ({"d/h": File(b"data", mtime_ns=1)}, "b'd/h': mtime differs"),
    "hardlink group": ({"d/g": File(b"data")}, "b'd/f': hardlink group differs"),
    "missing path": ({"extra": File()}, "b'extra': only in b (regular file)"),
}


@pytest.mark.parametrize("case", TREE_DIFFERENCES)
def test_assert_trees_equal_reports(
    case: str, make_tree: Callable[[str, TreeSpec], Path], as_root: None
) -> None:
    changes, fragment = TREE_DIFFERENCES[case]
    first = make_tree("first", SAME_TREE)
    second = make_tree("second", {**SAME_TREE, **changes})

    with pytest.raises(AssertionError) as failure:
        assert_trees_equal(first, second)

    assert fragment in str(failure.value)


def test_assert_trees_equal_options(
    make_tree: Callable[[str, TreeSpec], Path], as_root: None
) -> None:
    first = make_tree("first", SAME_TREE)
    second = make_tree(
        "second",
        {
            **SAME_TREE,
            "d": Dir(0o750, mtime_ns=5 * SECOND),
            "d/f": File(b"data", mtime_ns=DEFAULT_MTIME_NS + 7, xattrs={b"user.k": b"w"}),
            "extra": File(),
        },
    )

    assert_trees_equal(
        first,
        second,
        xattrs=lambda name: not name.startswith(b"user."),
        mtimes="seconds",
        directory_mtimes=False,
        exclude=lambda path: path == b"extra",
    )
    with pytest.raises(AssertionError, match="mtime differs"):
        assert_trees_equal(
            first, second, xattrs=False, mtimes="exact", exclude=lambda p: p == b"extra"
        )


# Generated tree pairs.


def test_treegen_is_deterministic() -> None:
    first = treegen.generate_pair(7)
    second = treegen.generate_pair(7)
    other_seed = treegen.generate_pair(8)

    assert first.lower == second.lower
    assert first.upper == second.upper
    assert first.changes == second.changes
    assert first.hidden == second.hidden
    assert first.upper != other_seed.upper


def test_treegen_covers_every_change() -> None:
    pairs = [treegen.generate_pair(seed) for seed in range(60)]
    changes = [change for pair in pairs for change in pair.changes]
    paths = [path for pair in pairs for path in pair.upper]
    nodes = [node for pair in pairs for node in pair.lower.values()]

    for prefix in (
        "add ",
        "delete b",
        "delete directory",
        "change type",
        "chmod",
        "chown",
        "change content of",
        "retarget",
        "hardlink",
        "split",
        "change security.capability",
        "change user xattrs",
        "change only the mtime",
        "replace directory",
    ):
        assert any(change.startswith(prefix) for change in changes), prefix
    for variant in (
        ": resize",
        ": mtime nanoseconds",
        ": same size and whole-second mtime",
        ": mtime truncated to seconds",
        ": same size and nanosecond mtime",
    ):
        assert any(change.endswith(variant) for change in changes), variant
    assert any(max(map(len, path.split(b"/"))) > 100 for path in paths)
    assert any(len(path) > 256 for path in paths)
    assert any(not _is_utf8(path) for path in paths)
    for kind in (Dir, File, Symlink, Hardlink, Fifo, Device):
        assert any(isinstance(node, kind) for node in nodes), kind.__name__
    assert any(isinstance(n, File) and b"security.capability" in n.xattrs for n in nodes)
    assert any(isinstance(n, File) and n.uid >= 2**21 for n in nodes)
    assert any(isinstance(n, File) and n.mtime_ns < 0 for n in nodes)
    assert {reason for pair in pairs for reason in pair.hidden.values()} == {
        "content",
        "hardlinks",
        "xattrs",
    }


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("seed", range(12))
def test_containerd_diff_applies_to_upper(
    seed: int, tmp_path: Path, go_writediff: Path, go_tarcopy: Path, as_root: None
) -> None:
    """containerd's diff of a generated pair, applied by GNU tar to lower, gives upper.

    This checks the generator, the apply helper and the tree comparison together: only
    the paths the generator lists as hidden may differ, and only in what they hide.
    """
    pair = treegen.generate_pair(seed)
    lower, upper = treegen.build_pair(tmp_path, pair)
    base = peers.containerd_write_diff(None, lower)
    diff = peers.containerd_write_diff(lower, upper)
    applied = tmp_path / "applied"

    for layer in (base, diff):
        names = [entry.name for entry in split_tar(layer).entries]
        assert peers.gnu_tar_list(layer) == names
        assert peers.bsdtar_list(layer) == names
        assert_tars_equal(peers.go_roundtrip(layer), layer, "Go", "containerd")
    peers.gnu_tar_extract(base, applied, allowed_warnings=peers.GNU_TAR_TIMESTAMP_WARNINGS)
    peers.gnu_tar_apply_layer(diff, applied, allowed_warnings=peers.GNU_TAR_TIMESTAMP_WARNINGS)

    try:
        assert_trees_equal(
            applied,
            upper,
            xattrs=lambda name: name == b"security.capability",
            directory_mtimes=False,
            exclude=lambda path: path in pair.hidden,
        )
    except AssertionError as error:
        raise AssertionError(f"{pair.describe()}\n{error}") from None


def test_split_tar_reads_pax_entries() -> None:
    tar_bytes = make_tar(
        [regular(b"x" * 150, b"abc"), other(b"l", b"2", mode=0o777, linkname=b"t" * 120)]
    )

    entries = split_tar(tar_bytes).entries

    assert [entry.name for entry in entries] == [b"x" * 150, b"l"]
    assert entries[0].data == b"abc"
    assert entries[0].pax == {b"path": b"x" * 150}
    assert entries[1].linkname == b"t" * 120
    assert isinstance(entries[1], RawEntry)
    assert split_tar(tar_bytes).trailer == END_OF_ARCHIVE
