"""Property: random SQL built from the grammar's renaming constructs around a masked column never
returns its value.

Hypothesis composes statements out of the constructs that rename or carry a column -- a table
alias with a column list (names reused: a masked value may come out as ``id``), a subquery with
a column list, a CTE with a column list, a LATERAL subquery, a VALUES list, UNION ALL, a view, a
function in FROM -- nested a few levels deep, with value-preserving and value-scrambling
functions (reverse, translate, encode, casts, COALESCE, CASE, arrays, rows, json) around the
column at every level.  Each statement runs through the unmasked tier and the masked tier (raw
protocol, every byte kept).  The property: no value the unmasked tier returned (each is derived
from a masked column) appears anywhere in what the masked tier's client received, nor does any
raw value of the table in a known form.  Example counts stay CI-friendly (``VEILGATE_
HYPOTHESIS_EXAMPLES`` raises them).
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.adversarial.masking_clients import leaks, make_table, start_gateway
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

COLUMNS = ("id", "ssn", "email", "card", "notes", "api_secret", "label")
MASKED = ("ssn", "email", "card", "api_secret")
"""Columns whose rule hides the whole value (``notes`` is content-scanned: text without an entity
in it passes by design)."""
NAMES = ("a", "b", "v", "x", "id", "label", "ssn", "email", "z1", "z2")
"""Names a construct may give the value (masked and unmasked columns' names reused)."""

WRAPS = (
    "{e}",
    "reverse({e})",
    "lower({e})",
    "upper({e})",
    "{e} || ''",
    "concat('<', {e}, '>')",
    "translate({e}, '0123456789', 'abcdefghij')",
    "encode(convert_to({e}, 'UTF8'), 'hex')",
    "encode(convert_to({e}, 'UTF8'), 'base64')",
    "({e})::text",
    "({e})::varchar",
    "coalesce({e}, 'z')",
    "format('[%s]', {e})",
    "array_to_string(array[{e}, {e}], ',')",
    "(array[{e}])[1]",
    "substr({e}, 2)",
    "left({e}, 200)",
    "to_jsonb({e})::text",
    "row({e}, 1)::text",
    "case when true then {e} else 'x' end",
    "greatest({e}, '')",
    "replace({e}, '-', '')",
)

EXAMPLES = int(os.environ.get("VEILGATE_HYPOTHESIS_EXAMPLES", "40"))


@st.composite
def sources(draw: Any, table: str, depth: int) -> tuple[str, str]:
    """(a FROM item, the name under which it carries a value derived from a masked column)."""
    k = draw(st.integers(0, 10_000))
    wrap = draw(st.sampled_from(WRAPS))
    name = draw(st.sampled_from(NAMES))
    if depth == 0:
        kind = draw(st.sampled_from(["table", "alias", "view"]))
        if kind == "view":
            return f"{table}_v", "ssn"
        col = draw(st.sampled_from(MASKED))
        if kind == "table":
            return table, col
        renamed = draw(st.permutations((*NAMES[:7], "c7", "c8")))
        cols = list(renamed[: len(COLUMNS)])
        return f"{table} as t{k}({', '.join(cols)})", cols[COLUMNS.index(col)]
    inner, col = draw(sources(table, depth - 1))
    expr = wrap.format(e=col)
    kind = draw(st.sampled_from(["subquery", "lateral", "values", "union", "unnest", "cte_like"]))
    if kind == "subquery":
        return f"(select {expr} from {inner}) s{k}({name})", name
    if kind == "lateral":
        return f"(select 1 as one) o{k}, lateral (select {expr} as {name} from {inner}) l{k}", name
    if kind == "values":
        return f"(values ((select {expr} from {inner} limit 1)), ('-')) v{k}({name})", name
    if kind == "union":
        return (
            f"(select {expr} as {name} from {inner} union all select {expr} from {inner}) u{k}",
            name,
        )
    if kind == "unnest":
        return f"unnest(array(select {expr} from {inner})) as f{k}({name})", name
    # a derived table over a join on an unmasked constant column
    return (
        f"(select {name} from (select {expr} as {name}, 1 as j from {inner}) p{k}"
        f" join (select 1 as j) q{k} using (j)) c{k}",
        name,
    )


@st.composite
def statements(draw: Any, table: str) -> str:
    depth = draw(st.integers(0, 3))
    source, col = draw(sources(table, depth))
    wrap = draw(st.sampled_from(WRAPS))
    sql = f"select {wrap.format(e=col)} from {source}"
    if draw(st.booleans()):
        name = draw(st.sampled_from(NAMES))
        sql = f"with w({name}) as ({sql}) select {name} from w"
    return sql


@pytest.fixture(scope="module")
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture(scope="module")
def conns(
    gateway_base_config: Any, gateway_certs: Any, tmp_path_factory: Any
) -> Iterator[tuple[pw.RawConn, pw.RawConn]]:
    tmp = tmp_path_factory.mktemp("adv-prop")
    masked = start_gateway(gateway_base_config, gateway_certs, tmp, "db.masked")
    raw = start_gateway(gateway_base_config, gateway_certs, tmp, "db.raw")
    m = pw.connect(pw.gateway_target(masked).endpoint())
    r = pw.connect(pw.gateway_target(raw).endpoint())
    try:
        yield m, r
    finally:
        m.terminate()
        r.terminate()
        masked.thread.stop()
        raw.thread.stop()


def test_random_renamings_never_return_a_masked_value(
    conns: tuple[pw.RawConn, pw.RawConn], table: str
) -> None:
    masked, raw = conns
    counts = {"ran": 0, "invalid SQL": 0, "refused": 0, "masked": 0}

    def note(what: str) -> None:
        counts[what] += 1
        event(what)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(statements(table))
    def prop(sql: str) -> None:
        got_raw = raw.simple(sql)
        got = masked.simple(sql)
        received = b"".join(m.tag.encode() + m.body for m in got)
        assert not leaks(received), (sql, leaks(received))
        err = pw.first_error(got_raw)
        note("invalid SQL" if err is not None else "ran")
        if err is not None:
            return  # not valid SQL after all (a name the nesting shadowed): nothing to compare
        for m in got_raw:
            if m.tag != "D":
                continue
            for cell in pw.data_row(m.body):
                # every result of these statements is derived from a masked column
                if cell is not None and len(cell) >= 6 and cell not in (b"'-'", b"<-->"):
                    assert cell not in received, (sql, cell)
        masked_err = pw.first_error(got)
        note("refused" if masked_err is not None else "masked")
        assert masked_err is None or masked_err.get("C") == "42501", (sql, masked_err)

    prop()
    # not vacuous: most generated statements are valid SQL that reads masked values
    assert counts["ran"] >= counts["invalid SQL"], counts
    assert counts["masked"] > 0, counts
