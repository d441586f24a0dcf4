"""Static check of the SQL expressions agents write (filter, transform.set, aggregate.measures, derive.when).

We never splice an expression into SQL unchecked. The expression is wrapped in a statement of our
own, `SELECT (<expr>) AS __lb_expr FROM batch`, which DuckDB parses into its own AST
(`json_serialize_sql`); we then require the statement to have exactly the shape we built (one
SELECT, one output, FROM batch, no WHERE/GROUP/CTE...), so text that closes our parenthesis and
smuggles a clause or a second statement fails, and walk the expression tree against an allowlist:
column references, literals, operators, CASE, CAST, IN lists, and the functions in
`SCALAR_FUNCTIONS` (plus `AGGREGATE_FUNCTIONS` for aggregate.measures).
Anything else — subqueries, window functions, table functions, parameters, settings or
environment access, non-deterministic functions — is refused with a message that says what to
write instead. The connection that runs the expressions is locked down too (`sqlexec`); this check
is the first of the two layers, and the one that gives the agent a useful message.

Decisions: lambdas are allowed only in the `lambda x: ...` form and only as the argument of the
list functions listed (pure, and their parameters are not fields); `hash`/`md5`/`sha256` are
allowed (deterministic for a given DuckDB version); invisible characters (control and format
characters, bidi overrides) are refused anywhere, since they hide what a reviewer reads.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from primitives import sqlast
from primitives.diagnostics import Diagnostic
from primitives.duck import locked_connection
from primitives.sqlast import LAMBDA_FUNCTIONS, integer_literal, iter_nodes, string_literal
from primitives.sqlgrowth import MAX_BUILT_BYTES, MAX_GROWTH, growth_problem

if TYPE_CHECKING:
    import duckdb

# duckdb itself is imported where it is first needed: a pipeline without SQL (a Python transform,
# say) then never pays its ~50 ms import, and `logbus test` starts that much sooner.

Role = Literal["predicate", "scalar", "aggregate"]
ROLES: tuple[str, ...] = ("predicate", "scalar", "aggregate")
MAX_EXPRESSION_CHARS = 4096
MAX_DEPTH = 64
ALIAS = "__lb_expr"
PREFIX = "SELECT ("
SUFFIX = f"\n) AS {ALIAS} FROM batch"
INTERNAL_PREFIX = "__lb_"  # columns the steps add for themselves (window bounds); not for agents

# The allowlist, in one place. category -> (why it is safe / what it is for, names).
SCALAR_FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "string": ("pure text functions", (
        "lower", "upper", "lcase", "ucase", "length", "char_length", "character_length", "strlen",
        "concat", "concat_ws", "substring", "substr", "left", "right", "trim", "ltrim", "rtrim",
        "replace", "reverse", "repeat", "lpad", "rpad", "split_part", "string_split", "str_split",
        "string_to_array", "starts_with", "ends_with", "suffix", "prefix", "contains", "position",
        "strpos", "instr", "format", "printf", "md5", "sha256", "hash", "levenshtein",
        "jaro_winkler_similarity", "ascii", "chr", "translate", "strip_accents", "url_decode",
        "url_encode", "like_escape", "ilike_escape", "array_to_string",
    )),
    "regex": ("RE2 regular expressions: linear time, no catastrophic backtracking", (
        "regexp_matches", "regexp_full_match", "regexp_extract", "regexp_extract_all",
        "regexp_replace", "regexp_split_to_array", "regexp_escape",
    )),
    "math": ("pure arithmetic", (
        "abs", "ceil", "ceiling", "floor", "round", "trunc", "sqrt", "cbrt", "pow", "power", "exp",
        "ln", "log", "log2", "log10", "sign", "greatest", "least", "isnan", "isinf", "isfinite",
        "gcd", "lcm", "even", "pi", "degrees", "radians", "bit_count", "fmod", "mod",
    )),
    "time": ("calendar arithmetic on values (no clock reads: replays must give the same answer)", (
        "date_trunc", "date_part", "datepart", "date_diff", "datediff", "date_sub", "date_add",
        "epoch", "epoch_ms", "epoch_us", "make_timestamp", "make_date", "to_timestamp", "strftime",
        "strptime", "try_strptime", "year", "month", "day", "hour", "minute", "second",
        "millisecond", "dayofweek", "dayofyear", "dayofmonth", "week", "weekday", "isodow",
        "yearweek", "quarter", "dayname", "monthname", "last_day", "time_bucket", "timezone",
        "to_seconds", "to_minutes", "to_hours", "to_days", "to_milliseconds", "to_microseconds",
    )),
    "json": ("read JSON text held in a field", (
        "json_extract", "json_extract_string", "json_extract_path", "json_extract_path_text",
        "json_value", "json_exists", "json_type", "json_valid", "json_array_length", "json_keys",
        "json_contains", "to_json", "json", "json_object", "json_array",
    )),
    "list and struct": ("values inside nested fields", (
        "list_value", "list_contains", "list_has", "array_contains", "list_extract",
        "list_element", "array_extract", "list_slice", "array_slice", "len", "array_length",
        "list_transform", "list_apply", "array_transform", "array_apply", "list_filter",
        "array_filter", "list_distinct", "list_sort", "list_reverse_sort", "list_has_any",
        "list_has_all", "list_position", "list_concat", "list_unique", "struct_extract",
        "struct_pack", "row", "map", "map_extract", "element_at", "cardinality", "flatten",
    )),
    "conditional": ("null handling and branching", ("coalesce", "ifnull", "nullif", "if", "typeof")),
}
# Names the parser turns into operator nodes rather than function calls (listed above for the guide).
PARSER_FORMS = frozenset({"coalesce", "ifnull"})
AGGREGATE_FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aggregate": ("one value per window and key (aggregate.measures only)", (
        "count", "count_star", "count_if", "sum", "avg", "mean", "min", "max", "median", "mode",
        "quantile", "quantile_cont", "quantile_disc", "approx_quantile", "approx_count_distinct",
        "list", "array_agg", "string_agg", "group_concat", "arg_max", "arg_min", "argmax",
        "argmin", "max_by", "min_by", "stddev", "stddev_pop", "stddev_samp", "variance",
        "var_pop", "var_samp", "first", "last", "any_value", "bool_and", "bool_or", "product",
        "histogram", "entropy", "kurtosis", "skewness", "corr", "covar_pop", "covar_samp", "mad",
    )),
}
# Operators DuckDB parses into function calls (`a LIKE b` is `~~`, `a ->> '$.x'` is `->>`).
OPERATORS: dict[str, str] = {
    "+": "+", "-": "-", "*": "*", "/": "/", "//": "//", "%": "%", "**": "**", "^": "^",
    "||": "||", "~~": "LIKE", "!~~": "NOT LIKE", "~~*": "ILIKE", "!~~*": "NOT ILIKE",
    "~~~": "GLOB", "like_escape": "LIKE ... ESCAPE", "not_like_escape": "NOT LIKE ... ESCAPE",
    "ilike_escape": "ILIKE ... ESCAPE", "not_ilike_escape": "NOT ILIKE ... ESCAPE",
    "^@": "^@ (starts with)", "&": "&", "|": "|", "<<": "<<",
    ">>": ">>", "~": "~", "->>": "->>", "@>": "@>", "<@": "<@", "&&": "&&",
}
# Functions whose output size an argument sets. That argument must be a small number written in
# the expression: `repeat(x, 2000000000)` is a short expression over a one-byte field and asks for
# gigabytes, and DuckDB's memory_limit does not bound the strings an expression builds (measured:
# 2.9 GB resident under a 1 GB limit). Taken from a field, the size would be the event's to choose.
SIZED_ARGUMENTS: dict[str, int] = {"repeat": 1, "lpad": 1, "rpad": 1}  # name -> argument index
FORMAT_FUNCTIONS = frozenset({"format", "printf"})  # the width is in the format string
MAX_SIZE_ARGUMENT = 10_000
# Refused with a specific reason (anything not allowlisted is refused anyway).
DENIED: dict[str, str] = {
    **dict.fromkeys(("read_csv", "read_csv_auto", "read_parquet", "read_json", "read_json_auto",
                     "read_ndjson", "read_text", "read_blob", "glob", "parquet_scan", "csv_scan",
                     "sniff_csv", "parquet_metadata", "parquet_schema", "read_json_objects"),
                    "reads files"),
    **dict.fromkeys(("getenv", "current_setting", "getvariable", "version", "current_database",
                     "current_schema", "current_schemas", "current_user", "user", "session_user",
                     "current_query", "txid_current", "pg_typeof"),
                    "reads the environment or settings"),
    **dict.fromkeys(("now", "current_timestamp", "current_date", "current_time", "get_current_time",
                     "get_current_timestamp", "today", "random", "setseed", "uuid", "gen_random_uuid",
                     "nextval", "currval", "transaction_timestamp", "age"),
                    "is not deterministic, so replays would disagree"),
    **dict.fromkeys(("query", "query_table", "json_execute_serialized_sql", "json_serialize_sql",
                     "json_deserialize_sql", "unnest", "range", "generate_series"),
                    "runs SQL or makes rows"),
}


# Bare keywords DuckDB binds to a function when no field has that name (`SELECT current_date`):
# unquoted, they read the clock or the session, so they are refused; "current_date" (quoted) is a field.
# `user` is left out on purpose: it is a common log field, and the steps always supply every field
# an expression names (NULL when absent), so `user` never falls through to current_user.
CLOCK_KEYWORDS = frozenset({"current_date", "current_time", "current_timestamp", "localtime",
                            "localtimestamp"})
SESSION_KEYWORDS = frozenset({"current_user", "session_user", "current_role", "current_catalog",
                              "current_schema"})
# The name under which the steps register the batch; `batch.x` would bind to its column x, not to a
# field `batch`, so qualified references are refused (write `x`).
TABLE_NAMES = frozenset({"batch"})
def _names(table: dict[str, tuple[str, tuple[str, ...]]]) -> frozenset[str]:
    return frozenset(name for _, names in table.values() for name in names)


SCALAR_NAMES = _names(SCALAR_FUNCTIONS)
AGGREGATE_NAMES = _names(AGGREGATE_FUNCTIONS)
# The public names the guide and other modules list.
ALLOWED_SCALAR_FUNCTIONS: frozenset[str] = SCALAR_NAMES
ALLOWED_AGGREGATE_FUNCTIONS: frozenset[str] = AGGREGATE_NAMES
_ALLOWED_OPERATOR_NODES = frozenset({
    "OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "OPERATOR_COALESCE", "COMPARE_IN",
    "COMPARE_NOT_IN", "ARRAY_EXTRACT", "ARRAY_SLICE", "STRUCT_EXTRACT", "OPERATOR_NULLIF",
})


@dataclass
class _Walk:
    expr: str
    role: str
    problems: list[Diagnostic] = field(default_factory=list)
    columns: set[str] = field(default_factory=set)
    aggregates: int = 0


def check_expression(expr: str, *, role: str) -> list[Diagnostic]:
    """Problems with `expr` as a SQL expression of `role` ("predicate", "scalar" or "aggregate")."""
    if role not in ROLES:
        raise ValueError(f"unknown expression role {role!r}; roles: {', '.join(ROLES)}")
    return list(_analyse(expr, role)[0])


def referenced_columns(expr: str) -> set[str]:
    """The event fields `expr` reads (the first part of `a.b`); empty when it does not parse."""
    # the aggregate role walks into aggregate calls too, so it sees every field
    return set(_analyse(expr, "aggregate")[1])


def aggregate_inputs(expr: str) -> tuple[str, ...]:
    """The per-event expressions the aggregate calls of measure `expr` evaluate: each call's
    arguments, ORDER BY expressions and FILTER condition, as SQL text (DuckDB's own rendering of
    its parse). They say which event a measure fails on: an event for which one of them fails
    makes every group holding it fail (see primitives.steps.aggregate). Empty for count(*) alone,
    and for an expression that does not pass `check_expression` as an aggregate."""
    return _aggregate_inputs(expr)


@lru_cache(maxsize=1024)
def _aggregate_inputs(expr: str) -> tuple[str, ...]:
    if _analyse(expr, "aggregate")[0]:
        return ()
    tree = _serialize(PREFIX + expr + SUFFIX)
    node = _expression_of(tree)
    assert node is not None  # it passed the check above
    inputs: list[Any] = []
    for found in iter_nodes(node):
        name = str(found.get("function_name", "")).lower()
        if found.get("class") == "FUNCTION" and name in AGGREGATE_NAMES:
            orders = (found.get("order_bys") or {}).get("orders") or []
            inputs += [arg.get("expression") for arg in found.get("arguments") or []]
            inputs += [order.get("expression") for order in orders]
            inputs.append(found.get("filter"))
    texts = [_render(tree, part) for part in inputs if isinstance(part, dict)]
    return tuple(dict.fromkeys(texts))  # in order, each once


def _render(tree: dict[str, Any], expression: dict[str, Any]) -> str:
    """`expression` (a node of `tree`) as SQL text: our statement with it as the one output,
    turned back into SQL by DuckDB, and the statement's frame taken off again."""
    statement = json.loads(json.dumps(tree))
    statement["statements"][0]["node"]["select_list"] = [{**expression, "alias": ALIAS}]
    with _LOCK:
        assert _CONNECTION is not None  # _serialize opened it
        row = _CONNECTION.execute("SELECT json_deserialize_sql($1)", [json.dumps(statement)]).fetchone()
    assert row is not None
    text = str(row[0])
    head, tail = "SELECT ", f" AS {ALIAS} FROM batch"
    if not (text.startswith(head) and text.endswith(tail)):
        raise ValueError(f"unexpected rendering of a measure's input: {text!r}")
    return text[len(head) : -len(tail)]


