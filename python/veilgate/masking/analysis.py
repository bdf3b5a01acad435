"""Resolutions of statement texts against one catalog, cached per text.

:func:`~veilgate.masking.resolve.resolve` is pure: it reads catalog facts and names the ones it
lacks.  The :class:`Analyzer` of a catalog runs it, fetches what it named (one round trip per
pass, shared with concurrent sessions by the catalog's batching), and runs it again until it has
everything (view definitions can name more relations: usually one or two passes).  Results are
cached per statement text while the catalog's facts stay the same (its ``generation``): the
steady state is one dictionary lookup per statement and no round trip.  Texts that differ only in
the values of constants (``... WHERE id = 4711`` sent with every id) share one resolution, keyed
by their literal template (:func:`veilgate.policy.literals.literal_template`: PostgreSQL's own
scanner), unless the resolution read a constant's value (``ORDER BY 2``).

One analyzer per :class:`~veilgate.masking.catalog.Catalog` (per upstream login), shared by its
sessions and tiers: a resolution says where values come from and how columns are used, not what
a tier does about it.
"""

from __future__ import annotations

import weakref
from typing import Any, Final, Protocol

from ..bytecache import ByteLRU, text_cost
from ..policy.literals import literal_template
from .resolve import NeedFacts, Resolution, parse_tree, resolve

__all__ = ["Analyzer", "CatalogLike", "analyzer_for", "view_select"]

CACHE_SIZE: Final = 4096
TEMPLATE_MAX_CHARS: Final = 8192
"""Longer texts are not keyed by literal template: scanning them costs more than it saves (texts
re-sent with other constants are short: an ORM's, pgbench's, an agent's)."""
MAX_PASSES: Final = 12
"""Lookups one analysis may need (each view nesting level can add one)."""


class CatalogLike(Protocol):
    """What the analyzer needs of :class:`~veilgate.masking.catalog.Catalog`."""

    @property
    def generation(self) -> object:
        """Changes whenever cached facts may have (cached resolutions are then dropped)."""
        ...

    def facts(self) -> Any: ...
    async def resolve(
        self,
        fields: Any = (),
        names: Any = (),
        functions: Any = (),
        keys: Any = (),
    ) -> Any: ...


class AnalysisError(Exception):
    """A statement could not be analysed with the catalog's facts (fail closed)."""


class Analyzer:
    """Cached resolutions of statement texts against one catalog."""

    def __init__(self, catalog: CatalogLike, *, max_bytes: int | str = "masking.lineage") -> None:
        """``max_bytes``: the cache's byte budget (default: the lineage share of
        ``limits.cache_bytes``; see :mod:`veilgate.bytecache`)."""
        self.catalog = catalog
        self._cache: ByteLRU[str, Resolution] = ByteLRU(max_bytes)
        self._shapes: ByteLRU[Any, Resolution] = ByteLRU(max_bytes)
        """Resolutions by literal template (see the module docstring)."""
        self._generation = catalog.generation
        self.passes = 0
        """Resolver passes run (cache misses; for tests)."""

    def cached(self, text: str) -> Resolution | None:
        """The resolution of ``text`` if it is cached for the catalog's current facts."""
        if self._generation != self.catalog.generation:
            self._forget(self.catalog.generation)
            return None
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        if self._shapes and len(text) <= TEMPLATE_MAX_CHARS:
            tmpl = literal_template(text)
            shape = self._shapes.get(tmpl.key) if tmpl is not None else None
            if shape is not None:
                self._shapes.move_to_end(tmpl.key)  # type: ignore[union-attr]
                self._cache.put(text, shape, text_cost(text, copies=2))
            return shape
        return None

    def try_now(self, text: str, facts: Any = None) -> Resolution | None:
        """The resolution from facts at hand, or None when the catalog must be asked.

        ``facts`` (what one lookup returned) serves this decision only; by default the
        catalog's cached facts are used and the result is cached for next time."""
        hit = self.cached(text)
        if hit is not None:
            return hit
        try:
            result = resolve(parse_tree(text), self.catalog.facts() if facts is None else facts)
        except NeedFacts:
            return None
        except RecursionError:
            raise AnalysisError("statement nested too deeply to analyse") from None
        self.passes += 1
        if facts is None:
            self._remember(text, result, self.catalog.generation)
        return result

    async def analyze(self, text: str) -> Resolution:
        """The resolution of ``text``, fetching catalog facts as needed.

        Raises :class:`~veilgate.masking.catalog.CatalogError` when the catalog cannot be
        reached and :class:`AnalysisError` when the facts never suffice."""
        hit = self.cached(text)
        if hit is not None:
            return hit
        generation = self.catalog.generation
        tree = parse_tree(text)
        facts = self.catalog.facts()
        for _ in range(MAX_PASSES):
            self.passes += 1
            try:
                result = resolve(tree, facts)
            except RecursionError:
                raise AnalysisError("statement nested too deeply to analyse") from None
            except NeedFacts as need:
                fresh = await self.catalog.resolve((), need.relations, need.functions, need.keys)
                # what earlier passes fetched stays visible even if the cache forgot it
                facts = _Layered(fresh, facts)
                continue
            # facts read after DDL invalidated the cache serve this analysis, not the cache
            if self.catalog.generation == generation:
                self._remember(text, result, generation)
            return result
        raise AnalysisError(f"statement analysis needed more than {MAX_PASSES} catalog lookups")

    def _remember(self, text: str, result: Resolution, generation: object) -> None:
        if self._generation != generation:
            self._forget(generation)
        self._cache.put(text, result, text_cost(text, copies=2))
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        if not result.reads_literals and len(text) <= TEMPLATE_MAX_CHARS:
            tmpl = literal_template(text)
            if tmpl is not None:
                self._shapes.put(tmpl.key, result, text_cost(text, copies=3))
                if len(self._shapes) > CACHE_SIZE:
                    self._shapes.popitem(last=False)

    def _forget(self, generation: object) -> None:
        self._cache.clear()
        self._shapes.clear()
        self._generation = generation


class _Layered:
    """Facts looked up in ``first``, then ``rest`` (what earlier passes fetched)."""

    __slots__ = ("first", "rest")

    def __init__(self, first: Any, rest: Any) -> None:
        self.first = first
        self.rest = rest

    def relations_named(self, name: Any) -> Any:
        hit = self.first.relations_named(name)
        return hit if hit is not None else self.rest.relations_named(name)

    def functions_named(self, name: str) -> Any:
        hit = self.first.functions_named(name)
        return hit if hit is not None else self.rest.functions_named(name)

    def namesake(self, key: str) -> bool | None:
        hit: bool | None = self.first.namesake(key)
        return hit if hit is not None else self.rest.namesake(key)


_analyzers: weakref.WeakKeyDictionary[Any, Analyzer] = weakref.WeakKeyDictionary()


def analyzer_for(catalog: CatalogLike) -> Analyzer:
    """The analyzer of ``catalog`` (one per catalog, made on first use)."""
    a = _analyzers.get(catalog)
    if a is None:
        a = _analyzers[catalog] = Analyzer(catalog)
    return a


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def view_select(schema: str, table: str) -> str:
    """A statement whose outputs are a view's columns in order (a view column's lineage is the
    output at its attnum)."""
    return f"SELECT * FROM {_quote(schema)}.{_quote(table)}"  # noqa: S608 (identifiers quoted)
