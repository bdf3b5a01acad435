"""bench/policy_bench.py: the bench's guardrail policy is valid, allows what pgbench sends and
denies the probe; the on/off summary table; the decision counter scrape."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def pb() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import policy_bench

    return policy_bench


def test_policy_file_lints_clean(pb: ModuleType) -> None:
    from veilgate.policy.cli import lint_main

    out = io.StringIO()
    assert lint_main([str(pb.POLICY_FILE), "--strict"], out=out) == 0, out.getvalue()


def test_policy_allows_pgbench_and_denies_the_probe(pb: ModuleType) -> None:
    from veilgate.identity.base import Principal
    from veilgate.policy.engine import PolicyEngine, SessionContext
    from veilgate.policy.loader import load_policy

    pb.check_policy_allows()  # raises if any pgbench statement is not allowed
    engine = PolicyEngine(load_policy(pb.POLICY_FILE))
    who = Principal(provider="static", subject="bench", roles=frozenset(pb.TOKEN_ROLES))
    session = SessionContext(session_id="t")
    for sql in pb.PGBENCH_STATEMENTS:
        d = engine.decide(who, sql, session=session)
        assert (d.action, d.tier) == ("allow", "readonly"), sql
    sql, rule = pb.DENIED_PROBE
    d = engine.decide(who, sql, session=session)
    assert (d.action, d.rule_id) == ("deny", rule)
    for sql in ("DROP TABLE pgbench_accounts", "TRUNCATE pgbench_history", "SET ROLE postgres"):
        assert engine.decide(who, sql, session=session).action == "deny", sql


def test_policy_table_ratios_and_verdict(pb: ModuleType) -> None:
    S = pb.harness.Sample
    samples = [
        S("select-simple-c1", "veilgate", 1, 900.0, 0.2, 0.4, 60.0),
        S("select-simple-c1", "veilgate-nopolicy", 1, 1000.0, 0.1, 0.4, 40.0),
        S("select-prepared-c1", "veilgate", 1, 950.0, 0.2, 0.4, 41.0),
        S("select-prepared-c1", "veilgate-nopolicy", 1, 1000.0, 0.2, 0.4, 40.0),
    ]
    table = pb.policy_table(samples, ["veilgate", "veilgate-nopolicy"])
    assert "tps 0.900" in table and "(+20.0 µs/txn)" in table
    assert "tps 0.950" in table and "(+1.0 µs/txn)" in table
    assert "worst TPS ratio vs veilgate-nopolicy 0.900" in table
    assert table.rstrip().endswith("-> within")
    samples[0] = S("select-simple-c1", "veilgate", 1, 800.0, 0.2, 0.4, 60.0)
    assert pb.policy_table(samples, ["veilgate", "veilgate-nopolicy"]).rstrip().endswith("OVER")


def test_parse_decision_metrics(pb: ModuleType) -> None:
    import policy_targets

    text = (
        "# HELP veilgate_policy_decisions_total Statement policy decisions.\n"
        "# TYPE veilgate_policy_decisions_total counter\n"
        'veilgate_policy_decisions_total{action="allow"} 72639\n'
        'veilgate_policy_decisions_total{action="deny"} 1\n'
        'veilgate_other_total{action="allow"} 5\n'
    )
    assert policy_targets.parse_decision_metrics(text) == {"allow": 72639.0, "deny": 1.0}
    assert policy_targets.parse_decision_metrics("") == {}


def test_approve_policy_holds_what_pgbench_sends(pb: ModuleType, tmp_path: Path) -> None:
    from veilgate.identity.base import Principal
    from veilgate.policy.engine import PolicyEngine, SessionContext
    from veilgate.policy.loader import load_policy

    ab = pb.approvals_bench
    engine = PolicyEngine(load_policy(ab.approve_policy(tmp_path)))
    who = Principal(provider="static", subject="bench", roles=frozenset(pb.TOKEN_ROLES))
    session = SessionContext(session_id="t")
    accounts = [s for s in pb.PGBENCH_STATEMENTS if "pgbench_accounts" in s]
    for sql in accounts:
        d = engine.decide(who, sql, session=session)
        assert (d.action, d.rule_id) == ("approve", "ro-approve-accounts"), sql
    rule = engine.policy.rule_named("ro-approve-accounts")
    assert rule is not None and rule.approval is not None
    assert rule.approval.grant_uses == 0 and not rule.approval.match_constants
    # the probe is still denied, the scale probe still allowed
    assert engine.decide(who, pb.DENIED_PROBE[0], session=session).action == "deny"
    assert engine.decide(who, pb.PGBENCH_STATEMENTS[2], session=session).action == "allow"


def test_policy_table_compares_approve_with_allow(pb: ModuleType) -> None:
    S = pb.harness.Sample
    samples = [
        S("select-simple-c1", "veilgate", 1, 1000.0, 0.2, 0.4, 60.0),
        S("select-simple-c1", "veilgate-nopolicy", 1, 1100.0, 0.1, 0.4, 40.0),
        S("select-simple-c1", "veilgate-approve", 1, 970.0, 0.2, 0.4, 62.0),
    ]
    targets = ["veilgate", "veilgate-nopolicy", "veilgate-approve"]
    table = pb.policy_table(samples, targets)
    assert "veilgate-approve/allow" in table and "tps 0.970" in table
    assert "veilgate-approve: worst TPS ratio vs veilgate 0.970" in table
    assert table.rstrip().endswith("-> within")
    samples[2] = S("select-simple-c1", "veilgate-approve", 1, 900.0, 0.2, 0.4, 62.0)
    assert pb.policy_table(samples, targets).rstrip().endswith("OVER")


def test_wakeup_table(pb: ModuleType) -> None:
    ab = pb.approvals_bench
    text = ab.wakeup_table(
        [{"backend": "sqlite", "median_ms": 1.5, "p90_ms": 2.0, "max_ms": 3.0, "rounds": 5}]
    )
    assert "sqlite" in text and "median    1.50 ms" in text and "(5 decisions)" in text


def test_readwrite_policy_allows_tpcb_and_denies_the_probe(pb: ModuleType) -> None:
    """The TPC-B targets' tier allows every statement of ``pgbench -b tpcb-like`` (else the
    bench would measure denials) and still denies the destructive probe."""
    from veilgate.identity.base import Principal
    from veilgate.policy.cli import lint_main
    from veilgate.policy.engine import PolicyEngine, SessionContext
    from veilgate.policy.loader import load_policy

    out = io.StringIO()
    assert lint_main([str(pb.READWRITE_POLICY_FILE), "--strict"], out=out) == 0, out.getvalue()
    pb.check_policy_allows(pb.READWRITE_POLICY_FILE, pb.READWRITE_ROLES, pb.TPCB_STATEMENTS)
    engine = PolicyEngine(load_policy(pb.READWRITE_POLICY_FILE))
    who = Principal(provider="static", subject="bench", roles=frozenset(pb.READWRITE_ROLES))
    d = engine.decide(who, pb.DENIED_PROBE[0], session=SessionContext(session_id="t"))
    assert (d.action, d.rule_id) == ("deny", "rw-no-destruction")
    # the read-only token gets no tier here: nothing is allowed by accident
    ro = Principal(provider="static", subject="bench", roles=frozenset(pb.TOKEN_ROLES))
    d = engine.decide(ro, pb.TPCB_STATEMENTS[1], session=SessionContext(session_id="t"))
    assert d.action == "deny"


def test_tpcb_workloads_run_only_where_they_can(pb: ModuleType) -> None:
    from policy_targets import VeilgatePolicyTarget

    names = [w.name for w in pb.policy_workloads()]
    assert "tpcb-simple-c1" in names and "tpcb-simple-c8" in names
    tpcb = next(w for w in pb.policy_workloads() if w.name.startswith("tpcb-"))
    select = pb.policy_workloads()[0]
    assert tpcb.pgbench_args == ("-b", "tpcb-like", "-M", "simple")

    def target(**kw: object) -> VeilgatePolicyTarget:
        t = VeilgatePolicyTarget.__new__(VeilgatePolicyTarget)
        t.readwrite = bool(kw.get("readwrite", False))
        t.policy_file = kw.get("policy_file")  # type: ignore[assignment]
        return t

    rw = target(readwrite=True, policy_file=pb.READWRITE_POLICY_FILE)
    ro = target(policy_file=pb.POLICY_FILE)
    off = target()
    assert rw.unsupported(tpcb) is None and rw.unsupported(select) is not None
    assert ro.unsupported(tpcb) is not None and ro.unsupported(select) is None
    assert off.unsupported(tpcb) is None and off.unsupported(select) is None
