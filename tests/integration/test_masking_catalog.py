"""The masking catalog against a real PostgreSQL: column lineage, types, views, DDL invalidation.

Each test gets a fresh database (tables, views, a domain, citext when the extension is available)
and a :class:`Catalog` on a side connection that authenticates like the gateway does (TLS
verify-full + SCRAM).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veilgate.config_model import TargetConfig, UpstreamTLSConfig, UpstreamTLSMode
from veilgate.masking.analysis import analyzer_for
from veilgate.masking.catalog import Catalog, CatalogError
from veilgate.masking.fields import Field
from veilgate.masking.invalidation import invalidation_scope
from veilgate.masking.sideconn import SideConnection, SideQueryError

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE SCHEMA crm;
CREATE DOMAIN crm.email_addr AS text CHECK (VALUE LIKE '%@%');
CREATE DOMAIN crm.email_addr2 AS crm.email_addr;
CREATE TABLE crm.customers (
    id integer PRIMARY KEY,
    email crm.email_addr2,
    ssn varchar(11),
    note text,
    tags text[],
    profile jsonb,
    born date
);
CREATE TABLE crm.orders (id integer, customer_id integer, total numeric);
CREATE VIEW crm.customer_contacts AS SELECT id, email AS contact FROM crm.customers;
CREATE VIEW crm.order_totals AS SELECT customer_id, sum(total) AS total FROM crm.orders
    GROUP BY customer_id;
CREATE VIEW crm.nested AS SELECT contact FROM crm.customer_contacts;
CREATE MATERIALIZED VIEW crm.ssn_mv AS SELECT id, ssn FROM crm.customers;
CREATE TABLE crm.events (id integer, payload text) PARTITION BY RANGE (id);
CREATE TABLE crm.events_1 PARTITION OF crm.events FOR VALUES FROM (0) TO (100);
"""


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def catalog_db(pg_cluster: Any) -> Iterator[tuple[Any, TargetConfig]]:
    name = "mcat_" + secrets.token_hex(4)
    pg_cluster.create_database(name)
    pg_cluster.execute(SCHEMA, name)
    env = "VG_TEST_CATALOG_PW_" + secrets.token_hex(4).upper()
    os.environ[env] = pg_cluster.superuser_password
    target = TargetConfig(
        name=name,
        host=str(pg_cluster.host),
        port=int(pg_cluster.port),
        dbname=name,
        user=pg_cluster.superuser,
        password_env=env,
        tls=UpstreamTLSConfig(
            mode=UpstreamTLSMode.VERIFY_FULL,
            ca_file=Path(pg_cluster.ca_file),
            server_name=str(pg_cluster.server_hostname),
        ),
    )
    try:
        yield pg_cluster, target
    finally:
        os.environ.pop(env, None)
        pg_cluster.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _describe_fields(cat: Catalog, sql: str) -> dict[str, Field]:
    return {f.name: f for f in await cat.describe(sql)}


def test_columns_types_and_domains(catalog_db: tuple[Any, TargetConfig]) -> None:
    cluster, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            fields = await _describe_fields(
                cat, "SELECT id, email, ssn, note, tags, profile, born, 1 AS one FROM crm.customers"
            )
            assert fields["email"].table_oid != 0
            assert fields["one"].table_oid == 0
            assert cat.missing(fields.values())
            await cat.resolve(fields.values())
            assert not cat.missing(fields.values())
            col = cat.column(fields["ssn"].table_oid, fields["ssn"].attnum)
            assert col is not None
            assert (col.schema, col.table, col.column, col.relkind) == (
                "crm",
                "customers",
                "ssn",
                "r",
            )
            email_t = cat.type(fields["email"].type_oid)
            # the server reports a domain column with its base type
            assert email_t is not None and email_t.text_like
            # a domain OID itself (an array element, a Describe elsewhere) resolves to its base
            dom_oid = int(
                await asyncio.to_thread(
                    cluster.execute, "SELECT 'crm.email_addr2'::regtype::oid", target.dbname
                )
            )
            await cat.resolve([Field("d", 0, 0, dom_oid, 1)])
            dom_t = cat.type(dom_oid)
            assert dom_t is not None
            # a domain over a domain over text: text-like through both levels
            assert (dom_t.name, dom_t.base_name, dom_t.text_like) == ("email_addr2", "text", True)
            ssn_t = cat.type(fields["ssn"].type_oid)
            assert ssn_t is not None and ssn_t.base_name == "varchar" and ssn_t.text_like
            tags_t = cat.type(fields["tags"].type_oid)
            assert tags_t is not None and tags_t.is_array and not tags_t.text_like
            prof_t = cat.type(fields["profile"].type_oid)
            assert prof_t is not None and prof_t.is_jsonb
            born_t = cat.type(fields["born"].type_oid)
            assert born_t is not None and not born_t.text_like and not born_t.is_jsonb
        finally:
            await cat.close()

    _run(go())


