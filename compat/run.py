#!/usr/bin/env python3
"""``make compat``: psycopg's own test suite, three ways, and what differs.

1. **direct**: straight to a throwaway PostgreSQL (TLS + SCRAM, as the project's tests start it);
2. **relay**: through ``veilgate serve`` with a static token and no policy;
3. **masking**: through ``veilgate serve`` with ``compat/masking-policy.yaml`` (one tier allowing
   every statement, masking on, column rules on a table the suite never touches).

It prints the three totals and every test that passes direct but fails through veilgate, labelled
with its cause from ``compat/known_differences.yaml`` when it is a deliberate difference, and writes
everything to ``.compat/results.json`` (per-test outcomes in ``.compat/outcomes-<mode>.jsonl``).
A test that fails through veilgate is run once more (same gateway) before it is reported, so a
timing test that lost a race under load is reported as flaky, not as a difference.  Exit status:
0 when every extra failure is a known difference, 1 when any is not, 2 when the harness itself
could not run.

The suite is psycopg's own test files at release 3.3.4 (upstream tag commit
:data:`SUITE_COMMIT`; LGPL-3.0, never part of this repository): ``tests/``, the proxy helper
``tools/pproxy_fix.py`` its connection-loss tests start, ``pyproject.toml`` (its pytest settings)
and ``LICENSE.txt``.  They are checked against :data:`SUITE_FILES_SHA256` (see
:func:`files_digest`) and kept in ``.compat/psycopg-3.3.4/``.  Where they come from, first that
applies: that cache when it still matches; a local psycopg source given with ``--psycopg-src
DIR`` or ``$COMPAT_PSYCOPG_SRC`` (a source tree at the tag, or a git repository that has the tag
commit, read with ``git archive``); GitHub's archive of the tag (:data:`SUITE_URL`, downloaded
once into ``.compat/downloads/``).  psycopg's PyPI sdists carry no tests.  The psycopg release
the tests belong to and the tools they need are installed from PyPI by hash
(``compat/requirements.txt``) into ``.compat/venv-psycopg-3.3.4``, reused until the pins change.

    python compat/run.py                        # everything (about 10 minutes a run on 2 cores)
    python compat/run.py -k copy                # a subset, for quick iteration
    python compat/run.py --modes direct,relay tests/test_copy.py
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

from veilgate.certs import make_ca, make_cert
from veilgate.identity.static import token_digest
from veilgate.testing.cluster import TempCluster, quote_ident

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SUITE_VERSION = "3.3.4"
SUITE_COMMIT = "83f110367cdd249cc0a352e2246ecea9e878e5a0"
"""psycopg's tag 3.3.4."""
SUITE_URL = f"https://github.com/psycopg/psycopg/archive/refs/tags/{SUITE_VERSION}.tar.gz"
SUITE_PATHS = ("tests", "tools/pproxy_fix.py", "pyproject.toml", "LICENSE.txt")
"""What the harness takes from psycopg's source (paths relative to its root)."""
SUITE_FILES_SHA256 = "68548b6a33bdff555e32afc1726924988cc516454fec9936a6bcd5e977ed0963"
""":func:`files_digest` of :data:`SUITE_PATHS` at :data:`SUITE_COMMIT`.  A digest of the files,
not of the archive's bytes: GitHub makes its tag archives on request and does not promise them
byte for byte (their compression changed once already), and a local source is checked the same
way."""
SOURCE_ENV = "COMPAT_PSYCOPG_SRC"
REQUIREMENTS = HERE / "requirements.txt"
MASKING_POLICY = HERE / "masking-policy.yaml"
KNOWN_DIFFERENCES = HERE / "known_differences.yaml"

MODES = ("direct", "relay", "masking")
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
FAILED = frozenset({"failed", "error"})

CLIENT_ONLY_K = "not leak"
"""Left out unless ``--all``: psycopg's checks that the client frees its memory (``test_leak``,
``test_copy_*_leaks``): a third of the suite's time and nothing a server or gateway can change."""
CLIENT_ONLY_IGNORE = ("tests/test_typing.py", "tests/crdb/test_typing.py")
"""Left out unless ``--all``: static type checks (mypy on snippets), no database involved."""

