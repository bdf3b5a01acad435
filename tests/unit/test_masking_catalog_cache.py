"""The masking catalog's cache under concurrency: which DDL tags forget which facts, batched
(single-flight) lookups, and lookups that race an invalidation.

The side connection is a fake that answers the catalog's queries from an in-memory "world" (the
rows PostgreSQL would return), can be held mid-query, and counts round trips.  The real queries
run against PostgreSQL in tests/integration/test_masking_catalog.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from veilgate.masking.catalog import Catalog, CatalogError
from veilgate.masking.fields import Field
from veilgate.masking.invalidation import Scope, invalidation_scope
from veilgate.masking.sideconn import SideConnection, SideQueryError

TEXT, INT4 = 25, 23
CUSTOMERS = 16400
SSN = Field("ssn", CUSTOMERS, 2, TEXT, 0)
ID = Field("id", CUSTOMERS, 1, INT4, 0)
NAME = (None, "customers")


# --- which tags forget what ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "scope"),
    [
        # data and transaction control: nothing
        (b"SELECT 3\x00", Scope.NONE),
        (b"INSERT 0 1", Scope.NONE),
        (b"COMMIT", Scope.NONE),
        (b"SET", Scope.NONE),
        (b"DISCARD ALL", Scope.NONE),
        (b"ANALYZE", Scope.NONE),
        (b"VACUUM", Scope.NONE),
        # DDL that touches no cached fact
        (b"REINDEX", Scope.NONE),
        (b"COMMENT", Scope.NONE),
        (b"GRANT", Scope.NONE),
        (b"REVOKE", Scope.NONE),
        (b"TRUNCATE TABLE", Scope.NONE),
        (b"REFRESH MATERIALIZED VIEW", Scope.NONE),
        (b"CREATE ROLE", Scope.NONE),
        # a new OID: only what names denote
        (b"CREATE TABLE\x00", Scope.NAMES),
        # unique indexes and sequences are part of what a name denotes
        (b"CREATE INDEX", Scope.NAMES),
        (b"DROP INDEX", Scope.NAMES),
        (b"CREATE SEQUENCE", Scope.NAMES),
        (b"create table", Scope.NAMES),
        (b"CREATE FOREIGN TABLE", Scope.NAMES),
        (b"CREATE MATERIALIZED VIEW", Scope.NAMES),
        (b"CREATE FUNCTION", Scope.NAMES),
        (b"CREATE OPERATOR", Scope.NAMES),
        (b"CREATE DOMAIN", Scope.NAMES),
        (b"IMPORT FOREIGN SCHEMA", Scope.NAMES),
        (b"CREATE TYPE", Scope.NAMES | Scope.TYPES),
        # what can change an existing object: everything
        (b"ALTER TABLE", Scope.ALL),
        (b"ALTER INDEX", Scope.ALL),  # ALTER INDEX <table> RENAME is accepted
        (b"ALTER TYPE", Scope.ALL),
        (b"ALTER DOMAIN", Scope.ALL),
        (b"ALTER SCHEMA", Scope.ALL),
        (b"ALTER EXTENSION", Scope.ALL),
        (b"DROP TABLE", Scope.ALL),
        (b"DROP VIEW", Scope.ALL),
        (b"DROP TYPE", Scope.ALL),
        (b"DROP OWNED", Scope.ALL),
        (b"CREATE VIEW", Scope.ALL),  # also CREATE OR REPLACE VIEW
        (b"CREATE RULE", Scope.ALL),  # may turn a table into a view (PostgreSQL < 16)
        (b"CREATE EXTENSION", Scope.ALL),
        (b"CREATE CAST", Scope.ALL),
        (b"DO", Scope.ALL),
        (b"CALL", Scope.ALL),
        # an unknown DDL-looking tag fails closed
        (b"CREATE SOMETHING NEW", Scope.ALL),
        (b"ALTER SOMETHING NEW", Scope.ALL),
    ],
)
def test_invalidation_scope(tag: bytes, scope: Scope) -> None:
    assert invalidation_scope(tag) == scope


# --- a fake side connection --------------------------------------------------------------------


class World:
    """What the fake server answers: rows per catalog query, read when the query runs."""

    def __init__(self) -> None:
        self.columns: dict[tuple[int, int], tuple[str, str, str, str]] = {
            (CUSTOMERS, 1): ("public", "customers", "id", "r"),
            (CUSTOMERS, 2): ("public", "customers", "ssn", "r"),
        }
        self.types = {TEXT: "text", INT4: "int4"}
        self.relations = [(CUSTOMERS, "public", "customers", "r", "id\x1fssn", None, None, None)]
        self.functions = [("pg_catalog", "upper", "1", "0", "f", None)]
        self.namesakes: list[str] = []


class FakeConn:
    """Stands in for :class:`SideConnection`: answers from a :class:`World`."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.queries = 0
        self.closed = False
        self.hold: asyncio.Event | None = None
        self.error: str | None = None

    async def query(self, sql: str) -> list[list[tuple[str | None, ...]]]:
        self.queries += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise SideQueryError("57014", self.error)
        w = self.world
        out: list[list[tuple[str | None, ...]]] = []
        for stmt in (s for s in sql.split(";") if s.strip()):
            if "FROM unnest(" in stmt:
                pairs = _unnest_pairs(stmt)
                out.append(
                    [
                        (str(o), str(a), *w.columns[(o, a)], "f", None)
                        for o, a in pairs
                        if (o, a) in w.columns
                    ]
                )
            elif "WITH RECURSIVE need(" in stmt:
                out.append(
                    [
                        (str(o), n, n, "S", str(o), "0", "b", ",", None, None)
                        for o, n in w.types.items()
                    ]
                )
            elif "set_config('search_path'" in stmt:
                out.append([("pg_catalog",)])
            elif "pg_get_viewdef" in stmt:
                out.append([(str(r[0]), *r[1:], None)[:9] for r in w.relations])
            elif "FROM pg_proc p" in stmt:
                # (schema, name, nargs, defaults, variadic, columns, language, extension,
                # SQL body, input names)
                out.append([(*r, None, None, None, None, None)[:10] for r in w.functions])
            elif "'t:' ||" in stmt:
                out.append([(s, None, None, None, None) for s in w.namesakes])
            else:  # pragma: no cover - a query this fake does not know
                raise AssertionError(stmt)
        return out

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _unnest_pairs(stmt: str) -> list[tuple[int, int]]:
    # FROM unnest('{1,2}'::oid[], '{3,4}'::int2[])
    part = stmt.split("FROM unnest(", 1)[1]
    rels, atts = (p.split("}'", 1)[0].split("'{", 1)[1] for p in part.split("::", 2)[:2])
    return list(
        zip((int(x) for x in rels.split(",")), (int(x) for x in atts.split(",")), strict=True)
    )


