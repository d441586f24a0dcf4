"""The bulk check of one-dict outputs (sandbox/runtime/execute.py) only vouches for rows that the
exact per-event checker would pass unchanged; it never rejects. Proven here over whole batches of
benign rows with hostile ones mixed in: run_events gives exactly the values and errors of the exact
checker alone, every hostile row is among those the bulk check hands over, and objects of
snippet-defined classes are never asked to compare, hash, measure or print themselves.

The entrypoints here are plain Python functions (no static check, no RestrictedPython), so the
outputs can hold instances of classes, which a real snippet cannot define: the runtime check must
hold on its own.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox.runtime import execute
from sandbox.runtime.execute import OutputCaps, run_events
from sandbox.runtime.guards import PrintBuffer
from sandbox.runtime.loader import Entrypoints

ROWS = 64  # above execute._BULK_MIN, so the bulk check runs
BAD = 5  # the row that gets the hostile output
CALLS: list[str] = []  # every call of a hostile method lands here


def entrypoints(entry: Callable[[Any], Any], kind: str = "transform") -> Entrypoints:
    return Entrypoints(kind, kind, entry, {}, PrintBuffer())


def row(i: int) -> dict[str, Any]:
    """A benign output: str, int, float, bool and str-or-None columns, as a web log gives."""
    return {"host": f"web-{i % 8}", "status": 200 + i % 3, "ms": i * 0.5, "ok": i % 2 == 0,
            "note": None if i % 3 else "retry"}


def run_both(make: Callable[[], list[Any]], caps: OutputCaps = execute.DEFAULT_CAPS,
             monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[Any, Any]:
    """(run_events with the bulk check, run_events with the exact checker only), each over a fresh
    set of outputs from `make` (the exact checker converts tuples and subclasses in place)."""

    def once() -> tuple[list[Any], list[dict[str, Any]], list[str]]:
        outputs = make()
        return run_events(entrypoints(lambda e: outputs[e["i"]]), [{"i": i} for i in range(len(outputs))],
                          caps)

    fast = once()
    assert monkeypatch is not None
    with monkeypatch.context() as patch:
        patch.setattr(execute, "_exact_rows", lambda outs, caps: None)
        exact = once()
    return fast, exact


def handed_over(outputs: list[dict[str, Any]], caps: OutputCaps = execute.DEFAULT_CAPS) -> set[int]:
    """Rows the bulk check leaves to the exact checker (all of them when it gives up)."""
    slow = execute._exact_rows(outputs, caps)
    return set(range(len(outputs))) if slow is None else slow


# -- hostile objects: each records any call of a method a check might be tempted to use ----------

class EvilStr(str):
    def __eq__(self, other: object) -> bool:
        CALLS.append("__eq__")
        return True

    def __hash__(self) -> int:
        CALLS.append("__hash__")
        return str.__hash__(self)

    def __len__(self) -> int:
        CALLS.append("__len__")
        return 0

    def __str__(self) -> str:
        CALLS.append("__str__")
        return "fine"

    def isascii(self) -> bool:
        CALLS.append("isascii")
        return True

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        CALLS.append("encode")
        return b""


class EvilInt(int):
    def __lt__(self, other: object) -> bool:
        CALLS.append("__lt__")
        return False

    def __gt__(self, other: object) -> bool:
        CALLS.append("__gt__")
        return False

    def __add__(self, other: object) -> int:
        CALLS.append("__add__")
        return 0

    __radd__ = __add__

    def __bool__(self) -> bool:
        CALLS.append("__bool__")
        return False


class EvilFloat(float):
    def __add__(self, other: object) -> float:
        CALLS.append("__add__")
        return 0.0

    __radd__ = __add__


class EvilDict(dict):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        CALLS.append("__iter__")
        return iter(["x"])

    def keys(self) -> Any:  # dict() of a subclass uses keys(): the exact checker's conversion
        CALLS.append("keys")
        return list(dict.keys(self))

    def items(self) -> Any:
        CALLS.append("items")
        return [("x", 1)]


def with_key(i: int, key: Any, value: Any) -> dict[Any, Any]:
    """row(i) with `key` in the place of "status" (same position), holding `value`."""
    return {(key if k == "status" else k): (value if k == "status" else v) for k, v in row(i).items()}


def cycle() -> dict[str, Any]:
    d = row(BAD)
    d["self"] = d
    return d


# (what event BAD returns, a fragment of its error message or None when it is valid as converted)
HOSTILE: list[tuple[str, Callable[[], Any], str | None]] = [
    ("int key", lambda: {**row(BAD), 1: "x"}, "keys must be str"),
    ("bool key in place", lambda: with_key(BAD, True, 200), "keys must be str"),
    ("str-subclass key in place", lambda: with_key(BAD, EvilStr("status"), 200), "keys must be str"),
    ("str-subclass value", lambda: {**row(BAD), "host": EvilStr("web-1")}, "is EvilStr"),
    ("int-subclass value", lambda: {**row(BAD), "status": EvilInt(200)}, "is EvilInt"),
    ("float-subclass value", lambda: {**row(BAD), "ms": EvilFloat(1.5)}, "is EvilFloat"),
    ("NaN", lambda: {**row(BAD), "ms": math.nan}, "only finite floats"),
    ("inf", lambda: {**row(BAD), "ms": math.inf}, "only finite floats"),
    ("-inf", lambda: {**row(BAD), "ms": -math.inf}, "only finite floats"),
    ("2**63: wider than int64, kept", lambda: {**row(BAD), "status": 2**63}, None),
    ("-2**63 - 1: kept", lambda: {**row(BAD), "status": -(2**63) - 1}, None),
    ("2**2000 in the float column: kept", lambda: {**row(BAD), "ms": 2**2000}, None),
    ("2**14000: too wide", lambda: {**row(BAD), "status": 2**14000}, "more than 14,000 bits"),
    ("-(2**14000) nested", lambda: {**row(BAD), "note": {"n": [-(2**14000)]}}, "more than 14,000 bits"),
    ("int max", lambda: {**row(BAD), "status": 2**63 - 1}, None),
    ("int min", lambda: {**row(BAD), "status": -(2**63)}, None),
    ("huge finite floats", lambda: {**row(BAD), "ms": 1.7e308}, None),
    ("lone surrogate value", lambda: {**row(BAD), "host": "web-\ud800"}, "not valid UTF-8"),
    ("lone surrogate key", lambda: {**row(BAD), "k\udfff": 1}, "not valid UTF-8"),
    ("non-ASCII value", lambda: {**row(BAD), "host": "wéb-☃-😀"}, None),
    ("non-ASCII key", lambda: {**row(BAD), "hôte": "x"}, None),
    ("bytes", lambda: {**row(BAD), "host": b"web"}, "return value.decode()"),
    ("bytearray", lambda: {**row(BAD), "host": bytearray(b"web")}, "not JSON data"),
    ("set", lambda: {**row(BAD), "note": {"a"}}, "return sorted(list(value))"),
    ("datetime", lambda: {**row(BAD), "note": datetime.datetime(2024, 1, 2)}, "value.isoformat()"),
    ("str in an int column", lambda: {**row(BAD), "status": "200"}, None),
    ("tuple, converted", lambda: {**row(BAD), "note": (1, 2)}, None),
    ("nested dict", lambda: {**row(BAD), "note": {"a": [1, {"b": None}]}}, None),
    ("cycle", cycle, "nested deeper than 32"),
    ("shared-reference blowup", lambda: {**row(BAD), "note": [[["x" * 100] * 100] * 100] * 100},
     "larger than"),
    ("huge str", lambda: {**row(BAD), "note": "a" * (2 << 20)}, "larger than"),
    ("dict subclass overriding iteration", lambda: EvilDict(row(BAD)), None),
    ("keys in another order", lambda: dict(reversed(list(row(BAD).items()))), None),
    ("a key missing", lambda: {k: v for k, v in row(BAD).items() if k != "ok"}, None),
]


@pytest.mark.parametrize(("bad", "fragment"), [(m, f) for _, m, f in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_a_hostile_row_gets_exactly_what_the_exact_checker_gives(
    bad: Callable[[], Any], fragment: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make() -> list[Any]:
        outputs: list[Any] = [row(i) for i in range(ROWS)]
        outputs[BAD] = bad()
        CALLS.clear()  # building the dict may hash its keys; only the checks count
        return outputs

    fast, exact = run_both(make, monkeypatch=monkeypatch)
    fast_calls = list(CALLS)
    assert fast == exact
    values, errors, _ = fast
    assert values[:BAD] + values[BAD + 1:] == [[row(i)] for i in range(ROWS) if i != BAD]
    if fragment is None:
        assert errors == [] and values[BAD] is not None
    else:
        assert [(e["index"], e["reason"]) for e in errors] == [(BAD, "bad_output")]
        assert fragment in errors[0]["message"], errors
    # only EvilDict's own iteration may run (the exact checker converts it with dict(), as before)
    assert set(fast_calls) <= ({"keys", "__iter__", "items"} if isinstance(make()[BAD], EvilDict) else set())


@pytest.mark.parametrize(("bad", "fragment"), [(m, f) for _, m, f in HOSTILE if f is not None],
                         ids=[name for name, _, f in HOSTILE if f is not None])
def test_the_bulk_check_hands_every_invalid_row_over(bad: Callable[[], Any], fragment: str) -> None:
    outputs = [row(i) for i in range(ROWS)]
    outputs[BAD] = bad()
    assert BAD in handed_over(outputs)


def test_a_benign_batch_is_vouched_for_entirely_and_returned_as_is() -> None:
    outputs = [row(i) for i in range(ROWS)]
    assert handed_over(outputs) == set()
    values, errors, _ = run_events(entrypoints(lambda e: outputs[e["i"]]), [{"i": i} for i in range(ROWS)])
    assert errors == [] and all(v[0] is outputs[i] for i, v in enumerate(values))


def test_rows_of_another_shape_go_to_the_exact_checker_and_agree_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make() -> list[Any]:
        outputs = [row(i) for i in range(ROWS)]
        for i in range(1, ROWS, 8):
            outputs[i]["extra"] = [i]  # another key (and a nested value) in one row of eight
        for i in range(2, ROWS, 8):
            outputs[i] = dict(reversed(list(outputs[i].items())))  # the same keys, in another order
        return outputs

    assert handed_over(make()) == set(range(1, ROWS, 8)) | set(range(2, ROWS, 8))
    fast, exact = run_both(make, monkeypatch=monkeypatch)
    assert fast == exact and fast[1] == []


def test_only_the_rows_with_a_bad_value_are_handed_over_not_the_batch() -> None:
    outputs = [row(i) for i in range(ROWS)]
    outputs[3]["ms"] = math.nan  # NaN makes the column's sum NaN: each value is then checked
    outputs[9]["note"] = [1]
    outputs[11]["host"] = EvilStr("x")
    assert handed_over(outputs) == {3, 9, 11}


@pytest.mark.parametrize("length", [189, 190, 191])
def test_the_size_cap_is_exact_at_the_boundary(length: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # {"s": str} costs 2 + len("s") + len(str) + 6 bytes: 190 chars is exactly 199 bytes
    caps = OutputCaps(max_bytes=199)

    def make() -> list[Any]:
        return [{"s": "x" * (length if i == BAD else 10)} for i in range(ROWS)]

    fast, exact = run_both(make, caps, monkeypatch)
    assert fast == exact
    errors = fast[1]
    if length <= 190:
        assert errors == []
    else:
        assert [e["index"] for e in errors] == [BAD] and "larger than 199 bytes" in errors[0]["message"]


def test_long_strs_shared_by_every_row_are_checked_without_joining_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = "é" * 300_000  # non-ASCII and 64 x 300k chars: tested str by str, never joined

    def make() -> list[Any]:
        return [{"text": shared, "n": i} for i in range(ROWS)]

    fast, exact = run_both(make, monkeypatch=monkeypatch)
    assert fast == exact and fast[1] == []


def test_depth_cap_zero_refuses_every_dict_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, exact = run_both(lambda: [row(i) for i in range(ROWS)], OutputCaps(max_depth=0), monkeypatch)
    assert fast == exact
    assert len(fast[1]) == ROWS and "nested deeper than 0 levels" in fast[1][0]["message"]


def test_keys_unique_to_each_row_fall_back_to_the_exact_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, exact = run_both(lambda: [{f"k{i}": i, f"j{i}": "x"} for i in range(ROWS)], monkeypatch=monkeypatch)
    assert fast == exact and fast[1] == []
    assert execute._exact_rows([{f"k{i}": i} for i in range(ROWS)], execute.DEFAULT_CAPS) is None


def test_what_is_checked_is_what_is_sent_even_if_a_later_call_mutates_an_earlier_output() -> None:
    kept: list[dict[str, Any]] = []

    def transform(event: dict[str, Any]) -> Any:
        if event["i"] == 1:
            kept[0]["ms"] = math.nan  # poisons event 0's output after it was returned
            raise ValueError("boom")
        out = row(event["i"])
        kept.append(out)
        return out

    values, errors, _ = run_events(entrypoints(transform), [{"i": i} for i in range(ROWS)])
    assert values[0] is None and values[1] is None and values[2] == [row(2)]
    assert [(e["index"], e["reason"], e["error_type"]) for e in errors] == [
        (0, "bad_output", "BadOutput"), (1, "error", "ValueError")]  # in event order


def test_errors_stay_in_event_order_across_calls_lists_and_single_dicts() -> None:
    def transform(event: dict[str, Any]) -> Any:
        i = event["i"]
        if i % 10 == 0:
            return [row(i), {"bad": math.inf}]  # a list: checked by _records
        if i % 10 == 1:
            raise KeyError("x")
        if i % 10 == 2:
            return {**row(i), "bad": b"x"}
        return row(i)

    values, errors, _ = run_events(entrypoints(transform), [{"i": i} for i in range(ROWS)])
    indices = [e["index"] for e in errors]
    assert indices == sorted(indices) == [i for i in range(ROWS) if i % 10 in (0, 1, 2)]
    assert all(values[i] is None for i in indices) and values[3] == [row(3)]
