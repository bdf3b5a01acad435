# ruff: noqa: S608 (SQL built from table names the tests generate)
"""The native verdict cache end to end: an allowed Query whose shape was seen before is
forwarded by the client buffer without entering Python (counted natively), its decision still
reaches the audit log and the session record, and a policy reload changes the verdict of a
cached shape at once."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import veilgate_native
from tests.integration.conftest import GatewayHandle, PolicyGateway, wait_policy_generation
from tests.integration.recording_setup import (
    audit_config,
    flush,
    make_key,
    statements,
    wait_sessions_ended,
    with_audit,
)

from veilgate import metrics
from veilgate.audit import reader

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
        message: "DROP and TRUNCATE are not allowed through the gateway"
        constructs: [drop, truncate]
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


def _engine(handle: GatewayHandle) -> Any:
    gw = handle.thread.gateway
    assert gw is not None and gw.policy_engine is not None
    return gw.policy_engine


def test_new_literals_answered_natively_then_reload_denies_the_cached_shape(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    g = policy_gateway(POLICY, "db.readwrite", audit_log="decisions.jsonl")
    handle, t, policy_file, decisions = g.handle, g.target, g.policy_file, g.audit_log
    engine = _engine(handle)
    secret = "vg_secret_" + secrets.token_hex(4)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute(f"create table {secret} (id int, v text)")
        conn.execute(f"insert into {secret} select g, 'v' || g from generate_series(1, 50) g")
    hits_before = engine.native_verdicts.hits
    process_before = veilgate_native.verdict_hits()
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        # psycopg sends a query without parameters as a simple Query
        for i in range(1, 31):
            row = conn.execute(f"select v from {secret} where id = {i}").fetchone()
            assert row == (f"v{i}",)
        # the first was judged in Python; every later one (new literal, same shape) natively
        answered = engine.native_verdicts.hits - hits_before
        assert answered >= 29, answered
        assert veilgate_native.verdict_hits() - process_before >= 29
        exposition = metrics.render()
        assert "veilgate_policy_native_verdicts_total" in exposition
        # the per-target decision counts include what the cache answered
        allowed = sum(
            float(m.group(1))
            for m in re.finditer(
                r'^veilgate_statement_decisions_total\{[^}]*decision="allow"[^}]*\} (\S+)$',
                exposition,
                re.M,
            )
        )
        assert allowed >= 31, allowed

        # a denied shape is never answered natively: denied every time
        for _ in range(3):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"drop table {secret}")

        # the reload denies the cached shape at once, on the same connection
        generation = engine.generation
        policy_file.write_text(POLICY_V2)
        wait_policy_generation(handle, generation + 1)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            conn.execute(f"select v from {secret} where id = 77")
        assert (ei.value.diag.message_detail or "").startswith("rule rw-no-secrets")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select v from {secret} where id = 78")
        # other shapes still run, and are cached again under the new policy
        hits = engine.native_verdicts.hits
        for i in range(3):
            assert conn.execute(f"select {i} + 1").fetchone() == (i + 1,)
        assert engine.native_verdicts.hits - hits >= 2

    # every statement answered natively has its decision event, with its own text
    events = [json.loads(line) for line in decisions.read_text().splitlines() if line]
    allowed = {e["sql"] for e in events if e["action"] == "allow"}
    for i in range(1, 31):
        assert f"select v from {secret} where id = {i}" in allowed, i
    cached = [e for e in events if e["action"] == "allow" and e["cached"]]
    assert len(cached) >= 29
    assert all(e["rule_id"] == "rw-all" and e["fingerprint"] for e in cached)
    denied = [e for e in events if e["sql"].endswith("where id = 77")]
    assert denied and denied[0]["action"] == "deny" and denied[0]["rule_id"] == "rw-no-secrets"


def test_decision_log_lines_of_answered_queries_are_written_natively(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    """With the JSON-lines decision log on, the client buffer writes the lines of the Queries
    it answers itself (no Python per read): every statement has its line, in order, with the
    session's identity as the line Python wrote for the first one, credentials redacted."""
    g = policy_gateway(POLICY, "db.readwrite", audit_log="decisions.jsonl")
    handle, t, decisions = g.handle, g.target, g.audit_log
    engine = _engine(handle)
    gw = handle.thread.gateway
    assert gw is not None
    log = gw.decision_sink.native_log  # type: ignore[union-attr]
    assert log is not None
    hits = engine.native_verdicts.hits
    lines = log.lines
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        for i in range(25):
            uri = f"postgresql://bob:pw{i}zz@db.example/app"
            assert conn.execute(f"select {i} as n, '{uri}' as u").fetchone() == (i, uri)
        answered = engine.native_verdicts.hits - hits
        assert answered >= 24
        # one line per statement, written while the session is open (not at its end)
        assert log.lines - lines >= 25
    raw = decisions.read_text()
    assert "zz@" not in raw  # the credential in each statement is redacted, natively too
    events = [json.loads(x) for x in raw.splitlines() if x]
    mine = [e for e in events if e["sql"].startswith("select ") and " as n," in e["sql"]]
    assert len(mine) == 25, [e["sql"] for e in mine]
    assert [e["sql"].split(" as n")[0] for e in mine] == [f"select {i}" for i in range(25)]
    first, rest = mine[0], mine[1:]
    assert first["cached"] is False  # judged in Python
    cached = [e for e in rest if e["cached"]]
    assert len(cached) >= 24
    for e in cached:
        assert list(e) == list(first)  # the same members, in the same order
        for k in ("principal_key", "principal_label", "session_id", "fingerprint", "tier"):
            assert e[k] == first[k], k
        assert e["action"] == "allow" and e["rule_id"] == "rw-all" and e["decision_us"] == 0.0
        assert e["sql_len"] > len("select 1 as n")
    assert [e["ts"] for e in mine] == sorted(e["ts"] for e in mine)


