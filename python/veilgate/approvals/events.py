"""Audit events of approvals, through the same ``AuditSink.emit`` as every decision.

One event per request made, vote cast, decision reached, grant used, request or grant expired,
wait ended, elevation applied or ended; each tied to the principal (identity key and label) and,
where there is one, the session.  Never a token, a bind parameter or a result value: the statement
text is recorded as decisions record it (``record_sql``), parameters only live in the store for
the approvers to read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from typing import Any

from .model import Grant, Request, Vote

__all__ = ["ApprovalEvent"]


def _key_pair(principal_key: str) -> tuple[str | None, str]:
    """``provider|tenant|subject`` → (tenant, subject), the key other audit events use."""
    parts = principal_key.split("|", 2)
    if len(parts) != 3:
        return (None, principal_key)
    tenant = None if parts[1] == "-" else parts[1]
    return (tenant, parts[2])


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    ts: float
    event: str
    """request, vote, approved, denied, expired, grant_used, grant_ended, grant_revoked,
    wait_timeout, wait_cancelled, elevation_applied, elevation_ended."""
    request_id: str
    request_kind: str
    principal_key: tuple[str | None, str]
    principal_label: str
    session_id: str
    rule_id: str
    tier: str | None
    fingerprint: str
    requested_tier: str | None = None
    reason: str | None = None
    approver: str | None = None
    vote: str | None = None
    comment: str | None = None
    via: str | None = None
    grant_id: str | None = None
    uses: int | None = None
    expires_at: float | None = None
    sql: str | None = None
    kind: str = "approval"

    @classmethod
    def of_request(
        cls, event: str, req: Request, *, session_id: str | None = None, ts: float | None = None
    ) -> ApprovalEvent:
        return cls(
            ts=time.time() if ts is None else ts,
            event=event,
            request_id=req.id,
            request_kind=req.kind,
            principal_key=_key_pair(req.principal_key),
            principal_label=req.principal_label,
            session_id=req.session_id if session_id is None else session_id,
            rule_id=req.rule_id,
            tier=req.tier,
            fingerprint=req.fingerprint,
            requested_tier=req.requested_tier,
            reason=req.reason,
            expires_at=req.expires_at if event == "request" else None,
            sql=req.sql,
        )

    @classmethod
    def of_vote(cls, req: Request, vote: Vote) -> ApprovalEvent:
        base = cls.of_request("vote", req, ts=vote.at)
        return replace(
            base, approver=vote.approver_label, vote=vote.vote, comment=vote.comment, via=vote.via
        )

    @classmethod
    def of_grant(
        cls,
        event: str,
        grant: Grant,
        *,
        principal_label: str,
        session_id: str,
        rule_id: str = "",
        tier: str | None = None,
        sql: str | None = None,
    ) -> ApprovalEvent:
        return cls(
            ts=time.time(),
            event=event,
            request_id=grant.request_id,
            request_kind=grant.kind,
            principal_key=_key_pair(grant.principal_key),
            principal_label=principal_label,
            session_id=session_id,
            rule_id=rule_id,
            tier=tier,
            fingerprint=grant.fingerprint,
            requested_tier=grant.tier,
            grant_id=grant.id,
            uses=grant.uses,
            expires_at=grant.expires_at,
            sql=sql,
        )

    def to_json(self, *, record_sql: bool = True) -> str:
        # field by field (``asdict`` deep-copies: tens of microseconds per event)
        d: dict[str, Any] = {f: getattr(self, f) for f in _FIELDS}
        d["principal_key"] = list(self.principal_key)
        if not record_sql:
            d.pop("sql", None)
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


_FIELDS = tuple(f.name for f in fields(ApprovalEvent))
