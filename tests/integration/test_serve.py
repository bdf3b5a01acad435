"""``veilgate serve`` as an operator runs it, and ``python -m veilgate.demo --check``.

The first tests drive :mod:`veilgate.service` in-process against a stub gateway (lifecycle,
signals, health during drain).  The ``pg`` tests start ``python -m veilgate serve --config FILE``
as a subprocess in front of the test cluster: ready line, /healthz, psql through it, /metrics,
SIGTERM drain, config errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from veilgate import service
from veilgate.config_model import AdminConfig, GatewayConfig, ListenConfig, ShutdownConfig

REPO = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "python"), str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


async def async_http_get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, port, path)


# -- the service lifecycle against a stub gateway --------------------------------------------------


class StubGateway:
    instances: ClassVar[list[StubGateway]] = []
    recorder = None  # no session recording
    generation = 1

    def __init__(self, config: GatewayConfig, authenticator: Any) -> None:
        self.config = config
        self.calls: list[str] = []
        self.sessions = 2
        self.drain_release = asyncio.Event()
        StubGateway.instances.append(self)

    async def start(self, sock: Any = None, *, accept: bool = True) -> None:
        self.calls.append("start")

    listening_socket = None

    def pause_accepting(self) -> None:
        self.calls.append("pause")

    def resume_accepting(self) -> None:
        self.calls.append("resume")

    @property
    def port(self) -> int:
        return 15432

    def session_count(self) -> int:
        return self.sessions

    async def drain(
        self,
        timeout: float,  # noqa: ASYNC109 (the Gateway API)
        *,
        wait_for_clients: bool = False,
    ) -> None:
        self.calls.append(f"drain({timeout:g})")
        try:
            await asyncio.wait_for(self.drain_release.wait(), timeout)
        except TimeoutError:
            self.calls.append("deadline")
        self.sessions = 0

    async def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def stub_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StubGateway]]:
    module = types.ModuleType("veilgate.gateway.server")
    module.Gateway = StubGateway  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "veilgate.gateway.server", module)
    StubGateway.instances.clear()
    yield StubGateway


def stub_config(drain: float = 5.0, admin_port: int = 0) -> GatewayConfig:
    return GatewayConfig(
        listen=ListenConfig(port=0),
        admin=AdminConfig(port=admin_port),
        shutdown=ShutdownConfig(drain_timeout_s=drain),
    )


async def start_service(cfg: GatewayConfig) -> tuple[asyncio.Task[int], service.Service]:
    ready: asyncio.Future[service.Service] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        service.serve(cfg, authenticator=object(), on_ready=ready.set_result)
    )  # type: ignore[arg-type]
    svc = await asyncio.wait_for(ready, 10)
    return task, svc


@pytest.mark.asyncio
async def test_service_drains_then_exits_0(stub_gateway: type[StubGateway]) -> None:
    task, svc = await start_service(stub_config(drain=5))
    (gw,) = stub_gateway.instances
    assert svc.port == 15432 and svc.admin_port
    status, body = await async_http_get(svc.admin_port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "sessions": 2})

    svc.stop("test")
    for _ in range(100):
        if "drain(5)" in gw.calls:
            break
        await asyncio.sleep(0.01)
    status, body = await async_http_get(svc.admin_port, "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "draining"})
    assert not task.done()
    gw.drain_release.set()
    assert await asyncio.wait_for(task, 10) == 0
    assert gw.calls == ["start", "drain(5)", "close"]
    with pytest.raises(OSError):  # the admin server is closed
        socket.create_connection(("127.0.0.1", svc.admin_port), timeout=1).close()


@pytest.mark.asyncio
async def test_second_stop_closes_at_once(stub_gateway: type[StubGateway]) -> None:
    task, svc = await start_service(stub_config(drain=60))
    (gw,) = stub_gateway.instances
    svc.stop("first")
    await asyncio.sleep(0.05)
    svc.stop("second")
    assert await asyncio.wait_for(task, 5) == 0
    assert gw.calls == ["start", "drain(60)", "close"]


@pytest.mark.asyncio
async def test_drain_deadline(stub_gateway: type[StubGateway]) -> None:
    task, svc = await start_service(stub_config(drain=0.2))
    svc.stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert stub_gateway.instances[0].calls == ["start", "drain(0.2)", "deadline", "close"]


@pytest.mark.asyncio
async def test_sigterm_and_sigint_drain(stub_gateway: type[StubGateway]) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    for sig in (signal.SIGTERM, signal.SIGINT):
        task, svc = await start_service(stub_config(drain=5))
        gw = stub_gateway.instances[-1]
        gw.drain_release.set()
        assert sig in svc._signals_installed
        os.kill(os.getpid(), sig)
        assert await asyncio.wait_for(task, 5) == 0
        assert gw.calls == ["start", "drain(5)", "close"]
    # handlers are removed again
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(
        signal.getsignal(signal.SIGTERM)
    )


@pytest.mark.asyncio
async def test_admin_port_in_use_fails_cleanly(stub_gateway: type[StubGateway]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = stub_config(admin_port=busy.getsockname()[1])
        assert await asyncio.wait_for(service.serve(cfg, authenticator=object()), 5) == 1  # type: ignore[arg-type]
    assert stub_gateway.instances[0].calls == ["start", "close"]


# -- the real thing: `python -m veilgate serve` in front of PostgreSQL -----------------------------


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The suite's ``pg_cluster`` when it exists, else a cluster of our own."""
    try:
        yield request.getfixturevalue("pg_cluster")
        return
    except pytest.FixtureLookupError:
        pass
    from veilgate.testing.cluster import TempCluster

    pg = TempCluster()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@dataclass
