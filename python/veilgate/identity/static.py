"""Static bearer tokens from the configuration (development, CI, break-glass).

Only each token's SHA-256 hex digest is configured; the presented token is hashed and compared in
constant time against every entry, so neither the token nor timing reveals which entry matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from veilgate.config_model import StaticToken
from veilgate.identity.base import AuthContext, AuthError, Principal


def token_digest(token: str) -> str:
    """The SHA-256 hex digest to put in the configuration for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class StaticTokenAuthenticator:
    """Accepts the configured tokens; principal ``static:<name>`` with the configured roles."""

    def __init__(self, tokens: Sequence[StaticToken]) -> None:
        self._entries: tuple[tuple[bytes, Principal], ...] = tuple(
            (
                t.sha256.strip().lower().encode("ascii"),
                Principal(provider="static", subject=t.name, roles=frozenset(t.roles)),
            )
            for t in tokens
        )

    async def authenticate(self, token: str, ctx: AuthContext) -> Principal:
        if not token:
            raise AuthError("empty_token")
        digest = token_digest(token).encode("ascii")
        found: Principal | None = None
        for expected, principal in self._entries:
            # no early exit: every entry is compared
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        if found is None:
            raise AuthError("unknown_token")
        return found
