"""The tiny async HTTP GET client used for discovery and JWKS (against raw loopback servers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from veilgate.identity.http import HTTPError, check_url, http_get


@contextlib.asynccontextmanager
async def raw_server(response: bytes, *, delay: float = 0.0) -> AsyncIterator[str]:
    """Serve ``response`` verbatim to every connection; yields the base URL."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            if delay:
                await asyncio.sleep(delay)
            writer.write(response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def test_check_url_policy() -> None:
    check_url("https://login.microsoftonline.com/x")
    check_url("http://127.0.0.1:8080/x", allow_insecure_http=True)
    check_url("http://[::1]:8080/x", allow_insecure_http=True)
    for url, insecure in [
        ("http://127.0.0.1/x", False),
        ("http://localhost/x", True),
        ("http://10.0.0.1/x", True),
        ("ftp://127.0.0.1/x", True),
        ("file:///etc/passwd", True),
        ("https://user:pw@host/x", False),
        ("https:///nohost", False),
    ]:
        with pytest.raises(ValueError):
            check_url(url, allow_insecure_http=insecure)


@pytest.mark.asyncio
async def test_content_length_and_headers() -> None:
    body = b'{"ok": true}'
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: 1\r\nX-A: 2\r\n\r\n" + body
    async with raw_server(resp) as base:
        r = await http_get(base + "/x?y=1", allow_insecure_http=True)
    assert r.status == 200 and r.body == body
    assert r.headers["x-a"] == "1, 2"


@pytest.mark.asyncio
async def test_chunked_and_eof_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with raw_server(chunked) as base:
        r = await http_get(base, allow_insecure_http=True)
    assert r.body == b"hello world"
    async with raw_server(b"HTTP/1.0 200 OK\r\n\r\nuntil-eof") as base:
        r = await http_get(base, allow_insecure_http=True)
    assert r.body == b"until-eof"


@pytest.mark.asyncio
async def test_redirect_returned_not_followed() -> None:
    resp = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/evil\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(resp) as base:
        r = await http_get(base, allow_insecure_http=True)
    assert r.status == 302 and r.headers["location"].endswith("/evil")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "resp",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n" + b"x" * 5000,
    ],
)
async def test_body_size_bounded(resp: bytes) -> None:
    async with raw_server(resp) as base:
        with pytest.raises(HTTPError, match="over"):
            await http_get(base, allow_insecure_http=True, max_bytes=4096)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "resp",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
        b"",
    ],
)
async def test_bad_responses(resp: bytes) -> None:
    async with raw_server(resp) as base:
        with pytest.raises(HTTPError):
            await http_get(base, allow_insecure_http=True)


@pytest.mark.asyncio
async def test_timeout_and_refused() -> None:
    async with raw_server(b"HTTP/1.1 200 OK\r\n\r\n", delay=2) as base:
        with pytest.raises(HTTPError, match="timed out"):
            await http_get(base, allow_insecure_http=True, timeout_s=0.2)
    async with raw_server(b"") as base:
        pass  # closed: nothing listens there any more
    with pytest.raises(HTTPError):
        await http_get(base, allow_insecure_http=True)


@pytest.mark.asyncio
async def test_request_shape() -> None:
    captured: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        captured.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await http_get(f"http://127.0.0.1:{port}/a/b?c=d", allow_insecure_http=True)
    server.close()
    assert r.status == 204 and r.body == b""
    head = captured[0].decode()
    assert head.startswith("GET /a/b?c=d HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n" in head and "Connection: close" in head
