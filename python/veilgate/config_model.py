"""The gateway's configuration, as typed values.

``veilgate.config`` loads and validates YAML into these (errors name the file, line and key).
Everything here has a safe default: plaintext refused, server certificates verified.

The loader derives the file's schema from these dataclasses: every field is a key, its type says
what the key takes, a field without a default is required, and ``field(metadata=...)`` adds
constraints the loader enforces (see :data:`veilgate.config.RULES` for the keys: ``min``, ``max``,
``choices``, ``pattern``, ``secret``, ``config``).  Adding a field here adds it to the file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

# Metadata shorthands the loader understands (see veilgate.config).
_PORT: dict[str, Any] = {"min": 1, "max": 65535}
_PORT_OR_EPHEMERAL: dict[str, Any] = {"min": 0, "max": 65535, "what": "0 (ephemeral) to 65535"}
_SECONDS: dict[str, Any] = {"min": 0.001, "max": 86400.0}


class UpstreamTLSMode(StrEnum):
    DISABLE = "disable"
    """No TLS at all (loopback development only)."""
    REQUIRE = "require"
    """TLS, no certificate verification."""
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"
    """TLS, certificate chain and host name verified (the default)."""


class TLSEngine(StrEnum):
    PYTHON = "python"
    """asyncio's TLS (OpenSSL through memory BIOs, driven from Python)."""
    NATIVE = "native"
    """rustls in the native engine: records decrypted and encrypted without a Python call."""


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = field(default=6432, metadata=_PORT_OR_EPHEMERAL)
    backlog: int = field(default=1024, metadata={"min": 1, "max": 65535})
    handshake_timeout_s: float = field(default=15.0, metadata=_SECONDS)
    """Time allowed from accept to an authenticated session."""
    max_connections: int = field(default=10000, metadata={"min": 1, "max": 1_000_000})
    handover_socket: str | None = None
    """Unix socket of the zero-downtime upgrade: a new ``veilgate serve`` with the same value
    takes the listening sockets over from the process serving on it (which then drains); see
    :mod:`veilgate.handover`.  Relative to the configuration file."""


@dataclass(frozen=True, slots=True)
class ClientTLSConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    allow_plaintext_loopback: bool = False
    """Development switch: accept plaintext from loopback peers.  Off by default."""
    engine: TLSEngine = TLSEngine.NATIVE
    """Where TLS runs, on both sides (clients and upstream servers)."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = field(default=9187, metadata=_PORT_OR_EPHEMERAL)
    enabled: bool = True
    token_file: Path | None = None
    """File holding the admin console's bearer token (re-read when it changes: rotate by
    replacing the file)."""
    token_env: str | None = None
    """Environment variable holding the admin console's bearer token."""
    roles: tuple[str, ...] = ()
    """OIDC roles or groups whose tokens (validated like a client's) may use the console."""


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A token accepted by the static authenticator; stored only as its SHA-256 hex digest."""

    name: str
    sha256: str = field(
        metadata={
            "pattern": r"[0-9a-fA-F]{64}",
            "secret": True,
            "raw": True,
            "what": "64 hex characters (see `veilgate token hash`)",
        }
    )
    roles: frozenset[str] = field(default_factory=frozenset)
    tier: str | None = None
    """Policy tier of this token: its upstream login role is the ``login_role`` of the first
    ``auth.oidc.tiers`` rule with that tier name, else the tier name itself.  Without a tier the
    token connects with each target's default login (``user``)."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    static_tokens: tuple[StaticToken, ...] = ()
    oidc: dict[str, Any] | None = None
    """OIDC / Entra providers, tier rules and auth-failure rate limits
    (``veilgate.identity.providers.identity_from_mapping`` documents the shape)."""
    max_session_age_s: float | None = field(
        default=None, metadata={"min": 1.0, "max": 31_536_000.0}
    )
    """Close a session once it is this old, at its next idle point (never mid-transaction)."""
    terminate_on_token_expiry: bool = False
    """Close a session when its access token expires, at its next idle point."""


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    mode: UpstreamTLSMode = UpstreamTLSMode.VERIFY_FULL
    ca_file: Path | None = None
    server_name: str | None = None
    """Host name to verify; defaults to the target's host."""
    cert_file: Path | None = None
    """Client certificate (PEM, chain) presented to the server, e.g. for ``cert`` auth."""
    key_file: Path | None = None
    """Its private key (PEM); defaults to ``cert_file``."""


