"""Development identity provider: Entra-shaped discovery, JWKS and tokens on 127.0.0.1.

``veilgate dev-idp`` serves, for one made-up tenant:

* ``/{tid}/.well-known/openid-configuration`` (v1, issuer ``https://sts.windows.net/{tid}/``)
  and ``/{tid}/discovery/keys``;
* ``/{tid}/v2.0/.well-known/openid-configuration`` (v2, issuer
  ``https://login.microsoftonline.com/{tid}/v2.0``) and ``/{tid}/discovery/v2.0/keys``;
* a Keycloak-style realm ``/realms/{realm}/...`` for the generic OIDC profile.

Issuers are Entra's real ones (tokens are exactly what the gateway sees in production); only the
metadata URLs point at 127.0.0.1, which is why the provider config keeps them separate.
``veilgate dev-token`` mints tokens with the key persisted in the state directory.  Test switches
(:attr:`DevIdP.fail_jwks`, delays, redirects, issuer override) and fetch counters are attributes.
Development only: the private keys sit in a local file (mode 0600).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from veilgate.identity.providers import EntraProvider, GenericOIDCProvider, entra_issuer

DEFAULT_PORT = 9180
DEFAULT_STATE_DIR = Path(".veilgate") / "dev-idp"
STATE_FILE = "state.json"
DEFAULT_REALM = "dev"
GENERIC_AUDIENCE = "veilgate"
_MAX_REQUEST = 16 * 1024


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_id(key: rsa.RSAPrivateKey) -> str:
    """An Entra-looking kid (base64url SHA-1 thumbprint of the public key, 27 characters)."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64url(hashlib.sha1(der, usedforsecurity=False).digest())


def public_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "x5t": kid})
    jwk.update(extra)
    return jwk


@dataclass
class SigningKeyPair:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, bits: int = 2048) -> SigningKeyPair:
        key = new_rsa_key(bits)
        return cls(key_id(key), key)

    def pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class Counters:
    discovery: int = 0
    jwks: int = 0
    requests: list[str] = field(default_factory=list)


