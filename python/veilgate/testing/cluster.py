"""A throwaway PostgreSQL cluster with TLS and SCRAM on (tests, ``make demo``, the bench).

::

    with TempCluster() as pg:
        pg.create_role("app", "secret")
        pg.create_database("app", owner="app")
        dsn = pg.dsn(user="app", password="secret", dbname="app")   # TLS, verify-full

The cluster lives in its own temporary directory (data, unix socket, certificates, log), listens on
127.0.0.1 on a free port, and is removed by :meth:`TempCluster.stop` (also registered with
:mod:`atexit`).  When running as root, ``initdb`` and ``postgres`` run as the ``postgres`` OS user.
Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): never use it for data
you want to keep.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlencode

from veilgate.certs import CertPair, make_ca, make_cert

__all__ = [
    "ClusterError",
    "TempCluster",
    "find_pg_bindir",
    "free_port",
    "quote_ident",
    "quote_literal",
]

_SAMPLE_SQL = Path(__file__).resolve().parent.parent / "demo" / "sample.sql"
_START_ATTEMPTS = 5
_OS_USER = "postgres"


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created, started, or did not run a command."""


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier (always double-quoted)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a standard-conforming PostgreSQL string literal."""
    if "\x00" in value:
        raise ValueError("string literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_pg_bindir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``/``psql``.

    ``$VEILGATE_PG_BINDIR`` wins; then the newest ``/usr/lib/postgresql/<major>/bin`` (Debian,
    Ubuntu); then wherever ``pg_ctl`` is on ``$PATH``.
    """
    env = os.environ.get("VEILGATE_PG_BINDIR")
    if env:
        p = Path(env)
        if not (p / "initdb").is_file():
            raise ClusterError(f"VEILGATE_PG_BINDIR={env}: no initdb there")
        return p
    candidates: list[tuple[int, Path]] = []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for d in base.iterdir():
            if d.name.isdigit() and (d / "bin" / "initdb").is_file():
                candidates.append((int(d.name), d / "bin"))
    if candidates:
        return max(candidates)[1]
    which = shutil.which("pg_ctl")
    if which and (Path(which).resolve().parent / "initdb").is_file():
        return Path(which).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
        "(apt-get install postgresql) or set VEILGATE_PG_BINDIR"
    )


