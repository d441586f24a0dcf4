"""The agent tools over streamable HTTP at `/mcp`, behind bearer tokens and a Host/Origin allowlist.

Every request is checked in this order, before any MCP parsing:
1. Host and Origin against the allowlist (DNS rebinding: a web page the operator visits must not
   reach a server on 127.0.0.1 through a name it controls). A wrong Host gets 421, a wrong Origin
   403. Requests without an Origin (every non-browser client) pass that check.
2. `Authorization: Bearer <token>` against the token store: missing, unknown or revoked -> 401
   with `WWW-Authenticate: Bearer`; a valid token whose role may not use the agent tools
   (reviewer, ingest) -> 403. Author and admin may.
3. The tenant is the token's, and only the token's: the request is served by the `logbus` MCP
   server built for that principal's `AgentContext` (one per token, cached), so no tool argument
   and no header can name another tenant.

Stateless, not per-session: each HTTP request is authenticated and served on its own (a fresh
SDK transport per request), so there is no session id that a second credential could ride on, no
per-session memory to bound or expire, and a server restart does not break connected agents.
Nothing here needs a session: the tools never ask the client anything back (no sampling or
elicitation), and a long `test_pipeline` still streams its progress notifications on the POST's
own SSE response.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.lifecycle import AUTHOR_ROLES, AgentContext
from server.tokens import Principal, TokenStore

if TYPE_CHECKING:
    from mcp.server import MCPServer
    from starlette.applications import Starlette

    from server.serve import LogBusServer

PATH = "/mcp"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SERVERS_CACHED = 256  # one MCP server per active token; the least recently used is dropped


@dataclass(frozen=True)
class McpAccess:
    """Which Host names and browser Origins may reach `/mcp`.

    `hosts` are host names (no port; IPv6 without brackets), compared case-insensitively with
    the Host header and with the host of an Origin (http or https, any port). `origins` are
    further exact origins (`https://agents.example.com`) for browser clients served elsewhere.
    """

    hosts: tuple[str, ...] = LOCAL_HOSTS
    origins: tuple[str, ...] = ()

    @classmethod
    def for_bind(cls, bind_host: str, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> McpAccess:
        """The loopback names, the address the server binds (unless a wildcard) and any extra."""
        names = [*LOCAL_HOSTS]
        if bind_host not in WILDCARD_BINDS:
            names.append(bind_host)
        names += list(hosts)
        clean = tuple(dict.fromkeys(_bare(name) for name in names if name.strip()))
        return cls(hosts=clean, origins=tuple(dict.fromkeys(o.strip().rstrip("/").lower()
                                                            for o in origins if o.strip())))

    def host_allowed(self, host_header: str | None) -> bool:
        return bool(host_header) and _host_of(host_header or "") in self.hosts

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:  # not a browser, or a same-origin GET: nothing to rebind
            return True
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and hostname is not None and hostname in self.hosts


def _bare(name: str) -> str:
    name = name.strip().lower()
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def _host_of(header: str) -> str:
    """`example.com:8765` -> `example.com`; `[::1]:8765` -> `::1`."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class McpEndpoint:
    """The ASGI app at `/mcp`: the checks above, then the principal's MCP server, stateless."""

    def __init__(self, tokens: TokenStore, context_for: Callable[[Principal], AgentContext],
                 access: McpAccess) -> None:
        self.tokens, self.context_for, self.access = tokens, context_for, access
        self._servers: OrderedDict[int, MCPServer] = OrderedDict()
        self._lock = threading.Lock()
        # The SDK logs every request's transport at INFO; the server's stderr is for operators.
        logging.getLogger("mcp").setLevel(logging.WARNING)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = Headers(scope=scope)
        if not self.access.host_allowed(headers.get("host")):
            await _refuse(send, 421, "host_not_allowed", f"Host {headers.get('host')!r} is not allowed for "
                          "/mcp; start the server with --allow-host NAME to accept it")
            return
        if not self.access.origin_allowed(headers.get("origin")):
            await _refuse(send, 403, "origin_not_allowed", f"Origin {headers.get('origin')!r} is not allowed "
                          "for /mcp; start the server with --allow-origin ORIGIN to accept it")
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _refuse(send, 401, "unauthenticated", "send Authorization: Bearer <token> (create one with "
                          "`logbus token create --tenant T --role author`)", bearer=True)
            return
        principal = self.tokens.verify(token.strip())
        if principal is None:
            await _refuse(send, 401, "unauthenticated", "unknown or revoked token", bearer=True)
            return
        if principal.role not in AUTHOR_ROLES:
            await _refuse(send, 403, "forbidden", "the agent tools need a token of role author; this one "
                          f"has role {principal.role!r} (reviewers decide with `logbus review`)")
            return
        await self._serve(principal, scope, receive, send)

    async def _serve(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        server = self._server_for(principal)
        # A manager runs once; stateless, it holds nothing between requests, so one per request
        # costs a task group and keeps every request's lifetime inside this call.
        manager = StreamableHTTPSessionManager(server._lowlevel_server, stateless=True)
        async with manager.run():
            await manager.handle_request(scope, receive, send)

    def _server_for(self, principal: Principal) -> MCPServer:
        from server.mcp_server import build_server

        with self._lock:
            server = self._servers.get(principal.token_id)
            if server is not None:
                self._servers.move_to_end(principal.token_id)
                return server
        server = build_server(self.context_for(principal))
        with self._lock:
            self._servers[principal.token_id] = server
            while len(self._servers) > SERVERS_CACHED:
                self._servers.popitem(last=False)
        return server


async def _refuse(send: Send, status: int, code: str, message: str, *, bearer: bool = False) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="logbus"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def mount_mcp(app: Starlette, server: LogBusServer, access: McpAccess | None = None) -> McpEndpoint:
    """Serve the agent tools at `/mcp` of `app`, over the server's log, sandbox pool and executor."""

    def context_for(principal: Principal) -> AgentContext:
        return AgentContext(principal.tenant, principal.role, server.data_dir, server.log, server.pool,
                            server.executor, actor=f"agent:token-{principal.token_id}")

    endpoint = McpEndpoint(server.tokens, context_for, access or McpAccess())
    app.router.routes.append(Route(PATH, endpoint))
    return endpoint

