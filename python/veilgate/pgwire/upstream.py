"""Connecting to an upstream PostgreSQL: TCP, TLS negotiation, and the SCRAM client exchange.

The pre-TLS exchange runs on the raw socket (so exactly one byte is read after the SSLRequest,
CVE-2021-23222); the socket is then handed to the event loop with TLS.  Authentication is driven
by :class:`UpstreamHandshake` over whole messages the session feeds it, so it is sans-IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veilgate.config_model import TargetConfig, UpstreamTLSMode
from veilgate.pgwire import scram, wire
from veilgate.pgwire.scram import ScramError

ALPN = "postgresql"
SSL_SHUTDOWN_TIMEOUT_S = 2.0
"""How long closing a TLS connection waits for the peer's close_notify before dropping TCP."""


class UpstreamError(Exception):
    """Connecting or authenticating upstream failed.

    ``code``/``message`` are what the client sees (no secrets, no upstream detail that could help
    an attacker); ``reason`` is a slug for the log and metrics; ``detail`` is for the log only.
    """

    def __init__(self, code: str, message: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.code = code
        self.message = message
        self.reason = reason
        self.detail = detail


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY and SO_KEEPALIVE on a TCP socket (no-op for other families)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


_ctx_cache: dict[tuple[str, str | None, str | None, str | None], ssl.SSLContext] = {}


def client_ssl_context(target: TargetConfig) -> ssl.SSLContext | None:
    """The TLS context for ``target`` (cached per mode and CA file); ``None`` for ``disable``."""
    mode = target.tls.mode
    if mode is UpstreamTLSMode.DISABLE:
        return None
    ca = str(target.tls.ca_file) if target.tls.ca_file is not None else None
    cert = str(target.tls.cert_file) if target.tls.cert_file is not None else None
    cert_key = str(target.tls.key_file) if target.tls.key_file is not None else None
    key = (mode.value, ca, cert, cert_key)
    ctx = _ctx_cache.get(key)
    if ctx is not None:
        return ctx
    if mode is UpstreamTLSMode.REQUIRE:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        ctx.check_hostname = mode is UpstreamTLSMode.VERIFY_FULL
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN])
    if cert is not None:
        ctx.load_cert_chain(cert, cert_key)
    _ctx_cache[key] = ctx
    return ctx


async def _tcp_connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        tune_socket(sock)
        return sock
    raise last or OSError(f"no address for {host}")


async def open_raw(loop: asyncio.AbstractEventLoop, target: TargetConfig) -> socket.socket:
    """TCP connect; if the target uses TLS, send SSLRequest and read exactly one byte."""
    try:
        sock = await _tcp_connect(loop, target.host, target.port)
    except OSError as exc:
        raise UpstreamError(
            "08001",
            f'could not connect to the upstream server for database "{target.name}"',
            "unreachable",
            str(exc),
        ) from exc
    if target.tls.mode is UpstreamTLSMode.DISABLE:
        return sock
    try:
        await loop.sock_sendall(sock, wire.SSL_REQUEST)
        answer = await loop.sock_recv(sock, 1)
    except OSError as exc:
        sock.close()
        raise UpstreamError(
            "08001",
            f'could not connect to the upstream server for database "{target.name}"',
            "unreachable",
            str(exc),
        ) from exc
    if answer != b"S":
        sock.close()
        # never show what the server sent instead (CVE-2024-10977)
        raise UpstreamError(
            "08001",
            f'the upstream server for database "{target.name}" does not accept TLS',
            "upstream_no_tls",
            f"answer to SSLRequest: {answer[:1]!r}",
        )
    return sock


def server_hostname(target: TargetConfig) -> str | None:
    if target.tls.mode is UpstreamTLSMode.DISABLE:
        return None
    return target.tls.server_name or target.host


async def connect(
    loop: asyncio.AbstractEventLoop,
    target: TargetConfig,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
) -> tuple[asyncio.Transport, Any]:
    """Open a transport to ``target`` (TLS per its mode) driven by ``protocol_factory()``."""
    sock = await open_raw(loop, target)
    ctx = client_ssl_context(target)
    try:
        if ctx is None:
            transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
        else:
            transport, protocol = await loop.create_connection(
                protocol_factory,
                sock=sock,
                ssl=ctx,
                server_hostname=server_hostname(target),
                ssl_handshake_timeout=target.connect_timeout_s,
                ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT_S,
            )
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise UpstreamError(
            "08001",
            f'could not establish TLS with the upstream server for database "{target.name}"',
            "upstream_tls",
            str(exc),
        ) from exc
    return transport, protocol


# --- authentication -----------------------------------------------------------------------------


_RETRYABLE_REFUSALS = {
    "53300": "too many connections",
    "53": "insufficient resources",
    "57P03": "the server is starting up or shutting down",
    "57P01": "the server is shutting down",
}
"""Upstream handshake errors passed to the client with their SQLSTATE (by code or class)."""


