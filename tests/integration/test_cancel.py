"""CancelRequest through the gateway: mapped to the right upstream; never idle or unknown keys."""

from __future__ import annotations

import asyncio
import secrets
import struct
import threading
import time
from collections.abc import Callable

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


def _cancel_count(outcome: str) -> float:
    """The gateway's own cancel counter (the gateway runs in this process, in a thread)."""
    from veilgate import metrics

    return metrics.cancel_requests_total.get(outcome=outcome)


def _wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _send_cancel(gw: pw.Target, pid: int, key: bytes, tls: bool = False) -> None:
    """Send a CancelRequest on a new connection, as libpq does, and wait for the close."""
    c = pw.RawConn.open(gw.host, gw.port)
    try:
        if tls:
            assert c.request_ssl() == b"S"
            c.start_tls(gw.ca_file, gw.server_hostname)
        c.send(pw.cancel_request(pid, key))
        c.expect_close(timeout=10)  # the server answers a CancelRequest with nothing
    finally:
        c.close()


def _start_sleep(c: pw.RawConn, seconds: float) -> None:
    c.send(pw.query(f"select pg_sleep({seconds})"))


# --- a running query is cancelled -----------------------------------------------------------------


@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
def test_psycopg_cancel_safe_during_pg_sleep(gw: pw.Target, negotiation: str) -> None:
    """libpq 17+ ``cancel_safe`` sends the cancel over TLS negotiated like the connection."""
    with psycopg.connect(gw.conninfo(sslnegotiation=negotiation)) as conn:
        before = _cancel_count("forwarded")
        result: dict[str, object] = {}

        def run() -> None:
            t0 = time.monotonic()
            try:
                conn.execute("select pg_sleep(30)")
                result["outcome"] = "completed"
            except psycopg.Error as e:
                result["outcome"] = e
            result["elapsed"] = time.monotonic() - t0

        th = threading.Thread(target=run)
        th.start()
        time.sleep(0.5)
        conn.cancel_safe(timeout=10)
        th.join(15)
        assert not th.is_alive()
        assert isinstance(result["outcome"], psycopg.errors.QueryCanceled), result
        assert result["outcome"].sqlstate == "57014"
        assert float(result["elapsed"]) < 5  # type: ignore[arg-type]
        conn.rollback()
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
    assert _wait_for(lambda: _cancel_count("forwarded") >= before + 1)