def test_views_resolve_through_their_definitions(catalog_db: tuple[Any, TargetConfig]) -> None:
    """A view's definition comes back with every name schema-qualified (whatever the side
    connection's search_path), and the analyzer follows it down nested views to base columns."""
    _, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        analyzer = analyzer_for(cat)
        try:
            facts = await cat.resolve([], [(None, "nested"), ("crm", "ssn_mv")])
            (nested,) = facts.relations_named((None, "nested")) or ()
            assert nested.relkind == "v" and nested.columns == ("contact",)
            assert nested.definition is not None and "crm.customer_contacts" in nested.definition
            (mv,) = facts.relations_named(("crm", "ssn_mv")) or ()
            assert mv.relkind == "m" and mv.definition is not None
            res = await analyzer.analyze("SELECT contact FROM crm.nested")
            assert res.outputs is not None
            lin = res.outputs[0].lineage
            # through crm.customer_contacts down to the base table, passed through unchanged
            assert lin.exact and {c.label() for c in lin.cols} == {"crm.customers.email"}
            sql = "SELECT total, upper(ssn) FROM crm.order_totals, crm.ssn_mv"
            res = await analyzer.analyze(sql)
            assert res.outputs is not None
            total, upper = (o.lineage for o in res.outputs)
            assert not total.exact and {c.label() for c in total.cols} == {"crm.orders.total"}
            assert {c.label() for c in upper.cols} == {"crm.customers.ssn"}
            # cached per text: no lookup the second time
            trips = cat.round_trips
            assert analyzer.cached("SELECT contact FROM crm.nested") is not None
            await analyzer.analyze("SELECT contact FROM crm.nested")
            assert cat.round_trips == trips
        finally:
            await cat.close()

    _run(go())


def test_relation_facts_list_what_a_write_is_checked_against(
    catalog_db: tuple[Any, TargetConfig],
) -> None:
    cluster, target = catalog_db
    cluster.execute(
        "CREATE UNIQUE INDEX ON crm.customers (email);"
        "CREATE UNIQUE INDEX ON crm.customers (lower(note));"
        "ALTER TABLE crm.orders ADD CONSTRAINT fk FOREIGN KEY (customer_id)"
        " REFERENCES crm.customers (id);",
        target.dbname,
    )

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            facts = await cat.resolve([], [("crm", "customers"), ("crm", "orders")])
            (customers,) = facts.relations_named(("crm", "customers")) or ()
            assert ("email", "crm", "customers", "email") in customers.probes
            assert ("id", "crm", "customers", "id") in customers.probes  # the primary key
            assert ("*", "crm", "customers", "*") in customers.probes  # the expression index
            (orders,) = facts.relations_named(("crm", "orders")) or ()
            assert orders.probes == (("customer_id", "crm", "customers", "id"),)
        finally:
            await cat.close()

    _run(go())


def test_partition_knows_its_parent(catalog_db: tuple[Any, TargetConfig]) -> None:
    _, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            (f,) = await cat.describe("SELECT payload FROM crm.events_1")
            await cat.resolve([f])
            col = cat.column(f.table_oid, f.attnum)
            assert col is not None and col.table == "events_1"
            assert ("crm", "events") in col.ancestors
        finally:
            await cat.close()

    _run(go())


