"""The machinery every end-to-end bench shares (``python bench/run.py COMMAND``).

A throwaway PostgreSQL cluster (:class:`veilgate.testing.cluster.TempCluster`, TLS + SCRAM),
PgBouncer and the gateway (``python -m veilgate serve``) as targets, each with its own files in a
temporary directory; pgbench runs with per-transaction-log percentiles and proxy CPU accounting;
the round-robin matrix, the summary tables and the results files.  A bench module (``run.py``'s
relay and connect, ``policy_bench.py``, ``mask_bench.py``...) is a list of :class:`Workload` and a
``register`` function; it imports this module, and nothing here imports a bench.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import itertools
import json
import math
import os
import platform
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
WORKLOADS_DIR = BENCH_DIR / "workloads"
RESULTS_DIR = BENCH_DIR / "results"

if importlib.util.find_spec("veilgate") is None:  # not installed: run from the source tree
    sys.path.insert(0, str(REPO / "python"))

from veilgate.certs import CertPair, make_ca, make_cert  # noqa: E402
from veilgate.testing.cluster import (  # noqa: E402
    ClusterError,
    TempCluster,
    find_pg_bindir,
    free_port,
    quote_literal,
)

BENCH_DB = "bench"
BENCH_ROLE = "veilgate_bench"
PASSWORD_ENV = "VEILGATE_BENCH_PASSWORD"
ALL_TARGETS = (
    "direct",
    "veilgate",
    "pgbouncer",
    "pgbouncer-tx",
    "veilgate-recording",
    "veilgate-w2",
)
CONNECT_TARGETS = (*(t for t in ALL_TARGETS if t != "veilgate-w2"), "veilgate-reuse")
"""The connect bench adds the gateway reusing upstream connections."""
PGBOUNCER_PREPARED_TX = (1, 21)
"""The first PgBouncer that keeps protocol-level prepared statements in transaction mode."""
RECORDING_BAR = 0.95
"""Issue 14's bar: session recording on keeps at least 95% of the recording-off TPS."""


class BenchError(RuntimeError):
    """A bench prerequisite is missing or a component failed; the message says what to do."""


def say(msg: str) -> None:
    print(msg, flush=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- process CPU -------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int, int, int, int] | None:
    """(ppid, utime, stime, cutime, cstime) in clock ticks, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14])


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants (live ones, plus reaped children)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int, int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
                children.setdefault(st[0], []).append(int(entry.name))
    if pid not in stats:
        raise BenchError(f"process {pid} is not running")
    ticks = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        st = stats.get(p)
        if st is None:
            continue
        ticks += st[1] + st[2] + st[3] + st[4]
        todo.extend(children.get(p, ()))
    return ticks / _CLK_TCK


# --- percentiles and medians -------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def median_or_none(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --- endpoints and targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects and as whom (the password goes through the environment only)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str
    sslmode: str = "require"

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGPASSWORD=self.password,
            PGSSLMODE=self.sslmode,
            PGCONNECT_TIMEOUT="10",
            PGAPPNAME="veilgate-bench",
        )
        return env


class Target(ABC):
    """Something pgbench can connect to: Postgres itself or a proxy in front of it."""

    name: str

    def start(self) -> None:  # noqa: B027 (optional hook)
        """Launch the process, if any, and wait until it accepts connections."""

    def stop(self) -> None:  # noqa: B027 (optional hook)
        """Stop the process, if any (idempotent)."""

    @abstractmethod
    def endpoint(self) -> Endpoint: ...

    def proxy_pid(self) -> int | None:
        """The proxy's process id, for CPU accounting (None: nothing between client and server)."""
        return None

    def log_tail(self) -> str:
        return ""

    def unsupported(self, workload: Workload) -> str | None:
        """Why this target cannot run ``workload`` (None: it can); the matrix skips it."""
        return None


class DirectTarget(Target):
    name = "direct"

    def __init__(self, env: BenchEnv) -> None:
        self._env = env

    def endpoint(self) -> Endpoint:
        c = self._env.cluster
        return Endpoint(c.host, c.port, BENCH_ROLE, self._env.role_password, BENCH_DB)


