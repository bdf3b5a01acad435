"""The gateway process: listener + admin server + signal handling, as ``veilgate serve`` runs it.

Lifecycle: start the gateway listener (it logs ``listening``) and the admin server
(``admin_listening``), log ``ready`` with the host/port of both (tests and the bench wait for it),
then wait.  The first SIGTERM or
SIGINT drains: ``/healthz`` turns 503, no new connections, idle sessions are closed, busy ones at
their next ReadyForQuery, and everything at ``shutdown.drain_timeout_s``.  A second signal closes
every session at once.  Either way the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veilgate import config as config_loader
from veilgate import log, metrics
from veilgate.admin.console import AdminConsole
from veilgate.admin.health import HealthState, health_router
from veilgate.admin.metrics import metrics_router
from veilgate.admin.server import AdminServer, Router
from veilgate.config_model import GatewayConfig
from veilgate.handover import HandoverClient, HandoverError, HandoverServer
from veilgate.health import Readiness
from veilgate.identity.live import LiveAuthenticator, aclose
from veilgate.masking.keys import MaskingUnavailable, read_key
from veilgate.reload import (
    ReloadOutcome,
    changed_sections,
    refused_changes,
    restart_required,
    without_restart_changes,
)
from veilgate.sdnotify import Notifier

if TYPE_CHECKING:
    from veilgate.gateway.server import Gateway
    from veilgate.gateway.workerlink import WorkerSpec
    from veilgate.identity.base import Authenticator
    from veilgate.masking.policy import MaskingPolicy

_log = log.get("service")

HANDOVER = "handover"
"""Stop reason: a new process took the listening sockets over (drain waits for the clients)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
"""Signals whose default action would end the process: logged and otherwise ignored."""
QUIET_SIGNALS = (signal.SIGHUP, *_IGNORED_SIGNALS)
"""Signals that never end the process (SIGHUP reloads once the loop runs)."""
OLD_AUTHENTICATOR_GRACE_S = 60.0
"""How long a replaced authenticator stays open for handshakes that started before a reload."""


def ignore_quiet_signals() -> None:
    """Before the event loop runs (and after it stopped): SIGHUP / SIGUSR1 / SIGUSR2 do nothing
    instead of ending the process."""
    for sig in QUIET_SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(sig, signal.SIG_IGN)


def build_authenticator(config: GatewayConfig) -> Authenticator:
    """The authenticator the configuration describes (static tokens and/or OIDC)."""
    from veilgate.identity.combined import GatewayAuthenticator

    return GatewayAuthenticator.from_config(config)


