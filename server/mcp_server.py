"""The MCP server `logbus`: the agent tools of DESIGN §2.3 as short adapters over `server.lifecycle`.

`build_server(context)` returns an `MCPServer` bound to one tenant's `AgentContext` (built by the
transport from a credential; no tool takes a tenant). Each tool's docstring is its prompt. A
result carries structured content (its output schema is the tool's return model) and the same
data as text, capped at `MAX_TEXT` characters with `truncated: true` when cut. Tools whose results
can be long (describe_stream, test_pipeline, get_pipeline) are concise by default and take
`detail: true` for the full result; the detail-only fields are optional in their output schemas and
absent from a concise result.

Errors the agent can fix come back as `isError: true` results whose structured content is
`{error, message, diagnostics: [{code, message, step, line, hint}], truncated, ...}` (plus what the
tool could still report, e.g. a failed test's run_id and counts); the text starts with the
actionable lines. `error` is one of `ERROR_CODES`. Anything else (a bug, a broken disk) comes back
as `error: "internal"` with the exception's type and text, never as the SDK's generic error; the
operator's log gets the traceback.

This module imports no annotations lazily (no `from __future__ import annotations`): the SDK
reads the tool signatures at registration time.
"""

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from server.lifecycle import AgentContext, Lifecycle, LifecycleError

MAX_TEXT = 20_000
ERROR_CODES = ("invalid_pipeline", "test_failed", "no_events", "unknown_stream", "unknown_pipeline",
               "unknown_step", "unknown_run", "unknown_topic", "run_failed", "code_hash_mismatch",
               "invalid_where", "invalid_argument", "query_error", "forbidden")
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                         open_world_hint=False)

INSTRUCTIONS = """\
LogBus runs your pipelines (filters, transforms, aggregations, detection rules) continuously over
this tenant's event streams, once a person has reviewed them. Workflow:
1. get_guide (once): the spec format, step kinds, Python entrypoints, allowed modules, examples.
2. list_streams, describe_stream, sample_events: learn the fields and values of the source.
3. validate_pipeline: static checks, instant; fix every diagnostic (they name step and line).
4. test_pipeline: runs in the sandbox on real recent events (or your inline events/test cases);
   iterate until ok is true and the outputs/signals are what you meant.
5. submit_pipeline with the passing run_id and a summary for the reviewer; you get a review_id.
   You cannot approve, deploy, pause or retire: a reviewer decides.
6. get_pipeline shows the decision, comments, live metrics and errors; list_signals, query and
   tap show what a running pipeline produces.
"""


# -- shared shapes ------------------------------------------------------------------------------------

class Problem(BaseModel):
    code: str = Field(description="stable code, e.g. sql-unknown-function, import-not-allowed")
    message: str = Field(description="what is wrong")
    step: str | None = Field(None, description="the pipeline step it is about")
    line: int | None = Field(None, description="1-based line inside the step's snippet or expression")
    hint: str | None = Field(None, description="what to do instead")


class Output(BaseModel):
    truncated: bool = Field(False, description=f"the text content was cut at {MAX_TEXT} characters; the "
                            "structured content is whole")


Event = dict[str, Any]


class GuideOut(Output):
    topic: str | None
    text: str = Field(description="the guide (Markdown)")


class StreamSummary(BaseModel):
    name: str
    events: int = Field(description="retained events")
    start_offset: int
    end_offset: int
    bytes: int
    dead_letters: int = Field(description="ingest lines that were rejected (bad JSON, too large ...)")
    first_ingest_at: float | None
    last_ingest_at: float | None
    min_time: str | None = Field(description="earliest event time seen, when the time field is known")
    max_time: str | None
    rate_events_per_s: float | None = Field(description="average ingest rate between first and last ingest")
    time_field: str | None
    format: str | None = Field(description="how events arrived: ndjson (objects) or lines ({message})")
    top_fields: list[str] = Field(description="the most filled fields of recent events")


class StreamsOut(Output):
    streams: list[StreamSummary]


class TopValue(BaseModel):
    value: Any
    count: int


class FieldProfile(BaseModel):
    field: str
    type: str = Field(description="string, integer, number, boolean, timestamp, object, array or json")
    null_rate: float = Field(description="share of sampled events without the field (0..1)")
    examples: list[Any] | None = Field(None, description="up to 3 distinct values (only with detail)")
    top_values: list[TopValue] | None = Field(None, description="the 5 most frequent values of a string, "
                                              "integer or boolean field (only with detail)")


