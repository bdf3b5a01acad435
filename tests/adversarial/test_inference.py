"""Inference and laundering: a masked column cannot be used to rebuild its values, nor copied out.

Promise (README "Security model"): on a tier that masks a column, a statement that uses it other
than by selecting it -- filtering, joining, sorting, grouping, de-duplicating, limiting on it,
passing it to something that can fail or branch on it, writing it somewhere not masked the same
way, renaming it out of its rule -- is refused with ``42501`` naming the column, *before the
server runs it*: nothing it would have changed is changed, and inside a transaction the server
fails the transaction (COMMIT answers ROLLBACK), exactly as for the statement's own error.  What
the policy allows per rule (``allow: [equals, join]`` on the keyed-hash e-mail) works.

Each statement runs through psql, psycopg (simple; extended text and binary), asyncpg and a raw
protocol client (simple; extended text and binary), outside and inside a transaction.  The same
statements through the unmasked tier run (so the refusal is the masking tier's doing).
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

from typing import Any

import psycopg
import pytest
from tests.adversarial.masking_clients import MODES, SSN, attack
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

DENIED: dict[str, tuple[str, str]] = {
    # name: (statement, masked column it uses)
    "where equals": ("select id from {t} where ssn = '536-22-8141'", "ssn"),
    "where like": ("select id from {t} where ssn like '5%'", "ssn"),
    "where through an alias list": ("select id from {t} x(a, b) where b like '5%'", "ssn"),
    "where through a view": ("select id from {t}_v where ssn like '5%'", "ssn"),
    "where through a cte": (
        "with c as (select ssn s from {t}) select 1 from c where s like '5%'",
        "ssn",
    ),
    "join on": ("select 1 from {t} a join {t} b on a.ssn = b.ssn", "ssn"),
    "join using": ("select 1 from {t} join (select id, ssn from {t}) s using (ssn)", "ssn"),
    "order by": ("select id from {t} order by ssn", "ssn"),
    "order by position": ("select ssn from {t} order by 1", "ssn"),
    "group by": ("select count(*) from {t} group by ssn", "ssn"),
    "having": ("select 1 from {t} group by id having max(ssn) > '5'", "ssn"),
    "distinct": ("select distinct ssn from {t}", "ssn"),
    "distinct on": ("select distinct on (ssn) id from {t}", "ssn"),
    "window order": ("select rank() over (order by ssn) from {t}", "ssn"),
    "window partition": ("select count(*) over (partition by card) from {t}", "card"),
    "aggregate filter": ("select count(*) filter (where ssn > '5') from {t}", "ssn"),
    "limit": ("select id from {t} limit (select length(ssn) from {t} where id = 1)", "ssn"),
    "case when": ("select case when ssn like '5%' then 1 end from {t}", "ssn"),
    "cast that can fail": ("select ssn::int from {t}", "ssn"),
    "arithmetic that can fail": ("select 1 / (length(card) - 16) from {t}", "card"),
    "exists": ("select exists (select 1 from {t} where ssn like '5%')", "ssn"),
    "in subquery": ("select id from {t} where id in (select id from {t} where ssn > '5')", "ssn"),
    "union de-duplication": ("select ssn from {t} union select '536-22-8141'", "ssn"),
    "nullif": ("select nullif(ssn, '536-22-8141') from {t}", "ssn"),
    "rows counted by a split": (
        "select regexp_split_to_table(ssn, '-') from {t}",
        "ssn",
    ),
    "set-returning function that can fail": (
        "select (jsonb_each_text(to_jsonb(x))).* from {t} x",
        "api_secret",
    ),
    "record parsed into typed columns": (
        "select * from jsonb_to_recordset((select jsonb_agg(x) from {t} x))"
        " as r(ssn int, email text)",
        "api_secret",
    ),
    "settings laundering": ("select set_config('adv.x', ssn, false) from {t}", "ssn"),
    "notification laundering": ("select pg_notify('adv', ssn) from {t}", "ssn"),
    "explain": ("explain select id from {t} where ssn = '536-22-8141'", "ssn"),
    "email filter not allowed": ("select id from {t} where email like 'a%'", "email"),
    "delete where": ("delete from {t} where ssn like '5%'", "ssn"),
    "update where": ("update {t} set label = 'x' where ssn like '5%'", "ssn"),
    "insert select into a plain column": (
        "insert into {t}_copy (id, plain) select id, ssn from {t}",
        "ssn",
    ),
    "update set from a masked column": ("update {t} set label = ssn where id = 1", "ssn"),
    "create table as": ("create table {t}_ctas as select reverse(ssn) r from {t}", "ssn"),
    "select into a temporary table": ("select card into temp {t}_tmp from {t}", "card"),
    "partial rule into a replace column (derived)": (
        "insert into {t}_copy (id, copy_card) select id, ssn from {t}",
        "ssn",
    ),
    "rename column": ("alter table {t} rename column ssn to s2", "ssn"),
    "generated column": (
        "alter table {t} add column g text generated always as (reverse(ssn)) stored",
        "ssn",
    ),
    "prepare": ("prepare q1 as select id from {t} where ssn = $1", "ssn"),
    "declare": ("declare c1 cursor for select id from {t} order by ssn", "ssn"),
}


def _rows(pg_cluster: Any, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def _fingerprint(pg_cluster: Any, table: str) -> list[tuple[Any, ...]]:
    """What the statements would change (checked unchanged after every refusal)."""
    rows = _rows(pg_cluster, f"select id, ssn, label from {table} order by id")
    rows += _rows(pg_cluster, f"select count(*) from {table}_copy")
    rows += _rows(
        pg_cluster,
        "select count(*) from pg_class where relname like 'vg_adv_%ctas' or relname like"
        " 'vg_adv_%tmp'",
    )
    rows += _rows(
        pg_cluster,
        f"select count(*) from pg_attribute where attrelid = '{table}'::regclass and"
        " attname in ('s2', 'g')",
    )
    return rows


@pytest.mark.parametrize("name", ["where like", "order by", "insert select into a plain column"])
def test_the_raw_tier_runs_them(raw: pw.Target, table: str, name: str) -> None:
    """Unmasked, the statements run (the refusals below are the masking tier's)."""
    sql = DENIED[name][0].format(t=table)
    out = attack(raw, "wire-simple", f"begin; {sql}; rollback")
    assert out.sqlstate is None, out.message


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(DENIED))
def test_refused_before_the_server_runs_it(
    masked: pw.Target, table: str, pg_cluster: Any, name: str, mode: str
) -> None:
    """Promise: 42501 naming the column; the server never ran the statement."""
    sql, column = DENIED[name]
    before = _fingerprint(pg_cluster, table)
    out = attack(masked, mode, sql.format(t=table))
    assert out.sqlstate == "42501", (name, mode, out.sqlstate, out.message)
    assert f"public.{table}.{column}" in out.message, out.message
    assert out.hint, "a refusal says what to do instead"
    assert not out.leaked()
    assert _fingerprint(pg_cluster, table) == before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "name", ["where like", "delete where", "insert select into a plain column", "join on"]
)
def test_a_refusal_fails_the_transaction_on_the_server(
    masked: pw.Target, table: str, pg_cluster: Any, name: str, mode: str
) -> None:
    """Promise: inside a transaction, the server's transaction state stays authoritative: the
    refusal fails the transaction, COMMIT rolls it back."""
    sql, _ = DENIED[name]
    out = attack(masked, mode, sql.format(t=table), in_tx=True)
    assert out.sqlstate == "42501", (mode, out.message)
    assert out.commit == "ROLLBACK", (mode, out.commit)


