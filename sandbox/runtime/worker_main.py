"""Entry point of a sandbox worker process: import everything, confine, then serve batches.

Started by the host (sandbox/isolation.py) as `python -I -S worker_main.py ROOT SITE` with an
empty environment, in its own session, possibly inside bubblewrap. ROOT is the directory holding
the `sandbox` package; SITE the one directory holding msgpack and RestrictedPython. Nothing else
is on sys.path, and nothing is imported after confinement: every module the runtime or a snippet
can reach is imported up front, because after the uid drop and Landlock the files are unreadable.

Protocol (sandbox/runtime/codec.py): the host sends `init` (limits, uid, paths, kind, source); the
worker confines itself, loads the snippet and answers with the layer report; then each `batch`
gets one response. The worker never writes to stdout except frames. Exit codes: 0 end of input,
2 protocol error, 3 out of memory, 4 a required layer is missing.
"""

import sys

_ROOT = ""
if __name__ == "__main__":
    _ROOT, _SITE = sys.argv[1], sys.argv[2]
    sys.path[:] = [p for p in sys.path if p] + [_ROOT] + ([_SITE] if _SITE else [])

import base64  # noqa: E402 - sys.path must be fixed first
import collections  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import urllib.parse  # noqa: E402
from itertools import chain, repeat  # noqa: E402
from operator import is_, itemgetter  # noqa: E402
from typing import Any  # noqa: E402

import msgpack  # noqa: E402

from sandbox.runtime import codec, confine  # noqa: E402

EXIT_PROTOCOL, EXIT_MEMORY, EXIT_LAYER = 2, 3, 4
_STDIN, _STDOUT = 0, 1  # replaced by private descriptors in _private_pipes()
_PRELOADED = (
    base64,
    collections,
    datetime,
    hashlib,
    ipaddress,
    json,
    math,
    re,
    statistics,
    urllib.parse,
    msgpack,
)


def _preload() -> None:
    """Import what would otherwise be imported lazily, later, behind a locked filesystem."""
    import _strptime  # noqa: F401 - datetime.strptime imports it on first use
    import encodings.ascii
    import encodings.idna
    import encodings.latin_1
    import encodings.raw_unicode_escape
    import encodings.unicode_escape
    import encodings.utf_8
    import encodings.utf_16
    import encodings.utf_32  # noqa: F401

    for name in sorted(hashlib.algorithms_guaranteed):
        hashlib.new(name, b"")  # loads OpenSSL providers / builtin _sha3, _blake2 now
    datetime.datetime.strptime("2024-01-02T03:04:05+0000", "%Y-%m-%dT%H:%M:%S%z")
    time.strftime("%Y", time.gmtime(0))
    statistics.median([1.0, 2.0])
    "x".encode("idna")
    json.loads(json.dumps({"a": [1.5]}))
    re.compile(r"(?P<a>\d+)\s", re.IGNORECASE).match("1 ")


def _private_pipes() -> None:
    """Move the protocol pipes off fds 0 and 1: a stray print() or input() by anything running
    here then goes to stderr (drained and capped by the host) or /dev/null, never into a frame."""
    global _STDIN, _STDOUT
    _STDIN, _STDOUT = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)


