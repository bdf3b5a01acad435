"""Catalog facts for masking: column lineage, types, relations, functions, cached.

A RowDescription names each column by table OID + attnum and type OID; column rules are written
as ``schema.table.column``, and binary-format handling depends on the type (text-like, jsonb,
other).  :class:`Catalog` resolves those on a side connection (:mod:`.sideconn`), one per upstream
login, in one round trip per RowDescription for everything not yet cached.

* Column: ``(schema, table, column, relkind)`` plus the names of the tables it inherits from
  (a partition's column is masked by its parent's rule).
* Type: domains resolved to their base type; arrays carry their element type, composites their
  attributes' types (fetched with the type: everything a value of it contains).
* Names, for the lineage resolver (:mod:`.resolve`): the relations a name can denote in any
  schema (columns, ancestors, a view's definition from ``pg_get_viewdef`` with every name
  schema-qualified, the columns a write is checked against by unique indexes and foreign keys),
  the functions of a name (schema, arity, result columns), and whether a type or operator name
  also exists outside ``pg_catalog``.

:meth:`Catalog.invalidate` forgets a scope of facts (the planner calls it after DDL command tags,
with the scope :func:`~veilgate.masking.invalidation.invalidation_scope` gives).  Sessions of one
login share the catalog: concurrent lookups are batched into one round trip, and a lookup's
answer serves the decision that asked for it even when DDL invalidated the cache meanwhile (it
is just not cached then).  A lookup failure raises :class:`CatalogError`: callers fail closed
(they never pass data through because the catalog was unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from veilgate.config_model import TargetConfig
from veilgate.pgwire.upstream import UpstreamError

from .builtins import opaque_extension_function
from .fields import Field, parse_row_description
from .invalidation import Scope
from .resolve import OPERATOR_FUNCTIONS, FunctionInfo, RelationFacts
from .sideconn import SideConnection, SideConnectionError, SideQueryError

__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogFacts",
    "ColumnInfo",
    "FunctionInfo",
    "RelationInfo",
    "TypeInfo",
]

TEXT_LIKE: Final = frozenset({"text", "varchar", "bpchar", "name", "json", "citext", "unknown"})
"""Base types whose binary format is the text itself: maskable in place."""

MAX_CACHE: Final = 100_000

QUERY_TIMEOUT_S: Final = 15.0
"""A catalog query slower than this fails (closed): the session must not hang on a lock."""

MAX_AGE_S: Final = 300.0
"""Cached facts are dropped after this long even without DDL seen on this gateway: DDL from
other connections (another gateway, a migration tool) is picked up within this bound."""


CHECK_INTERVAL_S: Final = 1.0
"""Cached facts are checked against the catalog (:meth:`Catalog.check`) when they are used and
the last check is older than this; a plan made through a view's definition or a SQL function's
body is checked before every use."""

_FINGERPRINT_SQL: Final = """
SELECT count(*), coalesce(sum(hashtextextended(x::text || ':' || k::text, 0)), 0)
FROM (SELECT xmin, oid::int8 FROM pg_class WHERE oid >= 16384
      UNION ALL SELECT xmin, attrelid::int8 * 4096 + attnum FROM pg_attribute
       WHERE attrelid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_proc WHERE oid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_rewrite WHERE oid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_operator WHERE oid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_type WHERE oid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_namespace WHERE oid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_cast WHERE oid >= 16384
      UNION ALL SELECT xmin, inhrelid::int8 FROM pg_inherits
      UNION ALL SELECT xmin, indexrelid::int8 FROM pg_index WHERE indexrelid >= 16384
      UNION ALL SELECT xmin, oid::int8 FROM pg_constraint WHERE oid >= 16384) AS c(x, k);"""
"""A fingerprint of the catalog rows cached facts come from: every row version of the user's
relations, columns, routines, view rules, operators, types, schemas, casts, inheritance,
indexes and constraints (``xmin`` with the row's key, hashed and summed, and the count).  Any
DDL committed anywhere writes or deletes such a row, so the fingerprint changes; objects below
``FirstNormalObjectId`` (the built-ins) are left out to keep it cheap."""


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
    typtype: str = "b"
    """``typtype`` of the base type: ``b`` base, ``c`` composite, ``e`` enum, ``r`` range..."""
    delimiter: str = ","
    """The element type's delimiter in an array's text form."""
    attributes: tuple[int, ...] = ()
    """A composite's attribute type OIDs, in order (dropped columns left out)."""
    range_oid: int = 0
    """A range's subtype, a multirange's range type (0 otherwise)."""

    @property
    def text_like(self) -> bool:
        return self.base_name in TEXT_LIKE

    @property
    def is_jsonb(self) -> bool:
        return self.base_name == "jsonb"

    @property
    def is_array(self) -> bool:
        return self.elem_oid != 0 and self.category == "A"


RelationInfo = RelationFacts
"""A relation a name can denote (see :class:`~veilgate.masking.resolve.RelationFacts`)."""


_MISSING: Final = ColumnInfo("", "", "", "")
_MISSING_TYPE: Final = TypeInfo(0, "", "", "", 0, 0)
"""A type the side connection cannot see (created in the client's open transaction)."""

LOCK_TIMEOUT_MS: Final = 200
"""The side connection never waits on a lock (one the client's own open transaction holds, say)
longer than this: its lookup fails at once instead (55P03)."""
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
    # The types asked for and every type their values contain (array elements, composite
    # attributes, domains' base types), each resolved through its domains: a value's codec is
    # built from these rows alone (see veilgate.masking.codecs).
    return f"""
WITH RECURSIVE need(oid, depth) AS (
  SELECT t.oid, 0 FROM pg_type t WHERE t.oid = ANY({_oid_array(oids)}::oid[])
  UNION
  SELECT x.oid, n.depth + 1 FROM need n JOIN pg_type t ON t.oid = n.oid
  CROSS JOIN LATERAL (
    SELECT t.typbasetype WHERE t.typtype = 'd'
    UNION ALL SELECT t.typelem WHERE t.typelem <> 0 AND t.typcategory = 'A' AND t.typlen = -1
    UNION ALL SELECT a.atttypid FROM pg_attribute a
     WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE t.typtype = 'r' AND r.rngtypid = t.oid
    UNION ALL SELECT r.rngtypid FROM pg_range r WHERE t.typtype = 'm' AND r.rngmultitypid = t.oid
  ) x(oid)
  WHERE n.depth < 16),
d(orig, cur, depth) AS (
  SELECT DISTINCT need.oid, need.oid, 0 FROM need
  UNION ALL
  SELECT d.orig, t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.cur
  WHERE t.typtype = 'd' AND d.depth < 64)
SELECT o.oid, o.typname, b.typname, b.typcategory, b.oid, b.typelem, b.typtype,
  COALESCE(e.typdelim, ','),
  (SELECT string_agg(a.atttypid::text, ',' ORDER BY a.attnum) FROM pg_attribute a
    WHERE b.typtype = 'c' AND a.attrelid = b.typrelid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT CASE b.typtype WHEN 'r' THEN r.rngsubtype ELSE r.rngtypid END FROM pg_range r
    WHERE (b.typtype = 'r' AND r.rngtypid = b.oid) OR (b.typtype = 'm' AND r.rngmultitypid = b.oid))
FROM d JOIN pg_type b ON b.oid = d.cur JOIN pg_type o ON o.oid = d.orig
LEFT JOIN pg_type e ON e.oid = b.typelem
WHERE b.typtype <> 'd';"""  # noqa: S608


def _names_array(names: Iterable[str]) -> str:
    # Names come from client SQL: sent hex-encoded, so no quoting rule (or a server with
    # standard_conforming_strings off) can turn one into SQL.
    items = ",".join(
        f"convert_from(decode('{n.encode('utf-8').hex()}', 'hex'), 'UTF8')" for n in sorted(names)
    )
    return f"ARRAY[{items}]::text[]" if items else "ARRAY[]::text[]"


_CATALOG_PATH: Final = "SELECT pg_catalog.set_config('search_path', 'pg_catalog', true);"
"""Sent before the name lookups of a batch (one simple Query: an implicit transaction, so the
setting ends with it): ``pg_get_viewdef`` then writes every name outside ``pg_catalog``
schema-qualified, whatever the side connection's own search_path."""


def _relations_sql(names: Iterable[str]) -> str:
    # name lists joined with US, items of a probe with RS (control characters: not in names)
    return f"""
SELECT c.oid, n.nspname, c.relname, c.relkind,
       (SELECT string_agg(a.attname, chr(31) ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       (SELECT string_agg(an.nspname || chr(30) || ac.relname, chr(31) ORDER BY ac.oid)
          FROM (WITH RECURSIVE up(oid, depth) AS (
                  SELECT i.inhparent, 0 FROM pg_inherits i WHERE i.inhrelid = c.oid
                  UNION SELECT i.inhparent, up.depth + 1 FROM up
                  JOIN pg_inherits i ON i.inhrelid = up.oid WHERE up.depth < 64)
                SELECT oid FROM up) anc
          JOIN pg_class ac ON ac.oid = anc.oid
          JOIN pg_namespace an ON an.oid = ac.relnamespace),
       (SELECT string_agg(p, chr(31)) FROM (
          SELECT coalesce(a.attname, '*') || chr(30) || n.nspname || chr(30) || c.relname
                 || chr(30) || coalesce(a.attname, '*') AS p
            FROM pg_index i CROSS JOIN unnest(i.indkey::int2[]) AS k(attnum)
            LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)
          UNION
          SELECT ca.attname || chr(30) || fn.nspname || chr(30) || fc.relname || chr(30)
                 || fa.attname
            FROM pg_constraint f CROSS JOIN generate_subscripts(f.conkey, 1) AS j
            JOIN pg_attribute ca ON ca.attrelid = f.conrelid AND ca.attnum = f.conkey[j]
            JOIN pg_class fc ON fc.oid = f.confrelid
            JOIN pg_namespace fn ON fn.oid = fc.relnamespace
            JOIN pg_attribute fa ON fa.attrelid = f.confrelid AND fa.attnum = f.confkey[j]
           WHERE f.conrelid = c.oid AND f.contype = 'f') probes),
       (SELECT string_agg(CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace
                                AND t.typtype = 'b' THEN t.typname ELSE '' END,
                          chr(31) ORDER BY a.attnum)
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY({_names_array(names)})
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S');"""  # noqa: S608


_EXTENSION_MEMBER: Final = (
    "EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
    " AND d.objid = p.oid AND d.deptype = 'e')"
)
"""SQL: the function ``p`` belongs to an extension."""

_RANGE_CONSTRUCTOR: Final = (
    "(p.prolang = 12 AND p.prosrc IN ('range_constructor2', 'range_constructor3',"
    " 'multirange_constructor0', 'multirange_constructor1', 'multirange_constructor2'))"
)
"""SQL: the function ``p`` is a constructor PostgreSQL made for a range or multirange type
(``CREATE TYPE ... AS RANGE``): internal code that builds the value from its arguments, in the
type's own schema (no extension installs it)."""


def _functions_sql(names: Iterable[str]) -> str:
    # result columns: OUT / INOUT / TABLE parameters (two or more), else a composite return
    # type's attributes; NULL for a scalar, '' for a row shape the call must give (record,
    # polymorphic)
    return f"""
SELECT n.nspname, p.proname, p.pronargs, p.pronargdefaults, p.provariadic <> 0,
       CASE WHEN outs.n >= 2 THEN outs.names
            WHEN outs.n = 1 THEN NULL
            WHEN t.typtype = 'c' THEN
              (SELECT string_agg(a.attname, chr(31) ORDER BY a.attnum) FROM pg_attribute a
                WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
            WHEN t.typtype = 'p' AND t.typname NOT IN ('void', 'trigger', 'event_trigger')
              THEN ''
       END,
       l.lanname, {_EXTENSION_MEMBER} OR {_RANGE_CONSTRUCTOR},
       CASE WHEN l.lanname = 'sql' AND NOT p.prosecdef AND p.prokind IN ('f', 'p') THEN
         CASE WHEN p.prosqlbody IS NOT NULL THEN chr(1) || pg_get_function_sqlbody(p.oid)
              ELSE p.prosrc END
       END,
       (SELECT string_agg(coalesce(p.proargnames[i], ''), chr(31) ORDER BY i)
          FROM generate_series(1, coalesce(array_length(p.proargmodes, 1), p.pronargs)) AS i
         WHERE p.proargmodes IS NULL OR p.proargmodes[i] IN ('i', 'b', 'v'))
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_type t ON t.oid = p.prorettype
JOIN pg_language l ON l.oid = p.prolang
CROSS JOIN LATERAL (
  SELECT count(*) AS n,
         string_agg(coalesce(nullif(p.proargnames[i], ''), 'column' || i::text), chr(31)
                    ORDER BY i) AS names
    FROM generate_subscripts(p.proargmodes, 1) AS i
   WHERE p.proargmodes[i] IN ('o', 'b', 't')) outs
WHERE p.proname = ANY({_names_array(names)});"""  # noqa: S608


def _namesakes_sql(
    types: Iterable[str], operators: Iterable[str], casts: Iterable[str] = ()
) -> str:
    # one row per type / operator of a wanted name outside pg_catalog; for an operator, the
    # function it runs: its name, language and whether an extension installed it
    return f"""
SELECT 't:' || t.typname, NULL, NULL, NULL, NULL FROM pg_type t
 WHERE t.typname = ANY({_names_array(types)}) AND t.typnamespace <> 'pg_catalog'::regnamespace
UNION ALL SELECT 'o:' || o.oprname, p.proname, l.lanname, {_EXTENSION_MEMBER}, EXISTS (
    SELECT 1 FROM pg_type a WHERE a.oid IN (o.oprleft, o.oprright)
       AND (a.typnamespace = 'pg_catalog'::regnamespace OR EXISTS (
            SELECT 1 FROM pg_cast c JOIN pg_type s ON s.oid = c.castsource
             WHERE c.casttarget = a.oid AND c.castcontext = 'i'
               AND s.typnamespace = 'pg_catalog'::regnamespace)))
  FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
  JOIN pg_language l ON l.oid = p.prolang
 WHERE o.oprname = ANY({_names_array(operators)})
   AND o.oprnamespace <> 'pg_catalog'::regnamespace
UNION ALL SELECT 'c:' || w.name, NULL, NULL, NULL, NULL
  FROM unnest({_names_array(casts)}) AS w(name)
 WHERE EXISTS (SELECT 1 FROM pg_type t WHERE t.typname = w.name)
   AND NOT EXISTS (
       SELECT 1 FROM pg_type t
        WHERE t.typname = w.name
          AND (t.typtype = 'p' OR t.typtype = 'd' AND EXISTS (
                 SELECT 1 FROM pg_constraint k WHERE k.contypid = t.oid)
               OR EXISTS (
                 SELECT 1 FROM pg_cast c JOIN pg_proc p ON p.oid = c.castfunc
                   JOIN pg_language l ON l.oid = p.prolang
                  WHERE c.casttarget = t.oid
                    AND NOT (l.lanname IN ('c', 'internal')
                             AND ({_EXTENSION_MEMBER} OR {_RANGE_CONSTRUCTOR}))
                    AND p.pronamespace <> 'pg_catalog'::regnamespace)));"""  # noqa: S608


def _operator_functions_sql(operators: Iterable[str]) -> str:
    # the function each operator of these names outside pg_catalog runs
    return f"""
SELECT o.oprname, fn.nspname, p.proname
  FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
  JOIN pg_namespace fn ON fn.oid = p.pronamespace
 WHERE o.oprname = ANY({_names_array(operators)})
   AND o.oprnamespace <> 'pg_catalog'::regnamespace;"""  # noqa: S608


def _exact_operators_sql(keys: Iterable[str]) -> str:
    # keys "op US left US right" (pg_catalog type names): those for which pg_catalog has an
    # operator of exactly these operand types and no other schema has one
    return f"""
SELECT w.k FROM unnest({_names_array(keys)}) AS w(k)
CROSS JOIN LATERAL (
  SELECT split_part(w.k, chr(31), 1) AS op,
         to_regtype('pg_catalog.' || quote_ident(split_part(w.k, chr(31), 2))) AS l,
         to_regtype('pg_catalog.' || quote_ident(split_part(w.k, chr(31), 3))) AS r) s
WHERE s.l IS NOT NULL AND s.r IS NOT NULL
  AND EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprname = s.op AND o.oprleft = s.l
                 AND o.oprright = s.r AND o.oprnamespace = 'pg_catalog'::regnamespace)
  AND NOT EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprname = s.op AND o.oprleft = s.l
                 AND o.oprright = s.r AND o.oprnamespace <> 'pg_catalog'::regnamespace);"""  # noqa: S608


def trusted_function(name: str | None, language: str | None, extension: str | None) -> bool:
    """Whether a function outside ``pg_catalog`` computes its result from its arguments like a
    built-in: installed by an extension, written in C (or internal), and not one of the
    extension functions that run SQL given as text or read data, WAL or pages
    (:data:`~veilgate.masking.builtins.OPAQUE_EXTENSION_FUNCTIONS`).  Everything else (SQL,
    PL/pgSQL, functions nobody installed as an extension) may read tables: opaque.  The range
    and multirange constructors PostgreSQL makes for a user's range type count as installed
    (``extension`` true: see ``_RANGE_CONSTRUCTOR``)."""
    return (
        extension == "t"
        and language in ("c", "internal")
        and not opaque_extension_function(name or "")
    )


def _parse_namesakes(wants: Iterable[str], rows: list[tuple[str | None, ...]]) -> dict[str, bool]:
    """``c:`` keys: True unless every type of that name exists for the catalog and a cast to
    it runs only C input functions (rows list those names): not a cast function that is not an
    extension's C function, a domain with constraints (they may call functions), a pseudo-type;
    a type the catalog cannot see (created in the client's open transaction, with a cast
    function maybe) is of unknown origin.  (The cast PostgreSQL makes from a range type to its
    multirange runs the multirange's constructor: it only reads its input.)
    ``t:`` / ``o:`` keys: True when a namesake that may not compute like a built-in exists;
    ``e:o:`` keys: True when an operator namesake may take a value of a built-in type (an
    argument of a built-in type, or of a type a built-in one casts to implicitly): the server
    may pick it for such a value, so the built-in's argument rules do not hold.  (hstore's
    ``hstore = hstore`` takes none: no built-in type becomes ``hstore`` implicitly.)"""
    untrusted: set[str] = set()
    present: set[str] = set()
    safe_casts: set[str] = set()
    for key, proname, lang, ext, exposed in rows:
        k = str(key)
        if k.startswith("c:"):
            safe_casts.add(k)
            continue
        if exposed != "f":
            present.add(k)
        if not k.startswith("o:") or not trusted_function(proname, lang, ext):
            untrusted.add(k)
    out: dict[str, bool] = {}
    for k in wants:
        if k.startswith("c:"):
            out[k] = k not in safe_casts
            continue
        base = k[2:] if k.startswith("e:") else k
        out[base] = base in untrusted
        if base.startswith("o:"):
            out["e:" + base] = base in present
    return out


Name = tuple[str | None, str]
"""A relation name as a statement writes it: ``(schema or None, relname)``."""


class _NameFacts:
    """Name-keyed facts (:attr:`Scope.NAMES`): mutable, replaced as a whole when forgotten."""

    __slots__ = ("funcs", "keys", "rels")

    def __init__(self) -> None:
        self.rels: dict[Name, tuple[RelationFacts, ...]] = {}
        self.funcs: dict[str, tuple[FunctionInfo, ...]] = {}
        self.keys: dict[str, bool] = {}


@dataclass(frozen=True, slots=True)
class _Facts:
    """One layer of facts: the shared cache, or what one batched lookup fetched.

    Invalidating a scope *replaces* its containers in the catalog's cache (never clears them):
    a lookup in flight stores into the containers current when it was sent, so what it read
    is cached only if that scope was not forgotten meanwhile, and a plan holding an older
    layer keeps a consistent view."""

    columns: dict[tuple[int, int], ColumnInfo]
    types: dict[int, TypeInfo]
    names: _NameFacts

    @classmethod
    def empty(cls) -> _Facts:
        return cls({}, {}, _NameFacts())

    def forget(self, scope: Scope) -> _Facts:
        """This layer with the containers of ``scope`` replaced by empty ones."""
        return _Facts(
            {} if Scope.RELATIONS in scope else self.columns,
            {} if Scope.TYPES in scope else self.types,
            _NameFacts() if Scope.NAMES in scope else self.names,
        )

    def size(self) -> int:
        n = self.names
        return max(len(self.columns), len(self.types), len(n.rels) + len(n.funcs) + len(n.keys))

    def without_unseen(self) -> _Facts:
        """This layer without the columns and types the side connection could not see (of a
        relation or type created in a client's open transaction, a temporary table): such facts
        serve the decision that asked, but are looked up again next time (they may be visible
        then)."""
        if _MISSING not in self.columns.values() and _MISSING_TYPE not in self.types.values():
            return self
        return _Facts(
            {k: c for k, c in self.columns.items() if c is not _MISSING},
            {k: t for k, t in self.types.items() if t is not _MISSING_TYPE},
            self.names,
        )

    def absorb(self, other: _Facts) -> None:
        self.columns.update(other.columns)
        self.types.update(other.types)
        self.names.rels.update(other.names.rels)
        self.names.funcs.update(other.names.funcs)
        self.names.keys.update(other.names.keys)


class CatalogFacts:
    """Read-only catalog facts for one decision: layers looked up in order (freshly fetched
    first, then the cache as it was when the lookup was asked for)."""

    __slots__ = ("_layers",)

    def __init__(self, layers: tuple[_Facts, ...]) -> None:
        self._layers = layers

    def column(self, table_oid: int, attnum: int) -> ColumnInfo | None:
        """Column facts; ``None`` when not known.  A column that no longer exists is returned
        as a :class:`ColumnInfo` with empty names (check :meth:`Catalog.column_known`)."""
        key = (table_oid, attnum)
        for layer in self._layers:
            col = layer.columns.get(key)
            if col is not None:
                return col
        return None

    def type(self, oid: int) -> TypeInfo | None:
        for layer in self._layers:
            t = layer.types.get(oid)
            if t is not None:
                return t
        return None

    def relations_named(self, name: Name) -> tuple[RelationFacts, ...] | None:
        """Relations a name can denote (every schema for an unqualified name); ``None`` when
        not known; empty when none (a CTE name, a temporary table the side connection does not
        see)."""
        for layer in self._layers:
            r = layer.names.rels.get(name)
            if r is not None:
                return r
        return None

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        """Every function of that name, in every schema (``None``: not known)."""
        for layer in self._layers:
            f = layer.names.funcs.get(name)
            if f is not None:
                return f
        return None

    def namesake(self, key: str) -> bool | None:
        """Whether a type (``t:name``) or operator (``o:op``) of that name exists outside
        ``pg_catalog`` (``None``: not known)."""
        for layer in self._layers:
            k = layer.names.keys.get(key)
            if k is not None:
                return k
        return None


@dataclass(slots=True)
class _Wants:
    """What a lookup must fetch."""

    pairs: set[tuple[int, int]] = field(default_factory=set)
    types: set[int] = field(default_factory=set)
    names: set[Name] = field(default_factory=set)
    funcs: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.pairs or self.types or self.names or self.funcs or self.keys)

    def overlaps(self, other: _Wants) -> bool:
        return bool(
            self.pairs & other.pairs
            or self.types & other.types
            or self.names & other.names
            or self.funcs & other.funcs
            or self.keys & other.keys
        )

    def without(self, other: _Wants) -> _Wants:
        return _Wants(
            self.pairs - other.pairs,
            self.types - other.types,
            self.names - other.names,
            self.funcs - other.funcs,
            self.keys - other.keys,
        )

    def add(self, other: _Wants) -> None:
        self.pairs |= other.pairs
        self.types |= other.types
        self.names |= other.names
        self.funcs |= other.funcs
        self.keys |= other.keys


