"""The in-worker runtime (load + run_events), in process: realistic snippets give exact outputs,
bad outputs and exceptions cost one event with a precise error, and the RestrictedPython guards,
frozen namespaces and frozen constants hold on their own, without the static policy in front."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.checker import check
from sandbox.runtime.allowlist import MODULES, PACKAGES
from sandbox.runtime.execute import OutputCaps, run_events
from sandbox.runtime.guards import guarded_import
from sandbox.runtime.loader import Entrypoints, LoadError, load
from sandbox.runtime.namespaces import namespaces


def run(source: str, kind: str, events: list[Any], caps: OutputCaps | None = None,
        checked: bool = True) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """Check (unless testing the runtime alone), load and run, as the worker does."""
    if checked:
        report = check(source, kind)
        assert report.ok, report.diagnostics
    ep = load(source, kind)
    return run_events(ep, events, caps or OutputCaps())


# -- benign snippets, written as an agent would ---------------------------------------------------

SSH = '''
import re

FAILED = re.compile(
    r"Failed password for (?:invalid user )?(?P<user>\\S+) from (?P<src_ip>[\\d.]+) port (?P<port>\\d+)"
)

def transform(event):
    m = FAILED.search(event["message"])
    if m is None:
        return None
    event.update(m.groupdict())
    event["port"] = int(event["port"])
    return event
'''


def test_regex_extraction_with_named_groups_and_a_compiled_constant() -> None:
    line = "Dec 10 06:55:48 LabSZ sshd[24200]: Failed password for invalid user webmaster from " \
           "173.234.31.186 port 38926 ssh2"
    values, errors, _ = run(SSH, "transform", [{"message": line}, {"message": "Accepted password"}])
    assert errors == []
    assert values == [[{"message": line, "user": "webmaster", "src_ip": "173.234.31.186", "port": 38926}], []]


def test_strptime_of_syslog_and_clf_timestamps() -> None:
    source = '''
from datetime import datetime, timezone

def transform(event):
    clf = datetime.strptime(event["clf"], "%d/%b/%Y:%H:%M:%S %z")
    syslog = datetime.strptime("2024 " + event["syslog"], "%Y %b %d %H:%M:%S").replace(tzinfo=timezone.utc)
    return {"clf": clf.astimezone(timezone.utc).isoformat(), "syslog": syslog.isoformat(),
            "epoch": int(clf.timestamp()), "weekday": clf.weekday()}
'''
    values, errors, _ = run(source, "transform",
                            [{"clf": "11/Jul/2018:08:41:28 +0300", "syslog": "Dec 10 06:55:46"}])
    assert errors == []
    assert values == [[{"clf": "2018-07-11T05:41:28+00:00", "syslog": "2024-12-10T06:55:46+00:00",
                        "epoch": 1531287688, "weekday": 2}]]


def test_ipaddress_private_checks_with_constant_networks() -> None:
    source = '''
import ipaddress

INTERNAL = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16")]

def transform(event):
    ip = ipaddress.ip_address(event["ip"])
    event["private"] = ip.is_private
    event["internal"] = any(ip in net for net in INTERNAL)
    event["version"] = ip.version
    return event
'''
    values, _, _ = run(source, "transform", [{"ip": "192.168.105.83"}, {"ip": "8.8.8.8"}, {"ip": "::1"}])
    assert values == [
        [{"ip": "192.168.105.83", "private": True, "internal": True, "version": 4}],
        [{"ip": "8.8.8.8", "private": False, "internal": False, "version": 4}],
        [{"ip": "::1", "private": True, "internal": False, "version": 6}],
    ]


def test_json_loads_of_a_field_with_try_except() -> None:
    source = '''
import json

def transform(event):
    try:
        body = json.loads(event["payload"])
    except json.JSONDecodeError as exc:
        return {"error": "bad json at " + str(exc.pos)}
    except KeyError:
        return {"error": "no payload"}
    return {"user": body.get("user"), "n": len(body.get("items", []))}
'''
    values, errors, _ = run(source, "transform", [{"payload": '{"user": "ann", "items": [1, 2]}'},
                                                  {"payload": "{oops"}, {}])
    assert errors == []
    assert values == [[{"user": "ann", "n": 2}], [{"error": "bad json at 1"}], [{"error": "no payload"}]]


def test_hashlib_and_base64() -> None:
    source = '''
import base64
import hashlib

def transform(event):
    raw = base64.b64decode(event["b64"]).decode("utf-8")
    return {"raw": raw, "sha256": hashlib.sha256(raw.encode()).hexdigest()[:16],
            "md5": hashlib.md5(b"abc").hexdigest()}
'''
    values, errors, _ = run(source, "transform", [{"b64": "aGVsbG8gd29ybGQ="}])
    assert errors == []
    assert values == [[{"raw": "hello world", "sha256": "b94d27b9934d3e08",
                        "md5": "900150983cd24fb0d6963f7d28e17f72"}]]


def test_urllib_parse_query_parsing_both_import_styles() -> None:
    source = '''
import urllib.parse
from urllib.parse import parse_qs

def transform(event):
    parts = urllib.parse.urlsplit(event["url"])
    query = parse_qs(parts.query)
    return {"host": parts.hostname, "path": parts.path, "q": query.get("q", [None])[0],
            "tags": query.get("tag", []), "decoded": urllib.parse.unquote_plus("a+b%21")}
'''
    values, errors, _ = run(source, "transform", [{"url": "https://Example.com/search?q=ssh+fail&tag=a&tag=b"}])
    assert errors == []
    assert values == [[{"host": "example.com", "path": "/search", "q": "ssh fail", "tags": ["a", "b"],
                        "decoded": "a b!"}]]


def test_counter_and_statistics_results_become_plain_json() -> None:
    source = '''
import statistics
from collections import Counter

def transform(event):
    words = Counter(event["text"].split())
    return {"top": words.most_common(1)[0][0], "counts": words,
            "mean": statistics.mean(event["latencies"]), "median": statistics.median(event["latencies"])}
'''
    values, errors, _ = run(source, "transform", [{"text": "a b a c a b", "latencies": [1, 2, 3, 10]}])
    assert errors == []
    assert values == [[{"top": "a", "counts": {"a": 3, "b": 2, "c": 1}, "mean": 4, "median": 2.5}]]
    assert type(values[0][0]["counts"]) is dict  # the Counter was converted


def test_fan_out_returns_one_event_per_item() -> None:
    source = '''
def transform(event):
    out = []
    for i, item in enumerate(event["items"]):
        out.append({"order": event["order"], "pos": i, "sku": item["sku"]})
    return out
'''
    values, errors, _ = run(source, "transform", [{"order": 7, "items": [{"sku": "A"}, {"sku": "B"}]},
                                                  {"order": 8, "items": []}])
    assert errors == []
    assert values == [[{"order": 7, "pos": 0, "sku": "A"}, {"order": 7, "pos": 1, "sku": "B"}], []]


RULE = '''
SEVERE_USERS = ("root", "admin")

def rule(event):
    return event.get("action") == "failed_login"

def dedup(event):
    return event["src_ip"]

def title(event):
    return f"Failed logins from {event['src_ip']}"

def severity(event):
    return "high" if event["user"] in SEVERE_USERS else "medium"

def context(event):
    return {"user": event["user"], "port": event.get("port")}
'''


def test_rule_with_dedup_title_severity_context() -> None:
    values, errors, _ = run(RULE, "rule", [
        {"action": "failed_login", "src_ip": "1.2.3.4", "user": "root", "port": 22},
        {"action": "login", "src_ip": "5.6.7.8"},  # no match: extras are not evaluated (would KeyError)
    ])
    assert errors == []
    assert values == [
        {"match": True, "dedup": "1.2.3.4", "title": "Failed logins from 1.2.3.4", "severity": "high",
         "context": {"user": "root", "port": 22}},
        {"match": False, "dedup": None, "title": None, "severity": None, "context": None},
    ]


def test_keep_returns_bool() -> None:
    source = '''
NOISY = {"/healthz", "/metrics"}

def keep(event):
    return event["path"] not in NOISY and event.get("status", 0) >= 400
'''
    events = [{"path": "/healthz", "status": 500}, {"path": "/login", "status": 401},
              {"path": "/", "status": 200}]
    values, errors, _ = run(source, "filter", events)
    assert errors == [] and values == [False, True, False]


def test_derive_over_an_aggregate_row() -> None:
    source = '''
import math

def derive(row):
    if row["failures"] < 5:
        return None
    score = round(math.log2(row["failures"]), 3)
    return {"title": f"{row['host']}: {row['failures']} failures", "score": score}
'''
    rows = [{"host": "web-1", "failures": 8}, {"host": "web-2", "failures": 1}]
    values, errors, _ = run(source, "derive", rows)
    assert errors == []
    assert values == [[{"title": "web-1: 8 failures", "score": 3.0}], []]


def test_print_is_collected_per_event_not_written_to_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    source = "def transform(event):\n    print('seen', event['n'], sep='=')\n    return event\n"
    _, _, logs = run(source, "transform", [{"n": 1}, {"n": 2}])
    assert logs == ["event 0: seen=1", "event 1: seen=2"]
    assert capsys.readouterr().out == ""


# -- per-event failures: reported, never fatal ----------------------------------------------------

def test_exception_is_reported_with_snippet_line_and_function_and_other_events_go_on() -> None:
    source = "def helper(event):\n    return event['user'].lower()\n\ndef transform(event):\n" \
             "    event['user'] = helper(event)\n    return event\n"
    values, errors, _ = run(source, "transform", [{"user": "A"}, {}, {"user": "B"}])
    assert values == [[{"user": "a"}], None, [{"user": "b"}]]
    assert errors == [{"index": 1, "reason": "error", "error_type": "KeyError", "message": "'user'",
                       "line": 2, "function": "helper"}]


def test_keep_must_return_a_bool() -> None:
    source = "def keep(event):\n    return event['v']\n"
    values, errors, _ = run(source, "filter", [{"v": "yes"}, {"v": True}])
    assert values == [None, True]
    assert errors[0]["reason"] == "bad_output"
    assert errors[0]["message"] == "keep() must return a bool; got str ('yes')"


@pytest.mark.parametrize(("expr", "fragment"), [
    ("{'tags': {'a', 'b'}}", "not JSON data; return sorted(list(value))"),
    ("{'v': float('nan')}", "only finite floats"),
    ("{'raw': b'x'}", "return value.decode()"),
    ("{1: 'x'}", "keys must be str"),
    ("{'big': 2 ** 14000}", "more than 14,000 bits; return it as a str"),
    ("{'s': chr(55296)}", "not valid UTF-8"),
    ("'just a string'", "transform() must return a dict, a list of dicts or None; got str"),
    ("[{'ok': 1}, 3]", "item 1 of the returned list is int (3)"),
])
def test_non_json_outputs_are_bad_output(expr: str, fragment: str) -> None:
    values, errors, _ = run(f"def transform(event):\n    return {expr}\n", "transform", [{}])
    assert values == [None]
    assert errors[0]["reason"] == "bad_output" and fragment in errors[0]["message"], errors


def test_output_size_and_depth_are_capped() -> None:
    caps = OutputCaps(max_bytes=10_000, max_depth=8)
    source = '''
def transform(event):
    if event["k"] == "big":
        return {"x": "a" * 20000}
    if event["k"] == "deep":
        d = {}
        for i in range(20):
            d = {"d": d}
        return d
    if event["k"] == "cycle":
        return event
    shared = ["x" * 100] * 100
    return {"rows": [shared] * 100}
'''
    events: list[dict[str, Any]] = [{"k": "big"}, {"k": "deep"}, {"k": "cycle"}, {"k": "dag"}]
    events[2]["self"] = events[2]
    values, errors, _ = run(source, "transform", events, caps)
    assert values == [None] * 4
    assert [e["reason"] for e in errors] == ["bad_output"] * 4
    assert "larger than 10000 bytes" in errors[0]["message"]
    assert "nested deeper than 8" in errors[1]["message"] and "nested deeper than 8" in errors[2]["message"]
    assert "larger than 10000 bytes" in errors[3]["message"]


def test_tuples_and_frozen_constants_in_outputs_become_lists_and_dicts() -> None:
    source = "LEVELS = {'a': [1, 2]}\ndef transform(event):\n    return {'levels': LEVELS, 'pair': (1, 2)}\n"
    values, errors, _ = run(source, "transform", [{}])
    assert errors == [] and values == [[{"levels": {"a": [1, 2]}, "pair": [1, 2]}]]


def test_rule_outputs_are_validated() -> None:
    source = ("def rule(e):\n    return e['m']\ndef severity(e):\n    return e['s']\n"
              "def title(e):\n    return 5\n")
    values, errors, _ = run(source, "rule", [{"m": 1}, {"m": True, "s": "urgent"}, {"m": True, "s": "low"}])
    assert values == [None, None, None]
    assert [e["message"] for e in errors] == [
        "rule() must return a bool; got int (1)",
        "title() must return a str or None; got int (5)",
        "title() must return a str or None; got int (5)",
    ]
    _, errors, _ = run(source.replace("return 5", "return 'x'"), "rule", [{"m": True, "s": "urgent"}])
    assert errors[0]["message"].startswith("severity() must return one of info, low, medium, high, critical")


def test_recursion_and_memory_errors_are_per_event() -> None:
    source = '''
import json

def transform(event):
    if event["k"] == "recurse":
        return transform(event)
    if event["k"] == "json":
        return json.loads("[" * 100000 + "]" * 100000)
    if event["k"] == "memory":
        return {"b": len(bytes(10 ** 18))}
    return event
'''
    events = [{"k": "recurse"}, {"k": "json"}, {"k": "memory"}, {"k": "ok"}]
    values, errors, _ = run(source, "transform", events)
    assert values == [None, None, None, [{"k": "ok"}]]
    assert [(e["reason"], e["error_type"], e["line"]) for e in errors] == [
        ("error", "RecursionError", 6), ("error", "RecursionError", 8), ("memory", "MemoryError", 10)]


def test_range_is_capped() -> None:
    values, errors, _ = run("def transform(event):\n    return {'n': len(list(range(10 ** 12)))}\n",
                            "transform", [{}])
    assert values == [None] and errors[0]["error_type"] == "ValueError"
    assert "range() of more than 10,000,000 items" in errors[0]["message"]


def test_print_output_is_capped_per_batch() -> None:
    caps = OutputCaps(max_print_lines=3)
    source = "def transform(event):\n    print('x' * 10)\n    return event\n"
    _, _, logs = run(source, "transform", [{} for _ in range(10)], caps)
    assert logs[:3] == ["event 0: xxxxxxxxxx", "event 1: xxxxxxxxxx", "event 2: xxxxxxxxxx"]
    assert logs[3].startswith("... 7 more print() calls dropped")


# -- guarded at run time: passes the static check, fails safely -----------------------------------

def test_writes_to_frozen_constants_fail_and_state_never_carries_over() -> None:
    source = '''
SEEN = []
LIMITS = {"max": 3}
NAMES = {"a"}

def transform(event):
    if event["k"] == "list":
        SEEN.append(event["k"])
    elif event["k"] == "dict":
        LIMITS["max"] = 100
    elif event["k"] == "set":
        NAMES.add("b")
    local = dict(LIMITS)
    local["max"] = local["max"] + 1
    return {"max": LIMITS["max"], "local": local["max"], "seen": len(SEEN)}
'''
    values, errors, _ = run(source, "transform", [{"k": "list"}, {"k": "dict"}, {"k": "set"}, {"k": "x"}])
    assert values == [None, None, None, [{"max": 3, "local": 4, "seen": 0}]]
    assert [(e["error_type"], e["line"]) for e in errors] == [
        ("AttributeError", 8), ("TypeError", 10), ("AttributeError", 12)]
    assert "'tuple' object has no attribute 'append'" in errors[0]["message"]
    assert "read-only in the sandbox" in errors[1]["message"]


def test_constructed_dunder_strings_reach_nothing() -> None:
    # The dunder-string rule is bypassed by building the name at run time; there is still no
    # getattr, format or vars to hand it to, and item access on a dict is just a missing key.
    source = "def transform(event):\n    name = '_' * 2 + 'class' + '_' * 2\n    return {'v': event[name]}\n"
    values, errors, _ = run(source, "transform", [{}])
    assert values == [None] and errors[0]["error_type"] == "KeyError"


# -- the runtime alone (static policy bypassed): each layer assumed to fail -----------------------

@pytest.mark.parametrize(("source", "error_type", "fragment"), [
    ("import datetime\ndef transform(e):\n    return datetime.sys\n", "AttributeError", "'sys'"),
    ("import json\ndef transform(e):\n    return json.codecs\n", "AttributeError", "'codecs'"),
    ("import re\ndef transform(e):\n    return re.enum\n", "AttributeError", "'enum'"),
    ("import urllib.parse\ndef transform(e):\n    return urllib.parse.sys\n", "AttributeError", "'sys'"),
    ("import collections\ndef transform(e):\n    return collections.namedtuple\n", "AttributeError",
     "namedtuple"),
    ("import datetime\ndef transform(e):\n    return datetime.datetime.now()\n", "AttributeError",
     "event's time"),
    ("def transform(e):\n    return '{0}'.format(e)\n", "AttributeError", "f-string"),
    ("def transform(e):\n    return getattr(e, 'keys')\n", "NameError", "getattr"),
    ("def transform(e):\n    return type(e)\n", "NameError", "type"),
    ("def transform(e):\n    return open('/etc/passwd')\n", "NameError", "open"),
    ("def transform(e):\n    return hash('x')\n", "NameError", "hash"),
    ("import re\ndef transform(e):\n    re.compile = None\n    return e\n", "TypeError", "read-only"),
    ("def transform(e):\n    transform.x = 1\n    return e\n", "TypeError", "read-only"),
])
def test_guards_hold_without_the_static_policy(source: str, error_type: str, fragment: str) -> None:
    assert not check(source, "transform").ok  # the policy would have stopped it first
    values, errors, _ = run(source, "transform", [{}], checked=False)
    assert values == [None]
    assert errors[0]["error_type"] == error_type and fragment in errors[0]["message"], errors


@pytest.mark.parametrize(("source", "fragment"), [
    ("import os\ndef transform(e):\n    return e\n", "import of 'os' is not allowed"),
    ("from collections import abc\ndef transform(e):\n    return e\n", "cannot import 'abc'"),
    ("from . import x\ndef transform(e):\n    return e\n", "relative imports"),
    ("def transform(e):\n    return ().__class__\n", "__class__"),
    ("class A:\n    pass\ndef transform(e):\n    return e\n", "__build_class__ not found"),
    ("def transform(e):\n    return e\nX = 1 / 0\n", "ZeroDivisionError"),
    ("def keep(e):\n    return True\n", "must define transform(event)"),
])
def test_loader_refuses_what_the_guards_cannot_run(source: str, fragment: str) -> None:
    with pytest.raises(LoadError) as info:
        load(source, "transform")
    assert fragment in info.value.message


def test_load_error_carries_the_snippet_line() -> None:
    with pytest.raises(LoadError) as info:
        load("def transform(e):\n    return e\n\nX = {}['missing']\n", "transform")
    assert info.value.line == 4


def test_namespaces_expose_exactly_the_allowlist_and_refuse_writes() -> None:
    spaces = namespaces()
    for name, members in MODULES.items():
        exposed = {k for k in vars(spaces[name]) if not k.startswith("_")}
        assert exposed == set(members), name
    assert set(vars(spaces["urllib"])) - {"_Namespace__label"} == set(PACKAGES["urllib"])
    with pytest.raises(AttributeError, match="read-only"):
        spaces["re"].compile = None
    with pytest.raises(AttributeError, match="read-only"):
        del spaces["json"].loads  # type: ignore[attr-defined]
    assert not hasattr(spaces["datetime"], "sys") and not hasattr(spaces["datetime"], "__name__")


def test_import_resolver_returns_frozen_namespaces_only() -> None:
    spaces = namespaces()
    assert guarded_import("urllib.parse") is spaces["urllib"]
    assert guarded_import("urllib.parse", None, None, ("urlparse",)) is spaces["urllib.parse"]
    with pytest.raises(ImportError):
        guarded_import("urllib.request")
    with pytest.raises(ImportError):
        guarded_import("json", None, None, ("codecs",))


def test_entrypoints_hold_only_defined_extras() -> None:
    ep = load("def rule(e):\n    return True\ndef title(e):\n    return 't'\n", "rule")
    assert isinstance(ep, Entrypoints) and ep.name == "rule" and set(ep.extras) == {"title"}
    values, errors, _ = run_events(ep, [{}], OutputCaps())
    assert errors == [] and values == [{"match": True, "dedup": None, "title": "t", "severity": None,
                                        "context": None}]


def test_each_snippet_gets_its_own_builtins_copy() -> None:
    a = load("def transform(e):\n    return e\n", "transform")
    b = load("def transform(e):\n    return e\n", "transform")
    builtins_a = a.entry.__globals__["__builtins__"]
    assert builtins_a is not b.entry.__globals__["__builtins__"]
    assert "open" not in builtins_a and "getattr" not in builtins_a and "__import__" in builtins_a


def test_module_level_data_is_frozen_even_without_the_policy() -> None:
    source = '''
import collections
cache = []
COUNTS = collections.Counter()
def transform(event):
    if event["k"] == "list":
        cache.append(1)
    else:
        COUNTS["x"] = 1
    return event
'''
    values, errors, _ = run(source, "transform", [{"k": "list"}, {"k": "counter"}], checked=False)
    assert values == [None, None]
    assert [e["error_type"] for e in errors] == ["AttributeError", "TypeError"]


# A realistic ~100-line snippet (the size DESIGN §7 quotes for static-validation latency).
WEB_CLASSIFIER = '''
"""Classify web access events: parse the request, flag scanners and suspicious paths."""
import re
import ipaddress
from urllib.parse import urlsplit, parse_qs

# Request line of the Common Log Format.
REQUEST = re.compile(r'^(?P<method>[A-Z]+) (?P<target>\\S+) (?P<proto>HTTP/[\\d.]+)$')
SCANNER_AGENTS = ("sqlmap", "nikto", "nmap", "masscan", "zgrab", "curl", "python-requests")
SUSPICIOUS = [
    re.compile(r"\\.\\./"),
    re.compile(r"(?i)union\\s+select"),
    re.compile(r"(?i)<script"),
    re.compile(r"/etc/passwd"),
    re.compile(r"(?i)wp-(login|admin)"),
]
INTERNAL = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16"))
STATUS_CLASSES = {2: "ok", 3: "redirect", 4: "client_error", 5: "server_error"}
MAX_QUERY_KEYS = 20


def parse_request(line):
    """Split 'GET /path?q=1 HTTP/1.1' into its parts; None when it does not parse."""
    m = REQUEST.match(line or "")
    if m is None:
        return None
    parts = urlsplit(m.group("target"))
    return {
        "method": m.group("method"),
        "path": parts.path,
        "query": parts.query,
        "proto": m.group("proto"),
    }


def is_internal(ip):
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in INTERNAL)


def agent_kind(ua):
    ua = (ua or "").lower()
    for name in SCANNER_AGENTS:
        if name in ua:
            return name
    if "bot" in ua or "spider" in ua:
        return "bot"
    return "browser" if "mozilla" in ua else "other"


def suspicious_hits(text):
    hits = []
    for pattern in SUSPICIOUS:
        if pattern.search(text):
            hits.append(pattern.pattern)
    return hits


def status_class(status):
    try:
        return STATUS_CLASSES.get(int(status) // 100, "unknown")
    except (TypeError, ValueError):
        return "unknown"


def query_summary(query):
    params = parse_qs(query, keep_blank_values=True)
    keys = sorted(params)[:MAX_QUERY_KEYS]
    return {"keys": keys, "count": len(params)}


def transform(event):
    request = parse_request(event.get("request"))
    if request is None:
        # Not an HTTP request line: keep the event, mark it.
        event["parsed"] = False
        return event
    event.update(request)
    event["parsed"] = True
    event["internal"] = is_internal(event.get("ip", ""))
    event["agent"] = agent_kind(event.get("ua"))
    event["status_class"] = status_class(event.get("status"))
    hits = suspicious_hits(request["path"] + "?" + request["query"])
    if hits:
        event["suspicious"] = hits
        event["risk"] = min(100, 30 * len(hits) + (20 if event["agent"] != "browser" else 0))
    else:
        event["risk"] = 0
    if request["query"]:
        event["query"] = query_summary(request["query"])
    else:
        del event["query"]
    size = event.get("bytes")
    if isinstance(size, str):
        event["bytes"] = int(size) if size.isdigit() else None
    return event
'''


def test_realistic_hundred_line_snippet_checks_and_runs() -> None:
    assert 90 <= len(WEB_CLASSIFIER.splitlines()) <= 110
    event = {"ip": "192.168.105.83", "request": "GET /wp-login.php?user=a&x= HTTP/1.1", "status": 404,
             "bytes": "512", "ua": "sqlmap/1.7"}
    values, errors, _ = run(WEB_CLASSIFIER, "transform", [event, {"request": "garbage"}])
    assert errors == []
    assert values == [[{
        "ip": "192.168.105.83", "request": "GET /wp-login.php?user=a&x= HTTP/1.1", "status": 404,
        "bytes": 512, "ua": "sqlmap/1.7", "method": "GET", "path": "/wp-login.php",
        "query": {"keys": ["user", "x"], "count": 2}, "proto": "HTTP/1.1", "parsed": True, "internal": True,
        "agent": "sqlmap", "status_class": "client_error", "suspicious": ["(?i)wp-(login|admin)"], "risk": 50,
    }], [{"request": "garbage", "parsed": False}]]


def test_printed_never_hands_out_the_print_buffer() -> None:
    source = "def transform(event):\n    print('a')\n    return {'p': printed}\n"
    assert not check(source, "transform").ok
    values, errors, logs = run(source, "transform", [{}], checked=False)
    assert errors == [] and values == [[{"p": ""}]] and logs == ["event 0: a"]
