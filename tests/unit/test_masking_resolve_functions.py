# ruff: noqa: S608 (SQL statements)
"""SQL-language functions resolved through their bodies (the resolver on its own, fake catalog):
parameters bound to the arguments' lineage, overloads and namesakes in other schemas unioned,
SQL-standard bodies, set-returning functions in FROM column by column, and everything that
cannot be analysed (another language, SECURITY DEFINER, too deep) of unknown origin."""

from __future__ import annotations

from veilgate.masking.overlay import OverlayFacts, SessionRelations, functions_defined
from veilgate.masking.resolve import (
    SQL_BODY,
    FunctionInfo,
    Lineage,
    RelationFacts,
    parse_tree,
    resolve,
)

CUSTOMERS = RelationFacts(1, "public", "customers", "r", ("id", "email", "ssn", "label"))
SSN = "public.customers.ssn"
EMAIL = "public.customers.email"
ID = "public.customers.id"
LABEL = "public.customers.label"


def sql_fn(
    name: str,
    body: str | None,
    nargs: int = 0,
    argnames: tuple[str, ...] = (),
    columns: tuple[str, ...] | None = None,
    schema: str = "app",
    variadic: bool = False,
) -> FunctionInfo:
    return FunctionInfo(
        schema, name, nargs, 0, variadic, columns, False, body, argnames or ("",) * nargs
    )


class Facts:
    def __init__(self, *functions: FunctionInfo) -> None:
        self.funcs: dict[str, list[FunctionInfo]] = {}
        for f in functions:
            self.funcs.setdefault(f.name, []).append(f)

    def relations_named(self, name: tuple[str | None, str]) -> tuple[RelationFacts, ...] | None:
        return (CUSTOMERS,) if name[1] == "customers" and name[0] in (None, "public") else ()

    def functions_named(self, name: str) -> tuple[FunctionInfo, ...] | None:
        if name in self.funcs:
            return tuple(self.funcs[name])
        if name.startswith("\x00op:"):
            return ()
        return (FunctionInfo("pg_catalog", name, 1, 0, True, None),)

    def namesake(self, key: str) -> bool | None:
        return False


def out(sql: str, facts: object) -> list[tuple[set[str], str]]:
    r = resolve(parse_tree(sql), facts)  # type: ignore[arg-type]
    assert r.outputs is not None
    return [(_cols(o.lineage), _how(o.lineage)) for o in r.outputs]


def _cols(lin: Lineage) -> set[str]:
    return {c.label() for c in lin.cols}


def _how(lin: Lineage) -> str:
    return "opaque" if lin.opaque else ("exact" if lin.exact else "derived")


def test_a_function_returning_a_masked_column_under_another_name() -> None:
    f = Facts(sql_fn("nice", "select ssn as harmless from customers"))
    assert out("select nice()", f) == [({SSN}, "derived")]
    assert out("select x from nice() as x", f) == [({SSN}, "derived")]


def test_parameters_are_bound_to_the_arguments() -> None:
    f = Facts(
        sql_fn("same", "select $1", 1),
        sql_fn("named", "select upper(p)", 1, ("p",)),
        sql_fn("qual", "select qual.p || 'x'", 1, ("p",)),
        sql_fn("konst", "select 'k'::text", 1),
    )
    assert out("select same(email) from customers", f) == [({EMAIL}, "derived")]
    assert out("select named(label) from customers", f) == [({LABEL}, "derived")]
    assert out("select qual(ssn) from customers", f) == [({SSN}, "derived")]
    # computed from an unmasked column only: no masked lineage, nothing unknown
    assert out("select konst(id) from customers", f) == [({ID}, "derived")]
    assert out("select same(1)", f) == [(set(), "derived")]


def test_a_column_wins_over_a_parameter_of_the_same_name() -> None:
    f = Facts(sql_fn("pick", "select ssn from customers where id = ssn", 1, ("ssn",)))
    assert out("select pick('a')", f) == [({SSN}, "derived")]


def test_set_returning_sql_functions_in_from_column_by_column() -> None:
    f = Facts(sql_fn("pairs", "select id, ssn from customers", 0, (), ("a", "b")))
    assert out("select a, b from pairs()", f) == [({ID}, "derived"), ({SSN}, "derived")]
    assert out("select * from pairs() p(x, y)", f) == [({ID}, "derived"), ({SSN}, "derived")]


def test_sql_standard_bodies() -> None:
    f = Facts(
        sql_fn("ret", SQL_BODY + "RETURN upper($1)", 1),
        sql_fn(
            "atomic",
            SQL_BODY + "BEGIN ATOMIC SELECT 1; SELECT public.customers.email"
            " FROM public.customers; END",
        ),
    )
    assert out("select ret(ssn) from customers", f) == [({SSN}, "derived")]
    assert out("select atomic()", f) == [({EMAIL}, "derived")]