def sql_quote(name: str) -> str:
    """A column name as a DuckDB identifier: always double-quoted, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


@lru_cache(maxsize=4096)
def _analyse(expr: str, role: str) -> tuple[tuple[Diagnostic, ...], frozenset[str]]:
    if not isinstance(expr, str) or not expr.strip():
        return (_diag("sql-empty", "the SQL expression is empty", hint=_ROLE_HINT[role]),), frozenset()
    if len(expr) > MAX_EXPRESSION_CHARS:
        return (_diag("sql-too-long", f"the SQL expression is {len(expr):,} characters; the limit is "
                      f"{MAX_EXPRESSION_CHARS:,}", hint="split the logic over several steps"),), frozenset()
    found = _lexical(expr)
    if found:
        return (found,), frozenset()
    tree = _serialize(PREFIX + expr + SUFFIX)
    if tree.get("error"):
        return (_parse_error(expr, tree),), frozenset()
    node = _expression_of(tree)
    if node is None:
        return (_diag("sql-statement", "the text is not a single expression: it closes the expression and "
                      "adds SQL clauses or statements of its own",
                      hint="write only an expression over fields, e.g. status >= 500 AND path LIKE 'a%'"),
                ), frozenset()
    walk = _Walk(expr, role)
    _visit(node, walk, depth=0, in_aggregate=False, lambda_params=frozenset())
    if not walk.problems:  # only over the shapes the walk admits
        grows = growth_problem(node)
        if grows is not None:
            walk.problems.append(_diag("sql-size", grows.message, expr=expr,
                                       offset=_offset(grows.where.get("query_location")),
                                       hint="build values from a field and literals of modest size; "
                                            "split the work over several steps"))
    if role == "aggregate" and not walk.problems and walk.aggregates == 0:
        walk.problems.append(_diag("sql-aggregate-required", "a measure must aggregate the window's events",
                                   hint="use an aggregate such as count(*), sum(bytes), "
                                        "approx_count_distinct(src_ip)"))
    return tuple(walk.problems), frozenset(walk.columns)


_ROLE_HINT = {
    "predicate": "write a condition such as status >= 500",
    "scalar": "write a value such as lower(user) or bytes / 1024",
    "aggregate": "write an aggregate such as count(*) or sum(bytes)",
}


def _lexical(expr: str) -> Diagnostic | None:
    """Invisible characters, comments and statement separators: the ways to hide or cut text."""
    for offset, char in enumerate(expr):
        if char in "\t\n\r":
            continue
        if unicodedata.category(char) in ("Cc", "Cf"):
            name = unicodedata.name(char, "")
            return _diag("sql-syntax", f"invisible character {name + ' ' if name else ''}(U+{ord(char):04X}) "
                         "is not allowed in SQL expressions", expr=expr, offset=offset,
                         hint=f"remove it; to match it inside text, use chr({ord(char)})")
    import duckdb

    try:
        tokens = duckdb.tokenize(expr)
    except Exception:  # the parser will say what is wrong
        return None
    for start, kind in tokens:
        if kind == duckdb.token_type.comment:
            return _diag("sql-comment", "comments are not allowed in SQL expressions", expr=expr,
                         offset=start, hint="remove the -- or /* */ comment")
    starts = [start for start, _ in tokens]
    kinds = [kind for _, kind in tokens]
    for index, (start, kind) in enumerate(zip(starts, kinds, strict=True)):
        if kind in (duckdb.token_type.string_const, duckdb.token_type.comment):
            continue
        end = starts[index + 1] if index + 1 < len(starts) else len(expr)
        semicolon = expr.find(";", start, end)
        if semicolon >= 0:
            return _diag("sql-statement", "';' is not allowed: an expression is not a statement", expr=expr,
                         offset=semicolon, hint="write one expression, without ';'")
    return None


_LOCK = threading.Lock()
_CONNECTION: duckdb.DuckDBPyConnection | None = None


def _serialize(sql: str) -> dict[str, Any]:
    """DuckDB's own parse of `sql`, as JSON; parsing only, nothing is bound or run."""
    global _CONNECTION
    with _LOCK:
        if _CONNECTION is None:
            _CONNECTION = locked_connection()
        row = _CONNECTION.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
    assert row is not None
    result: dict[str, Any] = json.loads(row[0])
    return result


