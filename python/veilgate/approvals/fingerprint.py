"""What a grant is bound to: the statement's normalised parse tree (and its parameters).

The text is parsed with PostgreSQL's own parser (pglast / libpg_query); the tree, with the
parser's source locations removed, is serialised canonically and hashed.  So whitespace,
comments, keyword case, unquoted identifier case and the quoting style of a string constant do
not change the fingerprint, while any change to the tree (another table, column, operator, clause,
a quoted identifier's case) or to a constant's value does.  ``constants=False`` (a rule's
``match_constants: false``) replaces every constant by a placeholder (``NULL`` stays distinct).

What else the server will run is mixed in: the texts of the prepared statements an ``EXECUTE``
names (re-preparing the name under another text changes the fingerprint), and for the extended
protocol the parameter type OIDs from Parse and the parameter values and formats from Bind (when
constants count).  Texts the gateway cannot lex as the server will (``standard_conforming_strings
= off``, client-only encodings) and texts the parser rejects are bound to their exact bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

from pglast import parser as _pg

__all__ = [
    "Fingerprint",
    "FingerprintBase",
    "bind_param_count",
    "bind_parameters",
    "fingerprint",
    "fingerprint_base",
    "parse_param_types",
    "tree_fingerprint",
]

_DROP: Final = frozenset({"location", "stmt_location", "stmt_len", "version"})
_VERSION: Final = "v1"


class Fingerprint(str):
    """A grant fingerprint: ``v1:<hex>`` (normalised tree) or ``v1raw:<hex>`` (exact text)."""

    __slots__ = ()


def _normalise(node: Any, constants: bool) -> Any:
    if isinstance(node, dict):
        if not constants and "A_Const" in node and len(node) == 1:
            inner = node["A_Const"]
            return {"A_Const": "NULL" if inner.get("isnull") else "?"}
        return {k: _normalise(v, constants) for k, v in node.items() if k not in _DROP}
    if isinstance(node, list):
        return [_normalise(v, constants) for v in node]
    return node


def tree_fingerprint(sql: str, *, constants: bool = True) -> str | None:
    """The hash of ``sql``'s normalised parse tree; None when the parser rejects it."""
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except _pg.ParseError:
        return None
    canonical = json.dumps(
        _normalise(tree, constants), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class FingerprintBase:
    """The part of a fingerprint fixed at Parse (text, prepared texts, parameter types); each
    Bind adds its parameters (:meth:`with_params`, a hash copy: cheap)."""

    __slots__ = ("_counts", "_h", "constants", "kind")

    def __init__(self, kind: str, h: Any, constants: bool) -> None:
        self.kind = kind
        self._h = h
        self.constants = constants
        self._counts: dict[int, Fingerprint] = {}

    def with_params(self, params: Sequence[tuple[int, bytes | None]] = ()) -> Fingerprint:
        h = self._h.copy()
        if self.constants:
            for fmt, value in params:
                if value is None:
                    h.update(b"\0param\0null")
                else:
                    h.update(b"\0param\0%d\0%d\0" % (fmt, len(value)) + value)
        elif params:
            h.update(b"\0params\0%d" % len(params))
        return Fingerprint(f"{self.kind}:{h.hexdigest()[:40]}")

    def with_count(self, n: int) -> Fingerprint:
        """:meth:`with_params` of ``n`` parameters for a base that leaves constants out (only
        their number counts then): no parameter is read; cached per ``n``."""
        if self.constants:
            raise ValueError("with_count is for a base without constants")
        fp = self._counts.get(n)
        if fp is None:
            h = self._h.copy()
            if n:
                h.update(b"\0params\0%d" % n)
            fp = Fingerprint(f"{self.kind}:{h.hexdigest()[:40]}")
            if len(self._counts) >= 8:
                self._counts.clear()
            self._counts[n] = fp
        return fp


def bind_param_count(body: bytes) -> int | None:
    """The number of parameters of a Bind body, read from its header (None when the header is
    malformed)."""
    i = body.find(b"\0")
    j = body.find(b"\0", i + 1) if i >= 0 else -1
    if j < 0:
        return None
    pos = j + 1
    if pos + 2 > len(body):
        return None
    nfmt = int.from_bytes(body[pos : pos + 2], "big")
    pos += 2 + 2 * nfmt
    if pos + 2 > len(body):
        return None
    return int.from_bytes(body[pos : pos + 2], "big")


def fingerprint_base(
    sql: str,
    *,
    constants: bool = True,
    exact_text: bool = False,
    prepared: Sequence[str] = (),
    param_types: Sequence[int] = (),
) -> FingerprintBase:
    """See :func:`fingerprint` (everything but the parameters)."""
    tree = None if exact_text else tree_fingerprint(sql, constants=constants)
    h = hashlib.sha256()
    if tree is None:
        kind = f"{_VERSION}raw"
        h.update(b"text\0" + sql.encode("utf-8", "surrogatepass"))
    else:
        kind = _VERSION
        h.update(b"tree\0" + tree.encode())
    for text in prepared:
        sub = None if exact_text else tree_fingerprint(text, constants=constants)
        h.update(b"\0prepared\0" + (sub or text).encode("utf-8", "surrogatepass"))
    if param_types:
        h.update(b"\0types\0" + ",".join(str(t) for t in param_types).encode())
    return FingerprintBase(kind, h, constants)


def fingerprint(
    sql: str,
    *,
    constants: bool = True,
    exact_text: bool = False,
    prepared: Sequence[str] = (),
    param_types: Sequence[int] = (),
    params: Sequence[tuple[int, bytes | None]] = (),
) -> Fingerprint:
    """The fingerprint a grant for ``sql`` is bound to.

    ``exact_text``: bind to the exact text (the gateway cannot lex it as the server will).
    ``prepared``: texts of the prepared statements the message ``EXECUTE``s.  ``param_types``:
    Parse's parameter type OIDs.  ``params``: Bind's (format, value) pairs, mixed in only when
    ``constants`` count (otherwise only their number).
    """
    base = fingerprint_base(
        sql,
        constants=constants,
        exact_text=exact_text,
        prepared=prepared,
        param_types=param_types,
    )
    return base.with_params(params)


def bind_parameters(body: bytes) -> tuple[bytes, bytes, list[tuple[int, bytes | None]]] | None:
    """(portal, statement, [(format, value)]) of a Bind body; None when it is malformed (the
    server will refuse it with a protocol error)."""
    try:
        i = body.index(b"\0")
        j = body.index(b"\0", i + 1)
        portal, stmt = body[:i], body[i + 1 : j]
        pos = j + 1
        nfmt = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        formats = [int.from_bytes(body[pos + 2 * k : pos + 2 * k + 2], "big") for k in range(nfmt)]
        pos += 2 * nfmt
        nparams = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        out: list[tuple[int, bytes | None]] = []
        for k in range(nparams):
            length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
            pos += 4
            fmt = formats[0] if nfmt == 1 else (formats[k] if nfmt else 0)
            if length < 0:
                out.append((fmt, None))
                continue
            value = body[pos : pos + length]
            if len(value) != length:
                return None
            out.append((fmt, value))
            pos += length
        if nfmt not in (0, 1, nparams) or pos + 2 > len(body):
            return None
        return portal, stmt, out
    except ValueError:
        return None


def parse_param_types(body: bytes) -> list[int]:
    """The parameter type OIDs of a Parse body (empty when absent or malformed)."""
    try:
        i = body.index(b"\0")
        j = body.index(b"\0", i + 1)
    except ValueError:
        return []
    pos = j + 1
    n = int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    if len(body) < pos + 4 * n:
        return []
    return [int.from_bytes(body[pos + 4 * k : pos + 4 * k + 4], "big") for k in range(n)]
