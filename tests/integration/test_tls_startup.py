"""TLS negotiation, startup packet policy and client authentication, as a client sees them."""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import subprocess
import time
from typing import Any

import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture
def gw(engine_gw: pw.Target) -> pw.Target:
    """Every test of this file against both TLS engines (``tls.engine``)."""
    return engine_gw


def _assert_session_works(c: pw.RawConn) -> None:
    assert c.scalar("select 40 + 2") == "42"


def _assert_gateway_serving(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        _assert_session_works(c)


# --- plaintext -----------------------------------------------------------------------------------


def test_plaintext_startup_refused_before_any_password_request(gw: pw.Target) -> None:
    with pw.RawConn.open(gw.host, gw.port) as c:
        c.send(pw.startup_message({"user": gw.user, "database": gw.dbname}))
        msgs = c.recv_all_until_close()
    assert msgs, "the gateway closed the connection without an error message"
    assert [m.tag for m in msgs] == ["E"], f"expected only an ErrorResponse, got {msgs}"
    fields = pw.error_fields(msgs[0].body)
    assert fields["V"] == "FATAL"
    assert fields["C"] == "28000"
    assert fields["M"]


def test_libpq_sslmode_disable_fails_with_the_28000_error(gw: pw.Target) -> None:
    with pw.RawConn.open(gw.host, gw.port) as c:
        c.send(pw.startup_message({"user": gw.user, "database": gw.dbname}))
        expected = pw.error_fields(c.recv().body)["M"]
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.conninfo(sslmode="disable"))
    assert expected in str(ei.value)


# --- SSLRequest ----------------------------------------------------------------------------------


def _client_hello(gw: pw.Target) -> bytes:
    """The bytes of a real TLS ClientHello for the gateway (what an injector would pipeline)."""
    ctx = pw.client_tls_context(gw.ca_file, [pw.ALPN_POSTGRESQL])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=gw.server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    return hello


@pytest.mark.parametrize("stuffing", ["startup", "client_hello"])
def test_bytes_pipelined_after_sslrequest_abort_the_connection(
    gw: pw.Target, stuffing: str
) -> None:
    extra = (
        pw.startup_message({"user": gw.user, "database": gw.dbname})
        if stuffing == "startup"
        else _client_hello(gw)
    )
    with pw.RawConn.open(gw.host, gw.port) as c:
        c.send(pw.ssl_request() + extra)
        received = bytearray()
        try:
            while True:
                received += c.read_bytes(1, timeout=10)
        except pw.ConnectionClosed:
            pass
        except TimeoutError:
            pytest.fail(f"connection not aborted after 10 s; received {bytes(received[:40])!r}")
    # Whatever the gateway said (nothing, or an 'S' then an error), no TLS session began: no
    # ServerHello (record type 0x16) and no authentication request.
    rest = bytes(received[1:]) if received[:1] == b"S" else bytes(received)
    assert b"\x16\x03" not in rest, f"the gateway started TLS on stuffed input: {rest[:40]!r}"
    pw.assert_fatal_or_nothing(rest)
    _assert_gateway_serving(gw)


def test_gssencrequest_gets_n_then_sslrequest_works(gw: pw.Target) -> None:
    with pw.RawConn.open(gw.host, gw.port) as c:
        c.send(pw.gssenc_request())
        assert c.read_bytes(1) == b"N"
        assert c.request_ssl() == b"S"
        c.start_tls(gw.ca_file, gw.server_hostname)
        c.startup(gw.endpoint().params(), password=gw.password)
        _assert_session_works(c)


def test_sslrequest_path_works_without_alpn(gw: pw.Target) -> None:
    """asyncpg sends no ALPN on the SSLRequest path; the gateway must not require it there."""
    with pw.open_tls(gw.endpoint(), alpn=None) as c:
        c.startup(gw.endpoint().params(), password=gw.password)
        _assert_session_works(c)


def test_second_sslrequest_inside_tls_is_refused(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.ssl_request())
        msgs = c.recv_all_until_close(timeout=10)
        assert all(m.tag == "E" for m in msgs), msgs
        assert not any(m.tag == "R" for m in msgs)
    _assert_gateway_serving(gw)


