"""TLS in the native engine (``tls.engine: native``): real clients in front, a real PostgreSQL
behind, both TLS connections terminated and originated by rustls inside the relay.

The TLS negotiation, startup and record-size tests run against both engines in
``test_tls_startup.py`` and ``test_tls_records.py``; this file holds what is specific to the
native layer: the upstream handshake (verify-full, SCRAM-SHA-256-PLUS channel binding), large
results and COPY crossing many records and reads, a forged record mid-session, certificate
reload.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import veilgate_native as native
from tests.integration import pgwire as pw

from veilgate.config_model import TLSEngine, UpstreamTLSConfig, UpstreamTLSMode
from veilgate.pgwire import tlsnative, upstream, wire

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def ngw(gateways_by_engine: Any) -> Any:
    return gateways_by_engine("native")


@pytest.fixture
def target(ngw: Any) -> pw.Target:
    return pw.gateway_target(ngw)


def _app_target(ngw: Any) -> Any:
    return ngw.config.targets["app"]


def test_psql_through_native_tls(target: pw.Target) -> None:
    out = subprocess.run(
        [
            "psql",
            target.conninfo(),
            "-XAtc",
            "select ssl, version from pg_stat_ssl "
            "where pid = pg_backend_pid(); select count(*) from generate_series(1, 50000)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    # the gateway's upstream connection is TLS too (rustls, 1.3 against this server)
    assert out == ["t|TLSv1.3", "50000"]


def test_psycopg_large_result_and_copy(target: pw.Target) -> None:
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "select g, repeat('x', g % 300) from generate_series(1, 20000) g"
        ).fetchall()
        assert len(rows) == 20000
        assert rows[-1] == (20000, "x" * (20000 % 300))
        buf = bytearray()
        with conn.cursor().copy("copy (select g from generate_series(1, 30000) g) to stdout") as cp:
            for chunk in cp:
                buf += chunk
        assert buf.count(b"\n") == 30000
        # and a big statement the other way (many records from the client)
        big = "select length('" + "y" * 200_000 + "')"
        assert conn.execute(big).fetchone() == (200_000,)


def test_asyncpg_without_alpn_on_the_sslrequest_path(target: pw.Target) -> None:
    async def run() -> list[Any]:
        ctx = pw.client_tls_context(target.ca_file)
        conn = await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.dbname,
            ssl=ctx,
        )
        try:
            stmt = await conn.prepare("select $1::int + g from generate_series(1, 1000) g")
            return [await stmt.fetchval(i) for i in range(50)]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [i + 1 for i in range(50)]


def _read_message(
    sock: socket.socket, conn: native.TlsConnection, buf: bytearray
) -> tuple[int, bytes]:
    while True:
        if len(buf) >= 5:
            (length,) = struct.unpack_from("!i", buf, 1)
            if len(buf) >= 1 + length:
                tag, body = buf[0], bytes(buf[5 : 1 + length])
                del buf[: 1 + length]
                return tag, body
        data = sock.recv(65536)
        assert data, "server closed"
        conn.feed(data)
        buf += conn.take_plaintext()


def test_upstream_scram_plus_channel_binding(ngw: Any) -> None:
    """The native client end against the real server: verify-full, ALPN, and SCRAM-SHA-256-PLUS
    bound to the certificate rustls received (the server checks the binding)."""
    target = _app_target(ngw)

    async def run() -> upstream.UpstreamHandshake:
        loop = asyncio.get_running_loop()
        sock, conn = await tlsnative.connect_upstream(loop, target)
        try:
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
            # PostgreSQL 17+ selects ALPN "postgresql"; older servers ignore it
            assert conn.selected_alpn_protocol() in (None, "postgresql")
            hs = upstream.UpstreamHandshake(target, target.password(), conn)
            sock.setblocking(True)
            sock.sendall(
                conn.encrypt(
                    wire.startup_message([("user", target.user), ("database", target.dbname)])
                )
            )
            buf = bytearray()
            while not hs.done:
                tag, body = _read_message(sock, conn, buf)
                for out in hs.feed(tag, body):
                    sock.sendall(conn.encrypt(out))
            return hs
        finally:
            sock.close()

    hs = asyncio.run(run())
    assert hs.mechanism == "SCRAM-SHA-256-PLUS"
    assert hs.backend_pid


def test_upstream_verify_full_refuses_another_name(ngw: Any) -> None:
    target = _app_target(ngw)
    wrong = replace(
        target,
        tls=UpstreamTLSConfig(
            mode=UpstreamTLSMode.VERIFY_FULL, ca_file=target.tls.ca_file, server_name="evil.example"
        ),
    )

    async def run() -> None:
        await tlsnative.connect_upstream(asyncio.get_running_loop(), wrong)

    with pytest.raises(upstream.UpstreamError) as info:
        asyncio.run(run())
    assert info.value.reason == "upstream_tls"
    assert "name" in info.value.detail.lower() or "certificate" in info.value.detail.lower()


def test_a_forged_record_ends_only_that_session(target: pw.Target) -> None:
    ctx = pw.client_tls_context(target.ca_file)
    raw = socket.create_connection((target.host, target.port), timeout=10)
    raw.sendall(pw.ssl_request())
    assert raw.recv(1) == b"S"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=target.server_hostname)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    raw.sendall(outgoing.read())
    obj.write(pw.startup_message({"user": target.user, "database": target.dbname}))
    record = bytearray(outgoing.read())
    record[-3] ^= 0x55  # the AEAD tag no longer matches
    raw.sendall(bytes(record))
    # the gateway answers with an alert and closes; nothing else arrives
    received = bytearray()
    raw.settimeout(10)
    while True:
        data = raw.recv(65536)
        if not data:
            break
        received += data
    raw.close()
    # one record: the alert (encrypted under TLS 1.3), never application data
    assert received
    incoming.write(bytes(received))
    with pytest.raises(ssl.SSLError, match=r"(?i)alert"):
        obj.read(100)
    # the gateway goes on serving
    with psycopg.connect(target.conninfo()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_certificate_reload_serves_new_sessions(
    gateway_factory: Any, gateway_certs: Any, tmp_path: Path
) -> None:
    from veilgate.certs import make_cert
    from veilgate.gateway.server import server_ssl_context

    handle = gateway_factory(
        transform=lambda c: replace(c, tls=replace(c.tls, engine=TLSEngine.NATIVE))
    )
    t = pw.gateway_target(handle)
    ca, _ = gateway_certs

    def shown() -> bytes:
        with socket.create_connection((t.host, t.port), timeout=10) as raw:
            raw.sendall(pw.ssl_request())
            assert raw.recv(1) == b"S"
            with pw.client_tls_context(t.ca_file).wrap_socket(
                raw, server_hostname="localhost"
            ) as s:
                der = s.getpeercert(binary_form=True)
                assert der is not None
                return der

    before = shown()
    running = psycopg.connect(t.conninfo(), autocommit=True)
    new = make_cert(tmp_path, "rotated", ["localhost", "127.0.0.1"], ca)
    config = replace(
        handle.config,
        tls=replace(handle.config.tls, cert_file=new.cert_file, key_file=new.key_file),
    )
    gateway = handle.thread.gateway

    async def reload() -> None:
        gateway.reconfigure(config, server_ssl_context(config), None)

    handle.thread.call(reload())
    after = shown()
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert(Path(new.cert_file).read_text())
    # a session that started before the reload goes on with its connection
    assert running.execute("select 2").fetchone() == (2,)
    running.close()
    with psycopg.connect(t.conninfo()) as conn:
        assert conn.execute("select 3").fetchone() == (3,)


def test_native_tls_on_the_stdlib_loop(gateway_factory: Any) -> None:
    """Both loops hand the engine ciphertext (uvloop and asyncio differ in how they read into
    a buffer: asyncio gets a memoryview of it)."""
    handle = gateway_factory(
        transform=lambda c: replace(c, tls=replace(c.tls, engine=TLSEngine.NATIVE)),
        use_uvloop=False,
    )
    t = pw.gateway_target(handle)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        rows = conn.execute("select g from generate_series(1, 30000) g").fetchall()
        assert len(rows) == 30000
        assert conn.execute(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone() == (True,)
