"""The server ends a session while a result waits for its masking plan.

A masked result is held at its RowDescription while the gateway plans it (a catalog lookup on
its side connection).  When the server sends a FATAL and closes the connection in that window
(``pg_terminate_backend``, an administrator shutdown, ``idle_session_timeout``...), the client
gets what the server sent, in order: the RowDescription, the rows before the error (masked),
then the FATAL itself, and the session ends cleanly, as it would direct.  Nothing is lost to
the race between the plan and the connection's end.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.masking_setup import start_gateway

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]


@pytest.fixture
def target(gateway_factory: Factory, tmp_path: Path) -> pw.Target:
    return start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.masked").target


def _fresh_table(pg_cluster: Any) -> str:
    """A table no plan was cached for (its result needs a catalog lookup)."""
    name = "vg_end_" + secrets.token_hex(4)
    pg_cluster.execute(
        f"create table {name} (id int, email text); "
        f"insert into {name} values (1, 'ann@example.org'), (2, 'bo@example.org'), "
        "(3, 'cy@example.org'); "
        f"grant select on {name} to {pg_cluster.gw_role}",
        pg_cluster.app_db,
    )
    return name


# every row, then the backend ends itself (at the last row: the rows before it come first)
SUICIDE = (
    "select id, email, case when id = 3 then pg_terminate_backend(pg_backend_pid()) end as t "
    "from {t} order by id"
)


# (more pipelined queries than the server reads before it exits make its kernel reset the
# connection, which discards the FATAL on the way to any client, direct ones too)
@pytest.mark.parametrize("pipelined", [0, 1], ids=["alone", "one-more"])
def test_fatal_during_a_plan_reaches_the_client_in_order(
    target: pw.Target, pg_cluster: Any, pipelined: int
) -> None:
    """Pipelined queries make the gateway write to the server while the plan holds the
    result: the server is gone by then, so the write fails and the connection is lost in
    the middle of the hold."""
    t = _fresh_table(pg_cluster)
    with pw.connect(target.endpoint()) as c:
        c.send(pw.query(SUICIDE.format(t=t)) + pw.query("select 1") * pipelined)
        msgs = c.recv_all_until_close(timeout=30)
    tags = "".join(m.tag for m in msgs)
    assert tags.startswith("T") and "E" in tags, tags
    err = pw.error_fields(msgs[tags.index("E")].body)
    assert (err["S"], err["C"]) == ("FATAL", "57P01"), err
    rows = [pw.data_row(m.body) for m in msgs if m.tag == "D"]
    # the rows before the error (the backend sends its own row before it sees the signal),
    # masked (a column rule on "email")
    assert [r[0] for r in rows] == [b"1", b"2", b"3"][: len(rows)]
    assert all(r[1] == b"<EMAIL>" for r in rows), rows
    assert tags.index("E") > max((i for i, ch in enumerate(tags) if ch == "D"), default=0)
    assert tags.count("E") == 1 and "Z" not in tags[tags.index("E") :]


def test_psycopg_sees_the_admin_shutdown(target: pw.Target, pg_cluster: Any) -> None:
    t = _fresh_table(pg_cluster)
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute(SUICIDE.format(t=t))
        assert conn.closed


def test_asyncpg_sees_the_server_message(target: pw.Target, pg_cluster: Any) -> None:
    t = _fresh_table(pg_cluster)

    async def run() -> None:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())
        try:
            # asyncpg reports a server that hangs up mid-statement as the connection's loss,
            # with the server's message (as it does direct)
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError) as ei:
                await conn.fetch(SUICIDE.format(t=t))
            assert "terminating connection due to administrator command" in str(ei.value)
            assert conn.is_closed()
        finally:
            await conn.close()

    asyncio.run(run())
