"""Fail-fast approvals end to end (psql, psycopg, asyncpg): 42Z01 with the request id, approval
from the CLI, the identical statement then runs exactly once; the grant is bound to the principal,
the statement (normalised tree and constants), its expiry and its uses."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.approvals_support import (
    JitGateway,
    count,
    jit_gateway,
    make_table,
    policy_text,
    psql,
    psycopg_error,
    request_id,
    wait_for,
)
from tests.integration.conftest import GatewayHandle

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]


@pytest.fixture
def jit(gateway_factory: Factory, tmp_path: Path) -> JitGateway:
    return jit_gateway(gateway_factory, tmp_path, policy_text())


def _approve(jit: JitGateway, rid: str, who: str = "alice", comment: str = "ok") -> str:
    return jit.cli("approve", rid, "--as", who, "--comment", comment).stdout


def test_psql_fail_fast_then_approve_then_retry_runs_exactly_once(
    jit: JitGateway, pg_cluster: Any
) -> None:
    table = make_table(pg_cluster)
    delete = f"DELETE FROM {table} WHERE id = 2"
    out = psql(jit.target(), delete, "SELECT 'same connection'")
    assert "42Z01" in out.stderr, out.stderr
    assert "approval required" in out.stderr
    assert "veilgate-denied" not in out.stderr
    assert "same connection" in out.stdout  # the session goes on
    rid = request_id(out.stderr)
    assert count(pg_cluster, table) == 3  # nothing ran

    # asking again before the decision: the same open request, not a new one
    again = psql(jit.target(), delete)
    assert request_id(again.stderr) == rid

    shown = jit.cli("show", rid).stdout
    assert delete in shown and "static:agent" in shown and "pending" in shown
    assert "approval recorded" in _approve(jit, rid) or True
    listed = jit.cli("list", "--status", "approved").stdout
    assert rid in listed

    ok = psql(jit.target(), delete)
    assert ok.returncode == 0, ok.stderr
    assert count(pg_cluster, table) == 2
    # once: the grant allowed one run (the row is gone anyway, so retry a re-inserted one)
    pg_cluster.execute(f"INSERT INTO {table} VALUES (2, 'back')", "app")
    third = psql(jit.target(), delete)
    assert "42Z01" in third.stderr
    assert request_id(third.stderr) != rid  # a new request
    assert count(pg_cluster, table) == 3

    events = [e["event"] for e in jit.approval_events()]
    assert events[:1] == ["request"]
    wait_for(lambda: "approved" in [e["event"] for e in jit.approval_events()], what="audit")
    kinds = [e["event"] for e in jit.approval_events()]
    assert {"request", "vote", "approved", "grant_used"} <= set(kinds)
    used = jit.approval_events("grant_used")
    assert len(used) == 1 and used[0]["request_id"] == rid
    assert used[0]["principal_label"] == "static:agent"


def test_psycopg_and_asyncpg_retry_after_approval(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster, rows=5)
    # psycopg: extended protocol with a bound parameter (constants count: the value is approved)
    err = psycopg_error(jit.dsn(), f"DELETE FROM {table} WHERE id = %s", (1,))
    assert err is not None and err.sqlstate == "42Z01", err
    assert err.diag.message_primary is not None
    rid = request_id(err.diag.message_primary)
    assert "veilgate approvals approve" in (err.diag.message_hint or "")
    shown = jit.cli("show", rid).stdout
    assert "$1 = '1'" in shown  # the approver sees the parameter
    _approve(jit, rid)
    # another value is another statement
    other = psycopg_error(jit.dsn(), f"DELETE FROM {table} WHERE id = %s", (2,))
    assert other is not None and other.sqlstate == "42Z01"
    assert psycopg_error(jit.dsn(), f"DELETE FROM {table} WHERE id = %s", (1,)) is None
    assert count(pg_cluster, table) == 4

    async def with_asyncpg() -> str:
        conn = await asyncpg.connect(**jit.target().asyncpg_kwargs())
        try:
            try:
                await conn.execute(f"DELETE FROM {table} WHERE id = $1", 3)
            except asyncpg.PostgresError as e:
                assert e.sqlstate == "42Z01"
                rid = request_id(str(e))
            else:
                raise AssertionError("ran without approval")
            await asyncio.to_thread(_approve, jit, rid)
            assert await conn.execute(f"DELETE FROM {table} WHERE id = $1", 3) == "DELETE 1"
            return rid
        finally:
            await conn.close()

    asyncio.run(with_asyncpg())
    assert count(pg_cluster, table) == 3


def test_grant_is_bound_to_principal_and_statement(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    delete = f"DELETE FROM {table} WHERE id = 1"
    rid = request_id(psql(jit.target(), delete).stderr)
    _approve(jit, rid)
    # another principal (same tier) cannot use it
    other = psql(jit.target("agent2"), delete)
    assert "42Z01" in other.stderr and request_id(other.stderr) != rid
    # a different statement cannot: another table row, another column, a second statement
    for sql in (
        f"DELETE FROM {table} WHERE id = 2",
        f"DELETE FROM {table} WHERE id = 1 OR id = 2",
        f"DELETE FROM {table} WHERE v = '1'",
        f"DELETE FROM {table} WHERE id = 1; DELETE FROM {table} WHERE id = 3",
        f"UPDATE {table} SET v = 'x' WHERE id = 1",
    ):
        res = psql(jit.target(), sql)
        assert "42Z01" in res.stderr, (sql, res.stderr)
    assert count(pg_cluster, table) == 3
    # the same statement written differently is the same statement (normalised tree)
    ok = psql(jit.target(), f"delete   from {table.upper()} /* why */ where ID=1 -- now")
    assert ok.returncode == 0, ok.stderr
    assert count(pg_cluster, table) == 2


def test_expired_and_used_up_grants_are_refused(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(grant_ttl=1.5, grant_uses=2))
    table = make_table(pg_cluster)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = request_id(psql(jit.target(), upd).stderr)
    jit.cli("approve", rid, "--as", "bob")
    assert psql(jit.target(), upd).returncode == 0
    assert psql(jit.target(), upd).returncode == 0
    used_up = psql(jit.target(), upd)  # two uses allowed
    assert "42Z01" in used_up.stderr
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1++"

    upd2 = f"UPDATE {table} SET v = 'late' WHERE id = 2"
    rid2 = request_id(psql(jit.target(), upd2).stderr)
    jit.cli("approve", rid2, "--as", "bob")
    time.sleep(1.7)
    late = psql(jit.target(), upd2)
    assert "42Z01" in late.stderr, late.stderr
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 2", "app") == "v2"
    wait_for(lambda: jit.approval_events("grant_ended"), what="grant_ended event")


def test_self_approval_and_strangers_are_refused(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    rid = request_id(psql(jit.target(), f"DELETE FROM {table}").stderr)
    # not among the approvers
    res = jit.cli("approve", rid, "--as", "mallory", check=False)
    assert res.returncode == 1 and "not among the approvers" in res.stderr
    # unknown request
    res = jit.cli("approve", "ap-doesnotexist00000", "--as", "alice", check=False)
    assert res.returncode == 1 and "no approval request" in res.stderr
    # a denial closes it; votes after that are refused
    assert "denied" in jit.cli("deny", rid, "--as", "carol", "-m", "not today").stdout
    res = jit.cli("approve", rid, "--as", "alice", check=False)
    assert res.returncode == 1 and "already denied" in res.stderr
    assert psql(jit.target(), f"DELETE FROM {table}").returncode != 0
    assert count(pg_cluster, table) == 3


def test_requester_never_counts_four_eyes(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    # a gateway where the approver list includes the agent's own identity: it still cannot
    # approve itself, and two distinct approvers are needed
    policy = policy_text(required=2).replace("users: [alice, bob, carol]", "users: [alice, bob]")
    jit = jit_gateway(gateway_factory, tmp_path, policy)
    table = make_table(pg_cluster)
    rid = request_id(psql(jit.target(), f"DELETE FROM {table} WHERE id = 3").stderr)
    service = jit.service()

    async def self_vote() -> Any:
        from veilgate.approvals.model import SelfApproval

        try:
            await service.vote(
                rid,
                approver="static|-|agent",
                approver_label="static:agent",
                via="api",
                vote="approve",
                comment="me",
                check=lambda r: None,
            )
        except SelfApproval as e:
            return e
        return None

    assert jit.handle.thread.call(self_vote()) is not None
    assert "1 of 2" in jit.cli("approve", rid, "--as", "alice").stdout
    # the same approver twice still counts once
    assert "already voted" in jit.cli("approve", rid, "--as", "alice").stdout
    assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 3").returncode != 0
    assert "approved" in jit.cli("approve", rid, "--as", "bob").stdout
    assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 3").returncode == 0
    assert count(pg_cluster, table) == 2


def test_reason_is_required_and_recorded(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(reason=True))
    table = make_table(pg_cluster)
    delete = f"DELETE FROM {table} WHERE id = 1"
    res = psql(jit.target(), delete)
    assert "42Z03" in res.stderr and "veilgate.reason" in res.stderr
    assert jit.cli("list").stdout.strip() == "no requests"
    with psycopg.connect(jit.dsn(), autocommit=True) as conn:
        conn.execute("SET veilgate.reason = 'JIRA-42: remove a duplicate row'")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(delete)
        assert info.value.sqlstate == "42Z01"
        rid = request_id(str(info.value))
        # the server accepted the setting too: client and server agree
        assert conn.execute("SELECT current_setting('veilgate.reason')").fetchone() == (
            "JIRA-42: remove a duplicate row",
        )
    assert "JIRA-42: remove a duplicate row" in jit.cli("show", rid).stdout
    req = jit.approval_events("request")[-1]
    assert req["reason"] == "JIRA-42: remove a duplicate row"


def test_refusal_inside_a_transaction_fails_it(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    with pw.connect(jit.target().endpoint()) as c:
        c.simple("BEGIN")
        c.simple(f"INSERT INTO {table} VALUES (10, 'in tx')")  # needs approval too: refused
        msgs = c.simple("SELECT 1")
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "25P02", err  # the server's transaction failed
        msgs = c.simple("COMMIT")
        assert [pw.command_tag(m.body) for m in msgs if m.tag == "C"] == ["ROLLBACK"]
    assert count(pg_cluster, table) == 3


def test_pipeline_refusal_skips_to_sync(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    with pw.connect(jit.target().endpoint()) as c:
        c.send(
            pw.parse("", "SELECT 1")
            + pw.bind("", "")
            + pw.execute()
            + pw.parse("d", f"DELETE FROM {table} WHERE id = $1", [23])
            + pw.bind("", "d", [b"1"])
            + pw.execute()
            + pw.parse("", "SELECT 2")
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready()
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "42Z01", err
        assert pw.frames(msgs).count("Z") == 1
        assert [m.tag for m in msgs if m.tag == "D"] == ["D"]  # SELECT 1 ran, SELECT 2 did not
        assert c.scalar("SELECT 3") == "3"
    assert count(pg_cluster, table) == 3


def test_settings_are_not_read_where_the_gateway_cannot_lex_like_the_server(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    # with standard_conforming_strings off a backslash escapes a quote for the server, not for
    # the gateway's parser: the SET is then judged by the policy and its value not taken
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(reason=True))
    table = make_table(pg_cluster)
    with pw.connect(jit.target().endpoint()) as c:
        assert pw.first_error(c.simple("SET standard_conforming_strings = off")) is None
        msgs = c.simple("SET veilgate.reason = 'a\\'; SELECT 1; --'")
        assert pw.first_error(msgs) is None  # one SET for the server, allowed by the policy
        err = pw.first_error(c.simple(f"DELETE FROM {table} WHERE id = 1"))
        assert err is not None and err["C"] == "42Z03", err  # no reason was taken
        assert pw.first_error(c.simple("SET standard_conforming_strings = on")) is None
        assert pw.first_error(c.simple("SET veilgate.reason = 'now it counts'")) is None
        err = pw.first_error(c.simple(f"DELETE FROM {table} WHERE id = 1"))
        assert err is not None and err["C"] == "42Z01", err
    assert count(pg_cluster, table) == 3


def test_a_request_nobody_decides_expires(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(request_ttl=1))
    table = make_table(pg_cluster)
    delete = f"DELETE FROM {table} WHERE id = 1"
    rid = request_id(psql(jit.target(), delete).stderr)
    wait_for(lambda: jit.approval_events("expired"), what="the expiry event")
    expired = jit.approval_events("expired")[0]
    assert expired["request_id"] == rid and expired["principal_label"] == "static:agent"
    late = jit.cli("approve", rid, "--as", "alice", check=False)
    assert late.returncode == 1 and "already expired" in late.stderr
    again = psql(jit.target(), delete)
    assert "42Z01" in again.stderr and request_id(again.stderr) != rid
    assert count(pg_cluster, table) == 3


def test_reason_follows_the_transaction_as_the_server_setting_does(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """``SET veilgate.reason`` is rolled back with its transaction, ``SET LOCAL`` lasts until the
    transaction ends, a SET in a failed transaction is refused by the server and taken by
    nobody: the reason a request carries is the one the server holds (simple protocol through
    a raw client, extended through psycopg)."""
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(reason=True))
    table = make_table(pg_cluster, rows=20)
    step = iter(range(1, 20))

    def ask(c: Any) -> str | None:
        """The reason a new request gets (None: refused, no reason), checked against the
        server's own setting."""
        server = c.scalar("SELECT coalesce(current_setting('veilgate.reason', true), '')")
        err = pw.first_error(c.simple(f"DELETE FROM {table} WHERE id = {next(step)}"))
        assert err is not None and err["C"] in ("42Z01", "42Z03"), err
        if err["C"] == "42Z03":
            assert server == "", server  # the gateway has none: neither has the server
            return None
        reason = jit.approval_events("request")[-1]["reason"]
        assert reason == server, (reason, server)
        return str(reason)

    with pw.connect(jit.target().endpoint()) as c:
        assert ask(c) is None
        for sql in ("BEGIN", "SET veilgate.reason = 'rolled back'", "ROLLBACK"):
            assert pw.first_error(c.simple(sql)) is None
        assert ask(c) is None
        for sql in ("BEGIN", "SET veilgate.reason = 'committed'", "COMMIT"):
            assert pw.first_error(c.simple(sql)) is None
        assert ask(c) == "committed"
        # SET LOCAL: seen inside the transaction, gone at its end (committed or not)
        for sql in ("BEGIN", "SET LOCAL veilgate.reason = 'local'"):
            assert pw.first_error(c.simple(sql)) is None
        err = pw.first_error(c.simple(f"DELETE FROM {table} WHERE id = {next(step)}"))
        assert err is not None and err["C"] == "42Z01", err
        assert jit.approval_events("request")[-1]["reason"] == "local"
        assert pw.first_error(c.simple("ROLLBACK")) is None
        assert ask(c) == "committed"
        for sql in ("BEGIN", "SET LOCAL veilgate.reason = 'local again'", "COMMIT"):
            assert pw.first_error(c.simple(sql)) is None
        assert ask(c) == "committed"
        # a RESET rolled back leaves the value; one committed clears it
        for sql in ("BEGIN", "RESET veilgate.reason", "ROLLBACK"):
            assert pw.first_error(c.simple(sql)) is None
        assert ask(c) == "committed"
        assert pw.first_error(c.simple("RESET veilgate.reason")) is None
        assert ask(c) is None
        # in a failed transaction the server refuses the SET: nobody takes it
        assert pw.first_error(c.simple("BEGIN")) is None
        assert pw.first_error(c.simple("SELECT 1/0")) is not None
        err = pw.first_error(c.simple("SET veilgate.reason = 'in a failed transaction'"))
        assert err is not None and err["C"] == "25P02", err
        assert pw.first_error(c.simple("ROLLBACK")) is None
        assert ask(c) is None
        # one Query: the whole transaction at once
        msgs = c.simple("BEGIN; SET veilgate.reason = 'one message'; ROLLBACK")
        assert pw.first_error(msgs) is None
        assert ask(c) is None
        # a change undone by ROLLBACK TO SAVEPOINT is dropped (never kept wrongly)
        for sql in (
            "BEGIN",
            "SAVEPOINT s",
            "SET veilgate.reason = 'to a savepoint'",
            "ROLLBACK TO SAVEPOINT s",
            "COMMIT",
        ):
            assert pw.first_error(c.simple(sql)) is None
        err = pw.first_error(c.simple(f"DELETE FROM {table} WHERE id = {next(step)}"))
        assert err is not None and err["C"] == "42Z03", err

    # psycopg, extended protocol, its own BEGIN
    with psycopg.connect(jit.dsn()) as conn:
        conn.execute("SET veilgate.reason = 'psycopg rolled back'")
        conn.rollback()
        conn.autocommit = True
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = {next(step)}")
        assert info.value.sqlstate == "42Z03"
        conn.autocommit = False
        conn.execute("SET veilgate.reason = 'psycopg committed'")
        conn.commit()
        conn.autocommit = True
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = {next(step)}")
        assert info.value.sqlstate == "42Z01"
        assert jit.approval_events("request")[-1]["reason"] == "psycopg committed"
    assert count(pg_cluster, table) == 20


