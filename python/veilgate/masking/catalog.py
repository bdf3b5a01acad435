"""Catalog facts for masking: column lineage, types and view dependencies, cached.

A RowDescription names each column by table OID + attnum and type OID; column rules are written
as ``schema.table.column``, and binary-format handling depends on the type (text-like, jsonb,
other).  :class:`Catalog` resolves those on a side connection (:mod:`.sideconn`), one per upstream
login, in one round trip per RowDescription for everything not yet cached.

* Column: ``(schema, table, column, relkind)`` plus the names of the tables it inherits from
  (a partition's column is masked by its parent's rule).
* Type: domains resolved to their base type; arrays carry their element type.
* View / materialized view: the base-table columns it depends on (``pg_rewrite`` → ``pg_depend``,
  ``refobjsubid``; through nested views), so a view column without its own rule can be treated as
  unknown lineage when the view depends on masked columns.

:meth:`Catalog.invalidate` forgets everything (the gateway calls it after DDL command tags).  A
lookup failure raises :class:`CatalogError`: callers fail closed (they never pass data through
because the catalog was unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from veilgate.config_model import TargetConfig
from veilgate.gateway.upstream import UpstreamError

from .fields import Field, parse_row_description
from .lineage import PURE_FUNCTIONS, PURE_TYPES
from .sideconn import SideConnection, SideConnectionError, SideQueryError

__all__ = ["Catalog", "CatalogError", "ColumnInfo", "RelationInfo", "TypeInfo", "ViewDeps"]

TEXT_LIKE: Final = frozenset({"text", "varchar", "bpchar", "name", "json", "citext", "unknown"})
"""Base types whose binary format is the text itself: maskable in place."""

MAX_CACHE: Final = 100_000

QUERY_TIMEOUT_S: Final = 15.0
"""A catalog query slower than this fails (closed): the session must not hang on a lock."""

MAX_AGE_S: Final = 300.0
"""Cached facts are dropped after this long even without DDL seen on this gateway: DDL from
other connections (another gateway, a migration tool) is picked up within this bound."""


class CatalogError(Exception):
    """A catalog lookup failed: the caller must fail closed."""


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    schema: str
    table: str
    column: str
    relkind: str
    """``r`` table, ``p`` partitioned, ``v`` view, ``m`` materialized view, ``f`` foreign..."""
    ancestors: tuple[tuple[str, str], ...] = ()
    """(schema, table) of every table this one inherits from or is a partition of."""
    generated: bool = False
    """A generated column (``COPY table TO`` without a column list leaves it out)."""

    @property
    def is_view(self) -> bool:
        return self.relkind in ("v", "m")


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    name: str
    """The type's own name (the domain's name for a domain)."""
    base_name: str
    """The name after resolving domains."""
    category: str
    """``typcategory`` of the base type (``S`` string, ``A`` array, ``C`` composite, ...)."""
    base_oid: int
    elem_oid: int
    """Element type of an array (0 otherwise)."""

    @property
    def text_like(self) -> bool:
        return self.base_name in TEXT_LIKE

    @property
    def is_jsonb(self) -> bool:
        return self.base_name == "jsonb"

    @property
    def is_array(self) -> bool:
        return self.elem_oid != 0 and self.category == "A"


@dataclass(frozen=True, slots=True)
class ViewDeps:
    """Base relation columns a view (transitively) reads: ``(schema, table, column)``; column
    ``None`` means the whole relation (a whole-row reference)."""

    columns: frozenset[tuple[str, str, str | None]]


@dataclass(frozen=True, slots=True)
class RelationInfo:
    """A relation a statement names: its columns (for star / whole-row references)."""

    oid: int
    schema: str
    table: str
    relkind: str
    columns: tuple[str, ...]

    @property
    def is_view(self) -> bool:
        return self.relkind in ("v", "m")


_MISSING: Final = ColumnInfo("", "", "", "")
"""Cached "no such column" (dropped since the RowDescription): treated as unknown lineage."""


# The catalog queries below are built as text (the side connection speaks the simple protocol):
# only integers (int()) and hex-encoded names are interpolated, hence the S608 waivers.


def _oid_array(values: Iterable[int]) -> str:
    return "'{" + ",".join(str(int(v)) for v in values) + "}'"


def _columns_sql(pairs: list[tuple[int, int]]) -> str:
    rels = _oid_array(p[0] for p in pairs)
    atts = _oid_array(p[1] for p in pairs)
    return f"""
SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname, c.relkind, a.attgenerated <> '',
       (SELECT string_agg(an.nspname || chr(30) || ac.relname, chr(31) ORDER BY ac.oid)
          FROM (WITH RECURSIVE up(oid, depth) AS (
                  SELECT i.inhparent, 0 FROM pg_inherits i WHERE i.inhrelid = c.oid
                  UNION SELECT i.inhparent, up.depth + 1 FROM up
                  JOIN pg_inherits i ON i.inhrelid = up.oid WHERE up.depth < 64)
                SELECT oid FROM up) anc
          JOIN pg_class ac ON ac.oid = anc.oid
          JOIN pg_namespace an ON an.oid = ac.relnamespace)
FROM unnest({rels}::oid[], {atts}::int2[]) AS want(rel, att)
JOIN pg_attribute a ON a.attrelid = want.rel AND a.attnum = want.att AND NOT a.attisdropped
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace;"""  # noqa: S608


def _types_sql(oids: Iterable[int]) -> str:
    return f"""
WITH RECURSIVE d(orig, cur, depth) AS (
  SELECT t.oid, t.oid, 0 FROM pg_type t WHERE t.oid = ANY({_oid_array(oids)}::oid[])
  UNION ALL
  SELECT d.orig, t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.cur
  WHERE t.typtype = 'd' AND d.depth < 64)
SELECT o.oid, o.typname, b.typname, b.typcategory, b.oid, b.typelem
FROM d JOIN pg_type b ON b.oid = d.cur JOIN pg_type o ON o.oid = d.orig
WHERE b.typtype <> 'd';"""  # noqa: S608


def _names_array(names: Iterable[str]) -> str:
    # Names come from client SQL: sent hex-encoded, so no quoting rule (or a server with
    # standard_conforming_strings off) can turn one into SQL.
    items = ",".join(
        f"convert_from(decode('{n.encode('utf-8').hex()}', 'hex'), 'UTF8')" for n in sorted(names)
    )
    return f"ARRAY[{items}]::text[]" if items else "ARRAY[]::text[]"


def _view_deps_sql(rels: Iterable[int], names: Iterable[str]) -> str:
    """Base columns read by the views among ``rels`` and the views named ``names``."""
    return f"""
WITH RECURSIVE deps(view, rel, col, depth) AS (
  SELECT r.ev_class, dep.refobjid, dep.refobjsubid, 0
  FROM pg_rewrite r
  JOIN pg_class rc ON rc.oid = r.ev_class AND rc.relkind IN ('v', 'm')
  JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = r.oid
   AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid <> r.ev_class
  WHERE r.ev_class = ANY({_oid_array(rels)}::oid[]) OR rc.relname = ANY({_names_array(names)})
  UNION
  SELECT deps.view, dep.refobjid, dep.refobjsubid, deps.depth + 1
  FROM deps
  JOIN pg_class vc ON vc.oid = deps.rel AND vc.relkind IN ('v', 'm')
  JOIN pg_rewrite r ON r.ev_class = vc.oid
  JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = r.oid
   AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid <> r.ev_class
  WHERE deps.depth < 32)
SELECT deps.view, n.nspname, c.relname, c.relkind, a.attname
FROM deps
JOIN pg_class c ON c.oid = deps.rel
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = deps.rel AND a.attnum = deps.col AND deps.col > 0
WHERE c.relkind NOT IN ('v', 'S', 'i', 'I', 'c');"""  # noqa: S608


def _shadowed_sql() -> str:
    # every operator outside pg_catalog (operator names are few); functions and types by name
    return f"""
SELECT 'f:' || p.proname FROM pg_proc p
 WHERE p.proname = ANY({_names_array(PURE_FUNCTIONS)})
   AND p.pronamespace <> 'pg_catalog'::regnamespace
UNION SELECT 'o:' || o.oprname FROM pg_operator o
 WHERE o.oprnamespace <> 'pg_catalog'::regnamespace
UNION SELECT 't:' || t.typname FROM pg_type t
 WHERE t.typname = ANY({_names_array(PURE_TYPES)})
   AND t.typnamespace <> 'pg_catalog'::regnamespace;"""  # noqa: S608


def _relations_sql(names: Iterable[str]) -> str:
    # column names joined with US (a control character: not in names)
    return f"""
