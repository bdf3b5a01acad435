"""``/livez``, ``/readyz`` and ``veilgate config check --strict`` against a real ``veilgate serve``:
readiness fails for each cause (upstream down or refusing the login, identity keys unavailable,
masking key missing, certificate expiring, audit not writable, draining), names the failing
check, and recovers when the cause is gone."""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.reload_support import ServeDir, Traffic, digest, serve_dir, wait_for
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
    http_get,
)

from veilgate.identity.devidp import SigningKeyPair, public_jwk

pytestmark = pytest.mark.pg

FAST = "health: {upstream_interval_s: 0.3}\n"


def ready(admin: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(admin, "/readyz")
    return status, json.loads(body)


def wait_ready(admin: int) -> dict[str, Any]:
    last: list[Any] = []

    def is_ready() -> dict[str, Any] | None:
        status, body = ready(admin)
        last[:] = [body]
        return body if status == 200 else None

    try:
        return wait_for(is_ready, 30, "ready")
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}") from None


def wait_failing(admin: int, name: str) -> dict[str, Any]:
    def failing() -> dict[str, Any] | None:
        status, body = ready(admin)
        return body if status == 503 and name in body["failing"] else None

    return wait_for(failing, 30, f"{name} failing")


def hup_and_wait(p: ServeProcess) -> None:
    before = sum(1 for e in p.events() if e.get("event", "").startswith("config_reload"))
    p.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: (
            sum(1 for e in p.events() if e.get("event", "").startswith("config_reload")) > before
        ),
        what="reload",
    )


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    s = serve_dir(cluster, tmp_path, "health")
    s.extra = FAST
    s.write()
    return s


@pytest.fixture
def served(sd: ServeDir) -> Iterator[tuple[ServeProcess, int, int]]:
    p, port, admin = sd.start()
    try:
        yield p, port, admin
    finally:
        p.stop()


