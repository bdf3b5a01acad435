"""The SQLite backend: one file (created 0600 on first use), WAL mode, one worker thread.

All statements run on one connection in one worker thread, so the event loop never waits on the
disk; an :class:`asyncio.Lock` keeps one transaction at a time in this process, and ``BEGIN
IMMEDIATE`` with a busy timeout serialises writers across processes (the gateway and the
``veilgate approvals`` CLI share the file).  Notifications go through :mod:`veilgate.state.wake`.

Two things SQLite's busy timeout does not cover are handled here: switching a new file to WAL
mode fails at once (``database is locked``, no busy wait) while another connection opens the
same file -- the gateway's approval store and its session index do at start -- so the switch is
retried within the timeout; and an operation the event loop stopped waiting for (timeout) still
finishes in the worker thread, so a ``BEGIN`` that completed after its caller gave up is rolled
back before the next transaction (else the connection would hold the write lock for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from veilgate.state import wake
from veilgate.state.db import Listener, Row, StateDB, StateUnavailable, Tx, check_channel

__all__ = ["SQLiteDB"]

T = TypeVar("T")

_PLACEHOLDER: Final = re.compile(r"\$(\d+)")


def _sqlite_sql(sql: str) -> str:
    """``$1`` → ``?1`` (SQLite's numbered parameters)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class _SQLiteTx(Tx):
    def __init__(self, db: SQLiteDB) -> None:
        self._db = db
        self.notices: list[tuple[str, str]] = []

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._db._run(self._db._execute, _sqlite_sql(sql), args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._db._run(self._db._fetch, _sqlite_sql(sql), args)

    def notify(self, channel: str, payload: str) -> None:
        self.notices.append((check_channel(channel), payload))


class SQLiteDB(StateDB):
    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._listeners: dict[str, list[Listener]] = {}
        self._wake: wake.WakeListener | None = None
        self._closed = False

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    # --- the worker thread ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """In the worker thread: create the file 0600 if needed, open it, WAL mode."""
        if self._conn is not None:
            return self._conn
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout_s,
            isolation_level=None,  # explicit BEGIN / COMMIT
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            mode = self._wal(conn)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode ({mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode=WAL``, retried while another connection holds the new file
        (the switch does not wait on the busy timeout)."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.002
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        cur = self._connect().execute(sql, args)
        n = cur.rowcount
        cur.close()
        return max(n, 0)

    def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        cur = self._connect().execute(sql, args)
        rows = [dict(r) for r in cur.fetchall()]
        cur.close()
        return rows

    def _begin(self) -> None:
        conn = self._connect()
        if conn.in_transaction:
            # left by a transaction whose caller stopped waiting (see the module docstring)
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")

    def _end(self, commit: bool) -> None:
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return
        conn.execute("COMMIT" if commit else "ROLLBACK")

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StateUnavailable(f"{self.describe()}: closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="veilgate-state")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s + 1.0):
                return await loop.run_in_executor(self._executor, lambda: fn(*args))
        except TimeoutError:
            raise StateUnavailable(f"{self.describe()}: timed out") from None
        except (sqlite3.Error, OSError) as exc:
            raise StateUnavailable(f"{self.describe()}: {exc}") from None

    # --- the interface -------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            try:
                await self._run(self._begin)
            except StateUnavailable:
                # a BEGIN that timed out may still succeed in the worker: roll it back there
                # (the worker runs one call at a time, so this runs after it)
                self._abandon()
                raise
            tx = _SQLiteTx(self)
            try:
                yield tx
            except BaseException:
                with contextlib.suppress(StateUnavailable, sqlite3.Error):
                    await self._run(self._end, False)
                raise
            await self._run(self._end, True)
        for channel, payload in tx.notices:
            await self._send(channel, payload)

    def _abandon(self) -> None:
        ex = self._executor
        if ex is not None and not self._closed:
            with contextlib.suppress(RuntimeError):  # shut down meanwhile
                ex.submit(self._end_quietly)

    def _end_quietly(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._end(False)

    async def _send(self, channel: str, payload: str) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # a wake-up is a hint; receivers re-read the file
            await loop.run_in_executor(None, wake.send, self.path, channel, payload)

    async def listen(self, channel: str, callback: Listener) -> None:
        self._listeners.setdefault(check_channel(channel), []).append(callback)
        if self._wake is None:
            listener = wake.WakeListener(self.path, self._dispatch)
            try:
                listener.start()
            except OSError as exc:
                raise StateUnavailable(f"{self.describe()}: cannot listen: {exc}") from None
            self._wake = listener

    def _dispatch(self, channel: str, payload: str) -> None:
        for cb in self._listeners.get(channel, ()):
            cb(payload)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        ex, self._executor = self._executor, None
        if ex is not None:
            done = threading.Event()

            def close_conn() -> None:
                try:
                    self._close_conn()
                finally:
                    done.set()

            ex.submit(close_conn)
            await asyncio.get_running_loop().run_in_executor(None, done.wait, 5.0)
            ex.shutdown(wait=False)
