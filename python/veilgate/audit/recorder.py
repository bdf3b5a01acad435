"""The gateway's recorder: sessions in, sealed segments out, and the failure policy.

One :class:`Recorder` per gateway (``audit:`` section).  It owns the native record queue
(``veilgate_native.AuditRecorder``), the writer thread and the session index, and it is an
:class:`~veilgate.policy.audit.AuditSink`: masking counts (``MaskEvent``) become ``mask``
records of their session.  Decisions do not go through ``emit``: the policy enforcer attaches
them to the engine's statement records (``SessionRecording.decision``).

**Failure policy.**  When the writer cannot write (disk full, permission or volume lost) or the
index cannot be updated for longer than ``index_grace_s`` (its writes are retried meanwhile: the
records are in the segments, only the index lags), the recorder is *failing*:
``veilgate_audit_healthy`` is 0, a log line says why, and with ``on_failure: block`` (the
default) every session refuses new statements with ``58030`` and ``/healthz`` answers 503 until
writing works again (no restart needed).  With ``continue`` the gateway keeps serving; records
wait in memory up to ``queue_max_records``, then are dropped and counted
(``veilgate_audit_records_dropped_total``) and the gap is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import veilgate_native as native

from veilgate import log, metrics
from veilgate.config_model import AuditConfig, AuditFailureMode, StateConfig
from veilgate.policy.audit import AuditEvent, DecisionEvent, MaskEvent

from .format import GATEWAY_SID
from .index import IndexWriter, SessionStart
from .segments import SegmentDir
from .writer import AuditWriter, WriterSettings, gateway_record

__all__ = ["Recorder"]

logger = log.get("audit")


class SessionRecord(Protocol):
    """One session's recording as the recorder sees it
    (:class:`veilgate.gateway.recording.SessionRecording` is one; a protocol, so that the audit
    package does not import the gateway above it)."""

    @property
    def sid(self) -> str: ...
    @property
    def peer(self) -> str: ...
    def start(self) -> None: ...
    def set_blocked(self, on: bool) -> None: ...


class Recorder:
    """Records every session of a gateway (see the module docstring)."""

    def __init__(
        self,
        config: AuditConfig,
        *,
        state: StateConfig | None = None,
        config_source: Path | None = None,
    ) -> None:
        self.config = config
        self.config_source = config_source
        """The configuration file: SIGHUP re-reads its ``audit.key`` (key rotation)."""
        keys = config.keyring()
        self.node = config.node or socket.gethostname()
        self.native = native.AuditRecorder(
            self.node,
            config.key.id,
            keys[config.key.id],
            capacity=config.queue_max_records,
            wake_at=min(config.batch_max_records, 4096),
        )
        self._key = (config.key.id, keys[config.key.id])
        self.dir = SegmentDir(config.dir)
        settings = WriterSettings(
            interval_s=config.flush_interval_ms / 1000.0,
            batch_max=config.batch_max_records,
            fsync=config.fsync,
            rotate_bytes=config.rotate_bytes,
            rotate_age_s=config.rotate_age_s,
            retention_s=config.retention_days * 86_400 if config.retention_days else None,
        )
        self.writer = AuditWriter(
            self.dir,
            self.native,
            settings,
            on_state=self._writer_state,
            on_written=self._written,
            on_purged=self._purged,
        )
        self.index: IndexWriter | None = None
        if config.index:
            from veilgate.state import open_state

            # the shared state store (state:); a store that cannot be opened is a recording
            # failure like any other, so it raises here only for a broken configuration
            db = open_state(state if state is not None else StateConfig())
            self.index = IndexWriter(
                db, node=self.node, on_state=self._index_state, grace_s=config.index_grace_s
            )
        self.block = config.on_failure is AuditFailureMode.BLOCK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[str, SessionRecord] = {}
        self._by_peer: dict[str, str] = {}
        self._writer_ok = True
        self._index_ok = True
        self.failing = False
        """Records (or the index) cannot be written right now."""
        self._failing_since: float | None = None
        self._dropped_seen = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer (and the index).  Raises ``OSError`` / ``AuditDirLocked``."""
        self._loop = asyncio.get_running_loop()
        self.writer.start()
        if self.index is not None:
            await self.index.start()
        metrics.audit_healthy.set(1)
        metrics.COLLECTORS.append(self._update_gauges)
        log.event(
            logger,
            "audit_started",
            dir=str(self.dir.path),
            segment=str(self.writer.current_segment),
            key_id=self.config.key.id,
            on_failure=self.config.on_failure.value,
        )

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write what is queued and close the segment (after every session has ended)."""
        self.native.close()
        lost = await asyncio.to_thread(self.writer.stop, timeout)
        if self.index is not None:
            await self.index.stop(timeout)
            await self.index.db.close()
        self._update_gauges()
        if self._update_gauges in metrics.COLLECTORS:
            metrics.COLLECTORS.remove(self._update_gauges)
        log.event(logger, "audit_stopped", unwritten=lost)

    @property
    def blocked(self) -> bool:
        """Statements are refused: recording fails and ``on_failure`` is ``block``."""
        return self.block and self.failing

    def rotate(self) -> None:
        """SIGHUP: start a new segment (and pick up a new signing key from the config file)."""
        self._reload_key()
        self.writer.request_rotate()

    def _reload_key(self) -> None:
        source = self.config_source
        if source is None:
            return
        from veilgate import config as config_loader

        try:
            cfg = config_loader.load(source)
            if cfg.audit is None:
                return
            kid = cfg.audit.key.id
            key = cfg.audit.key.read()
        except Exception as exc:  # a broken config or key file: keep signing with the old key
            log.event(
                logger, "audit_key_reload_failed", logging.ERROR, file=str(source), error=str(exc)
            )
            return
        if (kid, key) == self._key:
            return
        old = self._key[0]
        self.native.set_key(kid, key)
        self._key = (kid, key)
        self.native.push(GATEWAY_SID, gateway_record("key_rotated", old_key_id=old, key_id=kid))
        log.event(logger, "audit_key_rotated", old_key_id=old, key_id=kid)

    # --- sessions ------------------------------------------------------------------------------

    def open_session(self, rec: SessionRecord, start: SessionStart) -> None:
        """Start recording a session (the gateway calls this when it starts relaying, with the
        recording it made: :func:`veilgate.gateway.recording.open_recording`)."""
        rec.start()
        self._sessions[rec.sid] = rec
        self._by_peer[rec.peer] = rec.sid
        if self.blocked:
            rec.set_blocked(True)
        if self.index is not None:
            self.index.session_started(rec.sid, start)

    def session_closed(self, rec: SessionRecord, reason: str, totals: dict[str, Any]) -> None:
        self._sessions.pop(rec.sid, None)
        if self._by_peer.get(rec.peer) == rec.sid:
            del self._by_peer[rec.peer]
        if self.index is not None:
            self.index.session_ended(rec.sid, reason, totals)

    def push(self, sid: str, members: str, *, terminator: bool = False) -> None:
        if not self.native.push(sid, members, terminator=terminator):
            metrics.audit_dropped_total.inc()

    # --- AuditSink ---------------------------------------------------------------------------

    def emit(self, event: AuditEvent) -> None:
        """Masking counts become ``mask`` records of their session; other events (approvals:
        requests, votes, grants used...) records of their session, or of the gateway's own
        stream when they belong to none.  Decisions are attached to statement records by the
        enforcer, so ``DecisionEvent`` is not recorded twice; statement text is never taken from
        an event (the statement record has the bounded, redacted excerpt)."""
        if isinstance(event, DecisionEvent):
            return
        if isinstance(event, MaskEvent):
            sid = self._by_peer.get(event.session_id)
            if sid is None:
                return
            body: dict[str, Any] = {
                "fingerprint": event.fingerprint,
                "tier": event.tier,
                "entities": event.entities,
                "columns": event.columns,
            }
            kind = "mask"
        else:
            try:
                parsed = json.loads(event.to_json(record_sql=False))
            except (TypeError, ValueError):
                return
            if not isinstance(parsed, dict):
                return
            body = parsed
            kind = str(body.pop("kind", None) or type(event).__name__)
            for secret_prone in ("sql", "ts"):
                body.pop(secret_prone, None)
            sid = self._by_peer.get(str(body.get("session_id", ""))) or GATEWAY_SID
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
        self.push(sid, json.dumps(kind) + ("," + text[1:-1] if body else ""))

    def close(self) -> None:
        pass

    # --- failure policy ----------------------------------------------------------------------

    def _writer_state(self, ok: bool, error: str | None) -> None:
        """From the writer thread."""
        if not ok:
            metrics.audit_write_failures_total.inc()
        self._set_from_thread("writer", ok, error)

    def _index_state(self, ok: bool, error: str | None) -> None:
        """From the index task (on the loop)."""
        self._set_state("index", ok, error)

    def _set_from_thread(self, part: str, ok: bool, error: str | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._set_state, part, ok, error)

    def _set_state(self, part: str, ok: bool, error: str | None) -> None:
        if part == "writer":
            self._writer_ok = ok
        else:
            self._index_ok = ok
        failing = not (self._writer_ok and self._index_ok)
        metrics.audit_healthy.set(0 if failing else 1)
        if failing == self.failing:
            return
        self.failing = failing
        # Both ends of a failure are in the gateway's own stream, whichever part failed (the
        # writer's disk or the index's store): the record of the failure is written once writing
        # works again (or counted in the gap record), the recovery's right after it.
        now = time.monotonic()
        if failing:
            self._failing_since = now
            record = gateway_record("audit_failing", part=part, error=error)
        else:
            since, self._failing_since = self._failing_since, None
            record = gateway_record(
                "audit_recovered",
                part=part,
                down_s=round(now - since, 3) if since is not None else None,
                dropped_total=self.native.dropped_total,
            )
        self.push(GATEWAY_SID, record)
        log.event(
            logger,
            "audit_failing" if failing else "audit_healthy",
            logging.ERROR if failing else logging.INFO,
            part=part,
            error=error,
            on_failure=self.config.on_failure.value,
            refusing=self.blocked,
        )
        if self.block:
            for rec in list(self._sessions.values()):
                rec.set_blocked(failing)

    def _written(self, batch: native.SealedBatch) -> None:
        """From the writer thread, after each batch."""
        metrics.audit_records_written_total.inc(batch.records)
        metrics.audit_bytes_written_total.inc(len(batch.data))
        if self.index is not None and batch.ended:
            self.index.terminated(batch.ended, batch.last_seq)

    def _purged(self, last_seq: int) -> None:
        """From the writer thread: segments up to ``last_seq`` were deleted (retention)."""
        if self.index is not None:
            self.index.purged(last_seq)

    def _update_gauges(self) -> None:
        dropped = self.native.dropped_total
        if dropped > self._dropped_seen:
            metrics.audit_dropped_total.inc(dropped - self._dropped_seen)
            self._dropped_seen = dropped
        metrics.audit_queued_records.set(self.native.queued)
        if self.index is not None:
            metrics.audit_index_pending.set(self.index.pending)

    def health(self) -> dict[str, Any]:
        """For ``/healthz`` and ``/metrics``."""
        self._update_gauges()
        index_error = self.index.last_error if self.index is not None else None
        return {
            "healthy": not self.failing,
            "error": self.writer.last_error or index_error,
            "writer_error": self.writer.last_error,
            "index_error": index_error,
            "index_pending": self.index.pending if self.index is not None else 0,
            "queued": self.native.queued,
            "dropped": self.native.dropped_total,
            "segment": str(self.writer.current_segment) if self.writer.current_segment else None,
        }

    def wait_written(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is written (tests)."""
        return self.writer.flush(timeout)
