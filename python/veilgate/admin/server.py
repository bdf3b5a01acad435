"""A small HTTP/1.1 admin server on asyncio: ``/healthz`` and ``/metrics`` (more routes later).

Deliberately minimal and defensive: GET and HEAD only, one request per connection
(``Connection: close``), the request head is bounded in size and time, request bodies are refused,
concurrent connections are capped, and a handler's exception becomes a 500 without details.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from veilgate import log

_log = log.get("admin")

MAX_HEAD_BYTES = 8192
"""Largest request line + headers accepted."""
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
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


class AdminServer:
    """Serves ``routes`` (exact path → handler) for GET/HEAD on ``host:port`` (0 = ephemeral)."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Handler]) -> None:
        self.host = host
        self._port = port
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=MAX_HEAD_BYTES + 1024, backlog=128
        )
        sock: socket.socket = self._server.sockets[0]
        self._port = int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                await self._send(writer, Response.text(503, "too many connections\n"), False)
                return
            try:
                response, head_only = await self._respond(reader)
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

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
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
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"}), False
        if "transfer-encoding" in request.headers or (
            request.headers.get("content-length", "0").strip() != "0"
        ):
            return Response.text(400, "request bodies are not accepted\n"), False
        handler = self.routes.get(request.path)
        if handler is None:
            return Response.text(404, "not found\n"), request.method == "HEAD"
        result = handler(request)
        response = await result if isinstance(result, Awaitable) else result
        return response, request.method == "HEAD"

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


# -- the gateway's admin endpoints ---------------------------------------------------------------


class HealthState:
    """What ``/healthz`` reports: serving (200, with the session count) or draining (503)."""

    def __init__(self, sessions: Callable[[], int]) -> None:
        self._sessions = sessions
        self.draining = False

    def __call__(self, request: Request) -> Response:
        if self.draining:
            return Response.json(503, {"status": "draining"})
        return Response.json(200, {"status": "ok", "sessions": self._sessions()})


def metrics_handler(request: Request) -> Response:
    from veilgate import metrics

    return Response(200, metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")


def gateway_routes(health: HealthState) -> dict[str, Handler]:
    return {"/healthz": health, "/metrics": metrics_handler}
