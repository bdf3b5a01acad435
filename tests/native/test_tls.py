"""The native TLS record layer (``TlsConnection``, rustls) against Python's ``ssl`` (OpenSSL).

Both ends are sans-IO here: the native end and an ``ssl.SSLObject`` over memory BIOs exchange
their records through the test, so every byte on the wire can be inspected.  The gateway's own
use of it (the relay, real clients, a real PostgreSQL) is in ``tests/integration``.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
import veilgate_native as native
from hypothesis import given
from hypothesis import strategies as st

from veilgate.certs import CertPair, make_ca, make_cert

APPLICATION_DATA = 23


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertPair]:
    d = tmp_path_factory.mktemp("tls-pki")
    ca = make_ca(d, "ca")
    other_ca = make_ca(d, "other-ca")
    return {
        "ca": ca,
        "other_ca": other_ca,
        "server": make_cert(d, "server", ["db.example", "127.0.0.1"], ca),
        "client": make_cert(d, "client", ["agent"], ca),
    }


def _server_config(pki: dict[str, CertPair]) -> native.TlsServerConfig:
    s = pki["server"]
    return native.TlsServerConfig(Path(s.cert_file).read_bytes(), Path(s.key_file).read_bytes())


class PyPeer:
    """An OpenSSL end over memory BIOs."""

    def __init__(self, ctx: ssl.SSLContext, server_side: bool, hostname: str | None = None):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=hostname
        )
        self.done = False

    def step(self) -> None:
        if self.done:
            return
        try:
            self.obj.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass

    def take(self) -> bytes:
        return self.outgoing.read()

    def read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(1 << 20)
            except ssl.SSLWantReadError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def _pump(conn: native.TlsConnection, peer: PyPeer, rounds: int = 10) -> None:
    """Exchange records until both ends finished their handshake."""
    for _ in range(rounds):
        peer.step()
        data = peer.take()
        if data:
            conn.feed(data)
        out = conn.take_ciphertext()
        if out:
            peer.incoming.write(out)
        peer.step()
        if peer.done and not conn.handshaking:
            # what the last step of each end produced (tickets, a Finished)
            out = conn.take_ciphertext()
            if out:
                peer.incoming.write(out)
            data = peer.take()
            if data:
                conn.feed(data)
            return
    raise AssertionError("handshake did not finish")


def _records(data: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record in ``data``."""
    out = []
    i = 0
    while i + 5 <= len(data):
        ctype, _, length = struct.unpack_from("!BHH", data, i)
        out.append((ctype, length))
        i += 5 + length
    assert i == len(data), "records cut in the middle"
    return out


def _client_ctx(pki: dict[str, CertPair], version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki["ca"].cert_file))
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


def _server_ctx(pki: dict[str, CertPair], version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki["server"].cert_file), str(pki["server"].key_file))
    ctx.set_alpn_protocols(["postgresql"])
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_side_against_openssl_client(pki: dict[str, CertPair], version: Any) -> None:
    conn = native.TlsConnection.server(_server_config(pki))
    client = PyPeer(_client_ctx(pki, version), server_side=False, hostname="db.example")
    _pump(conn, client)
    assert client.obj.version() == conn.version() == version.name.replace("v1_", "v1.")
    assert conn.selected_alpn_protocol() == "postgresql"
    assert client.obj.selected_alpn_protocol() == "postgresql"
    # the certificate the client saw is the one the configuration serves
    assert client.obj.getpeercert(binary_form=True) == conn.certificate

    client.obj.write(b"Q" * 100)
    assert conn.feed(client.take()) == 100
    assert conn.take_plaintext() == b"Q" * 100

    # PostgreSQL's record size: 8 KiB of plaintext at most per record
    payload = bytes(range(256)) * 80  # 20480 bytes
    records = conn.encrypt(payload)
    data = [r for r in _records(records) if r[0] == APPLICATION_DATA]
    assert len(data) == 3
    assert all(length <= 8192 + 64 for _, length in data)
    client.incoming.write(records)
    assert client.read_all() == payload


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_client_side_against_openssl_server(pki: dict[str, CertPair], version: Any) -> None:
    cfg = native.TlsClientConfig("verify-full", Path(pki["ca"].cert_file).read_bytes())
    conn = native.TlsConnection.client(cfg, "db.example")
    server = PyPeer(_server_ctx(pki, version), server_side=True)
    server.incoming.write(conn.take_ciphertext())
    _pump(conn, server)
    assert conn.version() == version.name.replace("v1_", "v1.")
    assert conn.selected_alpn_protocol() == "postgresql"
    expected = ssl.PEM_cert_to_DER_cert(Path(pki["server"].cert_file).read_text())
    assert conn.getpeercert(binary_form=True) == expected
    conn.write_plaintext(b"hello upstream")
    server.incoming.write(conn.take_ciphertext())
    assert server.read_all() == b"hello upstream"
    server.obj.write(b"x" * 50000)
    conn.feed(server.take())
    assert conn.take_plaintext() == b"x" * 50000


