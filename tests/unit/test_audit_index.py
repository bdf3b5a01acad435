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


def test_sessions_purged_by_retention_leave_the_index(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def scenario(index: IndexWriter, db: SQLiteDB) -> None:
        for sid in ("old", "new", "open"):
            index.session_started(sid, _session(sid))
        for sid in ("old", "new"):
            index.session_ended(sid, "client_closed", {"fingerprints": [("fp-" + sid, "SELECT 1")]})
        assert await index.flush()
        index.terminated(["old"], 10)
        index.terminated(["new"], 20)
        assert await index.flush()
        index.purged(15)  # the segments up to seq 15 were deleted
        assert await index.flush()
        assert [r.sid for r in await list_sessions(db, SessionFilter())] == ["new", "open"]
        fps = await db.fetch("SELECT sid FROM veilgate_session_fingerprints ORDER BY sid")
        assert [r["sid"] for r in fps] == ["new"]

    assert _run(path, 60.0, scenario) == []


def test_the_writer_reports_what_retention_purged(tmp_path: Path) -> None:
    import os

    import veilgate_native as native

    from veilgate.audit.segments import SegmentDir
    from veilgate.audit.writer import AuditWriter, WriterSettings

    purged: list[int] = []
    d = SegmentDir(tmp_path / "audit")
    rec = native.AuditRecorder("node-a", "k1", b"k" * 32)
    w = AuditWriter(
        d,
        rec,
        WriterSettings(interval_s=0.01, fsync=False, retention_s=3600.0),
        on_purged=purged.append,
    )
    w.start()
    try:
        rec.push("aaaa", '"session_start","tier":"ro"')
        rec.push("aaaa", '"session_end","reason":"client_closed"', terminator=True)
        assert w.flush()  # written to the first segment
        w.request_rotate()
        assert w.flush()
        first = d.segments()[0][1]
        old = first.stat().st_mtime - 7200
        os.utime(first, (old, old))
        w.request_rotate()  # rotation purges
        assert w.flush()
    finally:
        w.stop()
    assert len(purged) == 1 and purged[0] >= 3  # audit_started, start, end
