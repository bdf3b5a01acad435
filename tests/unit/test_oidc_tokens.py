"""OIDCAuthenticator against a real dev IdP on 127.0.0.1: every token case of IDENTITY.md."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.idp import CTX, make_authenticator, pooled_key, running_idp

from veilgate.identity.base import AuthError, Principal
from veilgate.identity.devidp import DevIdP
from veilgate.identity.oidc import OIDCAuthenticator
from veilgate.identity.providers import TierRule

GRAPH = "https://graph.microsoft.com"
AZURE_PG = "https://ossrdbms-aad.database.windows.net"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def segments(token: str) -> list[str]:
    return token.split(".")


@pytest_asyncio.fixture
async def idp() -> AsyncIterator[DevIdP]:
    async with running_idp() as server:
        yield server


@pytest_asyncio.fixture
async def auth(idp: DevIdP) -> AsyncIterator[OIDCAuthenticator]:
    a = make_authenticator(idp)
    yield a
    await a.aclose()


async def refused(auth: OIDCAuthenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token, CTX)
    return info.value.reason


# ------------------------------------------------------------------------------------- accepted


@pytest.mark.asyncio
async def test_v2_app_token(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    p = await auth.authenticate(idp.mint("Db.Read", ttl=600), CTX)
    assert p.provider == "dev-entra"
    assert p.tenant == idp.tenant_id
    assert p.subject == idp.sp_object_id(idp.client_id)
    assert p.key == (idp.tenant_id, p.subject)
    assert p.client_app == idp.client_id
    assert p.app_only is True
    assert p.roles == frozenset({"Db.Read"})
    assert p.groups == frozenset()
    assert p.token_id and len(p.token_id) >= 16
    assert p.expires_at is not None and abs(p.expires_at - (time.time() + 600)) < 5
    rule = auth.tier_for(p)
    assert rule is not None and (rule.tier, rule.login_role) == ("read", "vg_read")


@pytest.mark.asyncio
@pytest.mark.parametrize("aud_form", ["guid", "api", "api_slash"])
async def test_v1_token_both_audience_forms(
    auth: OIDCAuthenticator, idp: DevIdP, aud_form: str
) -> None:
    aud = {
        "guid": idp.app_id,
        "api": f"api://{idp.app_id}",
        "api_slash": f"api://{idp.app_id}/",
    }[aud_form]
    token = idp.mint("Db.Admin", version="1.0", aud=aud)
    assert "x5t" in jwt.get_unverified_header(token)
    p = await auth.authenticate(token, CTX)
    assert p.client_app == idp.client_id  # from appid
    rule = auth.tier_for(p)
    assert rule is not None and rule.tier == "admin"


@pytest.mark.asyncio
async def test_agent_id_shape_accepted_and_logged(
    auth: OIDCAuthenticator, idp: DevIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="veilgate")
    token = idp.mint("Db.Read", version="1.0", agent_id=True)
    p = await auth.authenticate(token, CTX)
    assert p.app_only and p.roles == {"Db.Read"}
    ok = [r for r in caplog.records if r.getMessage() == "authenticated"]
    fields = getattr(ok[-1], "fields", {})
    assert fields["xms_act_fct"] == "11"
    assert "xms_par_app_azp" in fields


@pytest.mark.asyncio
async def test_first_matching_rule_wins(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    p = await auth.authenticate(idp.mint(["Db.Read", "Db.Admin"]), CTX)
    rule = auth.tier_for(p)
    assert rule is not None and rule.tier == "admin"


@pytest.mark.asyncio
async def test_identity_never_from_display_claims(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    token = idp.mint(
        "Db.Read", upn="admin@contoso.com", email="admin@contoso.com", preferred_username="root"
    )
    p = await auth.authenticate(token, CTX)
    assert p.subject == idp.sp_object_id(idp.client_id)
    assert "admin" not in p.label()


@pytest.mark.asyncio
async def test_200_groups_token_accepted(idp: DevIdP) -> None:
    groups = [str(uuid.uuid4()) for _ in range(200)]
    rules = [TierRule("grp", any_groups=frozenset(groups[-1:]))]
    a = make_authenticator(idp, rules)
    token = idp.mint(None, groups=groups)
    assert 10_000 < len(token) < 65535
    p = await a.authenticate(token, CTX)
    assert p.groups == frozenset(groups)
    assert a.tier_for(p) == rules[0]


# ---------------------------------------------------------------------- roles / app-only / groups


@pytest.mark.asyncio
async def test_no_roles_no_tier(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    assert await refused(auth, idp.mint(None)) == "no_tier"
    assert await refused(auth, idp.mint(["Db.Unknown"])) == "no_tier"


@pytest.mark.asyncio
async def test_roleless_token_accepted_only_for_allow_listed_app(idp: DevIdP) -> None:
    rules = [TierRule("ci", login_role="vg_ci", client_apps=frozenset({idp.client_id}))]
    a = make_authenticator(idp, rules)
    p = await a.authenticate(idp.mint(None), CTX)
    assert a.tier_for(p) == rules[0]
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint(None, client_id=str(uuid.uuid4())), CTX)
    assert info.value.reason == "no_tier"


@pytest.mark.asyncio
async def test_missing_idtyp_is_not_an_app_token(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    assert await refused(auth, idp.mint("Db.Read", app_only=False)) == "not_app_token"
    assert await refused(auth, idp.mint("Db.Read", idtyp="user")) == "not_app_token"


@pytest.mark.asyncio
async def test_delegated_token_when_app_only_not_required(idp: DevIdP) -> None:
    rules = [
        TierRule("agents", any_roles=frozenset({"Db.Admin"}), app_only=True),
        TierRule("humans", any_roles=frozenset({"Db.Read"}), app_only=False),
    ]
    a = make_authenticator(idp, rules, require_app_only=False)
    p = await a.authenticate(idp.mint("Db.Read", app_only=False), CTX)
    assert p.app_only is False
    assert a.tier_for(p) == rules[1]
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint("Db.Admin", app_only=False), CTX)
    assert info.value.reason == "no_tier"


@pytest.mark.asyncio
async def test_groups_overage_means_unknown_groups(idp: DevIdP) -> None:
    rules = [
        TierRule("by-group", any_groups=frozenset({"g1"})),
        TierRule("read", any_roles=frozenset({"Db.Read"})),
    ]
    a = make_authenticator(idp, rules)
    p = await a.authenticate(idp.mint("Db.Read", overage=True), CTX)
    assert p.groups is None
    assert a.tier_for(p) == rules[1]
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint(None, overage=True), CTX)
    assert info.value.reason == "no_tier"  # overage never satisfies a group rule


@pytest.mark.asyncio
async def test_client_allow_list(idp: DevIdP) -> None:
    a = make_authenticator(idp, allowed_client_apps=frozenset({idp.client_id}))
    await a.authenticate(idp.mint("Db.Read"), CTX)
    other = str(uuid.uuid4())
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint("Db.Read", client_id=other), CTX)
    assert info.value.reason == "client_not_allowed"


# ----------------------------------------------------------------------------- audience / issuer


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "aud",
    [GRAPH, "00000003-0000-0000-c000-000000000000", AZURE_PG, str(uuid.UUID(int=7)), "api://x"],
)
async def test_wrong_audience(auth: OIDCAuthenticator, idp: DevIdP, aud: str) -> None:
    assert await refused(auth, idp.mint("Db.Read", aud=aud)) == "wrong_audience"
    assert await refused(auth, idp.mint("Db.Read", version="1.0", aud=aud)) == "wrong_audience"


@pytest.mark.asyncio
async def test_graph_token_with_header_nonce(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    token = idp.mint("Db.Read", aud=GRAPH, headers={"nonce": b64(b"x" * 32)})
    assert await refused(auth, token) == "forbidden_header"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "header",
    [
        {"nonce": "abc"},
        {"jku": "https://evil.example/keys"},
        {"x5u": "https://evil.example/cert"},
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        {"crit": ["exp"], "exp": 1},
        {"crit": ["b64"], "b64": False},
    ],
)
async def test_forbidden_headers(
    auth: OIDCAuthenticator, idp: DevIdP, header: dict[str, Any]
) -> None:
    assert await refused(auth, idp.mint("Db.Read", headers=header)) == "forbidden_header"


@pytest.mark.asyncio
async def test_foreign_tenant(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    async with running_idp(key_index=1) as foreign:
        # its own issuer: not trusted at all
        assert await refused(auth, foreign.mint("Db.Read")) == "wrong_issuer"
        # our issuer and tenant, signed by the foreign tenant's key (kid unknown here)
        claims = idp.claims("Db.Read")
        assert await refused(auth, foreign.sign(claims)) == "unknown_kid"
        # ... and under our kid: the signature does not verify
        forged = idp.sign(claims, key=foreign.key().private)
        assert await refused(auth, forged) == "bad_signature"


@pytest.mark.asyncio
async def test_iss_tid_mismatch(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    other = str(uuid.uuid4())
    assert await refused(auth, idp.mint("Db.Read", tid=other)) == "tenant_mismatch"
    assert await refused(auth, idp.mint("Db.Read", tid=idp.tenant_id.upper())) == (
        "tenant_mismatch"
    )
    foreign_iss = f"https://login.microsoftonline.com/{other}/v2.0"
    assert await refused(auth, idp.mint("Db.Read", iss=foreign_iss)) == "wrong_issuer"


@pytest.mark.asyncio
@pytest.mark.parametrize("tid", ["contoso", "common", "", 42])
async def test_non_guid_tid(auth: OIDCAuthenticator, idp: DevIdP, tid: object) -> None:
    reason = await refused(auth, idp.mint("Db.Read", tid=tid))
    assert reason in ("tenant_mismatch", "missing_claim")


@pytest.mark.asyncio
async def test_version_must_match_issuer(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    assert await refused(auth, idp.mint("Db.Read", ver="1.0")) == "wrong_issuer"
    assert await refused(auth, idp.mint("Db.Read", version="1.0", ver="2.0")) == "wrong_issuer"


@pytest.mark.asyncio
async def test_only_accepted_versions(idp: DevIdP) -> None:
    a = make_authenticator(idp, accepted_versions=("2.0",))
    await a.authenticate(idp.mint("Db.Read"), CTX)
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint("Db.Read", version="1.0"), CTX)
    assert info.value.reason == "wrong_issuer"


@pytest.mark.asyncio
async def test_signing_key_issuer_property_checked(idp: DevIdP) -> None:
    idp.key_issuer = f"https://login.microsoftonline.com/{uuid.uuid4()}/v2.0"
    a = make_authenticator(idp)
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint("Db.Read"), CTX)
    assert info.value.reason == "wrong_issuer"
    idp.key_issuer = None  # absent property: fine
    b = make_authenticator(idp)
    await b.authenticate(idp.mint("Db.Read"), CTX)


# ------------------------------------------------------------------------------- algorithms


@pytest.mark.asyncio
async def test_alg_none(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": idp.signing_kid}
    token = f"{b64json(header)}.{b64json(idp.claims('Db.Read'))}."
    assert await refused(auth, token) == "alg_not_allowed"
    header["alg"] = "None"
    token = f"{b64json(header)}.{b64json(idp.claims('Db.Read'))}.{b64(b'x')}"
    assert await refused(auth, token) == "alg_not_allowed"


@pytest.mark.asyncio
async def test_hs256_keyed_with_public_pem(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    pem = idp.key().public_pem()
    header = {"alg": "HS256", "typ": "JWT", "kid": idp.signing_kid}
    signing_input = f"{b64json(header)}.{b64json(idp.claims('Db.Read'))}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert await refused(auth, f"{signing_input}.{b64(sig)}") == "alg_not_allowed"
    # the same token with a lying "RS256" header: the HMAC is not an RSA signature
    header["alg"] = "RS256"
    signing_input = f"{b64json(header)}.{b64json(idp.claims('Db.Read'))}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert await refused(auth, f"{signing_input}.{b64(sig)}") == "bad_signature"


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
async def test_other_rsa_algorithms_refused(auth: OIDCAuthenticator, idp: DevIdP, alg: str) -> None:
    token = idp.sign(idp.claims("Db.Read"), algorithm=alg)
    assert await refused(auth, token) == "alg_not_allowed"


@pytest.mark.asyncio
async def test_tampered_payload_and_signature(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    h, p, s = segments(idp.mint("Db.Read"))
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["roles"] = ["Db.Admin"]
    assert await refused(auth, f"{h}.{b64json(claims)}.{s}") == "bad_signature"
    mid = len(s) // 2
    flipped = s[:mid] + ("A" if s[mid] != "A" else "B") + s[mid + 1 :]
    assert await refused(auth, f"{h}.{p}.{flipped}") == "bad_signature"
    assert await refused(auth, f"{h}.{p}.") == "bad_signature"


# ---------------------------------------------------------------------------------- lifetime


@pytest.mark.asyncio
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "oid", "tid", "aud", "sub", "azp"])
async def test_missing_required_claim(auth: OIDCAuthenticator, idp: DevIdP, claim: str) -> None:
    assert await refused(auth, idp.mint("Db.Read", omit=[claim])) == "missing_claim"


@pytest.mark.asyncio
async def test_missing_appid_v1(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    token = idp.mint("Db.Read", version="1.0", omit=["appid"])
    assert await refused(auth, token) == "missing_claim"


@pytest.mark.asyncio
async def test_missing_iss_or_ver(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    assert await refused(auth, idp.mint("Db.Read", omit=["iss"])) == "wrong_issuer"
    assert await refused(auth, idp.mint("Db.Read", omit=["ver"])) == "wrong_issuer"


@pytest.mark.asyncio
async def test_exp_leeway_edges(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    now = int(time.time())
    await auth.authenticate(idp.mint("Db.Read", exp=now - 30), CTX)  # inside 60 s leeway
    assert await refused(auth, idp.mint("Db.Read", exp=now - 120)) == "expired"


@pytest.mark.asyncio
async def test_nbf_and_iat_in_the_future(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    now = int(time.time())
    await auth.authenticate(idp.mint("Db.Read", nbf=now + 30, iat=now), CTX)  # within leeway
    assert await refused(auth, idp.mint("Db.Read", nbf=now + 600)) == "not_yet_valid"
    assert await refused(auth, idp.mint("Db.Read", iat=now + 600)) == "not_yet_valid"


@pytest.mark.asyncio
async def test_non_numeric_exp(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    assert await refused(auth, idp.mint("Db.Read", exp="tomorrow")) == "malformed"


# --------------------------------------------------------------------------------- structure


@pytest.mark.asyncio
async def test_token_over_64k(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    token = idp.mint("Db.Read", padding="x" * 70_000)
    assert len(token) > 65535
    assert await refused(auth, token) == "too_large"
    assert await refused(auth, "a" * 1_000_000) == "too_large"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d.e",  # JWE shape
        "!!!.eyJ9.sig",
        "eyJhbGciOiJSUzI1NiJ9.@@@.c2ln",
        b64(b"{not json") + "." + b64json({}) + ".c2ln",
        b64json(["alg", "RS256"]) + "." + b64json({}) + ".c2ln",
        "\u00e9" * 10,
    ],
)
async def test_malformed(auth: OIDCAuthenticator, token: str) -> None:
    assert await refused(auth, token) in ("malformed", "alg_not_allowed")


@pytest.mark.asyncio
async def test_malformed_payload_json(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    h, _, s = segments(idp.mint("Db.Read"))
    assert await refused(auth, f"{h}.{b64(b'{bad json')}.{s}") == "malformed"
    assert await refused(auth, f"{h}.{b64json([1, 2])}.{s}") == "malformed"
    not_utf8 = b64(b"\xff\xfe")
    assert await refused(auth, f"{h}.{not_utf8}.{s}") == "malformed"


@pytest.mark.asyncio
async def test_duplicate_members_refused(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    raw_header = f'{{"alg":"RS256","kid":"{idp.signing_kid}","kid":"other","typ":"JWT"}}'
    claims = b64json(idp.claims("Db.Read"))
    assert await refused(auth, f"{b64(raw_header.encode())}.{claims}.c2ln") == "malformed"
    payload = json.dumps(idp.claims("Db.Read"))[:-1] + ', "aud": "other"}'
    token = idp.mint("Db.Read")
    h, _, s = segments(token)
    assert await refused(auth, f"{h}.{b64(payload.encode())}.{s}") == "malformed"


@pytest.mark.asyncio
async def test_missing_or_unknown_kid(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    claims = idp.claims("Db.Read")
    no_kid = jwt.encode(claims, idp.key().private, algorithm="RS256")
    assert await refused(auth, no_kid) == "malformed"
    other = pooled_key(2)
    assert await refused(auth, idp.sign(claims, key=other.private)) == "bad_signature"
    unknown = jwt.encode(claims, other.private, algorithm="RS256", headers={"kid": other.kid})
    assert await refused(auth, unknown) == "unknown_kid"


@pytest.mark.asyncio
async def test_duplicated_kid_in_jwks(idp: DevIdP) -> None:
    # the same kid published twice (with another key): ambiguous, never used
    other = pooled_key(3)
    dup = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other.private.public_key()))
    dup.update({"kid": idp.signing_kid, "use": "sig"})
    idp.extra_jwks.append(dup)
    a = make_authenticator(idp)
    with pytest.raises(AuthError) as info:
        await a.authenticate(idp.mint("Db.Read"), CTX)
    assert info.value.reason in ("unknown_kid", "jwks_unavailable")


# ------------------------------------------------------------------------------------ logging


@pytest.mark.asyncio
async def test_token_never_logged(
    auth: OIDCAuthenticator, idp: DevIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="veilgate")
    good = idp.mint("Db.Read")
    bad = idp.mint("Db.Read", aud=GRAPH)
    await auth.authenticate(good, CTX)
    with pytest.raises(AuthError):
        await auth.authenticate(bad, CTX)
    failed = [r for r in caplog.records if r.getMessage() == "oidc_rejected"]
    reasons = [getattr(r, "fields", {}).get("reason") for r in failed]
    assert reasons == ["wrong_audience"]
    for record in caplog.records:
        text = record.getMessage() + repr(getattr(record, "fields", {}))
        for token in (good, bad):
            for part in segments(token):
                assert part not in text


@pytest.mark.asyncio
async def test_principal_holds_no_token_material(auth: OIDCAuthenticator, idp: DevIdP) -> None:
    token = idp.mint("Db.Read")
    p = await auth.authenticate(token, CTX)
    rendered = repr(p) + repr([getattr(p, f) for f in Principal.__slots__])
    for part in segments(token):
        assert part not in rendered


# ------------------------------------------------------------------------------------- fuzzing

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
_CLAIMS = ["iss", "aud", "exp", "nbf", "iat", "tid", "oid", "sub", "ver", "azp", "appid", "roles"]


class _FuzzEnv:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.idp = DevIdP(keys=[pooled_key(0)])
        self.loop.run_until_complete(self.idp.start())
        self.auth = make_authenticator(self.idp)
        self.loop.run_until_complete(self.auth.prefetch())

    def close(self) -> None:
        self.loop.run_until_complete(self.auth.aclose())
        self.loop.run_until_complete(self.idp.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[_FuzzEnv]:
    env = _FuzzEnv()
    yield env
    env.close()


@given(
    header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "x"]) | st.text(), _json),
    payload=st.dictionaries(st.sampled_from(_CLAIMS) | st.text(), _json),
    use_real_header=st.booleans(),
    use_real_iss=st.booleans(),
)
@settings(deadline=None)
def test_fuzz_only_auth_errors(
    fuzz_env: _FuzzEnv,
    header: dict[str, Any],
    payload: dict[str, Any],
    use_real_header: bool,
    use_real_iss: bool,
) -> None:
    idp = fuzz_env.idp
    if use_real_header:
        header = {**header, "alg": "RS256", "kid": idp.signing_kid}
    if use_real_iss:
        payload = {**payload, "iss": idp.issuer("2.0"), "ver": "2.0"}
    signed = idp.sign(idp.claims("Db.Read"))
    token = f"{b64json(header)}.{b64json(payload)}.{signed.split('.')[2]}"
    with pytest.raises(AuthError):
        fuzz_env.loop.run_until_complete(fuzz_env.auth.authenticate(token, CTX))


@given(token=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b64(b)))
@settings(deadline=None)
def test_fuzz_random_strings(fuzz_env: _FuzzEnv, token: str) -> None:
    with pytest.raises(AuthError):
        fuzz_env.loop.run_until_complete(fuzz_env.auth.authenticate(token, CTX))