class StreamSchemaOut(Output):
    stream: str
    sampled: int = Field(description="recent events the profile was computed over")
    time_field: str | None = Field(description="the event-time field (configured, else a likely name)")
    format: str | None
    fields: list[FieldProfile]
    hint: str | None


class SampleOut(Output):
    stream: str
    scanned: int = Field(description="recent events looked at (the last 10,000 when `where` is given)")
    matched_shown: int
    events: list[Event]
    offsets: list[int] = Field(description="the log offset of each event, in the same order")


class ValidateOut(Output):
    valid: bool
    code_hash: str | None = Field(description="sha256 of the canonical spec: what test and submit tie to")
    diagnostics: list[Problem]


class StepCount(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: str
    kind: str
    in_: int = Field(alias="in")
    out: int
    signals: int
    errors: int
    seconds: float


class CaseResult(BaseModel):
    name: str
    passed: bool
    failures: list[str]
    outputs: list[Event]
    signals: list[Event]


class TestOut(Output):
    run_id: str = Field(description="pass to submit_pipeline together with this exact pipeline text")
    code_hash: str
    ok: bool
    events_read: int
    steps: list[StepCount]
    output_count: int
    signal_count: int
    errors: list[Event] = Field(description="code errors grouped by step, reason, type and line")
    dead_letters: int
    dead_letter_reasons: dict[str, int]
    dead_letter_samples: list[Event]
    tests: list[CaseResult]
    outputs: list[Event] = Field(description="the first output events")
    signals: list[Event] = Field(description="the first signals raised")
    logs: list[str]
    seconds: float
    omitted: dict[str, int] = Field(default_factory=dict, description="how many items each list left out "
                                    "by the concise default; pass detail=true to see them")


class SubmitOut(Output):
    review_id: str
    status: str = Field(description="pending_review until a reviewer decides")
    pipeline: str
    version: int = Field(description="the version this submission becomes when approved (N+1)")
    code_hash: str
    run_id: str
    how_to_decide: str


class PipelineSummary(BaseModel):
    name: str
    version: int | None = Field(description="current deployed version; null while only pending review")
    status: str = Field(description="active, paused, retired or pending_review")
    reason: str
    source: str
    updated_at: float
    pending_review: str | None = Field(description="review_id of a pending request for this pipeline")


class PipelinesOut(Output):
    pipelines: list[PipelineSummary]


class ReviewInfo(BaseModel):
    review_id: str
    status: str
    code_hash: str
    run_id: str
    summary: str
    author: str
    reviewer: str | None
    comment: str | None
    version: int | None = Field(description="the version an approval deployed")
    created_at: float
    decided_at: float | None
    comments: list[Event]


class PipelineOut(Output):
    name: str
    deployed: bool
    status: str
    version: int | None
    reason: str = ""
    code_hash: str | None = None
    spec: str | None = Field(None, description="the current (or pending) spec text (only with detail)")
    versions: list[Event] | None = Field(None, description="every deployed version (only with detail)")
    live: Event | None = Field(description="live executor status: state, lag, counters, per-step counts")
    errors: list[Event] = Field(description="recent error groups of the running version (the first 5; "
                                "all with detail)")
    reviews: list[ReviewInfo]
    audit: list[Event] | None = Field(None, description="the audit trail, newest first (only with detail)")


class Signal(BaseModel):
    id: str
    pipeline: str
    version: int | None
    step: str | None
    severity: str
    title: str
    dedup: str | None
    count: int
    first_seen: str | None
    last_seen: str | None
    context: Any
    samples: list[Any]


class SignalsOut(Output):
    signals: list[Signal]
    more: bool = Field(description="more signals matched than `limit`")


class QueryOut(Output):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int
    more_rows: bool = Field(description="the result had more rows than `limit`")
    elapsed_ms: float


class TapOut(Output):
    pipeline: str
    version: int
    step: str
    mode: str = Field(description="live: events leaving the step of the running pipeline; replay: the "
                      "deployed version re-run in the sandbox on recent events (no running pipeline here)")
    source_events: int | None = Field(description="replay: events re-run; live: null")
    step_in: int | None = Field(description="replay: events into the step; live: null")
    step_out: int | None = Field(description="replay: events out of the step; live: null")
    events: list[Event]
    signals: list[Event] = Field(description="replay only (live samples events)")
    errors: list[Event]
    complete: bool = Field(True, description="live: false when fewer than limit events came before the wait "
                           "ran out (a quiet stream)")
    waited_s: float | None = Field(None, description="live: seconds waited")
    note: str | None = None


class Expect(BaseModel):
    outputs: int | None = Field(None, description="exact number of output events")
    signals: int | None = Field(None, description="exact number of signals")
    output_contains: Event | None = Field(None, description="fields some output event must have, equal")
    signal_contains: Event | None = Field(None, description="fields some signal must have: {severity: high}")


class TestCase(BaseModel):
    name: str | None = Field(None, description="shown in the result")
    event: Event | None = Field(None, description="one input event")
    events: list[Event] | None = Field(None, description="input events, in order (instead of `event`)")
    expect: Expect = Field(description="what the pipeline must produce from these events alone")


# -- responses ----------------------------------------------------------------------------------------

M = TypeVar("M", bound=Output)


def respond(model: type[M], call: Callable[[], dict[str, Any]]) -> CallToolResult:
    """Run a lifecycle call: its result as structured content + text, or an isError result."""
    try:
        # exclude_unset: the detail-only fields a concise result did not fill are left out, not null
        data = model.model_validate(call()).model_dump(mode="json", by_alias=True, exclude_unset=True)
    except LifecycleError as exc:
        return error_result(exc)
    except Exception as exc:
        # Not the agent's fault, but its text must not vanish: the agent sees what failed, the
        # operator's log gets the traceback.
        logging.getLogger("logbus.mcp").exception("tool call failed")
        return error_result(LifecycleError("internal", f"{type(exc).__name__}: {exc}", payload={
            "hint": "this is a LogBus or environment problem, not your pipeline; retry, or report it"}))
    data.pop("truncated", None)
    text, truncated = cap(json.dumps(data, ensure_ascii=False, default=str))
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content={**data, "truncated": truncated})