ROLE = "compat"
DATABASE = "compat"
PRIVATE_TABLE_SQL = """
CREATE SCHEMA compat_private;
CREATE TABLE compat_private.people (
    id int PRIMARY KEY, ssn text, email text, card text, notes text
);
INSERT INTO compat_private.people VALUES
    (1, '078-05-1120', 'ada@example.com', '4111 1111 1111 1111', 'call +1 202 555 0143');
"""
"""The table the masking policy's column rules name (the suite never reads it)."""
PASSWORD_ENV = "VEILGATE_COMPAT_PG_PASSWORD"  # noqa: S105 (a variable name)
MASK_KEY_ENV = "VEILGATE_COMPAT_MASK_KEY"


class HarnessError(RuntimeError):
    """The harness could not set something up (exit status 2)."""


def say(msg: str) -> None:
    print(f"compat: {msg}", flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the suite and its venv (cached in the work directory) -----------------------------------------


def files_digest(root: Path) -> str:
    """The sha256 of the :data:`SUITE_PATHS` files under ``root``, as the shell computes it::

        find tests tools/pproxy_fix.py pyproject.toml LICENSE.txt -type f \\
            -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum

    (``__pycache__`` left out: running the suite writes it.)"""
    files: list[str] = []
    for top in SUITE_PATHS:
        path = root / top
        if path.is_file():
            files.append(top)
        elif path.is_dir():
            files += [
                p.relative_to(root).as_posix()
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.relative_to(root).parts
            ]
    listing = "".join(f"{sha256_of(root / f)}  {f}\n" for f in sorted(files, key=str.encode))
    return hashlib.sha256(listing.encode()).hexdigest()


def prepare_suite(work: Path, source: Path | None) -> Path:
    """psycopg's test files in ``work/psycopg-<version>``, checked against
    :data:`SUITE_FILES_SHA256`: the cached copy, else copied from ``source``, else taken from
    GitHub's archive of the tag."""
    dest = work / f"psycopg-{SUITE_VERSION}"
    if dest.is_dir() and files_digest(dest) == SUITE_FILES_SHA256:
        return dest
    staging = work / f".psycopg-{SUITE_VERSION}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    archive: Path | None = None
    if source is not None:
        origin = _copy_local_source(source.expanduser().resolve(), staging)
    else:
        archive = _download_archive(work)
        origin = _extract_archive(archive, staging)
    digest = files_digest(staging)
    if digest != SUITE_FILES_SHA256:
        shutil.rmtree(staging, ignore_errors=True)
        if archive is not None:
            archive.unlink(missing_ok=True)  # not kept: the next run downloads it again
        raise HarnessError(
            f"{origin}: its test files are not psycopg {SUITE_VERSION}'s (files sha256 {digest}, "
            f"expected {SUITE_FILES_SHA256}); check out tag {SUITE_VERSION} ({SUITE_COMMIT[:8]})"
        )
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    say(f"psycopg {SUITE_VERSION}'s tests from {origin} (checked) in {dest}")
    return dest


def _copy_local_source(source: Path, staging: Path) -> str:
    """Copy :data:`SUITE_PATHS` from a source tree (``source/tests`` exists) or, from a git
    repository (bare or not), ``git archive`` them at :data:`SUITE_COMMIT`."""
    if (source / "tests").is_dir():
        for top in SUITE_PATHS:
            src, dst = source / top, staging / top
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        return str(source)
    if not source.is_dir():
        raise HarnessError(f"{source}: no such directory (--psycopg-src / ${SOURCE_ENV})")
    archive = subprocess.run(  # a bare repository (a mirror) or a checkout's
        ["git", "-C", str(source), "archive", "--format=tar", SUITE_COMMIT, *SUITE_PATHS],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        lines = archive.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else "git archive failed"
        raise HarnessError(
            f"{source}: no psycopg {SUITE_VERSION} there ({why}); "
            f"give a source tree at tag {SUITE_VERSION} or a git repository that has it"
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(staging, filter="data")
    return f"{source} (git archive {SUITE_COMMIT[:8]})"


def _download_archive(work: Path) -> Path:
    """GitHub's archive of the tag, downloaded once into ``work/downloads``."""
    archive = work / "downloads" / f"psycopg-{SUITE_VERSION}.tar.gz"
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".part")
    say(f"downloading {SUITE_URL}")
    try:
        with urllib.request.urlopen(SUITE_URL, timeout=30) as resp, partial.open("wb") as f:
            shutil.copyfileobj(resp, f)
    except (OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise HarnessError(
            f"cannot download {SUITE_URL} ({reason}); give a local psycopg source at tag "
            f"{SUITE_VERSION} with --psycopg-src DIR or ${SOURCE_ENV}=DIR"
        ) from None
    partial.rename(archive)
    return archive


def _extract_archive(archive: Path, staging: Path) -> str:
    """:data:`SUITE_PATHS` out of GitHub's archive (whose members sit under ``psycopg-<tag>/``)."""
    prefix = f"psycopg-{SUITE_VERSION}/"
    try:
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name.removeprefix(prefix)
                if m.name.startswith(prefix) and any(
                    rel == top or rel.startswith(top + "/") for top in SUITE_PATHS
                ):
                    m.name = rel
                    members.append(m)
            tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, OSError) as e:
        archive.unlink(missing_ok=True)  # a broken download is fetched again next time
        raise HarnessError(f"{archive}: not a readable archive ({e})") from None
    return SUITE_URL


def prepare_venv(work: Path) -> Path:
    """The Python of ``.compat/venv-psycopg-<version>`` (created and filled once per pin set)."""
    venv = work / f"venv-psycopg-{SUITE_VERSION}"
    python = venv / "bin" / "python"
    want = f"{sha256_of(REQUIREMENTS)} {sys.version_info[:3]}"
    stamp = venv / ".compat-requirements"
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return python
    say(f"installing psycopg {SUITE_VERSION} and the suite's tools into {venv} (PyPI, by hash)")
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                *("-m", "pip", "--disable-pip-version-check", "install", "-q"),
                *("--require-hashes", "--no-deps", "--only-binary", ":all:"),
                *("-r", str(REQUIREMENTS)),
            ],
            check=True,
        )
    except subprocess.CalledProcessError as e:
        shutil.rmtree(venv, ignore_errors=True)
        raise HarnessError(
            f"could not build the suite's venv ({e}); `python3 -m venv` needs Debian's "
            "python3-venv, and the pinned wheels are for CPython 3.11 on x86_64"
        ) from e
    stamp.write_text(want + "\n")
    return python


