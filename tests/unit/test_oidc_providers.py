"""Provider configs, the YAML-shaped parser, tier mapping, and the generic OIDC profile."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from tests.idp import CTX, FakeClock, running_idp

from veilgate.identity.base import AuthError, Principal
from veilgate.identity.oidc import OIDCAuthenticator
from veilgate.identity.providers import (
    ConfigError,
    EntraProvider,
    GenericOIDCProvider,
    RateLimitSettings,
    TierRule,
    claim_path,
    identity_from_mapping,
    map_principal,
    match_rule,
)

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "11111111-2222-3333-4444-555555555555"


def base_config() -> dict[str, Any]:
    return {
        "providers": [
            {"name": "entra", "tenant_id": TID, "audiences": [APP, f"api://{APP}"]},
            {
                "name": "kc",
                "type": "oidc",
                "issuer": "https://kc.example/realms/agents",
                "audience": "veilgate",
                "roles_claims": ["realm_access.roles", "scope"],
            },
        ],
        "tiers": [
            {"tier": "admin", "login_role": "vg_admin", "any_roles": ["Db.Admin"]},
            {"tier": "read", "login_role": "vg_read", "any_roles": ["Db.Read", "db-read"]},
        ],
        "rate_limit": {"peer_burst": 5, "peer_per_s": 1},
    }


# --------------------------------------------------------------------------------- providers


def test_entra_defaults() -> None:
    p = EntraProvider("entra", TID.upper(), (APP,))
    assert p.tenant_id == TID
    assert p.issuers() == {
        f"https://sts.windows.net/{TID}/": "1.0",
        f"https://login.microsoftonline.com/{TID}/v2.0": "2.0",
    }
    assert p.metadata_url("1.0") == (
        f"https://login.microsoftonline.com/{TID}/.well-known/openid-configuration"
    )
    assert p.metadata_url("2.0") == (
        f"https://login.microsoftonline.com/{TID}/v2.0/.well-known/openid-configuration"
    )
    assert p.require_app_only and p.leeway_s == 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tenant_id": "common"}, "tenant_id"),
        ({"tenant_id": "organizations"}, "tenant_id"),
        ({"audiences": ()}, "audiences"),
        ({"audiences": ("https://graph.microsoft.com",)}, "first-party"),
        ({"audiences": ("https://ossrdbms-aad.database.windows.net",)}, "first-party"),
        ({"accepted_versions": ("3.0",)}, "accepted_versions"),
        ({"metadata_urls": {"2.0": "http://login.example/x"}}, "metadata_urls"),
        ({"metadata_urls": {"2.0": "http://127.0.0.1:1/x"}}, "allow_insecure_http"),
        (
            {"metadata_urls": {"2.0": "http://10.1.1.1/x"}, "allow_insecure_http": True},
            "loopback",
        ),
        ({"metadata_urls": {"9": "https://a/b"}}, "metadata_urls"),
        ({"leeway_s": 3600}, "leeway_s"),
        ({"name": "bad name"}, "name"),
    ],
)
def test_entra_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "entra", "tenant_id": TID, "audiences": (APP,)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        EntraProvider(**args)


def test_generic_defaults_and_validation() -> None:
    p = GenericOIDCProvider("kc", "https://kc.example/realms/a", ("veilgate",))
    assert p.discovery_url == "https://kc.example/realms/a/.well-known/openid-configuration"
    q = GenericOIDCProvider("kc", "https://kc.example", ("v",), jwks_uri="https://kc/keys")
    assert q.discovery_url is None
    with pytest.raises(ValueError, match="not both"):
        GenericOIDCProvider(
            "kc", "https://i", ("v",), jwks_uri="https://a", discovery_url="https://b"
        )
    with pytest.raises(ValueError, match="app_only_claim"):
        GenericOIDCProvider("kc", "https://i", ("v",), require_app_only=True)
    with pytest.raises(ValueError, match="discovery_url"):
        GenericOIDCProvider("kc", "http://kc.example", ("v",))


def test_claim_path() -> None:
    claims = {
        "realm_access": {"roles": ["a"]},
        "https://example.com/roles": ["b"],
        "scope": "x y",
    }
    assert claim_path(claims, "realm_access.roles") == ["a"]
    assert claim_path(claims, "https://example.com/roles") == ["b"]
    assert claim_path(claims, "realm_access.missing") is None
    assert claim_path(claims, "scope.x") is None


# ------------------------------------------------------------------------------------ parser


def test_identity_from_mapping() -> None:
    s = identity_from_mapping(base_config(), "auth.oidc")
    entra, kc = s.providers
    assert isinstance(entra, EntraProvider) and entra.audiences == (APP, f"api://{APP}")
    assert isinstance(kc, GenericOIDCProvider) and kc.audiences == ("veilgate",)
    assert kc.roles_claims == ("realm_access.roles", "scope")
    assert [r.tier for r in s.rules] == ["admin", "read"]
    assert s.rules[1].any_roles == {"Db.Read", "db-read"}
    assert s.rate_limit == RateLimitSettings(peer_burst=5, peer_per_s=1)
    auth = OIDCAuthenticator.from_settings(s)
    assert set(auth.caches) == {"entra/v1.0", "entra/v2.0", "kc"}


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    cfg = base_config()
    node: Any = cfg
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["providers", 0, "tenant_id"], "common", "auth.providers[0].tenant_id"),
        (["providers", 0, "tenant_id"], KeyError, "auth.providers[0].tenant_id"),
        (["providers", 0, "tenant_id"], 42, "auth.providers[0].tenant_id"),
        (["providers", 0, "tenant"], TID, "auth.providers[0].tenant"),
        (["providers", 0, "leeway_s"], "60", "auth.providers[0].leeway_s"),
        (["providers", 0, "leeway_s"], True, "auth.providers[0].leeway_s"),
        (["providers", 0, "audiences"], [APP, 3], "auth.providers[0].audiences[1]"),
        (
            ["providers", 0, "metadata_urls"],
            {"2.0": "http://x"},
            'auth.providers[0].metadata_urls["2.0"]',
        ),
        (["providers", 0, "type"], "saml", "auth.providers[0].type"),
        (["providers", 1, "name"], "entra", "auth.providers[1].name"),
        (["providers", 1, "audiences"], ["x"], "auth.providers[1].audience"),
        (["providers", 1, "issuer"], KeyError, "auth.providers[1].issuer"),
        (["providers"], [], "auth.providers"),
        (["providers"], "entra", "auth.providers"),
        (["tiers", 1, "any_roles"], {"Db.Read": 1}, "auth.tiers[1].any_roles"),
        (["tiers", 1, "any_roles"], [], "auth.tiers[1]"),
        (["tiers", 0, "providers"], ["nope"], "auth.tiers[0].providers"),
        (["tiers", 0, "tier"], KeyError, "auth.tiers[0].tier"),
        (["tiers", 0, "colour"], "red", "auth.tiers[0].colour"),
        (["rate_limit", "peer_burst"], 0, "auth.rate_limit.peer_burst"),
        (["rate_limit", "burst"], 1, "auth.rate_limit.burst"),
        (["extra"], 1, "auth.extra"),
    ],
)
def test_identity_from_mapping_errors(path: list[Any], value: Any, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        identity_from_mapping(mutate(path, value), "auth")
    assert info.value.path == where, str(info.value)
    assert str(info.value).startswith(where + ": ")


def test_duplicate_issuer_refused() -> None:
    cfg = base_config()
    cfg["providers"].append({"name": "entra2", "tenant_id": TID, "audiences": [APP]})
    with pytest.raises(ConfigError, match="already trusted"):
        identity_from_mapping(cfg)


# ------------------------------------------------------------------------------------ mapping


def principal(**kw: Any) -> Principal:
    base: dict[str, Any] = {
        "provider": "entra",
        "subject": str(uuid.uuid4()),
        "tenant": TID,
        "client_app": APP,
        "app_only": True,
        "roles": frozenset({"Db.Read"}),
    }
    base.update(kw)
    return Principal(**base)


def test_rule_needs_a_who() -> None:
    with pytest.raises(ValueError):
        TierRule("x", tenants=frozenset({TID}))
    with pytest.raises(ValueError):
        TierRule("")


def test_mapping_first_match_and_conditions() -> None:
    rules = [
        TierRule("admin", any_roles=frozenset({"Db.Admin"}), tenants=frozenset({TID.upper()})),
        TierRule("grp", any_groups=frozenset({"g1"})),
        TierRule("ci", client_apps=frozenset({"ci-app"}), providers=frozenset({"entra"})),
        TierRule("read", any_roles=frozenset({"Db.Read"}), app_only=True),
    ]
    assert map_principal(principal(roles=frozenset({"Db.Admin", "Db.Read"})), rules) == "admin"
    assert map_principal(principal(roles=frozenset({"Db.Admin"}), tenant="x"), rules) is None
    assert map_principal(principal(roles=frozenset(), groups=frozenset({"g1"})), rules) == "grp"
    assert map_principal(principal(roles=frozenset(), groups=None), rules) is None
    assert map_principal(principal(roles=frozenset(), client_app="ci-app"), rules) == "ci"
    ci_kc = principal(roles=frozenset(), client_app="ci-app", provider="kc")
    assert map_principal(ci_kc, rules) is None
    assert map_principal(principal(app_only=False), rules) is None
    assert map_principal(principal(roles=frozenset()), rules) is None
    assert match_rule(principal(), rules) is rules[3]
    assert map_principal(principal(), []) is None


# ---------------------------------------------------------------------------- generic provider


@pytest.mark.asyncio
async def test_generic_keycloak_realm_roles() -> None:
    async with running_idp() as idp:
        provider = idp.generic_provider_config(roles_claims=("realm_access.roles", "scope"))
        rules = [TierRule("read", login_role="vg_read", any_roles=frozenset({"db-read"}))]
        auth = OIDCAuthenticator([provider], rules, clock=FakeClock())
        p = await auth.authenticate(idp.mint_generic(["db-read", "offline_access"]), CTX)
        assert p.provider == "dev-oidc"
        assert p.client_app == "agent-cli"
        assert p.roles == {"db-read", "offline_access", "profile", "email"}
        assert p.tenant == idp.generic_issuer
        assert p.app_only is False
        assert auth.tier_for(p) == rules[0]

        async def reason(token: str) -> str:
            with pytest.raises(AuthError) as info:
                await auth.authenticate(token, CTX)
            return info.value.reason

        assert await reason(idp.mint_generic(["other"])) == "no_tier"
        assert await reason(idp.mint_generic(aud="account")) == "wrong_audience"
        spaced = await auth.authenticate(idp.mint_generic(realm_access={"roles": "db-read x"}), CTX)
        assert spaced.roles >= {"db-read", "x"}
        assert await reason(idp.mint_generic(realm_access={"roles": [1]})) == "malformed"
        no_sub = idp.sign({k: v for k, v in idp.claims().items() if k != "sub"})
        assert await reason(no_sub) == "wrong_issuer"  # Entra issuer: not trusted here
        t = idp.mint_generic()
        assert await reason(t.replace(t.split(".")[1], t.split(".")[1][:-4] + "AAAA")) in (
            "bad_signature",
            "malformed",
        )
        assert idp.counters.discovery == 1 and idp.counters.jwks == 1
        await auth.aclose()


@pytest.mark.asyncio
async def test_generic_tenant_app_only_and_allow_list() -> None:
    async with running_idp() as idp:
        provider = idp.generic_provider_config(
            tenant_claim="org",
            app_only_claim="gty",
            app_only_value="client-credentials",
            require_app_only=True,
            allowed_client_apps=frozenset({"agent-cli"}),
            jwks_uri=f"{idp.generic_issuer}/protocol/openid-connect/certs",
            discovery_url=None,
        )
        rules = [TierRule("read", any_roles=frozenset({"db-read"}), tenants=frozenset({"acme"}))]
        auth = OIDCAuthenticator([provider], rules, clock=FakeClock())
        p = await auth.authenticate(idp.mint_generic(org="acme", gty="client-credentials"), CTX)
        assert p.tenant == "acme" and p.app_only
        assert p.key == ("acme", p.subject)
        for token, expected in [
            (idp.mint_generic(org="acme"), "not_app_token"),
            (idp.mint_generic(gty="client-credentials"), "missing_claim"),
            (idp.mint_generic(org="other", gty="client-credentials"), "no_tier"),
            (
                idp.mint_generic(client_id="intruder", org="acme", gty="client-credentials"),
                "client_not_allowed",
            ),
        ]:
            with pytest.raises(AuthError) as info:
                await auth.authenticate(token, CTX)
            assert info.value.reason == expected
        assert idp.counters.discovery == 0


@pytest.mark.asyncio
async def test_entra_and_generic_side_by_side() -> None:
    async with running_idp() as idp:
        rules = [TierRule("read", any_roles=frozenset({"Db.Read", "db-read"}))]
        auth = OIDCAuthenticator(
            [idp.provider_config(), idp.generic_provider_config()], rules, clock=FakeClock()
        )
        a = await auth.authenticate(idp.mint("Db.Read"), CTX)
        b = await auth.authenticate(idp.mint_generic(), CTX)
        assert (a.provider, b.provider) == ("dev-entra", "dev-oidc")
