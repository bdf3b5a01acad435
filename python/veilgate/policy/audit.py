"""The one audit interface every policy decision goes through.

The gateway builds a :class:`DecisionEvent` for every decision (``DecisionEvent.from_decision``) and
hands it to the configured :class:`AuditSink`.  :class:`JsonLinesAuditSink` appends one JSON object
per line; the recording issue builds hash-chained session records on the same interface.

What an event never holds: the token, bind parameter values, result values.  The SQL text is an
excerpt of at most ``limits.audit_sql_bytes`` bytes (``sql_len`` is the whole length) with
credentials redacted (a literal after ``PASSWORD``, connection strings with ``password=``, URIs
with ``user:secret@``), or left out with ``record_sql=False`` (then only the fingerprint
identifies the statement).

The JSON-lines log is a convenience stream for tools that tail a file; it is written on the
event loop as decisions happen, through a native writer that client buffers share (a Query the
verdict cache answers gets its line rendered and written natively, one write per read).  The
tamper-evident record, written off the loop and protected by the ``audit.on_failure`` policy,
is the session recording (:mod:`veilgate.audit`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import veilgate_native

from .. import log, metrics
from ..identity.base import Principal
from .engine import Decision, Verdict
from .excerpt import DEFAULT_AUDIT_SQL_BYTES, utf8_length

__all__ = [
    "AuditEvent",
    "AuditSink",
    "DecisionEvent",
    "JsonLinesAuditSink",
    "MaskEvent",
    "MemoryAuditSink",
    "TeeAuditSink",
    "redacted_excerpt",
    "session_members",
    "verdict_members",
]

_logger = log.get("policy.audit")


def redacted_excerpt(text: str, max_bytes: int = DEFAULT_AUDIT_SQL_BYTES) -> str:
    """``text`` bounded to ``max_bytes`` bytes (as :func:`~veilgate.policy.excerpt.sql_excerpt`)
    with credentials redacted: the native recorder's rule, so the JSON-lines log and the
    session record agree."""
    return veilgate_native.statement_excerpt(text, max_bytes)[0]


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    ts: float
    """Seconds since the epoch."""
    principal_key: tuple[str | None, str]
    """(tenant, subject): the identity key."""
    principal_label: str
    session_id: str
    fingerprint: str
    statement_classes: tuple[str, ...]
    action: str
    rule_id: str
    tier: str | None
    decision_us: float
    cached: bool = False
    reason: str = ""
    sql: str | None = None
    """The statement text (never parameter values), at most ``limits.audit_sql_bytes`` bytes of
    it with credentials redacted (:func:`redacted_excerpt`); None when the sink does not record
    SQL."""
    sql_len: int = 0
    """The whole statement's length in bytes (``sql`` was cut when it is longer)."""

    @classmethod
    def from_decision(
        cls,
        decision: Decision,
        principal: Principal,
        *,
        session_id: str = "",
        ts: float | None = None,
        max_sql_bytes: int = DEFAULT_AUDIT_SQL_BYTES,
        sql_len: int | None = None,
    ) -> DecisionEvent:
        """``sql_len``: the statement's length when the decision holds only part of its text
        (a statement refused for its size)."""
        text = decision.analysis.text
        return cls(
            ts=time.time() if ts is None else ts,
            principal_key=principal.key,
            principal_label=principal.label(),
            session_id=session_id,
            fingerprint=decision.fingerprint,
            statement_classes=decision.verdict.statement_classes,
            action=decision.action,
            rule_id=decision.rule_id,
            tier=decision.tier,
            decision_us=round(decision.elapsed_us, 3),
            cached=decision.cached,
            reason=decision.reason,
            sql=redacted_excerpt(text, max_sql_bytes),
            sql_len=utf8_length(text) if sql_len is None else sql_len,
        )

    @classmethod
    def from_verdict(
        cls,
        verdict: Verdict,
        text: str,
        principal: Principal,
        *,
        session_id: str = "",
        ts: float | None = None,
        max_sql_bytes: int = DEFAULT_AUDIT_SQL_BYTES,
    ) -> DecisionEvent:
        """The event of a Query the verdict cache answered natively with ``verdict`` (a cached
        decision for ``text`` or for a text of the same shape): what :meth:`from_decision`
        gives for the cached decision of ``text``, without rebinding the verdict to it."""
        return cls(
            ts=time.time() if ts is None else ts,
            principal_key=principal.key,
            principal_label=principal.label(),
            session_id=session_id,
            fingerprint=verdict.fingerprint,
            statement_classes=verdict.statement_classes,
            action=verdict.action,
            rule_id=verdict.rule_id,
            tier=verdict.tier,
            decision_us=0.0,
            cached=True,
            reason=verdict.reason,
            sql=redacted_excerpt(text, max_sql_bytes),
            sql_len=utf8_length(text),
        )

    def to_json(self, *, record_sql: bool = True) -> str:
        # the fields in order, without asdict's deep copy (this runs per statement)
        d: dict[str, Any] = {
            "ts": self.ts,
            "principal_key": list(self.principal_key),
            "principal_label": self.principal_label,
            "session_id": self.session_id,
            "fingerprint": self.fingerprint,
            "statement_classes": list(self.statement_classes),
            "action": self.action,
            "rule_id": self.rule_id,
            "tier": self.tier,
            "decision_us": self.decision_us,
            "cached": self.cached,
            "reason": self.reason,
            "sql": self.sql,
            "sql_len": self.sql_len,
        }
        if not record_sql:
            del d["sql"]
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class MaskEvent:
    """Values masked in one result set of a masked session: counts only, never values."""

    ts: float
    principal_key: tuple[str | None, str]
    principal_label: str
    session_id: str
    tier: str
    fingerprint: str
    """Fingerprint of the statement whose result was masked (not its text)."""
    entities: dict[str, int]
    """Values masked per entity (``US_SSN``, ``EMAIL``...; ``COLUMN`` for column rules)."""
    columns: dict[str, dict[str, int]]
    """The same per result column (name as the client saw it)."""
    kind: str = "mask"

    @classmethod
    def create(
        cls,
        principal: Principal,
        *,
        session_id: str,
        tier: str,
        fingerprint: str,
        entities: dict[str, int],
        columns: dict[str, dict[str, int]],
        ts: float | None = None,
    ) -> MaskEvent:
        return cls(
            ts=time.time() if ts is None else ts,
            principal_key=principal.key,
            principal_label=principal.label(),
            session_id=session_id,
            tier=tier,
            fingerprint=fingerprint,
            entities=entities,
            columns=columns,
        )

    def to_json(self, *, record_sql: bool = True) -> str:
        d: dict[str, Any] = asdict(self)
        d["principal_key"] = list(self.principal_key)
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


