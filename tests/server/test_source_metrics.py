"""/metrics reports what the log sources of `logbus serve` read: a real file tail, scraped through
the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from server.app import create_app
from server.tokens import TokenStore
from stream.log import EmbeddedLog
from stream.sources.tail import FileTail


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path / "log") as opened:
        yield opened


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, read by the Prometheus client's own parser."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_what_a_file_tail_read(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("before start\n")
    tail = FileTail(log, path, "app", state_dir=tmp_path / "state" / "tail")
    tail.poll_once()  # positions at the end, as start() does
    with open(path, "a") as handle:
        handle.write("one\ntwo\nthree\n")
    tail.poll_once()
    app = create_app(log=log, tokens=TokenStore(tmp_path), sources=[tail])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        text = client.get("/metrics").text
    tail.stop()
    labels = frozenset({"kind": "tail", "source": str(path), "stream": "app", "tenant": "default"}.items())
    samples = _samples(text)
    assert samples[("logbus_source_events_total", labels)] == 3
    assert samples[("logbus_source_bytes_total", labels)] == len("one\ntwo\nthree\n")
    assert samples[("logbus_source_rotations_total", labels)] == 0
    assert "# HELP logbus_source_events_total events of a log source since start" in text


def test_no_sources_no_source_families(log: EmbeddedLog, tmp_path: Path) -> None:
    app = create_app(log=log, tokens=TokenStore(tmp_path))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert "logbus_source_" not in client.get("/metrics").text
