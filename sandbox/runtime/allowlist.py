"""What agent code may use: the single source of truth for the static policy and the worker runtime.

Pure data (plus `describe_language`, which renders it for the guide). `sandbox/policy.py` checks
snippets against these tables before anything runs; `sandbox/runtime/` builds the frozen module
namespaces, the curated builtins and the attribute guard from the same tables, so the two layers
cannot drift apart. Adding a name here widens both layers at once: extend with care.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Entrypoints per step kind: (entry function, optional extra functions). `filter` and `keep`
# name the same thing: a code filter step defines keep(event).
ENTRYPOINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transform": ("transform", ()),
    "filter": ("keep", ()),
    "keep": ("keep", ()),
    "rule": ("rule", ("dedup", "title", "severity", "context")),
    "derive": ("derive", ()),
}
ENTRY_ARG = {"transform": "event", "keep": "event", "rule": "event", "derive": "row"}
SEVERITIES = ("info", "low", "medium", "high", "critical")

# ---------------------------------------------------------------------------------------------
# Limits (the runtime's OutputCaps default to these; the guide quotes them).
MAX_SOURCE_BYTES = 64 * 1024
MAX_AST_DEPTH = 100
MAX_OUTPUT_BYTES = 1024 * 1024  # per input event, approximate JSON size of everything it returned
MAX_OUTPUT_DEPTH = 32
MAX_TEXT_FIELD = 1000  # dedup / title strings of a rule
MAX_RANGE = 10_000_000
MAX_PRINT_LINES = 200  # per batch
MAX_PRINT_BYTES = 64 * 1024  # per batch
MAX_INT = 2**63 - 1  # ints in this range go to Arrow int64 columns (the fast path of the checks)
MIN_INT = -(2**63)
# Larger ints are data too (u64 hashes, 128-bit ids): they travel as decimal text (codec.BIGINT)
# and are stored as JSON text (primitives.batch). The bound keeps every one below Python's own
# 4,300-digit limit on int <-> str conversion.
MAX_INT_BITS = 14_000  # about 4,200 decimal digits

# ---------------------------------------------------------------------------------------------
# Modules: import name -> members exposed on its frozen namespace. Everything not listed does not
# exist for the snippet (`datetime.sys`, `re.enum`, `json.codecs`, `collections.abc` ...).
# Left out on purpose: datetime.now/today/utcnow (non-deterministic: replays must give the same
# result, use the event's time field), collections.namedtuple (it execs generated code),
# re.purge/template, json.load/dump (files), hashlib.new/pbkdf2_hmac/scrypt/file_digest,
# hashlib.shake_* (caller-chosen digest sizes), statistics' re-exported helpers.
MODULES: dict[str, tuple[str, ...]] = {
    "re": (
        "compile", "search", "match", "fullmatch", "findall", "finditer", "split", "sub", "subn",
        "escape", "error", "A", "ASCII", "I", "IGNORECASE", "M", "MULTILINE", "S", "DOTALL", "X",
        "VERBOSE", "U", "UNICODE", "NOFLAG",
    ),
    "json": ("loads", "dumps", "JSONDecodeError"),
    "math": (
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "comb", "copysign",
        "cos", "cosh", "degrees", "dist", "e", "erf", "erfc", "exp", "exp2", "expm1", "fabs", "factorial",
        "floor", "fmod", "frexp", "fsum", "gamma", "gcd", "hypot", "inf", "isclose", "isfinite", "isinf",
        "isnan", "isqrt", "lcm", "ldexp", "lgamma", "log", "log10", "log1p", "log2", "modf", "nan",
        "nextafter", "perm", "pi", "pow", "prod", "radians", "remainder", "sin", "sinh", "sqrt", "tan",
        "tanh", "tau", "trunc", "ulp",
    ),
    "datetime": ("date", "datetime", "time", "timedelta", "timezone", "UTC", "MINYEAR", "MAXYEAR"),
    "ipaddress": (
        "ip_address", "ip_network", "ip_interface", "IPv4Address", "IPv6Address", "IPv4Network",
        "IPv6Network", "IPv4Interface", "IPv6Interface", "AddressValueError", "NetmaskValueError",
        "collapse_addresses", "summarize_address_range",
    ),
    "hashlib": (
        "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_224", "sha3_256", "sha3_384",
        "sha3_512", "blake2b", "blake2s",
    ),
    "base64": (
        "b64encode", "b64decode", "urlsafe_b64encode", "urlsafe_b64decode", "standard_b64encode",
        "standard_b64decode", "b32encode", "b32decode", "b16encode", "b16decode", "b85encode",
        "b85decode",
    ),
    "urllib.parse": (
        "urlparse", "urlsplit", "urlunparse", "urlunsplit", "urljoin", "urldefrag", "parse_qs",
        "parse_qsl", "quote", "quote_plus", "unquote", "unquote_plus", "urlencode",
    ),
    "statistics": (
        "mean", "fmean", "geometric_mean", "harmonic_mean", "median", "median_low", "median_high",
        "median_grouped", "mode", "multimode", "pstdev", "pvariance", "stdev", "variance", "quantiles",
        "correlation", "covariance", "linear_regression", "StatisticsError",
    ),
    "collections": ("Counter", "defaultdict", "deque", "OrderedDict"),
}
# Packages that exist only to reach an allowed submodule: `import urllib.parse` binds `urllib`.
PACKAGES: dict[str, tuple[str, ...]] = {"urllib": ("parse",)}

# Modules that allowed C functions import lazily through the *caller's* __import__ (which is the
# snippet's): datetime.strptime imports _strptime, strftime/timestamp/astimezone import time. The C
# code only wants the module in sys.modules; the snippet gets an empty namespace from such imports.
INTERNAL_IMPORTS: frozenset[str] = frozenset({"_strptime", "time"})

# Module-level UPPERCASE constants may call only these (with constant arguments); the result is
# immutable, so it is safe to share across events.
CONSTANT_CALLS: frozenset[tuple[str, str]] = frozenset({
    ("re", "compile"),
    ("ipaddress", "ip_network"),
    ("ipaddress", "ip_address"),
    ("ipaddress", "ip_interface"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("builtins", "frozenset"),
})

# ---------------------------------------------------------------------------------------------
# Builtins: pure functions and types. `range` is capped at MAX_RANGE items; `print` goes to a
# capped per-batch log returned with the results, never to the host.
BUILTIN_FUNCTIONS: tuple[str, ...] = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytes", "callable", "chr", "dict", "divmod",
    "enumerate", "filter", "float", "format", "frozenset", "hex", "int", "isinstance", "iter", "len",
    "list", "map", "max", "min", "next", "oct", "ord", "pow", "print", "range", "repr", "reversed",
    "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip",
)
# Exception family: what `except` and `raise` may name.
BUILTIN_EXCEPTIONS: tuple[str, ...] = (
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "IndexError", "KeyError",
    "LookupError", "NotImplementedError", "OverflowError", "RecursionError", "RuntimeError",
    "StopIteration", "TypeError", "UnicodeError", "UnicodeDecodeError", "UnicodeEncodeError",
    "ValueError", "ZeroDivisionError",
)
# Exception classes reachable through an allowed module (`except json.JSONDecodeError`).
MODULE_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset({
    ("json", "JSONDecodeError"), ("re", "error"), ("statistics", "StatisticsError"),
    ("ipaddress", "AddressValueError"), ("ipaddress", "NetmaskValueError"),
})
BUILTIN_NAMES: frozenset[str] = frozenset(BUILTIN_FUNCTIONS + BUILTIN_EXCEPTIONS)

# Well-known names that do not exist here, with what to do instead (the checker quotes these).
FORBIDDEN_NAME_HINTS: dict[str, str] = {
    "open": "agent code cannot read or write files; use the event's fields",
    "exec": "agent code cannot run generated code; write the logic as functions",
    "eval": "agent code cannot evaluate strings; parse with json.loads, int() or float()",
    "compile": "to compile a regex use re.compile(...) after 'import re'",
    "__import__": "use an import statement of an allowed module",
    "getattr": "use plain attribute syntax (obj.name) with an allowed attribute, or event.get('key')",
    "setattr": "build a new dict instead of setting attributes",
    "delattr": "use del event['key'] or event.pop('key', None)",
    "hasattr": "test dict keys with 'key in event'",
    "type": "use isinstance(value, str) (or int, float, dict, list ...)",
    "vars": "read fields from the event dict",
    "dir": "read fields from the event dict",
    "globals": "refer to UPPERCASE constants by name",
    "locals": "refer to variables by name",
    "id": "identity is not stable across runs; compare values instead",
    "hash": "hash() is randomised per process; use hashlib.sha256(text.encode()).hexdigest()",
    "input": "agent code has no input; it receives one event per call",
    "breakpoint": "agent code cannot be debugged interactively; use print()",
    "help": "read the guide (get_guide)",
    "memoryview": "use bytes",
    "bytearray": "use bytes",
    "object": "use dicts for structured data",
    "super": "classes are not allowed; use functions",
    "classmethod": "classes are not allowed; use functions",
    "staticmethod": "classes are not allowed; use functions",
    "property": "classes are not allowed; use functions",
    "issubclass": "use isinstance(value, ...)",
    "exit": "return a value instead",
    "quit": "return a value instead",
    "BaseException": "catch or raise Exception (or a subclass such as ValueError)",
    "SystemExit": "return a value instead of exiting",
    "KeyboardInterrupt": "catch or raise Exception (or a subclass such as ValueError)",
    "GeneratorExit": "catch or raise Exception (or a subclass such as ValueError)",
    "MemoryError": "memory errors are handled by the sandbox",
    "printed": "print() output is collected by the sandbox and returned with the results",
}

# ---------------------------------------------------------------------------------------------
# Attribute names allowed after a dot, on any object. Names starting with '_' never are, nor are
# str.format/format_map (they walk attributes of their arguments: "{0.__class__}").
TYPE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "str": (
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "index",
        "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
        "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
        "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition",
        "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title",
        "translate", "upper", "zfill",
    ),
    "bytes": ("decode", "hex", "fromhex"),
    "dict": (
        "clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault", "update",
        "values",
    ),
    "list": ("append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse",
             "sort"),
    "set": (
        "add", "clear", "copy", "difference", "difference_update", "discard", "intersection",
        "intersection_update", "isdisjoint", "issubset", "issuperset", "pop", "remove",
        "symmetric_difference", "symmetric_difference_update", "union", "update",
    ),
    "int/float": (
        "as_integer_ratio", "bit_count", "bit_length", "conjugate", "denominator", "from_bytes", "imag",
        "numerator", "real", "to_bytes", "fromhex", "hex", "is_integer",
    ),
    "re.Pattern/re.Match": (
        "findall", "finditer", "flags", "fullmatch", "groupindex", "groups", "match", "pattern", "search",
        "split", "sub", "subn", "end", "endpos", "expand", "group", "groupdict", "lastgroup", "lastindex",
        "pos", "re", "regs", "span", "start", "string",
    ),
    "datetime/date/time/timedelta/timezone": (
        "astimezone", "combine", "ctime", "date", "day", "days", "dst", "fold", "fromisocalendar",
        "fromisoformat", "fromordinal", "fromtimestamp", "hour", "isocalendar", "isoformat",
        "isoweekday", "max", "microsecond", "microseconds", "min", "minute", "month", "replace",
        "resolution", "second", "seconds", "strftime", "strptime", "time", "timestamp", "timetuple",
        "timetz", "toordinal", "total_seconds", "tzinfo", "tzname", "utc", "utcoffset", "utctimetuple",
        "weekday", "year", "fromutc",
    ),
    "ipaddress objects": (
        "address_exclude", "broadcast_address", "compare_networks", "compressed", "exploded", "hostmask",
        "hosts", "ip", "ipv4_mapped", "is_global", "is_link_local", "is_loopback", "is_multicast",
        "is_private", "is_reserved", "is_site_local", "is_unspecified", "max_prefixlen", "netmask",
        "network", "network_address", "num_addresses", "overlaps", "packed", "prefixlen",
        "reverse_pointer", "scope_id", "sixtofour", "subnet_of", "subnets", "supernet", "supernet_of",
        "teredo", "version", "with_hostmask", "with_netmask", "with_prefixlen",
    ),
    "hashlib objects": ("block_size", "copy", "digest", "digest_size", "hexdigest", "name", "update"),
    "Counter/defaultdict/deque/OrderedDict": (
        "elements", "most_common", "subtract", "total", "default_factory", "append", "appendleft",
        "extend", "extendleft", "maxlen", "popleft", "rotate", "move_to_end",
    ),
    "urllib.parse results": (
        "fragment", "geturl", "hostname", "netloc", "params", "password", "path", "port", "query",
        "scheme", "username", "url",
    ),
    "exceptions": ("args", "msg", "doc", "lineno", "colno", "reason", "encoding", "object"),
    "statistics results": ("slope", "intercept"),
}
ATTRIBUTES: frozenset[str] = frozenset(
    {name for names in TYPE_ATTRIBUTES.values() for name in names}
    | {name for names in MODULES.values() for name in names}
    | {name for names in PACKAGES.values() for name in names}
)
# Never allowed, whatever is added above: the attribute-walk and nondeterminism primitives.
DENIED_ATTRIBUTES: frozenset[str] = frozenset({
    "format", "format_map", "now", "today", "utcnow", "utcfromtimestamp", "mro", "with_traceback",
    "gi_frame", "gi_code", "tb_frame", "tb_next", "f_globals", "f_locals", "f_back", "f_builtins",
    "cr_frame", "ag_frame", "scanner", "send", "throw", "close",
})
ATTRIBUTE_HINTS: dict[str, str] = {
    "format": "use an f-string: f\"{value}\" (str.format can walk attributes of its arguments)",
    "format_map": "use an f-string: f\"{mapping['key']}\"",
    "now": "use the event's time field (wall-clock time would make replays differ)",
    "today": "use the event's time field (wall-clock time would make replays differ)",
    "utcnow": "use the event's time field (wall-clock time would make replays differ)",
    "utcfromtimestamp": "use datetime.fromtimestamp(ts, timezone.utc)",
}
assert not ATTRIBUTES & DENIED_ATTRIBUTES
assert not any(name.startswith("_") for name in ATTRIBUTES)


def module_members(module: str) -> tuple[str, ...]:
    """Members of an importable name: an allowed module, or a package holding allowed submodules."""
    return MODULES.get(module) or PACKAGES.get(module, ())


def describe_language() -> str:
    """Render the language reference (markdown) from the tables above; the guide embeds it."""
    kinds = "\n".join(
        f"- `{kind}`: `def {entry}({ENTRY_ARG[entry]})`"
        + (f", optional {', '.join(f'`{x}({ENTRY_ARG[entry]})`' for x in extras)}" if extras else "")
        for kind, (entry, extras) in ENTRYPOINTS.items() if kind != "keep"
    )
    modules = "\n".join(f"- `{name}`: {', '.join(members)}" for name, members in MODULES.items())
    attrs = "\n".join(f"- {group}: {', '.join(names)}" for group, names in TYPE_ATTRIBUTES.items())
    return f"""# Agent code: the language

