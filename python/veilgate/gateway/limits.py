"""Limits that keep one client from hurting the others: statement size, connections at once.

* **Statement size** (``limits.max_statement_bytes``): a Query or Parse larger than this is refused
  with ``54000`` before anything parses it (the policy analysis, the masking lineage).  The
  enforcer replaces it by a marker statement (:class:`SubstituteMessage`) that fails on the server
  at parse time, so the server's transaction and pipeline state is what an error there gives,
  and the rest of the session's machinery (masking's request tracking) sees a small statement.
* **Connections** (:class:`ConnectionCounter`): per principal (``limits.max_connections_per_
  principal``, and a tier's ``max_connections_per_principal``) and per policy tier (a tier's
  ``max_connections``); a session over a limit is refused after authentication with
  ``FATAL 53300`` naming the limit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from veilgate.pgwire import wire

__all__ = ["ConnectionCounter", "ConnectionGrant", "SubstituteMessage"]

STATEMENT_TAGS: Final = frozenset({ord("Q"), ord("P")})


class SubstituteMessage:
    """A client message the gateway wrote in place of the client's (same interface as the
    native ``Message``: ``tag``, ``body``, ``frame()``, ``len()``)."""

    __slots__ = ("body", "stmt_id", "tag")

    def __init__(self, tag: int, body: bytes, stmt_id: int = 0) -> None:
        self.tag = tag
        self.body = body
        self.stmt_id = stmt_id
        """The replaced message's statement record id (see the recording)."""

    def frame(self) -> bytes:
        return wire.frame(bytes([self.tag]), self.body)

    def __len__(self) -> int:
        return len(self.body) + 5


@dataclass(frozen=True, slots=True)
class ConnectionGrant:
    """A session counted against its limits; give it back with :meth:`ConnectionCounter.release`."""

    principal: tuple[str | None, str]
    tier: str | None


class ConnectionCounter:
    """Sessions at once, per principal and per policy tier (one event loop: no locking)."""

    def __init__(self) -> None:
        self._principals: Counter[tuple[str | None, str]] = Counter()
        self._tiers: Counter[str] = Counter()

    def acquire(
        self,
        principal: tuple[str | None, str],
        label: str,
        tier: str | None,
        *,
        per_principal: int | None,
        per_tier: int | None,
    ) -> ConnectionGrant | str:
        """Count one more session, or return why not (the 53300 message)."""
        if per_principal is not None and self._principals[principal] >= per_principal:
            return (
                f"too many connections for principal {label!r} "
                f"(limit {per_principal} per principal)"
            )
        if tier is not None and per_tier is not None and self._tiers[tier] >= per_tier:
            return f"too many connections for policy tier {tier!r} (limit {per_tier})"
        self._principals[principal] += 1
        if tier is not None:
            self._tiers[tier] += 1
        return ConnectionGrant(principal, tier)

    def release(self, grant: ConnectionGrant) -> None:
        self._principals[grant.principal] -= 1
        if self._principals[grant.principal] <= 0:
            del self._principals[grant.principal]
        if grant.tier is not None:
            self._tiers[grant.tier] -= 1
            if self._tiers[grant.tier] <= 0:
                del self._tiers[grant.tier]

    def count(
        self, *, principal: tuple[str | None, str] | None = None, tier: str | None = None
    ) -> int:
        if principal is not None:
            return self._principals[principal]
        if tier is not None:
            return self._tiers[tier]
        return sum(self._principals.values())
