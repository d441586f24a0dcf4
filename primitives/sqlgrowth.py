"""How large the values an expression builds can grow, checked before it runs.

DuckDB's memory_limit does not bound the strings and lists an expression builds, and a query holds
a vector of 2,048 rows of them at once. So one short expression over a modest event could take the
process down: `replace(message, 'x', message)` turns a 100 KB message of x's into 10 GB, and
`repeat(message, 10000)` a 1 MB message into 10 GB per row (measured: a `||` of 40 copies of
2,000 100 KB values was killed by the kernel under a 512 MB limit). The trial runs in the server's
process, so this is the whole control plane, not one pipeline.

Every value an expression builds gets an upper bound on its size, in bytes, as
`growth x (the bytes of the fields the row holds) + constant`, from the expression alone:

- a field counts once; a literal adds its length; most functions add up their arguments;
- `repeat(s, n)` multiplies by n; `replace`/`regexp_replace` by the replacement's length (each
  input byte can be a match); splitting text into a list by the per-element overhead;
- a value whose size is a product of two fields (a replacement or a separator read from a field,
  a lambda that builds values from fields other than its own parameter) has no such bound.

An expression is refused where a value could grow past MAX_GROWTH times the fields it reads, or
past MAX_BUILT_BYTES of literal-made bytes per row. Ordinary expressions stay far below both: a
concatenation of a few fields grows 3-4x, a split into a list 17x.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from primitives.sqlast import (
    LAMBDA_FILTERS,
    LAMBDA_FUNCTIONS,
    integer_literal,
    lambda_params,
    string_literal,
)

MAX_GROWTH = 64.0
MAX_BUILT_BYTES = 64 * 1024
_ELEMENT_BYTES = 16  # DuckDB's per-string (and per list entry) overhead: a split can make one per byte
# A list holds at most one element per this many of its bytes: strings take 16, numbers 8 (bools
# take 1, and a list of them is the one case this bound undercounts, by 8x)
_BYTES_PER_ELEMENT = 8.0
_LIST_BUILDERS = frozenset({"list_value", "struct_pack", "row", "map", "list_concat"})
_TEXT_FACTOR = 8.0  # a number or a timestamp as text: at most ~3x its bytes; 8 for margin
_JSON_FACTOR = 6.0  # a control character escaped as \u0000
_SMALL = 64.0  # a number, a bool, a hash: bytes that do not depend on the input's size

# Functions whose result is a number, a bool or a short fixed-size text, whatever their input.
SMALL_RESULTS = frozenset({
    "length", "char_length", "character_length", "strlen", "starts_with", "ends_with", "suffix",
    "prefix", "contains", "position", "strpos", "instr", "md5", "sha256", "hash", "levenshtein",
    "jaro_winkler_similarity", "ascii", "chr", "regexp_matches", "regexp_full_match", "list_contains",
    "list_has", "array_contains", "list_has_any", "list_has_all", "list_position", "len",
    "array_length", "cardinality", "json_valid", "json_exists", "json_type", "json_array_length",
    "json_contains", "typeof", "abs", "ceil", "ceiling", "floor", "round", "trunc", "sqrt", "cbrt",
    "pow", "power", "exp", "ln", "log", "log2", "log10", "sign", "isnan", "isinf", "isfinite", "gcd",
    "lcm", "even", "pi", "degrees", "radians", "bit_count", "fmod", "mod", "date_trunc", "date_part",
    "datepart", "date_diff", "datediff", "date_sub", "date_add", "epoch", "epoch_ms", "epoch_us",
    "make_timestamp", "make_date", "to_timestamp", "strptime", "try_strptime", "year", "month", "day",
    "hour", "minute", "second", "millisecond", "dayofweek", "dayofyear", "dayofmonth", "week",
    "weekday", "isodow", "yearweek", "quarter", "dayname", "monthname", "last_day", "time_bucket",
    "timezone", "to_seconds", "to_minutes", "to_hours", "to_days", "to_milliseconds",
    "to_microseconds", "count", "count_star", "count_if", "sum", "avg", "mean", "median",
    "approx_count_distinct", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop",
    "var_samp", "bool_and", "bool_or", "product", "entropy", "kurtosis", "skewness", "corr",
    "covar_pop", "covar_samp", "mad", "quantile_cont", "approx_quantile",
})
SPLITS = frozenset({"string_split", "str_split", "string_to_array", "regexp_split_to_array",
                    "regexp_extract_all"})
JSON_BUILDERS = frozenset({"to_json", "json", "json_object", "json_array"})
JOINS = frozenset({"array_to_string", "concat_ws"})  # the separator: argument 2, argument 1
_TEXT_TYPES = frozenset({"VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR", "JSON", "BLOB", "BYTEA"})


@dataclass(frozen=True, slots=True)
class Size:
    """At most `growth` x (bytes of the fields the row holds) + `constant` bytes."""

    growth: float
    constant: float

    def __add__(self, other: Size) -> Size:
        return Size(self.growth + other.growth, self.constant + other.constant)

    def times(self, factor: float) -> Size:
        return Size(self.growth * factor, self.constant * factor)

    @property
    def reads_fields(self) -> bool:
        return self.growth > 0


NOTHING = Size(0.0, 0.0)
SMALL = Size(0.0, _SMALL)
UNBOUNDED = Size(math.inf, 0.0)


@dataclass(frozen=True, slots=True)
class GrowthProblem:
    message: str
    where: dict[str, Any]  # the node that builds the value, for the caret


class _TooLarge(Exception):
    def __init__(self, problem: GrowthProblem) -> None:
        self.problem = problem


def growth_problem(node: dict[str, Any]) -> GrowthProblem | None:
    """Why a value `node` builds could grow too large (see the module docstring), or None."""
    try:
        _size(node, {}, inside_lambda=False)
    except _TooLarge as stop:
        return stop.problem
    return None


def _size(node: Any, params: dict[str, Size], *, inside_lambda: bool) -> Size:
    if not isinstance(node, dict):
        return NOTHING
    cls = node.get("class")

    def of(child: Any) -> Size:
        return _size(child, params, inside_lambda=inside_lambda)

    if cls == "CONSTANT":
        literal = node.get("literal") or {}
        return Size(0.0, float(len(str(literal.get("text", "")).encode()) + 8))
    if cls == "COLUMN_REF":
        names = node.get("column_names") or [""]
        if names[0] in params:
            return params[names[0]]
        # inside a lambda, a field is read once per element of the list: as large as the field
        # times the list's length, which the field's bytes do not bound
        return UNBOUNDED if inside_lambda else Size(1.0, 0.0)
    if cls in ("COMPARISON", "CONJUNCTION", "BETWEEN"):
        for child in (*(node.get("children") or []), node.get("left"), node.get("right"),
                      node.get("input"), node.get("lower"), node.get("upper")):
            of(child)
        return SMALL
    if cls == "OPERATOR":
        sizes = [of(child) for child in node.get("children") or []]
        kind = node.get("type")
        if kind in ("OPERATOR_COALESCE", "OPERATOR_NULLIF"):
            return _largest(sizes)
        if kind in ("ARRAY_EXTRACT", "ARRAY_SLICE", "STRUCT_EXTRACT"):
            return sizes[0] if sizes else NOTHING  # a part of the first operand
        return SMALL  # NOT, IS NULL, IN
    if cls == "CASE":
        branches = [of(check.get("then_expr")) for check in node.get("case_checks") or []]
        for check in node.get("case_checks") or []:
            of(check.get("when_expr"))
        return _largest([*branches, of(node.get("else_expr"))])
    if cls == "CAST":
        child = of(node.get("child"))
        type_name = str((node.get("type_expr") or {}).get("type_name", "")).upper()
        if type_name in _TEXT_TYPES or "[" in type_name or type_name in ("STRUCT", "LIST", "MAP"):
            return _built(node, child.times(_TEXT_FACTOR) + SMALL, "a cast to text")
        return SMALL
    if cls == "COLLATE":
        return of(node.get("child"))
    if cls == "FUNCTION":
        return _function(node, params, inside_lambda)
    return NOTHING  # everything else is refused by sqlcheck before this runs


def _function(node: dict[str, Any], params: dict[str, Size], inside_lambda: bool) -> Size:
    name = str(node.get("function_name", "")).lower()
    arguments = [arg.get("expression") for arg in node.get("arguments") or []]

    def of(child: Any) -> Size:
        return _size(child, params, inside_lambda=inside_lambda)

    if name in LAMBDA_FUNCTIONS and len(arguments) == 2:
        return _lambda(node, name, arguments, params, inside_lambda)
    sizes = [of(argument) for argument in arguments]
    for order in (node.get("order_bys") or {}).get("orders") or []:
        of(order.get("expression"))
    of(node.get("filter"))
    if name in SMALL_RESULTS:
        return SMALL
    total = sum(sizes, NOTHING)
    if name == "repeat" and len(sizes) == 2:
        return _built(node, sizes[0].times(integer_literal(arguments[1]) or 0), f"{name}()")
    if name in ("lpad", "rpad") and len(sizes) >= 2:
        return _built(node, Size(0.0, 4.0 * (integer_literal(arguments[1]) or 0)), f"{name}()")
    if name == "replace" and len(sizes) == 3:
        if sizes[2].reads_fields:
            return _built(node, UNBOUNDED, "replace() with a replacement read from a field")
        matched = max(1, len(string_literal(arguments[1]) or "x"))
        return _built(node, sizes[0].times(max(1.0, sizes[2].constant / matched)), f"{name}()")
    if name == "regexp_replace" and len(sizes) >= 3:
        if sizes[2].reads_fields:
            return _built(node, UNBOUNDED, "regexp_replace() with a replacement read from a field")
        # every position can match (an empty match), and \0 copies the match: 1 + replacement
        return _built(node, sizes[0].times(1.0 + sizes[2].constant) + sizes[2], f"{name}()")
    if name in JOINS and sizes:
        separator = sizes[1] if name == "array_to_string" and len(sizes) > 1 else sizes[0]
        if separator.reads_fields:
            return _built(node, UNBOUNDED, f"{name}() with a separator read from a field")
        return _built(node, total.times(1.0 + separator.constant), f"{name}()")
    if name in SPLITS:
        return _built(node, total.times(1.0 + _ELEMENT_BYTES), f"{name}()")
    if name in JSON_BUILDERS:
        # quotes, braces, keys' punctuation: a few bytes per argument beyond its escaped text
        return _built(node, total.times(_JSON_FACTOR) + Size(0.0, _ELEMENT_BYTES * (1 + len(sizes))),
                      f"{name}()")
    if name in ("format", "printf") and arguments:
        widths = sum(int(width) for width in re.findall(r"\d+", string_literal(arguments[0]) or ""))
        return _built(node, total.times(_TEXT_FACTOR) + Size(0.0, widths), f"{name}()")
    if name in _LIST_BUILDERS:
        return _built(node, total + Size(0.0, _ELEMENT_BYTES * len(sizes)), f"{name}()")
    return _built(node, total, f"the {name} operator" if node.get("is_operator") else f"{name}()",
                  inside_lambda)


def _lambda(node: dict[str, Any], name: str, arguments: list[Any], params: dict[str, Size],
            inside_lambda: bool) -> Size:
    """A list function with a lambda: the body runs once per element, so what it adds beyond its
    parameter is paid per element, and an element can come from every byte of the list."""
    listed = _size(arguments[0], params, inside_lambda=inside_lambda)
    function = arguments[1] or {}
    if function.get("class") != "LAMBDA":
        return _built(node, listed + _size(function, params, inside_lambda=inside_lambda), f"{name}()")
    # the parameter's own constant is the list's, paid once: the body's constant is per element
    inner = {**params, **dict.fromkeys(lambda_params(function.get("lhs")), Size(listed.growth, 0.0))}
    body = _size(function.get("expr"), inner, inside_lambda=True)
    if name in LAMBDA_FILTERS:
        return listed  # the elements kept: the body's value is a bool
    elements = Size(listed.growth / _BYTES_PER_ELEMENT, max(listed.constant / _BYTES_PER_ELEMENT, 1.0))
    built = Size(body.growth, listed.constant) + elements.times(body.constant)
    return _built(node, built, f"{name}()", inside_lambda=True)


def _built(node: dict[str, Any], size: Size, what: str, inside_lambda: bool = False) -> Size:
    """`size`, once it is known to be small enough to build."""
    if math.isinf(size.growth) and inside_lambda:
        raise _TooLarge(GrowthProblem(
            f"{what} builds a value, once per element of the list, from a field other than the "
            "lambda's parameter: its size is that field's times the list's length, which nothing "
            "bounds", node))
    if size.growth > MAX_GROWTH:
        how = ("with no bound: its size is one field's times another's" if math.isinf(size.growth) else
               f"to {size.growth:,.0f} times the bytes of the fields it reads (the limit is "
               f"{MAX_GROWTH:.0f}x)")
        raise _TooLarge(GrowthProblem(f"{what} could build a value that grows {how}", node))
    if size.constant > MAX_BUILT_BYTES:
        raise _TooLarge(GrowthProblem(
            f"{what} could build {size.constant:,.0f} bytes per event from literals (the limit is "
            f"{MAX_BUILT_BYTES:,})", node))
    return size


def _largest(sizes: list[Size]) -> Size:
    return Size(max((s.growth for s in sizes), default=0.0), max((s.constant for s in sizes), default=0.0))
