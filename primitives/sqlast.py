"""Reading DuckDB's JSON parse of an expression (`json_serialize_sql`): the few node shapes both
static checks (primitives.sqlcheck, primitives.sqlgrowth) need, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# List functions whose second argument may be a lambda: those that build a value per element,
# and those that keep elements by a condition
LAMBDA_BUILDERS = frozenset({"list_transform", "list_apply", "array_transform", "array_apply"})
LAMBDA_FILTERS = frozenset({"list_filter", "array_filter"})
LAMBDA_FUNCTIONS = LAMBDA_BUILDERS | LAMBDA_FILTERS


def iter_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every node of a parse tree (or of a part of one), the node itself first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from iter_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_nodes(value)


def lambda_params(lhs: Any) -> frozenset[str]:
    """`lambda x: ...` or `lambda x, i: ...`: the parameter names, which are not event fields."""
    return frozenset(node["column_names"][0] for node in iter_nodes(lhs)
                     if node.get("class") == "COLUMN_REF" and node.get("column_names"))


def integer_literal(node: Any) -> int | None:
    """The value of a non-negative integer written in the expression, else None."""
    literal = (node or {}).get("literal") or {}
    text = str(literal.get("text", ""))
    return int(text) if literal.get("kind") == "INTEGER" and text.isdigit() else None


def string_literal(node: Any) -> str | None:
    """The text of a string written in the expression ('' for an empty one), else None."""
    literal = (node or {}).get("literal") or {}
    return str(literal.get("text", "")) if literal.get("kind") == "STRING" else None
