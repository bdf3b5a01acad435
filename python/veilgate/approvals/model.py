"""Approval requests, votes and grants as the store keeps them, and who is who.

A **request** is made by a principal for one statement fingerprint (``kind = statement``) or for a
tier (``kind = elevation``).  It stays ``pending`` until enough distinct approvers approve
(``approved``; a grant is created), one denies (``denied``), or it outlives ``expires_at``
(``expired``).  A **grant** binds the principal's identity key and the fingerprint (or tier) to an
expiry and a number of uses.

Identity keys are ``provider|tenant|subject`` strings: a static token named ``x`` and an OIDC
subject ``x`` are different people.  Approvers on the CLI are ``user|-|NAME`` (self-declared:
the CLI is for operators who hold the state store).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from ..identity.base import Principal
from ..policy.approval_spec import ApprovalSpec, ApproverSpec, ElevationSpec

__all__ = [
    "KIND_ELEVATION",
    "KIND_STATEMENT",
    "STATUSES",
    "ApprovalError",
    "Grant",
    "NotAnApprover",
    "Request",
    "RequestClosed",
    "RequestNotFound",
    "SelfApproval",
    "Vote",
    "VoteResult",
    "approver_key",
    "new_id",
    "principal_key",
]

KIND_STATEMENT: Final = "statement"
KIND_ELEVATION: Final = "elevation"
STATUSES: Final = ("pending", "approved", "denied", "expired")


def principal_key(p: Principal) -> str:
    """The identity a request and a grant belong to."""
    return f"{p.provider}|{p.tenant or '-'}|{p.subject}"


def approver_key(name: str) -> str:
    """The identity of a CLI approver (``--as NAME``)."""
    return f"user|-|{name}"


def new_id(prefix: str = "ap") -> str:
    """A short, unguessable, copy-pasteable id (``ap-`` + 16 base32 characters)."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(16))


class ApprovalError(Exception):
    """A vote or lookup that cannot be done; ``code`` is for the HTTP API."""

    code = "invalid"
    status = 400


class RequestNotFound(ApprovalError):
    code = "not_found"
    status = 404


class RequestClosed(ApprovalError):
    """The request is no longer pending (approved, denied or expired)."""

    code = "closed"
    status = 409


class SelfApproval(ApprovalError):
    code = "self_approval"
    status = 403


class NotAnApprover(ApprovalError):
    code = "not_an_approver"
    status = 403


@dataclass(frozen=True, slots=True)
class Vote:
    approver: str
    approver_label: str
    via: str
    """``cli`` or ``api``."""
    vote: str
    """``approve`` or ``deny``."""
    comment: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "approver": self.approver_label,
            "approver_key": self.approver,
            "via": self.via,
            "vote": self.vote,
            "comment": self.comment,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    kind: str
    status: str
    principal_key: str
    principal_label: str
    session_id: str
    tier: str | None
    rule_id: str
    fingerprint: str
    sql: str
    params: list[str | None] | None
    """Bind parameters as the approver sees them (text, or ``\\x`` hex); never in events."""
    reason: str | None
    requested_tier: str | None
    approvers: ApproverSpec
    required: int
    grant_ttl_s: float
    grant_uses: int
    node: str
    created_at: float
    expires_at: float
    decided_at: float | None = None
    votes: tuple[Vote, ...] = field(default=())

    @property
    def approvals(self) -> int:
        return sum(1 for v in self.votes if v.vote == "approve")

    def spec_json(self) -> str:
        return json.dumps(
            {
                "approvers": self.approvers.to_json(),
                "required": self.required,
                "grant_ttl_s": self.grant_ttl_s,
                "grant_uses": self.grant_uses,
            },
            sort_keys=True,
        )

    def to_json(self, *, with_params: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "principal": self.principal_label,
            "principal_key": self.principal_key,
            "session_id": self.session_id,
            "tier": self.tier,
            "rule_id": self.rule_id,
            "fingerprint": self.fingerprint,
            "sql": self.sql,
            "reason": self.reason,
            "requested_tier": self.requested_tier,
            "approvers": self.approvers.to_json(),
            "required": self.required,
            "approvals": self.approvals,
            "grant_ttl_s": self.grant_ttl_s,
            "grant_uses": self.grant_uses,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_at": self.decided_at,
            "votes": [v.to_json() for v in self.votes],
        }
        if with_params:
            d["params"] = self.params
        return d


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    request_id: str
    kind: str
    principal_key: str
    fingerprint: str
    tier: str | None
    created_at: float
    expires_at: float
    uses_allowed: int
    """0: any number of uses until ``expires_at``."""
    uses: int

    @property
    def unlimited(self) -> bool:
        return self.uses_allowed == 0


@dataclass(frozen=True, slots=True)
class VoteResult:
    request: Request
    counted: bool
    """False when this approver had already voted (a vote counts once)."""
    grant: Grant | None
    """Set when this vote completed the approval."""


def statement_spec(spec: ApprovalSpec) -> dict[str, Any]:
    return {
        "approvers": spec.approvers,
        "required": spec.required,
        "grant_ttl_s": spec.grant_ttl_s,
        "grant_uses": spec.grant_uses,
        "request_ttl_s": spec.request_ttl_s,
    }


def elevation_spec(spec: ElevationSpec, ttl_s: float) -> dict[str, Any]:
    return {
        "approvers": spec.approvers,
        "required": spec.required,
        "grant_ttl_s": min(ttl_s, spec.max_ttl_s),
        "grant_uses": 0,
        "request_ttl_s": 3600.0,
    }
