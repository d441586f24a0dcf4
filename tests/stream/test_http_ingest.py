"""POST /ingest/{stream} over a real uvicorn server on loopback: statuses, bodies, hostile input."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from starlette.requests import Request

from stream.http_ingest import Unauthenticated, ingest_app
from stream.ingest import MAX_BODY_BYTES, MAX_DECODED_BYTES
from stream.ingest_client import IngestClientError, ingest_file
from stream.log import EmbeddedLog

TOKENS = {
    "tok-ingest": ("acme", "ingest"),
    "tok-author": ("acme", "author"),
    "tok-globex": ("globex", "ingest"),
}
NDJSON = {"Content-Type": "application/x-ndjson"}


def authenticate(request: Request) -> tuple[str, str]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token: send Authorization: Bearer <token>")
    if token not in TOKENS:
        raise Unauthenticated("unknown token")
    return TOKENS[token]


class Server:
    """A uvicorn server in a thread, on a port the OS picked."""

    def __init__(self, log: EmbeddedLog) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(ingest_app(log, authenticate), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path_factory.mktemp("log")) as log:
        yield log


@pytest.fixture(scope="module")
def server(log: EmbeddedLog) -> Iterator[Server]:
    with Server(log) as server:
        yield server


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _post(http: httpx.Client, stream: str, body: bytes, token: str | None = "tok-ingest",
          **headers: str) -> httpx.Response:
    sent = {**NDJSON, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return http.post(f"/ingest/{stream}", content=body, headers=sent)


def _still_answers(http: httpx.Client) -> None:
    response = _post(http, "health", b'{"ok": true}\n')
    assert response.status_code == 200 and response.json()["accepted"] == 1


def test_good_ndjson_is_acknowledged_with_its_offsets_after_it_is_stored(http: httpx.Client,
                                                                         log: EmbeddedLog) -> None:
    response = _post(http, "web", b'{"n": 1}\n{"n": 2}\n')
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["rejected"], body["errors"], body["truncated"]) == (2, 0, [], False)
    first = body["first_offset"]
    assert log.read("acme", "web", first)[0].to_pylist() == [{"n": 1}, {"n": 2}]


def test_hostile_lines_get_per_line_errors_and_the_good_lines_are_kept(http: httpx.Client,
                                                                       log: EmbeddedLog) -> None:
    body = b"\r\n".join([
        b'{"n": 1}',
        b'{"n": ',
        b'{"s": "\xc3\x28"}',
        b'{"d": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"blob": "' + b"x" * (5 << 20) + b'"}',
        b'{"n": 6}',
    ]) + b'\r{"n": 7}\n'
    response = _post(http, "mixed", body)
    assert response.status_code == 200
    result = response.json()
    assert (result["accepted"], result["rejected"]) == (3, 4)
    assert [(e["line"], e["reason"]) for e in result["errors"]] == [
        (2, "bad_json"), (3, "invalid_utf8"), (4, "too_deep"), (5, "too_large")]
    assert log.read("acme", "mixed", 0)[0].to_pylist() == [{"n": 1}, {"n": 6}, {"n": 7}]
    assert len(log.dead_letters("acme", "mixed")) == 4
    _still_answers(http)


def test_a_body_of_only_bad_lines_is_422(http: httpx.Client) -> None:
    response = _post(http, "web", b"{nope\n")
    assert response.status_code == 422
    assert response.json()["accepted"] == 0 and response.json()["errors"][0]["reason"] == "bad_json"


@pytest.mark.parametrize(("token", "status", "message"), [
    (None, 401, "missing bearer token"),
    ("wrong", 401, "unknown token"),
    ("tok-author", 403, "role 'author' cannot ingest"),
])
def test_requests_without_an_ingest_credential_are_refused(
        http: httpx.Client, log: EmbeddedLog, token: str | None, status: int, message: str) -> None:
    response = _post(http, "secured", b'{"n": 1}\n', token=token)
    assert response.status_code == status and message in response.json()["message"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert not log.has_stream("acme", "secured")


def test_the_tenant_comes_from_the_token(http: httpx.Client, log: EmbeddedLog) -> None:
    assert _post(http, "shared", b'{"who": "globex"}\n', token="tok-globex").status_code == 200
    assert log.read("globex", "shared", 0)[0].to_pylist() == [{"who": "globex"}]
    assert not log.has_stream("acme", "shared")


def test_bad_requests_get_clear_errors_and_the_server_keeps_answering(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (MAX_DECODED_BYTES + (1 << 20)), compresslevel=9)
    cases = [
        ("web", b"", {}, 400, "empty_body"),
        ("Bad%20Name", b'{"n": 1}\n', {}, 400, "invalid_stream"),
        ("web", b'{"n": 1}\n', {"Content-Type": "application/xml"}, 415, "unsupported_media_type"),
        ("web", b'{"n": 1}\n', {"Content-Encoding": "br"}, 415, "unsupported_media_type"),
        ("web", bomb, {"Content-Encoding": "gzip"}, 413, "payload_too_large"),
        ("web", b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "bad_gzip"),
        ("web", b"x" * (MAX_BODY_BYTES + 1), {}, 413, "payload_too_large"),
        ("web", b'{"n": 1}\n', {"Idempotency-Key": "has space"}, 400, "invalid_idempotency_key"),
    ]
    for stream, body, headers, status, code in cases:
        response = http.post(f"/ingest/{stream}", content=body,
                             headers={**NDJSON, "Authorization": "Bearer tok-ingest", **headers})
        assert (response.status_code, response.json()["error"]) == (status, code), (stream, headers)
        assert response.json()["message"]
    _still_answers(http)


def test_a_retried_request_with_the_same_idempotency_key_is_stored_once(http: httpx.Client,
                                                                        log: EmbeddedLog) -> None:
    body = b'{"n": 1}\n{"n": 2}\n'
    first = _post(http, "retry", body, Idempotency_Key="abc-1").json()
    retry = _post(http, "retry", body, Idempotency_Key="abc-1").json()
    assert retry["duplicate"] and retry["first_offset"] == first["first_offset"]
    assert log.end_offset("acme", "retry") == 2
    conflict = _post(http, "retry", b'{"n": 3}\n', Idempotency_Key="abc-1")
    assert conflict.status_code == 409 and conflict.json()["error"] == "idempotency_conflict"


def test_the_file_client_posts_chunks_and_a_rerun_duplicates_nothing(server: Server, log: EmbeddedLog,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(orjson.dumps({"i": i, "msg": "m" * 300}) + b"\n" for i in range(2000)))
    first = ingest_file(server.url, "tok-ingest", "files", path, "ndjson", chunk_bytes=128 << 10,
                        compress=True)
    assert first.requests > 4 and (first.accepted, first.rejected, first.duplicates) == (2000, 0, 0)
    again = ingest_file(server.url, "tok-ingest", "files", path, "ndjson", chunk_bytes=128 << 10)
    assert again.duplicates == again.requests == first.requests
    table, _ = log.read("acme", "files", 0, 10_000)
    assert table["i"].to_pylist() == list(range(2000))
    with pytest.raises(IngestClientError, match="cannot ingest") as info:
        ingest_file(server.url, "tok-author", "files", path, "ndjson")
    assert info.value.status == 403
