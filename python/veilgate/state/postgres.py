"""The PostgreSQL backend: state shared by several gateways (asyncpg, an optional dependency).

A small pool runs the statements; one extra connection LISTENs.  A NOTIFY sent in a transaction
reaches every gateway's listener when it commits, so a decision made on any node wakes the session
waiting on another at once (no polling loop).  The listening connection is re-established when it
breaks (with back-off); its callbacks are then called with ``None`` so waiters re-read what they
wait for (notifications sent while it was down are lost; what they announced is in the tables).

The pool is created on first use: a gateway whose state database is down still starts and serves
everything that needs no state; what does get :class:`StateUnavailable` (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

from veilgate import log
from veilgate.state.db import Listener, Row, StateDB, StateUnavailable, Tx, check_channel

__all__ = ["PostgresDB"]

logger = log.get("state")

_BACKOFF_MIN_S: Final = 0.2
_BACKOFF_MAX_S: Final = 10.0


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - installed in every test environment
        raise StateUnavailable(
            "state backend postgres needs the asyncpg package (pip install 'veilgate[postgres]')"
        ) from None
    return asyncpg


def _safe_target(dsn: str) -> str:
    """host:port/dbname of a DSN, for messages (never the user or the password)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        return f"postgres://{host}:{port}{parts.path}"
    except ValueError:
        return "postgres"


def _setter(event: asyncio.Event) -> Any:
    """A termination callback that sets ``event``."""
    return lambda _conn: event.set()


class _PgTx(Tx):
    def __init__(self, db: PostgresDB, conn: Any) -> None:
        self._db = db
        self._conn = conn
        self.notices: list[tuple[str, str]] = []

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._db._call(self._conn.execute(sql, *args))
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        records = await self._db._call(self._conn.fetch(sql, *args))
        return [dict(r) for r in records]

    def notify(self, channel: str, payload: str) -> None:
        self.notices.append((check_channel(channel), payload))


class PostgresDB(StateDB):
    dialect = "postgres"

    def __init__(self, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4) -> None:
        self._dsn = dsn
        self.timeout_s = timeout_s
        self._pool_size = pool_size
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._listeners: dict[str, list[Listener]] = {}
        self._listen_task: asyncio.Task[None] | None = None
        self._listen_conn: Any = None
        self._listening = asyncio.Event()
        self._closed = False

    def describe(self) -> str:
        return _safe_target(self._dsn)

    async def _call(self, aw: Any) -> Any:
        asyncpg = _asyncpg()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await aw
        except TimeoutError:
            raise StateUnavailable(f"{self.describe()}: timed out") from None
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,  # a connection left mid-operation
        ) as exc:
            raise StateUnavailable(f"{self.describe()}: {type(exc).__name__}: {exc}") from None

    async def _get_pool(self) -> Any:
        if self._closed:
            raise StateUnavailable(f"{self.describe()}: closed")
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                asyncpg = _asyncpg()
                self._pool = await self._call(
                    asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=self.timeout_s,
                        command_timeout=self.timeout_s,
                    )
                )
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        pool = await self._get_pool()
        conn = await self._call(pool.acquire(timeout=self.timeout_s))
        broken = False
        try:
            tr = conn.transaction()
            await self._call(tr.start())
            tx = _PgTx(self, conn)
            try:
                yield tx
                for channel, payload in tx.notices:
                    await tx.execute("SELECT pg_notify($1, $2)", channel, payload)
            except StateUnavailable:
                # timed out or failed mid-operation: the connection's protocol state is unknown,
                # so it leaves the pool (a later transaction would fail on it)
                broken = True
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._call(tr.rollback())
                raise
            await self._call(tr.commit())
        except StateUnavailable:
            broken = True
            raise
        finally:
            if broken:
                with contextlib.suppress(Exception):
                    conn.terminate()
            with contextlib.suppress(Exception):
                await pool.release(conn)

    # --- LISTEN --------------------------------------------------------------------------------

    async def listen(self, channel: str, callback: Listener) -> None:
        first = check_channel(channel) not in self._listeners
        self._listeners.setdefault(channel, []).append(callback)
        if self._listen_task is None:
            self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop())
        elif first and self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._call(self._listen_conn.add_listener(channel, self._on_notify))

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for cb in self._listeners.get(channel, ()):
            cb(payload)

    def _resync(self) -> None:
        for callbacks in self._listeners.values():
            for cb in callbacks:
                cb(None)

    async def wait_listening(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the LISTEN connection is up (tests; the first notification after)."""
        try:
            async with asyncio.timeout(timeout):
                await self._listening.wait()
        except TimeoutError:
            return False
        return True

    async def _listen_loop(self) -> None:
        asyncpg = _asyncpg()
        backoff = _BACKOFF_MIN_S
        ever = False
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await self._call(asyncpg.connect(self._dsn, timeout=self.timeout_s))
            except StateUnavailable as exc:
                log.event(logger, "state_listen_failed", logging.WARNING, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            try:
                conn.add_termination_listener(_setter(lost))
                for channel in list(self._listeners):
                    await self._call(conn.add_listener(channel, self._on_notify))
            except StateUnavailable as exc:
                log.event(logger, "state_listen_failed", logging.WARNING, error=str(exc))
                with contextlib.suppress(Exception):
                    conn.terminate()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            self._listen_conn = conn
            self._listening.set()
            backoff = _BACKOFF_MIN_S
            if ever:
                log.event(logger, "state_listen_restored", logging.INFO)
                self._resync()  # notifications may have been missed while it was down
            ever = True
            try:
                await lost.wait()
            finally:
                self._listen_conn = None
                self._listening.clear()
                with contextlib.suppress(Exception):
                    conn.terminate()
            if not self._closed:
                log.event(logger, "state_listen_lost", logging.WARNING)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._listen_task = self._listen_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout_s):
                    await pool.close()
            pool.terminate()
