"""Inference and laundering verdicts (veilgate.masking.inference) with a fake catalog, and the
``allow:`` vocabulary of column rules."""

from __future__ import annotations

from typing import cast

import pytest
from tests.unit.test_masking_planner import FakeCatalog

from veilgate.masking.catalog import Catalog
from veilgate.masking.inference import Denial, judge
from veilgate.masking.planner import SessionMasking
from veilgate.masking.policy import TierMasking
from veilgate.masking.resolve import parse_tree, resolve
from veilgate.policy.loader import PolicyError, load_policy_text

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
    - {column: "public.customers.email", op: replace, value: "<EMAIL>", allow: [equals, join]}
    - {column: "public.customers.id", op: keep}
    - {column: "public.customers.born", op: null, allow: [filter]}
    - {column: "public.customers.full_name", op: redact, allow: [all]}
    - {column: "public.orders.total", op: partial, keep_last: 4}
    - {column: "public.notes.body", op: replace, value: "<EMAIL>"}
    - {name: "*password*", op: redact}
"""


@pytest.fixture
def planner() -> SessionMasking:
    policy = load_policy_text(POLICY, "policy.yaml")
    assert policy.masking is not None
    tier = policy.masking.for_tier("ro")
    assert isinstance(tier, TierMasking)
    return SessionMasking(tier, cast(Catalog, FakeCatalog()))


def _verdict(planner: SessionMasking, sql: str) -> Denial | None:
    return judge(resolve(parse_tree(sql), FakeCatalog()), planner)


@pytest.mark.parametrize(
    ("sql", "column", "phrase"),
    [
        (
            "SELECT id FROM customers WHERE ssn = 'x'",
            "public.customers.ssn",
            "compared with a constant (WHERE)",
        ),
        ("SELECT id FROM customers ORDER BY ssn", "public.customers.ssn", "sorted (ORDER BY)"),
        ("SELECT ssn::int FROM customers", "public.customers.ssn", "a cast to int4"),
        (
            "SELECT id FROM customers WHERE email LIKE 'a%'",
            "public.customers.email",
            "filtered on (WHERE)",
        ),
        ("SELECT 1 FROM customers GROUP BY email", "public.customers.email", "grouped"),
        ("SELECT 1 FROM users WHERE password_hash = 'x'", "public.users.password_hash", "WHERE"),
        ("ALTER TABLE customers RENAME COLUMN ssn TO s", "public.customers.ssn", "renamed"),
    ],
)
def test_uses_are_denied_naming_the_column(
    planner: SessionMasking, sql: str, column: str, phrase: str
) -> None:
    d = _verdict(planner, sql)
    assert d is not None and d.sqlstate == "42501", sql
    assert d.column == column and column in d.message and phrase in d.message, d.message
    assert "allow" in d.hint and d.detail


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ssn, upper(ssn), length(ssn) FROM customers WHERE id = 1 ORDER BY id",
        "SELECT id FROM customers WHERE email = 'a@b.c'",  # allow: equals
        "SELECT 1 FROM customers a JOIN customers b ON a.email = b.email",  # allow: join
        "SELECT id FROM customers WHERE born > '2000-01-01'",  # allow: filter
        "SELECT id FROM customers WHERE born IN ('2000-01-01')",  # filter implies equals
        "SELECT full_name FROM customers ORDER BY full_name",  # allow: all
        "ALTER TABLE customers RENAME COLUMN full_name TO n",  # allow: all
        "SELECT id FROM customers WHERE ssn IS NULL",  # NULL-ness is not masked
        "SELECT id FROM orders ORDER BY cid",  # nothing masked
    ],
)
def test_allowed_and_harmless_uses(planner: SessionMasking, sql: str) -> None:
    assert _verdict(planner, sql) is None, _verdict(planner, sql)


def test_a_rename_of_a_schema_holding_masked_tables(planner: SessionMasking) -> None:
    d = _verdict(planner, "ALTER SCHEMA public RENAME TO p2")
    assert d is not None and "schema public" in d.message
    assert _verdict(planner, "ALTER SCHEMA other RENAME TO o2") is None


@pytest.mark.parametrize(
    ("sql", "denied"),
    [
        # into an unmasked column
        ("INSERT INTO orders (cid) SELECT ssn FROM customers", True),
        ("UPDATE customers SET id = length(ssn)", True),
        ("CREATE TEMP TABLE t AS SELECT ssn FROM customers", True),
        # the same operator, value unchanged: allowed
        ("INSERT INTO orders (total) SELECT ssn FROM customers", False),
        # the same operator, value computed: partial would show other characters
        ("INSERT INTO orders (total) SELECT reverse(ssn) FROM customers", True),
        # an operator that hides the whole value takes any computed value
        ("INSERT INTO notes (body) SELECT reverse(ssn) FROM customers", False),
        ("INSERT INTO notes (body) SELECT email FROM customers", False),
        # a rule that allows everything lets its column be copied anywhere
        ("INSERT INTO orders (cid) SELECT full_name FROM customers", False),
        # out of the database
        ("COPY (SELECT email FROM customers) TO '/tmp/x'", True),
    ],
)
def test_writes(planner: SessionMasking, sql: str, denied: bool) -> None:
    d = _verdict(planner, sql)
    assert (d is not None) == denied, (sql, d)
    if d is not None:
        assert "cannot be copied into" in d.message and d.use == "write"


@pytest.mark.parametrize(
    ("allow", "error"),
    [
        ("[equals, nonsense]", "unknown use 'nonsense'"),
        ("{equals: true}", "masking.columns[1].allow"),
    ],
)
def test_allow_words_are_validated(allow: str, error: str) -> None:
    text = POLICY.replace("allow: [equals, join]", f"allow: {allow}")
    with pytest.raises(PolicyError) as exc:
        load_policy_text(text, "policy.yaml")
    assert error in str(exc.value) and "policy.yaml:" in str(exc.value)
