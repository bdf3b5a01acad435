"""The statement table (tests/policy_cases.yaml) against the example policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from veilgate.identity.base import Principal
from veilgate.policy.analysis import analyze
from veilgate.policy.engine import PolicyEngine, SessionContext
from veilgate.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "python" / "veilgate" / "policy" / "example_policy.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests" / "policy_cases.yaml").read_text())

PRINCIPALS = {
    "ro": Principal(provider="entra", subject="agent-ro", roles=frozenset({"db.readonly"})),
    "rw": Principal(provider="entra", subject="agent-rw", roles=frozenset({"db.readwrite"})),
}


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy(EXAMPLE))


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 150
    for case in CASES:
        assert {"sql", "ro", "rw"} <= set(case), case
        assert case["ro"] in ("allow", "deny", "approve")
        assert case["rw"] in ("allow", "deny", "approve")


def _session(case: dict[str, Any]) -> SessionContext:
    scs = case.get("scs", "on") not in ("off", False)
    s = SessionContext(session_id="t", standard_conforming_strings=scs)
    for name, sql in (case.get("prepared") or {}).items():
        msg = analyze(sql, standard_conforming_strings=scs)
        assert len(msg.statements) == 1, sql
        s.prepared[name] = msg.statements[0]
    return s


@pytest.mark.parametrize("tier", ["ro", "rw"])
@pytest.mark.parametrize("case", CASES, ids=[f"{i}:{c['sql'][:40]}" for i, c in enumerate(CASES)])
def test_statement(engine: PolicyEngine, case: dict[str, Any], tier: str) -> None:
    d = engine.decide(PRINCIPALS[tier], case["sql"], session=_session(case))
    why = f"{case['sql']!r}: {d.action} by {d.rule_id}: {d.reason}"
    assert d.action == case[tier], why
    if f"{tier}_rule" in case:
        assert d.rule_id == case[f"{tier}_rule"], why
    assert d.tier == {"ro": "readonly", "rw": "readwrite"}[tier]
    # A second decision of the same text is a cache hit with the same answer.
    d2 = engine.decide(PRINCIPALS[tier], case["sql"], session=_session(case))
    assert d2.action == d.action and d2.rule_id == d.rule_id
