"""The masking planner's column rules, with a fake catalog (no database).

Decisions are checked through :meth:`SessionMasking.decide` (pure) and through the plan objects
it builds.  The native objects are stood in for by a fake module where the planner is asked for
plans, so these tests pin the control plane's decisions, not the engine's output (the engine has
its own tests, and the gateway integration tests run both together).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import veilgate_native

from veilgate.masking import planner as planner_mod
from veilgate.masking.catalog import (
    _MISSING,
    Catalog,
    CatalogError,
    ColumnInfo,
    FunctionInfo,
    RelationInfo,
    TypeInfo,
)
from veilgate.masking.fields import Field, parse_row_description
from veilgate.masking.invalidation import Scope
from veilgate.masking.planner import MaskRefusal, SessionMasking
from veilgate.masking.policy import OperatorSpec, TierMasking
from veilgate.masking.resolve import Col
from veilgate.policy.loader import load_policy_text

POLICY = """\
version: 1
tiers:
  - name: ro
    match: {roles: [r]}
    rules:
      - {id: a, message: m, action: allow, classes: [read]}
masking:
  columns:
    - {column: "public.customers.ssn", op: partial, keep_last: 4}
    - {column: "public.customers.email", op: replace, value: "<EMAIL>"}
    - {column: "public.customers.id", op: keep}
    - {column: "public.customers.born", op: null}
    - {column: "public.notes.body", scan: true}
    - {column: "public.events.payload", op: redact}
    - {name: "*password*", op: redact}
  scan_unknown: true
  unknown_lineage: redact
"""

# type OIDs as PostgreSQL assigns them
INT4, TEXT, VARCHAR, JSONB, DATE, TEXT_ARR, CITEXT = 23, 25, 1043, 3802, 1082, 1009, 90001

TYPES = {
    INT4: TypeInfo(INT4, "int4", "int4", "N", INT4, 0),
    TEXT: TypeInfo(TEXT, "text", "text", "S", TEXT, 0),
    VARCHAR: TypeInfo(VARCHAR, "varchar", "varchar", "S", VARCHAR, 0),
    JSONB: TypeInfo(JSONB, "jsonb", "jsonb", "U", JSONB, 0),
    DATE: TypeInfo(DATE, "date", "date", "D", DATE, 0),
    TEXT_ARR: TypeInfo(TEXT_ARR, "_text", "_text", "A", TEXT_ARR, TEXT),
    CITEXT: TypeInfo(CITEXT, "citext", "citext", "S", CITEXT, 0),
}

CUSTOMERS, NOTES, CONTACTS, TOTALS, EVENTS_1, USERS, DROPPED = 100, 200, 300, 400, 500, 600, 700
COLUMNS = {
    (CUSTOMERS, 1): ColumnInfo("public", "customers", "id", "r"),
    (CUSTOMERS, 2): ColumnInfo("public", "customers", "email", "r"),
    (CUSTOMERS, 3): ColumnInfo("public", "customers", "ssn", "r"),
    (CUSTOMERS, 4): ColumnInfo("public", "customers", "full_name", "r"),
    (CUSTOMERS, 5): ColumnInfo("public", "customers", "born", "r"),
    (CUSTOMERS, 6): ColumnInfo("public", "customers", "tags", "r"),
    (CUSTOMERS, 7): ColumnInfo("public", "customers", "profile", "r"),
    (NOTES, 1): ColumnInfo("public", "notes", "body", "r"),
    (CONTACTS, 1): ColumnInfo("public", "contacts", "contact", "v"),
    (CONTACTS, 2): ColumnInfo("public", "contacts", "id", "v"),
    (CONTACTS, 3): ColumnInfo("public", "contacts", "shout", "v"),
    (TOTALS, 1): ColumnInfo("public", "order_totals", "total", "v"),
    (EVENTS_1, 1): ColumnInfo("public", "events_1", "payload", "r", (("public", "events"),)),
    (USERS, 1): ColumnInfo("public", "users", "password_hash", "r"),
    (DROPPED, 1): _MISSING,
}
_CUSTOMERS = RelationInfo(
    CUSTOMERS, "public", "customers", "r", ("id", "email", "ssn", "full_name", "born", "tags")
)
_ORDERS = RelationInfo(800, "public", "orders", "r", ("id", "cid", "total"))
_USERS = RelationInfo(USERS, "public", "users", "r", ("id", "password_hash"))
_CONTACTS = RelationInfo(
    CONTACTS,
    "public",
    "contacts",
    "v",
    ("contact", "id", "shout"),
    "SELECT customers.email AS contact, customers.id, upper(customers.full_name || customers.ssn)"
    " AS shout FROM public.customers",
)
_TOTALS = RelationInfo(
    TOTALS,
    "public",
    "order_totals",
    "v",
    ("total",),
    "SELECT sum(orders.total) AS total FROM public.orders",
)
_NOTES = RelationInfo(NOTES, "public", "notes", "r", ("body",))
_EVENTS_1 = RelationInfo(
    EVENTS_1, "public", "events_1", "r", ("payload",), ancestors=(("public", "events"),)
)
RELATIONS = {
    r.table: r for r in (_CUSTOMERS, _ORDERS, _USERS, _CONTACTS, _TOTALS, _NOTES, _EVENTS_1)
}
USER_FUNCTIONS = {"fmt", "report", "f", "profile"}
"""Functions of schema ``app``; every other name is a ``pg_catalog`` scalar function."""


class FakeCatalog:
    """The parts of :class:`Catalog` the planner and its analyzer use (no database); facts
    become known ("warm") on resolve()."""

    def __init__(self, *, warm: bool = True) -> None:
        self.generation = 0
        self.resolves = 0
        self.invalidated: list[Scope] = []
        self.described: list[str] = []
        self.describe_result: list[Field] | Exception = []
        self.shadowed: set[str] = set()
        """Names that also exist outside pg_catalog: ``f:name``, ``t:name``, ``o:op``."""
        self._cache: dict[str, Any] = {}
        if warm:
            self._fill()

    def _fill(self) -> None:
        self._cache = {"columns": dict(COLUMNS), "types": dict(TYPES), "names": True}

    def facts(self) -> FakeCatalog:
        return self

    def column(self, table_oid: int, attnum: int) -> ColumnInfo | None:
        return cast(ColumnInfo | None, self._cache.get("columns", {}).get((table_oid, attnum)))

    def type(self, oid: int) -> TypeInfo | None:
        return cast(TypeInfo | None, self._cache.get("types", {}).get(oid))

    def relations_named(self, name: tuple[str | None, str]) -> tuple[RelationInfo, ...] | None:
        if "names" not in self._cache:
            return None
        r = RELATIONS.get(name[1])
        return (r,) if r is not None and name[0] in (None, r.schema) else ()

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        if "names" not in self._cache:
            return None
        if name.startswith("\x00op:"):
            return ()  # the functions of user operators: none known
        infos = [
            FunctionInfo("app" if name in USER_FUNCTIONS else "pg_catalog", name, 1, 0, True, None)
        ]
        if f"f:{name}" in self.shadowed:
            infos.append(FunctionInfo("app", name, 1, 0, False, None))
        return tuple(infos)

    def namesake(self, key: str) -> bool | None:
        return key in self.shadowed if "names" in self._cache else None

    async def resolve(self, *args: Any, **kw: Any) -> FakeCatalog:
        self.resolves += 1
        if "names" not in self._cache:  # facts already cached stay (a test may add some)
            self._fill()
        return self

    async def describe(self, sql: str) -> list[Field]:
        self.described.append(sql)
        if isinstance(self.describe_result, Exception):
            raise self.describe_result
        return self.describe_result

    def invalidate(self, scope: Scope = Scope.ALL) -> None:
        self.invalidated.append(scope)
        self.generation += 1
        self._cache = {}

    def expire_if_stale(self) -> None:
        pass

    check_interval_s = 1.0
    checks = 0

    def check_due(self, definitions: bool = False) -> bool:
        return definitions

    async def check(self, max_age_s: float = 0.0) -> None:
        self.checks += 1


class FakeNative:
    """Stands in for veilgate_native's plan classes: records what the planner asked for."""

    KEEP, NULL, TEXT, TYPED = "KEEP", "NULL", "TEXT", "TYPED"
    Codec = veilgate_native.Codec  # pure data: the real one

    class RowPlan:
        def __init__(self, columns: list[tuple[str, Any]]) -> None:
            self.columns = columns
            self.counts: list[dict[str, int]] = [{} for _ in columns]

        def take_tally(self) -> list[dict[str, int]]:
            out, self.counts = self.counts, [{} for _ in self.columns]
            return out

    class CopyPlan:
        def __init__(self, format: str, columns: list[tuple[str, Any]], **kw: Any) -> None:
            self.format = format
            self.columns = columns
            self.options = kw


