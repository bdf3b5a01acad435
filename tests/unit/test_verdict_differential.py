"""The native verdict cache against the Python engine (differential).

Every case of the statement table (tests/policy_cases.yaml) and of the adversarial guardrail
policy goes through what the gateway does on a Query: ``decide``, then ``remember_native`` when
the enforcer would.  Then the same text and texts with new constants are looked up natively
(the client buffer's own path) and judged again by a *fresh* engine (full analysis, no cache):
whatever the native cache answers must be exactly the fresh engine's allow, by the same rule,
with the same fingerprint; anything else must miss.  Hypothesis draws the new constants.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import veilgate_native as native
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veilgate.gateway.sqleffects import may_have_effects
from veilgate.identity.base import Principal
from veilgate.policy.analysis import analyze
from veilgate.policy.engine import PolicyEngine, SessionContext
from veilgate.policy.loader import load_policy
from veilgate.policy.model import Policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "python" / "veilgate" / "policy" / "example_policy.yaml"
ADVERSARIAL = ROOT / "tests" / "adversarial" / "policy.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests" / "policy_cases.yaml").read_text())

PRINCIPALS = {
    "ro": Principal(provider="entra", subject="agent-ro", roles=frozenset({"db.readonly"})),
    "rw": Principal(provider="entra", subject="agent-rw", roles=frozenset({"db.readwrite"})),
}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(EXAMPLE)


def _session(case: dict[str, Any]) -> SessionContext:
    scs = case.get("scs", "on") not in ("off", False)
    s = SessionContext(session_id="t", standard_conforming_strings=scs)
    for name, sql in (case.get("prepared") or {}).items():
        msg = analyze(sql, standard_conforming_strings=scs)
        s.prepared[name] = msg.statements[0]
    return s


def _query_body(sql: str) -> bytes:
    return sql.encode() + b"\0"


def _enforcer_step(
    engine: PolicyEngine, principal: Principal, sql: str, ctx: SessionContext
) -> bool:
    """What ``PolicyEnforcer._query`` does for a Query: decide, then let the cache remember
    it when allowed (and the mirror need not see it).  True when an entry was made."""
    d = engine.decide(principal, sql, session=ctx)
    if d.allowed and not may_have_effects(_query_body(sql)):
        return engine.remember_native(d, sql.encode(), ctx)
    return False


def _fresh(policy: Policy, principal: Principal, sql: str, case: dict[str, Any]) -> Any:
    return PolicyEngine(policy).decide(principal, sql, session=_session(case))


def _assert_same(native_verdict: Any, fresh: Any, sql: str) -> None:
    assert native_verdict is not None
    why = f"{sql!r}: native allow by {native_verdict.rule_id}, Python {fresh.action} by "
    why += f"{fresh.rule_id}: {fresh.reason}"
    assert fresh.action == "allow", why
    assert native_verdict.rule_id == fresh.rule_id, why
    assert native_verdict.fingerprint == fresh.fingerprint, why
    assert native_verdict.tier == fresh.tier, why


_INT_VALUES = ("0", "7", "4711", "99999999999", "1")
_STR_VALUES = ("", "x", "audit.log", "it''s", "begin", "semi;colon", "\\", "é ü 漢", "$1")


def _variants(sql: str) -> list[str]:
    """``sql`` with its constants replaced (integers by integers, strings by strings)."""
    raw = sql.encode()
    tokens = native.sql_tokens(raw)
    if not tokens:
        return []
    out = []
    for k in range(3):
        parts: list[bytes] = []
        pos = 0
        changed = False
        for i, (start, end, kind) in enumerate(tokens):
            if kind == "ICONST":
                new = _INT_VALUES[(i + k) % len(_INT_VALUES)].encode()
            elif kind == "SCONST" and raw[start : start + 1] == b"'":
                new = b"'" + _STR_VALUES[(i + k) % len(_STR_VALUES)].encode() + b"'"
            else:
                continue
            parts.append(raw[pos:start])
            parts.append(new)
            pos = end
            changed = True
        if changed:
            parts.append(raw[pos:])
            out.append(b"".join(parts).decode())
    return out


@pytest.mark.parametrize("tier", ["ro", "rw"])
def test_statement_table_native_equals_python(policy: Policy, tier: str) -> None:
    principal = PRINCIPALS[tier]
    cached = 0
    hits = 0
    for case in CASES:
        sql = case["sql"]
        engine = PolicyEngine(policy)
        ctx = _session(case)
        made = _enforcer_step(engine, principal, sql, ctx)
        if made:
            cached += 1
            assert case[tier] == "allow", sql  # only allows are ever cached
        scope = engine.session_scope(principal, ctx)
        for text in [sql, *_variants(sql)]:
            v = engine.native_verdicts.lookup(scope, text.encode())
            if v is None:
                continue
            hits += 1
            _assert_same(v, _fresh(policy, principal, text, case), text)
        # under another scope (another tier, another search path) nothing is answered
        assert engine.native_verdicts.lookup(scope + 1_000_000, sql.encode()) is None
    # the table exercises the cache for real
    assert cached >= 40, cached
    assert hits >= cached


def test_nothing_but_plain_allows_is_cached(policy: Policy) -> None:
    engine = PolicyEngine(policy)
    rw = PRINCIPALS["rw"]
    ctx = SessionContext(session_id="t")
    never = [
        "drop table orders",  # deny
        "delete from orders",  # approve
        "prepare p as select 1",  # changes the session
        "set search_path = public",  # changes the session
        "set statement_timeout = 5",  # sets something
        "begin",  # the mirror must see transaction control
        "select 1; select 2",  # a ';' the mirror's prefilter looks closer at
        "execute p",  # depends on the session's statements
    ]
    for sql in never:
        assert not _enforcer_step(engine, rw, sql, ctx), sql
        scope = engine.session_scope(rw, ctx)
        assert engine.native_verdicts.lookup(scope, sql.encode()) is None, sql
    # standard_conforming_strings off, or a client-only encoding: nothing is remembered
    for off in (
        SessionContext(session_id="t", standard_conforming_strings=False),
        SessionContext(session_id="t", normalize_literals=False),
    ):
        assert not _enforcer_step(engine, rw, "select 1 from orders where id = 5", off)


def test_reload_empties_the_cache_and_a_new_scope_misses(policy: Policy) -> None:
    engine = PolicyEngine(policy)
    rw = PRINCIPALS["rw"]
    ctx = SessionContext(session_id="t")
    assert _enforcer_step(engine, rw, "select * from orders where id = 1", ctx)
    scope = engine.session_scope(rw, ctx)
    assert engine.native_verdicts.lookup(scope, b"select * from orders where id = 2") is not None
    gen = engine.native_verdicts.generation
    engine.reload(policy)
    assert engine.native_verdicts.generation == gen + 1
    assert len(engine.native_verdicts) == 0
    assert engine.native_verdicts.lookup(scope, b"select * from orders where id = 2") is None
    # the session's scope is looked up again under the new generation: a new scope id
    assert engine.session_scope(rw, ctx) != scope


def test_elevated_tier_is_another_scope(policy: Policy) -> None:
    engine = PolicyEngine(policy)
    ro = PRINCIPALS["ro"]
    ctx = SessionContext(session_id="t")
    assert _enforcer_step(engine, ro, "select * from orders where id = 1", ctx)
    scope = engine.session_scope(ro, ctx)
    ctx.elevated_tier = "readwrite"
    ctx.tier_generation = -1
    assert engine.session_scope(ro, ctx) != scope


# --- the adversarial guardrail policy ---------------------------------------------------------

GUARD_STATEMENTS = [
    "select * from vg_g_t where id = 1",
    "select count(*) from vg_g_t where tag = 'a'",
    "update vg_g_t set tag = 'x' where id = 3",
    "update vg_g_t set tag = 'x' where 1 = 1",
    "update vg_g_t set tag = 'x' where 1 = 2",
    "update vg_g_t set tag = 'x' where id = 3 or true",
    "update vg_g_t set tag = 'x' where id = 3 or 1 = 1",
    "delete from vg_g_t where id = 5",
    "delete from vg_g_t where 2 > 1",
    "delete from vg_g_t where 2 < 1",
    "delete from vg_g_t where false",
    "delete from vg_g_t where id = id",
    "delete from vg_g_t where coalesce(null, 1) = 1",
    "with d as (delete from vg_g_t where 1 = 1 returning *) select count(*) from d",
    "insert into vg_g_t values (1, 'a')",
    "merge into vg_g_t t using (select 1 as id) s on t.id = s.id when matched then delete",
    "select set_config('statement_timeout', '5s', false)",
    "select set_config('search_path', 'evil', false)",
    "select * from pg_stat_activity",
    "select * from pg_stats where tablename = 'vg_g_t'",
    "select upper(tag) from vg_g_t where id = 9",
    "select 1",
    "do $$ begin perform 1; end $$",
]


def test_adversarial_guardrails_native_equals_python(tmp_path: Path) -> None:
    from tests.adversarial.test_guardrails import POLICY as GUARD_POLICY

    f = tmp_path / "guard.yaml"
    f.write_text(GUARD_POLICY)
    policy = load_policy(f)
    checked = 0
    for role in ("agent", "admin", "pinned"):
        principal = Principal(provider="entra", subject=role, roles=frozenset({role}))
        tier = policy.tier_for(principal)
        assert tier is not None
        pinned = tier.search_path if tier.pin_search_path else None

        def ctx(pinned: tuple[str, ...] | None = pinned) -> SessionContext:
            return SessionContext(session_id="t", started_search_path=pinned)

        for sql in GUARD_STATEMENTS:
            engine = PolicyEngine(policy)
            c = ctx()
            _enforcer_step(engine, principal, sql, c)
            scope = engine.session_scope(principal, c)
            for text in [sql, *_variants(sql)]:
                v = engine.native_verdicts.lookup(scope, text.encode())
                if v is not None:
                    checked += 1
                    fresh = PolicyEngine(policy).decide(principal, text, session=ctx())
                    _assert_same(v, fresh, text)
    assert checked >= 20, checked


# --- hypothesis: new constants in every statement ---------------------------------------------

_SHAPES = [
    "select * from orders where id = {i}",
    "select id, total from public.orders where total > {i} and note = {s}",
    "insert into orders (id, total) values ({i}, {i})",
    "update orders set total = {i} where id = {i}",
    "delete from orders where id = {i}",
    "select {s}, {i} from customers where country = {s} limit {i}",
    "select * from orders where id in ({i}, {i}, -{i})",
    "select * from audit.log where id = {i}",
    "select {s}::text from orders",
    "update orders set total = {i}",
]

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20,
) | st.sampled_from(["begin", ";", "audit.log", "prepare x", "\\", "'"])


def _fill(shape: str, data: st.DataObject) -> str:
    out = []
    for piece in string.Formatter().parse(shape):
        literal, field, _, _ = piece
        out.append(literal)
        if field == "i":
            out.append(str(data.draw(st.integers(min_value=0, max_value=2**40))))
        elif field == "s":
            out.append("'" + data.draw(_text).replace("'", "''") + "'")
    return "".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=st.sampled_from(_SHAPES), tier=st.sampled_from(["ro", "rw"]))
def test_new_literals_native_equals_python(
    policy: Policy, data: st.DataObject, shape: str, tier: str
) -> None:
    principal = PRINCIPALS[tier]
    engine = PolicyEngine(policy)
    ctx = SessionContext(session_id="t")
    first = _fill(shape, data)
    _enforcer_step(engine, principal, first, ctx)
    scope = engine.session_scope(principal, ctx)
    second = _fill(shape, data)
    v = engine.native_verdicts.lookup(scope, second.encode())
    fresh = PolicyEngine(policy).decide(principal, second, session=SessionContext(session_id="t"))
    if v is not None:
        _assert_same(v, fresh, second)
    elif fresh.action == "allow" and not may_have_effects(_query_body(second)):
        # a miss is always safe; but a plain allowed read of a shape just allowed should hit
        first_d = PolicyEngine(policy).decide(
            principal, first, session=SessionContext(session_id="t")
        )
        # (a text with a backslash always misses: it may read differently with
        # standard_conforming_strings off, so Python judges both readings)
        if (
            first_d.action == "allow"
            and not may_have_effects(_query_body(first))
            and "\\" not in second
        ):
            assert native.shape_key(first.encode()) != native.shape_key(second.encode()) or (
                fresh.rule_id != first_d.rule_id
            ), (first, second)


@given(st.binary(max_size=40) | st.sampled_from([b"  begin;", b"\tcommit\0", b"select ';'\0"]))
def test_native_may_have_effects_equals_the_mirrors(body: bytes) -> None:
    assert native.may_have_effects(body) == may_have_effects(body)


def test_the_cache_is_bounded_by_what_its_verdicts_keep_alive() -> None:
    cache = native.VerdictCache(max_entries=1000, max_bytes=64 * 1024)
    for i in range(200):
        assert cache.insert(1, f"select {i} as c{i}".encode(), True, object(), "r", "f", 4096)
        assert cache.bytes <= 64 * 1024
    assert len(cache) <= 16
    # an entry alone over the budget is not kept
    assert not cache.insert(1, b"select 1 as big", True, object(), "r", "f", 1 << 20)
    counted = native.VerdictCache(max_entries=3)
    for i in range(10):
        counted.insert(1, f"select {i} as c{i}".encode(), True, object(), "r", "f")
    assert len(counted) <= 3


def test_decision_event_of_a_native_hit_is_the_cached_decisions_event(
    policy: Policy, tmp_path: Path
) -> None:
    """``DecisionEvent.from_verdict`` (a hit) gives what ``from_decision`` gives for the cached
    decision of the same text, and ``emit_many`` writes what ``emit`` writes."""
    import dataclasses
    import json

    from veilgate.policy.audit import DecisionEvent, JsonLinesAuditSink

    engine = PolicyEngine(policy)
    rw = PRINCIPALS["rw"]
    ctx = SessionContext(session_id="s1")
    assert _enforcer_step(engine, rw, "select * from orders where id = 1", ctx)
    scope = engine.session_scope(rw, ctx)
    text = "select * from orders where id = 2 -- password 'x'"
    hit = engine.native_verdicts.lookup(scope, text.encode())
    if hit is None:  # a comment is kept verbatim in the key: use the plain variant
        text = "select * from orders where id = 2"
        hit = engine.native_verdicts.lookup(scope, text.encode())
    assert hit is not None
    d = engine.decide(rw, text, session=ctx)
    assert d.cached
    want = DecisionEvent.from_decision(d, rw, session_id="s1", ts=1.0)
    got = DecisionEvent.from_verdict(hit, text, rw, session_id="s1", ts=1.0)
    assert dataclasses.replace(got, decision_us=want.decision_us) == want
    as_dict = dataclasses.asdict(got)
    assert json.loads(got.to_json()) == json.loads(json.dumps(as_dict))
    assert list(json.loads(got.to_json())) == list(as_dict)
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    with JsonLinesAuditSink(one) as a, JsonLinesAuditSink(many) as b:
        a.emit(got)
        a.emit(want)
        b.emit_many([got, want])
    assert one.read_text() == many.read_text()
