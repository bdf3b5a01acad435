"""A user operator is judged as the function it runs.

Promise (README "Security model"): when a user operator may be the one the server picks (here
``text || text`` in a schema put before ``pg_catalog``), its result has the lineage of its
function's SQL body with the operands bound to the parameters (union with the built-in's);
PL/pgSQL or otherwise opaque operator functions stay of unknown origin.  (A module of its own:
operators of the same name left by other modules would be candidates too.)
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.adversarial.masking_clients import attack
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture
def harmless(pg_cluster: Any, table: str) -> Iterator[str]:
    """A SQL operator ``text || text`` computed from its operands only."""
    schema = "vg_adv_oh_" + secrets.token_hex(3)
    db = pg_cluster.app_db
    pg_cluster.execute(
        f"create schema {schema}; grant usage on schema {schema} to {pg_cluster.gw_role};"
        f" create function {schema}.tagged(text, text) returns text language sql"
        f" as 'select pg_catalog.concat(''tagged-'', $2)';"
        f" create operator {schema}.|| (leftarg = text, rightarg = text,"
        f" function = {schema}.tagged);",
        db,
    )
    time.sleep(1.2)
    try:
        yield schema
    finally:
        pg_cluster.execute(f"drop schema {schema} cascade", db)


@pytest.mark.parametrize("mode", ["psql", "psycopg-binary", "asyncpg", "wire-simple"])
def test_a_user_operator_is_judged_as_its_function(
    masked: pw.Target, table: str, harmless: str, mode: str
) -> None:
    """The shadowing operator's SQL function computes from its operands only (and the
    operands are unmasked): its value is kept, not redacted as of unknown origin."""
    out = attack(
        masked,
        mode,
        f"select label || 'x' as l from {table} where id = 1",
        setup=(f"set search_path = {harmless}, pg_catalog, public",),
    )
    assert out.sqlstate is None, out.message
    assert b"tagged-x" in out.received, out.received