@pytest.fixture
def tier(monkeypatch: pytest.MonkeyPatch) -> TierMasking:
    monkeypatch.setattr(planner_mod, "_native", lambda: FakeNative)
    monkeypatch.setattr(OperatorSpec, "build", lambda self, entity, key: f"OP:{self.kind}")
    policy = load_policy_text(POLICY, "policy.yaml")
    assert policy.masking is not None
    tm = policy.masking.for_tier("ro")
    assert tm is not None
    tm.__dict__["scanner"] = "SCANNER"  # cached_property slots
    return tm


def _planner(tier: TierMasking, catalog: FakeCatalog | None = None) -> SessionMasking:
    return SessionMasking(tier, cast(Catalog, catalog or FakeCatalog()))


def _f(name: str, table: int, att: int, typ: int, fmt: int = 0) -> Field:
    return Field(name, table, att, typ, fmt)


def _how(p: SessionMasking, fields: list[Field], sql: str) -> list[tuple[str, str]]:
    return [(d.action, d.how) for d in p.decide(fields, p.statement(sql))]


def test_column_rules_by_lineage(tier: TierMasking) -> None:
    p = _planner(tier)
    fields = [
        _f("id", CUSTOMERS, 1, INT4),
        _f("e", CUSTOMERS, 2, TEXT),  # renamed in the query: lineage still finds the rule
        _f("ssn", CUSTOMERS, 3, TEXT),
        _f("full_name", CUSTOMERS, 4, TEXT),
        _f("born", CUSTOMERS, 5, DATE),
        _f("body", NOTES, 1, TEXT),
    ]
    sql = "SELECT id, email AS e, ssn, full_name, born, body FROM customers, notes"
    assert _how(p, fields, sql) == [
        ("keep", "keep"),
        ("text", "rule"),
        ("text", "rule"),
        ("keep", "keep"),  # known lineage, no rule
        ("null", "null"),
        ("text", "scan"),
    ]
    d = p.decide(fields, p.statement(sql))
    assert d[2].rule is not None and d[2].rule.pattern == "public.customers.ssn"


