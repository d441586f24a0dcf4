"""Work ahead: a function mapped over an iterator on worker threads, results in input order.

`logbus test` reads a file in chunks of whole lines and parses each into Arrow. Arrow's JSON
reader releases the GIL, so on a machine with more cores, chunks parse side by side while the
caller runs the pipeline over the chunk before them. Measured on the W1 benchmark file (85 MB,
2 cores): chunks parsed by two workers, each single-threaded, take 0.22 s; the same chunks one
after another through Arrow's own multi-threaded reader take 0.29 s, since each call parses its
blocks in parallel but converts, unifies and returns them alone.

The consumer sees the results in the order of the items, an error where its item would have
come, and at most `workers + 1` items taken ahead of it (the memory bound). Closing the
consumer early cancels what has not started and waits for what has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Generator[R, None, None]:
    """`map(fn, items)`, with `fn` run on up to `workers` threads ahead of the consumer.

    `items` itself is iterated on the consumer's thread, one item at a time as room frees up.
    With `workers` of 1 there is no thread at all: a plain map."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers!r}")
    if workers == 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="logbus-work-ahead")
    pending: deque[Future[R]] = deque()
    source = iter(items)
    try:
        while True:
            try:
                item = next(source)
            except StopIteration:
                break
            except Exception:
                # the items before the failing one still come first, as in a plain map: a read
                # error halfway through a file must not lose the chunks already read
                while pending:
                    yield pending.popleft().result()
                raise
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
