"""Column lineage and masked-column uses of one statement, from its parse tree (scope-aware).

For every output column of a statement the resolver computes the set of base columns
(``schema.table.column``) its value depends on, whatever SQL renamed them on the way: table
aliases with column lists, subqueries and CTEs (recursive ones too), VALUES, functions in FROM
(``ROWS FROM``, ``WITH ORDINALITY``, column definition lists), JOIN USING / NATURAL merged
columns, ``t.*`` and whole-row references, composite field selection, LATERAL, set operations,
XMLTABLE / JSON_TABLE, and views / materialized views, expanded from their definitions.  Where
it cannot know (a user function, a name the catalog does not have) the value is *opaque*.

It also records every *use* of a column other than passing its value to the output: predicates
(WHERE, JOIN ON / USING, HAVING, FILTER, CASE conditions), grouping and ordering (GROUP BY,
DISTINCT, window PARTITION / ORDER BY, set operations that compare rows), LIMIT expressions and
arguments of functions or casts that can fail or branch on a value; and every *write* of a
value into a table or out of the database.  :mod:`veilgate.masking.inference` judges those
against a tier's rules.

The resolver reads the JSON parse tree of pglast (libpg_query: the server's own grammar) and
catalog facts through :class:`Facts`.  A fact it lacks is collected and, at the end of the pass,
:class:`NeedFacts` names everything that pass found missing, so one catalog round trip fetches
it all (view definitions may name more relations: a second pass, and so on).

Where SQL is ambiguous to it, it is conservative: a name that may denote several relations
(unqualified, in several schemas) gets the union of their lineage; a column that may come from a
FROM item of unknown shape is opaque.  Node types it has no rule for are walked generically:
every column below them counts, in the value and as a use.  :data:`NODE_RULES` classifies every
node type of the grammar (a test keeps it complete).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from threading import Lock
from typing import Any, Final, Protocol

from pglast import parser as _pg

from ..bytecache import ByteLRU, text_cost
from .builtins import (
    ALL_ARGS,
    BUILTIN_TYPES,
    DATA_READERS,
    NULLNESS_ONLY,
    SYSTEM_COLUMNS,
    TEXT_TYPES,
    total_positions,
)

__all__ = [
    "CONST",
    "OPAQUE",
    "OPERATOR_FUNCTIONS",
    "Col",
    "Facts",
    "FunctionInfo",
    "Lineage",
    "NeedFacts",
    "OutCol",
    "RelationFacts",
    "Resolution",
    "Use",
    "Write",
    "parse_tree",
    "resolve",
]

Name = tuple[str | None, str]
"""A relation as written: (schema or None, name)."""

MAX_VIEW_DEPTH: Final = 16
MAX_FUNCTION_BODIES: Final = 64
"""SQL function bodies one statement's resolution may expand (nested and repeated calls
included); beyond, a call is of unknown origin."""
OPERATOR_FUNCTIONS: Final = "\x00op:"
"""Prefix of a :meth:`Facts.functions_named` key that asks for the functions the operators of
a name outside ``pg_catalog`` run (schema and name only)."""
SQL_BODY: Final = "\x01"
"""Prefix of a :attr:`FunctionInfo.body` that is a SQL-standard body (``BEGIN ATOMIC ... END``
or ``RETURN expr``) rather than a ``prosrc`` string."""
_RECURSION_ROUNDS: Final = 8
_DEFINITION_BYTES: Final = 8 << 20
"""Parsed view definitions kept (a parse tree is a few times its text)."""


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Col:
    """A base column as PostgreSQL stores it (a table, partitioned or foreign table)."""

    schema: str
    table: str
    column: str
    ancestors: tuple[tuple[str, str], ...] = ()
    """(schema, table) of the tables this one inherits from or is a partition of."""

    def label(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a value comes from."""

    cols: frozenset[Col] = frozenset()
    opaque: bool = False
    """Part of the value comes from somewhere the resolver cannot see."""
    exact: bool = True
    """The value is one of ``cols``' values (or a constant), passed through unchanged."""

    def derived(self) -> Lineage:
        """The lineage of a value computed from this one."""
        return Lineage(self.cols, self.opaque, False) if self.exact else self

    def __or__(self, other: Lineage) -> Lineage:
        if other is CONST:
            return self
        if self is CONST:
            return other
        return Lineage(
            self.cols | other.cols, self.opaque or other.opaque, self.exact and other.exact
        )

    @property
    def constant(self) -> bool:
        """No column and nothing unknown: a constant, a parameter, a NULL test of a column."""
        return not self.cols and not self.opaque

    @staticmethod
    def union(items: Iterable[Lineage]) -> Lineage:
        out = CONST
        for i in items:
            out = out | i
        return out


CONST: Final = Lineage()
OPAQUE: Final = Lineage(frozenset(), True, False)


@dataclass(frozen=True, slots=True)
class OutCol:
    name: str
    lineage: Lineage


@dataclass(frozen=True, slots=True)
class Use:
    """A column used other than by passing its value to the output."""

    kind: str
    """``equals`` (compared with a constant, or probed by a write into a unique column),
    ``join`` (equality with another column), ``group`` (grouping, de-duplication, uniqueness),
    ``order`` (sorting), ``filter`` (any other predicate, LIMIT), ``compute`` (an argument that
    can fail or branch), ``rename`` (DDL that would move it out of its masking rule)."""
    clause: str
    """Where, for the error message: ``WHERE``, ``ORDER BY``, ``argument of int4()``..."""
    cols: frozenset[Col]


@dataclass(frozen=True, slots=True)
class Write:
    """A value stored where the client may read it back."""

    dest: Col | None
    """The column written; None for a destination outside tables (a file, a program) or one
    that cannot be known."""
    label: str
    source: Lineage


@dataclass(frozen=True, slots=True)
class Resolution:
    """What one statement text reads, uses and writes."""

    outputs: tuple[OutCol, ...] | None
    """Its result columns in order; None when it returns no rows."""
    shape_known: bool
    """``outputs`` has exactly the columns the server will describe."""
    lineage: Lineage
    """Union of every output's lineage (for result columns the shape did not account for)."""
    uses: tuple[Use, ...] = ()
    writes: tuple[Write, ...] = ()
    parsed: bool = True
    reads_literals: bool = False
    """It depends on the value of a constant (``ORDER BY 2``, ``convert_to(x, 'UTF8')``): texts
    that differ only in constants may not share it."""
    definitions: bool = False
    """Its lineage went through a view's definition or a SQL function's body: catalog rows
    another connection may replace without changing any OID a RowDescription names (a plan
    made from it is checked against the catalog before each use, see
    :meth:`~veilgate.masking.catalog.Catalog.check`)."""
    opaque_code: bool = False
    """It runs code whose result the resolver cannot follow (a PL/pgSQL or SECURITY DEFINER
    function, an operator or cast function of unknown origin, a data-reading built-in,
    ``CALL``, ``EXECUTE``): such code may read any column, masked ones included."""
    touched: tuple[RelationFacts, ...] = ()
    """Every table it reads (through views and function bodies too)."""

    def touched_columns(self) -> Iterator[Col]:
        """Every base column of every table it reads."""
        for r in self.touched:
            for c in r.columns:
                yield Col(r.schema, r.table, c, r.ancestors)

    creates: tuple[RelationFacts, ...] = ()
    """Tables it creates (CREATE TABLE, CREATE TABLE AS, SELECT INTO): the side connection
    does not see them before they commit (a temporary table never); see
    :mod:`veilgate.masking.overlay`."""

    def output(self, index: int, count: int) -> Lineage:
        """The lineage of result column ``index`` of a result with ``count`` columns."""
        outs = self.outputs
        if self.shape_known and outs is not None and len(outs) == count:
            return outs[index].lineage
        return self.lineage.derived() | OPAQUE


UNPARSED: Final = Resolution(None, False, OPAQUE, parsed=False)


# --- catalog facts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelationFacts:
    """A relation as the resolver needs it."""

    oid: int
    schema: str
    table: str
    relkind: str
    """``r`` table, ``p`` partitioned, ``f`` foreign, ``v`` view, ``m`` materialized view,
    ``S`` sequence."""
    columns: tuple[str, ...]
    definition: str | None = None
    """``pg_get_viewdef`` of a view / materialized view, every name schema-qualified."""
    ancestors: tuple[tuple[str, str], ...] = ()
    probes: tuple[tuple[str, str, str, str], ...] = ()
    """(column, schema, table, column probed): a value written to the column is compared with
    stored values of the probed column (a unique / exclusion index: the column itself; a foreign
    key: the referenced column); column ``*`` for an expression index (any column)."""
    types: tuple[str, ...] = ()
    """Each column's type name when it is a ``pg_catalog`` base type (``""`` otherwise: a
    domain, an enum, an extension's type...); empty when not known."""

    def type_of(self, column: str) -> str:
        """The ``pg_catalog`` base type name of a column (``""``: another type or unknown)."""
        if len(self.types) != len(self.columns) or column not in self.columns:
            return ""
        return self.types[self.columns.index(column)]

    @property
    def is_view(self) -> bool:
        return self.relkind in ("v", "m")


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """One function of a name (an overload)."""

    schema: str
    name: str
    nargs: int
    nargdefaults: int
    variadic: bool
    columns: tuple[str, ...] | None
    """Result column names when it returns a row type (OUT parameters, a table's row type);
    None when it returns a scalar; ``()`` when the row shape is not fixed (``record``, a
    polymorphic type): a column definition list must give it."""
    trusted: bool = False
    """Outside ``pg_catalog`` but computed from its arguments like a built-in: an extension's C
    function that is not one of :data:`~veilgate.masking.builtins.OPAQUE_EXTENSION_FUNCTIONS`
    (see :func:`~veilgate.masking.catalog.trusted_function`)."""
    body: str | None = None
    """The body of a ``LANGUAGE sql`` function that is not ``SECURITY DEFINER``: its ``prosrc``,
    or :data:`SQL_BODY` + ``pg_get_function_sqlbody`` for a ``BEGIN ATOMIC`` / ``RETURN`` body.
    Its result is resolved through the body, with the parameters bound to the arguments'
    lineage.  None: the function is opaque (any other language, SECURITY DEFINER, unknown)."""
    argnames: tuple[str, ...] = ()
    """Names of its input parameters in order (``""`` for an unnamed one)."""


class Facts(Protocol):
    """Catalog facts (``None``: not fetched yet)."""

    def relations_named(self, name: Name) -> tuple[RelationFacts, ...] | None: ...
    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None: ...
    def namesake(self, key: str) -> bool | None:
        """Whether a type (``t:name``) or operator (``o:op``) of that name exists outside
        ``pg_catalog`` that may not compute like a built-in (operators of extensions' C
        functions do); ``e:o:op``: whether any operator of that name exists outside it."""
        ...


class NeedFacts(Exception):
    """The resolution needs catalog facts not known yet (everything one pass found missing)."""

    def __init__(self, relations: set[Name], functions: set[str], keys: set[str]) -> None:
        super().__init__("catalog facts needed")
        self.relations = relations
        self.functions = functions
        self.keys = keys


# --- parse trees -----------------------------------------------------------------------------


_RECENT_TREES: Final = 4
_recent: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_recent_lock = Lock()  # gateways may run in threads of one process (tests, embedding)


def remember_tree(sql: str, tree: dict[str, Any]) -> None:
    """Keep the JSON tree of a text just parsed elsewhere (the statement facts of
    :mod:`veilgate.masking.lineage`): its resolution, which usually follows at once, needs no
    second parse.  Only the last few are kept."""
    stmts = [s.get("stmt", {}) for s in tree.get("stmts", [])]
    with _recent_lock:
        _recent[sql] = stmts
        while len(_recent) > _RECENT_TREES:
            _recent.popitem(last=False)


def parse_tree(sql: str) -> list[dict[str, Any]] | None:
    """The statements of ``sql`` as pglast JSON (None when it does not parse)."""
    with _recent_lock:
        recent = _recent.get(sql)
    if recent is not None:
        return recent
    if not sql.strip() or "\x00" in sql:
        return None
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except (_pg.ParseError, RecursionError, ValueError, MemoryError):
        return None
    return [s.get("stmt", {}) for s in tree.get("stmts", [])]


_NOT_A_NODE: Final = ("", None)


