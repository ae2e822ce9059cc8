"""The `ocilayer export` command: outputs, exit statuses and messages."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from capabilities import AS_NOBODY
from layer_helpers import read_tar, write
from ocilayer import Cancelled, __version__, export_layer_to_tar
from terminal import last_line, run_on_terminal

OCILAYER = [sys.executable, "-m", "ocilayer"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    full_env.update(env or {})
    return subprocess.run([*OCILAYER, *args], capture_output=True, env=full_env, check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write(root / "etc" / "hosts", b"127.0.0.1 localhost\n", mtime=1_800_000_000)
    return root


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"ocilayer {__version__}"


@pytest.mark.parametrize(
    ("name", "magic", "media_type"),
    [
        ("layer.tar", b"etc/", "application/vnd.oci.image.layer.v1.tar"),
        ("layer.tar.gz", b"\x1f\x8b", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("layer.tgz", b"\x1f\x8b", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("layer.tar.zst", b"\x28\xb5\x2f\xfd", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ],
)
def test_codec_follows_output_name(
    tree: Path, tmp_path: Path, name: str, magic: bytes, media_type: str
) -> None:
    output = tmp_path / name
    result = run("export", str(tree), "-o", str(output), "--json")
    assert result.returncode == 0, result.stderr
    blob = output.read_bytes()
    assert blob.startswith(magic)
    descriptor = json.loads(result.stdout)
    assert descriptor["mediaType"] == media_type
    assert descriptor["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert descriptor["size"] == len(blob)
    assert sorted(os.listdir(tmp_path)) == sorted(["tree", name])


def test_stdout_is_plain_tar(tree: Path) -> None:
    result = run("export", str(tree))
    assert result.returncode == 0
    assert [item.name for item in read_tar(result.stdout)] == [b"etc/", b"etc/hosts"]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_stdout_equals_file_output(tmp_path: Path, compression: str) -> None:
    """The command ends without the interpreter's teardown; nothing of stdout is lost."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(3 << 20) + bytes(2 << 20))
    (tree / "small").write_bytes(b"x" * 100)
    output = tmp_path / "layer.out"
    to_file = run("export", str(tree), "--compression", compression, "-o", str(output))
    to_stdout = run("export", str(tree), "--compression", compression)
    assert to_file.returncode == to_stdout.returncode == 0
    assert len(to_stdout.stdout) == output.stat().st_size
    assert to_stdout.stdout == output.read_bytes()


