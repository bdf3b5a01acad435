"""The admin console (``/v1/admin/...``) and ``veilgate admin`` against a ``veilgate serve``
process, with real psycopg sessions: authentication refusals, the session list, each action."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.reload_support import ServeDir, digest, serve_dir, wait_for
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
)

pytestmark = pytest.mark.pg

ADMIN_TOKEN = "vg-admin-" + "x" * 32
POLICY = """\
version: 1
tiers:
  - name: agents
    match: {roles: [db.agent]}
    default: allow
end: true
"""


def request(admin: int, method: str, path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}",
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}"} if token is not None else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    s = serve_dir(cluster, tmp_path, "console")
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN + "\n")
    s.write(
        admin="admin: {host: 127.0.0.1, port: 0, token_file: admin-token}",
        auth=(
            "auth:\n  static_tokens:\n"
            f"    - {{name: agent-a, sha256: {digest(s.token)}, roles: [db.agent]}}"
        ),
        logging="logging: {level: info, format: json}\npolicy: {file: policy.yaml}",
    )
    return s


@pytest.fixture
def served(sd: ServeDir) -> Iterator[tuple[ServeProcess, int, int]]:
    p, port, admin = sd.start()
    try:
        yield p, port, admin
    finally:
        p.stop()


def connect(sd: ServeDir, port: int, **kw: Any) -> Any:
    import psycopg

    return psycopg.connect(sd.dsn(port), autocommit=True, **kw)


def cli(sd: ServeDir, admin: int, *args: str, token_file: Path | None = None) -> Any:
    from tests.integration.test_serve import subprocess_env

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "veilgate",
            "admin",
            "--url",
            f"http://127.0.0.1:{admin}",
            "--token-file",
            str(token_file or sd.directory / "admin-token"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=False,
    )


ENDPOINTS = [
    ("GET", "/v1/admin/sessions"),
    ("GET", "/v1/admin/sessions/0011223344556677"),
    ("POST", "/v1/admin/sessions/0011223344556677/cancel"),
    ("POST", "/v1/admin/sessions/0011223344556677/terminate"),
    ("GET", "/v1/admin/targets"),
    ("POST", "/v1/admin/targets/app/pause"),
    ("POST", "/v1/admin/targets/app/resume"),
    ("GET", "/v1/admin/config"),
    ("POST", "/v1/admin/reload"),
    ("POST", "/v1/admin/drain"),
]


def test_every_endpoint_refuses_missing_and_wrong_tokens(
    sd: ServeDir, served: tuple[ServeProcess, int, int]
) -> None:
    p, _port, admin = served
    for method, path in ENDPOINTS:
        for token in (None, "", "wrong-" + ADMIN_TOKEN, ADMIN_TOKEN[:-1], sd.token):
            status, body = request(admin, method, path, token)
            assert status == 401, (method, path, token, status, body)
            assert body["error"] == "unauthorized"
    assert p.proc.poll() is None  # the drain was refused too
    assert request(admin, "GET", "/v1/admin/targets")[0] == 200
    # the token is never in the log, not even a wrong one
    log = "\n".join(p.lines)
    assert ADMIN_TOKEN not in log and ADMIN_TOKEN[:-1] not in log and sd.token not in log
    assert any(e.get("event") == "admin_auth_failed" for e in p.events())


def test_console_off_without_token_or_roles(sd: ServeDir) -> None:
    sd.write(admin="admin: {host: 127.0.0.1, port: 0}")
    p, _port, admin = sd.start()
    try:
        for method, path in ENDPOINTS:
            status, body = request(admin, method, path)
            assert (status, body["error"]) == (403, "console_disabled"), (method, path)
        assert p.proc.poll() is None
    finally:
        p.stop()


def test_token_file_rotation(sd: ServeDir, served: tuple[ServeProcess, int, int]) -> None:
    _p, _port, admin = served
    assert request(admin, "GET", "/v1/admin/config")[0] == 200
    new = "vg-admin-rotated-" + "y" * 24
    tmp = sd.directory / "admin-token.new"
    tmp.write_text(new + "\n")
    tmp.replace(sd.directory / "admin-token")
    assert request(admin, "GET", "/v1/admin/config")[0] == 401
    assert request(admin, "GET", "/v1/admin/config", new)[0] == 200


def test_sessions_and_targets(sd: ServeDir, served: tuple[ServeProcess, int, int]) -> None:
    _p, port, admin = served
    with connect(sd, port) as conn:
        backend = conn.execute("select pg_backend_pid()").fetchone()[0]
        conn.execute("select 1 from pg_class limit 1").fetchall()
        status, body = request(admin, "GET", "/v1/admin/sessions")
        assert status == 200 and body["count"] == 1
        (s,) = body["sessions"]
        assert s["principal"] == "static:agent-a" and s["subject"] == "agent-a"
        assert (s["tier"], s["target"], s["state"]) == ("agents", "app", "idle")
        assert s["client"].startswith("127.0.0.1:")
        assert s["upstream_pid"] == backend
        assert s["login_role"] == sd.role
        assert s["statement_fingerprint"]
        assert s["age_s"] > 0 and s["bytes_from_client"] > 0 and s["bytes_from_server"] > 0
        assert request(admin, "GET", f"/v1/admin/sessions/{s['id']}")[1]["id"] == s["id"]
        assert request(admin, "GET", "/v1/admin/sessions/ffffffffffffffff")[0] == 404
        status, body = request(admin, "GET", "/v1/admin/targets")
        (t,) = body["targets"]
        assert (t["name"], t["sessions"], t["upstream_connections"]) == ("app", 1, 1)
        assert t["sessions_by_tier"] == {"agents": 1} and t["paused"] is False
        assert (t["pool_size"], t["pool_idle"]) == (0, 0)  # no pool configured
        out = cli(sd, admin, "sessions")
        assert out.returncode == 0, out.stderr
        assert s["id"] in out.stdout and "static:agent-a" in out.stdout
    wait_for(lambda: request(admin, "GET", "/v1/admin/sessions")[1]["count"] == 0, what="end")


def test_cancel_a_running_statement(sd: ServeDir, served: tuple[ServeProcess, int, int]) -> None:
    import psycopg

    _p, port, admin = served
    errors: list[BaseException] = []
    with connect(sd, port) as conn:

        def sleep() -> None:
            try:
                conn.execute("select pg_sleep(60)")
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=sleep)
        t.start()
        session = wait_for(
            lambda: [
                s
                for s in request(admin, "GET", "/v1/admin/sessions")[1]["sessions"]
                if s["state"] == "active"
            ],
            what="an active session",
        )[0]
        idle = cli(sd, admin, "cancel", session["id"])
        assert idle.returncode == 0, idle.stderr
        assert "result: cancelled" in idle.stdout
        t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled)
        # the session goes on
        assert conn.execute("select 7").fetchone() == (7,)
        status, body = request(admin, "POST", f"/v1/admin/sessions/{session['id']}/cancel")
        assert (status, body["result"]) == (200, "idle")


def test_terminate_a_session(sd: ServeDir, served: tuple[ServeProcess, int, int]) -> None:
    import psycopg

    p, port, admin = served
    with connect(sd, port) as conn, connect(sd, port) as other:
        (s,) = [
            s
            for s in request(admin, "GET", "/v1/admin/sessions")[1]["sessions"]
            if s["upstream_pid"] == conn.info.backend_pid
        ]
        status, body = request(admin, "POST", f"/v1/admin/sessions/{s['id']}/terminate")
        assert (status, body["result"]) == (200, "terminated")
        with pytest.raises(psycopg.OperationalError) as exc:
            conn.execute("select 1")
        assert "administrator command" in str(exc.value)
        assert other.execute("select 2").fetchone() == (2,)
    assert any(e.get("event") == "session_terminated" for e in p.events())


def test_pause_and_resume_a_target(sd: ServeDir, served: tuple[ServeProcess, int, int]) -> None:
    import psycopg

    _p, port, admin = served
    with connect(sd, port) as running:
        out = cli(sd, admin, "pause", "app")
        assert out.returncode == 0 and "paused: True" in out.stdout, out.stderr
        assert request(admin, "GET", "/v1/admin/targets")[1]["targets"][0]["paused"] is True
        results: list[Any] = []

        def new_session() -> None:
            try:
                with connect(sd, port) as c:
                    results.append(c.execute("select 'after resume'").fetchone()[0])
            except Exception as e:
                results.append(e)

        t = threading.Thread(target=new_session)
        t.start()
        wait_for(
            lambda: any(
                s["state"] == "handshake" and s["target"] == "app"
                for s in request(admin, "GET", "/v1/admin/sessions")[1]["sessions"]
            ),
            what="a waiting handshake",
        )
        time.sleep(0.5)
        assert results == []  # still waiting
        assert running.execute("select 3").fetchone() == (3,)  # running sessions go on
        out = cli(sd, admin, "resume", "app")
        assert out.returncode == 0 and "paused: False" in out.stdout, out.stderr
        t.join(30)
        assert results == ["after resume"]
        assert request(admin, "POST", "/v1/admin/targets/nope/pause")[0] == 404
    # paused past the handshake deadline: 57P03
    sd.write(
        listen="listen: {host: 127.0.0.1, port: 0, handshake_timeout_s: 2}",
        admin="admin: {host: 127.0.0.1, port: 0, token_file: admin-token}",
        auth=(
            "auth:\n  static_tokens:\n"
            f"    - {{name: agent-a, sha256: {digest(sd.token)}, roles: [db.agent]}}"
        ),
        logging="logging: {level: info, format: json}\npolicy: {file: policy.yaml}",
    )
    assert request(admin, "POST", "/v1/admin/reload")[1]["ok"] is True
    assert request(admin, "POST", "/v1/admin/targets/app/pause")[0] == 200
    with pytest.raises(psycopg.OperationalError) as exc:
        connect(sd, port)
    assert "paused by an administrator" in str(exc.value)


def test_config_reload_and_drain(sd: ServeDir, served: tuple[ServeProcess, int, int]) -> None:
    p, _port, admin = served
    status, body = request(admin, "GET", "/v1/admin/config")
    assert status == 200 and body["generation"] == 1 and body["version"]
    assert body["native_version"] == body["version"] and body["pid"] == p.proc.pid
    out = cli(sd, admin, "--json", "config")
    assert json.loads(out.stdout)["generation"] == 1
    out = cli(sd, admin, "reload")
    assert out.returncode == 0 and "generation 2" in out.stdout, out.stderr
    # a broken file: 409, the errors config check prints, generation unchanged
    good = sd.config_file.read_text()
    sd.config_file.write_text(good.replace("port: 0, token_file", "port: zero, token_file"))
    status, body = request(admin, "POST", "/v1/admin/reload")
    assert status == 409 and body["ok"] is False and body["generation"] == 2
    assert any("admin.port" in e for e in body["errors"])
    sd.config_file.write_text(good)
    out = cli(sd, admin, "drain")
    assert out.returncode == 0, out.stderr
    assert p.proc.wait(30) == 0
