"""``veilgate policy simulate`` on recorded sessions: what it reports and when it fails the run
(newly allowed statements, newly unmasked results); the same policy reports no change, whatever
else the gateway refused."""

from __future__ import annotations

from typing import Any

from veilgate.audit.simulate import simulate
from veilgate.policy.loader import load_policy_text

BASE = """\
version: 1
tiers:
  - name: agents
    match: {roles: [agent]}
    rules:
      - id: agent-read
        action: allow
        message: reads
        classes: [read, transaction, session]
      - id: agent-no-secrets
        action: deny
        message: no secrets
        tables: ["public.secrets"]
"""
MASKED = (
    BASE
    + """\
masking:
  apply_to: [agents]
  columns:
    - {name: "email", op: redact}
"""
)
WIDER = BASE.replace('tables: ["public.secrets"]', 'tables: ["public.nothing"]')


def _session(masked: bool, *statements: dict[str, Any]) -> list[dict[str, Any]]:
    start = {
        "kind": "session_start",
        "masked": masked,
        "principal": {"provider": "static", "subject": "agent", "roles": ["agent"]},
    }
    return [start, *({"kind": "statement", "stmt": i, **s} for i, s in enumerate(statements))]


def _stmt(sql: str, action: str, status: str, sqlstate: str | None = None) -> dict[str, Any]:
    return {
        "sql": sql,
        "decision": {"action": action, "rule": "x"},
        "status": status,
        "sqlstate": sqlstate,
    }


RECORDED = {
    "s1": _session(
        True,
        _stmt("SELECT 1", "allow", "ok"),
        _stmt("SELECT * FROM public.secrets", "deny", "refused", "42501"),
        # allowed by the policy, refused by the gateway while recording failed
        _stmt("SELECT 2", "allow", "refused", "58030"),
    )
}


def test_the_same_policy_changes_nothing() -> None:
    report = simulate(load_policy_text(MASKED), RECORDED)
    assert report.judged == 3 and report.changes == [] and not report.widens


def test_newly_allowed_per_rule_and_principal_widens() -> None:
    report = simulate(load_policy_text(WIDER + MASKED[len(BASE) :]), RECORDED)
    assert [(c.kind, c.rule, c.principal, c.sql) for c in report.changes] == [
        ("newly_allowed", "agent-read", "static:agent", "SELECT * FROM public.secrets")
    ]
    assert report.widens and report.as_json()["newly_allowed"] == 1


def test_masking_removed_widens_and_added_does_not() -> None:
    removed = simulate(load_policy_text(BASE), RECORDED)
    assert [(c.kind, c.rule) for c in removed.changes] == [("masking_removed", "tier agents")]
    assert removed.widens and removed.newly_allowed == 0
    unmasked = {"s2": _session(False, _stmt("SELECT 1", "allow", "ok"))}
    added = simulate(load_policy_text(MASKED), unmasked)
    assert [c.kind for c in added.changes] == ["masking_added"] and not added.widens


def test_newly_denied_and_newly_held_do_not_widen() -> None:
    held = (
        BASE
        + """\
      - id: agent-jit
        action: approve
        message: needs approval
        classes: [read]
        tables: ["public.orders"]
        approval:
          approvers: {users: [alice]}
"""
    )
    recorded = {
        "s3": _session(
            False,
            _stmt("SELECT * FROM public.orders", "allow", "ok"),
            _stmt("SELECT * FROM public.secrets_v2", "allow", "ok"),
        )
    }
    narrower = held.replace('tables: ["public.secrets"]', 'tables: ["public.secrets*"]')
    report = simulate(load_policy_text(narrower), recorded)
    assert sorted((c.kind, c.rule) for c in report.changes) == [
        ("newly_denied", "agent-no-secrets"),
        ("newly_held", "agent-jit"),
    ]
    assert not report.widens
