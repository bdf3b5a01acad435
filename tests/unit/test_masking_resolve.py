# ruff: noqa: E501, S608 (tables of SQL statements)
"""The lineage resolver on its own: every renaming construct of the grammar, views, functions,
ambiguity, and the uses / writes it records.  Catalog facts come from a fake (no database); the
real catalog feeds it in tests/integration/test_masking_catalog.py.
"""

from __future__ import annotations

import pytest

from veilgate.masking.resolve import (
    Col,
    FunctionInfo,
    Lineage,
    NeedFacts,
    RelationFacts,
    Resolution,
    parse_tree,
    resolve,
)

CUSTOMERS = RelationFacts(
    1,
    "public",
    "customers",
    "r",
    ("id", "email", "ssn", "full_name", "addr"),
    probes=(("email", "public", "customers", "email"),),
)
ORDERS = RelationFacts(
    2,
    "public",
    "orders",
    "r",
    ("id", "cid", "total"),
    probes=(("cid", "public", "customers", "id"),),
)
OTHER_CUSTOMERS = RelationFacts(
    3, "crm", "customers", "r", ("id", "email", "ssn", "full_name", "addr")
)
ODD_CUSTOMERS = RelationFacts(4, "odd", "customers", "r", ("secret",))
V1 = RelationFacts(
    5,
    "public",
    "v1",
    "v",
    ("id", "l", "m"),
    definition="SELECT c.id, lower(c.ssn) AS l, (SELECT max(customers.email) AS max"
    " FROM public.customers) AS m FROM public.customers c WHERE c.ssn LIKE '5%'",
)
VNEST = RelationFacts(
    6, "public", "vnest", "v", ("x",), definition="SELECT v1.l AS x FROM public.v1"
)
MV = RelationFacts(
    7, "public", "mv", "m", ("id", "ssn"), definition="SELECT id, ssn FROM public.customers"
)
EVENTS_1 = RelationFacts(
    8, "public", "events_1", "r", ("payload",), ancestors=(("public", "events"),)
)

SCALAR = ("lower", "upper", "reverse", "translate", "encode", "length", "concat", "md5")
SRF = {
    "json_each": ("key", "value"),
    "generate_series": None,
    "unnest": None,
    "jsonb_to_recordset": (),
}


class Facts:
    def __init__(self, *relations: RelationFacts, missing: bool = False) -> None:
        self.rels: dict[str, list[RelationFacts]] = {}
        for r in relations or (CUSTOMERS, ORDERS, V1, VNEST, MV, EVENTS_1):
            self.rels.setdefault(r.table, []).append(r)
        self.missing = missing
        self.user_functions: dict[str, tuple[str, ...] | None] = {"f": None, "pairs": ("a", "b")}
        self.shadowed: set[str] = set()

    def relations_named(self, name: tuple[str | None, str]) -> tuple[RelationFacts, ...] | None:
        if self.missing:
            return None
        return tuple(r for r in self.rels.get(name[1], ()) if name[0] in (None, r.schema))

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        if self.missing:
            return None
        if name.startswith("\x00op:"):
            return ()  # the functions of user operators: none known
        if name in self.user_functions:
            return (FunctionInfo("app", name, 0, 0, False, self.user_functions[name]),)
        out = [FunctionInfo("pg_catalog", name, 1, 0, True, SRF.get(name))]
        if f"f:{name}" in self.shadowed:
            out.append(FunctionInfo("app", name, 1, 0, False, None))
        return tuple(out)

    def namesake(self, key: str) -> bool | None:
        return None if self.missing else key in self.shadowed


def _res(sql: str, facts: Facts | None = None) -> Resolution:
    return resolve(parse_tree(sql), facts or Facts())


def _cols(lin: Lineage) -> set[str]:
    return {c.label() for c in lin.cols}


