"""rule: threshold within a sliding event-time window, suppression folding, lateness, stable ids.

Agent code runs here through `inprocess_runner`, a plain-`exec` stand-in for the sandbox that
returns the same CodeResult shape; the sandboxed path is tested in tests/sandbox.
"""

from __future__ import annotations

import copy
import random
import traceback
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from primitives.batch import from_events, to_events
from primitives.rulestate import AlertBook, Match
from primitives.runtime import BuildContext, CodeError, CodeResult, StepResult
from primitives.steps.rule import RuleOptions, RuleRuntime

RULE = """
def rule(event):
    return event.get("action") == "fail"

def dedup(event):
    return event["ip"]

def title(event):
    return "failures from " + event["ip"]
"""


def inprocess_runner(kind: str, source: str, events: list[dict[str, Any]] | pa.Table) -> CodeResult:
    """Run a snippet's entrypoints per event with plain exec (tests only), shaped like the sandbox.

    Given a table, transform/derive outputs come back as `table` + `source_index`, as documented
    on CodeResult.
    """
    if isinstance(events, pa.Table):
        result = inprocess_runner(kind, source, to_events(events))
        if kind in ("transform", "derive"):
            pairs = [(i, row) for i, rows in enumerate(result.values) if rows is not None for row in rows]
            return CodeResult(
                [], result.errors, result.logs, from_events([row for _, row in pairs]), [i for i, _ in pairs]
            )
        return result
    namespace: dict[str, Any] = {}
    exec(compile(source, "<snippet>", "exec"), namespace)
    values: list[Any] = []
    errors: list[CodeError] = []
    for index, event in enumerate(events):
        try:
            values.append(_call(kind, namespace, copy.deepcopy(event)))
        except Exception as error:
            frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<snippet>"]
            line = frames[-1].lineno if frames else None
            errors.append(CodeError(index, "error", type(error).__name__, str(error), line))
            values.append(None)
    return CodeResult(values, errors)


def _call(kind: str, namespace: dict[str, Any], event: dict[str, Any]) -> Any:
    if kind == "rule":
        match = namespace["rule"](event)
        value: dict[str, Any] = {
            "match": match,
            "dedup": None,
            "title": None,
            "severity": None,
            "context": None,
        }
        if match is True:
            for name in ("dedup", "title", "severity", "context"):
                if name in namespace:
                    value[name] = namespace[name](event)
        return value
    if kind in ("derive", "transform"):
        result = namespace[kind](event)
        return [] if result is None else result if isinstance(result, list) else [result]
    if kind == "keep":
        return namespace["keep"](event)
    raise AssertionError(f"kind {kind} not used in these tests")


def make(code: str = RULE, version: int = 1, **options: Any) -> RuleRuntime:
    ctx = BuildContext("ssh-watch", version, "detect", "ts", run_code=inprocess_runner)
    return RuleRuntime(RuleOptions.model_validate({"code": code, **options}), ctx)


def ev(second: float | None, ip: str = "10.0.0.1", action: str = "fail") -> dict[str, Any]:
    ts = None if second is None else f"2024-01-01T00:{int(second) // 60:02d}:{second % 60:06.3f}Z"
    return {"ts": ts, "ip": ip, "action": action}