def _parse_error(expr: str, tree: dict[str, Any]) -> Diagnostic:
    message = str(tree.get("error_message", "not a SQL expression")).split("\n", 1)[0]
    position = tree.get("position")
    offset = None
    if isinstance(position, str) and position.isdigit():
        offset = int(position) - len(PREFIX)
    if offset is not None and not 0 <= offset < len(expr):
        offset = None  # the error is in our wrapper: the expression left something open
        message += " (is a parenthesis or quote left open?)"
    if tree.get("error_type") == "not implemented":
        return _diag("sql-statement", "only a single expression is allowed, not a statement",
                     hint="write an expression such as status >= 500")
    return _diag("sql-syntax", f"SQL syntax error: {message}", expr=expr, offset=offset,
                 hint="check quotes ('text' for strings, \"name\" for fields) and parentheses")


def _expression_of(tree: dict[str, Any]) -> dict[str, Any] | None:
    """The one expression in our statement, or None when the statement is not the one we built."""
    statements = tree.get("statements") or []
    if len(statements) != 1:
        return None
    node = statements[0].get("node") or {}
    expected_empty = ("modifiers", "group_expressions", "group_sets")
    if node.get("type") != "SELECT_NODE" or any(node.get(key) for key in expected_empty):
        return None
    if (node.get("cte_map") or {}).get("map") or any(
            node.get(key) is not None for key in ("where_clause", "having", "sample", "qualify")):
        return None
    if node.get("aggregate_handling") != "STANDARD_HANDLING":
        return None
    source = node.get("from_table") or {}
    if (source.get("type") != "BASE_TABLE" or source.get("table_name") != "batch" or source.get("alias")
            or source.get("schema_name") or source.get("catalog_name") or source.get("sample") is not None
            or source.get("at_clause") is not None or source.get("column_name_alias")):
        return None
    selected = node.get("select_list") or []
    if len(selected) != 1 or selected[0].get("alias") != ALIAS:
        return None
    expression: dict[str, Any] = selected[0]
    return expression