def error_result(exc: LifecycleError) -> CallToolResult:
    problems = [Problem(code=d.code, message=d.message, step=d.step, line=d.line, hint=d.hint).model_dump()
                for d in exc.diagnostics]
    lines = [f"error {exc.code}: {exc.message}", *(d.render() for d in exc.diagnostics)]
    extra = {k: v for k, v in exc.payload.items() if k not in ("diagnostics", "error", "message")}
    text, truncated = cap("\n".join(lines) + ("\n\n" + json.dumps(extra, default=str) if extra else ""))
    content = {**json.loads(json.dumps(extra, default=str)), "error": exc.code, "message": exc.message,
               "diagnostics": problems, "truncated": truncated}
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=content,
                          is_error=True)


def cap(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_TEXT:
        return text, False
    marker = "\n… [truncated; the structured content has everything]"
    return text[: MAX_TEXT - len(marker)] + marker, True


def _progress(ctx: Context[Any, Any]) -> Callable[[int, int | None, str], None]:
    """A callback for the worker thread that sends MCP progress notifications on the event loop."""

    def report(done: int, total: int | None, message: str) -> None:
        anyio.from_thread.run(ctx.report_progress, done, total, message)

    return report


# -- the server ---------------------------------------------------------------------------------------

Text = Annotated[str, Field(description="the pipeline spec, YAML or JSON text (see get_guide)")]
Detail = Annotated[bool, Field(description="return the full result instead of the concise default")]


def build_server(context: AgentContext) -> MCPServer:
    """The `logbus` MCP server for one tenant's credential."""
    life = Lifecycle(context)
    server = MCPServer("logbus", instructions=INSTRUCTIONS)

    @server.tool(annotations=READ_ONLY)
    def get_guide(topic: Annotated[str | None, Field(description="spec, steps, sql, python, examples or a "
                                                     "step kind; omit for the whole guide")] = None,
                  ) -> Annotated[CallToolResult, GuideOut]:
        """Read the pipeline contract: spec format, step kinds and options, SQL rules, the Python
        allowed in code steps, limits and worked examples. Read it before writing a pipeline;
        then look at the data with list_streams and describe_stream."""
        return respond(GuideOut, lambda: {"topic": topic, "text": life.get_guide(topic)})

    @server.tool(annotations=READ_ONLY)
    def list_streams() -> Annotated[CallToolResult, StreamsOut]:
        """List this tenant's event streams with event counts, time range, ingest rate and the most
        filled fields. Start here; then describe_stream the one your pipeline will read."""
        return respond(StreamsOut, life.list_streams)

    @server.tool(annotations=READ_ONLY)
    def describe_stream(stream: Annotated[str, Field(description="stream name from list_streams")],
                        detail: Detail = False) -> Annotated[CallToolResult, StreamSchemaOut]:
        """Infer a stream's schema from its recent events: each field's type and null rate, and
        the event-time field; with detail, also examples and top values per field. Use the field
        names exactly as shown in your pipeline; then sample_events to see whole events."""
        return respond(StreamSchemaOut, lambda: life.describe_stream(stream, detail))

    @server.tool(annotations=READ_ONLY)
    def sample_events(stream: Annotated[str, Field(description="stream name")],
                      limit: Annotated[int, Field(description="events to return (1-500)")] = 20,
                      where: Annotated[str | None, Field(description="optional SQL condition over the "
                                                         "event's fields, e.g. status >= 500")] = None,
                      ) -> Annotated[CallToolResult, SampleOut]:
        """Show recent events of a stream, optionally only those matching a SQL condition (checked
        like a filter step, over the last 10,000 events). Use it to see real values before writing
        filters and regexes; then validate_pipeline your draft."""
        return respond(SampleOut, lambda: life.sample_events(stream, limit, where))

    @server.tool(annotations=READ_ONLY)
    def validate_pipeline(pipeline: Text) -> Annotated[CallToolResult, ValidateOut]:
        """Check a pipeline statically (spec, SQL expressions, Python snippets) without running it;
        instant. Every diagnostic names the step, the line and what to do instead. When valid,
        call test_pipeline with the same text."""
        return respond(ValidateOut, lambda: life.validate(pipeline))

    @server.tool(annotations=WRITES)
    async def test_pipeline(
        ctx: Context[Any, Any], pipeline: Text,
        stream: Annotated[str | None, Field(description="stream to sample; default: the source")] = None,
        events: Annotated[list[Event] | None, Field(description="run on these events instead")] = None,
        limit: Annotated[int | None, Field(description="newest events to run on (1-10000; 1000)")] = None,
        tests: Annotated[list[TestCase] | None, Field(description="inline cases, each run alone")] = None,
        detail: Detail = False,
    ) -> Annotated[CallToolResult, TestOut]:
        """Validate, then run the pipeline in the sandbox on recent events of its source (or the
        events you pass) and on your inline test cases. Returns per-step counts in/out/errors,
        the first 5 outputs, 20 signals and 10 error groups (by step and line; detail: all), and
        a run_id. Fix and re-run until ok is true; then call submit_pipeline with this exact text
        and the run_id."""
        cases = [t.model_dump() for t in tests or []]
        progress = _progress(ctx)
        call = lambda: life.test(pipeline, stream, events, limit, cases, progress=progress,  # noqa: E731
                                 detail=detail)
        return await anyio.to_thread.run_sync(lambda: respond(TestOut, call))

    @server.tool(annotations=WRITES)
    def submit_pipeline(pipeline: Text,
                        run_id: Annotated[str, Field(description="run_id of a passing test of this text")],
                        summary: Annotated[str, Field(description="for the reviewer: what it does and why",
                                                      min_length=1, max_length=4000)],
                        ) -> Annotated[CallToolResult, SubmitOut]:
        """Ask for promotion: refused unless run_id is a passing test of exactly this pipeline text
        (same code_hash). Opens a review request; a person approves or rejects it. Afterwards
        call get_pipeline to see the decision and comments."""
        return respond(SubmitOut, lambda: life.submit(pipeline, run_id, summary))

    @server.tool(annotations=READ_ONLY)
    def list_pipelines(status: Annotated[str | None, Field(description="active, paused, retired or "
                                                           "pending_review; omit for all")] = None,
                       ) -> Annotated[CallToolResult, PipelinesOut]:
        """List this tenant's pipelines with their current version and status (including ones only
        pending review). Then get_pipeline for details of one."""
        return respond(PipelinesOut, lambda: life.list_pipelines(status))

    @server.tool(annotations=READ_ONLY)
    def get_pipeline(name: Annotated[str, Field(description="pipeline name")],
                     detail: Detail = False) -> Annotated[CallToolResult, PipelineOut]:
        """Show one pipeline: its status, version, live metrics and recent errors when it runs,
        and every review decision with comments; with detail, also its spec text, all versions
        and the audit trail. Use it after submit_pipeline to follow the review, and to see why a
        running pipeline fails or paused itself."""
        return respond(PipelineOut, lambda: life.get_pipeline(name, detail))

    @server.tool(annotations=READ_ONLY)
    def list_signals(
        pipeline: Annotated[str | None, Field(description="only this pipeline's signals")] = None,
        since: Annotated[str | None, Field(description="ISO 8601; signals last seen at or after it")] = None,
        severity: Annotated[str | None, Field(description="minimum: info|low|medium|high|critical")] = None,
        limit: Annotated[int, Field(description="signals to return (1-1000)")] = 50,
    ) -> Annotated[CallToolResult, SignalsOut]:
        """List alerts (signals) raised by this tenant's running pipelines, newest first, with
        count, first/last seen, context and up to 3 sample events. For other questions over
        signals and outputs use query."""
        return respond(SignalsOut, lambda: life.list_signals(pipeline, since, severity, limit))

    @server.tool(annotations=READ_ONLY)
    def query(sql: Annotated[str, Field(description="one read-only SELECT over the views: each pipeline's "
                                        "output (its name with - as _), signals, dead_letters")],
              limit: Annotated[int, Field(description="rows to return (1-100000)")] = 100,
              ) -> Annotated[CallToolResult, QueryOut]:
        """Run one read-only SQL SELECT (DuckDB) over this tenant's pipeline outputs, signals and
        dead letters. Use it to check what a running pipeline wrote or to aggregate alerts."""
        return respond(QueryOut, lambda: life.query(sql, limit))

    @server.tool(annotations=READ_ONLY)
    def tap(pipeline: Annotated[str, Field(description="a deployed pipeline")],
            step: Annotated[str | None, Field(description="step id; default: the last step")] = None,
            limit: Annotated[int, Field(description="events to return (1-100)")] = 20,
            ) -> Annotated[CallToolResult, TapOut]:
        """Sample the events leaving one step of a deployed pipeline. When it runs (mode: live) this
        returns the next `limit` events leaving the step, waiting up to 5 s; fewer with
        complete=false when the stream is quiet. With no running pipeline in this process it
        replays the deployed version in the sandbox over the newest 1,000 events of its source
        (mode: replay). Either way the pipeline and its outputs are not touched. Use it to see
        what a step really emits."""
        return respond(TapOut, lambda: life.tap(pipeline, step, limit))

    _add_resources(server, life)
    return server


def _add_resources(server: MCPServer, life: Lifecycle) -> None:
    @server.resource("logbus://guide", name="guide", mime_type="text/markdown",
                     description="The pipeline guide (the same as get_guide)")
    def guide() -> str:
        return life.get_guide(None)

    @server.resource("logbus://streams/{name}/schema", name="stream_schema", mime_type="application/json",
                     description="A stream's inferred schema (the same as describe_stream)")
    def stream_schema(name: str) -> str:
        return _resource(lambda: life.describe_stream(name, detail=True))

    @server.resource("logbus://pipelines/{name}", name="pipeline", mime_type="application/json",
                     description="A pipeline's spec, versions, status and reviews (the same as get_pipeline)")
    def pipeline(name: str) -> str:
        return _resource(lambda: life.get_pipeline(name, detail=True))

    @server.prompt(name="write_detection", description="Write, test and submit a detection pipeline")
    def write_detection(stream: str, goal: str) -> str:
        return (f"Write a LogBus detection pipeline over the stream {stream!r} that does this: {goal}\n\n"
                "Steps: read get_guide; describe_stream and sample_events on the stream to learn its "
                "fields; draft the pipeline (parse raw lines first if events only have `message`); "
                "validate_pipeline and fix every diagnostic; test_pipeline with inline test cases for a "
                "matching and a non-matching input and iterate until ok is true and the signals are "
                "right; then submit_pipeline with the run_id and a summary a reviewer can check.")


def _resource(call: Callable[[], dict[str, Any]]) -> str:
    try:
        return json.dumps(call(), default=str)
    except LifecycleError as exc:
        raise ResourceError(f"{exc.code}: {exc.message}") from None
