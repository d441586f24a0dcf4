"""The HTTP face of `logbus serve`: ingest, health and metrics, as one Starlette app.

- `POST /ingest/{stream}`: `stream.http_ingest.ingest_routes`, authenticated by bearer tokens from
  the token store (the tenant comes from the token; the route itself checks the role).
- `GET /healthz`: JSON health of the executor, the log and the alert deliverer; 200 when all three
  work, 503 when one does not (a failing *pipeline* is reported but keeps 200: it is the pipeline's
  problem, not the process's, and restarting the process would not fix it).
- `GET /metrics`: Prometheus text exposition of the executor's per-pipeline and per-step counters,
  the deliverer's counters, the outbox's states and ingest counters. Unauthenticated like most
  exporters: it names tenants and pipelines, so keep the server on 127.0.0.1 (the default) or put
  it behind a proxy that guards /metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.tokens import TokenStore
from stream.alerts import Deliverer, Outbox
from stream.executor import Executor
from stream.http_ingest import Unauthenticated, ingest_routes
from stream.log import EmbeddedLog

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def bearer_authenticator(tokens: TokenStore) -> Any:
    """`authenticate(request) -> (tenant, role)` for `ingest_routes`, backed by the token store."""

    def authenticate(request: Request) -> tuple[str, str]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send Authorization: Bearer <token> (logbus token create --tenant T "
                                  "--role ingest)")
        principal = tokens.verify(token.strip())
        if principal is None:
            raise Unauthenticated("unknown or revoked token")
        request.state.tenant = principal.tenant
        return principal.tenant, principal.role

    return authenticate


class IngestCounters:
    """Requests by status, and events accepted/rejected per (tenant, stream), since the process started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.events: dict[tuple[str, str, str], int] = {}  # (tenant, stream, accepted|rejected) -> n

    def record(self, status: int, tenant: str | None, stream: str, body: dict[str, Any] | None) -> None:
        with self._lock:
            self.requests[str(status)] = self.requests.get(str(status), 0) + 1
            if tenant is None or body is None or body.get("duplicate"):
                return
            for outcome in ("accepted", "rejected"):
                key = (tenant, stream, outcome)
                self.events[key] = self.events.get(key, 0) + int(body.get(outcome) or 0)


class LogBusCollector(Collector):
    """Reads the live objects at scrape time: nothing is double-booked in a second set of counters."""

    def __init__(self, executor: Executor | None, deliverer: Deliverer | None, outbox: Outbox | None,
                 ingest: IngestCounters, sources: Sequence[Any] = ()) -> None:
        self.executor, self.deliverer, self.outbox, self.ingest = executor, deliverer, outbox, ingest
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        if self.executor is not None:
            yield from _executor_metrics(self.executor)
        if self.sources:
            yield from _source_metrics(self.sources)
        if self.deliverer is not None:
            counters = CounterMetricFamily("logbus_alert_deliveries", "Alert delivery outcomes since start",
                                           labels=["outcome"])
            for outcome, value in sorted(self.deliverer.metrics.items()):
                counters.add_metric([outcome], value)
            yield counters
        if self.outbox is not None:
            states = GaugeMetricFamily("logbus_alert_outbox", "Alert outbox rows by state", labels=["state"])
            for state, value in self.outbox.status(limit=0)["counts"].items():
                states.add_metric([state], value)
            yield states
        requests = CounterMetricFamily("logbus_ingest_requests", "Ingest requests by HTTP status",
                                       labels=["status"])
        events = CounterMetricFamily("logbus_ingest_events", "Ingested events by outcome",
                                     labels=["tenant", "stream", "outcome"])
        with self.ingest._lock:
            for status, value in sorted(self.ingest.requests.items()):
                requests.add_metric([status], value)
            for (tenant, stream, outcome), value in sorted(self.ingest.events.items()):
                events.add_metric([tenant, stream, outcome], value)
        yield requests
        yield events


def _source_metrics(sources: Sequence[Any]) -> Iterable[Metric]:
    """One counter family per source counter (`logbus_source_events_total`, ..._rotations_total,
    ..._malformed_total ...), labelled by kind (tail, syslog-udp, syslog-tcp), the file or listen
    address, tenant and stream: what `logbus serve --tail/--syslog-*` read and what it refused."""
    families: dict[str, CounterMetricFamily] = {}
    for source in sources:
        status = source.status()
        kind = "tail" if "path" in status else f"syslog-{status.get('protocol', '')}"
        where = str(status.get("path") or status.get("address") or "")
        labels = [kind, where, str(status.get("tenant", "")), str(status.get("stream", ""))]
        for key, value in sorted(getattr(source, "metrics", {}).items()):
            name = f"logbus_source_{key}"
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    name, f"{key.replace('_', ' ')} of a log source since start",
                    labels=["kind", "source", "tenant", "stream"])
            family.add_metric(labels, value)
    yield from families.values()