class ServeSetup:
    directory: Path
    config_file: Path
    token: str
    pg_password: str
    ca_file: Path
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def serve_setup(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> ServeSetup:
    from veilgate.certs import make_ca, make_cert

    role, db = "veilgate_serve", "serve_app"
    password = secrets.token_urlsafe(24)
    cluster.create_role(role, password)
    if not cluster.execute(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():  # noqa: S608
        cluster.create_database(db, owner=role)
    d = tmp_path_factory.mktemp("serve")
    ca = make_ca(d, "ca")
    make_cert(d, "gateway", ["127.0.0.1", "localhost"], ca)
    token = "vg-serve-" + secrets.token_urlsafe(24)
    digest = hashlib.sha256(token.encode()).hexdigest()
    config_file = d / "veilgate.yaml"
    config_file.write_text(
        f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{cert_file: gateway.crt, key_file: gateway.key}}
admin: {{host: 127.0.0.1, port: 0}}
auth:
  static_tokens:
    - {{name: serve-test, sha256: {digest}}}
targets:
  app:
    host: {cluster.host}
    port: {cluster.port}
    dbname: {db}
    user: {role}
    password_env: VEILGATE_SERVE_PG_PASSWORD
    tls: {{mode: verify-full, ca_file: {cluster.ca_file}}}
shutdown: {{drain_timeout_s: 10}}
logging: {{level: info, format: json}}
"""
    )
    return ServeSetup(
        d,
        config_file,
        token,
        password,
        ca.cert_file,
        subprocess_env(VEILGATE_SERVE_PG_PASSWORD=password),
    )


class ServeProcess:
    """``python -m veilgate serve`` with its JSON log lines collected."""

    def __init__(
        self, config_file: Path, env: dict[str, str], argv: list[str] | None = None
    ) -> None:
        """``argv``: the command line to run instead of ``python -m veilgate serve --config``."""
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "veilgate", "serve", "--config", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def wait_event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if ev.get("event") == name:
                    return ev
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(
                    f"veilgate exited {self.proc.returncode}:\n" + "\n".join(self.lines)
                )
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} event after {timeout}s:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def served(serve_setup: ServeSetup) -> Iterator[tuple[ServeProcess, dict[str, Any]]]:
    p = ServeProcess(serve_setup.config_file, serve_setup.env)
    try:
        ready = p.wait_event("ready")
        yield p, ready
    finally:
        p.stop()


def psql(setup: ServeSetup, port: int, sql: str) -> subprocess.CompletedProcess[str]:
    conninfo = (
        f"host=127.0.0.1 port={port} dbname=app user=agent sslmode=verify-full "
        f"sslrootcert={setup.ca_file} connect_timeout=10"
    )
    return subprocess.run(
        ["psql", "-X", "-A", "-t", conninfo, "-c", sql],
        env={**subprocess_env(), "PGPASSWORD": setup.token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m is not None, f"{name}{labels} not in /metrics"
    return float(m.group(1))


@pytest.mark.pg
def test_serve_end_to_end_and_sigterm(
    serve_setup: ServeSetup, served: tuple[ServeProcess, dict[str, Any]]
) -> None:
    import psycopg

    proc, ready = served
    port, admin_port = int(ready["port"]), int(ready["admin_port"])
    assert ready["host"] == "127.0.0.1" and port > 0 and admin_port > 0
    assert any(e.get("event") == "listening" and e.get("port") == port for e in proc.events())

    status, body = http_get(admin_port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "sessions": 0})

    out = psql(serve_setup, port, "select 40 + 2, current_user")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42|veilgate_serve"

    dsn = (
        f"host=127.0.0.1 port={port} dbname=app user=agent sslmode=verify-full "
        f"sslrootcert={serve_setup.ca_file} password={serve_setup.token}"
    )
    idle = psycopg.connect(dsn, autocommit=True)
    try:
        assert idle.execute("select 1").fetchone() == (1,)
        status, body = http_get(admin_port, "/healthz")
        assert (status, json.loads(body)["sessions"]) == (200, 1)

        status, text = http_get(admin_port, "/metrics")
        assert status == 200
        assert metric(text, "veilgate_client_connections_total") >= 2
        assert metric(text, "veilgate_bytes_received_total", '{direction="client"}') > 0
        assert metric(text, "veilgate_bytes_received_total", '{direction="server"}') > 0
        assert metric(text, "veilgate_sessions_total", '{target="app",tier=""}') >= 2

        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0
        assert time.monotonic() - t0 < 5, "an idle-only drain should finish at once"
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
    finally:
        idle.close()
    proc._reader.join(5)
    names = [e.get("event") for e in proc.events()]
    assert "draining" in names and names[-1] == "stopped", names
    log_text = "\n".join(proc.lines)
    assert serve_setup.token not in log_text
    assert serve_setup.pg_password not in log_text


@pytest.mark.pg
def test_sigterm_waits_for_running_statement(
    cluster: Any, serve_setup: ServeSetup, served: tuple[ServeProcess, dict[str, Any]]
) -> None:
    import psycopg

    proc, ready = served
    port, admin_port = int(ready["port"]), int(ready["admin_port"])
    dsn = (
        f"host=127.0.0.1 port={port} dbname=app user=agent sslmode=verify-full "
        f"sslrootcert={serve_setup.ca_file} password={serve_setup.token}"
    )
    result: list[Any] = []

    def busy() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            result.append(conn.execute("select pg_sleep(1.5), 7").fetchone())

    worker = threading.Thread(target=busy)
    worker.start()
    deadline = time.monotonic() + 20
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE 'select pg_sleep(1.5)%'"
    )
    while cluster.execute(running).strip() != "1":  # the statement is running upstream
        assert time.monotonic() < deadline, "the statement never started"
        time.sleep(0.05)
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with contextlib.suppress(OSError):  # 503 while draining (if the admin port still answers)
        assert http_get(admin_port, "/healthz", timeout=2)[0] == 503
    worker.join(15)
    assert result == [("", 7)], "the running statement completes during the drain"
    assert proc.proc.wait(15) == 0


@pytest.mark.pg
def test_serve_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen:\n  host: 127.0.0.1\n  port: lots\n")
    proc = subprocess.run(
        [sys.executable, "-m", "veilgate", "serve", "--config", str(bad)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{bad}:3: listen.port: expected an integer" in proc.stderr
    assert f"{bad}:1: targets: at least one target is required" in proc.stderr


@pytest.mark.pg
def test_demo_check(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "veilgate.demo", "--check", "--port", "0", "--admin-port", "0"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: check OK" in proc.stdout
    assert "demo: stopped" in proc.stdout
    assert (tmp_path / ".demo" / "veilgate.yaml").is_file()
    assert (tmp_path / ".demo" / "ca.crt").is_file()
    # the dev IdP's state (keys) is private; no token is stored, printed or logged
    state = tmp_path / ".demo" / "dev-idp" / "state.json"
    assert state.stat().st_mode & 0o077 == 0
    assert not (tmp_path / ".demo" / "token").exists()
    log_text = (tmp_path / ".demo" / "veilgate.log").read_text()
    assert "eyJ" not in proc.stdout + proc.stderr + log_text  # no JWT anywhere
    assert '"event":"authenticated"' in log_text and "dev-entra" in log_text


_SERVE_POLICY = """\
version: 1
tiers:
  - name: serve
    match: {subjects: [serve-test]}
    rules:
      - {id: serve-read, action: allow, message: "reads", classes: [read]}
"""


@pytest.mark.pg
def test_serve_policy_reload_on_sighup(serve_setup: ServeSetup) -> None:
    d = serve_setup.directory
    policy = d / "sighup-policy.yaml"
    policy.write_text(_SERVE_POLICY)
    config_file = d / "veilgate-policy.yaml"
    config_file.write_text(
        serve_setup.config_file.read_text()
        + "policy: {file: sighup-policy.yaml, audit_log: sighup-audit.jsonl}\n"
    )
    p = ServeProcess(config_file, serve_setup.env)
    try:
        port = int(p.wait_event("ready")["port"])
        assert psql(serve_setup, port, "select 'ok'").stdout.strip() == "ok"
        # a broken file on SIGHUP: logged, the old policy keeps serving
        policy.write_text(_SERVE_POLICY.replace("action: allow", "action: permit"))
        p.proc.send_signal(signal.SIGHUP)
        failed = p.wait_event("policy_reload_failed")
        assert failed["key"] == "tiers[0].rules[0].action"
        assert psql(serve_setup, port, "select 'still ok'").stdout.strip() == "still ok"
        # a good file on SIGHUP: reads are now denied too
        policy.write_text(_SERVE_POLICY.replace("classes: [read]", "classes: [ddl]"))
        p.proc.send_signal(signal.SIGHUP)
        p.wait_event("policy_reloaded")
        res = psql(serve_setup, port, "select 1")
        assert "veilgate policy" in res.stderr and res.returncode != 0, res.stderr
        lines = (d / "sighup-audit.jsonl").read_text().splitlines()
        assert [json.loads(x)["action"] for x in lines] == ["allow", "allow", "deny"]
    finally:
        p.stop()
