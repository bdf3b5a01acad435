"""Messages the server sends on its own: NotificationResponse, NoticeResponse, ParameterStatus."""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

PAYLOAD = "päyload ✓ with 'quotes', \"dq\", tabs\tand\nnewlines " + "x" * 2000


def _channel() -> str:
    return "ch_" + secrets.token_hex(4)


# --- LISTEN / NOTIFY -----------------------------------------------------------------------------


@pytest.mark.parametrize("notifier", ["gateway", "direct"])
def test_psycopg_listen_notify(gw: pw.Target, direct: pw.Target, notifier: str) -> None:
    ch = _channel()
    with psycopg.connect(gw.conninfo(), autocommit=True) as listener:
        listener.execute(f"listen {ch}")
        source = gw if notifier == "gateway" else direct
        with psycopg.connect(source.conninfo(), autocommit=True) as other:
            other.execute("select pg_notify(%s, %s)", (ch, PAYLOAD))
            other.execute("select pg_notify(%s, %s)", (ch, "second"))
        got = list(listener.notifies(timeout=10, stop_after=2))
        assert [(n.channel, n.payload) for n in got] == [(ch, PAYLOAD), (ch, "second")]
        # The pid is the notifying backend's: not leaked as a gateway key, not ours.
        upstream = listener.execute("select pg_backend_pid()").fetchone()
        assert upstream is not None and got[0].pid != upstream[0]


def test_notification_arrives_while_client_is_idle(gw: pw.Target, direct: pw.Target) -> None:
    """The gateway forwards a server message even when the client sends nothing."""
    ch = _channel()
    with pw.connect(gw.endpoint()) as c:
        c.rows(f"listen {ch}")
        with psycopg.connect(direct.conninfo(), autocommit=True) as other:
            t0 = time.monotonic()
            other.execute("select pg_notify(%s, %s)", (ch, PAYLOAD))
        m = c.recv(timeout=10)
        assert m.tag == "A", m
        _pid, channel, payload = pw.notification(m.body)
        assert (channel, payload) == (ch, PAYLOAD)
        assert time.monotonic() - t0 < 2


def test_notify_to_self_arrives_before_ready_for_query(gw: pw.Target) -> None:
    ch = _channel()
    with pw.connect(gw.endpoint()) as c:
        c.rows(f"listen {ch}")
        msgs = c.simple(f"notify {ch}, 'self'")
        assert pw.frames(msgs) == "CAZ"
        assert pw.notification(msgs[1].body)[1:] == (ch, "self")


@pytest.mark.asyncio
async def test_asyncpg_listener(gw: pw.Target, direct: pw.Target) -> None:
    ch = _channel()
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    conn = await asyncpg.connect(**gw.asyncpg_kwargs())
    other = await asyncpg.connect(**direct.asyncpg_kwargs())
    try:
        await conn.add_listener(
            ch, lambda _c, _pid, channel, payload: received.put_nowait((channel, payload))
        )
        for i in range(20):
            await other.execute("select pg_notify($1, $2)", ch, f"{i}:{PAYLOAD}")
        got = [await asyncio.wait_for(received.get(), 10) for _ in range(20)]
        assert got == [(ch, f"{i}:{PAYLOAD}") for i in range(20)]
        # Notifications queued inside a transaction are delivered at commit only.
        async with other.transaction():
            await other.execute("select pg_notify($1, 'tx')", ch)
            await asyncio.sleep(0.3)
            assert received.empty()
        assert await asyncio.wait_for(received.get(), 10) == (ch, "tx")
    finally:
        await conn.close()
        await other.close()


# --- NoticeResponse ------------------------------------------------------------------------------


