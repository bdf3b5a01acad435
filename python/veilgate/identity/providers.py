"""Trusted token issuers and the rules that map a principal to a policy tier.

Two provider profiles:

* :class:`EntraProvider`: one Microsoft Entra tenant, v1 and/or v2 access tokens, exact issuers
  derived from the tenant id, metadata URLs kept separate from the issuers (so tests can point them
  at 127.0.0.1), app-only tokens (``idtyp == "app"``) required by default.
* :class:`GenericOIDCProvider`: any other OIDC issuer (Keycloak, Okta, Auth0...), with configurable
  claim paths (dotted paths such as ``realm_access.roles`` reach into nested objects).

:class:`TierRule` + :func:`match_rule` / :func:`map_principal`: first matching rule wins, nothing
matches means deny.  :func:`identity_from_mapping` parses the YAML-shaped dict (see its docstring)
and raises :class:`ConfigError` (a :class:`ValueError`) naming the key path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Final

from veilgate.identity.base import Principal
from veilgate.identity.http import check_url

GUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
ENTRA_VERSIONS: Final = ("1.0", "2.0")
ENTRA_LOGIN_HOST: Final = "https://login.microsoftonline.com"

# Audiences of first-party Microsoft resources: a gateway configured with one of them would accept
# tokens minted for someone else (confused deputy; see IDENTITY.md 1.5).
FORBIDDEN_AUDIENCES: Final = frozenset(
    {
        "https://graph.microsoft.com",
        "https://graph.microsoft.com/",
        "00000003-0000-0000-c000-000000000000",
        "https://graph.windows.net",
        "https://graph.windows.net/",
        "https://ossrdbms-aad.database.windows.net",
        "https://ossrdbms-aad.database.windows.net/",
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://database.windows.net/",
        "https://database.windows.net",
    }
)


def is_guid(value: object) -> bool:
    return isinstance(value, str) and GUID_RE.fullmatch(value) is not None


def entra_issuer(tenant_id: str, version: str) -> str:
    """The exact ``iss`` of a tenant's access tokens of ``version``."""
    if version == "1.0":
        return f"https://sts.windows.net/{tenant_id}/"
    if version == "2.0":
        return f"{ENTRA_LOGIN_HOST}/{tenant_id}/v2.0"
    raise ValueError(f"unknown Entra token version {version!r}")


def entra_metadata_url(tenant_id: str, version: str) -> str:
    """Microsoft's tenant-specific discovery URL for ``version``."""
    if version == "1.0":
        return f"{ENTRA_LOGIN_HOST}/{tenant_id}/.well-known/openid-configuration"
    if version == "2.0":
        return f"{ENTRA_LOGIN_HOST}/{tenant_id}/v2.0/.well-known/openid-configuration"
    raise ValueError(f"unknown Entra token version {version!r}")


def _check_audiences(audiences: tuple[str, ...]) -> None:
    if not audiences:
        raise ValueError("audiences: at least one audience is required")
    for aud in audiences:
        if not isinstance(aud, str) or not aud:
            raise ValueError("audiences: must be non-empty strings")
        if aud.lower() in FORBIDDEN_AUDIENCES:
            raise ValueError(
                f"audiences: {aud!r} belongs to a Microsoft first-party resource; use the "
                "gateway's own app id / App ID URI"
            )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError("name: 1-64 characters from [A-Za-z0-9_.-]")


def _check_leeway(leeway_s: float) -> None:
    if not 0 <= leeway_s <= 300:
        raise ValueError("leeway_s: must be between 0 and 300 seconds")