A code snippet is a Python 3.11 module that contains only function definitions, UPPERCASE constants
and imports of allowed modules (plus an optional docstring). It is checked statically, then run with
RestrictedPython guards in an isolated worker process.

## Entrypoints (one positional parameter, no *args/**kwargs)
{kinds}

Return values:
- `transform`/`derive`: a dict (one output), a list of dicts (fan-out) or None (drop).
- `keep`: exactly `True` or `False` (not a truthy value).
- `rule`: a bool; when True, `dedup`/`title` return a str or None, `severity` one of
  {', '.join(SEVERITIES)} or None, `context` a dict or None.
- Outputs must be plain JSON data: dict with str keys, list, str, int (any size up to about 4,200
  digits; past 64 bits it is kept exactly, stored as JSON text), finite float, bool, None. Tuples
  and Counter/defaultdict/OrderedDict/deque are converted to lists/dicts; sets, bytes, datetimes
  are rejected (convert them: sorted(list(s)), b.decode(), d.isoformat()). At most
  {MAX_OUTPUT_BYTES / 2**20:g} MiB and {MAX_OUTPUT_DEPTH} levels of nesting per input event.
- Each call receives its own copy of the event: mutate and return it freely.
- Iteration order of sets of strings differs between worker processes: sort before you output
  or join them, so that replays give the same result.