def _out(sql: str, facts: Facts | None = None) -> list[tuple[str, set[str], str]]:
    """(name, base columns, exact/derived/opaque) per output column."""
    r = _res(sql, facts)
    assert r.outputs is not None and r.shape_known, sql
    return [
        (
            o.name,
            _cols(o.lineage),
            "opaque" if o.lineage.opaque else ("exact" if o.lineage.exact else "derived"),
        )
        for o in r.outputs
    ]


def _uses(sql: str, facts: Facts | None = None) -> set[tuple[str, str, frozenset[str]]]:
    return {(u.kind, u.clause, frozenset(c.label() for c in u.cols)) for u in _res(sql, facts).uses}


SSN = "public.customers.ssn"
EMAIL = "public.customers.email"
ID = "public.customers.id"


# --- renaming constructs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # table alias with a column list
        ("SELECT b FROM customers AS x(a, b)", [("b", {EMAIL}, "exact")]),
        ("SELECT reverse(c) FROM customers AS x(a, b, c)", [("reverse", {SSN}, "derived")]),
        ("SELECT x.c FROM customers x(a, b, c)", [("c", {SSN}, "exact")]),
        # subquery with a column list
        ("SELECT z FROM (SELECT ssn FROM customers) s(z)", [("z", {SSN}, "exact")]),
        ("SELECT s.lower FROM (SELECT lower(ssn) FROM customers) s", [("lower", {SSN}, "derived")]),
        # CTE column lists, nested CTEs
        ("WITH c(q) AS (SELECT ssn FROM customers) SELECT q FROM c", [("q", {SSN}, "exact")]),
        (
            "WITH a AS (SELECT ssn AS s FROM customers), b(t) AS (SELECT s FROM a) SELECT t FROM b",
            [("t", {SSN}, "exact")],
        ),
        # a recursive CTE carries the lineage of its recursive arm too
        (
            "WITH RECURSIVE r(n, s) AS (SELECT 1, ''::text UNION ALL SELECT n + 1, s ||"
            " (SELECT ssn FROM customers LIMIT 1) FROM r WHERE n < 3) SELECT s FROM r",
            [("s", {SSN}, "derived")],
        ),
        # VALUES
        (
            "SELECT column1 FROM (VALUES ('x'), ((SELECT ssn FROM customers LIMIT 1))) v",
            [("column1", {SSN}, "exact")],
        ),
        ("SELECT w FROM (VALUES (1, 'a')) v(k, w)", [("w", set(), "exact")]),
        # functions in FROM: alias, column definition list, OUT parameters, ordinality
        ("SELECT g FROM generate_series(1, 3) g", [("g", set(), "derived")]),
        ("SELECT u FROM unnest(ARRAY[(SELECT ssn FROM customers)]) u", [("u", {SSN}, "derived")]),
        ("SELECT j.value FROM customers, json_each(to_json(ssn)) j", [("value", {SSN}, "derived")]),
        (
            "SELECT y FROM customers, jsonb_to_recordset(to_jsonb(ssn)) AS r(y text)",
            [("y", {SSN}, "derived")],
        ),
        (
            "SELECT o, q FROM ROWS FROM (unnest(ARRAY['a']), generate_series(1, 2))"
            " WITH ORDINALITY AS t(p, q, o)",
            [("o", set(), "exact"), ("q", set(), "derived")],
        ),
        ("SELECT a, b FROM pairs() p", [("a", set(), "opaque"), ("b", set(), "opaque")]),
        # JOIN USING / NATURAL / join aliases
        (
            "SELECT id, j.id FROM customers JOIN orders USING (id) AS j",
            [("id", {ID}, "exact"), ("id", {ID}, "exact")],
        ),
        (
            "SELECT id FROM customers RIGHT JOIN orders USING (id)",
            [("id", {"public.orders.id"}, "exact")],
        ),
        (
            "SELECT q.email FROM (customers NATURAL JOIN orders) AS q(i, email)",
            [("email", {EMAIL}, "exact")],
        ),
        # composite field selection and whole rows
        # a field of a whole row is that column, as its table says (not the whole row)
        ("SELECT (c).ssn FROM customers c", [("ssn", {SSN}, "exact")]),
        (
            "SELECT (c.*).email, (customers).id FROM customers c, customers",
            [("email", {EMAIL}, "exact"), ("id", {ID}, "exact")],
        ),
        ("SELECT (ROW(id, ssn)).f2 FROM customers", [("f2", {SSN}, "exact")]),
        ("SELECT (c).ssn FROM customers c, (SELECT 1 AS c) z", [("ssn", set(), "derived")]),
        ("SELECT (addr).street FROM customers", [("street", {"public.customers.addr"}, "derived")]),
        (
            "SELECT c.addr.street FROM customers c",
            [("street", {"public.customers.addr"}, "derived")],
        ),
        (
            "SELECT c FROM customers c",
            [
                (
                    "c",
                    {ID, EMAIL, SSN, "public.customers.full_name", "public.customers.addr"},
                    "derived",
                )
            ],
        ),
        (
            "SELECT row_to_json(c.*) FROM customers c",
            [
                (
                    "row_to_json",
                    {ID, EMAIL, SSN, "public.customers.full_name", "public.customers.addr"},
                    "derived",
                )
            ],
        ),
        # LATERAL
        (
            "SELECT x FROM customers c, LATERAL (SELECT c.ssn AS x) l",
            [("x", {SSN}, "exact")],
        ),
        # views and materialized views, nested, expanded from their definitions
        (
            "SELECT * FROM v1",
            [("id", {ID}, "exact"), ("l", {SSN}, "derived"), ("m", {EMAIL}, "derived")],
        ),
        ("SELECT x FROM vnest", [("x", {SSN}, "derived")]),
        ("SELECT ssn FROM mv", [("ssn", {SSN}, "exact")]),
        # set operations
        (
            "SELECT ssn FROM customers UNION ALL SELECT email FROM customers",
            [("ssn", {SSN, EMAIL}, "exact")],
        ),
        # sublinks
        ("SELECT (SELECT ssn FROM customers LIMIT 1) AS s", [("s", {SSN}, "exact")]),
        ("SELECT ARRAY(SELECT ssn FROM customers)", [("array", {SSN}, "derived")]),
        ("SELECT EXISTS (SELECT 1 FROM customers)", [("exists", set(), "exact")]),
        # XMLTABLE / JSON_TABLE
        (
            "SELECT v FROM customers, XMLTABLE('/r' PASSING xmlparse(content ssn) COLUMNS v text"
            " PATH 'v') x",
            [("v", {SSN}, "derived")],
        ),
        (
            "SELECT a FROM customers, JSON_TABLE(to_jsonb(ssn), '$' COLUMNS (a text PATH '$')) jt",
            [("a", {SSN}, "derived")],
        ),
        # partitions carry their ancestors
        ("SELECT payload FROM events_1", [("payload", {"public.events_1.payload"}, "exact")]),
        # constants, NULL-ness, counts
        (
            "SELECT count(*), count(ssn), ssn IS NULL FROM customers",
            [
                ("count", set(), "exact"),
                ("count", set(), "exact"),
                ("?column?", set(), "exact"),
            ],
        ),
        ("SELECT xmin, ctid FROM customers", [("xmin", set(), "exact"), ("ctid", set(), "exact")]),
    ],
)
def test_output_lineage(sql: str, expected: list[tuple[str, set[str], str]]) -> None:
    assert _out(sql) == expected


