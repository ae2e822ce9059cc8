"""Real peers that check ocilayer's tars: Go's archive/tar, containerd, GNU tar and bsdtar.

Every helper runs the real tool and fails loudly. A missing tool raises
`ToolMissingError`, which names the Debian package to install. A tool that exits
non-zero or writes anything to stderr raises `AssertionError` with its output,
unless the caller allowed that exact warning.

The Go helpers under `tests/go/` are built once per process with Debian's Go
toolchain and Go sources (`GO111MODULE=off`, `GOPATH=/usr/share/gocode`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from rawtar import (
    RawEntry,
    assert_tars_equal,
    filter_entries,
    normalize_whiteout_mtimes,
    split_tar,
)
from trees import assert_trees_equal, build_tree

__all__ = [
    "GNU_TAR_OLD_TIMESTAMP",
    "GNU_TAR_TIMESTAMP_WARNINGS",
    "GNU_TAR_UNKNOWN_KEYWORD",
    "GO_PACKAGES",
    "GoHeader",
    "ToolMissingError",
    "assert_matches_containerd",
    "assert_tars_equal",
    "assert_trees_equal",
    "bsdtar_list",
    "build_go_helper",
    "build_tree",
    "containerd_write_diff",
    "gnu_tar_apply_layer",
    "gnu_tar_extract",
    "gnu_tar_list",
    "go_list",
    "go_roundtrip",
    "set_go_build_dir",
]

GOPATH = Path("/usr/share/gocode")
GO_SOURCES = Path(__file__).parent / "go"
CONTAINERD_ARCHIVE = GOPATH / "src/github.com/containerd/containerd/archive"

# Debian packages the Go helpers build from. containerd's archive package imports
# continuity, logrus, x/sys and x/sync, which the containerd package depends on.
GO_PACKAGES = (
    "golang-go",
    "golang-github-containerd-containerd-dev",
    "golang-github-containerd-continuity-dev",
    "golang-github-sirupsen-logrus-dev",
    "golang-golang-x-sys-dev",
    "golang-golang-x-sync-dev",
)


class ToolMissingError(RuntimeError):
    """A program or source tree the tests need is not installed."""

    def __init__(self, what: str, packages: Sequence[str]) -> None:
        install = "apt-get install -y " + " ".join(packages)
        super().__init__(f"{what} is not installed: run `{install}` (as root), or scripts/test")


# Go helpers.

_build_lock = threading.Lock()
_build_dir: Path | None = None
_built: dict[str, Path] = {}
_build_seconds: dict[str, float] = {}


def set_go_build_dir(path: Path) -> None:
    """Set the folder that this process builds the Go helpers into (before the first build)."""
    global _build_dir
    _build_dir = path


def go_cache_dir() -> Path:
    """Return the Go build cache: $GOCACHE, or a cache under $XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get("GOCACHE"):
        return Path(os.environ["GOCACHE"])
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    if cache_home.startswith("~"):
        cache_home = tempfile.gettempdir()
    return Path(cache_home) / "ocilayer-tests" / "go-build"


def build_go_helper(name: str) -> Path:
    """Build `tests/go/<name>` once per process and return the path of the binary."""
    global _build_dir
    with _build_lock:
        if name in _built:
            return _built[name]
        go = shutil.which("go")
        if go is None:
            raise ToolMissingError("the Go toolchain (`go`)", GO_PACKAGES[:1])
        if name == "writediff" and not CONTAINERD_ARCHIVE.is_dir():
            raise ToolMissingError(f"containerd's Go sources ({CONTAINERD_ARCHIVE})", GO_PACKAGES)
        if _build_dir is None:
            _build_dir = Path(tempfile.mkdtemp(prefix="ocilayer-go-helpers-"))
        binary = _build_dir / name
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": str(GOPATH),
            # A developer's GOFLAGS (such as -mod=vendor) would break a GOPATH build.
            "GOFLAGS": "",
            # Without cgo the build needs no C compiler, and os/user falls back to pure Go.
            "CGO_ENABLED": "0",
            "GOCACHE": str(go_cache_dir()),
        }
        started = time.monotonic()
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(binary), "."],
            cwd=GO_SOURCES / name,
            env=env,
            capture_output=True,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"go build of tests/go/{name} failed with exit status {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')}\n"
                f"The build needs these Debian packages: {' '.join(GO_PACKAGES)}"
            )
        _build_seconds[name] = time.monotonic() - started
        _built[name] = binary
        return binary


