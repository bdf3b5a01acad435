"""Reload and logs (issue 10 item 7), attacked on a real ``veilgate serve`` process.

Promises: a policy file takes effect only when complete and valid (not while it is being written,
not when cut short, not when it silently takes masking away); the log says what each tier gained
or lost; a token typed into the user name field never reaches a log line.  Each test looks for
the forbidden effect where a user would: in results through the gateway and in the log.
"""

# ruff: noqa: S608 (SQL built from names the tests generate)
from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.test_serve import ServeProcess, subprocess_env

from veilgate.identity.static import token_digest

pytestmark = pytest.mark.pg

SSN = "123-45-6789"
POLICY = """\
version: 1
tiers:
  - name: agent
    match: {roles: [agent]}
    rules:
      - id: read
        action: allow
        message: "reads"
        classes: [read]
      - id: no-secret-table
        action: deny
        message: "the vault table is off limits"
        tables: ["public.vault"]
masking:
  apply_to: [agent]
  columns:
    - {column: "public.people.ssn", op: redact}
    - {column: "public.people.id", op: keep}
end: true
"""


@dataclass
class Served:
    directory: Path
    policy: Path
    config: Path
    token: str
    env: dict[str, str]
    ca_file: Path

    def dsn(self, port: int, **kw: str) -> str:
        params = {
            "host": "127.0.0.1",
            "port": str(port),
            "dbname": "app",
            "user": "agent",
            "password": self.token,
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca_file),
            "connect_timeout": "10",
            **kw,
        }
        return " ".join(f"{k}='{v}'" for k, v in params.items())


