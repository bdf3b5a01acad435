"""Guardrail semantics (issue 10 items 3 and 5), attacked end to end.

Each test states the promise it checks and fails if the forbidden effect is seen on the server:
rows gone, a table dropped, a setting changed, statistics or another session's statement text
returned.  Every attack goes through psql, psycopg and asyncpg, simple and extended protocol.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.adversarial.clients import CLIENTS, run
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle, with_policy

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]

POLICY = """\
version: 1
tiers:
  - name: agent
    match: {roles: [agent]}
    pin_search_path: true
    search_path: [public]
    settings:
      statement_timeout: {min: 1s, max: 10min}
      work_mem: {max: 64MB}
      application_name: any
    rules:
      - id: no-destruction
        action: deny
        message: "destructive statements are not for agents"
        constructs: [drop, truncate, delete_without_where, update_without_where, dynamic_sql]
      - id: agent-work
        action: allow
        message: "reads, writes, merges, settings, DO blocks"
        classes: [read, write, merge, session, transaction, do, ddl, utility]
        constructs: [do_block, set_config, create_function]
  - name: admin
    match: {roles: [admin]}
    default: allow
    rules:
      - id: approve-destructive
        action: approve
        message: "destructive: needs a second pair of eyes"
        constructs: [drop, truncate, delete_without_where, update_without_where]
  - name: pinned
    match: {roles: [pinned]}
    pin_search_path: true
    search_path: [public]
    rules:
      - {id: pinned-read, action: allow, message: "reads", classes: [read, utility]}
  - name: unpinned
    match: {roles: [unpinned]}
    search_path: [public]
    settings: {search_path: any}
    default: allow
    rules:
      - {id: no-user-fns, action: deny, message: "user functions", constructs: [user_function]}
masking:
  apply_to: [agent]
  columns:
    - {column: "public.vg_g_*.ssn", op: redact}