# --- direct TLS ----------------------------------------------------------------------------------


def test_libpq_direct_tls_negotiation(gw: pw.Target) -> None:
    assert psycopg.pq.version() >= 170000, "the bundled libpq must support sslnegotiation"
    with psycopg.connect(gw.conninfo(sslnegotiation="direct")) as conn:
        assert conn.execute("select 'direct'").fetchone() == ("direct",)
        assert conn.info.pgconn.ssl_in_use


def test_raw_direct_tls_with_alpn(gw: pw.Target) -> None:
    with pw.open_direct_tls(gw.endpoint(), alpn=[pw.ALPN_POSTGRESQL]) as c:
        assert c.selected_alpn == pw.ALPN_POSTGRESQL
        c.startup(gw.endpoint().params(), password=gw.password)
        _assert_session_works(c)


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "wrong-alpn"])
def test_direct_tls_without_postgresql_alpn_is_refused(
    gw: pw.Target, alpn: list[str] | None
) -> None:
    c = pw.RawConn.open(gw.host, gw.port)
    try:
        try:
            c.start_tls(gw.ca_file, gw.server_hostname, alpn)
        except (ssl.SSLError, pw.ConnectionClosed, ConnectionError):
            return  # refused during the handshake (e.g. no_application_protocol alert)
        # Handshake completed: the gateway must still refuse to go on.
        try:
            c.send(pw.startup_message(gw.endpoint().params()))
        except OSError:
            return
        msgs = c.recv_all_until_close(timeout=10)
        assert not any(m.tag == "R" for m in msgs), f"authentication offered: {msgs}"
        assert all(m.tag == "E" for m in msgs), msgs
    finally:
        c.close()
    _assert_gateway_serving(gw)


# --- protocol versions ---------------------------------------------------------------------------


def _negotiated(msgs: list[pw.Msg]) -> tuple[int, list[str]]:
    assert msgs[0].tag == "v", f"expected NegotiateProtocolVersion first, got {msgs}"
    assert sum(1 for m in msgs if m.tag == "v") == 1
    return pw.negotiate_protocol_version(msgs[0].body)


def test_protocol_3_2_gets_negotiate_protocol_version(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        msgs = c.startup(
            gw.endpoint().params(), password=gw.password, version=pw.protocol_version(3, 2)
        )
        version, options = _negotiated(msgs)
        assert version >> 16 == 3
        assert version & 0xFFFF < 2  # otherwise no negotiation was needed
        assert version & 0xFFFF != 1  # 3.1 is reserved
        assert options == []
        assert c.backend_key is not None
        if version & 0xFFFF == 0:
            assert len(c.backend_key[1]) == 4
        _assert_session_works(c)


def test_greased_version_and_pq_options_get_negotiate_protocol_version(gw: pw.Target) -> None:
    minor = 9990 + secrets.randbelow(10)
    grease = {f"_pq_.grease_{secrets.token_hex(4)}": secrets.token_hex(3) for _ in range(3)}
    with pw.open_tls(gw.endpoint()) as c:
        msgs = c.startup(
            {**gw.endpoint().params(), **grease},
            password=gw.password,
            version=pw.protocol_version(3, minor),
        )
        version, options = _negotiated(msgs)
        assert version >> 16 == 3
        assert (version & 0xFFFF) in (0, 2)
        assert sorted(options) == sorted(grease)
        _assert_session_works(c)


def test_pq_option_alone_gets_negotiate_protocol_version(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        msgs = c.startup(
            {**gw.endpoint().params(), "_pq_.unknown_feature": "on"}, password=gw.password
        )
        version, options = _negotiated(msgs)
        assert version == pw.protocol_version(3, 0)
        assert options == ["_pq_.unknown_feature"]
        _assert_session_works(c)


def test_libpq_max_protocol_version_3_2_accepts_the_downgrade(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo(max_protocol_version="3.2")) as conn:
        assert conn.execute("select 7").fetchone() == (7,)
        assert conn.info.pgconn.protocol_version == 3
        assert conn.info.pgconn.full_protocol_version == 30000  # libpq: major * 10000 + minor


@pytest.mark.parametrize("version", [(2, 0), (4, 0), (1234, 5678)])
def test_unsupported_major_version_is_refused(gw: pw.Target, version: tuple[int, int]) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params(), pw.protocol_version(*version)))
        received = bytearray()
        try:
            while True:
                received += c.read_bytes(1, timeout=10)
        except pw.ConnectionClosed:
            pass
    # An error (FATAL, as PostgreSQL sends it) or a plain close; never an auth request.
    pw.assert_fatal_or_nothing(bytes(received))
    _assert_gateway_serving(gw)


