"""Whole-configuration reload of ``veilgate serve`` (SIGHUP) under traffic: every setting, broken
and half-written files, removed sections.  Sessions keep running, the process never exits, and
the generation the metrics and the log name is the one serving."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.reload_support import (
    ServeDir,
    Traffic,
    generation,
    serve_dir,
    wait_for,
)
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
    http_get,
    metric,
)

from veilgate.certs import make_cert

pytestmark = pytest.mark.pg


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    return serve_dir(cluster, tmp_path, "reload")


@pytest.fixture
def served(sd: ServeDir) -> Iterator[tuple[ServeProcess, int, int]]:
    p, port, admin = sd.start()
    try:
        yield p, port, admin
    finally:
        p.stop()


def count(p: ServeProcess, name: str) -> int:
    return sum(1 for e in p.events() if e.get("event") == name)


def hup(p: ServeProcess) -> dict[str, Any]:
    """SIGHUP; returns the reload's log event (config_reloaded or config_reload_failed)."""
    before = count(p, "config_reloaded") + count(p, "config_reload_failed")
    p.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: count(p, "config_reloaded") + count(p, "config_reload_failed") > before,
        what="a reload event",
    )
    events = [
        e for e in p.events() if e.get("event") in ("config_reloaded", "config_reload_failed")
    ]
    assert p.proc.poll() is None, "the process exited"
    return events[-1]


def connect(sd: ServeDir, port: int, **kw: Any) -> Any:
    import psycopg

    conn = psycopg.connect(sd.dsn(port, **kw), autocommit=True)
    with conn:
        return conn.execute("select current_user").fetchone()[0]


def refused(sd: ServeDir, port: int, **kw: Any) -> str:
    import psycopg

    with pytest.raises(psycopg.OperationalError) as exc:
        connect(sd, port, **kw)
    return str(exc.value)


def server_cert(port: int, sd: ServeDir) -> bytes:
    """The DER certificate a new TLS connection to the gateway is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
        assert raw.recv(1) == b"S"
        with sd.client_ssl().wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def test_quiet_signals_never_end_the_process(
    sd: ServeDir, served: tuple[ServeProcess, int, int]
) -> None:
    """The config has no policy and no audit section: SIGHUP used to end the process (default
    action) because no handler was installed.  Now it reloads; SIGUSR1/2 are logged only."""
    p, port, admin = served
    with Traffic(sd, port) as traffic:
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            p.proc.send_signal(sig)
        wait_for(lambda: count(p, "signal_ignored") == 2, what="signal_ignored x2")
        wait_for(lambda: count(p, "config_reloaded") == 1, what="config_reloaded")
        for _ in range(10):  # a burst (the kernel may merge pending SIGHUPs): one at a time
            p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: count(p, "config_reloaded") >= 2, what="the burst's reloads")
        time.sleep(0.5)
        traffic.progress()
        assert p.proc.poll() is None
        reloads = count(p, "config_reloaded")
        assert generation(admin) == 1 + reloads
        assert [e["generation"] for e in p.events() if e.get("event") == "config_reloaded"] == list(
            range(2, reloads + 2)
        )
        assert connect(sd, port) == sd.role
    assert {e["signal"] for e in p.events() if e.get("event") == "signal_ignored"} == {
        "SIGUSR1",
        "SIGUSR2",
    }


def test_reload_identity_targets_credentials_certificates_under_traffic(
    cluster: Any,  # noqa: F811
    sd: ServeDir,
    served: tuple[ServeProcess, int, int],
) -> None:
    p, port, admin = served
    with Traffic(sd, port) as traffic:
        # a new static token: refused before the reload, accepted after
        token_b = "vg-reload-b-" + "x" * 20
        assert "password authentication failed" in refused(sd, port, token=token_b)
        sd.tokens.append(("agent-b", token_b))
        sd.write()
        ev = hup(p)
        assert ev["event"] == "config_reloaded" and ev["generation"] == 2, ev
        assert ev["changed"] == ["auth"]
        assert connect(sd, port, token=token_b) == sd.role
        traffic.progress()

        # token a removed: new logins with it fail; the sessions that used it keep running
        sd.tokens = [("agent-b", token_b)]
        sd.write()
        assert hup(p)["generation"] == 3
        assert "password authentication failed" in refused(sd, port)
        traffic.progress()

        # a new target, and a new upstream password (role password changed, file rewritten)
        assert 'database "app2" does not exist' in refused(sd, port, token=token_b, dbname="app2")
        new_password = "rotated-" + "y" * 24
        cluster.create_role(sd.role, new_password)
        sd.password_file.write_text(new_password + "\n")
        targets = sd.text().split("targets:\n", 1)[1].split("shutdown:")[0]
        sd.extra = ""
        sd.write(targets="targets:\n" + targets + targets.replace("  app:", "  app2:", 1).rstrip())
        ev = hup(p)
        assert ev["generation"] == 4 and "targets" in ev["changed"], ev
        assert connect(sd, port, token=token_b, dbname="app2") == sd.role
        assert connect(sd, port, token=token_b) == sd.role
        traffic.progress()

        # certificate rotation: new connections see the new certificate
        before = server_cert(port, sd)
        make_cert(sd.directory, "gateway2", ["127.0.0.1", "localhost"], sd.ca)
        sd.write(
            targets="targets:\n" + targets + targets.replace("  app:", "  app2:", 1).rstrip(),
            tls="tls: {cert_file: gateway2.crt, key_file: gateway2.key}",
        )
        assert hup(p)["generation"] == 5
        after = server_cert(port, sd)
        assert after != before
        assert after == ssl.PEM_cert_to_DER_cert((sd.directory / "gateway2.crt").read_text())
        traffic.progress()
    assert traffic.counts["psycopg"] > 0 and traffic.counts["asyncpg"] > 0
    assert p.proc.poll() is None
    assert generation(admin) == 5
    log_text = "\n".join(p.lines)
    assert token_b not in log_text and new_password not in log_text and sd.token not in log_text


_POLICY = """\
version: 1
tiers:
  - name: agents
    match: {subjects: [agent-a]}
    rules:
      - {id: reads, action: allow, message: "reads", classes: [read]}