def go_build_seconds() -> dict[str, float]:
    """Return how long each Go helper built in this process took, in seconds."""
    return dict(_build_seconds)


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    stdin: bytes = b"",
    *,
    env: dict[str, str] | None = None,
    allowed_stderr: Sequence[re.Pattern[bytes]] = (),
    allowed_exit: int = 0,
) -> bytes:
    """Run a program with `stdin` and return its stdout.

    Fails on an exit status other than 0 (or `allowed_exit` when every stderr line
    matches `allowed_stderr`) and on any stderr line that no pattern allows.
    """
    result = subprocess.run(list(argv), input=stdin, capture_output=True, env=env)
    unexpected = [
        line
        for line in result.stderr.splitlines()
        if not any(pattern.fullmatch(line) for pattern in allowed_stderr)
    ]
    exit_ok = result.returncode == 0 or (
        result.returncode == allowed_exit and result.stderr and not unexpected
    )
    if unexpected or not exit_ok:
        command = " ".join(os.fspath(arg) for arg in argv)
        raise AssertionError(
            f"`{command}` exited with status {result.returncode} and wrote to stderr:\n"
            + result.stderr.decode(errors="replace")
        )
    return result.stdout


def go_roundtrip(tar_bytes: bytes) -> bytes:
    """Read a tar with Go's archive/tar and return what Go's writer writes for the same headers.

    Equal bytes in and out mean every header is encoded exactly as Go encodes it.
    """
    return run_tool([build_go_helper("tarcopy")], tar_bytes)


class GoHeader(TypedDict):
    """One header as Go's `tar.Reader` returns it (from `tarcopy -list`).

    `mtime_ns` is Go's `ModTime.UnixNano()`, valid for the years 1678 to 2262.
    `format` is Go's `tar.Format` string, such as "USTAR" or "PAX".
    """

    name: bytes
    linkname: bytes
    typeflag: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    devmajor: int
    devminor: int
    format: str
    pax: dict[str, bytes]


def _decode_go_bytes(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def go_list(tar_bytes: bytes) -> list[GoHeader]:
    """Return every header as Go's archive/tar reads it, PAX records merged in."""
    output = run_tool([build_go_helper("tarcopy"), "-list"], tar_bytes)
    headers: list[GoHeader] = []
    for line in output.splitlines():
        item = json.loads(line)
        headers.append(
            GoHeader(
                name=_decode_go_bytes(item["name"]),
                linkname=_decode_go_bytes(item["linkname"]),
                typeflag=item["typeflag"],
                mode=item["mode"],
                uid=item["uid"],
                gid=item["gid"],
                size=item["size"],
                mtime_ns=item["mtime_ns"],
                devmajor=item["devmajor"],
                devminor=item["devminor"],
                format=item["format"],
                pax={key: _decode_go_bytes(value) for key, value in item["pax"].items()},
            )
        )
    return headers


def containerd_write_diff(lower: Path | None, upper: Path, *, normalize: bool = True) -> bytes:
    """Return the layer tar that containerd's `archive.WriteDiff(lower, upper)` writes.

    `lower=None` gives containerd's base layer (a single walk of `upper`). containerd
    1.6 stamps each whiteout with the time the writer was created, where ocilayer and
    containerd 2.x write 0. With `normalize` (the default) those mtimes are checked to
    lie within this call and set to 0, the only field the comparison may ignore.
    """
    started = time.time()
    tar_bytes = run_tool([build_go_helper("writediff"), os.fspath(lower or ""), os.fspath(upper)])
    finished = time.time()
    if not normalize:
        return tar_bytes
    # Go rounds an unformatted header's mtime to the nearest second.
    return normalize_whiteout_mtimes(tar_bytes, int(started) - 1, int(finished) + 1)


def assert_matches_containerd(tar_bytes: bytes, lower: Path | None, upper: Path) -> None:
    """Assert that a layer tar equals containerd's WriteDiff output byte for byte.

    Whiteout mtimes are the only exception: containerd 1.6 writes the current time.
    """
    assert_tars_equal(tar_bytes, containerd_write_diff(lower, upper), "ocilayer", "containerd")


# GNU tar and bsdtar.

# GNU tar warns when it extracts an mtime before 1970 or after the current time, and
# when it lists or extracts a PAX key it does not know (MSWINDOWS.*, LIBARCHIVE.*).
GNU_TAR_OLD_TIMESTAMP = re.compile(rb"(.*/)?tar: .*: implausibly old time stamp .*")
GNU_TAR_FUTURE_TIMESTAMP = re.compile(rb"(.*/)?tar: .*: time stamp .* s in the future")
GNU_TAR_TIMESTAMP_WARNINGS = (GNU_TAR_OLD_TIMESTAMP, GNU_TAR_FUTURE_TIMESTAMP)
GNU_TAR_UNKNOWN_KEYWORD = re.compile(
    rb"(.*/)?tar: Ignoring unknown extended header keyword '[^']*'"
)

_ESCAPES = {b"a": 7, b"b": 8, b"f": 12, b"n": 10, b"r": 13, b"t": 9, b"v": 11}
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.DOTALL)


