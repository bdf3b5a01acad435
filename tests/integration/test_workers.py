"""``veilgate serve --workers 2``: two gateway processes behind one port (SO_REUSEPORT) and a
supervisor, against the real test cluster with psycopg and asyncpg.

Which worker the kernel gives a connection to is not ours to choose: every test makes enough
connections that both workers get some (checked through the per-worker ``/metrics`` samples,
never assumed), and a CancelRequest travels on a new connection, so with enough cancels some
reach the worker that does not own the session and must be passed on.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.reload_support import ServeDir, serve_dir, wait_for
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
    http_get,
)

pytestmark = pytest.mark.pg

CONNECTIONS = 16
"""Connections per check: both workers get one with probability 1 - 2**-15."""


def samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """``worker -> value`` for the samples of ``name`` whose labels include ``labels``."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(found.get(k) == v for k, v in labels.items()) and "worker" in found:
            out[found["worker"]] = out.get(found["worker"], 0.0) + float(m.group(2))
    return out


def scrape(admin: int) -> str:
    status, text = http_get(admin, "/metrics")
    assert status == 200, text
    return text


class WorkersProcess(ServeProcess):
    """``veilgate serve --config FILE`` plus extra arguments (``--workers 2``)."""

    def __init__(self, config_file: Path, env: dict[str, str], *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "veilgate", "serve", "--config", str(config_file), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def stop(self) -> None:
        pids = self.worker_pids()
        super().stop()
        for pid in pids:  # the supervisor was SIGKILLed: PDEATHSIG drains its workers
            deadline = time.monotonic() + 20
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        """The current pid of each worker (from the ``worker_started`` events)."""
        pids: dict[int, int] = {}
        for e in self.events():
            if e.get("event") == "worker_started":
                pids[int(e["worker"])] = int(e["pid"])
        return [pids[k] for k in sorted(pids)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent has not reaped it yet)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def sd(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> ServeDir:  # noqa: F811
    sd = serve_dir(cluster, tmp_path_factory.mktemp("workers"), "workers")
    sd.write(server="server: {workers: 2}")
    return sd


@pytest.fixture
def served(sd: ServeDir) -> Iterator[tuple[WorkersProcess, int, int]]:
    sd.write(server="server: {workers: 2}")
    p = WorkersProcess(sd.config_file, sd.env)
    try:
        ready = p.wait_event("ready", timeout=90)
        assert ready["workers"] == 2 and len(ready["pids"]) == 2, ready
        yield p, int(ready["port"]), int(ready["admin_port"])
    finally:
        p.stop()


def query(sd: ServeDir, port: int, sql: str = "select 1", token: str | None = None) -> Any:
    import psycopg

    with psycopg.connect(sd.dsn(port, token), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def test_connections_reach_both_workers_and_metrics_merge(
    sd: ServeDir, served: tuple[WorkersProcess, int, int]
) -> None:
    _p, port, admin = served
    before = samples(scrape(admin), "veilgate_client_connections_total")
    pids = set()
    for _ in range(CONNECTIONS):
        pids.add(query(sd, port, "select pg_backend_pid()"))
    assert len(pids) == CONNECTIONS  # each a real upstream session
    text = scrape(admin)
    after = samples(text, "veilgate_client_connections_total")
    served_by = {w: after.get(w, 0) - before.get(w, 0) for w in ("0", "1")}
    assert served_by["0"] > 0 and served_by["1"] > 0, served_by
    assert sum(served_by.values()) == CONNECTIONS, served_by
    # one HELP/TYPE per family, the supervisor's own families, every worker up
    assert text.count("# TYPE veilgate_client_connections_total ") == 1
    assert samples(text, "veilgate_worker_up") == {"0": 1.0, "1": 1.0}
    assert "veilgate_workers 2" in text.splitlines()
    status, body = http_get(admin, "/healthz")
    assert status == 200 and '"workers"' in body, body
    status, body = http_get(admin, "/readyz")
    assert status in (200, 503), body  # readiness checks are each worker's; answered merged


def test_cancel_reaches_the_owning_worker(
    sd: ServeDir, served: tuple[WorkersProcess, int, int]
) -> None:
    import psycopg

    _p, port, admin = served
    rounds = 8
    for i in range(rounds):
        with psycopg.connect(sd.dsn(port), autocommit=True) as conn:
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
            timer.join()
            assert time.monotonic() - t0 < 15, f"round {i}: the cancel took too long"
            assert conn.execute("select 7").fetchone() == (7,)  # the session goes on
    asyncio.run(_asyncpg_cancels(sd, port, rounds))
    text = scrape(admin)
    forwarded = sum(samples(text, "veilgate_cancel_requests_total", outcome="forwarded").values())
    to_worker = sum(samples(text, "veilgate_cancel_requests_total", outcome="to_worker").values())
    from_worker = samples(text, "veilgate_cancel_requests_total", outcome="from_worker")
    assert forwarded == 2 * rounds, text
    # with 16 cancels on random workers, some went to the other worker (p = 1 - 2**-16)
    assert to_worker >= 1 and to_worker == sum(from_worker.values()), text


async def _asyncpg_cancels(sd: ServeDir, port: int, rounds: int) -> None:
    import asyncpg

    for _ in range(rounds):
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="agent",
            password=sd.token,
            database="app",
            ssl=sd.client_ssl(),
            timeout=10,
        )
        try:
            # asyncpg's own timeout sends a CancelRequest and waits for the query to end
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=0.5)
            async with asyncio.timeout(10):
                assert await conn.fetchval("select 8") == 8
            assert time.monotonic() - t0 < 15, "the cancel did not end pg_sleep"
        finally:
            await conn.close()


def test_sighup_reaches_every_worker(sd: ServeDir, served: tuple[WorkersProcess, int, int]) -> None:
    import psycopg

    p, port, admin = served
    new_token = "vg-workers-new-token-" + os.urandom(8).hex()
    with pytest.raises(psycopg.OperationalError):
        query(sd, port, token=new_token)
    gens = samples(scrape(admin), "veilgate_config_generation")
    assert gens == {"0": 1.0, "1": 1.0}
    old_tokens = list(sd.tokens)
    sd.tokens = [*old_tokens, ("agent-new", new_token)]
    try:
        sd.write(server="server: {workers: 2}")
        p.proc.send_signal(signal.SIGHUP)
        ev = p.wait_event("workers_reloaded", timeout=60)
        assert ev["ok"] is True, ev
        before = samples(scrape(admin), "veilgate_client_connections_total")
        for _ in range(CONNECTIONS):  # the new token works on connections to each worker
            assert query(sd, port, "select 5", token=new_token) == 5
        text = scrape(admin)
        after = samples(text, "veilgate_client_connections_total")
        assert all(after[w] > before.get(w, 0) for w in ("0", "1")), (before, after)
        assert samples(text, "veilgate_config_generation") == {"0": 2.0, "1": 2.0}
    finally:
        sd.tokens = old_tokens
        sd.write(server="server: {workers: 2}")


def test_killed_worker_is_replaced_and_others_keep_running(
    sd: ServeDir, served: tuple[WorkersProcess, int, int]
) -> None:
    import psycopg

    p, port, admin = served
    conns = [psycopg.connect(sd.dsn(port), autocommit=True) for _ in range(CONNECTIONS)]
    try:
        active = samples(scrape(admin), "veilgate_client_connections_active")
        assert active.get("0", 0) > 0 and active.get("1", 0) > 0, active
        victim = p.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim), what="the killed worker to go")
        survived = 0
        for c in conns:
            try:
                assert c.execute("select 3").fetchone() == (3,)
                survived += 1
            except psycopg.OperationalError:
                pass
        # exactly the other worker's sessions go on
        assert survived == active["1"], (survived, active)
        wait_for(
            lambda: len(p.worker_pids()) == 2 and p.worker_pids()[0] != victim,
            timeout=60,
            what="worker 0 restarted",
        )
        exited = [e for e in p.events() if e.get("event") == "worker_exited"]
        assert exited and exited[-1]["worker"] == 0 and exited[-1]["signal"] == "SIGKILL"

        def both_up() -> bool:
            text = scrape(admin)
            return samples(text, "veilgate_worker_up") == {"0": 1.0, "1": 1.0}

        wait_for(both_up, timeout=60, what="both workers up")
        text = scrape(admin)
        assert samples(text, "veilgate_worker_restarts_total") == {"0": 1.0, "1": 0.0}
        for _ in range(CONNECTIONS):
            assert query(sd, port) == 1
        served_now = samples(scrape(admin), "veilgate_client_connections_total")
        assert served_now.get("0", 0) > 0, served_now  # the new worker 0 serves too
    finally:
        for c in conns:
            c.close()


