"""Session recording as an operator uses it: ``veilgate serve`` with an ``audit`` section, then
``veilgate sessions list / show / export / replay / verify``, ``veilgate audit rotate``, SIGHUP
(rotation and signing-key rotation) and ``veilgate policy simulate``."""

# ruff: noqa: S608 (SQL built from names the test makes up)
from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_serve import ServeProcess, subprocess_env

pytestmark = pytest.mark.pg

POLICY = """\
version: 1
tiers:
  - name: readonly
    match: {roles: [db.readonly]}
    rules:
      - id: ro-read
        action: allow
        message: "reads only"
        classes: [read, transaction, session]
  - name: readwrite
    match: {roles: [db.readwrite]}
    rules:
      - id: rw-all
        action: allow
        message: "reads and writes"
        classes: [read, write, transaction, session]
      - id: rw-no-drop
        action: deny
        message: "DROP is not allowed"
        constructs: [drop]
"""
# the readonly tier may also delete: a change that widens access
POLICY_WIDER = POLICY.replace(
    "classes: [read, transaction, session]", "classes: [read, write, transaction, session]", 1
)
# the readonly tier may no longer read rec_items: a change that only narrows
POLICY_NARROWER = POLICY.replace(
    """        classes: [read, transaction, session]
""",
    """        classes: [read, transaction, session]
      - id: ro-no-items
        action: deny
        message: "not rec_items"
        tables: ["public.rec_items"]
""",
    1,
)


@dataclass
class Setup:
    dir: Path
    config: Path
    tokens: dict[str, str]
    ca_file: Path
    env: dict[str, str]
    direct_dsn: str


CONFIG = """\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{cert_file: gateway.crt, key_file: gateway.key}}
admin: {{host: 127.0.0.1, port: 0}}
auth:
  static_tokens:
    - {{name: reader, sha256: {reader}, roles: [db.readonly]}}
    - {{name: writer, sha256: {writer}, roles: [db.readwrite]}}
targets:
  app:
    host: {host}
    port: {port}
    dbname: {db}
    user: {role}
    password_env: VEILGATE_REC_PG_PASSWORD
    tls: {{mode: verify-full, ca_file: {ca}}}
policy: {{file: policy.yaml}}
state: {{path: state.db}}
audit:
  dir: audit
  key: {key}
{old_keys}  flush_interval_ms: 30
shutdown: {{drain_timeout_s: 5}}
logging: {{level: info, format: json}}
"""


def _write_config(s: Setup, key: str, old_keys: str = "") -> None:
    c = s.env["_CLUSTER"].split("|")
    s.config.write_text(
        CONFIG.format(
            reader=hashlib.sha256(s.tokens["reader"].encode()).hexdigest(),
            writer=hashlib.sha256(s.tokens["writer"].encode()).hexdigest(),
            host=c[0],
            port=c[1],
            db=c[2],
            role=c[3],
            ca=c[4],
            key=key,
            old_keys=old_keys,
        )
    )


@pytest.fixture
def setup(pg_cluster: Any, tmp_path: Path) -> Setup:
    from veilgate.certs import make_ca, make_cert

    role, db = "veilgate_rec", "rec_app"
    password = secrets.token_urlsafe(24)
    pg_cluster.create_role(role, password)
    if not pg_cluster.execute(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():
        pg_cluster.create_database(db, owner=role)
    pg_cluster.execute(
        "DROP TABLE IF EXISTS rec_items; "
        "CREATE TABLE rec_items (id int primary key, name text); "
        f"ALTER TABLE rec_items OWNER TO {role}; "
        "INSERT INTO rec_items VALUES (1, 'one'), (2, 'two')",
        db,
    )
    ca = make_ca(tmp_path, "ca")
    make_cert(tmp_path, "gateway", ["127.0.0.1", "localhost"], ca)
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "audit-k1.key").write_text(secrets.token_hex(32) + "\n")
    (tmp_path / "audit-k1.key").chmod(0o600)
    s = Setup(
        dir=tmp_path,
        config=tmp_path / "veilgate.yaml",
        tokens={
            "reader": "vg-r-" + secrets.token_urlsafe(20),
            "writer": "vg-w-" + secrets.token_urlsafe(20),
        },
        ca_file=ca.cert_file,
        env=subprocess_env(VEILGATE_REC_PG_PASSWORD=password),
        direct_dsn=pg_cluster.dsn(user=role, password=password, dbname=db),
    )
    s.env["_CLUSTER"] = "|".join(
        [str(pg_cluster.host), str(pg_cluster.port), db, role, str(pg_cluster.ca_file)]
    )
    _write_config(s, "{id: k1, file: audit-k1.key}")
    return s