- A failing call (exception or bad output) sends that event to the dead letters with the error and
  the snippet line; other events go on.

## Module level
- `NAME = <constant>`: literals, tuples/lists/sets/dicts of literals, arithmetic on constants,
  other constants, module constants (`re.I`), and the calls
  {', '.join(sorted(f'{m}.{f}' if m != 'builtins' else f for m, f in CONSTANT_CALLS))}
  with constant arguments. Constants are FROZEN when the snippet loads: lists become tuples, sets
  frozensets, dicts read-only mappings (use `dict(NAME)` for a mutable copy). No state survives
  from one event to the next.
- Function defaults must be immutable literals (None, numbers, str, tuples of those).
- Type annotations are allowed and ignored (do not import typing).

## Allowed modules (`import re`, `from urllib.parse import urlparse`; nothing else exists on them)
{modules}

Not available on purpose: `datetime.now/today/utcnow` (use the event's time field: replays must
give the same result), `collections.namedtuple`, file functions (`json.load/dump`).

## Builtins
{', '.join(BUILTIN_FUNCTIONS)}.
Exceptions (for `except`/`raise`): {', '.join(BUILTIN_EXCEPTIONS)}, and
{', '.join(sorted(f'{m}.{e}' for m, e in MODULE_EXCEPTIONS))}.
`range()` is limited to {MAX_RANGE:,} items; `print()` output is collected (at most
{MAX_PRINT_LINES} lines / {MAX_PRINT_BYTES // 1024} KiB per batch) and returned with the results.
Not available: open, exec, eval, compile, getattr, setattr, type, vars, dir, globals, locals, id,
hash (use hashlib), input, object, super, bytearray, memoryview.

## Attributes
Only these names may follow a dot, and never a name starting with `_`:
{attrs}
plus the members of the allowed modules. `str.format`/`format_map` are not allowed: use f-strings.

## Statements
Allowed: def (no decorators), return, if/elif/else, for, while, break, continue, try/except/else/
finally, raise, assert, pass, del of items and names, assignment (including `x += 1` on names and
`a, b = ...`), the walrus `:=`, lambda, comprehensions and generator expressions, f-strings.
Not allowed: class, decorators, yield (generator functions), async/await, with, global, nonlocal,
match, `except*`, bare `except:`, attribute assignment (`obj.x = 1`), `counts[k] += 1`
(write `counts[k] = counts[k] + 1`), names or attributes starting with `_`, string constants
containing `__`. `except` and `raise` take Exception-family classes only.
"""


if __name__ == "__main__":  # regenerate sandbox/LANGUAGE.md
    print(describe_language(), end="")
