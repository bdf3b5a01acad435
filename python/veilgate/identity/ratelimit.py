"""Authentication-failure limiter: token buckets per source address, per principal, per client app.

Each *failure* takes one token from its keys' buckets; buckets refill continuously.  Successful
attempts cost nothing.  The number of tracked keys is bounded (least recently used evicted; full
buckets are forgotten first).

* **Per source address** (IPv4 host, IPv6 /64): counts every failure, attributable or not.  An
  exhausted address does *not* lock out valid tokens behind it (a NAT or a CI runner pool shares
  one address with whoever is failing): its attempts are still verified, but only against keys
  already cached (no JWKS fetch the limited address could trigger), and a failure is refused
  without further work.  A valid token signed by a known key always gets in.
* **Per principal** (issuer's subject of a token whose signature verified): counts failures after
  the signature (expired, wrong audience, no tier...).  Only the principal's own verified tokens
  can exhaust it, so nobody can lock another principal out; an exhausted principal is refused
  (``rate_limited``) until its bucket refills.
* **Per client app** (``azp`` / ``appid`` of a verified token): the same for the calling app.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from veilgate.identity.providers import RateLimitSettings


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Failure buckets for one kind of key."""

    def __init__(
        self, burst: float, per_s: float, max_entries: int, clock: Callable[[], float]
    ) -> None:
        self.burst = float(burst)
        self.per_s = float(per_s)
        self.max_entries = max_entries
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.updated) * self.per_s)

    def allowed(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            return True
        now = self._clock()
        level = self._level(bucket, now)
        if level >= self.burst:
            del self._buckets[key]  # refilled: forget it
            return True
        return level >= 1.0

    def record_failure(self, key: str) -> bool:
        """Take a token; ``True`` when this failure exhausted the bucket (now limited)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        before = self._level(bucket, now)
        bucket.tokens = max(0.0, before - 1.0)
        bucket.updated = now
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        return before >= 1.0 > bucket.tokens


def peer_host(peer: str) -> str:
    """``host`` of a ``host:port`` / ``[v6]:port`` / bare address string."""
    if peer.startswith("["):
        end = peer.find("]")
        return peer[1:end] if end > 0 else peer
    if peer.count(":") == 1:
        return peer.rsplit(":", 1)[0]
    return peer  # bare IPv4/IPv6 or a unix socket path


def peer_key(peer: str) -> str:
    """Rate-limit key of a peer: its host, or its /64 for IPv6 (one host holds a whole /64)."""
    host = peer_host(peer)
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class AuthFailureLimiter:
    """Per source address and per client app failure limits."""

    def __init__(
        self,
        settings: RateLimitSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        s = settings or RateLimitSettings()
        self.settings = s
        self.peers = TokenBuckets(s.peer_burst, s.peer_per_s, s.max_entries, clock)
        self.clients = TokenBuckets(s.client_burst, s.client_per_s, s.max_entries, clock)
        self.principals = TokenBuckets(s.principal_burst, s.principal_per_s, s.max_entries, clock)

    def peer_allowed(self, peer: str) -> bool:
        """False: the address is limited (verify against cached keys only; refuse failures)."""
        return not self.settings.enabled or self.peers.allowed(peer)

    def client_allowed(self, client: str) -> bool:
        return not self.settings.enabled or self.clients.allowed(client)

    def principal_allowed(self, principal: str) -> bool:
        return not self.settings.enabled or self.principals.allowed(principal)

    def record_failure(
        self, peer: str | None, client: str | None, principal: str | None = None
    ) -> list[str]:
        """Count one failure; returns the keys (``peer:...``/``client:...``/``principal:...``)
        it just limited."""
        limited: list[str] = []
        if not self.settings.enabled:
            return limited
        if peer and self.peers.record_failure(peer):
            limited.append(f"peer:{peer}")
        if client and self.clients.record_failure(client):
            limited.append(f"client:{client}")
        if principal and self.principals.record_failure(principal):
            limited.append(f"principal:{principal}")
        return limited