class Service:
    """One running gateway with its admin server.

    ``await start()``, then ``await wait()`` until a stop request (a signal, or :meth:`stop`)
    has been carried out; ``wait`` returns the process exit code.
    """

    def __init__(
        self,
        config: GatewayConfig,
        authenticator: Authenticator | None = None,
        *,
        log_override: tuple[str | None, str | None] = (None, None),
        worker: WorkerSpec | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        """One worker of ``serve --workers N`` (its admin server on a unix socket the
        supervisor fronts; no hand-over; no systemd notifications), or None."""
        self._authenticator = LiveAuthenticator(authenticator or build_authenticator(config))
        self._rebuild_authenticator = authenticator is None
        """A reload builds a new authenticator from the file (not when one was handed in)."""
        self._log_override = log_override
        """``--log-level`` / ``--log-format`` given on the command line win over the file."""
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gateway: Gateway | None = None
        self._admin: AdminServer | None = None
        self.health: HealthState | None = None
        self.readiness: Readiness | None = None
        self._requests: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._signals_installed: list[signal.Signals] = []
        self._handover: HandoverServer | None = None
        self.notifier = Notifier.from_env()
        """systemd's NOTIFY_SOCKET (READY / RELOADING / STOPPING / WATCHDOG); inert without it."""

    @property
    def port(self) -> int:
        assert self._gateway is not None, "not started"
        return self._gateway.port

    @property
    def admin_port(self) -> int | None:
        return self._admin.port if self._admin is not None else None

    def session_count(self) -> int:
        return self._gateway.session_count() if self._gateway is not None else 0

    def stop(self, reason: str = "requested", immediate: bool = False) -> None:
        """Request a drain (or, with ``immediate`` or when already draining, an immediate stop)."""
        self._requests.put_nowait((reason, immediate))

    async def start(self) -> None:
        """Bind both listeners; raises ``OSError`` (after cleaning up) if one cannot bind."""
        cfg = self.config
        # warm the JWKS caches; failures are logged and retried on first use
        warm = await self._authenticator.prefetch()
        if warm:
            log.event(_log, "identity_prefetched", caches=warm)
        handover: HandoverClient | None = None
        inherited: dict[str, socket.socket] = {}
        handover_socket = cfg.listen.handover_socket if self.worker is None else None
        if handover_socket is not None:
            handover, inherited = await self._take_over(handover_socket)
        try:
            await self._start(cfg, handover, inherited)
        except BaseException:
            if handover is not None:
                handover.close()  # the old process keeps serving (or resumes)
            for sock in inherited.values():
                sock.close()
            raise
        if handover_socket is not None:
            server = HandoverServer(
                handover_socket,
                self._handover_sockets,
                self._pause_accepting,
                self._resume_soon,
                lambda pid: self.stop(HANDOVER),
            )
            try:
                await server.start()
            except OSError as e:  # serving matters more than the next upgrade
                log.event(_log, "handover_unavailable", logging.ERROR, error=str(e))
            else:
                self._handover = server
        if handover is not None:
            await asyncio.to_thread(handover.done)
            log.event(_log, "took_over", pid=handover.old_pid)
        fields: dict[str, Any] = {"host": cfg.listen.host, "port": self.port}
        if self.worker is not None:
            log.event(_log, "worker_ready", worker=self.worker.id, pid=os.getpid(), **fields)
            self._tell_supervisor({"event": "ready", "pid": os.getpid()})
            return
        if self._admin is not None:
            fields.update(admin_host=cfg.admin.host, admin_port=self._admin.port)
            log.event(_log, "admin_listening", host=cfg.admin.host, port=self._admin.port)
        log.event(_log, "ready", targets=sorted(cfg.targets), **fields)
        self.notifier.ready(self._status())
        interval = Notifier.watchdog_interval()
        if interval is not None and self.notifier.enabled:
            self.spawn(self._watchdog(interval))

    def _tell_supervisor(self, event: dict[str, Any]) -> None:
        """One JSON line on the worker's status pipe (nothing without a supervisor)."""
        fd = self.worker.status_fd if self.worker is not None else None
        if fd is None:
            return
        try:
            os.write(fd, json.dumps(event, separators=(",", ":")).encode() + b"\n")
        except OSError as e:  # the supervisor is gone: PDEATHSIG drains this worker
            log.event(_log, "supervisor_unreachable", logging.WARNING, error=str(e))

    async def _take_over(self, path: str) -> tuple[HandoverClient | None, dict[str, socket.socket]]:
        """The listening sockets of the process serving on ``path`` (none: nobody serves)."""
        try:
            client = await asyncio.to_thread(HandoverClient.connect, path)
        except OSError as e:
            raise OSError(e.errno, f"hand-over socket {path}: {e.strerror}") from e
        if client is None:
            return None, {}
        try:
            socks = await asyncio.to_thread(client.take)
        except (HandoverError, OSError, ValueError) as e:
            client.close()
            raise OSError(f"hand-over from the serving process failed: {e}") from e
        log.event(_log, "taking_over", pid=client.old_pid, sockets=sorted(socks))
        return client, socks

    async def _start(
        self,
        cfg: GatewayConfig,
        handover: HandoverClient | None,
        inherited: dict[str, socket.socket],
    ) -> None:
        from veilgate.gateway.server import Gateway

        if self.worker is None:
            gateway = Gateway(cfg, self._authenticator)
        else:
            gateway = Gateway(cfg, self._authenticator, self.worker)
        await gateway.start(inherited.pop("listen", None), accept=handover is None)
        self._gateway = gateway
        self._install_quiet_signals()
        metrics.config_generation.set(gateway.generation)
        self.health = HealthState(gateway.session_count, audit=gateway.recorder)
        self.readiness = Readiness(
            lambda: self.config,
            self._authenticator,
            lambda: gateway.policy_engine.policy if gateway.policy_engine else None,
            lambda: gateway.recorder,
        )
        self.spawn(self.readiness.run())
        try:
            if cfg.admin.enabled:
                routers = self._admin_routers(gateway)
                admin = AdminServer(cfg.admin.host, cfg.admin.port, {}, routers)
                admin_sock = inherited.pop("admin", None)
                if self.worker is not None:
                    admin_sock = _unix_listener(self.worker.admin_path())
                await admin.start(admin_sock, serve=handover is None)
                self._admin = admin
            if handover is not None:
                # everything is ready: the old process stops accepting, this one starts
                await asyncio.to_thread(handover.stop_old)
                await self._resume_accepting()
        except BaseException:
            await self.close()
            raise
        # the gateway logs its own `listening` event; `ready` (in start) says everything is up

    def _handover_sockets(self) -> list[tuple[str, socket.socket]]:
        out: list[tuple[str, socket.socket]] = []
        if self._gateway is not None and self._gateway.listening_socket is not None:
            out.append(("listen", self._gateway.listening_socket))
        if self._admin is not None and self._admin.listening_socket is not None:
            out.append(("admin", self._admin.listening_socket))
        return out

    def _pause_accepting(self) -> None:
        if self._gateway is not None:
            self._gateway.pause_accepting()
        if self._admin is not None:
            self._admin.pause()

    def _resume_soon(self) -> None:
        self.spawn(self._resume_accepting())

    async def _resume_accepting(self) -> None:
        if self._gateway is not None:
            self._gateway.resume_accepting()
        if self._admin is not None:
            await self._admin.resume()

    def _status(self) -> str:
        """One line for systemd's STATUS=."""
        gateway = self._gateway
        if gateway is None:
            return "stopped"
        return (
            f"serving on {self.config.listen.host}:{gateway.port}, generation "
            f"{gateway.generation}, {gateway.session_count()} sessions"
        )

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 while the event loop runs (a stuck loop stops it; systemd restarts)."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _admin_routers(self, gateway: Gateway) -> list[Router]:
        """The admin listener's routers, one per concern (each in its own module)."""
        assert self.health is not None
        routers = [
            health_router(self.health, self.readiness),
            metrics_router(),
            AdminConsole(self, self._authenticator).router(),
        ]
        approvals = getattr(gateway, "approvals", None)
        if approvals is not None and self.config.approvals.api:
            from veilgate.approvals.api import ApprovalsAPI

            routers.append(ApprovalsAPI(approvals, self._authenticator).router())
        return routers

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            try:
                loop.add_signal_handler(sig, self.stop, sig.name)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            self._signals_installed.append(sig)

    def _install_quiet_signals(self) -> None:
        """SIGHUP reloads the whole configuration (:meth:`reload`); SIGUSR1 / SIGUSR2 are logged
        and ignored.  None of them ends the process, whatever the configuration."""
        loop = asyncio.get_running_loop()
        for sig in QUIET_SIGNALS:
            try:
                loop.add_signal_handler(sig, self._quiet_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                return
            self._signals_installed.append(sig)

    def _quiet_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            self.spawn(self.reload("SIGHUP"))
        else:
            log.event(_log, "signal_ignored", logging.WARNING, signal=sig.name)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def gateway(self) -> Gateway | None:
        """The running gateway (None before start and after close)."""
        return self._gateway

    @property
    def generation(self) -> int:
        return self._gateway.generation if self._gateway is not None else 0

    async def reload(self, trigger: str = "request") -> ReloadOutcome:
        """Re-read the configuration file and apply it (see :mod:`veilgate.reload`).  A file
        that does not validate changes nothing; the outcome says which generation is live."""
        async with self._reload_lock:
            self.notifier.reloading()
            key_before = self._key_generation()
            try:
                outcome = await self._reload()
            except Exception as e:  # a bug here must never end the process
                _log.exception("config reload failed")
                outcome = ReloadOutcome(False, self.generation, (f"internal error: {e!r}",))
            outcome = dataclasses.replace(outcome, masking_key=self._masking_key(key_before))
            status = self._status()
            if not outcome.ok:
                status += "; last reload failed"
            self.notifier.ready(status)
            self._tell_supervisor(
                {"event": "reloaded", "ok": outcome.ok, "generation": outcome.generation}
            )
        source = str(self.config.source) if self.config.source else None
        # one line per reload whatever logging.level says (an operator looks for it)
        always = min(max(logging.INFO, _log.getEffectiveLevel()), logging.CRITICAL)
        if outcome.ok:
            metrics.config_reloads_total.inc(result="applied")
            metrics.config_generation.set(outcome.generation)
            log.event(
                _log,
                "config_reloaded",
                always,
                trigger=trigger,
                file=source,
                generation=outcome.generation,
                changed=list(outcome.changed),
                restart_required=list(outcome.restart_required),
                masking_key=outcome.masking_key,
            )
            if outcome.restart_required:
                log.event(
                    _log,
                    "config_restart_required",
                    max(always, logging.WARNING),
                    file=source,
                    generation=outcome.generation,
                    keys=list(outcome.restart_required),
                )
        else:
            metrics.config_reloads_total.inc(result="failed")
            log.event(
                _log,
                "config_reload_failed",
                max(always, logging.ERROR),
                trigger=trigger,
                file=source,
                generation=outcome.generation,
                errors=list(outcome.errors),
                masking_key=outcome.masking_key,
            )
        return outcome

    def _key_generation(self) -> int:
        live = self._gateway.hash_keys.live if self._gateway is not None else None
        return live.generation if live is not None else 0

    def _masking_key(self, before: int) -> dict[str, Any] | None:
        """What a reload result says of the masking hash key (None: nothing hashes)."""
        gateway = self._gateway
        if gateway is None:
            return None
        engine = gateway.policy_engine
        masking = engine.policy.masking if engine is not None else None
        keys = gateway.hash_keys
        if keys.live is None and keys.error is None and (masking is None or not masking.uses_hash):
            return None
        return {**keys.describe(), "changed": self._key_generation() != before}

    async def _reload(self) -> ReloadOutcome:
        gateway = self._gateway
        old = self.config
        if gateway is None or old.source is None:
            return ReloadOutcome(False, self.generation, ("no configuration file to re-read",))
        try:
            new = await asyncio.to_thread(config_loader.load, old.source)
        except config_loader.ConfigError as e:
            return ReloadOutcome(False, gateway.generation, tuple(str(i) for i in e.issues))
        refused = refused_changes(old, new)
        if refused:
            return ReloadOutcome(False, gateway.generation, tuple(refused))
        live = without_restart_changes(old, new)
        ready = await self._prepare(live)
        if isinstance(ready, ReloadOutcome):
            return ready
        ssl_context, policy, authenticator, hash_key = ready
        # nothing below can fail: the new generation is applied whole
        gateway.reconfigure(live, ssl_context, policy, hash_key)
        self.config = live
        if authenticator is not None:
            previous, self._authenticator.current = self._authenticator.current, authenticator
            self.spawn(self._close_later(previous))
        self._apply_logging(live)
        gateway.reopen_audit()  # the recorder's hook: new segment, rotated signing key
        if self.readiness is not None:
            self.readiness.poke()  # try the (possibly new) upstream logins now
        return ReloadOutcome(
            True,
            gateway.generation,
            changed=tuple(changed_sections(old, live)),
            restart_required=tuple(restart_required(old, new)),
        )

    async def _prepare(
        self, cfg: GatewayConfig
    ) -> tuple[Any, Any, Authenticator | None, tuple[bytes, str] | None] | ReloadOutcome:
        """Load what the new generation needs (certificate, policy, masking hash key,
        authenticator), or say why it cannot be used."""
        from veilgate.gateway.server import server_ssl_context
        from veilgate.policy.loader import PolicyError, load_policy
        from veilgate.policy.reload import log_refusal, reload_refusal

        generation = self.generation
        source = str(cfg.source)
        try:
            ssl_context = server_ssl_context(cfg)
        except (ssl.SSLError, OSError, ValueError) as e:
            return ReloadOutcome(False, generation, (f"{source}: tls: {e}",))
        policy = None
        if cfg.policy is not None:
            try:
                policy = await asyncio.to_thread(load_policy, cfg.policy.file)
            except PolicyError as e:
                return ReloadOutcome(False, generation, tuple(f"{i}" for i in e.issues))
            except OSError as e:
                return ReloadOutcome(False, generation, (f"{cfg.policy.file}: {e}",))
            engine = self._gateway.policy_engine if self._gateway is not None else None
            if engine is not None:
                # cut short, or silently unmasking: refused as on a policy file reload
                refusal = reload_refusal(
                    engine.policy,
                    policy,
                    cfg.policy.file,
                    require_end_marker=cfg.policy.require_end_marker,
                )
                if refusal is not None:
                    log_refusal(cfg.policy.file, engine.policy, refusal)
                    return ReloadOutcome(False, generation, (f"{cfg.policy.file}: {refusal}",))
        hash_key: tuple[bytes, str] | None = None
        if policy is not None and policy.masking is not None and policy.masking.uses_hash:
            assert cfg.policy is not None
            read = await self._read_hash_key(policy.masking, cfg.policy.file)
            if isinstance(read, ReloadOutcome):
                return read
            hash_key = read
        authenticator: Authenticator | None = None
        if self._rebuild_authenticator and cfg.auth != self.config.auth:
            try:
                authenticator = build_authenticator(cfg)
            except Exception as e:
                return ReloadOutcome(False, generation, (f"{source}: auth: {e}",))
            warm = await LiveAuthenticator(authenticator).prefetch()
            if warm:
                log.event(_log, "identity_prefetched", caches=warm)
        return ssl_context, policy, authenticator, hash_key

    async def _read_hash_key(
        self, masking: MaskingPolicy, policy_file: Path
    ) -> tuple[bytes, str] | ReloadOutcome | None:
        """The masking hash key for the new generation, read whole and valid.  One that cannot
        be used refuses the reload while a key is live (that key stays, as a broken policy file
        keeps the old policy); with none live yet the reload goes on without (masked sessions
        stay refused) and says why."""
        try:
            material = await asyncio.to_thread(
                read_key, masking.hash_key_env, masking.hash_key_file
            )
        except MaskingUnavailable as e:
            keys = self._gateway.hash_keys if self._gateway is not None else None
            if keys is None:
                return None
            keys.failed(str(e), "reload")
            if keys.live is None:
                return None
            return ReloadOutcome(
                False,
                self.generation,
                (
                    f"{policy_file}: masking.hash_key: {e}; the running key (generation "
                    f"{keys.live.generation}, fingerprint {keys.live.fingerprint}) stays",
                ),
            )
        return material, masking.key_source

    @staticmethod
    async def _close_later(authenticator: Authenticator) -> None:
        await asyncio.sleep(OLD_AUTHENTICATOR_GRACE_S)
        try:
            await aclose(authenticator)
        except Exception as e:
            log.event(_log, "close_failed", logging.ERROR, error=repr(e))

    def _apply_logging(self, cfg: GatewayConfig) -> None:
        level, fmt = self._log_override
        want = (level or cfg.logging.level, fmt or cfg.logging.format)
        root = logging.getLogger("veilgate")
        if root.handlers:  # configured by `veilgate serve` (tests log through pytest instead)
            log.setup(*want)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals_installed:
            loop.remove_signal_handler(sig)
            if sig in QUIET_SIGNALS:  # the loop restored SIG_DFL, which would end the process
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, signal.SIG_IGN)
        self._signals_installed.clear()

    async def wait(self) -> int:
        """Wait for a stop request, drain, close; returns the exit code (0)."""
        assert self._gateway is not None, "not started"
        gateway = self._gateway
        try:
            reason, immediate = await self._requests.get()
            if self.health is not None:
                self.health.draining = True
            if self.readiness is not None:
                self.readiness.draining = True
            self.notifier.stopping(f"draining ({reason})")
            timeout = self.config.shutdown.drain_timeout_s
            if not immediate:
                log.event(
                    _log,
                    "draining",
                    reason=reason,
                    timeout_s=timeout,
                    sessions=gateway.session_count(),
                )
                drain = asyncio.create_task(
                    gateway.drain(timeout, wait_for_clients=reason == HANDOVER)
                )
                second = asyncio.create_task(self._requests.get())
                done, _ = await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
                if drain in done:
                    second.cancel()
                    if not drain.cancelled() and drain.exception() is not None:
                        log.event(
                            _log,
                            "drain_failed",
                            logging.ERROR,
                            error=repr(drain.exception()),
                        )
                else:
                    reason = second.result()[0]
                    immediate = True
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await drain
            if immediate:
                log.event(_log, "closing_now", reason=reason, sessions=gateway.session_count())
        finally:
            await self.close()
        log.event(_log, "stopped")
        return 0

    async def close(self) -> None:
        """Close every session and both listeners now (idempotent)."""
        if self._handover is not None:
            handover, self._handover = self._handover, None
            await handover.close()
        if self._gateway is not None:
            gateway, self._gateway = self._gateway, None
            try:
                await gateway.close()
            except Exception as e:
                log.event(_log, "close_failed", logging.ERROR, error=repr(e))
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._authenticator.aclose()
        except Exception as e:
            log.event(_log, "close_failed", logging.ERROR, error=repr(e))


async def serve(
    config: GatewayConfig,
    *,
    authenticator: Authenticator | None = None,
    on_ready: Callable[[Service], None] | None = None,
    log_override: tuple[str | None, str | None] = (None, None),
    worker: WorkerSpec | None = None,
) -> int:
    """Run the gateway until a signal (or ``service.stop()`` from ``on_ready``'s holder)."""
    service = Service(config, authenticator, log_override=log_override, worker=worker)
    service.install_signal_handlers()  # before binding: a signal during startup still drains
    try:
        await service.start()
    except OSError as e:
        service.remove_signal_handlers()
        log.event(
            _log,
            "start_failed",
            logging.ERROR,
            error=f"{type(e).__name__}: {e.strerror or e}",
            host=config.listen.host,
            port=config.listen.port,
            admin_port=config.admin.port if config.admin.enabled else None,
        )
        return 1
    try:
        if on_ready is not None:
            on_ready(service)
        return await service.wait()
    finally:
        service.remove_signal_handlers()


def _unix_listener(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` (0600; whatever was there is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(
    config: GatewayConfig,
    log_override: tuple[str | None, str | None] = (None, None),
    worker: WorkerSpec | None = None,
) -> int:
    """Run the gateway on uvloop until SIGTERM/SIGINT; returns the process exit code."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config, log_override=log_override, worker=worker))
