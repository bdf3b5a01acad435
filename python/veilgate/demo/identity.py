"""How the demo user proves who it is.

:class:`DevIdPIdentity` (the default): the development identity provider
(:mod:`veilgate.identity.devidp`) serves discovery and JWKS on 127.0.0.1 from a thread of the demo
process; the gateway trusts it as an Entra tenant and the demo client presents access tokens it
mints (``veilgate dev-token --state-dir DIR --role Db.Read``).  No token is ever written to disk.
:class:`StaticTokenIdentity`: a random static token (only its SHA-256 goes into the config).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Protocol

from veilgate.identity.devidp import STATE_FILE, DevIdP
from veilgate.identity.static import token_digest

DEMO_ROLE = "Db.Read"
"""The role the demo user gets by default: the masked, read-only tier of the demo policy."""
ADMIN_ROLE = "Db.Admin"
"""The role of the demo policy's unmasked tier."""
DEMO_TIERS = [
    {"tier": "read", "any_roles": [DEMO_ROLE]},
    {"tier": "admin", "any_roles": [ADMIN_ROLE]},
]


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


class DevIdPIdentity:
    """Access tokens from an in-process development IdP (Entra-shaped, RS256, real HTTP)."""

    def __init__(self, user: str = "demo", role: str = DEMO_ROLE) -> None:
        self.user = user
        self.role = role
        self.idp = DevIdP()
        self.state_dir: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve discovery and JWKS on 127.0.0.1 (ephemeral port) from a daemon thread."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="dev-idp", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.idp.start(), loop).result(10)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        asyncio.run_coroutine_threadsafe(self.idp.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    def auth_config(self) -> dict[str, Any]:
        return {
            "oidc": {"providers": [self.idp.provider_mapping("dev-entra")], "tiers": DEMO_TIERS}
        }

    def client_password(self) -> str:
        return self.mint(self.role)

    def mint(self, role: str, ttl: int = 3600) -> str:
        """An access token carrying ``role`` (a credential: never print or log it)."""
        return self.idp.mint(roles=[role], ttl=ttl)

    def save(self, directory: Path) -> Path:
        """The IdP's state (ids and private keys, 0600) for ``veilgate dev-token``."""
        self.state_dir = directory / "dev-idp"
        self.idp.save_state(self.state_dir)
        return self.state_dir / STATE_FILE

    def token_command(self, relative_to: Path | None = None, role: str | None = None) -> str:
        """The shell command that mints a token for the demo user (``role``: default its own)."""
        state = self.state_dir or Path("dev-idp")
        if relative_to is not None:
            with contextlib.suppress(ValueError):
                state = state.resolve().relative_to(relative_to.resolve())
        return f"veilgate dev-token --state-dir {state} --role {role or self.role}"
