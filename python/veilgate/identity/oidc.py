"""OIDC / Entra access-token authenticator (see shared/docs/IDENTITY.md).

Order of checks for a presented token (every refusal is an :class:`AuthError` with a stable reason
slug, logged with the reason and never with the token):

1. rate limit for the source address (``rate_limited``, no parsing or crypto);
2. size cap (``too_large``), three base64url JSON segments without duplicate members
   (``malformed``);
3. header: no ``nonce``/``jku``/``x5u``/``jwk``/``x5c``/``crit``/``zip``/``b64``
   (``forbidden_header``), ``alg == "RS256"`` (``alg_not_allowed``), a ``kid``;
4. provider by the exact unverified ``iss`` (``wrong_issuer``); Entra: ``ver`` must be the version
   of that issuer; rate limit for the (unverified) client app;
5. key by ``kid`` from the provider's JWKS cache (``unknown_kid``, ``jwks_unavailable``);
6. ``jwt.decode`` with RS256 only, pinned audiences and issuer, leeway, required claims, minimum
   key length (``bad_signature``, ``expired``, ``not_yet_valid``, ``wrong_audience``,
   ``missing_claim``...);
7. Entra: ``tid`` a GUID equal to the configured tenant (and so to the one in ``iss``)
   (``tenant_mismatch``), the key's published ``issuer`` for that tenant, ``idtyp == "app"``
   (``not_app_token``), client app allow-list (``client_not_allowed``); groups overage means
   *unknown* groups;
8. tier rules: no match → ``no_tier``.

Failures count against the source address; against the client app only once the signature has
been verified (so forged tokens cannot lock a real client app out).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt

from veilgate import log
from veilgate.identity.base import AuthContext, AuthError, Principal
from veilgate.identity.jwks import JWKSCache, JWKSError, JWKSSettings
from veilgate.identity.providers import (
    EntraProvider,
    GenericOIDCProvider,
    IdentitySettings,
    Provider,
    RateLimitSettings,
    TierRule,
    claim_path,
    entra_issuer,
    is_guid,
    match_rule,
)
from veilgate.identity.ratelimit import AuthFailureLimiter, peer_key

_log = log.get("identity.oidc")

MAX_TOKEN_BYTES: Final = 65535
FORBIDDEN_HEADERS: Final = frozenset({"nonce", "jku", "x5u", "jwk", "x5c", "crit", "zip", "b64"})
ENTRA_REQUIRED: Final[tuple[str, ...]] = (
    "exp",
    "iat",
    "nbf",
    "iss",
    "aud",
    "tid",
    "oid",
    "ver",
    "sub",
)
GENERIC_REQUIRED: Final[tuple[str, ...]] = ("exp", "iat", "iss", "aud")

_JWT_ERRORS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidKeyError, "weak_key"),
    (jwt.InvalidIssuedAtError, "malformed"),
    (jwt.DecodeError, "malformed"),
)
_AGENT_CLAIMS: Final = ("xms_par_app_azp", "xms_act_fct", "xms_sub_fct", "xms_idrel")
# reasons raised by jwt.decode after the signature was verified
_POST_SIGNATURE: Final = frozenset(
    {"expired", "not_yet_valid", "wrong_audience", "wrong_issuer", "missing_claim"}
)


_B64URL_RE: Final = re.compile(rb"[A-Za-z0-9_-]*")


class _JWS(jwt.PyJWS):
    """PyJWS with a C-speed base64url alphabet check.

    PyJWT 2.15 checks each character of each segment in a Python generator (~70 ns a character,
    about 100 us for an Entra token).  For unpadded alphabet-only segments this does the same
    checks with a regular expression; anything else goes to PyJWT's own implementation.  If a
    PyJWT release renames the hook, the override is simply unused: correctness never depends on it.
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        if len(segment) % 4 == 1 or _B64URL_RE.fullmatch(segment) is None:
            return jwt.PyJWS._decode_base64url_segment(segment, name)
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


