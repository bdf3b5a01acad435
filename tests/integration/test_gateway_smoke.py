"""Smoke: psql, psycopg and asyncpg get through the gateway; a bad token gets Postgres's 28P01."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable

import asyncpg
import psycopg
import pytest
from tests.integration.conftest import GatewayHandle

pytestmark = pytest.mark.pg


def _psql(
    gw: GatewayHandle, sql: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password if password is not None else gw.token
    dsn = gw.dsn().replace(f"password='{gw.token}' ", "")
    return subprocess.run(
        ["psql", dsn, "-X", "-A", "-t", "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_psql_select_1(gateway: GatewayHandle) -> None:
    out = _psql(gateway, "select 1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_psql_multi_row_and_identity(gateway: GatewayHandle) -> None:
    out = _psql(gateway, "select count(*), sum(g) from generate_series(1, 50000) g")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "50000|1250025000"
    out = _psql(gateway, "select current_user, current_setting('application_name')")
    # upstream: psql's own application_name, verbatim (the target's default, application_name:
    # client; tests/integration/test_session_identity.py has the tagged form)
    assert out.stdout.strip() == "veilgate_app|psql"


def test_psql_bad_token(gateway: GatewayHandle) -> None:
    out = _psql(gateway, "select 1", password="not-the-token")
    assert out.returncode != 0
    assert f'FATAL:  password authentication failed for user "{gateway.user}"' in out.stderr


def test_psycopg_queries(gateway: GatewayHandle) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        rows = conn.execute("select g, repeat('x', g) from generate_series(1, 2000) g").fetchall()
        assert len(rows) == 2000 and rows[-1] == (2000, "x" * 2000)
        cur = conn.execute("select %s::int + %s::int", (40, 2), prepare=True)
        assert cur.fetchone() == (42,)
        cur = conn.execute("select %s::int + %s::int", (1, 2), prepare=True)
        assert cur.fetchone() == (3,)
        assert conn.info.backend_pid > 0


def test_psycopg_bad_token_28p01(gateway: GatewayHandle) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gateway.dsn(password="wrong"))
    assert f'password authentication failed for user "{gateway.user}"' in str(ei.value)


@pytest.mark.asyncio
async def test_asyncpg_queries(gateway: GatewayHandle) -> None:
    conn = await asyncpg.connect(**gateway.asyncpg_kwargs())
    try:
        assert await conn.fetchval("select 1") == 1
        rows = await conn.fetch("select g from generate_series(1, 5000) g")
        assert [r[0] for r in rows] == list(range(1, 5001))
        stmt = await conn.prepare("select $1::int * 2")
        assert await stmt.fetchval(21) == 42
        assert await stmt.fetchval(50) == 100
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncpg_bad_token(gateway: GatewayHandle) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as ei:
        await asyncpg.connect(**gateway.asyncpg_kwargs(password="wrong"))
    assert str(ei.value) == f'password authentication failed for user "{gateway.user}"'


def test_drain_ends_idle_sessions_and_busy_ones_after_their_statement(
    gateway_factory: Callable[..., GatewayHandle],
) -> None:
    gw = gateway_factory()
    idle = psycopg.connect(gw.dsn(), autocommit=True)
    busy = psycopg.connect(gw.dsn(), autocommit=True)
    assert gw.session_count() == 2
    result: dict[str, object] = {}

    def run() -> None:
        result["row"] = busy.execute("select pg_sleep(0.5), 7").fetchone()

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.2)
    gw.drain(10)
    worker.join()
    assert result["row"] == ("", 7)
    for conn in (idle, busy):
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("select 1")
        conn.close()
    assert gw.session_count() == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(connect_timeout=3))


def test_stdlib_asyncio_loop_relays_too(gateway_factory: Callable[..., GatewayHandle]) -> None:
    gw = gateway_factory(use_uvloop=False)
    with psycopg.connect(gw.dsn()) as conn:
        rows = conn.execute(
            "select g, repeat('y', 300) from generate_series(1, 20000) g"
        ).fetchall()
        assert len(rows) == 20000 and rows[-1][0] == 20000
