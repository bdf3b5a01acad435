"""Shared pieces of the approvals end-to-end tests: a policy with approve rules, gateways with
several static principals and their own state store, the CLI, request ids from errors."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle

from veilgate.config_model import (
    ApprovalsConfig,
    GatewayConfig,
    PolicyConfig,
    StateConfig,
    StaticToken,
)
from veilgate.identity.static import StaticTokenAuthenticator, token_digest

APPROVE = """\
        approval:
          approvers: {users: [alice, bob, carol], roles: [Db.Approver]}
          grant_ttl_s: GRANT_TTL
          grant_uses: GRANT_USES
          mode: MODE
          wait_timeout_s: WAIT_TIMEOUT
          match_constants: CONSTANTS
          require_reason: REASON
          required: REQUIRED
          request_ttl_s: REQUEST_TTL
"""

POLICY_TEMPLATE = """\
version: 1
tiers:
  - name: agents
    match: {roles: [agent]}
    rules:
      - id: agent-read
        action: allow
        message: "reads, transactions, session settings"
        classes: [read, transaction, session, prepare]
      - id: agent-scratch-write
        action: allow
        message: "writes to scratch tables"
        classes: [write]
        tables: ["public.scratch_*"]
      - id: agent-jit-write
        action: approve
        message: "writes to the jit tables need a second pair of eyes"
        classes: [write]
        tables: ["public.jit_*"]
APPROVE  - name: readwrite
    match: {roles: [rw]}
    elevation:
      approvers: {users: [alice, bob], roles: [Db.Approver]}
      max_ttl_s: ELEVATION_TTL
      from_tiers: [agents]
    rules:
      - id: rw-all
        action: allow
        message: "reads and writes"
        classes: [read, write, transaction, session, prepare]
"""


def policy_text(
    *,
    grant_ttl: float = 120,
    grant_uses: int = 1,
    mode: str = "fail-fast",
    wait_timeout: float = 60,
    constants: bool = True,
    reason: bool = False,
    required: int = 1,
    elevation_ttl: float = 600,
    request_ttl: float = 3600,
) -> str:
    approve = (
        APPROVE.replace("GRANT_TTL", str(grant_ttl))
        .replace("GRANT_USES", str(grant_uses))
        .replace("MODE", mode)
        .replace("WAIT_TIMEOUT", str(wait_timeout))
        .replace("CONSTANTS", "true" if constants else "false")
        .replace("REASON", "true" if reason else "false")
        .replace("REQUIRED", str(required))
        .replace("REQUEST_TTL", str(request_ttl))
    )
    return POLICY_TEMPLATE.replace("APPROVE", approve).replace("ELEVATION_TTL", str(elevation_ttl))


@dataclass
class JitGateway:
    """A gateway with approvals: principals ``agent`` and ``agent2`` (tier agents)."""

    handle: GatewayHandle
    tokens: dict[str, str]
    state: StateConfig
    audit_log: Path
    policy_file: Path

    def target(self, who: str = "agent") -> pw.Target:
        t = pw.gateway_target(self.handle)
        return replace(t, password=self.tokens[who])

    def dsn(self, who: str = "agent", **extra: str | int) -> str:
        return self.target(who).conninfo(**extra)

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def approval_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.audit()
            if e.get("kind") == "approval" and (event is None or e["event"] == event)
        ]

    def service(self) -> Any:
        gw = self.handle.thread.gateway
        assert gw is not None and gw.approvals is not None
        return gw.approvals

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``veilgate approvals CMD --state FILE ARGS...`` (an SQLite store)."""
        cmd, rest = args[0], list(args[1:])
        return run_cli(cmd, "--state", self.state.path, *rest, check=check)


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "veilgate", "approvals", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"veilgate approvals {args}: {proc.returncode}\n{proc.stderr}")
    return proc


