"""A tiny async HTTP/1.1 client: GET for discovery documents and JWKS, POST for webhooks.

Deliberately minimal, no dependencies beyond asyncio streams:

* ``https`` with :func:`ssl.create_default_context` (certificate and host name verified);
* plain ``http`` only to a loopback IP literal (``127.0.0.0/8``, ``::1``) and only when the caller
  passes ``allow_insecure_http=True`` (tests, ``veilgate dev-idp``);
* one request per connection (``Connection: close``), a total timeout, a bounded header block and
  body, ``Content-Length``, chunked and read-to-EOF bodies;
* redirects are **not** followed: a 3xx is returned to the caller like any other non-200 status.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_BYTES = 1 << 20
MAX_HEADER_BYTES = 32 * 1024
USER_AGENT = "veilgate-identity/1"


class HTTPError(Exception):
    """The request could not be made or the response was unusable (never holds a body)."""


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    status: int
    headers: Mapping[str, str]
    """Lower-cased header names; repeated headers joined with ``", "``."""
    body: bytes


def _is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure_http: bool = False) -> None:
    """Raise :class:`ValueError` unless ``url`` is one :func:`http_get` would fetch."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ValueError(f"URL scheme must be https: {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL must not carry credentials")
    if parts.scheme == "http":
        if not allow_insecure_http:
            raise ValueError(f"plain http is refused (set allow_insecure_http for tests): {url!r}")
        if not _is_loopback_literal(parts.hostname):
            raise ValueError(f"plain http is allowed only to a loopback IP literal: {url!r}")


_default_ssl: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """The shared verifying client context (created on first use; loads the CA bundle)."""
    global _default_ssl
    if _default_ssl is None:
        _default_ssl = ssl.create_default_context()
    return _default_ssl


async def _read_body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], max_bytes: int
) -> bytes:
    te = headers.get("transfer-encoding", "").lower()
    if te:
        if te != "chunked":
            raise HTTPError(f"unsupported transfer-encoding {te!r}")
        out = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            size_txt = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError:
                raise HTTPError("bad chunk size") from None
            if size < 0 or len(out) + size > max_bytes:
                raise HTTPError(f"response body over {max_bytes} bytes")
            if size == 0:
                # trailers, up to the blank line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise HTTPError("bad chunk terminator")
    length_txt = headers.get("content-length")
    if length_txt is not None:
        try:
            length = int(length_txt)
        except ValueError:
            raise HTTPError("bad content-length") from None
        if length < 0 or length > max_bytes:
            raise HTTPError(f"response body over {max_bytes} bytes")
        return await reader.readexactly(length)
    out = bytearray()
    while chunk := await reader.read(65536):
        out += chunk
        if len(out) > max_bytes:
            raise HTTPError(f"response body over {max_bytes} bytes")
    return bytes(out)


async def _request(
    method: str,
    url: str,
    max_bytes: int,
    allow_insecure_http: bool,
    accept: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTTPResponse:
    check_url(url, allow_insecure_http=allow_insecure_http)
    parts = urlsplit(url)
    host = parts.hostname
    assert host is not None
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{parts.port}"
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=default_ssl_context() if tls else None,
        server_hostname=host if tls else None,
        limit=MAX_HEADER_BYTES,
    )
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body is not None:
            extra += f"Content-Length: {len(body)}\r\n"
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Accept: {accept}\r\nAccept-Encoding: identity\r\nConnection: close\r\n"
            f"{extra}\r\n"
        )
        writer.write(request.encode("ascii") + (body or b""))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HTTPError("response header block too large") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        status_parts = lines[0].split(" ", 2)
        if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/1."):
            raise HTTPError("not an HTTP/1.x response")
        try:
            status = int(status_parts[1])
        except ValueError:
            raise HTTPError("bad status line") from None
        resp_headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPError("bad header line")
            key = name.strip().lower()
            value = value.strip()
            resp_headers[key] = f"{resp_headers[key]}, {value}" if key in resp_headers else value
        no_body = status in (204, 304) or method == "HEAD"
        data = b"" if no_body else await _read_body(reader, resp_headers, max_bytes)
        return HTTPResponse(status=status, headers=resp_headers, body=data)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise HTTPError(f"truncated response: {type(exc).__name__}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def http_get(
    url: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_insecure_http: bool = False,
    accept: str = "application/json",
) -> HTTPResponse:
    """GET ``url``; raise :class:`HTTPError` on connection, protocol, size or time-out errors.

    Any status code is returned (3xx included: redirects are not followed).
    :class:`ValueError` for a URL the policy above refuses.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _request("GET", url, max_bytes, allow_insecure_http, accept)
    except TimeoutError:
        raise HTTPError(f"timed out after {timeout_s:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise HTTPError(f"{type(exc).__name__}: {exc}") from None


async def http_post(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_insecure_http: bool = False,
) -> HTTPResponse:
    """POST ``body`` to ``url`` (same rules and errors as :func:`http_get`); header names and
    values must be plain ASCII without line breaks."""
    for k, v in (headers or {}).items():
        if any(c in k + v for c in "\r\n") or not (k + v).isascii():
            raise ValueError("header names and values must be ASCII without line breaks")
    try:
        async with asyncio.timeout(timeout_s):
            return await _request("POST", url, max_bytes, allow_insecure_http, "*/*", body, headers)
    except TimeoutError:
        raise HTTPError(f"timed out after {timeout_s:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise HTTPError(f"{type(exc).__name__}: {exc}") from None
