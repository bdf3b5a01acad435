"""Catalog changes committed by other connections reach masking before a plan uses stale facts.

Promise (README "Security model"): the gateway caches catalog facts (column names, view
definitions, function bodies) per upstream login.  A plan whose lineage went through a view's
definition or a SQL function's body is checked against the catalog (a fingerprint of the user
catalog rows, one round trip shared by concurrent sessions) before every use, so another
connection replacing a view or a function right before the client's query cannot make the
gateway pass the new definition's masked column as the old one's harmless value; any other
cached fact (a column renamed into a masked name) is checked at least every
``CHECK_INTERVAL_S`` (1 s).  The changes here are made by a connection outside the gateway (a
migration tool, another gateway), then the client's query follows at once.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from tests.adversarial.masking_clients import leaks
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


def _other(pg_cluster: Any, sql: str) -> None:
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(sql)


def _rows(conn: pw.RawConn, sql: str, mode: str) -> bytes:
    if mode == "wire-simple":
        msgs = conn.simple(sql)
    else:
        fmt = 1 if mode.endswith("binary") else 0
        conn.send(
            pw.parse("", sql)
            + pw.bind("", "", result_formats=(fmt,))
            + pw.describe("P")
            + pw.execute()
            + pw.sync()
        )
        msgs = conn.recv_until_ready()
    assert pw.first_error(msgs) is None, msgs
    return b"".join(m.body for m in msgs if m.tag == "D")


WIRE = ["wire-simple", "wire-extended-text", "wire-extended-binary"]


@pytest.mark.parametrize("mode", WIRE)
def test_a_view_replaced_by_another_connection(
    masked: pw.Target, table: str, pg_cluster: Any, mode: str
) -> None:
    view = f"{table}_fv_{mode[5:].replace('-', '_')}"
    _other(pg_cluster, f"create view {view} as select id, label as info from {table}")
    conn = pw.connect(masked.endpoint())
    try:
        for _ in range(2):  # planned and cached
            assert b"one" in _rows(conn, f"select info from {view} where id = 1", mode)
        _other(
            pg_cluster,
            f"create or replace view {view} as select id, ssn as info from {table}",
        )
        got = _rows(conn, f"select info from {view} where id = 1", mode)
        assert not leaks(got), got
        assert got, "the row is still returned (masked)"
    finally:
        conn.terminate()


@pytest.mark.parametrize("mode", WIRE)
def test_a_function_replaced_by_another_connection(
    masked: pw.Target, table: str, pg_cluster: Any, mode: str
) -> None:
    fn = f"{table}_ff_{mode[5:].replace('-', '_')}"
    _other(
        pg_cluster,
        f"create function {fn}() returns text language sql"
        f" as 'select label from {table} where id = 1'",
    )
    conn = pw.connect(masked.endpoint())
    try:
        for _ in range(2):
            assert b"one" in _rows(conn, f"select {fn}()", mode)
        _other(
            pg_cluster,
            f"create or replace function {fn}() returns text language sql"
            f" as 'select ssn from {table} where id = 1'",
        )
        got = _rows(conn, f"select {fn}()", mode)
        assert not leaks(got), got
    finally:
        conn.terminate()


def test_many_sessions_racing_a_replacement(masked: pw.Target, table: str, pg_cluster: Any) -> None:
    """Sessions querying while another connection flips a view between a harmless and a
    masked column: no answer ever holds a raw value."""
    view = f"{table}_flip"
    _other(pg_cluster, f"create view {view} as select id, label as info from {table}")
    conns = [pw.connect(masked.endpoint()) for _ in range(4)]
    try:
        for c in conns:
            assert b"one" in _rows(c, f"select info from {view}", "wire-simple")
        for i in range(12):
            col = "ssn" if i % 2 == 0 else "label"
            _other(
                pg_cluster,
                f"create or replace view {view} as select id, {col} as info from {table}",
            )
            for c in conns:
                got = _rows(c, f"select info from {view}", "wire-simple")
                assert not leaks(got), (i, got)
    finally:
        for c in conns:
            c.terminate()


def test_a_column_renamed_into_a_masked_name(
    masked: pw.Target, table: str, pg_cluster: Any
) -> None:
    """A column another connection renames so that a column rule (``vg_adv_*.ssn``: last four
    kept) masks it is masked once the check interval has passed (the plan went through no
    definition: checked at most every second)."""
    t = f"{table}_ren"
    _other(
        pg_cluster,
        f"create table {t} (id int, plain text); insert into {t} values (1, 'kept-value-123456')",
    )
    conn = pw.connect(masked.endpoint())
    try:
        assert b"kept-value" in _rows(conn, f"select * from {t}", "wire-simple")
        _other(pg_cluster, f"alter table {t} rename plain to ssn")
        time.sleep(1.2)
        got = _rows(conn, f"select * from {t}", "wire-simple")
        assert b"kept-value" not in got and b"3456" in got, got
    finally:
        conn.terminate()


def test_the_raw_tier_sees_the_replacement(raw: pw.Target, table: str, pg_cluster: Any) -> None:
    view = f"{table}_fv_raw"
    _other(pg_cluster, f"create view {view} as select id, label as info from {table}")
    conn = pw.connect(raw.endpoint())
    try:
        assert b"one" in _rows(conn, f"select info from {view} where id = 1", "wire-simple")
        _other(pg_cluster, f"create or replace view {view} as select id, ssn as info from {table}")
        assert leaks(_rows(conn, f"select info from {view} where id = 1", "wire-simple"))
    finally:
        conn.terminate()
