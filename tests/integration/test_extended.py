"""The extended query protocol through the gateway, frame by frame (and through real drivers)."""

from __future__ import annotations

import struct
import time

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

INT4, INT8, TEXT = 23, 20, 25


@pytest.fixture
def conn(gw: pw.Target):  # type: ignore[no-untyped-def]
    c = pw.connect(gw.endpoint())
    yield c
    c.terminate()


def _data(msgs: list[pw.Msg]) -> list[list[bytes | None]]:
    return [pw.data_row(m.body) for m in msgs if m.tag == "D"]


def test_pipeline_of_parse_bind_execute_with_one_sync(conn: pw.RawConn) -> None:
    batch = b""
    for i in range(20):
        batch += pw.parse("", "select $1::int4 * 2, $2::text", [INT4, TEXT])
        batch += pw.bind("", "", [str(i).encode(), f"t{i}".encode()])
        batch += pw.execute()
    conn.send(batch + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "12DC" * 20 + "Z"
    assert _data(msgs) == [[str(i * 2).encode(), f"t{i}".encode()] for i in range(20)]
    assert msgs[-1].body == b"I"


def test_many_syncs_pipelined_get_one_ready_for_query_each(conn: pw.RawConn) -> None:
    batch = b""
    for i in range(100):
        batch += pw.parse("", f"select {i}") + pw.bind("", "") + pw.execute() + pw.sync()
    conn.send(batch)
    got = []
    for _ in range(100):
        msgs = conn.recv_until_ready()
        assert pw.frames(msgs) == "12DCZ"
        got.append(_data(msgs)[0][0])
    assert got == [str(i).encode() for i in range(100)]
    assert conn.no_message_within(0.3)


def test_flush_without_sync_gets_replies(conn: pw.RawConn) -> None:
    conn.send(
        pw.parse("s1", "select $1::int8 + 1", [INT8])
        + pw.bind("", "s1", [b"41"])
        + pw.execute()
        + pw.flush()
    )
    msgs = conn.recv_until("C", timeout=5)
    assert pw.frames(msgs) == "12DC"
    assert _data(msgs) == [[b"42"]]
    # Nothing more until Sync: no ReadyForQuery yet.
    assert conn.no_message_within(0.3)
    conn.send(pw.describe("S", "s1") + pw.flush())
    msgs = conn.recv_until("T", timeout=5)
    assert pw.frames(msgs) == "tT"
    assert pw.parameter_description(msgs[0].body) == [INT8]
    conn.send(pw.sync())
    assert pw.frames(conn.recv_until_ready()) == "Z"


def test_named_statement_and_portal_reuse(conn: pw.RawConn) -> None:
    conn.send(pw.parse("dbl", "select $1::int8 * 2 as doubled", [INT8]) + pw.sync())
    assert pw.frames(conn.recv_until_ready()) == "1Z"
    for i in (1, 7, -5, 9000000000):
        conn.send(pw.bind("", "dbl", [str(i).encode()]) + pw.execute() + pw.sync())
        msgs = conn.recv_until_ready()
        assert pw.frames(msgs) == "2DCZ"
        assert _data(msgs) == [[str(i * 2).encode()]]
    # A simple Query in between does not destroy a named statement.
    assert conn.scalar("select 'interleaved'") == "interleaved"
    conn.send(pw.bind("", "dbl", [b"21"]) + pw.execute() + pw.sync())
    assert _data(conn.recv_until_ready()) == [[b"42"]]
    # Named portals live until the end of the transaction; reuse one inside BEGIN.
    conn.rows("begin")
    conn.send(pw.bind("p1", "dbl", [b"5"]) + pw.sync())
    assert pw.frames(conn.recv_until_ready()) == "2Z"
    conn.send(pw.execute("p1") + pw.sync())
    assert _data(conn.recv_until_ready()) == [[b"10"]]
    conn.send(pw.describe("P", "p1") + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "TZ"
    assert pw.row_description(msgs[0].body)[0].name == "doubled"
    conn.rows("commit")
    # After commit the portal is gone.
    conn.send(pw.execute("p1") + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "EZ"
    assert pw.error_fields(msgs[0].body)["C"] == "34000"  # invalid_cursor_name
    # Close the statement: it is gone too.
    conn.send(pw.close("S", "dbl") + pw.sync())
    assert pw.frames(conn.recv_until_ready()) == "3Z"
    conn.send(pw.bind("", "dbl", [b"1"]) + pw.execute() + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "EZ"
    assert pw.error_fields(msgs[0].body)["C"] == "26000"  # invalid_sql_statement_name


def test_unnamed_statement_replaced_by_simple_query(conn: pw.RawConn) -> None:
    conn.send(pw.parse("", "select 'unnamed'") + pw.sync())
    assert pw.frames(conn.recv_until_ready()) == "1Z"
    conn.send(pw.bind("", "") + pw.execute() + pw.sync())
    assert _data(conn.recv_until_ready()) == [[b"unnamed"]]
    conn.rows("select 1")
    conn.send(pw.bind("", "") + pw.execute() + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "EZ"
    assert pw.error_fields(msgs[0].body)["C"] == "26000"


def test_execute_row_limit_portal_suspended(conn: pw.RawConn) -> None:
    conn.send(
        pw.parse("", "select g from generate_series(1, 10) g")
        + pw.bind("cur", "")
        + pw.execute("cur", 3)
        + pw.flush()
    )
    msgs = conn.recv_until("s")
    assert pw.frames(msgs) == "12DDDs"
    seen = [r[0] for r in _data(msgs)]
    for _ in range(2):
        conn.send(pw.execute("cur", 3) + pw.flush())
        msgs = conn.recv_until("s")
        assert pw.frames(msgs) == "DDDs"
        seen += [r[0] for r in _data(msgs)]
    conn.send(pw.execute("cur", 3) + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "DCZ"
    assert pw.command_tag(msgs[1].body) == "SELECT 1"
    seen += [r[0] for r in _data(msgs)]
    assert seen == [str(i).encode() for i in range(1, 11)]


def test_portal_suspended_across_syncs_inside_a_transaction(conn: pw.RawConn) -> None:
    conn.rows("begin")
    conn.send(pw.parse("big", "select g, repeat('z', g) from generate_series(1, 1000) g"))
    conn.send(pw.bind("pc", "big", result_formats=[1, 0]) + pw.sync())
    assert pw.frames(conn.recv_until_ready()) == "12Z"
    total: list[int] = []
    while True:
        conn.send(pw.execute("pc", 128) + pw.sync())
        msgs = conn.recv_until_ready()
        assert msgs[-1].body == b"T"
        rows = _data(msgs)
        for r in rows:
            assert r[0] is not None and r[1] is not None
            (g,) = struct.unpack("!i", r[0])
            assert r[1] == b"z" * g
            total.append(g)
        if msgs[-2].tag == "C":
            break
        assert msgs[-2].tag == "s"
    assert total == list(range(1, 1001))
    conn.rows("commit")


def test_describe_statement_vs_portal_formats(conn: pw.RawConn) -> None:
    conn.send(
        pw.parse("fmt", "select 1::int4 as a, 'x'::text as b, 2::int8 as c")
        + pw.describe("S", "fmt")
        + pw.bind("pf", "fmt", result_formats=[1])
        + pw.describe("P", "pf")
        + pw.execute("pf")
        + pw.bind("pm", "fmt", result_formats=[0, 1, 0])
        + pw.describe("P", "pm")
        + pw.execute("pm")
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "1tT2TDC2TDCZ"
    assert pw.parameter_description(msgs[1].body) == []
    stmt_cols = pw.row_description(msgs[2].body)
    assert [c.name for c in stmt_cols] == ["a", "b", "c"]
    assert [c.type_oid for c in stmt_cols] == [INT4, TEXT, INT8]
    assert [c.format for c in stmt_cols] == [0, 0, 0]  # formats unknown before Bind
    assert [c.format for c in pw.row_description(msgs[4].body)] == [1, 1, 1]
    assert pw.data_row(msgs[5].body) == [struct.pack("!i", 1), b"x", struct.pack("!q", 2)]
    assert [c.format for c in pw.row_description(msgs[8].body)] == [0, 1, 0]
    assert pw.data_row(msgs[9].body) == [b"1", b"x", b"2"]


def test_describe_without_result_gets_nodata(conn: pw.RawConn) -> None:
    conn.send(
        pw.parse("", "set work_mem = '8MB'")
        + pw.describe("S", "")
        + pw.bind("", "")
        + pw.describe("P", "")
        + pw.execute()
        + pw.sync()
    )
    assert pw.frames(conn.recv_until_ready()) == "1tn2nCZ"


def test_execute_without_describe_binary_params(conn: pw.RawConn) -> None:
    conn.send(pw.parse("bp", "select $1::int8 + $2::int4", [INT8, INT4]) + pw.sync())
    conn.recv_until_ready()
    conn.send(
        pw.bind(
            "",
            "bp",
            [struct.pack("!q", 2**40), struct.pack("!i", 5)],
            param_formats=[1],
            result_formats=[1],
        )
        + pw.execute()
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "2DCZ"
    assert _data(msgs) == [[struct.pack("!q", 2**40 + 5)]]


@pytest.mark.parametrize("where", ["parse", "bind", "execute"])
def test_error_mid_pipeline_skips_until_sync(conn: pw.RawConn, where: str) -> None:
    ok = pw.parse("", "select 'ok'") + pw.bind("", "") + pw.execute()
    if where == "parse":
        bad = pw.parse("", "selec broken") + pw.bind("", "") + pw.execute()
        code = "42601"
    elif where == "bind":
        bad = pw.parse("", "select $1::int4", [INT4]) + pw.bind("", "", [b"abc"]) + pw.execute()
        code = "22P02"
    else:
        bad = pw.parse("", "select 1 / (0 * random())::int") + pw.bind("", "") + pw.execute()
        code = "22012"
    conn.send(ok + bad + ok + ok + pw.sync() + ok + pw.sync())
    first = conn.recv_until_ready()
    expected_prefix = {"parse": "12DCE", "bind": "12DC1E", "execute": "12DC12E"}[where]
    assert pw.frames(first) == expected_prefix + "Z"
    err = pw.error_fields(first[-2].body)
    assert err["C"] == code and err["V"] == "ERROR"
    second = conn.recv_until_ready()
    assert pw.frames(second) == "12DCZ"
    assert _data(second) == [[b"ok"]]
    assert conn.no_message_within(0.3)


def test_error_in_transaction_then_sync_reports_failed_state(conn: pw.RawConn) -> None:
    conn.rows("begin")
    conn.send(
        pw.parse("", "select 1 / (0 * random())::int") + pw.bind("", "") + pw.execute() + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "12EZ"
    assert msgs[-1].body == b"E"
    conn.send(pw.parse("", "select 1") + pw.bind("", "") + pw.execute() + pw.sync())
    msgs = conn.recv_until_ready()
    assert pw.frames(msgs) == "EZ"
    assert pw.error_fields(msgs[0].body)["C"] == "25P02"
    msgs = conn.simple("rollback")
    assert msgs[-1].body == b"I"


def test_close_portal_and_statement(conn: pw.RawConn) -> None:
    conn.send(
        pw.parse("c1", "select 1")
        + pw.bind("cp", "c1")
        + pw.close("P", "cp")
        + pw.close("S", "c1")
        + pw.close("S", "never_existed")  # closing a nonexistent one is not an error
        + pw.sync()
    )
    assert pw.frames(conn.recv_until_ready()) == "12333Z"


def test_large_parameter_and_row(conn: pw.RawConn) -> None:
    big = b"b" * (3 * 1024 * 1024 + 17)
    conn.send(
        pw.parse("", "select length($1::text), $1::text", [TEXT])
        + pw.bind("", "", [big])
        + pw.execute()
        + pw.sync()
    )
    msgs = conn.recv_until_ready(timeout=30)
    assert pw.frames(msgs) == "12DCZ"
    assert _data(msgs) == [[str(len(big)).encode(), big]]


# --- drivers -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_asyncpg_prepared_reuse_and_cursor_prefetch(gw: pw.Target) -> None:
    c = await asyncpg.connect(**gw.asyncpg_kwargs(statement_cache_size=100))
    try:
        stmt = await c.prepare("select $1::int8 * g from generate_series(1, 50) g")
        for k in range(30):
            assert [r[0] for r in await stmt.fetch(k)] == [k * g for g in range(1, 51)]
        async with c.transaction():
            cur = await stmt.cursor(3)
            assert [r[0] for r in await cur.fetch(5)] == [3, 6, 9, 12, 15]
            await cur.forward(10)
            assert (await cur.fetchrow())[0] == 48
            got = [r[0] async for r in stmt.cursor(2, prefetch=4)]
            assert got == [2 * g for g in range(1, 51)]
        with pytest.raises(asyncpg.exceptions.DataError):
            await stmt.fetch("not a number")
        assert await stmt.fetchval(2) == 2
    finally:
        await c.close()


def test_psycopg_pipeline_error_then_recovery(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        for _ in range(3):
            with pytest.raises(psycopg.errors.SyntaxError), conn.pipeline():
                a = conn.execute("select 1")
                conn.execute("selec 2")
                conn.execute("select 3")
            assert a.fetchone() == (1,)
            with conn.pipeline():
                curs = [conn.execute("select %s::int", (i,)) for i in range(30)]
            assert [c.fetchone() for c in curs] == [(i,) for i in range(30)]


# --- framing edge cases --------------------------------------------------------------------------


def test_messages_split_at_every_byte(conn: pw.RawConn) -> None:
    """Every message boundary (and the inside of every header) falls between two reads."""
    batch = (
        pw.parse("", "select $1::text || 'z'", [TEXT])
        + pw.bind("", "", [b"a" * 70])
        + pw.execute()
        + pw.sync()
        + pw.query("select 'q'")
    )
    for i in range(len(batch)):
        conn.send(batch[i : i + 1])
        if i % 16 == 0:
            time.sleep(0.001)
    first = conn.recv_until_ready()
    assert pw.frames(first) == "12DCZ"
    assert _data(first) == [[b"a" * 70 + b"z"]]
    second = conn.recv_until_ready()
    assert _data(second) == [[b"q"]]
    assert conn.rows("select 'after'") == [[b"after"]]


def test_large_event_messages_from_the_server(conn: pw.RawConn) -> None:
    """RowDescription and ErrorResponse larger than a receive buffer (64 KiB) are relayed."""
    cols = ", ".join(f'{i} as "{"c" * 50}{i:04d}"' for i in range(1500))
    msgs = conn.simple(f"select {cols}")
    assert pw.frames(msgs) == "TDCZ"
    desc = pw.row_description(msgs[0].body)
    assert len(msgs[0].body) > 65536
    assert [c.name for c in desc] == [f"{'c' * 50}{i:04d}" for i in range(1500)]
    assert pw.data_row(msgs[1].body) == [str(i).encode() for i in range(1500)]
    msgs = conn.simple("do $$begin raise exception 'big: %', repeat('e', 200000); end$$")
    assert pw.frames(msgs) == "EZ"
    assert pw.error_fields(msgs[0].body)["M"] == "big: " + "e" * 200000
    msgs = conn.simple("do $$begin raise notice 'big: %', repeat('n', 200000); end$$")
    assert pw.frames(msgs) == "NCZ"
    assert conn.scalar("select 'fine'") == "fine"


def test_large_client_event_messages(conn: pw.RawConn) -> None:
    """Query and Parse (surfaced to the control plane) larger than the receive buffer."""
    literal = "q" * 300_000
    assert conn.scalar(f"select length('{literal}')") == str(len(literal))
    conn.send(
        pw.parse("", f"select length('{literal}') + $1::int4", [INT4])
        + pw.bind("", "", [b"1"])
        + pw.execute()
        + pw.sync()
    )
    assert _data(conn.recv_until_ready()) == [[str(len(literal) + 1).encode()]]
