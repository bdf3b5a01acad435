"""The SCRAM-SHA-256(-PLUS) client (RFC 5802, RFC 7677; channel binding ``tls-server-end-point``,
RFC 5929), with the PBKDF2 result cached.

A new upstream login costs one PBKDF2 of the password with the server's salt and iteration count
(4096 SHA-256 rounds by default: milliseconds of CPU, most of the gateway's cost of a new
session).  The salt and count belong to the role's stored verifier, so they are the same for
every login of that role until its password changes; the keys derived from the salted password
are therefore cached per (role, salt, iterations) in a small bounded LRU (:data:`SALTED`), and a
login of a role seen before costs two HMACs.  A cache entry also holds a keyed digest of the
password it came from (the key is random per process): a configuration reload that changes the
password misses the cache and derives anew, so a stale entry never authenticates with a
password the configuration no longer has.  Nothing here is logged, and the cache's ``repr``
shows counts only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from typing import Final

__all__ = ["SALTED", "SaltedCache", "ScramClient", "ScramError", "channel_binding_data"]

MECH: Final = "SCRAM-SHA-256"
MECH_PLUS: Final = "SCRAM-SHA-256-PLUS"
MAX_ITERATIONS: Final = 10_000_000
"""A server asking for more PBKDF2 rounds than this is refused (a login must not cost minutes)."""
CACHE_ENTRIES: Final = 256


class ScramError(Exception):
    """The exchange failed (bad server message, wrong nonce, bad server signature); the text
    names what, never a secret."""


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def normalize(password: str) -> bytes:
    """SASLprep, as the server does it; a password SASLprep rejects is used as its raw UTF-8
    (PostgreSQL's pg_saslprep does the same)."""
    try:
        from scramp.utils import saslprep

        return str(saslprep(password)).encode("utf-8")
    except Exception:
        return password.encode("utf-8")


class _Keys:
    __slots__ = ("client_key", "server_key", "tag")

    def __init__(self, tag: bytes, client_key: bytes, server_key: bytes) -> None:
        self.tag = tag
        self.client_key = client_key
        self.server_key = server_key

    def __repr__(self) -> str:
        return "<scram keys>"


class SaltedCache:
    """ClientKey / ServerKey per (role, salt, iterations), bounded LRU, thread-safe."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, bytes, int], _Keys] = OrderedDict()
        self._lock = threading.Lock()
        self._tag_key = secrets.token_bytes(32)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"<SaltedCache entries={len(self._entries)} hits={self.hits} misses={self.misses}>"

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def keys_for(self, role: str, password: bytes, salt: bytes, iterations: int) -> _Keys:
        tag = _hmac(self._tag_key, password)
        key = (role, salt, iterations)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hmac.compare_digest(hit.tag, tag):
                self._entries.move_to_end(key)
                self.hits += 1
                return hit
        salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
        keys = _Keys(tag, _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key"))
        with self._lock:
            self.misses += 1
            self._entries[key] = keys
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return keys


SALTED = SaltedCache()
"""The process's cache (one per process: each ``--workers`` process pays PBKDF2 once per role)."""


def channel_binding_data(server_cert_der: bytes) -> bytes:
    """``tls-server-end-point`` (RFC 5929): the hash of the server's certificate, with the hash
    of its signature algorithm (SHA-256 where that is MD5 or SHA-1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(server_cert_der)
    try:
        algo = cert.signature_hash_algorithm
    except Exception:
        algo = None
    if algo is None or isinstance(algo, hashes.MD5 | hashes.SHA1):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(server_cert_der)
    return h.finalize()


def _attrs(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        k, sep, v = part.partition("=")
        if not sep or len(k) != 1 or k in out:
            raise ScramError("malformed server message")
        out[k] = v
    return out


class ScramClient:
    """One client exchange.  ``binding``: the server certificate's ``tls-server-end-point`` data
    when the server offered SCRAM-SHA-256-PLUS over TLS; ``tls``: the connection is TLS (a client
    that could bind but was not offered it says so with ``y``, RFC 5802 section 6)."""

    def __init__(
        self,
        role: str,
        password: str,
        *,
        binding: bytes | None = None,
        tls: bool = False,
        cache: SaltedCache = SALTED,
        nonce: str | None = None,
        name: str = "",
    ) -> None:
        self.role = role
        self._password = normalize(password)
        self._binding = binding
        self._cache = cache
        self.mechanism_name = MECH_PLUS if binding is not None else MECH
        if binding is not None:
            self._gs2 = b"p=tls-server-end-point,,"
        else:
            self._gs2 = b"y,," if tls else b"n,,"
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        # the server takes the user from the startup packet; libpq sends an empty name too
        # (``name``: the RFC's test vectors name one)
        escaped = name.replace("=", "=3D").replace(",", "=2C")
        self._first_bare = f"n={escaped},r={self._nonce}"
        self._auth_message: bytes | None = None
        self._server_key: bytes | None = None

    def __repr__(self) -> str:
        return f"<ScramClient {self.mechanism_name}>"

    def client_first(self) -> bytes:
        return self._gs2 + self._first_bare.encode("ascii")

    def client_final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScramError("server-first-message is not UTF-8") from exc
        attrs = _attrs(text)
        if "m" in attrs:
            raise ScramError("server-first-message has a mandatory extension")
        nonce, salt_b64, iters = attrs.get("r"), attrs.get("s"), attrs.get("i")
        if nonce is None or salt_b64 is None or iters is None:
            raise ScramError("server-first-message lacks r, s or i")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            iterations = int(iters)
        except ValueError as exc:
            raise ScramError("bad salt or iteration count") from exc
        if not salt or not 1 <= iterations <= MAX_ITERATIONS:
            raise ScramError(f"iteration count {iters} out of range")
        cbind = self._gs2 + (self._binding or b"")
        without_proof = f"c={base64.b64encode(cbind).decode('ascii')},r={nonce}"
        auth = f"{self._first_bare},{text},{without_proof}".encode()
        keys = self._cache.keys_for(self.role, self._password, salt, iterations)
        signature = _hmac(hashlib.sha256(keys.client_key).digest(), auth)
        proof = bytes(a ^ b for a, b in zip(keys.client_key, signature, strict=True))
        self._auth_message = auth
        self._server_key = keys.server_key
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def verify_server_final(self, server_final: bytes) -> None:
        if self._auth_message is None or self._server_key is None:
            raise ScramError("server-final-message before client-final-message")
        try:
            attrs = _attrs(server_final.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ScramError("server-final-message is not UTF-8") from exc
        if "e" in attrs:
            raise ScramError(f"server error {attrs['e'][:64]!r}")
        try:
            got = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError as exc:
            raise ScramError("bad server signature encoding") from exc
        want = _hmac(self._server_key, self._auth_message)
        if not got or not hmac.compare_digest(got, want):
            raise ScramError("server signature does not match")
