"""Client-side TLS session resumption against the gateway (python TLS engine): a client that
keeps its TLS session (libpq does not; Python's ssl and other drivers can) resumes it on its next
connection instead of a full handshake."""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import TLS_ENGINE

from veilgate.config_model import TLSEngine


def _connect(gw: pw.Target, ctx: ssl.SSLContext, session: Any = None) -> tuple[bool, Any]:
    s = socket.create_connection((gw.host, gw.port), timeout=10)
    s.sendall(struct.pack("!ii", 8, 80877103))
    assert s.recv(1) == b"S"
    t = ctx.wrap_socket(s, server_hostname=gw.server_hostname, session=session)
    try:
        # a startup packet: the gateway answers (asks for the token), TLS 1.3 tickets come along
        body = b"user\0agent\0database\0" + gw.dbname.encode() + b"\0\0"
        t.sendall(struct.pack("!ii", len(body) + 8, 196608) + body)
        assert t.recv(4096)[:1] == b"R"
        return t.session_reused, t.session
    finally:
        t.close()


@pytest.mark.skipif(
    TLS_ENGINE is not TLSEngine.PYTHON, reason="resumption is checked for the python TLS engine"
)
def test_tls_sessions_resume(gw: pw.Target) -> None:
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ssl.create_default_context(cafile=gw.ca_file)
        ctx.maximum_version = version
        reused, session = _connect(gw, ctx)
        assert not reused
        reused, _ = _connect(gw, ctx, session)
        assert reused, version
