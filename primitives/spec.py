"""The pipeline spec (DESIGN §2.1): models, loading from YAML or JSON, errors with paths, code_hash.

A step is a mapping with exactly one kind key (plus an optional `id`); its value is validated by
the options model that the kind registered in `primitives.registry.STEPS`. Errors are collected
over the whole spec and reported as diagnostics whose message starts with the path of the bad key,
`steps[2].aggregate.window: '60x' is not a duration; use 60s, 5m, 1h`, so an agent can fix them
all in one round.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import primitives.steps  # noqa: F401 - registers every step kind
from primitives.diagnostics import Diagnostic
from primitives.registry import STEPS
from primitives.sqlcheck import check_expression

MAX_SPEC_BYTES = 256 * 1024
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Which sandbox entrypoint kind each code-capable step kind runs.
CODE_KINDS = {"filter": "keep", "transform": "transform", "derive": "derive", "rule": "rule"}


class SpecError(ValueError):
    """The spec could not be loaded; `diagnostics` says every problem found, with its path."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("\n".join(d.render() for d in diagnostics))
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class StepSpec:
    """One validated step: its id, kind and validated options model."""

    id: str
    kind: str
    options: BaseModel

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, self.kind: self.options.model_dump(mode="json", exclude_none=True)}


class WebhookAlert(BaseModel):
    """POST each signal to a URL (the live executor delivers through a durable outbox, with retries)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="http(s) URL that receives each alert as a POST")
    format: Literal["json", "slack"] = Field("json", description="payload: the signal as JSON, or a Slack "
                                             "message (incoming-webhook format)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers, e.g. a token")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not re.fullmatch(r"https?://[^\s/$.?#][^\s]*", url):
            raise ValueError(f"{url[:80]!r} is not an http(s) URL; write e.g. https://hooks.example.com/logbus")
        return url


class StdoutAlert(BaseModel):
    """Print each signal as a JSON line on the executor's standard output (local runs)."""

    model_config = ConfigDict(extra="forbid")


class AlertDestination(BaseModel):
    """Where the live executor delivers a pipeline's signals: exactly one of webhook, file, stdout.

    Trial runs (`test_pipeline`, `logbus test`) never deliver; they show the signals instead.
    """

    model_config = ConfigDict(extra="forbid")
    webhook: WebhookAlert | None = Field(None, description="POST each signal to a URL")
    file: str | None = Field(None, min_length=1, description="append each signal as a JSON line to this "
                             "file, relative to the tenant's alerts directory (no absolute paths or ..)")
    stdout: StdoutAlert | None = Field(None, description="print each signal (local runs): stdout: {}")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        return _one_key(data, ("webhook", "file", "stdout"), "an alert destination", empty=("stdout",))


class ParquetSink(BaseModel):
    """Write the output events as Parquet files (readable as the pipeline's DuckDB view)."""

    model_config = ConfigDict(extra="forbid")
    partition_by: Literal["date"] = Field("date", description="partition output files by event date")


class SinkDestination(BaseModel):
    """Where the live executor writes a pipeline's output events; exactly one key (today: parquet)."""

    model_config = ConfigDict(extra="forbid")
    parquet: ParquetSink | None = Field(None, description="Parquet files partitioned by date")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        return _one_key(data, ("parquet",), "a sink", empty=("parquet",))


def _one_key(data: Any, keys: tuple[str, ...], what: str, *, empty: tuple[str, ...]) -> Any:
    """Destinations are `{kind: options}` mappings with one kind; `kind:` alone means default options."""
    if isinstance(data, str) and data in empty:
        return {data: {}}
    if not isinstance(data, dict):
        return data
    if len(data) != 1:
        raise ValueError(f"{what} has exactly one of {', '.join(keys)}; got {sorted(data) or 'none'}")
    key = next(iter(data))
    if key in empty and data[key] is None:
        return {key: {}}
    return data


