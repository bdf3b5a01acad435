"""How the server resolves the names a statement writes: the session's effective search_path.

PostgreSQL looks an unqualified relation or function name up along ``search_path``, with
``pg_catalog`` searched first unless the path lists it elsewhere (then in that place).  A policy
that judges ``lower(x)`` as the built-in while the session's path reads ``evil, pg_catalog`` would
judge the wrong function, so decisions are made against a :class:`SearchPath`:

* **Pinned** (tier option ``pin_search_path: true``): the gateway sets the tier's
  ``search_path`` when it opens the upstream connection and the tier refuses every change of it
  (``SET``, ``set_config``, ``ALTER ROLE ... SET``; ``RESET`` returns to the pinned value).  The
  path is then exactly known.
* **Not pinned**: the path starts as the tier's declared ``search_path`` (what the policy says the
  login role's default is) and every path the session may have set since is *added*: a ``SET``
  inside a transaction that rolls back, or a ``SET LOCAL``, may or may not still be in force, so
  resolution considers all of them (a ``deny`` matches if any candidate does, an ``allow`` needs
  all).  A path computed at run time (``set_config('search_path', f(x), false)``) makes the path
  unknown: every unqualified name is then judged as possibly any schema's.

:class:`SearchPath` objects are immutable and interned by the engine: decisions are cached per
(tier, search path), so a session that never changes its path shares the tier's cache entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .analysis import Name, SettingChange, is_builtin, split_identifiers

__all__ = ["ANY_SCHEMA", "PG_CATALOG", "SearchPath", "quote_search_path", "search_path_values"]

PG_CATALOG: Final = "pg_catalog"
ANY_SCHEMA: Final = "*"
"""A candidate schema meaning "any schema": a path computed at run time could name any."""
_MAX_PATHS: Final = 16
"""Paths a session may have set, remembered one by one; beyond this the path is unknown."""


@dataclass(frozen=True, slots=True)
class SearchPath:
    """Every ``search_path`` a session may currently have (usually exactly one)."""

    paths: tuple[tuple[str, ...], ...]
    """The possible paths as set (schema names; ``pg_catalog`` only where listed), the most
    recently set first."""
    unknown: bool = False
    """A path computed at run time was set: unqualified names may resolve to any schema."""
    pinned: bool = False
    """The gateway set this path upstream and the tier refuses changes: it is exact."""

    @classmethod
    def of(cls, schemas: Iterable[str], *, pinned: bool = False) -> SearchPath:
        return cls((tuple(schemas),), pinned=pinned)

    @property
    def exact(self) -> bool:
        """The session's path is known for certain (one candidate, none computed)."""
        return len(self.paths) == 1 and not self.unknown

    @property
    def current(self) -> tuple[str, ...]:
        """The most recently set path (the session's path when :attr:`exact`)."""
        return self.paths[0]

    def with_change(self, change: SettingChange) -> SearchPath:
        """This path after a statement that changes ``search_path`` ran (or may have)."""
        if change.name not in ("search_path", "*") or change.resets:
            return self  # RESET: back to the starting path, which is still among the paths
        values = search_path_values(change)
        if values is None:
            return SearchPath(self.paths, True, self.pinned)
        paths = (values, *(p for p in self.paths if p != values))
        if len(paths) > _MAX_PATHS:
            return SearchPath(paths[:_MAX_PATHS], True, self.pinned)
        return SearchPath(paths, self.unknown, self.pinned)

    # -- resolution ---------------------------------------------------------------------------

    def schemas(self) -> tuple[str, ...]:
        """Every schema an unqualified name may resolve to, ``pg_catalog`` included, in the
        order of the most recent path first; :data:`ANY_SCHEMA` last when unknown."""
        out: list[str] = []
        for path in self.paths:
            order = path if PG_CATALOG in path else (PG_CATALOG, *path)
            out.extend(s for s in order if s not in out)
        if self.unknown:
            out.append(ANY_SCHEMA)
        return tuple(out)

    def relation_candidates(self, name: Name) -> tuple[str, ...]:
        """``schema.name`` for every schema an unqualified relation may live in.  ``pg_catalog``
        counts only for ``pg_*`` names (the server's catalogs), as before pinning; the session's
        temporary schema (searched first for relations) is not listed: a temporary table is the
        session's own."""
        schema, rel = name
        if schema is not None:
            return (f"{schema}.{rel}",)
        return tuple(
            f"{s}.{rel}" for s in self.schemas() if s != PG_CATALOG or rel.startswith("pg_")
        )

    def function_candidates(
        self, name: Name, shadows: frozenset[tuple[str, str]] = frozenset()
    ) -> tuple[str, ...]:
        """``schema.name`` for every function an unqualified call may resolve to.

        A built-in name resolves to ``pg_catalog`` unless some path lists schemas before
        ``pg_catalog`` (a same-signature function there wins) or a schema on a path holds a
        function of that name (``shadows``: (schema, name) of non-catalog functions with
        built-in names; one with a better-matching argument type wins).  Other names resolve
        to the schemas of the paths (not ``pg_catalog``)."""
        schema, fn = name
        if schema is not None:
            return (f"{schema}.{fn}",)
        if not is_builtin(name):
            return tuple(f"{s}.{fn}" for s in self.schemas() if s != PG_CATALOG)
        out = [f"{PG_CATALOG}.{fn}"]
        for path in self.paths:
            if PG_CATALOG in path:
                for s in path[: path.index(PG_CATALOG)]:
                    cand = f"{s}.{fn}"
                    if cand not in out:
                        out.append(cand)
            for s in path:
                cand = f"{s}.{fn}"
                if (s, fn) in shadows and cand not in out:
                    out.append(cand)
        if self.unknown:
            out.append(f"{ANY_SCHEMA}.{fn}")
        return tuple(out)


def search_path_values(change: SettingChange) -> tuple[str, ...] | None:
    """The schemas a ``search_path`` change sets, or None when they cannot be known.

    ``SET search_path = a, "B"`` gives each value as one schema name (the parser already folded
    case); ``set_config('search_path', 'a, "B"', ...)`` and ``ALTER ... SET`` with one string give
    the server's list syntax, split as the server splits it."""
    if change.computed or change.values is None or change.name != "search_path":
        return None
    if change.how == "set_config()":
        parts = split_identifiers(change.values[0])
        return tuple(parts) if parts is not None else None
    # SET: each value is one schema (SET search_path = 'a, b' is ONE schema named "a, b")
    return tuple(change.values)


def quote_search_path(schemas: Iterable[str]) -> str:
    """A ``search_path`` value naming exactly ``schemas`` (each double-quoted: no case folding,
    no list syntax inside a name)."""
    return ", ".join('"' + s.replace('"', '""') + '"' for s in schemas)
