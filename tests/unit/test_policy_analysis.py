"""SQL analysis details: relations, functions, CTE scoping, constructs, statement texts."""

from __future__ import annotations

import pytest

from veilgate.policy.analysis import (
    CLASSES,
    CONSTRUCTS,
    StatementAnalysis,
    analyze,
    resolve_executes,
    rewrite_nonstandard_strings,
)


def one(sql: str, *, scs: bool = True) -> StatementAnalysis:
    msg = analyze(sql, standard_conforming_strings=scs)
    assert not msg.unparseable, msg.error
    (st,) = msg.statements
    return st


def test_relations_read_and_written() -> None:
    st = one(
        "insert into app.t (a) select x.a from s.x join y on true "
        "where exists (select 1 from z where z.id = x.id)"
    )
    assert st.writes == {("app", "t")}
    assert st.reads == {("s", "x"), (None, "y"), (None, "z")}
    assert st.classes == {"write"}
    st = one("update t set a = (select max(a) from u) from v where t.id = v.id")
    assert st.writes == {(None, "t")} and st.reads == {(None, "u"), (None, "v")}
    st = one("delete from t using u where t.id = u.id")
    assert st.writes == {(None, "t")} and st.reads == {(None, "u")}
    st = one("merge into t using s on t.id = s.id when matched then delete")
    assert st.writes == {(None, "t")} and st.reads == {(None, "s")}


def test_cte_names_are_excluded_with_scoping() -> None:
    assert one("with c as (select * from t) select * from c").reads == {(None, "t")}
    # A CTE name only hides tables inside its own statement.
    st = one("select * from (with c as (select 1) select * from c) a, c")
    assert st.reads == {(None, "c")}
    # Non-recursive: a CTE's own body sees the real table of the same name.
    assert one("with t as (select * from t) select * from t").reads == {(None, "t")}
    # Recursive: it sees itself.
    st = one("with recursive r as (select 1 union all select 1 from r) select * from r")
    assert st.reads == frozenset()
    # Later CTEs see earlier ones, a schema-qualified name is never a CTE.
    st = one("with a as (select 1), b as (select * from a) select * from b, public.a")
    assert st.reads == {("public", "a")}


def test_functions_everywhere() -> None:
    st = one(
        "select f1(x) from g1() as g, lateral (select s.f2(1)) q "
        "where x > (select f3()) order by f4(x)"
    )
    assert st.functions == {(None, "f1"), (None, "g1"), ("s", "f2"), (None, "f3"), (None, "f4")}
    st = one("call p.proc(f5())")
    assert st.functions == {("p", "proc"), (None, "f5")}
    assert st.classes == {"call"}


def test_write_in_cte_and_explain() -> None:
    st = one("with d as (delete from t where id = 1 returning *) select * from d")
    assert st.classes == {"read", "write"}
    assert st.constructs == {"data_modifying_cte"}
    assert st.statement_class == "write"
    st = one("explain analyze update t set a = 1")
    assert st.classes == {"write"}
    assert st.constructs == {"explain_analyze", "update_without_where"}
    st = one("explain update t set a = 1")
    assert st.classes == {"utility"}
    assert st.constructs == frozenset()
    assert st.reads == {(None, "t")} and st.writes == frozenset()
    st = one("explain select pg_terminate_backend(1)")
    assert st.constructs == {"terminate_backend"}


def test_prepare_execute() -> None:
    msg = analyze("prepare p as delete from t where id = $1; execute p(1)")
    prep, exe = msg.statements
    assert prep.prepares == "p" and prep.classes == {"write"}
    assert exe.executes == ("p",) and exe.classes == {"write"} and not exe.unresolved
    assert not msg.needs_session
    msg = analyze("execute q")
    assert msg.needs_session and msg.statements[0].unresolved
    assert "unknown_prepared_statement" in msg.statements[0].constructs
    resolved = resolve_executes(msg, {"q": prep})
    assert resolved.statements[0].classes == {"write"}
    assert not resolved.statements[0].unresolved
    assert resolved.statements[0].constructs == frozenset()
    st = one("deallocate all")
    assert st.deallocates == "*" and st.classes == {"prepare"}