def run(runtime: RuleRuntime, events: list[dict[str, Any]], batches: int = 1) -> list[StepResult]:
    size = max(1, -(-len(events) // batches))
    parts = [events[i : i + size] for i in range(0, len(events), size)] or [[]]
    return [runtime.process(pa.Table.from_pylist(part)) for part in parts] + [runtime.finish()]


def final_signals(results: list[StepResult]) -> dict[str, dict[str, Any]]:
    """Upsert by id, as consumers do."""
    latest: dict[str, dict[str, Any]] = {}
    for result in results:
        for signal in result.signals:
            latest[signal["id"]] = signal
    return latest


def test_alert_fires_when_threshold_reached_exactly_with_count_equal_to_threshold() -> None:
    results = run(make(threshold=3, window="60s", suppress="10m"), [ev(0), ev(20), ev(59.999)])
    (signal,) = results[0].signals
    assert signal["count"] == 3
    assert signal["first_seen"] == "2024-01-01T00:00:00Z"
    assert signal["last_seen"] == "2024-01-01T00:00:59.999Z"
    assert signal["dedup"] == "10.0.0.1" and signal["title"] == "failures from 10.0.0.1"
    assert signal["severity"] == "medium" and signal["pipeline"] == "ssh-watch" and signal["step"] == "detect"
    assert len(signal["samples"]) == 3


def test_one_match_short_of_threshold_raises_nothing() -> None:
    results = run(make(threshold=3, window="60s"), [ev(0), ev(20), ev(100, ip="other")])
    assert final_signals(results) == {}


def test_window_is_half_open_matches_exactly_window_apart_do_not_combine() -> None:
    results = run(make(threshold=2, window="60s"), [ev(0), ev(60)])
    assert final_signals(results) == {}
    results = run(make(threshold=2, window="60s"), [ev(0), ev(59.999)])
    assert len(final_signals(results)) == 1


def test_non_matching_events_never_count() -> None:
    results = run(make(threshold=2, window="60s"), [ev(0), ev(1, action="ok"), ev(2, action="ok")])
    assert final_signals(results) == {}


def test_later_matches_within_suppress_fold_into_the_alert() -> None:
    events = [ev(0), ev(1), *[ev(10 + i) for i in range(12)]]
    results = run(make(threshold=2, window="60s", suppress="10m"), events)
    (signal,) = final_signals(results).values()
    assert signal["count"] == 14
    assert signal["last_seen"] == "2024-01-01T00:00:21Z"
    assert len(signal["samples"]) == 10  # capped
    assert len(results[0].signals) == 1  # one version of the signal per batch


def test_each_fold_in_a_later_batch_re_emits_the_same_id_with_higher_count() -> None:
    runtime = make(threshold=2, window="60s", suppress="10m")
    first = runtime.process(pa.Table.from_pylist([ev(0), ev(1)])).signals
    second = runtime.process(pa.Table.from_pylist([ev(5)])).signals
    assert [s["count"] for s in first] == [2] and [s["count"] for s in second] == [3]
    assert first[0]["id"] == second[0]["id"]
    assert second[0]["last_seen"] == "2024-01-01T00:00:05Z"


def test_after_suppression_expires_a_new_alert_needs_the_threshold_again() -> None:
    # Fires at 1 s (the match completing the threshold); suppress 5m: 301 s is the first instant outside.
    events = [ev(0), ev(1), ev(300), ev(301), ev(400)]
    results = run(make(threshold=2, window="60s", suppress="5m"), events)
    signals = sorted(final_signals(results).values(), key=lambda s: s["first_seen"])
    assert [(s["first_seen"], s["count"]) for s in signals] == [
        ("2024-01-01T00:00:00Z", 3),  # 0, 1 fire; 300 folds
    ]
    events = [ev(0), ev(1), ev(300), ev(301), ev(330)]
    results = run(make(threshold=2, window="60s", suppress="5m"), events)
    signals = sorted(final_signals(results).values(), key=lambda s: s["first_seen"])
    assert [(s["first_seen"], s["count"]) for s in signals] == [
        ("2024-01-01T00:00:00Z", 3),
        ("2024-01-01T00:05:01Z", 2),  # 301 alone is one short (400 is > 60 s later); 330 completes it
    ]
    assert signals[0]["id"] != signals[1]["id"]


def test_dedup_keys_are_independent() -> None:
    events = [ev(0, "a"), ev(1, "b"), ev(2, "a"), ev(3, "c")]
    results = run(make(threshold=2, window="60s"), events)
    assert sorted(s["dedup"] for s in final_signals(results).values()) == ["a"]


def test_out_of_order_matches_in_a_batch_complete_and_fold_into_one_alert() -> None:
    shuffled = [ev(40), ev(10), ev(30), ev(20)]
    (signal,) = run(make(threshold=3, window="60s"), shuffled)[0].signals
    assert (signal["first_seen"], signal["last_seen"], signal["count"]) == (
        "2024-01-01T00:00:10Z",
        "2024-01-01T00:00:40Z",
        4,
    )


def test_signals_do_not_depend_on_how_input_is_batched() -> None:
    rng = random.Random(7)
    events = [ev(t, rng.choice("ab")) for t in range(0, 900, 7)]
    events += [ev(t + 0.5, "a", action="ok") for t in range(0, 900, 50)]
    events.sort(key=lambda e: e["ts"])
    expected = final_signals(run(make(threshold=4, window="30s", suppress="2m"), events))
    assert len(expected) > 2
    for batches in (2, 3, 7, len(events)):
        got = final_signals(run(make(threshold=4, window="30s", suppress="2m"), events, batches))
        assert got == expected, batches


@pytest.mark.parametrize("seed", range(40))
def test_signals_and_late_events_do_not_depend_on_batching_of_out_of_order_input(seed: int) -> None:
    """A replay after a restart reads other batch sizes than the first run did, and a trial run
    other sizes than the live executor: with events out of order, the alerts must still agree."""
    rng = random.Random(seed)
    events, now = [], 0.0
    for _ in range(60):
        now += rng.choice([0, 1, 2, 3, 5, 8])
        straggler = rng.random() < 0.2
        events.append(ev(max(0.0, now - (rng.randint(5, 90) if straggler else 0)), rng.choice("ab"),
                         action=rng.choice(["fail", "fail", "ok"])))
    options: dict[str, Any] = {"threshold": rng.choice([1, 2, 3, 5]),
                               "window": rng.choice(["10s", "30s", "60s"]),
                               "suppress": rng.choice(["0s", "20s", "2m"])}

    def outcome(batches: int) -> tuple[dict[str, dict[str, Any]], list[Any]]:
        results = run(make(**options), events, batches)
        late = [letter.event and letter.event["ts"] for r in results for letter in r.dead_letters]
        return final_signals(results), late

    expected = outcome(1)
    for batches in (2, 5, len(events)):
        assert outcome(batches) == expected, batches


def test_late_match_goes_to_dead_letters_and_changes_nothing() -> None:
    runtime = make(threshold=1, window="60s", suppress="1m")
    results = run(runtime, [ev(600, "b"), ev(540, "a"), ev(541, "a", action="ok")])
    assert [s["dedup"] for s in final_signals(results).values()] == ["b"]
    assert [(d.reason, (d.event or {}).get("ip")) for d in results[0].dead_letters] == [("late", "a")]
    assert results[0].dead_letters[0].message == (
        "rule matched an event 1m older than the newest event time before it (2024-01-01T00:10:00Z), "
        "past the window (1m); it cannot change any alert")
    assert results[0].errors == 0  # late is a property of the stream, not a failure


def test_matching_event_without_time_is_a_no_time_dead_letter_but_a_non_match_is_fine() -> None:
    results = run(make(), [ev(None), ev(None, action="ok")])
    assert [d.reason for d in results[0].dead_letters] == ["no_time"]
    assert results[0].dead_letters[0].message.startswith(
        "rule matched, but event has no usable time: 'ts' is missing or null; windows and suppression "
        "need event time")
    assert results[0].errors == 1


def test_defaults_title_is_pipeline_dedup_is_title_severity_from_options() -> None:
    results = run(make("def rule(event):\n    return True\n", severity="high"), [ev(0), ev(1)])
    (signal,) = final_signals(results).values()
    assert (signal["title"], signal["dedup"], signal["severity"], signal["count"]) == (
        "ssh-watch",
        "ssh-watch",
        "high",
        2,
    )


def test_window_defaults_to_suppress() -> None:
    assert (
        RuleOptions.model_validate({"code": RULE, "suppress": "15m"}).effective_window.total_seconds() == 900
    )
    options = RuleOptions.model_validate({"code": RULE})
    assert (options.threshold, options.suppress.total_seconds(), options.severity) == (1, 3600, "medium")


def test_ids_ignore_the_version_so_a_replay_under_a_new_version_upserts() -> None:
    events = [ev(0), ev(1), ev(2)]
    old = final_signals(run(make(version=1, threshold=2), events))
    new = final_signals(run(make(version=2, threshold=2), events))
    assert old.keys() == new.keys()
    assert [s["version"] for s in new.values()] == [2]


def test_code_errors_become_dead_letters_with_the_snippet_line() -> None:
    code = "def rule(event):\n    return event['missing'] == 1\n"
    result = run(make(code), [ev(0)])[0]
    assert [(d.reason, d.line) for d in result.dead_letters] == [("error", 2)]
    assert result.errors == 1 and result.code_errors[0].error_type == "KeyError"


def test_non_bool_rule_result_and_bad_severity_are_bad_output() -> None:
    result = run(make("def rule(event):\n    return 'yes'\n"), [ev(0)])[0]
    assert result.dead_letters[0].reason == "bad_output"
    assert "rule() must return a bool; got str" in result.dead_letters[0].message
    code = "def rule(event):\n    return True\ndef severity(event):\n    return 'urgent'\n"
    result = run(make(code), [ev(0)])[0]
    assert "severity() returned 'urgent'" in result.dead_letters[0].message


def test_events_pass_through_and_empty_batches_are_fine() -> None:
    runtime = make()
    batch = pa.Table.from_pylist([ev(0), ev(1, action="ok")])
    assert runtime.process(batch).events == batch
    empty = runtime.process(pa.table({}))
    assert empty.signals == [] and empty.dead_letters == []


def test_finish_emits_nothing_new() -> None:
    runtime = make(threshold=5)
    runtime.process(pa.Table.from_pylist([ev(0), ev(1)]))
    assert runtime.finish().signals == []


def test_state_is_bounded_by_the_watermark() -> None:
    runtime = make(threshold=3, window="60s", suppress="5m")
    runtime.process(pa.Table.from_pylist([ev(i, ip=f"10.0.0.{i}") for i in range(50)]))
    assert runtime.book.open_keys() == 50
    runtime.process(pa.Table.from_pylist([ev(3000, ip="x", action="ok")]))
    assert runtime.book.open_keys() == 0


def test_options_reject_bad_values_with_clear_messages() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        RuleOptions.model_validate({"code": RULE, "threshold": 0})
    with pytest.raises(ValidationError, match="is not a duration"):
        RuleOptions.model_validate({"code": RULE, "window": "60x"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        RuleOptions.model_validate({"code": RULE, "treshold": 5})


def test_alert_book_forgets_pending_matches_older_than_the_firing_window() -> None:
    book = AlertBook(pipeline="p", version=1, step="s", threshold=3, window=60, suppress=1000)
    fired = [book.add(Match(t, "k", "t", "low", {}, {"t": t})) for t in (0, 50, 100, 105)]
    assert fired[:3] == [None, None, None]
    assert fired[3] is not None and fired[3].count == 3
    assert [s["t"] for s in fired[3].samples] == [50, 100, 105]
