"""The session index: one row per session, for ``veilgate sessions list`` and ``show``.

Written by a thread of its own (never on the event loop): a row when a session starts, its end
(reason, totals, the tables and statement fingerprints it touched) when it ends, and the
sequence number of its terminator once that is written.  The segments stay the record; the index
can be rebuilt from them (``veilgate audit reindex``).

Backend: SQLite (``<audit dir>/index.sqlite``).  Tables touched come from the session's distinct
statements (the engine keeps their first text per fingerprint), analysed once per fingerprint
with the policy's parser, off the data path.

When the index cannot be written (disk full, database gone), the operations wait in memory and
are retried every second; the recorder treats that as a recording failure (``on_state``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veilgate import log

if TYPE_CHECKING:
    from veilgate.gateway.session import Session

__all__ = [
    "IndexWriter",
    "SessionFilter",
    "SessionIndex",
    "SessionRow",
    "tables_of",
]

logger = log.get("audit.index")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY,
    node TEXT,
    started REAL NOT NULL,
    ended REAL,
    provider TEXT,
    tenant TEXT,
    subject TEXT,
    client_app TEXT,
    principal TEXT,
    tier TEXT,
    target TEXT,
    client_addr TEXT,
    reason TEXT,
    statements INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    denied INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    rows_out INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    terminator_seq INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started);
CREATE INDEX IF NOT EXISTS sessions_principal ON sessions (subject);
CREATE TABLE IF NOT EXISTS session_tables (
    sid TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (sid, name));
CREATE INDEX IF NOT EXISTS session_tables_name ON session_tables (name);
CREATE TABLE IF NOT EXISTS session_fingerprints (
    sid TEXT NOT NULL, fp TEXT NOT NULL, PRIMARY KEY (sid, fp));
"""

RETRY_S = 1.0
COMMIT_EVERY_S = 0.2


def tables_of(sql: str) -> set[str]:
    """The tables a statement reads or writes (``schema.name`` or ``name``), by the policy's
    parser; empty when it does not parse."""
    from veilgate.policy.analysis import analyze

    try:
        msg = analyze(sql)
    except Exception:
        return set()
    out: set[str] = set()
    for st in msg.statements:
        for schema, name in (*st.reads, *st.writes):
            out.add(f"{schema}.{name}" if schema else name)
    return out


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )
    return conn


Op = tuple[str, tuple[Any, ...]]


def start_row(sid: str, node: str, started: float, session: Session) -> dict[str, Any]:
    p = session.principal
    return {
        "sid": sid,
        "node": node,
        "started": started,
        "provider": p.provider if p else None,
        "tenant": p.tenant if p else None,
        "subject": p.subject if p else None,
        "client_app": p.client_app if p else None,
        "principal": p.label() if p else None,
        "tier": session.tier,
        "target": session.target.name if session.target else None,
        "client_addr": session.peer,
    }


_START_COLS = (
    "sid",
    "node",
    "started",
    "provider",
    "tenant",
    "subject",
    "client_app",
    "principal",
    "tier",
    "target",
    "client_addr",
)
_START_SQL = (
    f"INSERT OR REPLACE INTO sessions ({', '.join(_START_COLS)}) "  # noqa: S608 (constant names)
    f"VALUES ({', '.join('?' for _ in _START_COLS)})"
)


def start_ops(row: dict[str, Any]) -> list[Op]:
    return [(_START_SQL, tuple(row.get(c) for c in _START_COLS))]


def end_ops(
    sid: str, ended: float, reason: str, totals: dict[str, Any], tables: Iterable[str]
) -> list[Op]:
    ops: list[Op] = [
        (
            "UPDATE sessions SET ended = ?, reason = ?, statements = ?, errors = ?, refused = ?, "
            "denied = ?, held = ?, rows_out = ?, bytes_out = ? WHERE sid = ?",
            (
                ended,
                reason,
                totals.get("statements", 0),
                totals.get("errors", 0),
                totals.get("refused", 0),
                totals.get("denied", 0),
                totals.get("held", 0),
                totals.get("rows", 0),
                totals.get("bytes", 0),
                sid,
            ),
        )
    ]
    for name in sorted(set(tables)):
        ops.append(("INSERT OR IGNORE INTO session_tables (sid, name) VALUES (?, ?)", (sid, name)))
    for fp, _ in totals.get("fingerprints", ()):
        ops.append(
            ("INSERT OR IGNORE INTO session_fingerprints (sid, fp) VALUES (?, ?)", (sid, fp))
        )
    return ops


