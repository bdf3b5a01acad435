"""JWKS cache over real HTTP: rotation, kid floods, outages, discovery and redirects."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.idp import CTX, FakeClock, make_authenticator, pooled_key, running_idp

from veilgate import metrics
from veilgate.identity.base import AuthError
from veilgate.identity.devidp import DevIdP, public_jwk
from veilgate.identity.jwks import (
    JWKSCache,
    JWKSSettings,
    JWKSUnavailable,
    UnknownKid,
    parse_jwks,
)
from veilgate.identity.oidc import OIDCAuthenticator


@pytest_asyncio.fixture
async def idp() -> AsyncIterator[DevIdP]:
    async with running_idp() as server:
        yield server


def v2_cache(idp: DevIdP, clock: FakeClock, **settings: float) -> JWKSCache:
    return JWKSCache(
        "test/v2.0",
        discovery_url=idp.metadata_url("2.0"),
        expected_issuer=idp.issuer("2.0"),
        allow_insecure_http=True,
        settings=JWKSSettings(**settings),  # type: ignore[arg-type]
        clock=clock,
    )


async def reason(auth: OIDCAuthenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token, CTX)
    return info.value.reason


def random_kid_token(idp: DevIdP) -> str:
    return idp.sign(idp.claims("Db.Read"), headers={"kid": secrets.token_urlsafe(20)})


# ------------------------------------------------------------------------------------ rotation


@pytest.mark.asyncio
async def test_rotated_key_accepted_at_once_and_old_removed(idp: DevIdP) -> None:
    clock = FakeClock()
    auth = make_authenticator(idp, clock=clock)
    old_token = idp.mint("Db.Read")
    await auth.authenticate(old_token, CTX)
    assert idp.counters.jwks == 1
    old_kid = idp.signing_kid
    new_kid = idp.rotate()  # old key no longer published
    assert new_kid != old_kid
    await auth.authenticate(idp.mint("Db.Read"), CTX)  # unknown kid → one refresh
    assert idp.counters.jwks == 2
    cache = auth.caches["dev-entra/v2.0"]
    assert set(cache.keys()) == {new_kid}
    # old key gone: refused, and no extra fetch inside the cooldown
    assert await reason(auth, old_token) == "unknown_kid"
    assert idp.counters.jwks == 2


@pytest.mark.asyncio
async def test_overlap_rotation_keeps_both(idp: DevIdP) -> None:
    auth = make_authenticator(idp, clock=FakeClock())
    old_token = idp.mint("Db.Read")
    await auth.authenticate(old_token, CTX)
    idp.rotate(keep_old=True)
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    await auth.authenticate(old_token, CTX)
    assert idp.counters.jwks == 2


# --------------------------------------------------------------------------------- kid floods


@pytest.mark.asyncio
async def test_unknown_kid_flood_bounded_fetches(idp: DevIdP) -> None:
    clock = FakeClock()
    auth = make_authenticator(idp, clock=clock)
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    assert idp.counters.jwks == 1
    # 300 sequential + 300 concurrent random kids: at most one refresh
    for _ in range(300):
        assert await reason(auth, random_kid_token(idp)) == "unknown_kid"
    results = await asyncio.gather(
        *(auth.authenticate(random_kid_token(idp), CTX) for _ in range(300)),
        return_exceptions=True,
    )
    assert all(isinstance(r, AuthError) and r.reason == "unknown_kid" for r in results)
    assert idp.counters.jwks == 2
    # the same unknown kid repeated after the cooldown: negative cache, no fetch
    repeated = random_kid_token(idp)
    clock.advance(31)
    assert await reason(auth, repeated) == "unknown_kid"
    assert idp.counters.jwks == 3
    clock.advance(31)
    assert await reason(auth, repeated) == "unknown_kid"
    assert idp.counters.jwks == 3
    # valid tokens kept working throughout
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    assert idp.counters.jwks == 3


@pytest.mark.asyncio
async def test_cooldown_does_not_block_scheduled_refresh(idp: DevIdP) -> None:
    clock = FakeClock()
    cache = v2_cache(idp, clock, lifespan_s=10, refresh_ahead_s=0, unknown_kid_cooldown_s=30)
    await cache.get_key(idp.signing_kid)
    with pytest.raises(UnknownKid):
        await cache.get_key("nope")  # unknown-kid refresh at t=0
    assert cache.fetch_count == 2
    clock.advance(11)  # expired, well inside the 30 s cooldown
    await cache.get_key(idp.signing_kid)
    assert cache.fetch_count == 3
    await cache.aclose()


# ------------------------------------------------------------------------------- single flight


@pytest.mark.asyncio
async def test_cold_cache_single_flight(idp: DevIdP) -> None:
    idp.jwks_delay_s = 0.05
    auth = make_authenticator(idp, clock=FakeClock())
    tokens = [idp.mint("Db.Read") for _ in range(50)]
    await asyncio.gather(*(auth.authenticate(t, CTX) for t in tokens))
    assert idp.counters.jwks == 1
    assert idp.counters.discovery == 1


@pytest.mark.asyncio
async def test_cancelled_waiter_does_not_cancel_refresh(idp: DevIdP) -> None:
    idp.jwks_delay_s = 0.1
    cache = v2_cache(idp, FakeClock())
    first = asyncio.create_task(cache.get_key(idp.signing_kid))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(cache.get_key(idp.signing_kid))
    await asyncio.sleep(0.01)
    first.cancel()
    key = await second
    assert key.kid == idp.signing_kid
    assert cache.fetch_count == 1
    await cache.aclose()


@pytest.mark.asyncio
async def test_refresh_ahead_in_background(idp: DevIdP) -> None:
    clock = FakeClock()
    cache = v2_cache(idp, clock, lifespan_s=3600, refresh_ahead_s=300)
    await cache.get_key(idp.signing_kid)
    first_expiry = cache.expires_at
    clock.advance(3400)  # inside the refresh-ahead window
    idp.jwks_delay_s = 0.05
    await cache.get_key(idp.signing_kid)  # served at once from the cache
    assert cache.expires_at == first_expiry  # ... before the background refresh finished
    for _ in range(100):
        if cache.expires_at > first_expiry:
            break
        await asyncio.sleep(0.01)
    assert cache.expires_at == clock() + 3600
    assert cache.fetch_count == 2
    await cache.aclose()


# ----------------------------------------------------------------------------------- outages


@pytest.mark.asyncio
async def test_jwks_503_warm_cache_serves_stale_then_fails_closed(idp: DevIdP) -> None:
    clock = FakeClock()
    auth = make_authenticator(idp, clock=clock)
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    idp.fail_jwks = True
    clock.advance(3600 + 60)  # expired: refresh fails, stale keys served
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    fetches = idp.counters.jwks
    assert fetches == 2
    await auth.authenticate(idp.mint("Db.Read"), CTX)  # within the error back-off: no fetch
    assert idp.counters.jwks == fetches
    clock.advance(86400)  # beyond the stale bound
    assert await reason(auth, idp.mint("Db.Read")) == "jwks_unavailable"
    # the IdP comes back: recovered on the next attempt
    idp.fail_jwks = False
    clock.advance(10)
    await auth.authenticate(idp.mint("Db.Read"), CTX)


@pytest.mark.asyncio
async def test_failing_idp_does_not_delay_requests(idp: DevIdP) -> None:
    clock = FakeClock()
    cache = v2_cache(idp, clock)
    await cache.get_key(idp.signing_kid)
    idp.fail_jwks = True
    clock.advance(3700)
    await cache.get_key(idp.signing_kid)  # one blocking attempt (fails fast): stale served
    assert cache.fetch_count == 2 and cache.last_error is not None
    # the IdP now hangs for a while, then recovers: requests are served stale meanwhile
    idp.fail_jwks = False
    idp.jwks_delay_s = 0.3
    clock.advance(10)
    started = time.perf_counter()
    await cache.get_key(idp.signing_kid)
    assert time.perf_counter() - started < 0.2
    for _ in range(100):
        if cache.last_error is None:
            break
        await asyncio.sleep(0.02)
    assert cache.last_error is None and cache.expires_at == clock() + 3600
    await cache.aclose()


@pytest.mark.asyncio
async def test_jwks_503_cold_cache_fails_closed(idp: DevIdP) -> None:
    clock = FakeClock()
    idp.fail_jwks = True
    auth = make_authenticator(idp, clock=clock)
    assert await reason(auth, idp.mint("Db.Read")) == "jwks_unavailable"
    assert idp.counters.jwks == 1
    assert await reason(auth, idp.mint("Db.Read")) == "jwks_unavailable"  # back-off
    assert idp.counters.jwks == 1
    failures = metrics.jwks_refresh_failures_total.get(provider="dev-entra/v2.0")
    assert failures >= 1


@pytest.mark.asyncio
async def test_jwks_timeout(idp: DevIdP) -> None:
    clock = FakeClock()
    settings = JWKSSettings(fetch_timeout_s=0.2)
    auth = make_authenticator(idp, clock=clock, jwks=settings)
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    idp.jwks_delay_s = 1.0
    clock.advance(3700)
    await auth.authenticate(idp.mint("Db.Read"), CTX)  # timed out: stale served
    cold = make_authenticator(idp, clock=clock, jwks=settings)
    assert await reason(cold, idp.mint("Db.Read")) == "jwks_unavailable"


@pytest.mark.asyncio
async def test_idp_down_entirely(idp: DevIdP) -> None:
    provider = idp.provider_config()
    await idp.stop()
    auth = OIDCAuthenticator([provider], [], clock=FakeClock())
    with pytest.raises(AuthError) as info:
        await auth.authenticate(idp.mint("Db.Read"), CTX)
    assert info.value.reason == "jwks_unavailable"


# ---------------------------------------------------------------------- discovery / redirects


@pytest.mark.asyncio
async def test_discovery_issuer_mismatch(idp: DevIdP) -> None:
    idp.discovery_issuer_override = "https://login.microsoftonline.com/common/v2.0"
    clock = FakeClock()
    cache = v2_cache(idp, clock)
    with pytest.raises(JWKSUnavailable):
        await cache.get_key(idp.signing_kid)
    assert cache.last_error is not None and "issuer mismatch" in cache.last_error
    assert idp.counters.jwks == 0  # never went on to the JWKS
    auth = make_authenticator(idp, clock=clock)
    assert await reason(auth, idp.mint("Db.Read")) == "jwks_unavailable"


@pytest.mark.asyncio
async def test_redirect_on_jwks_url_not_followed(idp: DevIdP) -> None:
    idp.redirect_jwks = True
    cache = v2_cache(idp, FakeClock())
    with pytest.raises(JWKSUnavailable):
        await cache.get_key(idp.signing_kid)
    assert cache.last_error is not None and "HTTP 302" in cache.last_error
    assert "/redirected/keys" not in idp.counters.requests


@pytest.mark.asyncio
async def test_discovery_jwks_uri_must_be_allowed(idp: DevIdP) -> None:
    # discovery pointing the JWKS at plain http on a non-loopback host is refused
    cache = JWKSCache(
        "t",
        discovery_url=idp.metadata_url("2.0"),
        expected_issuer=idp.issuer("2.0"),
        allow_insecure_http=True,
        clock=FakeClock(),
    )
    idp_jwks_url = idp.jwks_url

    def evil(version: str = "2.0") -> str:
        return "http://203.0.113.9/keys"

    idp.jwks_url = evil  # type: ignore[method-assign]
    with pytest.raises(JWKSUnavailable):
        await cache.get_key(idp.signing_kid)
    assert cache.last_error is not None and "jwks_uri refused" in cache.last_error
    idp.jwks_url = idp_jwks_url  # type: ignore[method-assign]


def test_cache_url_policy() -> None:
    with pytest.raises(ValueError):
        JWKSCache("t", jwks_uri="http://example.com/keys")
    with pytest.raises(ValueError):
        JWKSCache("t", jwks_uri="http://10.0.0.1/keys", allow_insecure_http=True)
    with pytest.raises(ValueError):
        JWKSCache("t", jwks_uri="https://a/keys", discovery_url="https://a/d", expected_issuer="x")
    with pytest.raises(ValueError):
        JWKSCache("t", discovery_url="https://a/d")  # no expected issuer
    JWKSCache("t", jwks_uri="https://login.example/keys")


@pytest.mark.asyncio
async def test_static_jwks_uri(idp: DevIdP) -> None:
    cache = JWKSCache(
        "static", jwks_uri=idp.jwks_url("2.0"), allow_insecure_http=True, clock=FakeClock()
    )
    key = await cache.get_key(idp.signing_kid)
    assert key.issuer == "https://login.microsoftonline.com/{tenantid}/v2.0"
    assert cache.discovery_count == 0 and cache.fetch_count == 1


# ------------------------------------------------------------------------------ key filtering


def test_parse_jwks_filters_keys() -> None:
    good = pooled_key(0)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    ec_jwk["kid"] = "ec"
    doc = {
        "keys": [
            public_jwk(good.private, "good", issuer="https://login.microsoftonline.com/x/v2.0"),
            public_jwk(good.private, "enc", use="enc"),
            public_jwk(good.private, "rs512", alg="RS512"),
            public_jwk(good.private, "noverify", key_ops=["encrypt"]),
            public_jwk(small, "small"),
            ec_jwk,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {k: v for k, v in public_jwk(good.private, "x").items() if k != "kid"},
            "not an object",
        ]
    }
    keys, skipped = parse_jwks(doc)
    assert set(keys) == {"good"}
    assert skipped == 9
    assert keys["good"].issuer == "https://login.microsoftonline.com/x/v2.0"
    assert keys["good"].key.key_size == 2048
    with pytest.raises(ValueError):
        parse_jwks({"keys": "nope"})
    with pytest.raises(ValueError):
        parse_jwks([])


def test_parse_jwks_strips_private_members() -> None:
    pair = pooled_key(0)
    full = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pair.private))
    full.update({"kid": "leaky", "use": "sig", "key_ops": ["verify"]})
    keys, _ = parse_jwks({"keys": [full]})
    assert "d" not in keys["leaky"].raw and "p" not in keys["leaky"].raw
    assert keys["leaky"].key.public_numbers() == pair.private.public_key().public_numbers()


@pytest.mark.asyncio
async def test_small_key_published_under_kid_is_unusable(idp: DevIdP) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    idp.extra_jwks.append(public_jwk(small, "weak"))
    auth = make_authenticator(idp, clock=FakeClock())
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        token = jwt.encode(idp.claims("Db.Read"), small, algorithm="RS256", headers={"kid": "weak"})
    assert await reason(auth, token) == "unknown_kid"


@pytest.mark.asyncio
async def test_prefetch(idp: DevIdP) -> None:
    auth = make_authenticator(idp, clock=FakeClock())
    assert await auth.prefetch() == {"dev-entra/v1.0": True, "dev-entra/v2.0": True}
    assert idp.counters.jwks == 2
    await auth.authenticate(idp.mint("Db.Read"), CTX)
    assert idp.counters.jwks == 2
    await auth.aclose()