@dataclass(frozen=True, slots=True)
class EntraProvider:
    """One trusted Entra tenant."""

    name: str
    tenant_id: str
    audiences: tuple[str, ...]
    """The gateway's app id GUID and/or its App ID URI (``api://...``).  Never Graph's."""
    accepted_versions: tuple[str, ...] = ENTRA_VERSIONS
    metadata_urls: Mapping[str, str] = field(default_factory=dict)
    """Discovery URL per token version; defaults to Microsoft's tenant-specific endpoints."""
    leeway_s: float = 60.0
    require_app_only: bool = True
    """Require ``idtyp == "app"`` (client-credentials / managed identity / agent tokens)."""
    allowed_client_apps: frozenset[str] | None = None
    """If set, only these client app ids (``azp``/``appid``) are accepted."""
    allow_insecure_http: bool = False
    """Allow ``http://`` metadata URLs to a loopback address (tests and dev-idp only)."""

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not is_guid(self.tenant_id):
            raise ValueError("tenant_id: must be a GUID (a single tenant; never 'common')")
        object.__setattr__(self, "tenant_id", self.tenant_id.lower())
        object.__setattr__(self, "audiences", tuple(self.audiences))
        _check_audiences(self.audiences)
        versions = tuple(self.accepted_versions)
        if not versions or any(v not in ENTRA_VERSIONS for v in versions):
            raise ValueError("accepted_versions: a non-empty subset of ['1.0', '2.0']")
        object.__setattr__(self, "accepted_versions", versions)
        urls = dict(self.metadata_urls)
        for version, url in urls.items():
            if version not in ENTRA_VERSIONS:
                raise ValueError(f"metadata_urls: unknown version {version!r}")
            try:
                check_url(url, allow_insecure_http=self.allow_insecure_http)
            except ValueError as exc:
                raise ValueError(f'metadata_urls["{version}"]: {exc}') from None
        object.__setattr__(self, "metadata_urls", urls)
        _check_leeway(self.leeway_s)
        if self.allowed_client_apps is not None:
            object.__setattr__(self, "allowed_client_apps", frozenset(self.allowed_client_apps))

    def issuer(self, version: str) -> str:
        return entra_issuer(self.tenant_id, version)

    def metadata_url(self, version: str) -> str:
        return self.metadata_urls.get(version) or entra_metadata_url(self.tenant_id, version)

    def issuers(self) -> dict[str, str]:
        """``{issuer: version}`` for the accepted versions."""
        return {self.issuer(v): v for v in self.accepted_versions}


@dataclass(frozen=True, slots=True)
class GenericOIDCProvider:
    """Any OIDC issuer whose access tokens are RS256 JWTs."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    discovery_url: str | None = None
    """Defaults to ``{issuer}/.well-known/openid-configuration`` unless ``jwks_uri`` is given."""
    jwks_uri: str | None = None
    subject_claim: str = "sub"
    client_claims: tuple[str, ...] = ("azp", "client_id")
    """First present claim is the client app id."""
    roles_claims: tuple[str, ...] = ("roles",)
    """Union of these claims; a string value is split on spaces (OAuth ``scope``)."""
    groups_claim: str | None = "groups"
    tenant_claim: str | None = None
    """Claim holding the tenant; without one the principal's tenant is the issuer."""
    leeway_s: float = 60.0
    require_app_only: bool = False
    app_only_claim: str | None = None
    """Claim that marks app-only tokens (e.g. Auth0 ``gty``); without one no token is app-only."""
    app_only_value: str | None = None
    """Required value of ``app_only_claim`` (``None``: any truthy value)."""
    allowed_client_apps: frozenset[str] | None = None
    allow_insecure_http: bool = False

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer: required")
        object.__setattr__(self, "audiences", tuple(self.audiences))
        _check_audiences(self.audiences)
        if self.discovery_url and self.jwks_uri:
            raise ValueError("discovery_url / jwks_uri: give one, not both")
        if not self.jwks_uri and not self.discovery_url:
            object.__setattr__(
                self,
                "discovery_url",
                self.issuer.rstrip("/") + "/.well-known/openid-configuration",
            )
        for key in ("discovery_url", "jwks_uri"):
            url = getattr(self, key)
            if url:
                try:
                    check_url(url, allow_insecure_http=self.allow_insecure_http)
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None
        for key in ("client_claims", "roles_claims"):
            value = getattr(self, key)
            value = (value,) if isinstance(value, str) else tuple(value)
            if not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{key}: claim paths must be non-empty strings")
            object.__setattr__(self, key, value)
        if not self.subject_claim:
            raise ValueError("subject_claim: required")
        _check_leeway(self.leeway_s)
        if self.require_app_only and not self.app_only_claim:
            raise ValueError("require_app_only needs app_only_claim")
        if self.allowed_client_apps is not None:
            object.__setattr__(self, "allowed_client_apps", frozenset(self.allowed_client_apps))


