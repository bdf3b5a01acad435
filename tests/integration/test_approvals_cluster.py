"""Two ``veilgate serve`` processes sharing a PostgreSQL state store (the suite's cluster): a
statement waits on one, an approver decides through the other's HTTP API, LISTEN/NOTIFY wakes the
waiting client on the first.  Fail-fast grants made on one are honoured by the other."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.integration import state_fixtures
from tests.integration.approvals_support import (
    count,
    make_table,
    policy_text,
    request_id,
    wait_for,
)
from tests.integration.conftest import PASSWORD_ENV
from tests.integration.state_fixtures import STATE_DSN_ENV, StatePg
from tests.integration.test_oidc_e2e import IdPThread
from tests.integration.test_serve import ServeProcess, subprocess_env

from veilgate.identity.devidp import DevIdP

pytestmark = pytest.mark.pg
state_pg = state_fixtures.state_pg


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    with IdPThread() as served:
        yield served


class Node:
    def __init__(self, proc: ServeProcess, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.port = int(ready["port"])
        self.admin_port = int(ready["admin_port"])

    def post(self, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=15)
        data = json.dumps(body).encode()
        conn.request(
            "POST",
            path,
            body=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        out = json.loads(resp.read())
        conn.close()
        return resp.status, out


def _start_nodes(
    tmp_path: Path,
    pg_cluster: Any,
    gateway_certs: Any,
    idp: DevIdP,
    policy: str,
    *,
    decision_log: bool = True,
) -> tuple[list[ServeProcess], list[Node], str, str]:
    _, cert = gateway_certs
    ca, _ = gateway_certs
    token = "vg-node-agent-" + secrets.token_urlsafe(16)
    (tmp_path / "policy.yaml").write_text(policy)
    oidc = {
        "providers": [idp.provider_mapping()],
        "tiers": [{"tier": "approvers", "login_role": "vg_no_login", "any_roles": ["Db.Approver"]}],
        "rate_limit": {"enabled": False},
    }
    procs: list[ServeProcess] = []
    out: list[Node] = []
    try:
        for i in range(2):
            policy_section: dict[str, Any] = {"file": "policy.yaml"}
            if decision_log:
                policy_section["audit_log"] = f"audit-{i}.jsonl"
            cfg = {
                "listen": {"host": "127.0.0.1", "port": 0},
                "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
                "admin": {"host": "127.0.0.1", "port": 0},
                "auth": {
                    "static_tokens": [
                        {
                            "name": "agent",
                            "sha256": hashlib.sha256(token.encode()).hexdigest(),
                            "roles": ["agent"],
                        }
                    ],
                    "oidc": oidc,
                },
                "targets": {
                    "app": {
                        "host": str(pg_cluster.host),
                        "port": int(pg_cluster.port),
                        "dbname": "app",
                        "user": "veilgate_app",
                        "password_env": PASSWORD_ENV,
                        "tls": {"mode": "verify-full", "ca_file": str(pg_cluster.ca_file)},
                    }
                },
                "policy": policy_section,
                "state": {"backend": "postgres", "dsn_env": STATE_DSN_ENV},
                "approvals": {"sweep_interval_s": 1},
                "logging": {"level": "info", "format": "json"},
            }
            config_file = tmp_path / f"node-{i}.yaml"
            config_file.write_text(yaml.safe_dump(cfg))
            env = subprocess_env(
                **{
                    PASSWORD_ENV: os.environ[PASSWORD_ENV],
                    STATE_DSN_ENV: os.environ[STATE_DSN_ENV],
                }
            )
            proc = ServeProcess(config_file, env)
            procs.append(proc)
            out.append(Node(proc, proc.wait_event("ready")))
            proc.wait_event("approvals_started")
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs, out, token, str(ca.cert_file)


@pytest.fixture
def nodes(
    tmp_path: Path,
    pg_cluster: Any,
    gateway_certs: Any,
    gateway_base_config: Any,  # sets the upstream password variable
    state_pg: StatePg,
    idp: DevIdP,
) -> Iterator[tuple[list[Node], str, str]]:
    procs, out, token, ca = _start_nodes(
        tmp_path, pg_cluster, gateway_certs, idp, policy_text(mode="wait", wait_timeout=60)
    )
    try:
        yield out, token, ca
    finally:
        for p in procs:
            p.stop()


def _dsn(node: Node, token: str, ca: str) -> str:
    return (
        f"host=127.0.0.1 port={node.port} dbname=app user=agent password={token} "
        f"sslmode=verify-full sslrootcert={ca} connect_timeout=10"
    )


def test_decision_through_one_node_wakes_the_client_waiting_on_the_other(
    nodes: tuple[list[Node], str, str], pg_cluster: Any, idp: DevIdP, tmp_path: Path
) -> None:
    (a, b), token, ca = nodes
    table = make_table(pg_cluster)
    conn = psycopg.connect(_dsn(a, token, ca), autocommit=True)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    done = threading.Event()
    result: dict[str, Any] = {}

    def held() -> None:
        try:
            conn.execute(f"DELETE FROM {table} WHERE id = 1")
        except psycopg.Error as e:
            result["error"] = e
        finally:
            result["at"] = time.monotonic()
            done.set()

    t = threading.Thread(target=held)
    t.start()
    try:
        wait_for(lambda: bool(notices), what="the approval notice from node A")
        rid = request_id(notices[0])
        assert not done.is_set()
        approver = idp.mint(roles=["Db.Approver"], client_id="approver-app")
        decided = time.monotonic()
        status, body = b.post(f"/v1/approvals/{rid}/approve", approver, {"comment": "via B"})
        assert status == 200 and body["status"] == "approved", body
        assert done.wait(15), "the client on node A was not woken"
        assert "error" not in result, result.get("error")
        woke = result["at"] - decided
        assert woke < 5, woke  # woken by NOTIFY, not by a timeout
        assert count(pg_cluster, table) == 2
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        t.join(5)
        conn.close()
    # node A audited the request and the grant use; the vote was claimed by exactly one node
    audits = [
        json.loads(line)
        for i in range(2)
        if (tmp_path / f"audit-{i}.jsonl").exists()
        for line in (tmp_path / f"audit-{i}.jsonl").read_text().splitlines()
    ]
    events = [e["event"] for e in audits if e.get("kind") == "approval"]
    assert events.count("request") == 1 and events.count("grant_used") == 1
    assert events.count("vote") <= 1


def test_fail_fast_grant_made_on_one_node_is_used_on_the_other(
    nodes: tuple[list[Node], str, str], pg_cluster: Any, idp: DevIdP, tmp_path: Path
) -> None:
    (a, b), token, ca = nodes
    # this policy waits; cancel the wait at once via a tiny statement_timeout on the client side
    table = make_table(pg_cluster)
    with psycopg.connect(_dsn(a, token, ca), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        threading.Timer(1.0, conn.cancel_safe).start()
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = 2")
        assert info.value.sqlstate == "57014"
        rid = request_id(notices[0])
    approver = idp.mint(roles=["Db.Approver"], client_id="approver-app")
    status, body = a.post(f"/v1/approvals/{rid}/approve", approver, {})
    assert status == 200 and body["status"] == "approved"
    # the same principal on node B runs it at once: the grant is in the shared store
    with psycopg.connect(_dsn(b, token, ca), autocommit=True) as conn:
        assert conn.execute(f"DELETE FROM {table} WHERE id = 2").rowcount == 1
        # and only once
        pg_cluster.execute(f"INSERT INTO {table} VALUES (2, 'again')", "app")
        threading.Timer(1.0, conn.cancel_safe).start()
        with pytest.raises(psycopg.Error):
            conn.execute(f"DELETE FROM {table} WHERE id = 2")
    assert count(pg_cluster, table) == 3


def test_racing_gateways_never_use_a_grant_more_than_allowed(state_pg: StatePg) -> None:
    import asyncio

    from veilgate.approvals.model import approver_key, principal_key, statement_spec
    from veilgate.approvals.store import ApprovalStore
    from veilgate.identity.base import Principal
    from veilgate.policy.approval_spec import ApprovalSpec, ApproverSpec
    from veilgate.state.postgres import PostgresDB

    agent = Principal("static", "racer-" + secrets.token_hex(3))

    async def go() -> None:
        stores = [ApprovalStore(PostgresDB(state_pg.dsn)) for _ in range(3)]
        try:
            spec = ApprovalSpec(approvers=ApproverSpec(users=frozenset({"a"})), grant_uses=5)
            req, _ = await stores[0].request(
                kind="statement",
                principal=agent,
                session_id="s",
                tier="t",
                rule_id="r",
                fingerprint="fp-race",
                sql="DELETE FROM t",
                params=None,
                reason=None,
                requested_tier=None,
                spec=statement_spec(spec),
                node="n",
            )
            await stores[1].vote(
                req.id,
                approver=approver_key("a"),
                approver_label="a",
                via="cli",
                vote="approve",
                comment="",
                check=lambda r: None,
            )
            key = principal_key(agent)
            got = await asyncio.gather(
                *(s.consume(key, "fp-race") for s in stores for _ in range(6))
            )
            assert sum(g is not None for g in got) == 5
            grant = await stores[2].grant_of(req.id)
            assert grant is not None and grant.uses == 5
        finally:
            for s in stores:
                await s.db.close()

    asyncio.run(go())


def test_cancel_request_sent_to_the_other_node_ends_the_wait(
    nodes: tuple[list[Node], str, str], pg_cluster: Any
) -> None:
    """A load balancer may send a CancelRequest to any gateway: node B does not hold the
    session, passes it on through the shared store, and node A ends the wait with 57014.  A
    CancelRequest with a wrong secret ends nothing."""
    import asyncio
    import socket
    import ssl

    import asyncpg
    from tests.integration import pgwire as pw

    (a, b), token, ca = nodes
    table = make_table(pg_cluster)

    def cancel_via(node: Node, pid: int, key: bytes) -> None:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
            s.sendall(pw.cancel_request(pid, key))
            s.recv(1)  # the gateway closes the connection once it has handled the request

    async def go() -> None:
        tls = ssl.create_default_context(cafile=ca)
        conn = await asyncpg.connect(
            host="127.0.0.1", port=a.port, user="agent", password=token, database="app", ssl=tls
        )
        notices: list[str] = []
        conn.add_log_listener(lambda _c, msg: notices.append(str(msg)))
        try:
            held = asyncio.ensure_future(conn.execute(f"DELETE FROM {table} WHERE id = 1"))
            for _ in range(500):
                if notices:
                    break
                await asyncio.sleep(0.02)
            assert notices, "no approval notice from node A"
            pid = conn._protocol.backend_pid  # type: ignore[attr-defined]
            secret = conn._protocol.backend_secret  # type: ignore[attr-defined]
            key = int(secret).to_bytes(4, "big", signed=True)
            wrong = bytes(x ^ 0xFF for x in key)
            await asyncio.to_thread(cancel_via, b, pid, wrong)
            done, _ = await asyncio.wait({held}, timeout=1.5)
            assert not done, "a wrong secret ended the wait"
            await asyncio.to_thread(cancel_via, b, pid, key)
            with pytest.raises(asyncpg.QueryCanceledError):
                await asyncio.wait_for(held, 15)
            assert await conn.fetchval("SELECT 1") == 1  # the session goes on
        finally:
            await conn.close()

    asyncio.run(go())
    assert count(pg_cluster, table) == 3  # nothing was deleted


def _native_verdicts(node: Node) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", node.admin_port, timeout=15)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith("veilgate_policy_native_verdicts_total "):
            return float(line.split()[1])
    raise AssertionError("no veilgate_policy_native_verdicts_total")


def test_revoke_on_one_node_stops_the_grant_cached_on_the_other(
    tmp_path: Path,
    pg_cluster: Any,
    gateway_certs: Any,
    gateway_base_config: Any,
    state_pg: StatePg,
    idp: DevIdP,
) -> None:
    """A standing grant (no use limit) answered natively on node A; an approver revokes it
    through node B's API: A's next run of it is refused (NOTIFY through the shared store)."""
    procs, (a, b), token, ca = _start_nodes(
        tmp_path,
        pg_cluster,
        gateway_certs,
        idp,
        policy_text(grant_uses=0),
        decision_log=False,  # with the decision log, grant uses are not answered natively
    )
    try:
        table = make_table(pg_cluster, rows=1)
        upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
        with psycopg.connect(_dsn(a, token, ca), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(upd, prepare=False)
            assert info.value.sqlstate == "42Z01"
            rid = request_id(str(info.value))
        approver = idp.mint(roles=["Db.Approver"], client_id="approver-app")
        status, body = b.post(f"/v1/approvals/{rid}/approve", approver, {})
        assert status == 200 and body["status"] == "approved"
        with psycopg.connect(_dsn(a, token, ca), autocommit=True) as conn:
            cur = conn.cursor()
            before = _native_verdicts(a)
            for _ in range(4):  # psycopg without parameters: simple Queries
                cur.execute(upd, prepare=False)
            assert _native_verdicts(a) - before >= 2  # answered natively on A
            status, body = b.post(f"/v1/approvals/{rid}/revoke", approver, {})
            assert status == 200 and body["revoked"] is True, body
            deadline = time.monotonic() + 15
            refused = None
            while refused is None and time.monotonic() < deadline:
                try:
                    cur.execute(upd, prepare=False)
                except psycopg.Error as e:
                    refused = e
                else:
                    time.sleep(0.01)  # A has not heard the notification yet
            assert refused is not None and refused.sqlstate == "42Z01", refused
        runs = pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app").count("+")
        assert runs >= 4
        # once refused, never again on either node
        for node in (a, b):
            with psycopg.connect(_dsn(node, token, ca), autocommit=True) as conn:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(upd, prepare=False)
                assert info.value.sqlstate == "42Z01"
        assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app").count("+") == runs
    finally:
        for p in procs:
            p.stop()
