"""Guardrails judge what the server will do (issue 10 item 5), without a server.

Each test names the promise it checks.  The end-to-end versions (psql, psycopg, asyncpg, simple
and extended protocol, with the effect looked for on the server) are in tests/adversarial.
"""

from __future__ import annotations

import pytest

from veilgate.identity.base import Principal
from veilgate.policy.analysis import analyze
from veilgate.policy.engine import PolicyEngine, SessionContext
from veilgate.policy.loader import PolicyError, load_policy_text
from veilgate.policy.names import SearchPath

AGENT = Principal(provider="entra", subject="a", roles=frozenset({"agent"}))
ADMIN = Principal(provider="entra", subject="b", roles=frozenset({"admin"}))

POLICY = """
version: 1
tiers:
  - name: agent
    match: {roles: [agent]}
    pin_search_path: true
    search_path: [public]
    settings:
      statement_timeout: {min: 1s, max: 10min}
      work_mem: {max: 64MB}
      application_name: any
      datestyle: {values: ["ISO, MDY"]}
    rules:
      - id: no-destruction
        action: deny
        message: m
        constructs: [delete_without_where, update_without_where, truncate, drop]
      - id: dml
        action: allow
        message: m
        classes: [read, write, merge, session, do]
        tables: ["public.*"]
        constructs: [do_block, set_config]
  - name: admin
    match: {roles: [admin]}
    default: allow
    search_path: [public]
    rules:
      - id: approve-destructive
        action: approve
        message: needs approval
        constructs: [delete_without_where, update_without_where, drop, truncate]
masking:
  apply_to: [agent]
  columns:
    - {column: "public.t.secret", op: redact}
"""


@pytest.fixture()
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY))


def decide(engine: PolicyEngine, sql: str, who: Principal = AGENT, **kw: object) -> str:
    return engine.decide(who, sql, session=SessionContext(**kw)).action  # type: ignore[arg-type]


def constructs(sql: str) -> frozenset[str]:
    msg = analyze(sql)
    assert not msg.unparseable, msg.error
    return frozenset().union(*(s.constructs for s in msg.statements))


# --- constant-true filters count as no filter ------------------------------------------------

UNFILTERED = [
    "delete from t",
    "delete from t where true",
    "delete from t where 1 = 1",
    "delete from t where 1 = 1 and true",
    "delete from t where not false",
    "delete from t where id = id",
    "delete from t where t.id = t.id",
    "delete from t where id is not distinct from id",
    "delete from t where id between id and id",
    "delete from t where id > 5 or 1 = 1",
    "delete from t where id > 5 or true",
    "delete from t where (id > 5) or not (1 <> 1)",
    "delete from t where 't'::boolean",
    "delete from t where 'yes'::bool and 2 > 1",
    "delete from t where 1::boolean",
    "delete from t where exists (select 1)",
    "delete from t where exists (select 1 where true)",
    "delete from t where exists (select 1 from u)",
    "delete from t where (select count(*) from u) >= 0",
    "delete from t where exists (select 1 from u as t where t.id = t.id)",
    "delete from t where now() > '2000-01-01'",
    "delete from t where $1",
    "delete from t where case when true then true end",
    "delete from t where coalesce(null, true)",
    "delete from t where null is null",
    "delete from t where (1 = 1) is true",
    "delete from t where 1 in (1, 2)",
    "delete from t using u where u.flag",
    "delete from t as x where x.id = x.id",
    "update t set a = 1",
    "update t set a = 1 where a = a or a > 1",
    "update t set a = 1 from u where u.a = 1",
    "with d as (delete from t where 1 = 1 returning *) select * from d",
    "merge into t using s on true when matched then delete",
    "merge into t using s on 1 = 1 when matched then update set a = 1",
    "merge into t using s on s.id = s.id when matched then delete",
    "merge into t using s on t.id = s.id or true when matched then delete",
    "merge into t using s on false when not matched by source then delete",
]
FILTERED = [
    "delete from t where id = 1",
    "delete from t where false",
    "delete from t where 1 = 0",
    "delete from t where null",
    "delete from t where not true",
    "delete from t where id > 5 and true",
    "delete from t where id <> id",
    "delete from t where current of c",
    "delete from t where exists (select 1 from u where u.a = t.a)",
    "delete from t where id in (select a from u)",
    "delete from t where exists (select 1 where false)",
    "delete from t as x using u where x.a = u.a",
    "update t set a = 1 where a > 3 and 1 = 1",
    "update t set a = 1 from u where t.a = u.a",
    "merge into t using s on t.id = s.id when matched then delete",
    "merge into t using s on true when not matched then insert values (1)",
    "merge into t using s on t.id = s.id when not matched by source then delete",
]