def test_compression_option_overrides_name(tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "layer.tar"
    result = run("export", str(tree), "-o", str(output), "--compression", "zstd")
    assert result.returncode == 0
    assert output.read_bytes().startswith(b"\x28\xb5\x2f\xfd")


def test_source_date_epoch_from_environment(tree: Path) -> None:
    result = run("export", str(tree), env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert [item.mtime for item in read_tar(result.stdout)] == [1_700_000_000, 1_700_000_000]
    flag = run("export", str(tree), "--source-date-epoch", "1700000000")
    assert flag.stdout == result.stdout


def test_missing_layer_fails_without_output(tmp_path: Path) -> None:
    output = tmp_path / "out" / "layer.tar"
    output.parent.mkdir()
    result = run("export", str(tmp_path / "nope"), "-o", str(output))
    assert result.returncode == 1
    assert f"'{tmp_path / 'nope'}' does not exist" in result.stderr.decode()
    assert os.listdir(output.parent) == []


def test_failed_export_keeps_previous_output(tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "layer.tar"
    output.write_bytes(b"previous")
    write(tree / "d" / ".wh.bad", b"")
    result = run("export", str(tree), "-o", str(output))
    assert result.returncode == 1
    assert ".wh.bad" in result.stderr.decode()
    assert output.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["layer.tar", "tree"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--level", "12", "-o", "{out}.tar.gz"], {}, "--level 12 is not valid for gzip: use 0-9"),
        (["--json"], {}, "--json prints to stdout, so it needs -o FILE"),
        ([], {"SOURCE_DATE_EPOCH": "yesterday"}, "SOURCE_DATE_EPOCH='yesterday' is not"),
        (["--xattrs", "some"], {}, "argument --xattrs: invalid choice: 'some'"),
        (["--compresion", "zstd"], {}, "export: error: unrecognized arguments: --compresion zstd"),
        (["-o", "{dir}"], {}, "is a directory; give the path of the file to write"),
        (["-o", "{out}.tar.bz2"], {}, "OCI layers are plain, gzip or zstd"),
        (["--threads", "-1", "-o", "{out}.tar"], {}, "--threads -1 is out of range"),
    ],
)
def test_usage_errors(
    tree: Path, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    filled = [arg.format(out=tmp_path / "layer", dir=tmp_path) for arg in args]
    result = run("export", str(tree), *filled, env=env)
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert result.stderr.decode().startswith("usage: ocilayer export ")
    assert sorted(os.listdir(tmp_path)) == ["tree"]


def test_missing_output_directory_exits_one(tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "missing" / "layer.tar"
    result = run("export", str(tree), "-o", str(output))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: -o '{output}': directory '{output.parent}' does not exist; "
        "create it first\n"
    )
    # The same check when the codec is given, not taken from the name.
    gzipped = run("export", str(tree), "--compression", "gzip", "-o", str(output))
    assert (gzipped.returncode, gzipped.stderr) == (1, result.stderr)
    under_file = run("export", str(tree), "-o", "/dev/null/layer.tar")
    assert (under_file.returncode, under_file.stderr.decode()) == (
        1,
        "ocilayer: error: -o '/dev/null/layer.tar': '/dev/null' is not a directory\n",
    )
    missing_layer = run("export", str(tmp_path / "nolayer"), "-o", str(tmp_path / "layer.tar"))
    assert missing_layer.returncode == 1
    assert sorted(os.listdir(tmp_path)) == ["tree"]


def test_file_layer_suggests_tar_source(tree: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(bytes(1024))
    result = run("export", str(layer), "-o", str(tmp_path / "out.tar"))
    assert (result.returncode, result.stderr.decode()) == (
        1,
        f"ocilayer: error: layer '{layer}' is not a directory; pass a layer directory, or "
        "add --source tar to read a layer tar\n",
    )
    as_parent = run("export", str(tree), "--parent", str(layer), "-o", str(tmp_path / "out.tar"))
    assert (as_parent.returncode, as_parent.stderr.decode()) == (
        1,
        f"ocilayer: error: parent layer '{layer}' is not a directory; pass a layer directory\n",
    )
    assert sorted(os.listdir(tmp_path)) == ["layer.tar", "tree"]


def test_debug_accepted_after_subcommand(tree: Path) -> None:
    before = run("--debug", "export", str(tree))
    after = run("export", "--debug", str(tree))
    assert before.returncode == 0
    assert after.returncode == 0
    assert after.stdout == before.stdout


def test_include_must_exist(tree: Path) -> None:
    result = run("export", str(tree), "--include", "nope")
    assert result.returncode == 1
    assert "--include 'nope' is not in the layer or its parents" in result.stderr.decode()


def test_missing_parent_named_as_parent(tree: Path, tmp_path: Path) -> None:
    result = run("export", str(tree), "--parent", str(tmp_path / "gone"))
    assert result.returncode == 1
    assert f"parent layer directory '{tmp_path / 'gone'}' does not exist" in (
        result.stderr.decode()
    )


def test_interrupt_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    with open(root / "huge", "wb") as handle:
        handle.truncate(64 << 30)
    output = tmp_path / "layer.tar"
    process = subprocess.Popen(
        [*OCILAYER, "export", str(root), "-o", str(output)], stderr=subprocess.PIPE
    )
    time.sleep(1.0)
    assert process.poll() is None, "the export finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert b"interrupted" in stderr
    assert sorted(os.listdir(tmp_path)) == ["tree"]


class _CancelAfterFirstWrite(io.RawIOBase):
    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.data += data
        self.event.set()
        return len(data)


def test_cancelled_export_writes_no_end_blocks(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write(root / "a" / "big", os.urandom(3 << 20))
    write(root / "b", b"after")
    cancel = threading.Event()
    sink = _CancelAfterFirstWrite(cancel)

    with pytest.raises(Cancelled):
        export_layer_to_tar(sink, root, cancel=cancel)  # type: ignore[arg-type]

    assert b"after" not in sink.data
    assert not sink.data.endswith(bytes(1024))


def test_cancel_before_start_writes_nothing(tree: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    out = io.BytesIO()
    with pytest.raises(Cancelled):
        export_layer_to_tar(out, tree, cancel=cancel)
    assert out.getvalue() == b""


def test_output_to_device_writes_through(tree: Path, tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    result = run("export", str(tree), "-o", str(null))
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert os.lstat(null).st_rdev == os.makedev(1, 3)


def test_output_through_symlink_keeps_link(tree: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.tar"
    real.write_bytes(b"old")
    link = tmp_path / "link.tar"
    link.symlink_to(real)
    result = run("export", str(tree), "-o", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert [item.name for item in read_tar(real.read_bytes())] == [b"etc/", b"etc/hosts"]


def test_output_to_full_disk_names_output(tree: Path) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [*OCILAYER, "export", str(tree)], stdout=full, stderr=subprocess.PIPE, check=False
        )
    assert result.returncode == 1
    assert result.stderr == b"ocilayer: error: cannot write the layer: No space left on device\n"


def test_output_inside_layer_rejected(tree: Path) -> None:
    result = run("export", str(tree), "-o", str(tree / "etc" / "layer.tar"))
    assert result.returncode == 2
    assert f"is inside the layer directory '{tree}'" in result.stderr.decode()
    assert sorted(os.listdir(tree / "etc")) == ["hosts"]


@pytest.mark.parametrize("root", [".", "/", "./"])
def test_include_root_is_whole_layer(tree: Path, root: str) -> None:
    whole = run("export", str(tree))
    included = run("export", str(tree), "--include", root)
    assert included.returncode == 0
    assert included.stdout == whole.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--source-date-epoch", "-1"], {}, "--source-date-epoch -1 is out of range"),
        ([], {"SOURCE_DATE_EPOCH": "99999999999999"}, "SOURCE_DATE_EPOCH 99999999999999 is out"),
        (["--threads", "5000"], {}, "--threads 5000 is out of range; use 1-256"),
    ],
)
def test_out_of_range_numbers(
    tree: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run("export", str(tree), *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_public_api_names_resolve() -> None:
    import ocilayer

    for name in ocilayer.__all__:
        assert getattr(ocilayer, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = ocilayer.nothing


def test_progress_line_on_terminal(tree: Path, tmp_path: Path) -> None:
    status, shown = run_on_terminal(
        [*OCILAYER, "export", str(tree), "-o", str(tmp_path / "layer.tar")]
    )
    assert status == 0
    final = last_line(shown)
    assert final.startswith(b"export: 2 entries, 2.5 KiB, ")
    assert final.endswith(b"/s, 00:00")


def test_quiet_hides_progress(tree: Path, tmp_path: Path) -> None:
    status, shown = run_on_terminal(
        [*OCILAYER, "export", str(tree), "-o", str(tmp_path / "layer.tar"), "--quiet"]
    )
    assert status == 0
    assert shown == b""


def test_unreachable_output_directory(tree: Path, tmp_path: Path, shared_directory: Path) -> None:
    """A directory that the user may not enter is not called missing."""
    layer = shared_directory / "tree"
    shutil.copytree(tree, layer)
    hidden = tmp_path / "hidden"  # inside root's 0700 pytest directory
    hidden.mkdir()
    result = subprocess.run(
        [*AS_NOBODY, *OCILAYER, "export", str(layer), "-o", str(hidden / "layer.tar")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: -o '{hidden / 'layer.tar'}': cannot reach directory '{hidden}': "
        "Permission denied\n"
    )