def test_psql_ctrl_c_cancels_the_query(gw: pw.Target) -> None:
    """psql 15 on SIGINT uses libpq's legacy PQcancel: a plaintext CancelRequest.  (psycopg's
    ``cancel()`` does the same but holds the GIL while it waits, which would deadlock against
    the in-process gateway thread; psql runs in its own process.)"""
    import signal
    import subprocess

    proc = subprocess.Popen(
        ["psql", gw.conninfo(with_password=False), "-X", "-c", "select pg_sleep(30)"],
        env=gw.psql_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert time.monotonic() - t0 < 5
    assert "canceling statement due to user request" in err
    assert proc.returncode != 0


@pytest.mark.asyncio
async def test_asyncpg_timeout_cancels_the_query(gw: pw.Target) -> None:
    conn = await asyncpg.connect(**gw.asyncpg_kwargs())
    try:
        upstream_pid = await conn.fetchval("select pg_backend_pid()")
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetch("select pg_sleep(30)", timeout=0.5)
        # asyncpg waits for the cancel to complete before it gives the connection back.
        assert await conn.fetchval("select 'usable'") == "usable"
        assert time.monotonic() - t0 < 8
        assert await conn.fetchval("select pg_backend_pid()") == upstream_pid
    finally:
        await conn.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain-cancel", "tls-cancel"])
def test_raw_cancel_request_maps_to_the_right_upstream(gw: pw.Target, tls: bool) -> None:
    with pw.connect(gw.endpoint()) as a, pw.connect(gw.endpoint()) as b:
        assert a.backend_key is not None
        _start_sleep(a, 30)
        _start_sleep(b, 1.5)
        time.sleep(0.3)
        t0 = time.monotonic()
        _send_cancel(gw, *a.backend_key, tls=tls)
        msgs = a.recv_until_ready(timeout=10)
        assert time.monotonic() - t0 < 5
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "57014", msgs
        assert err["M"] == "canceling statement due to user request"
        # The other session was not touched.
        other = b.recv_until_ready(timeout=10)
        assert pw.first_error(other) is None
        assert pw.frames(other) == "TDCZ"
        assert a.scalar("select 'a ok'") == "a ok"


# --- cancels that must not reach the server ------------------------------------------------------


def test_cancel_for_idle_client_is_not_forwarded(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        idle_before = _cancel_count("idle")
        forwarded_before = _cancel_count("forwarded")
        _send_cancel(gw, *c.backend_key)
        assert _wait_for(lambda: _cancel_count("idle") == idle_before + 1)
        assert _cancel_count("forwarded") == forwarded_before
        # Nothing is pending: the next statement runs to completion.
        t0 = time.monotonic()
        msgs = c.simple("select pg_sleep(0.5), 'after idle cancel'")
        assert pw.first_error(msgs) is None, msgs
        assert time.monotonic() - t0 >= 0.5
        assert c.no_message_within(0.2)


def test_cancel_between_pipelined_statements_after_completion(gw: pw.Target) -> None:
    """Once the ReadyForQuery of the last request went out, the session is idle again."""
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        c.send((pw.parse("", "select 1") + pw.bind("", "") + pw.execute() + pw.sync()) * 3)
        for _ in range(3):
            c.recv_until_ready()
        idle_before = _cancel_count("idle")
        _send_cancel(gw, *c.backend_key)
        assert _wait_for(lambda: _cancel_count("idle") == idle_before + 1)
        assert pw.first_error(c.simple("select pg_sleep(0.3)")) is None


def test_cancel_with_wrong_key_is_ignored(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        pid, key = c.backend_key
        wrong = bytes(b ^ 0x5A for b in key)
        unknown_before = _cancel_count("unknown")
        _start_sleep(c, 1.0)
        time.sleep(0.2)
        _send_cancel(gw, pid, wrong)
        _send_cancel(gw, pid ^ 0x1234, key)  # right key, wrong pid
        msgs = c.recv_until_ready(timeout=10)
        assert pw.first_error(msgs) is None, msgs
        assert pw.frames(msgs) == "TDCZ"
        assert _wait_for(lambda: _cancel_count("unknown") >= unknown_before + 2)


@pytest.mark.parametrize("key_len", [32, 256])
def test_long_protocol_3_2_cancel_key_unknown_is_ignored(gw: pw.Target, key_len: int) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        pid, key = c.backend_key
        unknown_before = _cancel_count("unknown")
        _start_sleep(c, 1.0)
        time.sleep(0.2)
        # a long key for this session's pid (its real key + padding), and a random one
        _send_cancel(gw, pid, key + secrets.token_bytes(key_len - len(key)))
        _send_cancel(gw, secrets.randbits(31), secrets.token_bytes(key_len))
        msgs = c.recv_until_ready(timeout=10)
        assert pw.first_error(msgs) is None, msgs
        assert _wait_for(lambda: _cancel_count("unknown") >= unknown_before + 2)
        assert c.scalar("select 'ok'") == "ok"


def test_malformed_cancel_requests_are_ignored(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        pid, key = c.backend_key
        _start_sleep(c, 1.0)
        time.sleep(0.2)
        for bad in (
            pw.untagged(struct.pack("!Ii", pw.CANCEL_REQUEST_CODE, pid)),  # no key
            pw.untagged(struct.pack("!Ii", pw.CANCEL_REQUEST_CODE, pid) + key[:3]),
            pw.untagged(struct.pack("!Ii", pw.CANCEL_REQUEST_CODE, pid) + b"k" * 300),
        ):
            s = pw.RawConn.open(gw.host, gw.port)
            try:
                s.send(bad)
                s.recv_all_until_close(timeout=10)
            finally:
                s.close()
        msgs = c.recv_until_ready(timeout=10)
        assert pw.first_error(msgs) is None, msgs


# --- keys ----------------------------------------------------------------------------------------


def test_backend_key_has_the_servers_pid_and_the_gateways_secret(gw: pw.Target) -> None:
    """BackendKeyData carries the server's real backend pid (so pg_backend_pid() and the
    client's idea of its pid agree) and a secret of the gateway's: a cancel needs that secret,
    the pid alone (or with another session's secret) cancels nothing."""
    with pw.connect(gw.endpoint()) as a, pw.connect(gw.endpoint()) as b:
        assert a.backend_key is not None and b.backend_key is not None
        assert a.backend_key[0] == int(a.scalar("select pg_backend_pid()") or 0)
        assert b.backend_key[0] == int(b.scalar("select pg_backend_pid()") or 0)
        assert a.backend_key != b.backend_key
        assert len(a.backend_key[1]) == 4
        unknown_before = _cancel_count("unknown")
        _start_sleep(a, 1.0)
        time.sleep(0.2)
        _send_cancel(gw, a.backend_key[0], b.backend_key[1])  # a's pid, b's secret
        assert pw.first_error(a.recv_until_ready(timeout=10)) is None
        assert _wait_for(lambda: _cancel_count("unknown") >= unknown_before + 1)
        # and with its own secret it is cancelled
        _start_sleep(a, 30)
        time.sleep(0.2)
        _send_cancel(gw, *a.backend_key)
        err = pw.first_error(a.recv_until_ready(timeout=10))
        assert err is not None and err["C"] == "57014", err


def test_client_libraries_report_the_servers_pid(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo()) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None and conn.info.backend_pid == row[0]

    async def via_asyncpg() -> None:
        conn = await asyncpg.connect(**gw.asyncpg_kwargs())
        try:
            assert conn.get_server_pid() == await conn.fetchval("select pg_backend_pid()")
        finally:
            await conn.close()

    asyncio.run(via_asyncpg())


def test_notification_pid_is_the_listeners_own_pid(gw: pw.Target) -> None:
    """NOTIFY from the same session: the NotificationResponse pid is the one in its
    BackendKeyData (libpq uses this to tell its own notifications apart)."""
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        conn.execute("listen vg_pid_chan")
        conn.execute("notify vg_pid_chan, 'hello'")
        note = next(conn.notifies(timeout=5, stop_after=1))
        assert note.pid == conn.info.backend_pid
        assert note.payload == "hello"


def test_cancel_after_client_disconnect_is_unknown(gw: pw.Target) -> None:
    c = pw.connect(gw.endpoint())
    assert c.backend_key is not None
    key = c.backend_key
    c.terminate()
    time.sleep(0.3)
    unknown_before = _cancel_count("unknown")
    _send_cancel(gw, *key)
    assert _wait_for(lambda: _cancel_count("unknown") == unknown_before + 1)


# --- "is a statement running?" must track the protocol exactly ------------------------------------


def test_cancel_of_extended_execute_without_sync(gw: pw.Target) -> None:
    """Parse/Bind/Execute + Flush, no Sync (pipelining drivers): the statement runs, so a cancel
    must be forwarded."""
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        c.send(pw.parse("", "select pg_sleep(30)") + pw.bind("", "") + pw.flush())
        assert pw.frames(c.recv_until("2", timeout=5)) == "12"
        c.send(pw.execute() + pw.flush())
        time.sleep(0.3)
        t0 = time.monotonic()
        _send_cancel(gw, *c.backend_key)
        msgs = c.recv_until("E", timeout=10)
        assert time.monotonic() - t0 < 5
        assert pw.error_fields(msgs[-1].body)["C"] == "57014"
        c.send(pw.sync())
        assert pw.frames(c.recv_until_ready()) == "Z"
        assert c.scalar("select 'ok'") == "ok"


def test_session_is_idle_after_copy_in_with_sync_inside(gw: pw.Target) -> None:
    """The server ignores Sync (and Flush) during COPY IN and sends no ReadyForQuery for it;
    the gateway must not count it as a pending request (else the session looks busy forever)."""
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        c.rows("create temp table cs (x int)")
        c.send(pw.query("copy cs from stdin"))
        assert pw.frames(c.recv_until("G")) == "G"
        c.send(pw.copy_data(b"1\n") + pw.sync() + pw.flush() + pw.sync() + pw.copy_done())
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "CZ"
        assert c.no_message_within(0.3)
        assert c.scalar("select count(*) from cs") == "1"
        idle_before = _cancel_count("idle")
        forwarded_before = _cancel_count("forwarded")
        _send_cancel(gw, *c.backend_key)
        assert _wait_for(lambda: _cancel_count("idle") == idle_before + 1), (
            "the idle session was considered busy: cancel outcome "
            f"forwarded={_cancel_count('forwarded')}, idle={_cancel_count('idle')}"
        )
        assert _cancel_count("forwarded") == forwarded_before


def test_session_is_idle_after_extended_copy_in_with_sync_inside(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        c.rows("create temp table ce (x int)")
        c.send(pw.parse("", "copy ce from stdin") + pw.bind("", "") + pw.execute() + pw.flush())
        assert pw.frames(c.recv_until("G")) == "12G"
        c.send(pw.copy_data(b"7\n") + pw.sync() + pw.copy_done() + pw.sync())
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "CZ"
        assert c.no_message_within(0.3)
        idle_before = _cancel_count("idle")
        _send_cancel(gw, *c.backend_key)
        assert _wait_for(lambda: _cancel_count("idle") == idle_before + 1), (
            "the idle session was considered busy: cancel outcome "
            f"forwarded={_cancel_count('forwarded')}, idle={_cancel_count('idle')}"
        )


def test_session_is_idle_after_copy_fail(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        c.rows("create temp table cf2 (x int)")
        c.send(pw.query("copy cf2 from stdin"))
        assert pw.frames(c.recv_until("G")) == "G"
        c.send(pw.copy_data(b"1\n") + pw.sync() + pw.copy_fail("nope"))
        assert pw.frames(c.recv_until_ready()) == "EZ"
        assert c.no_message_within(0.3)
        idle_before = _cancel_count("idle")
        _send_cancel(gw, *c.backend_key)
        assert _wait_for(lambda: _cancel_count("idle") == idle_before + 1), (
            "the idle session was considered busy: cancel outcome "
            f"forwarded={_cancel_count('forwarded')}, idle={_cancel_count('idle')}"
        )


def test_session_is_idle_after_extended_messages_ended_by_a_query(gw: pw.Target) -> None:
    """Parse/Bind/Execute without Sync, then a simple Query: its ReadyForQuery means everything
    before it was processed, so the session is idle afterwards."""
    with pw.connect(gw.endpoint()) as c:
        assert c.backend_key is not None
        c.send(pw.parse("", "select 1") + pw.bind("", "") + pw.execute() + pw.query("select 2"))
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "12DCTDCZ"
        assert c.no_message_within(0.3)
        idle_before = _cancel_count("idle")
        _send_cancel(gw, *c.backend_key)
        assert _wait_for(lambda: _cancel_count("idle") == idle_before + 1), (
            "the idle session was considered busy: cancel outcome "
            f"forwarded={_cancel_count('forwarded')}, idle={_cancel_count('idle')}"
        )
