"""End to end: tokens from the development IdP (real HTTP on 127.0.0.1) through the gateway.

psql, asyncpg and psycopg connect over TLS with a minted token; bad tokens get PostgreSQL's exact
28P01 text while the gateway log has the reason; each tier connects upstream as its own login
role; ``terminate_on_token_expiry`` closes an idle session (28000) but never mid-transaction.
The token never appears in a log line or in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.idp import pooled_key
from tests.integration.conftest import PASSWORD_ENV, GatewayHandle

from veilgate import metrics
from veilgate.config_model import AuthConfig, GatewayConfig, TargetLogin
from veilgate.identity.combined import GatewayAuthenticator
from veilgate.identity.devidp import DevIdP
from veilgate.log import JsonFormatter

pytestmark = pytest.mark.pg

ROLES = {"vg_read": "VEILGATE_TEST_VG_READ_PW", "vg_admin": "VEILGATE_TEST_VG_ADMIN_PW"}
TIERS = [
    {"tier": "read", "login_role": "vg_read", "any_roles": ["Db.Read"]},
    {"tier": "admin", "login_role": "vg_admin", "any_roles": ["Db.Admin"]},
    {"tier": "orphan", "login_role": "vg_orphan", "any_roles": ["Db.Orphan"]},
]


class IdPThread:
    """A :class:`DevIdP` serving on its own event loop in a background thread."""

    def __init__(self) -> None:
        self.idp = DevIdP(keys=[pooled_key(0)])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> DevIdP:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.idp.start(), self.loop).result(10)
        return self.idp

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.idp.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    with IdPThread() as served:
        yield served


@pytest.fixture(scope="module")
def tier_roles(pg_cluster: Any) -> None:
    for role, env in ROLES.items():
        password = secrets.token_urlsafe(18)
        pg_cluster.create_role(role, password)
        os.environ[env] = password


@dataclass
class OIDCGateway:
    handle: GatewayHandle
    idp: DevIdP

    def dsn(self, token: str, **params: str | int) -> str:
        return self.handle.dsn(password=token, **params)


@pytest.fixture
def oidc_gateway_factory(
    gateway_factory: Callable[..., GatewayHandle], idp: DevIdP, tier_roles: None
) -> Callable[..., OIDCGateway]:
    def make(**auth: Any) -> OIDCGateway:
        def transform(cfg: GatewayConfig) -> GatewayConfig:
            oidc = {
                "providers": [idp.provider_mapping()],
                "tiers": TIERS,
                "rate_limit": {"enabled": False},
            }
            target = cfg.targets["app"]
            logins = {role: TargetLogin(role, password_env=env) for role, env in ROLES.items()}
            return replace(
                cfg,
                auth=AuthConfig(static_tokens=cfg.auth.static_tokens, oidc=oidc, **auth),
                targets={"app": replace(target, logins=logins)},
            )

        holder: list[GatewayAuthenticator] = []

        def transform_and_build(cfg: GatewayConfig) -> GatewayConfig:
            out = transform(cfg)
            holder.append(GatewayAuthenticator.from_config(out))
            return out

        handle = gateway_factory(transform=transform_and_build, authenticator=_LazyAuth(holder))
        warm = handle.thread.call(holder[0].prefetch())
        assert warm and all(warm.values()), warm
        return OIDCGateway(handle, idp)

    return make


class _LazyAuth:
    """Delegates to the authenticator built from the gateway's final configuration."""

    def __init__(self, holder: list[GatewayAuthenticator]) -> None:
        self._holder = holder

    async def authenticate(self, token: str, ctx: Any) -> Any:
        return await self._holder[0].authenticate(token, ctx)

    def grant_for(self, principal: Any) -> Any:
        return self._holder[0].grant_for(principal)


@pytest.fixture
def oidc_gw(oidc_gateway_factory: Callable[..., OIDCGateway]) -> OIDCGateway:
    return oidc_gateway_factory()


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="veilgate")
    return caplog


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    fmt = JsonFormatter()
    return "\n".join(fmt.format(r) for r in caplog.records)


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [dict(getattr(r, "fields", {}) or {}) for r in caplog.records if r.getMessage() == name]


