"""``veilgate serve --workers N``: a supervisor process and N gateway worker processes.

The supervisor holds the listening address (a bound, non-listening ``SO_REUSEPORT`` socket: it
keeps the port, and resolves port 0 once for every worker) and starts N workers, each a fresh
``python -m veilgate serve --config FILE --worker SPEC``: each binds the address itself with
``SO_REUSEPORT`` and the kernel spreads new connections across them.  A worker reads the
configuration file itself when it starts (a worker restarted later reads the file as it is then,
as a reload would).

* **Cancel.** Worker ``k`` puts ``k`` in the top bits of every cancel secret it hands out; a
  CancelRequest that reaches another worker is passed to ``k`` over a unix socket in the
  supervisor's private run directory (:mod:`veilgate.gateway.workerlink`).
* **Signals.** SIGHUP is passed to every worker (each reloads; READY=1 goes to systemd once every
  worker reported back); SIGTERM / SIGINT too (each drains; a second signal closes at once); the
  supervisor exits 0 once every worker has.  Workers run in their own process group (a terminal's
  Ctrl-C reaches the supervisor only) and get SIGTERM if the supervisor dies (``PDEATHSIG``).
* **Restarts.** A worker that exits on its own with a non-zero status or a signal is started
  again, after 0.5 s doubling to 30 s while it keeps dying young (logged ``worker_exited`` and
  ``worker_restarting``).  One that exits 0 (drained through the admin API) is not.
* **Admin.** Each worker serves its admin routes on ``w<k>.admin`` in the run directory; the
  supervisor's admin listener (``admin.host:port``) fronts them: ``/metrics`` is every worker's
  exposition with a ``worker="<k>"`` label added to each sample (sum over it for the process
  total) plus the supervisor's own ``veilgate_worker*`` families; ``/healthz`` and ``/readyz``
  are 200 only when every worker answers 200; the console's session list and targets merge all
  workers; a session's cancel / terminate goes to the worker that has it; reload, drain and
  pause/resume go to every worker; anything else (the approvals API: one shared store) to one
  worker.  Authorisation is each worker's.

Not with ``listen.handover_socket`` (refused at start: the hand-over passes one process's
sockets).  systemd sees the supervisor (``MAINPID``); workers do not talk to ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilgate import log
from veilgate.admin.server import AdminServer, Handler, Request, Response, Router
from veilgate.config_model import GatewayConfig
from veilgate.gateway.listener import reserve_address
from veilgate.gateway.workerlink import WorkerSpec
from veilgate.sdnotify import Notifier

__all__ = ["Supervisor", "merge_metrics", "resolve_workers", "set_parent_death_signal"]

_log = log.get("workers")

START_TIMEOUT_S = 120.0
"""How long the supervisor waits for every worker's ``ready`` at start."""
RELOAD_TIMEOUT_S = 120.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
"""A worker that ran this long before dying restarts after the first back-off again."""
POLL_S = 0.2
ADMIN_TIMEOUT_S = 30.0
"""A worker's answer to a POST (a reload loads the policy and identity keys first)."""
ADMIN_READ_TIMEOUT_S = 5.0
"""A worker's answer to a GET (a scrape must not wait on one stuck worker for long)."""
MAX_ADMIN_RESPONSE = 64 << 20
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_QUIET = (signal.SIGUSR1, signal.SIGUSR2)


def resolve_workers(n: int) -> int:
    """``0`` (auto) → the CPU cores this process may run on."""
    if n > 0:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        return max(1, os.cpu_count() or 1)


def _accepts(host: str, port: int) -> bool:
    """Something accepts TCP connections on ``host:port`` (a wildcard host: on loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1.0):
            return True
    except OSError:
        return False


def set_parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> None:
    """Linux: this process gets ``sig`` when its parent (the supervisor) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)


# --- metrics --------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?( .*)$")