def test_name_rules_apply_without_lineage(tier: TierMasking) -> None:
    p = _planner(tier)
    fields = [_f("password_hash", USERS, 1, TEXT), _f("old_password", 0, 0, TEXT)]
    assert _how(p, fields, "SELECT password_hash, 'x' AS old_password FROM users") == [
        ("text", "rule"),
        ("text", "rule"),
    ]


def test_partition_is_masked_by_its_parents_rule(tier: TierMasking) -> None:
    p = _planner(tier)
    assert _how(p, [_f("payload", EVENTS_1, 1, TEXT)], "SELECT payload FROM events_1") == [
        ("text", "rule")
    ]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # computed from a masked column: masked as a whole
        ("SELECT upper(ssn) FROM customers", "redact"),
        ("SELECT lower(c.email) FROM public.customers c", "redact"),
        ("SELECT row_to_json(c) FROM customers c", "redact"),  # whole row
        ("SELECT json_agg(c.*) FROM customers AS c", "redact"),  # star of the table
        ("SELECT concat(password_hash) FROM users", "redact"),  # name rule column
        ("SELECT upper(contact) FROM contacts", "redact"),  # a view's column over email
        ("SELECT reverse(b) FROM customers AS x(a, b)", "redact"),  # renamed by an alias list
        ("WITH c(q) AS (SELECT ssn FROM customers) SELECT q || '' FROM c", "redact"),
        ("SELECT r FROM (SELECT translate(ssn, '0', 'o') FROM customers) s(r)", "redact"),
        (
            "SELECT e FROM (VALUES (1)) v(x), LATERAL (SELECT encode(ssn::bytea, 'hex') AS e"
            " FROM customers) l",
            "redact",
        ),
        # computed only from unmasked columns and constants: kept
        ("SELECT now()::text", "keep"),
        ("SELECT upper(full_name) FROM customers", "keep"),  # unmasked column
        ("SELECT sum(total)::text FROM order_totals", "keep"),  # a view over unmasked ones
        ("SELECT upper(id::text) FROM customers", "keep"),  # keep is not masked
        ("SELECT count(*) FROM customers", "keep"),
        ("SELECT count(ssn) FROM customers", "keep"),  # NULL-ness only
        ("SELECT ssn IS NULL FROM customers", "keep"),
        ("SELECT max(id) + 1 FROM customers", "keep"),
        # of unknown origin: unknown_lineage (the tier masks columns a function could read)
        ("SELECT app.fmt(full_name) FROM customers", "redact"),  # a user function
        ("SELECT public.upper(full_name) FROM customers", "redact"),  # not pg_catalog's
        ("SELECT x FROM report() x", "redact"),  # a user function in FROM
        ("SELECT upper(ssn) FROM other.customers", "redact"),  # a relation the catalog lacks
        ("FETCH ALL FROM c", "redact"),  # a cursor opened elsewhere
        ("SELECT query_to_xml('select 1', true, true, '')", "redact"),  # runs SQL text
        ("SELECT ((( FROM", "redact"),  # unparseable: fail closed
    ],
)
def test_lineage_treatments(tier: TierMasking, sql: str, expected: str) -> None:
    p = _planner(tier)
    action = "keep" if expected == "keep" else "text"
    assert _how(p, [_f("x", 0, 0, TEXT)], sql) == [(action, expected)]


def test_a_pass_through_keeps_its_column_rule(tier: TierMasking) -> None:
    """A value passed through unchanged (UNION ALL arms, VALUES, CTEs without table OIDs in
    the RowDescription) keeps its column's own rule rather than a whole-value redaction."""
    p = _planner(tier)
    sql = "SELECT ssn FROM customers UNION ALL SELECT ssn FROM customers"
    d = p.decide([_f("ssn", 0, 0, TEXT)], p.statement(sql))
    assert (d[0].action, d[0].how) == ("text", "rule")
    assert d[0].rule is not None and d[0].rule.pattern == "public.customers.ssn"
    # two columns with different rules: the value is masked as a whole
    sql = "SELECT ssn FROM customers UNION ALL SELECT email FROM customers"
    assert _how(p, [_f("ssn", 0, 0, TEXT)], sql) == [("text", "redact")]
    # an unmasked column and a constant: kept
    sql = "SELECT full_name FROM customers UNION ALL SELECT 'x'"
    assert _how(p, [_f("full_name", 0, 0, TEXT)], sql) == [("keep", "keep")]


