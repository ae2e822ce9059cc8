"""The reader thread that runs a layer reader ahead of the tar writer."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ocilayer.prefetch import prefetch


def test_order_and_count_kept() -> None:
    assert list(prefetch(iter(range(1000)))) == list(range(1000))


def test_empty_input() -> None:
    assert list(prefetch(iter([]))) == []


def test_producer_error_raised_in_consumer() -> None:
    def failing() -> Iterator[int]:
        yield from range(100)
        raise OSError("disk went away")

    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetch(failing()):
            seen.append(item)
    assert seen == list(range(100))


def test_early_stop_ends_producer() -> None:
    produced = []

    def endless() -> Iterator[int]:
        number = 0
        while True:
            produced.append(number)
            yield number
            number += 1

    stream = prefetch(endless())
    assert next(stream) == 0
    stream.close()
    assert all(t.name != "ocilayer-reader" for t in threading.enumerate())
    # The producer stopped within a few batches of what the queue can hold.
    assert len(produced) < 64 * 8
