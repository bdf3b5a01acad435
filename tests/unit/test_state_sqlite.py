"""The SQLite state backend: file created 0600 on first use, WAL, migrations, notifications
across processes (the gateway and the CLI share the file)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from veilgate.config_model import StateConfig
from veilgate.state import Migration, SchemaTooNew, StateUnavailable, migrate, open_state
from veilgate.state.sqlite import SQLiteDB

STEPS = [
    Migration(1, ("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",)),
    Migration(2, ("ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0",)),
]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_file_created_on_first_use_0600_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = open_state(StateConfig(path=str(path)))
    assert isinstance(db, SQLiteDB)
    assert not path.exists()  # nothing opened yet

    async def go() -> None:
        try:
            assert await migrate(db, "demo", STEPS) == 2
            await db.execute("INSERT INTO t (id, name, n) VALUES ($1, $2, $3)", 1, "a", 5)
            assert await db.fetch("SELECT name, n FROM t WHERE id = $1", 1) == [
                {"name": "a", "n": 5}
            ]
        finally:
            await db.close()

    run(go())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute(
            "SELECT version FROM veilgate_schema WHERE component = 'demo'"
        ).fetchone() == (2,)


def test_migrations_run_once_and_in_steps(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def go() -> None:
        db = SQLiteDB(path)
        try:
            assert await migrate(db, "demo", STEPS[:1]) == 1
            await db.execute("INSERT INTO t (id, name) VALUES (1, 'kept')")
            assert await migrate(db, "demo", STEPS) == 2  # only step 2 runs
            assert await migrate(db, "demo", STEPS) == 2  # nothing runs
            assert await db.fetch("SELECT name, n FROM t") == [{"name": "kept", "n": 0}]
            # another component's versions are its own
            assert await migrate(db, "other", [Migration(1, ("CREATE TABLE o (x INTEGER)",))]) == 1
            with pytest.raises(SchemaTooNew, match="schema version 2; this veilgate knows up to 1"):
                await migrate(db, "demo", STEPS[:1])
            with pytest.raises(ValueError, match="numbered"):
                await migrate(db, "demo", [STEPS[1]])
        finally:
            await db.close()

    run(go())


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    async def go() -> None:
        db = SQLiteDB(tmp_path / "s.db")
        try:
            await migrate(db, "demo", STEPS)
            with pytest.raises(RuntimeError):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t (id, name) VALUES (1, 'x')")
                    raise RuntimeError("boom")
            assert await db.fetch("SELECT * FROM t") == []
            # a broken statement is the store failing: StateUnavailable, and the store still works
            with pytest.raises(StateUnavailable):
                await db.execute("INSERT INTO missing VALUES (1)")
            await db.execute("INSERT INTO t (id, name) VALUES (2, 'y')")
            assert len(await db.fetch("SELECT * FROM t")) == 1
        finally:
            await db.close()

    run(go())


def test_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    async def go() -> None:
        db = SQLiteDB(tmp_path / "no" / "such" / "dir.db")
        with pytest.raises(StateUnavailable):
            await db.execute("SELECT 1")
        await db.close()

    run(go())


def test_notify_reaches_listeners_after_commit_only(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def go() -> None:
        a, b = SQLiteDB(path), SQLiteDB(path)
        got: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        try:
            await migrate(a, "demo", STEPS)
            await a.listen("chan", lambda p: got.put_nowait(("a", p)))
            await b.listen("chan", lambda p: got.put_nowait(("b", p)))
            await b.listen("other", lambda p: got.put_nowait(("b-other", p)))
            with pytest.raises(RuntimeError):
                async with a.transaction() as tx:
                    tx.notify("chan", "rolled-back")
                    raise RuntimeError
            async with a.transaction() as tx:
                await tx.execute("INSERT INTO t (id, name) VALUES (1, 'x')")
                tx.notify("chan", "r1")
            seen = {await asyncio.wait_for(got.get(), 5) for _ in range(2)}
            assert seen == {("a", "r1"), ("b", "r1")}
            await asyncio.sleep(0.1)
            assert got.empty()
        finally:
            await a.close()
            await b.close()
        # closed listeners unregistered themselves
        assert not [e for e in os.listdir(f"{path}.wake") if e.endswith(".sock")]

    run(go())


def test_notify_from_another_process_wakes_this_one(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    script = textwrap.dedent(
        """
        import asyncio, sys
        from veilgate.state.sqlite import SQLiteDB
        async def main():
            db = SQLiteDB(sys.argv[1])
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (id, name) VALUES (7, 'from-cli')")
                tx.notify("chan", "7")
            await db.close()
        asyncio.run(main())
        """
    )

    async def go() -> None:
        db = SQLiteDB(path)
        got: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            await migrate(db, "demo", STEPS)
            await db.listen("chan", got.put_nowait)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
            assert await asyncio.wait_for(proc.wait(), 60) == 0
            assert await asyncio.wait_for(got.get(), 10) == "7"
            assert await db.fetch("SELECT name FROM t WHERE id = 7") == [{"name": "from-cli"}]
        finally:
            await db.close()

    run(go())


def test_stale_listener_is_unregistered(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    wake = Path(f"{path}.wake")
    wake.mkdir(mode=0o700)
    # a process that died without cleaning up left its entry
    dead = wake / "12345-deadbeef.sock"
    dead.touch()

    async def go() -> None:
        db = SQLiteDB(path)
        try:
            await migrate(db, "demo", STEPS)
            async with db.transaction() as tx:
                tx.notify("chan", "x")
        finally:
            await db.close()

    run(go())
    assert not dead.exists()


def test_long_paths_use_abstract_sockets(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "state.db"

    async def go() -> None:
        a, b = SQLiteDB(path), SQLiteDB(path)
        got: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            await migrate(a, "demo", STEPS)
            await b.listen("chan", got.put_nowait)
            async with a.transaction() as tx:
                tx.notify("chan", "deep")
            assert await asyncio.wait_for(got.get(), 5) == "deep"
        finally:
            await a.close()
            await b.close()

    run(go())


def test_new_file_opened_by_two_connections_at_once(tmp_path: Path) -> None:
    """Switching a new file to WAL fails at once (no busy wait) while another connection holds
    its write lock -- the approval store and the session index open the same new file at start:
    the switch is retried, not reported as the store being down."""
    import threading

    path = tmp_path / "s.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # still in rollback-journal mode: holds the write lock
    other.execute("CREATE TABLE elsewhere (x INTEGER)")
    released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    released.start()

    async def go() -> None:
        db = SQLiteDB(path)
        try:
            assert await migrate(db, "demo", STEPS) == 2
        finally:
            await db.close()

    try:
        run(go())
    finally:
        released.join()
        other.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_begin_finished_after_its_caller_gave_up_does_not_keep_the_lock(tmp_path: Path) -> None:
    """An operation the event loop stopped waiting for still runs in the worker thread: a BEGIN
    that completes after its timeout is rolled back, so neither this connection nor another
    process is locked out afterwards."""
    import time

    path = tmp_path / "s.db"
    db = SQLiteDB(path, timeout_s=0.2)
    original = db._begin
    started = []

    def slow_begin() -> None:
        started.append(1)
        time.sleep(1.6)  # past the caller's wait (timeout_s + 1 s)
        original()

    async def go() -> None:
        try:
            await migrate(db, "demo", STEPS)
            db._begin = slow_begin  # type: ignore[method-assign]
            with pytest.raises(StateUnavailable, match="timed out"):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO t (id, name) VALUES (1, 'never')")
            db._begin = original  # type: ignore[method-assign]
            # the next transaction of this connection works ...
            await db.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 2, "after")
            # ... and another process can write (the abandoned BEGIN holds no lock)
            other = sqlite3.connect(path, timeout=2.0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("INSERT INTO t (id, name) VALUES (3, 'other')")
                other.execute("COMMIT")
            finally:
                other.close()
            assert [r["name"] for r in await db.fetch("SELECT name FROM t ORDER BY id")] == [
                "after",
                "other",
            ]
        finally:
            await db.close()

    run(go())
    assert started