def test_a_shadowed_builtin_is_of_unknown_origin(tier: TierMasking) -> None:
    # app.upper(varchar) would be picked over pg_catalog.upper(text) for a varchar argument
    cat = FakeCatalog()
    cat.shadowed = {"f:upper", "o:||", "t:text", "c:secret_type"}
    p = _planner(tier, cat)
    sql = "SELECT upper(full_name) FROM customers"
    assert _how(p, [_f("x", 0, 0, TEXT)], sql) == [("text", "redact")]
    # qualified with pg_catalog: it is the built-in
    sql = "SELECT pg_catalog.upper(full_name) FROM customers"
    assert _how(p, [_f("x", 0, 0, TEXT)], sql) == [("keep", "keep")]
    # operators and cast types too
    for sql in (
        "SELECT full_name || 'x' FROM customers",
        "SELECT full_name::text FROM customers",
        "SELECT full_name::app.secret_type FROM customers",
    ):
        assert _how(p, [_f("x", 0, 0, TEXT)], sql) == [("text", "redact")], sql
    # a cast to a user type reads its input (C input functions) unless a cast function or a
    # domain's constraints may run other code (c: keys)
    p = _planner(tier, FakeCatalog())
    assert _how(p, [_f("x", 0, 0, TEXT)], "SELECT full_name::app.mood FROM customers") == [
        ("keep", "keep")
    ]
    assert _how(p, [_f("x", 0, 0, TEXT)], "SELECT ssn::app.mood FROM customers") == [
        ("text", "redact")
    ]
    # an operator qualified with another schema: of unknown origin unless every operator of
    # that name outside pg_catalog is an extension's C function (o: False, e:o: True)
    cat = FakeCatalog()
    cat.shadowed = {"o:+", "e:o:+"}
    sql = "SELECT OPERATOR(app.+)(1, 2)"
    assert _how(_planner(tier, cat), [_f("x", 0, 0, TEXT)], sql) == [("text", "redact")]
    cat = FakeCatalog()
    cat.shadowed = {"e:o:+", "e:o:||"}
    p = _planner(tier, cat)
    assert _how(p, [_f("x", 0, 0, TEXT)], sql) == [("keep", "keep")]
    assert _how(p, [_f("x", 0, 0, TEXT)], "SELECT full_name || 'x' FROM customers") == [
        ("keep", "keep")
    ]
    assert _how(p, [_f("x", 0, 0, INT4, 1)], "SELECT length(full_name) + 1 FROM customers") == [
        ("keep", "keep")
    ]


def test_whole_rows_are_judged_by_the_tables_columns(tier: TierMasking) -> None:
    p = _planner(tier)
    # users.password_hash is masked by a name rule: its whole row is derived from it
    assert _how(p, [_f("j", 0, 0, TEXT)], "SELECT row_to_json(u) FROM users u") == [
        ("text", "redact")
    ]
    assert _how(p, [_f("j", 0, 0, TEXT)], "SELECT u FROM public.users u") == [("text", "redact")]
    # orders has nothing masked: kept
    assert _how(p, [_f("j", 0, 0, TEXT)], "SELECT row_to_json(o) FROM orders o") == [
        ("keep", "keep")
    ]
    # a CTE's whole row: judged by what the CTE reads
    sql = "WITH c AS (SELECT ssn FROM customers) SELECT row_to_json(c) FROM c"
    assert _how(p, [_f("j", 0, 0, TEXT)], sql) == [("text", "redact")]
    sql = "WITH c AS (SELECT full_name FROM customers) SELECT row_to_json(c) FROM c"
    assert _how(p, [_f("j", 0, 0, TEXT)], sql) == [("keep", "keep")]


def test_redaction_keeps_values_parseable(tier: TierMasking) -> None:
    p = _planner(tier)
    sql = "SELECT upper(ssn), length(ssn), row_to_json(c), array_agg(ssn) FROM customers c"
    fields = [
        _f("upper", 0, 0, TEXT),
        _f("length", 0, 0, INT4),
        _f("row_to_json", 0, 0, JSONB, 1),
        _f("array_agg", 0, 0, TEXT_ARR),
    ]
    assert _how(p, fields, sql) == [
        ("text", "redact"),  # "<MASKED>"
        ("typed", "redact"),  # an int4 cannot say "<MASKED>": 0
        ("typed", "redact"),  # the JSON string "<MASKED>"
        ("typed", "redact"),  # each element "<MASKED>"
    ]


def _tier_of(text: str) -> TierMasking:
    policy = load_policy_text(text, "policy.yaml")
    assert policy.masking is not None
    tm = policy.masking.for_tier("ro")
    assert tm is not None
    return tm


def test_unknown_lineage_settings(tier: TierMasking) -> None:
    derived = "SELECT upper(ssn) FROM customers"
    unknown = "SELECT app.f()"
    unseen = "SELECT x FROM not_in_the_catalog"
    for setting, want_derived, want_unknown, want_unseen in (
        ("null", ("null", "null"), ("null", "null"), ("null", "null")),
        # a value computed from a masked column is masked as a whole even with "scan":
        # content scanning cannot see through upper(), reverse(), encode()...; nor through a
        # user function, which may read any column: only a value of unknown origin from a
        # statement that reads no masked column and runs no such code is scanned
        ("scan", ("text", "redact"), ("text", "redact"), ("text", "scan")),
    ):
        text = POLICY.replace("unknown_lineage: redact", f"unknown_lineage: {setting}")
        p = _planner(_tier_of(text))
        assert _how(p, [_f("x", 0, 0, TEXT)], derived) == [want_derived], setting
        assert _how(p, [_f("x", 0, 0, TEXT)], unknown) == [want_unknown], setting
        assert _how(p, [_f("x", 0, 0, TEXT)], unseen) == [want_unseen], setting
        # the same unseen relation beside a masked table: not scanned
        both = "SELECT x, (SELECT count(*) FROM customers) FROM not_in_the_catalog"
        assert _how(p, [_f("x", 0, 0, TEXT), _f("c", 0, 0, TEXT)], both)[0] == (
            want_unseen if setting == "null" else ("text", "redact")
        ), setting
    # scan_unknown decides for tiers whose rules mask no column (detectors only)
    detectors_only = POLICY.split("  columns:")[0] + "  scan_unknown: "
    for flag, want in (("true", ("text", "scan")), ("false", ("keep", "keep"))):
        p = _planner(_tier_of(detectors_only + flag + "\n"))
        assert _how(p, [_f("x", 0, 0, TEXT)], unknown) == [want], flag
        assert _how(p, [_f("x", 0, 0, TEXT)], derived) == [("keep", "keep")], flag