def test_overloads_and_namesakes_are_unioned() -> None:
    f = Facts(
        sql_fn("ov", "select ssn from customers", 1),
        sql_fn("ov", "select 'plain'::text", 1, schema="other"),
        FunctionInfo("pg_catalog", "ov", 1, 0, False, None),
    )
    assert out("select ov(1)", f) == [({SSN}, "derived")]
    # a schema-qualified call runs that schema's function only
    assert out("select other.ov(1)", f) == [(set(), "derived")]


def test_what_cannot_be_analysed_is_of_unknown_origin() -> None:
    f = Facts(
        sql_fn("plpg", None),
        sql_fn("bad", "select from where"),
        sql_fn("rec", "select rec()"),
        sql_fn("mixed", "select 1", 1),
        sql_fn("mixed", None, 1, schema="x"),
    )
    for call in ("plpg()", "bad()", "rec()", "mixed(1)", "nosuch.fn()"):
        assert out(f"select {call}", f)[0][1] == "opaque", call


def test_a_function_the_session_redefined_is_of_unknown_origin() -> None:
    base = Facts(sql_fn("nice", "select 'x'::text"))
    own = SessionRelations()
    facts = OverlayFacts(base, own)
    assert out("select nice()", facts) == [(set(), "derived")]
    replace = "create or replace function nice() returns text language sql as 'select ssn'"
    own.define_functions(functions_defined(parse_tree(replace)))
    assert out("select nice()", facts)[0][1] == "opaque"
    other = SessionRelations()
    other.define_functions(None)  # DO / CALL: anything may be defined
    assert out("select nice()", OverlayFacts(base, other))[0][1] == "opaque"


def test_functions_defined_names_every_routine_a_statement_touches() -> None:
    assert functions_defined(parse_tree("alter function a.f(int) rename to g")) == {"f", "g"}
    assert functions_defined(parse_tree("drop function f, h(text)")) == {"f", "h"}
    assert functions_defined(parse_tree("alter function f() set schema s")) == {"f"}
    assert functions_defined(parse_tree("create procedure p() language sql as ''")) == {"p"}
    assert functions_defined(None) is None


class OperatorFacts(Facts):
    """A user ``||`` exists outside pg_catalog (``o:||`` True); ``x:`` keys say which operand
    types only pg_catalog has an exact ``||`` for."""

    def __init__(self, certain: set[str]) -> None:
        super().__init__()
        self.certain = certain
        self.asked: list[str] = []

    def relations_named(self, name: tuple[str | None, str]) -> tuple[RelationFacts, ...] | None:
        typed = RelationFacts(
            1, "public", "customers", "r", CUSTOMERS.columns, types=("int4", "text", "text", "")
        )
        return (typed,) if name[1] == "customers" and name[0] in (None, "public") else ()

    def namesake(self, key: str) -> bool | None:
        self.asked.append(key)
        if key.startswith("x:"):
            return key[2:] in self.certain
        return key.startswith(("o:", "e:o:"))


def test_operators_resolved_by_exact_operand_types() -> None:
    facts = OperatorFacts({"||\x1ftext\x1ftext"})
    r = resolve(parse_tree("select ssn || '' as s, email || 'x'::text as e from customers"), facts)
    assert r.uses == ()  # the built-in's harmless positions: no refusal
    assert r.outputs is not None and not any(o.lineage.opaque for o in r.outputs)
    # a column of a type that is not a pg_catalog base type: not certain, conservative
    r = resolve(parse_tree("select label || '' from customers"), facts)
    assert r.outputs is not None and r.outputs[0].lineage.opaque
    assert r.uses and r.uses[0].kind == "compute"
    # an operator of exactly these types exists outside pg_catalog: not certain
    r = resolve(parse_tree("select ssn || 'a' from customers"), OperatorFacts(set()))
    assert r.outputs is not None and r.outputs[0].lineage.opaque


def test_a_user_operator_is_judged_as_the_function_it_runs() -> None:
    facts = OperatorFacts(set())  # a user text || text exists: the built-in is not certain
    facts.funcs = {
        "\x00op:||": [FunctionInfo("app", "leak", 2, 0, False, None)],
        "leak": [sql_fn("leak", "select ssn from customers", 2)],
    }
    r = resolve(parse_tree("select label || 'x' from customers"), facts)
    assert r.outputs is not None
    assert out_of(r) == [({SSN, LABEL}, "derived")]
    facts.funcs["leak"] = [sql_fn("leak", None, 2)]  # plpgsql: unknown
    r = resolve(parse_tree("select label || 'x' from customers"), facts)
    assert r.outputs is not None and r.outputs[0].lineage.opaque and r.opaque_code


def out_of(r: object) -> list[tuple[set[str], str]]:
    outs = getattr(r, "outputs", None) or ()
    return [(_cols(o.lineage), _how(o.lineage)) for o in outs]
