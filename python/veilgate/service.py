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
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from veilgate import log
from veilgate.admin.server import AdminServer, HealthState, Router, gateway_routes
from veilgate.config_model import GatewayConfig

if TYPE_CHECKING:
    from veilgate.gateway.server import Gateway
    from veilgate.identity.base import Authenticator

_log = log.get("service")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_authenticator(config: GatewayConfig) -> Authenticator:
    """The authenticator the configuration describes (static tokens and/or OIDC)."""
    from veilgate.identity.combined import GatewayAuthenticator

    return GatewayAuthenticator.from_config(config)


class Service:
    """One running gateway with its admin server.

    ``await start()``, then ``await wait()`` until a stop request (a signal, or :meth:`stop`)
    has been carried out; ``wait`` returns the process exit code.
    """

    def __init__(self, config: GatewayConfig, authenticator: Authenticator | None = None) -> None:
        self.config = config
        self._authenticator = authenticator or build_authenticator(config)
        self._gateway: Gateway | None = None
        self._admin: AdminServer | None = None
        self.health: HealthState | None = None
        self._requests: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._signals_installed: list[signal.Signals] = []

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
        from veilgate.gateway.server import Gateway

        cfg = self.config
        prefetch = getattr(self._authenticator, "prefetch", None)
        if prefetch is not None:
            # warm the JWKS caches; failures are logged and retried on first use
            warm = await prefetch()
            if warm:
                log.event(_log, "identity_prefetched", caches=warm)
        gateway = Gateway(cfg, self._authenticator)
        await gateway.start()
        self._gateway = gateway
        if cfg.policy is not None or cfg.audit is not None:
            self._install_sighup(gateway)
        self.health = HealthState(gateway.session_count, audit=gateway.recorder)
        if cfg.admin.enabled:
            admin = AdminServer(
                cfg.admin.host,
                cfg.admin.port,
                gateway_routes(self.health),
                self._admin_routers(gateway),
            )
            try:
                await admin.start()
            except BaseException:
                await gateway.close()
                raise
            self._admin = admin
        # the gateway logs its own `listening` event; `ready` says everything is up
        fields: dict[str, Any] = {"host": cfg.listen.host, "port": gateway.port}
        if self._admin is not None:
            fields.update(admin_host=cfg.admin.host, admin_port=self._admin.port)
            log.event(_log, "admin_listening", host=cfg.admin.host, port=self._admin.port)
        log.event(_log, "ready", targets=sorted(cfg.targets), **fields)

    def _admin_routers(self, gateway: Gateway) -> list[Router]:
        """API routers on the admin listener, one per concern."""
        routers: list[Router] = []
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

    def _install_sighup(self, gateway: Gateway) -> None:
        """SIGHUP reloads the policy file (a broken file is logged; the old policy stays) and
        starts a new audit segment (picking up a rotated signing key)."""

        def hup() -> None:
            gateway.reload_policy()
            gateway.reopen_audit()

        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            return
        self._signals_installed.append(signal.SIGHUP)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals_installed:
            loop.remove_signal_handler(sig)
        self._signals_installed.clear()

    async def wait(self) -> int:
        """Wait for a stop request, drain, close; returns the exit code (0)."""
        assert self._gateway is not None, "not started"
        gateway = self._gateway
        try:
            reason, immediate = await self._requests.get()
            if self.health is not None:
                self.health.draining = True
            timeout = self.config.shutdown.drain_timeout_s
            if not immediate:
                log.event(
                    _log,
                    "draining",
                    reason=reason,
                    timeout_s=timeout,
                    sessions=gateway.session_count(),
                )
                drain = asyncio.create_task(gateway.drain(timeout))
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
        if self._gateway is not None:
            gateway, self._gateway = self._gateway, None
            try:
                await gateway.close()
            except Exception as e:
                log.event(_log, "close_failed", logging.ERROR, error=repr(e))
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()
        aclose = getattr(self._authenticator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as e:
                log.event(_log, "close_failed", logging.ERROR, error=repr(e))


async def serve(
    config: GatewayConfig,
    *,
    authenticator: Authenticator | None = None,
    on_ready: Callable[[Service], None] | None = None,
) -> int:
    """Run the gateway until a signal (or ``service.stop()`` from ``on_ready``'s holder)."""
    service = Service(config, authenticator)
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


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(config: GatewayConfig) -> int:
    """Run the gateway on uvloop until SIGTERM/SIGINT; returns the process exit code."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config))
