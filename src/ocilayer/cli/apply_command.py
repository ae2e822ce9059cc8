"""`ocilayer apply`: apply a layer tar to a root filesystem or an overlay upper directory."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from ocilayer.compression import CompressionError
from ocilayer.errors import Cancelled, LayerError, TarFormatError
from ocilayer.progress import Progress

STDIN = "-"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="apply a layer tar to a directory",
        description=(
            "Apply LAYER_TAR (plain, gzip or zstd, detected from its first bytes) to "
            "TARGET. A rootfs target holds the lower layers already, so whiteouts delete "
            "from it; an overlay target is an overlayfs upper directory, where whiteouts "
            "become whiteout devices and opaque xattrs. Nothing is ever written outside "
            "TARGET: names that climb out with '..' are rejected, and symlinks that point "
            "out are followed inside TARGET. If the apply fails or is interrupted, TARGET "
            "is partly applied and should be discarded."
        ),
    )
    parser.add_argument("layer", metavar="LAYER_TAR", help="the layer tar; '-' for stdin")
    parser.add_argument(
        "target", metavar="TARGET", help="the directory to apply to; created if it does not exist"
    )
    parser.add_argument(
        "--target",
        dest="kind",
        choices=["rootfs", "overlay", "windows"],
        default="rootfs",
        help="what TARGET is: rootfs (default; a tree holding the lower layers), overlay "
        "(an overlayfs upper directory, with the lower layers given by --parent) or windows "
        "(a new Windows transport folder, the layout vmcompute's ImportLayer reads; TARGET "
        "must not exist or be empty)",
    )
    parser.add_argument(
        "--parent",
        action="append",
        default=[],
        metavar="LOWER",
        help="with --target overlay: a lower layer directory; repeat for each, lowest "
        "first. Without any, every whiteout of the layer is written, since nothing shows "
        "that it hides nothing",
    )
    parser.add_argument(
        "--rootless",
        action="store_true",
        help="apply no file owners, skip xattrs that need privileges, and write overlay "
        "whiteouts and opaque markers as user.overlay.* xattrs",
    )
    parser.add_argument(
        "--skip-devices",
        action="store_true",
        help="skip device nodes that cannot be created without CAP_MKNOD, with a warning, "
        "instead of failing",
    )
    parser.add_argument(
        "--diff-id",
        metavar="DIGEST",
        help="fail unless the uncompressed tar stream has this digest (sha256:<hex>)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=(
            "print the diffID, the compression and the bytes of file data written "
            "(size) as JSON on stdout"
        ),
    )
    parser.set_defaults(run=run)


@contextlib.contextmanager
def _open_layer(name: str) -> Iterator[BinaryIO]:
    if name == STDIN:
        yield sys.stdin.buffer
    else:
        try:
            layer = open(name, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as error:
            raise LayerError(f"cannot open layer tar {name!r}: {error.strerror}") from None
        with layer:
            yield layer


def run(args: argparse.Namespace) -> int:
    from ocilayer.cli import EXIT_INTERRUPTED, EXIT_OK, UsageError

    if args.parent and args.kind != "overlay":
        raise UsageError(
            "--parent needs --target overlay, because a rootfs target already contains "
            "its lower layers"
        )
    if args.layer == STDIN and sys.stdin.isatty():
        raise UsageError("refusing to read a tar from a terminal; give a file or a pipe")
    if args.diff_id is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", args.diff_id):
        raise UsageError(
            f"--diff-id {args.diff_id!r} is not a sha256:<64 lowercase hex digits> digest"
        )

    if args.kind == "windows":
        return _run_windows(args)
    # Imported here, so that the other commands do not load the applier.
    from ocilayer.apply import ApplyError, import_layer_from_tar
    from ocilayer.apply.errors import ApplyInterrupted

    progress = Progress.on_terminal("apply", quiet=args.quiet)
    try:
        with _open_layer(args.layer) as layer:
            result = import_layer_from_tar(
                layer,
                args.target,
                args.parent,
                target=args.kind,
                rootless=args.rootless,
                skip_devices=args.skip_devices,
                expected_diff_id=args.diff_id,
                progress=progress,
                # sha256 is a large part of the CPU time; compute it only when used.
                digest=args.json or args.diff_id is not None,
            )
        if progress is not None:
            progress.finish()
    except ApplyInterrupted as interrupted:
        if interrupted.target_removed:
            message = f"{args.target} was not left behind"
        else:
            message = f"{args.target} is partly applied, so discard it"
        print(f"ocilayer: interrupted; {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (KeyboardInterrupt, Cancelled):
        # Outside the apply itself: before it touched the target, or after it finished.
        print(f"ocilayer: interrupted; check {args.target} or discard it", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ApplyError as error:
        # The library's hint names parameters (rootless=True); name the options instead.
        raise ApplyError(error.cli_message(), error.entry, error.offset) from error
    except (TarFormatError, CompressionError) as error:
        source = "standard input" if args.layer == STDIN else repr(args.layer)
        raise type(error)(f"{source}: {error}") from error
    if args.json:
        import json  # loaded only for --json

        report = {
            "diffID": result.diff_id,
            "compression": result.compression.value,
            "size": result.size,
        }
        print(json.dumps(report, indent=2))
    return EXIT_OK


def _run_windows(args: argparse.Namespace) -> int:
    """Write a Windows layer tar into a new transport folder."""
    from ocilayer.cli import EXIT_INTERRUPTED, EXIT_OK, UsageError
    from ocilayer.windows import import_windows_layer

    if args.rootless or args.skip_devices or args.diff_id is not None:
        raise UsageError(
            "--rootless, --skip-devices and --diff-id do not apply to --target windows"
        )
    try:
        with _open_layer(args.layer) as layer:
            size = import_windows_layer(layer, args.target)
    except (KeyboardInterrupt, Cancelled):
        print(f"ocilayer: interrupted; nothing was left in {args.target}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        import json  # loaded only for --json

        print(json.dumps({"size": size}, indent=2))
    return EXIT_OK