def test_work_before_a_refusal_is_not_committed(
    masked: pw.Target, table: str, pg_cluster: Any
) -> None:
    conn = pw.connect(masked.endpoint())
    try:
        conn.simple("begin")
        conn.simple(f"update {table} set label = 'changed' where id = 2")
        msgs = conn.simple(f"select id from {table} where ssn like '5%'")
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
        msgs = conn.simple("select 1")
        assert (pw.first_error(msgs) or {}).get("C") == "25P02"  # in a failed transaction
        done = conn.simple("commit")
        assert [pw.command_tag(m.body) for m in done if m.tag == "C"] == ["ROLLBACK"]
    finally:
        conn.terminate()
    assert _rows(pg_cluster, f"select label from {table} where id = 2") == [("two",)]


def test_a_pipeline_skips_to_sync_after_a_refused_parse(masked: pw.Target, table: str) -> None:
    """Extended protocol: the refused Parse fails like the statement's own error would: the rest
    of the pipeline up to Sync is skipped, one ReadyForQuery per Sync, the next one works."""
    conn = pw.connect(masked.endpoint())
    try:
        conn.send(
            pw.parse("s1", f"select id from {table} where ssn like '5%'")
            + pw.bind("", "s1")
            + pw.execute()
            + pw.sync()
            + pw.parse("", "select 42")
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        first = conn.recv_until_ready()
        assert [m.tag for m in first] == ["E", "Z"], first
        assert pw.error_fields(first[0].body)["C"] == "42501"
        second = conn.recv_until_ready()
        assert [pw.data_row(m.body) for m in second if m.tag == "D"] == [[b"42"]]
        # the refused named statement was never created
        conn.send(pw.bind("", "s1") + pw.execute() + pw.sync())
        third = conn.recv_until_ready()
        assert (pw.first_error(third) or {}).get("C") == "26000"
    finally:
        conn.terminate()


@pytest.mark.parametrize("mode", MODES)
def test_uses_the_policy_allows_work(masked: pw.Target, table: str, mode: str) -> None:
    """The e-mail rule allows equality and equality joins (a keyed hash keeps them working):
    those run, and the e-mail comes back hashed."""
    out = attack(
        masked,
        mode,
        f"select a.id, a.email from {table} a join {table} b on a.email = b.email"
        f" where a.email = 'alice.smith@example.org'",
    )
    assert out.sqlstate is None, (mode, out.message)
    one_row = b"(1 row)" in out.received if mode == "psql" else len(out.rows) == 1
    assert one_row and not out.leaked(), (out.rows, out.received[:300])


def test_writing_into_a_column_masked_the_same_way_is_allowed(
    masked: pw.Target, raw: pw.Target, table: str
) -> None:
    """card and copy_card share one rule: copying card there is allowed, and reading it back
    through the masked tier shows it masked (the raw tier shows the copy really happened)."""
    out = attack(
        masked,
        "wire-simple",
        f"insert into {table}_copy (id, copy_card) select id, card from {table} where id = 1",
    )
    assert out.sqlstate is None, out.message
    back = attack(masked, "wire-simple", f"select copy_card from {table}_copy")
    assert back.rows and not back.leaked(), back.rows
    assert attack(raw, "wire-simple", f"select copy_card from {table}_copy").leaked()


@pytest.mark.parametrize(
    "off",
    [
        "set standard_conforming_strings = off",
        "begin; set local standard_conforming_strings to 'off'",
        "select set_config('standard_conforming_strings', 'off', false)",
        "begin; select set_config('standard_conforming_strings', 'off', true)",
    ],
)
def test_standard_conforming_strings_off_reads_text_as_the_server(
    masked: pw.Target, table: str, off: str
) -> None:
    """Promise: the gateway reads statement text as the server does.  Every way of turning
    standard_conforming_strings off (for the session, for the transaction, through set_config)
    is followed once the server reports it, so a literal that hides a masked column when a
    backslash escapes its quote (``'a\\'', ssn || '' ... --'``) is read as the server reads it
    and the column's value stays masked, in the same transaction and after it."""
    hide = f"select 'a\\'', ssn || '' from {table} where id = 1 --', 1"
    conn = pw.connect(masked.endpoint())
    try:
        assert pw.first_error(conn.simple(off)) is None
        for _ in range(2):
            msgs = conn.simple(hide)
            assert pw.first_error(msgs) is None, msgs
            rows = [pw.data_row(m.body) for m in msgs if m.tag == "D"]
            assert len(rows) == 1 and rows[0][0] == b"a'", rows
            assert SSN.encode() not in repr(rows).encode(), rows
        conn.simple("commit")
        assert pw.first_error(conn.simple("set standard_conforming_strings = on")) is None
        assert conn.scalar("show standard_conforming_strings") == "on"
    finally:
        conn.terminate()
