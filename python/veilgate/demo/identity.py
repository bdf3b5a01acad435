"""How the demo user proves who it is.

Today: a random static token (its SHA-256 goes into the config).  A later issue replaces this
with a development OIDC identity provider; the rest of the demo only uses :class:`DemoIdentity`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from veilgate.identity.static import token_digest


class DemoIdentity(Protocol):
    """An identity source for the demo."""

    user: str
    """Startup ``user`` the demo client connects as (informational for the gateway)."""

    def auth_config(self) -> dict[str, Any]:
        """The ``auth:`` section of the gateway configuration."""
        ...

    def client_password(self) -> str:
        """What the client presents as its password (a credential: print it at most once)."""
        ...

    def save(self, directory: Path) -> Path:
        """Write the client credential to a private file in ``directory``; returns the path."""
        ...


class StaticTokenIdentity:
    """A random token for the user ``demo``; the config holds only its SHA-256."""

    def __init__(self, user: str = "demo", token: str | None = None) -> None:
        self.user = user
        self._token = token or secrets.token_urlsafe(32)

    def auth_config(self) -> dict[str, Any]:
        return {
            "static_tokens": [
                {"name": self.user, "sha256": token_digest(self._token), "roles": ["demo"]}
            ]
        }

    def client_password(self) -> str:
        return self._token

    def save(self, directory: Path) -> Path:
        path = directory / "token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (self._token + "\n").encode())
        finally:
            os.close(fd)
        return path
