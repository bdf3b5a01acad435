"""What an ``approve`` rule (and a tier open to elevation) asks of its approvers.

Policy file shape, on a rule with ``action: approve``::

    approval:
      approvers:                # who may approve (any of these qualifies)
        roles: [Db.Approver]    #   app roles in the approver's OIDC token
        groups: [<group id>]    #   groups in the approver's OIDC token
        users: [alice]          #   static names for `veilgate approvals approve --as NAME`
                                #   (development: the CLI trusts --as; its users have the store)
      required: 1               # distinct approvers needed (the requester never counts)
      grant_ttl_s: 900          # how long the grant lives once approved
      grant_uses: 1             # runs the grant allows (0: any number until it expires)
      request_ttl_s: 3600       # how long a request waits for a decision
      require_reason: false     # the agent must `SET veilgate.reason = '...'` first
      mode: fail-fast           # fail-fast (42Z01 at once, retry after approval) | wait
      wait_timeout_s: 300       # wait mode: how long the statement is held
      match_constants: true     # constants and bind parameters are part of what is approved

and on a tier that principals of other tiers may request for a while
(``SET veilgate.request_tier = 'name'``)::

    elevation:
      approvers: {roles: [Db.Approver]}
      required: 1
      max_ttl_s: 3600           # longest elevation granted (a request may ask for less)
      from_tiers: [read]        # which tiers may ask (default: every other tier)
      require_reason: true

An approve rule without ``approvers`` can only be approved from the CLI, by an operator with
write access to the state store (``policy lint`` warns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ..identity.base import Principal

__all__ = [
    "APPROVAL_KEYS",
    "APPROVER_KEYS",
    "DEFAULT_APPROVAL",
    "ELEVATION_KEYS",
    "MODES",
    "ApprovalSpec",
    "ApproverSpec",
    "ElevationSpec",
]

MODES: Final = ("fail-fast", "wait")
APPROVER_KEYS: Final = ("roles", "groups", "users")
APPROVAL_KEYS: Final = (
    "approvers",
    "required",
    "grant_ttl_s",
    "grant_uses",
    "request_ttl_s",
    "require_reason",
    "mode",
    "wait_timeout_s",
    "match_constants",
)
ELEVATION_KEYS: Final = ("approvers", "required", "max_ttl_s", "from_tiers", "require_reason")


@dataclass(frozen=True, slots=True)
class ApproverSpec:
    """Who may approve: any listed role, group or static user name qualifies."""

    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.roles or self.groups or self.users)

    def allows_principal(self, p: Principal) -> bool:
        """An approver authenticated with an OIDC token (the HTTP API)."""
        if self.roles & p.roles:
            return True
        return p.groups is not None and bool(self.groups & p.groups)

    def allows_user(self, name: str) -> bool:
        """A static name (``veilgate approvals approve --as NAME``); with no approvers at all,
        the CLI is the only way to approve and anyone with the store may."""
        return name in self.users or self.empty

    def to_json(self) -> dict[str, list[str]]:
        return {k: sorted(getattr(self, k)) for k in APPROVER_KEYS}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApproverSpec:
        return cls(**{k: frozenset(str(v) for v in d.get(k, ())) for k in APPROVER_KEYS})


@dataclass(frozen=True, slots=True)
class ApprovalSpec:
    approvers: ApproverSpec = field(default_factory=ApproverSpec)
    required: int = 1
    grant_ttl_s: float = 900.0
    grant_uses: int = 1
    """0: any number of runs until the grant expires."""
    request_ttl_s: float = 3600.0
    require_reason: bool = False
    mode: str = "fail-fast"
    wait_timeout_s: float = 300.0
    match_constants: bool = True


DEFAULT_APPROVAL: Final = ApprovalSpec()


@dataclass(frozen=True, slots=True)
class ElevationSpec:
    approvers: ApproverSpec = field(default_factory=ApproverSpec)
    required: int = 1
    max_ttl_s: float = 3600.0
    from_tiers: frozenset[str] | None = None
    """None: any other tier may ask."""
    require_reason: bool = False

    def allows_from(self, tier: str | None) -> bool:
        return tier is not None and (self.from_tiers is None or tier in self.from_tiers)
