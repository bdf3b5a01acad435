"""The authenticator interface and the principal it yields.

The gateway hands the password it received (a token) to an :class:`Authenticator`.  It gets back a
:class:`Principal` or an :class:`AuthError`.  The client only ever sees PostgreSQL's generic
``28P01`` text; the error's ``reason`` goes to the gateway log and metrics.  The token itself is
never kept: no field of a principal holds it or anything it can be recovered from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated non-human (or human) identity, as policy sees it."""

    provider: str
    """Name of the authenticator/provider that vouched for it (``static``, ``entra``...)."""
    subject: str
    """Immutable identity key within the tenant: object id, or the static token's name."""
    tenant: str | None = None
    client_app: str | None = None
    """Client application id (Entra ``azp``/``appid``)."""
    app_only: bool = False
    roles: frozenset[str] = field(default_factory=frozenset)
    groups: frozenset[str] | None = field(default_factory=frozenset)
    """``None`` means unknown (e.g. groups overage), never "no groups"."""
    expires_at: float | None = None
    """Token expiry, seconds since the epoch."""
    token_id: str | None = None
    """The token's own id (``uti``/``jti``) for audit correlation; not the token."""

    @property
    def key(self) -> tuple[str | None, str]:
        """The identity key policy and audit use: (tenant, subject)."""
        return (self.tenant, self.subject)

    def label(self) -> str:
        """Short, log-safe rendering, also used in the upstream ``application_name``."""
        app = f",app={self.client_app}" if self.client_app else ""
        return f"{self.provider}:{self.subject}{app}"


@dataclass(frozen=True, slots=True)
class AuthContext:
    """What the gateway knows about the connection when it asks for authentication."""

    peer: str
    """Client address, ``host:port``."""
    user: str
    """Startup ``user`` (informational: never selects an upstream role by itself)."""
    database: str
    application_name: str | None = None


class AuthError(Exception):
    """Refusal.  ``reason`` is a short machine-friendly slug for logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Authenticator(Protocol):
    """Validates a presented token.  Must not block the event loop."""

    async def authenticate(self, token: str, ctx: AuthContext) -> Principal:
        """Return the principal for ``token`` or raise :class:`AuthError`."""
        ...