def _executor_metrics(executor: Executor) -> Iterable[Metric]:
    helps = {
        "logbus_pipeline_running": "1 when the pipeline's thread is running or replaying",
        "logbus_pipeline_lag_events": "Events in the source stream not yet committed by the pipeline",
        "logbus_pipeline_batch_seconds_total": "Time spent processing batches",
        "logbus_pipeline_sandbox_kills_total": "Sandbox workers killed (timeout, crash, memory)",
        "logbus_pipeline_enqueued_total": "Alert deliveries queued in the outbox",
        "logbus_step_events_in_total": "Events into a step",
        "logbus_step_events_out_total": "Events out of a step",
        "logbus_step_errors_total": "Events a step failed on",
    }
    for name, samples in sorted(executor.metrics().items()):
        if not samples:
            continue
        labels = sorted(samples[0][0])
        doc = helps.get(name, name.removeprefix("logbus_").replace("_", " "))
        family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, doc, labels=labels) if name.endswith("_total")
            else GaugeMetricFamily(name, doc, labels=labels))
        for sample_labels, value in samples:
            family.add_metric([sample_labels[k] for k in labels], value)
        yield family
    latency = GaugeMetricFamily("logbus_pipeline_last_batch_seconds", "Processing time of the last batch",
                                labels=["tenant", "pipeline"])
    rate = GaugeMetricFamily("logbus_pipeline_events_per_second", "Events in per second, last minute",
                             labels=["tenant", "pipeline"])
    for status in executor.status():
        labels = [status["tenant"], status["name"]]
        latency.add_metric(labels, status["batch_latency_s"])
        rate.add_metric(labels, status["rate_events_per_s"])
    yield latency
    yield rate


def health(executor: Executor | None, log: EmbeddedLog, deliverer: Deliverer | None) -> dict[str, Any]:
    """{ok, executor, log, deliverer}: each component's own `ok` and what it knows."""
    out: dict[str, Any] = {}
    try:
        tenants = log.tenants()
        for tenant in tenants:  # touches each tenant's database: a broken file shows here
            log.list_streams(tenant)
        out["log"] = {"ok": True, "tenants": len(tenants)}
    except Exception as exc:
        out["log"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if executor is not None:
        # The watcher thread is what follows the registry; when it is gone, CLI changes go unseen.
        watcher = getattr(executor, "_watcher", None)
        watching = watcher is not None and watcher.is_alive()
        error = str(getattr(executor, "_watch_error", "") or "")
        try:
            states: dict[str, int] = {}
            for status in executor.status():
                states[status["state"]] = states.get(status["state"], 0) + 1
            out["executor"] = {"ok": watching, "watching_registry": watching, "pipelines": states,
                               **({"error": error} if error else {})}
        except Exception as exc:
            out["executor"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    else:
        out["executor"] = {"ok": False, "error": "no executor in this process"}
    if deliverer is not None:
        thread = getattr(deliverer, "_thread", None)
        alive = thread is not None and thread.is_alive()
        try:
            counts = deliverer.outbox.status(limit=0)["counts"]
            out["deliverer"] = {"ok": alive, "running": alive, "outbox": counts}
        except Exception as exc:
            out["deliverer"] = {"ok": False, "running": alive, "error": f"{type(exc).__name__}: {exc}"}
    else:
        out["deliverer"] = {"ok": False, "error": "no alert deliverer in this process"}
    out["ok"] = all(part["ok"] for part in out.values() if isinstance(part, dict))
    out["time"] = time.time()
    return out


def create_app(*, log: EmbeddedLog, tokens: TokenStore, executor: Executor | None = None,
               deliverer: Deliverer | None = None, outbox: Outbox | None = None,
               sources: Sequence[Any] = ()) -> Starlette:
    """The app `logbus serve` runs; every part it reports on is passed in (tests pass fewer)."""
    counters = IngestCounters()
    registry = CollectorRegistry(auto_describe=False)
    outbox = outbox or (deliverer.outbox if deliverer is not None else None)
    registry.register(LogBusCollector(executor, deliverer, outbox, counters, sources))
    routes: list[Route] = []
    for route in ingest_routes(log, bearer_authenticator(tokens)):
        routes.append(Route(route.path, _counted(route.endpoint, counters), methods=["POST"]))

    async def healthz(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        report = await run_in_threadpool(health, executor, log, deliverer)
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    async def metrics(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=PROMETHEUS_TYPE)

    routes += [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
    return Starlette(routes=routes)


def _counted(endpoint: Any, counters: IngestCounters) -> Any:
    async def ingest(request: Request) -> Response:
        response: Response = await endpoint(request)
        body: dict[str, Any] | None = None
        if response.status_code in (200, 422):
            try:
                body = json.loads(bytes(response.body))
            except ValueError:
                body = None
        counters.record(response.status_code, getattr(request.state, "tenant", None),
                        request.path_params.get("stream", ""), body)
        return response

    return ingest