def test_star_expansions_follow_the_server() -> None:
    # a JOIN USING star: the merged column once, then each side's other columns
    got = _out("SELECT * FROM customers JOIN orders USING (id)")
    assert [n for n, _, _ in got] == ["id", "email", "ssn", "full_name", "addr", "cid", "total"]
    got = _out("SELECT * FROM customers NATURAL JOIN orders")
    assert [n for n, _, _ in got] == ["id", "email", "ssn", "full_name", "addr", "cid", "total"]
    got = _out("SELECT o.*, c.ssn FROM orders o, customers c")
    assert [n for n, _, _ in got] == ["id", "cid", "total", "ssn"]
    got = _out("SELECT * FROM customers x(a, b)")
    assert [n for n, _, _ in got][:3] == ["a", "b", "ssn"]


def test_a_ctes_name_shadows_a_table() -> None:
    assert _out("WITH customers AS (SELECT 1 AS ssn) SELECT ssn FROM customers") == [
        ("ssn", set(), "exact")
    ]


def test_correlated_references_resolve_to_the_outer_query() -> None:
    sql = (
        "SELECT (SELECT o.total FROM orders o WHERE o.cid = c.id AND c.ssn = 'x') FROM customers c"
    )
    assert _out(sql) == [("total", {"public.orders.total"}, "exact")]
    assert ("equals", "WHERE", frozenset({SSN})) in _uses(sql)


