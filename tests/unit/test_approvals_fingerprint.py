"""The grant fingerprint: whitespace, comments and case never change it; any change to the parse
tree or to a constant does (hypothesis); parameters and prepared texts are part of it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veilgate.approvals.fingerprint import (
    bind_param_count,
    bind_parameters,
    fingerprint,
    fingerprint_base,
    parse_param_types,
)

TABLES = st.sampled_from(["orders", "customers", "jit_a", "t1"])
COLUMNS = st.sampled_from(["id", "v", "amount", "status"])
OPS = st.sampled_from(["=", "<", ">=", "<>"])
INTS = st.integers(-(10**6), 10**6)
TEXTS = st.text(alphabet="abcXYZ 019'_-", min_size=0, max_size=12)


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A statement as tokens (so it can be re-spaced and re-cased), and its constants."""
    table, col, op = draw(TABLES), draw(COLUMNS), draw(OPS)
    kind = draw(st.sampled_from(["delete", "update", "select"]))
    numeric = draw(st.booleans())
    const = str(draw(INTS)) if numeric else "'" + draw(TEXTS).replace("'", "''") + "'"
    where = ["where", col, op, const]
    if kind == "delete":
        toks = ["delete", "from", table, *where]
    elif kind == "update":
        toks = ["update", table, "set", "v", "=", "'x'", *where]
    else:
        toks = ["select", col, "from", table, *where]
    return " ".join(toks), toks


def _respell(toks: list[str], rnd: random.Random) -> str:
    """The same statement: other spacing, comments, keyword / identifier case."""
    out = []
    for t in toks:
        if not t.startswith("'"):
            t = "".join(c.upper() if rnd.random() < 0.5 else c for c in t)
        out.append(t)
    seps = [" ", "\n", "\t ", "  /* note */ ", " -- x\n", "/**/ "]
    text = "".join(tok + rnd.choice(seps) for tok in out)
    return rnd.choice(["", "  ", "/* lead */ "]) + text + rnd.choice(["", ";", " ; -- end"])


@given(statements(), st.integers(0, 2**32))
def test_spelling_does_not_change_it(stmt: tuple[str, list[str]], seed: int) -> None:
    text, toks = stmt
    other = _respell(toks, random.Random(seed))
    assert fingerprint(text) == fingerprint(other), (text, other)
    assert fingerprint(text, constants=False) == fingerprint(other, constants=False)


@given(statements(), INTS)
def test_any_constant_change_changes_it(stmt: tuple[str, list[str]], new: int) -> None:
    text, toks = stmt
    const = toks[-1]
    if const == str(new):
        return
    changed = " ".join([*toks[:-1], str(new)])
    assert fingerprint(text) != fingerprint(changed)
    # unless the rule says constants do not count
    if not const.startswith("'"):
        assert fingerprint(text, constants=False) == fingerprint(changed, constants=False)


@given(statements(), st.data())
def test_any_tree_change_changes_it(stmt: tuple[str, list[str]], data: st.DataObject) -> None:
    text, toks = stmt
    i = data.draw(st.sampled_from([i for i, t in enumerate(toks) if t in _SWAPS]))
    swapped = " ".join([*toks[:i], _SWAPS[toks[i]], *toks[i + 1 :]])
    assert fingerprint(text) != fingerprint(swapped), (text, swapped)
    assert fingerprint(text, constants=False) != fingerprint(swapped, constants=False)


_SWAPS = {
    "orders": "orders2",
    "customers": "public.customers",
    "jit_a": '"JIT_A"',
    "t1": "t2",
    "id": "idx",
    "v": "w",
    "amount": "status",
    "status": "amount",
    "=": "<>",
    "<": "<=",
    ">=": ">",
    "<>": "=",
}


def test_string_quoting_styles_are_the_same_constant() -> None:
    a = fingerprint("delete from t where v = 'a''b'")
    assert a == fingerprint("delete from t where v = E'a\\'b'")
    assert a == fingerprint("delete from t where v = $$a'b$$")
    assert a != fingerprint("delete from t where v = 'a''c'")