def _kind(node: Any) -> tuple[str, Any]:
    """(node type, body) of a wrapped node; ("", None) for anything else."""
    if node.__class__ is dict and len(node) == 1:
        for k, v in node.items():
            if v.__class__ is dict and "A" <= k[:1] <= "Z":
                return k, v
    return _NOT_A_NODE


def _bare(node: Any, kind: str) -> dict[str, Any]:
    """The body of a node the tree writes bare or wrapped (``{"RangeVar": {...}}`` or
    ``{...}``)."""
    if not isinstance(node, dict):
        return {}
    inner = node.get(kind)
    if len(node) == 1 and isinstance(inner, dict):
        return inner
    return node


def _strings(items: Any) -> list[str]:
    out = []
    for n in items or ():
        v = n.get("String") if n.__class__ is dict else None
        if v.__class__ is dict:
            out.append(str(v.get("sval", "")))
    return out


def _items(node: Any) -> list[Any]:
    """The items of a JSON list, or of a ``{"List": {"items": [...]}}`` node."""
    if isinstance(node, list):
        return node
    k, v = _kind(node)
    if k == "List":
        return list(v.get("items", []))
    return [node] if node else []


def _children(body: Any) -> Iterator[Any]:
    """The wrapped nodes below a node body (through bare structs and lists)."""
    if isinstance(body, dict):
        values: Iterable[Any] = body.values()
    elif isinstance(body, list):
        values = body
    else:
        return
    for v in values:
        if isinstance(v, dict):
            if _kind(v)[0]:
                yield v
            else:
                yield from _children(v)
        elif isinstance(v, list):
            yield from _children(v)


# --- scopes ----------------------------------------------------------------------------------


class _Rel:
    """The columns of one FROM item (a relation, subquery, function, join, CTE)."""

    __slots__ = ("columns", "complete", "name", "schemas", "table")

    def __init__(
        self,
        name: str | None,
        columns: list[tuple[str, Lineage]],
        *,
        complete: bool = True,
        schemas: frozenset[str] = frozenset(),
        table: bool = False,
    ) -> None:
        self.name = name
        self.columns = columns
        self.complete = complete
        """False: it may have columns not listed (unknown shape)."""
        self.schemas = schemas
        """Schemas a ``schema.table.column`` reference may name it by (no alias)."""
        self.table = table
        """A catalog relation (has system columns)."""

    def column(self, name: str) -> list[Lineage]:
        return [lin for n, lin in self.columns if n == name]

    def whole(self) -> Lineage:
        lin = Lineage.union(lin for _, lin in self.columns).derived()
        return lin if self.complete else lin | OPAQUE

    def renamed(self, alias: Any) -> _Rel:
        alias = _bare(alias, "Alias")
        if not alias:
            return self
        names = _strings(alias.get("colnames"))
        cols = [(names[i] if i < len(names) else n, lin) for i, (n, lin) in enumerate(self.columns)]
        return _Rel(
            str(alias.get("aliasname") or self.name or ""),
            cols,
            complete=self.complete,
            table=self.table,
        )


class _Item:
    """A FROM item as the name space sees it (PostgreSQL's ParseNamespaceItem)."""

    __slots__ = ("cols_visible", "rel", "rel_visible")

    def __init__(self, rel: _Rel, rel_visible: bool = True, cols_visible: bool = True) -> None:
        self.rel = rel
        self.rel_visible = rel_visible
        """It can be named (``t.col``, ``t.*``)."""
        self.cols_visible = cols_visible
        """Its columns can be named unqualified (false for the two sides of an unaliased join:
        the join's own columns stand for them)."""


@dataclass
class _From:
    items: list[_Item]
    rel: _Rel
    """The columns this FROM item contributes (to ``*`` and to an enclosing join)."""


class _Cte:
    __slots__ = ("body", "name", "rel")

    def __init__(self, name: str, body: dict[str, Any]) -> None:
        self.name = name
        self.body = body
        self.rel: _Rel | None = None


class _Level:
    """One query level: its FROM name space, its CTEs, its output columns, the enclosing one."""

    __slots__ = ("ctes", "items", "outer", "outputs")

    def __init__(self, outer: _Level | None) -> None:
        self.outer = outer
        self.items: list[_Item] = []
        self.ctes: dict[str, _Cte] = {}
        self.outputs: list[OutCol] = []

    def sibling(self, items: list[_Item]) -> _Level:
        """A level with these items that sees this one's CTEs and outer levels."""
        lv = _Level(self.outer)
        lv.ctes = self.ctes
        lv.items = items
        return lv

    def shim(self) -> _Level:
        """What a non-LATERAL subquery in FROM sees: the CTEs and the outer levels, not the
        sibling FROM items."""
        return _Level(self.sibling([]))

    def cte(self, name: str) -> _Cte | None:
        lv: _Level | None = self
        while lv is not None:
            c = lv.ctes.get(name)
            if c is not None:
                return c
            lv = lv.outer
        return None


@dataclass
class _Query:
    outputs: list[OutCol]
    complete: bool = True


@dataclass
class _Missing:
    relations: set[Name] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.relations or self.functions or self.keys)

    def absorb(self, other: _Missing) -> None:
        self.relations |= other.relations
        self.functions |= other.functions
        self.keys |= other.keys


# --- the resolver ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Shared:
    """What one statement's resolution and its nested ones (views, function bodies) share."""

    bodies_left: int = MAX_FUNCTION_BODIES
    definitions: int = 0
    """Views and function bodies it went through."""
    opaque_code: bool = False
    touched: dict[tuple[str, str], RelationFacts] = field(default_factory=dict)


def resolve(stmts: list[dict[str, Any]] | None, facts: Facts) -> Resolution:
    """The resolution of a statement text's parse tree (every statement's uses and writes; the
    outputs of the last one).  Raises :class:`NeedFacts` when catalog facts are missing."""
    if stmts is None:
        return UNPARSED
    r = _Resolver(facts)
    result: _Query | None = None
    for stmt in stmts:
        result = r.statement(stmt)
    if r.missing:
        m = r.missing
        raise NeedFacts(m.relations, m.functions, m.keys)
    uses = tuple(dict.fromkeys(r.uses))
    writes = tuple(dict.fromkeys(r.writes))
    kw = {
        "creates": tuple(r.creates),
        "reads_literals": r.reads_literals,
        "definitions": r.shared.definitions > 0,
        "opaque_code": r.shared.opaque_code,
        "touched": tuple(r.shared.touched.values()),
    }
    if result is None:
        return Resolution(None, True, CONST, uses, writes, **kw)  # type: ignore[arg-type]
    outputs = tuple(result.outputs)
    lineage = Lineage.union(o.lineage for o in outputs)
    if not result.complete:
        lineage = lineage | OPAQUE
    return Resolution(outputs, result.complete, lineage, uses, writes, **kw)  # type: ignore[arg-type]


