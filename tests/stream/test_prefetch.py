"""Work ahead (stream.prefetch.map_ahead): the results of a plain map, in order, errors where
they happened, bounded look-ahead, work really spread over threads, and a consumer that stops
early leaving no thread behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from stream.prefetch import map_ahead


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_results_come_in_order_and_all_of_them(workers: int) -> None:
    def slow_square(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # later items may finish first
        return i * i

    assert list(map_ahead(slow_square, range(200), workers)) == [i * i for i in range(200)]
    assert list(map_ahead(slow_square, [], workers)) == []


def test_an_error_is_raised_after_the_results_before_it() -> None:
    def parse(i: int) -> int:
        if i == 2:
            raise ValueError("bad chunk 2")
        return i

    seen = []
    with pytest.raises(ValueError, match="bad chunk 2"):
        for item in map_ahead(parse, range(10), workers=3):
            seen.append(item)
    assert seen == [0, 1]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_an_error_in_the_items_comes_after_every_result_before_it(workers: int) -> None:
    """A read error halfway through a file: the chunks read before it are still handed over."""
    def items() -> Iterator[int]:
        yield from range(5)
        raise OSError("disk went away")

    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for result in map_ahead(lambda i: i * 10, items(), workers):
            seen.append(result)
    assert seen == [0, 10, 20, 30, 40]


def test_look_ahead_is_bounded_by_the_workers() -> None:
    taken = []

    def items() -> Iterator[int]:
        for i in range(100):
            taken.append(i)
            yield i

    results = map_ahead(lambda i: i, items(), workers=2)
    assert next(results) == 0
    time.sleep(0.1)  # give the workers every chance to run ahead
    assert len(taken) <= 1 + 2  # the one handed out and `workers` in flight
    results.close()


def test_workers_run_side_by_side() -> None:
    """Two items that each wait for the other can only finish on two threads at once."""
    barrier = threading.Barrier(2, timeout=5)

    def meet(i: int) -> int:
        barrier.wait()
        return i

    assert list(map_ahead(meet, range(4), workers=2)) == [0, 1, 2, 3]


def test_closing_the_consumer_early_cancels_the_rest_and_leaves_no_thread() -> None:
    started = []

    def work(i: int) -> int:
        started.append(i)
        time.sleep(0.01)
        return i

    results = map_ahead(work, range(1000), workers=3)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    results.close()
    assert len(started) < 20
    assert not any(t.name.startswith("logbus-work-ahead") and t.is_alive() for t in threading.enumerate())


def test_fewer_than_one_worker_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        list(map_ahead(lambda i: i, range(3), workers=0))
