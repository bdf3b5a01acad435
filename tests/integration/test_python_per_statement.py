"""Python is not on the per-statement path of a policy session (issue 15 item 2): pgbench runs a
fixed number of transactions through a gateway with a policy and the JSON-lines decision log,
in the simple, extended and prepared protocols, and the session's Python event handler
(``Session.relay_event``) and hit drain (``Session.verdict_hits``) are counted.  After the
first statement of each kind (judged in Python) they must not grow with the number of
statements, and every statement still has its decision-log line."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import PolicyGateway

from veilgate.gateway.session import Session

pytestmark = pytest.mark.pg

POLICY = """\
version: 1
tiers:
  - name: ro
    match: {roles: [db.readonly]}
    rules:
      - id: ro-read
        action: allow
        message: "reads"
        classes: [read]
"""
TRANSACTIONS = 300
SCRIPT = "\\set n random(1, 100000)\nselect :n::int * 2 as doubled;\n"


def _pgbench(g: PolicyGateway, script: Path, mode: str) -> None:
    h = g.handle
    env = dict(
        os.environ,
        PGHOST=h.host,
        PGPORT=str(h.port),
        PGUSER="agent",
        PGDATABASE=h.dbname,
        PGPASSWORD=h.token,
        PGSSLMODE="verify-full",
        PGSSLROOTCERT=h.ca_file,
    )
    r = subprocess.run(
        ["pgbench", "-n", "-M", mode, "-f", str(script), "-t", str(TRANSACTIONS), "-c", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"number of transactions actually processed: {TRANSACTIONS}/{TRANSACTIONS}" in r.stdout


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_no_python_call_per_statement(
    policy_gateway: Callable[..., PolicyGateway],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    g = policy_gateway(POLICY, "db.readonly", audit_log="decisions.jsonl")
    script = tmp_path / "doubled.sql"
    script.write_text(SCRIPT)
    calls = {"relay_event": 0, "verdict_hits": 0}
    relay_event, verdict_hits = Session.relay_event, Session.verdict_hits

    def counted_relay_event(self: Session, side: Any, message: Any) -> None:
        calls["relay_event"] += 1
        relay_event(self, side, message)

    def counted_verdict_hits(self: Session, side: Any = None) -> None:
        calls["verdict_hits"] += 1
        verdict_hits(self, side)

    monkeypatch.setattr(Session, "relay_event", counted_relay_event)
    monkeypatch.setattr(Session, "verdict_hits", counted_verdict_hits)
    _pgbench(g, script, mode)
    # a handful for the first statement and the session's end, none per statement
    assert calls["relay_event"] <= 20, calls
    assert calls["verdict_hits"] <= 5, calls
    events = [json.loads(x) for x in g.audit_log.read_text().splitlines() if x]
    mine = [e for e in events if "as doubled" in (e.get("sql") or "")]
    assert all(e["action"] == "allow" for e in mine)
    if mode == "prepared":
        assert len(mine) == 1  # parsed once; Bind / Execute of an allowed statement are not logged
    else:
        assert len(mine) == TRANSACTIONS  # every statement has its line
        assert sum(1 for e in mine if e["cached"]) >= TRANSACTIONS - 1
