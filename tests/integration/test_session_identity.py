"""Identity of a session: the client's own application_name, the principal upstream.

The client sees the application_name it asked for (ParameterStatus at startup, after RESET and
after a rolled-back SET), exactly as a direct connection reports it; DBAs see the principal's
tag followed by the client's name in pg_stat_activity.  (BackendKeyData and cancel keys:
tests/integration/test_cancel.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture
def admin(pg_cluster: Any) -> Any:
    t = pw.superuser_target(pg_cluster)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        yield conn


def _upstream_name(admin: Any, pid: int) -> str:
    row = admin.execute(
        "select application_name from pg_stat_activity where pid = %s", (pid,)
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("app", ["my-agent", "", "é-agent"])
def test_psycopg_sees_its_own_application_name(
    gw: pw.Target, direct: pw.Target, admin: Any, app: str
) -> None:
    extra = {"application_name": app} if app else {}
    with psycopg.connect(direct.conninfo(**extra), autocommit=True) as ref:
        want = ref.info.parameter_status("application_name")
    with psycopg.connect(gw.conninfo(**extra), autocommit=True) as conn:
        assert conn.info.parameter_status("application_name") == want
        upstream = _upstream_name(admin, conn.info.backend_pid)
        assert upstream.startswith("veilgate(static:itest)"), upstream
        if app == "my-agent":
            assert upstream == "veilgate(static:itest) my-agent"
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
        assert _upstream_name(admin, conn.info.backend_pid).startswith("veilgate(static:itest)")


def test_asyncpg_sees_its_own_application_name(gw: pw.Target) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(
            **gw.asyncpg_kwargs(server_settings={"application_name": "async-agent"})
        )
        try:
            assert conn.get_settings().application_name == "async-agent"
        finally:
            await conn.close()

    asyncio.run(run())


def test_raw_startup_parameter_status(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint(), params={"application_name": "raw-agent"}) as c:
        assert c.parameters["application_name"] == "raw-agent"
    with pw.connect(gw.endpoint()) as c:
        assert c.parameters["application_name"] == ""
