"""Rewriting an existing layer tar: relocation under a prefix, recompression, whiteouts."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import peers
from layer_helpers import read_tar, shorts
from ocilayer import Compression, export_layer_to_tar

LONG = "a" * 120


def pax_tar(tmp_path: Path) -> Path:
    """A PAX tar as Python's tarfile writes it, one name too long for the ustar field."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in (f"dir/{LONG}.txt", "dir/short.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("dir/alias")
        link.type = tarfile.LNKTYPE
        link.linkname = f"dir/{LONG}.txt"
        archive.addfile(link)
        whiteout = tarfile.TarInfo("dir/.wh.gone")
        archive.addfile(whiteout)
    path = tmp_path / "input.tar"
    path.write_bytes(buffer.getvalue())
    return path


def test_relocation_moves_names_held_in_pax_records(tmp_path: Path) -> None:
    source = pax_tar(tmp_path)
    out = io.BytesIO()

    export_layer_to_tar(out, source, source="tar", prefix=b"etc/config/")

    data = out.getvalue()
    assert shorts(data) == [
        "d etc/",
        "d etc/config/",
        "d etc/config/dir/",
        f"f etc/config/dir/{LONG}.txt",
        "f etc/config/dir/short.txt",
        f"h etc/config/dir/alias -> etc/config/dir/{LONG}.txt",
        "w etc/config/dir/.wh.gone",
    ]
    items = read_tar(data)
    assert items[3].pax == {"path": f"etc/config/dir/{LONG}.txt".encode()}
    assert items[3].data == b"abc"
    assert items[5].pax == {"linkpath": f"etc/config/dir/{LONG}.txt".encode()}
    assert peers.go_roundtrip(data) == data
    assert peers.gnu_tar_list(data) == [item.name for item in items]


def test_recompressing_keeps_the_diff_id(tmp_path: Path) -> None:
    source = pax_tar(tmp_path)
    plain = io.BytesIO()
    first = export_layer_to_tar(plain, source, source="tar")
    zipped = tmp_path / "layer.tar.gz"
    zipped.write_bytes(gzip.compress(plain.getvalue()))
    again = io.BytesIO()

    second = export_layer_to_tar(again, zipped, source="tar", compression=Compression.ZSTD)

    assert second.diff_id == first.diff_id
    assert second.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"


def test_cli_reads_layer_tar_from_stdin(tmp_path: Path) -> None:
    source = pax_tar(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ocilayer", "export", "--source", "tar", "--prefix", "x", "-"],
        input=source.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert shorts(result.stdout)[:2] == ["d x/", "d x/dir/"]


def test_prefix_needs_tar_source(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocilayer", "export", str(tmp_path), "--prefix", "x"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"--prefix needs --source tar" in result.stderr
