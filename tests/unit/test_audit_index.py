"""The session index's writer: a store that fails for a moment (a lock held too long by another
process) lags the index and is retried without counting as a recording failure; one that keeps
failing past the grace is reported, and its recovery too."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from veilgate import metrics
from veilgate.audit.index import IndexWriter, SessionFilter, SessionStart, list_sessions
from veilgate.state.sqlite import SQLiteDB


def _session(peer: str) -> SessionStart:
    return SessionStart(
        provider=None,
        tenant=None,
        subject=None,
        client_app=None,
        principal=None,
        tier="t",
        target=None,
        client_addr=peer,
    )


class _Locker:
    """Another process's connection holding the file's write lock."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def hold(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


async def _until(cond: Any, what: str) -> None:
    for _ in range(1000):  # 20 s at most
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


def _run(path: Path, grace_s: float, scenario: Any) -> list[tuple[bool, str | None]]:
    states: list[tuple[bool, str | None]] = []

    async def go() -> None:
        db = SQLiteDB(path, timeout_s=0.2)
        index = IndexWriter(
            db, node="n", on_state=lambda ok, err: states.append((ok, err)), grace_s=grace_s
        )
        await index.start()
        try:
            assert await index.flush()
            await scenario(index, db)
        finally:
            await index.stop()
            await db.close()

    asyncio.run(go())
    return states


def test_a_lock_held_for_a_moment_is_retried_not_reported(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    retries = metrics.audit_index_retries_total.get()

    async def scenario(index: IndexWriter, db: SQLiteDB) -> None:
        locker = _Locker(path)
        locker.hold()
        index.session_started("s1", _session("p1"))
        # several writes fail on the busy timeout and are retried ...
        await _until(lambda: index.failures >= 2, "index writes fail while the lock is held")
        assert index.healthy
        locker.release()
        # ... and the row is written once the lock is free
        assert await index.flush()
        rows = await list_sessions(db, SessionFilter())
        assert [r.sid for r in rows] == ["s1"]
        assert index.failing_since is None and index.last_error is None

    states = _run(path, 60.0, scenario)
    assert states == []  # never reported as a recording failure
    assert metrics.audit_index_retries_total.get() >= retries + 2  # but counted


def test_a_store_failing_past_the_grace_is_reported_then_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    reported = threading.Event()

    async def scenario(index: IndexWriter, db: SQLiteDB) -> None:
        locker = _Locker(path)
        locker.hold()
        index.session_started("s2", _session("p2"))
        await _until(lambda: not index.healthy, "the failure is reported after the grace")
        reported.set()
        locker.release()
        await _until(lambda: index.healthy, "the recovery is reported")
        assert await index.flush()
        assert [r.sid for r in await list_sessions(db, SessionFilter())] == ["s2"]

    states = _run(path, 0.5, scenario)
    assert reported.is_set()
    assert [ok for ok, _ in states] == [False, True]
    assert states[0][1] is not None and "locked" in states[0][1]
