"""SQLSTATE fidelity: text the parser rejects gets the server's own error through the gateway.

A statement the policy cannot parse is not a policy decision: the client gets what PostgreSQL
answers for the same text (SQLSTATE, message, cursor position), in the simple and the extended
protocol, from psql, psycopg and asyncpg; 42501 stays reserved for what the policy denies.
Each case is run against the server directly and through a gateway with a statement policy.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Callable

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import PolicyGateway

pytestmark = pytest.mark.pg

POLICY = """\
version: 1
tiers:
  - name: readwrite
    match: {roles: [db.readwrite]}
    rules:
      - id: rw-all
        action: allow
        message: "reads, writes and DDL"
        classes: [read, write, ddl, transaction, session, prepare, utility]
      - id: rw-no-drop
        action: deny
        message: "DROP is not allowed through the gateway"
        constructs: [drop]
"""

BAD_SQL = [
    "selec 1",
    "SELECT 1 FROM",
    "SELECT 'abc",
    "SELECT é, ) x",
    "select 1 fetch first 1 rows with ties",
    "prepare p as drop table orders",
    "create table t (a int) with oids",
    "SELECT $1 + FROM x",
    "select 1 /* unterminated comment",
    "select $$dollar",
]
"""Texts the server's parser refuses (one per line of the grammar's error paths: scanner,
grammar, end of input, multibyte text before the error, a parameter reference)."""


@pytest.fixture
def gwp(policy_gateway: Callable[..., PolicyGateway]) -> pw.Target:
    return policy_gateway(POLICY, "db.readwrite").target


Answer = tuple[str | None, str | None, str | None]


def _psycopg(t: pw.Target, sql: str, simple: bool) -> Answer:
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
        with pytest.raises(psycopg.Error) as info:
            cur.execute(sql)
        d = info.value.diag
        return d.sqlstate, d.message_primary, d.statement_position


async def _asyncpg(t: pw.Target, sql: str, simple: bool) -> Answer:
    conn = await asyncpg.connect(**t.asyncpg_kwargs())
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            if simple:
                await conn.execute(sql)
            else:
                await conn.fetch(sql)
        e = info.value
        pos = getattr(e, "position", None)
        return e.sqlstate, e.message, None if pos is None else str(pos)
    finally:
        await conn.close()


def _raw(t: pw.Target, sql: str, simple: bool) -> tuple[Answer, str]:
    c = pw.connect(t.endpoint())
    try:
        c.send(pw.query(sql) if simple else pw.parse("s1", sql) + pw.sync())
        msgs = c.recv_until_ready()
        err = pw.first_error(msgs)
        assert err is not None, pw.frames(msgs)
        # the session goes on, its transaction state the server's
        assert c.scalar("select 41 + 1") == "42"
        return (err.get("C"), err.get("M"), err.get("P")), pw.frames(msgs)
    finally:
        c.close()


@pytest.mark.parametrize("sql", BAD_SQL)
@pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
def test_psycopg_gets_the_servers_parse_error(
    gwp: pw.Target, direct: pw.Target, sql: str, simple: bool
) -> None:
    want = _psycopg(direct, sql, simple)
    assert want[0] != "42501"
    assert _psycopg(gwp, sql, simple) == want


@pytest.mark.parametrize("sql", BAD_SQL)
@pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
def test_asyncpg_gets_the_servers_parse_error(
    gwp: pw.Target, direct: pw.Target, sql: str, simple: bool
) -> None:
    want = asyncio.run(_asyncpg(direct, sql, simple))
    assert want[0] != "42501"
    assert asyncio.run(_asyncpg(gwp, sql, simple)) == want


@pytest.mark.parametrize("sql", BAD_SQL)
@pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
def test_raw_protocol_gets_the_servers_parse_error(
    gwp: pw.Target, direct: pw.Target, sql: str, simple: bool
) -> None:
    got, frames = _raw(gwp, sql, simple)
    assert frames == "EZ"
    assert got == _psycopg(direct, sql, simple)


def _psql(t: pw.Target, sql: str) -> str:
    res = subprocess.run(
        ["psql", t.conninfo(with_password=False), "-X", "-v", "VERBOSITY=verbose", "-c", sql],
        env=t.psql_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1, res
    # the LOCATION line names the server's source file and line: equal too
    return res.stderr


@pytest.mark.parametrize("sql", ["selec 1", "SELECT é, ) x", "select 1;\nselect 2 from where"])
def test_psql_prints_the_servers_error(gwp: pw.Target, direct: pw.Target, sql: str) -> None:
    assert _psql(gwp, sql) == _psql(direct, sql)


def test_unicode_escapes_with_standard_conforming_strings_off(
    gwp: pw.Target, direct: pw.Target
) -> None:
    """The server refuses U& strings when standard_conforming_strings is off (0A000, its
    scanner): the policy cannot parse them either, and the client gets the server's answer."""

    def run(t: pw.Target) -> Answer:
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            conn.execute("set standard_conforming_strings = off")
            with pytest.raises(psycopg.Error) as info:
                psycopg.ClientCursor(conn).execute("select U&'\\0041'")
            d = info.value.diag
            return d.sqlstate, d.message_primary, d.statement_position

    want = run(direct)
    assert want[0] == "0A000"
    assert run(gwp) == want


