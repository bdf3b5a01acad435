"""Masking at the protocol level (raw wire client): what the client sees of the extended protocol
is exactly what the server would send (the injected Describe is invisible), pipelines, errors,
PortalSuspended, Flush, binary cursors, COPY, FunctionCall, and that every row is masked."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from tests.integration import pgwire as pw
from tests.integration.masking_setup import (
    EMAIL,
    SECOND_SSN,
    SSN,
    Factory,
    MaskedGateway,
    leaked,
    make_table,
    start_gateway,
)

pytestmark = pytest.mark.pg


@pytest.fixture
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def masked(gateway_factory: Factory, tmp_path: Path) -> MaskedGateway:
    return start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.masked")


@pytest.fixture
def conn(masked: MaskedGateway) -> Any:
    c = pw.connect(masked.target.endpoint())
    try:
        yield c
    finally:
        c.terminate()


def _tags(msgs: list[pw.Msg]) -> str:
    return "".join(m.tag for m in msgs)


def _values(msgs: list[pw.Msg]) -> list[list[bytes | None]]:
    return [pw.data_row(m.body) for m in msgs if m.tag == "D"]


def _all_bytes(msgs: list[pw.Msg]) -> bytes:
    return b"".join(m.body for m in msgs)


def _masked_ssn(v: bytes | None) -> bool:
    return v is not None and v != SSN.encode() and v.endswith(SSN[-4:].encode())


# --- extended protocol ------------------------------------------------------------------------


def test_execute_without_describe(conn: pw.RawConn, table: str) -> None:
    """asyncpg / JDBC style: Parse, Bind, Execute, Sync.  The gateway's own Describe is not seen."""
    conn.send(
        pw.parse("", f"select ssn, email, id from {table} order by id")
        + pw.bind("", "")
        + pw.execute()
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert _tags(msgs) == "12DDCZ", msgs
    rows = _values(msgs)
    assert _masked_ssn(rows[0][0]) and rows[0][1] == b"<EMAIL>" and rows[0][2] == b"1"
    assert not leaked(_all_bytes(msgs))


def test_binary_result_formats(conn: pw.RawConn, table: str) -> None:
    """Binary results (format 1): text-like columns masked in place, others kept or NULLed."""
    conn.send(
        pw.parse("", f"select ssn, email, salary, lower(ssn), notes from {table} where id = 1")
        + pw.bind("", "", result_formats=[1])
        + pw.execute()
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert _tags(msgs) == "12DCZ", msgs
    (row,) = _values(msgs)
    assert _masked_ssn(row[0])
    assert row[1] == b"<EMAIL>"
    assert row[2] == struct.pack("!q", 1000)
    assert not leaked(_all_bytes(msgs))


def test_client_describe_replies_are_forwarded_once(conn: pw.RawConn, table: str) -> None:
    conn.send(
        pw.parse("s1", f"select ssn from {table} where id = $1", [23])
        + pw.describe("S", "s1")
        + pw.bind("p1", "s1", [b"1"], result_formats=[1])
        + pw.describe("P", "p1")
        + pw.execute("p1")
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert _tags(msgs) == "1tT2TDCZ", msgs
    t_stmt, t_portal = [pw.row_description(m.body) for m in msgs if m.tag == "T"]
    assert t_stmt[0].format == 0 and t_portal[0].format == 1
    assert _masked_ssn(_values(msgs)[0][0])


def test_portal_suspended_and_resumed(conn: pw.RawConn, table: str) -> None:
    conn.send(pw.query("begin"))
    conn.recv_until_ready()
    conn.send(
        pw.parse("s", f"select ssn, email from {table} order by id")
        + pw.bind("p", "s")
        + pw.execute("p", 1)
        + pw.execute("p", 1)
        + pw.execute("p", 1)
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    assert _tags(msgs) == "12DsDsCZ", msgs
    rows = _values(msgs)
    assert rows[0][1] == rows[1][1] == b"<EMAIL>"
    assert _masked_ssn(rows[0][0]) and rows[1][0] != SECOND_SSN.encode()
    assert not leaked(_all_bytes(msgs))
    conn.simple("commit")


def test_pipeline_error_skips_to_sync(conn: pw.RawConn, table: str) -> None:
    """After an error the server skips to Sync: the gateway's expectations of that segment go
    too, and the next segment's rows are still masked."""
    conn.send(
        pw.parse("", f"select ssn from {table} where id = 1")
        + pw.bind("", "")
        + pw.execute()
        + pw.parse("", "select no_such_column")
        + pw.bind("", "")
        + pw.execute()
        + pw.sync()
        + pw.parse("", f"select email, ssn from {table} where id = 1")
        + pw.bind("", "")
        + pw.execute()
        + pw.sync()
    )
    first = conn.recv_until_ready()
    assert _tags(first) == "12DCEZ", first
    second = conn.recv_until_ready()
    assert _tags(second) == "12DCZ", second
    assert _values(second)[0][0] == b"<EMAIL>"
    assert not leaked(_all_bytes(first + second))


def test_flush_without_sync(conn: pw.RawConn, table: str) -> None:
    conn.send(
        pw.parse("", f"select ssn from {table} where id = 1")
        + pw.bind("", "")
        + pw.execute()
        + pw.flush()
    )
    msgs = conn.recv_until("C")
    assert _tags(msgs) == "12DC", msgs
    assert _masked_ssn(_values(msgs)[0][0])
    conn.send(pw.sync())
    assert _tags(conn.recv_until_ready()) == "Z"


def test_named_statement_reused_and_closed(conn: pw.RawConn, table: str) -> None:
    conn.send(pw.parse("st", f"select ssn, email from {table} where id = $1", [23]) + pw.sync())
    conn.recv_until_ready()
    for fmt in (0, 1, 0):
        conn.send(pw.bind("", "st", [b"1"], result_formats=[fmt]) + pw.execute() + pw.sync())
        msgs = conn.recv_until_ready()
        assert _tags(msgs) == "2DCZ", msgs
        assert _masked_ssn(_values(msgs)[0][0])
    conn.send(pw.close("S", "st") + pw.sync())
    assert _tags(conn.recv_until_ready()) == "3Z"


# --- simple protocol -------------------------------------------------------------------------


def test_multi_statement_query(conn: pw.RawConn, table: str) -> None:
    msgs = conn.simple(
        f"select 1; select ssn from {table} order by id; insert into {table} (id) values (9);"
        f" select email, lower(ssn) from {table} where id = 1"
    )
    assert _tags(msgs) == "TDCTDDCCTDCZ", msgs
    rows = _values(msgs)
    assert rows[0] == [b"1"]
    assert _masked_ssn(rows[1][0])
    assert rows[3][0] == b"<EMAIL>"
    assert not leaked(_all_bytes(msgs))


def test_fetch_from_binary_cursor(conn: pw.RawConn, table: str) -> None:
    msgs = conn.simple(
        f"begin; declare c binary cursor for select ssn, email, salary from {table} order by id;"
        " fetch 1 from c; fetch all from c"
    )
    t = [pw.row_description(m.body) for m in msgs if m.tag == "T"]
    assert t and all(col.format == 1 for desc in t for col in desc)
    rows = _values(msgs)
    assert len(rows) == 2
    assert _masked_ssn(rows[0][0]) and rows[0][1] == b"<EMAIL>"
    assert rows[0][2] == struct.pack("!q", 1000)
    assert not leaked(_all_bytes(msgs))
    conn.simple("commit")


def test_copy_binary_header_and_trailer(conn: pw.RawConn, table: str) -> None:
    msgs = conn.simple(
        f"copy (select ssn, email from {table} order by id) to stdout (format binary)"
    )
    assert _tags(msgs).startswith("H") and _tags(msgs).endswith("cCZ"), msgs
    data = b"".join(m.body for m in msgs if m.tag == "d")
    assert data.startswith(b"PGCOPY\n\xff\r\n\0")
    assert data.endswith(b"\xff\xff")
    assert SSN[-4:].encode() in data and not leaked(data)


def test_copy_in_transaction_and_after(conn: pw.RawConn, table: str) -> None:
    msgs = conn.simple(f"begin; copy {table} (ssn, email) to stdout; commit")
    assert "E" not in _tags(msgs), pw.first_error(msgs)
    assert not leaked(_all_bytes(msgs))
    assert EMAIL.encode() not in _all_bytes(msgs)


def test_function_call_refused(conn: pw.RawConn) -> None:
    """FunctionCall results bypass every row plan: refused, the session goes on."""
    oid = int(conn.scalar("select 'lower(text)'::regprocedure::oid") or 0)
    body = struct.pack("!IhhhI", oid, 1, 0, 1, 3) + b"abc" + struct.pack("!h", 0)
    conn.send(pw.tagged(b"F", body))
    msgs = conn.recv_until_ready()
    err = pw.first_error(msgs)
    assert err is not None and err["C"] == "0A000", err
    assert "V" not in _tags(msgs)
    assert conn.scalar("select 2") == "2"


def test_unmasked_tier_passes_raw(gateway_factory: Factory, tmp_path: Path, table: str) -> None:
    raw = start_gateway(gateway_factory, tmp_path / "raw.jsonl", "db.raw")
    c = pw.connect(raw.target.endpoint())
    try:
        c.send(
            pw.parse("", f"select ssn from {table} where id = 1")
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready()
    finally:
        c.terminate()
    assert _tags(msgs) == "12DCZ"
    assert _values(msgs)[0][0] == SSN.encode()


def test_many_results_in_one_read(conn: pw.RawConn, table: str) -> None:
    """Many result sets arriving together: every RowDescription is a barrier in turn."""
    n = 40
    pipeline = b"".join(
        pw.parse("", f"select ssn, {i} from {table} where id = 1")
        + pw.bind("", "", result_formats=[i % 2])
        + pw.execute()
        for i in range(n)
    )
    conn.send(pipeline + pw.sync())
    msgs = conn.recv_until_ready()
    rows = _values(msgs)
    assert len(rows) == n
    for r in rows:
        assert _masked_ssn(r[0]), r
    assert not leaked(_all_bytes(msgs))


# --- COPY of a table the gateway cannot describe ------------------------------------------------


def test_copy_of_a_missing_table_gets_the_servers_error(conn: pw.RawConn) -> None:
    """A COPY whose columns the gateway cannot describe (here: no such table) is not refused by
    the gateway: it is planned from the server's CopyOutResponse if there is one, and the server
    answers this one with its own error (42P01), as it would directly."""
    msgs = conn.simple("copy (select * from vg_mask_no_such_table) to stdout")
    assert _tags(msgs) == "EZ", msgs
    err = pw.first_error(msgs)
    assert err is not None and err["C"] == "42P01", err
    assert msgs[-1].body == b"I"
    assert conn.scalar("select 3") == "3"


def test_copy_of_a_missing_table_inside_transaction_fails_it(conn: pw.RawConn, table: str) -> None:
    """Inside a transaction block the error fails the transaction: a later COMMIT rolls back
    what came before."""
    conn.simple("begin")
    conn.simple(f"insert into {table} (id) values (77)")
    msgs = conn.simple("copy (select * from vg_mask_no_such_table) to stdout")
    err = pw.first_error(msgs)
    assert err is not None and err["C"] == "42P01", err
    assert "veilgate-masking" not in repr(msgs)
    assert msgs[-1].tag == "Z" and msgs[-1].body == b"E"
    done = conn.simple("commit")
    assert [pw.command_tag(m.body) for m in done if m.tag == "C"] == ["ROLLBACK"]
    assert conn.rows(f"select id from {table} where id = 77") == []


def test_copy_of_a_missing_table_in_extended_protocol(conn: pw.RawConn) -> None:
    conn.send(
        pw.parse("", "copy (select * from vg_mask_no_such_table) to stdout")
        + pw.bind("", "")
        + pw.execute()
        + pw.sync()
    )
    msgs = conn.recv_until_ready()
    err = pw.first_error(msgs)
    assert err is not None and err["C"] == "42P01", err
    assert "H" not in _tags(msgs) and "d" not in _tags(msgs)
    assert conn.scalar("select 4") == "4"


def test_pipelined_queries_around_a_copy(conn: pw.RawConn, table: str) -> None:
    """Queries sent in one write, a COPY among them: the COPY is planned while the others wait,
    and every answer comes back in order, masked."""
    conn.send(
        pw.query(f"select ssn from {table} where id = 1")
        + pw.query(f"copy (select email, ssn from {table} order by id) to stdout")
        + pw.query(f"select email from {table} where id = 1")
    )
    first, second, third = (conn.recv_until_ready() for _ in range(3))
    assert _tags(first) == "TDCZ" and _masked_ssn(_values(first)[0][0])
    assert _tags(second) == "HddcCZ", second
    assert _tags(third) == "TDCZ" and _values(third)[0][0] == b"<EMAIL>"
    assert not leaked(_all_bytes(first + second + third))


# --- volume: many rows, small reads, a slow reader ----------------------------------------------


def test_large_result_masked_in_every_row(conn: pw.RawConn, table: str) -> None:
    n = 50_000
    msgs = conn.simple(
        f"select s.i, m.ssn, m.email || '' as e2, m.notes from {table} m,"
        f" generate_series(1, {n}) s(i) where m.id = 1"
    )
    rows = _values(msgs)
    assert len(rows) == n
    assert all(_masked_ssn(r[1]) for r in rows)
    assert not leaked(_all_bytes(msgs))


def test_stdlib_asyncio_loop(gateway_factory: Factory, tmp_path: Path, table: str) -> None:
    """The stdlib event loop (memoryview receive path): holds and barriers work the same."""
    g = start_gateway(gateway_factory, tmp_path / "a.jsonl", "db.masked", use_uvloop=False)
    c = pw.connect(g.target.endpoint())
    try:
        c.send(
            pw.parse("", f"select ssn, email from {table} order by id")
            + pw.bind("", "", result_formats=[1])
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready()
        copy = c.simple(f"copy {table} to stdout with binary")
    finally:
        c.terminate()
    assert _tags(msgs) == "12DDCZ"
    assert _masked_ssn(_values(msgs)[0][0])
    assert not leaked(_all_bytes(msgs + copy))


# --- requests the server answers unusually --------------------------------------------------------


def test_extended_messages_ended_by_a_query(conn: pw.RawConn, table: str) -> None:
    """Parse/Bind/Execute with no Sync, then a Query: one ReadyForQuery ends both."""
    conn.send(
        pw.parse("", f"select ssn from {table} where id = 1")
        + pw.bind("", "")
        + pw.execute()
        + pw.query(f"select email, ssn from {table} where id = 1")
    )
    msgs = conn.recv_until_ready()
    assert _tags(msgs) == "12DCTDCZ", msgs
    rows = _values(msgs)
    assert _masked_ssn(rows[0][0]) and rows[1][0] == b"<EMAIL>" and _masked_ssn(rows[1][1])
    assert conn.no_message_within(0.2)
    assert _values(conn.simple(f"select ssn from {table} where id = 1"))[0][0] != SSN.encode()


def test_copy_in_with_sync_inside(conn: pw.RawConn, table: str) -> None:
    """The server ignores Sync during COPY FROM STDIN (libpq pipelines one behind the Execute):
    the gateway's request bookkeeping must ignore it too, or the next results go astray."""
    conn.send(
        pw.parse("", f"copy {table} (id, ssn) from stdin")
        + pw.bind("", "")
        + pw.describe("P")
        + pw.execute()
        + pw.sync()
    )
    assert _tags(conn.recv_until("G")) == "12nG"
    conn.send(pw.copy_data(b"31\t111-22-3333\n") + pw.flush() + pw.sync())
    conn.send(pw.copy_data(b"32\t111-22-4444\n") + pw.copy_done() + pw.sync())
    assert _tags(conn.recv_until_ready()) == "CZ"
    conn.send(pw.query(f"copy {table} (id, ssn) from stdin"))
    assert _tags(conn.recv_until("G")) == "G"
    conn.send(pw.copy_data(b"33\t111-22-5555\n") + pw.sync() + pw.copy_done())
    assert _tags(conn.recv_until_ready()) == "CZ"
    rows = conn.rows(f"select ssn from {table} where id between 31 and 33 order by id")
    assert [r[0] for r in rows] == [b"***-**-3333", b"***-**-4444", b"***-**-5555"]


# --- fail closed --------------------------------------------------------------------------------


def test_rows_without_a_plan_close_the_session(
    conn: pw.RawConn, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a result ever reach the engine with no plan (a planner bug, say), its rows are
    not forwarded: the session ends with a FATAL instead."""
    from veilgate.gateway.masking import MaskingRelay

    def lose_the_plan(self: MaskingRelay, plan: Any, fields: Any, info: Any) -> None:
        self.session.upstream_rb.set_row_plan(None)

    monkeypatch.setattr(MaskingRelay, "_install", lose_the_plan)
    conn.send(pw.query(f"select ssn, email from {table} order by id"))
    msgs = conn.recv_all_until_close()
    assert "D" not in _tags(msgs), msgs
    err = pw.first_error(msgs)
    assert err is not None and err["S"] == "FATAL" and err["C"] == "XX000", err
    assert not leaked(_all_bytes(msgs))
