"""Python events <-> Arrow batches: nothing lost, whatever the mix of types."""

from __future__ import annotations

import pyarrow as pa

from primitives.batch import concat, from_events, is_json_field, to_events, with_columns


def test_a_field_only_later_events_have_is_kept() -> None:
    table = from_events([{"a": 1}, {"a": 2, "b": "x"}])
    assert table.column_names == ["a", "b"]
    assert to_events(table) == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_int_and_float_unify_to_float() -> None:
    table = from_events([{"v": 1}, {"v": 2.5}])
    assert table.schema.field("v").type == pa.float64()
    assert to_events(table) == [{"v": 1.0}, {"v": 2.5}]


def test_type_change_between_events_keeps_each_original_value() -> None:
    events = [{"v": 1}, {"v": "one"}, {"v": {"x": [1, 2]}}, {"v": True}, {"v": None}]
    table = from_events(events)
    assert is_json_field(table.schema.field("v"))
    assert to_events(table) == events


def test_integers_beyond_int64_survive_exactly() -> None:
    events = [{"n": 2**70}, {"n": 5}]
    assert to_events(from_events(events)) == events


def test_empty_objects_and_nested_values_round_trip() -> None:
    events = [{"o": {}}, {"o": {}}]
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