@dataclass(eq=False, slots=True)
class _Batch:
    """Lookups asked for while another one was in flight: sent together as one round trip."""

    wants: _Wants
    done: asyncio.Future[_Facts]
    generation: int = -1
    """The catalog's generation when the batch was sent."""


class Catalog:
    """Cached catalog lookups over one side connection (reconnected on failure), shared by the
    sessions of one upstream login.

    Concurrent lookups are batched: while one round trip is in flight, every lookup asked for
    meanwhile waits for it (when it fetches what they want and nothing was invalidated since it
    was sent) or joins the next batch, sent as one round trip when the first returns."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[SideConnection]],
        *,
        query_timeout_s: float = QUERY_TIMEOUT_S,
        max_age_s: float = MAX_AGE_S,
        check_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._connect = connect
        self.check_interval_s = check_interval_s
        """See :data:`CHECK_INTERVAL_S`."""
        self._checked_at = float("-inf")
        """When the last completed fingerprint check was sent (monotonic)."""
        self._fingerprint: tuple[str | None, ...] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self.checks = 0
        """Fingerprint checks sent (for tests and metrics)."""
        self._timeout = query_timeout_s
        self._max_age = max_age_s
        self._since = time.monotonic()
        self._conn: SideConnection | None = None
        self._conn_lock = asyncio.Lock()
        self._cache = _Facts.empty()
        self._pending: _Batch | None = None
        self._running: _Batch | None = None
        self._worker: asyncio.Task[None] | None = None
        self.round_trips = 0
        """Catalog queries sent (for tests and metrics)."""
        self.generation = 0
        """Bumped by every :meth:`invalidate` (plan caches keyed on it become stale)."""

    @classmethod
    def for_target(cls, target: TargetConfig) -> Catalog:
        """A catalog on a side connection as ``target``'s login (TLS + SCRAM as upstream)."""
        return cls(lambda: SideConnection.open(target, lock_timeout_ms=LOCK_TIMEOUT_MS))

    # -- cached (sync) -----------------------------------------------------------------------

    def facts(self) -> CatalogFacts:
        """The cached facts as they are now."""
        return CatalogFacts((self._cache,))

    def column(self, table_oid: int, attnum: int) -> ColumnInfo | None:
        """Cached column facts; ``None`` when not cached.  A column that no longer exists is
        returned as a :class:`ColumnInfo` with empty names (check :meth:`column_known`)."""
        return self._cache.columns.get((table_oid, attnum))

    @staticmethod
    def column_known(info: ColumnInfo) -> bool:
        """False for a column the side connection cannot see: of a relation created in the
        client's open transaction, a temporary one, or dropped."""
        return info is not _MISSING

    @staticmethod
    def type_known(info: TypeInfo) -> bool:
        """False for a type the side connection cannot see (created in the client's open
        transaction)."""
        return info is not _MISSING_TYPE

    def type(self, oid: int) -> TypeInfo | None:
        return self._cache.types.get(oid)

    def relations_named(self, name: Name) -> tuple[RelationFacts, ...] | None:
        """See :meth:`CatalogFacts.relations_named` (cached facts only)."""
        return self._cache.names.rels.get(name)

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        """See :meth:`CatalogFacts.functions_named` (cached facts only)."""
        return self._cache.names.funcs.get(name)

    def namesake(self, key: str) -> bool | None:
        """See :meth:`CatalogFacts.namesake` (cached facts only)."""
        return self._cache.names.keys.get(key)

    def missing(self, fields: Iterable[Field]) -> bool:
        """Whether :meth:`resolve` has anything to fetch for these fields."""
        return bool(_wants(self._cache, list(fields)))

    # -- lookups -----------------------------------------------------------------------------

    async def resolve(
        self,
        fields: Iterable[Field] = (),
        names: Iterable[Name] = (),
        functions: Iterable[str] = (),
        keys: Iterable[str] = (),
    ) -> CatalogFacts:
        """Everything about ``fields``, the relations named ``names``, the functions named
        ``functions`` and the namesake ``keys`` (see :meth:`CatalogFacts.namesake`): what is
        cached now plus what is fetched (in one round trip shared with concurrent lookups).

        The facts returned are good for the decision that asked for them even when DDL
        invalidates the cache while the lookup is in flight: cached facts were valid when the
        lookup was asked for, fetched ones were read after that.  Only their caching respects
        the invalidation.  Raises :class:`CatalogError` when the catalog cannot be reached."""
        snapshot = self._cache
        wants = _wants(snapshot, list(fields), names, functions, keys)
        if not wants:
            return CatalogFacts((snapshot,))
        waits: list[asyncio.Future[_Facts]] = []
        running = self._running
        # a round trip already in flight serves this lookup only if nothing was invalidated
        # since it was sent (it read the catalog before this lookup was asked for)
        if (
            running is not None
            and running.generation == self.generation
            and wants.overlaps(running.wants)
        ):
            waits.append(running.done)
            wants = wants.without(running.wants)
        if wants:
            batch = self._pending
            if batch is None:
                batch = self._pending = _Batch(_Wants(), _future())
            batch.wants.add(wants)
            waits.append(batch.done)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(self._drain())
        # shield: a session cancelled while waiting must not cancel the others' lookup
        fresh = [await asyncio.shield(w) for w in waits]
        return CatalogFacts((*fresh, snapshot))

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

    def check_due(self, definitions: bool = False) -> bool:
        """Whether cached facts must be checked (:meth:`check`) before a plan uses them: always
        for a plan that went through view definitions or SQL function bodies, else when the
        last check is older than ``check_interval_s``."""
        return definitions or time.monotonic() - self._checked_at > self.check_interval_s

    async def check(self, max_age_s: float = 0.0) -> None:
        """Make sure a fingerprint check (:data:`_FINGERPRINT_SQL`) sent at most ``max_age_s``
        ago has completed; when the fingerprint changed since the previous one, every cached
        fact is forgotten (DDL committed by any connection: another gateway, a migration, a
        function run by a client).  Concurrent callers share one round trip.  Raises
        :class:`CatalogError` (fail closed) when the catalog cannot be reached."""
        want = time.monotonic() - max_age_s
        while self._checked_at < want:
            task = self._check_task
            if task is None or task.done():
                task = self._check_task = asyncio.get_running_loop().create_task(self._run_check())
            await asyncio.shield(task)

    async def _run_check(self) -> None:
        sent = time.monotonic()
        self.checks += 1
        results = await self._query(_FINGERPRINT_SQL)
        rows = results[0] if results else []
        fingerprint = tuple(rows[0]) if rows else None
        if fingerprint is None or fingerprint != self._fingerprint:
            # the first check forgets what was cached before it (read at an unknown state)
            self.invalidate()
            self._fingerprint = fingerprint
        self._checked_at = max(self._checked_at, sent)

    def expire_if_stale(self) -> None:
        """:meth:`invalidate` when the cache is older than ``max_age_s`` (called per plan)."""
        if time.monotonic() - self._since > self._max_age:
            self.invalidate()

    def invalidate(self, scope: Scope = Scope.ALL) -> None:
        """Forget the cached facts of ``scope`` (after DDL; see
        :func:`~veilgate.masking.invalidation.invalidation_scope`).  Lookups in flight do not
        cache what they read into the forgotten scope."""
        if not scope:
            return
        if scope == Scope.ALL:
            self._since = time.monotonic()
        self.generation += 1
        self._cache = self._cache.forget(scope)

    async def close(self) -> None:
        check, self._check_task = self._check_task, None
        if check is not None and not check.done():
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError, CatalogError):
                await check
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._fail_pending(CatalogError("catalog closed"))
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- internals ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Send the pending batch, then the one collected meanwhile, until none is left."""
        while (batch := self._pending) is not None:
            self._pending = None
            batch.generation = self.generation
            into = self._cache
            self._running = batch
            try:
                fresh = await self._fetch(batch.wants)
            except CatalogError as exc:
                _fail(batch.done, exc)
                continue
            except asyncio.CancelledError:
                _fail(batch.done, CatalogError("catalog lookup cancelled"))
                self._fail_pending(CatalogError("catalog lookup cancelled"))
                raise
            except Exception as exc:  # a malformed answer: waiters fail closed, never hang
                _fail(batch.done, CatalogError(f"catalog lookup failed: {type(exc).__name__}"))
                continue
            finally:
                self._running = None
            self._store(into, fresh)
            if not batch.done.done():
                batch.done.set_result(fresh)

    def _fail_pending(self, exc: CatalogError) -> None:
        batch, self._pending = self._pending, None
        if batch is not None:
            _fail(batch.done, exc)

    def _store(self, into: _Facts, fresh: _Facts) -> None:
        # ``into`` is the cache as it was when the lookup was sent: a scope forgotten since
        # has new containers, so what was read for it is not cached
        if self._cache.size() > MAX_CACHE:
            self.invalidate()
            return
        into.absorb(fresh.without_unseen())

    async def _fetch(self, wants: _Wants) -> _Facts:
        """One round trip for everything ``wants`` names."""
        pairs = sorted(wants.pairs)
        want_names = sorted(wants.names, key=lambda n: (n[0] or "", n[1]))
        exact = sorted(k[2:] for k in wants.keys if k.startswith("x:"))
        keys = {k[2:] if k.startswith("e:") else k for k in wants.keys if not k.startswith("x:")}
        types = sorted(k[2:] for k in keys if k.startswith("t:"))
        operators = sorted(k[2:] for k in keys if k.startswith("o:"))
        casts = sorted(k[2:] for k in keys if k.startswith("c:"))
        sql = []
        if want_names or wants.funcs:
            # view definitions and SQL-standard function bodies deparsed schema-qualified
            sql.append(_CATALOG_PATH)
        if want_names:
            sql.append(_relations_sql({n[1] for n in want_names}))
        op_keys = sorted(f for f in wants.funcs if f.startswith(OPERATOR_FUNCTIONS))
        funcs = sorted(f for f in wants.funcs if not f.startswith(OPERATOR_FUNCTIONS))
        if funcs:
            sql.append(_functions_sql(funcs))
        if op_keys:
            sql.append(_operator_functions_sql(k[len(OPERATOR_FUNCTIONS) :] for k in op_keys))
        if keys:
            sql.append(_namesakes_sql(types, operators, casts))
        if exact:
            sql.append(_exact_operators_sql(exact))
        if pairs:
            sql.append(_columns_sql(pairs))
        if wants.types:
            sql.append(_types_sql(sorted(wants.types)))
        out = _Facts.empty()
        if not sql:
            return out
        self.round_trips += 1
        results = iter(await self._query("".join(sql)))
        if want_names or wants.funcs:
            next(results)  # set_config
        if want_names:
            out.names.rels.update(_parse_relations(want_names, next(results)))
        if funcs:
            out.names.funcs.update(_parse_functions(funcs, next(results)))
        if op_keys:
            by_op: dict[str, list[FunctionInfo]] = {k: [] for k in op_keys}
            for op, nsp, proname in next(results):
                by_op.setdefault(OPERATOR_FUNCTIONS + str(op), []).append(
                    FunctionInfo(nsp or "", proname or "", 2, 0, False, None)
                )
            out.names.funcs.update({k: tuple(v) for k, v in by_op.items()})
        if keys:
            plain = {k for k in wants.keys if not k.startswith("x:")}
            out.names.keys.update(_parse_namesakes(plain, next(results)))
        if exact:
            certain = {"x:" + str(row[0]) for row in next(results)}
            out.names.keys.update({"x:" + k: "x:" + k in certain for k in exact})
        if pairs:
            out.columns.update(_parse_columns(pairs, next(results)))
        if wants.types:
            out.types.update(_parse_types(sorted(wants.types), next(results)))
        return out

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


def _future() -> asyncio.Future[_Facts]:
    fut: asyncio.Future[_Facts] = asyncio.get_running_loop().create_future()
    # every waiter may have been cancelled: a failure nobody reads must not be logged as lost
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


def _fail(fut: asyncio.Future[_Facts], exc: CatalogError) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _wants(
    cache: _Facts,
    fields: list[Field],
    names: Iterable[Name] = (),
    functions: Iterable[str] = (),
    keys: Iterable[str] = (),
) -> _Wants:
    """What ``cache`` lacks for ``fields``, relation ``names``, ``functions`` and ``keys``."""
    wants = _Wants()
    for f in fields:
        if f.type_oid and f.type_oid not in cache.types:
            wants.types.add(f.type_oid)
        if f.table_oid and (f.table_oid, f.attnum) not in cache.columns:
            wants.pairs.add((f.table_oid, f.attnum))
    wants.names = {n for n in names if n not in cache.names.rels}
    wants.funcs = {f for f in functions if f not in cache.names.funcs}
    wants.keys = {k for k in keys if k not in cache.names.keys}
    return wants


def _parse_columns(
    pairs: list[tuple[int, int]], rows: list[tuple[str | None, ...]]
) -> dict[tuple[int, int], ColumnInfo]:
    out: dict[tuple[int, int], ColumnInfo] = {}
    for oid, att, schema, table, column, relkind, generated, anc in rows:
        # "schema RS table" items separated by US (control characters: not in names)
        ancestors = tuple(
            tuple(a.split("\x1e", 1)) for a in (anc or "").split("\x1f") if "\x1e" in a
        )
        out[(int(oid or 0), int(att or 0))] = ColumnInfo(
            schema or "",
            table or "",
            column or "",
            relkind or "",
            ancestors,  # type: ignore[arg-type]
            generated == "t",
        )
    for p in pairs:
        out.setdefault(p, _MISSING)
    return out


def _parse_types(oids: list[int], rows: list[tuple[str | None, ...]]) -> dict[int, TypeInfo]:
    out: dict[int, TypeInfo] = dict.fromkeys(oids, _MISSING_TYPE)
    for oid, name, base, category, base_oid, elem, typtype, delim, attrs, rng in rows:
        out[int(oid or 0)] = TypeInfo(
            int(oid or 0),
            name or "",
            base or "",
            category or "",
            int(base_oid or 0),
            int(elem or 0),
            typtype or "b",
            delim or ",",
            tuple(int(a) for a in attrs.split(",")) if attrs else (),
            int(rng or 0),
        )
    return out


def _split(value: str | None, sep: str = "\x1f") -> list[str]:
    return value.split(sep) if value else []


def _parse_relations(
    names: list[Name], rows: list[tuple[str | None, ...]]
) -> dict[Name, tuple[RelationFacts, ...]]:
    infos = []
    for oid, nsp, rel, kind, cols, definition, anc, probes, types in rows:
        ancestors = tuple(tuple(a.split("\x1e", 1)) for a in _split(anc) if "\x1e" in a)
        probe_items = tuple(
            tuple(p.split("\x1e", 3)) for p in _split(probes) if p.count("\x1e") == 3
        )
        infos.append(
            RelationFacts(
                int(oid or 0),
                nsp or "",
                rel or "",
                kind or "",
                tuple(_split(cols)),
                definition,
                ancestors,  # type: ignore[arg-type]
                probe_items,  # type: ignore[arg-type]
                tuple(types.split("\x1f")) if types is not None else (),
            )
        )
    return {
        n: tuple(i for i in infos if i.table == n[1] and (n[0] is None or i.schema == n[0]))
        for n in names
    }


def _parse_functions(
    names: Iterable[str], rows: list[tuple[str | None, ...]]
) -> dict[str, tuple[FunctionInfo, ...]]:
    out: dict[str, list[FunctionInfo]] = {n: [] for n in names}
    for nsp, name, nargs, ndefaults, variadic, cols, lang, ext, body, argnames in rows:
        columns = None if cols is None else tuple(_split(cols))
        n = int(nargs or 0)
        names = (argnames or "").split("\x1f") if n else []
        info = FunctionInfo(
            nsp or "",
            name or "",
            n,
            int(ndefaults or 0),
            variadic == "t",
            columns,
            nsp != "pg_catalog" and trusted_function(name, lang, ext),
            body if nsp != "pg_catalog" else None,
            tuple(names) if len(names) == n else ("",) * n,
        )
        out.setdefault(info.name, []).append(info)
    return {n: tuple(v) for n, v in out.items()}