SELECT c.oid, n.nspname, c.relname, c.relkind,
       (SELECT string_agg(a.attname, chr(31) ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY({_names_array(names)}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f');"""  # noqa: S608


class Catalog:
    """Cached catalog lookups over one side connection (reconnected on failure)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[SideConnection]],
        *,
        query_timeout_s: float = QUERY_TIMEOUT_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self._connect = connect
        self._timeout = query_timeout_s
        self._max_age = max_age_s
        self._since = time.monotonic()
        self._conn: SideConnection | None = None
        self._conn_lock = asyncio.Lock()
        self._columns: dict[tuple[int, int], ColumnInfo] = {}
        self._types: dict[int, TypeInfo] = {}
        self._views: dict[int, ViewDeps] = {}
        self._rels: dict[tuple[str | None, str], tuple[RelationInfo, ...]] = {}
        self._shadowed: frozenset[str] | None = None
        self.generation = 0
        """Bumped by :meth:`invalidate` (plan caches keyed on it become stale)."""

    @classmethod
    def for_target(cls, target: TargetConfig) -> Catalog:
        """A catalog on a side connection as ``target``'s login (TLS + SCRAM as upstream)."""
        return cls(lambda: SideConnection.open(target))

    # -- cached (sync) -----------------------------------------------------------------------

    def column(self, table_oid: int, attnum: int) -> ColumnInfo | None:
        """Cached column facts; ``None`` when not cached.  A column that no longer exists is
        returned as a :class:`ColumnInfo` with empty names (check :meth:`column_known`)."""
        return self._columns.get((table_oid, attnum))

    @staticmethod
    def column_known(info: ColumnInfo) -> bool:
        return info is not _MISSING

    def type(self, oid: int) -> TypeInfo | None:
        return self._types.get(oid)

    def view_deps(self, view_oid: int) -> ViewDeps | None:
        return self._views.get(view_oid)

    def relations_named(self, name: tuple[str | None, str]) -> tuple[RelationInfo, ...] | None:
        """Tables and views a name can denote (every schema for an unqualified name);
        ``None`` when not cached; empty when none (a CTE or subquery alias)."""
        return self._rels.get(name)

    def shadowed_builtins(self) -> frozenset[str] | None:
        """Built-ins a pure statement may name (``f:`` functions, ``o:`` operators, ``t:``
        types; see :class:`~veilgate.masking.lineage.StatementInfo.calls`) that an object
        outside ``pg_catalog`` shares a name with; ``None`` when not fetched yet."""
        return self._shadowed

    def views_named(self, name: tuple[str | None, str]) -> list[ViewDeps] | None:
        """Dependencies of the views / materialized views a name can denote (every schema for
        an unqualified name); ``None`` when not cached; ``[]`` when no view has that name."""
        rels = self._rels.get(name)
        if rels is None:
            return None
        out = []
        for r in rels:
            if not r.is_view:
                continue
            d = self._views.get(r.oid)
            if d is None:
                return None
            out.append(d)
        return out

    def missing(
        self, fields: Iterable[Field], names: Iterable[tuple[str | None, str]] = ()
    ) -> bool:
        """Whether :meth:`resolve` has anything to fetch for these fields / relation names."""
        for f in fields:
            if f.type_oid and f.type_oid not in self._types:
                return True
            if f.table_oid:
                col = self._columns.get((f.table_oid, f.attnum))
                if col is None:
                    return True
                if col.is_view and f.table_oid not in self._views:
                    return True
        return any(n not in self._rels for n in names)

    # -- lookups -----------------------------------------------------------------------------

    async def resolve(
        self, fields: Iterable[Field], names: Iterable[tuple[str | None, str]] = ()
    ) -> None:
        """Fetch everything about ``fields`` (and views named ``names``) not cached yet, in
        one round trip.  Raises :class:`CatalogError` when the catalog cannot be reached."""
        fields = list(fields)
        gen = self.generation
        pairs = sorted(
            {(f.table_oid, f.attnum) for f in fields if f.table_oid} - set(self._columns)
        )
        types = sorted({f.type_oid for f in fields if f.type_oid} - set(self._types))
        want_names = sorted({n for n in names if n not in self._rels}, key=str)
        # every table OID not known yet: those that turn out to be views get their deps
        rels = sorted({p[0] for p in pairs} - set(self._views))
        sql = []
        if pairs:
            sql.append(_columns_sql(pairs))
        if types:
            sql.append(_types_sql(types))
        if want_names:
            sql.append(_relations_sql({n[1] for n in want_names}))
        if rels or want_names:
            sql.append(_view_deps_sql(rels, {n[1] for n in want_names}))
        want_shadowed = self._shadowed is None
        if want_shadowed:
            sql.append(_shadowed_sql())
        if not sql:
            return
        results = iter(await self._query("".join(sql)))
        if gen != self.generation:
            return  # invalidated meanwhile: the caller looks again and misses
        if pairs:
            self._store_columns(pairs, next(results))
        if types:
            self._store_types(next(results))
        name_rows = next(results) if want_names else []
        if rels or want_names:
            dep_rows = next(results)
            view_oids = set(rels) | {int(r[0] or 0) for r in name_rows if r[3] in ("v", "m")}
            self._store_views(sorted(view_oids), dep_rows)
        if want_names:
            self._store_relations(want_names, name_rows)
        if want_shadowed:
            self._shadowed = frozenset(str(r[0]) for r in next(results))

    async def describe(self, sql: str) -> list[Field]:
        """The result columns of ``sql`` (Parse + Describe on the side connection, never run).

        Raises :class:`CatalogError` when it cannot be described (including a statement the
        server refuses to parse)."""
        conn = await self._connection()
        try:
            body = await asyncio.wait_for(conn.describe(sql), self._timeout)
        except SideQueryError as exc:
            raise CatalogError(f"cannot describe the query: {exc.code} {exc.message}") from None
        except TimeoutError:
            self._drop(conn)
            raise CatalogError("catalog connection failed: describe timed out") from None
        except SideConnectionError as exc:
            self._drop(conn)
            raise CatalogError(f"catalog connection failed: {exc}") from None
        if body is None:
            return []
        try:
            return parse_row_description(body)
        except ValueError as exc:
            raise CatalogError(str(exc)) from None

    def expire_if_stale(self) -> None:
        """:meth:`invalidate` when the cache is older than ``max_age_s`` (called per plan)."""
        if time.monotonic() - self._since > self._max_age:
            self.invalidate()

    def invalidate(self) -> None:
        """Forget every cached fact (after DDL).  In-flight lookups do not repopulate."""
        self._since = time.monotonic()
        self.generation += 1
        self._columns.clear()
        self._types.clear()
        self._views.clear()
        self._rels.clear()
        self._shadowed = None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- internals ---------------------------------------------------------------------------

    async def _connection(self) -> SideConnection:
        async with self._conn_lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            self._conn = None
            try:
                conn = await self._connect()
            except (UpstreamError, OSError, SideConnectionError) as exc:
                raise CatalogError(f"catalog connection failed: {exc}") from None
            self._conn = conn
            return conn

    def _drop(self, conn: SideConnection) -> None:
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            conn.abort()

    async def _query(self, sql: str) -> list[list[tuple[str | None, ...]]]:
        # one retry on a fresh connection: the old one may have been closed by the server
        for attempt in (0, 1):
            conn = await self._connection()
            try:
                return await asyncio.wait_for(conn.query(sql), self._timeout)
            except SideQueryError as exc:
                raise CatalogError(f"catalog query failed: {exc.code} {exc.message}") from None
            except TimeoutError:
                self._drop(conn)
                raise CatalogError("catalog connection failed: query timed out") from None
            except SideConnectionError as exc:
                self._drop(conn)
                if attempt:
                    raise CatalogError(f"catalog connection failed: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _trim(self) -> None:
        if (
            len(self._columns) > MAX_CACHE
            or len(self._types) > MAX_CACHE
            or len(self._views) + len(self._rels) > MAX_CACHE
        ):
            self.invalidate()

    def _store_columns(
        self, pairs: list[tuple[int, int]], rows: list[tuple[str | None, ...]]
    ) -> None:
        self._trim()
        for oid, att, schema, table, column, relkind, generated, anc in rows:
            # "schema RS table" items separated by US (control characters: not in names)
            ancestors = tuple(
                tuple(a.split("\x1e", 1)) for a in (anc or "").split("\x1f") if "\x1e" in a
            )
            self._columns[(int(oid or 0), int(att or 0))] = ColumnInfo(
                schema or "",
                table or "",
                column or "",
                relkind or "",
                ancestors,  # type: ignore[arg-type]
                generated == "t",
            )
        for p in pairs:
            self._columns.setdefault(p, _MISSING)

    def _store_types(self, rows: list[tuple[str | None, ...]]) -> None:
        self._trim()
        for oid, name, base, category, base_oid, elem in rows:
            self._types[int(oid or 0)] = TypeInfo(
                int(oid or 0),
                name or "",
                base or "",
                category or "",
                int(base_oid or 0),
                int(elem or 0),
            )

    def _store_views(self, views: list[int], rows: list[tuple[str | None, ...]]) -> None:
        deps: dict[int, set[tuple[str, str, str | None]]] = {v: set() for v in views}
        for view, schema, table, _relkind, column in rows:
            deps.setdefault(int(view or 0), set()).add((schema or "", table or "", column))
        for v, cols in deps.items():
            self._views[v] = ViewDeps(frozenset(cols))

    def _store_relations(
        self, names: list[tuple[str | None, str]], rows: list[tuple[str | None, ...]]
    ) -> None:
        infos = [
            RelationInfo(
                int(oid or 0),
                nsp or "",
                rel or "",
                kind or "",
                tuple((cols or "").split("\x1f")) if cols else (),
            )
            for oid, nsp, rel, kind, cols in rows
        ]
        for n in names:
            schema, rel = n
            self._rels[n] = tuple(
                i for i in infos if i.table == rel and (schema is None or i.schema == schema)
            )