# -- the database and the gateway ------------------------------------------------------------------


@dataclass
class Database:
    cluster: TempCluster
    password: str

    @classmethod
    def start(cls) -> Database:
        # two-phase commit on, so psycopg's TPC tests run instead of skipping
        cluster = TempCluster(extra_settings={"max_prepared_transactions": "10"})
        cluster.start()
        password = secrets.token_urlsafe(24)
        cluster.create_role(ROLE, password)
        cluster.create_database(DATABASE, owner=ROLE)
        cluster.execute(
            f"SET ROLE {quote_ident(ROLE)};\n{PRIVATE_TABLE_SQL}\nRESET ROLE;\n", DATABASE
        )
        return cls(cluster, password)

    def dsn(self) -> str:
        c = self.cluster
        return (
            f"host={c.host} port={c.port} dbname={DATABASE} user={ROLE} "
            f"password={self.password} sslmode=verify-full sslrootcert={c.ca_file} "
            "connect_timeout=10"
        )

    def stop(self) -> None:
        self.cluster.stop()


@dataclass
class Gateway:
    """``veilgate serve`` as an operator runs it: a config file, a subprocess, JSON logs."""

    db: Database
    mode: str
    directory: Path
    plaintext_loopback: bool = True
    token: str = field(default_factory=lambda: "compat-" + secrets.token_urlsafe(24))
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def log_file(self) -> Path:
        return self.directory / "veilgate.log"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def write_config(self) -> Path:
        ca = make_ca(self.directory, "ca")
        make_cert(self.directory, "veilgate", ["127.0.0.1", "localhost"], ca)
        cluster = self.db.cluster
        doc: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "tls": {
                "cert_file": "veilgate.crt",
                "key_file": "veilgate.key",
                # psycopg's connection-loss tests tunnel the DSN through a local TCP proxy
                # (pproxy) with sslmode=disable; the loopback development switch lets them run
                # through the gateway (every other test connects with verify-full)
                "allow_plaintext_loopback": self.plaintext_loopback,
            },
            "admin": {"enabled": False},
            "auth": {
                "static_tokens": [
                    {"name": "compat", "sha256": token_digest(self.token), "roles": ["compat"]}
                ]
            },
            "targets": {
                DATABASE: {
                    "host": cluster.host,
                    "port": cluster.port,
                    "dbname": DATABASE,
                    "user": ROLE,
                    "password_env": PASSWORD_ENV,
                    "tls": {"mode": "verify-full", "ca_file": str(cluster.ca_file)},
                }
            },
            "logging": {"level": "info", "format": "json"},
        }
        if self.mode == "masking":
            shutil.copyfile(MASKING_POLICY, self.directory / "policy.yaml")
            doc["policy"] = {"file": "policy.yaml", "audit_log": "audit.jsonl"}
        config = self.directory / "veilgate.yaml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        return config

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        env = dict(os.environ)
        env[PASSWORD_ENV] = self.db.password
        env[MASK_KEY_ENV] = secrets.token_hex(32)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "veilgate", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self._ready_event()
            if ready is not None:
                self.port = int(ready["port"])
                return
            if self.proc.poll() is not None:
                raise HarnessError(f"veilgate exited ({self.proc.returncode}): {self.log_tail()}")
            time.sleep(0.05)
        raise HarnessError(f"veilgate was not ready after {timeout:g}s: {self.log_tail()}")

    def _ready_event(self) -> dict[str, Any] | None:
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_file.read_text(errors="replace").splitlines():
                if '"ready"' in line:
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if event.get("event") == "ready":
                            return dict(event)
        return None

    def log_tail(self, n: int = 15) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"

    def dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={DATABASE} user={ROLE} "
            f"password={self.token} sslmode=verify-full sslrootcert={self.ca_file} "
            "connect_timeout=10"
        )

    def log_counts(self) -> dict[str, int]:
        """How many times each warning/error event appears in the gateway log."""
        counts: Counter[str] = Counter()
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_file.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("level") in ("warning", "error", "critical"):
                        counts[str(event.get("event"))] += 1
        return dict(counts)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Target:
    """What one run connects to: its own PostgreSQL (so concurrent runs never share tables,
    channels or prepared transactions) and, for the gateway modes, veilgate in front of it."""

    mode: str
    directory: Path
    db: Database
    gateway: Gateway | None

    def dsn(self) -> str:
        return self.gateway.dsn() if self.gateway is not None else self.db.dsn()