def _catalog(conn: FakeConn) -> Catalog:
    async def connect() -> SideConnection:
        return cast(SideConnection, conn)

    return Catalog(connect)


def _run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def _until(cond: Callable[[], bool]) -> None:
    """Let other tasks run until ``cond`` holds (no clock involved)."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


# --- scoped invalidation -------------------------------------------------------------------------


def test_invalidate_forgets_only_its_scope() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        await cat.resolve([SSN, ID], [NAME])
        assert cat.column(CUSTOMERS, 2) is not None and cat.relations_named(NAME) is not None
        gen = cat.generation
        cat.invalidate(Scope.NAMES)  # CREATE TEMP TABLE somewhere
        assert cat.generation == gen + 1
        assert cat.relations_named(NAME) is None and cat.functions_named("upper") is None
        col = cat.column(CUSTOMERS, 2)
        assert col is not None and col.column == "ssn"
        assert cat.type(TEXT) is not None
        cat.invalidate(Scope.TYPES)
        assert cat.type(TEXT) is None and cat.column(CUSTOMERS, 2) is not None
        cat.invalidate(Scope.NONE)  # nothing to forget: not even the generation moves
        assert cat.generation == gen + 2
        cat.invalidate()
        assert cat.column(CUSTOMERS, 2) is None

    _run(go)


# --- single flight -------------------------------------------------------------------------------


def test_concurrent_lookups_share_one_round_trip() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        results = await asyncio.gather(*(cat.resolve([SSN, ID], [NAME]) for _ in range(150)))
        assert conn.queries == 1
        for facts in results:
            col = facts.column(CUSTOMERS, 2)
            assert col is not None and col.column == "ssn"
            assert facts.relations_named(NAME) is not None
        # cached: nothing more to fetch
        await cat.resolve([SSN, ID], [NAME])
        assert conn.queries == 1

    _run(go)


def test_lookups_asked_during_a_round_trip_are_batched() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)
    other = Field("x", CUSTOMERS + 1, 1, TEXT, 0)
    conn.world.columns[(CUSTOMERS + 1, 1)] = ("public", "orders", "x", "r")

    async def go() -> None:
        conn.hold = asyncio.Event()
        first = asyncio.create_task(cat.resolve([SSN]))
        await _until(lambda: conn.queries == 1)
        # asked while the first is in flight: the same facts wait for it, new ones are batched
        same = [asyncio.create_task(cat.resolve([SSN])) for _ in range(20)]
        new = [asyncio.create_task(cat.resolve([other, ID])) for _ in range(20)]
        await asyncio.sleep(0)
        conn.hold.set()
        await asyncio.gather(first, *same, *new)
        assert conn.queries == 2
        for t in new:
            c = t.result().column(CUSTOMERS + 1, 1)
            assert c is not None and c.table == "orders"
        assert cat.column(CUSTOMERS + 1, 1) is not None  # and cached

    _run(go)


# --- lookups racing DDL --------------------------------------------------------------------------


def test_a_lookup_invalidated_in_flight_serves_its_plan_but_is_not_cached() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        conn.hold = asyncio.Event()
        task = asyncio.create_task(cat.resolve([SSN]))
        await _until(lambda: conn.queries == 1)
        # another session renames the column, its ALTER TABLE tag invalidates; the query in
        # flight reads the catalog after that (a real one could read before: not cacheable)
        conn.world.columns[(CUSTOMERS, 2)] = ("public", "customers", "ssn_old", "r")
        cat.invalidate(invalidation_scope(b"ALTER TABLE"))
        conn.hold.set()
        facts = await task
        col = facts.column(CUSTOMERS, 2)
        assert col is not None and col.column == "ssn_old"  # usable for this plan
        assert cat.column(CUSTOMERS, 2) is None  # not cached
        await cat.resolve([SSN])
        assert conn.queries == 2
        cached = cat.column(CUSTOMERS, 2)
        assert cached is not None and cached.column == "ssn_old"

    _run(go)


def test_a_round_trip_sent_before_an_invalidation_is_not_joined() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        conn.hold = asyncio.Event()
        first = asyncio.create_task(cat.resolve([SSN]))
        await _until(lambda: conn.queries == 1)
        conn.world.columns[(CUSTOMERS, 2)] = ("public", "customers", "secret", "r")
        cat.invalidate()
        # asked after the invalidation: the round trip in flight may predate the DDL
        second = asyncio.create_task(cat.resolve([SSN]))
        await asyncio.sleep(0)
        conn.hold.set()
        await first
        facts = await second
        assert conn.queries == 2
        col = facts.column(CUSTOMERS, 2)
        assert col is not None and col.column == "secret"
        assert cat.column(CUSTOMERS, 2) == col  # the second one is cached

    _run(go)


def test_cached_facts_of_an_unaffected_scope_still_serve_a_racing_lookup() -> None:
    """Facts cached when a lookup was asked for stay in its answer even if a scope is
    forgotten meanwhile: the answer is complete, the decision needs no second lookup."""
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        await cat.resolve([SSN])
        cat.invalidate(Scope.NAMES)
        conn.hold = asyncio.Event()
        task = asyncio.create_task(cat.resolve([SSN], [NAME]))
        await _until(lambda: conn.queries == 2)
        cat.invalidate()  # everything, while the names are fetched
        conn.hold.set()
        facts = await task
        assert facts.column(CUSTOMERS, 2) is not None and facts.type(TEXT) is not None
        assert facts.relations_named(NAME) is not None
        assert cat.column(CUSTOMERS, 2) is None and cat.relations_named(NAME) is None

    _run(go)


# --- failures ------------------------------------------------------------------------------------


def test_a_failed_round_trip_fails_every_waiter_then_recovers() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        conn.error = "canceling statement due to lock timeout"
        results = await asyncio.gather(
            *(cat.resolve([SSN]) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, CatalogError) for r in results), results
        assert "57014" in str(results[0])
        assert cat.column(CUSTOMERS, 2) is None
        conn.error = None
        facts = await cat.resolve([SSN])
        assert facts.column(CUSTOMERS, 2) is not None

    _run(go)


def test_a_cancelled_waiter_does_not_cancel_the_shared_lookup() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        conn.hold = asyncio.Event()
        a = asyncio.create_task(cat.resolve([SSN]))
        b = asyncio.create_task(cat.resolve([SSN]))
        await _until(lambda: conn.queries == 1)
        a.cancel()  # its session went away
        conn.hold.set()
        facts = await b
        assert facts.column(CUSTOMERS, 2) is not None
        assert a.cancelled()

    _run(go)


def test_close_fails_lookups_in_flight() -> None:
    conn = FakeConn(World())
    cat = _catalog(conn)

    async def go() -> None:
        conn.hold = asyncio.Event()
        task = asyncio.create_task(cat.resolve([SSN]))
        await _until(lambda: conn.queries == 1)
        await cat.close()
        with pytest.raises(CatalogError):
            await task

    _run(go)