class ProcessTarget(Target):
    """A proxy run as a child process, listening on a loopback port."""

    ok_exit_codes: tuple[int, ...] = (0,)
    """Exit statuses after SIGTERM that are not worth a warning."""
    hint: str = ""
    """Appended to startup errors: what to do about them."""
    startup_timeout_s: float = 30.0
    """How long the proxy may take to listen (longer under valgrind)."""

    def __init__(self, env: BenchEnv) -> None:
        self._env = env
        self.workdir = env.workdir / self.name
        self.workdir.mkdir(mode=0o700, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = self.workdir / "output.log"

    @abstractmethod
    def command(self) -> list[str]: ...

    def popen_kwargs(self) -> dict[str, Any]:
        return {}

    def start(self) -> None:
        with self.output.open("wb") as out:
            self.proc = proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                **self.popen_kwargs(),
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if proc.poll() is not None:
                self.proc = None
                raise BenchError(
                    f"{self.name} exited with status {proc.returncode} during startup"
                    f"{self.hint}\n--- {self.name} log ---\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(
                    f"{self.name} did not listen on 127.0.0.1:{self.port} within "
                    f"{self.startup_timeout_s:g} s"
                    f"{self.hint}\n--- {self.name} log ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                say(f"  {self.name}: still running {grace_s:.0f} s after {sig.name}; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                return
        if proc.returncode not in (*self.ok_exit_codes, -sig):
            say(
                f"  warning: {self.name} exited with status {proc.returncode}\n"
                f"--- {self.name} log ---\n{self.log_tail()}"
            )

    def proxy_pid(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} is not running\n--- log ---\n{self.log_tail()}")
        return self.proc.pid

    def log_tail(self) -> str:
        return _tail(self.output)


def _pg_os_user() -> tuple[int, int] | None:
    """(uid, gid) of the ``postgres`` OS user if we are root (pgbouncer refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise BenchError(
            "running as root and there is no 'postgres' user to run pgbouncer as"
        ) from None
    return pw.pw_uid, pw.pw_gid


def find_pgbouncer() -> str:
    env = os.environ.get("PGBOUNCER")
    if env and not os.access(env, os.X_OK):
        raise BenchError(f"PGBOUNCER={env} is not an executable file")
    exe = env or shutil.which("pgbouncer")
    if exe is None and Path("/usr/sbin/pgbouncer").is_file():
        exe = "/usr/sbin/pgbouncer"
    if exe is None:
        raise BenchError(
            "pgbouncer not found: install it (apt-get install pgbouncer), set PGBOUNCER=/path, or "
            "leave it out with --targets direct,veilgate"
        )
    return exe


def pgbouncer_version(exe: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", _first_line([exe, "--version"]))
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


class PgBouncerTarget(ProcessTarget):
    """PgBouncer in session mode (``pgbouncer``) or transaction mode (``pgbouncer-tx``), TLS on
    both sides, SCRAM for clients (plain auth_file)."""

    name = "pgbouncer"
    ok_exit_codes = (0, 1)  # SIGTERM is PgBouncer's "fast exit": status 1

    def __init__(self, env: BenchEnv, mode: str = "session") -> None:
        self.exe = find_pgbouncer()
        self.mode = mode
        self.name = "pgbouncer" if mode == "session" else "pgbouncer-tx"
        self.version = pgbouncer_version(self.exe)
        super().__init__(env)
        prepared = ""
        if mode == "transaction" and self.version >= PGBOUNCER_PREPARED_TX:
            prepared = "max_prepared_statements = 200\n"
        self._ids = _pg_os_user()
        cert = make_cert(self.workdir, "pgbouncer", ["localhost", "127.0.0.1"], env.ca)
        users = self.workdir / "users.txt"
        fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'"{BENCH_ROLE}" "{env.role_password}"\n')
        c = env.cluster
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            f"""[databases]
{BENCH_DB} = host={c.host} port={c.port} dbname={BENCH_DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = {mode}
{prepared}max_client_conn = 1000
default_pool_size = 64
max_db_connections = 0
pkt_buf = 65536
client_tls_sslmode = require
client_tls_cert_file = {cert.cert_file}
client_tls_key_file = {cert.key_file}
server_tls_sslmode = require
server_tls_ca_file = {c.ca_file}
ignore_startup_parameters = extra_float_digits,options
logfile = {self.workdir / "pgbouncer.log"}
pidfile = {self.workdir / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
"""
        )
        if self._ids is not None:
            uid, gid = self._ids
            for p in (self.workdir, users, ini, cert.cert_file, cert.key_file):
                os.chown(p, uid, gid)

    def command(self) -> list[str]:
        return [self.exe, str(self.workdir / "pgbouncer.ini")]

    def unsupported(self, workload: Workload) -> str | None:
        args = workload.pgbench_args
        prepared = any(a == "prepared" and args[i - 1] == "-M" for i, a in enumerate(args) if i)
        if self.mode == "transaction" and prepared and self.version < PGBOUNCER_PREPARED_TX:
            shown = ".".join(map(str, self.version)) or "?"
            return f"PgBouncer {shown} < 1.21 keeps no prepared statements in transaction mode"
        return None

    def popen_kwargs(self) -> dict[str, Any]:
        if self._ids is None:
            return {}
        uid, gid = self._ids
        return {"user": uid, "group": gid, "extra_groups": []}

    def start(self) -> None:
        if self._ids is not None:
            self.output.touch()
            os.chown(self.output, *self._ids)
        super().start()

    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, BENCH_ROLE, self._env.role_password, BENCH_DB)


class VeilgateTarget(ProcessTarget):
    """The gateway (``python -m veilgate serve``), one static token, target ``bench``."""

    name = "veilgate"
    hint = " (build it with `make build`, or leave it out with --targets direct,pgbouncer)"

    pool_size = 0
    """``targets.bench.pool.size`` (upstream connection reuse; 0: off, the default)."""

    def __init__(self, env: BenchEnv, command: str | None = None) -> None:
        super().__init__(env)
        self._command = command
        self.token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        self.write_config(
            f"""auth:
  static_tokens:
    - {{name: bench, sha256: {digest}, roles: [bench]}}
"""
        )

    def write_config(self, auth_section: str) -> None:
        env = self._env
        cert = make_cert(self.workdir, "veilgate", ["localhost", "127.0.0.1"], env.ca)
        c = env.cluster
        self.config = self.workdir / "veilgate.yaml"

        def q(v: object) -> str:
            return json.dumps(str(v))  # JSON strings are valid YAML scalars

        self.config.write_text(
            f"""# written by bench/run.py
listen: {{host: 127.0.0.1, port: {self.port}}}
tls: {{cert_file: {q(cert.cert_file)}, key_file: {q(cert.key_file)}}}
admin: {{host: 127.0.0.1, port: {free_port()}}}
{auth_section.rstrip()}
targets:
  {BENCH_DB}:
    host: {c.host}
    port: {c.port}
    dbname: {BENCH_DB}
    user: {BENCH_ROLE}
    password_env: {PASSWORD_ENV}
    tls: {{mode: verify-full, ca_file: {q(c.ca_file)}, server_name: {c.server_hostname}}}
    pool: {{size: {self.pool_size}, idle_timeout_s: 60}}
shutdown: {{drain_timeout_s: 2}}
logging: {{level: warning, format: text}}
"""
        )

    def command(self) -> list[str]:
        if self._command:
            return [*shlex.split(self._command), "serve", "--config", str(self.config)]
        return [sys.executable, "-m", "veilgate", "serve", "--config", str(self.config)]

    def popen_kwargs(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env[PASSWORD_ENV] = self._env.role_password
        src = str(REPO / "python")
        if src in sys.path:  # we run from the source tree: so does the gateway
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        return {"env": env}

    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, "bench", self.token, BENCH_DB)


def recording_section(workdir: Path) -> str:
    """An ``audit`` section recording into ``workdir/audit`` (a fresh signing key, defaults
    otherwise: fsync per batch, block on failure) and the session index beside it."""
    key = workdir / "audit.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32) + "\n")
        key.chmod(0o600)

    def q(v: object) -> str:
        return json.dumps(str(v))

    return (
        f"audit: {{dir: {q(workdir / 'audit')}, key: {{id: bench, file: {q(key)}}}}}\n"
        f"state: {{path: {q(workdir / 'state.db')}}}\n"
    )


def verify_recording(workdir: Path) -> str:
    """One line: does the target's recording verify (after it stopped)?"""
    from veilgate.audit.verify import verify

    directory = workdir / "audit"
    if not directory.exists():
        return "no recording"
    key = (workdir / "audit.key").read_bytes().strip()
    report = verify(directory, {"bench": key})
    errors = report.errors
    first = f"; first problem: {errors[0]}" if errors else ""
    return (
        f"{'OK' if report.ok else 'FAILED'}: {report.records} records, {report.sessions} "
        f"sessions, {report.segments} segment(s){first}"
    )


class VeilgateRecordingTarget(VeilgateTarget):
    """The same gateway with session recording on (``audit`` section)."""

    name = "veilgate-recording"

    def write_config(self, auth_section: str) -> None:
        super().write_config(auth_section.rstrip() + "\n" + recording_section(self.workdir))

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace_s: float = 15.0) -> None:
        running = self.proc is not None
        super().stop(sig, grace_s)
        if running:
            say(f"  {self.name}: recording {verify_recording(self.workdir)}")


class VeilgateOIDCTarget(VeilgateTarget):
    """The gateway trusting a development IdP (Entra-shaped, real HTTP on 127.0.0.1, served from
    a thread of this process); clients present an RS256 access token it minted."""

    def __init__(self, env: BenchEnv, command: str | None = None) -> None:
        from veilgate.demo.identity import DevIdPIdentity

        self._identity = DevIdPIdentity(role="Db.Read")
        self._identity.start()
        super().__init__(env, command)
        # one token (valid 24 h), presented and fully validated on every connection
        self.token = self._identity.idp.mint(roles=["Db.Read"], ttl=86400)
        oidc = json.dumps(self._identity.auth_config()["oidc"])  # JSON is valid YAML
        self.write_config(f"auth:\n  oidc: {oidc}\n")

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace_s: float = 15.0) -> None:
        super().stop(sig, grace_s)
        self._identity.stop()


class VeilgateReuseOIDCTarget(VeilgateOIDCTarget):
    """``veilgate-reuse``: the OIDC gateway reusing upstream connections (``pool.size`` 16):
    a new client connection costs TLS + token validation, not a new upstream login."""

    name = "veilgate-reuse"
    pool_size = 16


class VeilgateWorkersTarget(VeilgateTarget):
    """``veilgate-w2``: the same gateway as ``veilgate`` (``--workers 1``, the default) run as
    ``serve --workers 2`` (two processes on one port, SO_REUSEPORT).  Only the workloads named
    ``*-c16`` run on it: the workers comparison (``veilgate-w2/veilgate`` in the table)."""

    name = "veilgate-w2"
    workers = 2

    def command(self) -> list[str]:
        return [*super().command(), "--workers", str(self.workers)]

    def unsupported(self, workload: Workload) -> str | None:
        if not workload.name.endswith("-c16"):
            return "the workers comparison runs the -c16 workloads only"
        return None

    def start(self) -> None:
        # the port answers once one worker listens: wait until the supervisor's admin
        # listener is up, which it opens only when every worker is ready (else pgbench's
        # connections could all land on the first worker)
        super().start()
        m = re.search(r"^admin: \{host: [^,]+, port: (\d+)\}", self.config.read_text(), re.M)
        if m is None:
            raise BenchError(f"{self.name}: no admin port in {self.config}")
        deadline = time.monotonic() + 60
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                self.stop()
                raise BenchError(
                    f"{self.name}: its workers were not all ready within 60 s\n"
                    f"--- {self.name} log ---\n{self.log_tail()}"
                )
            time.sleep(0.05)


class VeilgateReuseTarget(VeilgateTarget):
    """``veilgate-reuse`` with the static token."""

    name = "veilgate-reuse"
    pool_size = 16


# --- the bench environment ---------------------------------------------------------------------


@dataclass
class BenchEnv:
    """The cluster, the bench database and role, and a scratch directory for targets and logs."""

    cluster: TempCluster
    workdir: Path
    role_password: str = field(repr=False)
    ca: CertPair

    @property
    def bindir(self) -> Path:
        return self.cluster.bindir

    def pgbench(self) -> str:
        exe = self.bindir / "pgbench"
        if exe.is_file():
            return str(exe)
        found = shutil.which("pgbench")
        if found is None:
            raise BenchError(
                "pgbench not found: apt-get install postgresql-contrib (or postgresql)"
            )
        return found


@contextlib.contextmanager
def bench_env(*, scale: int, keep: bool = False) -> Iterator[BenchEnv]:
    """Start a cluster, create role ``veilgate_bench`` and database ``bench`` (pgbench -i + the
    large-result table), and yield the environment; everything is removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="vg-bench-"))
    workdir.chmod(0o755)
    cluster = TempCluster(max_connections=300)
    try:
        t0 = time.monotonic()
        cluster.start()
        say(
            f"cluster: PostgreSQL on {cluster.host}:{cluster.port} started in "
            f"{cluster.startup_seconds:.2f} s"
        )
        password = secrets.token_urlsafe(24)
        cluster.create_role(BENCH_ROLE, password)
        cluster.create_database(BENCH_DB, owner=BENCH_ROLE)
        env = BenchEnv(cluster, workdir, password, make_ca(workdir / "ca", "bench-ca"))
        t1 = time.monotonic()
        # pgbench -i as the owner over the unix socket (trust): the tables belong to the bench role.
        proc = subprocess.run(
            [
                env.pgbench(),
                "-i",
                "-s",
                str(scale),
                "-q",
                "-h",
                str(cluster.socket_dir),
                "-p",
                str(cluster.port),
                "-U",
                BENCH_ROLE,
                BENCH_DB,
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"pgbench -i failed:\n{proc.stderr}")
        setup = WORKLOADS_DIR / "large_setup.sql"
        cluster.execute(
            f"SET ROLE {BENCH_ROLE};\n\\i {quote_literal(str(setup))}\nRESET ROLE;\n", BENCH_DB
        )
        cluster.execute("CHECKPOINT;")
        say(
            f"cluster: pgbench -i -s {scale} + large-result table in {time.monotonic() - t1:.1f} s "
            f"(setup total {time.monotonic() - t0:.1f} s)"
        )
        yield env
    finally:
        cluster.keep = keep
        cluster.stop()
        if keep:
            say(f"kept: {workdir} and {cluster.base_dir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def versions(env: BenchEnv, targets: Sequence[str]) -> str:
    """One line naming the versions under test (no secrets)."""
    parts = [_first_line([str(env.bindir / "postgres"), "--version"])]
    if any(t.startswith("pgbouncer") for t in targets):
        parts.append(_first_line([find_pgbouncer(), "--version"]))
    if any(t.startswith("veilgate") for t in targets):
        rev = _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
        parts.append(f"veilgate (git {rev})")
    return "versions: " + "; ".join(parts)


def make_target(name: str, env: BenchEnv, args: argparse.Namespace) -> Target:
    if name == "direct":
        return DirectTarget(env)
    if name == "pgbouncer":
        return PgBouncerTarget(env)
    if name == "pgbouncer-tx":
        return PgBouncerTarget(env, "transaction")
    if name == "veilgate":
        if getattr(args, "veilgate_auth", "static") == "oidc":
            return VeilgateOIDCTarget(env, command=args.veilgate_cmd)
        return VeilgateTarget(env, command=args.veilgate_cmd)
    if name == "veilgate-recording":
        return VeilgateRecordingTarget(env, command=args.veilgate_cmd)
    if name == "veilgate-w2":
        return VeilgateWorkersTarget(env, command=args.veilgate_cmd)
    if name == "veilgate-reuse":
        if getattr(args, "veilgate_auth", "static") == "oidc":
            return VeilgateReuseOIDCTarget(env, command=args.veilgate_cmd)
        return VeilgateReuseTarget(env, command=args.veilgate_cmd)
    raise BenchError(f"unknown target {name!r} (choose from {', '.join(CONNECT_TARGETS)})")


def smoke_check(env: BenchEnv, target: Target) -> None:
    """One real query through the target with psql, so a broken setup fails with its message, and
    proof that the server sees that session over TLS.

    The TLS check is made from the server's side (pg_stat_ssl read by the superuser while the
    target's session sleeps, found by a marker in its query text): read through the target, a
    masking tier may rightly redact statistics-view values of unknown origin.
    """
    ep = target.endpoint()
    marker = f"veilgate-bench-smoke-{secrets.token_hex(6)}"
    client = subprocess.Popen(
        [
            str(env.bindir / "psql"),
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            *ep.args(),
            "-d",
            ep.dbname,
            "-c",
            "SELECT count(*) FROM pgbench_branches",
            "-c",
            f"SELECT pg_sleep(3) -- {marker}",
        ],
        env=ep.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = ""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.poll() is None:
            seen = env.cluster.execute(  # the marker is hex made here: nothing to inject
                "SELECT coalesce(string_agg(s.ssl::text, ','), '') FROM pg_stat_activity a "  # noqa: S608
                "JOIN pg_stat_ssl s USING (pid) "
                f"WHERE a.pid <> pg_backend_pid() AND a.query LIKE '%{marker}%'"
            ).strip()
            if seen:
                break
            time.sleep(0.05)
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise BenchError(
            f"{target.name}: a test query failed: {err.strip()}\n"
            f"--- {target.name} log ---\n{target.log_tail()}"
        )
    if not out.split() or not out.split()[0].isdigit():
        raise BenchError(f"{target.name}: unexpected answer to the test query ({out!r})")
    # The server sees this session's connection: from the client (direct) or from the proxy.
    if seen != "true":
        raise BenchError(
            f"{target.name}: the connection to PostgreSQL is not TLS (pg_stat_ssl: {seen!r})"
        )


# --- workloads and pgbench ---------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    pgbench_args: tuple[str, ...]
    """Script and mode, e.g. ("-S", "-M", "simple") or ("-f", "file", "-M", "prepared")."""
    clients: int = 1
    threads: int = 1
    cycle_latency: bool = False
    """Latency = time between a client's consecutive transaction ends (with ``-C``: connect +
    transaction + disconnect), instead of pgbench's per-transaction time (which leaves out the
    connection under ``-C``)."""

    def argv(self) -> list[str]:
        return [*self.pgbench_args, "-c", str(self.clients), "-j", str(self.threads)]


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latency_avg_ms: float | None
    p50_ms: float
    p99_ms: float


_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without|excluding|including)", re.M)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


def parse_pgbench_output(text: str) -> tuple[float, int, int, float | None]:
    """(tps, transactions, failed, average latency ms) from pgbench's summary."""
    tps = _TPS.search(text)
    txns = _TXNS.search(text)
    if tps is None or txns is None:
        raise BenchError(f"could not parse pgbench output:\n{text}")
    failed = _FAILED.search(text)
    lat = _LAT.search(text)
    return (
        float(tps.group(1)),
        int(txns.group(1)),
        int(failed.group(1)) if failed else 0,
        float(lat.group(1)) if lat else None,
    )


