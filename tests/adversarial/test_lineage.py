"""Lineage: a masked column stays masked whatever SQL calls it on the way out.

Promise (README "Security model"): no raw value of a masked column reaches a client of a masked
tier, through any construct that renames or derives a column -- table aliases with column lists,
subquery / CTE column lists (recursive too), VALUES, functions in FROM (aliases, column
definition lists, ROWS FROM, ordinality), JOIN USING / NATURAL / join aliases, composite fields,
whole rows and ``t.*``, LATERAL, views and materialized views, set operations, set-returning and
value-scrambling functions (reverse, encode, translate), casts, aggregates, sub-selects.

Every statement runs through psql, psycopg (simple; extended text and binary), asyncpg and a raw
protocol client (simple; extended text and binary), outside and inside a transaction; each run
fails if any raw value (or its reversed / digits-only / hex / base64 form) is in anything the
client received.  The same statements through the unmasked tier show the values are really there.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import pytest
from tests.adversarial.masking_clients import MODES, attack, leaks
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

CONSTRUCTS: dict[str, str] = {
    "alias column list": "select b, reverse(c), upper(d) from {t} as x(a, b, c, d)",
    "subquery column list": "select z, lower(w) from (select ssn, email from {t}) s(z, w)",
    "cte column list": "with c(q, r) as (select ssn, card from {t}) select q, r || '' from c",
    "recursive cte": (
        "with recursive r(n, s) as (select 1, email from {t} union all"
        " select n + 1, reverse(s) from r where n < 2) select s from r"
    ),
    "values": "select * from (values ((select ssn from {t} where id = 1)), ('x')) v(k)",
    "unnest alias": "select u from unnest(array(select email from {t})) u",
    "rows from ordinality": (
        "select * from rows from (unnest(array(select ssn from {t}))) with ordinality r(v, o)"
    ),
    "column definition list": (
        "select r.*, (select ssn from {t} where id = 1) from jsonb_to_recordset("
        "(select jsonb_agg(jsonb_build_object('l', label)) from {t})) as r(l text)"
    ),
    "join using": "select * from {t} join (select id, ssn as s2 from {t}) s using (id)",
    "natural join": "select * from {t} natural join (select id, ssn as z from {t}) s",
    "join using alias": (
        "select j.id, ssn, email from {t} join (select id from {t}) s using (id) as j"
    ),
    "composite field": "select (x).ssn, (x).email, (x).card from {t} x",
    "whole row": "select x from {t} x",
    "row_to_json": "select row_to_json(x), to_jsonb(x.*) from {t} x",
    "lateral": (
        "select l.* from {t} x, lateral (select reverse(x.ssn) r, upper(x.email) e, x.card c) l"
    ),
    "view": "select * from {t}_v",
    "view derived": "select reverse(ssn), le from {t}_v",
    "materialized view": "select * from {t}_mv",
    "union all": (
        "select ssn from {t} union all select email from {t} union all select card from {t}"
    ),
    "set returning": "select unnest(array[ssn, email, card]), generate_series(1, 2) from {t}",
    "json built": "select json_build_object('a', ssn, 'b', email)::text, to_json(card) from {t}",
    "scramblers": (
        "select reverse(ssn), encode(convert_to(email, 'UTF8'), 'base64'),"
        " translate(card, '0123456789', 'abcdefghij'), encode(convert_to(api_secret, 'UTF8'),"
        " 'hex') from {t}"
    ),
    "casts": "select ssn::varchar, email::bpchar, card::text, api_secret::name from {t}",
    "aggregates": (
        "select string_agg(ssn, ','), array_agg(email), json_agg(card), max(api_secret) from {t}"
    ),
    "sub-selects": "select (select ssn from {t} where id = 1), array(select email from {t})",
    "names swapped": "select email as ssn, ssn as email, card as id from {t}",
    "quoted names": 'select "ssn" as "SSN", "email" as "label" from public.{t}',
    "qualified": "select public.{t}.ssn, {t}.email from public.{t}",
    "format": "select format('%s|%s|%s', ssn, email, card) from {t}",
    "case": "select case when id = 1 then ssn else email end from {t}",
    "coalesce": "select coalesce(api_secret, ssn), greatest(ssn, email) from {t}",
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_the_raw_tier_sees_the_values(raw: pw.Target, table: str, name: str) -> None:
    """The statements really reach masked values: unmasked, they return them (so the leak
    check of the masked runs can fail)."""
    out = attack(raw, "wire-simple", CONSTRUCTS[name].format(t=table))
    assert out.sqlstate is None, out.message
    assert out.leaked(), f"{name}: no raw value in the unmasked result"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_no_construct_returns_a_raw_value(
    masked: pw.Target, table: str, name: str, mode: str
) -> None:
    """Promise: whatever renames or derives a masked column, its raw value is not returned."""
    out = attack(masked, mode, CONSTRUCTS[name].format(t=table))
    assert not out.leaked(), (name, mode, out.leaked())
    # masked, not refused: lineage (not a denial) protects these
    assert out.sqlstate is None, (name, mode, out.sqlstate, out.message)


@pytest.mark.parametrize("mode", ["psql", "psycopg-binary", "asyncpg", "wire-extended-binary"])
@pytest.mark.parametrize("name", ["alias column list", "lateral", "view derived", "union all"])
def test_inside_a_transaction(masked: pw.Target, table: str, name: str, mode: str) -> None:
    """Promise: the same inside BEGIN ... COMMIT (plans are made per result, whatever the
    transaction state); the transaction commits normally."""
    out = attack(masked, mode, CONSTRUCTS[name].format(t=table), in_tx=True)
    assert not out.leaked(), (name, mode, out.leaked())
    assert out.sqlstate is None and out.commit == "COMMIT", (out.message, out.commit)


def test_values_kept_where_lineage_proves_them_unmasked(masked: pw.Target, table: str) -> None:
    """Precision: values computed only from unmasked columns come back as they are (the
    resolver does not mask every computed column of a statement that touches a masked table)."""
    out = attack(
        masked,
        "wire-simple",
        f"select count(*), max(id), count(ssn), max(upper(label)), bool_or(ssn is null)"
        f" from {table}",
    )
    assert out.sqlstate is None, out.message
    assert out.rows == [[b"2", b"2", b"2", b"TWO", b"f"]], out.rows


def test_union_of_one_column_keeps_its_rule(masked: pw.Target, table: str) -> None:
    """A value passed through unchanged keeps its column rule (partial, last 4 kept) instead of
    a whole-value redaction."""
    out = attack(
        masked, "wire-simple", f"select ssn from {table} union all select ssn from {table}"
    )
    values = sorted(v for (v,) in out.rows if v is not None)
    assert values and all(v.endswith(b"8141") or v.endswith(b"4329") for v in values), values
    assert not out.leaked()


def test_temporary_tables_of_the_session(masked: pw.Target, table: str) -> None:
    """A temporary table created in the session's open transaction (invisible to the gateway's
    catalog connection) is resolved from its CREATE: its unmasked values come back as they
    are, and reading a masked column through it is still masked."""
    conn = pw.connect(masked.endpoint())
    try:
        conn.simple("begin")
        conn.simple("create temp table adv_tmp (a int, b text) on commit drop")
        conn.simple("insert into adv_tmp values (7, 'plain')")
        msgs = conn.simple(
            f"select a + 1, upper(b), (select reverse(ssn) from {table} limit 1) from adv_tmp"
        )
        rows = [pw.data_row(m.body) for m in msgs if m.tag == "D"]
        assert rows and rows[0][:2] == [b"8", b"PLAIN"], msgs
        assert not leaks(b"".join(m.body for m in msgs))
        conn.simple("commit")
    finally:
        conn.terminate()


def test_cursors_and_prepared_statements(masked: pw.Target, table: str) -> None:
    """FETCH from a DECLAREd cursor and EXECUTE of a PREPAREd statement return the rows of the
    statement they were declared with: the same lineage applies."""
    conn = pw.connect(masked.endpoint())
    try:
        received = b""
        for sql in (
            "begin",
            f"declare c cursor for select reverse(b) from {table} as x(a, b)",
            "fetch all from c",
            "commit",
            f"prepare p as select lower(q) from (select email from {table}) s(q)",
            "execute p",
        ):
            msgs = conn.simple(sql)
            assert pw.first_error(msgs) is None, (sql, msgs)
            received += b"".join(m.body for m in msgs)
        assert not leaks(received)
    finally:
        conn.terminate()


@pytest.mark.parametrize("mode", MODES)
def test_a_field_of_a_whole_row_is_masked_as_its_column(
    masked: pw.Target, table: str, mode: str
) -> None:
    """``(x).col`` is that column: masked by its own rule (``ssn`` keeps its last four digits)
    and an unmasked one kept, not the whole row redacted."""
    out = attack(masked, mode, f"select (x).label, (x.*).ssn, (row(x.id, x.ssn)).f2 from {table} x")
    assert out.sqlstate is None, out.message
    assert not out.leaked(), out.received
    assert b"one" in out.received and b"8141" in out.received, out.received
    assert b"MASKED" not in out.received, out.received