class _Resolver:
    def __init__(
        self,
        facts: Facts,
        *,
        trusted: bool = False,
        depth: int = 0,
        params: tuple[Lineage, ...] | None = None,
        param_names: tuple[str, ...] = (),
        function: str = "",
        shared: _Shared | None = None,
    ) -> None:
        self.facts = facts
        self.params = params
        """Resolving a SQL function's body: the lineage of each of its parameters."""
        self.param_names = param_names
        self.function = function
        self.shared = shared if shared is not None else _Shared()
        self.last_call: tuple[Lineage, list[Lineage]] | None = None
        """(arguments, body outputs) of the last user SQL function call resolved (per-column
        lineage of a function in FROM)."""
        """What the statement's resolution shares with the nested ones (views, bodies)."""
        self.uses: list[Use] = []
        self.writes: list[Write] = []
        self.creates: list[RelationFacts] = []
        self.reads_literals = False
        self.missing = _Missing()
        self.trusted = trusted
        """Resolving a view definition: its predicates are the schema's, fixed, not chosen by
        the client (no uses recorded); what the client does with the view's columns is."""
        self.depth = depth

    # -- recording ------------------------------------------------------------------------------

    def use(self, kind: str, clause: str, lin: Lineage) -> None:
        if lin.cols and not self.trusted:
            self.uses.append(Use(kind, clause, lin.cols))

    def write(self, dest: Col | None, label: str, source: Lineage) -> None:
        if not self.trusted and (source.cols or source.opaque):
            self.writes.append(Write(dest, label, source))

    # -- statements -----------------------------------------------------------------------------

    def statement(self, stmt: Any) -> _Query | None:
        kind, body = _kind(stmt)
        handler = _STATEMENTS.get(kind)
        if handler is None:
            return None
        result: _Query | None = handler(self, body)
        return result

    def _select_stmt(self, body: dict[str, Any]) -> _Query:
        q = self.select(body, None)
        into = body.get("intoClause")
        if into:
            self._into(_bare(into, "IntoClause"), q)
            return _Query([])  # SELECT INTO returns no rows
        return q

    def _into(self, into: dict[str, Any], q: _Query) -> None:
        """CREATE TABLE AS / SELECT INTO: the new table's columns get the query's values."""
        rv = _bare(into.get("rel"), "RangeVar")
        temp = rv.get("relpersistence") == "t"
        schema = rv.get("schemaname") or ("pg_temp" if temp else "")
        table = str(rv.get("relname", ""))
        names = _strings(into.get("colNames"))
        cols = []
        for i, o in enumerate(q.outputs):
            col = names[i] if i < len(names) else o.name
            cols.append(col)
            dest = Col(schema, table, col)
            self.write(dest, dest.label(), o.lineage)
        if not q.complete:
            self.write(None, f"{schema}.{table}", OPAQUE)
        else:
            self.creates.append(RelationFacts(0, schema, table, "r", tuple(cols)))

    def _create_table_as(self, body: dict[str, Any]) -> None:
        query = body.get("query")
        q = self._query_node(query, None)
        into = _bare(body.get("into"), "IntoClause")
        if body.get("objtype") == "OBJECT_MATVIEW":
            # read back through its definition: masked like a view
            self._created_view(
                _bare(into.get("rel"), "RangeVar"), "m", query, q, into.get("colNames")
            )
            return
        self._into(into, q)

    def _create_table(self, body: dict[str, Any]) -> None:
        """CREATE TABLE with its own column list: a table the catalog may not see yet."""
        rv = _bare(body.get("relation"), "RangeVar")
        temp = rv.get("relpersistence") == "t"
        schema = rv.get("schemaname") or ("pg_temp" if temp else "")
        cols = []
        for e in body.get("tableElts") or ():
            kind, elt = _kind(e)
            if kind != "ColumnDef":
                return  # LIKE, constraints mixed with inherited columns: shape not certain
            cols.append(str(elt.get("colname", "")))
        if body.get("inhRelations") or body.get("partbound") or body.get("ofTypename"):
            return
        self.creates.append(RelationFacts(0, schema, str(rv.get("relname", "")), "r", tuple(cols)))

    def _view(self, body: dict[str, Any]) -> None:
        # the definition's predicates become fixed ones the client chose: judged now
        query = body.get("query")
        q = self._query_node(query, None)
        self._created_view(_bare(body.get("view"), "RangeVar"), "v", query, q, body.get("aliases"))

    def _created_view(
        self, rv: dict[str, Any], relkind: str, query: Any, q: _Query, aliases: Any
    ) -> None:
        """A view the session created: known (until the catalog sees it) by its definition,
        kept as its parse tree (:data:`_TREE_DEFINITION`), resolved like a catalog view's."""
        if self.trusted or not q.complete or not query:
            return
        temp = rv.get("relpersistence") == "t"
        schema = rv.get("schemaname") or ("pg_temp" if temp else "")
        names = _strings(aliases)
        cols = tuple(names[i] if i < len(names) else o.name for i, o in enumerate(q.outputs))
        definition = _TREE_DEFINITION + json.dumps(query)
        self.creates.append(
            RelationFacts(0, schema, str(rv.get("relname", "")), relkind, cols, definition)
        )

    def _explain(self, body: dict[str, Any]) -> _Query:
        self.statement(body.get("query"))
        return _Query([OutCol("QUERY PLAN", CONST)])

    def _inner(self, body: dict[str, Any]) -> _Query:
        """PREPARE / DECLARE: the rows of a later EXECUTE / FETCH are the inner statement's."""
        return self.statement(body.get("query")) or _Query([])

    def _opaque_rows(self, body: dict[str, Any]) -> _Query:
        self.shared.opaque_code = True
        return _Query([], False)

    def _show(self, body: dict[str, Any]) -> _Query:
        name = str(body.get("name", ""))
        if name.lower() == "all":
            return _Query([OutCol(n, CONST) for n in ("name", "setting", "description")])
        return _Query([OutCol(name, CONST)])

    def _call(self, body: dict[str, Any]) -> _Query:
        self.func(_bare(body.get("funccall"), "FuncCall"), _Level(None))
        self.shared.opaque_code = True
        return _Query([], False)  # OUT parameters: of unknown origin

    # -- SELECT ---------------------------------------------------------------------------------

    def select(self, body: dict[str, Any], outer: _Level | None) -> _Query:
        level = _Level(outer)
        self._with(body.get("withClause"), level)
        op = body.get("op") or "SETOP_NONE"
        if op != "SETOP_NONE":
            q = self._set_operation(body, level)
        elif body.get("valuesLists"):
            q = self._values(body, level)
        else:
            q = self._simple_select(body, level)
        if op != "SETOP_NONE" or body.get("valuesLists"):
            level.outputs = q.outputs
            for s in body.get("sortClause") or ():
                lin = self._output_key(_bare(s, "SortBy").get("node"), level)
                self.use("order", "ORDER BY", lin)
        self._limits(body, level)
        return q

    def _values(self, body: dict[str, Any], level: _Level) -> _Query:
        cols: list[Lineage] = []
        for row in body.get("valuesLists") or ():
            for i, e in enumerate(_items(row)):
                lin = self.expr(e, level)
                if i < len(cols):
                    cols[i] = cols[i] | lin
                else:
                    cols.append(lin)
        return _Query([OutCol(f"column{i + 1}", lin) for i, lin in enumerate(cols)])

    def _set_operation(self, body: dict[str, Any], level: _Level) -> _Query:
        left = self.select(_bare(body.get("larg"), "SelectStmt"), level)
        right = self.select(_bare(body.get("rarg"), "SelectStmt"), level)
        outs = []
        for i, o in enumerate(left.outputs):
            lin = o.lineage
            if i < len(right.outputs):
                lin = lin | right.outputs[i].lineage
            outs.append(OutCol(o.name, lin))
        op = str(body.get("op", "")).removeprefix("SETOP_")
        if not (op == "UNION" and body.get("all")):
            # rows are compared with each other: which ones survive tells equality
            clause = op + (" ALL" if body.get("all") else "")
            for o in outs:
                self.use("group", clause, o.lineage)
        return _Query(outs, left.complete and right.complete)

    def _simple_select(self, body: dict[str, Any], level: _Level) -> _Query:
        for item in body.get("fromClause") or ():
            level.items.extend(self.from_item(item, level).items)
        self.predicate(body.get("whereClause"), level, "WHERE")
        outputs, complete = self.target_list(body.get("targetList"), level)
        level.outputs = outputs
        self._group(body.get("groupClause"), level)
        self.predicate(body.get("havingClause"), level, "HAVING")
        for w in body.get("windowClause") or ():
            self.window(_bare(w, "WindowDef"), level)
        distinct = body.get("distinctClause")
        if distinct:
            exprs = [d for d in distinct if _kind(d)[0]]
            if exprs:
                for d in exprs:
                    self.use("group", "DISTINCT ON", self._sort_key(d, level))
            else:
                for o in outputs:
                    self.use("group", "DISTINCT", o.lineage)
        for s in body.get("sortClause") or ():
            self.use("order", "ORDER BY", self._sort_key(_bare(s, "SortBy").get("node"), level))
        return _Query(outputs, complete)

    def _limits(self, body: dict[str, Any], level: _Level) -> None:
        for key, clause in (("limitCount", "LIMIT"), ("limitOffset", "OFFSET")):
            if body.get(key):
                self.use("filter", clause, self.expr(body[key], level))

    def _position(self, node: Any, level: _Level) -> Lineage | None:
        """``ORDER BY 2``: the output column at that position."""
        kind, body = _kind(node)
        if kind == "A_Const" and "ival" in body:
            self.reads_literals = True
            n = int(body["ival"].get("ival", 0))
            outs = level.outputs
            return outs[n - 1].lineage if 1 <= n <= len(outs) else OPAQUE
        return None

    def _output_name(self, node: Any, level: _Level) -> Lineage | None:
        kind, body = _kind(node)
        if kind != "ColumnRef" or len(body.get("fields") or ()) != 1 or _is_star(body):
            return None
        name = _strings(body.get("fields"))
        hits = [o.lineage for o in level.outputs if name and o.name == name[0]]
        return Lineage.union(hits) if hits else None

    def _sort_key(self, node: Any, level: _Level) -> Lineage:
        """An ORDER BY / DISTINCT ON item: an output position, an output name, or an expression
        over the FROM items (PostgreSQL tries them in that order)."""
        lin = self._position(node, level)
        if lin is None:
            lin = self._output_name(node, level)
        return lin if lin is not None else self.expr(node, level)

    def _output_key(self, node: Any, level: _Level) -> Lineage:
        """ORDER BY of a set operation or VALUES: output positions and names only."""
        lin = self._position(node, level)
        if lin is None:
            lin = self._output_name(node, level)
        return lin if lin is not None else OPAQUE

    def _group(self, items: Any, level: _Level) -> None:
        for g in items or ():
            kind, body = _kind(g)
            if kind == "GroupingSet":
                self._group(body.get("content"), level)
                continue
            if not kind:
                continue
            # GROUP BY: a position, then an input column, then an output name
            lin = self._position(g, level)
            if lin is None:
                lin = self.expr(g, level)
                if lin.opaque and kind == "ColumnRef":
                    by_name = self._output_name(g, level)
                    lin = by_name if by_name is not None else lin
            self.use("group", "GROUP BY", lin)

    def window(self, w: dict[str, Any], level: _Level) -> None:
        for p in w.get("partitionClause") or ():
            self.use("group", "window PARTITION BY", self.expr(p, level))
        for s in w.get("orderClause") or ():
            self.use("order", "window ORDER BY", self.expr(_bare(s, "SortBy").get("node"), level))
        for key in ("startOffset", "endOffset"):
            if w.get(key):
                self.use("filter", "window frame", self.expr(w[key], level))

    # -- WITH -----------------------------------------------------------------------------------

    def _with(self, wc: Any, level: _Level) -> None:
        if not wc:
            return
        wc = _bare(wc, "WithClause")
        recursive = bool(wc.get("recursive"))
        for node in wc.get("ctes") or ():
            cte = _bare(node, "CommonTableExpr")
            c = _Cte(str(cte.get("ctename", "")), cte)
            if recursive:
                level.ctes[c.name] = c  # visible to itself
            self._resolve_cte(c, level, recursive)
            level.ctes[c.name] = c

    def _resolve_cte(self, c: _Cte, level: _Level, recursive: bool) -> None:
        body = c.body
        query = body.get("ctequery")
        names = _strings(body.get("aliascolnames"))
        kind, qbody = _kind(query)
        setop = kind == "SelectStmt" and (qbody.get("op") or "SETOP_NONE") != "SETOP_NONE"
        if not (recursive and setop):
            c.rel = _cte_rel(c, self._query_node(query, level), names)
        else:
            # the non-recursive arm gives the columns; the recursive arm adds to their lineage
            # until nothing changes
            c.rel = _cte_rel(c, self.select(_bare(qbody.get("larg"), "SelectStmt"), level), names)
            for _ in range(_RECURSION_ROUNDS):
                new = _merge_rels(c.rel, _cte_rel(c, self.select(qbody, level), names))
                if [lin for _, lin in new.columns] == [lin for _, lin in c.rel.columns]:
                    break
                c.rel = new
            else:
                c.rel = _Rel(c.name, [(n, lin | OPAQUE) for n, lin in c.rel.columns])
        self._cte_clauses(c)

    def _cte_clauses(self, c: _Cte) -> None:
        """SEARCH / CYCLE add columns computed from the listed ones (CYCLE compares them)."""
        assert c.rel is not None
        rel = c.rel
        cols = list(rel.columns)

        def listed(key: str, clause: dict[str, Any]) -> Lineage:
            names = _strings(clause.get(key))
            return Lineage.union(x for n in names for x in rel.column(n)).derived()

        search = _bare(c.body.get("search_clause"), "CTESearchClause")
        if search:
            cols.append(
                (str(search.get("search_seq_column", "")), listed("search_col_list", search))
            )
        cycle = _bare(c.body.get("cycle_clause"), "CTECycleClause")
        if cycle:
            lin = listed("cycle_col_list", cycle)
            self.use("group", "CYCLE", lin)
            cols.append((str(cycle.get("cycle_mark_column", "")), lin))
            cols.append((str(cycle.get("cycle_path_column", "")), lin))
        c.rel = _Rel(c.name, cols, complete=rel.complete)

    def _query_node(self, node: Any, level: _Level | None) -> _Query:
        """A query in a CTE, a subquery, CREATE ... AS: SELECT, or DML with RETURNING."""
        kind, body = _kind(node)
        if kind == "SelectStmt":
            return self.select(body, level)
        dml = _DML.get(kind)
        if dml is not None:
            result: _Query = dml(self, body, level)
            return result
        q = self.statement(node)
        return q if q is not None else _Query([], False)

    # -- FROM -----------------------------------------------------------------------------------

    def from_item(self, node: Any, level: _Level) -> _From:
        kind, body = _kind(node)
        handler = _FROM.get(kind)
        if handler is None:
            self._walk_unknown(body, level, f"FROM {kind or 'item'}")
            rel = _Rel(None, [], complete=False)
            return _From([_Item(rel)], rel)
        result: _From = handler(self, body, level)
        return result

    def _range_var(self, rv: dict[str, Any], level: _Level) -> _From:
        rel = self.relation(rv, level)
        return _From([_Item(rel)], rel)

    def relation(self, rv: dict[str, Any], level: _Level | None) -> _Rel:
        schema = rv.get("schemaname")
        name = str(rv.get("relname", ""))
        if schema is None and level is not None:
            cte = level.cte(name)
            if cte is not None:
                rel = cte.rel if cte.rel is not None else _Rel(name, [], complete=False)
                return _Rel(name, list(rel.columns), complete=rel.complete).renamed(rv.get("alias"))
        return self.relation_named((schema, name)).renamed(rv.get("alias"))

    def relation_named(self, key: Name) -> _Rel:
        found = self._relations(key)
        if not found:
            # not fetched yet, or not in the catalog the side connection sees (a temporary
            # table this session created in an open transaction, a typo): unknown shape
            return _Rel(key[1], [], complete=False, table=True)
        variants = [self._relation_columns(r) for r in found]
        schemas = frozenset(r.schema for r in found)
        names = [n for n, _ in variants[0]]
        if all([n for n, _ in v] == names for v in variants):
            cols = [(n, Lineage.union(v[i][1] for v in variants)) for i, n in enumerate(names)]
            return _Rel(key[1], cols, schemas=schemas, table=True)
        # one name, several shapes (several schemas): every column any of them has, and the
        # server may see yet another
        merged: dict[str, Lineage] = {}
        for v in variants:
            for n, lin in v:
                merged[n] = merged.get(n, CONST) | lin
        return _Rel(key[1], list(merged.items()), complete=False, schemas=schemas, table=True)

    def _relations(self, key: Name) -> tuple[RelationFacts, ...]:
        found = self.facts.relations_named(key)
        if found is None:
            self.missing.relations.add(key)
            return ()
        return found

    def _relation_columns(self, r: RelationFacts) -> list[tuple[str, Lineage]]:
        if r.is_view:
            outs = self.view_outputs(r)
            if outs is None:
                return [(c, OPAQUE) for c in r.columns]
            return [
                (c, outs[i].lineage if i < len(outs) else OPAQUE) for i, c in enumerate(r.columns)
            ]
        self.shared.touched[(r.schema, r.table)] = r
        return [
            (c, Lineage(frozenset({Col(r.schema, r.table, c, r.ancestors)}))) for c in r.columns
        ]

    def view_outputs(self, r: RelationFacts) -> tuple[OutCol, ...] | None:
        """The output lineage of a view's definition (None: it cannot be resolved)."""
        self.shared.definitions += 1
        if r.definition is None or self.depth >= MAX_VIEW_DEPTH:
            return None
        stmts = _definition_tree(r.definition)
        if not stmts:
            return None
        inner = _Resolver(self.facts, trusted=True, depth=self.depth + 1, shared=self.shared)
        result = None
        for s in stmts:
            result = inner.statement(s)
        self.missing.absorb(inner.missing)
        if result is None or not result.complete:
            return None
        return tuple(result.outputs)

    def _range_subselect(self, body: dict[str, Any], level: _Level) -> _From:
        scope = level if body.get("lateral") else level.shim()
        q = self._query_node(body.get("subquery"), scope)
        rel = _Rel(None, [(o.name, o.lineage) for o in q.outputs], complete=q.complete)
        rel = rel.renamed(body.get("alias"))
        return _From([_Item(rel)], rel)

    def _range_function(self, body: dict[str, Any], level: _Level) -> _From:
        # a function in FROM may refer to earlier FROM items (LATERAL is implied)
        cols: list[tuple[str, Lineage]] = []
        complete = True
        funcs = body.get("functions") or []
        alias = _bare(body.get("alias"), "Alias")
        single = len(funcs) == 1
        rel_name = str(alias["aliasname"]) if alias.get("aliasname") else None
        for entry in funcs:
            parts = _items(entry)
            call = parts[0] if parts else {}
            defs = parts[1] if len(parts) > 1 and parts[1] else None
            if single and not defs:
                defs = body.get("coldeflist")
            kind, fc = _kind(call)
            if kind != "FuncCall":
                cols.append((rel_name or "?column?", self.expr(call, level)))
                continue
            fname = _strings(fc.get("funcname"))
            if rel_name is None and single and fname:
                rel_name = fname[-1]
            args = fc.get("args") or []
            if fname and fname[-1] == "unnest" and len(fname) == 1 and len(args) > 1 and not defs:
                # unnest(a, b, ...) in FROM is ROWS FROM (unnest(a), unnest(b), ...)
                cols.extend(("unnest", self.expr(a, level).derived()) for a in args)
                continue
            self.last_call = None
            lin = self.func(fc, level)
            call = self._take_call()
            names, known = self._function_columns(fc, defs, alias if single else {})
            complete = complete and known
            if call is not None and len(call[1]) == len(names) > 1:
                # a SQL function returning rows: each column its own output's lineage
                cols.extend((n, call[0] | o.derived()) for n, o in zip(names, call[1], strict=True))
                continue
            cols.extend((n, lin) for n in names)
        if body.get("ordinality"):
            cols.append(("ordinality", CONST))
        rel = _Rel(rel_name, cols, complete=complete)
        if alias:
            rel = rel.renamed(alias)
        return _From([_Item(rel)], rel)

    def _function_columns(
        self, fc: dict[str, Any], defs: Any, alias: dict[str, Any]
    ) -> tuple[list[str], bool]:
        """Result column names of a function in FROM, and whether they are certain."""
        if defs:
            return [str(_bare(d, "ColumnDef").get("colname", "")) for d in _items(defs)], True
        fname = _strings(fc.get("funcname"))
        if not fname:
            return [], False
        infos = self.facts.functions_named(fname[-1])
        if infos is None:
            self.missing.functions.add(fname[-1])
            return [], False
        schema = fname[-2] if len(fname) >= 2 else None
        nargs = len(fc.get("args") or ())
        shapes = {
            i.columns
            for i in infos
            if (schema is None or i.schema == schema) and _arity_fits(i, nargs)
        }
        if len(shapes) != 1:
            return [], False
        shape = shapes.pop()
        if shape is None:  # a scalar: one column, named after the alias or the function
            named = alias.get("aliasname") and not alias.get("colnames")
            return [str(alias["aliasname"]) if named else fname[-1]], True
        return list(shape), bool(shape)

    def _join(self, body: dict[str, Any], level: _Level) -> _From:
        left = self.from_item(body.get("larg"), level)
        # the right side may refer to the left one (LATERAL) and to earlier items
        right = self.from_item(body.get("rarg"), level.sibling(level.items + left.items))
        jointype = str(body.get("jointype", "JOIN_INNER"))
        using = _strings(body.get("usingClause"))
        clause = "JOIN USING"
        if body.get("isNatural"):
            rnames = {n for n, _ in right.rel.columns}
            using = [n for n, _ in left.rel.columns if n in rnames]
            clause = "NATURAL JOIN"
        merged: list[tuple[str, Lineage]] = []
        for n in using:
            lin_l = Lineage.union(left.rel.column(n)) if left.rel.column(n) else OPAQUE
            lin_r = Lineage.union(right.rel.column(n)) if right.rel.column(n) else OPAQUE
            # the two sides are compared for equality
            self._comparison_use(lin_l, lin_r, clause)
            if jointype == "JOIN_RIGHT":
                merged.append((n, lin_r))
            elif jointype == "JOIN_FULL":
                merged.append((n, lin_l | lin_r))
            else:
                merged.append((n, lin_l))
        names = set(using)
        cols = (
            merged
            + [(n, lin) for n, lin in left.rel.columns if n not in names]
            + [(n, lin) for n, lin in right.rel.columns if n not in names]
        )
        jrel = _Rel(None, cols, complete=left.rel.complete and right.rel.complete)
        if body.get("quals"):
            self.predicate(
                body["quals"], level.sibling(level.items + left.items + right.items), "JOIN ON"
            )
        if body.get("alias"):
            jrel = jrel.renamed(body["alias"])
            return _From([_Item(jrel)], jrel)
        for it in left.items + right.items:
            it.cols_visible = False
        items = [*left.items, *right.items, _Item(jrel, rel_visible=False)]
        jua = _bare(body.get("join_using_alias"), "Alias")
        if jua.get("aliasname"):
            items.append(_Item(_Rel(str(jua["aliasname"]), merged), cols_visible=False))
        return _From(items, jrel)

    def _table_sample(self, body: dict[str, Any], level: _Level) -> _From:
        for a in body.get("args") or ():
            self.use("filter", "TABLESAMPLE", self.expr(a, level))
        if body.get("repeatable"):
            self.use("filter", "TABLESAMPLE", self.expr(body["repeatable"], level))
        return self.from_item(body.get("relation"), level)

    def _xmltable(self, body: dict[str, Any], level: _Level) -> _From:
        source = self.expr(body.get("docexpr"), level) | self.expr(body.get("rowexpr"), level)
        for ns in body.get("namespaces") or ():
            source = source | self.expr(_bare(ns, "ResTarget").get("val"), level)
        source = source.derived()
        # evaluating paths over a document made of masked values fails or not on the values
        self.use("compute", "XMLTABLE", source)
        cols = []
        for c in body.get("columns") or ():
            col = _bare(c, "RangeTableFuncCol")
            lin = source
            for key in ("colexpr", "coldefexpr"):
                if col.get(key):
                    extra = self.expr(col[key], level)
                    self.use("compute", "XMLTABLE", extra)
                    lin = lin | extra.derived()
            cols.append((str(col.get("colname", "")), CONST if col.get("for_ordinality") else lin))
        rel = _Rel(None, cols).renamed(body.get("alias"))
        return _From([_Item(rel)], rel)

    def _json_table(self, body: dict[str, Any], level: _Level) -> _From:
        source = self.expr(_bare(body.get("context_item"), "JsonValueExpr").get("raw_expr"), level)
        for p in body.get("passing") or ():
            val = _bare(_bare(p, "JsonArgument").get("val"), "JsonValueExpr")
            source = source | self.expr(val.get("raw_expr"), level)
        source = source.derived()
        self.use("compute", "JSON_TABLE", source)
        cols: list[tuple[str, Lineage]] = []

        def add(columns: Any) -> None:
            for c in columns or ():
                col = _bare(c, "JsonTableColumn")
                if col.get("coltype") == "JTC_NESTED":
                    add(col.get("columns"))
                    continue
                ordinal = col.get("coltype") == "JTC_FOR_ORDINALITY"
                cols.append((str(col.get("name", "")), CONST if ordinal else source))

        add(body.get("columns"))
        rel = _Rel(None, cols).renamed(body.get("alias"))
        return _From([_Item(rel)], rel)

    # -- target lists ---------------------------------------------------------------------------

    def target_list(self, items: Any, level: _Level) -> tuple[list[OutCol], bool]:
        outs: list[OutCol] = []
        complete = True
        for t in items or ():
            rt = _bare(t, "ResTarget")
            val = rt.get("val")
            kind, body = _kind(val)
            if kind == "ColumnRef" and _is_star(body):
                expanded = self._star(body, level)
                if expanded is None:
                    complete = False
                    outs.append(OutCol("*", self.column_ref(body, level)))
                else:
                    outs.extend(expanded)
                continue
            if kind == "A_Indirection" and _ends_in_star(body):
                # (composite).*: its fields, a number the resolver does not know
                outs.append(OutCol("*", self.expr(body.get("arg"), level).derived()))
                complete = False
                continue
            lin = self.expr(val, level)
            outs.append(OutCol(str(rt.get("name") or _figure_name(val)), lin))
        return outs, complete

    def _star(self, cr: dict[str, Any], level: _Level) -> list[OutCol] | None:
        names = _strings(cr.get("fields"))
        if not names:
            out: list[OutCol] = []
            for it in level.items:
                if it.cols_visible:
                    if not it.rel.complete:
                        return None
                    out.extend(OutCol(n, lin) for n, lin in it.rel.columns)
            return out
        rels = self._rels_named(names, level)
        if len(rels) != 1 or not rels[0].complete:
            return None
        return [OutCol(n, lin) for n, lin in rels[0].columns]

    def _rels_named(self, qual: list[str], level: _Level | None) -> list[_Rel]:
        """Relations a qualifier (``t``, ``s.t``) denotes at the innermost level having one."""
        lv = level
        while lv is not None:
            found = _rels_at(qual, lv)
            if found:
                return found
            lv = lv.outer
        return []

    # -- expressions ----------------------------------------------------------------------------

    def expr(self, node: Any, level: _Level) -> Lineage:
        if not node:
            return CONST
        if isinstance(node, list):
            return Lineage.union(self.expr(n, level) for n in node).derived()
        kind, body = _kind(node)
        handler = _EXPRESSIONS.get(kind)
        if handler is not None:
            lin: Lineage = handler(self, body, level)
            return lin
        return self._walk_unknown(body if kind else node, level, kind or "an expression")

    def _walk_unknown(self, body: Any, level: _Level, what: str) -> Lineage:
        """A node the resolver has no rule for: every column below it counts, in the value and
        as a use (fail closed)."""
        lin = Lineage.union(self.expr(child, level) for child in _children(body)).derived()
        self.use("compute", what, lin)
        return lin

    def _subquery(self, body: dict[str, Any], level: _Level) -> Lineage:
        """A SELECT met inside an expression other than a SubLink."""
        q = self.select(body, level)
        lin = Lineage.union(o.lineage for o in q.outputs).derived()
        return lin if q.complete else lin | OPAQUE

    def column_ref(self, cr: dict[str, Any], level: _Level) -> Lineage:
        names = _strings(cr.get("fields"))
        if _is_star(cr):
            # * / t.* outside a target list (count(*) is agg_star): the whole row(s)
            if not names:
                rels = [it.rel for it in level.items if it.cols_visible]
            else:
                rels = self._rels_named(names, level)
            return Lineage.union(r.whole() for r in rels) if rels else OPAQUE
        found = self._lookup(names, level)
        if found is None:
            found = self._param_named(names)
        return found if found is not None else OPAQUE

    def _lookup(self, names: list[str], level: _Level | None) -> Lineage | None:
        """A column reference as the server resolves it: the innermost level where it matches
        wins; every match within that level counts (the server would call it ambiguous)."""
        if not names or len(names) > 4:
            return OPAQUE if names else None
        lv = level
        while lv is not None:
            hits, maybe = _lookup_level(names, lv)
            if hits:
                return Lineage.union(hits) | (OPAQUE if maybe else CONST)
            if maybe:
                # a FROM item of unknown shape may have it; otherwise an outer level does
                outer = self._lookup(names, lv.outer)
                return OPAQUE if outer is None else OPAQUE | outer
            lv = lv.outer
        return None

    def _const(self, body: dict[str, Any], level: _Level) -> Lineage:
        return CONST

    def _a_expr(self, body: dict[str, Any], level: _Level) -> Lineage:
        kind = str(body.get("kind", ""))
        op = _strings(body.get("name"))
        left = self.expr(body.get("lexpr"), level)
        if kind in ("AEXPR_IN", "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM") or (
            kind == "AEXPR_NOT_BETWEEN_SYM"
        ):
            right = Lineage.union(self.expr(e, level) for e in _items(body.get("rexpr")))
            return (left | right).derived()  # comparisons only
        right = self.expr(body.get("rexpr"), level)
        if kind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
            return (left | right).derived()
        if kind == "AEXPR_NULLIF":
            # NULL exactly when the two are equal: a comparison whose answer shows
            self._comparison_use(left, right, "NULLIF")
            return (left | right).derived()
        name = op[-1] if op else ""
        if kind in ("AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR"):
            # a pattern that is a masked value can be malformed (an error) for some values
            self.use("compute", f"the pattern of {kind[6:]}", right)
            return (left | right).derived()
        builtin = self._operator_builtin(op)
        # an extension's operator of the same name may be the one the server picks: lineage
        # as a built-in's, but its arguments may fail (no argument is known harmless)
        sure = builtin and (len(op) >= 2 or not self._namesake("e:o:" + name, True))
        if not sure and len(op) == 1 and self._exact_builtin(name, body, left, right, level):
            builtin = sure = True
        positions = total_positions(name, operator=True) if sure else frozenset()
        for pos, lin in ((0, left), (1, right)):
            if not (positions == ALL_ARGS or pos in positions):
                self.use("compute", f"an operand of {name}", lin)
        out = (left | right).derived()
        if builtin:
            return out
        via = self._operator_functions(op, body, left, right) if len(op) == 1 else None
        if via is not None:
            return out | Lineage.union(via).derived()
        self.shared.opaque_code = True
        return out | OPAQUE

    def _operator_functions(
        self, op: list[str], body: dict[str, Any], left: Lineage, right: Lineage
    ) -> list[Lineage] | None:
        """A user operator is judged as the function it runs: the lineage of every operator
        of the name outside ``pg_catalog`` the server may pick, through its function's SQL
        body with the operands bound to its parameters (None: one of them is opaque)."""
        fns = self.facts.functions_named(OPERATOR_FUNCTIONS + op[-1])
        if fns is None:
            self.missing.functions.add(OPERATOR_FUNCTIONS + op[-1])
            return None
        if not fns:
            return None  # a namesake the facts name no function for: unknown
        raw = [n for n in (body.get("lexpr"), body.get("rexpr")) if n]
        args = [lin for n, lin in ((body.get("lexpr"), left), (body.get("rexpr"), right)) if n]
        out: list[Lineage] = []
        for fn in fns:
            one = self._user_function([fn.schema, fn.name], raw, args)
            if one is None:
                return None
            out.extend(one)
        return out

    def _exact_builtin(
        self, name: str, body: dict[str, Any], left: Lineage, right: Lineage, level: _Level
    ) -> bool:
        """Whether the server surely runs ``pg_catalog``'s operator ``name`` for these operands,
        resolved as the server does: both operand types known (a column of a built-in type, a
        cast to one, a typed constant; an untyped literal takes the other side's type), an
        operator of exactly those types in ``pg_catalog`` and none elsewhere (``x:`` keys).
        The exact match is found before any search_path order or implicit cast matters."""
        lt = self._operand_type(body.get("lexpr"), left)
        rt = self._operand_type(body.get("rexpr"), right)
        if lt == "unknown":
            lt = rt
        if rt == "unknown":
            rt = lt
        if not lt or not rt or "unknown" in (lt, rt):
            return False
        return self._namesake(f"x:{name}\x1f{lt}\x1f{rt}", False)

    def _operand_type(self, node: Any, lin: Lineage) -> str:
        """The ``pg_catalog`` type name of an operand, ``unknown`` for an untyped literal, ""
        when not known."""
        kind, body = _kind(node)
        if kind == "A_Const":
            if body.get("isnull") or "sval" in body:
                return "unknown"
            if "ival" in body:
                return "int4"
            if "fval" in body:
                return "numeric"
            if "boolval" in body:
                return "bool"
            return ""
        if kind == "TypeCast":
            tn = _bare(body.get("typeName"), "TypeName")
            names = _strings(tn.get("names"))
            if tn.get("arrayBounds") or tn.get("typmods") or not self._type_builtin(names):
                return ""
            return names[-1]
        if kind == "ColumnRef" and lin.exact and not lin.opaque and len(lin.cols) == 1:
            (col,) = lin.cols
            rels = self._relations((col.schema, col.table))
            types = {r.type_of(col.column) for r in rels if r.schema == col.schema}
            return types.pop() if len(types) == 1 else ""
        return ""

    def _operator_builtin(self, op: list[str]) -> bool:
        """Whether the operator computes like a built-in: ``pg_catalog``'s, or an extension's C
        function (every operator of that name outside ``pg_catalog`` is one: ``o:`` keys)."""
        if len(op) >= 2 and op[-2] == "pg_catalog":
            return True
        if not op:
            return False
        return not self._namesake("o:" + op[-1])

    def _namesake(self, key: str, unknown: bool = False) -> bool:
        shadow = self.facts.namesake(key)
        if shadow is None:
            self.missing.keys.add(key)
            return unknown
        return shadow

    def _bool_expr(self, body: dict[str, Any], level: _Level) -> Lineage:
        return Lineage.union(self.expr(a, level) for a in body.get("args") or ()).derived()

    def _null_test(self, body: dict[str, Any], level: _Level) -> Lineage:
        lin = self.expr(body.get("arg"), level)
        # NULL stays NULL through masking: the NULL-ness of a column's own value is not hidden
        return CONST if lin.exact and not lin.opaque else lin.derived()

    def _derived(self, body: dict[str, Any], level: _Level) -> Lineage:
        """A value computed from its parts, which cannot fail on them (IS TRUE, ARRAY[...],
        ROW(...), IS JSON, JSON_OBJECT(...))."""
        return Lineage.union(self.expr(c, level) for c in _children(body)).derived()

    def _passing(self, body: dict[str, Any], level: _Level) -> Lineage:
        """COALESCE / GREATEST / LEAST / COLLATE: the value is one of the arguments."""
        if "args" in body:
            return Lineage.union(self.expr(a, level) for a in body.get("args") or ())
        return self.expr(body.get("arg"), level)

    def _case(self, body: dict[str, Any], level: _Level) -> Lineage:
        arg = body.get("arg")
        test = self.expr(arg, level) if arg else CONST
        out = CONST
        conds = CONST
        for w in body.get("args") or ():
            cw = _bare(w, "CaseWhen")
            if arg:
                value = self.expr(cw.get("expr"), level)
                self._comparison_use(test, value, "CASE")
                conds = conds | test | value
            else:
                conds = conds | self.predicate(cw.get("expr"), level, "CASE WHEN")
            out = out | self.expr(cw.get("result"), level)
        if body.get("defresult"):
            out = out | self.expr(body["defresult"], level)
        return out | conds.derived() if not conds.constant else out

    def _type_cast(self, body: dict[str, Any], level: _Level) -> Lineage:
        arg = body.get("arg")
        akind, abody = _kind(arg)
        if akind == "A_Const" and ("sval" in abody or abody.get("isnull")):
            # an untyped string literal (or NULL) is read by the type's input function, C code
            # whatever the type (no cast function runs): a constant, even of a type the catalog
            # cannot see yet (created in the client's open transaction)
            return CONST
        lin = self.expr(arg, level)
        tn = _bare(body.get("typeName"), "TypeName")
        names = _strings(tn.get("names"))
        tname = names[-1] if names else ""
        array = bool(tn.get("arrayBounds"))
        builtin = self._type_builtin(names)
        if not (builtin and tname in TEXT_TYPES and not array):
            self.use("compute", f"a cast to {tname}{'[]' if array else ''}", lin)
        out = lin.derived()
        if builtin or self._user_type_cast(names):
            return out
        self.shared.opaque_code = True
        return out | OPAQUE

    def _user_type_cast(self, names: list[str]) -> bool:
        """Whether a cast to a type outside the built-ins only reads its input: an enum, a
        composite, a range, a domain without constraints, an extension's type -- their input
        functions are C code -- with no cast function into it that someone wrote in SQL or
        PL (``c:`` keys).  A built-in's type name is judged by :meth:`_type_builtin`."""
        if (
            not names
            or names[-1] in BUILTIN_TYPES
            or (len(names) >= 2 and names[-2] == "pg_catalog")
        ):
            return False
        return not self._namesake("c:" + names[-1], True)

    def _type_builtin(self, names: list[str]) -> bool:
        if not names or names[-1] not in BUILTIN_TYPES:
            return False
        if len(names) >= 2:
            return names[-2] == "pg_catalog"
        return not self._namesake("t:" + names[-1])

    def _indirection(self, body: dict[str, Any], level: _Level) -> Lineage:
        lin = self.expr(body.get("arg"), level)
        inds = list(body.get("indirection") or ())
        field = self._row_field(body.get("arg"), inds[0] if inds else None, lin, level)
        if field is not None:
            # (t).col / (t.*).col: that column, as the table says, not the whole row
            lin = field
            inds = inds[1:]
            if not inds:
                return lin
        for ind in inds:
            k, v = _kind(ind)
            if k == "A_Indices":
                for key in ("lidx", "uidx"):
                    if v.get(key):
                        lin = lin | self.expr(v[key], level).derived()
        return lin.derived()

    def _row_field(self, arg: Any, ind: Any, whole: Lineage, level: _Level) -> Lineage | None:
        """The lineage of ``(t).field`` when ``t`` is the whole row of one FROM item of known
        shape (the reference bound to that row: its lineage is the row's) or a ``ROW(...)``
        constructor; None otherwise (the whole value counts)."""
        k, name = _kind(ind)
        if k != "String":
            return None
        field = str(name.get("sval", ""))
        kind, body = _kind(arg)
        if kind == "RowExpr":
            args = body.get("args") or []
            names = _strings(body.get("colnames"))
            if not names:
                names = [f"f{i + 1}" for i in range(len(args))]
            if field in names and len(names) == len(args):
                return self.expr(args[names.index(field)], level)
            return None
        if kind != "ColumnRef":
            return None
        names = _strings(body.get("fields"))
        if _is_star(body):
            names = names[:-1] if names and names[-1] == "*" else names
        if not names:
            return None
        rels = self._rels_named(names, level)
        if len(rels) != 1 or not rels[0].complete or rels[0].whole() != whole:
            return None
        hits = rels[0].column(field)
        return hits[0] if len(hits) == 1 else None

    def _sublink(self, body: dict[str, Any], level: _Level) -> Lineage:
        q = self._query_node(body.get("subselect"), level)
        first = q.outputs[0].lineage if q.outputs else OPAQUE
        if not q.complete:
            first = first | OPAQUE
        kind = str(body.get("subLinkType", ""))
        if kind == "EXISTS_SUBLINK":
            return CONST  # whether rows exist: the subquery's own predicates are judged
        if kind == "EXPR_SUBLINK":
            return first
        if kind == "ARRAY_SUBLINK":
            return first.derived()
        every = Lineage.union(o.lineage for o in q.outputs)
        test = self.expr(body.get("testexpr"), level)
        return (test | every).derived()

    def _multi_assign(self, body: dict[str, Any], level: _Level) -> Lineage:
        """``UPDATE t SET (a, b) = (SELECT ...)``: column ``colno`` of the source row."""
        source = body.get("source")
        n = int(body.get("colno", 1)) - 1
        kind, sub = _kind(source)
        if kind == "SubLink":
            q = self._query_node(sub.get("subselect"), level)
            return q.outputs[n].lineage if 0 <= n < len(q.outputs) else OPAQUE
        if kind == "RowExpr":
            args = sub.get("args") or []
            if 0 <= n < len(args):
                return self.expr(args[n], level)
        return self.expr(source, level)

    def _xml_expr(self, body: dict[str, Any], level: _Level) -> Lineage:
        lin = CONST
        for a in body.get("named_args") or ():
            lin = lin | self.expr(_bare(a, "ResTarget").get("val"), level)
        for a in body.get("args") or ():
            lin = lin | self.expr(a, level)
        if body.get("op") not in ("IS_XMLELEMENT", "IS_XMLFOREST", "IS_XMLCONCAT"):
            self.use("compute", "an XML function", lin)
        return lin.derived()

    def _fallible(self, body: dict[str, Any], level: _Level) -> Lineage:
        """A function that parses or evaluates its input (XMLSERIALIZE, JSON(), JSON_VALUE)."""
        lin = Lineage.union(self.expr(c, level) for c in _children(body)).derived()
        self.use("compute", "a function that parses its input", lin)
        return lin

    def _json_value(self, body: dict[str, Any], level: _Level) -> Lineage:
        return self.expr(body.get("raw_expr"), level)

    def _json_agg(self, body: dict[str, Any], level: _Level) -> Lineage:
        ctor = _bare(body.get("constructor"), "JsonAggConstructor")
        self._aggregate_clauses(ctor, level, "a JSON aggregate")
        lin = Lineage.union(self.expr(body.get(k), level) for k in ("arg", "value"))
        return lin.derived()

    def func_call(self, body: dict[str, Any], level: _Level) -> Lineage:
        return self.func(body, level)

    def func(self, fc: dict[str, Any], level: _Level) -> Lineage:
        names = _strings(fc.get("funcname"))
        fname = names[-1] if names else ""
        raw_args = [_named_arg(a) for a in fc.get("args") or ()]
        args = [self.expr(a, level) for a in raw_args]
        self._aggregate_clauses(fc, level, f"{fname}()")
        if fc.get("agg_distinct"):
            for lin in args:
                self.use("group", f"{fname}(DISTINCT ...)", lin)
        ordered = CONST
        if fc.get("agg_within_group"):
            # mode() / percentile_disc() WITHIN GROUP (ORDER BY x) return one of the x values
            for s in fc.get("agg_order") or ():
                ordered = ordered | self.expr(_bare(s, "SortBy").get("node"), level)
        builtin = self._function_builtin(names)
        sure = builtin and self._only_catalog(names)
        positions = total_positions(fname) if sure else frozenset()
        if builtin and fname in ("substring", "substr") and len(raw_args) == 2:
            # substring(x FROM pattern) is NULL or not depending on a regular expression match;
            # substring(x, 3) is not: tell them apart by a constant integer second argument
            second_kind, second = _kind(raw_args[1])
            if second_kind != "A_Const" or "ival" not in second:
                positions = frozenset()
        if builtin and fname == "convert_to" and len(raw_args) == 2:
            # every character converts to UTF8 (from any server encoding): cannot fail
            kind, const = _kind(raw_args[1])
            target = str((const or {}).get("sval", {}).get("sval", "")) if kind == "A_Const" else ""
            self.reads_literals = True
            if target.lower().replace("-", "").replace("_", "") in ("utf8", "unicode"):
                positions = frozenset({0})
        for i, lin in enumerate(args):
            if not (positions == ALL_ARGS or i in positions):
                self.use("compute", f"an argument of {fname}()", lin)
        if sure and fname in NULLNESS_ONLY:
            return CONST
        out = (Lineage.union(args) | ordered).derived()
        if builtin:
            if fname in DATA_READERS:
                self.shared.opaque_code = True
                return out | OPAQUE
            return out
        body = self._user_function(names, list(fc.get("args") or ()), args)
        if body is None:
            self.shared.opaque_code = True
            return out | OPAQUE
        self.last_call = (out, body)
        return out | Lineage.union(body).derived()

    def _user_function(
        self, names: list[str], raw_args: list[Any], args: list[Lineage]
    ) -> list[Lineage] | None:
        """The output lineage of a call that may run a function outside the built-ins: every
        overload of the name (in every schema, for an unqualified name: the server picks one by
        argument types and search_path) that fits the call's arity, each resolved through its
        SQL body with the parameters bound to the arguments' lineage; ``[]`` when only
        built-ins fit.  None (unknown origin) when one of them cannot be analysed (another
        language, SECURITY DEFINER, a body that does not parse, too deep) or none is known."""
        if not names:
            return None
        infos = self.facts.functions_named(names[-1])
        if infos is None:
            self.missing.functions.add(names[-1])
            return None
        if len(names) >= 2:
            infos = tuple(i for i in infos if i.schema == names[-2])
        if not infos:
            return None  # not in the catalog the side connection sees
        nargs = len(raw_args)
        fit = [i for i in infos if _arity_fits(i, nargs)]
        if not fit:
            return None  # none the catalog knows fits: the server sees another one
        fits = [i for i in fit if not (i.schema == "pg_catalog" or i.trusted)]
        outs: list[list[Lineage]] = []
        for info in fits:
            one = self._function_body(info, raw_args, args)
            if one is None:
                return None
            outs.append(one)
        if len({len(o) for o in outs}) > 1:
            return [Lineage.union(lin for o in outs for lin in o)]
        merged: list[Lineage] = []
        for o in outs:
            merged = [a | b for a, b in zip(merged, o, strict=True)] if merged else list(o)
        return merged

    def _function_body(
        self, info: FunctionInfo, raw_args: list[Any], args: list[Lineage]
    ) -> list[Lineage] | None:
        """The output lineage of one SQL function's body for these arguments (None: opaque)."""
        shared = self.shared
        shared.definitions += 1
        if info.body is None or self.depth >= MAX_VIEW_DEPTH or shared.bodies_left <= 0:
            return None
        shared.bodies_left -= 1
        stmts = _function_tree(info.body)
        if not stmts:
            return None
        params = _bind_params(info, raw_args, args)
        inner = _Resolver(
            self.facts,
            trusted=True,
            depth=self.depth + 1,
            params=params,
            param_names=info.argnames,
            function=info.name,
            shared=self.shared,
        )
        result = None
        for st in stmts:
            result = inner.statement(st)
        self.missing.absorb(inner.missing)
        if result is None:
            return []  # the last statement returns no rows (void)
        if not result.complete:
            return None
        return [o.lineage for o in result.outputs]

    def _take_call(self) -> tuple[Lineage, list[Lineage]] | None:
        call, self.last_call = self.last_call, None
        return call

    def _param_ref(self, body: dict[str, Any], level: _Level) -> Lineage:
        """``$n``: a client's bind parameter (a constant), or in a SQL function's body the
        lineage of the argument bound to it."""
        if self.params is None:
            return CONST
        n = int(body.get("number", 0) or 0)
        return self.params[n - 1] if 1 <= n <= len(self.params) else OPAQUE

    def _param_named(self, names: list[str]) -> Lineage | None:
        """In a SQL function's body, a name no column has that names a parameter (``p`` or
        ``fname.p``): the argument's lineage."""
        if self.params is None or not names:
            return None
        if len(names) == 2 and names[0] != self.function:
            return None
        if len(names) > 2 or not names[-1]:
            return None
        hits = [self.params[i] for i, n in enumerate(self.param_names) if n == names[-1]]
        hits = [h for i, h in enumerate(hits) if i < len(self.params)]
        return Lineage.union(hits) if hits else None

    def _aggregate_clauses(self, fc: dict[str, Any], level: _Level, what: str) -> None:
        if fc.get("agg_filter"):
            self.predicate(fc["agg_filter"], level, "FILTER")
        if fc.get("agg_order") and not fc.get("agg_within_group"):
            for s in fc["agg_order"]:
                node = _bare(s, "SortBy").get("node")
                self.use("order", f"ORDER BY in {what}", self.expr(node, level))
        if fc.get("over"):
            self.window(_bare(fc["over"], "WindowDef"), level)

    def _function_builtin(self, names: list[str]) -> bool:
        """Whether the call runs a ``pg_catalog`` function (an unqualified name another schema
        also defines may run that one instead)."""
        if len(names) >= 2 and names[-2] == "pg_catalog":
            return True
        if not names:
            return False
        infos = self.facts.functions_named(names[-1])
        if infos is None:
            self.missing.functions.add(names[-1])
            return False
        if len(names) >= 2:
            infos = tuple(i for i in infos if i.schema == names[-2])
        # an extension's C function (not one that reads data) computes like a built-in
        return bool(infos) and all(i.schema == "pg_catalog" or i.trusted for i in infos)

    def _only_catalog(self, names: list[str]) -> bool:
        """Whether every function the call may run is ``pg_catalog``'s (the built-in argument
        rules of :mod:`.builtins` hold)."""
        if len(names) >= 2:
            return names[-2] == "pg_catalog"
        infos = self.facts.functions_named(names[-1]) if names else None
        return infos is not None and bool(infos) and all(i.schema == "pg_catalog" for i in infos)

    # -- predicates -----------------------------------------------------------------------------

    def predicate(self, node: Any, level: _Level, clause: str) -> Lineage:
        """A condition: its column uses recorded with their shape; returns its lineage."""
        if not node:
            return CONST
        kind, body = _kind(node)
        if kind == "BoolExpr":
            args = body.get("args") or ()
            return Lineage.union(self.predicate(a, level, clause) for a in args).derived()
        if kind == "A_Expr":
            akind = str(body.get("kind", ""))
            op = _strings(body.get("name"))
            equality = akind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") or (
                akind == "AEXPR_OP" and op in (["="], ["<>"], ["!="])
            )
            if equality and body.get("lexpr"):
                left = self.expr(body.get("lexpr"), level)
                right = self.expr(body.get("rexpr"), level)
                self._comparison_use(left, right, clause)
                return (left | right).derived()
            if akind == "AEXPR_IN":
                left = self.expr(body.get("lexpr"), level)
                values = [self.expr(e, level) for e in _items(body.get("rexpr"))]
                right = Lineage.union(values)
                if left.exact and left.cols and all(v.constant for v in values):
                    self.use("equals", clause, left)
                else:
                    self.use("filter", clause, left | right)
                return (left | right).derived()
        if kind == "NullTest":
            return self._null_test(body, level)
        lin = self.expr(node, level)
        self.use("filter", clause, lin)
        return lin

    def _comparison_use(self, left: Lineage, right: Lineage, clause: str) -> None:
        if left.exact and left.cols and right.constant:
            self.use("equals", clause, left)
        elif right.exact and right.cols and left.constant:
            self.use("equals", clause, right)
        elif left.exact and right.exact and left.cols and right.cols:
            self.use("join", clause, left)
            self.use("join", clause, right)
        else:
            self.use("filter", clause, left | right)

    # -- data-modifying statements --------------------------------------------------------------

    def _target_level(
        self, body: dict[str, Any], outer: _Level | None
    ) -> tuple[_Level, _Rel, tuple[RelationFacts, ...]]:
        """The level of INSERT / UPDATE / DELETE / MERGE: the written relation in scope."""
        level = _Level(outer)
        self._with(body.get("withClause"), level)
        rv = _bare(body.get("relation"), "RangeVar")
        found = self._relations((rv.get("schemaname"), str(rv.get("relname", ""))))
        rel = self.relation_named((rv.get("schemaname"), str(rv.get("relname", ""))))
        rel = rel.renamed(rv.get("alias"))
        level.items.append(_Item(rel))
        for name in ("old", "new"):  # RETURNING old.* / new.* (PostgreSQL 18)
            level.items.append(
                _Item(_Rel(name, list(rel.columns), complete=rel.complete), cols_visible=False)
            )
        return level, rel, found

    def _dests(
        self, found: tuple[RelationFacts, ...], column: str
    ) -> list[tuple[Col | None, RelationFacts | None]]:
        """Where a value written to ``column`` of the target lands (every candidate relation;
        an auto-updatable view passes it to its base column)."""
        out: list[tuple[Col | None, RelationFacts | None]] = []
        for r in found:
            if r.is_view:
                outs = self.view_outputs(r)
                idx = r.columns.index(column) if column in r.columns else -1
                lin = outs[idx].lineage if outs is not None and 0 <= idx < len(outs) else OPAQUE
                if lin.exact and len(lin.cols) == 1 and not lin.opaque:
                    base = next(iter(lin.cols))
                    out.append((base, self._base_facts(base)))
                else:
                    out.append((None, None))
            else:
                out.append((Col(r.schema, r.table, column, r.ancestors), r))
        return out or [(None, None)]

    def _base_facts(self, col: Col) -> RelationFacts | None:
        for r in self._relations((col.schema, col.table)):
            if r.schema == col.schema and r.table == col.table:
                return r
        return None

    def _assign(
        self, found: tuple[RelationFacts, ...], column: str, source: Lineage, clause: str
    ) -> None:
        """A value stored into ``column`` of the target."""
        for dest, facts in self._dests(found, column):
            self.write(dest, dest.label() if dest is not None else column, source)
            if facts is None or source.cols:
                # a value copied from columns is judged as a write; a constraint probe is a
                # guess the client chose (a constant, a parameter)
                continue
            # a constraint compares the value with stored ones (unique: whether an equal value
            # exists; a foreign key: whether the referenced one does): it answers a guess
            for col, schema, table, probed in facts.probes:
                if col in (column, "*"):
                    target = Col(schema, table, probed)
                    if probed == "*":
                        rel = self.relation_named((schema, table))
                        self.use("equals", f"a constraint checked by {clause}", rel.whole())
                    else:
                        self.use(
                            "equals",
                            f"a constraint checked by {clause}",
                            Lineage(frozenset({target})),
                        )

    def _returning(self, body: dict[str, Any], level: _Level) -> _Query:
        items = body.get("returningList")
        clause = _bare(body.get("returningClause"), "ReturningClause")
        if items is None and clause:
            items = clause.get("exprs")
            # RETURNING WITH (OLD AS o, NEW AS n) renames the old / new rows
            for opt in clause.get("options") or ():
                ro = _bare(opt, "ReturningOption")
                which = "old" if ro.get("option") == "RETURNING_OPTION_OLD" else "new"
                for it in level.items:
                    if it.rel.name == which and not it.cols_visible:
                        it.rel = _Rel(
                            str(ro.get("value", "")), it.rel.columns, complete=it.rel.complete
                        )
        outs, complete = self.target_list(items, level)
        return _Query(outs, complete)

    def insert(self, body: dict[str, Any], outer: _Level | None) -> _Query:
        level, rel, found = self._target_level(body, outer)
        cols = [str(_bare(c, "ResTarget").get("name", "")) for c in body.get("cols") or ()]
        if not cols:
            cols = [n for n, _ in rel.columns]
        source: list[Lineage] = []
        select = body.get("selectStmt")
        if select:
            # the target's columns are not visible to the source query
            q = self._query_node(select, level.sibling([]))
            source = [o.lineage if q.complete else o.lineage | OPAQUE for o in q.outputs]
        incoming: dict[str, Lineage] = {}
        if select:
            for i, c in enumerate(cols):
                lin = source[i] if i < len(source) else OPAQUE
                incoming[c] = lin
                self._assign(found, c, lin, "INSERT")
        conflict = body.get("onConflictClause")
        if conflict:
            self._on_conflict(_bare(conflict, "OnConflictClause"), level, rel, found, incoming)
        return self._returning(body, level)

    def _on_conflict(
        self,
        oc: dict[str, Any],
        level: _Level,
        rel: _Rel,
        found: tuple[RelationFacts, ...],
        incoming: dict[str, Lineage],
    ) -> None:
        infer = _bare(oc.get("infer"), "InferClause")
        for e in infer.get("indexElems") or ():
            ie = _bare(e, "IndexElem")
            name = ie.get("name")
            lin = Lineage.union(rel.column(str(name))) if name else self.expr(ie.get("expr"), level)
            self.use("equals", "ON CONFLICT", lin)
        self.predicate(infer.get("whereClause"), level, "ON CONFLICT WHERE")
        excluded = _Rel("excluded", [(n, incoming.get(n, CONST)) for n, _ in rel.columns])
        lv = level.sibling([*level.items, _Item(excluded, cols_visible=False)])
        for t in oc.get("targetList") or ():
            rt = _bare(t, "ResTarget")
            value = self.expr(rt.get("val"), lv)
            self._assign(found, str(rt.get("name", "")), value, "ON CONFLICT DO UPDATE")
        self.predicate(oc.get("whereClause"), lv, "ON CONFLICT WHERE")

    def update(self, body: dict[str, Any], outer: _Level | None) -> _Query:
        level, _rel, found = self._target_level(body, outer)
        for item in body.get("fromClause") or ():
            level.items.extend(self.from_item(item, level).items)
        self.predicate(body.get("whereClause"), level, "WHERE")
        for t in body.get("targetList") or ():
            rt = _bare(t, "ResTarget")
            value = self.expr(rt.get("val"), level)
            self._assign(found, str(rt.get("name", "")), value, "UPDATE SET")
        return self._returning(body, level)

    def delete(self, body: dict[str, Any], outer: _Level | None) -> _Query:
        level, _rel, _found = self._target_level(body, outer)
        for item in body.get("usingClause") or ():
            level.items.extend(self.from_item(item, level).items)
        self.predicate(body.get("whereClause"), level, "WHERE")
        return self._returning(body, level)

    def merge(self, body: dict[str, Any], outer: _Level | None) -> _Query:
        level, rel, found = self._target_level(body, outer)
        level.items.extend(self.from_item(body.get("sourceRelation"), level).items)
        self.predicate(body.get("joinCondition"), level, "MERGE ON")
        for w in body.get("mergeWhenClauses") or ():
            mw = _bare(w, "MergeWhenClause")
            self.predicate(mw.get("condition"), level, "MERGE WHEN")
            targets = [_bare(t, "ResTarget") for t in mw.get("targetList") or ()]
            if mw.get("commandType") == "CMD_INSERT":
                names = [str(t.get("name", "")) for t in targets] or [n for n, _ in rel.columns]
                for i, v in enumerate(mw.get("values") or ()):
                    if i < len(names):
                        self._assign(found, names[i], self.expr(v, level), "MERGE INSERT")
            else:
                for t in targets:
                    value = self.expr(t.get("val"), level)
                    self._assign(found, str(t.get("name", "")), value, "MERGE UPDATE")
        return self._returning(body, level)

    def copy(self, body: dict[str, Any]) -> _Query:
        attlist = _strings(body.get("attlist"))
        outside = bool(body.get("filename")) or bool(body.get("is_program"))
        if body.get("query"):
            q = self._query_node(body.get("query"), None)
        else:
            rv = _bare(body.get("relation"), "RangeVar")
            key = (rv.get("schemaname"), str(rv.get("relname", "")))
            rel = self.relation_named(key)
            cols = attlist or [n for n, _ in rel.columns]
            if body.get("is_from"):
                found = self._relations(key)
                for c in cols:
                    self._assign(found, c, CONST, "COPY FROM")
                return _Query([])
            outs = [OutCol(c, Lineage.union(rel.column(c)) or OPAQUE) for c in cols]
            q = _Query(outs, rel.complete or bool(attlist))
        if outside:
            for o in q.outputs:
                self.write(None, "COPY TO a file or program", o.lineage)
            if not q.complete:
                self.write(None, "COPY TO a file or program", OPAQUE)
            return _Query([])
        return q

    # -- DDL that moves masked columns or derives from them -------------------------------------

    def rename(self, body: dict[str, Any]) -> None:
        rtype = str(body.get("renameType", ""))
        if rtype == "OBJECT_SCHEMA":
            # every table of the schema changes name: rules written with the schema name
            # would no longer match them
            schema = str(body.get("subname", ""))
            self.use(
                "rename", "ALTER SCHEMA ... RENAME", Lineage(frozenset({Col(schema, "*", "*")}))
            )
            return
        if not body.get("relation"):
            return
        rel = self._named_target(body.get("relation"))
        if rtype == "OBJECT_COLUMN":
            lin = Lineage.union(rel.column(str(body.get("subname", ""))))
        elif rtype in ("OBJECT_TABLE", "OBJECT_FOREIGN_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW"):
            lin = rel.whole()
        else:
            return
        self.use("rename", "a rename", lin)

    def _named_target(self, node: Any) -> _Rel:
        rv = _bare(node, "RangeVar")
        return self.relation_named((rv.get("schemaname"), str(rv.get("relname", ""))))

    def set_schema(self, body: dict[str, Any]) -> None:
        if body.get("relation"):
            self.use("rename", "ALTER ... SET SCHEMA", self._named_target(body["relation"]).whole())

    def alter_table(self, body: dict[str, Any]) -> None:
        rv = _bare(body.get("relation"), "RangeVar")
        key = (rv.get("schemaname"), str(rv.get("relname", "")))
        found = self._relations(key)
        rel = self.relation_named(key)
        level = _Level(None)
        level.items.append(_Item(rel))
        for c in body.get("cmds") or ():
            cmd = _bare(c, "AlterTableCmd")
            sub = str(cmd.get("subtype", ""))
            column = str(cmd.get("name") or "")
            kind, defn = _kind(cmd.get("def"))
            if sub in ("AT_DetachPartition", "AT_DropInherit"):
                # the child leaves the parent: the parent's rules stop applying to it
                if kind == "PartitionCmd":
                    child = self._named_target(defn.get("name"))
                    self.use("rename", "DETACH PARTITION", child.whole() | rel.whole())
                else:
                    self.use("rename", "NO INHERIT", rel.whole())
            elif kind == "ColumnDef":
                column = str(defn.get("colname") or column)
                for con in defn.get("constraints") or ():
                    self._constraint(_bare(con, "Constraint"), level, found, rel, column)
                if defn.get("raw_default"):  # ALTER COLUMN ... TYPE ... USING expression
                    self._assign(
                        found, column, self.expr(defn["raw_default"], level), "ALTER COLUMN TYPE"
                    )
            elif kind == "Constraint":
                self._constraint(defn, level, found, rel, column)

    def _constraint(
        self,
        con: dict[str, Any],
        level: _Level,
        found: tuple[RelationFacts, ...],
        rel: _Rel,
        column: str,
    ) -> None:
        ctype = str(con.get("contype", ""))
        if ctype == "CONSTR_GENERATED" and con.get("raw_expr"):
            self._assign(found, column, self.expr(con["raw_expr"], level), "a generated column")
        elif ctype == "CONSTR_CHECK" and con.get("raw_expr"):
            # rows that fail it fail the statement: a predicate over stored values
            self.predicate(con["raw_expr"], level, "CHECK")
        elif ctype in ("CONSTR_UNIQUE", "CONSTR_PRIMARY", "CONSTR_EXCLUSION"):
            keys = _strings(con.get("keys")) or ([column] if column else [])
            for e in con.get("exclusions") or ():
                pair = _items(e)
                ie = _bare(pair[0], "IndexElem") if pair else {}
                if ie.get("name"):
                    keys.append(str(ie["name"]))
            for k in keys:
                self.use("group", "a unique constraint", Lineage.union(rel.column(k)))

    def index(self, body: dict[str, Any]) -> None:
        rel = self._named_target(body.get("relation"))
        level = _Level(None)
        level.items.append(_Item(rel))
        for p in body.get("indexParams") or ():
            ie = _bare(p, "IndexElem")
            name = ie.get("name")
            lin = Lineage.union(rel.column(str(name))) if name else self.expr(ie.get("expr"), level)
            if body.get("unique"):
                self.use("group", "a unique index", lin)
        self.predicate(body.get("whereClause"), level, "an index predicate")

    def _old_new(self, relation: Any) -> _Level:
        """The level of a rule's or trigger's conditions: the OLD and NEW rows."""
        rel = self._named_target(relation)
        level = _Level(None)
        for name in ("old", "new"):
            level.items.append(_Item(_Rel(name, list(rel.columns), complete=rel.complete)))
        return level

    def rule(self, body: dict[str, Any]) -> None:
        """CREATE RULE: its condition and actions run on every matching row, with OLD / NEW."""
        level = self._old_new(body.get("relation"))
        self.predicate(body.get("whereClause"), level, "a rule condition")
        for action in body.get("actions") or ():
            kind, b = _kind(action)
            dml = _DML.get(kind)
            if dml is not None:
                dml(self, b, level)
            elif kind == "SelectStmt":
                self.select(b, level)

    def trigger(self, body: dict[str, Any]) -> None:
        self.predicate(
            body.get("whenClause"), self._old_new(body.get("relation")), "a trigger condition"
        )

    def row_security(self, body: dict[str, Any]) -> None:
        rel = self._named_target(body.get("table"))
        level = _Level(None)
        level.items.append(_Item(rel))
        self.predicate(body.get("qual"), level, "a row security policy")
        self.predicate(body.get("with_check"), level, "a row security policy")


