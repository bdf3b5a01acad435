"""Async JWKS cache: OIDC discovery, refresh-ahead, single flight, bounded stale, kid floods.

One :class:`JWKSCache` per (provider, token version).  Behaviour:

* **Discovery** (optional): ``GET discovery_url``; the document's ``issuer`` must equal the
  configured issuer exactly (OIDC Discovery 4.3); its ``jwks_uri`` is fetched under the same URL
  policy (https, or loopback http behind ``allow_insecure_http``) and re-discovered daily or after a
  failed JWKS fetch.
* **Keys**: only ``kty=RSA``, ``use`` ``sig`` or absent, ``alg`` ``RS256`` or absent, with a
  ``kid`` and >= 2048 bits.  A kid published twice is ambiguous and dropped.  The raw JWK is kept
  (Entra's per-key ``issuer`` property).
* **Freshness**: a fetched set is fresh for ``lifespan_s``; within ``refresh_ahead_s`` of expiry a
  request starts a background refresh and is served from the cache.  Past expiry the request waits
  for a refresh.
* **Single flight**: concurrent refreshes share one fetch; a cancelled waiter does not cancel it.
* **Unknown kid**: one refresh, so a rotated key is accepted at once, unless another unknown-kid
  refresh was *attempted* less than ``unknown_kid_cooldown_s`` ago (the scheduled refresh is not
  throttled by this).  A kid still unknown after a refresh is remembered for ``negative_ttl_s``.
* **Outage**: a failed refresh keeps the previous set; it is served up to ``max_stale_s`` past its
  expiry, then the cache fails closed.  A cold cache with the IdP down fails closed.  After a
  failure, retries wait ``error_backoff_s`` and run in the background while a stale set is
  served (requests do not queue behind a hanging IdP).
* Time comes from the injectable ``clock`` (monotonic seconds).  All I/O is async.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from veilgate import log, metrics
from veilgate.identity.http import HTTPResponse, check_url, default_ssl_context, http_get

_log = log.get("identity.jwks")

MIN_RSA_BITS = 2048


class Fetch(Protocol):
    def __call__(
        self,
        url: str,
        *,
        timeout_s: float = ...,
        max_bytes: int = ...,
        allow_insecure_http: bool = ...,
        accept: str = ...,
    ) -> Awaitable[HTTPResponse]: ...


@dataclass(frozen=True, slots=True)
class JWKSSettings:
    lifespan_s: float = 3600.0
    """How long a fetched key set counts as fresh (Entra guidance: re-check at least daily)."""
    refresh_ahead_s: float = 300.0
    max_stale_s: float = 86400.0
    """Serve the last good set this long past its expiry while the IdP is unreachable."""
    unknown_kid_cooldown_s: float = 30.0
    negative_ttl_s: float = 60.0
    negative_max: int = 4096
    error_backoff_s: float = 5.0
    fetch_timeout_s: float = 5.0
    max_bytes: int = 1 << 20
    discovery_lifespan_s: float = 86400.0

    def __post_init__(self) -> None:
        if not 0 < self.lifespan_s <= 86400:
            raise ValueError("lifespan_s: must be in (0, 86400]")
        if not 0 <= self.refresh_ahead_s < self.lifespan_s:
            raise ValueError("refresh_ahead_s: must be in [0, lifespan_s)")
        if self.max_stale_s < 0 or self.unknown_kid_cooldown_s < 0 or self.negative_ttl_s < 0:
            raise ValueError("durations must be >= 0")


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    key: RSAPublicKey
    raw: Mapping[str, Any]
    """The JWK as published (public members only), e.g. Entra's ``issuer``."""

    @property
    def issuer(self) -> str | None:
        value = self.raw.get("issuer")
        return value if isinstance(value, str) else None


class JWKSError(Exception):
    reason = "jwks_unavailable"


class JWKSUnavailable(JWKSError):
    """No usable key set (cold cache and the IdP unreachable, or stale beyond the bound)."""

    reason = "jwks_unavailable"