def test_view_columns(tier: TierMasking) -> None:
    p = _planner(tier)
    # a view's columns get the lineage of its definition's columns
    fields = [
        _f("contact", CONTACTS, 1, TEXT),  # customers.email passed through: email's rule
        _f("id", CONTACTS, 2, INT4),  # customers.id: its keep rule
        _f("shout", CONTACTS, 3, TEXT),  # computed from ssn: masked as a whole
    ]
    assert _how(p, fields, "SELECT * FROM contacts") == [
        ("text", "rule"),
        ("keep", "keep"),
        ("text", "redact"),
    ]
    d = p.decide(fields[:1], p.statement("SELECT contact FROM contacts"))
    assert d[0].rule is not None and d[0].rule.pattern == "public.customers.email"
    # a view over unmasked columns: kept
    assert _how(p, [_f("total", TOTALS, 1, INT4)], "SELECT total FROM order_totals") == [
        ("keep", "keep")
    ]


def test_dropped_column_is_unknown_lineage(tier: TierMasking) -> None:
    p = _planner(tier)
    assert _how(p, [_f("x", DROPPED, 1, TEXT)], "SELECT x FROM gone") == [("text", "redact")]


def _scanning() -> TierMasking:
    """The fixture's policy with ``unknown_lineage: scan`` (values of unknown origin scanned)."""
    tm = _tier_of(POLICY.replace("unknown_lineage: redact", "unknown_lineage: scan"))
    tm.__dict__["scanner"] = "SCANNER"
    return tm


def test_binary_formats(tier: TierMasking) -> None:
    p = _planner(_scanning())
    fields = [
        _f("ssn", CUSTOMERS, 3, VARCHAR, 1),  # text-like binary: masked in place
        _f("email", CUSTOMERS, 2, CITEXT, 1),
        _f("profile", 0, 0, JSONB, 1),  # jsonb binary: its codec scans the text, keeps JSON
        _f("x", 0, 0, INT4, 1),  # scanned as a number: stays an int4
        _f("tags", 0, 0, TEXT_ARR, 1),  # an array: element by element
        _f("tags", 0, 0, TEXT_ARR, 0),  # the same in text format
        _f("id", CUSTOMERS, 1, INT4, 1),  # kept: binary passes through untouched
        _f("j", 0, 0, JSONB, 0),  # jsonb in text format: the same codec
        _f("d", 0, 0, DATE, 1),  # a scan finds nothing in a date: kept
        _f("born", CUSTOMERS, 5, DATE, 1),  # a null rule
    ]
    # of unknown origin, from no masked table and no code: content-scanned (unknown_lineage)
    unknown = p.statement("SELECT * FROM not_in_the_catalog")
    got = [(d.action, d.how) for d in p.decide(fields, unknown)]
    assert got == [
        ("text", "rule"),
        ("text", "rule"),
        ("typed", "scan"),
        ("typed", "scan"),
        ("typed", "scan"),
        ("typed", "scan"),
        ("keep", "keep"),
        ("typed", "scan"),
        ("keep", "keep"),
        ("null", "null"),
    ]
    codecs = [d.codec.kind if d.codec is not None else None for d in p.decide(fields[:6], unknown)]
    assert codecs == [None, None, "jsonb", "int4", "array", "array"]


def test_profile_column_scanned_as_jsonb_binary(tier: TierMasking) -> None:
    p = _planner(_scanning())
    d = p.decide([_f("profile", 0, 0, JSONB, 1)], p.statement("SELECT profile FROM unseen"))
    assert (d[0].action, d[0].how, d[0].codec.kind, d[0].format) == ("typed", "scan", "jsonb", 1)


def test_row_plan_cached_then_async(tier: TierMasking) -> None:
    cat = FakeCatalog(warm=False)
    p = _planner(tier, cat)
    fields = [_f("ssn", CUSTOMERS, 3, TEXT), _f("x", 0, 0, TEXT), _f("id", CUSTOMERS, 1, INT4)]
    stmt = p.statement("SELECT ssn, now()::text AS x, upper(ssn) AS y, id FROM customers")
    fields.insert(2, _f("y", 0, 0, TEXT))
    assert p.row_plan_cached(fields, stmt) is None
    plan = asyncio.run(p.row_plan(fields, stmt))
    assert cat.resolves == 1
    # x comes from no column: kept although the statement reads ssn; y is computed from ssn:
    # redacted (the redactor is a replace)
    assert plan.columns == [
        ("TEXT", "OP:partial"),
        ("KEEP", None),
        ("TEXT", "OP:replace"),
        ("KEEP", None),
    ]
    # the same result shape again: the same plan object, no catalog call
    assert p.row_plan_cached(fields, stmt) is plan
    # DDL drops facts and plans
    p.note_command_tag(b"ALTER TABLE\x00")
    assert p.row_plan_cached(fields, stmt) is None
    p.note_command_tag(b"SELECT 3")  # not DDL: nothing happens
    assert cat.generation == 1


