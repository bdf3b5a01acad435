"""What running a SQL statement does to the server's statement and portal namespace.

Sans-IO, used by :mod:`veilgate.gateway.mirror`: ``PREPARE`` / ``DEALLOCATE`` / ``DISCARD ALL``
change the prepared statements (protocol Parse shares their namespace), ``DECLARE`` / ``CLOSE``
the portals (protocol Bind shares theirs), and transaction control ends portals.  Parsed with the
server's own parser (pglast), cached per text.  Names are the server's (identifiers folded as the
server folds them), as bytes in UTF-8.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Any, Final

from pglast import parser as _pg

__all__ = ["Effect", "may_have_effects", "statement_effects"]

PREPARE: Final = "prepare"
DEALLOCATE: Final = "deallocate"
DECLARE: Final = "declare"
CLOSE: Final = "close"
DISCARD_ALL: Final = "discard_all"
BEGIN: Final = "begin"
COMMIT: Final = "commit"
ROLLBACK: Final = "rollback"
SAVEPOINT: Final = "savepoint"
RELEASE: Final = "release"
ROLLBACK_TO: Final = "rollback_to"
PREPARE_TRANSACTION: Final = "prepare_transaction"
NONE: Final = "none"

_CURSOR_OPT_HOLD: Final = 0x0020
_WORDS: Final = (
    "prepare",
    "deallocate",
    "declare",
    "close",
    "discard",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
)
"""A statement with an effect starts with one of these (they are utility statements: no WITH,
no parentheses before them)."""
_CACHE_MAX: Final = 2048


@dataclass(frozen=True, slots=True)
class Effect:
    """One statement's effect.  ``name`` is None for the ``ALL`` forms; ``query`` is the text
    a PREPARE'd statement or a DECLAREd cursor runs."""

    kind: str
    name: bytes | None = None
    query: str = ""
    hold: bool = False
    text: str = ""
    """The statement's own text."""


_NO_EFFECT: Final = Effect(NONE)
_MISSING: Final[Any] = object()
_cache: OrderedDict[str, tuple[Effect, ...] | None] = OrderedDict()
_lock = Lock()


def statement_effects(text: str) -> tuple[Effect, ...] | None:
    """The effect of each statement of ``text``, in order; None when it does not parse (the
    server refuses it too).  A text without a namespace keyword is not parsed: ``()`` (its
    statements have no effect; how many there are does not matter)."""
    if not _may_have_effects(text):
        return ()
    with _lock:
        hit = _cache.get(text, _MISSING)
        if hit is not _MISSING:
            _cache.move_to_end(text)
            result: tuple[Effect, ...] | None = hit
            return result
    out = _parse(text)
    with _lock:
        _cache[text] = out
        if len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)
    return out


_WORDS_B: Final = tuple(w.encode() for w in _WORDS)


def may_have_effects(body: bytes) -> bool:
    """:func:`_may_have_effects` on a Query body as it arrives (no decoding): the fast path of
    every Query on a policy session."""
    head = body.lstrip()
    if not head or head[0] == 0:
        return False
    if head[0] in b"/-":
        return True
    end = head.find(b"\0")
    if end >= 0:
        head = head[:end]
    if b";" in head.rstrip().rstrip(b";"):
        return True
    words = head[:12].split(None, 1)
    return bool(words) and words[0].lower().startswith(_WORDS_B)


def _may_have_effects(text: str) -> bool:
    """Cheap and conservative (this runs for every Query of a policy session): false only when
    the text is one statement whose first word starts no namespace statement."""
    head = text.lstrip()
    if not head:
        return False
    if head[0] in "/-" or ";" in head.rstrip().rstrip(";"):
        return True  # a leading comment, or several statements: look closer
    word = head[:12].split(None, 1)[0].lower()
    return word.startswith(_WORDS)


def _parse(text: str) -> tuple[Effect, ...] | None:
    try:
        stmts = json.loads(_pg.parse_sql_json(text)).get("stmts", [])
    except Exception:
        return None
    raw = text.encode("utf-8", "surrogatepass")
    out: list[Effect] = []
    for s in stmts:
        loc = int(s.get("stmt_location", 0))
        length = s.get("stmt_len")
        piece = raw[loc : loc + int(length)] if length else raw[loc:]
        out.append(_effect(s.get("stmt", {}), piece.decode("utf-8", "replace")))
    return tuple(out)


def _name(value: Any) -> bytes:
    return str(value).encode("utf-8", "surrogatepass")


def _effect(stmt: dict[str, Any], text: str) -> Effect:
    if not stmt:
        return _NO_EFFECT
    node, body = next(iter(stmt.items()))
    if node == "PrepareStmt":
        return Effect(PREPARE, _name(body["name"]), _after_keyword(text, "AS"), text=text)
    if node == "DeallocateStmt":
        name = body.get("name")
        return Effect(DEALLOCATE, None if body.get("isall") or not name else _name(name))
    if node == "DeclareCursorStmt":
        hold = bool(int(body.get("options", 0)) & _CURSOR_OPT_HOLD)
        return Effect(DECLARE, _name(body["portalname"]), _after_keyword(text, "FOR"), hold)
    if node == "ClosePortalStmt":
        name = body.get("portalname")
        return Effect(CLOSE, _name(name) if name else None)
    if node == "DiscardStmt":
        return Effect(DISCARD_ALL) if body.get("target") == "DISCARD_ALL" else _NO_EFFECT
    if node == "TransactionStmt":
        return _transaction(body)
    return _NO_EFFECT


def _transaction(body: dict[str, Any]) -> Effect:
    kind = body.get("kind", "")
    sp = body.get("savepoint_name")
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        return Effect(BEGIN)
    if kind == "TRANS_STMT_COMMIT":
        return Effect(COMMIT)
    if kind == "TRANS_STMT_ROLLBACK":
        return Effect(ROLLBACK)
    if kind == "TRANS_STMT_SAVEPOINT" and sp:
        return Effect(SAVEPOINT, _name(sp))
    if kind == "TRANS_STMT_RELEASE" and sp:
        return Effect(RELEASE, _name(sp))
    if kind == "TRANS_STMT_ROLLBACK_TO" and sp:
        return Effect(ROLLBACK_TO, _name(sp))
    if kind == "TRANS_STMT_PREPARE":
        return Effect(PREPARE_TRANSACTION)
    return _NO_EFFECT


def _after_keyword(text: str, keyword: str) -> str:
    """The text after the first ``keyword`` token outside parentheses (``PREPARE p (int) AS
    <query>``, ``DECLARE c CURSOR FOR <query>``)."""
    try:
        tokens = _pg.scan(text)
    except Exception:
        return ""
    depth = 0
    for tok in tokens:
        if tok.name == "ASCII_40":
            depth += 1
        elif tok.name == "ASCII_41":
            depth -= 1
        elif depth == 0 and tok.name == keyword:
            return text[tok.end + 1 :].strip().rstrip(";").strip()
    return ""