class UnknownKid(JWKSError):
    reason = "unknown_kid"


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def parse_jwks(doc: Any) -> tuple[dict[str, SigningKey], int]:
    """Usable RS256 verification keys of a JWKS document, and how many entries were skipped."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK set")
    out: dict[str, SigningKey] = {}
    duplicates: set[str] = set()
    skipped = 0
    for jwk in doc["keys"]:
        if (
            not isinstance(jwk, Mapping)
            or jwk.get("kty") != "RSA"
            or jwk.get("use", "sig") != "sig"
            or jwk.get("alg", "RS256") != "RS256"
            or not isinstance(jwk.get("kid"), str)
            or not jwk["kid"]
        ):
            skipped += 1
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            skipped += 1
            continue
        public = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
        try:
            key = RSAAlgorithm.from_jwk(dict(public))
        except Exception:  # malformed n/e
            skipped += 1
            continue
        if isinstance(key, RSAPrivateKey):  # pragma: no cover - private members stripped above
            key = key.public_key()
        if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            skipped += 1
            continue
        kid = jwk["kid"]
        if kid in out:
            duplicates.add(kid)
        out[kid] = SigningKey(kid=kid, key=key, raw=MappingProxyType(public))
    for kid in duplicates:
        del out[kid]
        skipped += 2
    return out, skipped


class JWKSCache:
    """Keys of one issuer (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        jwks_uri: str | None = None,
        discovery_url: str | None = None,
        expected_issuer: str | None = None,
        allow_insecure_http: bool = False,
        settings: JWKSSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        fetch: Fetch = http_get,
    ) -> None:
        if bool(jwks_uri) == bool(discovery_url):
            raise ValueError("give exactly one of jwks_uri, discovery_url")
        if discovery_url and not expected_issuer:
            raise ValueError("discovery needs expected_issuer")
        for url in (jwks_uri, discovery_url):
            if url:
                check_url(url, allow_insecure_http=allow_insecure_http)
                if url.startswith("https:"):
                    default_ssl_context()  # load the CA bundle now, not on the event loop
        self.name = name
        self._static_jwks_uri = jwks_uri
        self._discovery_url = discovery_url
        self._expected_issuer = expected_issuer
        self._insecure = allow_insecure_http
        self._s = settings or JWKSSettings()
        self._clock = clock
        self._fetch = fetch
        self._keys: dict[str, SigningKey] | None = None
        self._expires_at = -math.inf
        self._fetched_at = -math.inf
        self._last_failure_at = -math.inf
        self._last_unknown_kid_refresh = -math.inf
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._inflight: asyncio.Task[bool] | None = None
        self._jwks_uri: str | None = jwks_uri
        self._discovered_at = -math.inf
        self.fetch_count = 0
        """JWKS documents requested (attempts, successful or not)."""
        self.discovery_count = 0
        self.last_error: str | None = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def expires_at(self) -> float:
        return self._expires_at

    def keys(self) -> Mapping[str, SigningKey]:
        """The cached keys (possibly stale), without I/O."""
        return MappingProxyType(self._keys or {})

    def cached_key(self, kid: str) -> SigningKey | None:
        """The key ``kid`` if the cached set (fresh or within its stale window) has it; no I/O,
        no refresh, no unknown-kid fetch (for attempts from a rate-limited address)."""
        keys = self._usable(self._clock())
        return keys.get(kid) if keys is not None else None

    async def get_key(self, kid: str) -> SigningKey:
        """The key ``kid``, or :class:`UnknownKid` / :class:`JWKSUnavailable`."""
        keys = self._keys
        now = self._clock()
        if keys is None or now >= self._expires_at:
            may_retry = now - self._last_failure_at >= self._s.error_backoff_s
            failing = self._last_failure_at > self._fetched_at
            if failing and self._usable(now) is not None:
                # the IdP is failing: serve the stale set at once, retry in the background
                if may_retry and self._inflight is None:
                    self._start_refresh()
            elif may_retry or self._inflight:
                await self._refresh()
                now = self._clock()
            keys = self._usable(now)
            if keys is None:
                raise JWKSUnavailable(self.last_error or "no key set")
        elif (
            now >= self._expires_at - self._s.refresh_ahead_s
            and self._inflight is None
            and now - self._last_failure_at >= self._s.error_backoff_s
        ):
            self._start_refresh()
        key = keys.get(kid)
        if key is not None:
            return key
        return await self._unknown_kid(kid, now)

    async def refresh(self) -> bool:
        """Refresh now (shares a refresh in flight).  ``True`` when a key set is fresh after it."""
        return await self._refresh()

    def status(self) -> tuple[str, float]:
        """``("fresh" | "stale" | "unavailable", seconds past expiry)``, without I/O: stale keys
        are still served (within ``max_stale_s``), unavailable ones are not."""
        now = self._clock()
        past = max(0.0, now - self._expires_at) if self._keys is not None else math.inf
        if self._keys is not None and now < self._expires_at:
            return "fresh", 0.0
        return ("stale" if self._usable(now) is not None else "unavailable"), past

    @property
    def max_stale_s(self) -> float:
        return self._s.max_stale_s

    async def aclose(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._inflight = None

    # -- internals ------------------------------------------------------------------------------

    def _usable(self, now: float) -> dict[str, SigningKey] | None:
        if self._keys is None or now >= self._expires_at + self._s.max_stale_s:
            return None
        return self._keys

    async def _unknown_kid(self, kid: str, now: float) -> SigningKey:
        until = self._negative.get(kid)
        if until is not None:
            if until > now:
                raise UnknownKid("recently unknown")
            del self._negative[kid]
        if self._inflight is not None:
            await self._refresh()  # piggy-back on a refresh already under way
        elif now - self._last_unknown_kid_refresh < self._s.unknown_kid_cooldown_s:
            raise UnknownKid("refresh cooldown")
        elif now - self._last_failure_at < self._s.error_backoff_s:
            raise UnknownKid("key source unreachable")
        else:
            self._last_unknown_kid_refresh = now
            await self._refresh()
        now = self._clock()
        keys = self._usable(now)
        key = keys.get(kid) if keys else None
        if key is not None:
            return key
        self._negative[kid] = now + self._s.negative_ttl_s
        self._negative.move_to_end(kid)
        while len(self._negative) > self._s.negative_max:
            self._negative.popitem(last=False)
        raise UnknownKid("not in the key set")

    def _start_refresh(self) -> asyncio.Task[bool]:
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._do_refresh())
            self._inflight = task
            task.add_done_callback(self._refresh_done)
        return task

    def _refresh_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh(self) -> bool:
        return await asyncio.shield(self._start_refresh())

    async def _get_json(self, url: str) -> Any:
        resp = await self._fetch(
            url,
            timeout_s=self._s.fetch_timeout_s,
            max_bytes=self._s.max_bytes,
            allow_insecure_http=self._insecure,
            accept="application/json",
        )
        if resp.status != 200:
            where = resp.headers.get("location")
            suffix = " (redirects are not followed)" if where else ""
            raise JWKSError(f"HTTP {resp.status}{suffix}")
        try:
            return json.loads(resp.body)
        except (ValueError, UnicodeDecodeError):
            raise JWKSError("response is not JSON") from None

    async def _resolve_jwks_uri(self) -> str:
        if self._static_jwks_uri:
            return self._static_jwks_uri
        now = self._clock()
        if self._jwks_uri and now - self._discovered_at < self._s.discovery_lifespan_s:
            return self._jwks_uri
        assert self._discovery_url is not None
        self.discovery_count += 1
        try:
            doc = await self._get_json(self._discovery_url)
        finally:
            metrics.jwks_fetches_total.inc(provider=self.name, document="discovery")
        if not isinstance(doc, Mapping):
            raise JWKSError("discovery document is not an object")
        if doc.get("issuer") != self._expected_issuer:
            raise JWKSError("discovery issuer mismatch")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise JWKSError("discovery document has no jwks_uri")
        try:
            check_url(uri, allow_insecure_http=self._insecure)
        except ValueError as exc:
            raise JWKSError(f"jwks_uri refused: {exc}") from None
        self._jwks_uri = uri
        self._discovered_at = now
        return uri

    async def _do_refresh(self) -> bool:
        stage = "discovery"
        try:
            uri = await self._resolve_jwks_uri()
            stage = "jwks"
            self.fetch_count += 1
            try:
                doc = await self._get_json(uri)
            finally:
                metrics.jwks_fetches_total.inc(provider=self.name, document="jwks")
            try:
                keys, skipped = parse_jwks(doc)
            except ValueError as exc:
                raise JWKSError(str(exc)) from None
            if not keys:
                raise JWKSError("no usable RS256 signing keys")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            now = self._clock()
            self._last_failure_at = now
            self.last_error = f"{stage}: {type(exc).__name__}: {exc}"
            if stage == "jwks":
                self._discovered_at = -math.inf  # the jwks_uri may have moved: re-discover
            metrics.jwks_refresh_failures_total.inc(provider=self.name)
            stale_for = now - self._expires_at if self._keys is not None else None
            log.event(
                _log,
                "jwks_refresh_failed",
                logging.WARNING,
                provider=self.name,
                error=self.last_error,
                cached_keys=len(self._keys or {}),
                stale_s=round(stale_for, 1) if stale_for is not None and stale_for > 0 else 0,
            )
            return False
        now = self._clock()
        added = set(keys) - set(self._keys or {})
        removed = set(self._keys or {}) - set(keys)
        self._keys = keys
        self._fetched_at = now
        self._expires_at = now + self._s.lifespan_s
        self.last_error = None
        log.event(
            _log,
            "jwks_refreshed",
            logging.INFO if (added or removed) else logging.DEBUG,
            provider=self.name,
            keys=len(keys),
            added=sorted(added),
            removed=sorted(removed),
            skipped=skipped,
        )
        return True
