"""What of a policy needs the approval store."""

from __future__ import annotations

from ..policy.model import Policy

__all__ = ["needs_approvals"]


def needs_approvals(policy: Policy) -> bool:
    """True when some rule approves or some tier can be requested as an elevation."""
    return any(
        t.elevation is not None or any(r.action == "approve" for r in t.rules) for t in policy.tiers
    )
