"""Helpers for the reload / health / admin tests: a ``veilgate serve`` process with its own config
directory, and client sessions that keep running queries while the gateway is reconfigured."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.test_serve import ServeProcess, http_get, metric, subprocess_env

from veilgate.certs import CertPair, make_ca, make_cert


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class ServeDir:
    """A config directory: CA, gateway certificate, upstream password file, config text."""

    cluster: Any
    directory: Path
    role: str
    db: str
    ca: CertPair
    token: str
    password_file: Path
    env: dict[str, str] = field(default_factory=dict)
    extra: str = ""
    """Config text appended to the base (sections the test adds)."""
    tokens: list[tuple[str, str]] = field(default_factory=list)
    """Static tokens (name, token) in the config."""

    @property
    def config_file(self) -> Path:
        return self.directory / "veilgate.yaml"

    def text(self, **override: str) -> str:
        tokens = "\n".join(f"    - {{name: {n}, sha256: {digest(t)}}}" for n, t in self.tokens)
        sections = {
            "listen": "listen: {host: 127.0.0.1, port: 0}",
            "tls": "tls: {cert_file: gateway.crt, key_file: gateway.key}",
            "admin": "admin: {host: 127.0.0.1, port: 0}",
            "auth": f"auth:\n  static_tokens:\n{tokens}",
            "targets": (
                "targets:\n"
                "  app:\n"
                f"    host: {self.cluster.host}\n"
                f"    port: {self.cluster.port}\n"
                f"    dbname: {self.db}\n"
                f"    user: {self.role}\n"
                f"    password_file: {self.password_file.name}\n"
                f"    tls: {{mode: verify-full, ca_file: {self.cluster.ca_file}}}"
            ),
            "shutdown": "shutdown: {drain_timeout_s: 10}",
            "logging": "logging: {level: info, format: json}",
        }
        sections.update(override)
        return "\n".join(v for v in sections.values() if v) + "\n" + self.extra

    def write(self, **override: str) -> None:
        """Write the config atomically (rename), as an operator's deploy tool would."""
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(self.text(**override))
        tmp.replace(self.config_file)

    def start(self) -> tuple[ServeProcess, int, int]:
        p = ServeProcess(self.config_file, self.env)
        ready = p.wait_event("ready")
        return p, int(ready["port"]), int(ready["admin_port"])

    def dsn(self, port: int, token: str | None = None, dbname: str = "app") -> str:
        return (
            f"host=127.0.0.1 port={port} dbname={dbname} user=agent sslmode=verify-full "
            f"sslrootcert={self.ca.cert_file} password={token or self.token} connect_timeout=10"
        )

    def client_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_file))
        ctx.check_hostname = True
        return ctx


def serve_dir(cluster: Any, directory: Path, name: str) -> ServeDir:
    role, db = f"veilgate_{name}", f"{name}_app"
    password = secrets.token_urlsafe(24)
    cluster.create_role(role, password)
    if not cluster.execute(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():  # noqa: S608
        cluster.create_database(db, owner=role)
    ca = make_ca(directory, "ca")
    make_cert(directory, "gateway", ["127.0.0.1", "localhost"], ca)
    password_file = directory / "upstream-password"
    password_file.write_text(password + "\n")
    token = f"vg-{name}-" + secrets.token_urlsafe(24)
    sd = ServeDir(cluster, directory, role, db, ca, token, password_file, subprocess_env())
    sd.tokens = [("agent-a", token)]
    sd.write()
    return sd


class Traffic:
    """A psycopg and an asyncpg session running a query every few milliseconds in background
    threads, until :meth:`stop`; every failure is kept."""

    def __init__(self, sd: ServeDir, port: int, interval: float = 0.01) -> None:
        self.sd, self.port, self.interval = sd, port, interval
        self.errors: list[str] = []
        self.counts = {"psycopg": 0, "asyncpg": 0}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._psycopg, daemon=True),
            threading.Thread(target=self._asyncpg, daemon=True),
        ]
        self._started = threading.Barrier(3)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        self._started.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _psycopg(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(self.sd.dsn(self.port), autocommit=True)
        except Exception as e:
            self.errors.append(f"psycopg connect: {e}")
            self._started.wait(30)
            return
        self._started.wait(30)
        with conn:
            while not self._stop.is_set():
                try:
                    row = conn.execute("select 1 + 1").fetchone()
                    assert row == (2,), row
                    self.counts["psycopg"] += 1
                except Exception as e:
                    self.errors.append(f"psycopg: {e}")
                    return
                time.sleep(self.interval)

    def _asyncpg(self) -> None:
        asyncio.run(self._asyncpg_main())

    async def _asyncpg_main(self) -> None:
        import asyncpg

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
        except Exception as e:
            self.errors.append(f"asyncpg connect: {e}")
            self._started.wait(30)
            return
        self._started.wait(30)
        try:
            while not self._stop.is_set():
                try:
                    assert await conn.fetchval("select $1::int * 3", 7) == 21
                    self.counts["asyncpg"] += 1
                except Exception as e:
                    self.errors.append(f"asyncpg: {e}")
                    return
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def progress(self, timeout: float = 20) -> None:
        """Wait until both sessions ran another query (they survived whatever just happened)."""
        before = dict(self.counts)
        deadline = time.monotonic() + timeout
        while any(self.counts[k] <= before[k] for k in before):
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"no progress: {self.counts}"
            time.sleep(0.02)
        assert not self.errors, self.errors

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def generation(admin_port: int) -> int:
    status, text = http_get(admin_port, "/metrics")
    assert status == 200
    return int(metric(text, "veilgate_config_generation"))


def wait_for(cond: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