def test_row_plan_unknown_lineage_uses_the_redactor(tier: TierMasking) -> None:
    tier.__dict__["redactor"] = "REDACTOR"
    p = _planner(tier)
    plan = asyncio.run(
        p.row_plan([_f("x", 0, 0, TEXT)], p.statement("SELECT upper(ssn) FROM customers"))
    )
    assert plan.columns == [("TEXT", "REDACTOR")]


def test_catalog_failure_propagates(tier: TierMasking) -> None:
    class Broken(FakeCatalog):
        async def resolve(self, *args: Any, **kw: Any) -> FakeCatalog:
            raise CatalogError("catalog connection failed: refused")

    p = _planner(tier, Broken(warm=False))
    with pytest.raises(CatalogError):
        asyncio.run(p.row_plan([_f("ssn", CUSTOMERS, 3, TEXT)], p.statement("SELECT 1")))


def test_row_plan_uses_its_lookup_even_when_ddl_invalidates_meanwhile(tier: TierMasking) -> None:
    """Another session's DDL invalidates the shared catalog while this plan's lookup is in
    flight: the lookup's facts still make the plan (one lookup, no retry), but the plan is not
    cached under the new generation."""

    class Racing(FakeCatalog):
        async def resolve(self, *args: Any, **kw: Any) -> FakeCatalog:
            self.resolves += 1
            answer = FakeCatalog()  # what the lookup read
            self.invalidate()  # a concurrent CREATE TEMP TABLE / ALTER elsewhere
            return answer

    cat = Racing(warm=False)
    p = _planner(tier, cat)
    fields = [_f("ssn", CUSTOMERS, 3, TEXT), _f("x", 0, 0, TEXT), _f("id", CUSTOMERS, 1, INT4)]
    stmt = p.statement("SELECT ssn, upper(ssn) AS x, id FROM customers")
    plan = asyncio.run(p.row_plan(fields, stmt))
    assert cat.resolves == 1
    assert plan.columns == [("TEXT", "OP:partial"), ("TEXT", "OP:replace"), ("KEEP", None)]
    assert p.row_plan_cached(fields, stmt) is None  # not cached: the facts may be stale now
    # the next plan asks again (and is served again)
    again = asyncio.run(p.row_plan(fields, stmt))
    assert cat.resolves == 2 and again.columns == plan.columns


def test_row_plan_fails_closed_when_a_lookup_comes_back_incomplete(tier: TierMasking) -> None:
    class Incomplete(FakeCatalog):
        async def resolve(self, *args: Any, **kw: Any) -> FakeCatalog:
            self.resolves += 1
            return FakeCatalog(warm=False)

    cat = Incomplete(warm=False)
    p = _planner(tier, cat)
    with pytest.raises(CatalogError, match="incomplete"):
        asyncio.run(p.row_plan([_f("ssn", CUSTOMERS, 3, TEXT)], p.statement("SELECT ssn FROM c")))
    assert cat.resolves == 1  # no retry loop


@pytest.mark.parametrize(
    ("tag", "scope"),
    [
        (b"CREATE TABLE\x00", Scope.NAMES),
        (b"ALTER TABLE\x00", Scope.ALL),
        (b"CREATE INDEX\x00", Scope.NAMES),  # unique indexes are relation facts
        (b"ANALYZE\x00", None),
        (b"SELECT 1\x00", None),
    ],
)
def test_note_command_tag_invalidates_by_scope(
    tier: TierMasking, tag: bytes, scope: Scope | None
) -> None:
    cat = FakeCatalog()
    p = _planner(tier, cat)
    fields = [_f("ssn", CUSTOMERS, 3, TEXT)]
    stmt = p.statement("SELECT ssn FROM customers")
    plan = p.row_plan_cached(fields, stmt)
    assert plan is not None
    p.note_command_tag(tag)
    if scope is None:
        assert cat.invalidated == []
        assert p.row_plan_cached(fields, stmt) is plan  # this session's plan kept
    else:
        assert cat.invalidated == [scope]
        assert not p._plans


def test_take_tallies_counts_only(tier: TierMasking) -> None:
    p = _planner(tier)
    fields = [_f("ssn", CUSTOMERS, 3, TEXT), _f("body", NOTES, 1, TEXT), _f("body", NOTES, 1, TEXT)]
    plan = p.row_plan_cached(fields, p.statement("SELECT ssn, body, body FROM customers, notes"))
    assert plan is not None
    plan.counts = [{"COLUMN": 3}, {"EMAIL": 2, "PHONE": 0}, {"US_SSN": 1}]
    assert p.take_tallies(plan, fields) == {
        "ssn": {"COLUMN": 3},
        "body": {"EMAIL": 2},
        "body#2": {"US_SSN": 1},
    }
    assert p.take_tallies(plan, fields) == {}


def test_copy_table_plan(tier: TierMasking) -> None:
    cat = FakeCatalog()
    cat.describe_result = [_f("id", CUSTOMERS, 1, INT4), _f("ssn", CUSTOMERS, 3, TEXT)]
    p = _planner(tier, cat)
    stmt = p.statement("COPY public.customers (id, ssn) TO STDOUT WITH (FORMAT csv, HEADER)")
    plan = asyncio.run(p.copy_plan(stmt, 0, [0, 0]))
    assert cat.described == ['SELECT "id", "ssn" FROM "public"."customers"']
    assert plan.format == "csv"
    assert plan.columns == [("KEEP", None), ("TEXT", "OP:partial")]
    assert plan.options["header"] is True


