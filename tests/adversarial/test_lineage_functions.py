"""Lineage through SQL-language functions: a user function's result has the lineage of its body.

Promise (README "Security model"): a ``LANGUAGE sql`` function (``prosrc`` or a SQL-standard
``BEGIN ATOMIC`` / ``RETURN`` body) is resolved through its body with its parameters bound to
the arguments' lineage, so a function that returns a masked column under another name is
masked, and one that computes only from unmasked columns is kept (no longer redacted whole);
every overload and namesake the server may pick counts; a function redefined in the client's own
session (open transaction or not, by ``DO`` / ``CALL`` too) is of unknown origin for the rest of
that session; PL/pgSQL, SECURITY DEFINER and anything not analysable stay of unknown origin.

Every attack runs through psql, psycopg (simple, extended text and binary), asyncpg and a raw
protocol client; each fails if a raw value is in anything the client received; the unmasked
tier shows the same statements really return the values.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.adversarial.masking_clients import MODES, attack, leaks
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def fns(pg_cluster: Any, table: str) -> Iterator[str]:
    """SQL functions over the masked table (created by the gateway's upstream login)."""
    t = table
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        for sql in (
            f"create function {t}_nice() returns setof text language sql"
            f" as 'select ssn as harmless from {t}'",
            f"create function {t}_byid(i int) returns text language sql"
            f" as 'select email from {t} where id = i'",
            f"create function {t}_pairs() returns table(a int, b text) language sql"
            f" as 'select id, card from {t}'",
            f"create function {t}_atomic() returns text language sql"
            f" begin atomic select api_secret from {t} where id = 1; end",
            f"create function {t}_ret(x text) returns text language sql return upper(x)",
            f"create function {t}_lbl(i int) returns text language sql"
            f" as 'select label from {t} where id = i'",
            f"create function {t}_ov(i int) returns text language sql"
            f" as 'select ssn from {t} where id = i'",
            f"create function {t}_ov(i text) returns text language sql as 'select i'",
            f"create function {t}_nest() returns text language sql as 'select {t}_byid(1) || '''''",
            f"create function {t}_plpg() returns text language plpgsql"
            f" as 'begin return (select label from {t} where id = 1); end'",
            f"create function {t}_definer() returns text language sql security definer"
            f" as 'select label from {t} where id = 1'",
            f"create function {t}_swap() returns text language sql as 'select ''x''::text'",
        ):
            conn.execute(sql)
    pg_cluster.execute(
        f"create schema {t}_s; grant all on schema {t}_s to {pg_cluster.gw_role}",
        pg_cluster.app_db,
    )
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(
            f"create function {t}_s.lower(text) returns text language sql"
            f" as 'select ssn from public.{t} where id = 1'"
        )
    try:
        yield t
    finally:
        # its lower(text) would make every other module's lower() a possible user function
        pg_cluster.execute(f"drop schema {t}_s cascade", pg_cluster.app_db)


LEAKING: dict[str, str] = {
    "returns a masked column under another name": "select {t}_nice()",
    "set-returning in FROM": "select * from {t}_nice() as x(y)",
    "argument selects the row": "select {t}_byid(1), {t}_byid(id) from {t}",
    "table function": "select b, a from {t}_pairs()",
    "begin atomic": "select {t}_atomic()",
    "return body over a masked argument": "select {t}_ret(ssn) from {t}",
    "overload by argument type": "select {t}_ov(1), {t}_ov(id) from {t}",
    "nested sql functions": "select {t}_nest()",
    "schema-qualified shadow": "select {t}_s.lower('x')",
}


def test_the_raw_tier_sees_the_values(raw: pw.Target, fns: str) -> None:
    for name, sql in LEAKING.items():
        if name == "return body over a masked argument":
            continue  # upper() of the value: its upper-case form is what leaks() looks for
        out = attack(raw, "wire-simple", sql.format(t=fns))
        assert out.sqlstate is None, (name, out.message)
        assert out.leaked(), name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(LEAKING))
def test_no_sql_function_returns_a_raw_value(
    masked: pw.Target, fns: str, name: str, mode: str
) -> None:
    out = attack(masked, mode, LEAKING[name].format(t=fns))
    assert not out.leaked(), (name, mode, out.leaked())
    if name == "return body over a masked argument":
        # a masked column as an argument of a user function is a use (it can branch on it)
        assert out.sqlstate in (None, "42501"), out.message
    else:
        assert out.sqlstate is None, (name, mode, out.message)