class PipelineSpec(BaseModel):
    """A whole pipeline. `steps` holds StepSpec objects after loading."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(description="unique per tenant: [a-z0-9][a-z0-9_-]{0,62}")
    description: str = Field("", description="what the pipeline is for, one or two sentences")
    source: str = Field(description="name of the stream the pipeline reads")
    time: str | None = Field(None, description="event-time field (ISO 8601 string or epoch s/ms); "
                             "default: the stream's time field, else ingest time")
    start: Literal["latest", "earliest"] = Field("latest", description="where a new pipeline starts reading")
    steps: list[StepSpec] = Field(description="the steps, in order; each a mapping with one kind key")
    sinks: list[SinkDestination] = Field(default_factory=list, description="where the live executor writes "
                                         "output events; empty means [{parquet: {partition_by: date}}]")
    alerts: list[AlertDestination] = Field(default_factory=list, description="where the live executor "
                                           "delivers signals (webhook, file, stdout); signals are always "
                                           "stored and queryable as well")

    @field_validator("name", "source")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid name; use lowercase letters, digits, - and _ "
                             "(start with a letter or digit, at most 63 characters)")
        return value

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"steps"}, exclude_defaults=True)
        data["name"], data["source"] = self.name, self.source
        data["steps"] = [s.to_dict() for s in self.steps]
        return data


def load_spec(text: str | bytes, *, filename: str | None = None) -> PipelineSpec:
    """Parse YAML or JSON text into a validated spec; raises SpecError with every problem.

    Diagnostics from YAML carry the 1-based line of the key they are about.
    """
    raw, lines = _parse_document(text, filename)
    return spec_from_data(raw, lines=lines)


def spec_from_data(raw: Any, *, lines: Lines | None = None) -> PipelineSpec:
    """Validate an already-parsed spec (a dict, as from JSON or YAML)."""
    report = _Report(lines or Lines(None))
    if not isinstance(raw, dict):
        report.add((), f"a pipeline is a mapping with name, source and steps; got {type(raw).__name__}")
        raise SpecError(report.diagnostics)
    steps = _load_steps(raw.get("steps"), report)
    top = {key: value for key, value in raw.items() if key != "steps"}
    spec = None
    try:
        spec = PipelineSpec.model_validate({**top, "steps": []})
    except ValidationError as exc:
        report.validation(exc, (), PipelineSpec)
    if report.diagnostics or spec is None:
        raise SpecError(sorted(report.diagnostics, key=lambda d: (d.line is None, d.line or 0)))
    spec.steps = steps
    return spec


def code_snippets(spec: PipelineSpec) -> list[tuple[str, str, str]]:
    """(step id, sandbox kind, source) for every step that carries Python code."""
    found = []
    for step_spec in spec.steps:
        code = getattr(step_spec.options, "code", None)
        if step_spec.kind in CODE_KINDS and isinstance(code, str):
            found.append((step_spec.id, CODE_KINDS[step_spec.kind], code))
    return found


def code_hash(spec: PipelineSpec) -> str:
    """sha256 over the canonical JSON of the validated spec (YAML and JSON agree; any change shows)."""
    canonical = json.dumps(_normalise(spec.to_dict()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _normalise(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", "\n")
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _parse_document(text: str | bytes, filename: str | None) -> tuple[Any, Lines]:
    try:
        size = len(text.encode("utf-8") if isinstance(text, str) else text)
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON's "\ud800" escape decodes to one
        assert isinstance(text, str)
        raise SpecError([Diagnostic("spec-syntax", "the spec is not valid Unicode text (a lone surrogate "
                                    f"character, U+{ord(text[exc.start]):04X})",
                                    line=text.count("\n", 0, exc.start) + 1)]) from None
    if size > MAX_SPEC_BYTES:
        raise SpecError([Diagnostic("spec-too-large", f"the spec is {size:,} bytes; the limit is "
                                    f"{MAX_SPEC_BYTES:,}", hint="move lookup data to an enrich table")])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError([Diagnostic("spec-syntax", "the spec is not UTF-8 text")]) from None
    if not text.strip():
        raise SpecError([Diagnostic("spec-syntax", "the spec is empty; give name, source and steps")])
    if (filename or "").endswith(".json") or text.lstrip().startswith("{"):
        try:
            return json.loads(text), Lines(None)
        except json.JSONDecodeError as exc:
            if (filename or "").endswith(".json"):
                raise SpecError([Diagnostic("spec-syntax", f"invalid JSON: {exc.msg}", line=exc.lineno,
                                            col=exc.colno)]) from None
            # not JSON after all: a YAML flow mapping ({name: x, ...}) also starts with "{"
    try:
        loader = _SafeNoAliasLoader(text)  # its reader refuses control characters (a NUL, say) here
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, text)]) from None
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), Lines(node)
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, text)]) from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, text: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).split("\n", 1)[0]
    if mark is not None:
        return Diagnostic("spec-syntax", f"invalid YAML: {problem}", line=mark.line + 1, col=mark.column + 1)
    position = getattr(exc, "position", None)  # a ReaderError: an offset into the text
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        return Diagnostic("spec-syntax", f"invalid YAML: {problem}", line=line,
                          col=position - text.rfind("\n", 0, position))
    return Diagnostic("spec-syntax", f"invalid YAML: {problem}")


class _SafeNoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases: a few aliases can expand to gigabytes ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in specs",
                                              event.start_mark)
        return super().compose_node(parent, index)


Path = tuple[str | int, ...]
# Where each kind keeps SQL expressions: (option, role, True when it maps names to expressions).
# `filter: "<sql>"` is the shorthand for {expr: "<sql>"}.
SQL_OPTIONS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "filter": (("expr", "predicate", False),),
    "transform": (("set", "scalar", True),),
    "aggregate": (("measures", "aggregate", True),),
    "derive": (("when", "predicate", False),),
}


class Lines:
    """Path in the document -> 1-based line of its key (YAML only; JSON and dicts give None)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def node(self, path: Path) -> tuple[yaml.Node | None, int | None]:
        node, line = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == part:
                        node, line = value, key.start_mark.line + 1
                        break
                else:
                    return node, line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return node, line
        return node, line

    def line(self, path: Path) -> int | None:
        return self.node(path)[1]