def test_psycopg_notices_pass_through(gw: pw.Target, direct: pw.Target) -> None:
    def collect(t: pw.Target) -> list[tuple[str | None, ...]]:
        notices: list[tuple[str | None, ...]] = []

        def on_notice(n: psycopg.errors.Diagnostic) -> None:
            # A Diagnostic is only valid inside the handler.
            fields = (n.severity_nonlocalized, n.sqlstate, n.message_primary, n.message_detail)
            notices.append((*fields, n.message_hint))

        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            conn.add_notice_handler(on_notice)
            conn.execute(
                "do $$begin raise notice 'hello %', 42; "
                "raise warning 'careful' using detail = 'some detail', hint = 'a hint', "
                "errcode = '01007'; end$$"
            )
            conn.execute("drop table if exists surely_not_there_" + secrets.token_hex(3))
            conn.execute("set client_min_messages = debug1")
            conn.execute("do $$begin raise debug 'dbg'; raise info 'inf'; end$$")
        return notices

    via = collect(gw)
    ref = collect(direct)
    # "table ... does not exist, skipping" names a random table: compare up to that.
    assert [v[:2] for v in via] == [r[:2] for r in ref]
    assert via[0] == ("NOTICE", "00000", "hello 42", None, None)
    assert via[1] == ("WARNING", "01007", "careful", "some detail", "a hint")
    assert [v[2] for v in via[3:]] == ["dbg", "inf"]


def test_raw_notice_before_result(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        msgs = c.simple(
            "do $$begin raise notice 'n1'; end$$; "
            "select 'row' from (select 1) s where (select true from pg_sleep(0))"
        )
        assert pw.frames(msgs) == "NCTDCZ"
        assert c.notices[-1]["M"] == "n1"
        assert c.notices[-1]["V"] == "NOTICE"


@pytest.mark.asyncio
async def test_asyncpg_log_listener(gw: pw.Target) -> None:
    messages: list[str] = []
    conn = await asyncpg.connect(**gw.asyncpg_kwargs())
    try:
        conn.add_log_listener(lambda _c, m: messages.append(m.message))
        await conn.execute("do $$begin raise notice 'from asyncpg %', 1; end$$")
        await asyncio.sleep(0.05)
        assert messages == ["from asyncpg 1"]
    finally:
        await conn.close()


# --- ParameterStatus -----------------------------------------------------------------------------


def test_psycopg_parameter_status_after_set(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        info = conn.info
        assert info.parameter_status("server_version")
        assert info.parameter_status("TimeZone")
        conn.execute("set application_name = 'vg-test-app'")
        assert info.parameter_status("application_name") == "vg-test-app"
        conn.execute("set timezone = 'Asia/Kolkata'")
        assert info.parameter_status("TimeZone") == "Asia/Kolkata"
        conn.execute("set datestyle = 'German, DMY'")
        assert info.parameter_status("DateStyle") == "German, DMY"
        assert conn.execute("select '2024-02-29'::date::text").fetchone() == ("29.02.2024",)
        conn.execute("set intervalstyle = 'iso_8601'")
        assert info.parameter_status("IntervalStyle") == "iso_8601"
        # A SET rolled back is reported again with the old value.
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("set timezone = 'America/Sao_Paulo'")
            assert info.parameter_status("TimeZone") == "America/Sao_Paulo"
            conn.execute("select 1/0")
        conn.execute("select 1")
        assert info.parameter_status("TimeZone") == "Asia/Kolkata"
        conn.execute("reset all")
        assert info.parameter_status("DateStyle") != "German, DMY"


def test_raw_parameter_status_message(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        msgs = c.simple("set application_name = 'raw-app'")
        assert pw.frames(msgs) == "CSZ"
        assert pw.parameter_status(msgs[1].body) == ("application_name", "raw-app")
        msgs = c.simple("set standard_conforming_strings = off")
        assert pw.parameter_status(msgs[1].body) == ("standard_conforming_strings", "off")
        assert c.scalar(r"select 'a\\b'") == "a\\b"


def test_startup_timezone_and_encoding_forwarded(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo(client_encoding="LATIN1")) as conn:
        assert conn.info.parameter_status("client_encoding") == "LATIN1"
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute("select 'café'").fetchone() == ("café",)
    with pw.connect(gw.endpoint(), params={"TimeZone": "Pacific/Auckland"}) as c:
        assert c.parameters["TimeZone"] == "Pacific/Auckland"
        assert c.scalar("show timezone") == "Pacific/Auckland"


def test_startup_parameter_status_matches_a_direct_connection(
    gw: pw.Target, direct: pw.Target
) -> None:
    names = (
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
        "in_hot_standby",
        "default_transaction_read_only",
    )

    def status(t: pw.Target) -> dict[str, str | None]:
        with psycopg.connect(t.conninfo()) as conn:
            return {n: conn.info.parameter_status(n) for n in names}

    via, ref = status(gw), status(direct)
    assert via == ref
    assert all(v is not None for v in via.values()), via
