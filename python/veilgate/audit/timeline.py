"""``veilgate sessions show``: one session as a readable timeline."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

__all__ = ["render_timeline", "short_sql"]


def _ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def short_sql(sql: Any, width: int = 100) -> str:
    if not isinstance(sql, str):
        return "(text unknown)"
    one = " ".join(sql.split())
    return one if len(one) <= width else one[: width - 3] + "..."


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _principal(p: dict[str, Any]) -> str:
    parts = [str(p.get("label") or p.get("subject") or "?")]
    if p.get("tenant"):
        parts.append(f"tenant {p['tenant']}")
    if p.get("client_app"):
        parts.append(f"client app {p['client_app']}")
    if p.get("token_id"):
        parts.append(f"token id {p['token_id']}")
    return ", ".join(parts)


def _statement(r: dict[str, Any]) -> str:
    d = r.get("decision")
    decision = ""
    if isinstance(d, dict):
        action = str(d.get("action", "?"))
        decision = f"{action if action == 'allow' else action.upper()} ({d.get('rule')}) "
    status = str(r.get("status", "?"))
    outcome = status
    if r.get("tag"):
        outcome = str(r["tag"]) if status == "ok" else f"{status} {r['tag']}"
    if r.get("sqlstate"):
        outcome += f" {r['sqlstate']}"
    rows = r.get("rows", 0)
    ms = int(r.get("duration_us", 0)) / 1000
    text = short_sql(r.get("sql"))
    if r.get("sql") is None and r.get("stmt_name"):
        text = f"(prepared statement {r['stmt_name']!r}, text not seen)"
    return (
        f"#{r.get('stmt')} {r.get('path')} {decision}-> {outcome}, {rows} rows, "
        f"{_size(int(r.get('bytes', 0)))}, {ms:.2f} ms  {text}"
    )


def render_timeline(records: Iterable[dict[str, Any]]) -> str:
    """The session's records, one line each, times relative to its start."""
    lines: list[str] = []
    t0: datetime | None = None
    for r in records:
        kind = r.get("kind")
        ts = _ts(r.get("ts"))
        if kind == "statement" and ts is not None:
            # a statement record is written when it ends: show it where it started
            ts -= timedelta(microseconds=int(r.get("duration_us", 0)))
        if t0 is None and ts is not None:
            t0 = ts
        rel = f"+{(ts - t0).total_seconds():9.3f}s" if ts and t0 else " " * 11
        if kind == "session_start":
            c = r.get("client") or {}
            t = r.get("target") or {}
            tls = c.get("tls") or {}
            lines.append(f"session {r.get('sid')}  started {r.get('ts')}  on {r.get('gateway')}")
            lines.append(f"  principal: {_principal(r.get('principal') or {})}")
            lines.append(
                f"  client: {c.get('address')}:{c.get('port')} user {c.get('user')!r} "
                f"application {c.get('application_name')!r} "
                f"TLS {tls.get('version', 'none')} {tls.get('cipher') or ''}".rstrip()
            )
            policy = "on" if r.get("policy") else "off"
            masked = "yes" if r.get("masked") else "no"
            lines.append(
                f"  tier: {r.get('tier')}  target: {t.get('name')} ({t.get('host')}:{t.get('port')}"
                f"/{t.get('dbname')} as {t.get('login')})  policy: {policy}  masked: {masked}"
            )
        elif kind == "statement":
            lines.append(f"{rel}  {_statement(r)}")
        elif kind == "mask":
            ents = ", ".join(f"{k} {v}" for k, v in sorted((r.get("entities") or {}).items()))
            cols = ", ".join(sorted((r.get("columns") or {}).keys()))
            lines.append(f"{rel}  masked: {ents} (columns {cols})")
        elif kind == "session_end":
            lines.append(
                f"{rel}  end: {r.get('reason')}; {r.get('statements')} statements, "
                f"{r.get('errors')} errors, {r.get('refused')} refused, {r.get('rows')} rows, "
                f"{_size(int(r.get('bytes', 0)))}"
            )
        elif kind == "gap":
            lines.append(f"{rel}  GAP: {r.get('dropped')} records dropped (audit log unavailable)")
        else:
            extra = {
                k: v for k, v in r.items() if k not in ("seq", "sid", "n", "ts", "kind", "prev")
            }
            lines.append(f"{rel}  {kind}: {extra}")
    return "\n".join(lines)