@pytest.mark.parametrize("sql", UNFILTERED)
def test_constant_true_filters_count_as_no_filter(sql: str) -> None:
    """Promise: a DELETE / UPDATE / MERGE whose filter is true for every row (or independent of
    the row) is judged as touching every row."""
    got = constructs(sql)
    assert got & {"delete_without_where", "update_without_where"}, (sql, got)


@pytest.mark.parametrize("sql", FILTERED)
def test_real_and_constant_false_filters_are_filters(sql: str) -> None:
    """Promise: a filter that depends on the row, or selects nothing, is a filter."""
    got = constructs(sql)
    assert not got & {"delete_without_where", "update_without_where"}, (sql, got)


def test_filter_decisions_are_not_shared_across_constants(engine: PolicyEngine) -> None:
    """Promise: the literal-normalised cache never lets WHERE 1 = 0 speak for WHERE 1 = 1."""
    assert decide(engine, "delete from t where 1 = 0") == "allow"
    assert decide(engine, "delete from t where 1 = 1") == "deny"
    assert decide(engine, "delete from t where 2 = 1") == "allow"
    assert decide(engine, "delete from t where 2 = 2") == "deny"
    assert decide(engine, "delete from t where 'f'::boolean") == "allow"
    assert decide(engine, "delete from t where 't'::boolean") == "deny"


def test_merge_is_its_own_class() -> None:
    msg = analyze("merge into t using s on t.id = s.id when matched then update set a = s.a")
    assert msg.statements[0].classes == {"merge"}
    assert msg.statements[0].writes == {(None, "t")}


def test_approve_rules_see_through_hidden_shapes(engine: PolicyEngine) -> None:
    """Promise: an approval rule cannot be dodged by hiding the statement."""
    for sql in [
        "delete from t where 1 = 1",
        "do $$ begin execute 'drop table t'; end $$",
        "select query_to_xml('delete from t returning 1', true, false, '')",
        "merge into t using s on true when matched then delete",
        "create function f() returns void language sql as 'truncate t'",
        "create function f() returns void language plpgsql as $$ begin delete from t; end $$",
    ]:
        assert decide(engine, sql, ADMIN) == "approve", sql


# --- SQL passed as text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select query_to_xml('delete from t returning *', true, false, '')", "drop_or_delete"),
        ("do $$ begin execute 'drop table t'; end $$", "drop_or_delete"),
        ("do $$ begin execute $q$drop table t$q$; end $$", "drop_or_delete"),
        ("do $$ begin perform 1; delete from t; end $$", "drop_or_delete"),
        (
            "do $$ declare r record; begin for r in execute 'truncate t' loop end loop; end $$",
            "drop_or_delete",
        ),
        ("select ts_stat('delete from t returning 1')", "drop_or_delete"),
        ("do $$ begin execute 'drop table ' || 't'; end $$", "dynamic"),
        ("do $$ declare q text := 'x'; begin execute q; end $$", "dynamic"),
        ("do $$ begin execute format('drop table %I', 't'); end $$", "dynamic"),
        ("select query_to_xml(q, true, false, '') from queries", "dynamic"),
        ("select schema_to_xml('public', true, false, '')", "dynamic"),
        ("do language plperl $$ 1 $$", "dynamic"),
        ("do $$ this is not plpgsql $$", "dynamic"),
    ],
)
def test_sql_in_text_is_judged_or_denied(sql: str, expected: str) -> None:
    """Promise: SQL given as a literal is judged as the SQL it contains; computed SQL is
    ``dynamic_sql`` (which policies deny)."""
    got = constructs(sql)
    if expected == "dynamic":
        assert "dynamic_sql" in got, got
    else:
        assert got & {"drop", "delete_without_where", "truncate"}, got
        assert "dynamic_sql" not in got, got


def test_table_to_xml_reads_the_named_table() -> None:
    st = analyze("select table_to_xml('audit.log', true, false, '')").statements[0]
    assert (("audit", "log")) in st.reads