def test_more_statements_and_null_and_unparseable() -> None:
    one = fingerprint("delete from t where id = 1")
    assert one != fingerprint("delete from t where id = 1; delete from t where id = 1")
    assert fingerprint("delete from t where id = NULL", constants=False) != fingerprint(
        "delete from t where id = 1", constants=False
    )
    bad = fingerprint("delete frm t")
    assert bad.startswith("v1raw:") and bad == fingerprint("delete frm t")
    assert bad != fingerprint("delete  frm t")  # exact bytes for what does not parse
    exact = fingerprint("delete from t where id = 1", exact_text=True)
    assert exact.startswith("v1raw:") and exact != one


def test_parameters_types_and_prepared_texts() -> None:
    sql = "delete from t where id = $1"
    base = fingerprint(sql, params=[(0, b"1")])
    assert base != fingerprint(sql, params=[(0, b"2")])
    assert base != fingerprint(sql, params=[(1, b"1")])  # another format is another value
    assert base != fingerprint(sql, params=[(0, None)])
    assert base != fingerprint(sql, params=[(0, b"1")], param_types=[23])
    assert fingerprint(sql, constants=False, params=[(0, b"1")]) == fingerprint(
        sql, constants=False, params=[(0, b"2")]
    )
    run = "execute p(1)"
    assert fingerprint(run, prepared=["prepare p(int) as delete from a where id = $1"]) != (
        fingerprint(run, prepared=["prepare p(int) as delete from b where id = $1"])
    )


def _bind(params: list[bytes | None], formats: list[int]) -> bytes:
    body = b"portal\0stmt\0" + len(formats).to_bytes(2, "big")
    body += b"".join(f.to_bytes(2, "big") for f in formats)
    body += len(params).to_bytes(2, "big")
    for p in params:
        body += (-1).to_bytes(4, "big", signed=True) if p is None else len(p).to_bytes(4, "big") + p
    return body + b"\0\0"


@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=5), st.data())
def test_bind_parameters_round_trip(params: list[bytes | None], data: st.DataObject) -> None:
    formats = data.draw(
        st.sampled_from([[], [1], [i % 2 for i in range(len(params))]] if params else [[]])
    )
    parsed = bind_parameters(_bind(params, formats))
    assert parsed is not None
    portal, stmt, got = parsed
    assert (portal, stmt) == (b"portal", b"stmt")
    assert [v for _, v in got] == params
    for i, (fmt, _) in enumerate(got):
        assert fmt == (formats[0] if len(formats) == 1 else formats[i] if formats else 0)


@given(st.binary(max_size=64))
def test_bind_parameters_never_crashes_on_garbage(body: bytes) -> None:
    bind_parameters(body)
    parse_param_types(body)
    bind_param_count(body)


@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=5), st.data())
def test_count_fingerprint_is_the_params_fingerprint_without_constants(
    params: list[bytes | None], data: st.DataObject
) -> None:
    """The Bind fast path (a rule ignoring constants) reads only the parameter count: its
    fingerprint must be the one the full path computes from the parameters."""
    formats = data.draw(
        st.sampled_from([[], [1], [i % 2 for i in range(len(params))]] if params else [[]])
    )
    body = _bind(params, formats)
    parsed = bind_parameters(body)
    assert parsed is not None
    assert bind_param_count(body) == len(params)
    sql = "delete from jobs where id = $1 and owner = $2"
    base = fingerprint_base(sql, constants=False, param_types=[23, 25])
    assert base.with_count(len(params)) == base.with_params(parsed[2])
    assert base.with_count(len(params)) == base.with_count(len(params))  # cached
    other = fingerprint_base(sql, constants=False, param_types=[23, 25])
    assert other.with_count(len(params) + 1) != base.with_params(parsed[2])
    with pytest.raises(ValueError):
        fingerprint_base(sql, constants=True).with_count(1)


def test_parse_param_types() -> None:
    body = b"s\0select $1, $2\0" + (2).to_bytes(2, "big") + (23).to_bytes(4, "big")
    body += (25).to_bytes(4, "big")
    assert parse_param_types(body) == [23, 25]
    assert parse_param_types(b"s\0select 1\0\0\0") == []
