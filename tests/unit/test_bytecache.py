"""Caches bounded in bytes (issue 10 item 6)."""

from __future__ import annotations

from veilgate import bytecache
from veilgate.bytecache import ByteLRU, text_cost
from veilgate.identity.base import Principal
from veilgate.policy.engine import PolicyEngine
from veilgate.policy.loader import load_policy_text

AGENT = Principal(provider="entra", subject="a", roles=frozenset({"agent"}))


def test_evicts_by_bytes_not_entries() -> None:
    c: ByteLRU[str, int] = ByteLRU(10_000)
    for i in range(100):
        c.put(f"k{i}", i, 1000)
    assert c.bytes <= 10_000 and len(c) == 10
    assert list(c)[-1] == "k99" and "k0" not in c
    # a hit moves an entry to the young end
    c.move_to_end("k90")
    c.put("new", 1, 1000)
    assert "k90" in c and "k91" not in c


def test_an_entry_too_large_is_not_cached_and_flushes_nothing() -> None:
    c: ByteLRU[str, int] = ByteLRU(8000)
    for i in range(7):
        c.put(f"k{i}", i, 1000)
    assert not c.put("huge", 0, 5000)
    assert "huge" not in c and len(c) == 7 and c.bytes == 7000


def test_accounting_survives_every_removal() -> None:
    c: ByteLRU[str, int] = ByteLRU(100_000)
    for i in range(10):
        c.put(f"k{i}", i, 100)
    c.put("k0", 0, 300)  # replaced: charged once
    del c["k1"]
    c.pop("k2")
    c.popitem(last=False)
    assert c.bytes == sum(100 for k in c if k != "k0") + 300
    c.clear()
    assert c.bytes == 0 and not c


def test_named_budget_follows_the_configuration() -> None:
    c: ByteLRU[str, int] = ByteLRU("policy.decisions")
    old = c.max_bytes
    try:
        bytecache.set_total_budget(4 << 20)
        assert c.max_bytes == bytecache.budget("policy.decisions") < old
    finally:
        bytecache.set_total_budget(64 << 20)


def test_policy_caches_stay_within_their_byte_budgets() -> None:
    """Promise: many large distinct statements never grow the policy caches past their byte
    budgets, however few entries that is."""
    policy = load_policy_text(
        "version: 1\ntiers:\n  - name: a\n    match: {roles: [agent]}\n    rules:\n"
        "      - {id: r, action: allow, message: m, classes: [read]}\n"
    )
    budgets = (200_000, 200_000, 100_000)
    engine = PolicyEngine(policy, cache_bytes=budgets)
    pad = "x" * 8000
    for i in range(200):
        sql = f"select '{pad}' as c{i} from t where a = {i}"  # noqa: S608
        assert engine.decide(AGENT, sql).allowed
    info = engine.cache_info()
    assert info["analysis_bytes"] <= budgets[0]
    assert info["decision_bytes"] <= budgets[1]
    assert info["shape_bytes"] <= budgets[2]
    assert 0 < info["decisions"] < 200
    # a statement larger than an eighth of a budget is decided but not cached
    big = "select '" + "y" * 100_000 + "'"
    assert engine.decide(AGENT, big).allowed
    assert not engine.decide(AGENT, big).cached
    assert text_cost(big) > budgets[1] // 8