class _Report:
    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.diagnostics: list[Diagnostic] = []

    def add(self, path: Path, message: str, *, code: str = "spec-invalid", hint: str | None = None,
            line: int | None = None) -> None:
        where = _render_path(path)
        text = f"{where}: {message}" if where else message
        self.diagnostics.append(Diagnostic(code, text, line=line or self.lines.line(path), hint=hint))

    def validation(self, exc: ValidationError, prefix: Path, model: type[BaseModel], *,
                   skip: tuple[str, ...] = ()) -> None:
        for error in exc.errors(include_url=False):
            loc = tuple(part for part in error["loc"]
                        if not (isinstance(part, str) and part.startswith("function-")))
            message = _message(error)
            if error["type"] == "extra_forbidden" and loc:
                message = _unknown_key(str(loc[-1]), _model_at(model, loc[:-1]))
            if any(known in message for known in skip):
                continue  # already reported, with a precise path, by the SQL check
            self.add(prefix + loc, message)


def _render_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _load_steps(raw_steps: Any, report: _Report) -> list[StepSpec]:
    if raw_steps is None:
        report.add(("steps",), "missing; give a list of steps, e.g. - filter: \"status >= 500\"")
        return []
    if not isinstance(raw_steps, list) or not raw_steps:
        report.add(("steps",), "must be a non-empty list of steps, e.g. - filter: \"status >= 500\"")
        return []
    steps: list[StepSpec] = []
    seen_ids: set[str] = set()
    kind_counts: dict[str, int] = {}
    for index, item in enumerate(raw_steps):
        loaded = _load_step(item, ("steps", index), report)
        if loaded is None:
            continue
        kind, step_id, options = loaded
        kind_counts[kind] = kind_counts.get(kind, 0) + 1
        if step_id is None:
            step_id = kind if kind_counts[kind] == 1 else f"{kind}_{kind_counts[kind]}"
            while step_id in seen_ids:
                step_id += "_"
        elif step_id in seen_ids:
            report.add(("steps", index, "id"), f"{step_id!r} is used by an earlier step; ids must be unique")
        seen_ids.add(step_id)
        steps.append(StepSpec(step_id, kind, options))
    return steps


