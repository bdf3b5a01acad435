"""PolicyEnforcer: text the policy cannot parse goes upstream as a parse probe, without a server.

The client must get the server's own parse error (tests/integration/test_sqlstate_fidelity.py);
here: what goes upstream, and which server errors are forwarded or replaced."""

from __future__ import annotations

import struct

from tests.unit.test_enforce_stale_portals import _Harness, _Msg, _parse

from veilgate.gateway import enforce
from veilgate.pgwire import wire


def _error(**fields: str) -> _Msg:
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    return _Msg(b"E", body)


def _probe_params(frame: bytes) -> int:
    body = frame[5:]
    name_end = body.index(b"\0")
    text_end = body.index(b"\0", name_end + 1)
    (k,) = struct.unpack_from("!H", body, text_end + 1)
    assert len(body) == text_end + 3 + 4 * k
    return k


def test_unparseable_query_becomes_a_parse_and_sync() -> None:
    h = _Harness()
    out = h.send(_Msg(b"Q", b"selec $1, $2 from x\0"))
    assert out[:1] == b"P" and out.endswith(wire.frame(b"S", b""))
    probe = out[: -len(wire.frame(b"S", b""))]
    assert probe[5:].startswith(b"\0selec $1, $2 from x\0")  # unnamed, the text verbatim
    assert _probe_params(probe) == 3  # one parameter more than the text refers to


def test_unparseable_parse_keeps_the_clients_statement_name() -> None:
    h = _Harness()
    out = h.send(_parse("s1", "selec 1"))
    assert out[5:].startswith(b"s1\0selec 1\0")
    assert _probe_params(out) == 1
    assert not out.endswith(wire.frame(b"S", b""))


def test_servers_parse_error_is_forwarded_as_is() -> None:
    h = _Harness()
    h.send(_Msg(b"Q", b"selec 1\0"))
    err = _error(S="ERROR", C="42601", M='syntax error at or near "selec"', P="1", F="scan.l")
    assert h.enforcer.server_message(err) == err.frame()
    assert h.enforcer.outstanding == 0


def test_probe_the_server_parsed_gets_the_policy_denial() -> None:
    h = _Harness()
    h.send(_Msg(b"Q", b"selec 1\0"))
    err = _error(
        S="ERROR",
        C="42P18",
        M="could not determine data type of parameter $1",
        F="postgres.c",
        R="pg_analyze_and_rewrite_varparams",
    )
    out = h.enforcer.server_message(err)
    fields = wire.parse_error_fields(out[5:])
    assert fields["C"] == "42501" and "rule unparseable" in fields["D"]
    assert h.enforcer.outstanding == 0


def test_other_errors_pass_while_a_probe_is_outstanding() -> None:
    h = _Harness()
    h.send(_Msg(b"Q", b"selec 1\0"))
    err = _error(S="ERROR", C="25P02", M="current transaction is aborted", F="postgres.c")
    assert h.enforcer.server_message(err) == err.frame()
    assert h.enforcer.outstanding == 1


def test_text_referring_to_every_parameter_number_is_denied_by_the_policy() -> None:
    text = " ".join(f"${i}" for i in range(1, 65536)).encode()
    assert enforce.parse_probe(b"", text) is None