def test_client_side_sees_the_server_certificate(pki: dict[str, CertPair]) -> None:
    cfg = native.TlsClientConfig("verify-full", Path(pki["ca"].cert_file).read_bytes())
    conn = native.TlsConnection.client(cfg, "127.0.0.1")  # an IP SAN verifies too
    server = PyPeer(_server_ctx(pki), server_side=True)
    server.incoming.write(conn.take_ciphertext())
    _pump(conn, server)
    expected = ssl.PEM_cert_to_DER_cert(Path(pki["server"].cert_file).read_text())
    assert conn.getpeercert(binary_form=True) == expected


def _handshake_error(conn: native.TlsConnection, server: PyPeer) -> str:
    server.incoming.write(conn.take_ciphertext())
    with pytest.raises(native.TlsError) as info:
        _pump(conn, server)
    assert conn.failed is not None
    # what is owed to the server is an alert (encrypted under TLS 1.3), which it reads as one
    alert = conn.take_ciphertext()
    assert alert
    server.incoming.write(alert)
    with pytest.raises(ssl.SSLError, match=r"(?i)alert"):
        server.obj.do_handshake()
    return str(info.value)


@pytest.mark.parametrize(
    ("mode", "name", "ca", "ok"),
    [
        ("verify-full", "db.example", "ca", True),
        ("verify-full", "elsewhere.example", "ca", False),
        ("verify-full", "db.example", "other_ca", False),
        ("verify-ca", "elsewhere.example", "ca", True),
        ("verify-ca", "db.example", "other_ca", False),
        ("require", "elsewhere.example", "other_ca", True),
    ],
)
def test_verification_modes(
    pki: dict[str, CertPair], mode: str, name: str, ca: str, ok: bool
) -> None:
    ca_pem = Path(pki[ca].cert_file).read_bytes()
    conn = native.TlsConnection.client(native.TlsClientConfig(mode, ca_pem), name)
    server = PyPeer(_server_ctx(pki), server_side=True)
    if ok:
        server.incoming.write(conn.take_ciphertext())
        _pump(conn, server)
        assert not conn.handshaking
    else:
        message = _handshake_error(conn, server)
        assert "certificate" in message.lower() or "name" in message.lower()


def test_client_certificate_is_presented(pki: dict[str, CertPair]) -> None:
    c = pki["client"]
    cfg = native.TlsClientConfig(
        "verify-full",
        Path(pki["ca"].cert_file).read_bytes(),
        cert_pem=Path(c.cert_file).read_bytes(),
        key_pem=Path(c.key_file).read_bytes(),
    )
    ctx = _server_ctx(pki)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(pki["ca"].cert_file))
    conn = native.TlsConnection.client(cfg, "db.example")
    server = PyPeer(ctx, server_side=True)
    server.incoming.write(conn.take_ciphertext())
    _pump(conn, server)
    subject = dict(x[0] for x in server.obj.getpeercert()["subject"])
    assert subject["commonName"] == "agent"


def test_server_refuses_a_client_offering_only_other_protocols(pki: dict[str, CertPair]) -> None:
    conn = native.TlsConnection.server(_server_config(pki))
    ctx = _client_ctx(pki, ssl.TLSVersion.TLSv1_3)
    ctx.set_alpn_protocols(["http/1.1"])
    client = PyPeer(ctx, server_side=False, hostname="db.example")
    with pytest.raises(native.TlsError):
        _pump(conn, client)
    client.incoming.write(conn.take_ciphertext())
    with pytest.raises(ssl.SSLError):
        client.obj.do_handshake()