def jit_gateway(
    factory: Callable[..., GatewayHandle],
    tmp_path: Path,
    policy: str,
    *,
    roles: Sequence[str] = ("agent",),
    state: StateConfig | None = None,
    approvals: ApprovalsConfig | None = None,
    authenticator: Any = None,
    transform: Callable[[GatewayConfig], GatewayConfig] | None = None,
) -> JitGateway:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy)
    audit_log = tmp_path / f"audit-{secrets.token_hex(3)}.jsonl"
    state = state or StateConfig(path=str(tmp_path / "veilgate-state.db"))
    tokens = {name: f"vg-{name}-" + secrets.token_urlsafe(16) for name in ("agent", "agent2")}

    def configure(cfg: GatewayConfig) -> GatewayConfig:
        static = tuple(
            StaticToken(name, token_digest(tok), frozenset(roles)) for name, tok in tokens.items()
        )
        out = replace(
            cfg,
            auth=replace(cfg.auth, static_tokens=static),
            policy=PolicyConfig(file=policy_file, audit_log=str(audit_log)),
            state=state,
            approvals=approvals or ApprovalsConfig(sweep_interval_s=1.0),
        )
        return transform(out) if transform is not None else out

    holder: list[GatewayConfig] = []

    def capture(cfg: GatewayConfig) -> GatewayConfig:
        out = configure(cfg)
        holder.append(out)
        return out

    if authenticator is None:
        handle = factory(transform=capture, authenticator=_Static(holder))
    else:
        handle = factory(transform=capture, authenticator=authenticator)
    return JitGateway(handle, tokens, state, audit_log, policy_file)


class _Static:
    """The static authenticator of the final configuration (both principals)."""

    def __init__(self, holder: list[GatewayConfig]) -> None:
        self._holder = holder
        self._auth: StaticTokenAuthenticator | None = None

    async def authenticate(self, token: str, ctx: Any) -> Any:
        if self._auth is None:
            self._auth = StaticTokenAuthenticator(self._holder[0].auth.static_tokens)
        return await self._auth.authenticate(token, ctx)


_REQUEST_RX = re.compile(r"\b(ap-[a-z0-9]{16})\b")


def request_id(text: str) -> str:
    m = _REQUEST_RX.search(text)
    assert m is not None, f"no request id in {text!r}"
    return m.group(1)


def make_table(pg_cluster: Any, rows: int = 3) -> str:
    """A jit_ table in ``app`` with ``rows`` rows (made straight on the server)."""
    name = "jit_" + secrets.token_hex(4)
    pg_cluster.execute(
        f"CREATE TABLE {name} (id int primary key, v text);"
        f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, {rows}) g;"
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO veilgate_app;",
        "app",
    )
    return name


def make_scratch(pg_cluster: Any) -> str:
    """A scratch_ table the agents may write without approval."""
    name = "scratch_" + secrets.token_hex(4)
    pg_cluster.execute(
        f"CREATE TABLE {name} (id int); GRANT SELECT, INSERT, DELETE ON {name} TO veilgate_app;",
        "app",
    )
    return name


def count(pg_cluster: Any, table: str, where: str = "true") -> int:
    return int(pg_cluster.execute(f"SELECT count(*) FROM {table} WHERE {where}", "app"))


def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.02)


def psql(target: pw.Target, *commands: str) -> subprocess.CompletedProcess[str]:
    args = [
        "psql",
        target.conninfo(with_password=False),
        "-X",
        "-A",
        "-t",
        "-v",
        "VERBOSITY=verbose",
    ]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(
        args, env=target.psql_env(), capture_output=True, text=True, timeout=60, check=False
    )


def psycopg_error(dsn: str, sql: str, params: Sequence[Any] | None = None) -> psycopg.Error | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql, params)
        except psycopg.Error as e:
            return e
    return None


__all__ = [
    "JitGateway",
    "count",
    "jit_gateway",
    "make_scratch",
    "make_table",
    "policy_text",
    "psql",
    "psycopg_error",
    "request_id",
    "run_cli",
    "wait_for",
]
