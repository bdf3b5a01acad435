"""Failures on either side and malformed input: clean errors, and the gateway keeps serving."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

BIG_QUERY = "select g, repeat('x', 1000) from generate_series(1, 3000000) g"


@pytest.fixture
def admin(gateway: object, pg_cluster: object) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection straight to the cluster."""
    with psycopg.connect(pw.superuser_target(pg_cluster).conninfo(), autocommit=True) as conn:
        yield conn


def _assert_gateway_serving(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.scalar("select 'still serving'") == "still serving"


def _backend_alive(admin: psycopg.Connection[Any], pid: int) -> bool:
    row = admin.execute("select count(*) from pg_stat_activity where pid = %s", (pid,)).fetchone()
    return bool(row and row[0])


def _wait_gone(admin: psycopg.Connection[Any], pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _backend_alive(admin, pid):
            return True
        time.sleep(0.05)
    return False


def _upstream_pid(c: pw.RawConn) -> int:
    return int(c.scalar("select pg_backend_pid()") or 0)


# --- upstream failures ---------------------------------------------------------------------------


def test_upstream_terminated_mid_result(gw: pw.Target, admin: psycopg.Connection[Any]) -> None:
    with pw.connect(gw.endpoint()) as c:
        pid = _upstream_pid(c)
        c.send(pw.query(BIG_QUERY))
        first = [c.recv() for _ in range(200)]
        assert pw.frames(first) == "T" + "D" * 199
        assert admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        t0 = time.monotonic()
        rest = c.recv_all_until_close(timeout=30)
        elapsed = time.monotonic() - t0
    tags = pw.frames(rest)
    assert elapsed < 20, "the client connection was not closed after the upstream died"
    assert set(tags) <= {"D", "E", "N"}, f"unexpected messages after the kill: {set(tags)}"
    assert "Z" not in tags and "C" not in tags  # the result must not look complete
    errors = [pw.error_fields(m.body) for m in rest if m.tag == "E"]
    for err in errors:
        assert err["V"] == "FATAL"
        assert err["C"] in ("57P01", "08006", "08000", "08003")
    assert _wait_gone(admin, pid)
    _assert_gateway_serving(gw)


def test_upstream_terminated_while_idle(gw: pw.Target, admin: psycopg.Connection[Any]) -> None:
    with pw.connect(gw.endpoint()) as c:
        pid = _upstream_pid(c)
        admin.execute("select pg_terminate_backend(%s)", (pid,))
        msgs = c.recv_all_until_close(timeout=15)
        assert msgs, "the client was not told why its connection ended"
        err = pw.error_fields(msgs[0].body)
        assert msgs[0].tag == "E" and err["V"] == "FATAL"
        assert err["C"] == "57P01"
        assert err["M"] == "terminating connection due to administrator command"
    _assert_gateway_serving(gw)


def test_psycopg_upstream_terminated_mid_result(
    gw: pw.Target, admin: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(gw.conninfo()) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with pytest.raises(psycopg.OperationalError), conn.cursor(name="big") as cur:
            cur.itersize = 2000
            cur.execute(BIG_QUERY)
            for i, _row in enumerate(cur):
                if i == 5000:
                    admin.execute("select pg_terminate_backend(%s)", (pid,))
        assert conn.closed or conn.broken
    _assert_gateway_serving(gw)


# --- client failures -----------------------------------------------------------------------------


def _abort(c: pw.RawConn) -> None:
    """Close with RST (SO_LINGER 0): a client killed mid-stream."""
    raw = c.sock
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_client_killed_mid_result_closes_the_upstream(
    gw: pw.Target, admin: psycopg.Connection[Any], how: str
) -> None:
    c = pw.connect(gw.endpoint())
    pid = _upstream_pid(c)
    c.send(pw.query(BIG_QUERY))
    for _ in range(100):
        assert c.recv().tag in "TD"
    time.sleep(0.3)  # let the buffers on the way fill up: the upstream blocks on a full socket
    assert _backend_alive(admin, pid)
    if how == "rst":
        _abort(c)
    else:
        c.close()
    assert _wait_gone(admin, pid), "the upstream backend outlived its client"
    _assert_gateway_serving(gw)


def test_client_disconnect_during_long_query(gw: pw.Target, admin: psycopg.Connection[Any]) -> None:
    c = pw.connect(gw.endpoint())
    pid = _upstream_pid(c)
    # A sleeping backend only notices its socket closing if it checks: make it check often, so
    # the backend's exit shows that the gateway closed the upstream connection.
    c.rows("set client_connection_check_interval = '100ms'")
    c.send(pw.query("select pg_sleep(60)"))
    time.sleep(0.3)
    c.close()
    assert _wait_gone(admin, pid, timeout=15)
    _assert_gateway_serving(gw)


def test_client_terminate_closes_the_upstream(
    gw: pw.Target, admin: psycopg.Connection[Any]
) -> None:
    c = pw.connect(gw.endpoint())
    pid = _upstream_pid(c)
    c.terminate()
    assert _wait_gone(admin, pid)


# --- malformed input -----------------------------------------------------------------------------


def _expect_protocol_violation(c: pw.RawConn) -> None:
    msgs = c.recv_all_until_close(timeout=15)
    assert msgs, "closed without an error"
    assert [m.tag for m in msgs] == ["E"], msgs
    err = pw.error_fields(msgs[0].body)
    assert err["V"] == "FATAL"
    assert err["C"] == "08P01"


@pytest.mark.parametrize(
    "frame",
    [
        b"Q" + struct.pack("!I", (1 << 30) + 5),  # above max_message_bytes (1 GiB)
        b"Q" + struct.pack("!I", 0xFFFFFFF0),  # negative as Int32
        b"Q" + struct.pack("!I", 3),  # length < 4
        b"P" + struct.pack("!I", 0),
        b"X" + struct.pack("!I", 1),
    ],
    ids=["over-max", "negative", "len-3", "len-0", "terminate-len-1"],
)
def test_bad_length_fatal_08p01(gw: pw.Target, frame: bytes) -> None:
    with pw.connect(gw.endpoint()) as c:
        c.send(frame)
        _expect_protocol_violation(c)
    _assert_gateway_serving(gw)


def test_message_over_configured_limit(gateway_factory: Any) -> None:
    from veilgate.config_model import LimitsConfig

    small = gateway_factory(limits=LimitsConfig(max_message_bytes=1 << 20))
    t = pw.gateway_target(small)
    with pw.connect(t.endpoint()) as c:
        # Under the limit: fine.
        assert c.scalar("select length('" + "a" * 500_000 + "')") == "500000"
        # Over it: refused at the header, before the body arrives.
        c.send(b"Q" + struct.pack("!I", (1 << 20) + 100) + b"select '")
        _expect_protocol_violation(c)
    _assert_gateway_serving(t)


def test_unknown_message_type_fatal(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        c.send(pw.tagged(b"z", b"\x00"))
        msgs = c.recv_all_until_close(timeout=15)
        err = pw.first_error(msgs)
        assert err is not None and err["V"] == "FATAL" and err["C"] == "08P01", msgs
    _assert_gateway_serving(gw)


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!I", 4),  # shorter than a code
        struct.pack("!I", 20000) + struct.pack("!I", 3 << 16) + b"u" * 100,  # too long
        struct.pack("!I", 0xFFFFFFFF),
        pw.untagged(struct.pack("!I", 3 << 16) + b"user\0agent"),  # no terminator
        pw.untagged(struct.pack("!I", 1234)),  # unknown request code
    ],
    ids=["len-4", "len-20000", "len-max", "unterminated", "bad-code"],
)
def test_malformed_startup_packet(gw: pw.Target, packet: bytes) -> None:
    with pw.RawConn.open(gw.host, gw.port) as c:
        c.send(packet)
        received = bytearray()
        t0 = time.monotonic()
        try:
            while True:
                # PostgreSQL refuses a bad length as soon as it has read it; so must the gateway
                # (well before its handshake timeout).
                received += c.read_bytes(1, timeout=5)
        except pw.ConnectionClosed:
            pass
        except TimeoutError:
            pytest.fail(
                f"the gateway neither refused nor closed within "
                f"{time.monotonic() - t0:.0f} s; received {bytes(received)!r}"
            )
    pw.assert_fatal_or_nothing(bytes(received), ("08P01", "28000"))
    _assert_gateway_serving(gw)


def test_malformed_startup_inside_tls(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.untagged(struct.pack("!I", 3 << 16) + b"user\0agent\0database"))
        msgs = c.recv_all_until_close(timeout=15)
        err = pw.first_error(msgs)
        assert err is not None and err["V"] == "FATAL" and err["C"] == "08P01", msgs
    _assert_gateway_serving(gw)


def test_garbage_instead_of_password(gw: pw.Target) -> None:
    with pw.open_tls(gw.endpoint()) as c:
        c.send(pw.startup_message(gw.endpoint().params()))
        assert pw.auth_code(c.recv().body) == 3
        c.send(pw.query("select 1"))  # 'Q' where 'p' is expected
        msgs = c.recv_all_until_close(timeout=15)
        err = pw.first_error(msgs)
        assert err is not None and err["V"] == "FATAL"
        assert err["C"] in ("08P01", "28P01")
        assert not any(m.tag == "Z" for m in msgs)
    _assert_gateway_serving(gw)


def test_silent_client_is_closed_after_the_handshake_timeout(gateway_factory: Any) -> None:
    from dataclasses import replace

    quick = gateway_factory(
        transform=lambda cfg: replace(cfg, listen=replace(cfg.listen, handshake_timeout_s=1.0))
    )
    t = pw.gateway_target(quick)
    with pw.open_tls(t.endpoint()) as c:
        t0 = time.monotonic()
        c.recv_all_until_close(timeout=10)
        assert time.monotonic() - t0 < 5
    _assert_gateway_serving(t)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=600),
        st.builds(
            lambda tag, body, delta: tag + struct.pack("!i", len(body) + 4 + delta) + body,
            st.sampled_from([bytes([t]) for t in b"QPBEDCSHFdcfpXz\x00\xff"]),
            st.binary(max_size=200),
            st.integers(-8, 8),
        ),
    )
)
def test_random_bytes_after_auth_never_crash_the_gateway(gateway: Any, data: bytes) -> None:
    t = pw.gateway_target(gateway)
    with pw.connect(t.endpoint()) as c:
        try:
            c.send(data)
            msgs = c.recv_all_until_close(timeout=0.5)
        except (OSError, pw.ConnectionClosed):
            msgs = []
        for m in msgs:
            assert m.tag in "123nstTDCEIZNASVvHGWcds", m
    # The process and every other session go on.
    thread = getattr(gateway, "thread", None)
    if thread is not None and getattr(thread, "_thread", None) is not None:
        assert thread._thread.is_alive()
    _assert_gateway_serving(t)


