"""The `logbus` command line.

Each subcommand is a thin adapter over plain Python in the packages below; heavy imports happen
inside the handlers, so `logbus --help` and `logbus guide` answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# pyarrow imports numpy, whose OpenBLAS starts a thread per core at import, and each spins for a
# while before it sleeps. LogBus never calls BLAS: those threads are pure cost, paid by every
# command, and on one core they take it from the run (W1 of bench/bench_pipeline.py on one core:
# 1.088 s -> 0.997 s; BENCHMARKS.md). Set before anything imports numpy; a value the user set is
# kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

EPILOG = """\
examples:
  logbus test examples/ssh_brute_force.yaml --events ../shared/data/loghub/OpenSSH_2k.log --format lines
  logbus test pipeline.yaml --events events.ndjson --limit 1000 --json
  logbus serve --data ./logbus-data
  logbus serve --stdio                      # MCP for Claude Desktop/Code
  logbus review approve rev_1a2b3c4d5e6f
  logbus token create --tenant default --role ingest
  logbus ingest auth ../shared/data/loghub/OpenSSH_2k.log --format lines --local
  logbus pipelines apply examples/ssh_brute_force.yaml
  logbus status
  logbus query "SELECT title, count FROM signals ORDER BY count DESC"
  logbus guide steps
  logbus doctor

The data directory is --data, else $LOGBUS_DATA, else ./logbus-data. Input holds at most 1,000
distinct fields per part (events past that are too_many_fields dead letters); $LOGBUS_MAX_FIELDS
raises that for logs that are wide by nature. Exit status: 0 ok, 1 failed, 2 bad usage.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return _dispatch(argv)[0]


def entry() -> None:
    """The `logbus` command: `main`, then, for a command that has released what it opened (its
    `quick_exit` default), an exit that skips the interpreter's teardown.

    After `logbus test` has printed its report, the sandbox pool is closed and the event file
    too; what remains is the interpreter collecting and freeing its modules, the Arrow buffers
    of the run and the DuckDB database: 70-90 ms of waiting for nothing (measured on the W1
    benchmark, a ~0.9 s run). Commands that write (a spec store, sinks) end normally, so every
    database they opened is closed in order."""
    code, quick = _dispatch(None)
    if not quick:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader left (`| head`): as main() treats it
        pass
    os._exit(code)


