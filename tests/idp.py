"""Test helper: a real Entra-shaped IdP over HTTP on 127.0.0.1 (``veilgate.identity.devidp``).

``async with running_idp() as idp:`` starts one; :func:`make_authenticator` builds an
:class:`OIDCAuthenticator` that trusts it (real discovery and JWKS fetches over loopback HTTP).
RSA keys are drawn from a small pool generated once per process to keep the suite fast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from veilgate.identity.base import AuthContext
from veilgate.identity.devidp import DevIdP, SigningKeyPair
from veilgate.identity.jwks import JWKSSettings
from veilgate.identity.oidc import OIDCAuthenticator
from veilgate.identity.providers import Provider, RateLimitSettings, TierRule

CTX = AuthContext(peer="127.0.0.1:50000", user="agent", database="app")

DEFAULT_RULES = (
    TierRule("admin", login_role="vg_admin", any_roles=frozenset({"Db.Admin"})),
    TierRule("read", login_role="vg_read", any_roles=frozenset({"Db.Read", "db-read"})),
)

_POOL: list[SigningKeyPair] = []


def pooled_key(i: int = 0) -> SigningKeyPair:
    while len(_POOL) <= i:
        _POOL.append(SigningKeyPair.generate())
    return _POOL[i]


class FakeClock:
    """Monotonic test clock (seconds); starts at 1000."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def running_idp(key_index: int = 0, **kwargs: Any) -> AsyncIterator[DevIdP]:
    kwargs.setdefault("keys", [pooled_key(key_index)])
    idp = DevIdP(**kwargs)
    await idp.start()
    try:
        yield idp
    finally:
        await idp.stop()


def make_authenticator(
    idp: DevIdP,
    rules: Sequence[TierRule] = DEFAULT_RULES,
    *,
    clock: FakeClock | None = None,
    rate_limit: RateLimitSettings | None = None,
    jwks: JWKSSettings | None = None,
    extra_providers: Sequence[Provider] = (),
    **provider_overrides: Any,
) -> OIDCAuthenticator:
    return OIDCAuthenticator(
        [idp.provider_config(**provider_overrides), *extra_providers],
        rules,
        clock=clock or time.monotonic,
        rate_limit=rate_limit or RateLimitSettings(enabled=False),
        jwks_settings=jwks,
    )


def ctx(peer: str = "127.0.0.1:50000") -> AuthContext:
    return AuthContext(peer=peer, user="agent", database="app")
