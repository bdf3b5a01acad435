"""TLS records from the gateway to the client carry at most 8 KiB of plaintext, as PostgreSQL's do.

PostgreSQL hands OpenSSL at most its 8 KiB send buffer at a time and libpq reads with at least
8 KiB of room; libpq's asynchronous API (psycopg 3 on libpq 18.0 and earlier) hangs on larger
records, waiting on the socket for bytes OpenSSL has already decrypted (psycopg's own test suite
hung on a binary COPY through the gateway).  These tests read the raw TLS stream under a client
(``ssl.MemoryBIO``) and measure every record the gateway sends.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture
def gw(engine_gw: pw.Target) -> pw.Target:
    """Every test of this file against both TLS engines (``tls.engine``)."""
    return engine_gw


PLAINTEXT_MAX = 8192
EXPANSION_MAX = 256
"""RFC 8446 5.2 / RFC 5246 6.2.3: a record's ciphertext is at most 256 bytes longer than its
plaintext (AEAD tag, TLS 1.3 inner content type, TLS 1.2 explicit nonce)."""
APPLICATION_DATA = 23


class RecordingTLSClient:
    """A PostgreSQL client over TLS that keeps every byte the server sent on the wire."""

    def __init__(self, target: pw.Target) -> None:
        self.sock = socket.create_connection((target.host, target.port), timeout=15)
        self.wire = bytearray()
        self._plain = bytearray()
        self.sock.sendall(pw.ssl_request())
        assert self.sock.recv(1) == b"S"
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = pw.client_tls_context(target.ca_file)
        self.tls = ctx.wrap_bio(self._in, self._out, server_hostname=target.server_hostname)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise pw.ConnectionClosed("the gateway closed the connection")
        self.wire += chunk
        self._in.write(chunk)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def message(self) -> tuple[bytes, bytes]:
        while True:
            buf = self._plain
            if len(buf) >= 5:
                n = int.from_bytes(buf[1:5], "big")
                if len(buf) >= 1 + n:
                    tag, body = bytes(buf[:1]), bytes(buf[5 : 1 + n])
                    del buf[: 1 + n]
                    return tag, body
            try:
                buf += self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                self._receive()

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        messages = []
        while True:
            tag, body = self.message()
            if tag == b"E":
                raise pw.ServerError(pw.error_fields(body))
            messages.append((tag, body))
            if tag == b"Z":
                return messages

    def records(self) -> Iterator[tuple[int, int]]:
        """(content type, length) of every complete TLS record received so far."""
        wire, i = self.wire, 0
        while i + 5 <= len(wire):
            length = int.from_bytes(wire[i + 3 : i + 5], "big")
            if i + 5 + length > len(wire):
                return
            yield wire[i], length
            i += 5 + length

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def tls_client(
    request: pytest.FixtureRequest, gw: pw.Target, gateway_factory: Any
) -> Iterator[RecordingTLSClient]:
    """Connected and authenticated; the gateway on uvloop or on the stdlib event loop (their TLS
    transports are different code)."""
    if request.param == "asyncio":
        gw = pw.gateway_target(gateway_factory(use_uvloop=False))
    client = RecordingTLSClient(gw)
    client.send(pw.startup_message({"user": gw.user, "database": gw.dbname}))
    tag, body = client.message()
    assert (tag, pw.auth_code(body)) == (b"R", 3), "the gateway asks for the token"
    client.send(pw.password_message(gw.password))
    client.until_ready()
    try:
        yield client
    finally:
        client.close()


def _application_records(client: RecordingTLSClient) -> list[int]:
    return [n for kind, n in client.records() if kind == APPLICATION_DATA]


def test_large_rows_leave_in_records_of_at_most_8k(tls_client: RecordingTLSClient) -> None:
    # 20 rows of 32 KiB, then 2,000 small rows: the relay writes whole reads (64 KiB and more)
    before = len(tls_client.wire)
    tls_client.send(pw.query("SELECT repeat(md5(g::text), 1024) FROM generate_series(1, 20) g"))
    rows = [pw.data_row(b) for t, b in tls_client.until_ready() if t == b"D"]
    assert [r[0] for r in rows] == [
        hashlib.md5(str(g).encode()).hexdigest().encode() * 1024  # noqa: S324 (as the SQL)
        for g in range(1, 21)
    ]
    tls_client.send(pw.query("SELECT g, repeat('x', 40) FROM generate_series(1, 2000) g"))
    rows = [pw.data_row(b) for t, b in tls_client.until_ready() if t == b"D"]
    assert len(rows) == 2000 and rows[-1] == [b"2000", b"x" * 40]
    assert len(tls_client.wire) - before > 600_000
    lengths = _application_records(tls_client)
    # the limit is reached (big writes were cut), never passed
    assert max(lengths) > PLAINTEXT_MAX
    assert max(lengths) <= PLAINTEXT_MAX + EXPANSION_MAX, sorted(lengths)[-5:]


def test_copy_out_leaves_in_records_of_at_most_8k(tls_client: RecordingTLSClient) -> None:
    sql = "COPY (SELECT g, repeat(md5(g::text), 64) FROM generate_series(1, 300) g) TO STDOUT"
    tls_client.send(pw.query(sql))
    messages = tls_client.until_ready()
    data = b"".join(body for tag, body in messages if tag == b"d")
    assert data.count(b"\n") == 300
    assert (b"c", b"") in messages, "CopyDone arrived"
    lengths = _application_records(tls_client)
    assert max(lengths) > PLAINTEXT_MAX
    assert max(lengths) <= PLAINTEXT_MAX + EXPANSION_MAX, sorted(lengths)[-5:]
