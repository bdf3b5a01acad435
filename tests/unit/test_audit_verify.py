"""Tamper evidence: ``verify`` accepts an untouched recording and names the spot of every kind of
tampering (flip a byte, delete, reorder, truncate, splice, replace the key, drop a segment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import veilgate_native as native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veilgate.audit.format import GATEWAY_SID, segment_name
from veilgate.audit.segments import SegmentDir
from veilgate.audit.verify import Report, verify
from veilgate.audit.writer import AuditWriter, WriterSettings

KEY = b"0123456789abcdef0123456789abcdef"
KEYS = {"k1": KEY}


def _writer(directory: Path, key: bytes = KEY, kid: str = "k1", **settings: float) -> AuditWriter:
    rec = native.AuditRecorder("node-a", kid, key)
    w = AuditWriter(
        SegmentDir(directory), rec, WriterSettings(interval_s=0.01, fsync=False, **settings)
    )  # type: ignore[arg-type]
    w.start()
    return w


def _session(w: AuditWriter, sid: str, statements: int) -> None:
    r = w.recorder
    r.push(sid, '"session_start","tier":"ro"')
    for i in range(statements):
        r.push(sid, f'"statement","stmt":{i + 1},"sql":"select {i}","status":"ok"')
        assert w.flush()  # one batch per statement: several seals to check
    r.push(sid, '"session_end","reason":"client_closed"', terminator=True)
    assert w.flush()


def _recording(directory: Path, *, rotate: bool = False) -> None:
    w = _writer(directory)
    _session(w, "aaaa", 3)
    if rotate:
        w.request_rotate()
        assert w.flush()
    _session(w, "bbbb", 3)
    w.stop()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _find(lines: list[bytes], needle: bytes) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def _first_error(report: Report) -> str:
    assert not report.ok, "tampering was not detected"
    return str(report.errors[0])


@pytest.fixture
def rec(tmp_path: Path) -> Path:
    d = tmp_path / "audit"
    _recording(d)
    return d


def test_untouched_recording_verifies(rec: Path) -> None:
    report = verify(rec, KEYS)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert (report.sessions, report.terminated) == (2, 2)
    seg = rec / segment_name(1)
    assert verify(seg, KEYS).ok
    one = verify(rec, KEYS, session="bbbb")
    assert one.ok and one.terminated == 1
    assert not verify(rec, KEYS, session="nope").ok


def test_flipped_byte_names_the_record(rec: Path) -> None:
    seg = rec / segment_name(1)
    lines = _lines(seg)
    i = _find(lines, b'"sql":"select 1"')
    lines[i] = lines[i].replace(b"select 1", b"select 7")
    _write(seg, lines)
    report = verify(rec, KEYS)
    assert f"{seg}:{i + 1}: error: record does not match its seal" in _first_error(report)
    # the session chain breaks at the next record too
    assert any("does not link" in str(f) for f in report.errors)


def test_flipped_byte_that_breaks_json(rec: Path) -> None:
    seg = rec / segment_name(1)
    data = bytearray(seg.read_bytes())
    lines = _lines(seg)
    i = _find(lines, b'"sql":"select 2"')
    offset = sum(len(x) + 1 for x in lines[:i]) + 1
    data[offset] ^= 0x01  # the first '"' of the line
    seg.write_bytes(bytes(data))
    assert f"{seg}:{i + 1}: error: not a valid record line" in _first_error(verify(rec, KEYS))


def test_deleted_record_is_missing(rec: Path) -> None:
    seg = rec / segment_name(1)
    lines = _lines(seg)
    i = _find(lines, b'"sql":"select 1"')
    seq = json.loads(lines[i])["seq"]
    del lines[i]
    _write(seg, lines)
    report = verify(rec, KEYS)
    first = _first_error(report)
    # the batch held only that record: its seal (now at line i + 1) names it
    assert f"seq {seq} missing (deleted)" in first and f"{seg}:{i + 1}:" in first
    # and the next record names the gap too
    assert any(f"record seq {seq + 1}: seq {seq} missing" in str(f) for f in report.errors)


def test_reordered_records(rec: Path) -> None:
    seg = rec / segment_name(1)
    lines = _lines(seg)
    i = _find(lines, b'"kind":"session_start","tier":"ro"')
    j = _find(lines, b'"sql":"select 0"')
    # a record and the next one of the same batch
    assert json.loads(lines[j])["seq"] == json.loads(lines[i])["seq"] + 1
    lines[i], lines[j] = lines[j], lines[i]
    _write(seg, lines)
    report = verify(rec, KEYS)
    text = " | ".join(str(f) for f in report.errors)
    assert "missing" in text or "reordered" in text, text
    assert any("reordered" in str(f) for f in report.errors), text


def test_truncated_tail(rec: Path) -> None:
    seg = rec / segment_name(1)
    data = seg.read_bytes()
    # cut the trailer, the last seal and half of the last record
    lines = _lines(seg)
    keep = sum(len(x) + 1 for x in lines[:-3]) + len(lines[-3]) // 2
    seg.write_bytes(data[:keep])
    report = verify(rec, KEYS)
    text = " | ".join(str(f) for f in report.errors)
    assert "cut short" in text or "not sealed" in text, text


def test_whole_batches_cut_after_a_clean_end(rec: Path) -> None:
    """Removing the last batches (terminator included) and re-adding the trailer is caught: the
    trailer is signed, so it cannot be rewritten to match."""
    seg = rec / segment_name(1)
    lines = _lines(seg)
    end = _find(lines, b'"sid":"bbbb","n":4')  # bbbb's terminator (n=4)
    _write(seg, lines[: end - 1] + lines[-1:])
    text = " | ".join(str(f) for f in verify(rec, KEYS).errors)
    assert "bbbb" in text and "terminator" in text, text


def test_spliced_sessions(rec: Path, tmp_path: Path) -> None:
    """A record of another recording (same sid, same key) spliced in is caught."""
    other = tmp_path / "other"
    _recording(other)
    seg, oseg = rec / segment_name(1), other / segment_name(1)
    lines, olines = _lines(seg), _lines(oseg)
    i = _find(lines, b'"sid":"aaaa","n":2')
    lines[i] = olines[_find(olines, b'"sid":"aaaa","n":2')]
    _write(seg, lines)
    assert f"{seg}:{i + 1}:" in _first_error(verify(rec, KEYS))


def test_record_moved_to_another_session(rec: Path) -> None:
    seg = rec / segment_name(1)
    lines = _lines(seg)
    i = _find(lines, b'"sid":"bbbb","n":2')
    lines[i] = lines[i].replace(b'"sid":"bbbb"', b'"sid":"aaaa"')
    _write(seg, lines)
    report = verify(rec, KEYS)
    assert f"{seg}:{i + 1}:" in _first_error(report)
    assert any("spliced" in str(f) or "aaaa" in str(f) for f in report.errors)


def test_replaced_key(rec: Path, tmp_path: Path) -> None:
    """A recording re-made under another key (same key id) fails every signature check."""
    forged = tmp_path / "forged"
    w = _writer(forged, key=b"another key, 32 bytes long......")
    _session(w, "aaaa", 1)
    w.stop()
    report = verify(forged, KEYS)
    first = _first_error(report)
    assert "signature does not verify with key 'k1'" in first and ":1:" in first
    # and a key the verifier does not have is named
    assert "not in the keyring" in _first_error(verify(rec, {"other": KEY}))


def test_missing_segment_and_purge(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    _recording(d, rotate=True)
    assert verify(d, KEYS).ok
    segs = SegmentDir(d).segments()
    assert len(segs) == 2
    segs[0][1].unlink()
    assert "segment(s) 1 missing" in _first_error(verify(d, KEYS))


def test_retention_purge_is_recorded_and_accepted(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    w = _writer(d, retention_s=3600.0)
    _session(w, "aaaa", 1)
    w.request_rotate()
    assert w.flush()
    first = SegmentDir(d).segments()[0][1]
    old = os.stat(first).st_mtime - 7200
    os.utime(first, (old, old))
    w.request_rotate()  # rotation purges
    assert w.flush()
    _session(w, "bbbb", 1)
    w.stop()
    numbers = [n for n, _ in SegmentDir(d).segments()]
    assert 1 not in numbers
    purges = [
        json.loads(line)
        for _, p in SegmentDir(d).segments()
        for line in _lines(p)
        if b'"kind":"purge"' in line
    ]
    assert purges and purges[0]["sid"] == GATEWAY_SID and purges[0]["segments"][0]["segment"] == 1
    report = verify(d, KEYS)
    assert report.ok, [str(f) for f in report.findings]


def test_crash_leaves_open_sessions_as_warnings(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    w = _writer(d)
    w.recorder.push("cccc", '"session_start"')
    assert w.flush()
    # a crash: the segment ends without its trailer (stop, then remove the trailer)
    seg = w.current_segment
    assert seg is not None
    w.stop()
    lines = _lines(seg)
    assert b'"closed"' in lines[-1]
    _write(seg, lines[:-1])
    open_report = verify(d, KEYS)
    assert open_report.ok and any("open" in str(f) for f in open_report.findings)
    # the next run notes the unclean end; the session that was open is reported as abandoned
    w2 = _writer(d)
    w2.stop()
    report = verify(d, KEYS)
    assert report.ok, [str(f) for f in report.errors]
    assert any("stopped abnormally" in str(f) and "cccc" in str(f) for f in report.findings)


# --- any single changed byte is caught -----------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("pristine") / "audit"
    _recording(d)
    (seg,) = [p for _, p in SegmentDir(d).segments()]
    return seg.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(at=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255))
def test_any_changed_byte_is_caught(
    pristine: bytes, tmp_path_factory: pytest.TempPathFactory, at: float, value: int
) -> None:
    i = int(at * len(pristine))
    if pristine[i] == value:
        value ^= 1
    d = tmp_path_factory.mktemp("flip") / "audit"
    d.mkdir()
    (d / segment_name(1)).write_bytes(pristine[:i] + bytes([value]) + pristine[i + 1 :])
    report = verify(d, KEYS)
    assert not report.ok, f"byte {i} {pristine[i]!r} -> {value!r} went unnoticed"
