"""Auth-failure rate limiting per source address and per client app."""

from __future__ import annotations

import uuid

import pytest
from tests.idp import FakeClock, ctx, make_authenticator, running_idp

from veilgate.identity.base import AuthError
from veilgate.identity.providers import RateLimitSettings
from veilgate.identity.ratelimit import AuthFailureLimiter, TokenBuckets, peer_host, peer_key


async def reason_of(coro: object) -> str:
    with pytest.raises(AuthError) as info:
        await coro  # type: ignore[misc]
    return info.value.reason


def test_peer_host() -> None:
    assert peer_host("10.0.0.1:5432") == "10.0.0.1"
    assert peer_host("[::1]:5432") == "::1"
    assert peer_host("::1") == "::1"
    assert peer_host("/tmp/.s.PGSQL.6432") == "/tmp/.s.PGSQL.6432"
    assert peer_key("10.0.0.1:5432") == "10.0.0.1"
    assert peer_key("[2001:db8:1:2:3:4:5:6]:5432") == "2001:db8:1:2::/64"
    assert peer_key("[2001:db8:1:2:ffff::9]:1") == "2001:db8:1:2::/64"
    assert peer_key("[::ffff:192.0.2.1]:1") == "192.0.2.1"
    assert peer_key("[fe80::1%eth0]:1") == "fe80::/64"


def test_token_buckets_refill_and_bound() -> None:
    clock = FakeClock()
    b = TokenBuckets(burst=3, per_s=1, max_entries=100, clock=clock)
    for _ in range(3):
        assert b.allowed("k")
        b.record_failure("k")
    assert not b.allowed("k")
    clock.advance(0.5)
    assert not b.allowed("k")
    clock.advance(0.6)
    assert b.allowed("k")
    clock.advance(10)
    assert b.allowed("k") and len(b) == 0  # full again: forgotten
    for i in range(500):
        b.record_failure(f"k{i}")
    assert len(b) == 100


def test_disabled_limiter() -> None:
    lim = AuthFailureLimiter(RateLimitSettings(enabled=False), FakeClock())
    for _ in range(100):
        lim.record_failure("p", "c")
    assert lim.peer_allowed("p") and lim.client_allowed("c")


@pytest.mark.asyncio
async def test_limited_address_fetches_nothing_and_refuses_failures() -> None:
    """Promise: an address that keeps failing costs the gateway no JWKS fetch and no further
    work for its failures (refused as rate_limited)."""
    async with running_idp() as idp:
        clock = FakeClock()
        auth = make_authenticator(
            idp, clock=clock, rate_limit=RateLimitSettings(peer_burst=5, peer_per_s=0.5)
        )
        attacker = ctx("198.51.100.7:40000")
        for _ in range(5):
            assert await reason_of(auth.authenticate("garbage", attacker)) == "malformed"
        assert await reason_of(auth.authenticate("garbage", attacker)) == "rate_limited"
        good = idp.mint("Db.Read")
        # the signing keys are not cached yet: a limited address never makes the gateway fetch
        assert await reason_of(auth.authenticate(good, attacker)) == "rate_limited"
        assert await reason_of(auth.authenticate(good, ctx("198.51.100.7:40001"))) == (
            "rate_limited"
        )
        assert idp.counters.jwks == 0
        # other addresses are unaffected (and warm the key cache)
        await auth.authenticate(good, ctx("198.51.100.8:1"))
        fetches = idp.counters.jwks
        # an unknown key id from the limited address: refused without a fetch
        unknown_kid = idp.mint("Db.Read", headers={"kid": "not-a-published-key"})
        assert await reason_of(auth.authenticate(unknown_kid, attacker)) == "rate_limited"
        assert idp.counters.jwks == fetches


