"""``veilgate sessions replay``: re-emit a recorded session's statements, to standard output (a
script) or to a PostgreSQL server of a test environment.

Only what can be replayed faithfully is: statements with their whole text (not cut, not
redacted) and without parameters (their values are never recorded).  Statements the gateway
refused, or the server skipped, are left out unless ``include_refused``.  Each statement left out
is listed with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from .reader import Record

__all__ = ["ReplayItem", "ReplayResult", "plan", "to_script", "to_server"]

_PARAM = re.compile(r"\$\d+")


@dataclass(frozen=True, slots=True)
class ReplayItem:
    record: Record
    skip: str | None
    """Why it is left out (None: replayed)."""

    @property
    def sql(self) -> str:
        return str(self.record.get("sql") or "")


def _skip_reason(r: Record, include_refused: bool) -> str | None:
    sql = r.get("sql")
    if not isinstance(sql, str):
        return "its text was not seen (a statement prepared with SQL PREPARE)"
    if r.get("sql_truncated"):
        return f"its text was recorded cut off ({r.get('sql_len')} bytes)"
    if "'***'" in sql:
        return "a credential in it was redacted"
    if r.get("path") in ("extended", "parse") and _PARAM.search(sql):
        return "it takes parameters, whose values are never recorded"
    status = r.get("status")
    if status in ("refused", "skipped") and not include_refused:
        return f"it did not run ({status})"
    if r.get("path") == "function":
        return "a protocol-level FunctionCall cannot be replayed as SQL"
    return None


def plan(records: Iterable[Record], *, include_refused: bool = False) -> list[ReplayItem]:
    """The session's statements in order, each with why it is left out (or None)."""
    out: list[ReplayItem] = []
    for r in records:
        if r.get("kind") != "statement":
            continue
        if r.get("status") == "suspended" and out and out[-1].record.get("sql") == r.get("sql"):
            continue  # the same portal fetched again: one execution of its statement
        out.append(ReplayItem(r, _skip_reason(r, include_refused)))
    return out


def _terminated(sql: str) -> str:
    s = sql.rstrip()
    return s if s.endswith(";") else s + ";"


def to_script(items: Iterable[ReplayItem], out: TextIO) -> int:
    """A psql script: replayable statements, the others as comments.  Returns the count."""
    n = 0
    for it in items:
        r = it.record
        out.write(f"-- #{r.get('stmt')} {r.get('ts')} {r.get('status')} {r.get('tag') or ''}\n")
        if it.skip is None:
            out.write(_terminated(it.sql) + "\n")
            n += 1
        else:
            out.write(f"-- not replayed: {it.skip}\n")
            for line in (it.sql or "").splitlines() or [""]:
                out.write(f"--   {line}\n")
    return n


@dataclass
class ReplayResult:
    replayed: int = 0
    same: int = 0
    differed: list[tuple[Record, str]] = field(default_factory=list)
    skipped: int = 0


def to_server(
    items: Iterable[ReplayItem], dsn: str, *, stop_on_error: bool = False, log: TextIO
) -> ReplayResult:
    """Run the replayable statements on ``dsn`` (autocommit, in order) and compare each
    outcome (command tag or SQLSTATE) with the recorded one."""
    import psycopg

    res = ReplayResult()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for it in items:
            if it.skip is not None:
                res.skipped += 1
                continue
            r = it.record
            res.replayed += 1
            try:
                cur = conn.execute(it.sql.encode())  # the text as recorded, no client-side params
                got = f"ok {cur.statusmessage or ''}".strip()
            except psycopg.Error as exc:
                got = f"error {exc.sqlstate or ''}".strip()
            want = (
                f"ok {r.get('tag') or ''}".strip()
                if r.get("status") in ("ok", "suspended")
                else (f"error {r.get('sqlstate') or ''}".strip())
            )
            if r.get("status") == "suspended":
                want = got if got.startswith("ok") else want
            if got == want:
                res.same += 1
            else:
                res.differed.append((r, got))
                log.write(
                    f"#{r.get('stmt')}: recorded {want!r}, replay {got!r}: {_short(it.sql)}\n"
                )
                if stop_on_error and got.startswith("error"):
                    break
    return res


def _short(sql: str, width: int = 80) -> str:
    one = " ".join(sql.split())
    return one if len(one) <= width else one[: width - 3] + "..."
