"""AlertBook.snapshot/restore: a book restored from its JSON snapshot goes on exactly like the
original (what the executor relies on to resume an alert chain after a restart)."""

from __future__ import annotations

import json

from primitives.rulestate import AlertBook, Match, feed

SECOND = 1_000_000
T0 = 1_700_000_000 * SECOND


def _book() -> AlertBook:
    return AlertBook(pipeline="p", version=1, step="rule", threshold=3, window=10 * SECOND,
                     suppress=23 * SECOND)


def _batch(start: int, stop: int) -> tuple[list[int | None], dict[int, list[Match]]]:
    times: list[int | None] = []
    matches: dict[int, list[Match]] = {}
    for row, i in enumerate(range(start, stop)):
        time = T0 + 2 * i * SECOND
        times.append(time)
        key = f"h{i % 2}"
        matches[row] = [Match(time=time, dedup=key, title=f"errors on {key}", severity="high",
                              context={"host": key}, event={"n": i, "host": key})]
    return times, matches


def test_a_restored_book_emits_what_the_original_would_have() -> None:
    original, copy = _book(), _book()
    for start in range(0, 100, 20):
        feed(original, *_batch(start, start + 20))
        feed(copy, *_batch(start, start + 20))
    restored = _book()
    restored.restore(json.loads(json.dumps(original.snapshot())))
    assert restored.snapshot() == original.snapshot()
    for start in range(100, 300, 20):
        expected, _ = feed(copy, *_batch(start, start + 20))
        got, _ = feed(restored, *_batch(start, start + 20))
        assert got == expected and got  # the chain goes on: same ids, counts, first_seen
    assert restored.open_keys() == copy.open_keys()


def test_a_fresh_book_started_mid_stream_is_out_of_phase() -> None:
    """Why the snapshot exists: a book rebuilt from a later point fires other alerts."""
    full, late = _book(), _book()
    for start in range(0, 100, 20):
        feed(full, *_batch(start, start + 20))
    feed(late, *_batch(90, 100))
    expected, _ = feed(full, *_batch(100, 120))
    got, _ = feed(late, *_batch(100, 120))
    assert {s["id"] for s in got} != {s["id"] for s in expected}


def test_an_empty_book_round_trips() -> None:
    book = _book()
    assert book.snapshot() == {"watermark": None, "keys": {}}
    book.restore(book.snapshot())
    assert book.open_keys() == 0 and book.watermark is None
