"""``veilgate policy simulate``: what a new policy would have done to recorded sessions.

Every statement of the selected sessions is judged again, as the principal that ran it (rebuilt
from the session's start record), by the new policy, and compared with what happened:

* **newly denied** -- it ran (allowed, or allowed under an approval) and would now be denied;
* **newly allowed** -- it was denied, held for an approval, or refused, and would now run
  without one (this is what widens access: the command exits 1, so it can gate a pipeline);
* **newly held** -- it ran without an approval and would now need one;
* **masking added / removed** -- the session's tier is masked under the new policy and was not
  (or the other way round); reported once per session with its statement count.  Removed
  masking widens access too: results would be shown unmasked, so it also makes the command
  exit 1.

What is compared is the policy's decision: a statement the policy allowed but the gateway
refused for another reason (recording failing, a masked column's filter refused by masking)
counts as allowed then, so simulating the same policy reports no change.

Statements recorded without a policy count as allowed.  Statements that cannot be judged are
counted, not guessed: an excerpt that was cut off, a text that was never seen (SQL PREPARE).
Statements whose constants were recorded redacted (``audit.redact_literals``) are judged from the
redacted text and counted separately: rules that look at constant values may judge them
differently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from veilgate.identity.base import Principal
from veilgate.policy.engine import PolicyEngine, SessionContext
from veilgate.policy.model import Policy

from .reader import Record
from .timeline import short_sql

__all__ = ["Change", "SimulationReport", "principal_of", "simulate"]

KINDS = ("newly_allowed", "newly_denied", "newly_held", "masking_added", "masking_removed")


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    sid: str
    principal: str
    rule: str
    """The new policy's rule (the old one for masking changes)."""
    stmt: int | None
    fingerprint: str | None
    sql: str | None
    old: str
    new: str


@dataclass
class SimulationReport:
    sessions: int = 0
    statements: int = 0
    judged: int = 0
    unchanged: int = 0
    not_judged: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redacted: int = 0
    changes: list[Change] = field(default_factory=list)

    @property
    def newly_allowed(self) -> int:
        return sum(1 for c in self.changes if c.kind == "newly_allowed")

    @property
    def masking_removed(self) -> int:
        return sum(1 for c in self.changes if c.kind == "masking_removed")

    @property
    def widens(self) -> bool:
        """Something would run that did not, or be shown unmasked: exit status 1."""
        return bool(self.newly_allowed or self.masking_removed)

    def grouped(self) -> dict[tuple[str, str, str], list[Change]]:
        """Changes by (kind, rule, principal)."""
        out: dict[tuple[str, str, str], list[Change]] = defaultdict(list)
        for c in self.changes:
            out[(c.kind, c.rule, c.principal)].append(c)
        return dict(sorted(out.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1], kv[0][2])))

    def as_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "statements": self.statements,
            "judged": self.judged,
            "unchanged": self.unchanged,
            "not_judged": dict(self.not_judged),
            "judged_from_redacted_text": self.redacted,
            "newly_allowed": self.newly_allowed,
            "masking_removed": self.masking_removed,
            "widens": self.widens,
            "changes": [
                {
                    "kind": k,
                    "rule": rule,
                    "principal": who,
                    "count": len(cs),
                    "examples": [
                        {
                            "sid": c.sid,
                            "stmt": c.stmt,
                            "fingerprint": c.fingerprint,
                            "sql": c.sql,
                            "old": c.old,
                            "new": c.new,
                        }
                        for c in cs[:5]
                    ],
                }
                for (k, rule, who), cs in self.grouped().items()
            ],
        }


def principal_of(start: Mapping[str, Any]) -> Principal | None:
    """The principal a session ran as, from its start record."""
    p = start.get("principal")
    if not isinstance(p, Mapping) or not p.get("subject"):
        return None
    groups = p.get("groups", [])
    return Principal(
        provider=str(p.get("provider") or "static"),
        subject=str(p["subject"]),
        tenant=p.get("tenant"),
        client_app=p.get("client_app"),
        app_only=bool(p.get("app_only", False)),
        roles=frozenset(p.get("roles") or ()),
        groups=None if groups is None else frozenset(groups),
    )


