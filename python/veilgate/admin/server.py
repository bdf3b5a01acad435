"""A small HTTP/1.1 admin server on asyncio: ``/healthz``, ``/metrics`` and routers of API routes.

Deliberately minimal and defensive: one request per connection (``Connection: close``), the request
head is bounded in size and time, bodies only on POST (``Content-Length``, at most
:data:`MAX_BODY_BYTES`, read within the time limit), concurrent connections are capped, and a
handler's exception becomes a 500 without details.

Plain routes (exact path → handler) answer GET and HEAD.  A :class:`Router` holds the routes of one
concern, with a method each and ``{name}`` path parameters; the server asks each router in turn
(404 when none has the path, 405 with ``Allow`` when one has it for other methods).  The concerns
live in their own modules: probes (``admin/health.py``: ``/healthz``, ``/livez``, ``/readyz``),
metrics (``admin/metrics.py``), the admin console (``admin/console.py``: ``/v1/admin/...``) and
the approvers' API (``approvals/api.py``: ``/v1/approvals/...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from veilgate import log

_log = log.get("admin")

MAX_HEAD_BYTES = 72 * 1024
"""Largest request line + headers accepted (room for a 64 KiB bearer token)."""
MAX_BODY_BYTES = 64 * 1024
"""Largest POST body accepted."""
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    """Path without the query string."""
    query: str
    headers: Mapping[str, str]
    """Lower-cased names."""
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)
    """Path parameters of a router's route (``{id}``)."""
    peer: str = ""
    """``host:port`` of the client."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any) -> Response:
        body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Response | Awaitable[Response]]

_PARAM = re.compile(r"\{([a-z_]+)\}")


class Router:
    """The routes of one concern: ``add("POST", "/v1/things/{id}/do", handler)``."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        rx = "".join(
            f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part)
            for i, part in enumerate(_PARAM.split(pattern))
        )
        self._routes.append((method, re.compile(rx), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | set[str] | None:
        """The handler and path parameters; or the methods the path has (405); or None."""
        allowed: set[str] = set()
        for m, rx, handler in self._routes:
            found = rx.fullmatch(path)
            if found is None:
                continue
            if m == method or (m == "GET" and method == "HEAD"):
                return handler, found.groupdict()
            allowed.add(m)
            if m == "GET":
                allowed.add("HEAD")
        return allowed or None


class AdminServer:
    """Serves ``routes`` (exact path → handler) for GET/HEAD on ``host:port`` (0 = ephemeral)."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Handler],
        routers: Sequence[Router] = (),
    ) -> None:
        self.host = host
        self._port = port
        self.routes = dict(routes)
        self.routers = list(routers)
        self._server: asyncio.Server | None = None
        self._listen: socket.socket | None = None
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    async def start(self, sock: socket.socket | None = None, *, serve: bool = True) -> None:
        """Bind ``host:port``, or serve on ``sock`` (handed over by the previous process);
        accept unless ``serve`` is false (then :meth:`resume`)."""
        from veilgate.gateway.listener import bind_listener

        if sock is None:
            sock = await bind_listener(self.host, self._port, 128)
        self._listen = sock
        # a unix socket (a worker's, behind the supervisor's listener) has no port
        self._port = int(sock.getsockname()[1]) if sock.family != socket.AF_UNIX else 0
        if serve:
            await self.resume()

    @property
    def listening_socket(self) -> socket.socket | None:
        """The listening socket (for a hand-over to the next process)."""
        return self._listen

    async def resume(self) -> None:
        """Accept on the listening socket (again)."""
        if self._server is not None or self._listen is None:
            return
        # the asyncio server owns (and closes) a duplicate: pausing keeps the socket open
        self._server = await asyncio.start_server(
            self._handle, sock=self._listen.dup(), limit=MAX_HEAD_BYTES + 1024
        )

    def pause(self) -> None:
        """Stop accepting, keep the socket (its queue waits for whoever accepts next)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._listen is not None:
            self._listen.close()
            self._listen = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                await self._send(writer, Response.text(503, "too many connections\n"), False)
                return
            peer = writer.get_extra_info("peername")
            where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
            try:
                response, head_only = await self._respond(reader, where)
            except Exception:  # a bug in a handler must never take the server down
                _log.exception("admin_handler_failed")
                response, head_only = Response.text(500, "internal error\n"), False
            await self._send(writer, response, head_only)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if task is not None:
                self._tasks.discard(task)

    async def _respond(self, reader: asyncio.StreamReader, peer: str) -> tuple[Response, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except TimeoutError:
            return Response.text(408, "request timeout\n"), False
        except asyncio.LimitOverrunError:
            return Response.text(413, "request head too large\n"), False
        except asyncio.IncompleteReadError as e:
            if not e.partial.strip():
                raise  # the client went away without a request
            return Response.text(400, "incomplete request\n"), False
        if len(head) > MAX_HEAD_BYTES:
            return Response.text(413, "request head too large\n"), False
        request = _parse(head)
        if request is None:
            return Response.text(400, "bad request\n"), False
        head_only = request.method == "HEAD"
        handler: Handler | None = None
        params: dict[str, str] = {}
        allowed: set[str] = set()
        if request.method in ("GET", "HEAD"):
            handler = self.routes.get(request.path)
        if handler is None:
            for router in self.routers:
                found = router.match(request.method, request.path)
                if isinstance(found, tuple):
                    handler, params = found
                    break
                if found:
                    allowed |= found
        if handler is None:
            if request.path in self.routes:
                allowed |= {"GET", "HEAD"}
            if allowed:
                allow = ", ".join(sorted(allowed))
                return Response(405, b"method not allowed\n", headers={"Allow": allow}), False
            return Response.text(404, "not found\n"), head_only
        body = await self._body(reader, request)
        if isinstance(body, Response):
            return body, False
        request = replace(request, body=body, params=params, peer=peer)
        result = handler(request)
        response = await result if isinstance(result, Awaitable) else result
        return response, head_only

    async def _body(self, reader: asyncio.StreamReader, request: Request) -> bytes | Response:
        """The request body (POST only, Content-Length only, bounded), or the refusal."""
        text = request.headers.get("content-length", "0").strip()
        chunked = "transfer-encoding" in request.headers
        if request.method != "POST":
            if chunked or text != "0":
                return Response.text(400, "request bodies are not accepted\n")
            return b""
        if chunked:
            return Response.text(411, "chunked bodies are not accepted; send Content-Length\n")
        if not text.isdigit():
            return Response.text(400, "bad content-length\n")
        length = int(text)
        if length == 0:
            return b""
        if length > MAX_BODY_BYTES:
            return Response.text(413, "request body too large\n")
        try:
            return await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)
        except TimeoutError:
            return Response.text(408, "request timeout\n")
        except asyncio.IncompleteReadError:
            return Response.text(400, "incomplete body\n")

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, head_only: bool
    ) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        headers = {
            "Content-Type": response.content_type,
            "Content-Length": str(len(response.body)),
            "Connection": "close",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            **response.headers,
        }
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


def _parse(head: bytes) -> Request | None:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0") or not method.isalpha() or not method.isupper():
        return None
    if not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    path, _, query = target.partition("?")
    return Request(method, path, query, headers)
