"""The gateway as the policy, approvals and mask benches run it: one static token whose app role
selects the guardrail policy's read-only tier, and optionally that policy, a JSON-lines audit log
or session recording (:class:`VeilgatePolicyTarget`); what pgbench sends and what the policy
denies.  Shared by ``policy_bench.py``, ``approvals_bench.py`` and ``mask_bench.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import harness
from harness import WORKLOADS_DIR, BenchError, VeilgateTarget, say

POLICY_FILE = WORKLOADS_DIR / "policy_guardrails.yaml"
TOKEN_ROLES = ("db.readonly",)
"""App roles of the bench's static token: they select the policy's ``readonly`` tier."""
READWRITE_POLICY_FILE = WORKLOADS_DIR / "policy_readwrite.yaml"
READWRITE_ROLES = ("db.readwrite",)
"""App roles of the TPC-B targets' token: the read-write policy's ``readwrite`` tier."""
TPCB_STATEMENTS = (
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4062 WHERE aid = 87105;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 87105;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -4062 WHERE tid = 3;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -4062 WHERE bid = 1;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (3, 1, 87105, -4062, CURRENT_TIMESTAMP);",
    "END;",
    "select count(*) from pgbench_branches",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
)
"""What ``pgbench -b tpcb-like -M simple`` (and the warm-up's ``-S``) sends: the read-write
policy must allow all of it."""
TPCB_PREFIX = "tpcb-"
"""Workloads named so run pgbench's TPC-B script: writes, so only on read-write targets."""
PGBENCH_STATEMENTS = (
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",  # -M prepared (Parse)
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",  # -M simple (Query)
    "select count(*) from pgbench_branches",  # pgbench's scale probe at start-up
)
"""What pgbench -S sends; the bench's policy must allow all of it."""
DENIED_PROBE = ("DELETE FROM pgbench_history", "ro-no-destruction")
"""A statement the policy denies (harmless if it runs: ``-S`` never writes history)."""


class VeilgatePolicyTarget(VeilgateTarget):
    """The gateway with one static token (roles ``db.readonly``) and, optionally, a policy."""

    def __init__(
        self,
        env: Any,
        name: str,
        *,
        policy_file: Path | None,
        audit: bool = False,
        recording: bool = False,
        readwrite: bool = False,
        command: str | None = None,
    ) -> None:
        self.name = name
        self.readwrite = readwrite
        """The ``db.readwrite`` token (TPC-B workloads only) instead of ``db.readonly``."""
        self.denied_rule = "rw-no-destruction" if readwrite else DENIED_PROBE[1]
        self.policy_file = policy_file
        self.audit = audit
        self.recording = recording
        super().__init__(env, command)
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        roles = ", ".join(READWRITE_ROLES if readwrite else TOKEN_ROLES)
        self.write_config(
            f"auth:\n  static_tokens:\n    - {{name: bench, sha256: {digest}, roles: [{roles}]}}\n"
        )

    def write_config(self, auth_section: str) -> None:
        if self.policy_file is not None:
            audit = json.dumps(str(self.workdir / "audit.jsonl")) if self.audit else "null"
            auth_section = (
                f"{auth_section.rstrip()}\n"
                f"policy: {{file: {json.dumps(str(self.policy_file))}, audit_log: {audit}}}\n"
            )
        if getattr(self, "recording", False):
            auth_section = auth_section.rstrip() + "\n" + harness.recording_section(self.workdir)
        super().write_config(auth_section)

    def stop(self, sig: Any = None, grace_s: float = 15.0) -> None:
        running = self.proc is not None
        if sig is None:
            super().stop(grace_s=grace_s)
        else:
            super().stop(sig, grace_s)
        if running and getattr(self, "recording", False):
            say(f"  {self.name}: recording {harness.verify_recording(self.workdir)}")

    def unsupported(self, workload: Any) -> str | None:
        tpcb = workload.name.startswith(TPCB_PREFIX)
        if self.readwrite and not tpcb:
            return "the read-write targets run the TPC-B workloads only"
        if tpcb and not self.readwrite and self.policy_file is not None:
            return "the read-only tier denies TPC-B's writes"
        return None

    def admin_port(self) -> int:
        m = re.search(r"^admin: \{host: [^,]+, port: (\d+)\}", self.config.read_text(), re.M)
        if m is None:
            raise BenchError(f"{self.name}: no admin port in {self.config}")
        return int(m.group(1))

    def policy_decisions(self) -> dict[str, float]:
        """``veilgate_policy_decisions_total`` by action, from the admin endpoint."""
        url = f"http://127.0.0.1:{self.admin_port()}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_decision_metrics(resp.read().decode())


def parse_decision_metrics(text: str) -> dict[str, float]:
    """``{action: count}`` from a Prometheus exposition's ``veilgate_policy_decisions_total``."""
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^veilgate_policy_decisions_total\{[^}]*action="([^"]+)"[^}]*\} ([0-9.e+]+)$', text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out
