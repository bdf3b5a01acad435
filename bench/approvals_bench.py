"""Approvals in ``python bench/run.py policy``: the grant check on the allowed path, and wake-up.

* Target ``veilgate-approve``: the guardrail policy plus one ``approve`` rule on
  ``pgbench_accounts`` reads (``grant_uses: 0``, ``match_constants: false``), approved before the
  run, so every pgbench statement matches the approve rule and runs on its grant.  Compared with
  target ``veilgate`` (the same policy, the reads allowed by a plain allow rule): the cost of the
  grant check on the allowed path (the issue's bar: <= 5 % TPS).
* Wake-up latency: a gateway whose approve rule waits (``mode: wait``); a client's statement is
  held, the bench process records a decision straight in the state store and times how long the
  held statement takes to come back (from the vote's start, its commit included, to the
  statement's result), for the SQLite and the PostgreSQL store.  Medians and p90 over
  ``--wakeup-rounds`` decisions.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from harness import BenchError
from policy_targets import POLICY_FILE, VeilgatePolicyTarget

APPROVER = "bench-approver"
APPROVE_RULE: dict[str, Any] = {
    "id": "ro-approve-accounts",
    "action": "approve",
    "message": "bench: reads of pgbench_accounts run on a standing grant",
    "classes": ["read"],
    "tables": ["public.pgbench_accounts"],
    "approval": {
        "approvers": {"users": [APPROVER]},
        "grant_uses": 0,
        "grant_ttl_s": 86400,
        "match_constants": False,
    },
}
WAIT_POLICY = """\
version: 1
tiers:
  - name: readonly
    match: {roles: [db.readonly]}
    rules:
      - {id: reads, action: allow, message: reads, classes: [read, session, transaction]}
      - id: held-history
        action: approve
        message: "bench: held until approved"
        classes: [write]
        tables: ["public.pgbench_history"]
        approval: {approvers: {users: [bench-approver]}, mode: wait, wait_timeout_s: 60}