def test_ambiguous_names_are_the_union_of_their_candidates() -> None:
    # an unqualified name may denote a table of any schema: every candidate counts
    facts = Facts(CUSTOMERS, OTHER_CUSTOMERS)
    assert _out("SELECT ssn FROM customers", facts) == [
        ("ssn", {SSN, "crm.customers.ssn"}, "exact")
    ]
    assert _out("SELECT ssn FROM crm.customers", facts) == [("ssn", {"crm.customers.ssn"}, "exact")]
    # candidates of different shapes: columns any of them has, and maybe more
    facts = Facts(CUSTOMERS, ODD_CUSTOMERS)
    r = _res("SELECT * FROM customers", facts)
    assert not r.shape_known
    assert _out("SELECT secret FROM customers", facts) == [
        ("secret", {"odd.customers.secret"}, "exact")
    ]


def test_unknown_origins_are_opaque() -> None:
    assert _out("SELECT f() AS x") == [("x", set(), "opaque")]
    assert _out("SELECT app.lower(ssn) FROM customers") == [("lower", {SSN}, "opaque")]
    assert _out("SELECT query_to_xml('select 1', true, true, '')") == [
        ("query_to_xml", set(), "opaque")
    ]
    assert _out("SELECT nothing FROM customers") == [("nothing", set(), "opaque")]
    r = _res("SELECT * FROM no_such_table")
    assert not r.shape_known and r.lineage.opaque
    # a built-in name some other schema also defines may run that one instead
    facts = Facts()
    facts.shadowed = {"f:lower", "t:text", "o:||"}
    for sql in (
        "SELECT lower(full_name) FROM customers",
        "SELECT full_name::text FROM customers",
        "SELECT full_name || 'x' FROM customers",
    ):
        assert _out(sql, facts)[0][2] == "opaque", sql
    assert _out("SELECT pg_catalog.lower(full_name) FROM customers", facts)[0][2] == "derived"


def test_missing_facts_are_named_all_at_once() -> None:
    with pytest.raises(NeedFacts) as err:
        resolve(
            parse_tree("SELECT lower(a.x)::text FROM customers a JOIN s.v b ON true"),
            Facts(missing=True),
        )
    assert err.value.relations == {(None, "customers"), ("s", "v")}
    assert "lower" in err.value.functions and "t:text" in err.value.keys


def test_view_definitions_record_no_uses_but_client_views_do() -> None:
    # v1's own WHERE is the schema's: reading the view is no use of ssn
    assert _uses("SELECT id FROM v1") == set()
    # a view the client defines: its predicates are the client's
    assert ("filter", "WHERE", frozenset({SSN})) in _uses(
        "CREATE VIEW mine AS SELECT id FROM customers WHERE ssn LIKE '5%'"
    )


