"""The session index: one row per session, for ``veilgate sessions list`` and ``show``.

It lives in the shared state store (``state:``: SQLite by default, the PostgreSQL several
gateways share), component ``sessions``.  The gateway writes it from the event loop without
waiting: a row when a session starts, its end (reason, totals, the tables and statement
fingerprints it touched) when it ends, and the sequence number of its terminator once that is
written; a task sends what has queued up in one transaction every 200 ms.  The segments stay the
record: ``veilgate audit reindex`` rebuilds the index from them.

Tables touched come from the session's distinct statements (the engine keeps the first text of
each fingerprint), analysed once per fingerprint with the policy's parser, in a worker thread.

When the store cannot be written (disk full, the database down, a lock held too long) the
updates wait in memory and are retried (quickly at first, then every second).  The records are in
the segments meanwhile -- only the index lags -- so a write that fails and then works on a retry
is not a recording failure: the recorder is told (``on_state``) only when writes have kept
failing for ``grace_s`` (or the updates waiting in memory pass ``MAX_PENDING``), and again when
they work.  A store that is really down therefore still blocks statements (``on_failure:
block``), after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from veilgate import log, metrics
from veilgate.state import Migration, StateDB, StateUnavailable, migrate

__all__ = [
    "MIGRATIONS",
    "IndexWriter",
    "SessionFilter",
    "SessionRow",
    "SessionStart",
    "list_sessions",
    "tables_of",
]

logger = log.get("audit.index")

COMPONENT = "sessions"
MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE veilgate_sessions (
                sid TEXT PRIMARY KEY,
                node TEXT,
                started DOUBLE PRECISION NOT NULL,
                ended DOUBLE PRECISION,
                provider TEXT,
                tenant TEXT,
                subject TEXT,
                client_app TEXT,
                principal TEXT,
                tier TEXT,
                target TEXT,
                client_addr TEXT,
                reason TEXT,
                statements BIGINT NOT NULL DEFAULT 0,
                errors BIGINT NOT NULL DEFAULT 0,
                refused BIGINT NOT NULL DEFAULT 0,
                denied BIGINT NOT NULL DEFAULT 0,
                held BIGINT NOT NULL DEFAULT 0,
                rows_out BIGINT NOT NULL DEFAULT 0,
                bytes_out BIGINT NOT NULL DEFAULT 0,
                terminator_seq BIGINT
            )""",
            "CREATE INDEX veilgate_sessions_started ON veilgate_sessions (started)",
            "CREATE INDEX veilgate_sessions_subject ON veilgate_sessions (subject)",
            """CREATE TABLE veilgate_session_tables (
                sid TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (sid, name))""",
            "CREATE INDEX veilgate_session_tables_name ON veilgate_session_tables (name)",
            """CREATE TABLE veilgate_session_fingerprints (
                sid TEXT NOT NULL, fp TEXT NOT NULL, PRIMARY KEY (sid, fp))""",
        ),
    ),
)

RETRY_S = 1.0
RETRY_FIRST_S = 0.1
COMMIT_EVERY_S = 0.2
MAX_PENDING = 200_000
"""Index updates held in memory while the store fails; past this the failure is reported at
once, whatever the grace."""

Op = tuple[str, tuple[Any, ...]]


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
    f"INSERT INTO veilgate_sessions ({', '.join(_START_COLS)}) "  # noqa: S608 (constant names)
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_START_COLS) + 1))}) "
    "ON CONFLICT (sid) DO NOTHING"
)
_END_SQL = (
    "UPDATE veilgate_sessions SET ended = $1, reason = $2, statements = $3, errors = $4, "
    "refused = $5, denied = $6, held = $7, rows_out = $8, bytes_out = $9 WHERE sid = $10"
)


@dataclass(frozen=True, slots=True)
class SessionStart:
    """What the index keeps of a session's start (the gateway fills it in: the audit package
    does not reach up into the session)."""

    provider: str | None
    tenant: str | None
    subject: str | None
    client_app: str | None
    principal: str | None
    tier: str | None
    target: str | None
    client_addr: str