class AuditEvent(Protocol):
    """What a sink accepts: decisions, masked results, approval events (``veilgate.approvals``)
    and whatever else records through the same interface; each renders itself as one JSON
    object."""

    def to_json(self, *, record_sql: bool = True) -> str: ...


@runtime_checkable
class AuditSink(Protocol):
    """Receives every decision event.  ``emit`` must not block the event loop for long."""

    def emit(self, event: AuditEvent) -> None: ...

    def close(self) -> None: ...


class JsonLinesAuditSink:
    """Append events as JSON lines to ``path`` (created 0600 if missing).

    Lines go through a native writer (:class:`veilgate_native.DecisionLog`, one write per call,
    ``O_APPEND``), which client buffers share: a Query the verdict cache answers has its line
    rendered and written natively (:attr:`native_log`; the verdict's members come from
    :func:`verdict_members`, the session's from :func:`session_members`), in stream order with
    the lines written here.

    A ``sql`` member of any event is redacted (:func:`redacted_excerpt`).  A write that fails (disk
    full, the file's directory gone) is counted (``veilgate_audit_log_failures_total``) and
    logged once per failure streak; :meth:`reopen` (SIGHUP, after the file was rotated away)
    opens the path again."""

    def __init__(self, path: str | Path, *, record_sql: bool = True) -> None:
        self.path = Path(path)
        self.record_sql = record_sql
        self._lock = threading.Lock()
        self._failing = False
        self._failures_seen = 0
        self._native: veilgate_native.DecisionLog = veilgate_native.DecisionLog(str(self.path))
        # failed writes of client buffers reach the metric at each scrape, not only with the
        # next line written from here
        ref = weakref.ref(self)

        def collect() -> None:
            sink = ref()
            if sink is None:
                with contextlib.suppress(ValueError):
                    metrics.COLLECTORS.remove(collect)
                return
            with sink._lock:
                sink._count_failures()

        self._collector = collect
        metrics.COLLECTORS.append(collect)

    @property
    def native_log(self) -> veilgate_native.DecisionLog | None:
        """The writer client buffers log answered Queries to (None once closed)."""
        return None if self._native.closed else self._native

    def emit(self, event: AuditEvent) -> None:
        line = event.to_json(record_sql=self.record_sql)
        if not isinstance(event, DecisionEvent | MaskEvent) and '"sql":' in line:
            line = _redact_sql_member(line)
        self._write(line + "\n")

    def emit_many(self, events: list[DecisionEvent]) -> None:
        """Decision events in order, written in one call; failures as for :meth:`emit`."""
        if not events:
            return
        record_sql = self.record_sql
        self._write("".join([e.to_json(record_sql=record_sql) + "\n" for e in events]))

    def _write(self, text: str) -> None:
        with self._lock:
            ok = self._native.write(text.encode("utf-8", "surrogatepass"))
            self._account(ok)

    def _count_failures(self) -> bool:
        """Count failed writes not counted yet (client buffers' too); log the first of a
        streak.  True if there were any."""
        failures = self._native.failures
        new = failures - self._failures_seen
        self._failures_seen = failures
        if new <= 0:
            return False
        metrics.audit_log_failures_total.inc(new)
        if not self._failing:
            self._failing = True
            log.event(
                _logger,
                "audit_log_write_failed",
                40,
                path=str(self.path),
                error=self._native.last_error,
            )
        return True

    def _account(self, ok: bool) -> None:
        """After a write from here (``ok``: it succeeded): count failed writes (also those of
        client buffers, seen here first); log once per failure streak."""
        new = self._count_failures()
        if not ok or new:
            if not self._failing:
                self._failing = True
                log.event(
                    _logger,
                    "audit_log_write_failed",
                    40,
                    path=str(self.path),
                    error=self._native.last_error,
                )
            return
        if self._failing:
            self._failing = False
            log.event(_logger, "audit_log_write_recovered", path=str(self.path))

    def reopen(self) -> None:
        """Open the path again (the old file was rotated away); the old handle is closed."""
        with self._lock:
            try:
                self._native.reopen()
            except OSError as exc:
                log.event(
                    _logger, "audit_log_reopen_failed", 40, path=str(self.path), error=str(exc)
                )

    def close(self) -> None:
        with self._lock:
            self._count_failures()
            self._native.close()
        with contextlib.suppress(ValueError):
            metrics.COLLECTORS.remove(self._collector)

    def __enter__(self) -> JsonLinesAuditSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verdict_members(verdict: Verdict) -> bytes:
    """The members of a decision-log line a Query answered natively with ``verdict`` gets
    (``fingerprint`` to ``reason``, as :meth:`DecisionEvent.from_verdict` renders them)."""
    d = {
        "fingerprint": verdict.fingerprint,
        "statement_classes": list(verdict.statement_classes),
        "action": verdict.action,
        "rule_id": verdict.rule_id,
        "tier": verdict.tier,
        "decision_us": 0.0,
        "cached": True,
        "reason": verdict.reason,
    }
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)[1:-1].encode()


def session_members(principal: Principal, session_id: str) -> bytes:
    """The session's members of a decision-log line (``principal_key`` to ``session_id``)."""
    d = {
        "principal_key": list(principal.key),
        "principal_label": principal.label(),
        "session_id": session_id,
    }
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)[1:-1].encode()


def _redact_sql_member(line: str) -> str:
    try:
        d = json.loads(line)
    except ValueError:
        return line
    if isinstance(d, dict) and isinstance(d.get("sql"), str):
        d["sql"] = redacted_excerpt(d["sql"])
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


class MemoryAuditSink:
    """Keeps events in a list (tests, ``policy check``)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class TeeAuditSink:
    """Hands every event to several sinks (the JSON-lines log and the session recorder)."""

    def __init__(self, *sinks: AuditSink) -> None:
        self.sinks = sinks

    def emit(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