def read_latencies_us(prefix: Path) -> list[float]:
    """Per-transaction latencies (µs, sorted) from pgbench ``-l`` logs ``<prefix>.<pid>[.<tid>]``.

    Line format: ``client_id transaction_no time script_no time_epoch time_us [...]``; ``time`` is
    the latency in µs (failed transactions log ``failed`` / ``skipped`` there and are left out).
    """
    values: list[float] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open() as f:
            for line in f:
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[2].isdigit():
                    values.append(float(parts[2]))
        path.unlink()
    values.sort()
    return values


def read_cycle_latencies_us(prefix: Path) -> list[float]:
    """Per-client intervals between consecutive transaction ends (µs, sorted) from pgbench ``-l``
    logs: under ``-C`` one interval is a whole connect + transaction + disconnect cycle.  Each
    client's first transaction has no predecessor and is left out."""
    ends: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[2].isdigit() and parts[1].isdigit():
                    end_us = int(parts[4]) * 1_000_000 + int(parts[5])
                    ends.setdefault((path.name, parts[0]), []).append((int(parts[1]), end_us))
        path.unlink()
    values: list[float] = []
    for series in ends.values():
        series.sort()
        values.extend(float(b[1] - a[1]) for a, b in itertools.pairwise(series))
    values.sort()
    return values


