"""Literal-normalised statement keys, from PostgreSQL's own scanner (the second decision cache).

pgbench, ORMs without prepared statements and most agents send the same statement over and over
with different constants (``... WHERE aid = 4711``).  Caching decisions by exact text misses every
time; :func:`literal_template` gives such texts one key, so the engine can reuse a decision that
did not depend on any constant's value.

Soundness rests on four facts, each checked rather than assumed:

* **The tokens are the server's.**  The text is split by libpg_query's scanner (the PostgreSQL
  lexer, via ``pglast.parser.scan``), so where a literal starts and ends -- across ``E''``
  escapes, dollar quotes, ``U&''`` strings, nested ``/* */`` and ``--`` comments -- is what the
  server sees.  The scanner runs with ``standard_conforming_strings`` on: the engine never uses
  this key when the session has it off, nor for client-only encodings (see
  :class:`~veilgate.policy.engine.SessionContext`).  Text with a NUL (the scanner would stop
  there) or that does not scan gets no key.
* **Only constant values differ.**  The key is the whole text with each constant token replaced by
  a placeholder naming its token kind (``SCONST``, ``ICONST``, ...), everything else verbatim
  (whitespace and comments included), plus the kind of every token.  Two texts with one key have
  the same token sequence except for the values of constants.
* **Every constant is a plain value in the parse tree.**  :meth:`LiteralTemplate.covered_by` checks
  that each constant token is the location of an ``A_Const`` node of the analysed tree (or, for
  ``-5``, of the minus sign the parser folded into it).  Literals the grammar turns into anything
  else -- COPY/LOAD file names, ``DO`` bodies, option values, ``float(p)``, ``FETCH n``, a
  ``UESCAPE`` character -- leave the statement uncovered: exact-text caching only.
* **The decision never read a value.**  The analyzer sets ``reads_literals`` wherever it looks at
  a constant (SET values, ``set_config`` arguments, DO options, function options, EXPLAIN option
  values, ...); such statements are cached by exact text only.

A text that reuses a decision this way must also parse (``pglast.parser.split``, which runs the
full grammar, also gives the statement texts): a few grammar rules reject particular values, and
such a text gets the full analysis (and its denial) instead.

``pglast.parser.normalize`` (libpg_query's ``pg_query_normalize``) is not used for the key: it
writes every constant as ``$n``, which loses the token kinds and cannot tell a text's own ``$1``
parameters from replaced constants.
"""

from __future__ import annotations

from typing import Any, Final

from pglast import parser as _pg

__all__ = ["CONSTANT_TOKENS", "LiteralTemplate", "literal_template", "statement_texts"]

CONSTANT_TOKENS: Final = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"})
"""Scanner token kinds that are constants (string, Unicode string, bit, hex, integer, numeric).
``$1`` parameters, ``TRUE``/``FALSE``/``NULL`` and typed-literal type names are not: they stay
verbatim in the key."""

_MINUS: Final = "ASCII_45"
_PLACEHOLDER: Final = {kind: f"\x00{kind}\x00" for kind in CONSTANT_TOKENS}
"""A constant in the key: NUL never occurs in a keyed text, so it cannot be mistaken for text."""


class LiteralTemplate:
    """The literal-normalised key of one text, and where its constants are."""

    __slots__ = ("_sql", "_tokens", "key")

    def __init__(self, key: tuple[str, tuple[str, ...]], sql: str, tokens: list[Any]) -> None:
        self.key = key
        """(text with constants as placeholders, every token's kind): hashable, compare exactly."""
        self._sql = sql
        self._tokens = tokens

    def anchors(self) -> list[tuple[int, ...]]:
        """Per constant token: the byte offsets where its ``A_Const`` may be located (the token
        start; also a directly preceding minus sign, which the parser folds into ``-5``)."""
        sql = self._sql
        ascii_text = sql.isascii()
        out: list[tuple[int, ...]] = []
        prev_name: str | None = None
        prev_start = 0
        for start, _end, name, _keyword in self._tokens:
            if name in CONSTANT_TOKENS:
                here = start if ascii_text else _byte_offset(sql, start)
                if prev_name == _MINUS:
                    minus = prev_start if ascii_text else _byte_offset(sql, prev_start)
                    out.append((here, minus))
                else:
                    out.append((here,))
            prev_name = name
            prev_start = start
        return out

    def covered_by(self, const_locations: frozenset[int]) -> bool:
        """Whether every constant token is an ``A_Const`` of the tree (``const_locations``: the
        parser's byte locations of all ``A_Const`` nodes the analysis met)."""
        return all(any(a in const_locations for a in anchor) for anchor in self.anchors())


def literal_template(sql: str) -> LiteralTemplate | None:
    """The key of ``sql``; None when it has no constants, a NUL, or does not scan."""
    if "\x00" in sql:
        return None
    try:
        tokens = _pg.scan(sql)
    except (_pg.ParseError, UnicodeError, ValueError):
        return None
    parts: list[str] = []
    pos = 0
    constants = CONSTANT_TOKENS
    for start, end, name, _keyword in tokens:
        if name in constants:
            parts.append(sql[pos:start])
            parts.append(_PLACEHOLDER[name])
            pos = end + 1
    if not parts:
        return None
    parts.append(sql[pos:])
    kinds = tuple([t[2] for t in tokens])
    return LiteralTemplate(("".join(parts), kinds), sql, tokens)


def _byte_offset(sql: str, index: int) -> int:
    """The UTF-8 byte offset of character ``index`` (parser locations are byte offsets)."""
    return len(sql[:index].encode("utf-8"))


def statement_texts(sql: str) -> tuple[str, ...] | None:
    """The statements of ``sql`` as the analysis slices them, or None when the full grammar
    rejects the text."""
    try:
        texts: tuple[str, ...] = _pg.split(sql)
    except (_pg.ParseError, UnicodeError, ValueError):
        return None
    return texts