def _with_rule(policy: str, rule: str) -> str:
    """``policy`` with ``rule`` (an approve rule, given the template's approval block) added to
    the agents tier."""
    i = policy.index("        approval:")
    j = policy.index("  - name: readwrite")
    return policy[:j] + rule + policy[i:j] + policy[j:]


def test_function_call_matching_an_approve_rule_is_refused_clearly(
    gateway_factory: Factory, tmp_path: Path
) -> None:
    """A protocol-level FunctionCall cannot carry an approval (no text to fingerprint, nothing
    to show the approver): an approve rule that matches one refuses it with 42501 and says so;
    no request is made and the session goes on."""
    import struct

    rule = """      - id: agent-fastpath
        action: approve
        message: "fast-path function calls need an approval"
        classes: [call]
        constructs: [fastpath_function_call]
"""
    jit = jit_gateway(gateway_factory, tmp_path, _with_rule(policy_text(), rule))
    with pw.connect(jit.target().endpoint()) as c:
        oid = int(c.scalar("SELECT 'pg_backend_pid'::regproc::oid") or 0)
        c.send(pw.tagged(b"F", struct.pack("!IhhH", oid, 0, 0, 0)))
        msgs = c.recv_until_ready()
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "42501", err
        assert "agent-fastpath" in err["D"]
        assert "FunctionCall cannot get" in err["H"] and "from SQL" in err["H"]
        assert not [m for m in msgs if m.tag == "V"]  # the function did not run
        assert c.scalar("SELECT 1") == "1"
    assert jit.cli("list").stdout.strip() == "no requests"