def _visit(node: Any, walk: _Walk, *, depth: int, in_aggregate: bool, lambda_params: frozenset[str]) -> None:
    if not isinstance(node, dict):
        return
    if depth > MAX_DEPTH:
        if not any(p.code == "sql-too-deep" for p in walk.problems):
            walk.problems.append(_diag("sql-too-deep", f"the expression nests deeper than {MAX_DEPTH} levels",
                                       hint="simplify it or split it over several steps"))
        return
    cls = node.get("class")
    kind = node.get("type")
    where = node.get("query_location")

    def refuse(code: str, message: str, hint: str) -> None:
        walk.problems.append(_diag(code, message, expr=walk.expr, offset=_offset(where), hint=hint))

    def children(*nodes: Any, aggregate: bool = in_aggregate, params: frozenset[str] = lambda_params) -> None:
        for child in nodes:
            _visit(child, walk, depth=depth + 1, in_aggregate=aggregate, lambda_params=params)

    if cls == "CONSTANT":
        return
    if cls == "COLUMN_REF":
        names = node.get("column_names") or []
        root = names[0] if names else ""
        if root in lambda_params:
            return
        if len(names) >= 2 and (root.lower() in TABLE_NAMES or names[1].lower() in TABLE_NAMES):
            field_name = names[-1] if root.lower() not in TABLE_NAMES else names[1]
            refuse("sql-column", f"{'.'.join(names)} names the table, not an event field",
                   f"write the field by name, e.g. {sql_quote(field_name)}")
            return
        quoted = _text_at(walk.expr, where).startswith('"')
        if len(names) == 1 and not quoted and root.lower() in CLOCK_KEYWORDS | SESSION_KEYWORDS:
            clock = root.lower() in CLOCK_KEYWORDS
            refuse("sql-function-not-allowed", f"{root} is not allowed: it "
                   + ("reads the clock, so replays would disagree" if clock else "reads the session"),
                   (_DETERMINISM_HINT if clock else "an expression sees only the event's fields")
                   + f"; for a field named {root}, quote it: {sql_quote(root)}")
            return
        if root.startswith(INTERNAL_PREFIX):
            refuse("sql-column", f"field {root!r} is internal to LogBus", "use another field name")
            return
        walk.columns.add(root)
        if walk.role == "aggregate" and not in_aggregate:
            refuse("sql-aggregate-required", f"field {root!r} is used outside an aggregate function",
                   f"wrap it, e.g. max({sql_quote(root)}) or any_value({sql_quote(root)}), "
                   "or add it to the step's `by` list")
        return
    if cls in ("CONJUNCTION", "OPERATOR") or cls == "COMPARISON" or cls == "BETWEEN":
        if cls == "OPERATOR" and kind not in _ALLOWED_OPERATOR_NODES:
            refuse("sql-operator", f"operator {kind} is not allowed", "use comparisons, AND/OR/NOT, IN, "
                   "IS NULL, LIKE, CASE and the listed functions")
            return
        children(*(node.get("children") or []), node.get("left"), node.get("right"),
                 node.get("input"), node.get("lower"), node.get("upper"))
        return
    if cls == "CASE":
        for check in node.get("case_checks") or []:
            children(check.get("when_expr"), check.get("then_expr"))
        children(node.get("else_expr"))
        return
    if cls == "CAST":
        bad_type = _odd_type(node.get("type_expr"))
        if bad_type is not None:
            refuse("sql-cast", f"cast to {bad_type} is not allowed", "cast to a built-in type, e.g. "
                   "CAST(bytes AS BIGINT), ts::TIMESTAMP, payload::JSON, tags::VARCHAR[]")
            return
        children(node.get("child"))
        return
    if cls == "COLLATE":
        children(node.get("child"))
        return
    if cls == "FUNCTION":
        _function(node, walk, refuse, children, in_aggregate, lambda_params)
        return
    if cls == "LAMBDA":
        # Outside a list function, `a -> '$.x'` is DuckDB's JSON extract operator, parsed as a lambda.
        if node.get("syntax_type") != "SINGLE_ARROW":
            refuse("sql-lambda", "a lambda is only allowed as the argument of a list function",
                   "e.g. list_filter(tags, lambda t: t LIKE 'x%')")
            return
        children(node.get("lhs"), node.get("expr"))
        return
    if cls == "SUBQUERY":
        refuse("sql-subquery", "subqueries (SELECT, EXISTS, IN (SELECT ...), = ANY) are not allowed",
               "an expression sees one event; use IN ('a', 'b') for a list, or a lookup table with enrich")
        return
    if cls == "WINDOW":
        refuse("sql-window", "window functions (OVER ...) are not allowed",
               "for values over time use an aggregate step with a window, e.g. aggregate: {window: 60s}")
        return
    if cls == "PARAMETER":
        refuse("sql-parameter", "parameters ($1, ?, $name) are not allowed", "write the value as a literal")
        return
    if cls == "STAR":
        refuse("sql-star", "* and COLUMNS(...) are not allowed", "name the fields you need")
        return
    if cls == "POSITIONAL_REFERENCE":
        refuse("sql-column", "positional references (#1) are not allowed", "name the field")
        return
    refuse("sql-unsupported", f"{str(cls).lower()} expressions are not supported",
           "use fields, literals, operators, CASE, CAST and the listed functions")


