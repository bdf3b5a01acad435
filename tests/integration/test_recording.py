# ruff: noqa: S608 (SQL built from table names the tests generate)
"""Session recording end to end: what psql, psycopg and asyncpg do is recorded, verifiably."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.recording_setup import (
    audit_config,
    flush,
    keyring,
    make_key,
    only_session,
    psql,
    statements,
    wait_sessions_ended,
    with_audit,
)

from veilgate.audit.verify import verify

pytestmark = pytest.mark.pg


@pytest.fixture
def recorded(
    gateway_factory: Callable[..., GatewayHandle], tmp_path: Path
) -> tuple[GatewayHandle, Path, dict[str, bytes]]:
    audit = audit_config(tmp_path / "audit", make_key(tmp_path))
    handle = gateway_factory(transform=with_audit(audit))
    return handle, tmp_path / "audit", keyring(audit)


def test_psql_session_is_recorded_and_verifies(recorded: Any) -> None:
    handle, directory, keys = recorded
    t = pw.gateway_target(handle)
    res = psql(t, "-c", "select 1 as one", "-c", "select g from generate_series(1, 3) g")
    assert res.returncode == 0, res.stderr
    wait_sessions_ended(handle)
    flush(handle)
    recs = only_session(directory)
    assert recs[0]["kind"] == "session_start"
    assert recs[0]["principal"]["subject"] == "itest"
    assert recs[0]["client"]["tls"]["version"].startswith("TLS")
    assert recs[-1]["kind"] == "session_end"
    st = statements(recs)
    assert [s["sql"] for s in st] == ["select 1 as one", "select g from generate_series(1, 3) g"]
    assert [(s["tag"], s["rows"], s["status"]) for s in st] == [
        ("SELECT 1", 1, "ok"),
        ("SELECT 3", 3, "ok"),
    ]
    assert all(s["bytes"] > 0 and s["path"] == "simple" for s in st)
    assert recs[-1]["statements"] == 2 and recs[-1]["rows"] == 4
    report = verify(directory, keys, allow_open=True)
    assert report.ok, [str(f) for f in report.findings]


# --- psycopg (libpq, extended protocol), COPY ----------------------------------------------------


def test_psycopg_extended_prepared_copy_and_errors(recorded: Any) -> None:
    import psycopg

    handle, directory, keys = recorded
    t = pw.gateway_target(handle)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute("create temp table rec_t (id int primary key, v text)")
        for i in range(3):
            conn.execute("insert into rec_t values (%s, %s)", (i, f"v{i}"), prepare=True)
        with conn.cursor().copy("copy rec_t from stdin") as cp:
            cp.write_row((10, "ten"))
            cp.write_row((11, "eleven"))
        out = bytearray()
        with conn.cursor().copy("copy rec_t to stdout") as cp:
            for chunk in cp:
                out += chunk
        assert out.count(b"\n") == 5
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into rec_t values (%s, %s)", (1, "dup"))
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec 1")
    wait_sessions_ended(handle)
    flush(handle)
    st = statements(only_session(directory))
    by_sql = {}
    for s in st:
        by_sql.setdefault(s["sql"], []).append(s)
    inserts = by_sql["insert into rec_t values ($1, $2)"]
    assert [(s["path"], s["tag"], s["rows"], s["status"]) for s in inserts[:3]] == [
        ("extended", "INSERT 0 1", 1, "ok")
    ] * 3
    dup = inserts[3]
    assert (dup["status"], dup["sqlstate"]) == ("error", "23505")
    copy_in = by_sql["copy rec_t from stdin"][0]
    assert (copy_in["tag"], copy_in["rows"], copy_in["status"]) == ("COPY 2", 2, "ok")
    copy_out = by_sql["copy rec_t to stdout"][0]
    assert (copy_out["tag"], copy_out["rows"]) == ("COPY 5", 5)
    assert copy_out["bytes"] > len(out)
    bad = by_sql["selec 1"][0]
    assert (bad["status"], bad["sqlstate"]) == ("error", "42601")
    # the prepared statement's executions all carry its text; no parameter value is recorded
    raw = b"".join(p.read_bytes() for p in directory.glob("segment-*.jsonl"))
    assert b"v2" not in raw and b"eleven" not in raw
    assert verify(directory, keys).ok


# --- asyncpg: parameters, cursors (PortalSuspended), a cancelled statement ----------------------


@pytest.mark.asyncio
async def test_asyncpg_cursor_and_cancelled_statement(recorded: Any) -> None:
    import asyncio

    import asyncpg

    handle, directory, keys = recorded
    conn = await asyncpg.connect(**handle.asyncpg_kwargs())
    try:
        assert await conn.fetchval("select $1::int + 1", 41) == 42
        async with conn.transaction():
            cur = await conn.cursor("select g from generate_series(1, 10) g")
            assert len(await cur.fetch(4)) == 4
            assert len(await cur.fetch(4)) == 4
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("select pg_sleep(30)", timeout=0.5)
    finally:
        await conn.close()
    await asyncio.to_thread(wait_sessions_ended, handle)
    await asyncio.to_thread(flush, handle)
    st = statements(only_session(directory))
    plus = next(s for s in st if s["sql"] == "select $1::int + 1")
    # asyncpg's fetchval executes with a row limit of 1: the portal stops there (PortalSuspended)
    assert (plus["path"], plus["rows"], plus["status"]) == ("extended", 1, "suspended")
    fetches = [s for s in st if s["sql"] == "select g from generate_series(1, 10) g"]
    assert [(s["status"], s["rows"]) for s in fetches] == [("suspended", 4), ("suspended", 4)]
    sleep = next(s for s in st if s["sql"] == "select pg_sleep(30)")
    assert (sleep["status"], sleep["sqlstate"]) == ("error", "57014")
    assert sleep["duration_us"] >= 400_000
    assert verify(directory, keys).ok


# --- denied statements and the decision on each record ---------------------------------------

POLICY = """\
version: 1
tiers:
  - name: readwrite
    match: {roles: [db.readwrite]}
    rules:
      - id: rw-all
        action: allow
        message: "reads and writes"
        classes: [read, write, ddl, transaction, session, prepare, utility]
      - id: rw-no-drop
        action: deny
        message: "DROP is not allowed"
        constructs: [drop]