def _psql(gw: OIDCGateway, token: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = token
    dsn = gw.handle.dsn().replace(f"password='{gw.handle.token}' ", "")
    return subprocess.run(
        ["psql", dsn, "-X", "-A", "-t", "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


# --- good tokens -------------------------------------------------------------------------------


def test_psql_psycopg_asyncpg_with_minted_tokens(
    oidc_gw: OIDCGateway, captured: pytest.LogCaptureFixture
) -> None:
    idp = oidc_gw.idp
    v2 = idp.mint(roles=["Db.Read"])
    v1 = idp.mint(roles=["Db.Read"], version="1.0")
    out = _psql(oidc_gw, v2, "select current_user, 40 + 2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "vg_read|42"

    with psycopg.connect(oidc_gw.dsn(v1)) as conn:
        assert conn.execute("select current_user").fetchone() == ("vg_read",)
        app = conn.execute("select current_setting('application_name')").fetchone()
        assert app is not None and str(app[0]).startswith("veilgate(dev-entra:")

    async def via_asyncpg() -> tuple[str, int]:
        conn = await asyncpg.connect(**oidc_gw.handle.asyncpg_kwargs(password=v2))
        try:
            row = await conn.fetchrow("select current_user as u, $1::int * 2 as n", 21)
            assert row is not None
            return str(row["u"]), int(row["n"])
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == ("vg_read", 42)

    started = _events(captured, "session_started")
    assert started and all(e["tier"] == "read" and e["upstream_user"] == "vg_read" for e in started)
    text = _log_text(captured) + metrics.render()
    for token in (v1, v2):
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature


def test_tiers_map_to_upstream_login_roles(oidc_gw: OIDCGateway) -> None:
    idp = oidc_gw.idp
    users = {}
    for role in ("Db.Read", "Db.Admin"):
        with psycopg.connect(oidc_gw.dsn(idp.mint(roles=[role]))) as conn:
            row = conn.execute("select current_user, session_user").fetchone()
            assert row is not None
            users[role] = row
    assert users == {"Db.Read": ("vg_read", "vg_read"), "Db.Admin": ("vg_admin", "vg_admin")}
    # the static token keeps the target's default login
    with psycopg.connect(oidc_gw.handle.dsn()) as conn:
        assert conn.execute("select current_user").fetchone() == ("veilgate_app",)


def test_tier_without_login_for_target_is_refused_28000(
    oidc_gw: OIDCGateway, captured: pytest.LogCaptureFixture
) -> None:
    token = oidc_gw.idp.mint(roles=["Db.Orphan"])
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(oidc_gw.dsn(token))
    assert 'not allowed to connect to database "app"' in str(info.value)
    (refused,) = [e for e in _events(captured, "session_refused") if e.get("reason") == "no_login"]
    assert refused["code"] == "28000" and refused["tier"] == "orphan"
    assert token not in _log_text(captured)


# --- bad tokens --------------------------------------------------------------------------------


def _tampered(token: str) -> str:
    header, payload, sig = token.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return ".".join((header, flipped, sig))


@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        ("expired", {"expired"}),
        ("wrong_audience", {"wrong_audience"}),
        ("azure_pg_audience", {"wrong_audience"}),
        ("no_role", {"no_tier"}),
        ("tampered", {"bad_signature", "malformed"}),
    ],
)
def test_bad_tokens_refused_28p01(
    oidc_gw: OIDCGateway, captured: pytest.LogCaptureFixture, case: str, reasons: set[str]
) -> None:
    idp = oidc_gw.idp
    token = {
        "expired": lambda: idp.mint(ttl=-600),
        "wrong_audience": lambda: idp.mint(aud="https://graph.microsoft.com"),
        "azure_pg_audience": lambda: idp.mint(aud="https://ossrdbms-aad.database.windows.net"),
        "no_role": lambda: idp.mint(roles=None),
        "tampered": lambda: _tampered(idp.mint()),
    }[case]()
    expected = 'password authentication failed for user "agent"'
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(oidc_gw.dsn(token))
    assert expected in str(info.value)
    out = _psql(oidc_gw, token, "select 1")
    assert out.returncode != 0 and f"FATAL:  {expected}" in out.stderr

    async def via_asyncpg() -> None:
        await asyncpg.connect(**oidc_gw.handle.asyncpg_kwargs(password=token))

    with pytest.raises(asyncpg.InvalidPasswordError) as ai:
        asyncio.run(via_asyncpg())
    assert ai.value.sqlstate == "28P01" and str(ai.value) == expected

    failed = _events(captured, "auth_failed")
    assert len(failed) == 3 and {e["reason"] for e in failed} <= reasons, failed
    text = _log_text(captured) + metrics.render()
    assert token not in text and token.split(".")[2] not in text
    assert metrics.auth_failures_total.get(reason=failed[0]["reason"]) >= 3


# --- session lifetime --------------------------------------------------------------------------


def test_token_expiry_closes_idle_session_not_open_transaction(
    oidc_gateway_factory: Callable[..., OIDCGateway], captured: pytest.LogCaptureFixture
) -> None:
    gw = oidc_gateway_factory(terminate_on_token_expiry=True)
    ttl = 3
    idle_token = gw.idp.mint(ttl=ttl)
    busy_token = gw.idp.mint(ttl=ttl)
    idle = psycopg.connect(gw.dsn(idle_token), autocommit=True)
    busy = psycopg.connect(gw.dsn(busy_token))
    try:
        assert idle.execute("select 1").fetchone() == (1,)
        busy.execute("create temp table t(x int)")
        busy.execute("insert into t values (1)")  # transaction open (psycopg: not autocommit)
        deadline = time.time() + ttl + 1.5
        time.sleep(max(0.0, deadline - time.time()))
        # the idle session is gone with 28000
        _wait_for(lambda: any(e["reason"] == "token_expired" for e in _ended(captured)))
        with pytest.raises(psycopg.OperationalError) as info:
            idle.execute("select 1")
        assert "access token expired; reconnect" in str(info.value)
        # the transaction goes on undisturbed until it ends
        busy.execute("insert into t values (2)")
        assert busy.execute("select count(*) from t").fetchone() == (2,)
        busy.commit()
        _wait_for(lambda: sum(e["reason"] == "token_expired" for e in _ended(captured)) == 2)
        with pytest.raises(psycopg.OperationalError) as info:
            busy.execute("select 1")
        assert "access token expired; reconnect" in str(info.value)
    finally:
        idle.close()
        busy.close()
    reached = _events(captured, "session_lifetime_reached")
    assert sorted(e["idle"] for e in reached) == [False, True]


def test_max_session_age(
    oidc_gateway_factory: Callable[..., OIDCGateway], captured: pytest.LogCaptureFixture
) -> None:
    gw = oidc_gateway_factory(max_session_age_s=1.5)
    conn = psycopg.connect(gw.dsn(gw.idp.mint()), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        _wait_for(lambda: any(e["reason"] == "max_age" for e in _ended(captured)))
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 1")
        assert "maximum session age reached" in str(info.value)
    finally:
        conn.close()


def _ended(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return _events(caplog, "session_ended")


# --- `veilgate serve` with auth.oidc in its YAML -----------------------------------------------


def test_serve_with_oidc_yaml(
    idp: DevIdP,
    tier_roles: None,
    pg_cluster: Any,
    gateway_base_config: Any,
    gateway_certs: Any,
    tmp_path: Path,
) -> None:
    from tests.integration.test_serve import ServeProcess, http_get, subprocess_env

    ca, cert = gateway_certs
    provider = json.dumps(idp.provider_mapping())  # JSON is YAML
    tiers = json.dumps(TIERS[:2])
    logins = "\n".join(
        f"      {role}: {{user: {role}, password_env: {env}}}" for role, env in ROLES.items()
    )
    config_file = tmp_path / "veilgate.yaml"
    config_file.write_text(
        f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{cert_file: {cert.cert_file}, key_file: {cert.key_file}}}
admin: {{host: 127.0.0.1, port: 0}}
auth:
  terminate_on_token_expiry: true
  oidc:
    providers: [{provider}]
    tiers: {tiers}
targets:
  app:
    host: {pg_cluster.host}
    port: {pg_cluster.port}
    dbname: app
    user: veilgate_app
    password_env: {PASSWORD_ENV}
    tls: {{mode: verify-full, ca_file: {pg_cluster.ca_file}}}
    logins:
{logins}
logging: {{level: info, format: json}}
"""
    )
    env = subprocess_env(**{e: os.environ[e] for e in (*ROLES.values(), PASSWORD_ENV)})
    proc = ServeProcess(config_file, env)
    token = idp.mint(roles=["Db.Admin"])
    try:
        ready = proc.wait_event("ready")
        assert all(proc.wait_event("identity_prefetched")["caches"].values())
        conninfo = (
            f"host=127.0.0.1 port={ready['port']} dbname=app user=agent sslmode=verify-full "
            f"sslrootcert={ca.cert_file} connect_timeout=10"
        )
        out = subprocess.run(
            ["psql", "-X", "-A", "-t", conninfo, "-c", "select current_user"],
            env={**subprocess_env(), "PGPASSWORD": token},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "vg_admin"
        status, metrics_text = http_get(int(ready["admin_port"]), "/metrics")
        assert status == 200 and token not in metrics_text
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    finally:
        proc.stop()
    text = "\n".join(proc.lines)
    assert '"event":"authenticated"' in text and '"event":"stopped"' in text
    assert token not in text and token.split(".")[2] not in text