def _function(node: dict[str, Any], walk: _Walk, refuse: Any, children: Any, in_aggregate: bool,
              lambda_params: frozenset[str]) -> None:
    raw_name = str(node.get("function_name", ""))
    name = raw_name.lower()
    if not raw_name.isascii():
        refuse("sql-function-not-allowed", f"function {raw_name!r} is not allowed: function names are "
               "plain ASCII", "retype the name; see the guide's SQL topic for the allowed functions")
        return
    shown = "count(*)" if name == "count_star" else f"{name}()"
    arguments = [arg.get("expression") for arg in node.get("arguments") or []]
    order_exprs = [order.get("expression") for order in (node.get("order_bys") or {}).get("orders") or []]
    if node.get("schema") or node.get("catalog"):
        refuse("sql-function-not-allowed",
               f"qualified function names ({node.get('schema')}.{name}) are not allowed",
               f"call {name}(...) without a schema")
        return
    if node.get("is_operator"):
        if name not in OPERATORS:
            refuse("sql-operator", f"operator {name!r} is not allowed",
                   "use the usual arithmetic, comparison, || and LIKE/ILIKE/GLOB operators")
            return
        children(*arguments)
        return
    if name in DENIED:
        refuse("sql-function-not-allowed", f"function {name}() is not allowed: it {DENIED[name]}",
               _function_hint(name))
        return
    if name in AGGREGATE_NAMES:
        if walk.role != "aggregate":
            refuse("sql-aggregate-not-allowed",
                   f"aggregate function {shown} is only allowed in aggregate.measures",
                   "this expression sees one event at a time; count or sum over a window with an "
                   "aggregate step")
            return
        if in_aggregate:
            refuse("sql-aggregate-not-allowed",
                   f"aggregate function {shown} inside another aggregate is not allowed",
                   "aggregate the event fields directly, e.g. sum(bytes)")
            return
        walk.aggregates += 1
        children(*arguments, *order_exprs, node.get("filter"), aggregate=True)
        return
    if name not in SCALAR_NAMES:
        close = difflib.get_close_matches(name, sorted(SCALAR_NAMES | AGGREGATE_NAMES), n=1)
        hint = f"did you mean {close[0]}()? " if close else ""
        refuse("sql-function-not-allowed", f"function {name}() is not allowed in LogBus SQL expressions",
               hint + "see the guide's SQL topic for the allowed functions")
        return
    if node.get("distinct") or node.get("filter") is not None or order_exprs:
        refuse("sql-function-not-allowed", "DISTINCT, FILTER and ORDER BY only apply to aggregate functions, "
               f"not {name}()", "remove them")
        return
    too_big = _size_problem(name, arguments)
    if too_big is not None:
        refuse("sql-size", too_big, f"write the size as a number up to {MAX_SIZE_ARGUMENT:,}, e.g. "
               "lpad(code, 5, '0'); sizes taken from fields are not allowed")
        return
    for argument in arguments:
        if isinstance(argument, dict) and argument.get("class") == "LAMBDA" and name in LAMBDA_FUNCTIONS:
            if argument.get("syntax_type") == "SINGLE_ARROW":
                refuse("sql-lambda", "the arrow lambda (x -> ...) is deprecated in DuckDB",
                       f"write {name}(list, lambda x: x LIKE 'a%')")
                continue
            params = sqlast.lambda_params(argument.get("lhs"))  # `lambda_params`: the ones in scope
            children(argument.get("expr"), params=lambda_params | params)
        else:
            children(argument)