# --- uses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "use"),
    [
        ("SELECT id FROM customers WHERE ssn = '536-22-8141'", ("equals", "WHERE", {SSN})),
        ("SELECT id FROM customers WHERE ssn IN ('a', 'b')", ("equals", "WHERE", {SSN})),
        ("SELECT id FROM customers WHERE ssn IS NOT DISTINCT FROM $1", ("equals", "WHERE", {SSN})),
        ("SELECT id FROM customers WHERE ssn LIKE '5%'", ("filter", "WHERE", {SSN})),
        ("SELECT id FROM customers WHERE lower(ssn) = 'x'", ("filter", "WHERE", {SSN})),
        ("SELECT 1 FROM customers c JOIN orders o ON o.cid = c.id", ("join", "JOIN ON", {ID})),
        ("SELECT 1 FROM customers JOIN orders USING (id)", ("join", "JOIN USING", {ID})),
        ("SELECT 1 FROM customers NATURAL JOIN orders", ("join", "NATURAL JOIN", {ID})),
        ("SELECT id FROM customers ORDER BY ssn", ("order", "ORDER BY", {SSN})),
        ("SELECT ssn FROM customers ORDER BY 1", ("order", "ORDER BY", {SSN})),
        ("SELECT ssn AS s FROM customers ORDER BY s", ("order", "ORDER BY", {SSN})),
        ("SELECT count(*) FROM customers GROUP BY ssn", ("group", "GROUP BY", {SSN})),
        ("SELECT 1 FROM customers GROUP BY ROLLUP (email)", ("group", "GROUP BY", {EMAIL})),
        ("SELECT 1 FROM customers HAVING max(ssn) > 'a'", ("filter", "HAVING", {SSN})),
        ("SELECT DISTINCT ssn FROM customers", ("group", "DISTINCT", {SSN})),
        ("SELECT DISTINCT ON (ssn) id FROM customers", ("group", "DISTINCT ON", {SSN})),
        ("SELECT rank() OVER (ORDER BY ssn) FROM customers", ("order", "window ORDER BY", {SSN})),
        (
            "SELECT 1 FROM customers WINDOW w AS (PARTITION BY ssn)",
            ("group", "window PARTITION BY", {SSN}),
        ),
        ("SELECT count(*) FILTER (WHERE ssn > 'a') FROM customers", ("filter", "FILTER", {SSN})),
        ("SELECT count(DISTINCT ssn) FROM customers", ("group", "count(DISTINCT ...)", {SSN})),
        (
            "SELECT string_agg(id::text, ',' ORDER BY ssn) FROM customers",
            ("order", "ORDER BY in string_agg()", {SSN}),
        ),
        (
            "SELECT id FROM customers LIMIT (SELECT length(ssn) FROM customers LIMIT 1)",
            ("filter", "LIMIT", {SSN}),
        ),
        ("SELECT CASE WHEN ssn > '5' THEN 1 END FROM customers", ("filter", "CASE WHEN", {SSN})),
        ("SELECT CASE ssn WHEN 'x' THEN 1 END FROM customers", ("equals", "CASE", {SSN})),
        ("SELECT nullif(ssn, 'x') FROM customers", ("equals", "NULLIF", {SSN})),
        ("SELECT ssn::int FROM customers", ("compute", "a cast to int4", {SSN})),
        ("SELECT ssn::bytea FROM customers", ("compute", "a cast to bytea", {SSN})),
        (
            "SELECT set_config('x.y', ssn, false) FROM customers",
            ("compute", "an argument of set_config()", {SSN}),
        ),
        (
            "SELECT pg_notify('c', ssn) FROM customers",
            ("compute", "an argument of pg_notify()", {SSN}),
        ),
        ("SELECT f(ssn) FROM customers", ("compute", "an argument of f()", {SSN})),
        (
            "SELECT substring(ssn from '^5') FROM customers",
            ("compute", "an argument of substring()", {SSN}),
        ),
        ("SELECT length(ssn) / 0 FROM customers", ("compute", "an operand of /", {SSN})),
        ("SELECT 'x' LIKE ssn FROM customers", ("compute", "the pattern of LIKE", {SSN})),
        ("SELECT ssn FROM customers UNION SELECT 'x'", ("group", "UNION", {SSN})),
        ("SELECT ssn FROM customers INTERSECT ALL SELECT 'x'", ("group", "INTERSECT ALL", {SSN})),
        (
            "SELECT 1 FROM customers WHERE EXISTS (SELECT 1 WHERE ssn = 'x')",
            ("equals", "WHERE", {SSN}),
        ),
        ("DELETE FROM customers WHERE ssn = 'x'", ("equals", "WHERE", {SSN})),
        (
            "UPDATE orders SET total = 1 FROM customers c WHERE c.ssn LIKE 'x%'",
            ("filter", "WHERE", {SSN}),
        ),
        ("EXPLAIN SELECT 1 FROM customers WHERE ssn = 'x'", ("equals", "WHERE", {SSN})),
        ("PREPARE p AS SELECT 1 FROM customers WHERE ssn = $1", ("equals", "WHERE", {SSN})),
        (
            "DECLARE c CURSOR FOR SELECT id FROM customers ORDER BY ssn",
            ("order", "ORDER BY", {SSN}),
        ),
        # writes checked by constraints: a unique index, a foreign key to a masked column
        (
            "INSERT INTO customers (id, email) VALUES (1, 'a@b.c')",
            ("equals", "a constraint checked by INSERT", {EMAIL}),
        ),
        (
            "UPDATE orders SET cid = 5 WHERE id = 1",
            ("equals", "a constraint checked by UPDATE SET", {ID}),
        ),
        (
            "INSERT INTO customers (id, email) VALUES (1, 'a') ON CONFLICT (email) DO NOTHING",
            ("equals", "ON CONFLICT", {EMAIL}),
        ),
        # DDL that moves a masked column out of its rule or derives from it
        ("ALTER TABLE customers RENAME COLUMN ssn TO x", ("rename", "a rename", {SSN})),
        (
            "ALTER TABLE customers RENAME TO c2",
            (
                "rename",
                "a rename",
                {SSN, EMAIL, ID, "public.customers.full_name", "public.customers.addr"},
            ),
        ),
        (
            "ALTER TABLE customers ADD CONSTRAINT k CHECK (ssn LIKE '5%')",
            ("filter", "CHECK", {SSN}),
        ),
        (
            "CREATE UNIQUE INDEX ON customers (substr(ssn, 1, 3))",
            ("group", "a unique index", {SSN}),
        ),
        (
            "CREATE POLICY p ON customers USING (ssn LIKE '5%')",
            ("filter", "a row security policy", {SSN}),
        ),
    ],
)
def test_uses(sql: str, use: tuple[str, str, set[str]]) -> None:
    kind, clause, cols = use
    assert (kind, clause, frozenset(cols)) in _uses(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ssn, lower(ssn), length(ssn), md5(ssn), reverse(ssn) FROM customers",
        "SELECT ssn FROM customers WHERE id = 1 ORDER BY id",
        "SELECT coalesce(ssn, email), greatest(ssn, 'a'), ssn || 'x' FROM customers",
        "SELECT ssn = 'x', ssn ~~ 'x%' FROM customers",  # comparisons in the output: masked
        "SELECT max(ssn), array_agg(ssn), json_agg(ssn), count(ssn) FROM customers",
        "SELECT ssn FROM customers UNION ALL SELECT email FROM customers",
        "SELECT id FROM customers WHERE ssn IS NULL",  # NULL-ness is not masked
        "SELECT ssn::text, ssn::varchar(5) FROM customers",
        "SELECT lag(ssn) OVER (ORDER BY id) FROM customers",
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM customers",
    ],
)
def test_passing_values_to_the_output_is_no_use(sql: str) -> None:
    assert not {u for u in _uses(sql) if SSN in u[2] or EMAIL in u[2]}, _uses(sql)