def test_sigterm_drains_every_worker(sd: ServeDir, tmp_path: Path) -> None:
    import psycopg

    sd.write(server="server: {workers: 1}")  # the command line wins over the file
    p = WorkersProcess(sd.config_file, sd.env, "--workers", "2")
    try:
        ready = p.wait_event("ready", timeout=90)
        port, admin = int(ready["port"]), int(ready["admin_port"])
        assert ready["workers"] == 2
        pids = p.worker_pids()
        conns = [psycopg.connect(sd.dsn(port), autocommit=True) for _ in range(CONNECTIONS)]
        active = samples(scrape(admin), "veilgate_client_connections_active")
        assert active.get("0", 0) > 0 and active.get("1", 0) > 0, active
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(60) == 0, "\n".join(p.lines)
        for c in conns:  # idle sessions were ended by their worker's drain (57P01)
            with pytest.raises(psycopg.OperationalError):
                c.execute("select 1")
            c.close()
        drained = [e for e in p.events() if e.get("event") == "worker_stopped"]
        assert sorted(e["worker"] for e in drained) == [0, 1]
        assert all(e["code"] == 0 for e in drained), drained
        assert not any(alive(pid) for pid in pids)
        with pytest.raises(psycopg.OperationalError):
            query(sd, port)
    finally:
        p.stop()
        sd.write(server="server: {workers: 2}")