@pytest.mark.parametrize("mode", ["psql", "psycopg-binary", "asyncpg", "wire-extended-text"])
def test_functions_over_unmasked_columns_are_kept(masked: pw.Target, fns: str, mode: str) -> None:
    """Precision: a SQL function computing only from unmasked columns returns its value (it
    was redacted as unknown origin before its body was read); the table function's unmasked
    column is kept and its masked one masked."""
    out = attack(masked, mode, f"select {fns}_lbl(1)")
    assert out.sqlstate is None, out.message
    assert b"one" in out.received and b"MASKED" not in out.received, out.received
    # the text overload's value is masked: every overload of the name counts (the int one
    # reads ssn) -- over-masking, not exact overload resolution
    out = attack(masked, mode, f"select {fns}_ov('plain')")
    assert out.sqlstate is None and b"plain" not in out.received, out.received
    out = attack(masked, "wire-simple", f"select a, b from {fns}_pairs() order by a")
    assert out.sqlstate is None, out.message
    assert [r[0] for r in out.rows] == [b"1", b"2"], out.rows
    assert not out.leaked()


@pytest.mark.parametrize("mode", ["psql", "psycopg-text", "asyncpg"])
def test_what_cannot_be_analysed_stays_of_unknown_origin(
    masked: pw.Target, fns: str, mode: str
) -> None:
    out = attack(masked, mode, f"select {fns}_plpg(), {fns}_definer()")
    assert out.sqlstate is None, out.message
    assert b"one" not in out.received.replace(b"none", b""), out.received


@pytest.mark.parametrize("mode", ["psql", "psycopg-simple", "psycopg-binary", "wire-simple"])
@pytest.mark.parametrize("in_tx", [False, True])
def test_a_function_replaced_in_the_session_is_of_unknown_origin(
    masked: pw.Target, raw: pw.Target, fns: str, mode: str, in_tx: bool
) -> None:
    """CREATE OR REPLACE in the client's own session (the catalog's connection sees the old,
    harmless body until the commit, and the plan cache has it): the call is masked."""
    replace = (
        f"create or replace function {fns}_swap() returns text language sql"
        f" as 'select ssn from {fns} where id = 1'"
    )
    if in_tx:
        setup: tuple[str, ...] = (f"select {fns}_swap()", replace)
    else:
        setup = (f"select {fns}_swap()", "begin", replace)
    assert attack(raw, mode, f"select {fns}_swap()", in_tx=in_tx, setup=setup).leaked()
    out = attack(masked, mode, f"select {fns}_swap()", in_tx=in_tx, setup=setup)
    assert not out.leaked(), (mode, out.received)
    assert out.sqlstate is None, out.message


def test_a_do_block_makes_every_user_function_unknown(masked: pw.Target, fns: str) -> None:
    conn = pw.connect(masked.endpoint())
    try:
        msgs = conn.simple(f"select {fns}_lbl(1)")
        assert b"one" in b"".join(m.body for m in msgs if m.tag == "D")
        conn.simple("begin")
        msgs = conn.simple(
            "do $$ begin execute 'create or replace function "
            f"{fns}_lbl(i int) returns text language sql as ''select ssn from {fns}"
            " where id = 1'''; end $$"
        )
        msgs = conn.simple(f"select {fns}_lbl(1)")
        assert not leaks(b"".join(m.body for m in msgs)), msgs
        conn.simple("rollback")
    finally:
        conn.terminate()


@pytest.mark.parametrize("mode", ["psql", "psycopg-text", "asyncpg"])
def test_search_path_shadowing_a_builtin(
    masked: pw.Target, raw: pw.Target, fns: str, mode: str
) -> None:
    """A schema earlier on the search_path than pg_catalog with a SQL ``lower(text)`` reading a
    masked column: unqualified ``lower`` may run it, so its body counts."""
    setup = (f"set search_path = {fns}_s, pg_catalog, public",)
    assert attack(raw, mode, "select lower('X')", setup=setup).leaked()
    out = attack(masked, mode, "select lower('X')", setup=setup)
    assert not out.leaked(), out.received