# --- helpers ---------------------------------------------------------------------------------


def _lookup_level(names: list[str], lv: _Level) -> tuple[list[Lineage], bool]:
    """Matches of a column reference among one level's FROM items, and whether an item of
    unknown shape may match too."""
    hits: list[Lineage] = []
    maybe = False
    if len(names) == 1:
        col = names[0]
        for it in lv.items:
            if not it.cols_visible:
                continue
            found = it.rel.column(col)
            hits.extend(found)
            if not found and col in SYSTEM_COLUMNS and it.rel.table:
                hits.append(CONST)
            elif not found and not it.rel.complete:
                maybe = True
        if not hits and not maybe:
            # a whole-row reference to a FROM item (``SELECT t FROM t``)
            hits.extend(it.rel.whole() for it in lv.items if it.rel_visible and it.rel.name == col)
        return hits, maybe
    # rel.col / schema.rel.col / db.schema.rel.col, each possibly followed by composite fields;
    # or col.field... (every reading the server could take counts)
    for qual_len in range(1, len(names)):
        qual = names[:qual_len][-2:]
        column = names[qual_len]
        fields = len(names) - qual_len - 1
        for rel in _rels_at(qual, lv):
            found = rel.column(column)
            if found:
                lin = Lineage.union(found)
                hits.append(lin.derived() if fields else lin)
            elif not fields and column in SYSTEM_COLUMNS and rel.table:
                hits.append(CONST)
            elif not rel.complete:
                maybe = True
    if not hits:
        for it in lv.items:
            if it.cols_visible:
                found = it.rel.column(names[0])
                hits.extend(lin.derived() for lin in found)
                if not found and not it.rel.complete:
                    maybe = True
    return hits, maybe