class DevIdP:
    """An Entra-shaped identity provider for development and tests (HTTP on loopback)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tenant_id: str | None = None,
        app_id: str | None = None,
        *,
        client_id: str | None = None,
        keys: Sequence[SigningKeyPair] | None = None,
        realm: str = DEFAULT_REALM,
    ) -> None:
        self.host = host
        self.port = port
        self.tenant_id = (tenant_id or str(uuid.uuid4())).lower()
        self.app_id = (app_id or str(uuid.uuid4())).lower()
        """The gateway's (resource) app id: the audience of the tokens."""
        self.client_id = (client_id or str(uuid.uuid4())).lower()
        """Default client (agent) app id."""
        self.realm = realm
        self.keys: list[SigningKeyPair] = list(keys) if keys else [SigningKeyPair.generate()]
        self.signing_kid = self.keys[-1].kid
        self.extra_jwks: list[dict[str, Any]] = []
        """Extra JWK entries published as they are (tests: duplicates, odd key types)."""
        self.key_issuer: str | None = "https://login.microsoftonline.com/{tenantid}/v2.0"
        """Entra's per-key ``issuer`` property (None: omit)."""
        # test switches
        self.fail_jwks = False
        self.fail_discovery = False
        self.jwks_delay_s = 0.0
        self.discovery_delay_s = 0.0
        self.redirect_jwks = False
        self.discovery_issuer_override: str | None = None
        self.counters = Counters()
        self._server: asyncio.Server | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> DevIdP:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> DevIdP:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # -- URLs and provider configs --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def issuer(self, version: str = "2.0") -> str:
        return entra_issuer(self.tenant_id, version)

    def metadata_url(self, version: str = "2.0") -> str:
        infix = "/v2.0" if version == "2.0" else ""
        return f"{self.base_url}/{self.tenant_id}{infix}/.well-known/openid-configuration"

    def jwks_url(self, version: str = "2.0") -> str:
        infix = "/v2.0" if version == "2.0" else ""
        return f"{self.base_url}/{self.tenant_id}/discovery{infix}/keys"

    @property
    def generic_issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    def provider_config(self, name: str = "dev-entra", **overrides: Any) -> EntraProvider:
        """An :class:`EntraProvider` trusting this IdP (metadata on its 127.0.0.1 port)."""
        kwargs: dict[str, Any] = {
            "name": name,
            "tenant_id": self.tenant_id,
            "audiences": (self.app_id, f"api://{self.app_id}"),
            "metadata_urls": {v: self.metadata_url(v) for v in ("1.0", "2.0")},
            "allow_insecure_http": True,
        }
        kwargs.update(overrides)
        return EntraProvider(**kwargs)

    def generic_provider_config(
        self, name: str = "dev-oidc", **overrides: Any
    ) -> GenericOIDCProvider:
        """A Keycloak-style :class:`GenericOIDCProvider` for this IdP's realm."""
        kwargs: dict[str, Any] = {
            "name": name,
            "issuer": self.generic_issuer,
            "audiences": (GENERIC_AUDIENCE,),
            "roles_claims": ("realm_access.roles",),
            "allow_insecure_http": True,
        }
        kwargs.update(overrides)
        return GenericOIDCProvider(**kwargs)

    def provider_mapping(self, name: str = "dev-entra") -> dict[str, Any]:
        """The provider as a config mapping (for ``identity_from_mapping`` / YAML)."""
        return {
            "name": name,
            "type": "entra",
            "tenant_id": self.tenant_id,
            "audiences": [self.app_id, f"api://{self.app_id}"],
            "metadata_urls": {v: self.metadata_url(v) for v in ("1.0", "2.0")},
            "allow_insecure_http": True,
        }

    # -- keys -----------------------------------------------------------------------------------

    def key(self, kid: str | None = None) -> SigningKeyPair:
        kid = kid or self.signing_kid
        for pair in self.keys:
            if pair.kid == kid:
                return pair
        raise KeyError(kid)

    def rotate(self, *, keep_old: bool = False) -> str:
        """Publish a new key and sign with it; drop the others unless ``keep_old``."""
        pair = SigningKeyPair.generate()
        self.keys = [*self.keys, pair] if keep_old else [pair]
        self.signing_kid = pair.kid
        return pair.kid

    def jwks(self) -> dict[str, Any]:
        extra = {"issuer": self.key_issuer} if self.key_issuer else {}
        keys = [public_jwk(p.private, p.kid, **extra) for p in self.keys]
        return {"keys": keys + list(self.extra_jwks)}

    # -- tokens ---------------------------------------------------------------------------------

    def sp_object_id(self, client_id: str) -> str:
        """A stable service-principal object id for a client app id."""
        return str(uuid.uuid5(uuid.UUID(self.tenant_id), client_id))

    def claims(
        self,
        roles: str | Iterable[str] | None = ("Db.Read",),
        client_id: str | None = None,
        ttl: float = 3600,
        version: str = "2.0",
        *,
        groups: Iterable[str] | None = None,
        overage: bool = False,
        agent_id: bool = False,
        app_only: bool = True,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Entra-shaped access-token claims (v1 or v2) for an app-only client."""
        client = client_id or self.client_id
        t = int(time.time() if now is None else now)
        oid = self.sp_object_id(client)
        c: dict[str, Any] = {
            "aud": self.app_id if version == "2.0" else f"api://{self.app_id}",
            "iss": self.issuer(version),
            "iat": t - 300,  # Entra backdates iat/nbf by five minutes
            "nbf": t - 300,
            "exp": int(t + ttl),
            "aio": _b64url(secrets.token_bytes(48)),
            "oid": oid,
            "rh": "0." + _b64url(secrets.token_bytes(40)) + ".",
            "sub": oid,
            "tid": self.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": version,
        }
        if version == "2.0":
            c.update({"azp": client, "azpacr": "1"})
        else:
            c.update({"appid": client, "appidacr": "1", "idp": self.issuer("1.0")})
        if app_only:
            c["idtyp"] = "app"
        if roles is not None:
            c["roles"] = [roles] if isinstance(roles, str) else list(roles)
            if not c["roles"]:
                del c["roles"]
        if groups is not None:
            c["groups"] = list(groups)
        if overage:
            c["_claim_names"] = {"groups": "src1"}
            c["_claim_sources"] = {
                "src1": {
                    "endpoint": f"https://graph.windows.net/{self.tenant_id}/users/{oid}"
                    "/getMemberObjects"
                }
            }
        if agent_id:
            c.update(
                {
                    "xms_act_fct": "11",
                    "xms_sub_fct": "11",
                    "xms_par_app_azp": str(uuid.uuid5(uuid.NAMESPACE_URL, "blueprint:" + client)),
                    "xms_idrel": "7",
                }
            )
        return c

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        key: rsa.RSAPrivateKey | None = None,
        algorithm: str = "RS256",
        x5t: bool = False,
    ) -> str:
        """Sign ``claims`` with the current (or given) key."""
        private = key if key is not None else self.key(kid).private
        hdr: dict[str, Any] = {"typ": "JWT", "kid": kid or self.signing_kid}
        if x5t:
            hdr["x5t"] = hdr["kid"]
        hdr.update(headers or {})
        return jwt.encode(dict(claims), private, algorithm=algorithm, headers=hdr)

    def mint(
        self,
        roles: str | Iterable[str] | None = ("Db.Read",),
        client_id: str | None = None,
        ttl: float = 3600,
        version: str = "2.0",
        *,
        groups: Iterable[str] | None = None,
        overage: bool = False,
        agent_id: bool = False,
        app_only: bool = True,
        omit: Iterable[str] = (),
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A signed Entra-shaped access token; ``overrides`` replace claims, ``omit`` drops them."""
        c = self.claims(
            roles,
            client_id,
            ttl,
            version,
            groups=groups,
            overage=overage,
            agent_id=agent_id,
            app_only=app_only,
        )
        c.update(overrides)
        for name in omit:
            c.pop(name, None)
        return self.sign(c, kid=kid, headers=headers, x5t=version == "1.0")

    def mint_generic(
        self,
        roles: Iterable[str] = ("db-read",),
        client_id: str = "agent-cli",
        ttl: float = 3600,
        **overrides: Any,
    ) -> str:
        """A Keycloak-style access token for the realm (client-credentials shape)."""
        t = int(time.time())
        c: dict[str, Any] = {
            "exp": t + int(ttl),
            "iat": t,
            "jti": str(uuid.uuid4()),
            "iss": self.generic_issuer,
            "aud": GENERIC_AUDIENCE,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, "kc:" + client_id)),
            "typ": "Bearer",
            "azp": client_id,
            "realm_access": {"roles": list(roles)},
            "scope": "profile email",
            "clientId": client_id,
            "preferred_username": f"service-account-{client_id}",
        }
        c.update(overrides)
        return self.sign(c)

    # -- HTTP -----------------------------------------------------------------------------------

    def _discovery(self, version: str) -> dict[str, Any]:
        issuer = self.discovery_issuer_override or self.issuer(version)
        return {
            "token_endpoint": f"{self.base_url}/{self.tenant_id}/oauth2/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "jwks_uri": self.jwks_url(version),
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "issuer": issuer,
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    def _generic_discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer_override or self.generic_issuer,
            "jwks_uri": f"{self.generic_issuer}/protocol/openid-connect/certs",
            "token_endpoint": f"{self.generic_issuer}/protocol/openid-connect/token",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    async def _route(self, path: str) -> tuple[int, dict[str, str], bytes]:
        tid = self.tenant_id
        discovery = {
            f"/{tid}/.well-known/openid-configuration": "1.0",
            f"/{tid}/v2.0/.well-known/openid-configuration": "2.0",
            f"/realms/{self.realm}/.well-known/openid-configuration": "generic",
        }
        jwks_paths = {
            f"/{tid}/discovery/keys",
            f"/{tid}/discovery/v2.0/keys",
            f"/realms/{self.realm}/protocol/openid-connect/certs",
            "/redirected/keys",
        }
        if path in discovery:
            self.counters.discovery += 1
            if self.discovery_delay_s:
                await asyncio.sleep(self.discovery_delay_s)
            if self.fail_discovery:
                return 503, {}, b'{"error":"temporarily_unavailable"}'
            kind = discovery[path]
            doc = self._generic_discovery() if kind == "generic" else self._discovery(kind)
            return 200, {}, json.dumps(doc).encode()
        if path in jwks_paths:
            self.counters.jwks += 1
            if self.jwks_delay_s:
                await asyncio.sleep(self.jwks_delay_s)
            if self.fail_jwks:
                return 503, {}, b'{"error":"temporarily_unavailable"}'
            if self.redirect_jwks and path != "/redirected/keys":
                return 302, {"Location": f"{self.base_url}/redirected/keys"}, b""
            return (
                200,
                {"Cache-Control": "max-age=86400, private"},
                json.dumps(self.jwks()).encode(),
            )
        return 404, {}, b'{"error":"not_found"}'

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > _MAX_REQUEST:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, rest = request_line.partition(" ")
                target = rest.rsplit(" ", 1)[0]
                path = target.split("?", 1)[0]
                self.counters.requests.append(path)
                headers: dict[str, str]
                if method != "GET":
                    status, headers, body = 405, {}, b""
                else:
                    status, headers, body = await self._route(path)
                reason = {200: "OK", 302: "Found", 404: "Not Found", 405: "Method Not Allowed"}
                lines = [f"HTTP/1.1 {status} {reason.get(status, 'Service Unavailable')}"]
                lines.append("Content-Type: application/json; charset=utf-8")
                lines.append(f"Content-Length: {len(body)}")
                lines.append("Connection: close")
                lines.extend(f"{k}: {v}" for k, v in headers.items())
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- persistence ----------------------------------------------------------------------------

    def save_state(self, state_dir: Path) -> Path:
        """Write tenant/app ids and private keys (mode 0600) for ``dev-token``."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / STATE_FILE
        data = {
            "tenant_id": self.tenant_id,
            "app_id": self.app_id,
            "client_id": self.client_id,
            "host": self.host,
            "port": self.port,
            "realm": self.realm,
            "signing_kid": self.signing_kid,
            "keys": [{"kid": p.kid, "pem": p.pem()} for p in self.keys],
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
        return path

    @classmethod
    def load_state(cls, state_dir: Path, **kwargs: Any) -> DevIdP:
        data = json.loads((state_dir / STATE_FILE).read_text())
        keys = []
        for entry in data["keys"]:
            private = serialization.load_pem_private_key(entry["pem"].encode(), password=None)
            if not isinstance(private, rsa.RSAPrivateKey):
                raise ValueError("state file holds a non-RSA key")
            keys.append(SigningKeyPair(entry["kid"], private))
        params: dict[str, Any] = {
            "host": data.get("host", "127.0.0.1"),
            "port": data.get("port", 0),
            "tenant_id": data["tenant_id"],
            "app_id": data["app_id"],
            "client_id": data.get("client_id"),
            "keys": keys,
            "realm": data.get("realm", DEFAULT_REALM),
        }
        params.update(kwargs)
        idp = cls(**params)
        if data.get("signing_kid") in {k.kid for k in keys}:
            idp.signing_kid = data["signing_kid"]
        return idp


# ---------------------------------------------------------------------------------- CLI entries


def _state_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("VEILGATE_DEV_IDP_DIR") or DEFAULT_STATE_DIR)


def dev_idp_main(argv: Sequence[str] | None = None) -> int:
    """``veilgate dev-idp [--host H] [--port P] [--state-dir DIR]``: serve until interrupted."""
    ap = argparse.ArgumentParser(prog="veilgate dev-idp", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = ephemeral")
    ap.add_argument("--state-dir", help=f"keys and ids (default {DEFAULT_STATE_DIR})")
    ap.add_argument("--new", action="store_true", help="new tenant/app ids and keys")
    args = ap.parse_args(argv)
    state_dir = _state_dir(args.state_dir)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print("dev-idp serves loopback only", file=sys.stderr)
        return 2
    if (state_dir / STATE_FILE).exists() and not args.new:
        idp = DevIdP.load_state(state_dir, host=args.host, port=args.port)
    else:
        idp = DevIdP(args.host, args.port)

    async def run() -> None:
        await idp.start()
        path = idp.save_state(state_dir)
        info = {
            "event": "dev_idp_listening",
            "url": idp.base_url,
            "state": str(path),
            "tenant_id": idp.tenant_id,
            "app_id": idp.app_id,
            "client_id": idp.client_id,
            "provider": idp.provider_mapping(),
        }
        print(json.dumps(info), flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await idp.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def dev_token_main(argv: Sequence[str] | None = None) -> int:
    """``veilgate dev-token --role ROLE [--client-id ID] [--ttl S] [--state-dir DIR]``."""
    ap = argparse.ArgumentParser(prog="veilgate dev-token", description="Mint a dev-idp token.")
    ap.add_argument("--role", action="append", default=[], help="app role (repeatable)")
    ap.add_argument("--client-id", help="client (agent) app id (default: the dev-idp's)")
    ap.add_argument("--ttl", type=float, default=3600.0, help="seconds (default 3600)")
    ap.add_argument("--version", choices=("1.0", "2.0"), default="2.0", help="token version")
    ap.add_argument("--group", action="append", default=None, help="group object id")
    ap.add_argument("--agent-id", action="store_true", help="add Entra Agent ID claims")
    ap.add_argument("--state-dir", help=f"the dev-idp's state (default {DEFAULT_STATE_DIR})")
    args = ap.parse_args(argv)
    state_dir = _state_dir(args.state_dir)
    if not (state_dir / STATE_FILE).exists():
        print(f"no dev-idp state in {state_dir} (run `veilgate dev-idp` first)", file=sys.stderr)
        return 2
    if args.ttl <= 0 or args.ttl > 86400:
        print("--ttl must be in (0, 86400]", file=sys.stderr)
        return 2
    idp = DevIdP.load_state(state_dir)
    token = idp.mint(
        args.role,
        args.client_id,
        args.ttl,
        args.version,
        groups=args.group,
        agent_id=args.agent_id,
    )
    print(token)
    return 0
