"""What a statement's text says by itself: whether it parses, the relations it names, and for
``COPY`` the table and column list or inner query plus the output format options.

Where each result column's value comes from needs catalog facts too: that is the resolver's job
(:mod:`veilgate.masking.resolve`, driven by :mod:`veilgate.masking.analysis`).

Parsing uses pglast (the real PostgreSQL parser), like :mod:`veilgate.policy.analysis`.  Text the
parser rejects is ``parsed=False`` (its results are of unknown lineage: fail closed).  Results
are cached per statement text in a bounded LRU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from threading import Lock
from typing import Any, Final

from pglast import parser as _pg

from ..bytecache import ByteLRU, text_cost
from .resolve import remember_tree

__all__ = ["CopyInfo", "Name", "StatementInfo", "analyze_statement", "statement_info"]

Name = tuple[str | None, str]
"""A relation as written: (schema or None, name)."""

CACHE_SIZE: Final = 4096


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
    """Relations named anywhere in it (as written)."""
    copies: tuple[CopyInfo, ...] = ()
    error: str | None = None

    @property
    def copy(self) -> CopyInfo | None:
        """The first COPY of the text (a COPY is normally alone in its statement)."""
        return self.copies[0] if self.copies else None


_cache: ByteLRU[str, StatementInfo] = ByteLRU("masking.lineage")
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
        _cache.put(sql, info, text_cost(sql, copies=2))
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
    remember_tree(sql, tree)  # the resolver that usually follows reuses it
    relations: set[Name] = set()
    copies: list[CopyInfo] = []
    for raw in tree.get("stmts", []):
        stmt = raw.get("stmt", {})
        copy = stmt.get("CopyStmt")
        if isinstance(copy, dict):
            copies.append(_copy_info(sql, raw, copy))
        _collect_relations(stmt, relations)
    return StatementInfo(sql, True, relations=frozenset(relations), copies=tuple(copies))


def _collect_relations(root: Any, into: set[Name]) -> None:
    """Every RangeVar below ``root`` (iterative: deep trees do not recurse)."""
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
            into.add((rv.get("schemaname"), str(rv.get("relname", ""))))
        elif "relname" in node and "inh" in node:  # a bare RangeVar (COPY, INSERT targets)
            into.add((node.get("schemaname"), str(node.get("relname", ""))))
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))


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