"""


def test_reload_limits_logging_policy_under_traffic(
    sd: ServeDir, served: tuple[ServeProcess, int, int]
) -> None:
    p, port, admin = served
    with Traffic(sd, port) as traffic:
        # limits: two sessions run; with max_connections 2 a third is refused politely
        sd.write(listen="listen: {host: 127.0.0.1, port: 0, max_connections: 2}")
        ev = hup(p)
        assert ev["changed"] == ["listen"] and ev["restart_required"] == [], ev
        assert "too many clients" in refused(sd, port)
        sd.write()
        hup(p)
        assert connect(sd, port) == sd.role
        traffic.progress()

        # log level: at warning, a new session logs no session_started
        sd.write(logging="logging: {level: warning, format: json}")
        hup(p)
        started = count(p, "session_started")
        connect(sd, port)
        time.sleep(0.3)
        assert count(p, "session_started") == started
        sd.write()
        hup(p)
        connect(sd, port)
        wait_for(lambda: count(p, "session_started") == started + 1, what="session_started")
        traffic.progress()

        # a policy section added: reads allowed, then a new policy file denies them
        (sd.directory / "policy.yaml").write_text(_POLICY)
        sd.extra = "policy: {file: policy.yaml}\n"
        sd.write()
        ev = hup(p)
        assert "policy" in ev["changed"], ev
        assert connect(sd, port) == sd.role
        (sd.directory / "policy.yaml").write_text(_POLICY.replace("[read]", "[ddl]"))
        ev = hup(p)
        assert ev["event"] == "config_reloaded"
        res = subprocess.run(
            ["psql", "-X", "-A", "-t", sd.dsn(port), "-c", "select 1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode != 0 and "veilgate policy" in res.stderr, res.stderr
    # the running sessions started before there was a policy: they keep running as they started
    # (a policy section added live applies to new sessions; `veilgate admin terminate` ends them)
    assert traffic.errors == []
    assert p.proc.poll() is None
    assert generation(admin) == ev["generation"] == 7


def test_broken_half_written_and_removed_sections_keep_the_old_generation(
    sd: ServeDir, served: tuple[ServeProcess, int, int]
) -> None:
    p, port, admin = served
    (sd.directory / "policy.yaml").write_text(_POLICY)
    sd.extra = "policy: {file: policy.yaml}\n"
    sd.write(logging="logging: {level: debug, format: json}")
    assert hup(p)["generation"] == 2
    good = sd.config_file.read_text()
    with Traffic(sd, port) as traffic:
        # YAML that does not parse: the same error `config check` prints
        sd.config_file.write_text(good.replace("listen: {", "listen: {{"))
        check = subprocess.run(
            ["python", "-m", "veilgate", "config", "check", str(sd.config_file)],
            env=sd.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 2
        ev = hup(p)
        assert ev["event"] == "config_reload_failed" and ev["generation"] == 2, ev
        assert ev["errors"] and ev["errors"][0] in check.stderr, (ev, check.stderr)
        traffic.progress()
        assert connect(sd, port) == sd.role

        # half-written: cut in the middle of the targets section
        sd.config_file.write_text(good[: good.index("    host:")])
        ev = hup(p)
        assert ev["event"] == "config_reload_failed", ev
        assert any("required key is missing" in e for e in ev["errors"]), ev["errors"]
        traffic.progress()

        # half-written: everything but the policy section (a valid file!): refused
        sd.config_file.write_text(good.replace("policy: {file: policy.yaml}\n", ""))
        ev = hup(p)
        assert ev["event"] == "config_reload_failed", ev
        assert "never turns the statement policy off" in ev["errors"][0]

        # a broken policy file: the config's own check names the policy's file and line
        (sd.directory / "policy.yaml").write_text(_POLICY.replace("action: allow", "action: ok"))
        sd.config_file.write_text(good)
        ev = hup(p)
        assert ev["event"] == "config_reload_failed", ev
        assert "tiers[0].rules[0].action" in " ".join(ev["errors"])
        (sd.directory / "policy.yaml").write_text(_POLICY)

        # a removed section that may go (logging: back to defaults) is applied
        sd.write(logging="")
        ev = hup(p)
        assert ev["event"] == "config_reloaded" and ev["generation"] == 3, ev
        assert ev["changed"] == ["logging"]

        # the listen address cannot change live: reported, the old port keeps serving
        sd.write(logging="", listen="listen: {host: 127.0.0.1, port: 1}")
        ev = hup(p)
        assert ev["event"] == "config_reloaded" and ev["restart_required"] == ["listen.port"]
        assert count(p, "config_restart_required") == 1
        assert connect(sd, port) == sd.role
        traffic.progress()
    assert p.proc.poll() is None
    assert generation(admin) == 4
    _, body = http_get(admin, "/metrics")
    assert metric(body, "veilgate_config_reloads_total", '{result="failed"}') == 4
    assert metric(body, "veilgate_config_reloads_total", '{result="applied"}') == 3


def test_reload_rotates_the_audit_key_and_reports_audit_restart_keys(
    sd: ServeDir, tmp_path: Path
) -> None:
    (sd.directory / "k1.key").write_text("k1-" + "a" * 30)
    (sd.directory / "k2.key").write_text("k2-" + "b" * 30)
    sd.extra = "audit: {dir: audit, key: {id: k1, file: k1.key}}\n"
    sd.write()
    p, port, admin = sd.start()
    try:
        with Traffic(sd, port) as traffic:
            sd.extra = (
                "audit: {dir: audit, key: {id: k2, file: k2.key}, "
                "old_keys: [{id: k1, file: k1.key}]}\n"
            )
            sd.write()
            ev = hup(p)
            assert ev["event"] == "config_reloaded" and ev["restart_required"] == [], ev
            rotated = wait_for(
                lambda: [e for e in p.events() if e.get("event") == "audit_key_rotated"],
                what="audit_key_rotated",
            )
            assert rotated[0]["key_id"] == "k2" and rotated[0]["old_key_id"] == "k1"
            traffic.progress()
            # another directory needs a restart; the recorder keeps writing where it was
            sd.extra = sd.extra.replace("dir: audit", "dir: audit2")
            sd.write()
            ev = hup(p)
            assert ev["restart_required"] == ["audit.dir"], ev
            traffic.progress()
            # the audit section removed (a truncated file): refused, recording goes on
            sd.extra = ""
            sd.write()
            ev = hup(p)
            assert ev["event"] == "config_reload_failed"
            assert "never turns the session recording off" in ev["errors"][0]
            traffic.progress()
        assert p.proc.poll() is None
        assert generation(admin) == 3
    finally:
        p.stop()
