"""COPY in both directions, in text, CSV and binary, through the gateway vs directly."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

SOURCE = (
    "select g as id, md5(g::text) as h, "
    "case when g % 7 = 0 then null else E'tab\\there, \"quote\", back\\\\slash\\nnl ' || g end "
    "as tricky, g::numeric / 3 as n, '2024-06-01'::date - g as d, array[g, g + 1] as arr, "
    "('2024-01-01'::timestamptz + g * interval '1 minute') as ts "
    "from generate_series(1, 5000) g"
)

COPY_OUT = {
    "text": f"copy ({SOURCE}) to stdout",
    "csv": f"copy ({SOURCE}) to stdout (format csv, header, force_quote (h))",
    "binary": f"copy ({SOURCE}) to stdout (format binary)",
    "table-text": "copy customers to stdout",
    "table-csv": "copy orders to stdout with (format csv, delimiter ';', null 'NULL')",
    "table-binary": "copy customers to stdout with binary",
}

TABLE_DDL = (
    "create temp table dst (id int primary key, h text, tricky text, n numeric, d date, "
    "arr int[], ts timestamptz)"
)


def _copy_out(t: pw.Target, sql: str) -> bytes:
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        with conn.cursor() as cur:
            out = bytearray()
            with cur.copy(sql) as copy:
                for chunk in copy:
                    out += chunk
            assert cur.rowcount >= 0
            # The session is usable after a COPY.
            assert conn.execute("select 'after'").fetchone() == ("after",)
            return bytes(out)


@pytest.mark.parametrize("kind", list(COPY_OUT))
def test_copy_to_stdout_identical(gw: pw.Target, direct: pw.Target, kind: str) -> None:
    via = _copy_out(gw, COPY_OUT[kind])
    ref = _copy_out(direct, COPY_OUT[kind])
    assert via == ref
    assert len(via) > 1000 or kind.startswith("table")
    assert via
    if "binary" in kind:
        assert via.startswith(b"PGCOPY\n\xff\r\n\x00")
        assert via.endswith(b"\xff\xff")


def test_copy_to_stdout_raw_frames(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        msgs = c.simple("copy (select g, 'r' || g from generate_series(1, 100) g) to stdout")
        tags = pw.frames(msgs)
        assert tags == "H" + "d" * 100 + "cCZ"
        assert pw.command_tag(msgs[-2].body) == "COPY 100"
        assert msgs[1].body == b"1\tr1\n"


def _copy_in_roundtrip(t: pw.Target, fmt: str, data: bytes) -> list[Any]:
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        conn.execute(TABLE_DDL)
        opts = {"text": "", "csv": " (format csv, header)", "binary": " (format binary)"}[fmt]
        with conn.cursor() as cur:
            with cur.copy(f"copy dst from stdin{opts}") as copy:
                # Feed in uneven chunks: CopyData boundaries need not match rows.
                step = 7919
                for i in range(0, len(data), step):
                    copy.write(data[i : i + step])
            assert cur.rowcount == 5000
        rows = conn.execute("select * from dst order by id").fetchall()
        # Same rows as the source query, computed by the server.
        expected = conn.execute(f"select * from ({SOURCE}) s order by id").fetchall()  # noqa: S608
        assert rows == expected
        return rows


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_from_stdin_identical(gw: pw.Target, direct: pw.Target, fmt: str) -> None:
    sql = COPY_OUT[fmt]
    data = _copy_out(direct, sql)
    via = _copy_in_roundtrip(gw, fmt, data)
    ref = _copy_in_roundtrip(direct, fmt, data)
    assert via == ref
    assert len(via) == 5000


def test_copy_from_stdin_write_row(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        conn.execute("create temp table wr (id int, t text, b bytea)")
        with conn.cursor() as cur:
            with cur.copy("copy wr from stdin (format binary)") as copy:
                copy.set_types(["int4", "text", "bytea"])
                for i in range(1000):
                    copy.write_row((i, f"row {i}\t\\", bytes([i % 256]) * (i % 10)))
            with cur.copy("copy wr from stdin") as copy:
                for i in range(1000, 1100):
                    copy.write_row((i, None, b"\x00\xff"))
        rows = conn.execute("select id, t, b from wr order by id").fetchall()
        assert len(rows) == 1100
        assert rows[5] == (5, "row 5\t\\", bytes([5]) * 5)
        assert rows[1050] == (1050, None, b"\x00\xff")


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_from_bad_row_errors_cleanly(gw: pw.Target, fmt: str) -> None:
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        conn.execute("create temp table bad (id int, t text)")
        if fmt == "text":
            data, code = b"1\tone\n2\ttwo\nthree\t3\n4\tfour\n", "22P02"
        elif fmt == "csv":
            data, code = b"1,one\n2,two,extra\n", "22P04"
        else:
            data, code = (
                b"PGCOPY\n\xff\r\n\x00"
                + b"\x00\x00\x00\x00\x00\x00\x00\x00"
                + (b"\x00\x02\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x99one"),
                "08P01",
            )
        opts = {"text": "", "csv": " (format csv)", "binary": " (format binary)"}[fmt]
        with (
            pytest.raises(psycopg.Error) as ei,
            conn.cursor() as cur,
            cur.copy(f"copy bad from stdin{opts}") as copy,
        ):
            copy.write(data)
        assert ei.value.sqlstate is not None
        assert ei.value.sqlstate[:2] in (code[:2], "22", "08")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("select count(*) from bad").fetchone() == (0,)
        # and the session goes on as usual
        with conn.cursor() as cur, cur.copy("copy bad from stdin") as copy:
            copy.write(b"5\tfive\n")
        assert conn.execute("select id, t from bad").fetchall() == [(5, "five")]


def test_copy_fail_from_client(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        c.rows("create temp table cf (x int)")
        c.send(pw.query("copy cf from stdin"))
        msgs = c.recv_until("G")
        assert pw.frames(msgs) == "G"
        c.send(pw.copy_data(b"1\n2\n") + pw.copy_fail("client changed its mind"))
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "EZ"
        err = pw.error_fields(msgs[0].body)
        assert err["C"] == "57014"
        assert "client changed its mind" in err["M"]
        assert c.scalar("select count(*) from cf") == "0"


def test_copy_in_with_flush_and_sync_inside(gw: pw.Target) -> None:
    """Flush and Sync during COPY IN are ignored by the server; the gateway must not choke."""
    with pw.connect(gw.endpoint()) as c:
        c.rows("create temp table cs (x int)")
        c.send(pw.query("copy cs from stdin"))
        assert pw.frames(c.recv_until("G")) == "G"
        c.send(pw.copy_data(b"1\n") + pw.flush() + pw.copy_data(b"2\n") + pw.sync())
        c.send(pw.copy_data(b"3\n") + pw.copy_done())
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "CZ"
        assert pw.command_tag(msgs[0].body) == "COPY 3"
        assert c.scalar("select sum(x) from cs") == "6"


def test_copy_extended_protocol(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        c.send(
            pw.parse("", "copy (select generate_series(1, 3)) to stdout")
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready()
        assert pw.frames(msgs) == "12HdddcCZ"
        assert [m.body for m in msgs if m.tag == "d"] == [b"1\n", b"2\n", b"3\n"]


def test_copy_out_large_rows(gw: pw.Target, direct: pw.Target) -> None:
    sql = "copy (select g, repeat(md5(g::text), 20000) from generate_series(1, 40) g) to stdout"
    assert _copy_out(gw, sql) == _copy_out(direct, sql)


@pytest.mark.parametrize("before", ["nothing", "copy-with-sync-inside"])
def test_drain_closes_an_idle_session_at_once(gateway_factory: Any, before: str) -> None:
    """Graceful drain ends idle sessions at once (57P01); a COPY that carried a Sync (ignored by
    the server) must not leave the session looking busy until the drain deadline."""
    import threading
    import time

    handle = gateway_factory()
    t = pw.gateway_target(handle)
    with pw.connect(t.endpoint()) as c:
        if before == "copy-with-sync-inside":
            c.rows("create temp table ds (x int)")
            c.send(pw.query("copy ds from stdin"))
            assert pw.frames(c.recv_until("G")) == "G"
            c.send(pw.copy_data(b"1\n") + pw.sync() + pw.copy_done())
            assert pw.frames(c.recv_until_ready()) == "CZ"
        assert c.no_message_within(0.3)
        drainer = threading.Thread(target=handle.drain, args=(10.0,), daemon=True)
        t0 = time.monotonic()
        drainer.start()
        msgs = c.recv_all_until_close(timeout=30)
        closed_after = time.monotonic() - t0
        drainer.join(30)
    assert closed_after < 5, f"an idle session was closed only after {closed_after:.1f} s"
    err = pw.first_error(msgs)
    assert err is not None and err["C"] == "57P01", msgs


def test_error_in_the_middle_of_copy_out(gw: pw.Target, direct: pw.Target) -> None:
    sql = "copy (select 1000 / (g - 500) from generate_series(1, 1000) g) to stdout"
    with pw.connect(gw.endpoint()) as c:
        msgs = c.simple(sql)
        assert pw.frames(msgs) == "H" + "d" * 499 + "EZ"
        assert pw.error_fields(msgs[-2].body)["C"] == "22012"
        assert c.scalar("select 'usable'") == "usable"

    def via_psycopg(t: pw.Target) -> tuple[bytes, str | None]:
        got = bytearray()
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero) as ei:  # noqa: SIM117
                with conn.cursor() as cur, cur.copy(sql) as copy:
                    for chunk in copy:
                        got += chunk
            assert conn.execute("select 1").fetchone() == (1,)
        return bytes(got), ei.value.sqlstate

    assert via_psycopg(gw) == via_psycopg(direct)


async def _asyncpg_copy(t: pw.Target) -> tuple[bytes, list[str], str]:
    import io

    import asyncpg

    conn = await asyncpg.connect(**t.asyncpg_kwargs())
    try:
        buf = io.BytesIO()
        status = await conn.copy_from_query(
            "select g, md5(g::text), g::numeric / 3 from generate_series(1, 3000) g",
            output=buf,
            format="binary",
        )
        await conn.execute("create temp table ar (id int, h text, n numeric, ts timestamptz)")
        import datetime
        import decimal

        records = [
            (
                i,
                f"h{i}" if i % 5 else None,
                decimal.Decimal(i) / 7,
                datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=i),
            )
            for i in range(3000)
        ]
        res = await conn.copy_records_to_table("ar", records=records)
        assert res == "COPY 3000"
        rows = await conn.fetch("select * from ar order by id")
        assert [tuple(r) for r in rows] == records
        out = io.BytesIO()
        await conn.copy_from_table("ar", output=out, format="csv")
        return buf.getvalue(), [repr(tuple(r)) for r in rows], status + out.getvalue().decode()
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncpg_copy_identical(gw: pw.Target, direct: pw.Target) -> None:
    via = await _asyncpg_copy(gw)
    ref = await _asyncpg_copy(direct)
    assert via == ref
    assert via[0].startswith(b"PGCOPY\n\xff\r\n\x00")
