"""TLS in the native engine (``tls.engine: native``): configurations, handshake, channel binding.

The handshake runs here, on the raw socket, before the event loop gets it: ``feed`` what the
peer sent, send what ``take_ciphertext`` returns, until the connection stops handshaking.  The
socket then becomes a plain transport whose side's ``RecvBuffer`` has the connection attached:
the engine decrypts what uvloop reads and encrypts what it forwards, with no Python call per
record (see ``_relay.NativeTlsTransport`` for the control plane's own writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import veilgate_native as native

from veilgate.config_model import GatewayConfig, TargetConfig, TLSEngine, UpstreamTLSMode
from veilgate.pgwire import upstream

ALPN = "postgresql"
HANDSHAKE_READ = 65536


def uses_native(config: GatewayConfig) -> bool:
    """Whether TLS runs in the native engine for this configuration."""
    return config.tls.engine is TLSEngine.NATIVE


def server_config(config: GatewayConfig) -> native.TlsServerConfig | None:
    """The client-facing native TLS configuration (``None`` without a certificate).  Raises
    ``OSError`` / ``ValueError`` for a file that cannot be read or used."""
    tls = config.tls
    if tls.cert_file is None:
        return None
    cert = Path(tls.cert_file).read_bytes()
    key = Path(tls.key_file).read_bytes() if tls.key_file is not None else cert
    return native.TlsServerConfig(cert, key)


def _default_ca_file() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


_client_configs: dict[tuple[str, str | None, str | None, str | None], native.TlsClientConfig] = {}


def client_config(target: TargetConfig) -> native.TlsClientConfig | None:
    """The upstream native TLS configuration of ``target`` (cached per mode and files; rustls
    resumes sessions per configuration); ``None`` for ``disable``."""
    tls = target.tls
    if tls.mode is UpstreamTLSMode.DISABLE:
        return None
    ca = tls.ca_file
    if ca is None and tls.mode is not UpstreamTLSMode.REQUIRE:
        # what Python's default context trusts: the system's CA bundle
        ca = _default_ca_file()
    cert = getattr(tls, "cert_file", None)
    key = getattr(tls, "key_file", None)
    cache_key = (
        tls.mode.value,
        str(ca) if ca else None,
        str(cert) if cert else None,
        str(key) if key else None,
    )
    cfg = _client_configs.get(cache_key)
    if cfg is None:
        cfg = native.TlsClientConfig(
            tls.mode.value,
            Path(ca).read_bytes() if ca is not None else None,
            cert_pem=Path(cert).read_bytes() if cert is not None else None,
            key_pem=Path(key if key is not None else cert).read_bytes()
            if cert is not None
            else None,
        )
        _client_configs[cache_key] = cfg
    return cfg


async def handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, conn: native.TlsConnection
) -> None:
    """Run the TLS handshake of ``conn`` over the non-blocking ``sock``.  Raises
    ``native.TlsError`` (the alert was sent), ``ConnectionError`` / ``OSError``."""
    while True:
        out = conn.take_ciphertext()
        if out:
            await loop.sock_sendall(sock, out)
        if not conn.handshaking:
            return
        data = await loop.sock_recv(sock, HANDSHAKE_READ)
        if not data:
            raise ConnectionResetError("the peer closed the connection during the TLS handshake")
        try:
            conn.feed(data)
        except native.TlsError:
            alert = conn.take_ciphertext()
            if alert:
                with contextlib.suppress(OSError):
                    sock.send(alert)
            raise


async def connect_upstream(
    loop: asyncio.AbstractEventLoop, target: TargetConfig
) -> tuple[socket.socket, native.TlsConnection]:
    """TCP, SSLRequest, then the TLS handshake of ``target`` in the native engine (verified as
    its mode says); the socket is ready for a plain transport.  Raises ``UpstreamError``."""
    sock = await upstream.open_raw(loop, target)
    try:
        cfg = client_config(target)
        assert cfg is not None
        conn = native.TlsConnection.client(cfg, upstream.server_hostname(target) or target.host)
        await handshake(loop, sock, conn)
    except (OSError, ValueError) as exc:  # TlsError is a ValueError
        sock.close()
        raise upstream.UpstreamError(
            "08001",
            f'could not establish TLS with the upstream server for database "{target.name}"',
            "upstream_tls",
            str(exc),
        ) from exc
    except BaseException:
        sock.close()
        raise
    return sock, conn