def _read_exact(n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        chunk = os.readv(_STDIN, [view[got:]])
        if chunk == 0:
            return None
        got += chunk
    return bytes(buf)


def _read_message(limit: int) -> dict[str, Any] | None:
    header = _read_exact(codec.HEADER.size)
    if header is None:
        return None
    body = _read_exact(codec.frame_length(header, limit))
    if body is None:
        return None
    return codec.decode(body)


def _write(frame: bytes) -> None:
    view = memoryview(frame)
    while view:
        view = view[os.write(_STDOUT, view) :]


def _send(message: dict[str, Any], cap: int) -> None:
    frame = codec.encode(message)
    if len(frame) - codec.HEADER.size > cap:
        frame = codec.encode(
            {
                "ok": False,
                "error": "bad_output",
                "message": f"the batch's results take {len(frame)} bytes, over the cap of {cap}",
            }
        )
    _write(frame)


def _facts() -> dict[str, dict[str, Any]]:
    """Layers the worker can observe rather than apply."""
    # LC_CTYPE is set by the interpreter itself (C-locale coercion), PWD by bubblewrap's --chdir;
    # anything else came from outside and fails the check.
    env = sorted(set(os.environ) - {"LC_CTYPE", "PWD"})
    # The repository around the runtime (other packages, data) must be invisible, not just locked.
    probes = (
        "/home",
        "/etc/passwd",
        "/root/.ssh",
        *(os.path.join(_ROOT, p) for p in ("stream", "server", "pyproject.toml")),
    )
    hidden = [p for p in probes if os.path.exists(p)]
    return {
        "empty_env": {
            "active": not env,
            "detail": "nothing inherited from the host" if not env else "inherited: " + ", ".join(env[:10]),
        },
        "isolated_interpreter": {
            "active": bool(sys.flags.isolated and sys.flags.no_site),
            "detail": f"isolated={sys.flags.isolated} no_site={sys.flags.no_site}",
        },
        "host_files_hidden": {
            "active": not hidden,
            "detail": "no /home, /etc or repository files outside sandbox/runtime"
            if not hidden
            else "visible: " + ", ".join(hidden),
        },
    }


class _RawEntrypoints:
    """Test-only: the snippet as plain Python with full builtins, no static check, no
    RestrictedPython. Lets tests prove the process layer holds on its own. The host enables it
    only through WorkerProcess(raw_exec_for_tests=True); agent input cannot reach the flag."""

    def __init__(self, source: str, kind: str) -> None:
        self.kind = kind
        namespace: dict[str, Any] = {"__name__": "snippet"}
        exec(compile(source, "<snippet>", "exec"), namespace)
        self.function = namespace[kind]

    def run(self, events: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
        values: list[Any] = []
        errors: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            try:
                values.append(self.function(event))
            except Exception as exc:  # the snippet's own failure, reported per event
                values.append(None)
                tb = traceback.extract_tb(exc.__traceback__)
                line = next((f.lineno for f in reversed(tb) if f.filename == "<snippet>"), None)
                reason = "memory" if isinstance(exc, MemoryError) else "error"
                errors.append(
                    {
                        "index": index,
                        "reason": reason,
                        "error_type": type(exc).__name__,
                        "message": str(exc)[:500],
                        "line": line,
                        "function": None,
                    }
                )
        return values, errors, []


def _load(init: dict[str, Any]) -> Any:
    kind, source = str(init["kind"]), str(init["source"])
    if init["config"].get("raw_exec_for_tests"):
        return _RawEntrypoints(source, kind)
    from sandbox.runtime.loader import load  # imported (and preloaded) before confinement

    return load(source, kind)


def _events(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch's events: given as rows, or built here from columns (one fresh dict per row)."""
    if request.get("op") != "batch":
        raise codec.ProtocolError("expected a batch")
    events = request.get("events")
    if isinstance(events, list):
        return events
    names, columns, count = request.get("names"), request.get("columns"), request.get("count")
    if not (isinstance(names, list) and isinstance(columns, list) and type(count) is int
            and len(names) == len(columns) and all(type(c) is list and len(c) == count for c in columns)):
        raise codec.ProtocolError("a batch needs events, or names + columns of `count` values each")
    if not names:
        return [{} for _ in range(count)]
    # lengths are checked above; map/zip keep the per-row work in C (~30% faster than a comprehension)
    return list(map(dict, map(zip, repeat(names), zip(*columns, strict=False))))


def _columnar(values: list[Any]) -> dict[str, Any]:
    """transform/derive results (a list of dicts per event, None where it failed) as columns.

    Output rows are numbered by `source_index` (omitted when row i came from event i); the
    columns are the union of the rows' keys in first-seen order, None where a row lacks one.
    Looked up by name at call time, so the raw test mode can replace it with a hostile version.
    """
    produced = [v for v in values if v]
    if len(produced) == len(values) and all(len(v) == 1 for v in produced):
        rows: list[dict[str, Any]] = [v[0] for v in produced]
        source: list[int] | None = None
    else:
        rows, source = [], []
        for index, value in enumerate(values):
            if value:
                rows += value
                source += [index] * len(value)
    names = list(rows[0]) if rows else []
    columns: list[list[Any]] = []
    try:
        # the common case: every row has the first row's keys (and no others), so a C-level
        # itemgetter per column does; any KeyError or a key count mismatch takes the general path
        columns = [list(map(itemgetter(name), rows)) for name in names]
        uniform = sum(map(len, rows)) == len(names) * len(rows)
    except KeyError:
        uniform = False
    if not uniform:
        names = list(dict.fromkeys(chain.from_iterable(rows)))
        columns = [[row.get(name) for row in rows] for name in names]
    return {"names": names, "columns": columns, "rows": len(rows), "source_index": source}


def _input_columns(request: dict[str, Any]) -> dict[str, list[Any]]:
    """The request's columns that may come back unchanged, by name: those the host says hold only
    immutable scalars (`scalars`, from their Arrow types; see sandbox.columns.scalar_columns)."""
    names, columns, scalars = request.get("names"), request.get("columns"), request.get("scalars")
    if not (isinstance(names, list) and isinstance(columns, list) and isinstance(scalars, list)
            and len(scalars) == len(names) == len(columns)):
        return {}
    return {n: c for n, c, scalar in zip(names, columns, scalars, strict=True) if scalar is True}


def _mark_unchanged(reply: dict[str, Any], inputs: dict[str, list[Any]]) -> None:
    """Columns the snippet left as they came are not sent back: reply["same"] lists their
    positions and their values are replaced by [], and the host reuses its own Arrow column.

    A column counts as unchanged when each output row holds the very object its event got for
    that field (row i is event i: no event failed or fanned out) and every such object is an
    immutable scalar: identity then implies equal value. A dict or list could have been changed
    in place, so a column holding one is always sent. Most transforms add or rewrite a few fields
    of wide events; the rest is then neither packed here nor converted on the host."""
    if reply.get("source_index") is not None or not inputs:
        return
    same: list[int] = []
    columns = reply["columns"]
    for position, name in enumerate(reply["names"]):
        given = inputs.get(name)
        column = columns[position]
        if given is not None and len(given) == len(column) and all(map(is_, column, given)):
            same.append(position)
            columns[position] = []
    if same:
        reply["same"] = same


def _serve(runner: Any, config: dict[str, Any]) -> None:
    from sandbox.runtime.execute import OutputCaps, run_events

    caps = OutputCaps(**config.get("output_caps", {}))
    request_cap, response_cap = int(config["max_request_bytes"]), int(config["max_response_bytes"])
    raw = isinstance(runner, _RawEntrypoints)
    columnar_kind = runner.kind in ("transform", "derive")
    while True:
        request = _read_message(request_cap)
        if request is None:
            return
        events = _events(request)
        columns_out = columnar_kind and request.get("output") == "columns"
        inputs = _input_columns(request) if columns_out and not raw else {}
        del request
        # (gc.disable() around this call measured no gain: the raised threshold and gc.freeze()
        # in main() already keep collections rare and short.)
        values, errors, logs = runner.run(events) if raw else run_events(runner, events, caps)
        del events
        reply: dict[str, Any] = {"ok": True, "errors": errors, "logs": logs}
        if columns_out:
            if raw:  # raw results are unchecked; shape them as run_events does (a list per event)
                values = [v if v is None or isinstance(v, list) else [v] for v in values]
            reply.update(_columnar(values))
            _mark_unchanged(reply, inputs)
        else:
            reply["values"] = values
        usage = resource.getrusage(resource.RUSAGE_SELF)
        reply["cpu_s"] = usage.ru_utime + usage.ru_stime
        reply["maxrss_kb"] = usage.ru_maxrss
        _send(reply, response_cap)


def main() -> int:
    started = time.perf_counter()
    _private_pipes()
    try:
        _preload()
        import sandbox.runtime.execute
        import sandbox.runtime.loader  # noqa: F401 - imported before the filesystem is locked
    except ImportError as exc:
        _write(codec.encode({"ok": False, "error": "startup", "message": f"import failed: {exc}"}))
        return EXIT_PROTOCOL
    init = _read_message(1 << 24)
    if init is None or init.get("op") != "init" or not isinstance(init.get("config"), dict):
        return EXIT_PROTOCOL
    config = init["config"]
    response_cap = int(config["max_response_bytes"])
    # Everything imported so far lives forever: keep it out of the collector's scans, and collect
    # rarely, since a batch allocates ~10 containers per event that all die together.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    layers = {**confine.confine(config), **_facts()}
    missing = [name for name in config.get("require", []) if not layers.get(name, {}).get("active")]
    ready = {
        "ok": True,
        "layers": layers,
        "pid": os.getpid(),
        "startup_ms": (time.perf_counter() - started) * 1e3,
    }
    if missing:
        _send(
            {
                "ok": False,
                "error": "layer",
                "layers": layers,
                "message": "required isolation layers failed: " + ", ".join(missing),
            },
            response_cap,
        )
        return EXIT_LAYER
    try:
        runner = _load(init)
    except MemoryError:
        raise
    except Exception as exc:  # LoadError, or a SyntaxError in raw mode
        _send(
            {
                "ok": False,
                "error": "load",
                "layers": layers,
                "message": str(getattr(exc, "message", exc)),
                "line": getattr(exc, "line", getattr(exc, "lineno", None)),
            },
            response_cap,
        )
        return 0
    _send(ready, response_cap)
    _serve(runner, config)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MemoryError:
        os._exit(EXIT_MEMORY)
    except codec.ProtocolError:
        os._exit(EXIT_PROTOCOL)
