"""The JSON-lines decision log written natively: a client RecvBuffer armed with a DecisionLog
writes the line of every Query its verdict cache answers (the same members, in the same order,
as the Python sink's line for that decision; credentials redacted; one write per read), entries
without a rendered line surface (the control plane logs them), and failed writes are counted,
never raised into the data path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import veilgate_native as vn
from drive import events_of, read_cycle
from reference_framer import query

from veilgate.identity.base import Principal
from veilgate.policy.audit import (
    DecisionEvent,
    JsonLinesAuditSink,
    session_members,
    verdict_members,
)
from veilgate.policy.engine import PolicyEngine, SessionContext
from veilgate.policy.loader import load_policy_text

POLICY = """\
version: 1
tiers:
  - name: rw
    match: {roles: [db.rw]}
    rules:
      - id: rw-read
        action: allow
        message: "reads"
        classes: [read]
"""
SELECT = "select * from orders where note = 'a'"
PRINCIPAL = Principal(provider="static", subject="agent-7", tenant="t1", roles=frozenset({"db.rw"}))


def _verdict() -> object:
    engine = PolicyEngine(load_policy_text(POLICY))
    d = engine.decide(PRINCIPAL, SELECT, session=SessionContext(session_id="s1"))
    assert d.allowed
    return d.verdict


def _armed(path: Path, *, event: bool = True, max_sql: int = 4096, record_sql: bool = True):  # type: ignore[no-untyped-def]
    verdict = _verdict()
    cache = vn.VerdictCache()
    members = verdict_members(verdict) if event else None  # type: ignore[arg-type]
    assert cache.insert(7, SELECT.encode(), True, verdict, "rw-read", "fp", 0, members)
    log = vn.DecisionLog(str(path))
    rb = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
    rb.set_events(b"QP")
    rb.set_barrier_events(b"QP")
    prefix = session_members(PRINCIPAL, "peer:1")
    rb.set_verdicts(
        cache, 7, log=log, log_prefix=prefix, max_sql_bytes=max_sql, record_sql=record_sql
    )
    return rb, cache, log, verdict


def test_answered_queries_get_the_python_sinks_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rb, cache, log, verdict = _armed(path)
    texts = [
        "select * from orders where note = 'x1'",
        "select * from orders where note = 'postgresql://bob:s3cr3t@db/app'",
        # (no backslash: such texts are judged in Python, see test_native_parse)
        "select * from orders where note = 'é\"\n\t\x7f'",
    ]
    before = time.time()
    _, out = read_cycle(rb, b"".join(query(t) for t in texts), 65536)
    assert type(out) is bytes and cache.hits == 3  # answered, no event
    assert rb.verdict_events == 0
    # written at the end of the read, one line each
    assert log.lines == 3
    raw = path.read_text(encoding="utf-8")
    assert "s3cr3t" not in raw
    lines = [json.loads(x) for x in raw.splitlines()]
    for text, got in zip(texts, lines, strict=True):
        want = json.loads(
            DecisionEvent.from_verdict(
                verdict,  # type: ignore[arg-type]
                text,
                PRINCIPAL,
                session_id="peer:1",
                ts=got["ts"],
            ).to_json()
        )
        assert list(got) == list(want)  # the same members in the same order
        assert got == want
        assert before <= got["ts"] <= time.time() + 1
    assert lines[0]["cached"] is True and lines[0]["action"] == "allow"


def test_excerpt_bound_and_no_sql(tmp_path: Path) -> None:
    rb, _, _, _ = _armed(tmp_path / "a.jsonl", max_sql=24)
    text = "select * from orders where note = '" + "z" * 100 + "'"
    read_cycle(rb, query(text), 65536)
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert len(line["sql"].encode()) <= 24 + 3 and line["sql_len"] == len(text)
    rb, _, _, _ = _armed(tmp_path / "b.jsonl", record_sql=False)
    read_cycle(rb, query(text), 65536)
    line = json.loads((tmp_path / "b.jsonl").read_text())
    assert "sql" not in line and line["sql_len"] == len(text)


def test_an_entry_without_a_line_surfaces(tmp_path: Path) -> None:
    rb, cache, log, _ = _armed(tmp_path / "d.jsonl", event=False)
    _, out = read_cycle(rb, query("select * from orders where note = 'q'"), 65536)
    assert len(events_of(out)) == 1  # the control plane judges and logs it
    assert cache.hits == 0 and log.lines == 0


def test_failed_writes_are_counted_not_raised(tmp_path: Path) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")
    rb, cache, log, _ = _armed(full)
    _, out = read_cycle(rb, query("select * from orders where note = 'w'"), 65536)
    assert type(out) is bytes and cache.hits == 1  # the statement still runs
    assert log.failures == 1 and log.lines == 0 and log.last_error
    from veilgate import metrics

    sink = JsonLinesAuditSink(full)
    before = metrics.audit_log_failures_total.values.get((), 0.0)
    sink.emit(DecisionEvent.from_verdict(_verdict(), SELECT, PRINCIPAL))  # type: ignore[arg-type]
    assert metrics.audit_log_failures_total.values.get((), 0.0) == before + 1
    # a client buffer's failed write reaches the metric at the next scrape
    rb = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
    rb.set_events(b"Q")
    rb.set_verdicts(cache, 7, log=sink.native_log, log_prefix=b'"x":1')
    read_cycle(rb, query("select * from orders where note = 'v'"), 65536)
    metrics.render()
    assert metrics.audit_log_failures_total.values.get((), 0.0) == before + 2
    sink.close()
    with pytest.raises(ValueError):
        sink.emit(DecisionEvent.from_verdict(_verdict(), SELECT, PRINCIPAL))  # type: ignore[arg-type]


def test_reopen_follows_rotation_and_close_stops_buffers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rb, _, log, _ = _armed(path)
    read_cycle(rb, query("select * from orders where note = '1'"), 65536)
    path.rename(tmp_path / "d.jsonl.1")
    log.reopen()
    read_cycle(rb, query("select * from orders where note = '2'"), 65536)
    assert "'1'" in (tmp_path / "d.jsonl.1").read_text()
    assert "'2'" in path.read_text() and "'1'" not in path.read_text()
    log.close()
    _, out = read_cycle(rb, query("select * from orders where note = '3'"), 65536)
    assert type(out) is bytes  # lines of a closed log are dropped, the data path goes on
    assert "'3'" not in path.read_text()
