"""The guide agents read (`get_guide`, `logbus guide`), generated from the step registry.

Nothing here is written twice: each kind's summary, options table, semantics and example come
from its module (options model field descriptions, module docstring, registered example), the SQL
rules from `sqlcheck`, and the Python language reference is passed in by the caller (it lives in
the sandbox, which this package may not import). Every example shown is executed by the tests.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from typing import Any

from pydantic import BaseModel

import primitives.steps  # noqa: F401 - registers every step kind
from primitives.registry import STEPS, StepKind
from primitives.spec import MAX_SPEC_BYTES
from primitives.sqlcheck import MAX_EXPRESSION_CHARS, describe_sql

TOPICS = ("spec", "steps", "sql", "python", "examples")

SPEC = """\
# LogBus pipeline guide

## Workflow
1. Look at the stream (`list_streams`, `describe_stream`, `sample_events`).
2. Write a pipeline (YAML or JSON) and `validate_pipeline` it: static checks only, instant.
3. `test_pipeline` it on real sample events until every step passes and the outputs/signals are right.
4. `submit_pipeline` with the passing `run_id`; a person reviews it; `get_pipeline` shows the decision.

## Spec format
```yaml
name: ssh-brute-force          # unique per tenant: [a-z0-9][a-z0-9_-]{0,62}
description: what it is for
source: auth                   # stream name
time: timestamp                # event-time field (ISO 8601 string, or epoch seconds/milliseconds)
start: latest                  # or earliest: where a newly deployed pipeline starts reading
steps:                         # in order; each step is a mapping with ONE kind key and an optional id
  - filter: "message LIKE '%Failed password%'"
  - id: extract
    parse: {field: message, regex: 'from (?P<src_ip>\\S+)'}
```
- Step ids default to the kind name (`filter`, then `filter_2`, ...); error messages and counters use them.
- Durations: `250ms`, `60s`, `5m`, `1h`, `1d` (or a number of seconds).
- Events are JSON objects. Between steps they are columnar batches: a field missing from an event
  reads as NULL/None; a field whose type changes between events keeps each event's own value in
  Python (and reads as text in SQL where a batch mixes types: see the SQL section).
- Errors in agent code never stop a pipeline: the event goes to dead letters with the error and
  the snippet line; `test_pipeline` groups them by step and line.
- Keys name fields; values vary. Input whose keys vary (`{"<request id>": ...}`) is held to 1,000
  distinct fields per part of the input, nested ones counted: events past that are dead letters
  (`too_many_fields`), also among the events you pass to `test_pipeline`.
"""


def render_guide(topic: str | None = None, *, language: str | None = None) -> str:
    """The whole guide, or one topic; raises KeyError naming the known topics."""
    if topic is None:
        parts = [_spec(), _steps(), _sql(), _python(language), _examples()]
        return "\n\n".join(parts)
    key = topic.strip().lower()
    if key == "spec":
        return _spec()
    if key == "steps":
        return _steps()
    if key == "sql":
        return _sql()
    if key == "python":
        return _python(language)
    if key == "examples":
        return _examples()
    if key in STEPS:
        return _kind(STEPS[key], detail=True)
    raise KeyError(f"unknown guide topic {topic!r}; topics: {', '.join(TOPICS + tuple(STEPS))}")


def _spec() -> str:
    """The format, then the semantics every step shares, from the modules that implement them."""
    from primitives import eventtime, signals, windows

    sections = [SPEC, "## Limits", "",
                f"- A spec is at most {MAX_SPEC_BYTES // 1024} KiB of YAML or JSON; YAML anchors/aliases are "
                "refused.",
                "- Names and step ids: `[a-z0-9][a-z0-9_-]{0,62}`; ids are unique within a pipeline.",
                f"- A SQL expression is at most {MAX_EXPRESSION_CHARS:,} characters; a Python snippet at "
                "most 64 KiB (the python topic gives the sandbox's time and memory limits).",
                "- Signals keep up to 10 sample events."]
    for title, module in (("Event time", eventtime), ("Windows", windows), ("Signals", signals)):
        sections += ["", f"## {title}", "", _first_part(inspect.getdoc(module) or "")]
    return "\n".join(sections)


def _first_part(doc: str) -> str:
    """A module docstring minus its implementation notes (the paragraph about ints, say)."""
    paragraphs = doc.replace("(see primitives.eventtime)", "(see Event time)").split("\n\n")
    return "\n\n".join(p for p in paragraphs if "microseconds since" not in p)


def examples() -> dict[str, str]:
    """kind -> the runnable example pipeline (YAML) shown in the guide."""
    return {name: kind.example for name, kind in STEPS.items()}


def _steps() -> str:
    lines = ["# Step kinds", ""]
    lines += [f"- `{name}` → {kind.emits}: {kind.summary}" for name, kind in STEPS.items()]
    lines.append("")
    lines += [_kind(kind, detail=True) for kind in STEPS.values()]
    return "\n".join(lines)


def _kind(kind: StepKind, *, detail: bool) -> str:
    lines = [f"## `{kind.name}`", "", kind.summary, ""]
    lines.append(_options_table(kind.options))
    if detail:
        doc = inspect.getdoc(sys.modules[kind.options.__module__]) or ""
        if doc:
            lines += ["", doc]
    lines += ["", "Example:", "```yaml", kind.example.rstrip(), "```"]
    return "\n".join(lines)


def _options_table(model: type[BaseModel]) -> str:
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        shown = field.alias or name
        default = ("required" if field.is_required()
                   else _default(field.get_default(call_default_factory=True)))
        kind = _type_name(field.annotation)
        rows.append(f"| `{shown}` | {kind} | {default} | {(field.description or '').replace('|', '/')} |")
    return "\n".join(rows)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("datetime.timedelta", "duration").replace("|", "or")
    return f"`{text}`"


def _default(value: Any) -> str:
    if value is None:
        return "—"
    if hasattr(value, "total_seconds"):
        from primitives.durations import format_duration

        return f"`{format_duration(value)}`"
    return f"`{value!r}`"


def _sql() -> str:
    return "# SQL expressions\n\n" + describe_sql()


def _python(language: str | None) -> str:
    body = language or "(the Python language reference is served by the sandbox)"
    return "# Python in pipelines\n\n" + textwrap.dedent(body)


def _examples() -> str:
    lines = ["# Examples (every one is run by the tests)", ""]
    for name, example in examples().items():
        lines += [f"### {name}", "```yaml", example.rstrip(), "```", ""]
    return "\n".join(lines)
