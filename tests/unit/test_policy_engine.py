"""PolicyEngine: tiers, caches, reload, sessions, approve, audit events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veilgate.identity.base import Principal
from veilgate.policy.audit import DecisionEvent, JsonLinesAuditSink, MemoryAuditSink
from veilgate.policy.engine import PolicyEngine, SessionContext
from veilgate.policy.loader import load_policy, load_policy_text

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "python" / "veilgate" / "policy" / "example_policy.yaml"
)
RO = Principal(provider="entra", subject="ro", tenant="t1", roles=frozenset({"db.readonly"}))
RW = Principal(provider="entra", subject="rw", roles=frozenset({"db.readwrite"}))
DBA = Principal(
    provider="entra",
    subject="human",
    groups=frozenset({"00000000-0000-0000-0000-0000000000db"}),
)
NOBODY = Principal(provider="entra", subject="nobody")

POLICY_V1 = """\
version: 1
tiers:
  - name: agents
    match: {roles: [agent]}
    rules:
      - {id: read, message: reads, action: allow, classes: [read]}
"""
POLICY_V2 = """\
version: 1
tiers:
  - name: agents
    match: {roles: [agent]}
    rules:
      - {id: no-orders, message: not orders any more, action: deny, tables: [orders]}
      - {id: read, message: reads, action: allow, classes: [read]}
