"""Zero-downtime upgrade (listen.handover_socket) and systemd's notification protocol, with real
processes: ``veilgate serve`` subprocesses, clients connecting in a loop, a unix datagram socket
standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
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


class ConnectLoop:
    """Clients that each open a new connection, run one query and close, again and again, in
    background threads (psycopg and asyncpg); every failed attempt is kept."""

    def __init__(self, sd: ServeDir, port: int, threads: int = 2) -> None:
        self.sd, self.port = sd, port
        self.attempts = 0
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._psycopg, daemon=True) for _ in range(threads)
        ] + [threading.Thread(target=self._asyncpg, daemon=True)]

    def __enter__(self) -> ConnectLoop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _count(self, error: str | None) -> None:
        with self._lock:
            self.attempts += 1
            if error is not None:
                self.failures.append(error)

    def _psycopg(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.sd.dsn(self.port), autocommit=True) as conn:
                    row = conn.execute("select 40 + 2").fetchone()
                    assert row == (42,), row
                self._count(None)
            except Exception as e:
                self._count(f"psycopg: {type(e).__name__}: {e}")

    def _asyncpg(self) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            while not self._stop.is_set():
                try:
                    conn = await asyncpg.connect(
                        host="127.0.0.1",
                        port=self.port,
                        user="agent",
                        password=self.sd.token,
                        database="app",
                        ssl=self.sd.client_ssl(),
                        timeout=10,
                    )
                    try:
                        assert await conn.fetchval("select 40 + 2") == 42
                    finally:
                        await conn.close()
                    self._count(None)
                except Exception as e:
                    self._count(f"asyncpg: {type(e).__name__}: {e}")

        asyncio.run(run())

    def progress(self, more: int = 20, timeout: float = 60) -> None:
        start = self.attempts
        wait_for(lambda: self.attempts >= start + more, timeout=timeout, what="client progress")


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    s = serve_dir(cluster, tmp_path, "upgrade")
    s.write(listen="listen: {host: 127.0.0.1, port: 0, handover_socket: handover.sock}")
    return s


def events(p: ServeProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in p.events() if e.get("event") == name]


def test_upgrade_under_load_drops_no_connection_attempt(sd: ServeDir) -> None:
    """Three generations of processes replace each other while clients connect continuously:
    every attempt succeeds, each old process exits 0 after its clients are done, and the
    listening port (and the admin port) never changes."""
    old, port, admin = sd.start()
    procs = [old]
    try:
        assert http_get(admin, "/livez")[0] == 200
        with ConnectLoop(sd, port) as clients:
            clients.progress()
            for _ in range(2):
                new = ServeProcess(sd.config_file, sd.env)
                procs.append(new)
                ready = new.wait_event("ready")
                assert (int(ready["port"]), int(ready["admin_port"])) == (port, admin)
                took = events(new, "took_over")
                assert took and took[0]["pid"] == old.proc.pid
                assert old.proc.wait(60) == 0, "\n".join(old.lines)
                assert events(old, "handover_done") and events(old, "stopped")
                clients.progress()
                # a reload of the new process under the same load
                new.proc.send_signal(signal.SIGHUP)
                wait_for(lambda n=new: bool(events(n, "config_reloaded")), what="reload")
                clients.progress()
                old = new
            assert http_get(admin, "/readyz")[0] in (200, 503)  # the admin port answers
        print(
            f"upgrade under load: {clients.attempts} connection attempts across 2 upgrades "
            f"and 2 reloads, failed: {len(clients.failures)}"
        )
        assert clients.failures == [], clients.failures[:5]
        assert clients.attempts >= 100
    finally:
        for p in procs:
            p.stop()


def test_handover_aborted_midway_keeps_the_old_process_serving(sd: ServeDir) -> None:
    """A new process that goes away after taking the sockets (before or after asking the old
    one to stop accepting) leaves the old one serving: connections that queued meanwhile are
    accepted when it resumes, and a later upgrade still works."""
    from veilgate.handover import HandoverClient

    old, port, admin = sd.start()
    try:
        with ConnectLoop(sd, port, threads=1) as clients:
            clients.progress(5)
            for stop_first in (False, True):
                client = HandoverClient.connect(str(sd.directory / "handover.sock"))
                assert client is not None
                socks = client.take()
                assert sorted(socks) == ["admin", "listen"]
                assert socks["listen"].getsockname()[1] == port
                if stop_first:
                    client.stop_old()  # the old process pauses: arrivals queue
                    time.sleep(0.5)
                client.close()  # ... and the new one is gone
                for s in socks.values():
                    s.close()
                clients.progress(10)
        assert clients.failures == [], clients.failures[:5]
        assert len(events(old, "handover_aborted")) == 2
        assert old.proc.poll() is None and http_get(admin, "/livez")[0] == 200
        nxt = ServeProcess(sd.config_file, sd.env)
        try:
            assert int(nxt.wait_event("ready")["port"]) == port
            assert old.proc.wait(60) == 0
        finally:
            nxt.stop()
    finally:
        old.stop()


# -- systemd notifications ---------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    try:
        yield path, s
    finally:
        s.close()


def receive(s: socket.socket, key: str) -> dict[str, str]:
    """Datagrams until one holds ``key``; returns that one's fields."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = s.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
        if key in fields:
            return fields
    raise AssertionError(f"no {key} notification")


def test_sd_notify_ready_reloading_stopping(
    sd: ServeDir, notify_socket: tuple[str, socket.socket]
) -> None:
    """READY=1 once both listeners are up, RELOADING=1 (with MONOTONIC_USEC) then READY=1 on
    SIGHUP, STOPPING=1 on SIGTERM, WATCHDOG=1 while it runs; written by veilgate itself."""
    path, s = notify_socket
    sd.env = {**sd.env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    p = ServeProcess(sd.config_file, sd.env)
    try:
        ready = receive(s, "READY")
        assert ready["READY"] == "1"
        port = int(p.wait_event("ready")["port"])
        assert f":{port}" in ready["STATUS"] and "generation 1" in ready["STATUS"]
        assert receive(s, "WATCHDOG")["WATCHDOG"] == "1"
        p.proc.send_signal(signal.SIGHUP)
        reloading = receive(s, "RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        again = receive(s, "READY")
        assert "generation 2" in again["STATUS"]
        p.proc.send_signal(signal.SIGTERM)
        assert receive(s, "STOPPING")["STOPPING"] == "1"
        assert p.proc.wait(30) == 0
    finally:
        p.stop()
    assert os.path.exists(path)