@pytest.mark.parametrize(
    ("sql", "cls", "constructs"),
    [
        ("set role x", "role_change", {"set_role"}),
        ("reset role", "role_change", {"set_role"}),
        ("set session authorization x", "role_change", {"set_session_authorization"}),
        ("set search_path = a, b", "session", {"search_path_change"}),
        ("set session_replication_role = replica", "session", {"dangerous_guc"}),
        ("set default_transaction_read_only = 0", "session", {"dangerous_guc"}),
        ("set default_transaction_read_only = 1", "session", set()),
        ("set transaction read write", "transaction", {"read_write_transaction"}),
        ("set transaction read only", "transaction", set()),
        ("begin read write", "transaction", {"read_write_transaction"}),
        ("commit prepared 'x'", "transaction", {"prepared_transaction"}),
        ("copy t to program 'x'", "copy_out", {"copy_program"}),
        ("copy t from '/f'", "copy_in", {"copy_server_file"}),
        ("copy t from stdin", "copy_in", set()),
        ("do $$ begin end $$", "do", {"do_block"}),
        (
            "create function f() returns int security definer language sql as 'select 1'",
            "ddl",
            {"create_function", "security_definer_function"},
        ),
        (
            "create function f() returns int language sql set role = x as 'select 1'",
            "ddl",
            {"create_function", "set_role"},
        ),
        ("alter system set x = 1", "ddl", {"alter_system"}),
        ("drop table t", "ddl", {"drop"}),
        ("alter table t drop column c", "ddl", {"drop"}),
        ("truncate t", "write", {"truncate"}),
        ("lock t", "utility", {"lock_table"}),
        ("load 'x'", "utility", {"load_library"}),
        ("notify c", "utility", {"notify"}),
        ("vacuum", "maintenance", set()),
        ("grant r to u", "dcl", set()),
        ("create extension postgres_fdw", "ddl", {"create_extension", "dblink"}),
        ("create subscription s connection 'x' publication p", "ddl", {"dblink"}),
        ("select * from t for update", "read", {"locking_read"}),
        ("select lo_creat(-1)", "read", {"large_object"}),
        ("select pg_ls_waldir()", "read", {"file_functions"}),
        ("select cursor_to_xml('c', 1, false, false, '')", "read", {"dynamic_sql"}),
        ("discard all", "session", set()),
        ("checkpoint", "maintenance", set()),
        ("create table x as select 1", "ddl", set()),
        ("security label on table t is 'x'", "ddl", set()),
    ],
)
def test_classes_and_constructs(sql: str, cls: str, constructs: set[str]) -> None:
    st = one(sql)
    assert st.statement_class == cls, st.classes
    assert st.constructs == constructs, st.details
    assert set(st.classes) <= set(CLASSES)
    assert set(st.constructs) <= set(CONSTRUCTS)


def test_where_detection() -> None:
    assert one("delete from t where id = 1").constructs == frozenset()
    assert one("delete from t where current of c").constructs == frozenset()
    # an uncorrelated subquery does not depend on the row: all rows or none
    assert one("delete from t where exists (select 1 from u)").constructs == {
        "delete_without_where"
    }
    assert one("delete from t where exists (select 1 from u where u.a = t.a)").constructs == (
        frozenset()
    )
    assert one("delete from t where 1 = 1").constructs == {"delete_without_where"}
    assert one("update t set a = 1 where now() > '2020-01-01'").constructs == {
        "update_without_where"
    }


def test_statement_texts_and_fingerprints() -> None:
    msg = analyze("select 1 ;\n-- c\nSELECT  'é' from t ; select 2")
    assert [s.text for s in msg.statements] == ["select 1", "SELECT  'é' from t", "select 2"]
    a, b, c = msg.statements
    assert a.fingerprint == c.fingerprint != b.fingerprint
    assert msg.fingerprint == analyze("select 3; select 'x' from t; select 4").fingerprint


def test_unparseable() -> None:
    msg = analyze("select from from")
    assert msg.unparseable and msg.statements == () and "syntax error" in (msg.error or "")
    assert msg.fingerprint.startswith("raw:")
    assert analyze("select U&'\\0041'", standard_conforming_strings=False).unparseable


@pytest.mark.parametrize(
    ("sql", "rewritten"),
    [
        ("select 'a\\'b'", "select E'a\\'b'"),
        ("select e'x', E'y'", "select e'x', E'y'"),
        ("select n'x'", "select nchar E'x'"),
        ("select $$'$$, $t$'$t$", "select $$'$$, $t$'$t$"),
        ('select "\'" from t', 'select "\'" from t'),
        ("select 1 -- '\n", "select 1 -- '\n"),
        ("select /* ' /* ' */ ' */ 1", "select /* ' /* ' */ ' */ 1"),
        ("select b'01', x'1f'", "select b'01', x'1f'"),
        ("select a$b, $1, 'q'", "select a$b, $1, E'q'"),
        ('select U&"x"', 'select U&"x"'),
        ("select 'a'\n'b'", "select E'a'\n'b'"),
        ("select date'2020-01-01'", "select date E'2020-01-01'"),
        ("select 1'x'", "select 1 E'x'"),
    ],
)
def test_rewrite_nonstandard_strings(sql: str, rewritten: str) -> None:
    assert rewrite_nonstandard_strings(sql) == rewritten