def _size_problem(name: str, arguments: list[Any]) -> str | None:
    """Why the size `name` would build is not known to be small (see SIZED_ARGUMENTS), or None."""
    if name in SIZED_ARGUMENTS:
        index = SIZED_ARGUMENTS[name]
        if index >= len(arguments):
            return None  # DuckDB refuses the call itself
        size = integer_literal(arguments[index])
        if size is None or size > MAX_SIZE_ARGUMENT:
            return (f"{name}() builds a value as long as its argument {index + 1} says; it must be a "
                    f"whole number from 0 to {MAX_SIZE_ARGUMENT:,} written in the expression")
    if name in FORMAT_FUNCTIONS and arguments:
        text = string_literal(arguments[0])
        if text is None:
            return f"{name}() takes its format from a field here; write the format as a literal string"
        if "*" in text or re.search(r"\{[^{}]*\{", text) or re.search(r"\d{5,}", text):
            return (f"{name}()'s format sets a width or precision that is too large, or takes one from "
                    f"an argument; widths up to {MAX_SIZE_ARGUMENT - 1:,} written in the format are allowed")
    return None


def _function_hint(name: str) -> str:
    if "read" in name or "scan" in name or name == "glob":
        return "to join reference data use an enrich step with a registered lookup table"
    if DENIED[name].startswith("is not deterministic"):
        return _DETERMINISM_HINT
    if DENIED[name].startswith("runs SQL"):
        return "an expression computes one value per event from its fields"
    return "an expression sees only the event's fields and literals"