class _JWT(jwt.PyJWT):
    """``jwt.decode`` whose JWS layer knows RS256 only (and uses :class:`_JWS`)."""

    def __init__(self) -> None:
        super().__init__({"enforce_minimum_key_length": True})
        self._jws = _JWS(algorithms=["RS256"], options=self._get_sig_options())


_DECODER: Final = _JWT()


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


_JSON: Final = json.JSONDecoder(object_pairs_hook=_reject_duplicates)


_B64URL_STR_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def _b64json(segment: str) -> dict[str, Any]:
    if _B64URL_STR_RE.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise AuthError("malformed", "segment is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = _JSON.decode(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise AuthError("malformed", "bad base64url/JSON segment") from None
    if not isinstance(value, dict):
        raise AuthError("malformed", "segment is not a JSON object")
    return value


def _str_set(value: Any, what: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise AuthError("malformed", f"{what} is not a list of strings")


def _expiry(claims: Mapping[str, Any]) -> float:
    try:
        return float(claims["exp"])
    except (TypeError, ValueError, OverflowError):
        raise AuthError("malformed", "exp is not a number") from None


@dataclass(frozen=True, slots=True)
class _Target:
    """Everything needed to validate a token of one issuer."""

    provider: Provider
    issuer: str
    version: str | None
    cache: JWKSCache
    audiences: list[str]
    options: dict[str, Any]
    leeway: float


class _Attempt:
    """What the failure path may log / rate-limit on (unverified unless stated)."""

    __slots__ = (
        "cache_only",
        "client_app",
        "extra",
        "kid",
        "principal",
        "provider",
        "signature_ok",
    )

    def __init__(self, cache_only: bool = False) -> None:
        self.extra: dict[str, Any] = {}
        self.provider: str | None = None
        self.client_app: str | None = None
        self.principal: str | None = None
        """``provider:tenant:subject`` of the token (trusted once ``signature_ok``)."""
        self.kid: str | None = None
        self.signature_ok = False
        self.cache_only = cache_only
        """The source address is rate-limited: no JWKS fetch for this attempt."""


def _audiences(provider: Provider) -> tuple[str, ...]:
    out: list[str] = []
    for aud in provider.audiences:
        out.append(aud)
        if isinstance(provider, EntraProvider) and not is_guid(aud):
            # Entra v1 App ID URIs appear with or without a trailing slash
            alt = aud[:-1] if aud.endswith("/") else aud + "/"
            out.append(alt)
    return tuple(dict.fromkeys(out))


def _target(
    p: Provider, issuer: str, version: str | None, cache: JWKSCache, required: tuple[str, ...]
) -> _Target:
    options = {
        "require": list(required),
        "enforce_minimum_key_length": True,
        "verify_signature": True,
        "verify_aud": True,
        "verify_iss": True,
        "verify_exp": True,
        "verify_nbf": True,
        "verify_iat": True,
    }
    return _Target(p, issuer, version, cache, list(_audiences(p)), options, p.leeway_s)


class OIDCAuthenticator:
    """:class:`~veilgate.identity.base.Authenticator` for Entra and generic OIDC access tokens."""

    def __init__(
        self,
        providers: Sequence[Provider],
        rules: Sequence[TierRule],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        rate_limit: RateLimitSettings | None = None,
        jwks_settings: JWKSSettings | None = None,
    ) -> None:
        if not providers:
            raise ValueError("at least one provider is required")
        self.rules: tuple[TierRule, ...] = tuple(rules)
        self.max_token_bytes = max_token_bytes
        self.limiter = AuthFailureLimiter(rate_limit or RateLimitSettings(), clock)
        self.caches: dict[str, JWKSCache] = {}
        self._targets: dict[str, _Target] = {}
        names: set[str] = set()
        for p in providers:
            if p.name in names:
                raise ValueError(f"duplicate provider name {p.name!r}")
            names.add(p.name)
            if isinstance(p, EntraProvider):
                for version in p.accepted_versions:
                    issuer = p.issuer(version)
                    cache = JWKSCache(
                        f"{p.name}/v{version}",
                        discovery_url=p.metadata_url(version),
                        expected_issuer=issuer,
                        allow_insecure_http=p.allow_insecure_http,
                        settings=jwks_settings,
                        clock=clock,
                    )
                    client_claim = "azp" if version == "2.0" else "appid"
                    required: tuple[str, ...] = (*ENTRA_REQUIRED, client_claim)
                    self._add(_target(p, issuer, version, cache, required))
            else:
                cache = JWKSCache(
                    p.name,
                    jwks_uri=p.jwks_uri,
                    discovery_url=None if p.jwks_uri else p.discovery_url,
                    expected_issuer=p.issuer,
                    allow_insecure_http=p.allow_insecure_http,
                    settings=jwks_settings,
                    clock=clock,
                )
                required = GENERIC_REQUIRED
                if "." not in p.subject_claim:
                    required = (*required, p.subject_claim)
                self._add(_target(p, p.issuer, None, cache, required))

    @classmethod
    def from_settings(cls, settings: IdentitySettings, **kwargs: Any) -> OIDCAuthenticator:
        return cls(settings.providers, settings.rules, rate_limit=settings.rate_limit, **kwargs)

    def _add(self, target: _Target) -> None:
        if target.issuer in self._targets:
            raise ValueError(f"issuer {target.issuer} configured twice")
        self._targets[target.issuer] = target
        self.caches[target.cache.name] = target.cache

    # -- public ---------------------------------------------------------------------------------

    def tier_for(self, principal: Principal) -> TierRule | None:
        """The first tier rule ``principal`` matches (tier name + upstream login role), or None."""
        return match_rule(principal, self.rules)

    async def prefetch(self) -> dict[str, bool]:
        """Warm every JWKS cache (call at startup); ``{cache name: ok}``.  Failures are logged."""
        return {name: await cache.refresh() for name, cache in self.caches.items()}

    async def aclose(self) -> None:
        for cache in self.caches.values():
            await cache.aclose()

    async def authenticate(self, token: str, ctx: AuthContext) -> Principal:
        peer = peer_key(ctx.peer)
        # a limited address still gets its valid tokens in (verified against cached keys only)
        attempt = _Attempt(cache_only=not self.limiter.peer_allowed(peer))
        try:
            principal = await self._validate(token, attempt)
            if self.tier_for(principal) is None:
                raise AuthError("no_tier", "no tier rule matches")
        except AuthError as exc:
            if exc.reason != "rate_limited" or attempt.cache_only:
                verified = attempt.signature_ok
                client = attempt.client_app if verified else None
                newly_limited = self.limiter.record_failure(
                    peer,
                    f"{attempt.provider}:{client}" if client else None,
                    attempt.principal if verified and exc.reason != "rate_limited" else None,
                )
                for key in newly_limited:
                    log.event(_log, "auth_rate_limited", logging.WARNING, key=key)
            refusal = exc
            if attempt.cache_only and exc.reason != "rate_limited":
                # what the client and the log see for a failure from a limited address
                refusal = AuthError("rate_limited", f"source address ({exc.reason})")
            # The gateway logs every refusal (reason, detail) at WARNING; this adds what only
            # the authenticator knows.  Refusals by the limiter itself stay at DEBUG (floods).
            log.event(
                _log,
                "oidc_rejected",
                logging.DEBUG if refusal.reason == "rate_limited" else logging.INFO,
                reason=refusal.reason,
                detail=refusal.detail,
                peer=ctx.peer,
                provider=attempt.provider,
                client_app=attempt.client_app,
                client_app_verified=attempt.signature_ok,
                kid=attempt.kid,
            )
            if refusal is not exc:
                raise refusal from None
            raise
        log.event(
            _log,
            "authenticated",
            peer=ctx.peer,
            principal=principal.label(),
            tenant=principal.tenant,
            subject=principal.subject,
            client_app=principal.client_app,
            app_only=principal.app_only,
            roles=sorted(principal.roles),
            groups="unknown" if principal.groups is None else len(principal.groups),
            token_id=principal.token_id,
            **attempt.extra,
        )
        return principal

    # -- validation -----------------------------------------------------------------------------

    async def _validate(self, token: str, attempt: _Attempt) -> Principal:
        if not isinstance(token, str) or not token:
            raise AuthError("malformed", "empty token")
        if len(token) > self.max_token_bytes:
            raise AuthError("too_large", f"{len(token)} characters")
        if not token.isascii():
            raise AuthError("malformed", "non-ASCII token")
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError("malformed", f"{len(parts)} segments (want a 3-segment JWS)")
        header = _b64json(parts[0])
        bad = FORBIDDEN_HEADERS.intersection(header)
        if bad:
            raise AuthError("forbidden_header", ",".join(sorted(bad)))
        alg = header.get("alg")
        if alg != "RS256":
            raise AuthError("alg_not_allowed", str(alg)[:20])
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthError("malformed", "missing or bad kid")
        attempt.kid = kid
        payload = _b64json(parts[1])

        iss = payload.get("iss")
        target = self._targets.get(iss) if isinstance(iss, str) else None
        if target is None:
            raise AuthError("wrong_issuer", "issuer not trusted")
        provider = target.provider
        attempt.provider = provider.name
        attempt.client_app = self._client_app(provider, target, payload)
        attempt.principal = self._principal_key(provider, payload)
        if attempt.client_app and not self.limiter.client_allowed(
            f"{provider.name}:{attempt.client_app}"
        ):
            raise AuthError("rate_limited", "client app")
        if target.version is not None and payload.get("ver") != target.version:
            raise AuthError("wrong_issuer", "ver does not match the issuer's token version")

        if attempt.cache_only:
            cached = target.cache.cached_key(kid)
            if cached is None:
                raise AuthError("rate_limited", "source address (signing key not cached)")
            key = cached
        else:
            try:
                key = await target.cache.get_key(kid)
            except JWKSError as exc:
                raise AuthError(exc.reason, str(exc)) from None

        try:
            claims: dict[str, Any] = _DECODER.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=target.audiences,
                issuer=target.issuer,
                leeway=target.leeway,
                options=target.options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            for cls, reason in _JWT_ERRORS:
                if isinstance(exc, cls):
                    attempt.signature_ok = reason in _POST_SIGNATURE
                    raise AuthError(reason, str(exc)[:200]) from None
            raise AuthError("invalid_token", type(exc).__name__) from None
        attempt.signature_ok = True
        if attempt.principal and not self.limiter.principal_allowed(attempt.principal):
            raise AuthError("rate_limited", "principal")

        if isinstance(provider, EntraProvider):
            for name in _AGENT_CLAIMS:  # Entra Agent ID markers: logged, never authorized on
                if name in claims and isinstance(claims[name], str | int):
                    attempt.extra[name] = claims[name]
            return self._entra_principal(provider, target, key.issuer, claims)
        return self._generic_principal(provider, claims)

    @staticmethod
    def _principal_key(provider: Provider, payload: Mapping[str, Any]) -> str | None:
        """``provider:tenant:subject`` of a token (rate limiting; trusted once verified)."""
        if isinstance(provider, EntraProvider):
            subject = payload.get("oid") or payload.get("sub")
            tenant = payload.get("tid", "")
        else:
            subject = claim_path(payload, provider.subject_claim)
            tenant = ""
        if not isinstance(subject, str) or not subject:
            return None
        return f"{provider.name}:{str(tenant)[:64]}:{subject[:128]}"

    @staticmethod
    def _client_app(provider: Provider, target: _Target, payload: Mapping[str, Any]) -> str | None:
        if isinstance(provider, EntraProvider):
            value = payload.get("azp" if target.version == "2.0" else "appid")
        else:
            value = None
            for path in provider.client_claims:
                value = claim_path(payload, path)
                if value is not None:
                    break
        return value[:128] if isinstance(value, str) and value else None

    @staticmethod
    def _check_client(allowed: frozenset[str] | None, client: str | None) -> None:
        if allowed is not None and client not in allowed:
            raise AuthError("client_not_allowed", "client app not on the allow-list")

    def _entra_principal(
        self,
        p: EntraProvider,
        target: _Target,
        key_issuer: str | None,
        claims: Mapping[str, Any],
    ) -> Principal:
        tid = claims["tid"]
        if not is_guid(tid) or tid.lower() != p.tenant_id:
            raise AuthError("tenant_mismatch", "tid is not the configured tenant")
        if tid != target.issuer.split("/")[3]:
            raise AuthError("tenant_mismatch", "tid differs from the tenant in iss")
        if key_issuer is not None:
            resolved = key_issuer.replace("{tenantid}", tid)
            if resolved not in (entra_issuer(tid, "1.0"), entra_issuer(tid, "2.0")):
                raise AuthError("wrong_issuer", "signing key belongs to another issuer")
        oid = claims["oid"]
        if not is_guid(oid):
            raise AuthError("malformed", "oid is not a GUID")
        app_only = claims.get("idtyp") == "app"
        if p.require_app_only and not app_only:
            raise AuthError("not_app_token", "idtyp is not 'app'")
        client = claims["azp" if target.version == "2.0" else "appid"]
        if not isinstance(client, str) or not client:
            raise AuthError("missing_claim", "client app id")
        self._check_client(p.allowed_client_apps, client)
        roles = _str_set(claims.get("roles"), "roles")
        groups: frozenset[str] | None
        claim_names = claims.get("_claim_names")
        if (isinstance(claim_names, Mapping) and "groups" in claim_names) or claims.get(
            "hasgroups"
        ):
            groups = None  # overage: unknown, never "no groups"
        else:
            groups = _str_set(claims.get("groups"), "groups")
        token_id = claims.get("uti") or claims.get("jti")
        return Principal(
            provider=p.name,
            subject=oid.lower(),
            tenant=tid.lower(),
            client_app=client,
            app_only=app_only,
            roles=roles,
            groups=groups,
            expires_at=_expiry(claims),
            token_id=token_id if isinstance(token_id, str) else None,
        )

    def _generic_principal(self, p: GenericOIDCProvider, claims: Mapping[str, Any]) -> Principal:
        subject = claim_path(claims, p.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthError("missing_claim", f"subject claim {p.subject_claim!r}")
        client: str | None = None
        for path in p.client_claims:
            value = claim_path(claims, path)
            if isinstance(value, str) and value:
                client = value
                break
        self._check_client(p.allowed_client_apps, client)
        app_only = False
        if p.app_only_claim:
            marker = claim_path(claims, p.app_only_claim)
            app_only = bool(marker) if p.app_only_value is None else marker == p.app_only_value
        if p.require_app_only and not app_only:
            raise AuthError("not_app_token", f"{p.app_only_claim} does not mark an app token")
        roles: frozenset[str] = frozenset()
        for path in p.roles_claims:
            roles |= _str_set(claim_path(claims, path), path)
        groups = _str_set(claim_path(claims, p.groups_claim), "groups") if p.groups_claim else None
        tenant: str | None = p.issuer
        if p.tenant_claim:
            value = claim_path(claims, p.tenant_claim)
            if not isinstance(value, str) or not value:
                raise AuthError("missing_claim", f"tenant claim {p.tenant_claim!r}")
            tenant = value
        token_id = claims.get("jti") or claims.get("uti")
        return Principal(
            provider=p.name,
            subject=subject,
            tenant=tenant,
            client_app=client,
            app_only=app_only,
            roles=roles,
            groups=groups,
            expires_at=_expiry(claims),
            token_id=token_id if isinstance(token_id, str) else None,
        )


def principal_fields(principal: Principal) -> dict[str, Any]:
    """Log-safe fields describing ``principal`` (no token material)."""
    return {
        "principal": principal.label(),
        "tenant": principal.tenant,
        "subject": principal.subject,
        "client_app": principal.client_app,
        "roles": sorted(principal.roles),
        "token_id": principal.token_id,
    }
