"""Identity of a session: the client's own application_name, the principal for DBAs.

A target's ``application_name: client`` (the default): the client's value goes upstream verbatim,
so ParameterStatus, ``SHOW`` and ``pg_stat_activity`` answer what they would direct;
``veilgate(<principal>)`` goes upstream when the client gives none.  ``tagged``: upstream is
``veilgate(<principal>) <client's value>``; the client is still told its own value in
ParameterStatus (at startup, after RESET and after a rolled-back SET), exactly as a direct
connection reports it.  (BackendKeyData and cancel keys: tests/integration/test_cancel.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

APPS = ["my-agent", "", "é-agent"]


@pytest.fixture
def admin(pg_cluster: Any) -> Any:
    t = pw.superuser_target(pg_cluster)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def tagged_gw(gateway_factory: Callable[..., Any]) -> pw.Target:
    """A gateway whose target tags the upstream application_name with the principal."""

    def transform(cfg: Any) -> Any:
        targets = {n: replace(t, application_name="tagged") for n, t in cfg.targets.items()}
        return replace(cfg, targets=targets)

    return pw.gateway_target(gateway_factory(transform))


def _upstream_name(admin: Any, pid: int) -> str:
    row = admin.execute(
        "select application_name from pg_stat_activity where pid = %s", (pid,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def _direct_view(direct: pw.Target, admin: Any, extra: dict[str, str]) -> tuple[Any, ...]:
    """What a direct connection reports: ParameterStatus, SHOW, pg_stat_activity."""
    with psycopg.connect(direct.conninfo(**extra), autocommit=True) as ref:
        return (
            ref.info.parameter_status("application_name"),
            ref.execute("show application_name").fetchone(),
            _upstream_name(admin, ref.info.backend_pid),
        )


def _set_reset_rollback(conn: Any, want: str | None) -> None:
    # the client's own SET is the client's own value, everywhere
    conn.execute("set application_name = 'renamed'")
    assert conn.info.parameter_status("application_name") == "renamed"
    assert conn.execute("show application_name").fetchone() == ("renamed",)
    # RESET goes back to the startup value: the client's, as it asked for it
    conn.execute("reset application_name")
    assert conn.info.parameter_status("application_name") == want
    # a SET rolled back is reported again with the value before it
    with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
        conn.execute("set application_name = 'inside'")
        conn.execute("select 1/0")
    conn.execute("select 1")
    assert conn.info.parameter_status("application_name") == want


@pytest.mark.parametrize("app", APPS)
def test_psycopg_application_name_is_the_clients_own(
    gw: pw.Target, direct: pw.Target, admin: Any, app: str
) -> None:
    extra = {"application_name": app} if app else {}
    want_status, want_show, want_activity = _direct_view(direct, admin, extra)
    with psycopg.connect(gw.conninfo(**extra), autocommit=True) as conn:
        assert conn.info.parameter_status("application_name") == want_status
        upstream = _upstream_name(admin, conn.info.backend_pid)
        if app:
            # verbatim: SHOW and pg_stat_activity answer as they do direct
            assert conn.execute("show application_name").fetchone() == want_show
            assert upstream == want_activity
        else:
            # no name of its own: DBAs see the principal (SHOW answers the tag; documented)
            assert upstream == "veilgate(static:itest)"
        _set_reset_rollback(conn, want_status)


@pytest.mark.parametrize("app", APPS)
def test_psycopg_tagged_target_shows_the_principal_upstream(
    tagged_gw: pw.Target, direct: pw.Target, admin: Any, app: str
) -> None:
    extra = {"application_name": app} if app else {}
    want_status, _, want_activity = _direct_view(direct, admin, extra)
    with psycopg.connect(tagged_gw.conninfo(**extra), autocommit=True) as conn:
        assert conn.info.parameter_status("application_name") == want_status
        upstream = _upstream_name(admin, conn.info.backend_pid)
        want = f"veilgate(static:itest) {want_activity}" if app else "veilgate(static:itest)"
        assert upstream == want
        assert conn.execute("show application_name").fetchone() == (want,)
        _set_reset_rollback(conn, want_status)
        assert _upstream_name(admin, conn.info.backend_pid) == want


def test_asyncpg_application_name_is_the_clients_own(gw: pw.Target, admin: Any) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(
            **gw.asyncpg_kwargs(server_settings={"application_name": "async-agent"})
        )
        try:
            assert conn.get_settings().application_name == "async-agent"
            assert await conn.fetchval("show application_name") == "async-agent"
            pid = conn.get_server_pid()
            assert await asyncio.to_thread(_upstream_name, admin, pid) == "async-agent"
        finally:
            await conn.close()

    asyncio.run(run())


def test_asyncpg_tagged_sees_its_own_in_parameter_status(tagged_gw: pw.Target, admin: Any) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(
            **tagged_gw.asyncpg_kwargs(server_settings={"application_name": "async-agent"})
        )
        try:
            assert conn.get_settings().application_name == "async-agent"
            pid = conn.get_server_pid()
            upstream = await asyncio.to_thread(_upstream_name, admin, pid)
            assert upstream == "veilgate(static:itest) async-agent"
        finally:
            await conn.close()

    asyncio.run(run())


def _psql(target: pw.Target, sql: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = target.password
    out = subprocess.run(
        ["psql", target.conninfo(with_password=False), "-X", "-A", "-t", "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_psql_application_name(gw: pw.Target, tagged_gw: pw.Target) -> None:
    sql = (
        "select current_setting('application_name'), application_name "
        "from pg_stat_activity where pid = pg_backend_pid()"
    )
    assert _psql(gw, sql) == "psql|psql"
    assert _psql(tagged_gw, sql) == "veilgate(static:itest) psql|veilgate(static:itest) psql"


def test_raw_startup_parameter_status(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint(), params={"application_name": "raw-agent"}) as c:
        assert c.parameters["application_name"] == "raw-agent"
    with pw.connect(gw.endpoint()) as c:
        assert c.parameters["application_name"] == ""