"""
AGENT = Principal(provider="static", subject="a", roles=frozenset({"agent"}))


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy(EXAMPLE))


def test_tier_selection(engine: PolicyEngine) -> None:
    tiers = {p.subject: engine.tier_for(p) for p in (RO, RW, DBA, NOBODY)}
    assert {k: (t.name if t else None) for k, t in tiers.items()} == {
        "ro": "readonly",
        "rw": "readwrite",
        "human": "dba",
        "nobody": None,
    }


def test_no_tier_denies(engine: PolicyEngine) -> None:
    d = engine.decide(NOBODY, "select 1")
    assert (d.action, d.rule_id, d.tier) == ("deny", "no-tier", None)


def test_unknown_groups_never_match(engine: PolicyEngine) -> None:
    overage = Principal(provider="entra", subject="human", groups=None)
    assert engine.tier_for(overage) is None


def test_approve(engine: PolicyEngine) -> None:
    d = engine.decide(DBA, "drop table orders")
    assert (d.action, d.rule_id) == ("approve", "dba-approve-destructive")
    assert engine.decide(DBA, "select 1").action == "allow"
    # deny beats approve beats allow across statements of one message
    d = engine.decide(DBA, "select 1; grant select on orders to x; drop table t")
    assert d.action == "approve"
    assert [s.action for s in d.statements] == ["allow", "approve", "approve"]


def test_decision_fields(engine: PolicyEngine) -> None:
    d = engine.decide(RW, "select 1; delete from orders")
    assert d.action == "deny"
    assert d.tier == "readwrite"
    assert d.rule_id == "rw-no-destruction"
    assert "DELETE/UPDATE without a WHERE" in d.message
    assert d.reason.startswith("statement 2 of 2: rule rw-no-destruction denies construct")
    assert [s.action for s in d.statements] == ["allow", "deny"]
    assert d.statements[1].analysis.constructs == {"delete_without_where"}
    assert len(d.fingerprint) == 16
    assert d.elapsed_us > 0 and not d.cached
    # The fingerprint ignores constants and spacing.
    assert engine.decide(RW, "SELECT 2 ;  delete   from orders").fingerprint == d.fingerprint


def test_cache_hit_and_bounds() -> None:
    engine = PolicyEngine(
        load_policy(EXAMPLE), analysis_cache_size=4, decision_cache_size=3, shape_cache_size=3
    )
    d1 = engine.decide(RO, "select 1")
    d2 = engine.decide(RO, "select 1")
    assert not d1.cached and d2.cached
    assert d2.verdict is d1.verdict
    # Same text, other tier: analysis shared, decision separate.
    d3 = engine.decide(RW, "select 1")
    assert not d3.cached and d3.analysis is d1.analysis
    # (distinct column aliases: texts that differ only in constants would share a decision)
    for i in range(10):
        engine.decide(RO, f"select {i} as c{i}")
    info = engine.cache_info()
    assert info["decisions"] == 3 and info["analyses"] == 4
    # LRU: the most recent entries are kept.
    assert engine.decide(RO, "select 9 as c9").cached
    assert not engine.decide(RO, "select 0 as c0").cached


def test_session_scs_is_part_of_the_key(engine: PolicyEngine) -> None:
    sql = "select 'x\\'; drop table orders; --'"
    on = SessionContext(standard_conforming_strings=True)
    off = SessionContext(standard_conforming_strings=False)
    assert engine.decide(RW, sql, session=on).action == "deny"
    assert engine.decide(RW, sql, session=off).action == "allow"
    assert engine.decide(RW, sql, session=on).action == "deny"


def test_reload_swaps_policy_and_clears_decisions() -> None:
    engine = PolicyEngine(load_policy_text(POLICY_V1))
    s = SessionContext()
    g1 = engine.generation
    assert engine.decide(AGENT, "select * from orders", session=s).action == "allow"
    assert engine.decide(AGENT, "select * from orders", session=s).cached
    engine.reload(load_policy_text(POLICY_V2))
    assert engine.generation == g1 + 1
    assert engine.cache_info()["decisions"] == 0
    d = engine.decide(AGENT, "select * from orders", session=s)
    assert (d.action, d.rule_id, d.cached, d.generation) == ("deny", "no-orders", False, g1 + 1)


def test_statement_prepared_before_reload_judged_by_new_policy() -> None:
    engine = PolicyEngine(load_policy_text(POLICY_V1))
    s = SessionContext()
    parse = engine.decide(AGENT, "select * from orders where id = $1", session=s)
    assert parse.allowed
    s.remember_parse("stmt1", parse)
    assert engine.decide(AGENT, "execute stmt1(1)", session=s).allowed
    engine.reload(load_policy_text(POLICY_V2))
    # The gateway sees the generation changed and decides the Parse text again ...
    assert parse.generation != engine.generation
    again = engine.decide(AGENT, "select * from orders where id = $1", session=s)
    assert again.rule_id == "no-orders"
    # ... and SQL EXECUTE of it is judged by the new policy too.
    assert engine.decide(AGENT, "execute stmt1(1)", session=s).rule_id == "no-orders"


def test_session_prepare_execute_deallocate(engine: PolicyEngine) -> None:
    s = SessionContext()
    d = engine.decide(RW, "prepare del as delete from orders where id = $1", session=s)
    assert d.allowed
    s.apply(d)
    assert "del" in s.prepared
    e = engine.decide(RW, "execute del(3)", session=s)
    assert e.allowed and not e.cached
    assert engine.decide(RO, "execute del(3)", session=s).action == "deny"
    # EXECUTE decisions depend on session state: never cached by text.
    assert not engine.decide(RW, "execute del(3)", session=s).cached
    s.apply(engine.decide(RW, "deallocate del", session=s))
    d = engine.decide(RW, "execute del(3)", session=s)
    assert (d.action, d.rule_id) == ("deny", "unknown-prepared-statement")
    s.prepared["x"] = d.statements[0].analysis  # anything
    s.apply(engine.decide(RW, "discard all", session=s))
    assert s.prepared == {}


def test_session_tier_is_cached_per_generation(engine: PolicyEngine) -> None:
    s = SessionContext()
    engine.decide(RO, "select 1", session=s)
    assert s.tier is not None and s.tier.name == "readonly"
    gen = s.tier_generation
    engine.reload(load_policy(EXAMPLE))
    engine.decide(RO, "select 1", session=s)
    assert s.tier_generation == gen + 1


def test_unparseable_is_denied_for_every_tier(engine: PolicyEngine) -> None:
    for p in (RO, RW, DBA, NOBODY):
        d = engine.decide(p, "selec 1")
        assert (d.action, d.rule_id) == ("deny", "unparseable")
        assert d.fingerprint.startswith("raw:")


def test_deeply_nested_sql_fails_closed(engine: PolicyEngine) -> None:
    sql = "select " + "(" * 3000 + "1" + ")" * 3000
    d = engine.decide(RW, sql)
    assert d.action in ("deny", "allow")  # never raises
    sql = "select " + " + ".join(["1"] * 5000)
    assert engine.decide(RW, sql).action == "allow"


def test_audit_events(tmp_path: Path, engine: PolicyEngine) -> None:
    path = tmp_path / "audit.jsonl"
    d = engine.decide(RO, "select * from orders where id = $1")
    with JsonLinesAuditSink(path) as sink:
        sink.emit(DecisionEvent.from_decision(d, RO, session_id="s1", ts=1.5))
    with JsonLinesAuditSink(path, record_sql=False) as sink:
        sink.emit(DecisionEvent.from_decision(engine.decide(RO, "drop table x"), RO, ts=2.0))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["principal_key"] == ["t1", "ro"]
    assert first["principal_label"] == "entra:ro"
    assert first["session_id"] == "s1"
    assert first["action"] == "allow" and first["rule_id"] == "ro-read"
    assert first["tier"] == "readonly"
    assert first["statement_classes"] == ["read"]
    assert first["sql"] == "select * from orders where id = $1"
    assert first["fingerprint"] == d.fingerprint
    assert first["ts"] == 1.5 and first["decision_us"] > 0
    assert "sql" not in second and second["action"] == "deny"
    assert (path.stat().st_mode & 0o777) == 0o600
    mem = MemoryAuditSink()
    mem.emit(DecisionEvent.from_decision(d, RO))
    assert mem.events[0].rule_id == "ro-read"


def test_error_fields_for_denial(engine: PolicyEngine) -> None:
    d = engine.decide(RW, "drop table orders")
    f = d.error_fields()
    assert f["C"] == "42501" and f["S"] == f["V"] == "ERROR"
    assert f["D"].startswith("rule rw-no-destruction (tier readwrite): rule rw-no-destruction")
    assert "DROP" in f["M"]
    assert "veilgate policy check" in f["H"]


def test_nul_and_bad_unicode_fail_closed(engine: PolicyEngine) -> None:
    assert engine.decide(RW, "select 1\x00; drop table orders").rule_id == "unparseable"
    assert engine.decide(RW, "select '\udc80'").rule_id == "unparseable"


def test_function_call_protocol_message(engine: PolicyEngine) -> None:
    d = engine.decide_function_call(RW, 764)
    assert (d.action, d.tier) == ("deny", "readwrite")
    assert d.statements[0].analysis.constructs == {"fastpath_function_call"}
    assert engine.decide_function_call(NOBODY, 764).rule_id == "no-tier"
    allow_lo = load_policy_text(
        "version: 1\ntiers:\n  - name: a\n    match: {roles: [agent]}\n    rules:\n"
        "      - {id: lo, message: m, action: allow, classes: [call],\n"
        "         constructs: [fastpath_function_call], functions: ['oid:764']}\n"
    )
    e2 = PolicyEngine(allow_lo)
    assert e2.decide_function_call(AGENT, 764).action == "allow"
    assert e2.decide_function_call(AGENT, 765).action == "deny"


def test_file_watcher_keeps_old_policy_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from veilgate.policy.reload import PolicyFileWatcher

    f = tmp_path / "policy.yaml"
    f.write_text(POLICY_V1)
    engine = PolicyEngine(load_policy(f))
    now = [1000.0]
    w = PolicyFileWatcher(f, engine, clock=lambda: now[0])
    assert w.check() is None
    gen = engine.generation
    f.write_text(POLICY_V1.replace("action: allow", "action: permit") + "\n")
    assert w.check() is None  # changed: waits for the file to settle
    now[0] += 2
    with caplog.at_level("ERROR", logger="veilgate.policy"):
        assert w.check() is False
    assert engine.generation == gen
    assert w.failures == 1 and w.last_error and ":6: tiers[0].rules[0].action" in w.last_error
    rec = [r for r in caplog.records if r.getMessage() == "policy_reload_failed"]
    assert rec and rec[0].fields["line"] == 6  # type: ignore[attr-defined]
    assert engine.decide(AGENT, "select 1").allowed
    f.write_text(POLICY_V2)
    assert w.check() is None
    now[0] += 2
    assert w.check() is True
    assert engine.generation == gen + 1
    assert engine.decide(AGENT, "select * from orders").rule_id == "no-orders"
    assert w.reload() is True and engine.generation == gen + 1  # same digest: no swap
