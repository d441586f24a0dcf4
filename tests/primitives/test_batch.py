"""Python events <-> Arrow batches: nothing lost, whatever the mix of types."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from primitives.batch import (
    EventError,
    column_array,
    concat,
    from_events,
    is_json_field,
    to_events,
    with_columns,
)
from primitives.sqlexec import SqlBatch


def test_a_field_only_later_events_have_is_kept() -> None:
    table = from_events([{"a": 1}, {"a": 2, "b": "x"}])
    assert table.column_names == ["a", "b"]
    assert to_events(table) == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_int_and_float_unify_to_float() -> None:
    table = from_events([{"v": 1}, {"v": 2.5}])
    assert table.schema.field("v").type == pa.float64()
    assert to_events(table) == [{"v": 1.0}, {"v": 2.5}]


def test_type_change_between_events_keeps_each_original_value() -> None:
    events: list[dict[str, Any]] = [{"v": 1}, {"v": "one"}, {"v": {"x": [1, 2]}}, {"v": True}, {"v": None}]
    table = from_events(events)
    assert is_json_field(table.schema.field("v"))
    assert to_events(table) == events


def test_integers_beyond_int64_survive_exactly() -> None:
    events = [{"n": 2**70}, {"n": 5}]
    assert to_events(from_events(events)) == events


def test_empty_objects_and_nested_values_round_trip() -> None:
    events: list[dict[str, Any]] = [{"o": {}}, {"o": {}}]
    assert to_events(from_events(events)) == events
    nested = [{"req": {"path": "/a", "headers": {"ua": "curl"}}, "tags": ["x", "y"]}]
    assert to_events(from_events(nested)) == nested


def test_unicode_and_empty_batch() -> None:
    events = [{"msg": "naïve — ✓ 日本"}]
    assert to_events(from_events(events)) == events
    empty = from_events([])
    assert empty.num_rows == 0 and to_events(empty) == []


def test_with_columns_adds_null_columns_only_where_missing() -> None:
    table = with_columns(from_events([{"a": 1}]), ["a", "b"])
    assert table.column_names == ["a", "b"]
    assert to_events(table) == [{"a": 1, "b": None}]


def test_concat_of_conflicting_batches_falls_back_without_loss() -> None:
    merged = concat([from_events([{"v": 1}]), from_events([{"v": "x"}]), from_events([{"w": 2.0}])])
    assert to_events(merged) == [{"v": 1, "w": None}, {"v": "x", "w": None}, {"v": None, "w": 2.0}]


def test_bool_and_int_do_not_merge_into_numbers() -> None:
    """True is not 1: a field that is a bool in one event and an int in another keeps both."""
    events: list[dict[str, Any]] = [{"b": True}, {"b": 1}, {"b": 0}, {"b": False}]
    table = from_events(events)
    assert is_json_field(table.schema.field("b"))
    assert [type(e["b"]) for e in to_events(table)] == [bool, int, int, bool]


@pytest.mark.parametrize("values", [
    [2.0, True], [1.5, None, False], [{"k": 2.0}, {"k": True}], [[2.0], [True, 1.5]],
    [{"a": [{"x": 1.5}]}, {"a": [{"x": False}]}],
])
def test_a_bool_after_a_float_stays_a_bool(values: list[Any]) -> None:
    """Arrow infers float64 for [2.0, true] and writes the true as 1.0 (and refuses [true, 2.0]): an
    event's bool turned into a number depending on the events before it, at any depth."""
    events = [{"b": value} for value in values]
    for order in (events, events[::-1]):
        back = to_events(from_events(order))
        assert repr(back) == repr(order)
    _, json_text = column_array(values)  # the sandbox's columns come this way
    assert json_text


def test_a_float_next_to_a_separate_bool_field_stays_typed() -> None:
    table = from_events([{"b": {"k": 2.5, "ok": True}}, {"b": {"k": 1.0, "ok": False}}])
    assert table.schema.field("b").type == pa.struct([("k", pa.float64()), ("ok", pa.bool_())])


def test_type_change_inside_a_nested_object_keeps_the_whole_object() -> None:
    events: list[dict[str, Any]] = [{"o": {"x": 1, "y": "a"}}, {"o": {"x": "one"}}, {"o": None}]
    assert to_events(from_events(events)) == events
    mixed_list: list[dict[str, Any]] = [{"l": [1, "a", None, {"k": 2}]}]
    assert to_events(from_events(mixed_list)) == mixed_list


def test_nested_keys_missing_in_some_events_read_as_none() -> None:
    table = from_events([{"req": {"path": "/a"}}, {"req": {"path": "/b", "query": "x=1"}}])
    assert to_events(table) == [{"req": {"path": "/a", "query": None}},
                                {"req": {"path": "/b", "query": "x=1"}}]


def test_all_null_field_and_key_order_of_first_appearance() -> None:
    table = from_events([{"b": None, "a": 1}, {"c": 2, "b": None}])
    assert table.column_names == ["b", "a", "c"]
    assert to_events(table) == [{"b": None, "a": 1, "c": None}, {"b": None, "a": None, "c": 2}]


def test_with_columns_on_an_empty_batch_gives_columns_without_rows() -> None:
    table = with_columns(from_events([]), ["status"])
    assert table.column_names == ["status"] and table.num_rows == 0


def test_sql_reads_a_json_tagged_field_as_its_json_text() -> None:
    """A field whose type changes is JSON text to SQL: json functions and casts read it."""
    table = from_events([{"v": 5}, {"v": "7"}, {"v": {"n": 9}}])
    out = SqlBatch().select(table, {"n": "coalesce(TRY_CAST(v AS INTEGER), CAST(v ->> '$.n' AS INTEGER))"},
                            keep_rest=False)
    assert out.column("n").to_pylist() == [5, None, 9]


def test_unicode_field_names_and_astral_characters_round_trip() -> None:
    events: list[dict[str, Any]] = [{"clé": "🚀 emoji", "名前": "テスト", "nul": "a\u0000b"}]
    assert to_events(from_events(events)) == events


def test_text_that_is_not_valid_unicode_is_refused_by_name() -> None:
    with pytest.raises(EventError, match=r"event 1\['b'\]\['c'\]\[1\] holds text .*U\+DC80"):
        from_events([{"a": "fine"}, {"b": {"c": ["ok", "\udc80"]}}])
    with pytest.raises(EventError, match=r"a key in event 0 holds text .*U\+D800"):
        from_events([{"\ud800": 1}])


def test_sql_sees_a_mixed_field_of_scalars_as_each_values_own_text() -> None:
    """`user = 'root'` must not miss a root login because another event of its batch had a number
    there (as JSON text the string would read '"root"'): a filter an attacker could evade."""
    sql = SqlBatch()
    mixed = from_events([{"user": "root"}, {"user": 0}, {"user": True}, {"user": 2.5}, {}])
    assert is_json_field(mixed.schema.field("user"))
    kept = sql.filter(mixed, "user = 'root'")
    assert to_events(kept) == [{"user": "root"}]
    texts = sql.columns(mixed, {"t": "CAST(user AS VARCHAR)"})["t"].to_pylist()
    assert texts == ["root", "0", "true", "2.5", None]
    # objects next to other values stay JSON text, for ->>
    nested = from_events([{"ctx": {"a": 1}}, {"ctx": "plain"}])
    assert sql.columns(nested, {"a": "ctx->>'a'"})["a"].to_pylist() == ["1", None]
