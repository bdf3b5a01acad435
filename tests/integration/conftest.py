"""Gateway fixtures: a veilgate gateway in a background thread in front of the test cluster.

* ``gateway`` (session scope): target ``app`` → the cluster's ``app`` database as role
  ``veilgate_app``, one static token, a TLS certificate for ``localhost``/``127.0.0.1`` from a
  private CA.  Clients connect as any user with the token as the password.
* ``gateway_factory``: starts extra gateways with a modified configuration (drain tests,
  plaintext-loopback, small limits...); each is stopped at the end of the test.
* ``engine_gw`` (parametrised over ``tls.engine``: python, native): the shared gateway's
  configuration served by each TLS engine, for the files that test TLS itself.

``VEILGATE_TEST_TLS_ENGINE=python`` runs the whole suite with asyncio's TLS instead of the
default native engine.
"""

from __future__ import annotations

import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from tests.integration import pgwire as pw

from veilgate.config_model import (
    AuthConfig,
    ClientTLSConfig,
    GatewayConfig,
    ListenConfig,
    PolicyConfig,
    StateConfig,
    StaticToken,
    TargetConfig,
    TLSEngine,
    UpstreamTLSConfig,
    UpstreamTLSMode,
)
from veilgate.gateway.server import GatewayThread, run_in_thread
from veilgate.identity.base import Authenticator
from veilgate.identity.static import StaticTokenAuthenticator, token_digest

APP_ROLE = "veilgate_app"
APP_DB = "app"
PASSWORD_ENV = "VEILGATE_TEST_APP_PASSWORD"
TLS_ENGINE = TLSEngine(os.environ.get("VEILGATE_TEST_TLS_ENGINE", ClientTLSConfig().engine.value))
"""The TLS engine of the suite's gateways (``tls.engine``; the configuration's default)."""
ENGINES = [e.value for e in TLSEngine]


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


@dataclass
class GatewayHandle:
    """A running gateway and what a client needs to reach it."""

    thread: GatewayThread
    config: GatewayConfig
    token: str
    ca_file: str
    host: str = "127.0.0.1"
    user: str = "agent"
    dbname: str = APP_DB
    server_hostname: str = "localhost"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.thread.port

    @property
    def password(self) -> str:
        return self.token

    def dsn(self, **params: str | int) -> str:
        """A libpq keyword/value conninfo (verify-full against the gateway CA, token included)."""
        kv: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "password": self.token,
            "sslmode": "verify-full",
            "sslrootcert": self.ca_file,
            "connect_timeout": 10,
        }
        kv.update(params)
        return " ".join(f"{k}={_quote(str(v))}" for k, v in kv.items())

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def asyncpg_kwargs(self, **extra: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.token,
            "database": self.dbname,
            "ssl": self.ssl_context(),
            "timeout": 15,
        }
        kw.update(extra)
        return kw

    def session_count(self) -> int:
        return self.thread.session_count()

    def drain(self, timeout: float) -> None:
        self.thread.drain(timeout)


@pytest.fixture(scope="session")
def gateway_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from veilgate.certs import make_ca, make_cert

    d = tmp_path_factory.mktemp("gateway-certs")
    ca = make_ca(d, "gateway-ca")
    return ca, make_cert(d, "gateway", ["localhost", "127.0.0.1"], ca)


@pytest.fixture(scope="session")
def gateway_base_config(pg_cluster: Any, gateway_certs: Any) -> tuple[GatewayConfig, str]:
    """The base configuration and its token (the upstream role and database are created)."""
    password = str(getattr(pg_cluster, "gw_password", "") or "")
    if not password or getattr(pg_cluster, "gw_role", APP_ROLE) != APP_ROLE:
        password = secrets.token_urlsafe(24)
        pg_cluster.create_role(APP_ROLE, password)
    exists = pg_cluster.execute(
        "SELECT 1 FROM pg_database WHERE datname = 'app'", "postgres"
    ).strip()
    if not exists:
        pg_cluster.create_database(APP_DB, owner=APP_ROLE)
    os.environ[PASSWORD_ENV] = password
    _, cert = gateway_certs
    token = "vg-test-" + secrets.token_urlsafe(24)
    config = GatewayConfig(
        listen=ListenConfig(host="127.0.0.1", port=0, handshake_timeout_s=15.0),
        tls=ClientTLSConfig(
            cert_file=Path(cert.cert_file), key_file=Path(cert.key_file), engine=TLS_ENGINE
        ),
        auth=AuthConfig(
            static_tokens=(StaticToken("itest", token_digest(token), frozenset({"tester"})),)
        ),
        targets={
            APP_DB: TargetConfig(
                name=APP_DB,
                host=str(pg_cluster.host),
                port=int(pg_cluster.port),
                dbname=APP_DB,
                user=APP_ROLE,
                password_env=PASSWORD_ENV,
                tls=UpstreamTLSConfig(
                    mode=UpstreamTLSMode.VERIFY_FULL,
                    ca_file=Path(pg_cluster.ca_file),
                    server_name=str(getattr(pg_cluster, "server_hostname", "localhost")),
                ),
            )
        },
    )
    return config, token


def _start(
    config: GatewayConfig,
    token: str,
    ca_file: str,
    use_uvloop: bool = True,
    authenticator: Authenticator | None = None,
) -> GatewayHandle:
    if authenticator is None:
        authenticator = StaticTokenAuthenticator(config.auth.static_tokens)
    thread = run_in_thread(config, authenticator, use_uvloop=use_uvloop)
    return GatewayHandle(thread=thread, config=config, token=token, ca_file=ca_file)


