"""What a statement's text says about where its result columns come from.

The planner needs, per statement: the relations it reads, the column names it references, the
star (``*``, ``t.*``) and whole-row (``SELECT t FROM t``) references, and for
``COPY ... TO STDOUT`` the table and column list or inner query plus the output format options.
RowDescription gives the rest (table OID and attnum of plain column references).

Parsing uses pglast (the real PostgreSQL parser), like :mod:`veilgate.policy.analysis`.  Text the
parser rejects is ``parsed=False``: the planner then treats the statement as referencing masked
columns (fail closed).  Results are cached per statement text in a bounded LRU.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from threading import Lock
from typing import Any, Final

from pglast import parser as _pg

__all__ = ["CopyInfo", "Name", "StatementInfo", "analyze_statement", "statement_info"]

Name = tuple[str | None, str]
"""A relation as written: (schema or None, name)."""

CACHE_SIZE: Final = 4096

PURE_FUNCTIONS: Final = frozenset(
    {
        # aggregates and window functions
        *("count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every", "array_agg"),
        *("string_agg", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop"),
        *("var_samp", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile"),
        *("lag", "lead", "first_value", "last_value", "nth_value"),
        # arithmetic
        *("abs", "round", "floor", "ceil", "ceiling", "trunc", "mod", "power", "sqrt", "sign"),
        *("div", "exp", "ln", "log", "width_bucket"),
        # strings
        *("length", "char_length", "character_length", "octet_length", "bit_length", "lower"),
        *("upper", "initcap", "substr", "substring", "trim", "btrim", "ltrim", "rtrim"),
        *("concat", "concat_ws", "left", "right", "replace", "split_part", "strpos"),
        *("position", "lpad", "rpad", "repeat", "reverse", "format", "overlay"),
        # dates and times
        *("now", "date_trunc", "date_part", "extract", "age", "to_char", "to_date"),
        *("to_timestamp", "make_date", "make_time", "make_timestamp", "make_interval"),
        *("clock_timestamp", "statement_timestamp", "transaction_timestamp", "timezone"),
        # json built from the values named
        *("to_json", "to_jsonb", "row_to_json", "json_build_object", "jsonb_build_object"),
        *("json_build_array", "jsonb_build_array", "json_agg", "jsonb_agg", "json_object_agg"),
        *("jsonb_object_agg", "array_length", "cardinality", "array_to_string"),
        # set-returning (also in FROM)
        *("unnest", "generate_series", "generate_subscripts"),
    }
)
"""Built-ins whose result depends only on their arguments (they run no SQL and read no files or
settings): an expression made of these over unmasked columns cannot carry masked data."""

PURE_TYPES: Final = frozenset(
    {
        *("int2", "int4", "int8", "numeric", "float4", "float8", "text", "varchar", "bpchar"),
        *("char", "name", "bool", "date", "time", "timetz", "timestamp", "timestamptz"),
        *("interval", "json", "jsonb", "uuid", "oid", "bytea", "inet", "cidr", "money"),
        # object identifier types: catalog names, never table data
        *("regtype", "regclass", "regproc", "regprocedure", "regoper", "regoperator"),
        *("regnamespace", "regrole", "regconfig", "regdictionary", "regcollation"),
    }
)
"""Built-in types a cast may name in a pure statement (a cast to another type may run a user
function)."""

PURE_KINDS: Final = frozenset(
    {
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "ExplainStmt",
        "VariableShowStmt",
        "DeclareCursorStmt",
        "PrepareStmt",
    }
)
"""Statements whose result rows they compute themselves (``FETCH``, ``EXECUTE``, ``CALL``...
return what something else defined)."""


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """A ``COPY ... TO STDOUT`` (``is_from`` False) or ``COPY ... FROM`` statement."""

    relation: Name | None
    """The table of ``COPY table [(cols)] TO``; None for ``COPY (query) TO``."""
    columns: tuple[str, ...]
    """The column list as written (empty: every column)."""
    query: str | None
    """The inner query of ``COPY (query) TO``, deparsed (for a Describe on the side connection)."""
    format: str = "text"  # text | csv | binary
    delimiter: str | None = None
    null: str | None = None
    quote: str | None = None
    escape: str | None = None
    header: bool = False
    is_from: bool = False
    to_stdout: bool = True


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """Lineage facts of one statement text (all statements of a multi-statement text merged)."""

    text: str
    parsed: bool
    relations: frozenset[Name] = frozenset()
    columns: frozenset[str] = frozenset()
    """Column names referenced anywhere (the last name of each column reference)."""
    star_all: bool = False
    """A bare ``*`` (every relation in scope)."""
    star_relations: frozenset[Name] = frozenset()
    """Relations referenced as ``t.*`` or as a whole row (``SELECT t FROM t``)."""
    copies: tuple[CopyInfo, ...] = ()
    error: str | None = None
    pure: bool = False
    """Every value of its results is computed by the statement itself from the columns it names
    and constants, through built-in functions that cannot read other data (no user function, no
    function in FROM, no FETCH / EXECUTE of something defined elsewhere): see
    :data:`PURE_FUNCTIONS`."""
    calls: frozenset[str] = frozenset()
    """The built-ins it names unqualified, as ``f:name`` (function), ``o:op`` (operator) and
    ``t:name`` (cast type): a user object of the same name in another schema could be the one
    PostgreSQL picks, so the planner checks the catalog for namesakes."""

    @property
    def copy(self) -> CopyInfo | None:
        """The first COPY of the text (a COPY is normally alone in its statement)."""
        return self.copies[0] if self.copies else None


_cache: OrderedDict[str, StatementInfo] = OrderedDict()
_lock = Lock()


def statement_info(sql: str) -> StatementInfo:
    """:func:`analyze_statement`, cached per text (bounded LRU)."""
    with _lock:
        hit = _cache.get(sql)
        if hit is not None:
            _cache.move_to_end(sql)
            return hit
    info = analyze_statement(sql)
    with _lock:
        _cache[sql] = info
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return info


def analyze_statement(sql: str) -> StatementInfo:
    """Parse ``sql`` and collect its lineage facts.  Never raises for bad SQL."""
    if not sql.strip():
        # no text: the caller does not know the statement (an empty query returns no rows)
        return StatementInfo(sql, False, error="no statement text")
    if "\x00" in sql:
        return StatementInfo(sql, False, error="NUL character in statement text")
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except _pg.ParseError as exc:
        return StatementInfo(sql, False, error=str(exc))
    except (RecursionError, ValueError, MemoryError) as exc:
        return StatementInfo(sql, False, error=f"cannot parse: {type(exc).__name__}")
    w = _Collector()
    copies: list[CopyInfo] = []
    pure = True
    for raw in tree.get("stmts", []):
        stmt = raw.get("stmt", {})
        pure = pure and any(k in PURE_KINDS for k in stmt)
        copy = stmt.get("CopyStmt")
        if isinstance(copy, dict):
            copies.append(_copy_info(sql, raw, copy))
            rel = copy.get("relation")
            if isinstance(rel, dict):  # a bare RangeVar (not wrapped in a node)
                w.relations.add((rel.get("schemaname"), str(rel.get("relname", ""))))
        w.walk(stmt)
    aliases = w.aliases
    star_rel: set[Name] = set()
    for qual in w.star_quals:
        star_rel.update(_resolve_qualifier(qual, aliases, w.relations))
    for name in w.single_refs:
        # ``SELECT t FROM t``: a one-name reference that is a relation or alias is a whole row
        star_rel.update(_resolve_qualifier((name,), aliases, w.relations))
    return StatementInfo(
        sql,
        True,
        relations=frozenset(w.relations),
        columns=frozenset(w.columns),
        star_all=w.star_all,
        star_relations=frozenset(star_rel),
        copies=tuple(copies),
        pure=pure and not w.impure,
        calls=frozenset(w.calls),
    )


def _resolve_qualifier(
    qual: tuple[str, ...], aliases: dict[str, set[Name]], relations: set[Name]
) -> Iterator[Name]:
    if len(qual) >= 2:
        yield (qual[-2], qual[-1])
        return
    name = qual[0]
    yield from aliases.get(name, ())
    for rel in relations:
        if rel[1] == name:
            yield rel


class _Collector:
    """Iterative walk over the pglast JSON tree."""

    def __init__(self) -> None:
        self.relations: set[Name] = set()
        self.aliases: dict[str, set[Name]] = {}
        self.columns: set[str] = set()
        self.star_all = False
        self.star_quals: list[tuple[str, ...]] = []
        self.single_refs: set[str] = set()
        self.impure = False
        self.calls: set[str] = set()

    def walk(self, root: Any) -> None:
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
                continue
            if not isinstance(node, dict):
                continue
            rv = node.get("RangeVar")
            if isinstance(rv, dict):
                self._range_var(rv)
            cr = node.get("ColumnRef")
            if isinstance(cr, dict):
                self._column_ref(cr)
            fc = node.get("FuncCall")
            if isinstance(fc, dict):
                self._builtin("f", fc.get("funcname"), PURE_FUNCTIONS)
            ae = node.get("A_Expr")
            if isinstance(ae, dict):
                self._operator(ae)
            tc = node.get("TypeCast")
            if isinstance(tc, dict):
                tn = tc.get("typeName")
                self._builtin("t", tn.get("names") if isinstance(tn, dict) else None, PURE_TYPES)
            # functions in FROM are FuncCall nodes below (judged like any call); XMLTABLE and
            # JSON_TABLE evaluate paths over documents: not tracked, so not pure
            if "RangeTableFunc" in node or "JsonTable" in node:
                self.impure = True
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))

    def _builtin(self, kind: str, name: Any, allowed: frozenset[str] | None) -> None:
        """Note a reference to a built-in function / operator / type (impure when it is not one
        of ``allowed``, or is qualified with another schema than pg_catalog)."""
        names = _names(name)
        foreign = len(names) == 2 and names[0] != "pg_catalog"
        if not names or len(names) > 2 or foreign or (allowed and names[-1] not in allowed):
            self.impure = True
        elif len(names) == 1:
            self.calls.add(f"{kind}:{names[0]}")

    def _operator(self, ae: dict[str, Any]) -> None:
        names = _names(ae.get("name"))
        if names and names[-1].isalpha():  # BETWEEN, NOT BETWEEN, ...: comparisons
            for op in (">=", "<=", ">", "<"):
                self._builtin("o", [{"String": {"sval": op}}], None)
            return
        self._builtin("o", ae.get("name"), None)

    def _range_var(self, rv: dict[str, Any]) -> None:
        name: Name = (rv.get("schemaname"), str(rv.get("relname", "")))
        self.relations.add(name)
        alias = rv.get("alias")
        if isinstance(alias, dict) and alias.get("aliasname"):
            self.aliases.setdefault(str(alias["aliasname"]), set()).add(name)

    def _column_ref(self, cr: dict[str, Any]) -> None:
        names: list[str] = []
        star = False
        for f in cr.get("fields", []):
            if "String" in f:
                names.append(str(f["String"].get("sval", "")))
            elif "A_Star" in f:
                star = True
        if star:
            if names:
                self.star_quals.append(tuple(names))
            else:
                self.star_all = True
            return
        if names:
            self.columns.add(names[-1])
            if len(names) == 1:
                self.single_refs.add(names[0])


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [
        str(n["String"].get("sval", "")) for n in items if isinstance(n, dict) and "String" in n
    ]


def _defelem(arg: Any) -> str | None:
    if not isinstance(arg, dict):
        return None
    if "String" in arg:
        return str(arg["String"].get("sval", ""))
    if "Boolean" in arg:
        return "true" if arg["Boolean"].get("boolval", False) else "false"
    if "Integer" in arg:
        return str(arg["Integer"].get("ival", 0))
    return None


_TRUE: Final = frozenset({"true", "on", "1", "yes", "match"})


def _copy_info(sql: str, raw: dict[str, Any], body: dict[str, Any]) -> CopyInfo:
    rel = body.get("relation")
    relation: Name | None = None
    if isinstance(rel, dict):
        relation = (rel.get("schemaname"), str(rel.get("relname", "")))
    columns = tuple(
        str(a["String"].get("sval", "")) for a in body.get("attlist", []) if "String" in a
    )
    query = None
    if body.get("query") is not None:
        query = _deparse_copy_query(sql, raw)
    opts: dict[str, Any] = {}
    for o in body.get("options", []):
        d = o.get("DefElem") if isinstance(o, dict) else None
        if not isinstance(d, dict):
            continue
        name = str(d.get("defname", ""))
        if name == "force_quote":
            continue  # quoting style only: values are masked either way
        value = _defelem(d.get("arg"))
        if name == "format":
            opts["format"] = (value or "text").lower()
        elif name == "header":
            opts["header"] = value is None or value.lower() in _TRUE
        elif name in ("delimiter", "null", "quote", "escape"):
            opts[name] = value
    return CopyInfo(
        relation=relation,
        columns=columns,
        query=query,
        is_from=bool(body.get("is_from", False)),
        to_stdout=body.get("filename") is None and not body.get("is_program"),
        **opts,
    )


def _deparse_copy_query(sql: str, raw: dict[str, Any]) -> str | None:
    """The inner query of ``COPY (query) TO``, as SQL text (pglast's deparser)."""
    from pglast import parse_sql
    from pglast.stream import RawStream

    loc = int(raw.get("stmt_location", 0))
    length = int(raw.get("stmt_len", 0))
    data = sql.encode("utf-8")
    text = (data[loc : loc + length] if length else data[loc:]).decode("utf-8")
    try:
        stmt: Any = parse_sql(text)[0].stmt
        return str(RawStream()(stmt.query))
    except Exception:  # deparser gaps: the planner refuses the COPY (no query to describe)
        return None