# --- startup parameters --------------------------------------------------------------------------


def _startup_error(gw: pw.Target, params: dict[str, str]) -> dict[str, str]:
    with pw.open_tls(gw.endpoint()) as c:
        msgs = c.startup(params, password=gw.password, raise_on_error=False)
        err = pw.first_error(msgs)
        assert err is not None, f"startup with {params} succeeded: {msgs}"
        assert not any(m.tag == "R" and pw.auth_code(m.body) == 0 for m in msgs)
        c.expect_close()
        return err


@pytest.mark.parametrize(
    "extra",
    [
        {"replication": "database"},
        {"replication": "true"},
        {"options": "-c role=postgres"},
        {"options": "-c default_transaction_read_only=off"},
    ],
    ids=["replication-database", "replication-true", "options-role", "options-readonly"],
)
def test_replication_and_options_refused_28000(gw: pw.Target, extra: dict[str, str]) -> None:
    err = _startup_error(gw, {**gw.endpoint().params(), **extra})
    assert err["V"] == "FATAL"
    assert err["C"] == "28000"
    _assert_gateway_serving(gw)


def test_libpq_options_refused(gw: pw.Target) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.conninfo(options="-c role=postgres"))
    assert "options" in str(ei.value)


def test_missing_user_is_an_error(gw: pw.Target) -> None:
    err = _startup_error(gw, {"database": gw.dbname})
    assert err["V"] == "FATAL"
    assert err["C"].startswith(("28", "08"))


def test_unknown_database_3d000(gw: pw.Target) -> None:
    err = _startup_error(
        gw, gw.endpoint().params(database="no_such_target_" + secrets.token_hex(3))
    )
    assert err["V"] == "FATAL"
    assert err["C"] == "3D000"


def test_unknown_database_libpq(gw: pw.Target) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.conninfo(dbname="no_such_target"))
    assert "no_such_target" in str(ei.value)


# --- authentication ------------------------------------------------------------------------------


def test_bad_token_28p01_postgres_wording(gw: pw.Target) -> None:
    user = "agent-" + secrets.token_hex(2)
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params(user=user)))
        m = c.recv()
        assert m.tag == "R" and pw.auth_code(m.body) == 3  # AuthenticationCleartextPassword
        c.send(pw.password_message("not-the-token-" + secrets.token_hex(8)))
        msgs = c.recv_all_until_close()
    assert len(msgs) == 1 and msgs[0].tag == "E", msgs
    fields = pw.error_fields(msgs[0].body)
    assert fields["V"] == "FATAL"
    assert fields["C"] == "28P01"
    assert fields["M"] == f'password authentication failed for user "{user}"'
    # Details stay in the gateway log.
    assert "D" not in fields


def test_bad_token_libpq(gw: pw.Target) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.conninfo(with_password=False, password="wrong-token"))
    assert f'password authentication failed for user "{gw.user}"' in str(ei.value)


def test_empty_password_refused(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params()))
        assert pw.auth_code(c.recv().body) == 3
        c.send(pw.password_message(""))
        msgs = c.recv_all_until_close()
    err = pw.first_error(msgs)
    assert err is not None and err["V"] == "FATAL"
    assert err["C"] in ("28P01", "08P01")


def test_long_wrong_token_under_the_cap_is_an_auth_failure(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params()))
        assert pw.auth_code(c.recv().body) == 3
        c.send(pw.password_message("x" * 60000))
        msgs = c.recv_all_until_close()
    err = pw.first_error(msgs)
    assert err is not None and err["C"] == "28P01", msgs