@pytest.fixture(scope="session")
def gateway(
    gateway_base_config: tuple[GatewayConfig, str], gateway_certs: Any
) -> Iterator[GatewayHandle]:
    config, token = gateway_base_config
    ca, _ = gateway_certs
    handle = _start(config, token, str(ca.cert_file))
    try:
        yield handle
    finally:
        handle.thread.stop()


@pytest.fixture(scope="session")
def gateways_by_engine(
    gateway_base_config: tuple[GatewayConfig, str], gateway_certs: Any
) -> Iterator[Callable[[str], GatewayHandle]]:
    """``get(engine)``: the base configuration with ``tls.engine`` set, one gateway per engine
    for the whole session."""
    base, token = gateway_base_config
    ca, _ = gateway_certs
    started: dict[str, GatewayHandle] = {}

    def get(engine: str) -> GatewayHandle:
        if engine not in started:
            config = replace(base, tls=replace(base.tls, engine=TLSEngine(engine)))
            started[engine] = _start(config, token, str(ca.cert_file))
        return started[engine]

    try:
        yield get
    finally:
        for handle in started.values():
            handle.thread.stop()


@pytest.fixture(params=ENGINES)
def engine_gw(request: pytest.FixtureRequest, gateways_by_engine: Any) -> pw.Target:
    """A gateway with TLS in each engine, as a raw-protocol / DSN target."""
    return pw.gateway_target(gateways_by_engine(request.param))


@pytest.fixture
def gateway_factory(
    gateway_base_config: tuple[GatewayConfig, str], gateway_certs: Any
) -> Iterator[Callable[..., GatewayHandle]]:
    """``gateway_factory(transform=None, use_uvloop=True, authenticator=None,
    **config_overrides)`` → a new running gateway (static tokens unless ``authenticator``).

    ``config_overrides`` replace top-level :class:`GatewayConfig` fields (``limits=...``);
    ``transform`` gets the config and returns a new one for anything deeper; ``use_uvloop=False``
    runs it on the stdlib asyncio loop.
    """
    started: list[GatewayHandle] = []
    base, token = gateway_base_config
    ca, _ = gateway_certs

    def make(
        transform: Callable[[GatewayConfig], GatewayConfig] | None = None,
        use_uvloop: bool = True,
        authenticator: Authenticator | None = None,
        **overrides: Any,
    ) -> GatewayHandle:
        config = replace(base, **overrides) if overrides else base
        if transform is not None:
            config = transform(config)
        handle = _start(config, token, str(ca.cert_file), use_uvloop, authenticator)
        started.append(handle)
        return handle

    try:
        yield make
    finally:
        for handle in started:
            handle.thread.stop()


def with_policy(
    policy_file: Path, audit_log: Path, *roles: str
) -> Callable[[GatewayConfig], GatewayConfig]:
    """A ``gateway_factory`` transform: the policy file and audit log, and the static token's
    roles (which pick the policy tier).  The approval state goes beside the audit log."""

    def transform(cfg: GatewayConfig) -> GatewayConfig:
        tok = replace(cfg.auth.static_tokens[0], roles=frozenset(roles))
        return replace(
            cfg,
            auth=replace(cfg.auth, static_tokens=(tok,)),
            policy=PolicyConfig(file=policy_file, audit_log=str(audit_log)),
            state=StateConfig(path=str(audit_log.parent / "veilgate-state.db")),
        )

    return transform


@dataclass(frozen=True)
class PolicyGateway:
    """A gateway serving a policy file (:func:`policy_gateway`)."""

    handle: GatewayHandle
    target: pw.Target
    policy_file: Path
    audit_log: Path


@pytest.fixture
def policy_gateway(
    gateway_factory: Callable[..., GatewayHandle], tmp_path: Path
) -> Callable[..., PolicyGateway]:
    """``policy_gateway(text, *roles, audit_log="audit.jsonl", transform=None, **kw)`` → a new
    gateway serving the policy ``text`` from ``tmp_path/policy.yaml`` (written unless it holds
    ``text`` already, so that gateways of one test can share the file) with its decision log
    at ``tmp_path/audit_log``; the static token gets ``roles`` (which pick the tier).
    ``transform`` changes the configuration further; ``kw`` go to ``gateway_factory``."""
    policy_file = tmp_path / "policy.yaml"

    def start(
        text: str,
        *roles: str,
        audit_log: str = "audit.jsonl",
        transform: Callable[[GatewayConfig], GatewayConfig] | None = None,
        **kw: Any,
    ) -> PolicyGateway:
        if not policy_file.exists() or policy_file.read_text() != text:
            policy_file.write_text(text)
        log = tmp_path / audit_log
        configure = with_policy(policy_file, log, *roles)
        if transform is not None:
            then = transform

            def configure_more(cfg: GatewayConfig) -> GatewayConfig:
                return then(with_policy(policy_file, log, *roles)(cfg))

            configure = configure_more
        handle = gateway_factory(configure, **kw)
        return PolicyGateway(handle, pw.gateway_target(handle), policy_file, log)

    return start


def wait_policy_generation(handle: GatewayHandle, generation: int, timeout: float = 10.0) -> None:
    """Wait until the gateway's policy engine has loaded ``generation`` (a reload happened)."""
    assert handle.thread.gateway is not None
    engine = handle.thread.gateway.policy_engine
    assert engine is not None
    deadline = time.monotonic() + timeout
    while engine.generation < generation:
        assert time.monotonic() < deadline, "the policy was not reloaded"
        time.sleep(0.05)


# -- wire-level targets shared by the protocol test files ----------------------------------------


@pytest.fixture
def gw(gateway: object) -> pw.Target:
    """The shared gateway as a raw-protocol / DSN target."""
    return pw.gateway_target(gateway)


@pytest.fixture
def direct(pg_cluster: object) -> pw.Target:
    """The cluster itself (no gateway), for results compared against the gateway's."""
    return pw.direct_target(pg_cluster)