def _load_step(item: Any, path: Path, report: _Report) -> tuple[str, str | None, BaseModel] | None:
    kinds_list = ", ".join(STEPS)
    if not isinstance(item, dict):
        report.add(path, f"a step is a mapping with one kind key ({kinds_list}); got {type(item).__name__}")
        return None
    step_id = item.get("id")
    if step_id is not None and (not isinstance(step_id, str) or not NAME.fullmatch(step_id)):
        report.add((*path, "id"), f"{step_id!r} is not a valid id; use lowercase letters, digits, - and _ "
                   "([a-z0-9][a-z0-9_-]{0,62})")
        step_id = None
    kinds = [key for key in item if key != "id"]
    if len(kinds) != 1:
        report.add(path, f"a step needs exactly one kind key; got {kinds or 'none'} (kinds: {kinds_list})",
                   code="unknown-step-kind")
        return None
    kind = kinds[0]
    if kind not in STEPS:
        close = difflib.get_close_matches(str(kind), STEPS, n=1)
        suggestion = f"did you mean '{close[0]}'? " if close else ""
        report.add(path, f"unknown step kind '{kind}'; {suggestion}Kinds: {kinds_list}",
                   code="unknown-step-kind")
        return None
    reported = _check_sql(kind, item[kind], (*path, kind), report)
    try:
        options = STEPS[kind].options.model_validate(item[kind])
    except ValidationError as exc:
        report.validation(exc, (*path, kind), STEPS[kind].options, skip=reported)
        return None
    return kind, step_id, options


def _check_sql(kind: str, value: Any, path: Path, report: _Report) -> tuple[str, ...]:
    """SQL expressions of a step, checked with precise paths; returns the messages reported."""
    found: list[tuple[Path, str, str]] = []
    for option, role, mapping in SQL_OPTIONS.get(kind, ()):
        if isinstance(value, str) and kind == "filter":
            found.append(((), value, role))
        elif isinstance(value, dict) and mapping and isinstance(value.get(option), dict):
            found += [((option, name), expr, role)
                      for name, expr in value[option].items() if isinstance(expr, str)]
        elif isinstance(value, dict) and isinstance(value.get(option), str):
            found.append(((option,), value[option], role))
    messages: list[str] = []
    for sub, expr, role in found:
        for problem in check_expression(expr, role=role):
            node, line = report.lines.node(path + sub)
            if line is not None and problem.line is not None and isinstance(node, yaml.ScalarNode):
                block = node.style in ("|", ">")
                line = node.start_mark.line + 1 + (1 if block else 0) + problem.line - 1
            report.add(path + sub, problem.message, code="sql-invalid", hint=problem.hint, line=line)
            messages.append(problem.message)
    return tuple(messages)


def _model_at(model: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` inside `model`, or None where that is not
    one model (a union of two, a plain dict)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: its model is the one found for the list
        if current is None or part not in current.model_fields:
            return None
        current = _only_model(current.model_fields[part].annotation)
    return current


def _only_model(annotation: Any) -> type[BaseModel] | None:
    """The one model class inside an annotation (`Sink | None`, `list[Sink]`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = {model for arg in typing.get_args(annotation) if (model := _only_model(arg)) is not None}
    return found.pop() if len(found) == 1 else None


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    """What an agent needs to fix a misspelt or invented key: the keys that are allowed there,
    and the nearest one."""
    if model is None:
        return "unknown key; remove it or check its spelling"
    allowed = [field.alias or name for name, field in model.model_fields.items()]
    close = difflib.get_close_matches(key, allowed, n=1)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key; {suggestion}allowed here: {', '.join(allowed)}"


def _message(error: Any) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "value_error":
        return str(message).removeprefix("Value error, ")
    if kind == "missing":
        return "missing; this key is required"
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{message} (got {shown[:80]})"
