"""An authenticator that a configuration reload can replace while the gateway runs.

Sessions, the approvals API and the admin console all hold this one object; a reload builds the
new authenticator (static tokens, OIDC providers, tier rules) aside, warms its key caches, and then
swaps :attr:`LiveAuthenticator.current`.  A handshake that already got its principal keeps it: an
identity is never re-validated by a reload.
"""

from __future__ import annotations

from .base import AuthContext, Authenticator, Principal
from .combined import TierGrant, grant_for

__all__ = ["LiveAuthenticator"]


class LiveAuthenticator:
    """Forwards to :attr:`current` (see the module docstring)."""

    def __init__(self, current: Authenticator) -> None:
        self.current = current

    async def authenticate(self, token: str, ctx: AuthContext) -> Principal:
        return await self.current.authenticate(token, ctx)

    def grant_for(self, principal: Principal) -> TierGrant | None:
        return grant_for(self.current, principal)

    async def prefetch(self) -> dict[str, bool]:
        return await prefetch(self.current)

    async def aclose(self) -> None:
        await aclose(self.current)


async def prefetch(authenticator: object) -> dict[str, bool]:
    """Warm ``authenticator``'s key caches (OIDC discovery + JWKS), if it has any."""
    fn = getattr(authenticator, "prefetch", None)
    if fn is None:
        return {}
    warm: dict[str, bool] = await fn()
    return warm


async def aclose(authenticator: object) -> None:
    fn = getattr(authenticator, "aclose", None)
    if fn is not None:
        await fn()
