"""Run a layer reader one step ahead of the tar writer, on its own thread.

Reading a layer is mostly system calls (lstat, listxattr, open, read), which release
the GIL, and writing it is mostly Python work (headers, buffers) plus hashing. A
reader thread that walks the tree and reads small files while the writer encodes
the entries before them overlaps the two. Entries cross in batches, because a queue
hand-off per entry costs about as much as encoding a header.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_BATCH = 64
# Batches waiting at most; with files read ahead up to 64 KiB each, this bounds the
# memory held in the queue to about 16 MiB.
_DEPTH = 4
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T]) -> Generator[T, None, None]:
    """Yield the items of `items`, produced on a background thread in batches.

    An exception in the producer is raised here, in the consumer. When the consumer
    stops early (an error, cancellation, or closing the generator), the producer
    stops at its next batch.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=_DEPTH)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        batch: list[T] = []
        try:
            for item in items:
                batch.append(item)
                if len(batch) >= _BATCH:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            # Items read before the failure still reach the consumer, in order.
            if batch and not put(batch):
                return
            put(_Failure(error))

    producer = threading.Thread(target=produce, name="ocilayer-reader", daemon=True)
    producer.start()
    try:
        while True:
            batch_or_end = handoff.get()
            if batch_or_end is _DONE:
                return
            if isinstance(batch_or_end, _Failure):
                raise batch_or_end.error
            yield from batch_or_end  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()
