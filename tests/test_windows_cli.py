"""The Windows options of the command line: export --source windows, export --os windows
and apply --target windows."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from ocilayer.cli import EXIT_OK, EXIT_USAGE, main
from ocilayer.compression import Compression
from ocilayer.windows import WindowsLayout, convert_to_windows, export_windows_layer
from test_windows_golden import CONTENT, HIVE, build_example
from windows_helpers import parse_tar


def test_export_source_windows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_example(tmp_path / "layer")
    output = tmp_path / "layer.tar"
    status = main(
        ["export", "--source", "windows", str(tmp_path / "layer"), "-o", str(output), "--json"]
    )
    assert status == EXIT_OK
    expected = io.BytesIO()
    descriptor = export_windows_layer(expected, tmp_path / "layer", layout=WindowsLayout.TRANSPORT)
    assert output.read_bytes() == expected.getvalue()
    assert json.loads(capsys.readouterr().out) == descriptor.to_json()


def test_windows_exports_without_digests(tmp_path: Path) -> None:
    build_example(tmp_path / "layer")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "run.exe").write_bytes(b"MZ")
    for codec in (Compression.NONE, Compression.ZSTD):
        hashed, bare = io.BytesIO(), io.BytesIO()
        layout = WindowsLayout.TRANSPORT
        full = export_windows_layer(hashed, tmp_path / "layer", layout=layout, compression=codec)
        plain = export_windows_layer(
            bare, tmp_path / "layer", layout=layout, compression=codec, digests=False
        )
        assert bare.getvalue() == hashed.getvalue()
        assert plain == (full.media_type, None, full.size, None)
        hashed, bare = io.BytesIO(), io.BytesIO()
        full = convert_to_windows(hashed, tmp_path / "tree", compression=codec)
        plain = convert_to_windows(bare, tmp_path / "tree", compression=codec, digests=False)
        assert bare.getvalue() == hashed.getvalue()
        assert plain == (full.media_type, None, full.size, None)


def test_export_os_windows_tree(tmp_path: Path) -> None:
    (tmp_path / "tree" / "app").mkdir(parents=True)
    (tmp_path / "tree" / "app" / "run.exe").write_bytes(b"MZ")
    output = tmp_path / "out.tar.gz"
    assert main(["export", "--os", "windows", str(tmp_path / "tree"), "-o", str(output)]) == EXIT_OK
    plain = io.BytesIO()
    convert_to_windows(plain, tmp_path / "tree")
    assert gzip.decompress(output.read_bytes()) == plain.getvalue()
    assert [entry.name for entry in parse_tar(plain.getvalue())] == [
        b"Files",
        b"Hives",
        b"Files/app",
        b"Files/app/run.exe",
    ]


def test_os_windows_file_needs_source_tar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = tmp_path / "linux.tar"
    layer.write_bytes(bytes(1024))
    output = tmp_path / "windows.tar"
    assert main(["export", "--os", "windows", str(layer), "-o", str(output)]) == 1
    assert capsys.readouterr().err == (
        f"ocilayer: error: layer '{layer}' is not a directory; pass a layer directory, or "
        "add --source tar to read a layer tar\n"
    )
    assert not output.exists()


def test_export_os_windows_from_tar(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"f")
    linux = tmp_path / "linux.tar"
    assert main(["export", str(tmp_path / "tree"), "-o", str(linux)]) == EXIT_OK
    output = tmp_path / "windows.tar"
    status = main(["export", "--source", "tar", "--os", "windows", str(linux), "-o", str(output)])
    assert status == EXIT_OK
    assert [entry.name for entry in parse_tar(output.read_bytes())] == [
        b"Files",
        b"Hives",
        b"Files/f",
    ]


def test_apply_target_windows_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_example(tmp_path / "layer")
    tar = tmp_path / "layer.tar"
    assert (
        main(["export", "--source", "windows", str(tmp_path / "layer"), "-o", str(tar)]) == EXIT_OK
    )
    target = tmp_path / "imported"
    assert main(["apply", "--target", "windows", str(tar), str(target), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"size": len(CONTENT) + len(HIVE)}
    again = tmp_path / "again.tar"
    assert main(["export", "--source", "windows", str(target), "-o", str(again)]) == EXIT_OK
    assert again.read_bytes() == tar.read_bytes()


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--source", "windows", "L", "--prefix", "x", "-o", "o.tar"],
        ["export", "--os", "windows", "--source", "overlay", "L", "-o", "o.tar"],
        ["export", "--os", "windows", "L", "--parent", "P", "-o", "o.tar"],
        ["apply", "--target", "windows", "--rootless", "l.tar", "T"],
    ],
)
def test_windows_usage_errors(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    assert "ocilayer: error:" in capsys.readouterr().err
