"""`ocilayer export`: write a layer directory as an OCI layer tar."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from ocilayer.compression import Compression
from ocilayer.errors import OutputError
from ocilayer.progress import Progress
from ocilayer.sink import open_output
from ocilayer.xattrs import XattrPolicy

STDOUT = "-"
# More compression threads than this only cost memory and start-up time.
MAX_THREADS = 256
# SOURCE_DATE_EPOCH values that every tar reader can hold: 0 to the end of year 9999.
MAX_EPOCH = 253_402_300_799


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a layer directory as an OCI layer tar",
        description=(
            "Write LAYER as an OCI layer tar. Without --parent every file of LAYER is an "
            "addition (a base layer); with parents, the layer holds the changes from the "
            "parents merged lowest first to LAYER, with whiteouts for deleted paths."
        ),
    )
    parser.add_argument(
        "layer",
        metavar="LAYER",
        help="directory holding the full layer tree (with --source tar: a layer tar, '-' "
        "for stdin)",
    )
    parser.add_argument(
        "--parent",
        action="append",
        default=[],
        metavar="DIR",
        help="a parent layer directory; repeat for each parent, lowest first",
    )
    parser.add_argument(
        "--source",
        choices=["snapshot", "overlay", "auto", "tar", "windows"],
        default="snapshot",
        help="what LAYER is: snapshot (default; a full tree, diffed against the parents), "
        "overlay (an overlayfs upper directory over the parents), auto (overlay when "
        "LAYER holds whiteout devices or overlay xattrs, else snapshot) or tar (a layer "
        "tar to rewrite: recompress, normalise, or move under --prefix) or windows (a "
        "Windows layer folder: a transport folder as vmcompute's ExportLayer writes it, or "
        "a base layer folder; on a Windows host, a layer of the container storage, diffed "
        "against --parent by the Host Compute Service)",
    )
    parser.add_argument(
        "--os",
        choices=["linux", "windows"],
        default="linux",
        help="layout of the output: linux (default) or windows, which converts a plain "
        "Linux tree (or, with --source tar, a layer tar) into a Windows layer: entries "
        "under Files/, an empty Hives/, and a default security descriptor on every entry",
    )
    parser.add_argument(
        "--prefix",
        default="",
        metavar="DIR",
        help="with --source tar: move every entry, and every hardlink target, under DIR",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=STDOUT,
        metavar="FILE",
        help="where to write the layer; '-' (the default) is stdout. A file is written "
        "under a temporary name and renamed when complete",
    )
    parser.add_argument(
        "--compression",
        choices=[c.value for c in Compression],
        help="codec of the output (default: from the output name: .tar.gz or .tgz gzip, "
        ".tar.zst zstd, anything else and stdout none)",
    )
    parser.add_argument(
        "--level",
        type=int,
        metavar="N",
        help="compression level: gzip 0-9 (default 6), zstd 1-19 (default 3)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="compression threads (default 0: one per CPU)",
    )
    parser.add_argument(
        "--source-date-epoch",
        type=int,
        metavar="SECONDS",
        help="clamp file times later than this Unix time down to it (default: the "
        "SOURCE_DATE_EPOCH environment variable, if set)",
    )
    parser.add_argument(
        "--keep-nanoseconds",
        action="store_true",
        help="keep sub-second file times (as PAX records) instead of cutting them to seconds",
    )
    parser.add_argument(
        "--xattrs",
        choices=[p.value for p in XattrPolicy],
        default=XattrPolicy.ALL.value,
        help="extended attributes to carry: all (default; host-specific ones such as "
        "security.selinux and overlay.* are never carried), capability (only "
        "security.capability, as containerd does) or none",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="export only this path of the layer and what is below it; repeatable",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the OCI descriptor (mediaType, digest, size) and diffID as JSON on stdout",
    )
    parser.set_defaults(run=run)


def _source_date_epoch(args: argparse.Namespace) -> int | None:
    from ocilayer.cli import UsageError

    if args.source_date_epoch is not None:
        epoch = int(args.source_date_epoch)
        where = "--source-date-epoch"
    else:
        text = os.environ.get("SOURCE_DATE_EPOCH", "")
        if not text:
            return None
        try:
            epoch = int(text)
        except ValueError:
            raise UsageError(
                f"SOURCE_DATE_EPOCH={text!r} is not a whole number of seconds; fix or unset it"
            ) from None
        where = "SOURCE_DATE_EPOCH"
    if not 0 <= epoch <= MAX_EPOCH:
        raise UsageError(f"{where} {epoch} is out of range; use 0-{MAX_EPOCH} (Unix seconds)")
    return epoch


@contextlib.contextmanager
def _open_output(target: str) -> Iterator[BinaryIO]:
    if target == STDOUT:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with open_output(target) as raw:
            yield raw


# Suffixes of codecs that OCI layers do not use. A plain tar under such a name
# would mislead the next reader of the file.
_UNSUPPORTED_SUFFIXES = (".bz2", ".tbz2", ".xz", ".txz", ".lz4", ".lzma", ".lz", ".br")


def _check_output_name(output: str) -> None:
    """Reject an output name whose suffix names a codec that OCI layers do not use."""
    from ocilayer.cli import UsageError

    if output.lower().endswith(_UNSUPPORTED_SUFFIXES):
        raise UsageError(
            f"-o {output!r}: OCI layers are plain, gzip or zstd; name the file .tar, "
            ".tar.gz or .tar.zst, or choose a codec with --compression"
        )


def _check_output_place(output: str) -> None:
    """Reject an output that is a directory, or whose directory is missing."""
    from ocilayer.cli import UsageError

    directory = os.path.dirname(os.path.abspath(output))
    # A missing path, like a missing layer directory, fails the run (status 1): the
    # command line itself is right.
    try:
        is_directory = stat.S_ISDIR(os.stat(directory).st_mode)
    except FileNotFoundError:
        raise OutputError(
            f"-o {output!r}: directory {directory!r} does not exist; create it first"
        ) from None
    except NotADirectoryError:
        is_directory = False
    except OSError as error:
        raise OutputError(
            f"-o {output!r}: cannot reach directory {directory!r}: {error.strerror or error}"
        ) from None
    if not is_directory:
        raise OutputError(f"-o {output!r}: {directory!r} is not a directory")
    if os.path.isdir(output):
        raise UsageError(f"-o {output!r} is a directory; give the path of the file to write")


def _check_output_outside(output: str, layers: list[str]) -> None:
    """Reject an output file inside a layer directory: the export would read it back in."""
    from ocilayer.cli import UsageError

    target = os.path.realpath(output)
    for layer in layers:
        root = os.path.realpath(layer)
        if os.path.isdir(root) and target.startswith(root.rstrip("/") + "/"):
            raise UsageError(
                f"-o {output!r} is inside the layer directory {layer!r}; write the layer "
                "somewhere else"
            )


def run(args: argparse.Namespace) -> int:
    from ocilayer.cli import EXIT_OK, UsageError

    to_stdout = args.output == STDOUT
    if to_stdout and args.json:
        raise UsageError("--json prints to stdout, so it needs -o FILE for the layer")
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal; use -o FILE or a pipe")
    if not 0 <= args.threads <= MAX_THREADS:
        raise UsageError(
            f"--threads {args.threads} is out of range; use 1-{MAX_THREADS}, or 0 for one per CPU"
        )
    if not to_stdout:
        _check_output_place(args.output)
        _check_output_outside(args.output, [args.layer, *args.parent])
    if args.compression is not None:
        compression = Compression(args.compression)
    elif to_stdout:
        compression = Compression.NONE
    else:
        _check_output_name(args.output)
        compression = Compression.from_filename(args.output)
    if args.level is not None and args.level not in compression.levels:
        levels = compression.levels
        raise UsageError(
            f"--level {args.level} is not valid for {compression.value}: "
            f"use {levels.start}-{levels.stop - 1}"
        )
    if args.prefix and args.source != "tar":
        raise UsageError("--prefix needs --source tar")
    if args.source == "tar" and args.layer == STDOUT:
        args.layer = "/dev/stdin"
    if args.source == "windows" or args.os == "windows":
        return _run_windows(args, compression)
    epoch = _source_date_epoch(args)
    include = [os.fsencode(path) for path in args.include]

    # Imported here, so that the apply command does not load the export pipeline.
    from ocilayer.export import export_layer_to_tar

    progress = Progress.on_terminal("export", quiet=args.quiet)
    with _open_output(args.output) as raw:
        descriptor = export_layer_to_tar(
            raw,
            args.layer,
            args.parent,
            compression=compression,
            level=args.level,
            threads=args.threads,
            source_date_epoch=epoch,
            keep_nanoseconds=args.keep_nanoseconds,
            xattrs=XattrPolicy(args.xattrs),
            include=include,
            source=args.source,
            prefix=os.fsencode(args.prefix),
            progress=progress,
            # Only --json shows the digests, and sha256 is a large part of the CPU time.
            digests=args.json,
        )
    if progress is not None:
        progress.finish()
    if args.json:
        import json  # loaded only for --json

        print(json.dumps(descriptor.to_json(), indent=2))
    return EXIT_OK


def _run_windows(args: argparse.Namespace, compression: Compression) -> int:
    """Export a Windows layer folder, or convert a Linux layer to the Windows layout."""
    from ocilayer.cli import EXIT_OK, UsageError
    from ocilayer.windows import convert_to_windows, export_windows_layer

    if args.prefix or args.include or args.keep_nanoseconds:
        raise UsageError("--prefix, --include and --keep-nanoseconds do not apply to Windows")
    if args.os == "windows" and args.source not in ("snapshot", "tar"):
        raise UsageError("--os windows converts a tree or, with --source tar, a layer tar")
    if args.os == "windows" and args.parent:
        raise UsageError("--os windows converts a whole tree; --parent does not apply")
    if args.os == "windows" and args.source == "snapshot":
        from ocilayer.sources.snapshot import _directory

        _directory(args.layer)  # a tree; a layer tar needs --source tar (see --help)

    with _open_output(args.output) as raw:
        if args.source == "windows":
            descriptor = export_windows_layer(
                raw,
                args.layer,
                args.parent,
                compression=compression,
                level=args.level,
                threads=args.threads,
                digests=args.json,
            )
        else:
            descriptor = convert_to_windows(
                raw,
                args.layer,
                compression=compression,
                level=args.level,
                threads=args.threads,
                digests=args.json,
            )
    if args.json:
        import json  # loaded only for --json

        print(json.dumps(descriptor.to_json(), indent=2))
    return EXIT_OK