@pytest.mark.asyncio
async def test_limited_address_does_not_lock_out_valid_tokens() -> None:
    """Promise: valid tokens behind an address shared with someone who keeps failing (NAT, a
    CI runner pool) still get in."""
    async with running_idp() as idp:
        clock = FakeClock()
        auth = make_authenticator(
            idp, clock=clock, rate_limit=RateLimitSettings(peer_burst=5, peer_per_s=0.01)
        )
        await auth.authenticate(idp.mint("Db.Read"), ctx("192.0.2.50:1"))  # keys cached
        shared = ctx("203.0.113.9:1")
        for _ in range(20):
            await reason_of(auth.authenticate("garbage", shared))
        h, p, sig = idp.mint("Db.Read").split(".")
        forged = f"{h}.{p}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
        assert await reason_of(auth.authenticate(forged, shared)) == "rate_limited"
        for _ in range(10):
            principal = await auth.authenticate(idp.mint("Db.Read"), shared)
            assert principal.roles == frozenset({"Db.Read"})
        assert await reason_of(auth.authenticate("garbage", shared)) == "rate_limited"


@pytest.mark.asyncio
async def test_principal_limited_by_its_own_verified_failures_only() -> None:
    """Promise: failures after the signature count against that principal (and nobody else can
    make them: they need its signed tokens)."""
    async with running_idp() as idp:
        clock = FakeClock()
        settings = RateLimitSettings(
            peer_burst=1000, client_burst=1000, principal_burst=3, principal_per_s=0.1
        )
        auth = make_authenticator(idp, clock=clock, rate_limit=settings)
        victim = str(uuid.uuid4())
        # forged tokens for the victim (bad signature): count against addresses only
        for i in range(10):
            h, p, sig = idp.mint("Db.Read", oid=victim).split(".")
            forged = f"{h}.{p}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
            assert await reason_of(auth.authenticate(forged, ctx(f"10.9.0.{i}:1"))) == (
                "bad_signature"
            )
        await auth.authenticate(idp.mint("Db.Read", oid=victim), ctx("10.9.1.1:1"))
        # the principal's own verified failures (expired tokens, no tier) limit it
        noisy = str(uuid.uuid4())
        for i in range(3):
            expired = idp.mint("Db.Read", oid=noisy, ttl=-3600)
            assert await reason_of(auth.authenticate(expired, ctx(f"10.9.2.{i}:1"))) == "expired"
        good = idp.mint("Db.Read", oid=noisy)
        assert await reason_of(auth.authenticate(good, ctx("10.9.3.1:1"))) == "rate_limited"
        # another principal of the same app is unaffected
        await auth.authenticate(idp.mint("Db.Read", oid=victim), ctx("10.9.3.1:1"))
        clock.advance(11)
        await auth.authenticate(good, ctx("10.9.3.1:1"))


@pytest.mark.asyncio
async def test_client_app_limited_only_by_verified_failures() -> None:
    async with running_idp() as idp:
        clock = FakeClock()
        settings = RateLimitSettings(peer_burst=1000, client_burst=3, client_per_s=0.1)
        auth = make_authenticator(idp, clock=clock, rate_limit=settings)
        # forged tokens naming the client (bad signature): count against the peers only
        for i in range(10):
            h, p, s = idp.mint("Db.Read").split(".")
            forged = f"{h}.{p}.{s[:10]}{'A' if s[10] != 'A' else 'B'}{s[11:]}"
            assert await reason_of(auth.authenticate(forged, ctx(f"10.0.0.{i}:1"))) == (
                "bad_signature"
            )
        await auth.authenticate(idp.mint("Db.Read"), ctx("10.0.1.1:1"))
        # verified failures (no tier) from many addresses: the client app is limited
        for i in range(3):
            no_tier = idp.mint(None)
            assert await reason_of(auth.authenticate(no_tier, ctx(f"10.0.2.{i}:1"))) == "no_tier"
        good = idp.mint("Db.Read")
        assert await reason_of(auth.authenticate(good, ctx("10.0.3.1:1"))) == "rate_limited"
        # another client app is unaffected
        other = str(uuid.uuid4())
        await auth.authenticate(idp.mint("Db.Read", client_id=other), ctx("10.0.3.1:1"))
        clock.advance(11)
        await auth.authenticate(good, ctx("10.0.3.1:1"))
