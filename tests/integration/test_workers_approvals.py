"""Just-in-time approvals under ``serve --workers 2`` with the default SQLite state store: held
statements wait in sessions of both workers, an approver decides each through the supervisor's
admin listener (which hands the approvals API to one worker), and every waiting client is woken,
those on the other worker by the store's cross-process wake-up."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.integration.approvals_support import count, make_table, policy_text, request_id
from tests.integration.conftest import PASSWORD_ENV
from tests.integration.test_oidc_e2e import IdPThread
from tests.integration.test_serve import subprocess_env
from tests.integration.test_workers import WorkersProcess, samples, scrape

from veilgate.identity.devidp import DevIdP

pytestmark = pytest.mark.pg

SESSIONS = 8
"""Held statements: both workers hold some with probability 1 - 2**-7 (checked, not assumed)."""


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    with IdPThread() as served:
        yield served


def test_approvals_through_the_supervisor_wake_sessions_on_every_worker(
    tmp_path: Path,
    pg_cluster: Any,
    gateway_certs: Any,
    gateway_base_config: Any,  # sets the upstream password variable
    idp: DevIdP,
) -> None:
    ca, cert = gateway_certs
    token = "vg-workers-agent-" + secrets.token_urlsafe(16)
    (tmp_path / "policy.yaml").write_text(policy_text(mode="wait", wait_timeout=60))
    oidc = {
        "providers": [idp.provider_mapping()],
        "tiers": [{"tier": "approvers", "login_role": "vg_no_login", "any_roles": ["Db.Approver"]}],
        "rate_limit": {"enabled": False},
    }
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "server": {"workers": 2},
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
        "policy": {"file": "policy.yaml"},
        "state": {"path": "state.db"},
        "approvals": {"sweep_interval_s": 1},
        "logging": {"level": "info", "format": "json"},
    }
    config_file = tmp_path / "veilgate.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    env = subprocess_env(**{PASSWORD_ENV: os.environ[PASSWORD_ENV]})
    p = WorkersProcess(config_file, env)
    conns: list[psycopg.Connection[Any]] = []
    threads: list[threading.Thread] = []
    try:
        ready = p.wait_event("ready", timeout=90)
        port, admin = int(ready["port"]), int(ready["admin_port"])
        dsn = (
            f"host=127.0.0.1 port={port} dbname=app user=agent password={token} "
            f"sslmode=verify-full sslrootcert={ca.cert_file} connect_timeout=10"
        )
        tables = [make_table(pg_cluster) for _ in range(SESSIONS)]
        notices: list[list[str]] = [[] for _ in range(SESSIONS)]
        results: list[dict[str, Any]] = [{} for _ in range(SESSIONS)]
        done = [threading.Event() for _ in range(SESSIONS)]
        for i in range(SESSIONS):
            conn = psycopg.connect(dsn, autocommit=True)
            conn.add_notice_handler(lambda d, i=i: notices[i].append(d.message_primary or ""))
            conns.append(conn)

            def held(i: int = i, conn: Any = conn) -> None:
                try:
                    conn.execute(f"DELETE FROM {tables[i]} WHERE id = 1")  # noqa: S608
                except psycopg.Error as e:
                    results[i]["error"] = e
                finally:
                    done[i].set()

            t = threading.Thread(target=held, daemon=True)
            t.start()
            threads.append(t)
        deadline = time.monotonic() + 30
        while not all(notices) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(notices), "every held statement gets its approval notice"
        active = samples(scrape(admin), "veilgate_client_connections_active")
        assert active.get("0", 0) > 0 and active.get("1", 0) > 0, active
        approver = idp.mint(roles=["Db.Approver"], client_id="approver-app")
        for i in range(SESSIONS):
            rid = request_id(notices[i][0])
            assert not done[i].is_set()
            req = urllib.request.Request(
                f"http://127.0.0.1:{admin}/v1/approvals/{rid}/approve",
                method="POST",
                data=json.dumps({"comment": f"session {i}"}).encode(),
                headers={
                    "Authorization": f"Bearer {approver}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                body = json.loads(r.read())
            assert body["status"] == "approved", body
        for i in range(SESSIONS):
            assert done[i].wait(15), f"session {i} was not woken"
            assert "error" not in results[i], results[i]
            assert count(pg_cluster, tables[i]) == 2
            assert conns[i].execute("SELECT 1").fetchone() == (1,)
    finally:
        for t in threads:
            t.join(5)
        for c in conns:
            c.close()
        p.stop()
