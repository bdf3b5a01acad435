"""The native SQL scanner and shape key against pglast (libpg_query), the parser the policy
engine decides with (issue 15 item 2).

* Tokens: on a generated corpus (tests/native/sql_corpus.py: every scanner rule, valid and
  malformed) and on hypothesis-generated texts, ``veilgate_native.sql_tokens`` gives exactly
  pglast's tokens (boundaries and kinds) and refuses exactly the texts pglast's scanner refuses.
* Keys: the native shape key equals the policy engine's literal-normalised key
  (``veilgate.policy.literals``: text with constants as placeholders, plus token kinds) as an
  equivalence: two texts share a native key exactly when they share the policy key, on the
  corpus, on the policy case table and on texts whose constants were all replaced.  The one
  place the native key is stricter: a ``U&''`` string the parser rejects has no key (the policy
  engine's grammar check on a shape hit fails for it).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import veilgate_native as native
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser as pg
from sql_corpus import constant_variant, corpus, pglast_tokens, random_text

from veilgate.policy.literals import literal_template, statement_texts

ROOT = Path(__file__).resolve().parents[2]
CASES: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests" / "policy_cases.yaml").read_text())
CORPUS = corpus(20_000)

EDGE_CASES = [
    "",
    "   ",
    "select 1",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
    "select 'a'\n'b', 'c' 'd'",
    "select 'a' -- it's\n 'b' x",
    "select /* a /* b */ c */ 1",
    "select $a$ x $b$ $a$ 1",
    "select U&'a' UESCAPE '!'",
    "select n'x', N'y', nchar 'z'",
    "select 1..2, 1.e5, .5, $1, 0b101, 0o17, 0x_1F, 1_000_000, 2147483648, 0x7FFFFFFF",
    "select a->>b, a=>b, a<=>b, a=-1, a*-1, a@-1, a !=- 1, a+/*c*/1, a--c",
    'select """x""", u&"d", "é" é, 日本',
    "select x:=1, a::int, a..b, a[1:2]",
    "select e'a\\\\', e'\\'', E'\\xC3\\xA9', E'\\u00e9\\U0001F600', E'\\uD83D\\uDE00'",
    "select \\ { } ? ~ `",
    "select $1a, $1$, $a, $",
    "select 1a",
    "select 0x",
    "select 1_2$",
    "select E'\\xC3'",
    "select E'\\uD83D'",
    "select 'unterminated",
    'select ""',
    "select /* open",
    "select " + "~" * 64,
    "select " + "~" * 63,
    "select $2147483648",
    "select E'\\u'",
    "select 'a'\r'b'",
    "select 'a'\x0b\n'b'",
    "select B'1'\n'0', X'f'\n'f'",
    "select -- comment without newline",
    "select 1 /* ' */ , 2 -- '\n, 3",
]


KINDS = (
    *("WORD", "QIDENT", "UIDENT", "SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"),
    *("PARAM", "Op", "TYPECAST", "DOT_DOT", "COLON_EQUALS", "EQUALS_GREATER", "LESS_EQUALS"),
    *("GREATER_EQUALS", "NOT_EQUALS", "C_COMMENT", "SQL_COMMENT", "NCHAR"),
    *("ASCII_36", "ASCII_59", "ASCII_92"),
)
SOUP = list("'\"$-/*eEuUbBxXnN&\\01_.9+a \n;:=<>!@é")


def _names(tokens: list[tuple[int, int, str]] | None) -> set[str]:
    return {name for _, _, name in tokens or ()}


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases_scan_as_pglast_does(text: str) -> None:
    assert native.sql_tokens(text.encode()) == pglast_tokens(text)


def test_generated_corpus_scans_as_pglast_does() -> None:
    differ = [t for t in CORPUS if native.sql_tokens(t.encode()) != pglast_tokens(t)]
    assert differ == []
    scanned = [pglast_tokens(t) for t in CORPUS]
    refused = sum(1 for t in scanned if t is None)
    # the corpus exercises both sides, and every kind of token
    assert 0.15 * len(CORPUS) < refused < 0.6 * len(CORPUS)
    kinds = set().union(*(_names(t) for t in scanned))
    assert set(KINDS) <= kinds, set(KINDS) - kinds


@settings(max_examples=400, deadline=None)
@given(st.randoms(use_true_random=False))
def test_hypothesis_texts_scan_as_pglast_does(r: random.Random) -> None:
    text = random_text(r)
    assert native.sql_tokens(text.encode()) == pglast_tokens(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(SOUP), max_size=30))
def test_arbitrary_character_soup_scans_as_pglast_does(text: str) -> None:
    assert native.sql_tokens(text.encode()) == pglast_tokens(text)


def test_no_tokens_for_nul_or_invalid_utf8() -> None:
    assert native.sql_tokens(b"select 1\x00") is None
    assert native.shape_key(b"select '\xff'") is None
    assert native.shape_key(b"select 1\x00") is None


# --- keys ----------------------------------------------------------------------------------------


def policy_key(text: str) -> Any:
    """The policy engine's key: literal_template's, or the text itself when it has no
    constant (its decision is cached by exact text); None when pglast does not scan it or it
    holds a NUL (a message's text ends at its first NUL)."""
    if "\x00" in text or pglast_tokens(text) is None:
        return None
    template = literal_template(text)
    if template is not None:
        return template.key
    return ("exact", text)


def _check_key_agrees(text: str) -> None:
    pk, nk = policy_key(text), native.shape_key(text.encode())
    if nk is None and pk is not None:
        # only a U&'' string the parser rejects: the engine's grammar check fails for it too
        assert "USCONST" in _names(pglast_tokens(text)), text
        assert statement_texts(text) is None, text
    else:
        assert (pk is None) == (nk is None), text


def _key_texts() -> list[str]:
    return [c["sql"] for c in CASES] + EDGE_CASES + CORPUS[:5000]


def test_keys_exist_where_the_policy_key_does() -> None:
    for text in _key_texts():
        _check_key_agrees(text)


def test_native_key_classes_equal_policy_key_classes() -> None:
    """Over texts and variants of them (every constant replaced): texts share a native key
    exactly when they share the policy key."""
    r = random.Random(7)
    texts = _key_texts()
    texts += [v for t in texts for v in [constant_variant(t, r)] if v is not None]
    by_native: dict[bytes, set[Any]] = defaultdict(set)
    by_policy: dict[Any, set[bytes]] = defaultdict(set)
    for text in texts:
        nk = native.shape_key(text.encode())
        pk = policy_key(text)
        if nk is None or pk is None:
            continue
        by_native[nk].add(pk)
        by_policy[pk].add(nk)
    assert all(len(v) == 1 for v in by_native.values())  # native equal => policy equal
    assert all(len(v) == 1 for v in by_policy.values())  # policy equal => native equal
    shared = sum(1 for v in by_native.values() if v)
    assert shared > 1000


@pytest.mark.parametrize("case", CASES, ids=[c["sql"][:40] for c in CASES])
def test_case_table_variants_share_keys_as_the_policy_does(case: dict[str, Any]) -> None:
    r = random.Random(case["sql"])
    for _ in range(5):
        variant = constant_variant(case["sql"], r)
        if variant is None:
            return
        same_policy = policy_key(variant) == policy_key(case["sql"])
        same_native = native.shape_key(variant.encode()) == native.shape_key(case["sql"].encode())
        assert same_policy == same_native, (case["sql"], variant)


def test_usconst_escapes_the_parser_rejects_have_no_key() -> None:
    for bad in ("\\zzzz", "\\D83D", "\\DE00", "\\0000", "\\+110000", "\\D83Dx", "\\+12"):
        text = f"select U&'{bad}'"
        assert pglast_tokens(text) is not None
        with pytest.raises(pg.ParseError):
            pg.parse_sql(text)
        assert native.shape_key(text.encode()) is None, bad
    for good in ("\\0041", "\\+01F600", "\\\\", "\\D83D\\DE00", "it''s"):
        text = f"select U&'{good}'"
        pg.parse_sql(text)
        assert native.shape_key(text.encode()) is not None, good