def _family_of(sample: str, families: dict[str, Any]) -> str:
    if sample in families:  # a family of its own (a counter named ..._count, say)
        return sample
    for suffix in ("_bucket", "_sum", "_count", "_total", ""):
        if suffix and sample.endswith(suffix) and sample[: -len(suffix)] in families:
            return sample[: -len(suffix)]
    return sample


def merge_metrics(texts: dict[int, str]) -> str:
    """Prometheus text expositions of several workers as one: each family's ``# HELP`` /
    ``# TYPE`` once, then every worker's samples with ``worker="<k>"`` added to their labels."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in sorted(texts.items()):
        label = f'worker="{worker}"'
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    fam = headers.setdefault(name, [])
                    samples.setdefault(name, [])
                    if line not in fam:
                        fam.append(line)
                continue
            m = _SAMPLE.match(line)
            if m is None:
                continue
            name, labels, rest = m.group(1), m.group(2), m.group(3)
            inner = labels[1:-1] if labels else ""
            merged = f"{name}{{{label}{',' + inner if inner else ''}}}{rest}"
            samples.setdefault(_family_of(name, headers), []).append(merged)
    out: list[str] = []
    for name in samples:
        out.extend(headers.get(name, []))
        out.extend(samples[name])
    return "\n".join(out) + "\n"


# --- the admin front ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


async def _ask(path: Path, request: Request, target: str | None = None) -> _Reply | None:
    """``request`` sent to one worker's admin socket; None when it does not answer."""
    target = target or (request.path + (f"?{request.query}" if request.query else ""))
    head = [f"{request.method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    for k, v in request.headers.items():
        if k not in ("host", "connection", "content-length", "transfer-encoding"):
            head.append(f"{k}: {v}")
    if request.body or request.method == "POST":
        head.append(f"Content-Length: {len(request.body)}")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body
    timeout = ADMIN_TIMEOUT_S if request.method == "POST" else ADMIN_READ_TIMEOUT_S
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(data)
                await writer.drain()
                raw = b""
                while chunk := await reader.read(65536):  # Connection: close: up to EOF
                    raw += chunk
                    if len(raw) > MAX_ADMIN_RESPONSE:
                        return None
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    head_bytes, sep, body = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        return None
    ctype = "application/json"
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-type":
            ctype = v.strip()
    return _Reply(int(parts[1]), body, ctype)


def _respond(reply: _Reply) -> Response:
    return Response(reply.status, reply.body, reply.content_type)


_SESSION = re.compile(r"^/v1/admin/sessions/[^/]+(/cancel|/terminate)?$")
_TARGET_ACTION = re.compile(r"^/v1/admin/targets/[^/]+/(pause|resume)$")
_TO_ALL_POST = ("/v1/admin/reload", "/v1/admin/drain")


class _FrontRouter(Router):
    """Every path, for every method: the supervisor's answer or a worker's."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | set[str] | None:
        return self._handler, {}


# --- the supervisor -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    id: int
    proc: subprocess.Popen[bytes] | None = None
    status_fd: int | None = None
    buf: bytes = b""
    ready: bool = False
    started_at: float = 0.0
    fails: int = 0
    restarts: int = 0
    stopped: bool = False
    """Exited 0 (drained) or, while the supervisor drains, exited at all: not restarted."""
    restart_at: float | None = None
    generation: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


class Supervisor:
    """Runs ``count`` workers for the configuration file ``config.source``."""

    def __init__(
        self,
        config: GatewayConfig,
        count: int,
        *,
        log_override: tuple[str | None, str | None] = (None, None),
    ) -> None:
        assert config.source is not None, "workers read the configuration file"
        self.config = config
        self.count = count
        self._log_override = log_override
        self.workers = [_Worker(i) for i in range(count)]
        self._run_dir = Path(tempfile.mkdtemp(prefix="veilgate-workers-"))
        os.chmod(self._run_dir, 0o700)
        self._reserved: socket.socket | None = None
        self.port = 0
        self._admin: AdminServer | None = None
        self._draining = False
        self._signals_seen = 0
        self._changed = asyncio.Event()
        self.notifier = Notifier.from_env()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- the worker processes --------------------------------------------------------------------

    def _spawn(self, w: _Worker) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        spec = WorkerSpec(w.id, self.count, self._run_dir, self.port, os.getpid(), write_fd)
        level, fmt = self._log_override
        argv = [sys.executable, "-m", "veilgate", "serve", "--config", str(self.config.source)]
        argv += ["--worker", spec.encode()]
        if level:
            argv += ["--log-level", level]
        if fmt:
            argv += ["--log-format", fmt]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        try:
            w.proc = subprocess.Popen(
                argv, pass_fds=(write_fd,), env=env, stdin=subprocess.DEVNULL, process_group=0
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        w.status_fd, w.buf, w.ready, w.generation = read_fd, b"", False, None
        w.started_at, w.restart_at, w.stopped = time.monotonic(), None, False
        asyncio.get_running_loop().add_reader(read_fd, self._status_readable, w)
        log.event(_log, "worker_started", worker=w.id, pid=w.proc.pid)

    def _status_readable(self, w: _Worker) -> None:
        fd = w.status_fd
        if fd is None:
            return
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the worker closed it (exited)
            self._close_status(w)
            self._changed.set()
            return
        w.buf += chunk
        while b"\n" in w.buf:
            line, _, w.buf = w.buf.partition(b"\n")
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self._status_event(w, event)
        if len(w.buf) > 65536:
            w.buf = b""
        self._changed.set()

    def _status_event(self, w: _Worker, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready":
            w.ready = True
            w.generation = 1
        elif kind == "reloaded":
            if isinstance(event.get("generation"), int):
                w.generation = event["generation"]
            w.events.append(event)

    def _close_status(self, w: _Worker) -> None:
        if w.status_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(w.status_fd)
            with contextlib.suppress(OSError):
                os.close(w.status_fd)
            w.status_fd = None

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def _reap(self) -> None:
        """Notice exited workers: done (drain, exit 0) or to be restarted."""
        now = time.monotonic()
        for w in self.workers:
            if self._draining and w.restart_at is not None:
                w.restart_at, w.stopped = None, True  # was waiting to restart: stays down
                continue
            if w.proc is None or w.stopped or w.restart_at is not None:
                continue
            code = w.proc.poll()
            if code is None:
                continue
            self._close_status(w)
            w.ready = False
            if self._draining or code == 0:
                w.stopped = True
                log.event(_log, "worker_stopped", worker=w.id, pid=w.proc.pid, code=code)
                continue
            lived = now - w.started_at
            w.fails = 1 if lived >= STABLE_AFTER_S else w.fails + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (w.fails - 1))
            how = {"signal": signal.Signals(-code).name} if code < 0 else {"code": code}
            log.event(
                _log,
                "worker_exited",
                logging.ERROR,
                worker=w.id,
                pid=w.proc.pid,
                ran_s=round(lived, 3),
                **how,
            )
            log.event(_log, "worker_restarting", logging.WARNING, worker=w.id, delay_s=delay)
            w.restart_at = now + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.restart_at is not None and now >= w.restart_at and not self._draining:
                w.restarts += 1
                try:
                    self._spawn(w)
                except OSError as e:
                    log.event(_log, "worker_spawn_failed", logging.ERROR, worker=w.id, error=str(e))
                    w.restart_at = now + BACKOFF_MAX_S

    def _signal_workers(self, sig: signal.Signals, *, ready_only: bool = False) -> None:
        """``ready_only``: not to a worker still starting (SIGHUP would end its interpreter
        before veilgate ignores it; it reads the file as it is now anyway)."""
        for w in self._live():
            assert w.proc is not None
            if ready_only and not w.ready:
                continue
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)

    # --- signals ----------------------------------------------------------------------------------

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        self._signals_seen += 1
        if not self._draining:
            self._draining = True
            self.notifier.stopping("draining")
            log.event(_log, "draining", signal=sig.name, workers=len(self._live()))
        else:
            log.event(_log, "closing_now", signal=sig.name, workers=len(self._live()))
        self._signal_workers(sig)
        self._changed.set()

    def _on_quiet_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            self._spawn_task(self.reload("SIGHUP"))
        else:
            log.event(_log, "signal_ignored", logging.WARNING, signal=sig.name)

    def _spawn_task(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, trigger: str) -> None:
        """Pass SIGHUP to every worker; READY=1 (systemd) once each reported its reload."""
        if self._draining:
            return
        self.notifier.reloading()
        live = [w for w in self._live() if w.ready]
        before = {w.id: len(w.events) for w in live}
        log.event(_log, "reload_requested", trigger=trigger, workers=[w.id for w in live])
        self._signal_workers(signal.SIGHUP, ready_only=True)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            pending = [w for w in live if len(w.events) == before[w.id] and w in self._live()]
            if not pending:
                break
            await self._wait_changed(1.0)
        results = {w.id: (w.events[-1] if len(w.events) > before[w.id] else None) for w in live}
        ok = all(r is not None and r.get("ok") for r in results.values())
        log.event(
            _log,
            "workers_reloaded",
            logging.INFO if ok else logging.ERROR,
            ok=ok,
            generations={str(k): (r or {}).get("generation") for k, r in results.items()},
        )
        self.notifier.ready(self._status() + ("" if ok else "; last reload failed"))

    async def _wait_changed(self, timeout: float) -> None:  # noqa: ASYNC109
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    def _status(self) -> str:
        """One line for systemd's STATUS= (the generation of each worker as it reported it)."""
        live = self._live()
        gens = sorted({w.generation for w in live if w.generation is not None})
        which = ", ".join(str(g) for g in gens) or "?"
        return (
            f"serving on {self.config.listen.host}:{self.port}, {len(live)}/{self.count} "
            f"workers, generation {which}"
        )

    # --- run --------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            if cfg.listen.port and await asyncio.to_thread(
                _accepts, cfg.listen.host, cfg.listen.port
            ):
                # SO_REUSEPORT would let this gateway join another one's port (a second
                # `serve --workers` by the same user) and split its traffic: refuse
                raise OSError(errno.EADDRINUSE, "another process accepts connections there")
            self._reserved = reserve_address(cfg.listen.host, cfg.listen.port)
        except OSError as e:
            log.event(
                _log,
                "start_failed",
                logging.ERROR,
                error=f"{type(e).__name__}: {e.strerror or e}",
                host=cfg.listen.host,
                port=cfg.listen.port,
            )
            self._cleanup()
            return 1
        self.port = int(self._reserved.getsockname()[1])
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        for sig in (signal.SIGHUP, *_QUIET):
            loop.add_signal_handler(sig, self._on_quiet_signal, sig)
        try:
            return await self._run(loop)
        finally:
            for sig in (*_SIGNALS, signal.SIGHUP, *_QUIET):
                loop.remove_signal_handler(sig)
                if sig not in _SIGNALS:
                    with contextlib.suppress(ValueError, OSError):
                        signal.signal(sig, signal.SIG_IGN)
            if self._admin is not None:
                await self._admin.close()
            for w in self.workers:
                self._close_status(w)
            self._cleanup()

    def _cleanup(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        shutil.rmtree(self._run_dir, ignore_errors=True)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        cfg = self.config
        for w in self.workers:
            self._spawn(w)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            self._reap()
            failed = [w for w in self.workers if w.restart_at is not None or w.stopped]
            if failed or self._draining or time.monotonic() > deadline:
                if not self._draining:
                    log.event(
                        _log,
                        "start_failed",
                        logging.ERROR,
                        error="a worker did not start" if failed else "workers not ready in time",
                        workers=[w.id for w in failed],
                    )
                self._draining = True
                self._signal_workers(signal.SIGTERM)
                await self._wait_all_exited(10.0)
                return 0 if self._signals_seen and not failed else 1
            await self._wait_changed(POLL_S)
        fields: dict[str, Any] = {"host": cfg.listen.host, "port": self.port}
        if cfg.admin.enabled:
            try:
                admin = AdminServer(cfg.admin.host, cfg.admin.port, {}, [self._router()])
                await admin.start()
            except OSError as e:
                log.event(
                    _log,
                    "start_failed",
                    logging.ERROR,
                    error=f"{type(e).__name__}: {e.strerror or e}",
                    admin_port=cfg.admin.port,
                )
                self._draining = True
                self._signal_workers(signal.SIGTERM)
                await self._wait_all_exited(30.0)
                return 1
            self._admin = admin
            fields.update(admin_host=cfg.admin.host, admin_port=admin.port)
            log.event(_log, "admin_listening", host=cfg.admin.host, port=admin.port)
        pids = [w.proc.pid for w in self.workers if w.proc is not None]
        log.event(
            _log, "ready", targets=sorted(cfg.targets), workers=self.count, pids=pids, **fields
        )
        self.notifier.ready(self._status())
        interval = Notifier.watchdog_interval()
        next_watchdog = time.monotonic()
        while True:
            self._reap()
            if all(w.stopped for w in self.workers):
                break
            self._restart_due()
            if interval is not None and time.monotonic() >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = time.monotonic() + interval
            await self._wait_changed(POLL_S)
        log.event(_log, "stopped", workers=self.count)
        return 0

    async def _wait_all_exited(self, timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while self._live() and time.monotonic() < deadline:
            await self._wait_changed(POLL_S)
        for w in self._live():
            assert w.proc is not None
            w.proc.kill()
        for w in self.workers:
            if w.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(w.proc.wait, 5)

    # --- admin ------------------------------------------------------------------------------------

    def _router(self) -> Router:
        return _FrontRouter(self._front)

    def _admin_path(self, w: _Worker) -> Path:
        return self._run_dir / f"w{w.id}.admin"

    async def _all(self, request: Request) -> dict[int, _Reply | None]:
        workers = self.workers
        replies = await asyncio.gather(*(self._ask_worker(w, request) for w in workers))
        return {w.id: r for w, r in zip(workers, replies, strict=True)}

    async def _ask_worker(self, w: _Worker, request: Request) -> _Reply | None:
        if not w.ready:
            return None
        return await _ask(self._admin_path(w), request)

    async def _front(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method in ("GET", "HEAD"):
            if path == "/metrics":
                return await self._metrics(request)
            if path == "/livez":
                return Response.json(200, {"status": "alive", "workers": len(self._live())})
            if path in ("/healthz", "/readyz"):
                return await self._health(request)
            if path == "/v1/admin/sessions":
                return await self._sessions(request)
            if path == "/v1/admin/targets":
                return await self._targets(request)
        if _SESSION.match(path):
            return await self._first_found(request)
        if method == "POST" and (path in _TO_ALL_POST or _TARGET_ACTION.match(path)):
            return await self._to_all(request)
        for w in self.workers:  # the approvals API (a shared store), the configuration...
            reply = await self._ask_worker(w, request)
            if reply is not None:
                return _respond(reply)
        return Response.json(503, {"error": "unavailable", "message": "no worker answers"})

    async def _metrics(self, request: Request) -> Response:
        replies = await self._all(request)
        texts = {
            k: r.body.decode() for k, r in replies.items() if r is not None and r.status == 200
        }
        own = [
            "# HELP veilgate_workers Worker processes configured (serve --workers).",
            "# TYPE veilgate_workers gauge",
            f"veilgate_workers {self.count}",
            "# HELP veilgate_worker_up 1 while the worker runs and answers its admin socket.",
            "# TYPE veilgate_worker_up gauge",
            *(f'veilgate_worker_up{{worker="{w.id}"}} {int(w.id in texts)}' for w in self.workers),
            "# HELP veilgate_worker_restarts_total Workers started again after dying.",
            "# TYPE veilgate_worker_restarts_total counter",
            *(
                f'veilgate_worker_restarts_total{{worker="{w.id}"}} {w.restarts}'
                for w in self.workers
            ),
        ]
        body = "\n".join(own) + "\n" + merge_metrics(texts)
        return Response(200, body.encode(), "text/plain; version=0.0.4; charset=utf-8")

    async def _health(self, request: Request) -> Response:
        if self._draining:
            return Response.json(503, {"status": "draining"})
        replies = await self._all(request)
        workers: dict[str, Any] = {}
        ok = True
        sessions = 0
        for k, r in replies.items():
            if r is None:
                ok = False
                workers[str(k)] = {"status": "not_running"}
                continue
            body = r.json()
            workers[str(k)] = body
            ok = ok and r.status == 200
            if isinstance(body, dict) and isinstance(body.get("sessions"), int):
                sessions += body["sessions"]
        out: dict[str, Any] = {"status": "ok" if ok else "degraded", "workers": workers}
        if request.path == "/healthz":
            out["sessions"] = sessions
        return Response.json(200 if ok else 503, out)

    async def _sessions(self, request: Request) -> Response:
        replies = await self._all(request)
        sessions: list[Any] = []
        for k, r in replies.items():
            if r is None:
                continue
            if r.status != 200:
                return _respond(r)  # unauthorised: every worker says the same
            for s in (r.json() or {}).get("sessions", []):
                sessions.append({**s, "worker": k})
        sessions.sort(key=lambda i: -float(i.get("age_s") or 0))
        return Response.json(200, {"count": len(sessions), "sessions": sessions})

    async def _targets(self, request: Request) -> Response:
        replies = await self._all(request)
        merged: dict[str, dict[str, Any]] = {}
        for r in replies.values():
            if r is None:
                continue
            if r.status != 200:
                return _respond(r)
            for t in (r.json() or {}).get("targets", []):
                name = t.get("name")
                have = merged.get(name)
                if have is None:
                    merged[name] = dict(t)
                    continue
                for key in ("sessions", "upstream_connections", "pool_idle"):
                    have[key] = int(have.get(key) or 0) + int(t.get(key) or 0)
                tiers = dict(have.get("sessions_by_tier") or {})
                for tier, n in (t.get("sessions_by_tier") or {}).items():
                    tiers[tier] = tiers.get(tier, 0) + n
                have["sessions_by_tier"] = dict(sorted(tiers.items()))
                have["paused"] = bool(have.get("paused")) or bool(t.get("paused"))
        return Response.json(200, {"targets": [merged[n] for n in sorted(merged)]})

    async def _first_found(self, request: Request) -> Response:
        last: _Reply | None = None
        for w in self.workers:
            reply = await self._ask_worker(w, request)
            if reply is None:
                continue
            if reply.status != 404:
                return _respond(reply)
            last = reply
        if last is not None:
            return _respond(last)
        return Response.json(503, {"error": "unavailable", "message": "no worker answers"})

    async def _to_all(self, request: Request) -> Response:
        replies = await self._all(request)
        answered = {k: r for k, r in replies.items() if r is not None}
        if not answered:
            return Response.json(503, {"error": "unavailable", "message": "no worker answers"})
        worst = max(answered.values(), key=lambda r: r.status)
        if worst.status >= 400:
            return _respond(worst)
        first = answered[min(answered)]
        body = first.json()
        if isinstance(body, dict):
            body["workers"] = {str(k): r.json() for k, r in answered.items()}
            missing = sorted(set(replies) - set(answered))
            if missing:
                body["workers_not_running"] = missing
            return Response.json(first.status, body)
        return _respond(first)


def supervise(
    config: GatewayConfig,
    count: int,
    log_override: tuple[str | None, str | None] = (None, None),
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns the exit code."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(Supervisor(config, count, log_override=log_override).run())
