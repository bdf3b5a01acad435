"""The gateway's authenticator: static tokens and/or OIDC, plus each principal's tier grant.

:class:`GatewayAuthenticator` sends JWT-shaped tokens (three base64url segments, a JSON header) to
the OIDC authenticator and everything else to the static one, so neither sees the other's tokens.
:meth:`GatewayAuthenticator.grant_for` answers which tier (and upstream login role) a principal
gets; :func:`upstream_login` turns that into the target's login, or refuses.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Final

from veilgate.config_model import GatewayConfig, TargetConfig
from veilgate.identity.base import AuthContext, AuthError, Principal
from veilgate.identity.oidc import OIDCAuthenticator
from veilgate.identity.providers import identity_from_mapping
from veilgate.identity.static import StaticTokenAuthenticator

_JWT_SHAPE: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (header starts with ``{"``): what OIDC providers issue as access tokens."""
    return _JWT_SHAPE.fullmatch(token) is not None


@dataclass(frozen=True, slots=True)
class TierGrant:
    """What a principal may connect as: its tier and the upstream login role for it."""

    tier: str | None
    login_role: str | None
    """``None``: the target's default login (``user``)."""


DEFAULT_GRANT: Final = TierGrant(None, None)


class LoginDenied(Exception):
    """The principal has no upstream login for this target; ``reason`` is for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class GatewayAuthenticator:
    """Static tokens and/or OIDC behind one :class:`~veilgate.identity.base.Authenticator`."""

    def __init__(
        self,
        static: StaticTokenAuthenticator | None = None,
        oidc: OIDCAuthenticator | None = None,
        static_tiers: dict[str, str | None] | None = None,
    ) -> None:
        if static is None and oidc is None:
            raise ValueError("at least one authenticator is required")
        self.static = static
        self.oidc = oidc
        self._static_tiers = dict(static_tiers or {})
        """Static token name → tier."""

    @classmethod
    def from_config(cls, config: GatewayConfig, **oidc_kwargs: Any) -> GatewayAuthenticator:
        auth = config.auth
        static = StaticTokenAuthenticator(auth.static_tokens) if auth.static_tokens else None
        oidc = None
        if auth.oidc is not None:
            settings = identity_from_mapping(auth.oidc, "auth.oidc")
            oidc = OIDCAuthenticator.from_settings(settings, **oidc_kwargs)
        return cls(static, oidc, {t.name: t.tier for t in auth.static_tokens})

    async def authenticate(self, token: str, ctx: AuthContext) -> Principal:
        if self.oidc is not None and (self.static is None or looks_like_jwt(token)):
            return await self.oidc.authenticate(token, ctx)
        if self.static is None:
            raise AuthError("malformed", "not a JWT")
        return await self.static.authenticate(token, ctx)

    def grant_for(self, principal: Principal) -> TierGrant | None:
        """The principal's tier grant, or ``None`` (no tier: deny)."""
        if principal.provider == "static":
            tier = self._static_tiers.get(principal.subject)
            if tier is None:
                return DEFAULT_GRANT
            role = tier
            if self.oidc is not None:
                for rule in self.oidc.rules:
                    if rule.tier == tier and rule.login_role is not None:
                        role = rule.login_role
                        break
            return TierGrant(tier, role)
        if self.oidc is None:
            return None
        match = self.oidc.tier_for(principal)
        return None if match is None else TierGrant(match.tier, match.login_role)

    async def prefetch(self) -> dict[str, bool]:
        return await self.oidc.prefetch() if self.oidc is not None else {}

    async def aclose(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()


def grant_for(authenticator: object, principal: Principal) -> TierGrant | None:
    """The grant from ``authenticator`` if it knows tiers, else the default login."""
    fn = getattr(authenticator, "grant_for", None)
    if fn is None:
        return DEFAULT_GRANT
    grant: TierGrant | None = fn(principal)
    return grant


def upstream_login(target: TargetConfig, grant: TierGrant | None) -> TargetConfig:
    """``target`` with the user and password of ``grant``'s login role (raises LoginDenied)."""
    if grant is None:
        raise LoginDenied("no_tier", "no tier rule matches the principal")
    role = grant.login_role
    if role is None:
        return target
    login = target.logins.get(role)
    if login is None:
        if role == target.user:
            return target
        raise LoginDenied(
            "no_login", f"tier {grant.tier!r}: target has no login for login_role {role!r}"
        )
    return dataclasses.replace(
        target,
        user=login.user,
        password_env=login.password_env,
        password_file=login.password_file,
        logins={},
    )
