"""Read-ahead (stream.prefetch): same items in the same order, errors where they happened, a
bounded queue, and a producer that stops when the consumer does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from stream.prefetch import prefetch


def test_items_come_in_order_and_all_of_them() -> None:
    assert list(prefetch(range(1000), depth=3)) == list(range(1000))
    assert list(prefetch([])) == []


def test_an_error_in_the_producer_is_raised_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk went away")

    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetch(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_read_ahead_is_bounded_by_depth() -> None:
    produced = []

    def items() -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)  # give the producer every chance to run ahead
    # one handed out, `depth` queued, and one the producer holds while it waits for room
    assert len(produced) <= 1 + 2 + 1
    stream.close()


def test_closing_the_consumer_stops_the_producer_and_closes_its_source() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stream = prefetch(items())
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.wait(2.0)
    assert not any(t.name == "logbus-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(range(3), depth=0))