def _rels_at(qual: list[str], lv: _Level) -> list[_Rel]:
    name = qual[-1]
    schema = qual[-2] if len(qual) >= 2 else None
    return [
        it.rel
        for it in lv.items
        if it.rel_visible and it.rel.name == name and (schema is None or schema in it.rel.schemas)
    ]


def _cte_rel(c: _Cte, q: _Query, names: list[str]) -> _Rel:
    cols = [(names[i] if i < len(names) else o.name, o.lineage) for i, o in enumerate(q.outputs)]
    return _Rel(c.name, cols, complete=q.complete)


def _merge_rels(a: _Rel, b: _Rel) -> _Rel:
    cols = [
        (n, lin | b.columns[i][1]) if i < len(b.columns) else (n, lin)
        for i, (n, lin) in enumerate(a.columns)
    ]
    return _Rel(a.name, cols, complete=a.complete and b.complete)


def _arity_fits(info: FunctionInfo, nargs: int) -> bool:
    if info.variadic:
        return nargs >= info.nargs - 1 - info.nargdefaults
    return info.nargs - info.nargdefaults <= nargs <= info.nargs


def _bind_params(
    info: FunctionInfo, raw_args: list[Any], args: list[Lineage]
) -> tuple[Lineage, ...]:
    """The lineage of each parameter of ``info`` for a call with these arguments: positional
    ones in order, a VARIADIC parameter the union of the rest, named ones (``p => x``) by
    name; a parameter left to its default (or any mapping not certain) is of unknown origin."""
    n = info.nargs
    named = [_kind(a)[0] == "NamedArgExpr" for a in raw_args]
    bound: list[Lineage] = [OPAQUE] * n
    if any(named):
        everything = Lineage.union(args)
        for i in range(n):
            bound[i] = everything | OPAQUE if i >= len(args) else everything
        return tuple(bound)
    for i, lin in enumerate(args):
        if i < n:
            bound[i] = lin
        elif n:
            bound[n - 1] = bound[n - 1] | lin
    if info.variadic and n and len(args) >= n:
        bound[n - 1] = Lineage.union(args[n - 1 :]).derived()
    return tuple(bound)