class IndexWriter:
    """Applies index updates from a thread; the event loop only enqueues."""

    def __init__(
        self,
        path: Path,
        *,
        node: str = "",
        on_state: Callable[[bool, str | None], None] | None = None,
    ) -> None:
        self.path = path
        self.node = node
        self._on_state = on_state
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tables: dict[str, set[str]] = {}
        """Tables per statement fingerprint (analysed once)."""
        self.healthy = True
        self.last_error: str | None = None
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="veilgate-audit-index", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- from the event loop -------------------------------------------------------------------

    def session_started(self, sid: str, session: Session) -> None:
        self._queue.put(("start", start_row(sid, self.node, time.time(), session)))

    def session_ended(self, sid: str, reason: str, totals: dict[str, Any]) -> None:
        self._queue.put(("end", (sid, time.time(), reason, totals)))

    def terminated(self, sids: Sequence[str], seq: int) -> None:
        """From the writer thread: these sessions' terminators are written (up to ``seq``)."""
        self._queue.put(("terminated", (list(sids), seq)))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued before the call is committed (tests)."""
        done = threading.Event()
        self._queue.put(("barrier", done))
        return done.wait(timeout)

    # --- the thread ----------------------------------------------------------------------------

    def _ops(self, item: tuple[str, Any]) -> list[Op]:
        kind, arg = item
        if kind == "start":
            return start_ops(arg)
        if kind == "end":
            sid, ended, reason, totals = arg
            tables: set[str] = set()
            for fp, text in totals.get("fingerprints", ()):
                known = self._tables.get(fp)
                if known is None:
                    known = self._tables[fp] = tables_of(text)
                    if len(self._tables) > 65536:
                        self._tables.clear()
                tables |= known
            return end_ops(sid, ended, reason, totals, tables)
        if kind == "terminated":
            sids, seq = arg
            return [
                ("UPDATE sessions SET terminator_seq = ? WHERE sid = ?", (seq, sid)) for sid in sids
            ]
        return []

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        pending: list[Op] = []
        barriers: list[threading.Event] = []
        stopping = False
        while True:
            timeout = RETRY_S if (pending and not self.healthy) else COMMIT_EVERY_S
            try:
                item = self._queue.get(timeout=timeout if pending or barriers else None)
            except queue.Empty:
                item = ()
            while item is not None and item != ():
                if item[0] == "barrier":
                    barriers.append(item[1])
                else:
                    try:
                        pending.extend(self._ops(item))
                    except Exception:
                        logger.exception("audit index: bad update dropped")
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = ()
            if item is None:
                stopping = True
            if pending:
                try:
                    if conn is None:
                        conn = _connect(self.path)
                    conn.execute("BEGIN")
                    for sql, params in pending:
                        conn.execute(sql, params)
                    conn.execute("COMMIT")
                    pending.clear()
                    if not self.healthy:
                        self._state(True, None)
                except sqlite3.Error as exc:
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
                    self.failures += 1
                    if self.healthy:
                        self._state(False, f"{type(exc).__name__}: {exc}")
                    if stopping:
                        log.event(
                            logger,
                            "audit_index_unwritten_at_stop",
                            logging.ERROR,
                            updates=len(pending),
                        )
                        break
                    continue
            for b in barriers:
                b.set()
            barriers.clear()
            if stopping:
                break
        if conn is not None:
            conn.close()

    def _state(self, ok: bool, error: str | None) -> None:
        self.healthy = ok
        self.last_error = error
        log.event(
            logger,
            "audit_index_recovered" if ok else "audit_index_failed",
            logging.INFO if ok else logging.ERROR,
            path=str(self.path),
            error=error,
        )
        if self._on_state is not None:
            self._on_state(ok, error)


# --- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    sid: str
    node: str | None
    started: float
    ended: float | None
    principal: str | None
    subject: str | None
    tenant: str | None
    client_app: str | None
    tier: str | None
    target: str | None
    client_addr: str | None
    reason: str | None
    statements: int
    errors: int
    refused: int
    denied: int
    held: int
    rows: int
    bytes: int
    terminated: bool
    tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionFilter:
    principal: str | None = None
    tier: str | None = None
    since: float | None = None
    until: float | None = None
    decision: str | None = None
    """``deny``, ``approve``, ``refused``, ``error``, ``allow`` (nothing refused)."""
    table: str | None = None
    fingerprint: str | None = None
    limit: int | None = None


_ROW_FIELDS = (
    "sid",
    "node",
    "started",
    "ended",
    "principal",
    "subject",
    "tenant",
    "client_app",
    "tier",
    "target",
    "client_addr",
    "reason",
    "statements",
    "errors",
    "refused",
    "denied",
    "held",
    "rows",
    "bytes",
)
_DECISIONS = {
    "deny": "denied > 0",
    "approve": "held > 0",
    "refused": "refused > 0",
    "error": "errors > 0",
    "allow": "refused = 0",
}


class SessionIndex:
    """Reads the index (``veilgate sessions list``)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no session index (run `veilgate audit reindex`)")
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def close(self) -> None:
        self.conn.close()

    def sessions(self, f: SessionFilter) -> list[SessionRow]:
        where: list[str] = []
        params: list[Any] = []
        if f.principal:
            where.append(
                "(subject = ? OR client_app = ? OR tenant = ? OR principal = ? OR principal LIKE ?)"
            )
            params += [f.principal] * 4 + [f"%{f.principal}%"]
        if f.tier:
            where.append("tier = ?")
            params.append(f.tier)
        if f.since is not None:
            where.append("COALESCE(ended, 1e18) >= ?")
            params.append(f.since)
        if f.until is not None:
            where.append("started <= ?")
            params.append(f.until)
        if f.decision:
            if f.decision not in _DECISIONS:
                raise ValueError(f"decision: one of {', '.join(_DECISIONS)}")
            where.append(_DECISIONS[f.decision])
        if f.table:
            name = f.table.lower()
            where.append(
                "sid IN (SELECT sid FROM session_tables "
                "WHERE lower(name) = ? OR lower(name) LIKE ?)"
            )
            params += [name, f"%.{name}"]
        if f.fingerprint:
            where.append("sid IN (SELECT sid FROM session_fingerprints WHERE fp = ?)")
            params.append(f.fingerprint)
        sql = (
            "SELECT sid, node, started, ended, principal, subject, tenant, client_app, tier, "
            "target, client_addr, reason, statements, errors, refused, denied, held, rows_out, "
            "bytes_out, terminator_seq FROM sessions"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started"
        if f.limit:
            sql += f" LIMIT {int(f.limit)}"
        rows = []
        for r in self.conn.execute(sql, params):
            tables = tuple(
                t
                for (t,) in self.conn.execute(
                    "SELECT name FROM session_tables WHERE sid = ? ORDER BY name", (r[0],)
                )
            )
            fields = dict(zip(_ROW_FIELDS, r[:19], strict=True))
            rows.append(SessionRow(**fields, terminated=r[19] is not None, tables=tables))
        return rows