# --- writes -----------------------------------------------------------------------------------


def _writes(sql: str) -> set[tuple[str, frozenset[str]]]:
    return {(w.label, frozenset(c.label() for c in w.source.cols)) for w in _res(sql).writes}


@pytest.mark.parametrize(
    ("sql", "write"),
    [
        ("INSERT INTO orders (total) SELECT ssn FROM customers", ("public.orders.total", {SSN})),
        (
            "INSERT INTO orders SELECT 1, 2, reverse(ssn) FROM customers",
            ("public.orders.total", {SSN}),
        ),
        ("UPDATE customers SET full_name = ssn", ("public.customers.full_name", {SSN})),
        (
            "UPDATE customers SET (full_name, addr) = (SELECT ssn, email FROM customers LIMIT 1)",
            ("public.customers.addr", {EMAIL}),
        ),
        ("CREATE TABLE t2 AS SELECT reverse(ssn) AS r FROM customers", (".t2.r", {SSN})),
        ("CREATE TEMP TABLE t3 (z) AS SELECT ssn FROM customers", ("pg_temp.t3.z", {SSN})),
        ("SELECT ssn AS q INTO TEMP t4 FROM customers", ("pg_temp.t4.q", {SSN})),
        (
            "WITH d AS (DELETE FROM customers RETURNING ssn) INSERT INTO orders (total) SELECT ssn FROM d",
            ("public.orders.total", {SSN}),
        ),
        (
            "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN UPDATE SET total = c.ssn",
            ("public.orders.total", {SSN}),
        ),
        (
            "INSERT INTO customers (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET full_name = customers.ssn",
            ("public.customers.full_name", {SSN}),
        ),
        ("COPY (SELECT ssn FROM customers) TO '/tmp/x'", ("COPY TO a file or program", {SSN})),
        (
            "ALTER TABLE customers ADD COLUMN g text GENERATED ALWAYS AS (reverse(ssn)) STORED",
            ("public.customers.g", {SSN}),
        ),
        (
            "CREATE RULE r AS ON UPDATE TO customers DO ALSO INSERT INTO orders (total) VALUES (old.ssn)",
            ("public.orders.total", {SSN}),
        ),
    ],
)
def test_writes(sql: str, write: tuple[str, set[str]]) -> None:
    label, cols = write
    assert (label, frozenset(cols)) in _writes(sql), _writes(sql)


