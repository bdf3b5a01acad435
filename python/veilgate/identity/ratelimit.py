"""Authentication-failure limiter: token buckets per source address and per client app.

Each *failure* takes one token from the key's bucket; buckets refill continuously.  While a bucket
holds less than one token, attempts under that key are refused up front (``rate_limited``) without
any parsing or signature work.  Successful attempts cost nothing.  The number of tracked keys is
bounded (least recently used evicted; full buckets are forgotten first).
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

    def peer_allowed(self, peer: str) -> bool:
        return not self.settings.enabled or self.peers.allowed(peer)

    def client_allowed(self, client: str) -> bool:
        return not self.settings.enabled or self.clients.allowed(client)

    def record_failure(self, peer: str | None, client: str | None) -> list[str]:
        """Count one failure; returns the keys (``peer:...``/``client:...``) it just limited."""
        limited: list[str] = []
        if not self.settings.enabled:
            return limited
        if peer and self.peers.record_failure(peer):
            limited.append(f"peer:{peer}")
        if client and self.clients.record_failure(client):
            limited.append(f"client:{client}")
        return limited