# --- functions are resolved as the server resolves them -----------------------------------------


def test_builtin_name_before_pg_catalog_is_a_user_function() -> None:
    """Promise: ``lower()`` is judged as a user function when the session's search_path puts
    another schema before pg_catalog."""
    policy = load_policy_text(
        """
version: 1
tiers:
  - name: agent
    match: {roles: [agent]}
    search_path: [public]
    rules:
      - {id: read, action: allow, message: m, classes: [read, session], tables: ["public.*"],
         constructs: [search_path_change]}
"""
    )
    e = PolicyEngine(policy)
    s = SessionContext()
    assert e.decide(AGENT, "select lower(name) from t", session=s).action == "allow"
    d = e.decide(AGENT, "set search_path = evil, pg_catalog, public", session=s)
    assert d.action == "allow"
    s.apply(d)
    assert not s.search_path.exact
    d = e.decide(AGENT, "select lower(name) from public.t", session=s)
    assert d.action == "deny" and "user_function" in d.reason
    # and qualified names are what they say; unqualified t may now be evil.t
    assert e.decide(AGENT, "select pg_catalog.lower(name) from public.t", session=s).allowed
    d = e.decide(AGENT, "select pg_catalog.lower(name) from t", session=s)
    assert d.action == "deny" and "table t" in d.reason, d.reason


def test_shadowing_function_from_the_catalog_is_judged_as_itself() -> None:
    """Promise: a non-catalog function with a built-in's name (overload by argument type) on
    the session's path makes the unqualified call a user function."""
    e = PolicyEngine(load_policy_text(POLICY))
    s = SessionContext(shadows=frozenset({("public", "lower")}))
    d = e.decide(AGENT, "select lower(a) from t", session=s)
    assert d.action == "deny" and "user_function" in d.reason
    assert decide(e, "select lower(a) from t") == "allow"


def test_pinned_search_path_refuses_changes(engine: PolicyEngine) -> None:
    for sql in [
        "set search_path = evil",
        "set local search_path to public, evil",
        "select set_config('search_path', 'evil', false)",
        "select set_config(name, 'x', false) from settings",
        "set schema 'evil'",
    ]:
        d = engine.decide(AGENT, sql, session=SessionContext())
        assert d.action == "deny" and d.rule_id in ("pinned-search-path", "settings"), (sql, d)
    assert decide(engine, "reset search_path") == "allow"


def test_search_path_tracking_is_an_over_approximation() -> None:
    path = SearchPath.of(("public",))
    assert path.exact and path.relation_candidates((None, "t")) == ("public.t",)
    analysis = analyze("select set_config('search_path', 'a, \"B\"', false)")
    (change,) = analysis.statements[0].settings
    p2 = path.with_change(change)
    assert p2.paths == (("a", "B"), ("public",)) and not p2.exact
    assert set(p2.relation_candidates((None, "t"))) == {"a.t", "B.t", "public.t"}
    unknown = analyze("select set_config('search_path', x, false) from y").statements[0]
    p3 = p2.with_change(unknown.settings[0])
    assert p3.unknown and "*.t" in p3.relation_candidates((None, "t"))


def test_unknown_search_path_denies_unqualified_names() -> None:
    """Promise: after a search_path the gateway cannot know, a deny rule on a table hits an
    unqualified name in any schema and an allow rule no longer covers it."""
    policy = load_policy_text(
        """
version: 1
tiers:
  - name: agent
    match: {roles: [agent]}
    rules:
      - {id: no-audit, action: deny, message: m, tables: ["audit.log"]}
      - {id: read, action: allow, message: m, classes: [read, session], tables: ["public.*"],
         constructs: [set_config, search_path_change, set_role, dangerous_guc]}
"""
    )
    e = PolicyEngine(policy)
    s = SessionContext()
    assert e.decide(AGENT, "select * from log", session=s).action == "allow"
    d = e.decide(AGENT, "select set_config(n, 'x', false) from names", session=s)
    assert d.action == "allow"
    s.apply(d)
    d = e.decide(AGENT, "select * from log", session=s)
    assert d.action == "deny" and d.rule_id == "no-audit"
    assert e.decide(AGENT, "select * from public.log", session=s).action == "allow"


