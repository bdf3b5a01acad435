"""A minimal PostgreSQL client for catalog lookups on a side connection.

The catalog must not share the client's upstream connection (it would interleave with the
client's own protocol stream and transaction), so it opens its own, with the same TLS and SCRAM
code the gateway uses (:func:`veilgate.pgwire.upstream.connect`, :class:`UpstreamHandshake`).
Only what the catalog needs: simple queries with text results, and Parse + Describe of a
statement.  One request at a time (an :class:`asyncio.Lock`); any protocol surprise closes it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

from veilgate.config_model import TargetConfig
from veilgate.pgwire import upstream, wire

__all__ = ["SideConnection", "SideConnectionError", "SideQueryError"]

Row = tuple[str | None, ...]


class SideConnectionError(Exception):
    """The side connection is unusable (closed, protocol error); reconnect."""


class SideQueryError(Exception):
    """The server answered a side query with an ErrorResponse (the connection stays usable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class _Protocol(asyncio.Protocol):
    """Frames backend messages into a queue the client awaits."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.messages: deque[tuple[int, bytes]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: Exception | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (TCP, SSL) do not derive from asyncio.Transport
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        n = len(self.buf)
        while n - pos >= 5:
            (length,) = struct.unpack_from("!I", self.buf, pos + 1)
            if length < 4:
                self.connection_lost(SideConnectionError("bad message length"))
                return
            if n - pos < 1 + length:
                break
            tag = self.buf[pos]
            self.messages.append((tag, bytes(self.buf[pos + 5 : pos + 1 + length])))
            pos += 1 + length
        del self.buf[:pos]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or SideConnectionError("side connection closed by the server")
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SideConnection:
    """One authenticated connection for catalog queries."""

    def __init__(self, transport: asyncio.Transport, proto: _Protocol) -> None:
        self._transport = transport
        self._proto = proto
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        target: TargetConfig,
        *,
        application_name: str = "veilgate-catalog",
        lock_timeout_ms: int | None = None,
    ) -> SideConnection:
        """Connect and authenticate as ``target``'s login; raise ``UpstreamError`` on failure.
        ``lock_timeout_ms``: its queries fail (55P03) rather than wait longer on a lock."""
        loop = asyncio.get_running_loop()
        proto = _Protocol()
        transport, _ = await upstream.connect(loop, target, lambda: proto)
        conn = cls(transport, proto)
        try:
            hs = upstream.UpstreamHandshake(
                target, target.password(), transport.get_extra_info("ssl_object")
            )
            params = [
                ("user", target.user),
                ("database", target.dbname),
                ("application_name", application_name),
                # never wait on a lock (the client's own open transaction may hold it)
                *([("lock_timeout", f"{lock_timeout_ms}ms")] if lock_timeout_ms else []),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO"),
            ]
            transport.write(wire.startup_message(params))
            while not hs.done:
                tag, body = await conn._recv()
                for out in hs.feed(tag, body):
                    transport.write(out)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def closed(self) -> bool:
        return self._proto.lost is not None or self._transport.is_closing()

    def close(self) -> None:
        if not self._transport.is_closing():
            try:
                self._transport.write(b"X\x00\x00\x00\x04")
            finally:
                self._transport.close()

    async def _recv(self) -> tuple[int, bytes]:
        p = self._proto
        while not p.messages:
            if p.lost is not None:
                raise SideConnectionError(str(p.lost)) from None
            p.waiter = asyncio.get_running_loop().create_future()
            try:
                await p.waiter
            finally:
                p.waiter = None
        return p.messages.popleft()

    def _send(self, data: bytes) -> None:
        if self.closed:
            raise SideConnectionError("side connection closed")
        self._transport.write(data)

    async def _until_ready(self, handle: Any) -> SideQueryError | None:
        """Read messages up to ReadyForQuery; ``handle(tag, body)`` sees the others."""
        error: SideQueryError | None = None
        while True:
            tag, body = await self._recv()
            if tag == ord("Z"):
                return error
            if tag == ord("E"):
                f = wire.parse_error_fields(body)
                error = error or SideQueryError(f.get("C", "XX000"), f.get("M", ""))
            elif tag in (ord("N"), ord("S"), ord("A")):
                continue
            else:
                handle(tag, body)

    async def query(self, sql: str) -> list[list[Row]]:
        """Run ``sql`` (one or more statements, one round trip); the rows of each result set.

        Raises :class:`SideQueryError` if any statement failed (the server stops there)."""
        results: list[list[Row]] = []

        def handle(tag: int, body: bytes) -> None:
            if tag == ord("T"):
                results.append([])
            elif tag == ord("D"):
                if not results:
                    raise SideConnectionError("DataRow without RowDescription")
                results[-1].append(_data_row(body))
            elif tag in (ord("C"), ord("I")):
                pass
            elif tag in (ord("G"), ord("H"), ord("W")):
                raise SideConnectionError("unexpected COPY on the side connection")
            else:
                raise SideConnectionError(f"unexpected message {chr(tag)!r}")

        async with self._lock:
            try:
                self._send(wire.frame(b"Q", wire.cstr(sql)))
                err = await self._until_ready(handle)
            except SideConnectionError:
                self.abort()
                raise
        if err is not None:
            raise err
        return results

    async def describe(self, sql: str) -> bytes | None:
        """Parse + Describe ``sql`` (unnamed statement; never executed).

        Returns the RowDescription body, or None when the statement returns no rows (NoData)."""
        out: list[bytes | None] = []

        def handle(tag: int, body: bytes) -> None:
            if tag == ord("T"):
                out.append(body)
            elif tag == ord("n"):
                out.append(None)
            elif tag in (ord("1"), ord("t")):
                pass
            else:
                raise SideConnectionError(f"unexpected message {chr(tag)!r}")

        parse = wire.frame(b"P", wire.cstr("") + wire.cstr(sql) + b"\x00\x00")
        describe = wire.frame(b"D", b"S" + wire.cstr(""))
        sync = wire.frame(b"S", b"")
        async with self._lock:
            try:
                self._send(parse + describe + sync)
                err = await self._until_ready(handle)
            except SideConnectionError:
                self.abort()
                raise
        if err is not None:
            raise err
        return out[0] if out else None

    def abort(self) -> None:
        """Drop the connection now (after a timeout or a protocol surprise)."""
        self._transport.abort()


def _data_row(body: bytes) -> Row:
    (count,) = struct.unpack_from("!h", body, 0)
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        (n,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if n < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + n].decode("utf-8"))
            pos += n
    return tuple(values)
