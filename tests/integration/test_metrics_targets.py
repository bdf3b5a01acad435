"""Per target and tier metrics of ``veilgate serve``: what an operator pages on, read from
``/metrics`` while real psycopg sessions run allowed, denied, failing and masked statements."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tests.integration.reload_support import ServeDir, digest, serve_dir
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
    http_get,
    metric,
)

pytestmark = pytest.mark.pg

POLICY = """\
version: 1
tiers:
  - name: agents
    match: {roles: [db.agent]}
    default: allow
    rules:
      - {id: no-drop, action: deny, message: "no DDL", classes: [ddl]}
masking:
  apply_to: [agents]
  detectors: [EMAIL]
  columns:
    - {column: "public.vg_notes.note", scan: true}
end: true
"""

T = '{target="app",tier="agents"}'


def labels(**kw: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in {"target": "app", "tier": "agents", **kw}.items())
    return "{" + inner + "}"


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    s = serve_dir(cluster, tmp_path, "metrics")
    (tmp_path / "policy.yaml").write_text(POLICY)
    setup = (
        "create table if not exists vg_notes (id int, note text);"  # noqa: S608
        "truncate vg_notes; insert into vg_notes values (1, 'mail bob@example.org');"
        "grant select on vg_notes to " + s.role + ";"
    )
    cluster.execute(setup, dbname=s.db)
    s.write(
        auth=(
            "auth:\n  static_tokens:\n"
            f"    - {{name: agent-a, sha256: {digest(s.token)}, roles: [db.agent]}}"
        ),
        logging="logging: {level: info, format: json}\npolicy: {file: policy.yaml}",
    )
    return s


def scrape(admin: int) -> str:
    status, text = http_get(admin, "/metrics")
    assert status == 200
    return text


def test_per_target_and_tier_metrics(sd: ServeDir) -> None:
    import psycopg

    p, port, admin = sd.start()
    try:
        with psycopg.connect(sd.dsn(port), autocommit=True) as conn:
            for _ in range(5):
                conn.execute("select 1").fetchall()
            note = conn.execute("select note from vg_notes").fetchone()[0]
            assert "bob@example.org" not in note and note.startswith("mail ")
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("select 1/0")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("drop table if exists nothing_here")
            live = scrape(admin)
            assert metric(live, "veilgate_sessions_active", T) == 1
            assert metric(live, "veilgate_statements_total", T) >= 7
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(sd.dsn(port, token="vg-wrong-token-" + "z" * 20)).close()
        text = scrape(admin)
        assert f"veilgate_sessions_active{T}" not in text  # the session ended
        assert metric(text, "veilgate_sessions_total", T) == 1
        statements = metric(text, "veilgate_statements_total", T)
        assert statements >= metric(live, "veilgate_statements_total", T)  # never goes back
        assert metric(text, "veilgate_statement_decisions_total", labels(decision="allow")) >= 7
        assert metric(text, "veilgate_statement_decisions_total", labels(decision="deny")) == 1
        assert metric(text, "veilgate_statement_errors_total", labels(**{"class": "22"})) == 1
        assert metric(text, "veilgate_statement_errors_total", labels(**{"class": "42"})) == 1
        assert metric(text, "veilgate_session_bytes_total", labels(direction="in")) > 0
        assert metric(text, "veilgate_session_bytes_total", labels(direction="out")) > 0
        assert metric(text, "veilgate_target_masked_values_total", labels(entity="EMAIL")) >= 1
        # the histogram counts every answered request of the session
        count = metric(text, "veilgate_target_statement_duration_seconds_count", T)
        inf = metric(text, "veilgate_target_statement_duration_seconds_bucket", labels(le="+Inf"))
        assert count == inf == statements
        ok = '{target="app",result="ok"}'
        assert metric(text, "veilgate_upstream_connect_seconds_count", ok) == 1
        valid = '{provider="static",outcome="valid"}'
        assert metric(text, "veilgate_token_validations_total", valid) == 1
        failed = [
            m
            for m in re.findall(r"^veilgate_token_validations_total\{(.*)\} (\S+)$", text, re.M)
            if 'outcome="valid"' not in m[0]
        ]
        assert failed and float(failed[0][1]) == 1
        build = re.search(r"^veilgate_build_info\{(.*)\} 1$", text, re.M)
        assert build is not None
        assert 'native_version="0.' in build.group(1) and 'commit="' in build.group(1)
        # log lines: RFC 3339, pid, and the session's id, subject, tier, target on each of its
        # lines (start, denial, end)
        by = {e["event"]: e for e in p.events() if "session" in e}
        started, denied, ended = by["session_started"], by["policy_denied"], by["session_ended"]
        assert started["session"] == denied["session"] == ended["session"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", started["ts"])
        assert started["pid"] == p.proc.pid
        assert (denied["subject"], denied["tier"], denied["target"]) == ("agent-a", "agents", "app")
        # bounded labels: no principal, no statement text, no token in any series
        for bad in ("agent-a", "bob@example.org", "select", "drop", sd.token):
            assert not re.search(rf"^veilgate_\w+\{{[^}}]*{re.escape(bad)}", text, re.M), bad
    finally:
        p.stop()