# --- SET allowances -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "action"),
    [
        ("set statement_timeout = 0", "deny"),
        ("set statement_timeout to '0'", "deny"),
        ("set statement_timeout = 100", "deny"),  # 100 ms < 1 s
        ("set statement_timeout = '5s'", "allow"),
        ("set statement_timeout = '1h'", "deny"),
        ("set local statement_timeout = 0", "deny"),
        ("select set_config('statement_timeout', '0', false)", "deny"),
        ("select set_config('statement_timeout', '30s', true)", "allow"),
        ("select set_config('statement_timeout', v, false) from x", "deny"),
        ("set work_mem = '64MB'", "allow"),
        ("set work_mem = 65536", "allow"),  # kB
        ("set work_mem = 65537", "deny"),
        ("set work_mem = '1GB'", "deny"),
        ("set work_mem = '1.5GB'", "deny"),
        ("reset work_mem", "allow"),
        ("set work_mem to default", "allow"),
        ("reset all", "allow"),
        ("set maintenance_work_mem = '16MB'", "deny"),  # not listed
        ("set application_name = 'anything'", "allow"),
        ("set datestyle = 'ISO, MDY'", "allow"),
        ("set datestyle = iso, mdy", "allow"),
        ("set datestyle = 'SQL'", "deny"),
        ("do $$ begin perform set_config('work_mem', '4GB', false); end $$", "deny"),
        ("do $$ begin set work_mem = '4GB'; end $$", "deny"),
    ],
)
def test_set_allowances_name_settings_and_ranges(
    engine: PolicyEngine, sql: str, action: str
) -> None:
    """Promise: a tier's ``settings`` allowance bounds every way of changing a setting."""
    d = engine.decide(AGENT, sql, session=SessionContext())
    assert d.action == action, (sql, d.rule_id, d.reason)
    if action == "deny":
        assert d.rule_id == "settings", d.reason


def test_settings_allowance_errors_name_the_line() -> None:
    bad = POLICY.replace("work_mem: {max: 64MB}", "work_mem: {max: 5min}")
    with pytest.raises(PolicyError, match=r":\d+: tiers\[0\]\.settings\.work_mem: max"):
        load_policy_text(bad)
    bad = POLICY.replace("work_mem: {max: 64MB}", "my.knob: {max: 10}")
    with pytest.raises(PolicyError, match="unit"):
        load_policy_text(bad)


# --- catalog and statistics views on masked tiers -----------------------------------------------

SENSITIVE = [
    "select * from pg_stats",
    "select * from pg_catalog.pg_stats where tablename = 't'",
    "select most_common_vals from pg_stats",
    "select * from pg_statistic",
    "select * from pg_stats_ext",
    "select * from pg_stats_ext_exprs",
    "select * from pg_statistic_ext_data",
    "select query from pg_stat_activity",
    "select * from pg_catalog.pg_stat_activity",
    "select * from pg_stat_statements",
    "select * from public.pg_stat_statements",
    "select * from pg_stat_statements(true)",
    "select pg_stat_get_activity(null)",
    "select pg_stat_get_backend_activity(1)",
    "select * from pg_mcv_list_items(null)",
    "select (select query from pg_stat_activity limit 1)",
    "with a as (select * from pg_stats) select * from a",
    "select query_to_xml('select * from pg_stats', true, false, '')",
    "do $$ begin perform * from pg_stat_activity; end $$",
]


@pytest.mark.parametrize("sql", SENSITIVE)
def test_statistics_views_denied_on_masked_tiers(engine: PolicyEngine, sql: str) -> None:
    """Promise: a masked tier never reads data values or other sessions' text through the
    catalog, unless the policy allows it."""
    d = engine.decide(AGENT, sql, session=SessionContext())
    assert d.action == "deny", (sql, d.reason)


def test_statistics_views_allowed_when_listed() -> None:
    policy = load_policy_text(
        POLICY.replace(
            "constructs: [do_block, set_config]", "constructs: [sensitive_catalog]"
        ).replace('tables: ["public.*"]', 'tables: ["public.*", "pg_catalog.*"]')
    )
    e = PolicyEngine(policy)
    assert decide(e, "select * from pg_stats") == "allow"
    # unmasked tiers: informational, the rules alone decide
    assert decide(e, "select * from pg_stats", ADMIN) == "allow"