def _old_action(r: Record) -> str:
    """What happened to a recorded statement: allow (it ran), approve (held), deny, refuse."""
    d = r.get("decision")
    action = str(d.get("action")) if isinstance(d, Mapping) else "allow"
    if action == "approve" and r.get("status") != "refused":
        return "allow-approved"  # ran under a grant
    # a statement the policy allowed and the gateway refused for another reason (recording
    # failing, masking's guard) is compared as allowed: that refusal is not the policy's
    return action


def _compare(old: str, new: str) -> str | None:
    ran = old in ("allow", "allow-approved")
    if new == "allow":
        return None if ran else "newly_allowed"
    if new == "approve":
        return None if old in ("approve", "allow-approved") else "newly_held"
    return "newly_denied" if ran else None


def simulate(
    policy: Policy, sessions: Mapping[str, Sequence[Record]], *, redacted: bool = False
) -> SimulationReport:
    """Judge every statement of ``sessions`` (sid -> records in order) by ``policy``."""
    engine = PolicyEngine(policy)
    report = SimulationReport()
    for sid, records in sessions.items():
        start = next((r for r in records if r.get("kind") == "session_start"), None)
        if start is None:
            report.not_judged["session start not recorded (purged)"] += 1
            continue
        principal = principal_of(start)
        if principal is None:
            report.not_judged["no principal in the start record"] += 1
            continue
        report.sessions += 1
        who = principal.label()
        ctx = SessionContext(session_id=f"simulate-{sid}")
        statements = [r for r in records if r.get("kind") == "statement"]
        _masking(report, policy, engine, principal, start, sid, who, len(statements))
        for r in statements:
            report.statements += 1
            sql = r.get("sql")
            if not isinstance(sql, str):
                report.not_judged["text not seen (SQL PREPARE)"] += 1
                continue
            if r.get("sql_truncated"):
                report.not_judged["excerpt cut off"] += 1
                continue
            if r.get("path") == "function":
                report.not_judged["protocol FunctionCall"] += 1
                continue
            if redacted or "'***'" in sql:
                report.redacted += 1
            d = engine.decide(principal, sql, session=ctx)
            if d.allowed:
                ctx.apply(d)
            report.judged += 1
            old = _old_action(r)
            kind = _compare(old, d.action)
            if kind is None:
                report.unchanged += 1
                continue
            report.changes.append(
                Change(
                    kind,
                    sid,
                    who,
                    d.rule_id,
                    r.get("stmt"),
                    r.get("fp"),
                    short_sql(sql, 200),
                    old,
                    d.action,
                )
            )
    return report


def _masking(
    report: SimulationReport,
    policy: Policy,
    engine: PolicyEngine,
    principal: Principal,
    start: Mapping[str, Any],
    sid: str,
    who: str,
    statements: int,
) -> None:
    tier = engine.tier_for(principal)
    masking = policy.masking
    now = bool(tier is not None and masking is not None and masking.for_tier(tier.name) is not None)
    before = bool(start.get("masked"))
    if now == before:
        return
    kind = "masking_added" if now else "masking_removed"
    report.changes.append(
        Change(
            kind,
            sid,
            who,
            f"tier {tier.name if tier else '(none)'}",
            None,
            None,
            f"{statements} statement(s) of the session",
            "masked" if before else "not masked",
            "masked" if now else "not masked",
        )
    )


def render(report: SimulationReport) -> Iterable[str]:
    yield (
        f"{report.sessions} session(s), {report.statements} statement(s): {report.judged} judged, "
        f"{report.unchanged} unchanged, {len(report.changes)} change(s)"
    )
    for reason, n in sorted(report.not_judged.items()):
        yield f"  not judged: {n} ({reason})"
    if report.redacted:
        yield (
            f"  judged from redacted text: {report.redacted} (rules on constant values may differ)"
        )
    for (kind, rule, who), cs in report.grouped().items():
        yield f"{kind.replace('_', ' ')}: {len(cs)}  rule {rule}  principal {who}"
        for c in cs[:3]:
            where = f"session {c.sid}" + (f" #{c.stmt}" if c.stmt is not None else "")
            yield f"    {where}: {c.old} -> {c.new}: {c.sql}"
        if len(cs) > 3:
            yield f"    ... {len(cs) - 3} more"
    if report.newly_allowed:
        yield f"NEWLY ALLOWED: {report.newly_allowed} statement(s) would run that did not"
    if report.masking_removed:
        yield f"MASKING REMOVED: {report.masking_removed} session(s) would see results unmasked"