_ENV_NAME: dict[str, Any] = {
    "pattern": r"[A-Za-z_][A-Za-z0-9_]*",
    "what": "an environment variable name",
}


def _read_password(password_env: str | None, password_file: Path | None) -> str | None:
    import os

    if password_env is not None:
        return os.environ.get(password_env)
    if password_file is not None:
        return password_file.read_text().rstrip("\r\n")
    return None


@dataclass(frozen=True, slots=True)
class TargetLogin:
    """An upstream login for one tier's ``login_role`` (``targets.<name>.logins.<login_role>``)."""

    user: str
    password_env: str | None = field(default=None, metadata=_ENV_NAME)
    password_file: Path | None = None

    def password(self) -> str | None:
        return _read_password(self.password_env, self.password_file)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Upstream connection reuse in session mode (``targets.<name>.pool``)."""

    size: int = field(default=0, metadata={"min": 0, "max": 10000})
    """Idle connections kept per login, database and startup parameters; 0 (the default): no
    reuse, every session opens its own upstream connection and closes it at the end."""
    idle_timeout_s: float = field(default=60.0, metadata={"min": 0.1, "max": 86400.0})
    """A connection idle in the pool longer than this is closed."""


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """An upstream database; the client's startup ``database`` names it."""

    name: str
    host: str
    port: int = field(default=5432, metadata=_PORT)
    dbname: str = "postgres"
    user: str = "postgres"
    """Login role the gateway uses upstream."""
    password_env: str | None = field(
        default=None,
        metadata={"pattern": r"[A-Za-z_][A-Za-z0-9_]*", "what": "an environment variable name"},
    )
    """Name of the environment variable holding the upstream password."""
    password_file: Path | None = None
    """File holding the upstream password (one line)."""
    tls: UpstreamTLSConfig = field(default_factory=UpstreamTLSConfig)
    connect_timeout_s: float = field(default=10.0, metadata=_SECONDS)
    application_name: str = field(default="client", metadata={"choices": ("client", "tagged")})
    """The upstream ``application_name``: ``client``, the client's own value verbatim (what
    ``SHOW application_name`` answers, as direct), ``veilgate(<principal>)`` when it gave none;
    ``tagged``, ``veilgate(<principal>) <client's value>`` (the principal always in
    ``pg_stat_activity``; ``SHOW`` then answers the tagged value)."""
    logins: dict[str, TargetLogin] = field(default_factory=dict)
    """Upstream login per tier ``login_role``; ``user``/password above is the default login."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Upstream connection reuse (off unless ``size`` > 0)."""

    def password(self) -> str | None:
        """Read the upstream password from the environment or file, at use time."""
        return _read_password(self.password_env, self.password_file)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = field(default=1 << 30, metadata={"min": 8192, "max": 1 << 30})
    """Largest client message accepted (PostgreSQL's own limit is 1 GiB)."""
    max_password_bytes: int = field(default=65535, metadata={"min": 1, "max": 65535})
    """PG_MAX_AUTH_TOKEN_LENGTH: the cap on a password (token) message."""
    read_buffer_bytes: int = field(default=65536, metadata={"min": 4096, "max": 16 << 20})
    write_high_water: int = field(default=256 * 1024, metadata={"min": 1, "max": 1 << 30})
    write_low_water: int = field(default=64 * 1024, metadata={"min": 0, "max": 1 << 30})
    max_statement_bytes: int = field(default=1 << 20, metadata={"min": 1024, "max": 1 << 30})
    """Largest Query / Parse a session with a policy may send: larger ones get ``54000`` before
    anything parses them (the session stays usable)."""
    audit_sql_bytes: int = field(default=4096, metadata={"min": 64, "max": 1 << 20})
    """Statement text kept in an audit event (a prefix cut on a character boundary; the event
    also carries the fingerprint and the full length)."""
    max_connections_per_principal: int | None = field(
        default=None, metadata={"min": 1, "max": 1_000_000}
    )
    """Sessions one principal (tenant + subject) may hold at once; more get ``FATAL 53300``.
    A policy tier's ``max_connections_per_principal`` overrides it for that tier."""
    cache_bytes: int = field(default=64 << 20, metadata={"min": 1 << 20, "max": 1 << 40})
    """Memory for statement-keyed caches (policy analyses and decisions, masking lineage and
    plans), counted in bytes of the texts and results they hold, not in entries."""


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    drain_timeout_s: float = field(default=30.0, metadata={"min": 0.0, "max": 86400.0})
    """How long SIGTERM waits for running statements before closing every session."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = field(
        default="info", metadata={"choices": ("debug", "info", "warning", "error", "critical")}
    )
    format: str = field(default="json", metadata={"choices": ("json", "text")})
    """``json`` (structured, one object per line) or ``text``."""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Statement policy (``veilgate.policy``): without this section every statement is relayed."""

    file: Path
    """Policy file (YAML, see ``veilgate.policy.model``); reloaded on SIGHUP and when it changes."""
    audit_log: str | None = None
    """File that every decision is appended to as one JSON line (created 0600); none by default."""
    require_end_marker: bool = False
    """Every policy file must end with the top-level key ``end: true`` (a file cut short is
    then never loaded).  Once a loaded policy has the marker, reloads require it anyway."""