@dataclass
class UpstreamHandshake:
    """Sans-IO upstream authentication: feed it every backend message until :attr:`done`.

    :meth:`feed` returns the frames to send upstream.  SCRAM-SHA-256-PLUS (channel binding
    ``tls-server-end-point``) is preferred when offered over TLS; the server signature is always
    verified.  Cleartext is answered only over TLS; MD5 is refused.
    """

    target: TargetConfig
    password: str | None
    ssl_object: Any = None
    parameters: list[bytes] = field(default_factory=list)
    """ParameterStatus frames, as received."""
    backend_pid: int | None = None
    backend_key: bytes | None = None
    tx_status: bytes = b"I"
    done: bool = False
    _scram: scram.ScramClient | None = None
    _sasl_complete: bool = False
    _authenticated: bool = False
    _cleartext: bool = False

    @property
    def mechanism(self) -> str:
        """The upstream authentication used (``SCRAM-SHA-256-PLUS``, ``cleartext``, ``none``)."""
        if self._scram is not None:
            return str(self._scram.mechanism_name)
        return "cleartext" if self._cleartext else "none"

    def _fail(self, reason: str, detail: str = "") -> UpstreamError:
        return UpstreamError(
            "08006",
            f'could not authenticate to the upstream server for database "{self.target.name}"',
            reason,
            detail,
        )

    def _need_password(self) -> str:
        if not self.password:
            raise self._fail("upstream_no_password", "the target has no password configured")
        return self.password

    def feed(self, tag: int, body: bytes) -> list[bytes]:
        if tag == ord("R"):
            return self._auth(wire.parse_auth_request(body))
        if tag == ord("E"):
            fields = wire.parse_error_fields(body)
            code = fields.get("C", "")
            detail = f"{code} {fields.get('M', '')}".strip()
            refusal = _RETRYABLE_REFUSALS.get(code) or _RETRYABLE_REFUSALS.get(code[:2])
            if refusal is not None:
                # capacity / availability: the client must learn it is retryable, not an auth
                # problem; our own text, so the upstream role name is not revealed
                raise UpstreamError(
                    code,
                    f'the upstream server for database "{self.target.name}" refused the '
                    f"connection: {refusal}",
                    "upstream_unavailable",
                    detail,
                )
            raise self._fail("upstream_error", detail)
        if not self._authenticated:
            raise self._fail("upstream_protocol", f"unexpected message {chr(tag)!r} before auth")
        if tag == ord("S"):
            self.parameters.append(wire.frame(b"S", body))
        elif tag == ord("K"):
            self.backend_pid, self.backend_key = wire.parse_backend_key_data(body)
        elif tag == ord("Z"):
            self.tx_status = body[:1] or b"I"
            self.done = True
        elif tag in (ord("N"), ord("v")):
            pass
        else:
            raise self._fail("upstream_protocol", f"unexpected message {chr(tag)!r}")
        return []

    def _auth(self, req: wire.AuthRequest) -> list[bytes]:
        if self._authenticated:
            raise self._fail("upstream_protocol", "authentication request after AuthenticationOk")
        if req.code == wire.AUTH_OK:
            if self._scram is not None and not self._sasl_complete:
                # the server skipped SASLFinal: no mutual authentication
                raise self._fail("upstream_scram", "AuthenticationOk before SASL final")
            self._authenticated = True
            return []
        if req.code == wire.AUTH_SASL:
            return [self._sasl_start(req.mechanisms)]
        if req.code == wire.AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise self._fail("upstream_scram", "SASLContinue before SASL start")
            try:
                final = self._scram.client_final(req.payload)
            except ScramError as exc:
                raise self._fail("upstream_scram", str(exc)) from exc
            return [wire.sasl_response(final)]
        if req.code == wire.AUTH_SASL_FINAL:
            if self._scram is None:
                raise self._fail("upstream_scram", "SASLFinal before SASL start")
            try:
                self._scram.verify_server_final(req.payload)
            except ScramError as exc:
                raise self._fail("upstream_scram", f"server signature: {exc}") from exc
            self._sasl_complete = True
            return []
        if req.code == wire.AUTH_CLEARTEXT:
            if self.ssl_object is None:
                raise self._fail("upstream_auth_method", "cleartext password without TLS")
            self._cleartext = True
            return [wire.password_message(self._need_password())]
        raise self._fail("upstream_auth_method", f"unsupported authentication request {req.code}")

    def _sasl_start(self, offered: list[str]) -> bytes:
        if self._scram is not None:
            raise self._fail("upstream_scram", "second SASL request")
        password = self._need_password()
        binding: bytes | None = None
        if scram.MECH_PLUS in offered and self.ssl_object is not None:
            der = self.ssl_object.getpeercert(binary_form=True)
            if der is None:
                raise self._fail("upstream_scram", "no server certificate to bind to")
            try:
                binding = scram.channel_binding_data(der)
            except Exception as exc:
                raise self._fail("upstream_scram", f"server certificate: {exc}") from exc
        elif scram.MECH not in offered:
            raise self._fail("upstream_auth_method", f"no supported SASL mechanism in {offered}")
        self._scram = scram.ScramClient(
            self.target.user or "",
            password,
            binding=binding,
            tls=self.ssl_object is not None,
        )
        return wire.sasl_initial_response(self._scram.mechanism_name, self._scram.client_first())


async def send_cancel(
    loop: asyncio.AbstractEventLoop, target: TargetConfig, pid: int, key: bytes
) -> None:
    """Deliver a CancelRequest for (``pid``, ``key``) to ``target`` on a new connection (TLS per
    the target's mode) and wait for the server to close it."""
    sock = await open_raw(loop, target)
    ctx = client_ssl_context(target)
    reader, writer = await asyncio.open_connection(
        sock=sock,
        ssl=ctx,
        server_hostname=server_hostname(target) if ctx is not None else None,
        ssl_handshake_timeout=target.connect_timeout_s if ctx is not None else None,
    )
    try:
        writer.write(wire.cancel_request(pid, key))
        await writer.drain()
        await reader.read(1)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
