"""Approvals in operation: a state store that is down (fail closed with 42Z02, everything else
flows, recovery), outgoing webhooks (Slack-shaped, HMAC-signed, retried), session elevation
(SET veilgate.request_tier or the CLI; judged by the elevated tier until it expires), metrics."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration import state_fixtures
from tests.integration.approvals_support import (
    count,
    jit_gateway,
    make_table,
    policy_text,
    psql,
    request_id,
    run_cli,
    wait_for,
)
from tests.integration.conftest import GatewayHandle
from tests.integration.state_fixtures import StatePg

from veilgate import metrics
from veilgate.config_model import ApprovalsConfig, StateBackend, StateConfig, WebhookConfig

pytestmark = pytest.mark.pg
state_pg = state_fixtures.state_pg
Factory = Callable[..., GatewayHandle]


# --- a store that is down -------------------------------------------------------------------------


def test_store_down_fails_closed_and_recovers(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any, state_pg: StatePg
) -> None:
    role = "vg_state_" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    pg_cluster.create_role(role, password)
    pg_cluster.execute(f"GRANT ALL ON DATABASE {state_pg.dbname} TO {role}")
    pg_cluster.execute(f"GRANT ALL ON SCHEMA public TO {role}", state_pg.dbname)
    env = "VEILGATE_TEST_STATE_DOWN_DSN"
    os.environ[env] = pg_cluster.dsn(user=role, password=password, dbname=state_pg.dbname)
    pg_cluster.execute(f"ALTER ROLE {role} NOLOGIN")  # the store is down from the start
    state = StateConfig(backend=StateBackend.POSTGRES, dsn_env=env, timeout_s=2.0)
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(), state=state)
    table = make_table(pg_cluster)
    res = psql(jit.target(), f"DELETE FROM {table} WHERE id = 1", f"SELECT count(*) FROM {table}")
    assert "42Z02" in res.stderr and "approval store is unavailable" in res.stderr, res.stderr
    assert res.stdout.strip() == "3"  # allowed traffic flows, in the same session
    assert count(pg_cluster, table) == 3
    assert metrics.approval_checks_total.get(result="unavailable") >= 1
    # inside a transaction the refusal fails it like any server error
    with psycopg.connect(jit.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = 1")
        assert info.value.sqlstate == "42Z02"
        assert conn.execute("ROLLBACK").statusmessage == "ROLLBACK"
    # the store comes back: approvals work again without a restart
    pg_cluster.execute(f"ALTER ROLE {role} LOGIN")
    res = psql(jit.target(), f"DELETE FROM {table} WHERE id = 1")
    assert "42Z01" in res.stderr, res.stderr
    rid = request_id(res.stderr)
    # ... and goes away while a request waits in fail-fast: the vote cannot reach it either
    pg_cluster.execute(f"ALTER ROLE {role} NOLOGIN")
    state_pg.terminate_backends()
    cli_env = {**os.environ}
    out = run_cli(
        "approve",
        rid,
        "--as",
        "alice",
        "--config",
        _cli_config(tmp_path, env),
        check=False,
        env=cli_env,
    )
    assert out.returncode == 1 and "state store unavailable" in out.stderr
    assert psql(jit.target(), "SELECT 1").stdout.strip() == "1"
    pg_cluster.execute(f"ALTER ROLE {role} LOGIN")


def _cli_config(tmp_path: Path, dsn_env: str) -> str:
    digest = hashlib.sha256(b"unused").hexdigest()
    f = tmp_path / "cli.yaml"
    f.write_text(
        f"""\
tls: {{allow_plaintext_loopback: true}}
auth:
  static_tokens: [{{name: t, sha256: {digest}}}]
targets:
  app: {{host: 127.0.0.1, tls: {{mode: disable}}}}