def start_row(sid: str, node: str, started: float, start: SessionStart) -> dict[str, Any]:
    return {
        "sid": sid,
        "node": node,
        "started": started,
        "provider": start.provider,
        "tenant": start.tenant,
        "subject": start.subject,
        "client_app": start.client_app,
        "principal": start.principal,
        "tier": start.tier,
        "target": start.target,
        "client_addr": start.client_addr,
    }


def start_ops(row: dict[str, Any]) -> list[Op]:
    return [(_START_SQL, tuple(row.get(c) for c in _START_COLS))]


def end_ops(
    sid: str,
    ended: float,
    reason: str,
    totals: dict[str, Any],
    tables: Iterable[str],
    fingerprints: Iterable[str],
) -> list[Op]:
    ops: list[Op] = [
        (
            _END_SQL,
            (
                ended,
                reason,
                int(totals.get("statements", 0)),
                int(totals.get("errors", 0)),
                int(totals.get("refused", 0)),
                int(totals.get("denied", 0)),
                int(totals.get("held", 0)),
                int(totals.get("rows", 0)),
                int(totals.get("bytes", 0)),
                sid,
            ),
        )
    ]
    for name in sorted(set(tables)):
        ops.append(
            (
                "INSERT INTO veilgate_session_tables (sid, name) VALUES ($1, $2) "
                "ON CONFLICT (sid, name) DO NOTHING",
                (sid, name),
            )
        )
    for fp in sorted(set(fingerprints)):
        ops.append(
            (
                "INSERT INTO veilgate_session_fingerprints (sid, fp) VALUES ($1, $2) "
                "ON CONFLICT (sid, fp) DO NOTHING",
                (sid, fp),
            )
        )
    return ops


