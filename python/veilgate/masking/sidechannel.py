"""Masking of what a masked session receives besides rows (issue 10, item 3).

ErrorResponse and NoticeResponse fields, NotificationResponse payloads and ParameterStatus values
can carry data: ``Key (email)=(alice@example.org) already exists``, ``Failing row contains (...)``,
``invalid input syntax for type integer: "536-22-8141"``, ``RAISE NOTICE '%', ssn`` in a
function, ``pg_notify('ch', ssn)`` from another session, ``set_config('application_name', ...)``.
On a masked tier:

* **Structured echoes** are masked with the column rules: the values of ``Key (cols)=(values)``
  with the rule of the reported table's column (one column: its operator; several: the whole
  tuple redacted), ``Failing row contains (...)`` redacted when the reported table has a masked
  column (the row's values cannot be split back into columns with certainty).
* **Values quoted in messages** (``"..."``) are redacted -- or masked with the column's rule when
  the statement involves exactly one masked column -- when the failing statement reads, uses or
  writes a masked column (its resolution says so); names the statement itself spells (a column
  or table name) stay.
* **Everything else** in the message, detail, hint, context, internal query, notification channel
  and payload and non-protocol ParameterStatus values is content-scanned with the tier's
  detectors, like a value of unknown lineage.

Only these (rare) messages are surfaced to Python on masked sessions: the row path pays nothing.
"""

from __future__ import annotations

import re
import struct
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

from .resolve import Col, Resolution

if TYPE_CHECKING:
    from .planner import SessionMasking

__all__ = ["SideChannelMasker"]

_TEXT_FIELDS: Final = frozenset(b"MDHWq")
"""Error / notice fields that carry free text (message, detail, hint, where, internal query)."""

_PROTOCOL_PARAMETERS: Final = frozenset(
    {
        "client_encoding",
        "server_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
        "server_version",
        "is_superuser",
        "session_authorization",
        "in_hot_standby",
        "default_transaction_read_only",
        "scram_iterations",
    }
)
"""ParameterStatus values clients parse: never rewritten (no data in them)."""

_KEY = re.compile(
    r"Key \(([^)]*)\)=\((.*?)\)(?= already exists| is not present| is still| conflicts|\.|$)"
)
_FAILING_ROW = re.compile(r"(Failing row contains )\((.*)\)", re.S)
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
REDACTED: Final = "<MASKED>"


