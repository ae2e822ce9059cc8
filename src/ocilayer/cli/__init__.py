"""The `ocilayer` command line: one module per subcommand, errors on stderr, data on stdout.

Exit status: 0 on success, 1 when the operation failed, 2 on a usage error, 130 when
interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ocilayer import __version__, logs
from ocilayer.errors import Cancelled, OcilayerError

log = logs.get_logger("ocilayer")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Arguments that parse but do not make sense together; exits with status 2."""


Runner = Callable[[argparse.Namespace], int]

# Each subcommand module has add_parser(subparsers) and run(args) -> int.
SUBCOMMANDS = ["ocilayer.cli.export_command", "ocilayer.cli.apply_command"]


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, with the terminal width found without importing shutil.

    argparse makes a formatter for every option it adds, and without a width the
    formatter imports shutil (with bz2, lzma and zlib) to ask for the terminal size.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # the margin argparse leaves
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """Return the width shutil.get_terminal_size gives: $COLUMNS, stdout's terminal, or 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocilayer",
        description="Turn container filesystem layers into OCI layer tar streams, and back.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocilayer {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show debug messages and a traceback on errors"
    )
    # --debug is accepted after the subcommand too; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False, formatter_class=_HelpFormatter)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show debug messages and a traceback on errors")  # fmt: skip
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="show no progress line (it is shown only when stderr is a terminal)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(_WithParents(subparsers, common))
    return parser


class _WithParents:
    """Pass shared options to every subcommand parser that a module adds."""

    def __init__(self, subparsers: Any, common: argparse.ArgumentParser) -> None:
        self._subparsers = subparsers
        self._common = common

    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:
        options.setdefault("parents", []).append(self._common)
        options.setdefault("formatter_class", _HelpFormatter)
        sub: argparse.ArgumentParser = self._subparsers.add_parser(name, **options)
        # Usage errors found after parsing print this subcommand's usage line.
        sub.set_defaults(subparser=sub)
        return sub


def _configure_logging(debug: bool) -> None:
    level = logs.DEBUG if debug else logs.INFO
    logs.configure(level, "ocilayer: %(levelname)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # parse_args would report them with the top-level usage, not the subcommand's.
        getattr(args, "subparser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_logging(args.debug)
    try:
        return _run(parser, args)
    finally:
        logs.unconfigure()


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    runner: Runner = args.run
    try:
        return runner(args)
    except UsageError as error:
        getattr(args, "subparser", parser).print_usage(sys.stderr)
        print(f"ocilayer: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Cancelled):
        print("ocilayer: interrupted; no output was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OcilayerError, OSError) as error:
        if args.debug:
            log.exception("failed")
        print(f"ocilayer: error: {error}", file=sys.stderr)
        return EXIT_FAILURE


def entry_point() -> None:
    try:
        status = main()
    except KeyboardInterrupt:
        # Ctrl-C while the modules load, before any output exists.
        print("ocilayer: interrupted; no output was left behind", file=sys.stderr)
        status = EXIT_INTERRUPTED
    # main() has closed every file it opened, so after the standard streams are
    # flushed, the interpreter's teardown only frees memory: about 15 ms after a zstd
    # export of the benchmark rootfs. os._exit skips it.
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed when the command started (`>&-`)
            continue
        try:
            stream.flush()
        except OSError as error:
            if status == EXIT_OK and stream is sys.stdout and sys.stderr is not None:
                with contextlib.suppress(OSError):
                    print(f"ocilayer: error: cannot write to standard output: "
                          f"{error.strerror or error}", file=sys.stderr)  # fmt: skip
            status = status or EXIT_FAILURE
    os._exit(status)