def test_password_message_over_64k_refused(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params()))
        assert pw.auth_code(c.recv().body) == 3
        with contextlib.suppress(OSError):  # closed while we were still sending: refused
            c.send(pw.password_message(gw.password + "y" * (70 * 1024)))
        msgs = c.recv_all_until_close()
    assert not any(m.tag in "RZ" for m in msgs), f"session started: {msgs}"
    if msgs:
        err = pw.first_error(msgs)
        assert err is not None and err["V"] == "FATAL"
        assert err["C"] in ("08P01", "28P01")
    _assert_gateway_serving(gw)


def test_libpq_require_auth_scram_refused_by_the_client(gw: pw.Target) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.conninfo(require_auth="scram-sha-256"))
    assert "server requested a cleartext password" in str(ei.value)


def test_libpq_require_auth_password_works(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo(require_auth="password")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_libpq_channel_binding_require_refused_by_the_client(gw: pw.Target) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(gw.conninfo(channel_binding="require"))
    assert "channel binding" in str(ei.value)


def test_startup_reports_parameters_and_own_backend_key(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        for name in ("server_version", "client_encoding", "standard_conforming_strings"):
            assert name in c.parameters, c.parameters
        assert c.backend_key is not None
        _pid, key = c.backend_key
        assert len(key) == 4
        _assert_session_works(c)


def test_tcp_nodelay_small_query_roundtrip_is_fast(gw: pw.Target) -> None:
    """Nagle + delayed ACK would add ~40 ms per pipelined small message; 20 round trips of a
    two-message request must stay well below that."""
    with pw.connect(gw.endpoint()) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.simple("select 1")
        t0 = time.perf_counter()
        for _ in range(20):
            c.send(pw.parse("", "select 1"))
            c.send(pw.bind("", "") + pw.execute() + pw.sync())
            assert pw.frames(c.recv_until_ready()) == "12DCZ"
        elapsed = time.perf_counter() - t0
    assert elapsed < 20 * 0.03, f"{elapsed * 1000 / 20:.1f} ms per round trip"


# --- identity and parameters ---------------------------------------------------------------------


def test_startup_user_does_not_select_the_upstream_role(gw: pw.Target, gateway: object) -> None:
    with pw.connect(gw.endpoint(), params={"user": "postgres"}) as c:
        role = c.scalar("select current_user")
        assert role != "postgres"
        assert c.scalar("select rolsuper::text from pg_roles where rolname = current_user") == (
            "false"
        )
    with pw.connect(gw.endpoint(), params={"user": "someone-else"}) as c:
        assert c.scalar("select current_user") == role


def test_upstream_application_name_is_the_clients_or_the_principals(
    gw: pw.Target, gateway: object
) -> None:
    names = [t.name for t in gateway.config.auth.static_tokens]  # type: ignore[attr-defined]
    with pw.connect(gw.endpoint(), params={"application_name": "my-agent"}) as c:
        assert c.scalar("select current_setting('application_name')") == "my-agent"
    with pw.connect(gw.endpoint()) as c:
        upstream_name = c.scalar("select current_setting('application_name')") or ""
    assert upstream_name.startswith("veilgate(")
    assert any(n in upstream_name for n in names), upstream_name


def test_unlisted_startup_parameter_never_reaches_the_server(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        msgs = c.startup(
            {**gw.endpoint().params(), "search_path": "evil, public"},
            password=gw.password,
            raise_on_error=False,
        )
        err = pw.first_error(msgs)
        if err is not None:  # refused: must be an authorization-class FATAL
            assert err["V"] == "FATAL" and err["C"] == "28000"
        else:  # or dropped
            assert c.scalar("show search_path") != "evil, public"


def test_plaintext_garbage_after_s_instead_of_a_client_hello(gw: pw.Target) -> None:
    with pw.RawConn.open(gw.host, gw.port) as c:
        assert c.request_ssl() == b"S"
        c.send(pw.startup_message(gw.endpoint().params()))
        received = bytearray()
        try:
            while True:
                received += c.read_bytes(1, timeout=10)
        except pw.ConnectionClosed:
            pass
        # a TLS alert at most; never a PostgreSQL message in plaintext
        assert received[:1] in (b"", b"\x15"), bytes(received[:20])
    _assert_gateway_serving(gw)


def test_direct_tls_then_sslrequest_is_refused(gw: pw.Target) -> None:
    with pw.open_direct_tls(gw.endpoint()) as c:
        c.send(pw.ssl_request())
        msgs = c.recv_all_until_close(timeout=10)
        assert not any(m.tag == "R" for m in msgs), msgs
    _assert_gateway_serving(gw)


def test_query_pipelined_with_the_password(gw: pw.Target) -> None:
    """Messages that arrive with the password (before AuthenticationOk) run once the session
    is up, as PostgreSQL does."""
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params()))
        assert pw.auth_code(c.recv().body) == 3
        c.send(pw.password_message(gw.password) + pw.query("select 'pipelined'"))
        first = c.recv_until_ready(timeout=15)  # the startup's ReadyForQuery
        assert pw.first_error(first) is None, first
        second = c.recv_until_ready(timeout=15)
        assert pw.frames(second) == "TDCZ"
        assert pw.data_row(second[1].body) == [b"pipelined"]


def test_authenticated_idle_session_outlives_the_handshake_timeout(gateway_factory: Any) -> None:
    from dataclasses import replace

    quick = gateway_factory(
        transform=lambda cfg: replace(cfg, listen=replace(cfg.listen, handshake_timeout_s=1.0))
    )
    t = pw.gateway_target(quick)
    with pw.connect(t.endpoint()) as c:
        assert c.no_message_within(2.0)
        assert c.scalar("select 'alive'") == "alive"


def _socket_timer(local_port: int, peer_port: int | None = None) -> str:
    """The kernel timer of an established socket (``ss -o``); it shows ``keepalive`` once the
    connection is quiet (an in-flight retransmission timer takes precedence)."""
    flt = f"( sport = :{local_port} )"
    if peer_port is not None:
        flt = f"( sport = :{local_port} and dport = :{peer_port} )"
    out = ""
    for _ in range(40):
        out = subprocess.run(
            ["ss", "-tnoH", "state", "established", flt],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if "keepalive" in out:
            break
        time.sleep(0.05)
    assert out.strip(), f"no established socket for {flt}"
    return out


def test_keepalive_on_client_and_upstream_sockets(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        sql = "select client_port from pg_stat_activity where pid = pg_backend_pid()"
        upstream_local = int(c.scalar(sql) or 0)
        assert upstream_local > 0
        # the gateway's accepted socket: local port = the gateway's, peer = our port
        out = _socket_timer(gw.port, c.sock.getsockname()[1])
        assert "keepalive" in out, f"client-side socket without SO_KEEPALIVE: {out!r}"
        # the gateway's upstream socket: its local port is what the server sees as client_port
        out = _socket_timer(upstream_local)
        assert "keepalive" in out, f"upstream socket without SO_KEEPALIVE: {out!r}"


def test_upstream_connection_is_tls(gw: pw.Target) -> None:
    """The gateway's own connection to the server is encrypted (verify-full in the fixture)."""
    with pw.connect(gw.endpoint()) as c:
        rows = c.rows("select ssl::text, version from pg_stat_ssl where pid = pg_backend_pid()")
    assert rows and rows[0][0] == b"true", rows
    assert rows[0][1] in (b"TLSv1.2", b"TLSv1.3")


def test_tls12_client(gw: pw.Target) -> None:
    c = pw.RawConn.open(gw.host, gw.port)
    with c:
        assert c.request_ssl() == b"S"
        ctx = pw.client_tls_context(gw.ca_file)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        c.sock = ctx.wrap_socket(c.sock, server_hostname=gw.server_hostname)
        assert c.sock.version() == "TLSv1.2"
        c.startup(gw.endpoint().params(), password=gw.password)
        _assert_session_works(c)
