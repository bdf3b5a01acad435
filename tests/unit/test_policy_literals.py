"""The literal-normalised decision cache: texts that differ only in constant values share a
decision, and only when that decision did not depend on a value (veilgate.policy.literals)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pglast import parser as pg

from veilgate.gateway.enforce import PolicyEnforcer
from veilgate.identity.base import Principal
from veilgate.pgwire import wire
from veilgate.policy.analysis import analyze
from veilgate.policy.audit import DecisionEvent, MemoryAuditSink
from veilgate.policy.engine import Decision, PolicyEngine, SessionContext
from veilgate.policy.literals import literal_template
from veilgate.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "python" / "veilgate" / "policy" / "example_policy.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests" / "policy_cases.yaml").read_text())
RO = Principal(provider="entra", subject="ro", roles=frozenset({"db.readonly"}))
RW = Principal(provider="entra", subject="rw", roles=frozenset({"db.readwrite"}))


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_policy(EXAMPLE)


def _fresh(policy: Any, who: Principal, sql: str, **session: Any) -> Decision:
    return PolicyEngine(policy).decide(who, sql, session=SessionContext(**session))


def _same_decision(got: Decision, want: Decision) -> None:
    """Everything a user (client error, audit record, session state) sees is what a full
    analysis of the text gives."""
    assert (got.action, got.rule_id, got.reason, got.message, got.tier) == (
        want.action,
        want.rule_id,
        want.reason,
        want.message,
        want.tier,
    )
    assert got.fingerprint == want.fingerprint
    assert got.analysis.text == want.analysis.text
    assert got.analysis.unparseable == want.analysis.unparseable
    assert [s.action for s in got.statements] == [s.action for s in want.statements]
    for g, w in zip(got.statements, want.statements, strict=True):
        assert dataclasses.replace(g.analysis, const_locations=frozenset()) == dataclasses.replace(
            w.analysis, const_locations=frozenset()
        )


def _second(policy: Any, who: Principal, first: str, second: str, **session: Any) -> Decision:
    """Decide ``first`` then ``second`` in one engine and session; return the second."""
    engine = PolicyEngine(policy)
    ctx = SessionContext(**session)
    engine.decide(who, first, session=ctx)
    return engine.decide(who, second, session=ctx)


# --- texts that normalise equal share the decision --------------------------------------------


def test_pgbench_literals_share_one_decision(policy: Any) -> None:
    engine = PolicyEngine(policy)
    ctx = SessionContext()
    first = engine.decide(RO, "SELECT abalance FROM pgbench_accounts WHERE aid = 17;", session=ctx)
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"
    d = engine.decide(RO, sql, session=ctx)
    assert not first.cached and d.cached
    assert engine.cache_info()["shapes"] == 1 and engine.cache_info()["decisions"] == 1
    # the audit record names this text, not the one the decision was first made for
    assert d.analysis.text == sql
    assert d.statements[0].analysis.text == sql.rstrip(";")
    assert DecisionEvent.from_decision(d, RO).sql == sql
    _same_decision(d, _fresh(policy, RO, sql))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("select * from orders where id = 1", "select * from orders where id = 99999"),
        ("select * from orders where note = 'a'", "select * from orders where note = 'it''s'"),
        ("select * from orders where x > -5", "select * from orders where x > -7"),
        ("select * from orders where x > - 5", "select * from orders where x > - 7"),
        ("select 1.5 * total from orders", "select 2.25 * total from orders"),
        ("select x'1f', b'101' from orders", "select x'ff', b'0' from orders"),
        ("select $$a$$ from orders", "select $$b ' c$$ from orders"),
        ("select E'a' from orders", "select E'x\\'; delete from orders; --' from orders"),
        ("select 'é' from orders where id = 1", "select 'ü€' from orders where id = 2"),
        ("select cast(a as varchar(10)) from orders", "select cast(a as varchar(20)) from orders"),
        ("select * from orders limit 5 offset 10", "select * from orders limit 1 offset 0"),
        ("select date '2020-01-01' from orders", "select date '1999-12-31' from orders"),
        ("select 1 /* ' */ from orders where id = 5", "select 2 /* ' */ from orders where id = 6"),
        ("select 1 -- it's\n from orders", "select 2 -- it's\n from orders"),
        ("select /* a /* ' */ b */ 1 from t", "select /* a /* ' */ b */ 2 from t"),
        (
            "select 1 from orders where id = 1; select 2",
            "select 3 from orders where id = 4; select 5",
        ),
        (
            "prepare p as select * from orders where id = 1",
            "prepare p as select * from orders where id = 2",
        ),
        ("delete from orders where id = 1", "delete from orders where id = 2"),
        ("select 'a' from orders", "select E'a' from orders"),  # both SCONST: same value type
        ("select $$a$$ from orders", "select $q$a$q$ from orders"),
    ],
)
def test_same_shape_shares(policy: Any, first: str, second: str) -> None:
    for who in (RO, RW):
        d = _second(policy, who, first, second)
        assert d.cached, (first, second)
        _same_decision(d, _fresh(policy, who, second))


def test_shared_prepare_records_its_own_statement(policy: Any) -> None:
    engine = PolicyEngine(policy)
    ctx = SessionContext()
    engine.decide(RW, "prepare p as select * from orders where id = 1", session=ctx)
    d = engine.decide(RW, "prepare q as select * from orders where id = 1", session=ctx)
    assert not d.cached  # the name is an identifier: another shape
    d = engine.decide(RW, "prepare q as select * from orders where id = 2", session=ctx)
    assert d.cached
    ctx.apply(d)
    assert ctx.prepared["q"].text == "prepare q as select * from orders where id = 2"


# --- texts that differ in structure never share ------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("select * from orders where id = 1", "select * from orders where id = '1'"),
        ("select * from orders where id = 1", "select * from orders where id = $1"),
        ("select * from orders where id = 1", "select * from orders where id =  1"),
        ("select * from orders where id = 1", "select * from audit.log where id = 1"),
        ("select * from orders where id = 1", "select * from orders where id = 1 -- x"),
        ("select 1 from orders", "select 1 from orders; delete from orders"),
        ("select 1 /* a */ from orders", "select 1 /* a */ */ from orders"),
        ("select 2147483647", "select 2147483648"),  # ICONST vs FCONST: the scanner's kinds
        ("select true", "select false"),
        ("select 'a'::text", "select 'a'::regclass"),
    ],
)
def test_other_shapes_never_share(policy: Any, first: str, second: str) -> None:
    a, b = literal_template(first), literal_template(second)
    assert a is None or b is None or a.key != b.key
    d = _second(policy, RW, first, second)
    assert not d.cached
    _same_decision(d, _fresh(policy, RW, second))


# --- decisions that depend on a value are never shared -----------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "second_action_ro"),
    [
        # set_config: the setting name decides (role vs work_mem)
        (
            "select set_config('work_mem', '64MB', false) from orders",
            "select set_config('role', 'admin', false) from orders",
            "deny",
        ),
        # SET values: search_path is session state the gateway follows
        ("set search_path = 'public'", "set search_path = 'audit'", "deny"),
        ("set role 'app'", "set role 'admin'", "deny"),
        (
            "set default_transaction_read_only = 'on'",
            "set default_transaction_read_only = 'off'",
            "deny",
        ),
        # EXPLAIN options: ANALYZE 'on' runs the statement
        (
            "explain (analyze 'off') delete from orders where id = 1",
            "explain (analyze 'on') delete from orders where id = 1",
            "deny",
        ),
        # DO bodies and languages, COPY file names, LOAD
        ("do $$ begin perform 1; end $$", "do $$ begin drop table orders; end $$", "deny"),
        ("do language plpgsql 'select 1'", "do language 'plperlu' 'system(1)'", "deny"),
        ("copy orders from '/tmp/a'", "copy orders from '/etc/passwd'", "deny"),
        ("load 'a'", "load 'b'", "deny"),
        # the grammar rejects some values: float(60) and a lone surrogate do not parse
        ("select 1::float(10) from orders", "select 1::float(60) from orders", "deny"),
        ("select U&'\\0041' from orders", "select U&'\\D800' from orders", "deny"),
        (
            "select U&'d!0061' UESCAPE '!' from orders",
            "select U&'d!0061' UESCAPE '?' from orders",
            None,
        ),
        # FETCH counts and option values are not plain constants of the tree
        ("fetch 5 from c", "fetch 6 from c", None),
        (
            "create table t (a int) with (fillfactor = 70)",
            "create table t (a int) with (fillfactor = 80)",
            None,
        ),
    ],
)
def test_value_dependent_decisions_are_not_shared(
    policy: Any, first: str, second: str, second_action_ro: str | None
) -> None:
    for who in (RO, RW):
        engine = PolicyEngine(policy)
        ctx = SessionContext()
        engine.decide(who, first, session=ctx)
        d = engine.decide(who, second, session=ctx)
        assert not d.cached, (first, second)
        want = _fresh(policy, who, second)
        _same_decision(d, want)
        if who is RO and second_action_ro is not None:
            assert d.action == second_action_ro, d.reason


def test_search_path_of_a_set_is_its_own(policy: Any) -> None:
    d = _second(policy, RW, "set search_path = 'public'", "set search_path = 'audit'")
    assert d.statements[0].analysis.search_path == ("audit",)


def test_unparseable_texts_are_not_shared(policy: Any) -> None:
    # a text the grammar rejects never seeds a shape, whatever its constants
    engine = PolicyEngine(policy)
    engine.decide(RW, "select 1::float(60) from orders")
    assert engine.cache_info()["shapes"] == 0


# --- sessions where the scanner would not see the server's tokens ------------------------------


def test_standard_conforming_strings_off_uses_exact_text_only(policy: Any) -> None:
    engine = PolicyEngine(policy)
    on = SessionContext(standard_conforming_strings=True)
    off = SessionContext(standard_conforming_strings=False)
    # with the setting off, 'x\' does not end the literal: the server sees one string
    engine.decide(RO, "select 'x\\' from orders --'", session=on)
    engine.decide(RO, "select 'y\\' from orders --'", session=on)
    shapes = engine.cache_info()["shapes"]
    for sql in ("select 'x\\' from orders --'", "select 'z\\' from orders --'"):
        d = engine.decide(RO, sql, session=off)
        assert not d.cached
        _same_decision(d, _fresh(policy, RO, sql, standard_conforming_strings=False))
    assert engine.cache_info()["shapes"] == shapes
    # ... and an ordinary literal hiding a statement is judged as the server reads it
    hidden = "select 'a\\'; delete from orders; --' from orders"
    assert engine.decide(RO, hidden, session=on).action == "deny"
    assert engine.decide(RO, "select 'b\\'; delete from orders; --' from orders", session=on).cached
    d = engine.decide(RO, "select 'c\\'; delete from orders; --' from orders", session=off)
    assert not d.cached and d.action == "allow"


def test_client_only_encodings_use_exact_text_only(policy: Any) -> None:
    engine = PolicyEngine(policy)
    ctx = SessionContext(normalize_literals=False)
    engine.decide(RO, "select * from orders where id = 1", session=ctx)
    assert not engine.decide(RO, "select * from orders where id = 2", session=ctx).cached
    assert engine.cache_info()["shapes"] == 0


def test_no_key_for_nul_or_unscannable_or_constant_free_text() -> None:
    assert literal_template("select 1\x00; drop table orders") is None
    assert literal_template("select 'unterminated") is None
    assert literal_template("select * from orders") is None
    t = literal_template("select 'é', 1")
    assert t is not None
    # anchors are parser (byte) offsets: 'é' is 2 bytes
    assert t.anchors() == [(7,), (13,)]
    assert t.covered_by(analyze("select 'é', 1").const_locations)


def test_reload_drops_shapes(policy: Any) -> None:
    engine = PolicyEngine(policy)
    engine.decide(RO, "select * from orders where id = 1")
    engine.reload(policy)
    assert engine.cache_info()["shapes"] == 0
    assert not engine.decide(RO, "select * from orders where id = 2").cached


def test_shape_cache_is_bounded_lru(policy: Any) -> None:
    engine = PolicyEngine(policy, shape_cache_size=2)
    for sql in (
        "select a from orders where id = 1",
        "select b from orders where id = 1",
        "select c from orders where id = 1",
    ):
        engine.decide(RO, sql)
    assert engine.cache_info()["shapes"] == 2
    assert engine.decide(RO, "select c from orders where id = 2").cached
    assert not engine.decide(RO, "select a from orders where id = 2").cached


def test_with_text_copies_every_field() -> None:
    msg = analyze("prepare p as select * from orders where id = 1; set search_path = 'x'")
    for st in msg.statements:
        assert st.const_locations
        assert st.with_text("t") == dataclasses.replace(st, text="t", const_locations=frozenset())
    assert msg.with_text("t", msg.statements) == dataclasses.replace(msg, text="t")


# --- the statement table, every constant changed -----------------------------------------------


def _variant(sql: str) -> str | None:
    """``sql`` with every plain number and ordinary string literal replaced by another value."""
    try:
        tokens = pg.scan(sql)
    except pg.ParseError:
        return None
    out, pos, changed = [], 0, False
    for t in tokens:
        text = sql[t.start : t.end + 1]
        if t.name == "ICONST" and text.isdigit():
            new = "42" if text != "42" else "43"
        elif t.name == "FCONST" and "." in text:
            new = "4.5"
        elif t.name == "SCONST" and text.startswith("'"):
            new = "'role'" if text != "'role'" else "'zz'"
        else:
            continue
        out.append(sql[pos : t.start] + new)
        pos = t.end + 1
        changed = True
    return "".join(out) + sql[pos:] if changed else None


def _variant_cases() -> list[tuple[str, str]]:
    out = []
    for case in CASES:
        if case.get("prepared") or case.get("scs") in ("off", False):
            continue  # session-dependent: covered above
        variant = _variant(case["sql"])
        if variant is not None:
            out.append((case["sql"], variant))
    return out


VARIANT_CASES = _variant_cases()


def test_the_table_has_constants_to_change() -> None:
    assert len(VARIANT_CASES) >= 80


@pytest.mark.parametrize(
    ("sql", "variant"),
    VARIANT_CASES,
    ids=[f"{i}:{s[:40]}" for i, (s, _) in enumerate(VARIANT_CASES)],
)
def test_table_with_other_constants(policy: Any, sql: str, variant: str) -> None:
    for who in (RO, RW):
        d = _second(policy, who, sql, variant)
        _same_decision(d, _fresh(policy, who, variant))


# --- the gateway's side: what reaches the server, what the audit says --------------------------


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))


class _Message:
    """A surfaced client message, as the native buffer hands it over."""

    stmt_id = 0  # the session is not recorded

    def __init__(self, frame: bytes) -> None:
        self._frame = frame
        self.tag = frame[0]
        self.body = frame[5:]

    def frame(self) -> bytes:
        return self._frame


def _enforcer(
    policy: Any, *parameters: tuple[str, str]
) -> tuple[PolicyEnforcer, _Transport, MemoryAuditSink]:
    upstream = _Transport()
    session = SimpleNamespace(
        peer="127.0.0.1:1",
        upstream_parameters=[wire.parameter_status(n, v) for n, v in parameters],
        pinned_search_path=None,
        upstream_transport=upstream,
        set_upstream_events=lambda: None,
        set_client_events=lambda: None,
        recording=None,
    )
    audit = MemoryAuditSink()
    return PolicyEnforcer(session, PolicyEngine(policy), RO, audit), upstream, audit  # type: ignore[arg-type]


def _decisions(audit: MemoryAuditSink) -> list[DecisionEvent]:
    return [e for e in audit.events if isinstance(e, DecisionEvent)]


def _query(sql: str) -> _Message:
    return _Message(wire.frame(b"Q", wire.cstr(sql)))


def test_enforcer_forwards_shared_allows_and_audits_each_text(policy: Any) -> None:
    enforcer, upstream, audit = _enforcer(policy)
    texts = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 2;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 3;",
    ]
    for sql in texts:
        enforcer.client_message(_query(sql))
    # forwarded unchanged, in order
    assert upstream.sent == [_query(sql).frame() for sql in texts]
    assert [e.sql for e in _decisions(audit)] == texts
    assert [e.cached for e in _decisions(audit)] == [False, True, True]
    assert {e.action for e in _decisions(audit)} == {"allow"}
    assert len({e.fingerprint for e in _decisions(audit)}) == 1


def test_enforcer_denies_a_shape_that_differs_in_a_value_it_reads(policy: Any) -> None:
    enforcer, upstream, audit = _enforcer(policy)
    enforcer.client_message(_query("select set_config('work_mem', '1MB', false)"))
    enforcer.client_message(_query("select set_config('role', 'postgres', false)"))
    assert _decisions(audit)[1].action == "deny"
    assert b"veilgate-denied-" in upstream.sent[1]  # the marker, not the statement


def test_enforcer_client_only_encoding_turns_normalisation_off(policy: Any) -> None:
    enforcer, _upstream, audit = _enforcer(policy, ("client_encoding", "SJIS"))
    assert enforcer.ctx.normalize_literals is False
    for sql in ("select * from orders where id = 1", "select * from orders where id = 2"):
        enforcer.client_message(_query(sql))
    assert [e.cached for e in _decisions(audit)] == [False, False]
    utf8, _upstream, _audit = _enforcer(policy, ("client_encoding", "UTF8"))
    assert utf8.ctx.normalize_literals is True
