"""Relations a session created that the catalog's side connection cannot see.

The side connection reads the catalog from another backend: a table this session created in a
transaction that has not committed yet is invisible to it, and a temporary table always is (it
lives in this backend's own ``pg_temp`` schema).  Without them, every statement naming such a
table would be of unknown lineage (fail closed, masked as a whole).  So a session keeps what its
own CREATE TABLE / CREATE TABLE AS / SELECT INTO / CREATE [MATERIALIZED] VIEW statements defined
(a view by its definition, resolved like a catalog view's) -- once the server confirmed
them with their CommandComplete -- and the resolver sees those relations *in addition to* what
the catalog says about the name (the union: a name may also denote a committed table, and a
creation may since have been rolled back; an extra candidate only adds lineage).

Data can only get into such a table through statements the gateway judged (copying masked values
into it is a laundering write, denied unless the destination is masked the same way), so its
columns are base columns of their own (``pg_temp.t.c``), masked by whatever rules match them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, Final

from ..bytecache import SESSION_CACHE_BYTES, ByteLRU, text_cost
from .resolve import FunctionInfo, Name, RelationFacts

__all__ = [
    "ANY_SCHEMA",
    "OverlayCatalog",
    "OverlayFacts",
    "SessionRelations",
    "creation_schemas",
    "functions_defined",
]

MAX_RELATIONS: Final = 1024
"""Beyond this many created relations (or :data:`~veilgate.bytecache.SESSION_CACHE_BYTES` of
their names) the oldest are forgotten (statements naming them are then of unknown lineage again:
fail closed)."""


ANY_SCHEMA: Final = "*"
"""The schema of a table created unqualified while the session's search_path is not known (a
path computed at run time): column rules match it in any schema (fail closed)."""


class SessionRelations:
    """The relations one session created (by name; a name may exist in several schemas), newest
    definition per schema wins.

    A table created without a schema is where the server puts it: the first schema of the
    session's ``search_path`` that exists.  The gateway does not know which schemas exist, and
    the path may be one of several (a ``SET`` that may have been rolled back), so such a table is
    recorded in *every* schema its path may name (``$user`` read as the login's user name,
    ``pg_temp`` included, :data:`ANY_SCHEMA` when the path is unknown): each column then has the
    lineage of each candidate, which can only add masking."""

    def __init__(self) -> None:
        self._by_name: ByteLRU[str, tuple[RelationFacts, ...]] = ByteLRU(SESSION_CACHE_BYTES)
        self.version = 0
        """Bumped on every change (analyses that used the overlay are keyed on it)."""
        self.functions: set[str] = set()
        """Names of functions this session created, replaced, renamed, moved or dropped: the
        catalog's side connection may see another body (the committed one) than this
        session's backend runs (see :meth:`define_functions`)."""
        self.all_functions = False
        """This session ran code that may have defined any function (``DO``, ``CALL``, an
        extension script, more names than are kept): no user function's body is trusted."""

    def __bool__(self) -> bool:
        return bool(self._by_name)

    @property
    def defines_functions(self) -> bool:
        return self.all_functions or bool(self.functions)

    def define_functions(self, names: Iterable[str] | None) -> None:
        """Functions of these names (None: any) were (re)defined by this session: for the rest
        of the session they are of unknown origin (a body defined in an open transaction is
        invisible to the catalog's connection; after the commit, unknown when it is seen)."""
        if names is None:
            if not self.all_functions:
                self.all_functions = True
                self.version += 1
            return
        new = set(names) - self.functions
        if new:
            self.functions |= new
            if len(self.functions) > MAX_RELATIONS:
                self.all_functions = True
            self.version += 1

    def function_opaque(self, name: str) -> bool:
        return self.all_functions or name in self.functions

    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def add(
        self, created: tuple[RelationFacts, ...], schemas: tuple[str, ...] = (ANY_SCHEMA,)
    ) -> None:
        """Tables the server confirmed it created; ``schemas``: where an unqualified one may
        be (see :func:`creation_schemas`)."""
        for r in created:
            placed = (
                tuple(replace(r, schema=s) for s in dict.fromkeys(schemas or (ANY_SCHEMA,)))
                if r.schema == ""
                else (r,)
            )
            new = {p.schema for p in placed}
            kept = tuple(o for o in self._by_name.pop(r.table, None) or () if o.schema not in new)
            facts = kept + placed
            self._by_name.put(
                r.table,
                facts,
                text_cost(
                    r.table,
                    *(c for f in facts for c in f.columns),
                    *(f.definition or "" for f in facts),
                ),
            )
            if len(self._by_name) > MAX_RELATIONS:
                self._by_name.popitem(last=False)
            self.version += 1

    def matching(self, name: Name) -> tuple[RelationFacts, ...]:
        """The session's relations a name may denote (an unqualified name: each of them)."""
        facts = self._by_name.get(name[1])
        if not facts:
            return ()
        schema = name[0]
        if schema is None:
            return facts
        return tuple(r for r in facts if r.schema in (schema, ANY_SCHEMA))


