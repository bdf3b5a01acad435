"""Portals bound before a policy reload: their next Execute is judged by the new policy.

A protocol-level cursor (asyncpg's ``conn.cursor``) or a raw named portal bound inside a
transaction block before the reload is refused with the policy's 42501 when the new policy denies
its statement, and the transaction fails on the server (COMMIT rolls back); it keeps working when
the new policy allows it.  Executes are only looked at until the transaction ends."""

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
from tests.integration.conftest import GatewayHandle, PolicyGateway
from tests.integration.masking_setup import (
    POLICY_FILE,
    SECOND_SSN,
    leaked,
    make_table,
    start_gateway,
)

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
"""

# the same, plus: the vg_secret_* tables are off limits
POLICY_V2 = (
    POLICY
    + """      - id: rw-no-secrets
        action: deny
        message: "the secret tables are off limits"
        tables: ["public.vg_secret_*"]
"""
)

Factory = Callable[..., GatewayHandle]


@pytest.fixture
def started(policy_gateway: Callable[..., PolicyGateway]) -> PolicyGateway:
    return policy_gateway(POLICY, "db.readwrite")


@pytest.fixture
def policy_file(started: PolicyGateway) -> Path:
    return started.policy_file


@pytest.fixture
def gw(started: PolicyGateway) -> GatewayHandle:
    return started.handle


@pytest.fixture
def target(started: PolicyGateway) -> pw.Target:
    return started.target


@pytest.fixture
def tables(target: pw.Target) -> tuple[str, str]:
    """(an ordinary table, a secret table), each with rows 1, 2, 3."""
    plain = "vg_rp_" + secrets.token_hex(4)
    secret = "vg_secret_" + secrets.token_hex(4)
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        for t in (plain, secret):
            conn.execute(f"create table {t} (id int)")
            conn.execute(f"insert into {t} values (1), (2), (3)")
    return plain, secret


def _reload(gw: GatewayHandle, policy_file: Path, text: str) -> None:
    gateway = gw.thread.gateway
    assert gateway is not None

    async def reload() -> bool | None:
        return gateway.reload_policy()

    policy_file.write_text(text)
    assert gw.thread.call(reload()) is True


def _windows(gw: GatewayHandle) -> list[tuple[bool, int]]:
    """(stale window open, Execute messages judged) of every session with a policy."""
    gateway = gw.thread.gateway
    assert gateway is not None

    async def read() -> list[tuple[bool, int]]:
        sessions = list(gateway._sessions)
        return [
            (s.enforcer.stale_window, s.enforcer.stale_executes)
            for s in sessions
            if s.enforcer is not None
        ]

    return gw.thread.call(read())


def _count(t: pw.Target, table: str) -> int:
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
    assert row is not None
    return int(row[0])


def _assert_denied(err: dict[str, str] | None, rule: str) -> None:
    assert err is not None
    assert err["C"] == "42501", err
    assert err["D"].startswith(f"rule {rule}"), err
    assert "H" in err
    assert "veilgate-denied" not in repr(err)


# --- asyncpg: protocol-level cursors ------------------------------------------------------------


def test_cursor_bound_before_reload_denied_and_commit_rolls_back(
    gw: GatewayHandle, target: pw.Target, policy_file: Path, tables: tuple[str, str]
) -> None:
    plain, secret = tables

    async def run() -> None:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
        try:
            await conn.execute("begin")
            await conn.execute(f"insert into {plain} values (100)")
            cur = await conn.cursor(f"select id from {secret} order by id")
            assert [r[0] for r in await cur.fetch(1)] == [1]
            await asyncio.to_thread(_reload, gw, policy_file, POLICY_V2)
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as ei:
                await cur.fetch(1)
            assert (ei.value.detail or "").startswith("rule rw-no-secrets"), ei.value.detail
            # the server's transaction failed: COMMIT rolls back the insert before the denial
            assert await conn.execute("commit") == "ROLLBACK"
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    asyncio.run(run())
    assert _count(target, plain) == 3


def test_cursor_bound_before_reload_allowed_keeps_working(
    gw: GatewayHandle, target: pw.Target, policy_file: Path, tables: tuple[str, str]
) -> None:
    plain, _ = tables

    async def run() -> None:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
        try:
            await conn.execute("begin")
            await conn.execute(f"insert into {plain} values (100)")
            cur = await conn.cursor(f"select id from {plain} order by id")
            assert [r[0] for r in await cur.fetch(1)] == [1]
            await asyncio.to_thread(_reload, gw, policy_file, POLICY_V2)
            assert await asyncio.to_thread(_windows, gw) == [(True, 0)]
            assert [r[0] for r in await cur.fetch(2)] == [2, 3]
            # a cursor bound after the reload works too
            after = await conn.cursor(f"select count(*) from {plain}")
            assert [r[0] for r in await after.fetch(1)] == [4]
            assert await conn.execute("commit") == "COMMIT"
            # the transaction ended: Executes are no longer looked at
            [(window, judged)] = await asyncio.to_thread(_windows, gw)
            assert not window and judged >= 2
            stmt = await conn.prepare(f"select count(*) from {plain} where id > $1")
            assert await stmt.fetchval(0) == 4
            assert await conn.fetchval(f"select count(*) from {plain} where id < $1", 3) == 2
            assert [(False, judged)] == await asyncio.to_thread(_windows, gw)
        finally:
            await conn.close()

    asyncio.run(run())
    assert _count(target, plain) == 4


def test_reload_of_an_idle_session_watches_nothing(
    gw: GatewayHandle, target: pw.Target, policy_file: Path, tables: tuple[str, str]
) -> None:
    plain, secret = tables

    async def run() -> None:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
        try:
            assert await conn.fetchval(f"select count(*) from {plain}") == 3
            await asyncio.to_thread(_reload, gw, policy_file, POLICY_V2)
            assert await asyncio.to_thread(_windows, gw) == [(False, 0)]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(f"select count(*) from {secret}")
            assert await conn.fetchval(f"select count(*) from {plain}") == 3
            assert await asyncio.to_thread(_windows, gw) == [(False, 0)]
        finally:
            await conn.close()

    asyncio.run(run())


# --- raw protocol -------------------------------------------------------------------------------


def test_raw_portal_denied_pipeline_skips_to_sync_and_unnamed_statement_survives(
    gw: GatewayHandle, target: pw.Target, policy_file: Path, tables: tuple[str, str]
) -> None:
    plain, secret = tables
    with pw.connect(target.endpoint()) as c:
        c.send(
            pw.query("begin")
            + pw.parse("s1", f"select id from {secret} order by id")
            + pw.bind("p1", "s1")
            + pw.execute("p1", 1)
            + pw.sync()
        )
        first = c.recv_until_ready() + c.recv_until_ready()
        assert pw.frames(first) == "CZ12DsZ", pw.frames(first)
        _reload(gw, policy_file, POLICY_V2)
        c.send(
            pw.parse("", "select 41 + 1")  # the client's unnamed statement
            + pw.execute("p1", 1)
            + pw.execute("p1", 1)  # skipped by the server
            + pw.sync()
            + pw.parse("ins", f"insert into {plain} values (100)")  # the transaction failed
            + pw.bind("", "ins")
            + pw.execute()
            + pw.sync()
            + pw.parse("r", "rollback")
            + pw.bind("", "r")
            + pw.execute()
            + pw.sync()
        )
        denied = c.recv_until_ready()
        assert pw.frames(denied) == "1EZ", pw.frames(denied)
        assert denied[-1].body == b"E"
        _assert_denied(pw.first_error(denied), "rw-no-secrets")
        failed = c.recv_until_ready()
        err = pw.first_error(failed)
        assert err is not None and err["C"] == "25P02", err
        rolled = c.recv_until_ready()
        assert pw.frames(rolled) == "12CZ" and rolled[-1].body == b"I", pw.frames(rolled)
        assert _windows(gw) == [(False, 4)]  # the Executes up to the ROLLBACK's
        # the marker did not touch the client's unnamed statement (parsed before the Execute)
        c.send(pw.bind("", "") + pw.execute() + pw.sync())
        rows = c.recv_until_ready()
        assert [pw.data_row(m.body) for m in rows if m.tag == "D"] == [[b"42"]]
        assert _windows(gw) == [(False, 4)]
    assert _count(target, plain) == 3


def test_raw_portal_of_unknown_origin_is_refused_with_a_hint(
    gw: GatewayHandle, target: pw.Target, policy_file: Path, tables: tuple[str, str]
) -> None:
    """Two statements could be the portal's, one now denied: the gateway cannot tell which (the
    portal was bound while nothing made it follow Binds), so the portal is refused (fail
    closed) with a hint to bind again; bound again they run."""
    plain, secret = tables
    with pw.connect(target.endpoint()) as c:
        c.send(
            pw.query("begin")
            + pw.parse("s1", f"select id from {secret} order by id")
            + pw.parse("s2", f"select id from {plain} order by id")
            + pw.sync()
        )
        c.recv_until_ready()
        c.recv_until_ready()
        # statements prepared and confirmed: this Bind passes without the gateway following it
        c.send(pw.bind("p2", "s2") + pw.execute("p2", 1) + pw.sync())
        c.recv_until_ready()
        _reload(gw, policy_file, POLICY_V2)
        c.send(pw.execute("p2", 1) + pw.sync())
        denied = c.recv_until_ready()
        err = pw.first_error(denied)
        _assert_denied(err, "stale-portal")
        assert err is not None and "bind it again" in err["H"], err
        assert c.rows("rollback") == []
        # bound again after the reload: judged at Bind, runs
        c.send(
            pw.query("begin")
            + pw.bind("p2", "s2")
            + pw.execute("p2", 1)
            + pw.bind("p1", "s1")  # denied at Bind by the new policy
            + pw.execute("p1", 1)
            + pw.sync()
        )
        ok = c.recv_until_ready()
        assert pw.frames(ok) == "CZ"
        rest = c.recv_until_ready()
        assert pw.frames(rest) == "2DsEZ", pw.frames(rest)
        _assert_denied(pw.first_error(rest), "rw-no-secrets")
        assert c.rows("rollback") == []
        assert c.scalar("select 1") == "1"


def test_raw_unnamed_portal_in_flight_across_reload(
    gw: GatewayHandle, target: pw.Target, policy_file: Path, tables: tuple[str, str]
) -> None:
    """An unnamed portal bound in a pipeline segment not yet synced when the policy changes."""
    _, secret = tables
    with pw.connect(target.endpoint()) as c:
        c.send(
            pw.parse("", f"select id from {secret} order by id")
            + pw.bind("", "")
            + pw.execute("", 1)
            + pw.flush()
        )
        head = c.recv_until("s")
        assert pw.frames(head) == "12Ds", pw.frames(head)
        _reload(gw, policy_file, POLICY_V2)
        c.send(pw.execute("", 1) + pw.sync())
        denied = c.recv_until_ready()
        assert pw.frames(denied) == "EZ", pw.frames(denied)
        _assert_denied(pw.first_error(denied), "rw-no-secrets")
        assert denied[-1].body == b"I"
        assert _windows(gw) == [(False, 1)]
        assert c.scalar("select 1") == "1"


# --- a masked session ---------------------------------------------------------------------------


@pytest.mark.parametrize("deny", [True, False])
def test_masked_session_portal_bound_before_reload(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any, deny: bool
) -> None:
    """With result masking on the session (its relay sees every Execute): denied, the portal's
    Execute gets the 42501; allowed, its next rows are still masked."""
    table = make_table(pg_cluster)
    policy_file = tmp_path / "masking_policy.yaml"
    policy_file.write_text(POLICY_FILE.read_text())
    masked = start_gateway(
        gateway_factory, tmp_path / "audit.jsonl", "db.masked", policy_file=policy_file
    )
    rule = (
        "      - id: masked-no-mask-tables\n"
        "        action: deny\n"
        '        message: "no more"\n'
        '        tables: ["public.vg_mask_*"]\n'
    )
    unrelated = rule.replace("masked-no-mask-tables", "masked-no-x").replace("vg_mask_*", "vg_x")
    anchor = "    rules:\n"
    new_policy = policy_file.read_text().replace(anchor, anchor + (rule if deny else unrelated), 1)
    with pw.connect(masked.target.endpoint()) as c:
        c.send(
            pw.query("begin")
            + pw.parse("s1", f"select id, ssn from {table} order by id")
            + pw.bind("p1", "s1")
            + pw.execute("p1", 1)
            + pw.sync()
        )
        first = c.recv_until_ready() + c.recv_until_ready()
        assert pw.frames(first) == "CZ12DsZ", pw.frames(first)
        _reload(masked.handle, policy_file, new_policy)
        c.send(pw.execute("p1", 1) + pw.sync())
        msgs = c.recv_until_ready()
        assert not leaked(b"".join(m.body for m in msgs))
        if deny:
            assert pw.frames(msgs) == "EZ", pw.frames(msgs)
            _assert_denied(pw.first_error(msgs), "masked-no-mask-tables")
        else:
            assert pw.frames(msgs) == "DsZ", pw.frames(msgs)
            [[ident, ssn]] = [pw.data_row(m.body) for m in msgs if m.tag == "D"]
            assert ident == b"2" and ssn is not None and ssn.endswith(SECOND_SSN[-4:].encode())
        assert c.rows("rollback") == []
        assert c.scalar("select 1") == "1"
