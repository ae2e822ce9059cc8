"""One path of a Windows layer as the layer readers yield it, before it becomes tar entries."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from ocilayer.windows.fileinfo import FileBasicInfo
from ocilayer.windows.hostfiles import LinkInfo

StreamOpener = Callable[[], contextlib.AbstractContextManager[BinaryIO]]


@dataclass(frozen=True, slots=True)
class LayerItem:
    """A path of a layer: its name, size, FILE_BASIC_INFO and backup stream.

    `name` is relative to the layer root with `\\` separators. A deleted path
    (a tombstone) has `info` None and nothing else. `seekable` selects go-winio's
    two-pass reading of the backup stream, which starts at `origin` in the opened
    file. `link` identifies the file for hardlink grouping.
    """

    name: str
    size: int = 0
    info: FileBasicInfo | None = None
    link: LinkInfo | None = None
    open_stream: StreamOpener | None = None
    seekable: bool = False
    origin: int = 0