def test_systemd_notifications_and_admin_console_span_the_workers(
    sd: ServeDir, tmp_path: Path
) -> None:
    """Under systemd the supervisor speaks for all workers (READY=1 once every worker is up,
    RELOADING=1 then READY=1 once every worker reloaded, STOPPING=1); the admin console behind
    it lists the sessions of both workers and terminates one on whichever worker has it."""
    import json
    import socket
    import urllib.request

    import psycopg

    notify = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify)
    ns.settimeout(60)
    admin_token = "admin-" + os.urandom(12).hex()
    (sd.directory / "admin-token").write_text(admin_token + "\n")
    sd.write(
        server="server: {workers: 2}",
        admin="admin: {host: 127.0.0.1, port: 0, token_file: admin-token}",
    )
    env = {**sd.env, "NOTIFY_SOCKET": notify}

    def receive(key: str) -> dict[str, str]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = ns.recv(4096).decode()
            fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            if key in fields:
                return fields
        raise AssertionError(f"no {key} notification")

    def console(method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin}{path}",
            method=method,
            data=b"" if method == "POST" else None,
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                return int(r.status), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), json.loads(e.read())

    p = WorkersProcess(sd.config_file, env)
    conns: list[Any] = []
    try:
        ready = receive("READY")
        ev = p.wait_event("ready", timeout=30)
        port, admin = int(ev["port"]), int(ev["admin_port"])
        assert f":{port}" in ready["STATUS"] and "2/2 workers" in ready["STATUS"], ready
        assert sum(1 for e in p.events() if e.get("event") == "worker_ready") == 2
        conns = [psycopg.connect(sd.dsn(port), autocommit=True) for _ in range(CONNECTIONS)]
        status, body = console("GET", "/v1/admin/sessions")
        assert status == 200, body
        assert body["count"] == CONNECTIONS
        by_worker = {s["worker"] for s in body["sessions"]}
        assert by_worker == {0, 1}, body
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/admin/sessions")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)  # noqa: S310
        assert exc.value.code == 401  # each worker authorises; no token, no list
        # terminate one session of worker 1 through the supervisor
        victim = next(s for s in body["sessions"] if s["worker"] == 1)
        status, out = console("POST", f"/v1/admin/sessions/{victim['id']}/terminate")
        assert status == 200 and out["result"] == "terminated", out
        status, after = console("GET", "/v1/admin/sessions")
        assert after["count"] == CONNECTIONS - 1
        assert victim["id"] not in {s["id"] for s in after["sessions"]}
        # reload through systemd's protocol
        p.proc.send_signal(signal.SIGHUP)
        assert receive("RELOADING")["RELOADING"] == "1"
        again = receive("READY")
        assert "generation 2" in again["STATUS"] and "last reload failed" not in again["STATUS"]
        p.proc.send_signal(signal.SIGTERM)
        assert receive("STOPPING")["STOPPING"] == "1"
        assert p.proc.wait(60) == 0
    finally:
        for c in conns:
            c.close()
        p.stop()
        ns.close()
        sd.write(server="server: {workers: 2}")


