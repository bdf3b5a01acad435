"""The SCRAM-SHA-256 client: RFC 7677's test vector, the exchange's failures, and the cache of
derived keys (one PBKDF2 per role, salt and iteration count; a changed password derives anew)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from veilgate.pgwire import scram

# RFC 7677 section 3
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _client(cache: scram.SaltedCache, password: str = "pencil") -> scram.ScramClient:  # noqa: S107 (RFC)
    return scram.ScramClient("user", password, cache=cache, nonce=NONCE, name="user")


def test_rfc7677_vector() -> None:
    c = _client(scram.SaltedCache())
    assert c.client_first() == b"n,,n=user,r=" + NONCE.encode()
    assert c.client_final(SERVER_FIRST) == CLIENT_FINAL
    c.verify_server_final(SERVER_FINAL)


def test_cache_pays_pbkdf2_once_per_role_salt_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: object) -> bytes:
        calls.append(args[3])
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(scram.hashlib, "pbkdf2_hmac", counting)
    cache = scram.SaltedCache()
    for _ in range(3):
        c = _client(cache)
        assert c.client_final(SERVER_FIRST) == CLIENT_FINAL
        c.verify_server_final(SERVER_FINAL)
    assert (len(calls), cache.hits, cache.misses) == (1, 2, 1)
    # another salt or iteration count is another entry
    other = SERVER_FIRST.replace(b"i=4096", b"i=4097")
    _client(cache).client_final(other)
    assert (len(calls), len(cache)) == (2, 2)
    # a changed password never uses the old entry: it derives anew, and the proof differs
    c = _client(cache, "pencil2")
    assert c.client_final(SERVER_FIRST) != CLIENT_FINAL
    with pytest.raises(scram.ScramError):
        c.verify_server_final(SERVER_FINAL)
    assert len(calls) == 3
    assert "pencil" not in repr(cache) and "pencil" not in repr(cache._entries)


def test_cache_is_bounded() -> None:
    cache = scram.SaltedCache(max_entries=2)
    for i in range(1, 5):
        _client(cache).client_final(SERVER_FIRST.replace(b"i=4096", f"i={i}".encode()))
    assert len(cache) == 2


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # nonce not ours
        b"r=" + NONCE.encode() + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not extended
        SERVER_FIRST.replace(b"i=4096", b"i=0"),
        SERVER_FIRST.replace(b"i=4096", b"i=99999999999"),
        SERVER_FIRST.replace(b"i=4096", b"i=x"),
        SERVER_FIRST.replace(b"s=W22ZaJ0SNY7soEsUEjb6gQ==", b"s=***"),
        b"m=ext," + SERVER_FIRST,
        b"garbage",
        b"\xff",
    ],
)
def test_bad_server_first_is_refused(server_first: bytes) -> None:
    with pytest.raises(scram.ScramError):
        _client(scram.SaltedCache()).client_final(server_first)


def test_bad_server_final_is_refused() -> None:
    c = _client(scram.SaltedCache())
    with pytest.raises(scram.ScramError):
        c.verify_server_final(SERVER_FINAL)  # before client-final
    c.client_final(SERVER_FIRST)
    sig = bytearray(base64.b64decode(SERVER_FINAL[2:]))
    sig[0] ^= 1
    for bad in (b"v=" + base64.b64encode(bytes(sig)), b"e=invalid-proof", b"v=", b"v=!!"):
        with pytest.raises(scram.ScramError):
            c.verify_server_final(bad)


def test_channel_binding_header() -> None:
    plus = scram.ScramClient("u", "p", binding=b"\x01" * 32, cache=scram.SaltedCache())
    assert plus.mechanism_name == "SCRAM-SHA-256-PLUS"
    assert plus.client_first().startswith(b"p=tls-server-end-point,,n=,r=")
    # TLS without PLUS offered: "y" (RFC 5802: the client could bind, the server did not offer)
    assert scram.ScramClient("u", "p", tls=True).client_first().startswith(b"y,,n=,r=")
    final = plus.client_final(
        b"r=" + plus.client_first().split(b"r=")[1] + b"xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1"
    )
    cbind = base64.b64decode(final.split(b",")[0][2:])
    assert cbind == b"p=tls-server-end-point,," + b"\x01" * 32
