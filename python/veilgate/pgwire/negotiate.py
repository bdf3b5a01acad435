"""Pre-TLS negotiation on a freshly accepted, raw, non-blocking socket.

Decides how the connection continues, reading only what it must:

* first byte 0x16 (a TLS ClientHello, PG17 ``sslnegotiation=direct``): nothing is consumed; TLS
  starts at once and ALPN ``postgresql`` is required afterwards;
* SSLRequest: refused if anything is buffered beyond it (CVE-2021-23214), else ``S`` and TLS (or
  ``N`` when the gateway has no certificate);
* GSSENCRequest: ``N``, then the next packet;
* CancelRequest / StartupMessage in plaintext: returned whole for the caller to handle.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from enum import Enum

from veilgate.pgwire import wire

MAX_STARTUP_PACKET = 10000
TLS_HANDSHAKE_RECORD = 0x16


class NegotiationError(Exception):
    """The client broke the pre-TLS protocol.  ``reply`` (may be empty) is sent before closing."""

    def __init__(self, reason: str, reply: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class ClientGone(Exception):
    """The client closed the connection before negotiation finished."""


class Outcome(Enum):
    TLS = "tls"
    """SSLRequest answered ``S``: start TLS."""
    DIRECT_TLS = "direct_tls"
    """A ClientHello: start TLS, then require ALPN."""
    PLAIN = "plain"
    """A plaintext packet (StartupMessage or unknown code) in :attr:`Negotiated.packet`."""
    CANCEL = "cancel"
    """A plaintext CancelRequest in :attr:`Negotiated.packet`."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    outcome: Outcome
    packet: bytes | None = None
    ssl_refused: bool = False
    """An SSLRequest was answered ``N`` (no server certificate) before :attr:`packet`."""


async def _wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    while True:
        try:
            return sock.recv(n, socket.MSG_PEEK)
        except BlockingIOError:
            await _wait_readable(loop, sock)
        except ConnectionError as exc:
            raise ClientGone from exc


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except BlockingIOError:
            await _wait_readable(loop, sock)
            continue
        except ConnectionError as exc:
            raise ClientGone from exc
        if not chunk:
            raise ClientGone
        buf += chunk
    return bytes(buf)


def _has_buffered(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
    except OSError:
        return False


def _send_small(sock: socket.socket, data: bytes) -> None:
    """Send a few bytes on a fresh socket (always fits the empty send buffer)."""
    try:
        sent = sock.send(data)
    except OSError as exc:
        raise ClientGone from exc
    if sent != len(data):
        raise ClientGone


def _protocol_violation(message: str) -> NegotiationError:
    return NegotiationError(message, wire.fatal("08P01", message))


async def negotiate(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, *, tls_available: bool
) -> Negotiated:
    first = await _peek(loop, sock, 1)
    if not first:
        raise ClientGone
    if first[0] == TLS_HANDSHAKE_RECORD:
        if not tls_available:
            raise NegotiationError("direct_tls_unavailable")
        return Negotiated(Outcome.DIRECT_TLS)
    gss_answered = False
    ssl_refused = False
    while True:
        # the length first: a bad one is refused at once, without waiting for more bytes
        length_bytes = await _recv_exact(loop, sock, 4)
        (length,) = struct.unpack("!i", length_bytes)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise _protocol_violation("invalid length of startup packet")
        header = length_bytes + await _recv_exact(loop, sock, 4)
        (code,) = struct.unpack_from("!i", header, 4)
        if code in (wire.SSL_REQUEST_CODE, wire.GSSENC_REQUEST_CODE):
            if length != 8:
                raise _protocol_violation("invalid length of startup packet")
            if _has_buffered(sock):
                # data after an encryption request, before our answer: buffer stuffing
                raise _protocol_violation(
                    "received unencrypted data after SSL request"
                    if code == wire.SSL_REQUEST_CODE
                    else "received unencrypted data after GSSAPI encryption request"
                )
            if code == wire.SSL_REQUEST_CODE:
                if ssl_refused:
                    raise _protocol_violation("duplicate SSL request")
                if tls_available:
                    _send_small(sock, b"S")
                    return Negotiated(Outcome.TLS)
                _send_small(sock, b"N")
                ssl_refused = True
                continue
            if gss_answered:
                raise _protocol_violation("duplicate GSSAPI encryption request")
            _send_small(sock, b"N")
            gss_answered = True
            continue
        rest = await _recv_exact(loop, sock, length - 8)
        packet = header + rest
        if code == wire.CANCEL_REQUEST_CODE:
            return Negotiated(Outcome.CANCEL, packet, ssl_refused)
        return Negotiated(Outcome.PLAIN, packet, ssl_refused)
