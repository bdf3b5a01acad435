"""The gateway's configuration, as typed values.

``veilgate.config`` loads and validates YAML into these (errors name the file, line and key).
Everything here has a safe default: plaintext refused, server certificates verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class UpstreamTLSMode(str, Enum):
    DISABLE = "disable"
    """No TLS at all (loopback development only)."""
    REQUIRE = "require"
    """TLS, no certificate verification."""
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"
    """TLS, certificate chain and host name verified (the default)."""


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    backlog: int = 1024
    handshake_timeout_s: float = 15.0
    """Time allowed from accept to an authenticated session."""
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class ClientTLSConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    allow_plaintext_loopback: bool = False
    """Development switch: accept plaintext from loopback peers.  Off by default."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9187
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A token accepted by the static authenticator; stored only as its SHA-256 hex digest."""

    name: str
    sha256: str
    roles: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    static_tokens: tuple[StaticToken, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    mode: UpstreamTLSMode = UpstreamTLSMode.VERIFY_FULL
    ca_file: Path | None = None
    server_name: str | None = None
    """Host name to verify; defaults to the target's host."""


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """An upstream database; the client's startup ``database`` names it."""

    name: str
    host: str
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    """Login role the gateway uses upstream."""
    password_env: str | None = None
    password_file: Path | None = None
    tls: UpstreamTLSConfig = field(default_factory=UpstreamTLSConfig)
    connect_timeout_s: float = 10.0

    def password(self) -> str | None:
        """Read the upstream password from the environment or file, at use time."""
        import os

        if self.password_env is not None:
            return os.environ.get(self.password_env)
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = 1 << 30
    """Largest client message accepted (PostgreSQL's own limit is 1 GiB)."""
    max_password_bytes: int = 65535
    """PG_MAX_AUTH_TOKEN_LENGTH: the cap on a password (token) message."""
    read_buffer_bytes: int = 65536
    write_high_water: int = 256 * 1024
    write_low_water: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    drain_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"
    """``json`` (structured, one object per line) or ``text``."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = None
    """File the configuration was loaded from, if any."""