def test_citext_is_text_like(catalog_db: tuple[Any, TargetConfig]) -> None:
    cluster, target = catalog_db
    try:
        cluster.execute(
            "CREATE EXTENSION citext; CREATE TABLE crm.logins (name citext)", target.dbname
        )
    except Exception:
        pytest.skip("citext extension not available in this PostgreSQL build")

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            (f,) = await cat.describe("SELECT name FROM crm.logins")
            await cat.resolve([f])
            t = cat.type(f.type_oid)
            assert t is not None and t.base_name == "citext" and t.text_like
        finally:
            await cat.close()

    _run(go())


def test_invalidate_after_ddl_sees_the_new_shape(catalog_db: tuple[Any, TargetConfig]) -> None:
    cluster, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            (f,) = await cat.describe("SELECT note FROM crm.customers")
            await cat.resolve([f])
            col = cat.column(f.table_oid, f.attnum)
            assert col is not None and col.column == "note"
            await asyncio.to_thread(
                cluster.execute,
                "ALTER TABLE crm.customers RENAME COLUMN note TO secret_note",
                target.dbname,
            )
            # cached until the gateway reports DDL
            assert cat.column(f.table_oid, f.attnum) == col
            cat.invalidate()
            assert cat.column(f.table_oid, f.attnum) is None
            await cat.resolve([f])
            col2 = cat.column(f.table_oid, f.attnum)
            assert col2 is not None and col2.column == "secret_note"
        finally:
            await cat.close()

    _run(go())


def test_reconnects_after_the_side_connection_dies(catalog_db: tuple[Any, TargetConfig]) -> None:
    cluster, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            (f,) = await cat.describe("SELECT id FROM crm.orders")
            await asyncio.to_thread(
                cluster.execute,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'veilgate-catalog'",
                target.dbname,
            )
            await cat.resolve([f])
            col = cat.column(f.table_oid, f.attnum)
            assert col is not None and col.table == "orders"
        finally:
            await cat.close()

    _run(go())


def test_describe_of_a_bad_query_raises(catalog_db: tuple[Any, TargetConfig]) -> None:
    _, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            with pytest.raises(CatalogError, match="42P01"):
                await cat.describe("SELECT * FROM crm.no_such_table")
            # the connection is still usable after a server error
            fields = await cat.describe("SELECT id FROM crm.orders")
            assert [f.name for f in fields] == ["id"]
        finally:
            await cat.close()

    _run(go())


def test_unreachable_catalog_raises(catalog_db: tuple[Any, TargetConfig]) -> None:
    _, target = catalog_db
    bad = TargetConfig(
        name=target.name,
        host=target.host,
        port=target.port,
        dbname=target.dbname,
        user=target.user,
        password_env="VG_TEST_NO_SUCH_PASSWORD_ENV",
        tls=target.tls,
    )

    async def go() -> None:
        cat = Catalog.for_target(bad)
        with pytest.raises(CatalogError):
            await cat.resolve([Field("x", 1259, 1, 26, 0)])

    _run(go())


def test_side_connection_query_errors_are_reported(catalog_db: tuple[Any, TargetConfig]) -> None:
    _, target = catalog_db

    async def go() -> None:
        conn = await SideConnection.open(target)
        try:
            with pytest.raises(SideQueryError) as err:
                await conn.query("SELECT 1/0")
            assert err.value.code == "22012"
            assert await conn.query("SELECT 1, NULL::text; SELECT 'x'") == [
                [("1", None)],
                [("x",)],
            ]
        finally:
            conn.close()

    _run(go())


class _PlanRecorder:
    """Stands in for veilgate_native's plan classes: records the planned columns."""

    KEEP, NULL, TEXT, TYPED = "KEEP", "NULL", "TEXT", "TYPED"

    from veilgate_native import Codec  # pure data: the real one

    class RowPlan:
        def __init__(self, columns: list[Any]) -> None:
            self.columns = columns

    class CopyPlan:
        def __init__(self, format: str, columns: list[Any], **kw: Any) -> None:
            self.format = format
            self.columns = columns