def _is_star(cr: dict[str, Any]) -> bool:
    fields = cr.get("fields") or []
    return bool(fields) and _kind(fields[-1])[0] == "A_Star"


def _ends_in_star(ind: dict[str, Any]) -> bool:
    items = ind.get("indirection") or []
    return bool(items) and _kind(items[-1])[0] == "A_Star"


def _named_arg(node: Any) -> Any:
    kind, body = _kind(node)
    return body.get("arg") if kind == "NamedArgExpr" else node


_FIGURE: Final = {
    "CaseExpr": "case",
    "A_ArrayExpr": "array",
    "RowExpr": "row",
    "CoalesceExpr": "coalesce",
    "GroupingFunc": "grouping",
    "XmlSerialize": "xmlserialize",
}


def _figure_name(node: Any) -> str:
    """The output column name PostgreSQL gives an expression without an alias (FigureColname):
    an outer query may refer to a subquery's column by it."""
    kind, body = _kind(node)
    if kind == "ColumnRef":
        names = _strings(body.get("fields"))
        return names[-1] if names else "?column?"
    if kind == "FuncCall":
        names = _strings(body.get("funcname"))
        return names[-1] if names else "?column?"
    if kind == "A_Indirection":
        for ind in reversed(body.get("indirection") or ()):
            k, v = _kind(ind)
            if k == "String":
                return str(v.get("sval", ""))
        return _figure_name(body.get("arg"))
    if kind == "TypeCast":
        inner = _figure_name(body.get("arg"))
        if inner != "?column?":
            return inner
        names = _strings(_bare(body.get("typeName"), "TypeName").get("names"))
        return names[-1] if names else "?column?"
    if kind == "CollateClause":
        return _figure_name(body.get("arg"))
    if kind == "MinMaxExpr":
        return "greatest" if body.get("op") == "IS_GREATEST" else "least"
    if kind == "SubLink":
        t = body.get("subLinkType")
        if t == "EXISTS_SUBLINK":
            return "exists"
        if t == "ARRAY_SUBLINK":
            return "array"
        if t == "EXPR_SUBLINK":
            tl = _bare(body.get("subselect"), "SelectStmt").get("targetList") or []
            if tl:
                rt = _bare(tl[0], "ResTarget")
                return str(rt.get("name") or _figure_name(rt.get("val")))
        return "?column?"
    if kind == "SQLValueFunction":
        return str(body.get("op", "")).removeprefix("SVFOP_").lower()
    return _FIGURE.get(kind, "?column?")