_DETERMINISM_HINT = ("compare with the event's time field or a literal, e.g. ts >= TIMESTAMP '2026-01-01', "
                     "not now() - INTERVAL 1 HOUR")


def _odd_type(type_expr: Any) -> str | None:
    """The cast target if it is not a plain built-in type (qualified, or with non-constant parts)."""
    if type_expr is None:
        return None
    for node in iter_nodes(type_expr):
        if "class" not in node:
            continue
        if node["class"] == "TYPE":
            if node.get("schema") or node.get("catalog"):
                path = (node.get("qualified_name") or {}).get("path") or [node.get("type_name")]
                return ".".join(str(part) for part in path)
        elif node["class"] != "CONSTANT":
            return f"a type built from a {str(node['class']).lower()} expression"
    return None


def _text_at(expr: str, location: Any) -> str:
    offset = _offset(location)
    return expr[offset:] if offset is not None and 0 <= offset < len(expr) else ""


def _offset(location: Any) -> int | None:
    return location - len(PREFIX) if isinstance(location, int) else None


def _diag(code: str, message: str, *, hint: str | None = None, expr: str | None = None,
          offset: int | None = None) -> Diagnostic:
    line = col = None
    if expr is not None and offset is not None and 0 <= offset <= len(expr):
        before = expr[:offset]
        line = before.count("\n") + 1
        col = offset - (before.rfind("\n") + 1) + 1
    return Diagnostic(code, message, line=line, col=col, hint=hint)