def test_parse_error_inside_a_transaction_fails_it(gwp: pw.Target) -> None:
    """A parse error inside BEGIN fails the server's transaction as it would directly: the
    COMMIT that follows rolls back (nothing before the error is kept)."""
    name = "vg_fid_" + secrets.token_hex(4)
    with psycopg.connect(gwp.conninfo(), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int)")
        conn.execute("begin")
        conn.execute(f"insert into {name} values (1)")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec 1")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        cur = conn.execute("commit")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.execute(f"select count(*) from {name}").fetchone() == (0,)


def test_pipeline_after_a_parse_error_skips_to_sync(gwp: pw.Target) -> None:
    """Extended protocol: the Parse that fails, then Bind / Execute of it skipped by the server
    up to Sync, one ReadyForQuery; the next segment runs."""
    c = pw.connect(gwp.endpoint())
    try:
        c.send(
            pw.parse("", "selec 1")
            + pw.bind("", "")
            + pw.execute("")
            + pw.sync()
            + pw.parse("", "select 7")
            + pw.bind("", "")
            + pw.execute("")
            + pw.sync()
        )
        first = c.recv_until_ready()
        assert pw.frames(first) == "EZ"
        err = pw.first_error(first)
        assert err is not None and err["C"] == "42601" and err["P"] == "1"
        second = c.recv_until_ready()
        assert pw.frames(second) == "12DCZ"
    finally:
        c.close()


def test_policy_denials_keep_42501(gwp: pw.Target) -> None:
    with psycopg.connect(gwp.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("drop table if exists vg_fid_nothing")
        assert "rule rw-no-drop" in (info.value.diag.message_detail or "")


@pytest.mark.parametrize(
    "sql", ["select 1", "select $1::int, $2::text", "select '$1'", "begin", "select 1; select 2"]
)
def test_parse_probe_never_stores_or_runs_text_the_server_can_parse(
    direct: pw.Target, sql: str
) -> None:
    """The probe's contract, checked on the server itself: should the server parse text the
    policy's parser could not (a newer grammar), the probe still fails after parse analysis,
    with an error the gateway recognises, and stores nothing."""
    import struct

    from veilgate.gateway import enforce

    probe = enforce.parse_probe(b"", sql.encode())
    assert probe is not None
    # the probe's parameter types, as psycopg's low-level prepare() sends them
    body = probe[5:]
    text_end = body.index(b"\0", 1)
    (k,) = struct.unpack_from("!H", body, text_end + 1)
    with psycopg.connect(direct.conninfo(), autocommit=True) as conn:
        res = conn.pgconn.prepare(b"", sql.encode(), [0] * k)
        assert res.status == psycopg.pq.ExecStatus.FATAL_ERROR
        fields = {
            chr(code): (res.error_field(code) or b"").decode()
            for code in (ord("C"), ord("M"), ord("F"), ord("R"))
        }
        assert enforce._probe_passed_parser(fields), fields
        assert not enforce._raw_parser_error(fields)
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        # nor is there an unnamed statement to bind
        res = conn.pgconn.exec_prepared(b"", [])
        assert res.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert res.error_field(ord("C")) == b"26000"