def test_a_client_without_alpn_is_served_with_none(pki: dict[str, CertPair]) -> None:
    # asyncpg sends no ALPN on the SSLRequest path; the gateway requires it only for direct TLS
    conn = native.TlsConnection.server(_server_config(pki))
    client = PyPeer(
        ssl.create_default_context(cafile=str(pki["ca"].cert_file)),
        server_side=False,
        hostname="db.example",
    )
    _pump(conn, client)
    assert conn.selected_alpn_protocol() is None


def test_bad_configuration_is_a_value_error(pki: dict[str, CertPair]) -> None:
    cert = Path(pki["server"].cert_file).read_bytes()
    key = Path(pki["server"].key_file).read_bytes()
    with pytest.raises(ValueError, match="certificate"):
        native.TlsServerConfig(b"not a pem", key)
    with pytest.raises(ValueError, match="key"):
        native.TlsServerConfig(
            cert, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
    with pytest.raises(ValueError, match="key"):
        # a key that is not the certificate's
        native.TlsServerConfig(cert, Path(pki["client"].key_file).read_bytes())
    with pytest.raises(ValueError, match="CA"):
        native.TlsClientConfig("verify-full", None)
    with pytest.raises(ValueError):
        native.TlsClientConfig("prefer", None)


def _established(pki: dict[str, CertPair]) -> tuple[native.TlsConnection, PyPeer]:
    conn = native.TlsConnection.server(_server_config(pki))
    client = PyPeer(
        _client_ctx(pki, ssl.TLSVersion.TLSv1_3), server_side=False, hostname="db.example"
    )
    _pump(conn, client)
    return conn, client


def test_a_tampered_record_ends_the_connection_with_an_alert(pki: dict[str, CertPair]) -> None:
    conn, client = _established(pki)
    client.obj.write(b"SELECT 1")
    record = bytearray(client.take())
    record[-1] ^= 1
    with pytest.raises(native.TlsError):
        conn.feed(bytes(record))
    assert conn.take_plaintext() == b""
    # a write on the broken connection only flushes the alert (no exception, no data)
    alert = conn.encrypt(b"secret row")
    assert len(_records(alert)) == 1
    client.incoming.write(alert)
    with pytest.raises(ssl.SSLError, match=r"(?i)alert"):
        client.obj.read(100)
    # and it stays broken
    with pytest.raises(native.TlsError):
        conn.feed(b"\x17\x03\x03\x00\x01x")


def test_close_notify(pki: dict[str, CertPair]) -> None:
    conn, client = _established(pki)
    client.incoming.write(conn.close_notify())
    # a clean end of stream (without close_notify this would want more data)
    with contextlib.suppress(ssl.SSLZeroReturnError):
        assert client.obj.read(10) == b""
    # and the other way: the peer's close_notify is seen
    conn2, client2 = _established(pki)
    with contextlib.suppress(ssl.SSLWantReadError):
        client2.obj.unwrap()
    conn2.feed(client2.take())
    assert conn2.peer_closed


@given(garbage=st.binary(max_size=4096), cut=st.integers(0, 64))
def test_arbitrary_bytes_never_crash(pki: dict[str, CertPair], garbage: bytes, cut: int) -> None:
    """The record layer's entry point on arbitrary bytes, before and after the handshake:
    an error or a wait for more, never a crash; after an error nothing is decrypted."""
    fresh = native.TlsConnection.server(_server_config(pki))
    for conn in (fresh, _established(pki)[0]):
        try:
            conn.feed(garbage[:cut])
            conn.feed(garbage[cut:])
        except native.TlsError:
            assert conn.take_plaintext() == b""
            conn.encrypt(b"x")
            with pytest.raises(native.TlsError):
                conn.feed(b"\x17\x03\x03\x00\x01x")


def _native_pair(pki: dict[str, CertPair]) -> tuple[native.TlsConnection, native.TlsConnection]:
    server = native.TlsConnection.server(_server_config(pki))
    client = native.TlsConnection.client(native.TlsClientConfig("require"), "db.example")
    for _ in range(10):
        server.feed(client.take_ciphertext())
        client.feed(server.take_ciphertext())
        if not server.handshaking and not client.handshaking:
            server.feed(client.take_ciphertext())
            return server, client
    raise AssertionError("handshake did not finish")


def _query(sql: bytes) -> bytes:
    return b"Q" + struct.pack("!i", len(sql) + 5) + sql + b"\0"


@given(
    sizes=st.lists(st.integers(0, 20000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 70000), max_size=20),
    hint=st.sampled_from([-1, 1, 4096, 65536]),
)
def test_recvbuffer_decrypts_whatever_the_reads(
    pki: dict[str, CertPair], sizes: list[int], cuts: list[int], hint: int
) -> None:
    """A RecvBuffer with TLS attached, fed ciphertext the way the loop feeds it (prepare, write
    into the exported buffer, advance) in arbitrary reads: what it forwards is the plaintext
    stream, whole, in order; the batches it encrypts into the peer's connection decrypt to the
    same; no export is left behind."""
    server, client = _native_pair(pki)
    peer_server, peer_client = _native_pair(pki)
    stream = b"".join(_query(b"x" * n) for n in sizes)
    wire = client.encrypt(stream)
    rb = native.RecvBuffer(native.CLIENT)
    assert rb.attach_tls(server) == 0
    rb.set_output_tls(peer_server)
    forwarded = bytearray()
    at, i = 0, 0
    while at < len(wire):
        rb.prepare(hint)
        with memoryview(rb) as mv:
            n = min(len(mv), len(wire) - at, cuts[i % len(cuts)] if cuts else len(wire))
            mv[:n] = wire[at : at + n]
        at += n
        i += 1
        out = rb.advance(n, True)
        assert rb.exports == 0
        if out is not None:
            assert isinstance(out, bytes)
            peer_client.feed(out)
            forwarded += peer_client.take_plaintext()
    assert bytes(forwarded) == stream
    assert rb.buffered == 0


def test_recvbuffer_never_hands_out_plaintext_as_records(pki: dict[str, CertPair]) -> None:
    """encrypt=True with no output connection is an error, never plaintext for a TLS peer;
    a second attach is refused; a forged record is a TlsError (a FramingError)."""
    server, client = _native_pair(pki)
    rb = native.RecvBuffer(native.CLIENT)
    rb.attach_tls(server)
    with pytest.raises(ValueError, match="attached"):
        rb.attach_tls(server)
    wire = client.encrypt(_query(b"select 1"))
    rb.prepare(-1)
    with memoryview(rb) as mv:
        mv[: len(wire)] = wire
    with pytest.raises(RuntimeError, match="output"):
        rb.advance(len(wire), True)
    forged = bytearray(client.encrypt(_query(b"select 2")))
    forged[-1] ^= 1
    rb.prepare(-1)
    with memoryview(rb) as mv:
        mv[: len(forged)] = forged
    with pytest.raises(native.FramingError):
        rb.advance(len(forged))


def test_recvbuffer_with_tls_serves_every_read_from_one_view(pki: dict[str, CertPair]) -> None:
    """With TLS attached, ``prepare`` says so (True) and never refuses for a live view: the
    relay keeps one view of the cipher buffer for every read.  The framing buffer still grows
    for a message larger than it and shrinks back to its base capacity once that message is
    returned (memory per connection stays bounded); without TLS ``prepare`` says False."""
    plain = native.RecvBuffer(native.CLIENT, capacity=4096)
    assert plain.prepare(-1) is False
    server, client = _native_pair(pki)
    peer_server, _peer_client = _native_pair(pki)
    rb = native.RecvBuffer(native.CLIENT, capacity=4096)
    rb.attach_tls(server)
    rb.set_output_tls(peer_server)
    rb.set_events(b"Q")  # events are framed whole: the 200 kB one grows the framing buffer
    base = rb.capacity
    view = memoryview(rb)
    stream = _query(b"y" * 200_000) + _query(b"select 1")
    wire = client.encrypt(stream)
    forwarded = bytearray()
    grown = 0
    at = 0
    while at < len(wire):
        assert rb.prepare(-1) is True  # a live view is no error: the cipher buffer never moves
        n = min(len(view), len(wire) - at)
        view[:n] = wire[at : at + n]
        at += n
        out = rb.advance(n, True)
        grown = max(grown, rb.capacity)
        for item in [] if out is None else out if isinstance(out, list) else [out]:
            assert not isinstance(item, bytes)  # every message is an event here
            forwarded += item.frame()
    assert bytes(forwarded) == stream
    assert grown > 200_000
    assert rb.buffered == 0 and rb.capacity == base
    assert rb.exports == 1
    view.release()
    assert rb.exports == 0