def test_statements_answered_natively_are_recorded_with_their_decision(
    policy_gateway: Callable[..., PolicyGateway], tmp_path: Path
) -> None:
    audit = audit_config(tmp_path / "audit", make_key(tmp_path))
    g = policy_gateway(
        POLICY, "db.readwrite", audit_log="decisions.jsonl", transform=with_audit(audit)
    )
    handle, t = g.handle, g.target
    engine = _engine(handle)
    hits = engine.native_verdicts.hits
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        for i in range(20):
            assert conn.execute(f"select {i} * 2 as x, 'k{i}' as y").fetchone() == (
                i * 2,
                f"k{i}",
            )
    assert engine.native_verdicts.hits - hits >= 19
    wait_sessions_ended(handle)
    flush(handle)
    st = [s for recs in reader.sessions(tmp_path / "audit").values() for s in statements(recs)]
    mine = [s for s in st if s["sql"].startswith("select ") and "as x" in s["sql"]]
    assert len(mine) == 20, [s["sql"] for s in mine]
    for s in mine:
        assert s["status"] == "ok", s
        assert s["decision"]["action"] == "allow" and s["decision"]["rule"] == "rw-all", s
        assert s["decision"]["fingerprint"], s


def test_session_state_keeps_queries_in_python(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    """While the unnamed statement exists (the mirror must see a Query drop it) or a statement
    is in flight, Queries are not answered natively; once the session is quiet again they
    are."""
    g = policy_gateway(POLICY, "db.readwrite", audit_log="d.jsonl")
    handle, t = g.handle, g.target
    engine = _engine(handle)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute("select 1 as warm").fetchone()
        conn.execute("select 2 as warm").fetchone()
        # an unnamed statement (extended protocol, with a parameter)
        assert conn.execute("select %s::int", (5,)).fetchone() == (5,)
        hits = engine.native_verdicts.hits
        # this Query drops the unnamed statement: the mirror must see it
        assert conn.execute("select 3 as warm").fetchone() == (3,)
        assert engine.native_verdicts.hits == hits
        # the session is quiet again: answered natively
        assert conn.execute("select 4 as warm").fetchone() == (4,)
        assert engine.native_verdicts.hits == hits + 1
        # PREPARE / EXECUTE go through Python (the mirror binds names on confirmation)
        conn.execute("prepare vg_p as select 42")
        assert conn.execute("execute vg_p").fetchone() == (42,)
        assert conn.execute("execute vg_p").fetchone() == (42,)
        assert engine.native_verdicts.hits == hits + 1
        conn.execute("deallocate vg_p")
        # judged with the session's prepared statements: it has none of that name now
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("execute vg_p")
