"""Upstream connection reuse in session mode (``targets.<name>.pool``).

A session that ends cleanly (the client's Terminate or its disconnect) while the server says it
is idle (its last ReadyForQuery was ``I``, nothing outstanding) gives its upstream connection
back instead of closing it.  The pool resets it with ``DISCARD ALL`` (temporary tables, prepared
statements, cursors, ``LISTEN``, advisory locks, every ``SET`` and ``SET ROLE``) and keeps it
only when the server answers exactly ``CommandComplete`` and ReadyForQuery ``I``: an error, a
notification, any other message, a timeout or a connection in any other state is closed, never
reused.  While idle in the pool the connection's ``application_name`` is ``veilgate-pool`` (no
principal's name lingers in ``pg_stat_activity``).

A new session of the same target, policy tier, login, database and startup parameters
(everything but ``application_name``: the server's defaults come from the startup packet, and
``DISCARD ALL`` returns to them) takes the most recently idle connection, sets its own
``application_name`` on it (one round trip, a parameter of an extended-protocol query: no
quoting), and skips TCP, TLS and SCRAM.  The client gets the server's ParameterStatus values as
the connection has them now, and a BackendKeyData with the server's real pid and a fresh gateway
secret; the cancel registry maps that secret to the session that now owns the pid, so a
CancelRequest from an earlier client of the same connection matches nothing.

At most ``pool.size`` idle connections are kept per key; one idle longer than
``pool.idle_timeout_s`` is closed.  ``size: 0`` (the default) turns reuse off.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from veilgate import log, metrics
from veilgate.config_model import TargetConfig
from veilgate.pgwire import wire

__all__ = ["PoolKey", "PooledConnection", "UpstreamPool", "pool_key"]

logger = log.get("gateway.pool")

RESET_TIMEOUT_S: Final = 5.0
IDLE_NAME: Final = "veilgate-pool"
_SET_APP = b"SELECT pg_catalog.set_config('application_name', $1, false)"
_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")

PoolKey = tuple[Any, ...]


def pool_key(login: TargetConfig, tier: str | None, params: Iterable[tuple[str, str]]) -> PoolKey:
    """Connections are interchangeable within one target and policy tier when they reach the
    same server as the same login with the same startup parameters (``application_name`` aside:
    it is set per session)."""
    tls = login.tls
    return (
        login.name,
        tier,
        login.host,
        login.port,
        login.dbname,
        login.user,
        tls.mode.value,
        str(tls.ca_file),
        tls.server_name,
        tuple((k, v) for k, v in params if k != "application_name"),
    )


def _set_application_name(value: str) -> bytes:
    """Parse / Bind / Execute / Sync of ``set_config('application_name', $1, false)``."""
    v = value.encode("utf-8")
    return b"".join(
        [
            wire.frame(b"P", b"\0" + _SET_APP + b"\0" + _I16.pack(0)),
            wire.frame(
                b"B", b"\0\0" + _I16.pack(0) + _I16.pack(1) + _I32.pack(len(v)) + v + _I16.pack(0)
            ),
            wire.frame(b"E", b"\0" + _I32.pack(0)),
            wire.frame(b"S", b""),
        ]
    )


def _param_name(frame: bytes) -> bytes:
    return frame[5:].split(b"\0", 1)[0]


@dataclass
class PooledConnection:
    """An authenticated upstream connection and what its handshake told the gateway."""

    transport: Any
    backend_pid: int
    backend_key: bytes
    parameters: list[bytes]
    """ParameterStatus frames, updated by whatever the server reported since."""
    mechanism: str
    idle_since: float = 0.0
    counted: bool = False
    """Counted in ``veilgate_upstream_connections_active`` while idle in the pool."""
    tx_status: bytes = b"I"
    done: bool = True
    tls: Any = None
    """The native ``TlsConnection`` when TLS runs in the engine (``transport`` then encrypts
    what is written; what is read is decrypted with it)."""

    def __repr__(self) -> str:
        return f"<PooledConnection pid={self.backend_pid}>"

    def update_parameter(self, frame: bytes) -> None:
        name = _param_name(frame)
        self.parameters = [f for f in self.parameters if _param_name(f) != name] + [frame]


class _Exchange(asyncio.Protocol):
    """Reads whole backend messages while the pool owns the connection."""

    def __init__(self, tls: Any = None) -> None:
        self._buf = bytearray()
        self._messages: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost = False
        self._tls = tls

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            try:
                self._tls.feed(data)
            except ValueError:  # native.TlsError: a bad record, the connection is unusable
                self.lost = True
                self._wake()
                return
            data = self._tls.take_plaintext()
        self._buf += data
        while len(self._buf) >= 5:
            n = _I32.unpack_from(self._buf, 1)[0]
            if n < 4 or n > 1 << 20:
                self.lost = True
                break
            if len(self._buf) < 1 + n:
                break
            self._messages.append((self._buf[0], bytes(self._buf[5 : 1 + n])))
            del self._buf[: 1 + n]
        self._wake()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._wake()

    def eof_received(self) -> bool:
        self.lost = True
        self._wake()
        return False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next(self) -> tuple[int, bytes]:
        while not self._messages:
            if self.lost:
                raise ConnectionError("upstream connection lost")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    @property
    def pending(self) -> bool:
        return bool(self._messages) or bool(self._buf)


async def _expect_ready(ex: _Exchange, conn: PooledConnection, tags: bytes) -> None:
    """Read the answers ``tags`` (in order, ParameterStatus and notices anywhere) and a final
    ReadyForQuery ``I``; anything else fails."""
    want = [*tags, ord("Z")]
    for tag in want:
        while True:
            got, body = await ex.next()
            if got == ord("S"):
                conn.update_parameter(wire.frame(b"S", body))
                continue
            if got == ord("N"):
                continue
            break
        if got != tag:
            raise ConnectionError(f"unexpected message {chr(got)!r} (wanted {chr(tag)!r})")
        if got == ord("Z") and body[:1] != b"I":
            raise ConnectionError("not idle after the reset")
    if ex.pending:
        raise ConnectionError("unexpected trailing data")


@dataclass
class _Slot:
    idle: deque[PooledConnection] = field(default_factory=deque)


class UpstreamPool:
    """Idle upstream connections per :func:`pool_key` (one pool per gateway process)."""

    def __init__(self) -> None:
        self._slots: dict[PoolKey, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def idle_count(self, key: PoolKey | None = None) -> int:
        if key is not None:
            slot = self._slots.get(key)
            return len(slot.idle) if slot else 0
        return sum(len(s.idle) for s in self._slots.values())

    def idle_by_target(self) -> dict[str, int]:
        """Idle connections per target name (the admin console's upstream pools)."""
        out: dict[str, int] = {}
        for key, slot in self._slots.items():
            out[str(key[0])] = out.get(str(key[0]), 0) + len(slot.idle)
        return out

    # --- taking one -------------------------------------------------------------------------

    async def acquire(
        self, key: PoolKey, login: TargetConfig, application_name: str
    ) -> PooledConnection | None:
        """The most recently idle connection for ``key`` with ``application_name`` set, or None
        (none idle, or each one tried failed and was closed)."""
        slot = self._slots.get(key)
        loop = asyncio.get_running_loop()
        while slot is not None and slot.idle:
            conn = slot.idle.pop()
            if conn.transport.is_closing():
                continue
            if loop.time() - conn.idle_since > login.pool.idle_timeout_s:
                self._close(conn, "idle_timeout")
                continue
            ex = conn.transport.get_protocol()
            if not isinstance(ex, _Exchange) or ex.lost or ex.pending:
                self._close(conn, "unexpected_data")
                continue
            try:
                async with asyncio.timeout(RESET_TIMEOUT_S):
                    conn.transport.write(_set_application_name(application_name))
                    await _expect_ready(ex, conn, b"12DC")
            except (TimeoutError, ConnectionError) as exc:
                self._close(conn, f"prepare: {exc}")
                continue
            metrics.upstream_pool_total.inc(outcome="reused")
            self._uncount(conn)  # the session counts it from now on
            return conn
        return None

    # --- giving one back --------------------------------------------------------------------

    def release(self, key: PoolKey, login: TargetConfig, conn: PooledConnection) -> bool:
        """Take ``conn`` (idle, its session gone) for a reset and keep it if the reset succeeds;
        False when the pool does not take it (the caller closes it)."""
        slot = self._slots.get(key)
        if self._closed or login.pool.size <= 0:
            return False
        if slot is not None and len(slot.idle) >= login.pool.size:
            return False
        ex = _Exchange(conn.tls)
        try:
            conn.transport.set_protocol(ex)
            conn.transport.resume_reading()
        except (AttributeError, NotImplementedError, RuntimeError):
            return False
        task = asyncio.get_running_loop().create_task(self._reset(key, login, conn, ex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _reset(
        self, key: PoolKey, login: TargetConfig, conn: PooledConnection, ex: _Exchange
    ) -> None:
        try:
            async with asyncio.timeout(RESET_TIMEOUT_S):
                conn.transport.write(wire.frame(b"Q", b"DISCARD ALL\0"))
                await _expect_ready(ex, conn, b"C")
                conn.transport.write(_set_application_name(IDLE_NAME))
                await _expect_ready(ex, conn, b"12DC")
        except (TimeoutError, ConnectionError) as exc:
            self._close(conn, f"reset: {exc}")
            return
        slot = self._slots.setdefault(key, _Slot())
        if self._closed or len(slot.idle) >= login.pool.size:
            self._close(conn, "full")
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        slot.idle.append(conn)
        conn.counted = True
        metrics.upstream_connections_active.inc()
        metrics.upstream_pool_total.inc(outcome="kept")
        loop.call_later(login.pool.idle_timeout_s + 0.05, self._expire, key, login, conn)

    def _expire(self, key: PoolKey, login: TargetConfig, conn: PooledConnection) -> None:
        slot = self._slots.get(key)
        if slot is None or conn not in slot.idle:
            return
        if asyncio.get_running_loop().time() - conn.idle_since >= login.pool.idle_timeout_s:
            slot.idle.remove(conn)
            self._close(conn, "idle_timeout")

    @staticmethod
    def _uncount(conn: PooledConnection) -> None:
        if conn.counted:
            conn.counted = False
            metrics.upstream_connections_active.dec()

    def _close(self, conn: PooledConnection, why: str) -> None:
        self._uncount(conn)
        metrics.upstream_pool_total.inc(outcome="closed")
        log.event(logger, "upstream_pool_closed", upstream_pid=conn.backend_pid, reason=why)
        t = conn.transport
        if not t.is_closing():
            with contextlib.suppress(Exception):
                t.write(wire.TERMINATE)
            t.close()

    def flush(self) -> None:
        """Close every idle connection (a configuration reload); keep taking new ones."""
        for slot in self._slots.values():
            while slot.idle:
                self._close(slot.idle.pop(), "reload")

    def close(self) -> None:
        """Close every idle connection and stop taking any (the gateway stops)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for slot in self._slots.values():
            while slot.idle:
                self._close(slot.idle.pop(), "gateway_stopped")
        self._slots.clear()