@pytest.fixture
def served(setup: Setup) -> Iterator[tuple[ServeProcess, int]]:
    p = ServeProcess(setup.config, setup.env)
    try:
        ready = p.wait_event("ready")
        yield p, int(ready["port"])
    finally:
        p.stop()


def _psql(s: Setup, port: int, who: str, *sql: str) -> subprocess.CompletedProcess[str]:
    conninfo = (
        f"host=127.0.0.1 port={port} dbname=app user=agent sslmode=verify-full "
        f"sslrootcert={s.ca_file} connect_timeout=10 application_name=rec-test"
    )
    args = [x for q in sql for x in ("-c", q)]
    return subprocess.run(
        ["psql", "-X", "-A", "-t", conninfo, *args],
        env={**subprocess_env(), "PGPASSWORD": s.tokens[who]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def vg(s: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veilgate", *args],
        env=s.env,
        cwd=s.dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _wait(cond: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _listed(s: Setup, *filters: str) -> list[dict[str, Any]]:
    res = vg(s, "sessions", "list", "--config", str(s.config), "--json", *filters)
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


def test_record_list_show_export_simulate_rotate_verify(
    setup: Setup, served: tuple[ServeProcess, int]
) -> None:
    s = setup
    proc, port = served
    r = _psql(
        s, port, "reader", "select count(*) from rec_items", "delete from rec_items where id = 1"
    )
    assert "42501" in r.stderr or "not allowed" in r.stderr or "policy" in r.stderr, r.stderr
    w = _psql(
        s,
        port,
        "writer",
        "insert into rec_items values (3, 'three')",
        "select name from rec_items where id = 3",
        "drop table rec_items",
    )
    assert "three" in w.stdout, w.stdout + w.stderr
    # the index is written off the data path: wait until both sessions ended there
    rows = _wait(
        lambda: (x := _listed(s)) and len(x) == 2 and all(r["ended"] for r in x) and x,
        "two ended sessions in the index",
    )
    by = {r["subject"]: r for r in rows}
    assert by["reader"]["tier"] == "readonly" and by["writer"]["tier"] == "readwrite"
    assert (by["reader"]["statements"], by["reader"]["denied"]) == (2, 1)
    assert (by["writer"]["statements"], by["writer"]["denied"]) == (3, 1)
    assert "rec_items" in by["writer"]["tables"]
    assert [r["subject"] for r in _listed(s, "--principal", "reader")] == ["reader"]
    assert [r["subject"] for r in _listed(s, "--tier", "readwrite")] == ["writer"]
    assert len(_listed(s, "--decision", "deny")) == 2
    assert len(_listed(s, "--table", "public.rec_items")) == 2
    assert _listed(s, "--since", "1h") and not _listed(s, "--until", "2h")
    # the same from the segments, without the index
    scan = vg(s, "sessions", "list", "--config", str(s.config), "--scan", "--json")
    assert sorted(r["sid"] for r in json.loads(scan.stdout)) == sorted(r["sid"] for r in rows)

    show = vg(s, "sessions", "show", by["writer"]["sid"], "--config", str(s.config))
    assert show.returncode == 0, show.stderr
    assert "principal: static:writer" in show.stdout
    assert "insert into rec_items values (3, 'three')" in show.stdout
    assert "DENY (rw-no-drop)" in show.stdout and "refused" in show.stdout
    assert "application 'rec-test'" in show.stdout and "TLS TLSv1.3" in show.stdout

    out = vg(s, "sessions", "export", "--config", str(s.config), "--format", "csv")
    assert out.returncode == 0, out.stderr
    events = list(csv.DictReader(io.StringIO(out.stdout)))
    queries = [e for e in events if e["activity_name"] == "Query"]
    assert len(queries) == 5
    drop = next(e for e in queries if e["query_info.query_string"] == "drop table rec_items")
    assert (drop["disposition"], drop["status_code"], drop["policy.uid"]) == (
        "Blocked",
        "42501",
        "rw-no-drop",
    )
    assert drop["actor.user.uid"] == "writer" and drop["class_uid"] == "6005"
    jl = vg(s, "sessions", "export", "--config", str(s.config), "--session", by["reader"]["sid"])
    lines = [json.loads(x) for x in jl.stdout.splitlines()]
    assert [x["activity_name"] for x in lines] == ["Connect", "Query", "Query", "Disconnect"]
    assert lines[1]["unmapped"]["rows"] == 1 and lines[1]["actor"]["session"]["uid"]

    # simulate: a wider policy newly allows the reader's DELETE (exit 1); a narrower one only denies
    (s.dir / "wider.yaml").write_text(POLICY_WIDER)
    (s.dir / "narrower.yaml").write_text(POLICY_NARROWER)
    sim = vg(s, "policy", "simulate", "--config", str(s.config), "--policy", "wider.yaml")
    assert sim.returncode == 1, sim.stdout + sim.stderr
    assert "newly allowed: 1  rule ro-read  principal static:reader" in sim.stdout
    assert "delete from rec_items where id = 1" in sim.stdout
    sim = vg(
        s,
        "policy",
        "simulate",
        "--config",
        str(s.config),
        "--policy",
        "narrower.yaml",
        "--sessions",
        "principal=reader",
        "--json",
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    report = json.loads(sim.stdout)
    assert report["sessions"] == 1 and report["newly_allowed"] == 0
    kinds = {(c["kind"], c["rule"]) for c in report["changes"]}
    assert kinds == {("newly_denied", "ro-no-items")}

    # replay: a psql script of what ran, and the same on a test server
    script = vg(s, "sessions", "replay", by["writer"]["sid"], "--config", str(s.config))
    assert "insert into rec_items values (3, 'three');" in script.stdout
    assert "-- not replayed: it did not run (refused)" in script.stdout
    subprocess.run(
        ["psql", "-X", s.direct_dsn, "-c", "delete from rec_items where id = 3"],
        env=subprocess_env(),
        capture_output=True,
        check=True,
    )
    rep = vg(
        s,
        "sessions",
        "replay",
        by["writer"]["sid"],
        "--config",
        str(s.config),
        "--to",
        s.direct_dsn,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "replayed 2 statement(s): 2 with the recorded outcome" in rep.stdout

    # rotation: by command and by SIGHUP; signing-key rotation through the config file
    segments = sorted((s.dir / "audit").glob("segment-*.jsonl"))
    rot = vg(s, "audit", "rotate", "--config", str(s.config))
    assert rot.returncode == 0, rot.stdout + rot.stderr
    (s.dir / "audit-k2.key").write_text(secrets.token_hex(32) + "\n")
    _write_config(s, "{id: k2, file: audit-k2.key}", "  old_keys: [{id: k1, file: audit-k1.key}]\n")
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_event("audit_key_rotated")
    _wait(
        lambda: len(list((s.dir / "audit").glob("segment-*.jsonl"))) >= len(segments) + 2,
        "two more segments",
    )
    assert _psql(s, port, "reader", "select 1").returncode == 0
    live = vg(s, "sessions", "verify", "--config", str(s.config), "--allow-open")
    assert live.returncode == 0, live.stdout
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0
    final = vg(s, "sessions", "verify", "--config", str(s.config))
    assert final.returncode == 0 and final.stdout.startswith("OK:"), final.stdout
    assert "3 session(s), 3 terminated" in final.stdout
    only_old = vg(
        s, "sessions", "verify", str(s.dir / "audit"), "--key", f"k1={s.dir / 'audit-k1.key'}"
    )
    assert only_old.returncode == 1 and "'k2', which is not in the keyring" in only_old.stdout
    seals = [
        json.loads(line)
        for p in sorted((s.dir / "audit").glob("segment-*.jsonl"))
        for line in p.read_text().splitlines()
        if line.startswith('{"seal"')
    ]
    assert {x["kid"] for x in seals} == {"k1", "k2"}
