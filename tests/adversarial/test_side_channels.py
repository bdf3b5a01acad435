"""Side channels: errors, notices, notifications and parameter values do not carry masked values.

Promise (README "Security model"): on a masked tier, ErrorResponse / NoticeResponse fields,
NotificationResponse payloads and ParameterStatus values are masked with the same column rules
and detectors as rows: a unique violation's ``Key (col)=(value)`` shows the column's masked form,
a NOT NULL / CHECK violation's failing row is redacted, and values found by the detectors are
masked wherever server-side code raised them or another session notified them.

Each attack runs through the raw protocol client (every byte it receives is checked) and through
psql, psycopg and asyncpg; the unmasked tier shows the same messages carry the raw values.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from tests.adversarial.masking_clients import (
    CARD,
    EMAIL,
    MODES,
    SSN,
    attack,
    leaks,
    make_table,
)
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def table(pg_cluster: Any) -> str:
    t = make_table(pg_cluster)
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        # a masked destination (copy_card: same rule as card) that a write can collide in
        conn.execute(f"insert into {t}_copy (id, copy_card) values (1, %s)", (CARD,))
    return t


ATTACKS: dict[str, tuple[str, str]] = {
    # name: (statement, SQLSTATE it fails with)
    "unique violation": (
        "insert into {t}_copy (id, copy_card) select 9, card from {t} where id = 1",
        "23505",
    ),
    "not null violation": (
        "insert into {t}_copy (id, copy_card) select null, card from {t} where id = 1",
        "23502",
    ),
    "raise exception": (
        "do $$begin raise exception 'found %', (select email from {t} where id = 1); end$$",
        "P0001",
    ),
    "raise with detail": (
        "do $$begin raise exception 'x' using detail = (select ssn from {t} where id = 1),"
        " hint = (select card from {t} where id = 1); end$$",
        "P0001",
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_the_raw_tier_sees_values_in_errors(raw: pw.Target, table: str, name: str) -> None:
    sql, code = ATTACKS[name]
    out = attack(raw, "wire-simple", sql.format(t=table))
    assert out.sqlstate == code, out.message
    assert out.leaked(), (name, out.received)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_errors_do_not_echo_masked_values(
    masked: pw.Target, table: str, name: str, mode: str
) -> None:
    """Promise: the error still says what went wrong (same SQLSTATE) but no raw value."""
    sql, code = ATTACKS[name]
    out = attack(masked, mode, sql.format(t=table))
    assert out.sqlstate == code, (mode, out.sqlstate, out.message)
    assert not out.leaked(), (name, mode, out.leaked(), out.received[:400])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_errors_inside_a_transaction_do_not_echo_masked_values(
    masked: pw.Target, table: str, name: str, mode: str
) -> None:
    """The same inside BEGIN ... COMMIT: the error fails the transaction (COMMIT answers
    ROLLBACK) and carries no raw value."""
    sql, code = ATTACKS[name]
    out = attack(masked, mode, sql.format(t=table), in_tx=True)
    assert out.sqlstate == code, (mode, out.sqlstate, out.message)
    assert out.commit == "ROLLBACK", out.commit
    assert not out.leaked(), (name, mode, out.leaked(), out.received[:400])


def test_unique_violation_shows_the_column_rule(masked: pw.Target, table: str) -> None:
    out = attack(masked, "wire-simple", ATTACKS["unique violation"][0].format(t=table))
    assert out.detail == "Key (copy_card)=(<CARD>) already exists.", out.detail


@pytest.mark.parametrize("mode", ["psql", "psycopg-text", "asyncpg", "wire-simple"])
def test_notices_are_masked(masked: pw.Target, table: str, mode: str) -> None:
    sql = (
        f"do $$begin raise notice 'v=% w=%', (select ssn from {table} where id = 1),"
        f" (select email from {table} where id = 1); end$$"
    )
    out = attack(masked, mode, sql)
    assert out.sqlstate is None, out.message
    assert not out.leaked(), out.received[:400]


def test_notifications_from_other_sessions_are_masked(masked: pw.Target, pg_cluster: Any) -> None:
    """A LISTENing masked session gets NOTIFY payloads (sent by another, unmasked session)
    with the values the detectors find masked."""
    conn = pw.connect(masked.endpoint())
    try:
        conn.simple("listen adv_channel")
        with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as other:
            other.execute(f"notify adv_channel, 'ssn {SSN} mail {EMAIL}'")
        deadline = time.monotonic() + 20
        got: list[pw.Msg] = []
        while not [m for m in got if m.tag == "A"]:
            assert time.monotonic() < deadline, "no notification arrived"
            got += conn.simple("select 1")
        (note,) = [m for m in got if m.tag == "A"]
        _pid, channel, payload = pw.notification(note.body)
        assert channel == "adv_channel"
        assert payload.startswith("ssn ") and not leaks(note.body), payload
    finally:
        conn.terminate()


def test_parameter_status_values_are_masked(masked: pw.Target) -> None:
    conn = pw.connect(masked.endpoint())
    try:
        msgs = conn.simple(f"set application_name = 'me {EMAIL}'")
        status = [pw.parameter_status(m.body) for m in msgs if m.tag == "S"]
        assert status and all(EMAIL not in v for _, v in status), status
        assert not leaks(b"".join(m.body for m in msgs))
    finally:
        conn.terminate()
