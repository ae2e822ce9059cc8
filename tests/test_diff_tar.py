"""containerd's diff-to-tar cases: exact entry sequences for a lower tree and a change.

Each case builds the lower tree, copies it with `cp -a` (times, owners and hardlinks
kept, so unchanged paths diff as unchanged), applies the change to the copy and
exports the copy against the lower tree.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from layer_helpers import copy_tree, export_bytes, read_tar, write

Step = Callable[[Path], None]


def mkdir(path: str, mode: int) -> Step:
    def step(root: Path) -> None:
        (root / path).mkdir()
        os.chmod(root / path, mode)

    return step


def mkfile(path: str, content: bytes, mode: int = 0o644) -> Step:
    def step(root: Path) -> None:
        write(root / path, content, mode)

    return step


def link(old: str, new: str) -> Step:
    return lambda root: os.link(root / old, root / new)


def remove(path: str) -> Step:
    return lambda root: os.unlink(root / path)


def remove_all(path: str) -> Step:
    return lambda root: shutil.rmtree(root / path)


def chmod(path: str, mode: int) -> Step:
    return lambda root: os.chmod(root / path, mode)


def mksocket(path: str) -> Step:
    def step(root: Path) -> None:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(root / path))
        server.close()

    return step


def diff(tmp_path: Path, lower_steps: list[Step], upper_steps: list[Step]) -> bytes:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    for step in lower_steps:
        step(lower)
    copy_tree(lower, upper)
    for step in upper_steps:
        step(upper)
    data, _ = export_bytes(upper, [lower])
    return data


def d(name: str, mode: int) -> tuple[str, str, int, bytes]:
    return ("5", name, mode, b"")


def f(name: str, content: bytes, mode: int = 0o644) -> tuple[str, str, int, bytes]:
    return ("0", name, mode, content)


def h(name: str, target: str) -> tuple[str, str, int, bytes]:
    return ("1", name, -1, target.encode())


def w(name: str) -> tuple[str, str, int, bytes]:
    directory, _, base = name.rpartition("/")
    return ("0", f"{directory}/.wh.{base}" if directory else f".wh.{base}", 0, b"")


def assert_entries(data: bytes, expected: list[tuple[str, str, int, bytes]]) -> None:
    items = read_tar(data)
    got = []
    for item in items:
        if item.type == b"1":
            got.append(("1", item.name.decode(), -1, item.linkname))
        else:
            got.append((item.type.decode(), item.name.decode(), item.mode, item.data))
    assert got == expected


def test_empty_diff(tmp_path: Path) -> None:
    data = diff(tmp_path, [mkdir("etc", 0o755)], [])
    assert data == bytes(1024)


def test_parent_inclusion(tmp_path: Path) -> None:
    data = diff(
        tmp_path,
        [mkdir("d1", 0o755), mkdir("d2", 0o770)],
        [mkdir("d1/d", 0o700), mkfile("d2/f", b"ok")],
    )
    assert_entries(data, [d("d1/", 0o755), d("d1/d/", 0o700), d("d2/", 0o770), f("d2/f", b"ok")])


def test_hardlink_parent_inclusion(tmp_path: Path) -> None:
    data = diff(
        tmp_path,
        [
            mkdir("d1", 0o755),
            mkfile("d1/f1", b"link me"),
            mkdir("d2", 0o755),
            mkfile("d2/f1", b"link me"),
            mkdir("d3", 0o755),
            mkdir("d4", 0o755),
            mkfile("d4/f1", b"link me"),
            mkdir("d5", 0o755),
            mkfile("d5/f1", b"link me"),
            mkdir("d6", 0o755),
            link("d1/f1", "d6/l1"),
            link("d5/f1", "d6/l2"),
        ],
        [link("d1/f1", "d2/l1"), link("d4/f1", "d3/l1"), remove("d6/l1"), remove("d6/l2")],
    )
    assert_entries(
        data,
        [
            d("d2/", 0o755),
            f("d2/l1", b"link me"),
            d("d1/", 0o755),
            h("d1/f1", "d2/l1"),
            d("d3/", 0o755),
            f("d3/l1", b"link me"),
            d("d4/", 0o755),
            h("d4/f1", "d3/l1"),
            d("d6/", 0o755),
            w("d6/l1"),
            w("d6/l2"),
        ],
    )


def test_update_directory_permission(tmp_path: Path) -> None:
    data = diff(
        tmp_path,
        [mkdir("d1", 0o755), mkdir("d2", 0o770)],
        [chmod("d1", 0o777), mkdir("d1/d", 0o700), mkfile("d2/f", b"ok")],
    )
    assert_entries(data, [d("d1/", 0o777), d("d1/d/", 0o700), d("d2/", 0o770), f("d2/f", b"ok")])


def test_hardlink_updated_parent(tmp_path: Path) -> None:
    data = diff(
        tmp_path,
        [
            mkdir("d1", 0o755),
            mkfile("d1/f1", b"link me"),
            mkdir("d2", 0o755),
            mkfile("d2/f1", b"link me"),
            mkdir("d3", 0o755),
            mkfile("d3/f1", b"link me"),
            mkdir("d4", 0o755),
        ],
        [
            chmod("d1", 0o777),
            link("d1/f1", "d2/l1"),
            chmod("d4", 0o777),
            link("d3/f1", "d4/l1"),
        ],
    )
    assert_entries(
        data,
        [
            d("d1/", 0o777),
            d("d2/", 0o755),
            f("d2/l1", b"link me"),
            h("d1/f1", "d2/l1"),
            d("d4/", 0o777),
            f("d4/l1", b"link me"),
            d("d3/", 0o755),
            h("d3/f1", "d4/l1"),
        ],
    )


def test_whiteout_includes_parents(tmp_path: Path) -> None:
    data = diff(
        tmp_path,
        [
            mkdir("d1", 0o755),
            mkfile("d1/f1", b"content"),
            mkdir("d2", 0o755),
            mkfile("d2/f1", b"content"),
            mkfile("d2/f2", b"content"),
            mkdir("d3", 0o755),
            mkfile("d3/f1", b"content"),
            mkdir("d4", 0o755),
            mkfile("d4/f1", b"content"),
            mkdir("d5", 0o755),
            mkfile("d5/f1", b"content"),
        ],
        [
            remove("d1/f1"),
            remove("d2/f1"),
            chmod("d2/f2", 0o777),
            remove("d3/f1"),
            mkfile("d3/f2", b"content"),
            remove("d4/f1"),
            mkfile("d4/f0", b"content"),
            remove_all("d5"),
        ],
    )
    assert_entries(
        data,
        [
            d("d1/", 0o755),
            w("d1/f1"),
            d("d2/", 0o755),
            w("d2/f1"),
            f("d2/f2", b"content", 0o777),
            d("d3/", 0o755),
            w("d3/f1"),
            f("d3/f2", b"content"),
            d("d4/", 0o755),
            f("d4/f0", b"content"),
            w("d4/f1"),
            w("d5"),
        ],
    )


def test_whiteout_parent_removal(tmp_path: Path) -> None:
    data = diff(
        tmp_path,
        [mkdir("d1", 0o755), mkdir("d2", 0o755), mkfile("d2/f1", b"content")],
        [remove_all("d1"), remove_all("d2"), mkdir("d3", 0o755)],
    )
    assert_entries(data, [w("d1"), w("d2"), d("d3/", 0o755)])


def test_ignore_sockets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = diff(
        tmp_path,
        [mkfile("f1", b"content")],
        [mkfile("f2", b"content"), mksocket("s0"), mkfile("f3", b"content")],
    )
    assert_entries(data, [f("f2", b"content"), f("f3", b"content")])
    assert [record.getMessage() for record in caplog.records] == [
        "skipped 1 socket(s), which a tar cannot hold: s0"
    ]


def test_whiteout_header_is_fixed() -> None:
    """A whiteout carries mode 0, owner 0:0 and mtime 0 whatever it deletes."""
    import io

    from ocilayer.entry import ChangeKind, Entry
    from ocilayer.writer import LayerTarWriter

    out = io.BytesIO()
    writer = LayerTarWriter(out, lambda path: pytest.fail(f"unexpected lookup {path!r}"))
    writer.add(Entry(path=b"gone", kind=ChangeKind.DELETE))
    writer.close()
    block = out.getvalue()[:512]
    assert block[:9] == b".wh.gone\x00"
    assert block[100:156] == b"0000000\x00" * 3 + b"00000000000\x00" * 2 + block[148:156]
    assert block[156:157] == b"0"
