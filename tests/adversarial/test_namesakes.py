"""Name binding: operators and functions that extensions add under built-in names.

Promise (README "Security model"): ``CREATE EXTENSION hstore`` defines ``=``, ``||``, ``->``...
in ``public``; the server still picks the built-in for built-in argument types, and the
extension's own operators are C functions that compute their result from their arguments.  So
ordinary expressions keep their values on a masked tier (``select 1 = 1`` is ``t``, not a
redacted ``f``), while a masked column stays masked through them and an operator or function a
user wrote in SQL or PL/pgSQL (which may read any table) is still of unknown origin: redacted.

Each check runs through psql, psycopg (simple; extended text and binary), asyncpg and a raw
protocol client (simple; extended text and binary), outside and inside a transaction.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from tests.adversarial.masking_clients import MODES, attack
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def hstore(pg_cluster: Any, table: str) -> Iterator[str]:
    """hstore installed in a schema of its own (the gateway looks for operators of a built-in's
    name in every schema; dropped again so that no other test sees them)."""
    schema = "vg_adv_ext_" + secrets.token_hex(3)
    db = pg_cluster.app_db
    pg_cluster.execute(
        f"create schema {schema}; grant usage on schema {schema} to {pg_cluster.gw_role};"
        f" create extension hstore schema {schema}",
        db,
    )
    try:
        yield schema
    finally:
        pg_cluster.execute(f"drop extension hstore cascade; drop schema {schema} cascade", db)


def _text(out: Any) -> str:
    """The values received (psql: its output)."""
    if not out.rows:
        return str(out.received.decode(errors="replace"))
    return " ".join(str(v.decode() if isinstance(v, bytes) else v) for r in out.rows for v in r)


@pytest.mark.parametrize("in_tx", [False, True], ids=["autocommit", "transaction"])
@pytest.mark.parametrize("mode", MODES)
def test_builtin_operators_keep_their_values(
    masked: pw.Target, table: str, hstore: str, mode: str, in_tx: bool
) -> None:
    out = attack(
        masked,
        mode,
        f"select 1 = 1 as eq, 'ab' || 'cd' as cat, id = 1 as first, label || '!' as l"
        f" from {table} where id = 1",
        in_tx=in_tx,
    )
    assert out.sqlstate is None, out.message
    got = _text(out)
    assert "abcd" in got and "one!" in got, out.rows
    assert "MASKED" not in got, out.rows
    # a boolean true in every client's rendering of it (psql t, psycopg / asyncpg True)
    assert not out.leaked()


@pytest.mark.parametrize("mode", MODES)
def test_hstore_values_are_kept_and_masked_columns_stay_masked(
    masked: pw.Target, table: str, hstore: str, mode: str
) -> None:
    out = attack(
        masked,
        mode,
        f"select ({hstore}.hstore('k', label) operator({hstore}.->) 'k') as v,"
        f" ssn || '' as s, {hstore}.hstore('k', label) operator({hstore}.||)"
        f" {hstore}.hstore('n', 'x') as h"
        f" from {table} where id = 1",
    )
    assert out.sqlstate is None, out.message
    assert "one" in _text(out) and "SSN" not in _text(out), out.rows
    assert not out.leaked(), out.rows
    # an extension's function may fail on what it is given: a masked argument is a use
    out = attack(masked, mode, f"select {hstore}.hstore('k', ssn) from {table}")
    assert out.sqlstate == "42501", (out.sqlstate, out.message)
    assert not out.leaked()


@pytest.mark.parametrize("mode", ["psql", "psycopg-binary", "asyncpg", "wire-extended-text"])
def test_a_user_operator_is_still_of_unknown_origin(
    masked: pw.Target, table: str, mode: str, pg_cluster: Any
) -> None:
    """An operator whose function is SQL (it could read any table) shadowing ``||`` on the
    search_path keeps its result redacted."""
    schema = "vg_adv_op_" + secrets.token_hex(3)
    db = pg_cluster.app_db
    pg_cluster.execute(
        f"create schema {schema}; grant all on schema {schema} to {pg_cluster.gw_role};"
        f" create function {schema}.leak(text, text) returns text language sql"
        f" as $$select ssn from public.{table} where id = 1$$;"
        f" grant execute on function {schema}.leak(text, text) to {pg_cluster.gw_role}",
        db,
    )
    # created through the gateway: it sees the DDL and looks the operator up again (DDL of
    # other connections reaches its catalog cache within masking's max age, 5 minutes)
    out = attack(
        masked,
        "wire-simple",
        f"create operator {schema}.|| (leftarg = text, rightarg = text, function = {schema}.leak)",
    )
    assert out.sqlstate is None, out.message
    try:
        out = attack(
            masked,
            mode,
            f"select 'a'::text operator({schema}.||) 'b'::text as x, 'a' || 'b' as y",
        )
        assert out.sqlstate is None, out.message
        assert not out.leaked(), out.rows
    finally:
        pg_cluster.execute(f"drop schema {schema} cascade", db)


@pytest.mark.parametrize("mode", MODES)
def test_casts_to_user_types_keep_their_values(
    masked: pw.Target, table: str, pg_cluster: Any, mode: str
) -> None:
    """A literal cast to an enum, a composite or a domain only reads its input (the type's C
    input function; a domain's CHECK, which may call any function, can only accept or refuse
    the literal, never change it): the value is kept.  A masked column cast to them stays
    masked."""
    schema = "vg_adv_ty_" + secrets.token_hex(3)
    db = pg_cluster.app_db
    pg_cluster.execute(
        f"create schema {schema}; grant usage on schema {schema} to {pg_cluster.gw_role};"
        f" create type {schema}.mood as enum ('happy', 'sad');"
        f" create type {schema}.pair as (a int, b text);"
        f" create domain {schema}.plain as text;"
        f" create domain {schema}.checked as text check (value <> 'x')",
        db,
    )
    try:
        out = attack(
            masked,
            mode,
            f"select 'happy'::{schema}.mood::text as m, '(7,seven)'::{schema}.pair::text as p,"
            f" 'kept'::{schema}.plain::text as d, 'gone'::{schema}.checked::text as c",
        )
        assert out.sqlstate is None, out.message
        got = _text(out)
        assert "happy" in got and "seven" in got and "kept" in got and "gone" in got, got
        for domain in ("plain", "checked"):
            out = attack(masked, mode, f"select ssn::{schema}.{domain} from {table}")
            assert not out.leaked(), out.received
    finally:
        pg_cluster.execute(f"drop schema {schema} cascade", db)
