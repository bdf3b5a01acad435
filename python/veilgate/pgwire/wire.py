"""PostgreSQL wire-format builders and parsers for the messages the gateway itself speaks.

Only handshake-time messages live here (the relay never builds Python objects per message).
Builders return whole frames (tag + Int32 length + body); parsers take a message *body*.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Untagged first-packet codes (Int32 after the length).
PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

SSL_REQUEST = struct.pack("!ii", 8, SSL_REQUEST_CODE)

# Authentication request codes ('R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_I32x2 = struct.Struct("!ii")
_I32x3 = struct.Struct("!iii")


class WireError(ValueError):
    """A handshake message that does not parse."""


def frame(tag: bytes, body: bytes) -> bytes:
    """One tagged message: ``tag`` (1 byte), Int32 length (body + 4), body."""
    return tag + _I32.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\0"


# --- errors and notices ------------------------------------------------------------------------


def _fields(
    severity: str,
    code: str,
    message: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    parts = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(code), b"M" + cstr(message)]
    if detail:
        parts.append(b"D" + cstr(detail))
    if hint:
        parts.append(b"H" + cstr(hint))
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    severity: str,
    code: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse ('E') with fields S, V, C, M and optional D, H."""
    return frame(b"E", _fields(severity, code, message, detail, hint))


def fatal(code: str, message: str, detail: str | None = None, hint: str | None = None) -> bytes:
    return error_response("FATAL", code, message, detail, hint)


def notice_response(
    code: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
    severity: str = "NOTICE",
) -> bytes:
    """NoticeResponse ('N'), same fields as ErrorResponse."""
    return frame(b"N", _fields(severity, code, message, detail, hint))


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body, keyed by the one-letter field type."""
    out: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n:
        ftype = body[pos]
        if ftype == 0:
            return out
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise WireError("unterminated error field")
        out[chr(ftype)] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    raise WireError("error fields not terminated")


# --- authentication ----------------------------------------------------------------------------


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return frame(b"R", _I32.pack(code) + payload)


AUTHENTICATION_OK = auth_request(AUTH_OK)
AUTHENTICATION_CLEARTEXT_PASSWORD = auth_request(AUTH_CLEARTEXT)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    code: int
    payload: bytes

    @property
    def mechanisms(self) -> list[str]:
        """Mechanism names of an AuthenticationSASL request."""
        if self.code != AUTH_SASL:
            raise WireError("not an AuthenticationSASL request")
        return [m.decode() for m in self.payload.split(b"\0") if m]


def parse_auth_request(body: bytes) -> AuthRequest:
    """Body of an 'R' message."""
    if len(body) < 4:
        raise WireError("short authentication request")
    (code,) = _I32.unpack_from(body)
    return AuthRequest(code, body[4:])


def password_message(password: str) -> bytes:
    return frame(b"p", cstr(password))


def parse_password_message(body: bytes) -> str:
    """The NUL-terminated string of a PasswordMessage body."""
    if not body or body[-1] != 0 or body.find(b"\0") != len(body) - 1:
        raise WireError("invalid password packet")
    try:
        return body[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("password is not valid UTF-8") from exc


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


# --- session start ------------------------------------------------------------------------------


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = body.split(b"\0")
    if len(parts) != 3 or parts[2] != b"":
        raise WireError("invalid ParameterStatus")
    return parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")


def backend_key_data(pid: int, key: bytes) -> bytes:
    return frame(b"K", _I32.pack(pid) + key)


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8 or len(body) > 4 + 256:
        raise WireError("invalid BackendKeyData")
    (pid,) = _I32.unpack_from(body)
    return pid, body[4:]


def ready_for_query(status: bytes = b"I") -> bytes:
    return frame(b"Z", status)


def negotiate_protocol_version(version: int, unrecognised: Sequence[str]) -> bytes:
    """NegotiateProtocolVersion ('v'): the newest version supported for the requested major, as
    PostgreSQL and libpq encode it (the whole ``major << 16 | minor``), and the protocol options
    (``_pq_.*``) that were not recognised."""
    body = _I32x2.pack(version, len(unrecognised)) + b"".join(cstr(o) for o in unrecognised)
    return frame(b"v", body)


def startup_message(params: Iterable[tuple[str, str]], version: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, key: bytes) -> bytes:
    return _I32x3.pack(16 - 4 + len(key), CANCEL_REQUEST_CODE, pid) + key


TERMINATE = frame(b"X", b"")


# --- untagged first packets ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupPacket:
    """A parsed StartupMessage: the requested protocol version and its parameters, in order."""

    major: int
    minor: int
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CancelPacket:
    pid: int
    key: bytes


def packet_code(packet: bytes) -> int:
    """The Int32 after the length of an untagged packet (version or request code)."""
    if len(packet) < 8:
        raise WireError("short startup packet")
    return int(_I32.unpack_from(packet, 4)[0])


def parse_cancel_request(packet: bytes) -> CancelPacket:
    """A whole CancelRequest (length included): 16 bytes, or up to 12 + 256 with a 3.2 long key."""
    if len(packet) < 16 or len(packet) > 12 + 256:
        raise WireError("invalid CancelRequest length")
    length, code, pid = _I32x3.unpack_from(packet)
    if length != len(packet) or code != CANCEL_REQUEST_CODE:
        raise WireError("invalid CancelRequest")
    return CancelPacket(pid, bytes(packet[12:]))


def parse_startup_message(packet: bytes) -> StartupPacket:
    """A whole StartupMessage (length included) → version and parameters.

    Raises :class:`WireError` on a malformed packet (PostgreSQL: "invalid startup packet layout").
    """
    if len(packet) < 8:
        raise WireError("invalid length of startup packet")
    (length,) = _I32.unpack_from(packet)
    if length != len(packet):
        raise WireError("invalid length of startup packet")
    version = packet_code(packet)
    major, minor = (version >> 16) & 0xFFFF, version & 0xFFFF
    body = packet[8:]
    if not body or body[-1] != 0:
        raise WireError("invalid startup packet layout: expected terminator as last byte")
    params: list[tuple[str, str]] = []
    parts = body[:-1].split(b"\0")
    # body[:-1] ends with the last value's NUL, so the split ends with an empty string
    if parts == [b""]:
        return StartupPacket(major, minor, ())
    if len(parts) % 2 != 1 or parts[-1] != b"":
        raise WireError("invalid startup packet layout: expected terminator as last byte")
    try:
        for i in range(0, len(parts) - 1, 2):
            name = parts[i].decode("utf-8")
            if not name:
                raise WireError("invalid startup packet layout: empty parameter name")
            params.append((name, parts[i + 1].decode("utf-8")))
    except UnicodeDecodeError as exc:
        raise WireError("invalid byte sequence in startup packet") from exc
    return StartupPacket(major, minor, tuple(params))