def unescape_listing_name(line: bytes) -> bytes:
    """Decode a name as GNU tar (`--quoting-style=escape`) and bsdtar print it."""

    def replace(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8)])
        return bytes([_ESCAPES[code]]) if code in _ESCAPES else code

    return _ESCAPE.sub(replace, line)


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ToolMissingError(f"`{program}`", [package])
    return path


def _gnu_tar() -> str:
    tar = _require("tar", "tar")
    version = subprocess.run([tar, "--version"], capture_output=True, check=True).stdout
    if b"GNU tar" not in version:
        raise ToolMissingError(f"GNU tar (`{tar}` is not GNU tar)", ["tar"])
    return tar


def _c_locale(name: str = "C") -> dict[str, str]:
    return {**os.environ, "LC_ALL": name, "LANG": name}


def gnu_tar_list(
    tar_bytes: bytes, *, allowed_warnings: Sequence[re.Pattern[bytes]] = ()
) -> list[bytes]:
    """Return the entry names GNU tar lists, failing on any error or warning.

    `allowed_warnings` lists the warnings to accept, for example
    `GNU_TAR_UNKNOWN_KEYWORD` for Windows layers, whose PAX keys GNU tar does not know.
    """
    argv = [_gnu_tar(), "--list", "--file=-", "--quoting-style=escape"]
    output = run_tool(argv, tar_bytes, env=_c_locale(), allowed_stderr=allowed_warnings)
    return [unescape_listing_name(line) for line in output.splitlines()]


def _non_utf8_names(tar_bytes: bytes) -> tuple[int, int]:
    """Count the "Pathname" and "Linkname" conversion warnings bsdtar gives for a tar.

    libarchive converts PAX names from UTF-8 to the locale's charset and warns once per
    header whose path name, or else whose link name, is not valid UTF-8, although Go
    writes such names as raw bytes.
    """

    def invalid(value: bytes) -> bool:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    entries = split_tar(tar_bytes).entries
    bad_names = sum(invalid(entry.name) for entry in entries)
    bad_links = sum(invalid(entry.linkname) and not invalid(entry.name) for entry in entries)
    return bad_names, bad_links


def bsdtar_list(tar_bytes: bytes) -> list[bytes]:
    """Return the entry names bsdtar (libarchive) lists, failing on any warning or error.

    The one tolerated warning is libarchive's "can't be converted from UTF-8", exactly
    once for each entry whose path name or link name is not valid UTF-8.
    """
    bsdtar = _require("bsdtar", "libarchive-tools")
    result = subprocess.run(
        [bsdtar, "-t", "-f", "-"], input=tar_bytes, capture_output=True, env=_c_locale("C.UTF-8")
    )
    expected_stderr: list[bytes] = []
    expected_status = 0
    if result.stderr:
        try:
            bad_names, bad_links = _non_utf8_names(tar_bytes)
        except ValueError:
            bad_names = bad_links = 0
        expected_stderr = [
            b"bsdtar: Pathname can't be converted from UTF-8 to current locale."
        ] * bad_names + [
            b"bsdtar: Linkname can't be converted from UTF-8 to current locale."
        ] * bad_links
        if expected_stderr:
            expected_stderr.append(b"bsdtar: Error exit delayed from previous errors.")
            expected_status = 1
    stderr = result.stderr.splitlines()
    if sorted(stderr) != sorted(expected_stderr) or result.returncode != expected_status:
        raise AssertionError(
            f"bsdtar -t exited with status {result.returncode} (expected {expected_status}) "
            f"and wrote to stderr:\n{result.stderr.decode(errors='replace')}"
        )
    return [unescape_listing_name(line) for line in result.stdout.splitlines()]


