"""Per-statement cost of the lineage resolver (deterministic: run it under callgrind).

Resolves a fixed set of statements (the renaming constructs the adversarial suite attacks,
plus calls of SQL functions resolved through their bodies) ``N`` times each against fixed
catalog facts (no database), parsing included (the parse-tree caches are bypassed), as the
analyzer does on a cache miss.  Steady-state statements are answered from the analyzer's cache
and never reach this code.

    python bench/lineage_cost.py 200            # CPU µs per analysed statement (indicative)
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/lineage_cost.py 50
    valgrind ... python bench/lineage_cost.py 0  # the baseline to subtract

Instructions per statement = (Ir(N) - Ir(0)) / (N * statements).  ``PYTHONPATH=<checkout>/python``
measures another checkout's resolver with the same script (``--common`` leaves out the
statements an older resolver cannot express the facts of).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pglast import parser as _pg

from veilgate.masking import resolve as r

T = "public.t"
COLS = ("id", "ssn", "email", "card", "notes", "api_secret", "label")
RELS = {
    "t": r.RelationFacts(1, "public", "t", "r", COLS),
    "t_v": r.RelationFacts(
        2,
        "public",
        "t_v",
        "v",
        ("id", "ssn", "le"),
        definition="SELECT t.id, t.ssn, lower(t.email) AS le FROM public.t",
    ),
}

COMMON = [
    "select b, reverse(c), upper(d) from t as x(a, b, c, d)",
    "select z, lower(w) from (select ssn, email from t) s(z, w)",
    "with c(q, r) as (select ssn, card from t) select q, r || '' from c",
    "with recursive r(n, s) as (select 1, email from t union all"
    " select n + 1, reverse(s) from r where n < 2) select s from r",
    "select * from t join (select id, ssn as s2 from t) s using (id)",
    "select (x).ssn, (x).email, (x).card from t x",
    "select l.* from t x, lateral (select reverse(x.ssn) r, upper(x.email) e, x.card c) l",
    "select * from t_v",
    "select ssn from t union all select email from t union all select card from t",
    "select string_agg(ssn, ','), array_agg(email), max(api_secret) from t",
    "select count(*), max(id) from t where id = 4711",
    "select id, label from t where id = $1",
]
FUNCTIONS = [
    "select nice()",
    "select byid(id), pairs.* from t, pairs()",
]


def sql_fn(name: str, body: str, nargs: int = 0, cols: tuple[str, ...] | None = None) -> Any:
    return r.FunctionInfo("public", name, nargs, 0, False, cols, False, body, ("i",) * nargs)


class Facts:
    def __init__(self, with_bodies: bool) -> None:
        self.funcs: dict[str, tuple[Any, ...]] = {}
        if with_bodies:
            self.funcs = {
                "nice": (sql_fn("nice", "select ssn as harmless from t"),),
                "byid": (sql_fn("byid", "select email from t where id = i", 1),),
                "pairs": (sql_fn("pairs", "select id, card from t", 0, ("a", "b")),),
            }

    def relations_named(self, name: tuple[str | None, str]) -> Any:
        rel = RELS.get(name[1])
        return (rel,) if rel is not None and name[0] in (None, rel.schema) else ()

    def functions_named(self, name: str) -> Any:
        return self.funcs.get(name) or (r.FunctionInfo("pg_catalog", name, 1, 0, True, None),)

    def namesake(self, key: str) -> bool:
        return False


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    common = "--common" in sys.argv
    stmts = COMMON if common else COMMON + FUNCTIONS
    facts = Facts(not common)
    start = time.process_time()
    for _ in range(n):
        for sql in stmts:
            tree = json.loads(_pg.parse_sql_json(sql))
            r.resolve([s.get("stmt", {}) for s in tree["stmts"]], facts)  # type: ignore[arg-type]
    spent = time.process_time() - start
    if n:
        print(f"{len(stmts)} statements x {n}: {spent / (n * len(stmts)) * 1e6:.1f} µs CPU each")


if __name__ == "__main__":
    main()