Provider = EntraProvider | GenericOIDCProvider


def claim_path(claims: Mapping[str, Any], path: str) -> Any:
    """The value at ``path``: a top-level claim of that exact name, else a dotted path."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# ------------------------------------------------------------------------------ tier mapping


@dataclass(frozen=True, slots=True)
class TierRule:
    """Principal → policy tier.  Every non-empty condition must hold; within one, any value.

    At least one of ``any_roles``, ``any_groups``, ``client_apps`` is required: a rule must name
    *who* it grants (Entra issues role-less app tokens to any app in the tenant).
    """

    tier: str
    login_role: str | None = None
    """Upstream PostgreSQL login role for the tier (the gateway's credential for it)."""
    any_roles: frozenset[str] = frozenset()
    any_groups: frozenset[str] = frozenset()
    client_apps: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()
    app_only: bool | None = None
    """``True``: only app-only principals; ``False``: only delegated ones; ``None``: either."""

    def __post_init__(self) -> None:
        if not isinstance(self.tier, str) or not self.tier:
            raise ValueError("tier: required")
        for key in ("any_roles", "any_groups", "client_apps", "tenants", "providers"):
            value = getattr(self, key)
            if isinstance(value, str):
                raise ValueError(f"{key}: a list of strings, not a string")
            object.__setattr__(self, key, frozenset(value))
        object.__setattr__(self, "tenants", frozenset(t.lower() for t in self.tenants))
        if not (self.any_roles or self.any_groups or self.client_apps):
            raise ValueError("a rule needs at least one of any_roles, any_groups, client_apps")

    def matches(self, p: Principal) -> bool:
        if self.providers and p.provider not in self.providers:
            return False
        if self.tenants and (p.tenant is None or p.tenant.lower() not in self.tenants):
            return False
        if self.app_only is not None and p.app_only != self.app_only:
            return False
        if self.client_apps and p.client_app not in self.client_apps:
            return False
        if self.any_roles and self.any_roles.isdisjoint(p.roles):
            return False
        # unknown groups (overage) never match a group condition
        return not self.any_groups or (
            p.groups is not None and not self.any_groups.isdisjoint(p.groups)
        )


def match_rule(principal: Principal, rules: Iterable[TierRule]) -> TierRule | None:
    """The first rule ``principal`` matches, or ``None`` (deny)."""
    for rule in rules:
        if rule.matches(principal):
            return rule
    return None


def map_principal(principal: Principal, rules: Iterable[TierRule]) -> str | None:
    """The tier of the first matching rule, or ``None`` (deny)."""
    rule = match_rule(principal, rules)
    return rule.tier if rule else None


# ------------------------------------------------------------------------------ rate limits


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Auth-failure token buckets: ``burst`` failures, refilled at ``per_s`` per second."""

    enabled: bool = True
    peer_burst: float = 20.0
    peer_per_s: float = 0.5
    client_burst: float = 50.0
    client_per_s: float = 1.0
    principal_burst: float = 20.0
    principal_per_s: float = 0.2
    max_entries: int = 100_000

    def __post_init__(self) -> None:
        for key in ("peer_burst", "client_burst", "principal_burst"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1")
        for key in ("peer_per_s", "client_per_s", "principal_per_s"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0")
        if self.max_entries < 1:
            raise ValueError("max_entries: must be >= 1")


# ------------------------------------------------------------------------------ parsing


class ConfigError(ValueError):
    """A bad identity configuration value; ``path`` is the key path (``providers[0].tenant_id``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    providers: tuple[Provider, ...]
    rules: tuple[TierRule, ...]
    rate_limit: RateLimitSettings = RateLimitSettings()


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _str_list(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        raise ConfigError(path, "expected a string or a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(_join(path, i), "expected a non-empty string")
    return tuple(value)


_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "bool": (bool,),
    "float": (int, float),
    "int": (int,),
}


def _build(cls: type[Any], data: Any, path: str, kinds: Mapping[str, str]) -> Any:
    """Build dataclass ``cls`` from ``data``; ``kinds`` maps each accepted key to a value kind."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, "expected a mapping")
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kpath = _join(path, str(key))
        kind = kinds.get(str(key))
        if kind is None:
            raise ConfigError(kpath, f"unknown key (expected one of: {', '.join(sorted(kinds))})")
        if value is None and kind.endswith("?"):
            kwargs[key] = None
            continue
        kind = kind.rstrip("?")
        if kind == "list":
            kwargs[key] = _str_list(value, kpath)
        elif kind == "set":
            kwargs[key] = frozenset(_str_list(value, kpath))
        elif kind == "urls":
            if not isinstance(value, Mapping):
                raise ConfigError(kpath, "expected a mapping of token version to URL")
            urls: dict[str, str] = {}
            for v, url in value.items():
                if not isinstance(url, str):
                    raise ConfigError(_join(kpath, str(v)), "expected a URL string")
                urls[str(v)] = url
            kwargs[key] = urls
        else:
            types = _SCALAR_TYPES[kind]
            if not isinstance(value, types) or (kind != "bool" and isinstance(value, bool)):
                raise ConfigError(kpath, f"expected a {kind}")
            kwargs[key] = value
    for name in sorted(required - set(kwargs)):
        raise ConfigError(_join(path, name), "required")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        key, sep, rest = msg.partition(": ")
        if sep and key.split(".")[0].split("[")[0] in kinds:
            raise ConfigError(_join(path, key), rest) from None
        raise ConfigError(path, msg) from None


_ENTRA_KINDS = {
    "name": "str",
    "tenant_id": "str",
    "audiences": "list",
    "accepted_versions": "list",
    "metadata_urls": "urls",
    "leeway_s": "float",
    "require_app_only": "bool",
    "allowed_client_apps": "set?",
    "allow_insecure_http": "bool",
}
_GENERIC_KINDS = {
    "name": "str",
    "issuer": "str",
    "audiences": "list",
    "discovery_url": "str?",
    "jwks_uri": "str?",
    "subject_claim": "str",
    "client_claims": "list",
    "roles_claims": "list",
    "groups_claim": "str?",
    "tenant_claim": "str?",
    "leeway_s": "float",
    "require_app_only": "bool",
    "app_only_claim": "str?",
    "app_only_value": "str?",
    "allowed_client_apps": "set?",
    "allow_insecure_http": "bool",
}
_RULE_KINDS = {
    "tier": "str",
    "login_role": "str?",
    "any_roles": "set",
    "any_groups": "set",
    "client_apps": "set",
    "tenants": "set",
    "providers": "set",
    "app_only": "bool?",
}
_RATE_KINDS = {
    "enabled": "bool",
    "peer_burst": "float",
    "peer_per_s": "float",
    "client_burst": "float",
    "client_per_s": "float",
    "principal_burst": "float",
    "principal_per_s": "float",
    "max_entries": "int",
}


def provider_from_mapping(data: Any, path: str = "") -> Provider:
    """One provider entry; ``type`` is ``entra`` (default) or ``oidc``."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, "expected a mapping")
    body = dict(data)
    kind = body.pop("type", "entra")
    if "audience" in body:
        if "audiences" in body:
            raise ConfigError(_join(path, "audience"), "give audience or audiences, not both")
        body["audiences"] = body.pop("audience")
    if kind == "entra":
        return _build(EntraProvider, body, path, _ENTRA_KINDS)  # type: ignore[no-any-return]
    if kind in ("oidc", "generic"):
        return _build(GenericOIDCProvider, body, path, _GENERIC_KINDS)  # type: ignore[no-any-return]
    raise ConfigError(_join(path, "type"), "expected 'entra' or 'oidc'")


def rule_from_mapping(data: Any, path: str = "") -> TierRule:
    return _build(TierRule, data, path, _RULE_KINDS)  # type: ignore[no-any-return]


def identity_from_mapping(data: Any, source: str = "") -> IdentitySettings:
    """Parse the identity section (YAML-shaped)::

        providers:                      # one or more, names unique
          - name: entra                 # type: entra (default)
            tenant_id: <GUID>
            audiences: [<gateway app id GUID>, "api://<gateway app id>"]   # or audience: ...
            accepted_versions: ["1.0", "2.0"]
            metadata_urls: {"2.0": https://...}      # optional, per version
            leeway_s: 60
            require_app_only: true
            allowed_client_apps: [<client app id>]   # optional
            allow_insecure_http: false
          - name: keycloak
            type: oidc
            issuer: https://kc.example/realms/agents
            audience: veilgate
            discovery_url: ...          # or jwks_uri: ... (default: issuer + /.well-known/...)
            subject_claim: sub
            client_claims: [azp, client_id]
            roles_claims: [realm_access.roles]
            groups_claim: groups
            tenant_claim: null
        tiers:                          # first match wins; nothing matches = deny
          - tier: read
            login_role: vg_read
            any_roles: [Db.Read]
            any_groups: []
            client_apps: []
            tenants: []
            providers: []
            app_only: true
        rate_limit: {peer_burst: 20, peer_per_s: 0.5, client_burst: 50, client_per_s: 1}

    ``source`` prefixes every key path in errors (e.g. ``"auth.oidc"``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(source, "expected a mapping")
    for key in data:
        if key not in ("providers", "tiers", "rate_limit"):
            raise ConfigError(_join(source, str(key)), "unknown key (providers, tiers, rate_limit)")
    raw_providers = data.get("providers")
    ppath = _join(source, "providers")
    if not isinstance(raw_providers, Sequence) or isinstance(raw_providers, str | bytes):
        raise ConfigError(ppath, "a list of providers is required")
    if not raw_providers:
        raise ConfigError(ppath, "at least one provider is required")
    providers: list[Provider] = []
    seen_names: set[str] = set()
    seen_issuers: dict[str, str] = {}
    for i, item in enumerate(raw_providers):
        p = provider_from_mapping(item, _join(ppath, i))
        if p.name in seen_names:
            raise ConfigError(_join(_join(ppath, i), "name"), f"duplicate provider {p.name!r}")
        seen_names.add(p.name)
        issuers = list(p.issuers()) if isinstance(p, EntraProvider) else [p.issuer]
        for iss in issuers:
            if iss in seen_issuers:
                raise ConfigError(
                    _join(ppath, i), f"issuer {iss} already trusted by {seen_issuers[iss]!r}"
                )
            seen_issuers[iss] = p.name
        providers.append(p)
    tpath = _join(source, "tiers")
    raw_rules = data.get("tiers", [])
    if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str | bytes):
        raise ConfigError(tpath, "expected a list of rules")
    rules: list[TierRule] = []
    for i, item in enumerate(raw_rules):
        rule = rule_from_mapping(item, _join(tpath, i))
        unknown = rule.providers - seen_names
        if unknown:
            raise ConfigError(
                _join(_join(tpath, i), "providers"), f"unknown provider(s) {sorted(unknown)}"
            )
        rules.append(rule)
    rate = RateLimitSettings()
    if "rate_limit" in data:
        rate = _build(
            RateLimitSettings, data["rate_limit"], _join(source, "rate_limit"), _RATE_KINDS
        )
    return IdentitySettings(providers=tuple(providers), rules=tuple(rules), rate_limit=rate)


def issuers_of(provider: Provider) -> list[str]:
    return list(provider.issuers()) if isinstance(provider, EntraProvider) else [provider.issuer]