_GNU_TAR_EXTRACT_OPTIONS = (
    "--extract",
    "--file=-",
    "--numeric-owner",
    "--same-owner",
    "--same-permissions",
    "--xattrs",
    "--xattrs-include=*",
)


def gnu_tar_extract(
    tar_bytes: bytes, dest: Path, *, allowed_warnings: Sequence[re.Pattern[bytes]] = ()
) -> None:
    """Extract a tar into `dest` with GNU tar as root would: owners, modes, all xattrs.

    Fails on any stderr line that no pattern of `allowed_warnings` matches, for
    example `GNU_TAR_TIMESTAMP_WARNINGS` for trees with mtimes before 1970 or in the
    future.
    """
    dest.mkdir(parents=True, exist_ok=True)
    argv = [_gnu_tar(), *_GNU_TAR_EXTRACT_OPTIONS, f"--directory={dest}"]
    run_tool(argv, tar_bytes, env=_c_locale(), allowed_stderr=allowed_warnings)


def gnu_tar_apply_layer(
    tar_bytes: bytes, dest: Path, *, allowed_warnings: Sequence[re.Pattern[bytes]] = ()
) -> None:
    """Apply a layer tar onto the tree at `dest` the way an OCI runtime applies it.

    GNU tar does not process whiteouts and merges into what exists, so two steps come
    first. Whiteouts are applied: `.wh.NAME` removes NAME, which must exist, and
    `.wh..wh..opq` empties its directory. Then every existing path that an entry
    replaces is removed, unless both are directories. GNU tar extracts the rest and
    sets the attributes of merged directories from their entries; one GNU tar habit
    is undone afterwards (see `_clear_inherited_setgid`).
    """
    base = dest.resolve()
    entries = split_tar(tar_bytes).entries
    for entry in entries:
        if not entry.is_whiteout:
            continue
        directory, _, basename = entry.name.rpartition(b"/")
        parent = _inside(base, directory, entry.name)
        if basename == b".wh..wh..opq":
            for child in parent.iterdir():
                _remove(child)
            continue
        target = parent / os.fsdecode(basename[len(b".wh.") :])
        if not target.is_symlink() and not target.exists():
            raise AssertionError(f"whiteout {entry.name!r} names a path missing in {dest}")
        _remove(target)
    for entry in entries:
        if entry.is_whiteout:
            continue
        directory, _, basename = entry.name.rstrip(b"/").rpartition(b"/")
        target = _inside(base, directory, entry.name) / os.fsdecode(basename)
        merged = entry.typeflag == b"5" and target.is_dir() and not target.is_symlink()
        if not merged and (target.is_symlink() or target.exists()):
            _remove(target)
    kept = filter_entries(tar_bytes, lambda entry: not entry.is_whiteout)
    gnu_tar_extract(kept, dest, allowed_warnings=allowed_warnings)
    _clear_inherited_setgid(base, entries)


def _clear_inherited_setgid(base: Path, entries: list[RawEntry]) -> None:
    """Remove the set-group-ID bit that GNU tar leaves on directories against their entry.

    A directory made inside a set-group-ID directory inherits the bit, and GNU tar 1.34
    keeps it although the entry's mode lacks it. The parent can have its final mode
    before the entry is extracted, because a diff lists the hardlinks to a new file
    right after the file, out of walk order. containerd's apply sets the mode as given.
    """
    for entry in entries:
        if entry.typeflag != b"5" or entry.mode & stat.S_ISGID:
            continue
        target = base / os.fsdecode(entry.name.rstrip(b"/"))
        mode = stat.S_IMODE(target.lstat().st_mode)
        if mode == entry.mode | stat.S_ISGID:
            os.chmod(target, entry.mode)


def _inside(base: Path, directory: bytes, entry_name: bytes) -> Path:
    """Return `base/directory`, failing if a symlink would lead the entry out of `base`."""
    parent = base / os.fsdecode(directory)
    if directory and parent.exists() and parent.resolve() != parent:
        raise AssertionError(f"entry {entry_name!r} lies below a symlink in {base}")
    return parent


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
