"""`POST /ingest/{stream}`: the HTTP face of the ingest core (`stream.ingest`).

Authentication is injected: `authenticate(request)` returns `(tenant, role)` or raises
`Unauthenticated` (the server's token store provides it). The route checks the role itself, so an
authenticator cannot forget to. The tenant always comes from the credential, never the request.

Status codes, and the JSON body that comes with them:
- 200 `{stream, accepted, rejected, first_offset, duplicate, created, errors, truncated}` when
  the request was stored, including when some lines were rejected: those are per-line results
  (`rejected`, `errors` with line numbers; the lines are in the stream's dead letters), as
  Elasticsearch's `_bulk` does. Not 207: Multi-Status is WebDAV's, with an XML body, and every
  client treats it as plain success anyway; what tells a sender about bad lines is `rejected`.
- 422, same body, when every line was rejected: nothing was appended (the dead letters were
  stored), `curl --fail` notices, and a retry cannot help.
- 400 `{error, message}`: empty body, invalid stream name, bad gzip, bad Idempotency-Key.
- 401 no or unknown token (with `WWW-Authenticate: Bearer`); 403 a token without the ingest role,
  or the tenant's stream limit; 409 an Idempotency-Key reused for a different body; 413 a body
  over the limits (MAX_BODY_BYTES as sent, MAX_DECODED_BYTES after gzip); 415 an unsupported
  Content-Type, charset or Content-Encoding.

Parsing and the durable commit run in a worker thread, so a large request does not stall the
event loop; the response is sent only after the commit.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stream.ingest import MAX_BODY_BYTES, IngestError, PayloadTooLarge, body_format, ingest_bytes
from stream.log import EmbeddedLog, InvalidName, LogError, check_stream

logger = logging.getLogger(__name__)

Principal = tuple[str, str]  # (tenant, role)
Authenticate = Callable[[Request], Principal | Awaitable[Principal]]
INGEST_ROLES = frozenset({"ingest", "admin"})
# A body over the limit is still read (and dropped) up to this size, so that the client gets
# the 413 instead of a connection reset in the middle of its upload; past it, the server hangs up.
DRAIN_LIMIT = 4 * MAX_BODY_BYTES


class Unauthenticated(Exception):
    """Raised by an authenticator for a missing or unknown credential (HTTP 401)."""


def ingest_routes(log: EmbeddedLog, authenticate: Authenticate, *,
                  roles: Collection[str] = INGEST_ROLES) -> list[Route]:
    """The ingest route, to mount in the server's Starlette app."""

    async def ingest(request: Request) -> Response:
        try:
            principal = authenticate(request)
            tenant, role = await principal if inspect.isawaitable(principal) else principal
        except Unauthenticated as exc:
            return _error(401, "unauthenticated", str(exc) or "send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="logbus"'})
        if role not in roles:
            return _error(403, "forbidden", f"a token with role {role!r} cannot ingest; use a token with the "
                          "'ingest' role (logbus token create --tenant T --role ingest)")
        stream = request.path_params["stream"]
        try:
            check_stream(stream)
            body_format(request.headers.get("content-type"))
            body = await _read_body(request)
        except InvalidName as exc:
            return _error(400, "invalid_stream", str(exc))
        except IngestError as exc:
            return _error(exc.status, exc.code, str(exc))
        except ClientDisconnect:
            return _error(400, "client_disconnected", "the client went away before the body was complete")
        try:
            result = await run_in_threadpool(
                ingest_bytes, log, tenant, stream, body, content_type=request.headers.get("content-type"),
                content_encoding=request.headers.get("content-encoding"),
                idempotency_key=request.headers.get("idempotency-key"))
        except IngestError as exc:
            return _error(exc.status, exc.code, str(exc))
        except LogError as exc:
            logger.error("ingest into %s/%s failed: %s", tenant, stream, exc)
            return _error(503, "log_unavailable", str(exc))
        except Exception:
            logger.exception("ingest into %s/%s failed", tenant, stream)
            return _error(500, "internal", "ingest failed unexpectedly and may not have been stored; retry "
                          "with the same Idempotency-Key (the server log has the details)")
        status = 422 if result.accepted == 0 and result.rejected > 0 else 200
        return JSONResponse(result.to_dict(), status_code=status)

    return [Route("/ingest/{stream}", ingest, methods=["POST"])]


def ingest_app(log: EmbeddedLog, authenticate: Authenticate, *,
               roles: Collection[str] = INGEST_ROLES) -> Starlette:
    """A Starlette app serving only the ingest route (tests, benchmarks, a standalone receiver)."""
    return Starlette(routes=ingest_routes(log, authenticate, roles=roles))


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise _too_large(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        elif size > DRAIN_LIMIT:
            break
    if size > MAX_BODY_BYTES:
        raise _too_large(size)
    return b"".join(chunks)


def _too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over {MAX_BODY_BYTES:,} bytes ({size:,} seen); split the input "
                           "into several requests of whole lines")


def _error(status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)
