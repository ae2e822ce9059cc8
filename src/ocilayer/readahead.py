"""Read ahead: produce the items of an iterator on a worker thread, a few ahead of the consumer.

It pays only when the producer releases the GIL for most of its work, as the C
packer does while it walks directories and reads files. The consumer then hashes and
writes one run of tar data (both release the GIL too) while the worker packs the next.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar, cast

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


def read_ahead(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Yield the items of `items`, produced on a worker thread at most `depth` items ahead.

    An exception of the producer is raised in the consumer, in order. When the
    consumer stops early (an error, a cancel, `close()`), the worker stops after its
    current item and is joined before this generator finishes, so no read of the
    producer outlives it.
    """
    slots: queue.Queue[tuple[int, object]] = queue.Queue(depth)
    stopped = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                slots.put((_ITEM, item))
                if stopped.is_set():
                    return
            slots.put((_END, None))
        except BaseException as error:  # handed to the consumer, which raises it
            slots.put((_ERROR, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="ocilayer-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == _END:
                return
            if kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            yield cast(T, value)
    finally:
        stopped.set()
        # Empty the queue until the worker ends, so that a put it is blocked in returns.
        while worker.is_alive():
            try:
                while True:
                    slots.get_nowait()
            except queue.Empty:
                pass
            worker.join(0.01)