def creation_schemas(
    paths: tuple[tuple[str, ...], ...], unknown: bool, user: str
) -> tuple[str, ...]:
    """Every schema an unqualified CREATE may put its table in, for a session whose search_path
    is one of ``paths`` (:class:`~veilgate.policy.names.SearchPath`'s) or ``unknown``: each schema
    the paths list (``$user`` is the login's own), :data:`ANY_SCHEMA` when unknown."""
    out: list[str] = []
    for path in paths:
        for s in path:
            s = user if s == "$user" else s
            if s and s not in out:
                out.append(s)
    if unknown or not out:
        out.append(ANY_SCHEMA)
    return tuple(out)


class OverlayFacts:
    """Catalog facts with a session's own relations added to what a name denotes."""

    __slots__ = ("base", "overlay")

    def __init__(self, base: Any, overlay: SessionRelations) -> None:
        self.base = base
        self.overlay = overlay

    def relations_named(self, name: Name) -> tuple[RelationFacts, ...] | None:
        found = self.base.relations_named(name)
        own = self.overlay.matching(name)
        if found is None:
            return None
        return tuple(found) + own if own else tuple(found)

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        result: tuple[FunctionInfo, ...] | None = self.base.functions_named(name)
        if result is not None and self.overlay.function_opaque(name):
            # one more candidate of any arity whose body is not known: calls are opaque
            return (*result, FunctionInfo("", name, 0, 0, True, None))
        return result

    def namesake(self, key: str) -> bool | None:
        result: bool | None = self.base.namesake(key)
        return result

    def __getattr__(self, name: str) -> Any:  # column(), type(): the catalog's
        return getattr(self.base, name)


class OverlayCatalog:
    """A catalog as one session sees it (for :class:`~veilgate.masking.analysis.Analyzer`)."""

    def __init__(self, catalog: Any, overlay: SessionRelations) -> None:
        self.catalog = catalog
        self.overlay = overlay

    @property
    def generation(self) -> tuple[int, int]:
        return (self.catalog.generation, self.overlay.version)

    def facts(self) -> OverlayFacts:
        return OverlayFacts(self.catalog.facts(), self.overlay)

    async def resolve(self, *args: Any, **kw: Any) -> OverlayFacts:
        return OverlayFacts(await self.catalog.resolve(*args, **kw), self.overlay)


_FUNCTION_OBJECTS: Final = frozenset(
    {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"}
)


def functions_defined(stmts: list[dict[str, Any]] | None) -> set[str] | None:
    """The names of functions these statements may (re)define: ``CREATE [OR REPLACE]
    FUNCTION / PROCEDURE``, and every routine an ``ALTER`` / ``DROP`` / rename / ``SET SCHEMA``
    names (the new name too); None when that cannot be told (a text that does not parse)."""
    if stmts is None:
        return None
    out: set[str] = set()
    for node in _nodes(stmts):
        for kind, body in node.items():
            if not isinstance(body, dict):
                continue
            if kind == "CreateFunctionStmt":
                out.update(_last(body.get("funcname")))
            elif kind == "ObjectWithArgs":
                out.update(_last(body.get("objname")))
            elif kind == "RenameStmt" and body.get("renameType") in _FUNCTION_OBJECTS:
                out.add(str(body.get("newname", "")))
    return out


def _last(names: Any) -> list[str]:
    items = [n.get("String", {}).get("sval") for n in names or () if isinstance(n, dict)]
    return [str(items[-1])] if items and items[-1] else []


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a JSON parse tree."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            yield v
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
