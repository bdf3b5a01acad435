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
    on the side connection would wait for it: the lookup gives up at once, well before any
    timeout, and the COPY runs with its columns planned from the server's CopyOutResponse and
    the statement's lineage (the masked column masked, the client told why); the session goes
    on in its transaction."""
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        c.simple(f"lock table {table} in access exclusive mode")
        t0 = time.monotonic()
        msgs = c.simple(f"copy (select id, ssn from {table} order by id) to stdout")
        took = time.monotonic() - t0
        assert pw.first_error(msgs) is None, msgs
        lines = _copy_lines(msgs)
        assert [ln.split(b"\t")[0] for ln in lines] == [b"1", b"2"], lines
        assert not leaked(b"".join(lines)), lines
        assert any("cannot look up" in n["M"] for n in _notices(msgs)), msgs
        assert took < 5, took
        assert msgs[-1].body == b"T"
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


def _copy_lines(msgs: list[pw.Msg]) -> list[bytes]:
    return [m.body for m in msgs if m.tag == "d"]


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ("", b"1\t\\N\tplain\n"),
        ("with (format csv)", b"1,,plain\n"),
    ],
    ids=["text", "csv"],
)
def test_copy_of_a_table_of_the_open_transaction(
    target: pw.Target, options: str, line: bytes
) -> None:
    """``COPY t TO STDOUT`` of a table created in the client's open transaction: the gateway's
    side connection cannot describe it, so its columns come from the server's CopyOutResponse
    and their lineage from the session's own CREATE: the unmasked columns pass as they are, the
    one a rule masks (``vg_mask_*.ssn``, of a type the gateway cannot look up) is NULL, and the
    client is told why.  It used to be refused with 0A000."""
    n = "vg_mask_tx_" + secrets.token_hex(4)
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        created = c.simple(f"create table public.{n} (id int, ssn text, note text)")
        assert pw.first_error(created) is None
        c.simple(f"insert into {n} values (1, '{SSN}', 'plain')")
        msgs = c.simple(f"copy {n} to stdout {options}")
        assert pw.first_error(msgs) is None, msgs
        assert _copy_lines(msgs) == [line], msgs
        notes = _notices(msgs)
        assert notes and notes[0]["C"] == "01000" and "cannot look up" in notes[0]["M"], msgs
        assert pw.frames(msgs).index("N") < pw.frames(msgs).index("H")
        assert msgs[-1].body == b"T"  # still in the transaction
        assert c.scalar(f"select count(*) from {n}") == "1"
        c.simple("rollback")


def test_copy_query_of_a_view_of_the_open_transaction(target: pw.Target, table: str) -> None:
    """``COPY (SELECT ... FROM v)`` where ``v``, created in the open transaction, reads a masked
    column of a committed table: every value derived from it is masked, binary format too."""
    n = _name()
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        assert pw.first_error(c.simple(f"create view {n} as select id, ssn from {table}")) is None
        for options in ("", "with (format csv)", "with (format binary)"):
            msgs = c.simple(f"copy (select id, ssn from {n} order by id) to stdout {options}")
            assert pw.first_error(msgs) is None, msgs
            data = b"".join(_copy_lines(msgs))
            assert data and not leaked(data), data
        c.simple("rollback")


def test_copy_of_an_unknown_table_gets_the_servers_error(target: pw.Target) -> None:
    """A COPY the gateway cannot describe because the table does not exist at all: the
    server's own error (42P01), not a gateway refusal."""
    with pw.connect(target.endpoint()) as c:
        err = pw.first_error(c.simple("copy vg_no_such_table_x to stdout"))
        assert err is not None and err["C"] == "42P01", err
        assert c.scalar("select 40 + 2") == "42"


def test_copy_of_a_new_table_extended_protocol(target: pw.Target) -> None:
    """The same COPY through Parse / Bind / Execute (planned before the Execute runs)."""
    n = "vg_mask_tx_" + secrets.token_hex(4)
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        c.simple(f"create table public.{n} (id int, ssn text)")
        c.simple(f"insert into {n} values (7, '{SSN}')")
        c.send(pw.parse("", f"copy {n} to stdout") + pw.bind("", "") + pw.execute() + pw.sync())
        msgs = c.recv_until_ready()
        assert pw.first_error(msgs) is None, msgs
        assert _copy_lines(msgs) == [b"7\t\\N\n"], msgs
        assert msgs[-1].body == b"T"
        c.simple("rollback")


def test_psycopg_copy_of_a_new_table(target: pw.Target) -> None:
    n = "vg_mask_tx_" + secrets.token_hex(4)
    notices: list[str] = []
    with psycopg.connect(target.conninfo()) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(f"create table {n} (id int, ssn text, note text)")
        conn.execute(f"insert into {n} values (1, %s, 'plain'), (2, %s, 'other')", (SSN, SSN))
        with conn.cursor() as cur, cur.copy(f"copy {n} to stdout") as copy:
            rows = sorted(copy.rows())
        assert rows == [("1", None, "plain"), ("2", None, "other")], rows
        assert any("cannot look up" in m for m in notices), notices
        conn.rollback()


def test_a_literal_of_a_type_of_the_open_transaction_is_the_clients_value(
    target: pw.Target,
) -> None:
    """psycopg's ``test_literal_invalid_name``: a range type created in the open transaction
    and a literal of it (``'[a,z]'::"a-b"``): the type's input function makes the value from
    the literal alone, so it comes back as sent (it was NULL, of unknown origin)."""
    n = "vg a-b " + secrets.token_hex(3)
    with pw.connect(target.endpoint()) as c:
        c.simple("begin")
        assert pw.first_error(c.simple(f'create type "{n}" as range (subtype = text)')) is None
        msgs = c.simple(f"""select '[a,z]'::"{n}", null::"{n}", '{{"[a,z]"}}'::"{n}"[]""")
        assert pw.first_error(msgs) is None, msgs
        assert _rows(msgs) == [[b"[a,z]", None, b'{"[a,z]"}']], msgs
        c.simple("rollback")
