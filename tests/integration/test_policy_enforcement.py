"""Statement policy through the gateway: denials as 42501, the server's transaction and pipeline
semantics kept (marker statements), reloads, FunctionCall, the audit log."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import json
import secrets
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import PolicyGateway, wait_policy_generation

from veilgate import metrics

pytestmark = pytest.mark.pg

POLICY = """\
version: 1
tiers:
  - name: readonly
    match: {roles: [db.readonly]}
    rules:
      - id: ro-read
        action: allow
        message: "reads only"
        classes: [read]
      - id: ro-session
        action: allow
        message: "transaction control and session settings"
        classes: [transaction, session, prepare]
  - name: readwrite
    match: {roles: [db.readwrite]}
    rules:
      - id: rw-all
        action: allow
        message: "reads, writes and DDL"
        classes: [read, write, ddl, transaction, session, prepare, utility]
      - id: rw-no-drop
        action: deny
        message: "DROP and TRUNCATE are not allowed through the gateway"
        constructs: [drop, truncate]
      - id: rw-delete-all
        action: approve
        message: "DELETE without WHERE needs an approval"
        constructs: [delete_without_where]
"""

# the same, plus: the vg_secret_* tables are off limits
POLICY_V2 = POLICY.replace(
    """      - id: rw-no-drop
""",
    """      - id: rw-no-secrets
        action: deny
        message: "the secret tables are off limits"
        tables: ["public.vg_secret_*"]
      - id: rw-no-drop
