"""auth.oidc / static token tiers / targets.*.logins in the config, and tier → upstream login."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from veilgate import config
from veilgate.config import ConfigError
from veilgate.config_model import StaticToken, TargetConfig, TargetLogin
from veilgate.identity.base import AuthContext, AuthError, Principal
from veilgate.identity.combined import (
    DEFAULT_GRANT,
    GatewayAuthenticator,
    LoginDenied,
    TierGrant,
    looks_like_jwt,
    upstream_login,
)
from veilgate.identity.static import token_digest

TENANT = "11111111-2222-3333-4444-555555555555"

BASE = f"""\
tls:
  allow_plaintext_loopback: true
auth:
  static_tokens:
    - name: ops
      sha256: {token_digest("ops-token")}
      tier: admin
    - name: legacy
      sha256: {token_digest("legacy-token")}
  max_session_age_s: 3600
  terminate_on_token_expiry: true
  oidc:
    providers:
      - name: entra
        tenant_id: {TENANT}
        audiences: [api://veilgate]
    tiers:
      - tier: read
        login_role: vg_read
        any_roles: [Db.Read]
      - tier: admin
        login_role: vg_admin
        any_roles: [Db.Admin]
targets:
  app:
    host: 127.0.0.1
    user: app_owner
    password_env: APP_PW
    tls: {{mode: disable}}
    logins:
      vg_read: {{user: reader, password_env: READ_PW}}
      vg_admin:
        user: admin
        password_env: ADMIN_PW
"""


def load(text: str) -> config.GatewayConfig:
    return config.load_str(textwrap.dedent(text), "gw.yaml")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value).splitlines()


def test_valid_identity_config() -> None:
    cfg = load(BASE)
    assert cfg.auth.oidc is not None and cfg.auth.max_session_age_s == 3600.0
    assert cfg.auth.terminate_on_token_expiry
    assert cfg.auth.static_tokens[0].tier == "admin" and cfg.auth.static_tokens[1].tier is None
    assert cfg.targets["app"].logins["vg_read"] == TargetLogin("reader", "READ_PW")
    auth = GatewayAuthenticator.from_config(cfg)
    assert auth.static is not None and auth.oidc is not None


def test_oidc_only_is_an_auth_source() -> None:
    start, end = BASE.index("  static_tokens:\n"), BASE.index("  max_session_age_s")
    cfg = load(BASE[:start] + BASE[end:])
    assert cfg.auth.static_tokens == ()
    assert GatewayAuthenticator.from_config(cfg).static is None


def test_oidc_error_names_line_and_key() -> None:
    bad = BASE.replace(f"tenant_id: {TENANT}", "tenant_id: common")
    assert errors(bad) == [
        "gw.yaml:15: auth.oidc.providers[0].tenant_id: must be a GUID (a single tenant; never "
        "'common')"
    ]
    unknown = BASE.replace("        audiences: [api://veilgate]\n", "        audience_s: [x]\n")
    (err,) = errors(unknown)
    assert err.startswith("gw.yaml:16: auth.oidc.providers[0].audience_s: unknown key")
    rule = BASE.replace("        any_roles: [Db.Read]\n", "")
    (err,) = errors(rule)
    assert err.startswith("gw.yaml:18: auth.oidc.tiers[0]: a rule needs at least one of")


def test_login_checks() -> None:
    stray = BASE.replace("      vg_read: {user: reader", "      vg_nope: {user: reader")
    (err,) = errors(stray)
    assert err.startswith("gw.yaml:31: targets.app.logins.vg_nope: no tier uses login_role")
    nopw = BASE.replace("{user: reader, password_env: READ_PW}", "{user: reader}")
    assert errors(nopw) == [
        "gw.yaml:31: targets.app.logins.vg_read: password_env or password_file is required"
    ]
    plain = BASE.replace("        password_env: ADMIN_PW", "        password: hunter2")
    errs = errors(plain)
    assert "a plaintext password is not accepted" in errs[0]
    assert "hunter2" not in "".join(errs)


def test_upstream_login_selection() -> None:
    target = TargetConfig(
        name="app",
        host="h",
        user="owner",
        password_env="OWNER",
        logins={"vg_read": TargetLogin("reader", password_env="READ")},
    )
    assert upstream_login(target, DEFAULT_GRANT) is target
    read = upstream_login(target, TierGrant("read", "vg_read"))
    assert (read.user, read.password_env, read.name) == ("reader", "READ", "app")
    assert upstream_login(target, TierGrant("own", "owner")) is target
    with pytest.raises(LoginDenied) as info:
        upstream_login(target, TierGrant("admin", "vg_admin"))
    assert info.value.reason == "no_login"
    with pytest.raises(LoginDenied) as info:
        upstream_login(target, None)
    assert info.value.reason == "no_tier"


def test_grants_and_dispatch() -> None:
    cfg = load(BASE)
    auth = GatewayAuthenticator.from_config(cfg)
    ctx = AuthContext(peer="127.0.0.1:1", user="u", database="app")
    ops = asyncio.run(auth.authenticate("ops-token", ctx))
    assert auth.grant_for(ops) == TierGrant("admin", "vg_admin")
    legacy = asyncio.run(auth.authenticate("legacy-token", ctx))
    assert auth.grant_for(legacy) == DEFAULT_GRANT
    oidc_user = Principal(provider="entra", subject="x", roles=frozenset({"Db.Read"}))
    assert auth.grant_for(oidc_user) == TierGrant("read", "vg_read")
    assert auth.grant_for(Principal(provider="entra", subject="y")) is None
    # a JWT-shaped token goes to OIDC, never to the static digests (no network: malformed)
    with pytest.raises(AuthError) as info:
        asyncio.run(auth.authenticate("eyJhbGciOiJub25lIn0.e30.", ctx))
    assert info.value.reason != "unknown_token"
    with pytest.raises(AuthError) as info:
        asyncio.run(auth.authenticate("not-a-jwt", ctx))
    assert info.value.reason == "unknown_token"


def test_static_tier_without_oidc_uses_tier_name() -> None:
    tok = StaticToken("t", token_digest("x"), tier="vg_read")
    from veilgate.identity.static import StaticTokenAuthenticator

    auth = GatewayAuthenticator(StaticTokenAuthenticator([tok]), None, {"t": "vg_read"})
    p = Principal(provider="static", subject="t")
    assert auth.grant_for(p) == TierGrant("vg_read", "vg_read")


def test_looks_like_jwt() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ.c2ln")
    assert not looks_like_jwt("vg-test-abc")
    assert not looks_like_jwt("eyJ.a.b.c")
