"""The static check (gate -> policy -> RestrictedPython) refuses hostile snippets with the right code
and line, accepts what agents realistically write, and explains itself in actionable words."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sandbox.checker import MAX_DIAGNOSTICS, CheckReport, check
from sandbox.runtime.allowlist import describe_language

T = "def transform(event):\n"

# (id, source, expected code, expected line). Each is an escape or state trick an agent (or an
# attacker steering one) could try; the test asserts the exact diagnostic and where it points.
HOSTILE: list[tuple[str, str, str, int | None]] = [
    ("import-os", "import os\n" + T + "    return event\n", "import-not-allowed", 1),
    ("import-sys", T + "    import sys\n    return event\n", "import-not-allowed", 2),
    ("import-subprocess", "import subprocess\n" + T + "    return event\n", "import-not-allowed", 1),
    ("import-socket", "import json, socket\n" + T + "    return event\n", "import-not-allowed", 1),
    ("import-ctypes", "from ctypes import CDLL\n" + T + "    return event\n", "import-not-allowed", 1),
    ("import-importlib", "import importlib\n" + T + "    return event\n", "import-not-allowed", 1),
    ("import-builtins", "import builtins\n" + T + "    return event\n", "import-not-allowed", 1),
    ("dunder-import-call", T + "    return __import__('os')\n", "name-not-allowed", 2),
    ("from-import-member", "from json import codecs\n" + T + "    return event\n", "import-not-allowed", 1),
    ("from-import-abc", "from collections import abc\n" + T + "    return event\n", "import-not-allowed", 1),
    ("relative-import", "from . import helpers\n" + T + "    return event\n", "import-not-allowed", 1),
    ("subclasses-walk", T + "    return ().__class__.__bases__[0].__subclasses__()\n",
     "attribute-not-allowed", 2),
    ("func-globals", "def helper(x):\n    return x\n" + T + "    return helper.__globals__\n",
     "attribute-not-allowed", 4),
    ("generator-frame", T + "    g = (x for x in event)\n    return g.gi_frame.f_back\n",
     "attribute-not-allowed", 3),
    ("traceback-frame", T + "    try:\n        event['x']\n    except KeyError as e:\n"
     "        return e.__traceback__.tb_frame\n", "attribute-not-allowed", 5),
    ("format-walk", T + "    return '{0.x}'.format(event)\n", "attribute-not-allowed", 2),
    ("format-map", T + "    return '{a}'.format_map(event)\n", "attribute-not-allowed", 2),
    ("fstring-dunder", T + "    return f'{event.__class__!r}'\n", "attribute-not-allowed", 2),
    ("datetime-sys", "import datetime\n" + T + "    return datetime.sys\n", "attribute-not-allowed", 3),
    ("re-enum", "import re\n" + T + "    return re.enum\n", "attribute-not-allowed", 3),
    ("json-codecs", "import json\n" + T + "    return json.codecs.open\n", "attribute-not-allowed", 3),
    ("urllib-parse-sys", "import urllib.parse\n" + T + "    return urllib.parse.sys\n",
     "attribute-not-allowed", 3),
    ("collections-abc", "import collections\n" + T + "    return collections.abc\n",
     "attribute-not-allowed", 3),
    ("getattr", T + "    return getattr(event, 'keys')\n", "name-not-allowed", 2),
    ("vars", T + "    return vars()\n", "name-not-allowed", 2),
    ("globals", T + "    return globals()\n", "name-not-allowed", 2),
    ("type", T + "    return type(event)\n", "name-not-allowed", 2),
    ("builtins-name", T + "    return __builtins__\n", "name-not-allowed", 2),
    ("class", "class Event:\n    pass\n" + T + "    return event\n", "node-not-allowed", 1),
    ("metaclass", "class M(type):\n    pass\n" + T + "    return event\n", "node-not-allowed", 1),
    ("decorator", "def deco(f):\n    return f\n@deco\n" + T + "    return event\n", "node-not-allowed", 3),
    ("generator", T + "    yield event\n", "node-not-allowed", 2),
    ("lambda-yield", T + "    return (lambda: (yield))\n", "node-not-allowed", 2),
    ("except-star", T + "    try:\n        pass\n    except* ValueError:\n        pass\n    return event\n",
     "node-not-allowed", 2),
    ("match", T + "    match event:\n        case _:\n            return event\n", "node-not-allowed", 2),
    ("raise-systemexit", T + "    raise SystemExit(1)\n", "raise-not-allowed", 2),
    ("except-baseexception", T + "    try:\n        return event\n    except BaseException:\n        pass\n",
     "except-not-allowed", 4),
    ("bare-except", T + "    try:\n        return event\n    except:\n        pass\n",
     "except-not-allowed", 4),
    ("global", "X = 1\n" + T + "    global X\n    return event\n", "node-not-allowed", 3),
    ("mutable-default", "def seen(ip, cache={}):\n    return cache\n" + T + "    return event\n",
     "mutable-default", 1),
    ("attribute-assignment", T + "    transform.calls = 1\n    return event\n", "attribute-assignment", 2),
    ("module-state", "cache = {}\n" + T + "    return event\n", "bad-constant", 1),
    ("constant-call", "import json\nCONFIG = json.loads('{}')\n" + T + "    return event\n",
     "bad-constant", 2),
    ("cyrillic-e", T + "    \u0435val = 1\n    return event\n", "non-ascii-identifier", 2),
    ("fullwidth-eval", T + "    return \uff45\uff56\uff41\uff4c('1')\n", "non-ascii-identifier", 2),
    ("nested-parens", T + "    return " + "(" * 1000 + "1" + ")" * 1000 + "\n", "too-complex", 2),
    ("nested-unary", T + "    return " + "-" * 1000 + "1\n", "too-complex", 2),
    ("dunder-string", T + "    return event['__class__']\n", "dunder-string", 2),
    ("exec", T + "    exec('import os')\n    return event\n", "name-not-allowed", 2),
    ("eval", T + "    return eval('1')\n", "name-not-allowed", 2),
    ("compile", T + "    return compile('1', 'f', 'eval')\n", "name-not-allowed", 2),
    ("open", T + "    return open('/etc/passwd').read()\n", "name-not-allowed", 2),
    ("with", T + "    with event as e:\n        return e\n", "node-not-allowed", 2),
    ("print-to-file", T + "    print('x', file=event)\n    return event\n", "node-not-allowed", 2),
    ("nondeterministic-now", "import datetime\n" + T + "    return datetime.datetime.now()\n",
     "attribute-not-allowed", 3),
    ("private-helper", "def _helper(x):\n    return x\n" + T + "    return event\n", "name-not-allowed", 1),
    ("nul-byte", T + "    return event\0\n", "bad-character", 2),
    ("bidi-override", T + "    return event  # \u202e evil\n", "bad-character", 2),
    ("augmented-item", T + "    event['n'] += 1\n    return event\n", "node-not-allowed", 2),
    ("async", "async def transform(event):\n    return event\n", "node-not-allowed", 1),
]


@pytest.mark.parametrize(("source", "code", "line"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_snippet_is_rejected_with_its_code_and_line(source: str, code: str, line: int | None) -> None:
    report = check(source, "transform")
    assert not report.ok
    assert (code, line) in {(d.code, d.line) for d in report.diagnostics}, report.diagnostics


def test_there_are_at_least_35_distinct_hostile_cases() -> None:
    assert len({h[0] for h in HOSTILE}) == len(HOSTILE) >= 35


def test_source_over_64_kib_is_too_large_before_parsing() -> None:
    source = T + "    return event\n" + "# padding\n" * 7200  # ~70 KiB
    report = check(source, "transform")
    assert [d.code for d in report.diagnostics] == ["too-large"]
    assert "65,536" in report.diagnostics[0].message


def test_long_operator_chain_is_too_complex_not_a_crash() -> None:
    report = check(T + "    return " + "+".join(["1"] * 20000) + "\n", "transform")
    assert [d.code for d in report.diagnostics] == ["too-complex"]


def test_syntax_error_reports_the_line() -> None:
    report = check(T + "    x = (1,\n    return x\n", "transform")
    (d,) = report.diagnostics
    assert d.code == "syntax-error" and d.line == 2 and d.message.startswith("syntax error: ")


@pytest.mark.parametrize(("body", "line"), [
    ("    x = 1\n    return *event\n", 3),
    ("    break\n", 2),
    ("    for k in event:\n        pass\n    continue\n", 4),
])
def test_what_only_the_compiler_refuses_is_a_syntax_error_not_a_crash(body: str, line: int) -> None:
    # ast.parse accepts these; Python's compiler (inside RestrictedPython's) raises SyntaxError
    (d,) = check(T + body, "transform").diagnostics
    assert d.code == "syntax-error" and d.line == line and d.message.startswith("syntax error: ")


def test_import_message_names_the_module_and_the_allowed_ones() -> None:
    (d,) = check("import os\n" + T + "    return event\n", "transform").diagnostics
    assert d.message.startswith("import of 'os' is not allowed; use the event fields or the allowed "
                                "modules: re, json, math, datetime")
    assert d.render().startswith("line 1: import of 'os'")


def test_hints_say_what_to_do_instead() -> None:
    by_code = {d.code: d for d in check(
        "import datetime\n" + T + "    t = datetime.datetime.now()\n    return type(t)\n", "transform"
    ).diagnostics}
    assert "event's time field" in (by_code["attribute-not-allowed"].hint or "")
    assert "isinstance" in (by_code["name-not-allowed"].hint or "")


def test_missing_entrypoint_names_what_to_define() -> None:
    report = check("def keep(event):\n    return True\n", "transform")
    (d,) = report.diagnostics
    assert (d.code, d.line) == ("missing-entrypoint", None)
    assert "def transform(event):" in (d.hint or "")
    assert check("def transform(event):\n    return event\n", "filter").diagnostics[0].message == (
        "a filter step must define keep(event)")


@pytest.mark.parametrize("signature", ["event, other", "*events", "event, **kw", "", "event, *, strict=True"])
def test_entrypoint_needs_exactly_one_positional_parameter(signature: str) -> None:
    report = check(f"def rule({signature}):\n    return True\n", "rule")
    assert [(d.code, d.line) for d in report.diagnostics] == [("bad-signature", 1)]


def test_rule_extras_are_checked_and_reported_as_entrypoints() -> None:
    source = ("def rule(e):\n    return True\ndef title(e):\n    return 'x'\n"
              "def severity(e, level='high'):\n    return level\n")
    assert [(d.code, d.line) for d in check(source, "rule").diagnostics] == [("bad-signature", 5)]
    ok = check(source.replace(", level='high'", "").replace("return level", "return 'high'"), "rule")
    assert ok.ok and ok.entrypoints == ("rule", "title", "severity")


def test_all_findings_of_the_failing_phase_are_reported_sorted_and_capped() -> None:
    body = "".join(f"    x{i} = getattr(event, 'k')\n" for i in range(30))
    report = check(T + body + "    return event\n", "transform")
    assert len(report.diagnostics) == MAX_DIAGNOSTICS
    assert [d.line for d in report.diagnostics[:-1]] == list(range(2, 2 + MAX_DIAGNOSTICS - 1))
    assert report.diagnostics[-1].code == "too-many-diagnostics"
    assert "11 more problems" in report.diagnostics[-1].message


def test_policy_errors_stop_before_restricted_python() -> None:
    # Both the policy and RestrictedPython object to '_x'; only the policy's clearer words are shown.
    report = check(T + "    _x = 1\n    return event\n", "transform")
    assert [d.code for d in report.diagnostics] == ["name-not-allowed"]


def test_restricted_python_findings_are_mapped_with_their_line() -> None:
    # Our policy has no rule for '__roles__' suffixes (no '_' prefix, no string); RestrictedPython does.
    report = check(T + "    x = 1\n    ok__roles__ = event\n    return x\n", "transform")
    assert [(d.code, d.line) for d in report.diagnostics] == [("restricted-python", 3)]
    assert "__roles__" in report.diagnostics[0].message


def test_code_hash_covers_kind_and_normalises_line_endings() -> None:
    lf = check(T + "    return event\n", "transform")
    crlf = check(T.replace("\n", "\r\n") + "    return event\r\n", "transform")
    assert lf.code_hash == crlf.code_hash and len(lf.code_hash) == 64
    assert check(T + "    return event\n", "derive").code_hash != lf.code_hash
    assert check(T + "    return event \n", "transform").code_hash != lf.code_hash


def test_report_is_frozen_and_unknown_kind_is_a_diagnostic() -> None:
    report = check("def transform(event):\n    return event\n", "transform")
    assert isinstance(report, CheckReport) and report.ok and report.entrypoints == ("transform",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.ok = False  # type: ignore[misc]
    assert [d.code for d in check("", "aggregate").diagnostics] == ["unknown-kind"]


def test_undefined_name_is_caught_statically() -> None:
    report = check(T + "    return evnt\n", "transform")
    assert [(d.code, d.line, d.message) for d in report.diagnostics] == [
        ("undefined-name", 2, "name 'evnt' is not defined")]


ACCEPTED = {
    "lambda-and-walrus": """
