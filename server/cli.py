"""The `logbus` command line.

Each subcommand is a thin adapter over plain Python in the packages below; heavy imports happen
inside the handlers, so `logbus --help` and `logbus guide` answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  logbus test examples/ssh_brute_force.yaml --events ../shared/data/loghub/OpenSSH_2k.log --format lines
  logbus test pipeline.yaml --events events.ndjson --limit 1000 --json
  logbus guide steps
  logbus doctor
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


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
    test.add_argument("--events", required=True, help="event file, or - for standard input")
    test.add_argument("--format", choices=("ndjson", "lines"), default="ndjson",
                      help="ndjson: one JSON object per line (default); lines: each line becomes "
                      '{"message": line} (LF, CRLF and CR all end a line)')
    test.add_argument("--limit", type=int, default=None, metavar="N", help="read only the first N events")
    test.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    test.set_defaults(handler=_cmd_test)

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


if __name__ == "__main__":
    sys.exit(main())
