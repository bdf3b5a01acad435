"""Pipelines on a masked session: an error in the middle of a pipelined batch.

Promise: after an ErrorResponse to an extended-protocol message the server skips every message
up to the next Sync, including the ones the client sends *after* it has seen the error (libpq's
pipeline mode goes on sending until it syncs).  The gateway's picture of the server's statements
and portals follows that: the skipped messages change nothing, the Sync's ReadyForQuery ends the
batch, and the session goes on -- no ``08P01`` "lost track" from the gateway, results after the
Sync masked as usual.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as e
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


def test_psycopg_pipeline_aborted_then_synced(target: pw.Target, table: str) -> None:
    """psycopg's own ``test_pipeline_aborted``, with a masked column read after the Sync."""
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        with conn.pipeline() as p:
            c1 = conn.execute("select 1")
            with pytest.raises(e.UndefinedTable):
                conn.execute("select * from doesnotexist").fetchone()
            with pytest.raises(e.PipelineAborted):
                conn.execute("select 'aborted'").fetchone()
            p.sync()
            c2 = conn.execute("select 2")
            c3 = conn.execute(f"select ssn from {table} order by id")
        assert c1.fetchone() == (1,)
        assert c2.fetchone() == (2,)
        ssns = [r[0] for r in c3.fetchall()]
        assert len(ssns) == 2 and SSN not in ssns and not leaked(repr(ssns)), ssns
        assert conn.execute("select 40 + 2").fetchone() == (42,)


def test_wire_messages_after_the_error_are_skipped(target: pw.Target, table: str) -> None:
    """The same on the wire: Parse / Bind / Execute sent after the client read the error
    (Flush, no Sync) are skipped by the server; named statements they would have made do not
    exist; the Sync's ReadyForQuery ends the batch and a masked read works after it."""
    with pw.connect(target.endpoint()) as c:
        c.send(pw.parse("s1", "select * from doesnotexist") + pw.flush())
        msgs = c.recv_until("E")
        assert pw.first_error(msgs)["C"] == "42P01"  # type: ignore[index]
        c.send(
            pw.parse("s2", f"select ssn from {table}")
            + pw.bind("", "s2")
            + pw.execute()
            + pw.flush()
        )
        assert c.no_message_within(0.5)  # skipped: nothing answers
        c.send(pw.sync())
        msgs = c.recv_until_ready()
        assert [m.tag for m in msgs] == ["Z"], msgs
        # s2 was never made: not on the server, and the gateway agrees (its policy refuses an
        # EXECUTE of a statement the session has not prepared)
        assert c.scalar("select count(*) from pg_prepared_statements where name = 's2'") == "0"
        err = pw.first_error(c.simple("execute s2"))
        assert err is not None and "not prepared" in err["M"], err
        rows = c.rows(f"select ssn from {table} order by id")
        assert len(rows) == 2 and not leaked(repr(rows)), rows


POLICY = """\
version: 1
tiers:
  - name: rw
    match: {roles: [db.readwrite]}
    rules:
      - {id: all, action: allow, message: "everything", classes: [read, write, ddl, transaction,
         session, prepare, utility]}
"""


def test_unfollowed_execute_fails_then_parse_before_sync(policy_gateway: Any) -> None:
    """A policy (unmasked) session, where the gateway follows Bind / Execute only when it
    must: an Execute of a prepared statement fails, the client reads the error and sends a
    Parse before its Sync (libpq pipeline mode with prepared statements).  The server skips
    the Parse; the gateway, which did not see the error, takes the Sync's ReadyForQuery with
    the Parse unanswered for what it is (skipped) instead of ending the session (08P01)."""
    target = policy_gateway(POLICY, "db.readwrite").target
    with pw.connect(target.endpoint()) as c:
        c.send(pw.parse("s", "select 1 / $1::int") + pw.sync())
        assert [m.tag for m in c.recv_until_ready()] == ["1", "Z"]
        c.send(pw.bind("", "s", [b"0"]) + pw.execute() + pw.flush())
        err = pw.first_error(c.recv_until("E"))
        assert err is not None and err["C"] == "22012", err
        c.send(pw.parse("t", "select 2") + pw.flush())
        assert c.no_message_within(0.5)  # skipped
        c.send(pw.sync())
        assert [m.tag for m in c.recv_until_ready()] == ["Z"]
        assert c.scalar("select count(*) from pg_prepared_statements where name = 't'") == "0"
        c.send(pw.bind("", "s", [b"2"]) + pw.execute() + pw.sync())
        rows = [pw.data_row(m.body) for m in c.recv_until_ready() if m.tag == "D"]
        assert rows == [[b"0"]], rows