import re
WORD = re.compile(r"\\w+")
def transform(event):
    if (m := WORD.findall(event["msg"])):
        event["top"] = sorted(m, key=lambda w: (-len(w), w))[0]
    return event
""",
    "annotations-ignored":
        "def transform(event: dict[str, Any]) -> dict | None:\n    n: int = 1\n    return event\n",
    "import-inside-function":
        T + "    import json\n    from urllib.parse import urlsplit\n    return event\n",
    "helpers-defined-below": T + "    return helper(event)\ndef helper(e):\n    return e\n",
    "constants": """
import re
import ipaddress
from datetime import timedelta
FLAGS = re.I | re.M
PATTERNS = (re.compile(r"a", FLAGS), re.compile(r"b"))
NETS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16")]
LIMITS = {"slow": 2.5 * 1000, "names": frozenset({"a", "b"}), "neg": -1}
WINDOW = timedelta(minutes=5)
ALL = PATTERNS + (re.compile("c"),)
def transform(event):
    return event
""",
    "docstring-and-unicode-strings": '"""Tag events — with a non-ASCII docstring."""\n' + T
    + "    event['note'] = 'héllo ✓'  # comment with ünïcode\n    return event\n",
    "del-and-unpacking": T + "    a, *rest = [1, 2, 3]\n    del event['x']\n    for k, v in event.items():\n"
    "        pass\n    return {**event, 'rest': rest, 'a': a}\n",
    "exceptions": """
import json
def transform(event):
    try:
        event["body"] = json.loads(event["raw"])
    except (KeyError, json.JSONDecodeError) as exc:
        event["error"] = str(exc)
    except Exception:
        raise
    if not event:
        raise ValueError("empty event")
    return event
""",
}


@pytest.mark.parametrize("source", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_realistic_snippets_are_accepted(source: str) -> None:
    report = check(source, "transform")
    assert report.ok, report.diagnostics


def test_language_md_is_the_rendered_allowlist() -> None:
    path = Path(__file__).resolve().parents[2] / "sandbox" / "LANGUAGE.md"
    assert path.read_text(encoding="utf-8") == describe_language(), (
        "regenerate: python3 -m sandbox.runtime.allowlist > sandbox/LANGUAGE.md")
