"""The exception hierarchy. Every error carries the path or value it is about."""

from __future__ import annotations

import os


class OcilayerError(Exception):
    """Base class of every error ocilayer raises on purpose."""


class LayerError(OcilayerError):
    """A layer on disk cannot be read as asked (missing, wrong type, unsupported)."""


class TarFormatError(OcilayerError):
    """A header cannot be encoded, or a tar stream is malformed."""


class UnsafePathError(OcilayerError):
    """An entry would write outside the target root, or has an invalid name."""


class OutputError(OcilayerError):
    """Writing the layer to its destination failed (disk full, closed pipe, ...)."""


def layer_write_error(error: OSError) -> OutputError:
    """Return the error for a failed write of the layer to its destination."""
    if isinstance(error, BrokenPipeError):
        return OutputError("cannot write the layer: the reading end of the pipe closed")
    return OutputError(f"cannot write the layer: {error.strerror or error}")


class Cancelled(OcilayerError):
    """The operation was cancelled before it finished."""


# Bytes of a name or value that a message shows before it cuts the rest.
MAX_SHOWN = 200


def show(value: bytes, limit: int = MAX_SHOWN) -> str:
    """Return `value` quoted for a message: UTF-8 text as it is, anything else escaped.

    A tar name or record is raw bytes from a file that may be hostile. Bytes that are
    not UTF-8 become `\\xNN`. Control characters, quotes and backslashes are escaped
    as in Python, so a message never carries a terminal escape sequence. A value
    longer than `limit` bytes is cut, and its length given.
    """
    text = value[:limit].decode("utf-8", "surrogateescape")
    if text.isprintable() and "'" not in text and "\\" not in text:
        quoted = text
    else:
        quoted = "".join(_escape(char) for char in text)
    if len(value) > limit:
        return f"'{quoted}'... ({len(value)} bytes)"
    return f"'{quoted}'"


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8, kept by surrogateescape
        return f"\\x{ord(char) - 0xDC00:02x}"
    if char == "'":
        return "\\'"
    if char.isprintable() and char != "\\":
        return char
    return repr(char)[1:-1]


def reason(error: OSError, path: bytes | str | None = None) -> str:
    """Return what went wrong in `error`, with its file name shown when it is not `path`.

    `str(error)` would give the file name as a Python repr, bytes and all.
    """
    if not error.strerror:
        return str(error)
    name = error.filename
    if name is None or isinstance(name, int) or os.fsencode(name) == os.fsencode(path or b""):
        return error.strerror
    return f"{error.strerror}: {show(os.fsencode(name))}"
