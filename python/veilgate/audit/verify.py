"""``veilgate sessions verify``: check that a recording was not altered, cut, reordered or spliced.

What is checked (see :mod:`veilgate.audit.format` for the lines):

* every line parses; the first line of a segment is its signed header;
* records are numbered without gaps or reversals (``seq``), and every batch is followed by its
  seal, whose MAC verifies with the key its ``kid`` names, whose ``digest`` and per-record
  ``hashes`` match the records before it, and whose ``prev_seal`` is the hash of the seal before
  it (across segments too): a changed byte names its record, a missing or reordered record its
  position, a batch moved from another recording its seal;
* each session's records are numbered ``n = 0, 1, ...`` and each names the hash of the one before
  it (``prev``): a record spliced in from another session breaks its session's chain; a session's
  last record is its signed terminator, and nothing of it follows;
* segments follow each other (header ``first_seq`` and ``prev_seal`` continue the previous
  segment) unless a ``purge`` record (retention) lists the ones that are gone; a closed segment
  ends with a signed trailer; records after the last seal are a cut-off (truncated) batch.

A session without a terminator is *open*: an error when the recording ended cleanly (a shutdown
trailer: its end was cut off), a warning when the gateway is still running (``allow_open``) or
stopped abnormally (the next run's ``audit_started`` record says so).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .format import GATEWAY_SID, Line, mac_ok, segment_number
from .segments import SegmentDir, read_lines

__all__ = ["Finding", "Report", "verify"]


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    """``error`` (evidence of tampering or loss) or ``warning``."""
    file: str
    line: int
    message: str
    sid: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    batches: int = 0
    sessions: int = 0
    terminated: int = 0
    open_sessions: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _Session:
    n: int
    prev: bytes
    file: str
    line: int
    seq: int
    ended: bool = False
    abandoned: bool = False
    first_n: int = 0


@dataclass
class _Batch:
    lines: list[tuple[Line | None, bytes, int]] = field(default_factory=list)
    """(parsed line or None, raw bytes, line number) of the records since the last seal."""


class _Verifier:
    def __init__(self, keyring: dict[str, bytes], *, standalone: bool) -> None:
        self.keyring = keyring
        self.standalone = standalone
        """One file on its own: sessions may continue from, or into, other segments."""
        self.report = Report()
        self.sessions: dict[str, _Session] = {}
        self.next_seq: int | None = None
        self.next_batch: int | None = None
        self.prev_seal: bytes | None = None
        self.prev_segment: int | None = None
        self.purged: dict[int, dict[str, Any]] = {}
        self.clean_end = False

    def error(self, file: str, line: int, message: str, **kw: Any) -> None:
        self.report.findings.append(Finding("error", file, line, message, **kw))

    def warn(self, file: str, line: int, message: str, **kw: Any) -> None:
        self.report.findings.append(Finding("warning", file, line, message, **kw))

    def signed(self, ln: Line, file: str, what: str) -> None:
        kid = str(ln.data.get("kid", ""))
        ok = mac_ok(ln.raw, kid, self.keyring)
        if ok is None:
            self.error(
                file, ln.number, f"{what}: signed with key {kid!r}, which is not in the keyring"
            )
        elif not ok:
            self.error(
                file,
                ln.number,
                f"{what}: signature does not verify with key {kid!r} (the line was altered, or "
                "signed with another key)",
            )

    # --- segments ------------------------------------------------------------------------------

    def segment(self, number: int | None, path: Path) -> None:
        file = str(path)
        self.report.segments += 1
        try:
            lines, torn = read_lines(path)
        except OSError as exc:
            self.error(file, 0, f"cannot read: {exc}")
            return
        if not lines or lines[0][1] is None or lines[0][1].kind != "header":
            self.error(
                file, 1, "the first line is not a segment header (file truncated or replaced)"
            )
            return
        header = lines[0][1]
        self.header(header, number, file)
        batch = _Batch()
        trailer: Line | None = None
        for lineno, (raw, ln) in enumerate(lines[1:], 2):
            if trailer is not None:
                self.error(file, lineno, "data after the segment's trailer")
                break
            if ln is None:
                self.error(file, lineno, "not a valid record line (corrupt or edited)")
                batch.lines.append((None, raw, lineno))
            elif ln.kind == "record":
                self.record(ln, file)
                batch.lines.append((ln, raw, ln.number))
            elif ln.kind == "seal":
                self.seal(ln, batch, file)
                batch = _Batch()
            elif ln.kind == "trailer":
                trailer = ln
                self.trailer(ln, batch, number, file)
            else:
                self.error(file, ln.number, f"unexpected {ln.kind} line inside the segment")
        if batch.lines:
            first = batch.lines[0][2]
            self.error(
                file,
                first,
                f"{len(batch.lines)} record line(s) after the last seal (lines {first}-"
                f"{batch.lines[-1][2]}) are not sealed: the segment was truncated, or the "
                "gateway stopped in the middle of a write",
            )
        if torn:
            self.error(
                file, len(lines) + 1, f"the last line is cut short ({torn} bytes): truncated"
            )
        self.clean_end = trailer is not None and trailer.data.get("reason") == "shutdown"
        if trailer is None and not self.standalone:
            self.pending_no_trailer = (file, len(lines))
        else:
            self.pending_no_trailer = None
        self.prev_segment = number

    pending_no_trailer: tuple[str, int] | None = None

    def header(self, ln: Line, number: int | None, file: str) -> None:
        d = ln.data
        self.signed(ln, file, "segment header")
        if number is not None and d.get("segment") != number:
            self.error(
                file, 1, f"the header says segment {d.get('segment')}, the file name {number}"
            )
        if self.pending_no_trailer is not None:
            f, n = self.pending_no_trailer
            self.warn(f, n, "segment not closed with a trailer (the gateway stopped abnormally)")
            self.pending_no_trailer = None
        first_seq = int(d.get("first_seq", 0))
        first_batch = int(d.get("first_batch", 0))
        prev = str(d.get("prev_seal") or "")
        if self.standalone:
            self.next_seq, self.next_batch = first_seq, first_batch
            self.prev_seal = bytes.fromhex(prev) if prev else None
            return
        seg = int(d.get("segment", 0))
        expected_prev = self.prev_seal
        expected_seq = self.next_seq
        expected_batch = self.next_batch
        before = self.prev_segment if self.prev_segment is not None else 0
        gone = list(range(before + 1, seg))
        if gone:
            unpurged = [g for g in gone if g not in self.purged]
            if unpurged:
                self.error(
                    file,
                    1,
                    f"segment(s) {_ranges(unpurged)} missing (deleted, and no purge record says "
                    "they were purged)",
                )
                expected_prev = expected_seq = expected_batch = None
            else:
                facts = self.purged[gone[-1]]
                last_seal = facts.get("last_seal")
                expected_prev = bytes.fromhex(last_seal) if last_seal else expected_prev
                if facts.get("last_seq") is not None:
                    expected_seq = int(facts["last_seq"]) + 1
                if facts.get("last_batch") is not None:
                    expected_batch = int(facts["last_batch"]) + 1
        if self.prev_segment is None and not gone:
            expected_prev = None
            expected_seq = first_seq if first_seq else None
            expected_batch = first_batch if first_batch else None
        if expected_seq is not None and first_seq != expected_seq:
            self.error(
                file,
                1,
                f"segment starts at seq {first_seq}, expected {expected_seq} (records missing "
                "between segments)",
            )
        if expected_batch is not None and first_batch != expected_batch:
            self.error(file, 1, f"segment starts at batch {first_batch}, expected {expected_batch}")
        if (self.prev_segment is not None or gone) and expected_prev is not None:
            if prev != expected_prev.hex():
                self.error(
                    file,
                    1,
                    "the header does not link to the previous segment's last seal (a segment was "
                    "replaced, or this one comes from another recording)",
                )
        elif self.prev_segment is None and not gone and prev:
            self.error(file, 1, "the first segment links to an earlier one that is not here")
        self.next_seq, self.next_batch = first_seq, first_batch
        self.prev_seal = bytes.fromhex(prev) if prev else None

    def record(self, ln: Line, file: str) -> None:
        d = ln.data
        self.report.records += 1
        seq = d.get("seq")
        sid = d.get("sid")
        n = d.get("n")
        if not isinstance(sid, str) or not isinstance(n, int) or not isinstance(seq, int):
            self.error(file, ln.number, "record without seq / sid / n")
            return
        if self.next_seq is not None and seq != self.next_seq:
            if seq > self.next_seq:
                gap = (
                    f"seq {self.next_seq}"
                    if seq == self.next_seq + 1
                    else (f"seq {self.next_seq}-{seq - 1}")
                )
                self.error(
                    file, ln.number, f"record seq {seq}: {gap} missing (deleted)", seq=seq, sid=sid
                )
            else:
                self.error(
                    file,
                    ln.number,
                    f"record seq {seq} comes after seq {self.next_seq - 1}: records reordered "
                    "or duplicated",
                    seq=seq,
                    sid=sid,
                )
        self.next_seq = seq + 1
        prev = str(d.get("prev", ""))
        s = self.sessions.get(sid)
        if sid == GATEWAY_SID and n == 0 and d.get("kind") == "audit_started":
            s = None  # each run of the gateway starts its own stream
        if s is None:
            if n != 0 and not self.standalone and not self._may_continue(n):
                self.error(
                    file,
                    ln.number,
                    f"session {sid}: its first record here is n={n}: records n=0-{n - 1} missing",
                    seq=seq,
                    sid=sid,
                )
            elif n == 0 and prev:
                self.error(
                    file,
                    ln.number,
                    f"session {sid}: record n=0 names a previous record",
                    seq=seq,
                    sid=sid,
                )
            if sid != GATEWAY_SID:
                self.report.sessions += 1
            s = self.sessions[sid] = _Session(n, ln.hash, file, ln.number, seq, first_n=n)
        else:
            if s.ended:
                self.error(
                    file,
                    ln.number,
                    f"session {sid}: record n={n} after the session's terminator (line {s.line}): "
                    "spliced in",
                    seq=seq,
                    sid=sid,
                )
            if n != s.n + 1:
                self.error(
                    file,
                    ln.number,
                    f"session {sid}: record n={n} follows n={s.n} (line {s.line}): the session's "
                    "records are missing, reordered or spliced",
                    seq=seq,
                    sid=sid,
                )
            elif prev != s.prev.hex():
                self.error(
                    file,
                    ln.number,
                    f"session {sid}: record n={n} does not link to its record n={s.n} (line "
                    f"{s.line}): that record was altered, or this one comes from another session",
                    seq=seq,
                    sid=sid,
                )
            s.n, s.prev, s.file, s.line, s.seq = n, ln.hash, file, ln.number, seq
        kind = d.get("kind")
        if kind == "session_end":
            self.signed(ln, file, f"session {sid} terminator")
            s.ended = True
            self.report.terminated += 1
        elif kind == "purge" and sid == GATEWAY_SID:
            for p in d.get("segments") or []:
                if isinstance(p, dict) and isinstance(p.get("segment"), int):
                    self.purged.setdefault(p["segment"], p)
        elif kind == "audit_started" and sid == GATEWAY_SID and d.get("previous_clean") is False:
            for other_sid, other in self.sessions.items():
                if not other.ended and other_sid != GATEWAY_SID:
                    other.abandoned = True

    def _may_continue(self, n: int) -> bool:
        """A session first seen mid-chain is fine only right after purged segments."""
        return bool(self.purged) and self.report.segments <= 1 + len(self.purged)

    def seal(self, ln: Line, batch: _Batch, file: str) -> None:
        d = ln.data
        self.report.batches += 1
        number = d.get("seal")
        what = f"seal of batch {number}"
        self.signed(ln, file, what)
        if self.next_batch is not None and number != self.next_batch:
            self.error(
                file,
                ln.number,
                f"{what}: expected batch {self.next_batch} (a batch was removed, reordered or "
                "spliced in)",
            )
        if isinstance(number, int):
            self.next_batch = number + 1
        prev = str(d.get("prev_seal") or "")
        if self.prev_seal is not None and prev != self.prev_seal.hex():
            self.error(
                file,
                ln.number,
                f"{what}: does not follow the previous seal (a batch was removed, reordered or "
                "comes from another recording)",
            )
        self.prev_seal = ln.hash
        hashes = str(d.get("hashes", ""))
        short = [hashes[i : i + 16] for i in range(0, len(hashes), 16)]
        got = [hashlib.sha256(raw).digest() for _, raw, _ in batch.lines]
        altered = False
        for i, (h, (_, _, lineno)) in enumerate(zip(got, batch.lines, strict=False)):
            if i < len(short) and h[:8].hex() != short[i]:
                self.error(
                    file, lineno, f"record does not match its seal (batch {number}): altered"
                )
                altered = True
        if d.get("count") != len(batch.lines) or len(short) != len(batch.lines):
            self.error(file, ln.number, f"{what}: {self._count_mismatch(d, batch)}")
            altered = True
        digest = hashlib.sha256(b"".join(got)).hexdigest()
        if digest != d.get("digest") and not altered:
            self.error(file, ln.number, f"{what}: digest does not match its records")
        seqs = [x.data.get("seq") for x, _, _ in batch.lines if x is not None]
        if seqs and (seqs[0] != d.get("first_seq") or seqs[-1] != d.get("last_seq")):
            self.error(
                file,
                ln.number,
                f"{what}: covers seq {d.get('first_seq')}-{d.get('last_seq')}, the records are "
                f"seq {seqs[0]}-{seqs[-1]}",
            )

    @staticmethod
    def _count_mismatch(d: dict[str, Any], batch: _Batch) -> str:
        """Which records a seal covers that are not here (or the other way round)."""
        first, last = d.get("first_seq"), d.get("last_seq")
        present = {x.data.get("seq") for x, _, _ in batch.lines if x is not None}
        if isinstance(first, int) and isinstance(last, int):
            missing = [s for s in range(first, last + 1) if s not in present]
            if missing:
                return f"record seq {_ranges(missing)} missing (deleted)"
        return (
            f"seals {d.get('count')} records, {len(batch.lines)} are here (records deleted or "
            "inserted)"
        )

    def trailer(self, ln: Line, batch: _Batch, number: int | None, file: str) -> None:
        d = ln.data
        self.signed(ln, file, "segment trailer")
        if number is not None and d.get("closed") != number:
            self.error(
                file, ln.number, f"the trailer closes segment {d.get('closed')}, not {number}"
            )
        if self.next_seq is not None and d.get("last_seq") != self.next_seq - 1:
            self.error(
                file,
                ln.number,
                f"the trailer says the last record is seq {d.get('last_seq')}, the segment ends at "
                f"seq {self.next_seq - 1} (records removed)",
            )
        prev = str(d.get("prev_seal") or "")
        if self.prev_seal is not None and prev != self.prev_seal.hex():
            self.error(
                file,
                ln.number,
                "the trailer does not follow the segment's last seal (batches removed)",
            )

    # --- the end -------------------------------------------------------------------------------

    def finish(self, *, allow_open: bool, last_file: str) -> None:
        for sid, s in self.sessions.items():
            if sid == GATEWAY_SID or s.ended:
                continue
            if self.standalone:
                continue
            self.report.open_sessions.append(sid)
            if s.abandoned:
                self.warn(
                    s.file,
                    s.line,
                    f"session {sid}: no terminator; the gateway stopped abnormally while it was "
                    f"open (last record n={s.n})",
                    sid=sid,
                )
            elif self.clean_end:
                self.error(
                    s.file,
                    s.line,
                    f"session {sid}: no terminator after its record n={s.n}, but the recording "
                    "ended cleanly: the session's last records were removed (truncated)",
                    sid=sid,
                )
            elif not allow_open:
                self.warn(
                    s.file,
                    s.line,
                    f"session {sid}: open (no terminator after record n={s.n}): the gateway is "
                    "running, or stopped abnormally",
                    sid=sid,
                )


def _ranges(numbers: Iterable[int]) -> str:
    out: list[str] = []
    for n in sorted(numbers):
        if out and "-" not in out[-1] and int(out[-1]) == n - 1:
            out[-1] = f"{out[-1]}-{n}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _purge_records(paths: list[Path]) -> dict[int, dict[str, Any]]:
    """The segments purge records say were deleted (a quick pass over every file)."""
    import json

    purged: dict[int, dict[str, Any]] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b'"kind":"purge"' not in data:
            continue
        for raw in data.split(b"\n"):
            if b'"kind":"purge"' in raw:
                try:
                    d = json.loads(raw)
                except ValueError:
                    continue
                for p in d.get("segments") or []:
                    if isinstance(p, dict) and isinstance(p.get("segment"), int):
                        purged.setdefault(p["segment"], p)
    return purged


def verify(
    path: str | Path,
    keyring: dict[str, bytes],
    *,
    session: str | None = None,
    allow_open: bool = False,
) -> Report:
    """Verify a recording directory, or one segment file; with ``session``, report only what
    concerns that session (and fail if it is not there or has no terminator)."""
    p = Path(path)
    if p.is_dir():
        segs = SegmentDir(p).segments()
        v = _Verifier(keyring, standalone=False)
        if not segs:
            v.error(str(p), 0, "no segment files here")
            return v.report
        v.purged = _purge_records([s for _, s in segs])
        for number, seg in segs:
            v.segment(number, seg)
        if v.pending_no_trailer is not None and not allow_open:
            f, n = v.pending_no_trailer
            v.warn(
                f,
                n,
                "the last segment is open (no trailer): the gateway is running, or stopped "
                "abnormally",
            )
        v.finish(allow_open=allow_open, last_file=str(segs[-1][1]))
    else:
        v = _Verifier(keyring, standalone=True)
        v.segment(segment_number(p.name), p)
        v.finish(allow_open=True, last_file=str(p))
    report = v.report
    if session is None:
        return report
    return _only_session(report, v, session)


def _only_session(report: Report, v: _Verifier, sid: str) -> Report:
    s = v.sessions.get(sid)
    mine = [f for f in report.findings if f.sid == sid or (f.sid is None and f.severity == "error")]
    out = Report(
        findings=mine,
        segments=report.segments,
        records=report.records,
        batches=report.batches,
        sessions=1 if s else 0,
        terminated=1 if s and s.ended else 0,
        open_sessions=[sid] if s and not s.ended else [],
    )
    if s is None:
        out.findings.append(
            Finding("error", "", 0, f"session {sid}: no record of it here", sid=sid)
        )
    elif s.first_n != 0:
        out.findings.append(
            Finding(
                "warning", s.file, s.line, f"session {sid}: begins in a purged segment", sid=sid
            )
        )
    if (
        s is not None
        and not s.ended
        and not any(f.sid == sid and "terminator" in f.message for f in mine)
    ):
        out.findings.append(
            Finding(
                "error" if v.clean_end else "warning",
                s.file,
                s.line,
                f"session {sid}: no terminator after record n={s.n}",
                sid=sid,
            )
        )
    return out
