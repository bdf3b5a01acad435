"""When the session record cannot be written: a real filesystem that fills up (a small tmpfs
mounted for the test) and a state store that goes away.

``block`` (the default) refuses new statements with 58030 and fails readiness, ``continue``
keeps serving and counts what it drops; nothing already acknowledged is lost, and recovery needs
no restart."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.recording_setup import (
    audit_config,
    flush,
    make_key,
    recorder_of,
    sessions,
    statements,
    wait_sessions_ended,
    with_audit,
)
from tests.integration.state_fixtures import StatePg
from tests.integration.state_fixtures import state_pg as state_pg  # the fixture

from veilgate import metrics
from veilgate.admin.health import HealthState
from veilgate.admin.server import Request
from veilgate.audit.reader import read_records
from veilgate.audit.verify import verify
from veilgate.config_model import AuditFailureMode, StateBackend, StateConfig

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (the test runs as root; skipped otherwise)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path) -> Path:
    """Fill the filesystem to the last byte."""
    filler = fs / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def health(handle: GatewayHandle) -> tuple[int, dict[str, Any]]:
    rec = recorder_of(handle)
    resp = HealthState(handle.session_count, audit=rec)(Request("GET", "/healthz", "", {}))
    return resp.status, json.loads(resp.body)


def _gateway(factory: Factory, tmp_path: Path, audit_dir: Path, **audit: Any) -> GatewayHandle:
    cfg = audit_config(audit_dir, make_key(tmp_path), **audit)
    return factory(transform=with_audit(cfg))


def test_block_mode_refuses_then_recovers_without_losing_anything(
    gateway_factory: Factory, tmp_path: Path, small_fs: Path
) -> None:
    handle = _gateway(gateway_factory, tmp_path, small_fs / "audit")
    rec = recorder_of(handle)
    t = pw.gateway_target(handle)
    tx = psycopg.connect(t.conninfo(), autocommit=True)
    tx.execute("begin")
    tx.execute("select 'in a transaction'")
    with tx, psycopg.connect(t.conninfo(), autocommit=True) as conn:
        assert conn.execute("select 'before'").fetchone() == ("before",)
        flush(handle)
        filler = fill(small_fs)
        # acknowledged: it ran, its record is queued; the write that fails makes the recorder
        # refuse what comes next
        assert conn.execute("select 'acknowledged'").fetchone() == ("acknowledged",)
        wait_until(lambda: rec.blocked, "the recorder blocks")
        status, body = health(handle)
        assert status == 503 and body["status"] == "audit_unavailable"
        error = body["audit"]["error"] or ""
        assert "ENOSPC" in error or "full" in error, error
        assert metrics.audit_healthy.get() == 0
        refused_before = metrics.audit_refused_total.get()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("select 'refused simple'")
        assert info.value.sqlstate == "58030"
        assert "audit record cannot be written" in str(info.value)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("select %s::text", ("refused extended",))
        assert info.value.sqlstate == "58030"
        # inside a transaction: the refusal fails it, ROLLBACK still ends it
        with pytest.raises(psycopg.Error) as info:
            tx.execute("select 'refused in a transaction'")
        assert info.value.sqlstate == "58030"
        assert tx.execute("rollback").statusmessage == "ROLLBACK"
        assert metrics.audit_refused_total.get() >= refused_before + 3
        # the disk has room again: no restart, the same session goes on
        filler.unlink()
        wait_until(lambda: not rec.blocked, "the recorder recovers")
        assert health(handle)[0] == 200 and metrics.audit_healthy.get() == 1
        assert conn.execute("select 'after'").fetchone() == ("after",)
    wait_sessions_ended(handle)
    flush(handle)
    recs = sessions(small_fs / "audit")
    assert len(recs) == 2
    only = next(r for r in recs.values() if any(s.get("sql") == "select 'before'" for s in r))
    st = [s for r in recs.values() for s in statements(r)]
    texts = [(s["sql"], s["status"]) for s in st]
    assert ("select 'before'", "ok") in texts and ("select 'acknowledged'", "ok") in texts
    assert ("select 'after'", "ok") in texts
    refused = [s for s in st if s["status"] == "refused"]
    assert {s["sql"] for s in refused} >= {
        "select 'refused simple'",
        "select $1::text",
        "select 'refused in a transaction'",
    }
    assert all(
        s["sqlstate"] == "58030" and s["decision"]["rule"] == "audit-unavailable" for s in refused
    )
    assert only[-1]["kind"] == "session_end"
    report = verify(
        small_fs / "audit", {"k1": (tmp_path / "audit.key").read_bytes().strip()}, allow_open=True
    )
    assert report.ok, [str(f) for f in report.findings]
    gateway_events = [
        json.loads(line)
        for p in sorted((small_fs / "audit").glob("segment-*.jsonl"))
        for line in p.read_text().splitlines()
        if '"sid":"-"' in line
    ]
    assert any(e["kind"] == "audit_recovered" for e in gateway_events)


def test_continue_mode_serves_counts_drops_and_records_the_gap(
    gateway_factory: Factory, tmp_path: Path, small_fs: Path
) -> None:
    handle = _gateway(
        gateway_factory,
        tmp_path,
        small_fs / "audit",
        on_failure=AuditFailureMode.CONTINUE,
        queue_max_records=1024,
    )
    rec = recorder_of(handle)
    t = pw.gateway_target(handle)
    dropped_before = rec.native.dropped_total
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        flush(handle)
        filler = fill(small_fs)
        conn.execute("select 'first while full'")
        wait_until(lambda: rec.failing, "the writer notices the full disk")
        assert not rec.blocked and health(handle)[0] == 200
        assert health(handle)[1]["audit"]["healthy"] is False
        # more records than the queue holds, while nothing can be written: how many it takes
        # depends on how far the writer got before the disk filled, so send batches until the
        # recorder drops (bounded: 20 batches is 13x the queue)
        for batch in range(20):
            with conn.pipeline():
                for i in range(1000):
                    conn.execute("select %s::int", (batch * 1000 + i,))
            if rec.native.dropped_total > dropped_before:
                break
        assert conn.execute("select 'served'").fetchone() == ("served",)
        dropped = rec.native.dropped_total - dropped_before
        assert dropped > 0
        assert health(handle)[1]["audit"]["dropped"] >= dropped
        filler.unlink()
        wait_until(lambda: not rec.failing, "the recorder recovers")
    wait_sessions_ended(handle)
    flush(handle)
    (only,) = sessions(small_fs / "audit").values()
    assert any(r["kind"] == "gap" for r in only)
    # every drop is accounted for by a gap record (in the session, or in the gateway's own
    # stream for its own events; a few more may have come after the count above)
    gaps = [r for r in read_records(small_fs / "audit") if r["kind"] == "gap"]
    assert sum(g["dropped"] for g in gaps) == rec.native.dropped_total - dropped_before >= dropped
    assert any(s["sql"] == "select 'first while full'" for s in statements(only))
    keys = {"k1": (tmp_path / "audit.key").read_bytes().strip()}
    assert verify(small_fs / "audit", keys, allow_open=True).ok


def test_index_store_that_goes_away_blocks_then_recovers(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any, state_pg: StatePg
) -> None:
    role = "vg_idx_" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    pg_cluster.create_role(role, password)
    pg_cluster.execute(f"GRANT ALL ON DATABASE {state_pg.dbname} TO {role}")
    pg_cluster.execute(f"GRANT ALL ON SCHEMA public TO {role}", state_pg.dbname)
    env = "VEILGATE_TEST_INDEX_DSN"
    os.environ[env] = pg_cluster.dsn(user=role, password=password, dbname=state_pg.dbname)
    state = StateConfig(backend=StateBackend.POSTGRES, dsn_env=env, timeout_s=2.0)
    # index writes that keep failing past the grace are a recording failure (the grace keeps a
    # lock held a moment too long from refusing statements; tests/unit/test_audit_index.py)
    cfg = audit_config(tmp_path / "audit", make_key(tmp_path), index_grace_s=1.0)
    handle = gateway_factory(transform=lambda c: replace(with_audit(cfg)(c), state=state))
    rec = recorder_of(handle)
    t = pw.gateway_target(handle)
    try:
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        index = rec.index
        assert index is not None
        wait_until(lambda: index.migrated and index.pending == 0, "the index works")
        pg_cluster.execute(f"ALTER ROLE {role} NOLOGIN")
        state_pg.terminate_backends()
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            # this session's index row cannot be written: the recorder blocks
            wait_until(lambda: rec.blocked, "the recorder blocks on the index", timeout=30)
            assert health(handle)[0] == 503
            with pytest.raises(psycopg.Error) as info:
                conn.execute("select 'refused'")
            assert info.value.sqlstate == "58030"
            pg_cluster.execute(f"ALTER ROLE {role} LOGIN")
            wait_until(lambda: not rec.blocked, "the recorder recovers", timeout=30)
            assert conn.execute("select 'after'").fetchone() == ("after",)
        wait_sessions_ended(handle)
        flush(handle)

        async def rows() -> list[Any]:
            from veilgate.audit.index import SessionFilter, list_sessions
            from veilgate.state import open_state

            db = open_state(state)
            try:
                return await list_sessions(db, SessionFilter())
            finally:
                await db.close()

        import asyncio

        def indexed() -> bool:
            got = asyncio.run(rows())
            return len(got) == 2 and all(r.ended is not None for r in got)

        wait_until(indexed, "both sessions indexed once the store is back", timeout=30)
        got = asyncio.run(rows())
        assert sorted(r.refused for r in got) == [0, 1]
    finally:
        with contextlib.suppress(Exception):
            pg_cluster.execute(f"ALTER ROLE {role} LOGIN")
        os.environ.pop(env, None)
