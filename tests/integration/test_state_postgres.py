"""The PostgreSQL state backend against the suite's real cluster (TLS + SCRAM): migrations under
concurrency, NOTIFY between two stores (two gateways), a lost LISTEN connection, a server that is
down (StateUnavailable, quickly)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.integration import state_fixtures
from tests.integration.state_fixtures import STATE_DSN_ENV, StatePg

from veilgate.config_model import StateBackend, StateConfig
from veilgate.state import Migration, StateUnavailable, migrate, open_state, schema_versions
from veilgate.state.postgres import PostgresDB

pytestmark = pytest.mark.pg
state_pg = state_fixtures.state_pg

STEPS = [
    Migration(1, ("CREATE TABLE pt (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",)),
    Migration(2, ("ALTER TABLE pt ADD COLUMN at DOUBLE PRECISION",)),
]


def test_open_state_reads_the_dsn_from_the_environment(state_pg: StatePg) -> None:
    db = open_state(StateConfig(backend=StateBackend.POSTGRES, dsn_env=STATE_DSN_ENV))
    assert isinstance(db, PostgresDB)
    assert "vgstate_" in db.describe() and "veilgate_state" not in db.describe()  # no user
    with pytest.raises(StateUnavailable, match="no PostgreSQL DSN"):
        open_state(StateConfig(backend=StateBackend.POSTGRES, dsn_env="VEILGATE_TEST_UNSET_X"))


def test_concurrent_migrations_apply_once_and_notify_crosses_stores(state_pg: StatePg) -> None:
    async def go() -> None:
        a, b = PostgresDB(state_pg.dsn), PostgresDB(state_pg.dsn)
        got: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        try:
            versions = await asyncio.gather(
                migrate(a, "pgdemo", STEPS), migrate(b, "pgdemo", STEPS)
            )
            assert versions == [2, 2]
            assert (await schema_versions(a))["pgdemo"] == 2
            await a.listen("pgchan", lambda p: got.put_nowait(("a", p)))
            await b.listen("pgchan", lambda p: got.put_nowait(("b", p)))
            assert await a.wait_listening(10) and await b.wait_listening(10)
            with pytest.raises(RuntimeError):
                async with a.transaction() as tx:
                    await tx.execute("INSERT INTO pt (id, name) VALUES ($1, $2)", 1, "no")
                    tx.notify("pgchan", "rolled-back")
                    raise RuntimeError
            async with b.transaction() as tx:
                n = await tx.execute(
                    "INSERT INTO pt (id, name, at) VALUES ($1, $2, $3)", 2, "y", 1.5
                )
                assert n == 1
                tx.notify("pgchan", "r2")
            seen = {await asyncio.wait_for(got.get(), 10) for _ in range(2)}
            assert seen == {("a", "r2"), ("b", "r2")}
            assert await a.fetch("SELECT id, name, at FROM pt") == [
                {"id": 2, "name": "y", "at": 1.5}
            ]
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_lost_listen_connection_is_restored_and_resyncs(state_pg: StatePg) -> None:
    async def go() -> None:
        db = PostgresDB(state_pg.dsn)
        got: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            await migrate(db, "pgdemo", STEPS)
            await db.listen("pgchan2", got.put_nowait)
            assert await db.wait_listening(10)
            await asyncio.to_thread(state_pg.terminate_backends)
            # the listener comes back and tells its callbacks to re-read (None)
            assert await asyncio.wait_for(got.get(), 20) is None
            assert await db.wait_listening(10)
            async with db.transaction() as tx:
                tx.notify("pgchan2", "after")
            assert await asyncio.wait_for(got.get(), 10) == "after"
        finally:
            await db.close()

    asyncio.run(go())


def test_server_down_is_unavailable_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed

    async def go() -> None:
        db = PostgresDB(f"postgresql://u:p@127.0.0.1:{port}/x", timeout_s=2.0)
        try:
            with pytest.raises(StateUnavailable) as info:
                await db.fetch("SELECT 1")
            assert "127.0.0.1" in str(info.value) and ":p@" not in str(info.value)
        finally:
            await db.close()

    asyncio.run(asyncio.wait_for(go(), 20))