""",
)


@pytest.fixture
def rw_gw(policy_gateway: Callable[..., PolicyGateway]) -> PolicyGateway:
    return policy_gateway(POLICY, "db.readwrite")


@pytest.fixture
def rw(rw_gw: PolicyGateway) -> pw.Target:
    return rw_gw.target


@pytest.fixture
def ro(policy_gateway: Callable[..., PolicyGateway]) -> pw.Target:
    return policy_gateway(POLICY, "db.readonly").target


@pytest.fixture
def policy_file(rw_gw: PolicyGateway) -> Path:
    return rw_gw.policy_file


@pytest.fixture
def audit_log(rw_gw: PolicyGateway) -> Path:
    return rw_gw.audit_log


@pytest.fixture
def table(rw: pw.Target) -> str:
    name = "vg_pol_" + secrets.token_hex(4)
    with psycopg.connect(rw.conninfo(), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int)")
    return name


def _count(t: pw.Target, table: str) -> int:
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
    assert row is not None
    return int(row[0])


def _psql(t: pw.Target, *commands: str) -> subprocess.CompletedProcess[str]:
    args = ["psql", t.conninfo(with_password=False), "-X", "-A", "-t", "-v", "VERBOSITY=verbose"]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(
        args, env=t.psql_env(), capture_output=True, text=True, timeout=60, check=False
    )


def _assert_denied(err: dict[str, str] | None, rule: str) -> None:
    assert err is not None
    assert err["C"] == "42501", err
    assert err["D"].startswith(f"rule {rule}"), err
    assert "H" in err
    assert not {"P", "W", "F", "L", "R"} & set(err), err
    assert "veilgate-denied" not in json.dumps(err)


# --- psql / simple Query ------------------------------------------------------------------------


def test_psql_drop_table_denied_and_table_stays(rw: pw.Target, table: str) -> None:
    res = _psql(rw, f"drop table {table}", "select 'still here'")
    assert "42501" in res.stderr, res.stderr
    assert "rule rw-no-drop" in res.stderr, res.stderr
    assert "veilgate-denied" not in res.stderr
    assert "still here" in res.stdout  # the same connection, after the denial
    assert _count(rw, table) == 0  # the table is still there


def test_multi_statement_query_with_denied_part_runs_nothing(rw: pw.Target, table: str) -> None:
    with pw.connect(rw.endpoint()) as c:
        msgs = c.simple(
            f"insert into {table} values (1); drop table {table}; insert into {table} values (2)"
        )
        _assert_denied(pw.first_error(msgs), "rw-no-drop")
        assert pw.frames(msgs) == "EZ"
        assert msgs[-1].body == b"I"
        assert c.scalar("select 42") == "42"
    assert _count(rw, table) == 0


def test_denial_inside_transaction_block_rolls_back(rw: pw.Target, table: str) -> None:
    with pw.connect(rw.endpoint()) as c:
        c.simple("begin")
        c.simple(f"insert into {table} values (1)")
        msgs = c.simple(f"truncate {table}")
        _assert_denied(pw.first_error(msgs), "rw-no-drop")
        assert msgs[-1].body == b"E"  # the server's transaction failed too
        # a later statement gets what Postgres says in a failed transaction
        err = pw.first_error(c.simple("select 1"))
        assert err is not None and err["C"] == "25P02", err
        # and so does a denied one: the transaction had already failed
        err = pw.first_error(c.simple(f"drop table {table}"))
        assert err is not None and err["C"] == "25P02", err
        msgs = c.simple("commit")
        assert [pw.command_tag(m.body) for m in msgs if m.tag == "C"] == ["ROLLBACK"]
        assert msgs[-1].body == b"I"
        assert c.scalar("select 7") == "7"
    assert _count(rw, table) == 0


def test_approve_is_held_for_approval(rw: pw.Target, table: str) -> None:
    # the approvals tests (test_approvals_*.py) cover the rest: here, the rule is honoured
    with pw.connect(rw.endpoint()) as c:
        err = pw.first_error(c.simple(f"delete from {table}"))
        assert err is not None and err["C"] == "42Z01", err
        assert err["D"].startswith("rule rw-delete-all"), err
        assert "veilgate approvals approve ap-" in err["H"], err
        assert c.scalar("select 1") == "1"


@pytest.mark.parametrize("how", ["startup", "set"])
def test_client_encoding_sjis_cannot_hide_a_statement(rw: pw.Target, table: str, how: str) -> None:
    # in SJIS 0x81 0x5C is one character: the backslash does not escape the quote, and the
    # DROP after it is a statement of its own (in UTF-8 it would sit inside the string)
    sql = b"select E'\x81\\'; drop table " + table.encode() + b"; --'"
    params = {"client_encoding": "SJIS"} if how == "startup" else None
    with pw.connect(rw.endpoint(), params) as c:
        if how == "set":
            c.simple("set client_encoding = 'SJIS'")
        c.send(pw.tagged(b"Q", sql + b"\0"))
        _assert_denied(pw.first_error(c.recv_until_ready()), "rw-no-drop")
        c.simple("set client_encoding = 'UTF8'")
        assert c.scalar("select 'ok'") == "ok"
    assert _count(rw, table) == 0


# --- extended protocol --------------------------------------------------------------------------


def _pipelines(t: pw.Target, table: str, failing: str) -> list[tuple[Any, ...]]:
    """Two psycopg pipelines with ``failing`` in the middle; the rows they leave."""
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as ei, conn.pipeline():
            conn.execute(f"insert into {table} values (%s)", [1])
            conn.execute(failing)
            conn.execute(f"insert into {table} values (%s)", [2])
        assert conn.execute("select 5").fetchone() == (5,)
        # a Sync per statement: the failing one alone fails
        with pytest.raises(psycopg.Error) as ej, conn.pipeline() as p:
            conn.execute(f"insert into {table} values (%s)", [3])
            p.sync()
            conn.execute(failing)
            p.sync()
            conn.execute(f"insert into {table} values (%s)", [4])
        assert conn.execute("select 6").fetchone() == (6,)
        assert type(ei.value) is type(ej.value)
        rows = conn.execute(f"select id from {table} order by id").fetchall()
        conn.execute(f"delete from {table} where id > 0")
    if isinstance(ei.value, psycopg.errors.InsufficientPrivilege):
        assert (ei.value.diag.message_detail or "").startswith("rule rw-no-drop")
    return rows


def test_psycopg_pipeline_denied_mid_pipeline(rw: pw.Target, table: str) -> None:
    """A denial mid-pipeline leaves what a server error there leaves."""
    denied = _pipelines(rw, table, f"drop table {table}")
    failed = _pipelines(rw, table, "select * from vg_no_such_table")
    assert denied == failed
    assert (1,) not in denied and (2,) not in denied  # one implicit transaction: rolled back


def test_raw_pipeline_one_ready_for_query_per_sync(rw: pw.Target, table: str) -> None:
    with pw.connect(rw.endpoint()) as c:
        c.send(
            pw.parse("", f"insert into {table} values (1)")
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
            + pw.parse("s1", f"drop table {table}")
            + pw.bind("", "s1")
            + pw.execute()
            + pw.sync()
            + pw.parse("", f"insert into {table} values (2)")
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready() + c.recv_until_ready() + c.recv_until_ready()
        assert pw.frames(msgs) == "12CZEZ12CZ", pw.frames(msgs)
        _assert_denied(pw.first_error(msgs), "rw-no-drop")
        assert c.scalar("select 1") == "1"
    assert _count(rw, table) == 2


def test_marker_skipped_after_an_earlier_error_then_next_denial_replaced(
    rw: pw.Target, table: str
) -> None:
    with pw.connect(rw.endpoint()) as c:
        c.send(
            pw.parse("", "select * from vg_no_such_table")  # a real error: skip to Sync
            + pw.parse("s1", f"drop table {table}")  # denied, skipped by the server
            + pw.sync()
            + pw.parse("s2", f"truncate {table}")  # denied: its error is the policy's
            + pw.sync()
            + pw.query(f"drop table {table}")
        )
        first = c.recv_until_ready()
        assert pw.frames(first) == "EZ"
        err = pw.first_error(first)
        assert err is not None and err["C"] == "42P01", err  # the server's own error
        second = c.recv_until_ready()
        assert pw.frames(second) == "EZ"
        _assert_denied(pw.first_error(second), "rw-no-drop")
        third = c.recv_until_ready()
        _assert_denied(pw.first_error(third), "rw-no-drop")
        assert c.scalar("select 3") == "3"
    assert _count(rw, table) == 0


def test_denials_on_the_stdlib_event_loop(
    policy_gateway: Callable[..., PolicyGateway], table: str
) -> None:
    t = policy_gateway(POLICY, "db.readwrite", use_uvloop=False).target
    with pw.connect(t.endpoint()) as c:
        _assert_denied(pw.first_error(c.simple(f"select 1; drop table {table}")), "rw-no-drop")
        c.send(pw.parse("s", f"truncate {table}") + pw.bind("", "s") + pw.execute() + pw.sync())
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "EZ"
        _assert_denied(pw.first_error(msgs), "rw-no-drop")
        assert c.scalar("select 1") == "1"


def test_asyncpg_prepared_statement_denied(ro: pw.Target, rw: pw.Target, table: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(**ro.asyncpg_kwargs())  # type: ignore[arg-type]
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as ei:
                await conn.prepare(f"insert into {table} values ($1)")
            assert (ei.value.detail or "").startswith("rule default-deny")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"delete from {table} where id = 1")
            assert await conn.fetchval(f"select count(*) from {table}") == 0
            assert await conn.fetchval("select $1::int + 1", 41) == 42
        finally:
            await conn.close()

    asyncio.run(run())


def test_psycopg_parameterized_write_denied_for_readonly(ro: pw.Target, table: str) -> None:
    with psycopg.connect(ro.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            conn.execute(f"insert into {table} values (%s)", [1])
        assert (ei.value.diag.message_detail or "").startswith("rule default-deny")
        assert conn.execute("select %s::int", [3]).fetchone() == (3,)


# --- FunctionCall -------------------------------------------------------------------------------


def test_function_call_denied(rw: pw.Target) -> None:
    with pw.connect(rw.endpoint()) as c:
        oid = int(c.scalar("select 'pg_backend_pid'::regproc::oid") or 0)
        c.send(pw.tagged(b"F", struct.pack("!IhhH", oid, 0, 0, 0)))
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "EZ"
        _assert_denied(pw.first_error(msgs), "default-deny")
        assert c.scalar("select 2") == "2"


# --- reload -------------------------------------------------------------------------------------


def test_statement_prepared_before_reload_judged_by_new_policy(
    rw: pw.Target, rw_gw: PolicyGateway, policy_file: Path
) -> None:
    handle = rw_gw.handle
    secret = "vg_secret_" + secrets.token_hex(4)
    with psycopg.connect(rw.conninfo(), autocommit=True) as conn:
        conn.execute(f"create table {secret} (id int)")
        conn.execute(f"insert into {secret} values (1)")

    async def run() -> None:
        conn = await asyncpg.connect(**rw.asyncpg_kwargs())  # type: ignore[arg-type]
        try:
            stmt = await conn.prepare(f"select count(*) from {secret} where id > $1")
            other = await conn.prepare("select $1::int * 2")
            assert await stmt.fetchval(0) == 1
            # picked up by the file watcher
            await asyncio.to_thread(policy_file.write_text, POLICY_V2)
            await asyncio.to_thread(wait_policy_generation, handle, 2)
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as ei:
                await stmt.fetchval(0)
            assert (ei.value.detail or "").startswith("rule rw-no-secrets")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # and at every later use
                await stmt.fetchval(0)
            assert await other.fetchval(21) == 42  # statements still allowed keep working
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    asyncio.run(run())
    # psycopg: a server-side prepared statement (prepare=True) of the denied table
    with psycopg.connect(rw.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select * from {secret}", prepare=True)
        assert conn.execute("select 1").fetchone() == (1,)


def test_broken_policy_on_reload_changes_nothing(
    rw: pw.Target, rw_gw: PolicyGateway, policy_file: Path, table: str
) -> None:
    handle = rw_gw.handle
    gateway = handle.thread.gateway
    assert gateway is not None and gateway.policy_engine is not None
    generation = gateway.policy_engine.generation

    async def reload() -> bool | None:
        return gateway.reload_policy()

    policy_file.write_text(POLICY.replace("action: deny", "action: permit"))
    assert handle.thread.call(reload()) is False
    time.sleep(1.5)  # the file watcher sees the change too, and refuses it as well
    assert gateway.policy_engine.generation == generation
    res = _psql(rw, f"drop table {table}", f"insert into {table} values (1)")
    assert "rule rw-no-drop" in res.stderr, res.stderr
    assert _count(rw, table) == 1


# --- audit and metrics --------------------------------------------------------------------------


def test_audit_log_has_decisions_and_no_parameters(
    rw: pw.Target, audit_log: Path, table: str
) -> None:
    value = "param-" + secrets.token_hex(8)

    async def run() -> None:
        conn = await asyncpg.connect(**rw.asyncpg_kwargs())  # type: ignore[arg-type]
        try:
            assert await conn.fetchval("select $1::text", value) == value
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"drop table {table}")
        finally:
            await conn.close()

    asyncio.run(run())
    events: list[dict[str, Any]] = [
        json.loads(line) for line in audit_log.read_text().splitlines() if line
    ]
    assert value not in audit_log.read_text()
    assert any(e["action"] == "allow" and e["sql"] == "select $1::text" for e in events)
    denied = [e for e in events if e["action"] == "deny"]
    assert denied and denied[-1]["rule_id"] == "rw-no-drop"
    assert denied[-1]["principal_label"] and denied[-1]["fingerprint"]
    assert 'veilgate_policy_decisions_total{action="deny"}' in metrics.render()
