"""read_ahead: order, errors in order, and a worker that ends with its consumer."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ocilayer.readahead import read_ahead


def _worker_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ocilayer-read-ahead"]


def test_read_ahead_keeps_order() -> None:
    assert list(read_ahead(range(1000), depth=3)) == list(range(1000))
    assert _worker_threads() == []


def test_read_ahead_empty() -> None:
    assert list(read_ahead([])) == []


def test_read_ahead_runs_producer_on_worker() -> None:
    seen: list[str] = []

    def produce() -> Iterator[int]:
        seen.append(threading.current_thread().name)
        yield 1

    assert list(read_ahead(produce())) == [1]
    assert seen == ["ocilayer-read-ahead"]


def test_read_ahead_raises_error_after_items() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError(5, "boom")

    got: list[int] = []
    with pytest.raises(OSError, match="boom"):
        for item in read_ahead(produce(), depth=1):
            got.append(item)
    assert got == [1, 2]
    assert _worker_threads() == []


def test_read_ahead_close_stops_producer() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def produce() -> Iterator[int]:
        try:
            for number in range(10_000):
                produced.append(number)
                yield number
        finally:
            closed.set()

    items = read_ahead(produce(), depth=2)
    assert next(items) == 0
    items.close()
    # The worker was joined: it produced at most the queue depth and a few more, then
    # closed the source generator.
    assert closed.is_set()
    assert len(produced) < 10
    assert _worker_threads() == []


def test_read_ahead_consumer_error_stops_producer() -> None:
    closed = threading.Event()

    def produce() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="consumer failed"):
        for item in read_ahead(produce(), depth=2):
            if item == 5:
                raise RuntimeError("consumer failed")
    assert closed.is_set()
    assert _worker_threads() == []


def test_read_ahead_keyboard_interrupt_in_producer() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(read_ahead(produce()))
