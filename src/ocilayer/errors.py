"""The exception hierarchy. Every error carries the path or value it is about."""

from __future__ import annotations


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


class Cancelled(OcilayerError):
    """The operation was cancelled before it finished."""
