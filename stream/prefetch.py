"""Read ahead: items of an iterator produced on a background thread while the caller works.

`logbus test` reads a file and runs the pipeline over it batch by batch. Without read-ahead the
sandbox worker waits while the next chunk is parsed, and the parser waits while the pipeline
runs. Arrow's JSON reader releases the GIL, so on a machine with a second core the next batch is
parsed while the current one is processed. At most `depth` items wait in the queue, which bounds
the memory read-ahead may take; an error in the producer is raised in the consumer at the point
where that item would have come; closing the consumer early stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int = 1) -> Generator[T, None, None]:
    """Yield what `items` yields, in order, with up to `depth` items produced ahead."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1; got {depth!r}")
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    source = iter(items)

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
            return
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator holding a file: release it on this thread
                close()
        put(_DONE)

    thread = threading.Thread(target=produce, name="logbus-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