class IndexWriter:
    """Keeps the index current from the event loop, without ever making a session wait."""

    def __init__(
        self,
        db: StateDB,
        *,
        node: str = "",
        on_state: Callable[[bool, str | None], None] | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.db = db
        self.node = node
        self._on_state = on_state
        self.grace_s = grace_s
        self._ops: list[Op] = []
        self._ends: list[tuple[str, float, str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tables: dict[str, set[str]] = {}
        """Tables per statement fingerprint (analysed once)."""
        self._stopping = False
        self._migrated = False
        self._idle: asyncio.Event | None = None
        self.healthy = True
        """False once writes have failed for longer than the grace (the recorder is failing)."""
        self.last_error: str | None = None
        self.failures = 0
        """Writes that failed (each retried), transient ones included."""
        self.failing_since: float | None = None
        """Monotonic time of the first failure of the current run of failures (None: writing)."""

    async def start(self) -> None:
        """Run: create or migrate the tables first (a store that is down counts as a failure
        and is retried, like any write)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set once the tables are in place and nothing waits
        self._task = self._loop.create_task(self._run())

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Send what is queued (up to ``timeout``), then stop."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                log.event(
                    logger,
                    "audit_index_unwritten_at_stop",
                    logging.ERROR,
                    updates=len(self._ops) + len(self._ends),
                )

    # --- from the event loop -------------------------------------------------------------------

    def _queue(self, ops: Iterable[Op]) -> None:
        self._ops.extend(ops)
        self._kick()

    def _kick(self) -> None:
        if self._idle is not None:
            self._idle.clear()
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()

    def session_started(self, sid: str, start: SessionStart) -> None:
        self._queue(start_ops(start_row(sid, self.node, time.time(), start)))

    def session_ended(self, sid: str, reason: str, totals: dict[str, Any]) -> None:
        self._ends.append((sid, time.time(), reason, totals))
        self._kick()

    def terminated(self, sids: Sequence[str], seq: int) -> None:
        """From the writer thread: these sessions' terminators are written (up to ``seq``)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        ops = [
            ("UPDATE veilgate_sessions SET terminator_seq = $1 WHERE sid = $2", (seq, sid))
            for sid in sids
        ]
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._queue, ops)

    def purged(self, last_seq: int) -> None:
        """From the writer thread: retention deleted the segments up to ``last_seq``; the
        sessions of this node that ended in them leave the index too (their records are gone:
        ``list`` must not offer what ``show`` cannot read)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        gone = (
            "SELECT sid FROM veilgate_sessions WHERE node = $1 AND terminator_seq IS NOT NULL "
            "AND terminator_seq <= $2"
        )
        args = (self.node, last_seq)
        ops: list[Op] = [
            (f"DELETE FROM veilgate_session_tables WHERE sid IN ({gone})", args),  # noqa: S608
            (f"DELETE FROM veilgate_session_fingerprints WHERE sid IN ({gone})", args),  # noqa: S608
            (
                "DELETE FROM veilgate_sessions WHERE node = $1 AND terminator_seq IS NOT NULL "
                "AND terminator_seq <= $2",
                args,
            ),
        ]
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._queue, ops)

    async def flush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109
        """Wait until what was queued before the call is stored (tests)."""
        if self._idle is None:
            return True
        await asyncio.sleep(0)  # updates handed over from the writer thread join the queue
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    # --- the task ------------------------------------------------------------------------------

    async def _end_ops(
        self, sid: str, ended: float, reason: str, totals: dict[str, Any]
    ) -> list[Op]:
        tables: set[str] = set()
        fps = [fp for fp, _ in totals.get("fingerprints", ())]
        todo = [(fp, text) for fp, text in totals.get("fingerprints", ()) if fp not in self._tables]
        if todo:
            found = await asyncio.to_thread(lambda: [(fp, tables_of(text)) for fp, text in todo])
            if len(self._tables) > 65536:
                self._tables.clear()
            self._tables.update(found)
        for fp in fps:
            tables |= self._tables.get(fp, set())
        return end_ops(sid, ended, reason, totals, tables, fps)

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while not self._migrated:
            try:
                await migrate(self.db, COMPONENT, MIGRATIONS)
                self._migrated = True
                self._worked()
            except Exception as exc:  # StateUnavailable, or a bug: the task must not die
                self._failed(exc)
                if self._stopping:
                    return
                await asyncio.sleep(self._retry_s())
        while True:
            if not self._ops and not self._ends:
                self._idle.set()
                if self._stopping:
                    return
                await self._wake.wait()
                self._wake.clear()
            await asyncio.sleep(COMMIT_EVERY_S if self.failing_since is None else self._retry_s())
            while self._ends:
                self._ops.extend(await self._end_ops(*self._ends.pop(0)))
            ops = self._ops
            self._ops = []
            try:
                async with self.db.transaction() as tx:
                    for sql, args in ops:
                        await tx.execute(sql, *args)
            except Exception as exc:  # StateUnavailable, or a bug: the task must not die
                self._ops[:0] = ops
                self._failed(exc)
                if self._stopping:
                    return
                continue
            self._worked()

    @property
    def pending(self) -> int:
        """Index updates waiting to be written."""
        return len(self._ops) + len(self._ends)

    def _retry_s(self) -> float:
        """Quick retries at first (a lock held a moment too long), then every ``RETRY_S``."""
        since = self.failing_since
        if since is None or time.monotonic() - since < min(self.grace_s, 2.0):
            return RETRY_FIRST_S
        return RETRY_S

    @property
    def migrated(self) -> bool:
        """The index's tables are in place (writes can start)."""
        return self._migrated

    def _failed(self, exc: Exception) -> None:
        """A write (or the migration) failed; it is retried.  Reported to the recorder once the
        failures have lasted ``grace_s`` or too many updates wait."""
        if not isinstance(exc, StateUnavailable):
            logger.exception("audit index write failed unexpectedly", exc_info=exc)
        self.failures += 1
        metrics.audit_index_retries_total.inc()
        self.last_error = str(exc)
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            log.event(
                logger,
                "audit_index_retrying",
                logging.WARNING,
                store=self.db.describe(),
                error=str(exc),
                grace_s=self.grace_s,
            )
        if self.healthy and (
            now - self.failing_since >= self.grace_s or self.pending > MAX_PENDING
        ):
            self._state(False, str(exc))

    def _worked(self) -> None:
        self.failing_since = None
        if not self.healthy:
            self._state(True, None)
        else:
            self.last_error = None

    def _state(self, ok: bool, error: str | None) -> None:
        self.healthy = ok
        self.last_error = error
        log.event(
            logger,
            "audit_index_recovered" if ok else "audit_index_failed",
            logging.INFO if ok else logging.ERROR,
            store=self.db.describe(),
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
    sid: str | None = None
    limit: int | None = None


DECISIONS = {
    "deny": "denied > 0",
    "approve": "held > 0",
    "refused": "refused > 0",
    "error": "errors > 0",
    "allow": "refused = 0",
}


def _where(f: SessionFilter) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []

    def p(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    if f.sid:
        where.append(f"sid = {p(f.sid)}")
    if f.principal:
        v = f.principal
        where.append(
            f"(subject = {p(v)} OR client_app = {p(v)} OR tenant = {p(v)} OR principal = {p(v)} "
            f"OR principal LIKE {p('%' + v + '%')})"
        )
    if f.tier:
        where.append(f"tier = {p(f.tier)}")
    if f.since is not None:
        where.append(f"(ended IS NULL OR ended >= {p(f.since)})")
    if f.until is not None:
        where.append(f"started <= {p(f.until)}")
    if f.decision:
        if f.decision not in DECISIONS:
            raise ValueError(f"decision: one of {', '.join(DECISIONS)}")
        where.append(DECISIONS[f.decision])
    if f.table:
        # a qualified name also matches the statements that named the table unqualified (they
        # may have resolved to it); an unqualified one matches it in any schema
        name = f.table.lower()
        bare = name.rpartition(".")[2]
        where.append(
            "sid IN (SELECT sid FROM veilgate_session_tables "  # noqa: S608 (placeholders only)
            f"WHERE lower(name) = {p(name)} OR lower(name) = {p(bare)} "
            f"OR ({p(int(name == bare))} = 1 AND lower(name) LIKE {p('%.' + bare)}))"
        )
    if f.fingerprint:
        where.append(
            "sid IN (SELECT sid FROM veilgate_session_fingerprints "  # noqa: S608 (placeholders)
            f"WHERE fp = {p(f.fingerprint)})"
        )
    return (" WHERE " + " AND ".join(where)) if where else "", params


_SELECT = (
    "SELECT sid, node, started, ended, principal, subject, tenant, client_app, tier, target, "
    "client_addr, reason, statements, errors, refused, denied, held, rows_out, bytes_out, "
    "terminator_seq FROM veilgate_sessions"
)


async def list_sessions(db: StateDB, f: SessionFilter) -> list[SessionRow]:
    """Sessions matching ``f``, oldest first (raises ``StateUnavailable``)."""
    where, params = _where(f)
    sql = _SELECT + where + " ORDER BY started"
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    rows = await db.fetch(sql, *params)
    out = []
    for r in rows:
        tables = await db.fetch(
            "SELECT name FROM veilgate_session_tables WHERE sid = $1 ORDER BY name", r["sid"]
        )
        out.append(
            SessionRow(
                sid=r["sid"],
                node=r["node"],
                started=float(r["started"]),
                ended=None if r["ended"] is None else float(r["ended"]),
                principal=r["principal"],
                subject=r["subject"],
                tenant=r["tenant"],
                client_app=r["client_app"],
                tier=r["tier"],
                target=r["target"],
                client_addr=r["client_addr"],
                reason=r["reason"],
                statements=int(r["statements"]),
                errors=int(r["errors"]),
                refused=int(r["refused"]),
                denied=int(r["denied"]),
                held=int(r["held"]),
                rows=int(r["rows_out"]),
                bytes=int(r["bytes_out"]),
                terminated=r["terminator_seq"] is not None,
                tables=tuple(t["name"] for t in tables),
            )
        )
    return out