def run_pgbench(
    env: BenchEnv, ep: Endpoint, workload: Workload, duration_s: float, logdir: Path
) -> PgbenchResult:
    prefix = logdir / f"pgbench_{workload.name}"
    argv = [
        env.pgbench(),
        *ep.args(),
        "-n",
        "-T",
        str(max(1, round(duration_s))),
        *workload.argv(),
        "-l",
        f"--log-prefix={prefix}",
        ep.dbname,
    ]
    proc = subprocess.run(
        argv,
        env=ep.env(),
        cwd=logdir,
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(
            f"pgbench ({workload.name}) failed with exit {proc.returncode}:\n"
            f"{proc.stderr.strip()[-3000:]}"
        )
    tps, txns, failed, lat = parse_pgbench_output(proc.stdout)
    lats = read_cycle_latencies_us(prefix) if workload.cycle_latency else read_latencies_us(prefix)
    return PgbenchResult(
        tps=tps,
        transactions=txns,
        failed=failed,
        latency_avg_ms=lat,
        p50_ms=percentile(lats, 50) / 1000.0,
        p99_ms=percentile(lats, 99) / 1000.0,
    )


# --- the round-robin matrix --------------------------------------------------------------------


@dataclass
class Sample:
    workload: str
    target: str
    round: int
    tps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_us_per_txn: float | None

    def as_json(self) -> dict[str, Any]:
        def r(v: float | None, nd: int) -> float | None:
            return None if v is None or math.isnan(v) else round(v, nd)

        return {
            "workload": self.workload,
            "target": self.target,
            "round": self.round,
            "tps": r(self.tps, 2),
            "p50_ms": r(self.p50_ms, 4),
            "p99_ms": r(self.p99_ms, 4),
            "proxy_cpu_us_per_txn": r(self.proxy_cpu_us_per_txn, 2),
        }


def measure(
    env: BenchEnv, target: Target, workload: Workload, duration_s: float, round_no: int
) -> Sample:
    """One pgbench run against ``target``, with the proxy's CPU over the run."""
    pid = target.proxy_pid()
    cpu0 = process_tree_cpu_seconds(pid) if pid is not None else 0.0
    res = run_pgbench(env, target.endpoint(), workload, duration_s, env.workdir)
    cpu = None
    if pid is not None:
        used = process_tree_cpu_seconds(pid) - cpu0
        cpu = used * 1e6 / res.transactions if res.transactions else None
    if res.failed:
        say(f"  warning: {res.failed} failed transactions ({target.name}, {workload.name})")
    return Sample(workload.name, target.name, round_no, res.tps, res.p50_ms, res.p99_ms, cpu)


def run_matrix(
    env: BenchEnv,
    targets: list[Target],
    workloads: list[Workload],
    *,
    rounds: int,
    duration_s: float,
    warmup_s: float,
    on_sample: Callable[[list[Sample]], None] | None = None,
) -> list[Sample]:
    """Every workload on every target, ``rounds`` times; targets round-robin inside each round
    (the starting target rotates from round to round)."""
    if warmup_s > 0:
        warm = Workload("warmup", ("-S", "-M", "prepared"), clients=4, threads=2)
        simple = Workload("warmup", ("-S", "-M", "simple"), clients=4, threads=2)
        for t in targets:
            w0 = warm if t.unsupported(warm) is None else simple
            run_pgbench(env, t.endpoint(), w0, warmup_s, env.workdir)
    samples: list[Sample] = []
    total = rounds * len(workloads) * len(targets)
    n = 0
    for rnd in range(1, rounds + 1):
        shift = (rnd - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for w in workloads:
            for t in order:
                n += 1
                why = t.unsupported(w)
                if why is not None:
                    if rnd == 1:
                        say(f"  [{n:3}/{total}] {w.name:<20} {t.name:<10} skipped: {why}")
                    continue
                s = measure(env, t, w, duration_s, rnd)
                samples.append(s)
                cpu = (
                    ""
                    if s.proxy_cpu_us_per_txn is None
                    else f"  proxy {s.proxy_cpu_us_per_txn:8.1f} µs/txn"
                )
                say(
                    f"  [{n:3}/{total}] round {rnd} {w.name:<20} {t.name:<10} "
                    f"{s.tps:10.1f} tps  p50 {s.p50_ms:7.3f} ms  p99 {s.p99_ms:7.3f} ms{cpu}"
                )
                if on_sample is not None:
                    on_sample(samples)
    return samples


def _fmt(v: float | None, spec: str) -> str:
    if v is None or math.isnan(v):
        width = re.match(r"\d*", spec)
        return "-".rjust(int(width.group()) if width and width.group() else 1)
    return format(v, spec)


def spread_pct(values: Sequence[float | None]) -> float | None:
    """(max - min) / median of the rounds, in percent (None with fewer than two rounds)."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m * 100 if m else None


def round_medians(
    samples: Sequence[Sample], targets: Sequence[str]
) -> tuple[list[str], dict[tuple[str, str], dict[str, float | None]]]:
    """Workloads in run order, and per (workload, target) the medians over rounds of tps, p50,
    p99 and proxy CPU per transaction (keys ``tps``, ``p50``, ``p99``, ``cpu``), and the TPS
    spread over rounds (``spread``: (max - min) / median, percent)."""
    workloads = list(dict.fromkeys(s.workload for s in samples))
    med: dict[tuple[str, str], dict[str, float | None]] = {}
    for w in workloads:
        for t in targets:
            ss = [s for s in samples if s.workload == w and s.target == t]
            if ss:
                med[w, t] = {
                    "tps": median_or_none([s.tps for s in ss]),
                    "spread": spread_pct([s.tps for s in ss]),
                    "p50": median_or_none([s.p50_ms for s in ss]),
                    "p99": median_or_none([s.p99_ms for s in ss]),
                    "cpu": median_or_none([s.proxy_cpu_us_per_txn for s in ss]),
                }
    return workloads, med


def on_off_table(
    samples: Sequence[Sample],
    targets: Sequence[str],
    baseline: str,
    *,
    workload_width: int,
    label: Callable[[str], str],
) -> tuple[list[str], dict[str, float]]:
    """Medians over rounds per workload x target, then each target against ``baseline``: TPS,
    p50 and p99 ratios, CPU ratio and the extra proxy CPU per transaction.  Returns the table
    lines and each target's worst TPS ratio (the caller adds its verdict)."""
    workloads, m = round_medians(samples, targets)
    ww = workload_width
    head = (
        f"{'workload':<{ww}} {'target':<17} {'tps':>10} {'±%':>6} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'cpu µs/txn':>11}"
    )
    lines = [head, "-" * len(head)]
    worst: dict[str, float] = {}
    for w in workloads:
        for t in targets:
            r = m.get((w, t))
            if r is not None:
                lines.append(
                    f"{w:<{ww}} {t:<17} {_fmt(r['tps'], '10.1f')} {_fmt(r['spread'], '6.1f')} "
                    f"{_fmt(r['p50'], '9.3f')} {_fmt(r['p99'], '9.3f')} {_fmt(r['cpu'], '11.1f')}"
                )
        off = m.get((w, baseline))
        for t in targets:
            on = m.get((w, t))
            if t == baseline or on is None or off is None:
                continue
            tr = ratio(on["tps"], off["tps"])
            if tr is not None:
                worst[t] = min(worst.get(t, tr), tr)
            extra = None if on["cpu"] is None or off["cpu"] is None else on["cpu"] - off["cpu"]
            lines.append(
                f"{'':<{ww}} {label(t):<24} tps {_fmt(tr, '.3f')}  "
                f"p50 {_fmt(ratio(on['p50'], off['p50']), '.2f')}  "
                f"p99 {_fmt(ratio(on['p99'], off['p99']), '.2f')}  "
                f"cpu {_fmt(ratio(on['cpu'], off['cpu']), '.2f')} ({_fmt(extra, '+.1f')} µs/txn)"
            )
        lines.append("")
    return lines, worst


def summary_table(samples: list[Sample], targets: Sequence[str]) -> str:
    """Medians of rounds per workload x target (±%: the TPS spread over rounds), then
    veilgate against PgBouncer (both modes) and direct, and veilgate-reuse (the connect bench)
    against veilgate, PgBouncer and direct."""
    workloads, med = round_medians(samples, targets)
    head = (
        f"{'workload':<20} {'target':<18} {'tps':>10} {'±%':>6} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'cpu µs/txn':>11}"
    )
    lines = [head, "-" * len(head)]
    for w in workloads:
        for t in targets:
            m = med.get((w, t))
            if m is None:
                continue
            lines.append(
                f"{w:<20} {t:<18} {_fmt(m['tps'], '10.1f')} {_fmt(m['spread'], '6.1f')} "
                f"{_fmt(m['p50'], '9.3f')} {_fmt(m['p99'], '9.3f')} {_fmt(m['cpu'], '11.1f')}"
            )
        for mine, others in (
            ("veilgate", ("pgbouncer", "pgbouncer-tx", "direct")),
            ("veilgate-reuse", ("veilgate", "pgbouncer", "direct")),
            ("veilgate-w2", ("veilgate", "pgbouncer", "direct")),
        ):
            vg = med.get((w, mine))
            for other in others:
                o = med.get((w, other))
                if vg is None or o is None:
                    continue
                parts = [
                    f"tps {_fmt(ratio(vg['tps'], o['tps']), '.2f')}",
                    f"p50 {_fmt(ratio(vg['p50'], o['p50']), '.2f')}",
                    f"p99 {_fmt(ratio(vg['p99'], o['p99']), '.2f')}",
                ]
                if other.startswith("pgbouncer") or other.startswith("veilgate"):
                    parts.append(f"cpu {_fmt(ratio(vg['cpu'], o['cpu']), '.2f')}")
                lines.append(f"{'':<20} {mine + '/' + other:<24} " + "  ".join(parts))
        lines.append("")
    return "\n".join(lines)


def recording_table(samples: Sequence[Sample], baseline: str = "veilgate") -> str:
    """``veilgate-recording`` against ``baseline`` (the same gateway without recording): TPS
    ratios with issue 14's bar, and the extra CPU per transaction of the 1,000-row workload
    against the one-row workloads (what recording costs per row)."""
    lines, worst = on_off_table(
        samples,
        [baseline, "veilgate-recording"],
        baseline,
        workload_width=20,
        label=lambda t: f"{t}/{baseline}",
    )
    _, med = round_medians(samples, [baseline, "veilgate-recording"])
    for t, tr in worst.items():
        verdict = "within" if tr >= RECORDING_BAR else "OVER"
        lines.append(
            f"{t}: worst TPS ratio vs {baseline} {tr:.3f} ({(1 - tr) * 100:+.1f}% cost); "
            f"bar: cost <= {(1 - RECORDING_BAR) * 100:.0f}% -> {verdict}"
        )

    def extra(w: str) -> float | None:
        on, off = med.get((w, "veilgate-recording")), med.get((w, baseline))
        if on is None or off is None or on["cpu"] is None or off["cpu"] is None:
            return None
        return float(on["cpu"] - off["cpu"])

    for c in ("c1", "c8"):
        big, small = extra(f"large-{c}"), extra(f"select-prepared-{c}")
        if big is not None and small is not None:
            lines.append(
                f"recording CPU per transaction, {c}: 1,000 rows {big:+.1f} µs, one row "
                f"{small:+.1f} µs -> per row {(big - small) / 999 * 1000:+.1f} ns"
            )
    return "\n".join(lines)


# --- results files ------------------------------------------------------------------------------


def _cmd_first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def run_meta(
    env: BenchEnv | None, *, quick: bool, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """What a results file says about its run: commit and dirty flag, versions (Python, Rust,
    PostgreSQL, PgBouncer, veilgate), CPU model and cores, date (UTC) and the command line."""
    import veilgate

    porcelain = subprocess.run(
        # the bench's own results files do not make the code dirty (one bench of a session
        # rewrites them before the next one starts)
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)bench/results",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        pgbouncer: str | None = _cmd_first_line([find_pgbouncer(), "--version"])
    except BenchError:
        pgbouncer = None
    try:
        bindir = env.bindir if env is not None else find_pg_bindir()
        postgres = _cmd_first_line([str(bindir / "postgres"), "--version"])
    except ClusterError:
        postgres = None
    return {
        "commit": _cmd_first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "dirty": bool(porcelain.stdout.strip()) if porcelain.returncode == 0 else None,
        "quick": quick,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(sys.argv if argv is None else argv),
        "versions": {
            "python": platform.python_version(),
            "rust": _cmd_first_line(["rustc", "--version"]),
            "postgres": postgres,
            "pgbouncer": pgbouncer,
            "veilgate": getattr(veilgate, "__version__", None),
        },
        "cpu": {
            "model": cpu_model(),
            "cores": os.cpu_count(),
            "usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
    }


def results_path(args: argparse.Namespace, name: str) -> Path:
    """``--output``, else ``results/NAME.json`` (full runs) or ``results/NAME.quick.json``."""
    if args.output is not None:
        return Path(args.output)
    return RESULTS_DIR / (f"{name}.quick.json" if args.quick else f"{name}.json")


def read_results(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(meta, rows)`` of a results file (files written before the metadata: ``{}``, rows)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read results: {exc}") from exc
    if isinstance(doc, list):
        return {}, doc
    if isinstance(doc, dict) and isinstance(doc.get("samples"), list):
        return dict(doc.get("meta") or {}), doc["samples"]
    raise BenchError(f"{path}: not a results file")


def compare_table(a: Path, b: Path) -> str:
    """Two results files side by side: per workload x target the medians over rounds of each,
    and B/A ratios of TPS, p50, p99 and proxy CPU per transaction (rows in both only)."""
    (meta_a, rows_a), (meta_b, rows_b) = read_results(a), read_results(b)

    def medians(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float | None]]:
        out: dict[tuple[str, str], dict[str, float | None]] = {}
        keys = [(r["workload"], r["target"]) for r in rows if "target" in r and "tps" in r]
        for key in dict.fromkeys(keys):
            rs = [r for r in rows if (r.get("workload"), r.get("target")) == key]
            out[key] = {
                "tps": median_or_none([r.get("tps") for r in rs]),
                "spread": spread_pct([r.get("tps") for r in rs]),
                "p50": median_or_none([r.get("p50_ms") for r in rs]),
                "p99": median_or_none([r.get("p99_ms") for r in rs]),
                "cpu": median_or_none([r.get("proxy_cpu_us_per_txn") for r in rs]),
            }
        return out

    def describe(tag: str, path: Path, meta: dict[str, Any]) -> str:
        if not meta:
            return f"{tag}: {path} (no metadata: written before results carried it)"
        commit = str(meta.get("commit") or "?")[:12] + ("+dirty" if meta.get("dirty") else "")
        kind = "quick" if meta.get("quick") else "full"
        cpu = meta.get("cpu") or {}
        return (
            f"{tag}: {path} ({kind}, {commit}, {meta.get('date', '?')}, "
            f"{cpu.get('cores', '?')} cores {cpu.get('model') or '?'})"
        )

    ma, mb = medians(rows_a), medians(rows_b)
    head = (
        f"{'workload':<20} {'target':<18} {'tps A':>10} {'±%':>5} {'tps B':>10} {'±%':>5} "
        f"{'B/A tps':>8} {'p50':>6} {'p99':>6} {'cpu':>6}"
    )
    lines = [describe("A", a, meta_a), describe("B", b, meta_b), "", head, "-" * len(head)]
    shared = [k for k in ma if k in mb]
    if not shared:
        return "\n".join([*lines, "(no workload x target in both files)"])
    for w, t in shared:
        x, y = ma[w, t], mb[w, t]
        lines.append(
            f"{w:<20} {t:<18} {_fmt(x['tps'], '10.1f')} {_fmt(x['spread'], '5.1f')} "
            f"{_fmt(y['tps'], '10.1f')} {_fmt(y['spread'], '5.1f')} "
            f"{_fmt(ratio(y['tps'], x['tps']), '8.3f')} {_fmt(ratio(y['p50'], x['p50']), '6.2f')} "
            f"{_fmt(ratio(y['p99'], x['p99']), '6.2f')} {_fmt(ratio(y['cpu'], x['cpu']), '6.2f')}"
        )
    only = [f"{w}/{t}" for w, t in [*ma, *mb] if (w, t) not in shared]
    if only:
        lines.append("")
        lines.append("in one file only: " + ", ".join(dict.fromkeys(only)))
    return "\n".join(lines)


def write_results(path: Path, samples: Sequence[Any], meta: dict[str, Any]) -> None:
    """Write ``{"meta": ..., "samples": [...]}``.  A quick run never replaces a full run's file
    (one written before the metadata counts as full): it fails with the way out."""
    if meta.get("quick") and path.exists():
        old, _ = read_results(path)
        if not old.get("quick"):
            raise BenchError(
                f"{path} holds a full run; a --quick run does not overwrite it "
                "(leave --output out: quick runs go to results/NAME.quick.json)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [s.as_json() if hasattr(s, "as_json") else s for s in samples]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "samples": rows}, indent=1) + "\n")
    tmp.replace(path)


# --- subcommand plumbing -----------------------------------------------------------------------


def add_common_args(
    p: argparse.ArgumentParser,
    *,
    default_targets: Sequence[str],
    known_targets: Sequence[str] = ALL_TARGETS,
) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs and a small dataset (whole bench in a few minutes)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per workload x target (3)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="seconds per pgbench run (default 20, --quick 3)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        metavar="S",
        help="warm-up seconds per target before round 1 (default 3, --quick 1)",
    )
    p.add_argument(
        "--targets",
        default=",".join(default_targets),
        help=(
            f"comma-separated, from {','.join(known_targets)}"
            + (
                " (default: all)"
                if list(default_targets) == list(known_targets)
                else f" (default: {','.join(default_targets)})"
            )
        ),
    )
    p.add_argument(
        "--workloads",
        default=None,
        help="comma-separated workload names or prefixes (default: all)",
    )
    p.add_argument(
        "--scale", type=int, default=None, help="pgbench -i scale (default 10, --quick 1)"
    )
    p.add_argument("--output", type=Path, default=None, help="results JSON path")
    p.add_argument(
        "--veilgate-cmd",
        default=None,
        metavar="CMD",
        help="command that runs the gateway, e.g. 'veilgate' (default: this Python's -m veilgate)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")


def parse_targets(spec: str, known: Sequence[str] = ALL_TARGETS) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in names if t not in known]
    if bad or not names:
        raise BenchError(
            f"--targets: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


def select_workloads(all_w: list[Workload], spec: str | None) -> list[Workload]:
    if not spec:
        return all_w
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    chosen = [w for w in all_w if any(w.name == x or w.name.startswith(x) for x in wanted)]
    if not chosen:
        raise BenchError(f"--workloads {spec}: none of {', '.join(w.name for w in all_w)}")
    return chosen


@contextlib.contextmanager
def started_targets(
    env: BenchEnv,
    names: Sequence[str],
    make: Callable[[str], Any],
    check: Callable[[BenchEnv, Any], None] | None = None,
) -> Iterator[list[Any]]:
    """Start each named target, smoke-check it (plus ``check``), and stop them all, last first,
    however the block ends."""
    targets: list[Any] = []
    try:
        for name in names:
            target = make(name)
            targets.append(target)
            t0 = time.monotonic()
            target.start()
            smoke_check(env, target)
            if check is not None:
                check(env, target)
            ep = target.endpoint()
            say(f"target {name}: {ep.host}:{ep.port} ready in {time.monotonic() - t0:.2f} s")
        yield targets
    finally:
        for target in reversed(targets):
            target.stop()


def run_bench(
    args: argparse.Namespace,
    name: str,
    workloads: list[Workload],
    known: Sequence[str] = ALL_TARGETS,
) -> int:
    """Shared driver: environment, targets, matrix, table, JSON."""
    targets_wanted = parse_targets(args.targets, known)
    workloads = select_workloads(workloads, args.workloads)
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 20.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    scale = args.scale if args.scale is not None else (1 if args.quick else 10)
    output = results_path(args, name)
    if any(t.startswith("pgbouncer") for t in targets_wanted):
        find_pgbouncer()  # fail before the cluster starts
    est = args.rounds * len(workloads) * len(targets_wanted) * (duration + 0.5)
    say(
        f"{name}: {len(workloads)} workloads x {len(targets_wanted)} targets x "
        f"{args.rounds} rounds, {duration:g} s each (~{est / 60:.1f} min), "
        "TLS everywhere (sslmode=require), "
        f"{os.cpu_count()} CPUs"
    )
    samples: list[Sample] = []
    with bench_env(scale=scale, keep=args.keep) as env:
        say(versions(env, targets_wanted))
        meta = run_meta(env, quick=args.quick)
        with started_targets(env, targets_wanted, lambda t: make_target(t, env, args)) as targets:
            samples = run_matrix(
                env,
                targets,
                workloads,
                rounds=args.rounds,
                duration_s=duration,
                warmup_s=warmup,
                on_sample=lambda done: write_results(output, done, meta),
            )
    write_results(output, samples, meta)
    say("")
    say(
        f"{name}: medians of {args.rounds} round(s), {duration:g} s runs; proxy CPU = proxy "
        "process user+sys CPU / transactions"
    )
    say(summary_table(samples, targets_wanted))
    if "veilgate-recording" in targets_wanted and "veilgate" in targets_wanted:
        say("session recording (veilgate-recording vs veilgate, same run):")
        say(recording_table(samples))
    say(f"results: {output}")
    return 0