def describe_sql() -> str:
    """The SQL rules and allowlisted functions, as Markdown for the guide."""
    lines = [
        "Expressions (in `filter`, `transform.set`, `aggregate.measures`, `derive.when`) are DuckDB SQL "
        "over the event's fields, checked before anything runs:",
        "",
        "- Fields by name; quote odd names with double quotes: `\"user-agent\"`. Nested: `req.path` or "
        "`req['path']`. Strings in single quotes: `'admin'`.",
        "- A field missing from an event is NULL. A condition that is NULL drops the event "
        "(`status >= 500` drops events without `status`); write `status IS NULL OR ...` to keep them.",
        "- A field whose type varies between events (a number in some, text in others) has its own type "
        "where the events of a batch agree, and is text where they do not: a string as it is, a number "
        "or boolean as its JSON spelling (`0`, `true`). Compare such a field as text, which holds "
        "either way: `CAST(user AS VARCHAR) = 'root'` (`user = 'root'` fails on a batch where every "
        "`user` is a number). A field that mixes objects or lists with other values is JSON text: "
        "read it with `->>`.",
        "- Allowed: literals, arithmetic, comparisons, `AND`/`OR`/`NOT`, `BETWEEN`, `IN (...)` lists, "
        "`IS [NOT] NULL`, `LIKE`/`ILIKE`/`GLOB`/`SIMILAR TO`, `CASE`, `CAST`/`TRY_CAST`/`::`, "
        "`->>`/`->` on JSON text, lambdas in list functions (`list_filter(tags, lambda t: t LIKE 'x%')`), "
        "and the functions below.",
        "- Not allowed: subqueries, `EXISTS`, window functions (`OVER`), table functions (`read_csv`, ...), "
        "settings/environment (`current_setting`, `getenv`), clock and randomness (`now()`, `random()`: "
        "replays must agree), parameters, comments, `;`.",
        "- Aggregate functions only in `aggregate.measures`, where every field must be inside one "
        "(`count(*)`, `sum(bytes)`, `count(DISTINCT ip)`, `sum(bytes) FILTER (WHERE status >= 500)`).",
        "- Bare `current_date`/`current_timestamp` read the clock and are refused; quote a field with "
        "such a name (`\"current_date\"`). Write fields as `x`, not `batch.x`.",
        f"- At most {MAX_EXPRESSION_CHARS:,} characters and {MAX_DEPTH} levels of nesting.",
        f"- Sizes that build a value (`repeat(s, n)`, `lpad`/`rpad(s, n, c)`, widths in `printf`/`format` "
        f"strings) are whole numbers up to {MAX_SIZE_ARGUMENT:,} written in the expression, and the "
        "format string is a literal: an event must not choose how much memory an expression takes.",
        f"- A value an expression builds may grow to at most {MAX_GROWTH:.0f}x the fields it reads "
        f"(`repeat(message, 100)` is refused), and to {MAX_BUILT_BYTES // 1024} KiB of literal-made "
        "text per event. A `replace`/`regexp_replace` replacement and an `array_to_string`/`concat_ws` "
        "separator are literals, and a lambda builds values from its own parameter only "
        "(`list_filter(tags, lambda t: t = user)` may compare with other fields).",
        "",
        "Examples:",
        "",
        "```yaml",
        "- filter: \"status >= 400 AND path LIKE '/admin%' AND NOT regexp_matches(ua, '(?i)bot')\"",
        "- transform:",
        "    set: {kb: \"CAST(bytes AS DOUBLE) / 1024\", user: \"json_extract_string(payload, '$.user')\"}",
        "- aggregate:",
        "    window: 60s",
        "    by: [src_ip]",
        "    measures:",
        "      errors: \"count(*) FILTER (WHERE status >= 500)\"",
        "      p99: \"quantile_cont(latency, 0.99)\"",
        "```",
        "",
        "Functions:",
        "",
    ]
    for category, (reason, names) in {**SCALAR_FUNCTIONS, **AGGREGATE_FUNCTIONS}.items():
        lines.append(f"- **{category}** ({reason}): " + ", ".join(f"`{n}`" for n in sorted(names)))
    return "\n".join(lines)