"""


def test_denied_statements_carry_the_decision(
    gateway_factory: Callable[..., GatewayHandle], tmp_path: Path
) -> None:
    import psycopg
    from tests.integration.conftest import with_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    audit = audit_config(tmp_path / "audit", make_key(tmp_path))
    with_pol = with_policy(policy, tmp_path / "decisions.jsonl", "db.readwrite")
    handle = gateway_factory(transform=lambda c: with_audit(audit)(with_pol(c)))
    t = pw.gateway_target(handle)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("drop table if exists nothing_here")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("drop table if exists nothing_x", prepare=True)
    res = psql(t, "-c", "begin; drop table if exists x; commit")
    assert "42501" in res.stderr or "not allowed" in res.stderr, res.stderr
    wait_sessions_ended(handle)
    flush(handle)
    from veilgate.audit import reader

    by_session = reader.sessions(tmp_path / "audit")
    st = [s for recs in by_session.values() for s in statements(recs)]
    ok = next(s for s in st if s["sql"] == "select 1")
    assert ok["decision"] == {
        "action": "allow",
        "rule": "rw-all",
        "fingerprint": ok["decision"]["fingerprint"],
    }
    denied = [s for s in st if s["sql"].startswith("drop table")]
    assert denied and all(
        (s["status"], s["sqlstate"], s["decision"]["action"], s["decision"]["rule"])
        == ("refused", "42501", "deny", "rw-no-drop")
        for s in denied
    ), denied
    whole = next(s for s in st if s["sql"] == "begin; drop table if exists x; commit")
    assert whole["status"] == "refused"
    assert verify(tmp_path / "audit", audit.keyring()).ok


# --- a client that disconnects in the middle of a result -----------------------------------------


def test_disconnect_mid_result_is_recorded_as_interrupted(recorded: Any) -> None:
    handle, directory, keys = recorded
    t = pw.gateway_target(handle)
    c = pw.connect(t.endpoint())
    c.send(pw.query("select repeat('x', 1000) from generate_series(1, 200000)"))
    got = c.read_bytes(256 * 1024, timeout=30)
    assert len(got) == 256 * 1024
    c.close()
    wait_sessions_ended(handle)
    flush(handle)
    recs = only_session(directory)
    st = statements(recs)[-1]
    assert st["status"] == "interrupted"
    assert 0 < st["rows"] < 200_000
    assert st["bytes"] >= 200 * 1024
    assert recs[-1]["kind"] == "session_end" and recs[-1]["reason"] == "client_closed"
    assert verify(directory, keys).ok


# --- the verify command -------------------------------------------------------------------------


def test_verify_cli_on_a_live_recording(recorded: Any) -> None:
    import subprocess
    import sys

    handle, directory, _ = recorded
    t = pw.gateway_target(handle)
    assert psql(t, "-c", "select 1").returncode == 0
    wait_sessions_ended(handle)
    flush(handle)
    key_file = handle.config.audit.key.file
    cmd = [
        sys.executable,
        "-m",
        "veilgate",
        "sessions",
        "verify",
        str(directory),
        "--key",
        f"k1={key_file}",
    ]
    live = subprocess.run([*cmd, "--allow-open"], capture_output=True, text=True, check=False)
    assert live.returncode == 0, live.stdout + live.stderr
    assert live.stdout.startswith("OK:"), live.stdout
    seg = sorted(directory.glob("segment-*.jsonl"))[-1]
    data = seg.read_bytes()
    i = data.index(b'"sql":"select 1"')
    seg.write_bytes(data[:i] + b'"sql":"select 2"' + data[i + 16 :])
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "TAMPERED OR INCOMPLETE: first problem:" in bad.stdout and "altered" in bad.stdout


# --- approvals: a held statement, its approval, the run under the grant -------------------------


def test_approval_held_then_run_under_its_grant_is_recorded(
    gateway_factory: Callable[..., GatewayHandle], tmp_path: Path, pg_cluster: Any
) -> None:
    from tests.integration.approvals_support import (
        jit_gateway,
        make_table,
        policy_text,
        request_id,
    )
    from tests.integration.approvals_support import (
        psql as jit_psql,
    )

    from veilgate.audit import reader

    audit = audit_config(tmp_path / "audit", make_key(tmp_path))
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(), transform=with_audit(audit))
    table = make_table(pg_cluster)
    held = jit_psql(jit.target(), f"DELETE FROM {table} WHERE id = 1")
    assert "42Z01" in held.stderr, held.stderr
    rid = request_id(held.stderr)
    jit.cli("approve", rid, "--as", "alice")
    ran = jit_psql(jit.target(), f"DELETE FROM {table} WHERE id = 1")
    assert ran.returncode == 0 and "DELETE 1" in ran.stdout, ran.stdout + ran.stderr
    wait_sessions_ended(jit.handle)
    flush(jit.handle)
    by_session = reader.sessions(tmp_path / "audit")
    assert len(by_session) == 2
    first, second = sorted(by_session.values(), key=lambda recs: recs[0]["seq"])
    (st1,) = statements(first)
    assert (st1["status"], st1["sqlstate"]) == ("refused", "42Z01")
    assert st1["decision"]["action"] == "approve" and st1["decision"]["rule"] == "agent-jit-write"
    requested = [r for r in first if r["kind"] == "approval" and r["event"] == "request"]
    assert requested and requested[0]["request_id"] == rid and "sql" not in requested[0]
    (st2,) = statements(second)
    assert (st2["status"], st2["tag"], st2["rows"]) == ("ok", "DELETE 1", 1)
    assert st2["decision"]["action"] == "approve" and st2["decision"]["approval"] == rid
    used = [r for r in second if r["kind"] == "approval" and r["event"] == "grant_used"]
    assert used and used[0]["request_id"] == rid
    assert verify(tmp_path / "audit", audit.keyring()).ok