def test_copy_binary_old_spelling(tier: TierMasking) -> None:
    cat = FakeCatalog()
    cat.describe_result = [_f("id", CUSTOMERS, 1, INT4), _f("born", CUSTOMERS, 5, DATE)]
    p = _planner(tier, cat)
    plan = asyncio.run(p.copy_plan(p.statement("COPY BINARY customers TO STDOUT"), 1, []))
    assert plan.format == "binary"
    assert plan.columns == [("KEEP", None), ("NULL", None)]
    assert cat.described == ['SELECT * FROM "customers"']


def test_copy_query_plan(tier: TierMasking) -> None:
    cat = FakeCatalog()
    cat.describe_result = [_f("ssn", CUSTOMERS, 3, TEXT), _f("upper", 0, 0, TEXT)]
    p = _planner(tier, cat)
    tier.__dict__["redactor"] = "REDACTOR"
    stmt = p.statement("COPY (SELECT ssn, upper(email) FROM customers) TO STDOUT (DELIMITER '|')")
    plan = asyncio.run(p.copy_plan(stmt, 0, []))
    assert cat.described == ["SELECT ssn, upper(email) FROM customers"]
    assert plan.format == "text" and plan.options["delimiter"] == "|"
    assert plan.columns == [("TEXT", "OP:partial"), ("TEXT", "REDACTOR")]


def test_copy_unqualified_table_matches_rules_in_any_schema(tier: TierMasking) -> None:
    # the side connection may resolve an unqualified name in another schema than the session
    cat = FakeCatalog()
    cat._cache["columns"][(999, 1)] = ColumnInfo("app2", "customers", "ssn", "r")
    cat.describe_result = [_f("ssn", 999, 1, TEXT)]
    p = _planner(tier, cat)
    plan = asyncio.run(p.copy_plan(p.statement("COPY customers (ssn) TO STDOUT"), 0, []))
    assert plan.columns == [("TEXT", "OP:partial")]


@pytest.mark.parametrize(
    "sql",
    [
        "COPY customers TO '/tmp/x'",
        "COPY customers FROM STDIN",
        "SELECT 1",
        "COPY (SELECT 1 FROM",
    ],
)
def test_copy_refusals(tier: TierMasking, sql: str) -> None:
    p = _planner(tier)
    with pytest.raises(MaskRefusal) as err:
        asyncio.run(p.copy_plan(p.statement(sql), 0, []))
    assert err.value.sqlstate == "0A000"


def test_copy_not_described_is_planned_from_the_servers_columns(tier: TierMasking) -> None:
    """A COPY the side connection cannot describe (a table of the client's open transaction,
    one it has locked): no plan ahead (``None``, never a refusal); from the CopyOutResponse's
    column count and the statement's lineage, a column no rule masks is kept, a masked one is
    NULL (its type is unknown), and :attr:`unseen` names the relation for the notice."""
    cat = FakeCatalog()
    cat.describe_result = CatalogError("cannot describe the query: 55P03 lock not available")
    p = _planner(tier, cat)
    stmt = p.statement("COPY (SELECT id, ssn, full_name FROM customers) TO STDOUT")
    assert asyncio.run(p.copy_plan(stmt, 0, [])) is None
    plan = asyncio.run(p.copy_plan_undescribed(stmt, 0, [0, 0, 0]))
    assert plan.format == "text"
    assert plan.columns == [("KEEP", None), ("NULL", None), ("KEEP", None)]
    assert p.unseen == {"relation customers"}
    # another column count than the statement shows: every column of unknown lineage
    plan = asyncio.run(p.copy_plan_undescribed(stmt, 1, [1, 1]))
    assert plan.format == "binary"
    assert [c[0] for c in plan.columns] == ["NULL", "NULL"]


def test_copy_plan_still_fails_when_the_catalog_is_unreachable(tier: TierMasking) -> None:
    cat = FakeCatalog()
    cat.describe_result = CatalogError("catalog connection failed: refused")
    p = _planner(tier, cat)
    with pytest.raises(CatalogError):
        asyncio.run(p.copy_plan(p.statement("COPY customers TO STDOUT"), 0, []))


def test_parse_row_description() -> None:
    import struct

    body = struct.pack("!h", 2)
    for name, table, att, typ, fmt in (("id", 100, 1, 23, 0), ("ssn", 100, 3, 25, 1)):
        body += name.encode() + b"\0" + struct.pack("!IhIhih", table, att, typ, 4, -1, fmt)
    assert parse_row_description(body) == [
        Field("id", 100, 1, 23, 0),
        Field("ssn", 100, 3, 25, 1),
    ]
    with pytest.raises(ValueError):
        parse_row_description(body[:-3])


