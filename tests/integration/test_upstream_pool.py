"""Upstream connection reuse (``targets.<name>.pool``) through real clients: a client that
connects per task gets the idle server connection of the previous one (same backend pid, no new
upstream login) reset by ``DISCARD ALL``; its own application_name, ParameterStatus values and
BackendKeyData; cancel reaches the statement on the reused connection; a connection left in a
transaction or a failed state is closed, never reused; with the pool off nothing is reused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pgwire as pw
import psycopg
import pytest

from veilgate import metrics
from veilgate.config_model import GatewayConfig, PoolConfig


def _pooled(
    size: int = 2, idle_timeout_s: float = 60.0
) -> Callable[[GatewayConfig], GatewayConfig]:
    def transform(cfg: GatewayConfig) -> GatewayConfig:
        targets = {
            name: replace(t, pool=PoolConfig(size=size, idle_timeout_s=idle_timeout_s))
            for name, t in cfg.targets.items()
        }
        return replace(cfg, targets=targets)

    return transform


def _wait(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _idle(handle: Any) -> int:
    return int(handle.thread.gateway.upstream_pool.idle_count())


def _pid(conninfo: str, **kw: Any) -> int:
    with psycopg.connect(conninfo, **kw) as conn:
        return int(conn.execute("select pg_backend_pid()").fetchone()[0])


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_client_per_task_reuses_the_reset_connection(
    gateway_factory: Any, use_uvloop: bool
) -> None:
    handle = gateway_factory(_pooled(), use_uvloop=use_uvloop)
    gw = pw.gateway_target(handle)
    with psycopg.connect(gw.conninfo(application_name="first")) as a:
        pid = a.execute("select pg_backend_pid()").fetchone()[0]
        assert a.info.backend_pid == pid  # BackendKeyData carries the server's pid
        a.execute("set work_mem = '1234kB'")
        a.execute("prepare leftover as select 42")
        a.execute("create temp table scratch (x int)")
        a.execute("listen somewhere")
        a.execute("select pg_advisory_lock(4711)")
        a.commit()
    _wait(lambda: _idle(handle) == 1, "the connection was not kept")
    with psycopg.connect(gw.conninfo(application_name="second")) as b:
        assert b.info.backend_pid == pid
        row = b.execute(
            "select pg_backend_pid(), current_setting('work_mem'), "
            "(select count(*) from pg_prepared_statements), "
            "(select count(*) from pg_class where relname = 'scratch' and relpersistence = 't'), "
            "(select count(*) from pg_listening_channels()), "
            "(select count(*) from pg_locks where locktype = 'advisory' "
            " and pid = pg_backend_pid()), "
            "current_setting('application_name'), "
            "(select application_name from pg_stat_activity "
            " where pid = pg_backend_pid())"
        ).fetchone()
        assert row == (pid, "4MB", 0, 0, 0, 0, "second", "second")
        assert b.info.parameter_status("application_name") == "second"
        assert b.info.parameter_status("server_version")
        assert b.info.parameter_status("client_encoding") == "UTF8"
    # idle in the pool: no principal's or client's name lingers
    _wait(lambda: _idle(handle) == 1, "kept again")
    with psycopg.connect(gw.conninfo(application_name="third")) as c:
        assert (
            c.execute(
                "select count(*) from pg_stat_activity where application_name = 'veilgate-pool'"
            ).fetchone()[0]
            == 0
        )


def test_transaction_or_failed_state_is_never_reused(gateway_factory: Any) -> None:
    handle = gateway_factory(_pooled())
    gw = pw.gateway_target(handle)
    # a client that leaves inside a transaction block: its connection is closed
    with pw.connect(gw.endpoint()) as c:
        c.simple("begin")
        pid_in_tx = int(str(c.scalar("select pg_backend_pid()")))
        c.terminate()
    # a client in a failed transaction block
    with pw.connect(gw.endpoint()) as c:
        c.simple("begin")
        pid_failed = int(str(c.scalar("select pg_backend_pid()")))
        assert pw.first_error(c.simple("select 1/0")) is not None
        c.terminate()
    time.sleep(0.3)
    assert _idle(handle) == 0
    pids = {_pid(gw.conninfo()) for _ in range(2)}
    assert pid_in_tx not in pids and pid_failed not in pids


def test_cancel_reaches_the_reused_connection(gateway_factory: Any) -> None:
    handle = gateway_factory(_pooled())
    gw = pw.gateway_target(handle)
    first = _pid(gw.conninfo())
    _wait(lambda: _idle(handle) == 1, "the connection was not kept")
    with psycopg.connect(gw.conninfo()) as conn:
        assert conn.info.backend_pid == first
        out: dict[str, object] = {}

        def run() -> None:
            try:
                conn.execute("select pg_sleep(30)")
                out["r"] = "completed"
            except psycopg.Error as e:
                out["r"] = e

        th = threading.Thread(target=run)
        th.start()
        time.sleep(0.5)
        conn.cancel_safe(timeout=10)
        th.join(15)
        assert isinstance(out["r"], psycopg.errors.QueryCanceled)
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)


def test_pool_off_by_default_and_bounded(gateway_factory: Any, gateway: Any) -> None:
    gw = pw.gateway_target(gateway)
    assert _pid(gw.conninfo()) != _pid(gw.conninfo())
    assert _idle(gateway) == 0
    handle = gateway_factory(_pooled(size=1))
    gw1 = pw.gateway_target(handle)
    a = psycopg.connect(gw1.conninfo())
    b = psycopg.connect(gw1.conninfo())
    a.close()
    b.close()
    _wait(lambda: _idle(handle) == 1, "one kept")
    time.sleep(0.3)
    assert _idle(handle) == 1  # size 1: the second was closed


def test_idle_timeout_closes(gateway_factory: Any) -> None:
    handle = gateway_factory(_pooled(idle_timeout_s=0.3))
    gw = pw.gateway_target(handle)
    before = metrics.upstream_pool_total.get(outcome="closed")
    pid = _pid(gw.conninfo())
    _wait(lambda: _idle(handle) == 1, "kept")
    _wait(lambda: _idle(handle) == 0, "closed after the idle timeout")
    assert metrics.upstream_pool_total.get(outcome="closed") >= before + 1
    assert _pid(gw.conninfo()) != pid


@pytest.mark.parametrize("client", ["psql-like-raw", "asyncpg"])
def test_other_clients_reuse_too(gateway_factory: Any, client: str) -> None:
    handle = gateway_factory(_pooled())
    gw = pw.gateway_target(handle)
    if client == "asyncpg":
        import asyncio

        import asyncpg

        async def once() -> int:
            conn = await asyncpg.connect(**gw.asyncpg_kwargs())
            try:
                return int(await conn.fetchval("select pg_backend_pid()"))
            finally:
                await conn.close()

        p1 = asyncio.run(once())
        _wait(lambda: _idle(handle) == 1, "kept")
        assert asyncio.run(once()) == p1
    else:
        with pw.connect(gw.endpoint()) as c:
            p1 = int(str(c.scalar("select pg_backend_pid()")))
            c.terminate()
        _wait(lambda: _idle(handle) == 1, "kept")
        with pw.connect(gw.endpoint()) as c:
            assert int(str(c.scalar("select pg_backend_pid()"))) == p1


def test_masked_tier_reuses_and_still_masks(
    gateway_factory: Any, pg_cluster: Any, tmp_path: Any
) -> None:
    """A masked-tier session on a reused connection: the server state of the previous session is
    gone (its prepared statement), and masking, policy and the mirror start fresh."""
    from tests.integration.conftest import with_policy
    from tests.integration.masking_setup import POLICY_FILE, SSN, make_table

    table = make_table(pg_cluster)
    policy = with_policy(POLICY_FILE, tmp_path / "audit.jsonl", "db.masked")
    handle = gateway_factory(lambda cfg: _pooled()(policy(cfg)))
    gw = pw.gateway_target(handle)
    with psycopg.connect(gw.conninfo(), autocommit=True) as a:
        pid = a.execute("select pg_backend_pid()").fetchone()[0]
        a.execute(f"prepare mine as select ssn from {table} order by id")  # noqa: S608
        first = a.execute("execute mine").fetchall()
        assert SSN not in str(first)
    _wait(lambda: _idle(handle) == 1, "the masked session's connection was not kept")
    with psycopg.connect(gw.conninfo(), autocommit=True) as b:
        assert b.info.backend_pid == pid
        # the new session's mirror knows no "mine" (the policy refuses it), nor does the server
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            b.execute("execute mine")
        assert b.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        rows = b.execute(f"select ssn, email from {table} order by id").fetchall()  # noqa: S608
        assert rows and SSN not in str(rows)


def test_the_gauge_counts_idle_pooled_connections(gateway_factory: Any) -> None:
    handle = gateway_factory(_pooled())
    gw = pw.gateway_target(handle)
    gauge = metrics.upstream_connections_active
    before = gauge.get()
    _pid(gw.conninfo())
    _wait(lambda: _idle(handle) == 1, "kept")
    assert gauge.get() == before + 1  # idle in the pool, still open
    with psycopg.connect(gw.conninfo()):
        assert gauge.get() == before + 1  # taken by the session: counted once
    _wait(lambda: _idle(handle) == 1, "kept again")
    handle.thread.stop()
    assert gauge.get() == before


def test_a_reload_closes_what_the_old_configuration_made(gateway_factory: Any) -> None:
    from veilgate.gateway.server import server_ssl_context

    handle = gateway_factory(_pooled())
    gw = pw.gateway_target(handle)
    a, b = psycopg.connect(gw.conninfo()), psycopg.connect(gw.conninfo())
    old = {a.info.backend_pid, b.info.backend_pid}
    a.close()
    b.close()
    _wait(lambda: _idle(handle) == 2, "both kept")
    running = psycopg.connect(gw.conninfo(), autocommit=True)
    assert running.info.backend_pid in old
    assert _idle(handle) == 1
    gateway = handle.thread.gateway
    config = gateway.config

    async def reload() -> None:
        gateway.reconfigure(config, server_ssl_context(config), None)

    handle.thread.call(reload())
    assert _idle(handle) == 0  # the idle one was closed
    # the session that started before the reload goes on, but its connection is not kept
    assert running.execute("select 1").fetchone() == (1,)
    running.close()
    time.sleep(0.3)
    assert _idle(handle) == 0
    fresh = _pid(gw.conninfo())
    assert fresh not in old
    _wait(lambda: _idle(handle) == 1, "sessions of the new configuration are kept")
    assert _pid(gw.conninfo()) == fresh