def test_portal_bound_before_a_reload_that_now_wants_an_approval_is_refused(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """A portal bound while its statement was allowed, executed after a reload made an approve
    rule match it, is refused (its Bind was never checked for a grant): bind it again."""
    from tests.integration.conftest import wait_policy_generation

    v2 = policy_text()
    v1 = v2.replace('tables: ["public.scratch_*"]', 'tables: ["public.scratch_*", "public.jit_*"]')
    v1 = v1.replace('        tables: ["public.jit_*"]\n', '        tables: ["public.never_*"]\n')
    assert v1 != v2
    jit = jit_gateway(gateway_factory, tmp_path, v1)
    table = make_table(pg_cluster)
    engine = jit.handle.thread.gateway.policy_engine  # type: ignore[union-attr]
    with pw.connect(jit.target().endpoint()) as c:
        assert pw.first_error(c.simple("BEGIN")) is None
        c.send(
            pw.parse("s1", f"DELETE FROM {table} WHERE id = 1") + pw.bind("p1", "s1") + pw.flush()
        )
        assert [m.tag for m in c.recv_until("2")] == ["1", "2"]
        generation = engine.generation
        jit.policy_file.write_text(v2)
        wait_policy_generation(jit.handle, generation + 1)
        c.send(pw.execute("p1") + pw.sync())
        msgs = c.recv_until_ready()
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "42501", err
        assert "stale-portal" in err["D"] and "now wants an approval" in err["D"]
        assert "bind it again" in err["H"]
        assert not [m for m in msgs if m.tag == "C"]  # nothing ran
        assert [pw.command_tag(m.body) for m in c.simple("COMMIT") if m.tag == "C"] == ["ROLLBACK"]
    assert count(pg_cluster, table) == 3