class StateBackend(StrEnum):
    SQLITE = "sqlite"
    """One local file (the default): a single gateway process."""
    POSTGRES = "postgres"
    """A PostgreSQL database shared by several gateways (LISTEN/NOTIFY wakes waiting sessions)."""


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Shared state (``veilgate.state``): approval requests and grants, the session index.

    ``sqlite`` keeps it in one file (created 0600 on first use, WAL mode); ``postgres`` in a
    database several gateways share, its DSN read from an environment variable or a file (never
    from this file: it holds a password)."""

    backend: StateBackend = StateBackend.SQLITE
    path: str = "veilgate-state.db"
    """SQLite file, relative to the configuration file (its directory must exist)."""
    dsn_env: str | None = field(default=None, metadata=_ENV_NAME)
    """Environment variable holding the PostgreSQL DSN (``postgresql://...``)."""
    dsn_file: Path | None = None
    """File holding the PostgreSQL DSN (one line)."""
    timeout_s: float = field(default=5.0, metadata={"min": 0.1, "max": 300.0})
    """Longest a state operation may take before it counts as failed (the store is down)."""

    def dsn(self) -> str | None:
        """The PostgreSQL DSN, read at use time (never logged)."""
        return _read_password(self.dsn_env, self.dsn_file)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """An outgoing webhook for approval requests and decisions (Slack-compatible JSON)."""

    url: str
    """``https://...`` (plain ``http`` only to a loopback IP with ``allow_insecure_http``)."""
    secret_env: str | None = field(default=None, metadata=_ENV_NAME)
    """Environment variable with the HMAC-SHA256 key that signs each body (``X-Veilgate-
    Signature: sha256=<hex>`` over ``<timestamp>.<body>``)."""
    secret_file: Path | None = None
    events: tuple[str, ...] = field(default=("request", "decision"))
    """Which events to send: ``request`` (a new request), ``decision`` (approved / denied)."""
    timeout_s: float = field(default=5.0, metadata={"min": 0.1, "max": 60.0})
    max_attempts: int = field(default=6, metadata={"min": 1, "max": 20})
    """Delivery attempts (exponential back-off from 1 s, capped at 60 s)."""
    allow_insecure_http: bool = False

    def secret(self) -> str | None:
        return _read_password(self.secret_env, self.secret_file)


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    """Just-in-time approvals (``veilgate.approvals``); rules say *what* needs approval, this
    section how approvers hear of it and reach it."""

    api: bool = True
    """The approvers' HTTP API on the admin listener (``/v1/approvals``)."""
    webhooks: tuple[WebhookConfig, ...] = ()
    how_to_approve: str | None = field(default=None, metadata={"max_len": 300})
    """Extra text in the hint of a held statement (e.g. the URL of your approval page)."""
    sweep_interval_s: float = field(default=30.0, metadata={"min": 1.0, "max": 3600.0})
    """How often expired requests and grants are closed and recorded (they stop working at
    their expiry regardless)."""


class AuditFailureMode(StrEnum):
    BLOCK = "block"
    """Records cannot be written: refuse new statements (SQLSTATE 58030), readiness fails."""
    CONTINUE = "continue"
    """Records cannot be written: keep serving; records past the queue are dropped and counted."""


_KEY_ID: dict[str, Any] = {
    "pattern": r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    "what": "a key id (letters, digits, '.', '_', '-'; at most 64)",
}


@dataclass(frozen=True, slots=True)
class AuditKeyConfig:
    """An HMAC key that signs the session record: from a file (its whole content, trailing
    newline stripped) or an environment variable; at least 16 bytes."""

    id: str = field(metadata=_KEY_ID)
    file: Path | None = None
    env: str | None = field(default=None, metadata=_ENV_NAME)

    def read(self) -> bytes:
        """The key bytes (raises ``ValueError`` naming the source when missing or too short)."""
        import os

        if self.file is not None:
            data = self.file.read_bytes().rstrip(b"\r\n")
            where = str(self.file)
        elif self.env is not None:
            data = os.environb.get(self.env.encode(), b"")
            where = f"${self.env}"
        else:
            raise ValueError(f"audit key {self.id!r}: set file or env")
        if len(data) < 16:
            raise ValueError(f"audit key {self.id!r} ({where}): at least 16 bytes are required")
        return data


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Session recording (``veilgate.audit``): every session, statement, decision and outcome in
    hash-chained, HMAC-sealed JSON-lines segments under ``dir``."""

    dir: str
    """Directory of the segment files (relative to the config file; created 0700 if missing;
    one gateway per directory)."""
    key: AuditKeyConfig
    """The key that signs from now on (rotate: give a new id and key, keep the old in
    ``old_keys``, reload with SIGHUP)."""
    old_keys: tuple[AuditKeyConfig, ...] = ()
    """Earlier keys, for ``veilgate sessions verify`` of older segments."""
    on_failure: AuditFailureMode = AuditFailureMode.BLOCK
    node: str | None = field(default=None, metadata={"max_len": 128})
    """Name of this gateway in the record (default: the host name)."""
    flush_interval_ms: int = field(default=200, metadata={"min": 5, "max": 10_000})
    """Longest time a record waits before it is written (and fsync'ed)."""
    fsync: bool = True
    """fsync each batch: records survive a power loss once written."""
    queue_max_records: int = field(default=262_144, metadata={"min": 1024, "max": 16_777_216})
    """Records held in memory while the disk cannot take them; past this they are dropped
    (``continue``) and counted, and the gap is recorded."""
    batch_max_records: int = field(default=4096, metadata={"min": 16, "max": 1_000_000})
    rotate_bytes: int = field(default=64 << 20, metadata={"min": 64 << 10, "max": 1 << 40})
    """Start a new segment past this size."""
    rotate_age_s: float = field(default=86_400.0, metadata={"min": 1.0, "max": 31_536_000.0})
    """Start a new segment when the current one is this old."""
    retention_days: float | None = field(default=None, metadata={"min": 0.001, "max": 36_500.0})
    """Delete segments older than this (the purge is recorded); none by default."""
    redact_literals: bool = False
    """Record statements with every constant replaced by ``$n`` (pg_stat_statements style)."""
    index: bool = True
    """Keep the session index (``veilgate sessions list``) up to date."""
    index_grace_s: float = field(default=10.0, metadata={"min": 0.0, "max": 3600.0})
    """How long index writes may fail and be retried before that counts as a recording failure
    (``on_failure``): the records are in the segments meanwhile, only the index lags."""

    def keyring(self) -> dict[str, bytes]:
        """Every configured key by id (raises ``ValueError`` naming a bad key)."""
        keys = {self.key.id: self.key.read()}
        for k in self.old_keys:
            keys.setdefault(k.id, k.read())
        return keys


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """What ``/readyz`` (and ``veilgate config check --strict``) checks, and how often."""

    upstream_interval_s: float = field(default=30.0, metadata={"min": 0.2, "max": 3600.0})
    """How often every target's logins are tried upstream (TLS, SCRAM, then Terminate)."""
    certificate_min_days: float = field(default=14.0, metadata={"min": 0.0, "max": 3650.0})
    """The client certificate must stay valid at least this long, else not ready."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The gateway's processes (``veilgate serve --workers`` overrides ``workers``)."""

    workers: int = field(default=1, metadata={"min": 0, "max": 256})
    """Worker processes sharing the listening port (``SO_REUSEPORT``; a supervisor process
    starts them, restarts one that dies, forwards signals and fronts their admin servers); 0:
    one per CPU core; 1 (the default): one process, no supervisor.  Needs a restart."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    policy: PolicyConfig | None = None
    state: StateConfig = field(default_factory=StateConfig)
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    audit: AuditConfig | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    source: Path | None = field(default=None, metadata={"config": False})
    """File the configuration was loaded from, if any."""