"""


def approve_policy(workdir: Path) -> Path:
    """The guardrail policy with :data:`APPROVE_RULE` first in its tier."""
    doc = yaml.safe_load(POLICY_FILE.read_text())
    doc["tiers"][0]["rules"].insert(0, APPROVE_RULE)
    out = workdir / "policy_approve.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


class VeilgateApproveTarget(VeilgatePolicyTarget):
    """The guardrail policy plus an approve rule the bench approves once before the runs."""

    def __init__(self, env: Any, name: str, *, command: str | None = None) -> None:
        self.state_file = env.workdir / f"{name}-state.db"
        super().__init__(env, name, policy_file=approve_policy(env.workdir), command=command)

    def write_config(self, auth_section: str) -> None:
        if self.policy_file is not None:
            auth_section = (
                f"{auth_section.rstrip()}\nstate: {{path: {json.dumps(str(self.state_file))}}}\n"
            )
        super().write_config(auth_section)

    def approve_pgbench(self, env: Any) -> None:
        """Make pgbench's statements (simple and prepared) ask, approve the requests, check."""
        ep = self.endpoint()
        for mode in ("simple", "prepared"):
            self._pgbench(env, ep, mode)  # fails: the statement is held (42Z01)
        env_vars = self.popen_kwargs()["env"]
        listed = _cli(env_vars, "list", "--state", str(self.state_file), "--json")
        ids = [json.loads(line)["id"] for line in listed.splitlines() if line.strip()]
        if len(ids) != 2:
            raise BenchError(f"{self.name}: expected 2 approval requests, got {len(ids)}")
        for rid in ids:
            _cli(env_vars, "approve", rid, "--state", str(self.state_file), "--as", APPROVER)
        for mode in ("simple", "prepared"):
            proc = self._pgbench(env, ep, mode)
            if proc.returncode != 0:
                raise BenchError(f"{self.name}: pgbench -M {mode} refused after approval")

    @staticmethod
    def _pgbench(env: Any, ep: Any, mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [env.pgbench(), *ep.args(), "-n", "-S", "-M", mode, "-t", "1", ep.dbname],
            env=ep.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "veilgate", "approvals", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise BenchError(f"veilgate approvals {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


# --- wake-up latency ----------------------------------------------------------------------------


class _WaitTarget(VeilgatePolicyTarget):
    def __init__(self, env: Any, name: str, state_yaml: str, extra_env: dict[str, str]) -> None:
        self.state_yaml = state_yaml
        self.extra_env = extra_env
        policy = env.workdir / f"{name}-policy.yaml"
        policy.write_text(WAIT_POLICY)
        super().__init__(env, name, policy_file=policy)

    def write_config(self, auth_section: str) -> None:
        if self.policy_file is not None:
            auth_section = f"{auth_section.rstrip()}\nstate: {self.state_yaml}\n"
        super().write_config(auth_section)

    def popen_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = super().popen_kwargs()
        kw["env"] = {**kw["env"], **self.extra_env}
        return kw


def _postgres_state(env: Any) -> tuple[str, str]:
    """A state database in the bench cluster: (DSN, database name)."""
    password = secrets.token_urlsafe(16)
    env.cluster.create_role("veilgate_bench_state", password)
    name = "vgstate_" + secrets.token_hex(3)
    env.cluster.create_database(name, owner="veilgate_bench_state")
    return (
        env.cluster.dsn(user="veilgate_bench_state", password=password, dbname=name),
        name,
    )


def measure_wakeup(env: Any, backend: str, rounds: int) -> dict[str, Any]:
    """Decision committed (in this process) -> the held statement's result, ``rounds`` times."""
    from veilgate.config_model import StateBackend, StateConfig

    extra: dict[str, str] = {}
    if backend == "postgres":
        dsn, _ = _postgres_state(env)
        extra["VEILGATE_BENCH_STATE_DSN"] = dsn
        state_yaml = "{backend: postgres, dsn_env: VEILGATE_BENCH_STATE_DSN}"
        config = StateConfig(backend=StateBackend.POSTGRES, dsn_env="VEILGATE_BENCH_STATE_DSN")
    else:
        path = env.workdir / "wakeup-state.db"
        state_yaml = f"{{path: {json.dumps(str(path))}}}"
        config = StateConfig(path=str(path))
    target = _WaitTarget(env, f"veilgate-wakeup-{backend}", state_yaml, extra)
    target.start()
    try:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            latencies = asyncio.run(_wakeup_rounds(target, config, rounds))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        target.stop()
    ms = sorted(x * 1000 for x in latencies)
    return {
        "backend": backend,
        "rounds": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": ms[max(0, round(0.9 * len(ms)) - 1)],
        "max_ms": ms[-1],
    }


async def _wakeup_rounds(target: Any, config: Any, rounds: int) -> list[float]:
    import psycopg

    from veilgate.approvals.model import approver_key
    from veilgate.approvals.store import ApprovalStore
    from veilgate.state import open_state

    ep = target.endpoint()
    dsn = (
        f"host={ep.host} port={ep.port} user={ep.user} password={ep.password} "
        f"dbname={ep.dbname} sslmode=require connect_timeout=10"
    )
    db = open_state(config)
    store = ApprovalStore(db)
    out: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            for i in range(rounds):
                notices.clear()
                done: dict[str, float] = {}
                # a new statement (another constant) each round: a new request each time
                sql = f"DELETE FROM pgbench_history WHERE aid = {-1 - i}"  # noqa: S608

                def held(sql: str = sql, done: dict[str, float] = done) -> None:
                    conn.execute(sql)
                    done["at"] = time.perf_counter()

                t = threading.Thread(target=held)
                t.start()
                deadline = time.monotonic() + 30
                while not notices:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{target.name}: no approval notice")
                    await asyncio.sleep(0.005)
                rid = notices[0].split("request ")[-1].rstrip(")")
                decided = time.perf_counter()  # the vote starts: its commit is the decision
                await store.vote(
                    rid,
                    approver=approver_key(APPROVER),
                    approver_label=APPROVER,
                    via="bench",
                    vote="approve",
                    comment="",
                    check=lambda r: None,
                )
                await asyncio.to_thread(t.join, 30)
                if "at" not in done:
                    raise BenchError(f"{target.name}: the held statement did not come back")
                out.append(done["at"] - decided)
    finally:
        await db.close()
    return out


def wakeup_table(results: list[dict[str, Any]]) -> str:
    lines = ["wake-up latency (vote, commit included -> the held statement's result):"]
    for r in results:
        lines.append(
            f"  {r['backend']:<9} median {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
            f"max {r['max_ms']:7.2f} ms  ({r['rounds']} decisions)"
        )
    return "\n".join(lines)