class SideChannelMasker:
    """Masks error / notice / notification / parameter messages of one masked session."""

    def __init__(self, planner: SessionMasking) -> None:
        self.planner = planner

    # --- messages (bodies in, bodies out; None: unchanged) -------------------------------------

    def error_or_notice(self, body: bytes, res: Resolution | None, text: str = "") -> bytes | None:
        """An ErrorResponse / NoticeResponse body, masked; ``res`` is the resolution of the
        statement it answers (None: not known), ``text`` that statement's text."""
        fields = _fields(body)
        if fields is None:
            return None  # malformed: the client gets what the server sent (nothing to parse)
        by = {k: v for k, v in fields}
        table = (by.get(ord("s"), ""), by.get(ord("t"), ""))
        involved = self._masked_columns(res)
        names = _identifiers(text) if involved else frozenset()
        changed = False
        out = []
        for code, value in fields:
            new = value
            if code in _TEXT_FIELDS:
                new = self._structured(new, table)
                if involved:
                    new = self._quoted(new, involved, names)
                new = self._scan(new)
            changed = changed or new != value
            out.append((code, new))
        if not changed:
            return None
        return b"".join(bytes([c]) + v.encode("utf-8") + b"\0" for c, v in out) + b"\0"

    def notification(self, body: bytes) -> bytes | None:
        """A NotificationResponse body (pid, channel, payload) with channel and payload
        content-scanned."""
        try:
            (pid,) = struct.unpack_from("!i", body, 0)
            end = body.index(b"\0", 4)
            channel = body[4:end].decode("utf-8", "replace")
            payload = body[end + 1 : body.index(b"\0", end + 1)].decode("utf-8", "replace")
        except (ValueError, struct.error):
            return None
        ch, pl = self._scan(channel), self._scan(payload)
        if ch == channel and pl == payload:
            return None
        return struct.pack("!i", pid) + ch.encode() + b"\0" + pl.encode() + b"\0"

    def parameter_status(self, body: bytes) -> bytes | None:
        parts = body.split(b"\0")
        if len(parts) != 3:
            return None
        name = parts[0].decode("utf-8", "replace")
        if name in _PROTOCOL_PARAMETERS:
            return None
        value = parts[1].decode("utf-8", "replace")
        new = self._scan(value)
        return None if new == value else parts[0] + b"\0" + new.encode() + b"\0"

    # --- pieces ----------------------------------------------------------------------------------

    def _masked_columns(self, res: Resolution | None) -> list[Col]:
        """The masked columns a statement reads, uses or writes (sorted, for a stable choice)."""
        if res is None:
            return []
        cols: set[Col] = set(res.lineage.cols)
        for u in res.uses:
            cols |= u.cols
        for w in res.writes:
            cols |= w.source.cols
        masks = self.planner.masks
        return sorted((c for c in cols if c.table != "*" and masks(c)), key=Col.label)

    def _structured(self, text: str, table: tuple[str, str]) -> str:
        if "Key (" in text:
            text = _KEY.sub(lambda m: self._key(m, table), text)
        if "Failing row contains" in text:
            text = _FAILING_ROW.sub(lambda m: self._row(m, table), text)
        return text

    def _key(self, m: re.Match[str], table: tuple[str, str]) -> str:
        cols = [c.strip().strip('"') for c in m.group(1).split(",")]
        value = m.group(2)
        rules = [self._rule_for(table, c) for c in cols]
        masked = [r for r in rules if r is not None and r.masks]
        if not masked:
            return m.group(0)
        # one column: its own masked form; several: the values cannot be split back safely
        value = self._apply(masked[0], value) if len(cols) == 1 else REDACTED
        return f"Key ({m.group(1)})=({value})"

    def _row(self, m: re.Match[str], table: tuple[str, str]) -> str:
        schema, name = table
        tier = self.planner.tier
        masked = tier.table_may_mask(schema or None, name) if name else tier.masks_any
        if masked or tier.name_rules:
            return f"{m.group(1)}({REDACTED})"
        return m.group(0)

    def _rule_for(self, table: tuple[str, str], column: str) -> Any:
        schema, name = table
        if schema and name:
            return self.planner.base_rule(Col(schema, name, column))
        # no schema (or no table) reported: any rule that could match the column
        tier = self.planner.tier
        for r in tier.column_rules:
            if not r.masks or not fnmatchcase(column, r.column_pattern):
                continue
            if not name or fnmatchcase(name, r.table_pattern.rsplit(".", 1)[-1]):
                return r
        return tier.name_rule(column)

    def _quoted(self, text: str, involved: list[Col], names: frozenset[str]) -> str:
        rule = self.planner.base_rule(involved[0]) if len(involved) == 1 else None

        def sub(m: re.Match[str]) -> str:
            inner = m.group(1)
            if inner.replace('""', '"') in names or not inner:
                return m.group(0)
            return '"' + (self._apply(rule, inner) if rule is not None else REDACTED) + '"'

        return _QUOTED.sub(sub, text)

    def _apply(self, rule: Any, value: str) -> str:
        """``value`` masked by a column rule (a scan for ``scan: true``); NULL-ing operators and
        failures give the redaction tag."""
        try:
            op = self.planner.tier.operator_for(rule)
            if op is None:
                return value
            out = op.mask(value) if hasattr(op, "mask") else op.apply(value)
        except Exception:  # fail closed: never the raw value
            return REDACTED
        return REDACTED if out is None else str(out)

    def _scan(self, text: str) -> str:
        if not text:
            return text
        try:
            out = self.planner.tier.scanner.mask(text)
        except Exception:
            return REDACTED
        return text if out is None else str(out)


def _fields(body: bytes) -> list[tuple[int, str]] | None:
    out: list[tuple[int, str]] = []
    pos = 0
    n = len(body)
    while pos < n:
        code = body[pos]
        if code == 0:
            return out
        end = body.find(b"\0", pos + 1)
        if end < 0:
            return None
        out.append((code, body[pos + 1 : end].decode("utf-8", "replace")))
        pos = end + 1
    return None


def _identifiers(text: str) -> frozenset[str]:
    """Names the statement spells (identifiers and keywords, and dotted ``a.b`` / ``a.b.c``
    runs of them): an error may quote them back; they are the client's own text."""
    from pglast import parser as _pg

    try:
        tokens = _pg.scan(text)
    except Exception:
        return frozenset()
    out: set[str] = set()
    run: list[str] = []
    dot = False
    for tok in tokens:
        start, end, name, kind = tok
        if name == "IDENT" or kind != "NO_KEYWORD":
            word = text[start : end + 1]
            if word.startswith('"') and word.endswith('"'):
                word = word[1:-1].replace('""', '"')
            run = [*run[-2:], word] if dot else [word]
            for i in range(len(run)):
                joined = ".".join(run[i:])
                out.add(joined)
                out.add(joined.lower())
            dot = False
        elif name == "ASCII_46":  # "."
            dot = True
        else:
            run, dot = [], False
    return frozenset(out)