@contextlib.contextmanager
def target(mode: str, directory: Path, *, plaintext_loopback: bool) -> Iterator[Target]:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    db = Database.start()
    gw = Gateway(db, mode, directory, plaintext_loopback) if mode != "direct" else None
    try:
        if gw is not None:
            gw.start()
        yield Target(mode, directory, db, gw)
    finally:
        if gw is not None:
            gw.stop()
        db.stop()


# -- running the suite -----------------------------------------------------------------------------


@dataclass
class Selection:
    """Which tests run (the same in every mode)."""

    paths: list[str]
    keyword: str | None
    marker: str | None
    everything: bool
    timeout: int

    def pytest_args(self) -> list[str]:
        args: list[str] = []
        keyword = self.keyword
        if not self.everything:
            keyword = f"({keyword}) and {CLIENT_ONLY_K}" if keyword else CLIENT_ONLY_K
            args += [f"--ignore={p}" for p in CLIENT_ONLY_IGNORE]
        if keyword:
            args += ["-k", keyword]
        if self.marker:
            args += ["-m", self.marker]
        return [*args, f"--timeout={self.timeout}", *(self.paths or ["tests"])]

    def describe(self) -> dict[str, Any]:
        return {
            "paths": self.paths or ["tests"],
            "keyword": self.keyword,
            "marker": self.marker,
            "client_only_tests_left_out": not self.everything,
            "timeout_s": self.timeout,
        }


