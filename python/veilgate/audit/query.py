"""Selecting recorded sessions: filters, the index (the state store) or, without one, the
segments themselves.

``list`` and every command that takes a session filter go through :func:`select_sessions`: the
index answers when the configuration has one; ``--scan`` (or a recording without an index) reads
the segments and builds the same rows from the records (slower, always available).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from .format import GATEWAY_SID
from .index import DECISIONS, SessionFilter, SessionRow, list_sessions, tables_of
from .reader import read_records

__all__ = [
    "FILTER_KEYS",
    "parse_filter",
    "parse_time",
    "rows_from_records",
    "select_sessions",
]

_REL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FILTER_KEYS = ("sid", "principal", "tier", "since", "until", "decision", "table", "fingerprint")


def parse_time(text: str, now: float | None = None) -> float:
    """``2026-11-29``, ``2026-11-29T12:00:00Z`` (ISO 8601), or a duration ago (``90m``, ``2d``)."""
    now = time.time() if now is None else now
    m = _REL.fullmatch(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r}: expected an ISO 8601 time (2026-11-29T12:00:00Z) or a duration ago (2h, 3d)"
        ) from None
    if dt.tzinfo is None:
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_filter(spec: str | None = None, **given: Any) -> SessionFilter:
    """A filter from ``key=value,key=value`` (``all`` or empty: every session), overridden by
    keyword arguments that are not None."""
    values: dict[str, Any] = {}
    if spec and spec.strip().lower() != "all":
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in FILTER_KEYS or not value.strip():
                raise ValueError(
                    f"{part.strip()!r}: expected key=value with key one of {', '.join(FILTER_KEYS)}"
                )
            values[key] = value.strip()
    values.update({k: v for k, v in given.items() if v is not None})
    for key in ("since", "until"):
        if isinstance(values.get(key), str):
            values[key] = parse_time(values[key])
    if values.get("decision") is not None and values["decision"] not in DECISIONS:
        raise ValueError(f"decision: one of {', '.join(DECISIONS)}")
    return SessionFilter(**values)


def rows_from_records(directory: Path) -> list[SessionRow]:
    """Index rows built from the segments (no index needed)."""
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, dict[str, Any]] = {}
    tables: dict[str, set[str]] = {}
    fps: dict[str, set[str]] = {}
    by_fp: dict[str, set[str]] = {}
    for r in read_records(directory):
        sid = r.get("sid")
        if not isinstance(sid, str) or sid == GATEWAY_SID:
            continue
        kind = r.get("kind")
        if kind == "session_start":
            starts[sid] = r
        elif kind == "session_end":
            ends[sid] = r
        elif kind == "statement" and isinstance(r.get("sql"), str):
            fp = str(r.get("fp", ""))
            fps.setdefault(sid, set()).add(fp)
            if fp not in by_fp:
                by_fp[fp] = tables_of(r["sql"])
            tables.setdefault(sid, set()).update(by_fp[fp])
    rows = []
    for sid, s in starts.items():
        p = s.get("principal") or {}
        c = s.get("client") or {}
        t = s.get("target") or {}
        e = ends.get(sid, {})
        rows.append(
            SessionRow(
                sid=sid,
                node=s.get("gateway"),
                started=_ts(s.get("ts")),
                ended=_ts(e["ts"]) if e else None,
                principal=p.get("label"),
                subject=p.get("subject"),
                tenant=p.get("tenant"),
                client_app=p.get("client_app"),
                tier=s.get("tier"),
                target=t.get("name"),
                client_addr=f"{c.get('address')}:{c.get('port')}",
                reason=e.get("reason"),
                statements=int(e.get("statements", 0)),
                errors=int(e.get("errors", 0)),
                refused=int(e.get("refused", 0)),
                denied=int(e.get("denied", 0)),
                held=int(e.get("held", 0)),
                rows=int(e.get("rows", 0)),
                bytes=int(e.get("bytes", 0)),
                terminated=bool(e),
                tables=tuple(sorted(tables.get(sid, ()))),
            )
        )
    rows.sort(key=lambda r: r.started)
    return rows


def table_matches(wanted: str, touched: str) -> bool:
    """A qualified name also matches the unqualified mention (it may have resolved to it); an
    unqualified one matches the table in any schema."""
    w, t = wanted.lower(), touched.lower()
    bare = w.rpartition(".")[2]
    return t in (w, bare) or (w == bare and t.endswith("." + bare))


def _ts(value: Any) -> float:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _matches(row: SessionRow, f: SessionFilter, fps: Iterable[str] = ()) -> bool:
    if f.sid and row.sid != f.sid:
        return False
    exact = (row.subject, row.client_app, row.tenant, row.principal)
    if f.principal and f.principal not in exact and f.principal not in (row.principal or ""):
        return False
    if f.tier and row.tier != f.tier:
        return False
    if f.since is not None and row.ended is not None and row.ended < f.since:
        return False
    if f.until is not None and row.started > f.until:
        return False
    if f.decision:
        value = {
            "deny": row.denied > 0,
            "approve": row.held > 0,
            "refused": row.refused > 0,
            "error": row.errors > 0,
            "allow": row.refused == 0,
        }[f.decision]
        if not value:
            return False
    if f.table and not any(table_matches(f.table, t) for t in row.tables):
        return False
    return not (f.fingerprint and f.fingerprint not in set(fps))


def select_sessions(
    directory: Path, f: SessionFilter, *, state: Any | None = None, scan: bool = False
) -> list[SessionRow]:
    """The sessions ``f`` selects: from the index in ``state`` (a ``StateConfig``), or from the
    segments (``scan``, or no ``state``)."""
    if state is not None and not scan:
        from veilgate.state import open_state

        async def query() -> list[SessionRow]:
            db = open_state(state)
            try:
                return await list_sessions(db, f)
            finally:
                await db.close()

        return asyncio.run(query())
    rows = rows_from_records(directory)
    fps: dict[str, set[str]] = {}
    if f.fingerprint:
        for r in read_records(directory):
            if r.get("kind") == "statement":
                fps.setdefault(str(r.get("sid")), set()).add(str(r.get("fp")))
    out = [r for r in rows if _matches(r, f, fps.get(r.sid, ()))]
    return out[: f.limit] if f.limit else out
