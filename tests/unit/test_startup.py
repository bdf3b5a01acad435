"""Client startup: protocol version negotiation and the parameter allow-list."""

from __future__ import annotations

import struct

import pytest

from veilgate.gateway.startup import (
    FORWARDED_PARAMS,
    ApplicationName,
    StartupRefused,
    negotiate_startup,
    upstream_application_name,
)
from veilgate.pgwire import wire


def _packet(major: int, minor: int, **params: str) -> wire.StartupPacket:
    return wire.StartupPacket(major, minor, tuple(params.items()))


def test_plain_3_0() -> None:
    s = negotiate_startup(_packet(3, 0, user="agent", database="app", application_name="psql"))
    assert (s.user, s.database, s.application_name) == ("agent", "app", "psql")
    assert s.forwarded == ()
    assert s.negotiate is None


def test_database_defaults_to_user() -> None:
    assert negotiate_startup(_packet(3, 0, user="app")).database == "app"


def test_forwarded_params_keep_order_and_canonical_names() -> None:
    s = negotiate_startup(
        _packet(3, 0, user="u", timezone="UTC", client_encoding="UTF8", datestyle="ISO")
    )
    assert s.forwarded == (("TimeZone", "UTC"), ("client_encoding", "UTF8"), ("DateStyle", "ISO"))
    assert {name for name, _ in s.forwarded} <= FORWARDED_PARAMS


def _negotiated(msg: bytes) -> tuple[int, list[str]]:
    assert msg[:1] == b"v"
    version, n = struct.unpack_from("!ii", msg, 5)
    names = msg[13:].split(b"\0")[:n]
    return version, [x.decode() for x in names]


@pytest.mark.parametrize("minor", [1, 2, 9990, 9999])
def test_newer_minor_gets_negotiate_protocol_version(minor: int) -> None:
    s = negotiate_startup(_packet(3, minor, user="u"))
    assert s.negotiate is not None
    assert _negotiated(s.negotiate) == (3 << 16, [])


def test_pq_options_are_listed_and_ignored() -> None:
    s = negotiate_startup(
        wire.StartupPacket(3, 9999, (("user", "u"), ("_pq_.grease_a", "1"), ("_pq_.other", "x")))
    )
    assert s.negotiate is not None
    assert _negotiated(s.negotiate) == (3 << 16, ["_pq_.grease_a", "_pq_.other"])
    assert s.forwarded == ()


def test_pq_option_alone_at_3_0() -> None:
    s = negotiate_startup(wire.StartupPacket(3, 0, (("user", "u"), ("_pq_.x", "1"))))
    assert s.negotiate is not None
    assert _negotiated(s.negotiate) == (3 << 16, ["_pq_.x"])


@pytest.mark.parametrize("major", [2, 4, 1234])
def test_other_major_refused(major: int) -> None:
    with pytest.raises(StartupRefused) as ei:
        negotiate_startup(_packet(major, 0, user="u"))
    assert ei.value.code == "08P01"


@pytest.mark.parametrize(
    "name,value",
    [("replication", "database"), ("replication", "true"), ("options", "-c role=postgres")],
)
def test_replication_and_options_refused_28000(name: str, value: str) -> None:
    with pytest.raises(StartupRefused) as ei:
        negotiate_startup(wire.StartupPacket(3, 0, (("user", "u"), (name, value))))
    assert ei.value.code == "28000"
    assert name in ei.value.message


@pytest.mark.parametrize("name", ["search_path", "role", "session_authorization", "geqo"])
def test_unknown_params_refused_28000(name: str) -> None:
    with pytest.raises(StartupRefused) as ei:
        negotiate_startup(wire.StartupPacket(3, 0, (("user", "u"), (name, "x"))))
    assert ei.value.code == "28000"
    assert f'"{name}"' in ei.value.message


def test_missing_user_refused_28000() -> None:
    for packet in (_packet(3, 0, database="app"), _packet(3, 0, user="", database="app")):
        with pytest.raises(StartupRefused) as ei:
            negotiate_startup(packet)
        assert ei.value.code == "28000"


def test_duplicate_param_refused() -> None:
    with pytest.raises(StartupRefused):
        negotiate_startup(wire.StartupPacket(3, 0, (("user", "a"), ("user", "b"))))


def test_upstream_application_name_truncated_to_63_bytes() -> None:
    assert upstream_application_name("static:ci") == "veilgate(static:ci)"
    long = upstream_application_name("entra:" + "é" * 60)
    assert len(long.encode()) <= 63
    assert long.startswith("veilgate(entra:é")


def test_upstream_application_name_is_the_clients_own_untagged() -> None:
    assert upstream_application_name("static:ci", "psql") == "psql"
    assert upstream_application_name("static:ci", "é app") == "é app"
    # a client that gives none: DBAs see the principal
    assert upstream_application_name("static:ci", "") == "veilgate(static:ci)"
    assert upstream_application_name("static:ci", None) == "veilgate(static:ci)"


def test_upstream_application_name_tagged_keeps_the_clients_after_the_tag() -> None:
    assert upstream_application_name("static:ci", "psql", tagged=True) == "veilgate(static:ci) psql"
    assert upstream_application_name("static:ci", "", tagged=True) == "veilgate(static:ci)"


def _status(name: str, value: str) -> bytes:
    return wire.parameter_status(name, value)


def test_application_name_reported_to_the_client_as_its_own() -> None:
    frames = [_status("server_version", "15"), _status("application_name", "veilgate(s:x) ??-app")]
    app = ApplicationName.from_parameters(frames, "s:x", "é-app", tagged=True)
    # the server cleaned the non-ASCII bytes: the client is told what it would be told directly
    assert app.client == "??-app"
    assert app.client_frame(frames[1]) == _status("application_name", "??-app")
    assert app.client_frame(frames[0]) == frames[0]
    # a value the client set itself passes unchanged
    own = _status("application_name", "renamed")
    assert app.client_frame(own) == own
    none = ApplicationName.from_parameters(
        [_status("application_name", "veilgate(s:x)")], "s:x", None
    )
    assert none.client_frame(_status("application_name", "veilgate(s:x)")) == _status(
        "application_name", ""
    )


def test_application_name_untagged_is_the_servers_report() -> None:
    # untagged, the server was given the client's own value: its report (cleaned by the server,
    # as direct) is what the client sees, unchanged
    frames = [_status("application_name", "\\xc3\\xa9-app")]
    app = ApplicationName.from_parameters(frames, "s:x", "é-app")
    assert app.client_frame(frames[0]) == frames[0]
    own = _status("application_name", "renamed")
    assert app.client_frame(own) == own