def test_recording_with_two_workers_verifies_and_reads_back(sd: ServeDir) -> None:
    """Each worker records into its own ``worker-<k>`` directory (its own writer lock and hash
    chain); ``veilgate sessions verify --config`` checks every worker's chain, tampering in one
    fails it, and the readers (``sessions list --scan``, ``sessions show``) see both."""
    import json
    import secrets as _secrets

    import psycopg

    from veilgate.audit.segments import SegmentDir

    key = sd.directory / "audit.key"
    key.write_text(_secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    sd.write(
        server="server: {workers: 2}",
        logging="logging: {level: info, format: json}\n"
        "audit: {dir: recording, key: {id: k1, file: audit.key}, flush_interval_ms: 20}\n"
        "state: {path: state.db}",
    )
    p = WorkersProcess(sd.config_file, sd.env)
    marker = "workers_marker_" + _secrets.token_hex(4)
    try:
        ready = p.wait_event("ready", timeout=90)
        port, admin = int(ready["port"]), int(ready["admin_port"])
        for i in range(CONNECTIONS):
            with psycopg.connect(sd.dsn(port), autocommit=True) as conn:
                conn.execute(f"select {i} as {marker}")
        served = samples(scrape(admin), "veilgate_client_connections_total")
        assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(60) == 0
    finally:
        p.stop()
        sd.write(server="server: {workers: 2}")
    rec = sd.directory / "recording"
    assert sorted(d.name for d in rec.iterdir() if d.is_dir()) == ["worker-0", "worker-1"]

    def vg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "veilgate", *args],
            env=sd.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    config = sd.directory / "recorded.yaml"
    config.write_text(
        sd.text(
            server="server: {workers: 2}",
            logging="audit: {dir: recording, key: {id: k1, file: audit.key}}\n"
            "state: {path: state.db}",
        )
    )
    ok = vg("sessions", "verify", "--config", str(config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "worker-0" in ok.stdout and "worker-1" in ok.stdout, ok.stdout
    listed = vg("sessions", "list", "--config", str(config), "--scan", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    rows = rows if isinstance(rows, list) else rows.get("sessions", [])
    assert len(rows) >= CONNECTIONS, rows
    # the session index (one SQLite file both workers wrote into) has every session too
    indexed = vg("sessions", "list", "--config", str(config), "--json")
    assert indexed.returncode == 0, indexed.stderr
    irows = json.loads(indexed.stdout)
    irows = irows if isinstance(irows, list) else irows.get("sessions", [])
    assert {r["sid"] for r in irows} >= {r["sid"] for r in rows}, (irows, rows)
    # tamper with one statement in worker 1's chain: verify must fail
    segs = [s for _, s in SegmentDir(rec / "worker-1").segments()]
    assert segs, list((rec / "worker-1").iterdir())
    text = segs[0].read_text()
    assert marker in text
    segs[0].write_text(text.replace(marker, marker.upper(), 1))
    bad = vg("sessions", "verify", "--config", str(config))
    assert bad.returncode == 1, bad.stdout
    assert "FAILED" in bad.stdout and "worker-1" in bad.stdout


def test_handover_socket_needs_one_worker(sd: ServeDir) -> None:
    """The zero-downtime hand-over passes one process's sockets: with --workers 2 it is refused
    at start with a clear message (exit 2); --workers 1 is the single process as before."""
    listen = "listen: {host: 127.0.0.1, port: 0, handover_socket: handover.sock}"
    sd.write(server="server: {workers: 2}", listen=listen)
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "veilgate", "serve", "--config", str(sd.config_file)],
            env=sd.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr
        assert "handover_socket works with one worker only" in refused.stderr
        p = WorkersProcess(sd.config_file, sd.env, "--workers", "1")
        try:
            ready = p.wait_event("ready", timeout=60)
            assert "workers" not in ready  # no supervisor: today's single process
            assert not any(e.get("event") == "worker_started" for e in p.events())
            assert query(sd, int(ready["port"]), "select 11") == 11
        finally:
            p.stop()
    finally:
        sd.write(server="server: {workers: 2}")


def test_second_supervisor_on_the_same_port_is_refused(
    sd: ServeDir, served: tuple[WorkersProcess, int, int]
) -> None:
    """SO_REUSEPORT would let a second ``serve --workers`` of the same user join the port and
    take half its connections: it is refused at start (exit 1, ``start_failed``)."""
    _p, port, _admin = served
    other = sd.directory / "second.yaml"
    other.write_text(
        sd.text(server="server: {workers: 2}", listen=f"listen: {{host: 127.0.0.1, port: {port}}}")
    )
    second = subprocess.run(
        [sys.executable, "-m", "veilgate", "serve", "--config", str(other)],
        env=sd.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1, second.stderr
    assert "start_failed" in second.stderr and "worker_started" not in second.stderr
    assert query(sd, port, "select 12") == 12  # the first one serves on
