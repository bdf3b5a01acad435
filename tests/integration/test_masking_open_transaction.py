"""Never end a session over a plan: objects of the client's own open transaction.

Promise: the gateway's catalog lookups (on its side connection) never wait on locks the client's
own session holds, and tables, views and types the side connection cannot see yet (created in
the client's uncommitted transaction) are treated as unknown lineage under the policy (masked
when the statement reads masked columns, the value never passes raw), with a NoticeResponse
saying so: the session goes on.  Fail closed means "mask", not "disconnect".
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.masking_setup import SSN, leaked, make_table, start_gateway

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]


@pytest.fixture
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def target(gateway_factory: Factory, tmp_path: Path) -> pw.Target:
    return start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.masked").target


def _name() -> str:
    return "vg_tx_" + secrets.token_hex(4)


def _notices(msgs: list[pw.Msg]) -> list[dict[str, str]]:
    return [pw.error_fields(m.body) for m in msgs if m.tag == "N"]


def _rows(msgs: list[pw.Msg]) -> list[list[bytes | None]]:
    return [pw.data_row(m.body) for m in msgs if m.tag == "D"]


@pytest.mark.parametrize(
    ("create", "select"),
    [
        ("create type {n} as (a int, b text)", "select ssn, row(id, 'x')::{n} as v from {t}"),
        ("create type {n} as (a int, b text)", "select ssn, array[row(id, 'x')::{n}] from {t}"),
        ("create type {n} as enum ('a', 'b')", "select ssn, 'a'::{n} as v from {t}"),
        ("create domain {n} as int", "select ssn, id::{n} as v from {t}"),
        ("create view {n} as select id, ssn from {t}", "select * from {n}"),
    ],
    ids=["composite", "array", "enum", "domain", "view"],
)
def test_objects_of_the_open_transaction_are_masked_not_fatal(
    target: pw.Target, table: str, create: str, select: str
) -> None:
    n = _name()
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        assert pw.first_error(c.simple(create.format(n=n, t=table))) is None
        msgs = c.simple(select.format(n=n, t=table))
        assert pw.first_error(msgs) is None, msgs
        assert msgs[-1].tag == "Z"
        rows = _rows(msgs)
        assert len(rows) == 2
        body = b"".join(v for r in rows for v in r if v is not None)
        assert not leaked(body), rows
        # the session goes on, in its transaction
        assert c.scalar("select 40 + 2") == "42"
        c.simple("rollback")


def test_a_table_of_the_open_transaction_is_masked_by_its_rules(
    target: pw.Target, table: str
) -> None:
    """A table created in the open transaction: its columns are known from the session's own
    CREATE, so the rules that match them apply before it is committed (``vg_mask_*.ssn``).
    Schema-qualified: the schema of an unqualified CREATE is the session's search_path's."""
    n = "vg_mask_tx_" + secrets.token_hex(4)
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        assert pw.first_error(c.simple(f"create table public.{n} (id int, ssn text)")) is None
        c.simple(f"insert into {n} values (1, '{SSN}')")
        msgs = c.simple(f"select id, ssn from {n}")
        assert pw.first_error(msgs) is None, msgs
        rows = _rows(msgs)
        assert rows and rows[0][0] == b"1" and rows[0][1] != SSN.encode(), rows
        assert not leaked(b"".join(v for r in rows for v in r if v is not None))
        assert c.scalar("select 40 + 2") == "42"
        c.simple("rollback")


def test_the_client_is_told_why(target: pw.Target, table: str) -> None:
    n = _name()
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        c.simple(f"create view {n} as select id, ssn from {table}")
        msgs = c.simple(f"select * from {n}")
        notes = _notices(msgs)
        assert notes and notes[0]["C"] == "01000", msgs
        assert "cannot look up" in notes[0]["M"]
        # the notice comes before the result it is about
        assert pw.frames(msgs).index("N") < pw.frames(msgs).index("T")
        c.simple("commit")
        # committed: visible to the gateway's catalog, no notice any more
        msgs = c.simple(f"select * from {n}")
        assert not _notices(msgs)
        assert not leaked(b"".join(v for r in _rows(msgs) for v in r if v is not None))
        c.simple(f"drop view {n}")


def test_psycopg_notice_and_result(target: pw.Target, table: str) -> None:
    n = _name()
    notices: list[str] = []
    with psycopg.connect(target.conninfo()) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(f"create type {n} as (a int, b text)")
        rows = conn.execute(f"select ssn, row(id, 'x')::{n} from {table} order by id").fetchall()
        assert len(rows) == 2 and not leaked(repr(rows))
        assert any("cannot look up" in m for m in notices), notices
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)


def test_asyncpg_binary_result_of_a_new_type(target: pw.Target, table: str) -> None:
    n = _name()

    async def run() -> None:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())
        try:
            async with conn.transaction():
                await conn.execute(f"create type {n} as (a int, b text)")
                rows = await conn.fetch(f"select ssn, row(id, 'x')::{n} as v from {table}")
                assert len(rows) == 2 and not leaked(repr([tuple(r) for r in rows]))
                assert {r["v"]["a"] for r in rows if r["v"] is not None} <= {1, 2}
            assert await conn.fetchval("select 42") == 42
        finally:
            await conn.close()

    asyncio.run(run())


def test_catalog_lookup_never_waits_on_the_clients_own_lock(target: pw.Target, table: str) -> None:
    """The client holds an ACCESS EXCLUSIVE lock in its open transaction; describing its COPY
    on the side connection would wait for it: the lookup gives up at once and the COPY is
    refused (0A000) before it runs, well before any timeout; the session goes on."""
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        c.simple(f"lock table {table} in access exclusive mode")
        t0 = time.monotonic()
        msgs = c.simple(f"copy (select id, ssn from {table}) to stdout")
        took = time.monotonic() - t0
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "0A000", msgs
        assert took < 5, took
        assert msgs[-1].body == b"E"  # the transaction failed, as for any error
        c.simple("rollback")
        # a select under the same lock is planned from facts that take no lock
        c.simple("begin")
        c.simple(f"lock table {table} in access exclusive mode")
        rows = _rows(c.simple(f"select ssn from {table} order by id"))
        assert len(rows) == 2 and not leaked(b"".join(r[0] or b"" for r in rows))
        c.simple("rollback")


def test_a_gap_in_planning_nulls_the_result_and_the_session_goes_on(
    target: pw.Target, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: when a result's plan cannot be made although the catalog answered (a gap in
    the analysis), every column of that result is NULL -- no value passes -- and the session
    is not ended (no XX000): the next statement works."""
    from veilgate.masking.planner import SessionMasking

    def broken(self: Any, *args: Any, **kw: Any) -> Any:
        raise KeyError("a parse tree the resolver has no rule for")

    monkeypatch.setattr(SessionMasking, "decide", broken)
    monkeypatch.setattr(SessionMasking, "_decide_fetching", broken)
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        rows = conn.execute(f"select id, ssn from {table} order by id").fetchall()
        assert rows == [(None, None), (None, None)], rows
        with conn.cursor(binary=True) as cur:
            assert cur.execute(f"select ssn from {table}").fetchall() == [(None,), (None,)]
        monkeypatch.undo()
        assert conn.execute("select 40 + 2").fetchone() == (42,)

    async def run() -> None:
        monkeypatch.setattr(SessionMasking, "decide", broken)
        monkeypatch.setattr(SessionMasking, "_decide_fetching", broken)
        conn = await asyncpg.connect(**target.asyncpg_kwargs())
        try:
            rows = await conn.fetch(f"select ssn, email from {table}")
            assert [tuple(r) for r in rows] == [(None, None), (None, None)]
            monkeypatch.undo()
            assert await conn.fetchval("select 42") == 42
        finally:
            await conn.close()

    asyncio.run(run())
