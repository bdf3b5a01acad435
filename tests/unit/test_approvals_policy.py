"""Policy files: a rule's ``approval:`` and a tier's ``elevation:``, with file:line errors."""

from __future__ import annotations

import pytest

from veilgate.approvals.policy import needs_approvals
from veilgate.policy.approval_spec import ApprovalSpec, ApproverSpec
from veilgate.policy.loader import PolicyError, load_policy_text

BASE = """\
version: 1
tiers:
  - name: agents
    match: {roles: [agent]}
    rules:
      - id: approve-writes
        action: approve
        message: writes need approval
        classes: [write]
APPROVAL
  - name: rw
    match: {roles: [rw]}
ELEVATION
    rules:
      - {id: rw-all, action: allow, message: all, classes: [read, write]}
"""


def _policy(approval: str = "", elevation: str = "") -> str:
    return BASE.replace("APPROVAL\n", approval).replace("ELEVATION\n", elevation)


def test_defaults_and_full_options() -> None:
    p = load_policy_text(_policy())
    rule = p.rule_named("approve-writes")
    assert rule is not None and rule.approval == ApprovalSpec()
    assert not needs_approvals(
        load_policy_text(_policy().replace("action: approve", "action: deny"))
    )
    assert needs_approvals(p)
    p = load_policy_text(
        _policy(
            """\
        approval:
          approvers: {roles: [Db.Approver], groups: [g1], users: [alice]}
          required: 2
          grant_ttl_s: 60
          grant_uses: 0
          request_ttl_s: 600
          require_reason: true
          mode: wait
          wait_timeout_s: 30
          match_constants: false
""",
            """\
    elevation:
      approvers: {users: [alice, bob]}
      required: 2
      max_ttl_s: 900
      from_tiers: [agents]
      require_reason: true
""",
        )
    )
    rule = p.rule_named("approve-writes")
    assert rule is not None and rule.approval == ApprovalSpec(
        approvers=ApproverSpec(frozenset({"Db.Approver"}), frozenset({"g1"}), frozenset({"alice"})),
        required=2,
        grant_ttl_s=60.0,
        grant_uses=0,
        request_ttl_s=600.0,
        require_reason=True,
        mode="wait",
        wait_timeout_s=30.0,
        match_constants=False,
    )
    rw = p.tier_named("rw")
    assert rw is not None and rw.elevation is not None
    assert rw.elevation.required == 2 and rw.elevation.max_ttl_s == 900.0
    assert rw.elevation.allows_from("agents") and not rw.elevation.allows_from("rw")


def test_errors_name_file_line_and_key() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(
            _policy(
                """\
        approval:
          approvers: {users: [alice], teams: [x]}
          required: 0
          grant_uses: -1
          mode: later
          match_constants: maybe
          grant_ttl_s: 1e9
""",
                "    elevation: {max_ttl_s: 0, from_tiers: 3}\n",
            ),
            "p.yaml",
        )
    text = str(info.value)
    assert "p.yaml:11: tiers[0].rules[0].approval.approvers.teams: unknown key" in text
    assert "p.yaml:12: tiers[0].rules[0].approval.required: expected an integer between 1" in text
    assert "p.yaml:13: tiers[0].rules[0].approval.grant_uses" in text
    assert "p.yaml:14: tiers[0].rules[0].approval.mode: expected one of fail-fast, wait" in text
    assert "p.yaml:15: tiers[0].rules[0].approval.match_constants: expected true or false" in text
    assert "p.yaml:16: tiers[0].rules[0].approval.grant_ttl_s" in text
    assert "tiers[1].elevation.max_ttl_s" in text
    assert "tiers[1].elevation.from_tiers: expected a list of strings" in text


def test_approval_only_on_approve_rules_and_enough_users() -> None:
    text = _policy("        approval: {required: 1}\n").replace("action: approve", "action: deny")
    with pytest.raises(PolicyError, match="approval: only rules with action: approve"):
        load_policy_text(text)
    with pytest.raises(PolicyError, match="3 approvers required but only 2 users may approve"):
        load_policy_text(_policy("        approval: {approvers: {users: [a, b]}, required: 3}\n"))


def test_approver_spec_matching() -> None:
    from veilgate.identity.base import Principal

    spec = ApproverSpec(frozenset({"Db.Approver"}), frozenset({"g1"}), frozenset({"alice"}))
    assert spec.allows_principal(Principal("entra", "x", roles=frozenset({"Db.Approver"})))
    assert spec.allows_principal(Principal("entra", "x", groups=frozenset({"g1"})))
    assert not spec.allows_principal(Principal("entra", "x", roles=frozenset({"Db.Read"})))
    assert not spec.allows_principal(Principal("entra", "x", groups=None))  # overage: unknown
    assert spec.allows_user("alice") and not spec.allows_user("bob")
    assert ApproverSpec().allows_user("anyone")  # no approvers: the CLI operator decides
    assert not ApproverSpec().allows_principal(Principal("entra", "x", roles=frozenset({"a"})))
