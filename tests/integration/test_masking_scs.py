"""standard_conforming_strings on a masked session.

Promise: a masked session may turn standard_conforming_strings off (psycopg's escaping tests do;
so do old applications), and the gateway then reads statement text the way the server does:
a backslash inside an ordinary ``'...'`` literal escapes the next character, a quote included,
so ``'a\\'', ssn || '' from t --'`` hides nothing from the masking analysis.  A text that reads
differently with the setting on and off is read only once the gateway knows the server's
setting: it waits for the requests before it to be answered (the server reports a change at
their ReadyForQuery), and inside an unsynced pipeline, where it cannot wait, it is refused
(0A000) -- never read the wrong way.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.masking_setup import SSN, leaked, make_table, start_gateway

pytestmark = pytest.mark.pg


@pytest.fixture
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def target(gateway_factory: Any, tmp_path: Path) -> pw.Target:
    handle: GatewayHandle = start_gateway(
        gateway_factory, tmp_path / "audit.jsonl", "db.masked"
    ).handle
    return pw.gateway_target(handle)


def _rows(msgs: list[pw.Msg]) -> list[list[bytes | None]]:
    return [pw.data_row(m.body) for m in msgs if m.tag == "D"]


def test_psycopg_escaping_with_scs_off(target: pw.Target) -> None:
    """psycopg's ``pq/test_escaping`` ``*_1char[off]``: SET it off, escape, read back."""
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        pgconn = conn.pgconn
        res = pgconn.exec_(b"set standard_conforming_strings to off")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        esc = pq.Escaping(pgconn)
        assert esc.escape_string(b"\\") == b"\\\\"
        lit = esc.escape_literal(b"a\\'b")
        res = pgconn.exec_(b"select " + lit + b", 'c\\'d', 'e\\\\f'")
        assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
        assert [res.get_value(0, i) for i in range(3)] == [b"a\\'b", b"c'd", b"e\\f"]
        assert conn.execute("show standard_conforming_strings").fetchone() == ("off",)


def test_a_literal_that_hides_a_column_with_scs_on(target: pw.Target, table: str) -> None:
    """With the setting off the server reads ``'a\\''`` as one literal (``a'``) and the masked
    column after it as a column; read with it on, the same text is two constants.  The masked
    value is masked."""
    sql = f"select 'a\\'', ssn || '' from {table} where id = 1 --', 1"
    with pw.connect(target.endpoint()) as c:
        assert pw.first_error(c.simple("set standard_conforming_strings = off")) is None
        msgs = c.simple(sql)
        assert pw.first_error(msgs) is None, msgs
        rows = _rows(msgs)
        assert len(rows) == 1 and rows[0][0] == b"a'", rows
        assert rows[0][1] != SSN.encode() and not leaked(repr(rows)), rows
        # the same through Parse / Bind / Execute, and a prepared statement executed later
        c.send(pw.parse("p", sql) + pw.bind("", "p") + pw.execute() + pw.sync())
        rows = _rows(c.recv_until_ready())
        assert len(rows) == 1 and not leaked(repr(rows)), rows
        c.simple("set standard_conforming_strings = on")
        c.send(pw.bind("", "p") + pw.execute() + pw.sync())
        rows = _rows(c.recv_until_ready())
        assert len(rows) == 1 and not leaked(repr(rows)), rows


def test_text_after_a_change_in_flight_waits_for_it(target: pw.Target, table: str) -> None:
    """SET (Query) and then at once, before its ReadyForQuery, a Parse whose text depends on
    the setting: read as the server reads it (with the setting off), masked."""
    sql = f"select 'a\\'', ssn || '' from {table} where id = 1 --', 1"
    with pw.connect(target.endpoint()) as c:
        c.send(
            pw.query("set standard_conforming_strings = off")
            + pw.parse("", sql)
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready() + c.recv_until_ready()
        assert pw.first_error(msgs) is None, msgs
        rows = _rows(msgs)
        assert len(rows) == 1 and rows[0][0] == b"a'" and not leaked(repr(rows)), rows


def test_text_inside_an_unsynced_pipeline_is_refused(target: pw.Target, table: str) -> None:
    """The setting may change in an Execute of the same pipeline (reported only at its Sync):
    a text that depends on it cannot be read there, and is refused rather than guessed."""
    sql = f"select 'a\\'', ssn || '' from {table} where id = 1 --', 1"
    with pw.connect(target.endpoint()) as c:
        c.send(
            pw.parse("", "set standard_conforming_strings = off")
            + pw.bind("", "")
            + pw.execute()
            + pw.parse("", sql)
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = c.recv_until_ready()
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "0A000", msgs
        assert "reads differently with standard_conforming_strings" in err["M"], err
        assert not _rows(msgs) and not leaked(repr(msgs))
        # the session goes on; with nothing in flight the same text is read and masked
        rows = _rows(c.simple(sql))
        assert len(rows) == 1 and not leaked(repr(rows)), rows


def test_text_held_behind_a_copy_in_does_not_hang(target: pw.Target) -> None:
    """A client that sends a setting-dependent Parse right behind a COPY FROM STDIN Query
    (breaking the protocol: the server wants copy data): the gateway does not wait for the
    copy's end (the client, held, could never send it): the session gets an error and goes
    on, and the other sessions are not affected."""
    with pw.connect(target.endpoint()) as c:
        c.simple("create temp table vg_scs_in (v text)")
        c.send(pw.query("copy vg_scs_in from stdin") + pw.parse("", "select 'a\\b'") + pw.sync())
        msgs = c.recv_until("E", timeout=10)
        assert pw.first_error(msgs) is not None, msgs
    with pw.connect(target.endpoint()) as other:
        assert other.scalar("select 42") == "42"