def test_writes_through_a_view_land_in_its_base_table() -> None:
    facts = Facts(
        CUSTOMERS,
        RelationFacts(
            9,
            "public",
            "cv",
            "v",
            ("k", "e"),
            definition="SELECT id AS k, email AS e FROM public.customers",
        ),
    )
    r = resolve(parse_tree("INSERT INTO cv (e) SELECT ssn FROM customers"), facts)
    (w,) = r.writes
    assert w.dest == Col("public", "customers", "email")


def test_created_tables_are_reported() -> None:
    r = _res("CREATE TEMP TABLE tt (x int, y text)")
    assert [(c.schema, c.table, c.columns) for c in r.creates] == [("pg_temp", "tt", ("x", "y"))]
    r = _res("CREATE TABLE s.t AS SELECT id, ssn AS k FROM customers")
    assert [(c.schema, c.table, c.columns) for c in r.creates] == [("s", "t", ("id", "k"))]
    assert _res("CREATE TEMP TABLE tt (LIKE customers)").creates == ()


def test_text_too_deep_to_parse_is_of_unknown_lineage() -> None:
    sql = "SELECT " + "+".join(["ssn"] * 5000) + " FROM customers"
    assert parse_tree(sql) is None
    r = resolve(parse_tree(sql), Facts())
    assert not r.parsed and r.lineage.opaque and r.output(0, 1).opaque
    # as deep as the parser goes, the resolver follows
    sql = "SELECT " + "||".join(["ssn"] * 400) + " FROM customers"
    assert _out(sql) == [("?column?", {SSN}, "derived")]
