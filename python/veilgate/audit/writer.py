"""The writer thread: takes sealed batches from the native recorder and appends them to segments.

The event loop never waits for it: the data path pushes records into the native queue, and this
thread takes them in batches (at its flush interval, or earlier when a batch's worth is queued),
has them chained and sealed without the GIL, appends the bytes to the current segment and fsyncs.

When a write fails (disk full, permission lost, the volume gone), the batch stays in memory, the
segment is cut back to its last good byte, and the thread reports the failure
(``on_state(False, error)``); it retries every ``retry_s`` until a write works, then reports the
recovery (``on_state(True, None)``).  Nothing sealed is ever dropped: while it retries, new
records wait in the native queue (bounded: past its capacity they are dropped, counted, and a
``gap`` record says so in their session).

Rotation: a new segment when the current one reaches ``rotate_bytes`` or ``rotate_age_s``, on
:meth:`request_rotate` (SIGHUP), or when ``veilgate audit rotate`` leaves a request file in the
directory.  The closed segment ends with a signed trailer; the new one's header links to the
last seal.  Retention: segments older than ``retention_s`` are deleted (never the current one),
and a ``purge`` record in the gateway's own stream lists them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import veilgate_native as native

from veilgate import log

from .format import GATEWAY_SID
from .segments import ResumePoint, SegmentDir, read_lines

__all__ = ["AuditWriter", "WriterSettings", "gateway_record"]

logger = log.get("audit.writer")

PURGE_CHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class WriterSettings:
    interval_s: float = 0.2
    batch_max: int = 4096
    fsync: bool = True
    rotate_bytes: int = 64 << 20
    rotate_age_s: float = 86_400.0
    retention_s: float | None = None
    retry_s: float = 1.0


def gateway_record(kind: str, **members: Any) -> str:
    """The members of a record of the gateway's own stream (``sid`` ``-``)."""
    body = json.dumps(members, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(kind) + ("," + body[1:-1] if members else "")


class _Segment:
    __slots__ = ("created", "fd", "last_batch", "last_seq", "number", "path", "size")

    def __init__(self, number: int, path: Path, fd: int, created: float) -> None:
        self.number = number
        self.path = path
        self.fd = fd
        self.size = 0
        self.created = created
        self.last_seq = 0
        self.last_batch = 0


class AuditWriter:
    """Appends the recorder's sealed batches to the segments of ``directory``."""

    def __init__(
        self,
        directory: SegmentDir,
        recorder: native.AuditRecorder,
        settings: WriterSettings,
        *,
        on_state: Callable[[bool, str | None], None] | None = None,
        on_written: Callable[[native.SealedBatch], None] | None = None,
        on_purged: Callable[[int], None] | None = None,
    ) -> None:
        self.dir = directory
        self.recorder = recorder
        self.settings = settings
        self._on_state = on_state
        self._on_written = on_written
        self._on_purged = on_purged
        """Called (from this thread) with the last seq of the segments a purge deleted."""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rotate = threading.Event()
        self._wake = threading.Event()
        self._segment: _Segment | None = None
        self._broken = False
        """The current segment could not be cut back after a failed write: start a new one."""
        self._pending: native.SealedBatch | None = None
        self._last_seal: bytes | None = None
        self._next_segment = 1
        self._last_purge = 0.0
        self.healthy = True
        self.last_error: str | None = None
        self.failed_since: float | None = None
        self.records_written = 0
        self.items_written = 0
        """Queued records written (compare with ``recorder.pushed_total``)."""
        self.batches_written = 0
        self.bytes_written = 0
        self.write_failures = 0
        self.resumed: ResumePoint | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Lock the directory, continue the previous run's chain, open a new segment, start."""
        self.dir.ensure()
        self.dir.lock()
        try:
            point = self.dir.resume_point()
            self.resumed = point
            self.recorder.resume(point.next_seq, point.next_batch, point.prev_seal)
            self._last_seal = point.prev_seal
            self._next_segment = point.next_segment
            self.recorder.push(
                GATEWAY_SID,
                gateway_record(
                    "audit_started",
                    node=socket.gethostname(),
                    pid=os.getpid(),
                    previous_segment=point.last_segment,
                    previous_clean=point.clean,
                    previous_unsealed_bytes=point.torn_bytes,
                    key_id=self.recorder.key_id,
                ),
            )
            self._open_segment(point.next_seq, point.next_batch)
        except BaseException:
            self.dir.unlock()
            raise
        self._thread = threading.Thread(target=self._run, name="veilgate-audit-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> int:
        """Write what is queued, close the segment with a trailer, release the directory.
        Returns the records that could not be written (0 normally)."""
        self._stop.set()
        self.recorder.wake()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("audit writer did not stop in time")
        lost = self.recorder.queued + (self._pending.records if self._pending else 0)
        if lost:
            log.event(logger, "audit_unwritten_at_stop", logging.ERROR, records=lost)
        self.dir.unlock()
        return lost

    def request_rotate(self) -> None:
        """Close the current segment and start a new one (SIGHUP, ``veilgate audit rotate``)."""
        self._rotate.set()
        self.recorder.wake()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued before the call is written (tests, shutdown, ``audit
        rotate``).  False on timeout (e.g. while writes fail)."""
        target = self.recorder.pushed_total
        deadline = time.monotonic() + timeout
        while self.items_written < target or self._rotate.is_set():
            if time.monotonic() >= deadline:
                return False
            self.recorder.wake()
            time.sleep(0.005)
        return True

    @property
    def current_segment(self) -> Path | None:
        seg = self._segment
        return seg.path if seg is not None else None

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        s = self.settings
        while True:
            stopping = self._stop.is_set()
            if self._pending is None:
                if stopping and self.recorder.queued == 0:
                    break
                self._pending = self.recorder.next_batch(
                    s.batch_max, 0.0 if stopping else s.interval_s
                )
            self._maybe_rotate()
            if self._pending is not None and not self._write_pending():
                if stopping:
                    break
                self._wake.wait(s.retry_s)
                self._wake.clear()
                continue
            self._maybe_purge()
        self._close_segment("shutdown")

    def _write_pending(self) -> bool:
        batch = self._pending
        assert batch is not None
        try:
            if self._segment is None or self._broken:
                self._open_segment(batch.first_seq, batch.batch)
            seg = self._segment
            assert seg is not None
            self._append(seg, batch.data)
        except OSError as exc:
            self._failed(exc)
            return False
        seg.last_seq = batch.last_seq
        seg.last_batch = batch.batch
        self._last_seal = batch.seal
        self._pending = None
        self.records_written += batch.records
        self.items_written += batch.items
        self.batches_written += 1
        self.bytes_written += len(batch.data)
        if not self.healthy:
            self._recovered()
        if self._on_written is not None:
            try:
                self._on_written(batch)
            except Exception:
                logger.exception("audit on_written callback failed")
        return True

    def _append(self, seg: _Segment, data: bytes) -> None:
        """Append ``data`` whole, or cut the file back to where it was and raise."""
        start = seg.size
        view = memoryview(data)
        try:
            while view:
                n = os.write(seg.fd, view)
                view = view[n:]
                seg.size += n
            if self.settings.fsync:
                os.fsync(seg.fd)
        except OSError:
            try:
                os.ftruncate(seg.fd, start)
                seg.size = start
            except OSError:
                self._broken = True
            raise

    def _failed(self, exc: OSError) -> None:
        self.write_failures += 1
        error = f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc.strerror or exc}"
        first = self.healthy
        self.healthy = False
        self.last_error = error
        if first:
            self.failed_since = time.monotonic()
            log.event(
                logger,
                "audit_write_failed",
                logging.ERROR,
                error=error,
                segment=str(self._segment.path) if self._segment else None,
                queued=self.recorder.queued,
            )
            if self._on_state is not None:
                self._on_state(False, error)

    def _recovered(self) -> None:
        since = self.failed_since
        down_s = round(time.monotonic() - since, 3) if since is not None else None
        self.healthy = True
        self.last_error = None
        self.failed_since = None
        # the record of the recovery is the recorder's (it covers the index's failures too)
        log.event(logger, "audit_recovered", down_s=down_s, queued=self.recorder.queued)
        if self._on_state is not None:
            self._on_state(True, None)

    # --- segments ------------------------------------------------------------------------------

    def _open_segment(self, first_seq: int, first_batch: int) -> None:
        number = self._next_segment
        path = self.dir.segment_path(number)
        now = time.time()
        header = self.recorder.header(number, first_seq, first_batch, self._last_seal, now)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.write(fd, header)
            if self.settings.fsync:
                os.fsync(fd)
                with contextlib.suppress(OSError):
                    dfd = os.open(self.dir.path, os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        old = self._segment
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old.fd)
        seg = _Segment(number, path, fd, now)
        seg.size = len(header)
        seg.last_seq = first_seq - 1
        seg.last_batch = first_batch - 1
        self._segment = seg
        self._broken = False
        self._next_segment = number + 1

    def _close_segment(self, reason: str) -> None:
        seg = self._segment
        if seg is None:
            return
        if not self._broken:
            trailer = self.recorder.trailer(
                seg.number, seg.last_seq, seg.last_batch, self._last_seal, reason, time.time()
            )
            try:
                self._append(seg, trailer)
            except OSError as exc:
                log.event(logger, "audit_trailer_failed", logging.WARNING, error=str(exc))
        with contextlib.suppress(OSError):
            os.close(seg.fd)
        self._segment = None

    def _maybe_rotate(self) -> None:
        seg = self._segment
        s = self.settings
        why = None
        if self._rotate.is_set():
            why = "requested"
        elif self.dir.rotate_requested():
            why = "request_file"
        elif seg is not None and seg.size >= s.rotate_bytes:
            why = "size"
        elif seg is not None and time.time() - seg.created >= s.rotate_age_s:
            why = "age"
        if why is None or not self.healthy:
            return
        self._rotate.clear()
        pending = self._pending
        first_seq = pending.first_seq if pending else self.recorder.next_seq
        first_batch = pending.batch if pending else self.recorder.next_batch_number
        old = seg.path if seg else None
        self._close_segment("rotate")
        try:
            self._open_segment(first_seq, first_batch)
        except OSError as exc:
            self._failed(exc)
            return
        self.dir.clear_rotate_request()
        log.event(logger, "audit_rotated", reason=why, old=str(old), new=str(self.current_segment))
        self._purge()

    def _maybe_purge(self) -> None:
        if self.settings.retention_s is None:
            return
        now = time.monotonic()
        if now - self._last_purge >= PURGE_CHECK_S:
            self._purge()

    def _purge(self) -> None:
        """Delete segments older than the retention (their last write is that old)."""
        self._last_purge = time.monotonic()
        keep_s = self.settings.retention_s
        if keep_s is None:
            return
        cutoff = time.time() - keep_s
        current = self._segment.number if self._segment else None
        purged: list[dict[str, Any]] = []
        for number, path in self.dir.segments():
            if number == current:
                break
            try:
                if path.stat().st_mtime >= cutoff:
                    break  # segments are written in order: the rest are newer
                facts = _segment_facts(path)
                path.unlink()
            except OSError as exc:
                log.event(
                    logger, "audit_purge_failed", logging.WARNING, path=str(path), error=str(exc)
                )
                break
            purged.append({"segment": number, **facts})
        if purged:
            log.event(logger, "audit_purged", segments=[p["segment"] for p in purged])
            self.recorder.push(
                GATEWAY_SID,
                gateway_record("purge", retention_days=keep_s / 86_400, segments=purged),
            )
            last = max((p["last_seq"] for p in purged if p.get("last_seq") is not None), default=0)
            if self._on_purged is not None and last:
                try:
                    self._on_purged(int(last))
                except Exception:
                    logger.exception("audit on_purged callback failed")


def _segment_facts(path: Path) -> dict[str, Any]:
    """What verification needs to accept a purged segment: its last seq and last seal hash."""
    lines, _ = read_lines(path)
    last_seal = None
    first_seq = None
    for _raw, ln in lines:
        if ln is None:
            continue
        if ln.kind == "header":
            first_seq = ln.data.get("first_seq")
        elif ln.kind == "seal":
            last_seal = ln
    if last_seal is None:
        return {"first_seq": first_seq, "last_seq": None, "last_seal": None}
    return {
        "first_seq": first_seq,
        "last_seq": last_seal.data["last_seq"],
        "last_batch": last_seal.data["seal"],
        "last_seal": last_seal.hash.hex(),
    }
