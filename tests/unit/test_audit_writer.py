"""The writer thread: rotation by size, by age and by request file; a second writer on the same
directory is refused; a restart continues the chain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import veilgate_native as native

from veilgate.audit.format import GATEWAY_SID
from veilgate.audit.reader import read_records
from veilgate.audit.segments import ROTATE_REQUEST, AuditDirLocked, SegmentDir
from veilgate.audit.verify import verify
from veilgate.audit.writer import AuditWriter, WriterSettings

KEY = b"k" * 32


def _writer(d: Path, **settings: float) -> AuditWriter:
    rec = native.AuditRecorder("n", "k1", KEY)
    w = AuditWriter(SegmentDir(d), rec, WriterSettings(interval_s=0.01, fsync=False, **settings))  # type: ignore[arg-type]
    w.start()
    return w


def _push(w: AuditWriter, sid: str, n: int) -> None:
    w.recorder.push(sid, '"session_start"')
    for i in range(n):
        w.recorder.push(sid, f'"statement","stmt":{i},"sql":"select {"x" * 200}"')
        if i % 10 == 9:
            assert w.flush()
    w.recorder.push(sid, '"session_end","reason":"test"', terminator=True)
    assert w.flush()


def test_rotation_by_size_keeps_one_verifiable_chain(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    w = _writer(d, rotate_bytes=4096)
    _push(w, "aaaa", 60)
    w.stop()
    segs = SegmentDir(d).segments()
    assert len(segs) >= 3
    assert all(p.stat().st_size < 4096 * 2 for _, p in segs)
    report = verify(d, {"k1": KEY})
    assert report.ok and report.terminated == 1, [str(f) for f in report.findings]


def test_rotation_by_age_and_by_request_file(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    w = _writer(d, rotate_age_s=0.2)
    _push(w, "aaaa", 3)
    time.sleep(0.4)
    _push(w, "bbbb", 3)
    assert len(SegmentDir(d).segments()) >= 2
    before = len(SegmentDir(d).segments())
    (d / ROTATE_REQUEST).touch()
    deadline = time.monotonic() + 10
    while (d / ROTATE_REQUEST).exists():
        assert time.monotonic() < deadline, "the request file was not taken"
        time.sleep(0.01)
    assert len(SegmentDir(d).segments()) == before + 1
    w.stop()
    assert verify(d, {"k1": KEY}).ok


def test_one_writer_per_directory_and_a_restart_continues(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    w = _writer(d)
    _push(w, "aaaa", 2)
    with pytest.raises(AuditDirLocked):
        _writer(d)
    w.stop()
    w2 = _writer(d)
    _push(w2, "bbbb", 2)
    w2.stop()
    records = list(read_records(d))
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(seqs) + 1))
    started = [r for r in records if r["sid"] == GATEWAY_SID and r["kind"] == "audit_started"]
    assert [s["previous_clean"] for s in started] == [True, True]
    assert started[1]["previous_segment"] == 1
    assert verify(d, {"k1": KEY}).ok