_definitions: ByteLRU[str, list[dict[str, Any]] | None] = ByteLRU(_DEFINITION_BYTES)
_definitions_lock = Lock()


_TREE_DEFINITION: Final = "\x00tree:"
"""Prefix of a view definition kept as its parse tree (JSON) rather than as SQL: a view the
session created itself (no SQL text holds a NUL, so no catalog definition starts so)."""


def _definition_tree(text: str) -> list[dict[str, Any]] | None:
    """Parsed view definitions, cached by text (bounded in bytes)."""
    if text.startswith(_TREE_DEFINITION):
        try:
            node = json.loads(text[len(_TREE_DEFINITION) :])
        except ValueError:
            return None
        return [node] if isinstance(node, dict) else None
    with _definitions_lock:
        if text in _definitions:
            _definitions.move_to_end(text)
            return _definitions[text]
    tree = parse_tree(text)
    with _definitions_lock:
        _definitions.put(text, tree, text_cost(text, copies=4))
    return tree


_function_bodies: ByteLRU[str, list[dict[str, Any]] | None] = ByteLRU(_DEFINITION_BYTES)


def _function_tree(body: str) -> list[dict[str, Any]] | None:
    """The statements of a SQL function's body (cached by text, bounded in bytes): a
    ``prosrc`` string parses as statements; a SQL-standard body (:data:`SQL_BODY`) inside a
    ``CREATE FUNCTION`` around it, ``RETURN expr`` read as ``SELECT expr``."""
    with _definitions_lock:
        if body in _function_bodies:
            _function_bodies.move_to_end(body)
            return _function_bodies[body]
    if body.startswith(SQL_BODY):
        stmts: list[dict[str, Any]] | None = None
        tree = parse_tree("CREATE FUNCTION pg_temp.vg() RETURNS int LANGUAGE sql " + body[1:])
        if tree and len(tree) == 1:
            fn = _bare(tree[0].get("CreateFunctionStmt"), "CreateFunctionStmt")
            kind, sb = _kind(fn.get("sql_body"))
            if kind == "ReturnStmt":
                target = {"ResTarget": {"val": sb.get("returnval")}}
                stmts = [{"SelectStmt": {"targetList": [target], "op": "SETOP_NONE"}}]
            elif kind == "List":
                stmts = [s for part in _items(fn.get("sql_body")) for s in _items(part)]
    else:
        stmts = parse_tree(body)
    with _definitions_lock:
        _function_bodies.put(body, stmts, text_cost(body, copies=4))
    return stmts