# --- upstream unavailable or misconfigured -------------------------------------------------------


def _with_target(**changes: Any) -> Any:
    from dataclasses import replace

    def transform(cfg: Any) -> Any:
        targets = {name: replace(t, **changes) for name, t in cfg.targets.items()}
        return replace(cfg, targets=targets)

    return transform


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("problem", ["unreachable", "blackhole", "bad-password", "untrusted-cert"])
def test_upstream_failure_is_a_clean_fatal(
    gateway_factory: Any, problem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from dataclasses import replace

    if problem == "unreachable":
        transform = _with_target(port=_free_port(), connect_timeout_s=3.0)
    elif problem == "blackhole":  # nothing answers: the connect timeout must fire
        transform = _with_target(host="10.255.255.1", connect_timeout_s=2.0)
    elif problem == "bad-password":
        monkeypatch.setenv("VG_ITEST_WRONG_PASSWORD", "definitely-wrong")
        transform = _with_target(password_env="VG_ITEST_WRONG_PASSWORD")
    else:
        from veilgate.certs import make_ca

        other_ca = make_ca(tmp_path, "unrelated-ca")

        def transform(cfg: Any) -> Any:
            targets = {
                name: replace(t, tls=replace(t.tls, ca_file=other_ca.cert_file))
                for name, t in cfg.targets.items()
            }
            return replace(cfg, targets=targets)

    broken = gateway_factory(transform=transform)
    t = pw.gateway_target(broken)
    with pw.open_tls(t.endpoint()) as c:
        t0 = time.monotonic()
        msgs = c.startup(t.endpoint().params(), password=t.password, raise_on_error=False)
        rest = c.recv_all_until_close(timeout=15)
        assert time.monotonic() - t0 < 12
    err = pw.first_error(msgs)
    assert err is not None, msgs
    assert err["V"] == "FATAL"
    assert not err["C"].startswith("28"), "an upstream problem is not the client's bad token"
    assert "definitely-wrong" not in repr(err)
    assert not any(m.tag == "Z" for m in msgs + rest)
    # The gateway stays up for the next attempt.
    with pw.open_tls(t.endpoint()) as c:
        msgs = c.startup(t.endpoint().params(), password=t.password, raise_on_error=False)
        assert pw.first_error(msgs) is not None


def test_no_sessions_or_upstreams_leak_after_failures(
    gateway: Any, gw: pw.Target, admin: psycopg.Connection[Any]
) -> None:
    from veilgate import metrics

    def upstream_backends() -> int:
        row = admin.execute(
            "select count(*) from pg_stat_activity where usename = 'veilgate_app' "
            "and application_name not like 'veilgate-%'"  # not the catalog / health sessions
        ).fetchone()
        return int(row[0]) if row else 0

    deadline = time.monotonic() + 10
    while upstream_backends() and time.monotonic() < deadline:
        time.sleep(0.05)
    base_backends = upstream_backends()
    base_sessions = gateway.session_count()
    base_upstreams = metrics.upstream_connections_active.get()

    # A mix of abuse: dropped handshakes, bad tokens, protocol errors, aborted results.
    for i in range(15):
        c = pw.RawConn.open(gw.host, gw.port)
        kind = i % 5
        try:
            if kind == 0:
                c.request_ssl()
            elif kind == 1:
                c.request_ssl()
                c.start_tls(gw.ca_file, gw.server_hostname)
                c.startup(gw.endpoint().params(), password="bad", raise_on_error=False)
            elif kind == 2:
                c.close()
                c = pw.connect(gw.endpoint())
                c.send(b"Q" + struct.pack("!I", 2))
            elif kind == 3:
                c.close()
                c = pw.connect(gw.endpoint())
                c.send(pw.query(BIG_QUERY))
                c.recv()
                _abort(c)
            else:  # gone right after the password, while the gateway connects upstream
                c.request_ssl()
                c.start_tls(gw.ca_file, gw.server_hostname)
                c.send(pw.startup_message(gw.endpoint().params()))
                c.recv()
                c.send(pw.password_message(gw.password))
                _abort(c)
        finally:
            c.close()

    def settled() -> bool:
        return (
            gateway.session_count() == base_sessions
            and metrics.upstream_connections_active.get() == base_upstreams
            and upstream_backends() == base_backends
        )

    deadline = time.monotonic() + 15
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gateway.session_count() == base_sessions
    assert metrics.upstream_connections_active.get() == base_upstreams
    assert upstream_backends() == base_backends
    _assert_gateway_serving(gw)


def test_server_fatal_while_client_idle_is_propagated(gw: pw.Target) -> None:
    """The server ends an idle-in-transaction session by itself: the client gets the FATAL."""
    with pw.connect(gw.endpoint()) as c:
        c.rows("set idle_in_transaction_session_timeout = '300ms'")
        assert c.simple("begin")[-1].body == b"T"
        msgs = c.recv_all_until_close(timeout=15)
    assert msgs, "the connection closed without the server's error"
    err = pw.error_fields(msgs[0].body)
    assert msgs[0].tag == "E" and err["V"] == "FATAL"
    assert err["C"] == "25P03"
    _assert_gateway_serving(gw)


def test_plaintext_allowed_only_with_the_loopback_switch(gateway_factory: Any) -> None:
    from dataclasses import replace

    dev = gateway_factory(
        transform=lambda cfg: replace(cfg, tls=replace(cfg.tls, allow_plaintext_loopback=True))
    )
    t = pw.gateway_target(dev)
    with psycopg.connect(t.conninfo(sslmode="disable")) as conn:
        assert not conn.info.pgconn.ssl_in_use
        assert conn.execute("select 'plain loopback'").fetchone() == ("plain loopback",)
    # TLS still works on the same listener.
    with psycopg.connect(t.conninfo()) as conn:
        assert conn.info.pgconn.ssl_in_use


def test_connection_limit(gateway_factory: Any) -> None:
    """Over ``listen.max_connections``: refused with a clear error (PostgreSQL says FATAL 53300
    "sorry, too many clients already"), and a slot freed is reusable."""
    from dataclasses import replace

    small = gateway_factory(
        transform=lambda cfg: replace(cfg, listen=replace(cfg.listen, max_connections=2))
    )
    t = pw.gateway_target(small)
    a = pw.connect(t.endpoint())
    b = pw.connect(t.endpoint())
    try:
        with pytest.raises(psycopg.OperationalError) as ei:
            psycopg.connect(t.conninfo())
        assert "too many" in str(ei.value), str(ei.value)
    finally:
        a.terminate()
    deadline = time.monotonic() + 5
    while True:
        try:
            with psycopg.connect(t.conninfo()) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    b.terminate()


def test_upstream_refusing_for_capacity_says_so(
    gw: pw.Target, admin: psycopg.Connection[Any]
) -> None:
    """The server refuses the gateway's login for capacity (53300): the client must learn that
    it is a capacity problem (retryable), not an authentication one."""
    role = "veilgate_app"
    with pw.connect(gw.endpoint()) as first:
        used = int(
            admin.execute(
                "select count(*) from pg_stat_activity where usename = %s", (role,)
            ).fetchone()[0]  # type: ignore[index]
        )
        admin.execute(f"alter role {role} connection limit {used}")
        try:
            with pw.open_tls(gw.endpoint()) as c:
                msgs = c.startup(gw.endpoint().params(), password=gw.password, raise_on_error=False)
            err = pw.first_error(msgs)
            assert err is not None and err["V"] == "FATAL", msgs
            assert err["C"] == "53300" or "too many" in err["M"], err
        finally:
            admin.execute(f"alter role {role} connection limit -1")
        assert first.scalar("select 'first still fine'") == "first still fine"
    _assert_gateway_serving(gw)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.builds(
            lambda code, body: struct.pack("!I", len(body) + 8) + struct.pack("!I", code) + body,
            st.sampled_from(
                [3 << 16, (3 << 16) | 2, pw.SSL_REQUEST_CODE, pw.CANCEL_REQUEST_CODE, 1234]
            ),
            st.binary(max_size=120),
        ),
    ),
    tls=st.booleans(),
)
def test_random_first_packets_never_crash_the_gateway(gateway: Any, data: bytes, tls: bool) -> None:
    t = pw.gateway_target(gateway)
    c = pw.RawConn.open(t.host, t.port)
    try:
        if tls:
            assert c.request_ssl() == b"S"
            c.start_tls(t.ca_file, t.server_hostname)
        c.send(data)
        received = bytearray()
        try:
            while len(received) < 1 << 16:
                received += c.read_bytes(1, timeout=0.5)
        except (pw.ConnectionClosed, TimeoutError, OSError):
            pass
        # never a session: at most an auth request (a valid startup) or a refusal
        assert b"Z\x00\x00\x00\x05" not in received
    except OSError:  # includes ssl.SSLError: the gateway may refuse at any point
        pass
    finally:
        c.close()
    _assert_gateway_serving(t)