@pytest.fixture(scope="module")
def served_setup(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    from veilgate.certs import make_ca, make_cert

    role, db = "veilgate_reload", "reload_app"
    password = secrets.token_urlsafe(24)
    pg_cluster.create_role(role, password)
    if not pg_cluster.execute(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():
        pg_cluster.create_database(db, owner=role)
    pg_cluster.execute(
        "CREATE TABLE IF NOT EXISTS people (id int, ssn text);"
        "CREATE TABLE IF NOT EXISTS vault (secret text);"
        f"ALTER TABLE people OWNER TO {role}; ALTER TABLE vault OWNER TO {role};"
        f"INSERT INTO people SELECT 1, '{SSN}' WHERE NOT EXISTS (SELECT FROM people);"
        "INSERT INTO vault SELECT 'gold' WHERE NOT EXISTS (SELECT FROM vault);",
        db,
    )
    d = tmp_path_factory.mktemp("reload")
    ca = make_ca(d, "ca")
    make_cert(d, "gateway", ["127.0.0.1", "localhost"], ca)
    token = "vg-reload-" + secrets.token_urlsafe(24)
    config = d / "veilgate.yaml"
    config.write_text(
        f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{cert_file: gateway.crt, key_file: gateway.key}}
admin: {{enabled: false}}
auth:
  static_tokens:
    - {{name: reload, sha256: {token_digest(token)}, roles: [agent]}}
targets:
  app:
    host: {pg_cluster.host}
    port: {pg_cluster.port}
    dbname: {db}
    user: {role}
    password_env: VEILGATE_RELOAD_PG_PASSWORD
    tls: {{mode: verify-full, ca_file: {pg_cluster.ca_file}}}
policy: {{file: policy.yaml}}
logging: {{level: info, format: json}}
"""
    )
    return Served(
        d,
        d / "policy.yaml",
        config,
        token,
        subprocess_env(VEILGATE_RELOAD_PG_PASSWORD=password),
        ca.cert_file,
    )


@pytest.fixture
def served(served_setup: Served) -> Iterator[tuple[Served, ServeProcess, int]]:
    served_setup.policy.write_text(POLICY)
    for f in served_setup.directory.glob("policy.yaml.confirm"):
        f.unlink()
    p = ServeProcess(served_setup.config, served_setup.env)
    try:
        port = int(p.wait_event("ready")["port"])
        yield served_setup, p, port
    finally:
        p.stop()


def _ssn(s: Served, port: int) -> str:
    with psycopg.connect(s.dsn(port), autocommit=True) as conn:
        row = conn.execute("select ssn from people where id = 1").fetchone()
    assert row is not None
    return str(row[0])


def _vault_denied(s: Served, port: int) -> bool:
    with psycopg.connect(s.dsn(port), autocommit=True) as conn:
        try:
            conn.execute("select secret from vault")
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def _count(p: ServeProcess, name: str) -> int:
    return sum(1 for e in p.events() if e.get("event") == name)


def _wait_count(p: ServeProcess, name: str, n: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in p.events() if e.get("event") == name]
        if len(events) >= n:
            return events[n - 1]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} {name!r} events:\n" + "\n".join(p.lines[-40:]))


@pytest.mark.parametrize("keep", [0.95, 0.8, 0.6])
def test_truncated_policy_never_takes_effect(
    served: tuple[Served, ServeProcess, int], keep: float
) -> None:
    """Promise: a policy file cut short (here: still valid YAML, with its last rules or its
    masking gone) is refused on SIGHUP and by the watcher; enforcement stays as it was."""
    s, p, port = served
    assert _vault_denied(s, port) and _ssn(s, port) != SSN
    cut = POLICY[: int(len(POLICY) * keep)]
    cut = cut[: cut.rfind("\n") + 1]  # cut at a line end: the YAML still parses
    s.policy.write_text(cut)
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while _count(p, "policy_reload_refused") + _count(p, "policy_reload_failed") == 0:
        assert time.monotonic() < deadline, p.lines[-20:]
        time.sleep(0.05)
    time.sleep(2.5)  # the watcher sees it too and refuses it again
    assert _count(p, "policy_reloaded") == 0
    assert _vault_denied(s, port)
    assert _ssn(s, port) != SSN


def test_policy_written_slowly_is_applied_once_complete(
    served: tuple[Served, ServeProcess, int],
) -> None:
    """Promise: a file still being written is not loaded in pieces: the watcher applies it once
    it has stopped changing, and only then."""
    s, p, port = served
    new = POLICY.replace('tables: ["public.vault"]', 'tables: ["public.vault", "public.other"]')
    with s.policy.open("w") as fh:
        for i in range(0, len(new), 40):
            fh.write(new[i : i + 40])
            fh.flush()
            time.sleep(0.05)
    ev = _wait_count(p, "policy_reloaded", 1)
    assert ev["changes"] == {"agent": {"gained": ["changed deny rule no-secret-table"]}}
    assert _count(p, "policy_reload_failed") == 0, p.lines[-20:]
    assert _vault_denied(s, port) and _ssn(s, port) != SSN


def test_reload_that_unmasks_is_refused_until_confirmed(
    served: tuple[Served, ServeProcess, int],
) -> None:
    """Promise: a reload never silently takes masking away; the log names the tier and what it
    loses; after `veilgate policy confirm` for exactly that content it applies, and the log says
    what the tier lost."""
    s, p, port = served
    unmasked = POLICY.replace('    - {column: "public.people.ssn", op: redact}\n', "")
    s.policy.write_text(unmasked)
    p.proc.send_signal(signal.SIGHUP)
    refused = _wait_count(p, "policy_reload_refused", 1)
    assert refused["reason"] == "masking removed"
    assert refused["losses"] == {"agent": ["masking of column public.people.ssn"]}
    assert _ssn(s, port) != SSN
    res = subprocess.run(
        [sys.executable, "-m", "veilgate", "policy", "confirm", str(s.policy)],
        env=s.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    p.proc.send_signal(signal.SIGHUP)
    ev = _wait_count(p, "policy_reloaded", 1)
    assert ev["changes"] == {"agent": {"lost": ["masking of column public.people.ssn"]}}
    assert _ssn(s, port) == SSN  # what the operator confirmed


@pytest.mark.parametrize("kind", ["jwt", "static"])
def test_token_in_the_user_name_is_never_logged(
    served: tuple[Served, ServeProcess, int], kind: str
) -> None:
    """Promise: a token typed into the user name field (JWT-shaped or a long random static
    token) appears in no log line, whether the login succeeds or fails."""
    s, p, port = served
    jwt = (
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0."
        "eyJzdWIiOiJhZ2VudCIsImF1ZCI6InZlaWxnYXRlIn0." + secrets.token_urlsafe(40)
    )
    secret = jwt if kind == "jwt" else s.token
    # wrong password with the token as user name: auth_failed is logged
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(s.dsn(port, user=secret, password="wrong-" + secrets.token_hex(4)))
    # the right token as password and as user name: the session is logged
    with psycopg.connect(s.dsn(port, user=secret, application_name=secret), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
    _wait_count(p, "auth_failed", 1)
    deadline = time.monotonic() + 10
    while _count(p, "session_ended") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = "\n".join(p.lines)
    assert secret not in log
    assert secret[:40] not in log
    users = [e["user"] for e in p.events() if "user" in e and e.get("event") == "auth_failed"]
    assert users and all(u.startswith("<redacted") for u in users), users