def _dispatch(argv: Sequence[str] | None) -> tuple[int, bool]:
    """Run the command: its exit status, and whether it may skip the interpreter's teardown."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2, False
    handler: Callable[[argparse.Namespace], int] = args.handler
    quick = bool(getattr(args, "quick_exit", False))
    if os.environ.get("LOGBUS_MAX_FIELDS"):
        try:  # a bad setting is a usage error, said before any work (the module reads it)
            import stream.widths  # noqa: F401
        except ValueError as exc:
            print(f"logbus: {exc}", file=sys.stderr)
            return 2, False
    try:
        return handler(args), quick
    except KeyboardInterrupt:
        return 130, False
    except BrokenPipeError:
        return 0, quick


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logbus",
        description="LogBus: agent-written stream pipelines, statically checked, sandboxed, reviewed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    test = sub.add_parser(
        "test",
        help="validate a pipeline and run it in the sandbox over an event file",
        description="Validate PIPELINE (YAML or JSON), then run it over FILE with code steps in sandbox "
        "workers, and report per-step counts, signals, sample outputs, grouped errors and dead letters. "
        "Exit status: 0 when the pipeline is valid and no step failed, 1 otherwise, 2 on bad usage.",
        epilog="examples:\n  logbus test examples/web_scanners.yaml --events ../shared/data/web_access.log "
        "--format lines\n  logbus test p.yaml --events events.ndjson --limit 5000 --json | jq .signals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("pipeline", type=Path, help="pipeline spec file (.yaml, .yml or .json)")
    test.add_argument("--events", required=True,
                      help="event file (gzip-compressed is fine), or - for standard input")
    test.add_argument("--format", choices=("ndjson", "lines"), default="ndjson",
                      help="ndjson: one JSON object per line (default); lines: each line becomes "
                      '{"message": line} (LF, CRLF and CR all end a line)')
    test.add_argument("--limit", type=int, default=None, metavar="N", help="read only the first N events")
    test.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    test.set_defaults(handler=_cmd_test, quick_exit=True)

    guide = sub.add_parser("guide", help="print the guide agents get from get_guide",
                           description="Print the pipeline guide (Markdown): spec format, step kinds with "
                           "options and examples, SQL rules, the Python agent code may use.")
    guide.add_argument("topic", nargs="?", default=None,
                       help="spec | steps | sql | python | examples | a step kind (default: everything)")
    guide.set_defaults(handler=_cmd_guide)

    doctor = sub.add_parser("doctor", help="report which sandbox isolation layers are active here",
                            description="Start a sandbox worker and report each isolation layer as active "
                            "or missing (with the reason). Exit 1 when a required layer is missing.")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(handler=_cmd_doctor)

    _add_operator_commands(sub)
    from server.review_cli import add_review_commands

    add_review_commands(sub)
    return parser


def _cmd_test(args: argparse.Namespace) -> int:
    from stream.trial import run_trial

    if args.limit is not None and args.limit < 0:
        print("logbus test: --limit must be 0 or more", file=sys.stderr)
        return 2
    try:
        text = args.pipeline.read_bytes()
    except OSError as exc:
        print(f"logbus test: cannot read pipeline {args.pipeline}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.events == "-":
        source: Any = sys.stdin.buffer
    else:
        source = Path(args.events)
        if not source.is_file():
            print(f"logbus test: no such event file: {args.events}", file=sys.stderr)
            return 2
    progress = _progress_printer() if not args.json and sys.stderr.isatty() else None
    report = run_trial(text, source=source, fmt=args.format, limit=args.limit,
                       base_dir=str(args.pipeline.parent), progress=progress)
    if progress:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        from server.report import render_trial  # only the human-readable report needs it

        print(render_trial(report, pipeline=str(args.pipeline)))
    return 0 if report.ok else 1


def _progress_printer() -> Callable[[int], None]:
    def show(events: int) -> None:
        print(f"\r  {events:,} events read", end="", file=sys.stderr, flush=True)

    return show


def _cmd_guide(args: argparse.Namespace) -> int:
    from server.guide import guide_text

    try:
        print(guide_text(args.topic))
    except KeyError as exc:
        print(f"logbus guide: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from sandbox import doctor

    report = doctor()
    if args.json:
        print(json.dumps(report.to_dict() if hasattr(report, "to_dict") else report, default=str))
    else:
        print(report.render() if hasattr(report, "render") else report)
    return 0 if getattr(report, "ok", True) else 1


# -- operating a data directory: serve, ingest, pipelines, query, status, token ----------------------

DATA_HELP = "data directory (default: $LOGBUS_DATA, else ./logbus-data)"
TENANT_HELP = "tenant (default: default)"


def _sub(sub: Any, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", default=None, help=DATA_HELP)


def _add_operator_commands(sub: Any) -> None:
    serve = _sub(sub, "serve", "run the server: ingest over HTTP, the executor, alert delivery",
                 "Run LogBus in one process: the agent tools over MCP at /mcp (streamable HTTP, bearer "
                 "token of role author; or over stdio with --stdio), "
                 "POST /ingest/{stream} (bearer tokens), GET /healthz, "
                 "GET /metrics (Prometheus), the executor running every active pipeline, and alert "
                 "delivery. SIGTERM or Ctrl-C stops it cleanly: pipelines stop at a batch boundary. "
                 "State changes made with `logbus pipelines ...` while it runs apply within a second.",
                 "  logbus serve\n  logbus serve --data /var/lib/logbus --port 9000\n"
                 "  LOGBUS_DATA=/srv/logbus logbus serve --host 0.0.0.0  # all interfaces: TLS in front\n"
                 "  logbus serve --tail /var/log/auth.log=auth --tail /var/log/app.json=app:ndjson\n"
                 "  logbus serve --syslog-udp 127.0.0.1:5514=syslog --syslog-tcp 127.0.0.1:5514=syslog\n")
    _add_data(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    serve.add_argument("--batch-size", type=int, default=10_000, metavar="N",
                       help="events per pipeline batch while a pipeline keeps up (default: 10000); "
                       "behind, reads grow up to max(N, 160000) events, which bounds each pipeline's memory")
    serve.add_argument("--alert-retry-cap", type=float, default=300.0, metavar="SECONDS",
                       help="longest wait between alert delivery retries (default: 300)")
    serve.add_argument("--tail", action="append", default=[], metavar="PATH=STREAM[:FORMAT]",
                       help="follow a file like `tail -F` (rotation, truncation, restarts without loss) into "
                            "STREAM of tenant default; FORMAT is lines (default, one event per line) or "
                            "ndjson; repeatable")
    serve.add_argument("--tail-from-beginning", action="store_true",
                       help="read files that --tail meets for the first time from their beginning "
                            "(default: from their end, as tail -F)")
    serve.add_argument("--syslog-udp", action="append", default=[], metavar="HOST:PORT=STREAM",
                       help="receive syslog (RFC 5424/3164) datagrams into STREAM of tenant default; "
                            "repeatable")
    serve.add_argument("--syslog-tcp", action="append", default=[], metavar="HOST:PORT=STREAM",
                       help="receive syslog over TCP (octet-counted or newline-framed) into STREAM; "
                            "repeatable")
    serve.add_argument("--stdio", action="store_true",
                       help="speak MCP on stdin/stdout as tenant default's author, for Claude Desktop/Code "
                            "(`claude mcp add logbus -- logbus serve --stdio`); no HTTP; logs go to stderr")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also accept this Host name (and Origins on it) at /mcp; default: 127.0.0.1, "
                            "localhost, ::1 and --host; repeatable")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="also accept this browser Origin at /mcp, e.g. https://agents.example.com; "
                            "repeatable")
    serve.set_defaults(handler=_cmd_serve)

    ingest = _sub(sub, "ingest", "send a file (or stdin) into a stream",
                  "Send FILE (or - for stdin) into STREAM in chunks of whole lines: over HTTP to a running "
                  "server (--url, with a token of role ingest from --token or $LOGBUS_TOKEN), or straight "
                  "into the data directory's log (--local, the default without --url). Each chunk carries an "
                  "Idempotency-Key derived from its content and position, so re-running the same command "
                  "stores nothing twice. Bad lines are reported with their line numbers and kept in the "
                  "stream's dead letters. Exit status 1 when the server refused a chunk or every line was "
                  "rejected.",
                  "  logbus ingest auth /var/log/auth.log --format lines --local\n"
                  "  LOGBUS_TOKEN=lb_... logbus ingest web events.ndjson --url http://127.0.0.1:8765\n"
                  "  tail -n 1000 app.log | logbus ingest app - --format lines\n"
                  "  logbus ingest web /var/log/nginx/access.log.2.gz --format lines --local\n")
    ingest.add_argument("stream", help="stream name (created on first ingest)")
    ingest.add_argument("file", help="input file (gzip-compressed is fine), or - for standard input")
    ingest.add_argument("--format", choices=("ndjson", "lines"), default="ndjson",
                        help='ndjson: one JSON object per line (default); lines: each line becomes '
                        '{"message": line}')
    ingest.add_argument("--url", default=None,
                        help="server URL, e.g. http://127.0.0.1:8765 (default: --local)")
    ingest.add_argument("--token", default=None, help="bearer token of role ingest (default: $LOGBUS_TOKEN)")
    ingest.add_argument("--local", action="store_true", help="append to the data directory's log directly")
    ingest.add_argument("--tenant", default="default", help=TENANT_HELP + "; --local only (a token names its "
                        "tenant)")
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_data(ingest)
    ingest.set_defaults(handler=_cmd_ingest)

    pipelines = _sub(sub, "pipelines", "deploy and operate pipelines",
                     "Deploy pipeline specs and change their state. Every change is recorded in the audit "
                     "log with your user name; a running server picks it up within a second.",
                     "  logbus pipelines apply examples/ssh_brute_force.yaml\n"
                     "  logbus pipelines list --json\n"
                     "  logbus pipelines pause ssh-brute-force --reason 'noisy'\n"
                     "  logbus pipelines rollback ssh-brute-force --to 1\n"
                     "  logbus pipelines audit ssh-brute-force\n")
    actions = pipelines.add_subparsers(title="actions", metavar="ACTION")
    p_apply = _sub(actions, "apply", "validate, test and deploy a spec file",
                   "Validate FILE (spec, SQL, every snippet), trial-run it in the sandbox over the last "
                   "--sample events of its source stream (validation only when the stream has no events "
                   "yet), and deploy it as the pipeline's next version. Refused (exit 1, nothing deployed) "
                   "when invalid or when a step fails. Applying an unchanged spec does nothing.",
                   "  logbus pipelines apply examples/ssh_brute_force.yaml\n"
                   "  logbus pipelines apply p.yaml --tenant acme --sample 5000 --json\n")
    p_apply.add_argument("file", type=Path, help="pipeline spec (.yaml, .yml or .json)")
    p_apply.add_argument("--sample", type=int, default=1000, metavar="N",
                         help="trial-run over the last N events of the source stream (default: 1000)")
    p_apply.set_defaults(handler=_cmd_apply)
    p_list = _sub(actions, "list", "list deployed pipelines",
                  "List deployed pipelines with version and status.",
                  "  logbus pipelines list\n  logbus pipelines list --tenant acme --json\n")
    p_list.set_defaults(handler=_cmd_list, all_tenants=True)
    p_audit = _sub(actions, "audit", "show the audit log", "Show who deployed, paused, resumed, rolled back "
                   "or retired what, and when (newest first).",
                   "  logbus pipelines audit\n  logbus pipelines audit ssh-brute-force --json\n")
    p_audit.add_argument("name", nargs="?", default=None, help="one pipeline (default: all of the tenant's)")
    p_audit.add_argument("--limit", type=int, default=50, help="entries to show (default: 50)")
    p_audit.set_defaults(handler=_cmd_audit)
    for name, help_text, description in (
            ("pause", "pause a pipeline at its position", "Stop the pipeline at a batch boundary; its "
             "position is kept and events keep arriving in the log. `resume` continues where it stopped."),
            ("resume", "resume a paused pipeline", "Continue a paused pipeline from its position (also one "
             "the executor paused for spending its error budget, once fixed)."),
            ("rollback", "make an earlier version current", "Run an earlier version of the pipeline from the "
             "current position (default: the version before the current one)."),
            ("retire", "end a pipeline", "Stop the pipeline for good and release its position (its outputs "
             "stay queryable). Applying the spec again deploys it anew.")):
        action = _sub(actions, name, help_text, description, f"  logbus pipelines {name} ssh-brute-force\n")
        action.add_argument("name", help="pipeline name")
        if name == "rollback":
            action.add_argument("--to", type=int, default=None, metavar="N", help="version to roll back to")
        if name in ("pause", "retire"):
            action.add_argument("--reason", default="", help="why, for the audit log")
        action.set_defaults(handler=_cmd_pipeline_action, action=name)
    for parser in (p_apply, p_list, p_audit, *[actions.choices[n] for n in ("pause", "resume", "rollback",
                                                                           "retire")]):
        parser.add_argument("--tenant", default=None, help=TENANT_HELP + (" (list: every tenant)"
                                                                          if parser is p_list else ""))
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        _add_data(parser)
    pipelines.set_defaults(handler=_usage(pipelines))

    query = _sub(sub, "query", "run one read-only SQL query over outputs and signals",
                 "Run one SELECT (or WITH) over the tenant's views: one per pipeline output (its name with - "
                 "as _), signals (latest state per alert) and dead_letters. Anything else (INSERT, COPY, "
                 "ATTACH, file reads) is refused. Works while the server runs.",
                 "  logbus query \"SELECT title, count, first_seen FROM signals ORDER BY count DESC\"\n"
                 "  logbus query \"SELECT * FROM ssh_brute_force LIMIT 5\" --json | jq .rows\n")
    query.add_argument("sql", help="one SELECT/WITH statement")
    query.add_argument("--tenant", default="default", help=TENANT_HELP)
    query.add_argument("--limit", type=int, default=1000, help="most rows to return (default: 1000)")
    query.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="time cap (default: 30)")
    query.add_argument("--json", action="store_true", help="print {columns, types, rows, truncated}")
    _add_data(query)
    query.set_defaults(handler=_cmd_query)

    status = _sub(sub, "status", "show pipelines, their lag and rates, and alert deliveries",
                  "Show each pipeline's version, state, position, lag (events not yet processed) and, "
                  "while a server runs, its rate, batch latency, counters and recent errors; and the alert "
                  "outbox.",
                  "  logbus status\n  logbus status --json | jq '.pipelines[] | {name, lag}'\n")
    status.add_argument("--tenant", default=None, help="one tenant (default: every tenant)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _add_data(status)
    status.set_defaults(handler=_cmd_status)

    token = _sub(sub, "token", "create, list and revoke bearer tokens",
                 "Bearer tokens bind a tenant and a role: author (agent tools), reviewer (approve/reject), "
                 "ingest (write events), admin. Only a hash is stored; the token is shown once.",
                 "  logbus token create --tenant default --role ingest\n  logbus token list\n"
                 "  logbus token revoke 3\n")
    tokens = token.add_subparsers(title="actions", metavar="ACTION")
    t_create = _sub(tokens, "create", "create a token (prints only the token)",
                    "Create a token for TENANT with ROLE and print it (only it, so that "
                    "`T=$(logbus token create ...)` works). It cannot be shown again.",
                    "  logbus token create --tenant default --role ingest\n")
    t_create.add_argument("--tenant", required=True, help="tenant the token acts for")
    t_create.add_argument("--role", required=True, choices=("author", "reviewer", "ingest", "admin"))
    t_create.add_argument("--label", default="", help="a note for `token list`, e.g. who holds it")
    t_create.set_defaults(handler=_cmd_token_create)
    t_list = _sub(tokens, "list", "list tokens (never the tokens themselves)", "List token ids, tenants, "
                  "roles and labels.", "  logbus token list --json\n")
    t_list.add_argument("--tenant", default=None, help="one tenant (default: every tenant)")
    t_list.add_argument("--json", action="store_true", help="machine-readable output")
    t_list.set_defaults(handler=_cmd_token_list)
    t_revoke = _sub(tokens, "revoke", "revoke a token by id",
                    "Revoke the token with this id (see `token list`).",
                    "  logbus token revoke 3\n")
    t_revoke.add_argument("id", type=int, help="token id")
    t_revoke.set_defaults(handler=_cmd_token_revoke)
    for parser in (t_create, t_list, t_revoke):
        _add_data(parser)
    token.set_defaults(handler=_usage(token))


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _fail(command: str, message: str) -> int:
    print(f"logbus {command}: {message}", file=sys.stderr)
    return 1


def _data(args: argparse.Namespace) -> Path:
    from server.serve import data_dir_from

    return data_dir_from(args.data)


def _cmd_serve(args: argparse.Namespace) -> int:
    from server.serve import ServeError, serve
    from stream.sources import SyslogError, SyslogSpec, TailError, TailSpec, parse_tail_spec
    from stream.sources import parse_listen_spec as listen_spec

    try:
        tails: list[TailSpec] = [parse_tail_spec(spec) for spec in args.tail]
        syslog: list[SyslogSpec] = [("udp", *listen_spec(spec, "--syslog-udp")) for spec in args.syslog_udp]
        syslog += [("tcp", *listen_spec(spec, "--syslog-tcp")) for spec in args.syslog_tcp]
    except (TailError, SyslogError) as exc:
        print(f"logbus serve: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"logbus serve: --port must be 1-65535; got {args.port}", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.alert_retry_cap < 1:
        print("logbus serve: --batch-size and --alert-retry-cap must be at least 1", file=sys.stderr)
        return 2
    if args.stdio:
        from server.mcp_stdio import serve_stdio

        return serve_stdio(_data(args), batch_size=args.batch_size, alert_retry_cap_s=args.alert_retry_cap,
                           tails=tails, syslog=syslog,
                           tail_start="beginning" if args.tail_from_beginning else "end")
    try:
        return serve(_data(args), args.host, args.port, batch_size=args.batch_size,
                     alert_retry_cap_s=args.alert_retry_cap, tails=tails, syslog=syslog,
                     tail_start="beginning" if args.tail_from_beginning else "end",
                     allow_hosts=args.allow_host, allow_origins=args.allow_origin)
    except ServeError as exc:
        return _fail("serve", str(exc))


def _cmd_ingest(args: argparse.Namespace) -> int:
    import os

    from stream.ingest_client import IngestClientError, IngestSummary, ingest_file, ingest_file_local

    token = args.token or os.environ.get("LOGBUS_TOKEN")
    if args.url and args.local:
        print("logbus ingest: give either --url (with a token) or --local, not both", file=sys.stderr)
        return 2
    if args.url and not token:
        print("logbus ingest: --url needs a token of role ingest: --token T or $LOGBUS_TOKEN "
              "(logbus token create --tenant T --role ingest)", file=sys.stderr)
        return 2
    if args.file != "-" and not Path(args.file).is_file():
        print(f"logbus ingest: no such file: {args.file}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() and not args.json

    def progress(summary: IngestSummary) -> None:
        if not show:
            return
        done = f"{summary.bytes_done / 1e6:,.1f} MB"
        if summary.bytes_total:
            share = summary.bytes_done / summary.bytes_total
            bar = "#" * int(share * 30)
            done = f"[{bar:<30}] {share:4.0%} {done}"
        print(f"\r  {done}  {summary.accepted:,} events", end="", file=sys.stderr, flush=True)

    try:
        if args.url:
            summary = ingest_file(args.url, token or "", args.stream, args.file, args.format,
                                  progress=progress)
        else:
            from stream.log import EmbeddedLog, LogError

            with EmbeddedLog(_data(args) / "log") as log:
                try:
                    summary = ingest_file_local(log, args.tenant, args.stream, args.file, args.format,
                                                progress=progress)
                except LogError as exc:
                    return _fail("ingest", str(exc))
    except IngestClientError as exc:
        if show:
            print(file=sys.stderr)
        return _fail("ingest", str(exc))
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(f"{summary.accepted:,} events into {args.stream} ({summary.rejected:,} rejected, "
              f"{summary.duplicates} chunk(s) already stored) in {summary.requests} request(s)")
        for error in summary.errors[:20]:
            print(f"  line {error.get('line')}: {error.get('reason')}: {error.get('message')}",
                  file=sys.stderr)
        if len(summary.errors) > 20 or summary.truncated:
            print("  ... more errors; the stream's dead letters hold every rejected line", file=sys.stderr)
    return 1 if summary.accepted == 0 and summary.rejected > 0 else 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from server.operator import OperatorError, apply

    if args.sample < 0:
        print("logbus pipelines apply: --sample must be 0 or more", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"logbus pipelines apply: no such file: {args.file}", file=sys.stderr)
        return 2
    try:
        result = apply(_data(args), args.file, tenant=args.tenant or "default", sample=args.sample)
    except OperatorError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), **exc.details}, default=str))
        return _fail("pipelines apply", str(exc))
    if args.json:
        print(json.dumps({"ok": True, **result.to_dict()}, default=str))
        return 0
    tested = (f"tested on {result.sampled:,} events of its source stream" if result.trial is not None
              else "validated")
    if result.changed:
        print(f"deployed {result.name} version {result.version} for tenant {result.tenant} ({tested})")
    for note in result.notes:
        print(f"  {note}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from server.operator import list_pipelines

    rows = list_pipelines(_data(args), args.tenant)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    if not rows:
        print("no pipelines deployed (logbus pipelines apply FILE)")
        return 0
    _table(["TENANT", "NAME", "VERSION", "STATUS", "SOURCE", "REASON"],
           [[r["tenant"], r["name"], r["version"], r["status"], r["source"], r["reason"]] for r in rows])
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    import time

    from server.operator import audit

    entries = audit(_data(args), args.name, tenant=args.tenant or "default", limit=args.limit)
    if args.json:
        print(json.dumps(entries, default=str))
        return 0
    _table(["WHEN", "PIPELINE", "VERSION", "ACTION", "ACTOR", "DETAIL"],
           [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["pipeline"], e["version"],
             e["action"], e["actor"], json.dumps(e["detail"]) if e["detail"] else ""] for e in entries])
    return 0


def _cmd_pipeline_action(args: argparse.Namespace) -> int:
    from server import operator

    tenant = args.tenant or "default"
    kwargs: dict[str, Any] = {"tenant": tenant}
    if args.action == "rollback":
        kwargs["to_version"] = args.to
    if args.action in ("pause", "retire"):
        kwargs["reason"] = args.reason
    try:
        result = getattr(operator, args.action)(_data(args), args.name, **kwargs)
    except operator.OperatorError as exc:
        return _fail(f"pipelines {args.action}", str(exc))
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"{result['name']}: version {result['version']}, {result['status']}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from server.operator import query
    from stream.sinks import QueryError

    if not 1 <= args.limit <= 100_000 or args.timeout <= 0:
        print("logbus query: --limit must be 1-100000 and --timeout positive", file=sys.stderr)
        return 2
    try:
        result = query(_data(args), args.sql, tenant=args.tenant, limit=args.limit, timeout_s=args.timeout)
    except QueryError as exc:
        if args.json:
            print(json.dumps({"error": exc.code, "message": exc.message}))
        return _fail("query", f"{exc.code}: {exc.message}")
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
        return 0
    _table(result.columns, [["" if v is None else (json.dumps(v) if isinstance(v, dict | list) else v)
                             for v in row] for row in result.rows])
    print(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''}"
          f"{', truncated at --limit' if result.truncated else ''})", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from server.operator import status

    report = status(_data(args), args.tenant)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    server = report["server"]
    running = f"running, pid {server['pid']} at {server['url']}" if server["running"] else "not running"
    print(f"server: {running}  (data: {report['data_dir']})")
    if report["pipelines"]:
        _table(["TENANT", "NAME", "VER", "STATE", "POSITION", "LAG", "EVENTS/S", "BATCH S", "IN", "OUT",
                "SIGNALS", "DEAD"],
               [[p["tenant"], p["name"], p["version"], p["state"], _dash(p["position"]), _dash(p["lag"]),
                 p["rate_events_per_s"], p["batch_latency_s"], p["events_in"], p["events_out"], p["signals"],
                 p["dead_letters"]] for p in report["pipelines"]])
        for p in report["pipelines"]:
            if p["reason"]:
                print(f"  {p['name']}: {p['reason']}")
            for error in p["errors"][:3]:
                print(f"  {p['name']} {error['step']} {error['reason']} (x{error['count']}): "
                      f"{error['message'][:100]}")
    else:
        print("no pipelines deployed")
    counts = report["outbox"]
    if counts:
        print("alerts: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    from server.tokens import TokenError, TokenStore

    store = TokenStore(_data(args))
    try:
        print(store.create(args.tenant, args.role, label=args.label))
    except TokenError as exc:
        print(f"logbus token create: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def _cmd_token_list(args: argparse.Namespace) -> int:
    from server.tokens import TokenStore

    store = TokenStore(_data(args))
    try:
        rows = store.list(args.tenant)
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    _table(["ID", "TENANT", "ROLE", "LABEL", "REVOKED"],
           [[r["id"], r["tenant"], r["role"], r["label"], "yes" if r["revoked_at"] else ""] for r in rows])
    return 0


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    from server.tokens import TokenStore

    store = TokenStore(_data(args))
    try:
        if not store.revoke(args.id):
            return _fail("token revoke", f"no active token with id {args.id} (see `logbus token list`)")
    finally:
        store.close()
    print(f"revoked token {args.id}")
    return 0


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def _table(header: Sequence[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in header]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    entry()