# --- dispatch tables -------------------------------------------------------------------------

Handler = Callable[..., Any]

_EXPRESSIONS: Final[dict[str, Handler]] = {
    "ColumnRef": _Resolver.column_ref,
    "A_Const": _Resolver._const,
    "ParamRef": _Resolver._param_ref,
    "SetToDefault": _Resolver._const,
    "CurrentOfExpr": _Resolver._const,
    "MergeSupportFunc": _Resolver._const,
    "GroupingFunc": _Resolver._const,
    "SQLValueFunction": _Resolver._const,
    "A_Expr": _Resolver._a_expr,
    "BoolExpr": _Resolver._bool_expr,
    "NullTest": _Resolver._null_test,
    "BooleanTest": _Resolver._derived,
    "A_ArrayExpr": _Resolver._derived,
    "RowExpr": _Resolver._derived,
    "JsonIsPredicate": _Resolver._derived,
    "JsonObjectConstructor": _Resolver._derived,
    "JsonArrayConstructor": _Resolver._derived,
    "JsonKeyValue": _Resolver._derived,
    "JsonScalarExpr": _Resolver._derived,
    "JsonSerializeExpr": _Resolver._derived,
    "JsonValueExpr": _Resolver._json_value,
    "CoalesceExpr": _Resolver._passing,
    "MinMaxExpr": _Resolver._passing,
    "CollateClause": _Resolver._passing,
    "CaseExpr": _Resolver._case,
    "TypeCast": _Resolver._type_cast,
    "A_Indirection": _Resolver._indirection,
    "SubLink": _Resolver._sublink,
    "SelectStmt": _Resolver._subquery,
    "FuncCall": _Resolver.func_call,
    "MultiAssignRef": _Resolver._multi_assign,
    "XmlExpr": _Resolver._xml_expr,
    "XmlSerialize": _Resolver._fallible,
    "JsonParseExpr": _Resolver._fallible,
    "JsonFuncExpr": _Resolver._fallible,
    "JsonArrayQueryConstructor": _Resolver._fallible,
    "JsonObjectAgg": _Resolver._json_agg,
    "JsonArrayAgg": _Resolver._json_agg,
}
"""Expression node types and their rules."""

_FROM: Final[dict[str, Handler]] = {
    "RangeVar": _Resolver._range_var,
    "RangeSubselect": _Resolver._range_subselect,
    "RangeFunction": _Resolver._range_function,
    "JoinExpr": _Resolver._join,
    "RangeTableSample": _Resolver._table_sample,
    "RangeTableFunc": _Resolver._xmltable,
    "JsonTable": _Resolver._json_table,
}
"""FROM item node types: each introduces columns, and may rename them."""

_DML: Final[dict[str, Handler]] = {
    "InsertStmt": _Resolver.insert,
    "UpdateStmt": _Resolver.update,
    "DeleteStmt": _Resolver.delete,
    "MergeStmt": _Resolver.merge,
}


def _top_level(handler: Handler) -> Handler:
    def run(self: _Resolver, body: dict[str, Any]) -> Any:
        return handler(self, body, None)

    return run


def _no_rows(handler: Handler) -> Handler:
    def run(self: _Resolver, body: dict[str, Any]) -> None:
        handler(self, body)

    return run


_STATEMENTS: Final[dict[str, Handler]] = {
    "SelectStmt": _Resolver._select_stmt,
    **{k: _top_level(h) for k, h in _DML.items()},
    "CopyStmt": _Resolver.copy,
    "CreateTableAsStmt": _no_rows(_Resolver._create_table_as),
    "CreateStmt": _no_rows(_Resolver._create_table),
    "ViewStmt": _no_rows(_Resolver._view),
    "ExplainStmt": _Resolver._explain,
    "PrepareStmt": _Resolver._inner,
    "DeclareCursorStmt": _Resolver._inner,
    "ExecuteStmt": _Resolver._opaque_rows,
    "FetchStmt": _Resolver._opaque_rows,
    "CallStmt": _Resolver._call,
    "VariableShowStmt": _Resolver._show,
    "RenameStmt": _no_rows(_Resolver.rename),
    "AlterObjectSchemaStmt": _no_rows(_Resolver.set_schema),
    "AlterTableStmt": _no_rows(_Resolver.alter_table),
    "IndexStmt": _no_rows(_Resolver.index),
    "CreatePolicyStmt": _no_rows(_Resolver.row_security),
    "RuleStmt": _no_rows(_Resolver.rule),
    "CreateTrigStmt": _no_rows(_Resolver.trigger),
    "AlterPolicyStmt": _no_rows(_Resolver.row_security),
}
"""Statement node types the resolver reads.  Any other statement returns no table data and
moves no column values (transaction control, SET, most DDL): nothing to record."""