end: true
"""


@pytest.fixture
def table(direct: pw.Target) -> str:
    """A table with rows (and statistics: ANALYZE fills pg_stats with its values)."""
    name = "vg_g_" + secrets.token_hex(4)
    with psycopg.connect(direct.conninfo(), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int, tag text, ssn text)")
        conn.execute(
            f"insert into {name} select i, 'ok', '900-00-' || lpad((i % 7)::text, 4, '0') "
            "from generate_series(1, 50) i"
        )
        conn.execute(f"analyze {name}")
        conn.execute(f"grant all on {name} to veilgate_app")
    return name


def _gateway(factory: Factory, tmp_path: Path, role: str) -> GatewayHandle:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return factory(with_policy(policy, tmp_path / "audit.jsonl", role))


@pytest.fixture
def agent(gateway_factory: Factory, tmp_path: Path) -> GatewayHandle:
    return _gateway(gateway_factory, tmp_path, "agent")


@pytest.fixture
def admin(gateway_factory: Factory, tmp_path: Path) -> GatewayHandle:
    return _gateway(gateway_factory, tmp_path, "admin")


def _rows(direct: pw.Target, table: str) -> int:
    with psycopg.connect(direct.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
    assert row is not None
    return int(row[0])


# --- every row, however the filter hides it ------------------------------------------------

HIDDEN_UNFILTERED = [
    "delete from {t} where 1 = 1",
    "delete from {t} where id > 5 or true",
    "delete from {t} where not false",
    "delete from {t} where id = id",
    "delete from {t} where 't'::boolean and 2 > 1",
    "delete from {t} where exists (select 1)",
    "delete from {t} where (select count(*) from pg_class) > 0",
    "update {t} set tag = 'x' where tag = tag or tag is null",
    "update {t} set tag = 'x' where coalesce(null, true)",
    "with d as (delete from {t} where 1 = 1 returning *) select count(*) from d",
    "merge into {t} t using (select 1 as id) s on true when matched then delete",
    "merge into {t} t using (select 1 as k) s on s.k = s.k when matched then update set tag = 'x'",
    "do $$ begin execute 'delete from {t}'; end $$",
    "do $$ begin delete from {t} where 1 = 1; end $$",
    "select query_to_xml('delete from {t} where true returning 1', true, false, '')",
    "do $$ begin execute 'delete from ' || '{t}'; end $$",
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("template", HIDDEN_UNFILTERED, ids=range(len(HIDDEN_UNFILTERED)))
def test_hidden_unfiltered_writes_are_denied(
    agent: GatewayHandle, direct: pw.Target, table: str, client: str, template: str
) -> None:
    """Promise: a DELETE / UPDATE / MERGE that touches every row is denied however its filter
    hides that (constant-true, self-comparison, independent of the row, inside DO / EXECUTE /
    query_to_xml); no row changes on the server."""
    sql = template.format(t=table)
    out = run(client, agent, sql)
    assert out.sqlstate == "42501", (sql, out)
    if client != "psql":
        assert "no-destruction" in out.detail, out
    assert _rows(direct, table) == 50
    with psycopg.connect(direct.conninfo(), autocommit=True) as conn:
        assert conn.execute(f"select count(*) from {table} where tag = 'x'").fetchone() == (0,)


@pytest.mark.parametrize("client", ["psql", "psycopg-extended", "asyncpg-extended"])
def test_real_and_constant_false_filters_run(
    agent: GatewayHandle, direct: pw.Target, table: str, client: str
) -> None:
    """Promise: a filter that selects rows, or none, is a filter: the statement runs."""
    assert run(client, agent, f"delete from {table} where id = 1").ok
    assert run(client, agent, f"delete from {table} where 1 = 0").ok
    assert run(client, agent, f"delete from {table} where false").ok
    assert _rows(direct, table) == 49


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    "template",
    [
        "delete from {t} where 1 = 1",
        "do $$ begin execute 'drop table {t}'; end $$",
        "select query_to_xml('delete from {t} returning 1', true, false, '')",
        "merge into {t} t using (select 1 as id) s on 1 = 1 when matched then delete",
    ],
    ids=["where", "do-execute", "query_to_xml", "merge"],
)
def test_approval_cannot_be_dodged(
    admin: GatewayHandle, direct: pw.Target, table: str, client: str, template: str
) -> None:
    """Promise: an approve rule applies to the same effect however it is hidden: the statement
    is held (42Z01) and nothing changes on the server."""
    out = run(client, admin, template.format(t=table))
    assert out.sqlstate == "42Z01", out
    assert _rows(direct, table) == 50


# --- settings ---------------------------------------------------------------------------------

BAD_SETTINGS = [
    "set statement_timeout = 0",
    "set local statement_timeout to '2h'",
    "select set_config('statement_timeout', '0', false)",
    "set work_mem = '4GB'",
    "set maintenance_work_mem = '1GB'",
    "do $$ begin perform set_config('work_mem', '8GB', false); end $$",
    "set search_path = pg_temp, public",
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("sql", BAD_SETTINGS)
def test_settings_outside_the_allowance_never_change(
    agent: GatewayHandle, client: str, sql: str
) -> None:
    """Promise: a setting outside the tier's allowance is refused and the server's value is
    unchanged afterwards (same session)."""
    out = run(client, agent, sql)
    assert out.sqlstate == "42501", out

    async def values(c: Any) -> tuple[str, ...]:
        names = ("statement_timeout", "work_mem", "maintenance_work_mem", "search_path")
        return tuple([await c.fetchval(f"show {n}") for n in names])

    async def scenario() -> None:
        c = await asyncpg.connect(**agent.asyncpg_kwargs())
        try:
            before = await values(c)
            async with c.transaction():  # SET LOCAL lasts until the end of a transaction
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await c.execute(sql)
            assert await values(c) == before
            assert before[3] == '"public"'  # pinned upstream at session start
        finally:
            await c.close()

    asyncio.run(scenario())


def test_allowed_settings_apply(agent: GatewayHandle) -> None:
    with psycopg.connect(agent.dsn(), autocommit=True) as conn:
        conn.execute("set statement_timeout = '30s'")
        assert conn.execute("show statement_timeout").fetchone() == ("30s",)
        conn.execute("set work_mem = '32MB'")
        assert conn.execute("show work_mem").fetchone() == ("32MB",)


# --- functions resolve as the server resolves them -----------------------------------------------


def test_pinned_search_path_defeats_shadowing_schemas(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """Promise: a session cannot put a schema holding a look-alike of a built-in in front of
    pg_catalog; the built-in is what runs."""
    schema = "vg_shadow_" + secrets.token_hex(3)
    pg_cluster.execute(
        f"create schema {schema};"
        f"create function {schema}.lower(text) returns text language sql "
        f"as $$ select 'shadowed' $$;"
        f"grant usage on schema {schema} to veilgate_app;",
        "app",
    )
    try:
        pinned = _gateway(gateway_factory, tmp_path, "pinned")  # an unmasked tier
        for client in CLIENTS:
            for sql in (
                f"set search_path = {schema}, pg_catalog, public",
                f"select set_config('search_path', '{schema}, pg_catalog', false)",
            ):
                out = run(client, pinned, sql)
                assert out.sqlstate == "42501", out
        with psycopg.connect(pinned.dsn(), autocommit=True) as conn:
            assert conn.execute("select lower('ABC')").fetchone() == ("abc",)
            assert conn.execute("show search_path").fetchone() == ('"public"',)
    finally:
        # a namesake of a built-in left in the shared database changes what other tests see
        pg_cluster.execute(f"drop schema {schema} cascade", "app")


def test_a_search_path_set_by_any_protocol_is_followed(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """Promise: without pinning, a path the session set -- by a simple Query as well as by a
    Parse -- counts from then on: a look-alike of a built-in in a schema put before pg_catalog is
    judged as the user function it is (denied here), never as the built-in."""
    schema = "vg_shadow_" + secrets.token_hex(3)
    pg_cluster.execute(
        f"create schema {schema};"
        f"create function {schema}.lower(text) returns text language sql "
        f"as $$ select 'shadowed' $$;"
        f"grant usage on schema {schema} to veilgate_app;",
        "app",
    )
    try:
        target = pw.gateway_target(_gateway(gateway_factory, tmp_path, "unpinned"))
        set_path = f"set search_path = {schema}, pg_catalog, public"
        # simple Query (a raw client and psycopg's client-side cursor)
        with pw.connect(target.endpoint()) as c:
            assert c.scalar("select lower('ABC')") == "abc"
            assert pw.first_error(c.simple(set_path)) is None
            err = pw.first_error(c.simple("select lower('ABC')"))
            assert err is not None and err["C"] == "42501", err
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute(set_path)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute("select lower('ABC')")
        # extended protocol (psycopg's server-side parameters, asyncpg)
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            conn.execute(set_path)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select lower(%s)", ("ABC",))

        async def via_asyncpg() -> None:
            conn = await asyncpg.connect(**target.asyncpg_kwargs())
            try:
                await conn.execute(set_path)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetchval("select lower('ABC')")
            finally:
                await conn.close()

        asyncio.run(via_asyncpg())
    finally:
        pg_cluster.execute(f"drop schema {schema} cascade", "app")


# --- catalog and statistics views on a masked tier ---------------------------------------------

STATS = [
    "select most_common_vals::text from pg_stats where tablename = '{t}'",
    "select histogram_bounds::text from pg_catalog.pg_stats where tablename = '{t}'",
    "select s.most_common_vals::text from (select * from pg_stats) s where s.tablename = '{t}'",
    "with s as (select * from pg_stats) select most_common_vals::text from s",
    "select stavalues1::text from pg_statistic",
    "select query_to_xml('select most_common_vals from pg_stats', true, false, '')::text",
    "select query from pg_stat_activity",
    "select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b",
    "select (pg_stat_get_activity(null)).query",
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("template", STATS, ids=range(len(STATS)))
def test_statistics_and_other_sessions_text_denied_on_masked_tier(
    agent: GatewayHandle, table: str, client: str, template: str
) -> None:
    """Promise: a masked tier reads no column statistics (values of masked columns) and no other
    session's statement text, by any path."""
    out = run(client, agent, template.format(t=table))
    assert out.sqlstate == "42501", out


def test_statistics_hold_the_values_the_test_hides(direct: pw.Target, table: str) -> None:
    """The attack above is real: on the server itself pg_stats shows the masked values."""
    with psycopg.connect(direct.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "select most_common_vals::text from pg_stats where tablename = %s and attname = 'ssn'",
            [table],
        ).fetchone()
    assert row is not None and "900-00-" in str(row[0])


def test_another_sessions_statement_text_is_not_readable(agent: GatewayHandle) -> None:
    """Promise: one agent cannot read what another agent of the same tier (same login role)
    is running, with the constants in it."""
    marker = "vg_secret_" + secrets.token_hex(6)

    async def scenario() -> Any:
        other = await asyncpg.connect(**agent.asyncpg_kwargs())
        spy = await asyncpg.connect(**agent.asyncpg_kwargs())
        try:
            running = asyncio.ensure_future(other.execute(f"select pg_sleep(2), '{marker}'"))
            await asyncio.sleep(0.5)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await spy.fetch("select query from pg_stat_activity")
            await running
        finally:
            await other.close()
            await spy.close()

    asyncio.run(scenario())
