"""Wait mode end to end: a NoticeResponse with the request id at once, the statement held while
the rest of the gateway goes on, then run on approval, 42501 on denial, 57014 on timeout and on
CancelRequest; inside a transaction block the outcome is the server's (COMMIT after a denial rolls
back)."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration.approvals_support import (
    JitGateway,
    count,
    jit_gateway,
    make_scratch,
    make_table,
    policy_text,
    psql,
    request_id,
    wait_for,
)
from tests.integration.conftest import GatewayHandle

from veilgate import metrics

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]


@pytest.fixture
def jit(gateway_factory: Factory, tmp_path: Path) -> JitGateway:
    return jit_gateway(gateway_factory, tmp_path, policy_text(mode="wait", wait_timeout=30))


@dataclass
class Notice:
    """What a notice said (psycopg's Diagnostic is only valid inside the handler)."""

    sqlstate: str | None
    message_primary: str | None
    message_hint: str | None

    @classmethod
    def of(cls, d: psycopg.errors.Diagnostic) -> Notice:
        return cls(d.sqlstate, d.message_primary, d.message_hint)


class Waiter:
    """A psycopg connection running one statement in a thread; notices collected."""

    def __init__(self, dsn: str, *statements: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.notices: list[Notice] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(Notice.of(d)))
        self.error: psycopg.Error | None = None
        self.done = threading.Event()
        self.elapsed = 0.0
        self._statements = statements
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            for sql in self._statements:
                self.conn.execute(sql)
        except psycopg.Error as e:
            self.error = e
        finally:
            self.elapsed = time.monotonic() - t0
            self.done.set()

    def request_id(self) -> str:
        wait_for(lambda: bool(self.notices) or self.done.is_set(), what="the approval notice")
        assert self.notices, f"no notice; error: {self.error}"
        return request_id(self.notices[0].message_primary or "")

    def finish(self, timeout: float = 30) -> None:
        assert self.done.wait(timeout), "the statement is still held"

    def close(self) -> None:
        self.conn.close()


def test_notice_at_once_then_approval_runs_it(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    w = Waiter(jit.dsn(), f"DELETE FROM {table} WHERE id = 1")
    try:
        rid = w.request_id()
        n = w.notices[0]
        assert n.sqlstate == "01000" and "waiting up to 30s" in (n.message_primary or "")
        assert "veilgate approvals approve" in (n.message_hint or "")
        assert not w.done.is_set() and count(pg_cluster, table) == 3
        assert rid in jit.service().waiting()
        # the rest of the gateway goes on meanwhile, the same principal included
        out = psql(jit.target(), f"SELECT count(*) FROM {table}")
        assert out.stdout.strip() == "3", out.stderr
        jit.cli("approve", rid, "--as", "alice", "-m", "go")
        w.finish()
        assert w.error is None, w.error
        assert count(pg_cluster, table) == 2
        # the session goes on
        assert w.conn.execute("SELECT 42").fetchone() == (42,)
    finally:
        w.close()
    assert metrics.approval_waits_total.get(outcome="approved") >= 1


def test_denial_is_42501_with_the_approver(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    w = Waiter(jit.dsn(), f"DELETE FROM {table}")
    try:
        rid = w.request_id()
        jit.cli("deny", rid, "--as", "bob", "-m", "use a WHERE clause")
        w.finish()
        assert w.error is not None and w.error.sqlstate == "42501", w.error
        assert "was denied" in str(w.error)
        assert "bob (use a WHERE clause)" in (w.error.diag.message_detail or "")
        assert w.conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        w.close()
    assert count(pg_cluster, table) == 3


def test_timeout_is_57014_and_the_request_stays_open(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(mode="wait", wait_timeout=1.5))
    table = make_table(pg_cluster)
    w = Waiter(jit.dsn(), f"DELETE FROM {table} WHERE id = 2")
    try:
        rid = w.request_id()
        w.finish()
        assert w.error is not None and w.error.sqlstate == "57014", w.error
        assert rid in str(w.error) and w.elapsed >= 1.4
    finally:
        w.close()
    assert count(pg_cluster, table) == 3
    assert "pending" in jit.cli("show", rid).stdout
    wait_for(lambda: jit.approval_events("wait_timeout"), what="wait_timeout event")
    # approved later: the retry runs at once (the grant is there)
    jit.cli("approve", rid, "--as", "alice")
    assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 2").returncode == 0
    assert count(pg_cluster, table) == 2


def test_cancel_request_ends_the_wait_with_57014(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    w = Waiter(jit.dsn(), f"DELETE FROM {table} WHERE id = 3")
    try:
        w.request_id()
        before = metrics.cancel_requests_total.get(outcome="approval_wait")
        w.conn.cancel_safe()
        w.finish(10)
        assert w.error is not None and w.error.sqlstate == "57014", w.error
        assert "canceling statement due to user request" in str(w.error)
        assert metrics.cancel_requests_total.get(outcome="approval_wait") == before + 1
        assert w.conn.execute("SELECT 5").fetchone() == (5,)
    finally:
        w.close()
    assert count(pg_cluster, table) == 3


def test_asyncpg_timeout_cancels_the_wait(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)

    async def go() -> None:
        conn = await asyncpg.connect(**jit.target().asyncpg_kwargs())
        notices: list[Any] = []
        conn.add_log_listener(lambda _c, msg: notices.append(msg))
        try:
            with pytest.raises(asyncio.TimeoutError):
                # asyncpg sends a CancelRequest when its timeout passes
                await conn.execute(f"DELETE FROM {table} WHERE id = $1", 1, timeout=1.0)
            assert await conn.fetchval("SELECT 7") == 7
            assert notices and "waiting up to" in notices[0].message
        finally:
            await conn.close()

    asyncio.run(go())
    assert count(pg_cluster, table) == 3


def test_waiting_inside_a_transaction(jit: JitGateway, pg_cluster: Any) -> None:
    table, scratch = make_table(pg_cluster), make_scratch(pg_cluster)
    # denied: the transaction fails, COMMIT rolls back what came before
    with psycopg.connect(jit.dsn(), autocommit=True) as conn:
        notices: list[Notice] = []
        conn.add_notice_handler(lambda d: notices.append(Notice.of(d)))
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {scratch} VALUES (1)")
        result: dict[str, Any] = {}

        def held() -> None:
            try:
                conn.execute(f"DELETE FROM {table} WHERE id = 1")
            except psycopg.Error as e:
                result["error"] = e

        t = threading.Thread(target=held)
        t.start()
        wait_for(lambda: bool(notices), what="notice")
        jit.cli("deny", request_id(notices[0].message_primary or ""), "--as", "alice")
        t.join(30)
        assert result["error"].sqlstate == "42501"
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
    assert count(pg_cluster, scratch) == 0 and count(pg_cluster, table) == 3

    # approved: it runs inside the transaction and COMMIT commits both
    with psycopg.connect(jit.dsn(), autocommit=True) as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(Notice.of(d)))
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {scratch} VALUES (2)")
        t = threading.Thread(target=lambda: conn.execute(f"DELETE FROM {table} WHERE id = 1"))
        t.start()
        wait_for(lambda: bool(notices), what="notice")
        jit.cli("approve", request_id(notices[0].message_primary or ""), "--as", "alice")
        t.join(30)
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
    assert count(pg_cluster, scratch) == 1 and count(pg_cluster, table) == 2


def test_psql_waits_and_runs(jit: JitGateway, pg_cluster: Any) -> None:
    table = make_table(pg_cluster)
    out: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: out.setdefault("r", psql(jit.target(), f"DELETE FROM {table} WHERE id = 3"))
    )
    t.start()
    wait_for(lambda: bool(jit.service().waiting()), what="a waiting statement")
    rid = jit.service().waiting()[0]
    jit.cli("approve", rid, "--as", "carol")
    t.join(30)
    res = out["r"]
    assert res.returncode == 0, res.stderr
    assert f"request {rid}" in res.stderr  # psql printed the notice
    assert count(pg_cluster, table) == 2
