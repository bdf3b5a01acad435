"""Builders and parsers for the handshake messages the gateway speaks itself."""

from __future__ import annotations

import struct

import pytest

from veilgate.pgwire import wire


def _split(frame: bytes) -> tuple[bytes, bytes]:
    tag = frame[:1]
    (length,) = struct.unpack_from("!i", frame, 1)
    assert length == len(frame) - 1
    return tag, frame[5:]


def test_error_response_fields_roundtrip() -> None:
    frame = wire.error_response("FATAL", "28P01", 'password failed for "x"', "d", "h")
    tag, body = _split(frame)
    assert tag == b"E"
    assert wire.parse_error_fields(body) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": 'password failed for "x"',
        "D": "d",
        "H": "h",
    }
    assert body.endswith(b"\0\0")


def test_fatal_without_detail_or_hint() -> None:
    tag, body = _split(wire.fatal("08P01", "bad"))
    assert tag == b"E"
    assert set(wire.parse_error_fields(body)) == {"S", "V", "C", "M"}


def test_notice_response() -> None:
    tag, body = _split(wire.notice_response("01000", "hello"))
    assert tag == b"N"
    assert wire.parse_error_fields(body)["S"] == "NOTICE"


def test_parse_error_fields_unterminated() -> None:
    with pytest.raises(wire.WireError):
        wire.parse_error_fields(b"Mabc")


def test_auth_messages() -> None:
    assert wire.AUTHENTICATION_OK == b"R\0\0\0\x08\0\0\0\0"
    assert wire.AUTHENTICATION_CLEARTEXT_PASSWORD == b"R\0\0\0\x08\0\0\0\x03"
    req = wire.parse_auth_request(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
    assert req.code == wire.AUTH_SASL
    assert req.mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    with pytest.raises(wire.WireError):
        wire.parse_auth_request(b"\0\0")
    with pytest.raises(wire.WireError):
        _ = wire.parse_auth_request(b"\0\0\0\0").mechanisms


def test_password_message_roundtrip() -> None:
    tag, body = _split(wire.password_message("tök€n"))
    assert tag == b"p"
    assert wire.parse_password_message(body) == "tök€n"
    for bad in (b"", b"abc", b"a\0b\0", b"\xff\0"):
        with pytest.raises(wire.WireError):
            wire.parse_password_message(bad)


def test_sasl_messages() -> None:
    tag, body = _split(wire.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))
    assert tag == b"p"
    assert body == b"SCRAM-SHA-256\0" + struct.pack("!i", 11) + b"n,,n=,r=abc"
    assert _split(wire.sasl_response(b"c=biws"))[1] == b"c=biws"


def test_parameter_status_roundtrip() -> None:
    tag, body = _split(wire.parameter_status("TimeZone", "UTC"))
    assert tag == b"S"
    assert wire.parse_parameter_status(body) == ("TimeZone", "UTC")
    with pytest.raises(wire.WireError):
        wire.parse_parameter_status(b"a\0")


def test_backend_key_data_roundtrip() -> None:
    tag, body = _split(wire.backend_key_data(1234, b"\x01\x02\x03\x04"))
    assert tag == b"K"
    assert wire.parse_backend_key_data(body) == (1234, b"\x01\x02\x03\x04")
    long_key = bytes(range(32))
    assert wire.parse_backend_key_data(struct.pack("!i", 7) + long_key) == (7, long_key)
    with pytest.raises(wire.WireError):
        wire.parse_backend_key_data(b"\0\0\0\x01")


def test_ready_for_query() -> None:
    assert wire.ready_for_query(b"T") == b"Z\0\0\0\x05T"


def test_negotiate_protocol_version() -> None:
    tag, body = _split(wire.negotiate_protocol_version(3 << 16, ["_pq_.a", "_pq_.b"]))
    assert tag == b"v"
    assert body == struct.pack("!ii", 3 << 16, 2) + b"_pq_.a\0_pq_.b\0"


def test_startup_message_roundtrip() -> None:
    packet = wire.startup_message([("user", "u"), ("database", "d")], (3 << 16) | 2)
    assert wire.packet_code(packet) == (3 << 16) | 2
    parsed = wire.parse_startup_message(packet)
    assert (parsed.major, parsed.minor) == (3, 2)
    assert parsed.params == (("user", "u"), ("database", "d"))


def test_startup_message_no_params() -> None:
    parsed = wire.parse_startup_message(wire.startup_message([]))
    assert parsed.params == ()


@pytest.mark.parametrize(
    "packet",
    [
        b"\0\0\0\x04",
        struct.pack("!ii", 9, 3 << 16) + b"u",  # no terminator
        struct.pack("!ii", 15, 3 << 16) + b"u\0v\0w\0\0",  # name without value
        struct.pack("!ii", 11, 3 << 16) + b"\0\0\0",  # empty name
        struct.pack("!ii", 20, 3 << 16) + b"user\0x\0\0",  # length mismatch
        struct.pack("!ii", 15, 3 << 16) + b"u\0\xff\xfe\0\0\0",  # not UTF-8
    ],
)
def test_startup_message_malformed(packet: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_startup_message(packet)


def test_cancel_request_roundtrip() -> None:
    packet = wire.cancel_request(42, b"\xaa\xbb\xcc\xdd")
    assert len(packet) == 16
    assert wire.packet_code(packet) == wire.CANCEL_REQUEST_CODE
    assert wire.parse_cancel_request(packet) == wire.CancelPacket(42, b"\xaa\xbb\xcc\xdd")
    long_packet = wire.cancel_request(42, bytes(256))
    assert len(long_packet) == 268
    assert wire.parse_cancel_request(long_packet).key == bytes(256)
    with pytest.raises(wire.WireError):
        wire.parse_cancel_request(wire.cancel_request(42, bytes(257)))
    with pytest.raises(wire.WireError):
        wire.parse_cancel_request(packet[:12])


def test_ssl_request_constant() -> None:
    assert wire.SSL_REQUEST == b"\0\0\0\x08\x04\xd2\x16\x2f"
