"""The `ocilayer apply` command: inputs, targets, exit statuses and messages."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from apply_helpers import (
    directory,
    entry,
    file,
    get_xattr,
    listing,
    raw_pax_entry,
    tar,
    whiteout,
)
from capabilities import AS_NOBODY
from terminal import last_line, run_on_terminal

OCILAYER = [sys.executable, "-m", "ocilayer"]
LAYER = tar(directory("etc/"), file("etc/hosts", "127.0.0.1 localhost\n"))

pytestmark = pytest.mark.usefixtures("as_root")


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*OCILAYER, *args], input=stdin, capture_output=True, check=False)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_apply_file_prints_nothing(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(gzip.compress(LAYER, mtime=0))
    result = run("apply", str(layer), str(tmp_path / "root"))
    assert result.returncode == 0
    assert result.stdout == b""
    assert result.stderr == b""
    assert listing(tmp_path / "root") == {
        "etc": "d 755",
        "etc/hosts": "f 644 '127.0.0.1 localhost\\n'",
    }


def test_apply_from_stdin_with_json(tmp_path: Path) -> None:
    result = run("apply", "-", str(tmp_path / "root"), "--json", stdin=LAYER)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"diffID": sha256(LAYER), "compression": "none", "size": 20}
    assert listing(tmp_path / "root")["etc/hosts"] == "f 644 '127.0.0.1 localhost\\n'"


def test_overlay_target_with_parents(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    assert run("apply", "-", str(lower), "--target", "overlay", stdin=LAYER).returncode == 0
    upper = tmp_path / "upper"
    layer = tar(
        whiteout("etc/.wh.hosts"), whiteout("etc/.wh.missing"), whiteout("etc/.wh..wh..opq")
    )
    result = run(
        "apply", "-", str(upper), "--target", "overlay", "--parent", str(lower), stdin=layer
    )
    assert result.returncode == 0, result.stderr
    assert listing(upper) == {"etc": "d 755"}
    assert get_xattr(upper / "etc", b"trusted.overlay.opaque") == b"y"


def test_diff_id_mismatch_fails(tmp_path: Path) -> None:
    result = run("apply", "-", str(tmp_path / "root"), "--diff-id", sha256(b"x"), stdin=LAYER)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: wrong diff_id: expected {sha256(b'x')}, the layer's tar stream has "
        f"{sha256(LAYER)}; the layer is corrupt or is not the one the image names, so "
        "discard the target\n"
    )


def test_hostile_names_are_shown_escaped(tmp_path: Path) -> None:
    # A name that would recolour the terminal, with a byte that is not UTF-8.
    name = b"\x1b[31mred\xff/../../../escape"
    result = run("apply", "-", str(tmp_path / "root"), stdin=tar(file(name, "x")))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "ocilayer: error: entry '\\x1b[31mred\\xff/../../../escape': '..' climbs above the "
        "layer root (offset 0)\n"
    )


def test_unsafe_entry_fails_naming_it(tmp_path: Path) -> None:
    layer = tar(file("ok", "1"), file("a/../../escape", "x"))
    result = run("apply", "-", str(tmp_path / "root"), stdin=layer)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "ocilayer: error: entry 'a/../../escape': '..' climbs above the layer root (offset 1024)\n"
    )
    assert listing(tmp_path) == {"root": "d 755", "root/ok": "f 644 '1'"}


OUT_OF_RANGE = "is out of range; tar numbers must fit in a signed 64-bit integer"


@pytest.mark.parametrize(
    ("target", "layer", "message"),
    [
        (
            "rootfs",
            file("late", mtime_ns=10**20 * 10**9),
            f"entry 'late' at offset 0: PAX mtime record '100000000000000000000' {OUT_OF_RANGE}",
        ),
        (
            "overlay",
            raw_pax_entry("many", {b"uid": b"1" + b"0" * 5000}),
            f"entry 'many' at offset 0: PAX uid record '100000000000000000000000'... "
            f"(5001 bytes) {OUT_OF_RANGE}",
        ),
        (
            "windows",
            raw_pax_entry("f", {b"MSWINDOWS.fileattr": b"9" * 5000}),
            "'f': invalid MSWINDOWS.fileattr '999999999999999999999999'... (5000 bytes); "
            "expected a decimal 32-bit number",
        ),
    ],
    ids=["mtime", "uid", "windows-fileattr"],
)
def test_huge_numbers_fail_without_traceback(
    tmp_path: Path, target: str, layer: bytes, message: str
) -> None:
    result = run("apply", "-", str(tmp_path / "root"), "--target", target, stdin=tar(layer))
    assert result.returncode == 1
    # Errors of the tar format name the input; the Windows reader's errors name the entry.
    source = "standard input: " if target != "windows" else ""
    assert result.stderr.decode() == f"ocilayer: error: {source}{message}\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello\n", "the stream is 6 bytes, shorter than one tar header (512 bytes); "
                     "it is not a tar, or it was cut short"),
        (b"not a tar at all " * 64, "header at offset 0 has an invalid checksum field "
                                   "' all not'; the stream is corrupt or not a tar"),
    ],
    ids=["short-text", "long-text"],
)  # fmt: skip
def test_not_a_tar_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    layer = tmp_path / "notes.txt"
    layer.write_bytes(content)
    result = run("apply", str(layer), str(tmp_path / "root"))
    assert result.returncode == 1
    assert result.stderr.decode() == f"ocilayer: error: {str(layer)!r}: {message}\n"
    # The target that the command created for nothing is gone again.
    assert not (tmp_path / "root").exists()


def run_failing(command: Sequence[str], stdin: bytes) -> str:
    """Run `command`, check that it exits with status 1 and return its stderr."""
    result = subprocess.run(command, input=stdin, capture_output=True, check=False)
    assert result.returncode == 1, result.stderr
    return result.stderr.decode()


def test_privilege_hint_names_the_option(shared_directory: Path) -> None:
    target = shared_directory / "root"
    target.mkdir()
    os.chown(target, 65534, 65534)
    layer = tar(directory("d/"), file("d/f", "x"))
    stderr = run_failing([*AS_NOBODY, *OCILAYER, "apply", "-", str(target)], layer)
    assert stderr == (
        "ocilayer: error: entry 'd/' (offset 0): Operation not permitted; apply as root, or "
        "use --rootless to apply no file owners and skip the xattrs that need privileges\n"
    )


def test_permission_denied_said_once(shared_directory: Path) -> None:
    target = shared_directory / "root-owned"
    target.mkdir()
    command = [*AS_NOBODY, *OCILAYER, "apply", "-", str(target), "--rootless"]
    stderr = run_failing(command, tar(file("f", "x")))
    assert stderr == (
        "ocilayer: error: entry 'f' (offset 0): Permission denied; check that this user may "
        "write to the target, or apply as root\n"
    )


def test_device_hint_names_the_option(tmp_path: Path) -> None:
    apply_command = shlex.join([*OCILAYER, "apply", "-", str(tmp_path / "root")])
    command = ["capsh", "--drop=cap_mknod", "--", "-c", f"exec {apply_command}"]
    layer = tar(entry("dev/null", b"3", mode=0o666, devmajor=1, devminor=3))
    assert run_failing(command, layer) == (
        "ocilayer: error: entry 'dev/null' (offset 0): cannot create device node "
        "'dev/null' (1:3): creating device nodes needs CAP_MKNOD; apply as root, or use "
        "--skip-devices to skip device nodes with a warning\n"
    )


def test_missing_layer_file_fails(tmp_path: Path) -> None:
    result = run("apply", str(tmp_path / "nope.tar"), str(tmp_path / "root"))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: cannot open layer tar '{tmp_path / 'nope.tar'}': "
        "No such file or directory\n"
    )
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parent", "/lower"], "--parent needs --target overlay"),
        (["--diff-id", "md5:0"], "is not a sha256:<64 lowercase hex digits> digest"),
        (["--diff-id", "sha256:00"], "'sha256:00' is not a sha256:<64 lowercase hex digits>"),
        (["--target", "zfs"], "invalid choice: 'zfs'"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("apply", "-", str(tmp_path / "root"), *args, stdin=LAYER)
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert not (tmp_path / "root").exists()


def interrupt(process: subprocess.Popen[bytes]) -> bytes:
    """Send SIGINT to a running apply, check that it exits with 130, and return its stderr."""
    assert process.poll() is None, "the apply finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    return stderr


def test_interrupt_exits_130_and_keeps_whole_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run("apply", "-", str(root), stdin=tar(file("big", "old"))).returncode == 0
    big = file("big", b"n" * (1 << 20))
    process = subprocess.Popen(
        [*OCILAYER, "apply", "-", str(root)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(big[: 512 + 4096])
    process.stdin.flush()
    time.sleep(1.0)
    stderr = interrupt(process)
    assert stderr.decode() == f"ocilayer: interrupted; {root} is partly applied, so discard it\n"
    assert listing(root) == {"big": "f 644 'old'"}
    assert os.listdir(root) == ["big"]


def test_apply_progress_on_terminal(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    status, shown = run_on_terminal([*OCILAYER, "apply", str(layer), str(tmp_path / "root")])
    assert status == 0
    final = last_line(shown)
    assert final.startswith(b"apply: 2 entries, 2.5 KiB, ")
    assert final.endswith(b"/s, 00:00")


def test_apply_target_is_a_file(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    target = tmp_path / "target"
    target.write_bytes(b"not a directory")
    result = run("apply", str(layer), str(target))
    assert result.returncode == 1
    assert result.stdout == b""
    message = result.stderr.decode()
    assert f"target '{target}' exists and is not a directory" in message
    assert "Traceback" not in message
    assert target.read_bytes() == b"not a directory"


def test_apply_target_cannot_be_created(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True
    )
    try:
        result = run("apply", str(layer), str(read_only / "target"))
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert result.returncode == 1
    assert result.stdout == b""
    message = result.stderr.decode()
    assert message == (
        f"ocilayer: error: cannot create or open the target directory "
        f"'{read_only / 'target'}': Read-only file system; the target is on a read-only "
        "filesystem\n"
    )


def test_failed_apply_keeps_a_directory_reached_through_dotdot(tmp_path: Path) -> None:
    """`missing/../existing` names a directory that existed: it is not the apply's to remove."""
    layer = tmp_path / "notes.txt"
    layer.write_bytes(b"hello\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    result = run("apply", str(layer), f"{tmp_path}/missing/../existing")
    assert result.returncode == 1
    assert existing.is_dir()
    assert not (tmp_path / "missing").exists()  # made by this apply, and empty


def test_failed_apply_removes_made_parents(tmp_path: Path) -> None:
    layer = tmp_path / "notes.txt"
    layer.write_bytes(b"hello\n")
    (tmp_path / "kept").mkdir()
    for target in ("n1/n2/n3", "kept/n2/n3"):
        result = run("apply", str(layer), str(tmp_path / target))
        assert result.returncode == 1
        assert "shorter than one tar header" in result.stderr.decode()
    assert sorted(os.listdir(tmp_path)) == ["kept", "notes.txt"]
    assert os.listdir(tmp_path / "kept") == []


def test_missing_parent_layer_leaves_no_target(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    target = tmp_path / "upper"
    result = run("apply", str(layer), str(target), "--target", "overlay",
                 "--parent", str(tmp_path / "no-such-layer"))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: parent layer directory '{tmp_path / 'no-such-layer'}' does not "
        "exist; pass the directories of the layers below the target, lowest first\n"
    )
    assert not target.exists()
    result = run("apply", str(layer), str(target), "--target", "overlay",
                 "--parent", str(layer))  # fmt: skip
    assert result.stderr.decode() == (
        f"ocilayer: error: parent layer '{layer}' is not a directory; pass a layer directory\n"
    )


def test_wrong_diff_id_removes_empty_target(tmp_path: Path) -> None:
    layer = tmp_path / "empty.tar"
    layer.write_bytes(bytes(1024))
    wrong = "sha256:" + "0" * 64
    result = run("apply", str(layer), str(tmp_path / "new"), "--diff-id", wrong)
    assert result.returncode == 1
    assert result.stderr.decode().endswith(
        "the layer is corrupt or is not the one the image names, the new target was removed\n"
    )
    assert f"expected {wrong}" in result.stderr.decode()
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    result = run("apply", str(layer), str(tmp_path / "old"), "--diff-id", wrong)
    assert result.returncode == 1
    assert result.stderr.decode().endswith("so discard the target\n")
    assert (tmp_path / "old").is_dir()


def test_interrupt_before_first_entry_removes_new_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    process = subprocess.Popen(
        [*OCILAYER, "apply", "-", str(root)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    process.stdin.write(b"\0" * 100)  # less than one header, so the apply waits for more
    process.stdin.flush()
    for _ in range(100):
        if root.exists():
            break
        time.sleep(0.05)
    time.sleep(0.3)
    stderr = interrupt(process)
    assert stderr.decode() == f"ocilayer: interrupted; {root} was not left behind\n"
    assert not root.exists()


def test_apply_target_below_a_file(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    (tmp_path / "file").write_bytes(b"x")
    result = run("apply", str(layer), str(tmp_path / "file" / "sub"))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ocilayer: error: target '{tmp_path / 'file' / 'sub'}' is not a directory, or one of "
        "its parents is a file; give a directory path to apply the layer into\n"
    )


def test_apply_with_stdout_closed(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    result = subprocess.run(
        [sys.executable, "-m", "ocilayer", "apply", str(layer), str(tmp_path / "root")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
        preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stderr == b""
    assert os.listdir(tmp_path / "root") != []


def test_apply_json_to_a_full_device(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(LAYER)
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "ocilayer", "apply", "--json", str(layer),
             str(tmp_path / "root")],
            stdout=full, stderr=subprocess.PIPE, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    # One error line, whichever write finds the device full first, and no traceback or
    # "Exception ignored" from a flush at exit.
    assert result.stderr.startswith(b"ocilayer: error: ")
    assert result.stderr.count(b"\n") == 1
    assert b"No space left on device" in result.stderr


def test_apply_truncated_gzip_names_input(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(gzip.compress(LAYER, mtime=0)[:-6])
    result = run("apply", str(layer), str(tmp_path / "root"))
    assert result.returncode == 1
    message = result.stderr.decode()
    assert f"'{layer}': gzip stream is truncated" in message
    assert "Traceback" not in message


def test_unreadable_parent_layer_blames_parent(shared_directory: Path) -> None:
    """A lower directory this user may not read is named as such, not as the target."""
    lower = shared_directory / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "d").chmod(0o000)
    work = shared_directory / "work"
    work.mkdir()
    os.chown(work, 65534, 65534)
    command = [*AS_NOBODY, *OCILAYER, "apply", "-", str(work / "upper"), "--target", "overlay",
               "--parent", str(lower), "--rootless"]  # fmt: skip
    stderr = run_failing(command, tar(whiteout("d/.wh.x")))
    assert stderr == (
        "ocilayer: error: entry 'd/.wh.x' (offset 0): cannot read 'd/x' in the parent "
        "layers: Permission denied; check that this user may read every --parent directory\n"
    )


def test_descriptor_limit_leaves_no_new_dirs(tmp_path: Path) -> None:
    """Each new directory is held open: at the descriptor limit the apply fails cleanly."""
    layer = tmp_path / "notes.txt"
    layer.write_bytes(b"hello\n")

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    result = subprocess.run(
        [*OCILAYER, "apply", str(layer), "n1/a/b/c/d/e/f/g/h"],
        capture_output=True, check=False, cwd=tmp_path, preexec_fn=set_limit,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "ocilayer: error: cannot create or open the target directory 'n1/a/b/c/d/e/f/g/h': "
        "Too many open files\n"
    )
    assert os.listdir(tmp_path) == ["notes.txt"]
