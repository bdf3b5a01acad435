"""SQL hidden inside other SQL: function arguments, ``DO`` blocks and function bodies.

``SELECT query_to_xml('DELETE FROM t RETURNING *', true, false, '')``, ``DO $$ BEGIN EXECUTE
'DROP TABLE t'; END $$`` and ``SELECT dblink_exec('...', 'TRUNCATE t')`` run statements the
outer parse tree shows only as string constants.  This module finds those strings so that the
analysis judges the statements they contain; where the SQL is computed at run time
(``EXECUTE 'DROP TABLE ' || name``, ``query_to_xml(col, ...)``) it reports that instead, and the
analysis flags ``dynamic_sql`` (policies deny it: the gateway cannot know what will run).

* Function arguments: :func:`function_sql` knows which argument of which function is SQL text.
* PL/pgSQL (``DO`` blocks, ``CREATE FUNCTION ... LANGUAGE plpgsql``): the body is parsed with
  libpg_query's PL/pgSQL parser; every embedded statement and expression is SQL the block runs,
  and every ``EXECUTE`` / ``FOR ... IN EXECUTE`` / ``RETURN QUERY EXECUTE`` / ``OPEN ... FOR
  EXECUTE`` is either a string constant (judged as the SQL it contains) or computed.
* ``LANGUAGE sql`` function bodies are SQL text.  Bodies in any other language are opaque.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pglast import parser as _pg

__all__ = ["Embedded", "function_sql", "plpgsql_sql", "sql_literal"]


@dataclass(frozen=True, slots=True)
class Embedded:
    """One piece of SQL another statement runs."""

    text: str | None
    """The SQL, or None when it is computed at run time (cannot be known before it runs)."""
    where: str
    """Where it was found, for details (``query_to_xml() argument 1``, ``DO block EXECUTE``)."""


ConstStr = Callable[[Any], "str | None"]
"""Reads a string constant node (marking the analysis as depending on constants)."""


def _arg(args: list[Any], i: int) -> Any:
    return args[i] if 0 <= i < len(args) else None


def _query_first(name: str, args: list[Any]) -> list[int]:
    return [0]


def _ts_rewrite(name: str, args: list[Any]) -> list[int]:
    return [1] if len(args) == 2 else []  # ts_rewrite(query, 'SELECT target, substitute ...')


def _dblink(name: str, args: list[Any]) -> list[int]:
    # dblink(sql) / dblink(conn, sql [, fail]) / dblink_exec alike; dblink_open(cursor, sql) /
    # (conn, cursor, sql [, fail]); dblink_send_query(conn, sql).  Which string is the SQL
    # depends on the overload: every string argument is tried (connection strings and cursor
    # names do not parse as SQL and are skipped by the caller).
    return list(range(len(args)))


_SQL_ARGS: Final[dict[str, Callable[[str, list[Any]], list[int]]]] = {
    **{f"query_to_{kind}": _query_first for kind in ("xml", "xmlschema", "xml_and_xmlschema")},
    "ts_stat": _query_first,
    "ts_rewrite": _ts_rewrite,
    "dblink": _dblink,
    "dblink_exec": _dblink,
    "dblink_open": _dblink,
    "dblink_send_query": _dblink,
    "crosstab": _dblink,  # tablefunc: crosstab(source_sql [, category_sql])
}
"""Functions that run SQL given as text, and which arguments hold it."""

_TABLE_ARG: Final = frozenset(
    f"table_to_{kind}" for kind in ("xml", "xmlschema", "xml_and_xmlschema")
)
"""Functions that read a whole table named by their first argument."""

_SCHEMA_WIDE: Final = frozenset(
    f"{what}_to_{kind}"
    for what in ("schema", "database")
    for kind in ("xml", "xmlschema", "xml_and_xmlschema")
) | frozenset({"connectby"})
"""Functions that read tables the statement cannot name (a schema, the database, a table name
computed inside the function): always ``dynamic_sql``."""

_TRY_ALL: Final = frozenset(
    {"dblink", "dblink_exec", "dblink_open", "dblink_send_query", "crosstab"}
)


def function_sql(name: str, args: list[Any], const_str: ConstStr) -> list[Embedded] | None:
    """The SQL a call of ``name`` runs: None when ``name`` runs none; pieces with ``text=None``
    for SQL computed at run time.  For functions that try every string argument, arguments that
    are string constants but not SQL are left out by the caller (they do not parse)."""
    low = name.lower()
    if low in _SCHEMA_WIDE:
        return [Embedded(None, f"{low}() reads tables named at run time")]
    if low in _TABLE_ARG:
        return None  # see table_argument
    pick = _SQL_ARGS.get(low)
    if pick is None:
        return None
    out: list[Embedded] = []
    for i in pick(low, args):
        node = _arg(args, i)
        if node is None:
            continue
        text = const_str(node)
        if text is None:
            if low in _TRY_ALL and _is_plain_constant(node):
                continue  # a boolean / number argument (fail_on_error...)
            out.append(Embedded(None, f"{low}() argument {i + 1} is computed"))
        else:
            out.append(Embedded(text, f"{low}() argument {i + 1}"))
    return out


def tries_every_argument(name: str) -> bool:
    """Whether string arguments of ``name`` that are not SQL are expected (connection strings)."""
    return name.lower() in _TRY_ALL


def table_argument(name: str) -> bool:
    """Whether ``name`` reads the whole table named by its first argument."""
    return name.lower() in _TABLE_ARG


def _is_plain_constant(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    c = node.get("A_Const")
    return isinstance(c, dict) and bool(
        "boolval" in c or "ival" in c or "fval" in c or c.get("isnull")
    )


# ------------------------------------------------------------------------------ PL/pgSQL

_DYNAMIC_STMTS: Final = {
    "PLpgSQL_stmt_dynexecute": "query",
    "PLpgSQL_stmt_dynfors": "query",
    "PLpgSQL_stmt_return_query": "dynquery",
    "PLpgSQL_stmt_open": "dynquery",
}
"""PL/pgSQL statements that run a string as SQL, and the field holding the string expression."""

_MAX_BODY: Final = 1 << 20


def _tag_for(body: str) -> str:
    tag = "$vg$"
    n = 0
    while tag in body:
        n += 1
        tag = f"$vg{n}$"
    return tag


def plpgsql_sql(source: str, *, do_block: bool) -> tuple[list[Embedded], str | None]:
    """The SQL a PL/pgSQL body runs: (pieces, error).  ``source`` is a whole ``CREATE FUNCTION``
    statement, or (``do_block=True``) the body of a ``DO`` block.  ``error`` is set when the body
    cannot be parsed (then nothing is known about it)."""
    if len(source) > _MAX_BODY:
        return [], "body too large to inspect"
    if do_block:
        tag = _tag_for(source)
        source = (
            f"CREATE FUNCTION pg_temp.veilgate_do() RETURNS void LANGUAGE plpgsql "
            f"AS {tag}{source}{tag}"
        )
    try:
        tree = json.loads(_pg.parse_plpgsql_json(source))
    except (_pg.ParseError, ValueError, RecursionError) as exc:
        return [], str(exc) or type(exc).__name__
    where = "DO block" if do_block else "function body"
    out: list[Embedded] = []
    for expr, dynamic in _plpgsql_exprs(tree):
        query = str(expr.get("query", ""))
        mode = int(expr.get("parseMode", 0) or 0)
        if dynamic:
            literal = sql_literal(query)
            if literal is None:
                out.append(Embedded(None, f"{where}: EXECUTE of a computed string"))
            else:
                out.append(Embedded(literal, f"{where}: EXECUTE"))
            continue
        text = _expression_sql(query, mode)
        if text is None:
            out.append(Embedded(None, f"{where}: an assignment the gateway cannot read"))
        else:
            out.append(Embedded(text, where))
    return out, None


def _plpgsql_exprs(tree: Any) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Every ``PLpgSQL_expr`` of the tree, and whether its string is run as SQL."""
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        node, dynamic = stack.pop()
        if isinstance(node, list):
            stack.extend((n, dynamic) for n in node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key == "PLpgSQL_expr" and isinstance(value, dict):
                yield value, dynamic
                continue
            field = _DYNAMIC_STMTS.get(key)
            if field is not None and isinstance(value, dict):
                for k, v in value.items():
                    stack.append((v, k == field))
                continue
            stack.append((value, False))


def _expression_sql(query: str, mode: int) -> str | None:
    """A PL/pgSQL expression as SQL text: statements as they are, expressions as ``SELECT``."""
    if mode == 0:
        return query
    if mode == 3:  # assignment: target := expression (or =)
        cut = query.find(":=")
        width = 2
        if cut < 0:
            cut = query.find("=")
            width = 1
        if cut < 0:
            return None
        query = query[cut + width :]
    return f"SELECT {query}"


def sql_literal(expression: str) -> str | None:
    """The string an SQL expression is, if it is a single string constant (``'...'``, ``E'...'``,
    ``$q$...$q$``); else None (computed)."""
    try:
        tree = json.loads(_pg.parse_sql_json(f"SELECT {expression}"))
    except (_pg.ParseError, ValueError, RecursionError):
        return None
    stmts = tree.get("stmts", [])
    if len(stmts) != 1:
        return None
    sel = stmts[0].get("stmt", {}).get("SelectStmt", {})
    targets = sel.get("targetList", []) if isinstance(sel, dict) else []
    if len(targets) != 1 or len(sel) > 3:  # targetList, limitOption, op only
        return None
    val = targets[0].get("ResTarget", {}).get("val", {})
    c = val.get("A_Const") if isinstance(val, dict) else None
    if isinstance(c, dict) and "sval" in c:
        return str(c["sval"].get("sval", ""))
    return None