def test_ready_livez_and_upstream_failures_recover(
    cluster: Any,  # noqa: F811
    sd: ServeDir,
    served: tuple[ServeProcess, int, int],
) -> None:
    p, port, admin = served
    body = wait_ready(admin)
    assert body["failing"] == [] and body["checks"]["upstream:app"] == {"ok": True}
    assert body["checks"]["tls_certificate"]["ok"]
    assert http_get(admin, "/livez") == (200, '{"status":"alive"}\n')
    assert json.loads(http_get(admin, "/healthz")[1])["status"] == "ok"

    with Traffic(sd, port) as traffic:
        # the upstream password is wrong: the login is refused
        good = sd.password_file.read_text()
        sd.password_file.write_text("not-the-password\n")
        body = wait_failing(admin, "upstream:app")
        assert body["failing"] == ["upstream:app"]
        assert "could not authenticate" in body["checks"]["upstream:app"]["detail"], body
        assert "not-the-password" not in json.dumps(body)
        traffic.progress()  # running sessions are not affected
        sd.password_file.write_text(good)
        wait_ready(admin)

        # the upstream is unreachable (the target now points at a closed port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        targets = sd.text().split("targets:\n", 1)[1].split("shutdown:")[0]
        moved = targets.replace(f"port: {cluster.port}", f"port: {closed_port}")
        sd.write(targets="targets:\n" + moved.rstrip())
        hup_and_wait(p)
        body = wait_failing(admin, "upstream:app")
        assert f"127.0.0.1:{closed_port}" in body["checks"]["upstream:app"]["detail"], body
        sd.write()
        hup_and_wait(p)
        wait_ready(admin)

        # the certificate expires within the configured window
        sd.extra = "health: {upstream_interval_s: 0.3, certificate_min_days: 3650}\n"
        sd.write()
        hup_and_wait(p)
        body = wait_failing(admin, "tls_certificate")
        assert "within 3650 days" in body["checks"]["tls_certificate"]["detail"]
        sd.extra = FAST
        sd.write()
        hup_and_wait(p)
        wait_ready(admin)
        traffic.progress()

    # draining: not ready (and /healthz 503), still alive while it drains
    busy = threading.Thread(
        target=lambda: subprocess.run(
            ["psql", "-X", sd.dsn(port), "-c", "select pg_sleep(2)"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    )
    busy.start()
    wait_for(
        lambda: (
            cluster.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'select pg_sleep(2)'"
            ).strip()
            == "1"
        ),
        what="the statement running",
    )
    p.proc.send_signal(signal.SIGTERM)
    body = wait_failing(admin, "draining")
    assert http_get(admin, "/livez")[0] == 200
    busy.join(30)
    assert p.proc.wait(20) == 0


def test_identity_keys_masking_key_and_audit_failures_recover(sd: ServeDir, tmp_path: Path) -> None:
    # an OIDC provider whose JWKS endpoint is not up yet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        idp_port = s.getsockname()[1]
    key_file = sd.directory / "mask.key"
    key_file.write_text("k" * 32)
    (sd.directory / "audit.key").write_text("a" * 32)
    (sd.directory / "policy.yaml").write_text(
        "version: 1\n"
        "tiers:\n"
        "  - {name: agents, match: {subjects: [agent-a]}, default: allow}\n"
        "masking:\n"
        "  apply_to: [agents]\n"
        f"  hash_key_file: {key_file}\n"
        '  columns: [{name: "email", op: hash}]\n'
    )
    sd.extra = FAST + (
        "policy: {file: policy.yaml}\n"
        "audit: {dir: audit, key: {id: k1, file: audit.key}, flush_interval_ms: 20}\n"
    )
    sd.write(
        auth="auth:\n  static_tokens:\n"
        f"    - {{name: agent-a, sha256: {digest(sd.token)}}}\n"
        "  oidc:\n"
        "    providers:\n"
        "      - {name: local, type: oidc, issuer: 'http://127.0.0.1/issuer', audiences: [vg],\n"
        f"         jwks_uri: 'http://127.0.0.1:{idp_port}/jwks', allow_insecure_http: true}}\n"
        "    tiers:\n"
        "      - {tier: agents, any_roles: [db]}"
    )
    p, port, admin = sd.start()
    try:
        body = wait_failing(admin, "identity:local")
        assert "no usable signing keys" in body["checks"]["identity:local"]["detail"]
        # the JWKS endpoint comes up: the next check refreshes the keys
        jwks = json.dumps({"keys": [public_jwk(SigningKeyPair.generate().private, "k1")]})

        class JWKS(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(jwks.encode())

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", idp_port), JWKS)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            body = wait_ready(admin)
            assert body["checks"]["identity:local"] == {"ok": True}
            assert body["checks"]["masking_key"] == {"ok": True}
            assert body["checks"]["audit"] == {"ok": True}
        finally:
            server.shutdown()
            server.server_close()

        with Traffic(sd, port) as traffic:
            # the masking key is gone
            key_file.unlink()
            body = wait_failing(admin, "masking_key")
            assert "hash" in body["checks"]["masking_key"]["detail"].lower()
            key_file.write_text("k" * 32)
            wait_ready(admin)
            traffic.progress()

        # the audit directory is replaced by a file: the next segment cannot be written (and
        # with on_failure: block, statements are refused meanwhile)
        audit = sd.directory / "audit"
        shutil.move(audit, sd.directory / "audit.moved")
        audit.write_text("not a directory")
        hup_and_wait(p)  # SIGHUP starts a new segment
        body = wait_failing(admin, "audit")
        assert http_get(admin, "/healthz")[0] == 503
        audit.unlink()
        shutil.move(sd.directory / "audit.moved", audit)
        hup_and_wait(p)
        # the recorder retries when it has records to write: a new session gives it some
        subprocess.run(
            ["psql", "-X", sd.dsn(port), "-c", "select 1"], capture_output=True, timeout=60
        )
        wait_ready(admin)
    finally:
        p.stop()


def test_config_check_strict(cluster: Any, sd: ServeDir) -> None:  # noqa: F811
    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "veilgate", "config", "check", "--strict", str(sd.config_file)],
            env=sd.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    out = check()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   upstream:app" in out.stdout and "ok   tls_certificate" in out.stdout
    good = sd.password_file.read_text()
    sd.password_file.write_text("wrong\n")
    sd.extra = "health: {certificate_min_days: 3650}\n"
    sd.write()
    try:
        out = check()
    finally:
        sd.password_file.write_text(good)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL upstream:app: upstream_error: could not authenticate" in out.stdout, out.stdout
    assert "FAIL tls_certificate" in out.stdout
    assert "not ready: upstream:app, tls_certificate" in out.stderr
    # the plain check (no --strict) does not connect anywhere
    plain = subprocess.run(
        [sys.executable, "-m", "veilgate", "config", "check", str(sd.config_file)],
        env=sd.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode == 0 and "upstream" not in plain.stdout
