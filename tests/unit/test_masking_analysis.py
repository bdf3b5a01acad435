"""The analyzer: resolutions cached per statement text and per literal template, dropped when
the catalog's facts change, fetched in as many passes as view definitions need."""

from __future__ import annotations

import asyncio
from typing import Any

from veilgate.masking.analysis import Analyzer
from veilgate.masking.resolve import FunctionInfo, RelationFacts

CUSTOMERS = RelationFacts(1, "public", "customers", "r", ("id", "ssn"))
V1 = RelationFacts(2, "public", "v1", "v", ("s",), definition="SELECT v2.s FROM public.v2")
V2 = RelationFacts(
    3, "public", "v2", "v", ("s",), definition="SELECT ssn AS s FROM public.customers"
)


class Catalog:
    """Facts become known only through resolve() (one name per call is what a pass finds)."""

    def __init__(self) -> None:
        self.generation = 0
        self.lookups: list[set[Any]] = []
        self.known: dict[str, tuple[RelationFacts, ...]] = {}
        self.world = {"customers": (CUSTOMERS,), "v1": (V1,), "v2": (V2,)}

    def facts(self) -> Catalog:
        return self

    def relations_named(self, name: tuple[str | None, str]) -> tuple[RelationFacts, ...] | None:
        return self.known.get(name[1])

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        return (FunctionInfo("pg_catalog", name, 1, 0, False, None),)

    def namesake(self, key: str) -> bool | None:
        return False

    async def resolve(self, fields: Any = (), names: Any = (), *rest: Any) -> Catalog:
        self.lookups.append({n[1] for n in names})
        for n in names:
            self.known[n[1]] = self.world.get(n[1], ())
        return self


def test_passes_follow_nested_views_then_the_text_is_cached() -> None:
    cat = Catalog()
    a = Analyzer(cat)
    res = asyncio.run(a.analyze("SELECT upper(s) FROM v1"))
    assert res.outputs is not None
    assert {c.label() for c in res.outputs[0].lineage.cols} == {"public.customers.ssn"}
    # v1, then v2 (named by v1's definition), then customers (named by v2's)
    assert cat.lookups == [{"v1"}, {"v2"}, {"customers"}]
    assert a.cached("SELECT upper(s) FROM v1") is res
    cat.generation += 1  # DDL somewhere
    assert a.cached("SELECT upper(s) FROM v1") is None


def test_texts_that_differ_in_constants_share_a_resolution() -> None:
    cat = Catalog()
    a = Analyzer(cat)
    res = asyncio.run(a.analyze("SELECT ssn FROM customers WHERE id = 4711"))
    passes = a.passes
    assert a.cached("SELECT ssn FROM customers WHERE id = 12") is res
    assert a.cached("SELECT ssn FROM customers WHERE id = 'x'") is None  # another token kind
    assert a.passes == passes
    # a resolution that read a constant's value is not shared
    by_pos = asyncio.run(a.analyze("SELECT id, ssn FROM customers ORDER BY 2"))
    assert by_pos.reads_literals
    assert a.cached("SELECT id, ssn FROM customers ORDER BY 1") is None


def test_try_now_uses_what_is_cached_and_never_waits() -> None:
    cat = Catalog()
    a = Analyzer(cat)
    assert a.try_now("SELECT ssn FROM customers") is None  # the catalog must be asked
    asyncio.run(cat.resolve((), [(None, "customers")]))
    res = a.try_now("SELECT ssn FROM customers")
    assert res is not None and a.cached("SELECT ssn FROM customers") is res
