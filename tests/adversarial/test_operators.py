"""Operators resolved as the server resolves them: by name and operand types.

Promise (README "Security model"): a user operator named like a built-in (``||`` taking
``text`` and a range, written in SQL) does not make every ``||`` of the database of unknown
origin: when both operand types are known (a column of a built-in type, a cast, a typed
constant; an untyped literal takes the other side's type) and only ``pg_catalog`` has an
operator of exactly those types, the server runs the built-in whatever the search_path, so a
masked column as an operand is masked as a computed value (not refused) and unmasked operands
keep their value.  A user operator that *is* the exact match (``text || text`` in a schema put
before ``pg_catalog``) is of unknown origin: its result is redacted.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.adversarial.masking_clients import MODES, attack
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def near(pg_cluster: Any, table: str) -> Iterator[str]:
    """A SQL operator ``text || int4range`` (a built-in type on the left)."""
    schema = "vg_adv_op_" + secrets.token_hex(3)
    db = pg_cluster.app_db
    pg_cluster.execute(
        f"create schema {schema}; grant usage on schema {schema} to {pg_cluster.gw_role};"
        f" create function {schema}.cat_range(text, int4range) returns text language sql"
        f" as 'select $1 || $2::text';"
        f" create operator {schema}.|| (leftarg = text, rightarg = int4range,"
        f" function = {schema}.cat_range);",
        db,
    )
    try:
        yield schema
    finally:
        pg_cluster.execute(f"drop schema {schema} cascade", db)


@pytest.fixture
def exact(pg_cluster: Any, table: str) -> Iterator[str]:
    """A SQL operator ``text || text`` that reads a masked column (created by another
    connection; the gateway notices it within its check interval: 1 s)."""
    schema = "vg_adv_ox_" + secrets.token_hex(3)
    db = pg_cluster.app_db
    pg_cluster.execute(
        f"create schema {schema}; grant usage on schema {schema} to {pg_cluster.gw_role};"
        f" create function {schema}.leaky(text, text) returns text language sql"
        f" as 'select ssn from public.{table} where id = 1';"
        f" create operator {schema}.|| (leftarg = text, rightarg = text,"
        f" function = {schema}.leaky);",
        db,
    )
    time.sleep(1.2)
    try:
        yield schema
    finally:
        pg_cluster.execute(f"drop schema {schema} cascade", db)


@pytest.mark.parametrize("mode", MODES)
def test_builtin_concatenation_beside_a_user_operator(
    masked: pw.Target, table: str, near: str, mode: str
) -> None:
    """``text || unknown`` is the built-in ``textcat``: no refusal, the unmasked operand's value
    is kept and the masked one masked whole (it was a 42501 refusal before)."""
    out = attack(
        masked, mode, f"select label || '!' as l, ssn || '' as s from {table} where id = 1"
    )
    assert out.sqlstate is None, out.message
    assert not out.leaked(), out.received
    assert b"one!" in out.received, out.received


def test_the_raw_tier_runs_the_shadowing_operator(raw: pw.Target, table: str, exact: str) -> None:
    out = attack(
        raw,
        "wire-simple",
        f"select label || 'x' from {table}",
        setup=(f"set search_path = {exact}, pg_catalog, public",),
    )
    assert out.sqlstate is None, out.message
    assert out.leaked(), out.received


@pytest.mark.parametrize("mode", ["psql", "psycopg-text", "asyncpg", "wire-extended-binary"])
def test_an_exact_user_operator_is_of_unknown_origin(
    masked: pw.Target, table: str, exact: str, mode: str
) -> None:
    out = attack(
        masked,
        mode,
        f"select label || 'x' as l from {table}",
        setup=(f"set search_path = {exact}, pg_catalog, public",),
    )
    assert not out.leaked(), out.received
    assert out.sqlstate in (None, "42501"), out.message