def _clean_env() -> dict[str, str]:
    """The environment without libpq variables that would redirect our tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


class TempCluster:
    """A throwaway PostgreSQL cluster: TLS on, SCRAM for TCP, trust on its private unix socket."""

    host: str
    port: int
    superuser: str
    superuser_password: str
    server_hostname: str
    """Name the server certificate is issued for (also valid: ``host``, an IP SAN)."""

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        *,
        max_connections: int = 300,
        keep: bool = False,
        shared_buffers: str = "32MB",
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = find_pg_bindir()
        self.host = "127.0.0.1"
        self.server_hostname = "localhost"
        self.superuser = "postgres"
        self.superuser_password = secrets.token_urlsafe(24)
        self.max_connections = max_connections
        self.keep = keep
        self._requested_port = port
        self.port = port if port is not None else 0
        self._shared_buffers = shared_buffers
        self._extra = dict(extra_settings or {})
        self._own_base = base_dir is None
        self._base_arg = base_dir
        self._base: Path | None = None
        self._started = False
        self._initialized = False
        self._as_postgres = os.geteuid() == 0
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        """Wall time the last :meth:`start` took."""

    # --- paths -----------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise ClusterError("cluster not started")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def cert_dir(self) -> Path:
        return self.base_dir / "certs"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def ca_file(self) -> Path:
        """The CA certificate that signed the server certificate (``sslrootcert``)."""
        return self.cert_dir / "ca.crt"

    @property
    def ca(self) -> CertPair:
        return CertPair(self.cert_dir / "ca.crt", self.cert_dir / "ca.key")

    @property
    def running(self) -> bool:
        return self._started

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> TempCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create (first time) and start the cluster; returns when it accepts TCP connections."""
        if self._started:
            return
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            if not self._initialized:
                self._create()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self._started = True
        self._start_watchdog()
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Fast shutdown, then remove the directory (unless ``keep``).  Safe to call twice."""
        atexit.unregister(self.stop)
        self._stop_watchdog()
        base = self._base
        if base is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._stop_server()
        self._started = False
        if not self.keep:
            if self._own_base:
                shutil.rmtree(base, ignore_errors=True)
            else:
                for sub in ("data", "sock", "certs", "postgres.log"):
                    p = base / sub
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
            self._base = None
            self._initialized = False

    def _start_watchdog(self) -> None:
        """A detached shell that stops the server (and removes the directory) if this process dies
        without calling :meth:`stop` (SIGKILL, ``timeout``, a crash): no orphaned postmasters."""
        pg_ctl = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate"]
        if self._as_postgres:
            pg_ctl = ["runuser", "-u", _OS_USER, "--", *pg_ctl]
        cleanup = "" if self.keep or not self._own_base else 'rm -rf -- "$2"'
        script = (
            'while kill -0 "$1" 2>/dev/null; do sleep 1; done; '
            f"{' '.join(shlex.quote(a) for a in pg_ctl)} >/dev/null 2>&1; {cleanup}"
        )
        self._watchdog = subprocess.Popen(
            ["sh", "-c", script, "vg-pg-watchdog", str(os.getpid()), str(self.base_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        wd, self._watchdog = self._watchdog, None
        if wd is not None and wd.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(wd.pid, signal.SIGKILL)
            wd.wait()

    def _stop_server(self) -> None:
        try:
            self._run_as_pg(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                ],
                timeout=40,
            )
            return
        except (ClusterError, subprocess.TimeoutExpired):
            pass
        # pg_ctl failed: kill the postmaster directly so nothing is left behind.
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, ValueError, IndexError):
            return None

    def pg_ctl_log(self) -> str:
        """The server log so far (empty if there is none)."""
        try:
            return self.log_file.read_text(errors="replace")
        except (OSError, ClusterError):
            return ""

    # --- creation --------------------------------------------------------------------------------

    def _create(self) -> None:
        if self._own_base:
            self._base = Path(tempfile.mkdtemp(prefix="vg-pg-"))
        else:
            assert self._base_arg is not None
            self._base = Path(self._base_arg).resolve()
            self._base.mkdir(parents=True, exist_ok=True)
            if (self._base / "data").exists():
                raise ClusterError(f"{self._base / 'data'} already exists")
        uid, gid = self._pg_ids()
        base = self.base_dir
        base.chmod(0o755)
        for d in (self.socket_dir, self.cert_dir):
            d.mkdir(mode=0o700)
        # Certificates: a private CA, and a server certificate for localhost / 127.0.0.1.
        ca = make_ca(self.cert_dir, "ca")
        server = make_cert(self.cert_dir, "server", ["localhost", "127.0.0.1", "::1"], ca)
        self.cert_dir.chmod(0o755)
        ca.cert_file.chmod(0o644)
        pwfile = base / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.superuser_password + "\n")
        if self._as_postgres:
            for p in (base, self.socket_dir, server.key_file, server.cert_file, pwfile):
                os.chown(p, uid, gid)
        try:
            self._run_as_pg(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                pwfile.unlink()
        self._write_hba()
        self._write_conf(server)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\ninclude 'veilgate.conf'\n")
        if self._as_postgres:
            for p in (self.data_dir / "pg_hba.conf", self.data_dir / "veilgate.conf"):
                os.chown(p, uid, gid)
        self._initialized = True

    def _write_hba(self) -> None:
        (self.data_dir / "pg_hba.conf").write_text(
            "# veilgate TempCluster\n"
            "# TYPE  DATABASE  USER  ADDRESS         METHOD\n"
            "local   all       all                   trust\n"
            "hostssl all       all   127.0.0.1/32    scram-sha-256\n"
            "host    all       all   127.0.0.1/32    scram-sha-256\n"
        )

    def _write_conf(self, server: CertPair | None = None) -> None:
        if server is None:
            server = CertPair(self.cert_dir / "server.crt", self.cert_dir / "server.key")
        settings: dict[str, str] = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": quote_literal(str(self.socket_dir)),
            "max_connections": str(self.max_connections),
            "shared_buffers": quote_literal(self._shared_buffers),
            "ssl": "on",
            "ssl_cert_file": quote_literal(str(server.cert_file)),
            "ssl_key_file": quote_literal(str(server.key_file)),
            "ssl_min_protocol_version": "'TLSv1.2'",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_wal_size": "'1GB'",
            "checkpoint_timeout": "'30min'",
            "dynamic_shared_memory_type": "posix",
            "huge_pages": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_timezone": "'UTC'",
            "timezone": "'UTC'",
            "jit": "off",
        }
        settings.update(self._extra)
        body = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.data_dir / "veilgate.conf").write_text(
            "# written by veilgate.testing.cluster.TempCluster\n" + body
        )

    # --- starting --------------------------------------------------------------------------------

    def _start_server(self) -> None:
        last_log = ""
        for _attempt in range(_START_ATTEMPTS):
            if self._requested_port is None or _attempt > 0:
                self.port = free_port(self.host)
            elif self.port == 0:
                self.port = self._requested_port
            self._write_conf()
            # Log from this attempt only, so a retry does not see the last attempt's bind error.
            with contextlib.suppress(FileNotFoundError):
                self.log_file.unlink()
            try:
                self._run_as_pg(
                    [
                        str(self.bindir / "pg_ctl"),
                        "start",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        "30",
                        "-s",
                    ],
                    timeout=45,
                )
            except (ClusterError, subprocess.TimeoutExpired) as e:
                last_log = self.pg_ctl_log()
                if _port_collision(last_log) and self._requested_port is None:
                    self._stop_server()
                    continue
                raise ClusterError(
                    f"PostgreSQL did not start: {e}\n--- server log ---\n{last_log}"
                ) from e
            self._wait_ready()
            return
        raise ClusterError(
            f"PostgreSQL did not find a free port after {_START_ATTEMPTS} attempts\n"
            f"--- server log ---\n{last_log}"
        )

    def _wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until TCP connections are accepted (pg_isready on host:port)."""
        deadline = time.monotonic() + timeout
        cmd = [
            str(self.bindir / "pg_isready"),
            "-q",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            "postgres",
            "-t",
            "2",
        ]
        while True:
            rc = subprocess.run(cmd, env=_clean_env(), check=False).returncode
            if rc == 0:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"PostgreSQL on {self.host}:{self.port} not ready after {timeout:.0f}s "
                    f"(pg_isready exit {rc})\n--- server log ---\n{self.pg_ctl_log()}"
                )
            time.sleep(0.05)

    # --- running commands ------------------------------------------------------------------------

    def _pg_ids(self) -> tuple[int, int]:
        if not self._as_postgres:
            return os.getuid(), os.getgid()
        try:
            pw = pwd.getpwnam(_OS_USER)
        except KeyError:
            raise ClusterError(
                "running as root, but there is no 'postgres' OS user to run initdb/postgres as "
                "(install the postgresql package, or run as an unprivileged user)"
            ) from None
        return pw.pw_uid, pw.pw_gid

    def _run_as_pg(
        self,
        argv: list[str],
        *,
        timeout: float,
    ) -> str:
        if self._as_postgres:
            argv = ["runuser", "-u", _OS_USER, "--", *argv]
        env = _clean_env()
        proc = subprocess.run(
            argv,
            cwd=self.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            name = Path(argv[4] if self._as_postgres else argv[0]).name
            raise ClusterError(
                f"{name} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def _psql(self, args: list[str], *, stdin: str | None, dbname: str, timeout: float) -> str:
        if not self._started and not self._initialized:
            raise ClusterError("cluster not started")
        argv = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            dbname,
            *args,
        ]
        proc = subprocess.run(
            argv,
            input=stdin,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"psql (database {dbname!r}) failed with exit {proc.returncode}: "
                f"{proc.stderr.strip()}"
            )
        out = proc.stdout
        return out[:-1] if out.endswith("\n") else out

    def execute(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` (any number of statements) with psql as the superuser over the unix socket.

        Returns psql's unaligned, tuples-only output (``|``-separated columns, one row a line);
        raises :class:`ClusterError` with psql's stderr on the first error.
        """
        return self._psql(["-f", "-"], stdin=sql, dbname=dbname, timeout=300)

    def run_file(self, path: Path, dbname: str = "postgres") -> str:
        """Run a SQL file with psql as the superuser (same rules as :meth:`execute`)."""
        return self._psql(["-f", str(path)], stdin=None, dbname=dbname, timeout=600)

    def create_role(
        self,
        name: str,
        password: str | None,
        *,
        superuser: bool = False,
        login: bool = True,
    ) -> None:
        """Create role ``name`` (SCRAM-hashed password if given); updates it if it exists."""
        opts = [
            "SUPERUSER" if superuser else "NOSUPERUSER",
            "LOGIN" if login else "NOLOGIN",
            f"PASSWORD {quote_literal(password)}" if password is not None else "PASSWORD NULL",
        ]
        ident = quote_ident(name)
        self.execute(
            "SET password_encryption = 'scram-sha-256';\n"
            f"SELECT count(*) FROM pg_roles WHERE rolname = {quote_literal(name)} \\gset\n"
            f"\\if :count\n  ALTER ROLE {ident} {' '.join(opts)};\n"
            f"\\else\n  CREATE ROLE {ident} {' '.join(opts)};\n\\endif\n"
        )

    def create_database(self, name: str, owner: str | None = None) -> None:
        """Create database ``name`` (owned by ``owner`` if given)."""
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner is not None:
            sql += f" OWNER {quote_ident(owner)}"
        self.execute(sql + ";")

    def dsn(self, *, user: str, password: str, dbname: str, sslmode: str = "verify-full") -> str:
        """A libpq URL for ``user`` over TCP with TLS (``sslrootcert`` = :attr:`ca_file`)."""
        query = {"sslmode": sslmode, "sslrootcert": str(self.ca_file)}
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}?{urlencode(query)}"
        )

    def load_sample_data(self, dbname: str) -> None:
        """Create the demo schema (customers with PII, orders) in ``dbname``."""
        if not _SAMPLE_SQL.is_file():
            raise ClusterError(f"sample data file missing: {_SAMPLE_SQL}")
        # Run as the database's owner, so the owner owns (and can grant on) the sample tables.
        owner = self.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = "  # noqa: S608 (quoted)
            + quote_literal(dbname)
        )
        if not owner:
            raise ClusterError(f"database {dbname!r} does not exist")
        self.execute(
            f"SET ROLE {quote_ident(owner)};\n\\i {quote_literal(str(_SAMPLE_SQL))}\nRESET ROLE;\n",
            dbname,
        )

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<TempCluster {self.host}:{self.port} {state} {self._base}>"


_COLLISION = re.compile(r"could not (bind|create listen socket)|Address already in use", re.I)


def _port_collision(log: str) -> bool:
    return bool(_COLLISION.search(log))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