policy: {{file: policy.yaml}}
state: {{backend: postgres, dsn_env: {dsn_env}}}
"""
    )
    return str(f)


# --- webhooks ---------------------------------------------------------------------------------


class Hook:
    """A local webhook receiver: the first ``fail`` deliveries get 500."""

    def __init__(self, fail: int) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if hook.fail > 0 else 200
                hook.fail -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-path"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook(fail=1)
    try:
        yield h
    finally:
        h.close()


def test_webhooks_signed_slack_shaped_and_retried(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any, hook: Hook
) -> None:
    secret = secrets.token_hex(16)
    os.environ["VEILGATE_TEST_HOOK_SECRET"] = secret
    approvals = ApprovalsConfig(
        sweep_interval_s=1.0,
        webhooks=(
            WebhookConfig(
                url=hook.url,
                secret_env="VEILGATE_TEST_HOOK_SECRET",
                allow_insecure_http=True,
                max_attempts=3,
            ),
        ),
        how_to_approve="see https://approvals.example/",
    )
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(), approvals=approvals)
    table = make_table(pg_cluster)
    res = psql(jit.target(), f"DELETE FROM {table} WHERE id = 3")
    assert "42Z01" in res.stderr  # the statement's refusal never waited for the webhook
    rid = request_id(res.stderr)
    jit.cli("approve", rid, "--as", "bob", "-m", "fine")
    # the first delivery failed (500) and was retried after a back-off
    wait_for(lambda: len(hook.received) >= 3, timeout=20, what="webhook deliveries")
    bodies = []
    for headers, body in hook.received:
        ts = headers["x-veilgate-timestamp"]
        mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-veilgate-signature"], f"sha256={mac}")
        assert headers["x-veilgate-request"] == rid
        bodies.append(json.loads(body))
    first, retried, decision = bodies[0], bodies[1], bodies[2]
    assert first == retried  # the same body again
    assert first["veilgate"]["event"] == "request" and rid in first["text"]
    assert any(f"DELETE FROM {table} WHERE id = 3" in b["text"]["text"] for b in first["blocks"])
    assert "approvals.example" in json.dumps(first["blocks"])
    assert f"veilgate approvals approve {rid}" in json.dumps(first["blocks"])
    assert decision["veilgate"]["event"] == "decision" and "approved" in decision["text"]
    assert "bob" in decision["text"] and "fine" in decision["text"]
    assert "params" not in first["veilgate"]["request"]


# --- session elevation ------------------------------------------------------------------------


def test_elevation_by_set_is_judged_by_the_tier_until_it_expires(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(elevation_ttl=3))
    table = make_table(pg_cluster)
    with psycopg.connect(jit.dsn(), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        # a tier nobody may request
        conn.execute("SET veilgate.request_tier = 'agents'")
        conn.execute("SELECT 1")
        assert any("cannot be requested" in n for n in notices), notices
        conn.execute("SET veilgate.request_tier = 'readwrite'")
        conn.execute("SELECT 1")
        rid = request_id(next(n for n in notices if "elevation" in n))
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = 1")
        assert info.value.sqlstate == "42Z01"  # not yet approved
        shown = jit.cli("show", rid).stdout
        assert "elevation" in shown and "readwrite" in shown
        jit.cli("approve", rid, "--as", "alice")
        wait_for(lambda: jit.approval_events("elevation_applied"), what="elevation applied")
        assert conn.execute(f"DELETE FROM {table} WHERE id = 1").rowcount == 1
        # other sessions of the principal are elevated too, another principal is not
        assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 2").returncode == 0
        assert "42Z01" in psql(jit.target("agent2"), f"DELETE FROM {table} WHERE id = 3").stderr
        decisions = [e for e in jit.audit() if "action" in e and "DELETE" in (e.get("sql") or "")]
        assert decisions[-1]["tier"] == "agents" and decisions[-2]["tier"] == "readwrite"
        # it ends at its expiry, in the same session
        wait_for(lambda: jit.approval_events("elevation_ended"), timeout=10, what="expiry")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = 3")
        assert info.value.sqlstate == "42Z01"
    assert count(pg_cluster, table) == 1


def test_elevation_requested_from_the_cli(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(elevation_ttl=60))
    table = make_table(pg_cluster)
    cfg = tmp_path / "cli.yaml"
    digest = hashlib.sha256(b"unused").hexdigest()
    cfg.write_text(
        f"""\
tls: {{allow_plaintext_loopback: true}}
auth:
  static_tokens: [{{name: t, sha256: {digest}}}]
targets:
  app: {{host: 127.0.0.1, tls: {{mode: disable}}}}
policy: {{file: {jit.policy_file}}}
state: {{path: {jit.state.path}}}
"""
    )
    out = run_cli(
        "request-tier",
        "--config",
        str(cfg),
        "--principal",
        "static|-|agent",
        "--tier",
        "readwrite",
        "--reason",
        "incident 7",
    )
    rid = request_id(out.stdout)
    bad = run_cli(
        "request-tier",
        "--config",
        str(cfg),
        "--principal",
        "static|-|agent",
        "--tier",
        "agents",
        check=False,
    )
    assert bad.returncode == 1 and "cannot be requested" in bad.stderr
    with psycopg.connect(jit.dsn(), autocommit=True) as conn:
        run_cli("approve", rid, "--as", "bob", "--config", str(cfg))
        wait_for(lambda: jit.approval_events("elevation_applied"), what="elevation applied")
        assert conn.execute(f"DELETE FROM {table} WHERE id = 2").rowcount == 1
    assert count(pg_cluster, table) == 2