def test_copy_plan_matches_what_copy_sends(
    catalog_db: tuple[Any, TargetConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan has exactly the columns COPY outputs (generated columns left out of COPY t),
    and the masked one is where COPY puts it."""
    from veilgate.masking import planner as planner_mod
    from veilgate.masking.planner import SessionMasking
    from veilgate.masking.policy import OperatorSpec
    from veilgate.policy.loader import load_policy_text

    cluster, target = catalog_db
    cluster.execute(
        "CREATE TABLE crm.cards (id int, pan text, pan_len int GENERATED ALWAYS AS "
        "(length(pan)) STORED, holder text);"
        "INSERT INTO crm.cards (id, pan, holder) VALUES (1, '4111111111111111', 'x');",
        target.dbname,
    )
    monkeypatch.setattr(planner_mod, "_native", lambda: _PlanRecorder)
    monkeypatch.setattr(OperatorSpec, "build", lambda self, entity, key: f"OP:{self.kind}")
    policy = load_policy_text(
        "version: 1\ntiers:\n  - name: t\n    match: {roles: [r]}\n"
        "masking:\n  columns:\n    - {column: 'crm.cards.holder', op: redact}\n"
    )
    assert policy.masking is not None
    tier = policy.masking.for_tier("t")
    assert tier is not None
    tier.__dict__["scanner"] = "SCANNER"

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            p = SessionMasking(tier, cat)
            for sql in ("COPY crm.cards TO STDOUT", "COPY crm.cards (holder, id) TO STDOUT"):
                plan = await p.copy_plan(p.statement(sql), 0, [])
                sent = cluster.execute(sql, target.dbname).strip().split("\t")
                assert len(plan.columns) == len(sent), (sql, plan.columns, sent)
                assert [c[1] for c in plan.columns].index("OP:redact") == sent.index("x")
        finally:
            await cat.close()

    _run(go())


def test_a_blocked_lookup_fails_instead_of_hanging(catalog_db: tuple[Any, TargetConfig]) -> None:
    _, target = catalog_db

    async def go() -> None:
        locker = await SideConnection.open(target, application_name="test-locker")
        cat = Catalog(lambda: SideConnection.open(target), query_timeout_s=0.5)
        try:
            # an open transaction holds the table: parsing a query on it waits for the lock
            await locker.query("BEGIN; LOCK TABLE crm.customers IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(CatalogError, match="timed out"):
                await cat.describe("SELECT ssn FROM crm.customers")
            await locker.query("ROLLBACK")
            # a fresh side connection serves the next lookup
            fields = await cat.describe("SELECT ssn FROM crm.customers")
            assert [f.name for f in fields] == ["ssn"]
        finally:
            locker.close()
            await cat.close()

    _run(go())


def test_cached_facts_expire(catalog_db: tuple[Any, TargetConfig]) -> None:
    _, target = catalog_db

    async def go() -> None:
        cat = Catalog(lambda: SideConnection.open(target), max_age_s=3600)
        try:
            (f,) = await cat.describe("SELECT note FROM crm.customers")
            await cat.resolve([f])
            cat.expire_if_stale()  # young: kept
            assert cat.column(f.table_oid, f.attnum) is not None
            cat._max_age = 0.0  # as if an hour had passed
            cat.expire_if_stale()
            assert cat.column(f.table_oid, f.attnum) is None
        finally:
            await cat.close()

    _run(go())


def test_functions_and_namesakes(catalog_db: tuple[Any, TargetConfig]) -> None:
    cluster, target = catalog_db
    cluster.execute(
        "CREATE FUNCTION public.upper(varchar) RETURNS text LANGUAGE sql AS 'SELECT $1';"
        "CREATE FUNCTION public.pairs(OUT a int, OUT b text) RETURNS SETOF record"
        " LANGUAGE sql AS $$SELECT 1, 'x'$$;"
        "CREATE FUNCTION public.rows_of() RETURNS SETOF crm.orders LANGUAGE sql"
        " AS 'SELECT * FROM crm.orders';"
        "CREATE TYPE public.text AS (x int);"
        "CREATE OPERATOR public.### (LEFTARG = int, RIGHTARG = int, FUNCTION = int4pl);",
        target.dbname,
    )

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            assert cat.functions_named("upper") is None
            names = ["upper", "pairs", "rows_of", "count", "json_each", "nothing_like_it"]
            keys = ["t:text", "t:int4", "o:###", "o:+"]
            await cat.resolve([], [], names, keys)
            upper = cat.functions_named("upper") or ()
            assert {f.schema for f in upper} == {"pg_catalog", "public"}
            (pairs,) = cat.functions_named("pairs") or ()
            assert pairs.columns == ("a", "b")
            (rows_of,) = cat.functions_named("rows_of") or ()
            assert rows_of.columns == ("id", "customer_id", "total")
            assert all(f.schema == "pg_catalog" for f in cat.functions_named("count") or ())
            each = cat.functions_named("json_each") or ()
            assert each and all(f.columns == ("key", "value") for f in each)
            assert cat.functions_named("nothing_like_it") == ()
            assert cat.namesake("t:text") is True and cat.namesake("t:int4") is False
            assert cat.namesake("o:###") is True and cat.namesake("o:+") is False
        finally:
            await cat.close()

    _run(go())


def test_concurrent_lookups_share_one_round_trip(catalog_db: tuple[Any, TargetConfig]) -> None:
    """150 sessions planning the same result at once: one catalog query answers them all."""
    _, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            fields = await cat.describe("SELECT id, ssn, email FROM crm.customers")
            names = [(None, "customers"), ("crm", "customer_contacts")]
            answers = await asyncio.gather(*(cat.resolve(fields, names) for _ in range(150)))
            assert cat.round_trips == 1
            for facts in answers:
                col = facts.column(fields[1].table_oid, fields[1].attnum)
                assert col is not None and (col.table, col.column) == ("customers", "ssn")
                assert facts.relations_named(("crm", "customer_contacts"))
        finally:
            await cat.close()

    _run(go())


def test_lookups_racing_real_ddl_see_the_new_shape(catalog_db: tuple[Any, TargetConfig]) -> None:
    """A rename lands (and its tag invalidates the catalog) while lookups are in flight: every
    lookup asked after the rename sees the new name, and what is cached is the new name."""
    cluster, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            (f,) = await cat.describe("SELECT note FROM crm.customers")
            before = [asyncio.ensure_future(cat.resolve([f])) for _ in range(20)]
            await asyncio.to_thread(
                cluster.execute,
                "ALTER TABLE crm.customers RENAME COLUMN note TO secret_note",
                target.dbname,
            )
            cat.invalidate(invalidation_scope(b"ALTER TABLE"))
            after = [asyncio.ensure_future(cat.resolve([f])) for _ in range(20)]
            for facts in await asyncio.gather(*before):
                col = facts.column(f.table_oid, f.attnum)
                assert col is not None and col.column in ("note", "secret_note")
            for facts in await asyncio.gather(*after):
                col = facts.column(f.table_oid, f.attnum)
                assert col is not None and col.column == "secret_note"
            cached = cat.column(f.table_oid, f.attnum)
            assert cached is not None and cached.column == "secret_note"
        finally:
            await cat.close()

    _run(go())


def test_create_table_keeps_column_facts(catalog_db: tuple[Any, TargetConfig]) -> None:
    """A new (temp) table forgets only name facts: cached columns need no new lookup, and a
    name now denoting the new table is looked up again."""
    _, target = catalog_db

    async def go() -> None:
        cat = Catalog.for_target(target)
        try:
            fields = await cat.describe("SELECT ssn FROM crm.customers")
            await cat.resolve(fields, [(None, "customers")])
            trips = cat.round_trips
            cat.invalidate(invalidation_scope(b"CREATE TABLE"))
            assert not cat.missing(fields)
            assert cat.relations_named((None, "customers")) is None
            facts = await cat.resolve(fields, [(None, "customers")])
            assert cat.round_trips == trips + 1
            found = facts.relations_named((None, "customers"))
            assert found is not None and [r.schema for r in found] == ["crm"]
        finally:
            await cat.close()

    _run(go())