def test_real_engine_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decisions build real veilgate_native plans (kinds, maskers and options accepted)."""
    native = pytest.importorskip("veilgate_native")
    if not hasattr(native, "RowPlan"):  # pragma: no cover - only while the engine is built
        pytest.skip("veilgate_native has no RowPlan yet")
    monkeypatch.setenv("VG_TEST_PLANNER_KEY", "k" * 32)
    text = POLICY.replace("masking:\n", "masking:\n  hash_key_env: VG_TEST_PLANNER_KEY\n").replace(
        'op: replace, value: "<EMAIL>"', "op: hash"
    )
    policy = load_policy_text(text, "policy.yaml")
    assert policy.masking is not None
    tier = policy.masking.for_tier("ro")
    assert tier is not None
    p = _planner(tier)
    fields = [
        _f("id", CUSTOMERS, 1, INT4, 1),
        _f("email", CUSTOMERS, 2, TEXT),
        _f("ssn", CUSTOMERS, 3, VARCHAR, 1),
        _f("born", CUSTOMERS, 5, DATE, 1),
        _f("x", 0, 0, JSONB, 1),
        _f("y", 0, 0, TEXT),
    ]
    plan = p.row_plan_cached(fields, p.statement("SELECT upper(ssn) AS y FROM customers"))
    assert isinstance(plan, native.RowPlan)
    assert len(plan) == len(fields) and not plan.is_passthrough
    assert p.take_tallies(plan, fields) == {}
    keep_only = p.row_plan_cached([fields[0]], p.statement("SELECT id FROM customers"))
    assert keep_only is not None and keep_only.is_passthrough

    cat = FakeCatalog()
    cat.describe_result = [_f("ssn", CUSTOMERS, 3, TEXT), _f("id", CUSTOMERS, 1, INT4)]
    p = _planner(tier, cat)
    for sql, fmt in (
        ("COPY customers (ssn, id) TO STDOUT (FORMAT csv, HEADER, DELIMITER ';')", "csv"),
        ("COPY customers (ssn, id) TO STDOUT", "text"),
        ("COPY customers (ssn, id) TO STDOUT WITH BINARY", "binary"),
    ):
        cplan = asyncio.run(p.copy_plan(p.statement(sql), 0, []))
        assert isinstance(cplan, native.CopyPlan) and cplan.format == fmt


# --- tables the session created without a schema -------------------------------------------


def test_creation_schemas_follow_the_search_path() -> None:
    from veilgate.masking.overlay import ANY_SCHEMA, creation_schemas

    assert creation_schemas((("public",),), False, "u") == ("public",)
    assert creation_schemas((("$user", "public"), ("app",)), False, "u") == ("u", "public", "app")
    assert creation_schemas((("public",),), True, "u") == ("public", ANY_SCHEMA)
    assert creation_schemas((), False, "u") == (ANY_SCHEMA,)


def test_a_table_created_unqualified_is_in_each_schema_of_the_path() -> None:
    from veilgate.masking.overlay import ANY_SCHEMA, SessionRelations

    rels = SessionRelations()
    rels.add((RelationInfo(0, "", "t", "r", ("id", "ssn")),), ("app", "public"))
    assert {r.schema for r in rels.matching((None, "t"))} == {"app", "public"}
    assert [r.schema for r in rels.matching(("public", "t"))] == ["public"]
    assert rels.matching(("other", "t")) == ()
    # a later CREATE in one schema replaces that schema's definition only
    rels.add((RelationInfo(0, "public", "t", "r", ("id",)),))
    by_schema = {r.schema: r.columns for r in rels.matching((None, "t"))}
    assert by_schema == {"app": ("id", "ssn"), "public": ("id",)}
    rels.add((RelationInfo(0, "", "u", "r", ("x",)),), (ANY_SCHEMA,))
    assert [r.schema for r in rels.matching(("anything", "u"))] == [ANY_SCHEMA]


def test_rules_of_a_table_whose_schema_is_not_certain(tier: TierMasking) -> None:
    p = _planner(tier)
    # created unqualified: the rule of every schema it may be in
    p.creation_schemas = lambda: ("app", "public")
    rules = p.base_rules(Col("", "customers", "ssn"))
    assert [r.op.kind if r and r.op else None for r in rules] == [None, "partial"]
    # read: the most masking of them
    rule = p.base_rule(Col("", "customers", "ssn"))
    assert rule is not None and rule.masks
    # any schema (a path computed at run time): read -> any matching rule; written -> only a
    # rule whose schema part matches every schema (none here)
    assert p.masks(Col("*", "customers", "ssn"))
    p.creation_schemas = lambda: ("*",)
    assert p.base_rules(Col("", "customers", "ssn")) == [None]


def test_copy_of_a_table_the_session_created_is_described_only_when_it_matches(
    tier: TierMasking,
) -> None:
    """The session created ``customers`` anew in its open transaction (dropped the committed
    one first): the side connection describes the committed table.  When the columns it
    describes are not the session's table's, the COPY is planned from the server's columns
    (None: no plan ahead) instead of from another table's description; when they are, the
    described plan (with its types) is used."""
    from veilgate.masking.resolve import RelationFacts

    cat = FakeCatalog()
    cat.describe_result = [_f("id", CUSTOMERS, 1, INT4), _f("email", CUSTOMERS, 2, TEXT)]
    p = _planner(tier, cat)
    p.relations.add((RelationFacts(0, "public", "customers", "r", ("email", "id")),))
    stmt = p.statement("COPY public.customers TO STDOUT")
    assert asyncio.run(p.copy_plan(stmt, 0, [])) is None
    p.relations.add((RelationFacts(0, "public", "customers", "r", ("id", "email")),))
    assert asyncio.run(p.copy_plan(stmt, 0, [])) is not None
    # a COPY of a query naming it: always from the server's columns
    q = p.statement("COPY (SELECT id FROM public.customers) TO STDOUT")
    assert asyncio.run(p.copy_plan(q, 0, [])) is None