def clean_env() -> dict[str, str]:
    """The environment without libpq variables and anything that would redirect the suite."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "PSYCOPG", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PYTHONPATH"] = str(HERE)  # the outcomes plugin
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


_children: set[subprocess.Popen[bytes]] = set()
"""The pytest processes running now (ended when the harness is interrupted)."""


def _run_child(cmd: list[str], *, cwd: Path, env: dict[str, str], stdout: IO[str]) -> int:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT)
    _children.add(proc)
    try:
        return proc.wait()
    finally:
        _children.discard(proc)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _end_children() -> None:
    for proc in list(_children):
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()


RERUN_MAX = 200
"""A run with more extra failures than this is broken in bulk: its failures are not re-run one
by one (that would double the run's time to learn nothing)."""

MAX_RESTARTS = 20
"""How many times one run goes on after the test process died (each time one test is lost)."""


def run_pytest(
    python: Path, suite: Path, dsn: str, outcomes: Path, args: Sequence[str], log: Path
) -> tuple[dict[str, dict[str, Any]], float]:
    """Run the suite (``args``: selection) against ``dsn``; the outcome of every test and the
    wall time.  pytest's own output goes to ``log``.

    When the test process dies (psycopg's C extension can crash when a test fails halfway with
    threads still using the connection; a test that hangs is ended by pytest-timeout's thread
    method, which exits the process), the test it was running is recorded as an ``error`` and
    pytest starts again with the tests already done deselected."""
    outcomes.unlink(missing_ok=True)
    current = Path(f"{outcomes}.current")
    env = clean_env()
    env["PSYCOPG_TEST_DSN"] = dsn  # not on the command line: it holds the password / token
    env["COMPAT_OUTCOMES"] = str(outcomes)
    cmd = [
        str(python),
        *("-m", "pytest", "-p", "outcomes", "-p", "no:randomly", "-q", "-rN"),
        *("-o", f"cache_dir={log.parent / '.pytest_cache'}"),
        "--timeout-method=thread",
        *args,
    ]
    cache = log.parent / ".pytest_cache"
    start = time.monotonic()
    with log.open("w") as out:
        for _ in range(MAX_RESTARTS + 1):
            current.unlink(missing_ok=True)
            # psycopg's conftest refuses to run after a session that did not finish (its
            # segfault check in pytest's cache): each start gets a fresh cache
            shutil.rmtree(cache, ignore_errors=True)
            rc = _run_child(cmd, cwd=suite, env=env, stdout=out)
            # the plugin removes `current` when the session ends; left behind, it names the test
            # the process died in (pytest-timeout's thread method exits with status 1)
            lost = current.read_text() if current.is_file() else ""
            if not lost or lost in read_outcomes(outcomes):
                if rc in (0, 1, 5):  # 5: nothing selected
                    break
                raise HarnessError(f"pytest exited {rc} outside any test; see {log}")
            entry = {
                "test": lost,
                "outcome": "error",
                "message": f"the test process died during this test (exit status {rc}; "
                "a timeout or a crash, see the pytest log)",
                "duration": 0.0,
            }
            with outcomes.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            out.write(f"\n[compat] the test process died in {lost} (exit {rc}); going on\n")
            out.flush()
            env["COMPAT_RESUME"] = "1"
        else:
            raise HarnessError(f"the test process died more than {MAX_RESTARTS} times; see {log}")
    current.unlink(missing_ok=True)
    return read_outcomes(outcomes), time.monotonic() - start


def read_outcomes(path: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                results[entry["test"]] = entry
    return results


def totals(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts = Counter(entry["outcome"] for entry in results.values())
    return {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}


# -- comparing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    cause: str
    reason: str
    owner: str
    modes: tuple[str, ...]
    tests: tuple[str, ...]

    def covers(self, mode: str, test: str) -> bool:
        return mode in self.modes and any(fnmatch.fnmatchcase(test, p) for p in self.tests)


def load_known(path: Path = KNOWN_DIFFERENCES) -> list[Known]:
    doc = yaml.safe_load(path.read_text()) or {}
    known = []
    for item in doc.get("differences") or []:
        known.append(
            Known(
                cause=str(item["cause"]),
                reason=" ".join(str(item["reason"]).split()),
                owner=str(item.get("owner", "")),
                modes=tuple(item.get("modes") or ("relay", "masking")),
                tests=tuple(item["tests"]),
            )
        )
    return known


def extra_failures(
    direct: dict[str, dict[str, Any]], through: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Tests that pass direct and fail (or error) through the gateway, in test order."""
    return [
        dict(through[test])
        for test, entry in direct.items()
        if entry["outcome"] == "passed" and test in through and through[test]["outcome"] in FAILED
    ]


TIMING = Known(
    cause="timing",
    reason="psycopg marks the test timing-based or flakey (it fails on slow or busy hardware); "
    "through veilgate each new connection adds a TLS handshake and a SCRAM exchange, and "
    "every round trip a hop",
    owner="",
    modes=("relay", "masking"),
    tests=(),
)
"""What an extra failure of a test psycopg itself marks ``timing`` or ``flakey`` is labelled
with when no known difference covers it: listed, not counted as unexplained."""


def label(mode: str, extras: list[dict[str, Any]], known: list[Known]) -> None:
    for entry in extras:
        match = next((k for k in known if k.covers(mode, entry["test"])), None)
        if match is None and {"timing", "flakey"} & set(entry.get("markers") or ()):
            match = TIMING
        entry["cause"] = match.cause if match else None
        entry["reason"] = match.reason if match else None
        entry["owner"] = match.owner if match else None


# -- the report ------------------------------------------------------------------------------------


def print_table(runs: dict[str, dict[str, Any]]) -> None:
    cols = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
    print()
    print(f"psycopg {SUITE_VERSION} test suite".ljust(12 + 2), end="")
    print("".join(f"{c:>9}" for c in cols) + f"{'extra':>8}{'time':>8}")
    for mode, run in runs.items():
        t = run["totals"]
        extra = "" if mode == "direct" else str(len(run["extra_failures"]))
        print(
            f"{mode:<14}"
            + "".join(f"{t[c]:>9}" for c in cols)
            + f"{extra:>8}{run['duration_s'] / 60:>7.1f}m"
        )
    print("(extra: passes direct, fails through veilgate; re-run, still fails there, not direct)")


def print_extras(runs: dict[str, dict[str, Any]]) -> None:
    for mode, run in runs.items():
        if mode == "direct":
            continue
        extras = run["extra_failures"]
        print(f"\n{mode}: {len(extras)} test(s) pass direct but fail through veilgate")
        if run.get("not_rerun"):
            print(f"  (more than {RERUN_MAX}: not re-run, so timing failures are not told apart)")
        by_cause: dict[str, list[dict[str, Any]]] = {}
        for entry in extras:
            by_cause.setdefault(entry["cause"] or "UNEXPLAINED", []).append(entry)
        for cause, entries in sorted(by_cause.items(), key=lambda kv: kv[0] != "UNEXPLAINED"):
            reason = entries[0]["reason"]
            owner = entries[0]["owner"]
            head = f"  [{cause}] {len(entries)}"
            if reason:
                head += f": {reason}" + (f" ({owner})" if owner else "")
            print(head)
            for entry in entries:
                print(f"    {entry['outcome']:<6} {entry['test']}")
                if entry["message"]:
                    print(f"           {entry['message'][:150]}")
        if run.get("flaky"):
            print(
                f"  flaky (passed through veilgate or failed direct too when re-run; not "
                f"counted): {len(run['flaky'])}"
            )
            for test in run["flaky"]:
                print(f"    {test}")
        if run.get("skipped_only_here"):
            print(f"  skipped through veilgate only: {len(run['skipped_only_here'])}")
            for entry in run["skipped_only_here"]:
                print(f"    {entry['test']}: {entry['message'][:120]}")
        if run.get("gateway_log"):
            events = ", ".join(f"{k} x{v}" for k, v in sorted(run["gateway_log"].items()))
            print(f"  gateway log warnings/errors: {events}")


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compat/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("paths", nargs="*", help="test files / node ids (default: tests)")
    p.add_argument("-k", dest="keyword", help="pytest -k expression (a subset)")
    p.add_argument("-m", dest="marker", help="pytest -m expression (e.g. 'not slow')")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated subset of direct,relay,masking (direct is always run first "
        "when a gateway mode is compared)",
    )
    p.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="also run the client-only checks left out by default (memory leaks, mypy)",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=300,
        help="per-test timeout in seconds (the slowest test, 150,000 pipelined inserts, takes "
        "40 s on an idle 2-core machine)",
    )
    p.add_argument("--workdir", type=Path, default=ROOT / ".compat", help="cache and results")
    p.add_argument(
        "--psycopg-src",
        type=Path,
        default=Path(os.environ[SOURCE_ENV]) if os.environ.get(SOURCE_ENV) else None,
        metavar="DIR",
        help=f"psycopg's source at tag {SUITE_VERSION} (a source tree, or a git repository with "
        f"the tag's commit) instead of downloading it from GitHub (default: ${SOURCE_ENV})",
    )
    p.add_argument("--no-rerun", action="store_true", help="do not re-run extra failures")
    p.add_argument(
        "--tls-only",
        action="store_true",
        help="refuse plaintext on loopback too (psycopg's proxy tests then fail at connect)",
    )
    p.add_argument(
        "--serial", action="store_true", help="one run at a time (default: all modes at once)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        print(f"compat: unknown mode(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    # direct is the reference every other run is compared with
    modes = [m for m in MODES if m in modes or m == "direct"]
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    selection = Selection(args.paths, args.keyword, args.marker, args.everything, args.timeout)
    signal.signal(signal.SIGTERM, _interrupted)  # stop the gateways and clusters on the way out
    try:
        suite = prepare_suite(work, args.psycopg_src)
        python = prepare_venv(work)
        known = load_known()
        with contextlib.ExitStack() as stack:
            say(f"starting {len(modes)} throwaway PostgreSQL cluster(s) (TLS + SCRAM) and veilgate")
            targets = [
                stack.enter_context(
                    target(m, work / "runs" / m, plaintext_loopback=not args.tls_only)
                )
                for m in modes
            ]
            stack.callback(_end_children)  # exits run last-in first-out: tests stop first
            runs = run_all(targets, suite, python, work, selection, args.serial)
            if not args.no_rerun:
                rerun_extras(targets, runs, suite, python, work, selection)
    except (HarnessError, OSError, subprocess.SubprocessError) as e:
        print(f"compat: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compat: interrupted", file=sys.stderr)
        return 130
    for mode, run in runs.items():
        if mode != "direct":
            label(mode, run["extra_failures"], known)
    print_table(runs)
    print_extras(runs)
    unexplained = sum(
        1 for run in runs.values() for e in run.get("extra_failures", []) if e["cause"] is None
    )
    report = {
        "suite": {
            "name": "psycopg",
            "version": SUITE_VERSION,
            "commit": SUITE_COMMIT,
            "files_sha256": SUITE_FILES_SHA256,
        },
        "selection": selection.describe(),
        "runs": {
            mode: {k: v for k, v in run.items() if k != "results"} for mode, run in runs.items()
        },
        "outcomes": {mode: str(work / f"outcomes-{mode}.jsonl") for mode in runs},
        "unexplained_extra_failures": unexplained,
    }
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"results: {work / 'results.json'}; pytest and gateway logs in {work / 'runs'}")
    return 1 if unexplained else 0


def run_all(
    targets: list[Target],
    suite: Path,
    python: Path,
    work: Path,
    selection: Selection,
    serial: bool,
) -> dict[str, dict[str, Any]]:
    """Run the selection in every target (at the same time unless ``serial``: the suite spends
    most of its time waiting on round trips and sleeps, and each run has its own cluster)."""

    def one(t: Target) -> tuple[str, dict[str, Any]]:
        say(f"running the suite: {t.mode}")
        results, elapsed = run_pytest(
            python,
            suite,
            t.dsn(),
            work / f"outcomes-{t.mode}.jsonl",
            selection.pytest_args(),
            t.directory / "pytest.log",
        )
        say(f"{t.mode}: done in {elapsed / 60:.1f} min")
        return t.mode, {
            "totals": totals(results),
            "duration_s": round(elapsed, 1),
            "results": results,
        }

    with ThreadPoolExecutor(max_workers=1 if serial else len(targets)) as pool:
        runs = dict(pool.map(one, targets))
    direct = runs["direct"]["results"]
    for t in targets:
        if t.gateway is None:
            continue
        run = runs[t.mode]
        results = run["results"]
        run["extra_failures"] = extra_failures(direct, results)
        run["flaky"] = []
        run["skipped_only_here"] = [
            results[test]
            for test, entry in direct.items()
            if entry["outcome"] == "passed" and results.get(test, {}).get("outcome") == "skipped"
        ]
        run["gateway_log"] = t.gateway.log_counts()
    return {m: runs[m] for m in MODES if m in runs}


def rerun_extras(
    targets: list[Target],
    runs: dict[str, dict[str, Any]],
    suite: Path,
    python: Path,
    work: Path,
    selection: Selection,
) -> None:
    """Run every extra failure once more, alone (one run at a time), through veilgate and
    direct.  A test that passes through veilgate then lost a timing race under load; one that
    now fails direct too depends on the machine's load (a timer racing the interpreter's exit,
    say): both are listed as flaky, not as differences."""

    def again(t: Target, tests: Sequence[str]) -> set[str]:
        results, _ = run_pytest(
            python,
            suite,
            t.dsn(),
            work / f"outcomes-{t.mode}-rerun.jsonl",
            [f"--timeout={selection.timeout}", *tests],
            t.directory / "pytest-rerun.log",
        )
        return {test for test, entry in results.items() if entry["outcome"] == "passed"}

    for mode, run in runs.items():
        if len(run.get("extra_failures") or []) > RERUN_MAX:
            say(f"{mode}: more than {RERUN_MAX} extra failures: not re-run (no timing check)")
            run["not_rerun"] = True
    wanted = {
        e["test"]
        for run in runs.values()
        if not run.get("not_rerun")
        for e in run.get("extra_failures") or []
    }
    if not wanted:
        return
    direct = next(t for t in targets if t.gateway is None)
    say(f"re-running the {len(wanted)} test(s) that failed only through veilgate, direct")
    passed_direct = again(direct, sorted(wanted))
    for t in targets:
        run = runs[t.mode]
        extras = run.get("extra_failures") or []
        if t.gateway is None or not extras or run.get("not_rerun"):
            continue
        say(f"{t.mode}: re-running the {len(extras)} test(s) that failed only through veilgate")
        passed = again(t, [e["test"] for e in extras])
        run["flaky"] = [
            e["test"] for e in extras if e["test"] in passed or e["test"] not in passed_direct
        ]
        run["extra_failures"] = [e for e in extras if e["test"] not in run["flaky"]]


if __name__ == "__main__":
    sys.exit(main())
