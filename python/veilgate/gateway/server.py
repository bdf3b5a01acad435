"""The listener: accepts clients, negotiates TLS, and runs one :class:`Session` per client.

:class:`Gateway` is the entry point for the CLI, the demo, the tests and the bench;
:func:`run_in_thread` runs one on a uvloop loop in a background thread for blocking clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import veilgate_native as native

from veilgate import bytecache, log, metrics
from veilgate.config_model import AuditConfig, GatewayConfig, TargetConfig
from veilgate.gateway.accounting import Accounting
from veilgate.gateway.cancel import CancelRegistry, cancel_digest
from veilgate.gateway.limits import ConnectionCounter
from veilgate.gateway.listener import bind_listener
from veilgate.gateway.pool import UpstreamPool
from veilgate.gateway.recording import open_recording
from veilgate.gateway.session import ADMIN_SHUTDOWN, Session
from veilgate.gateway.workerlink import WorkerCancelServer, WorkerSpec, forward_cancel
from veilgate.identity.base import Authenticator, Principal
from veilgate.masking.catalog import Catalog
from veilgate.masking.keys import HashKey, KeyGenerations, MaskingUnavailable
from veilgate.pgwire import tlsnative, upstream, wire
from veilgate.pgwire.negotiate import (
    ClientGone,
    NegotiationError,
    Outcome,
    negotiate,
)
from veilgate.policy.audit import AuditSink, JsonLinesAuditSink, TeeAuditSink
from veilgate.policy.diff import policy_changes
from veilgate.policy.engine import PolicyEngine
from veilgate.policy.loader import load_policy
from veilgate.policy.model import Policy
from veilgate.policy.reload import PolicyFileWatcher

if TYPE_CHECKING:
    from veilgate.approvals.service import ApprovalService
    from veilgate.audit.recorder import Recorder
    from veilgate.gateway.recording import SessionRecording
    from veilgate.masking.planner import SessionMasking

logger = log.get("gateway")

T = TypeVar("T")

PLAINTEXT_REFUSED = wire.fatal(
    "28000",
    "connection without TLS is not allowed by the gateway",
    hint="Connect with sslmode=verify-full (or require).",
)
NO_ALPN = wire.fatal(
    "08P01",
    "received direct SSL connection request without ALPN protocol negotiation extension",
)
TERMINATED_BY_ADMIN = wire.fatal("57P01", "terminating connection due to administrator command")
CANCEL_FORWARD_TIMEOUT_S = 5.0
CANCEL_RELAY_PER_S = 64
"""CancelRequests for unknown sessions passed on to other gateways, at most, per second."""
ACCEPT_BATCH = 64
"""Connections taken off the accept queue per readiness callback."""
ACCEPT_BACKOFF_S = 0.05
"""Pause after a failed accept (out of file descriptors...)."""
POLICY_CHECK_INTERVAL_S = 1.0
"""How often the policy file's mtime/size/inode are looked at for a reload."""


def _over_limit_margin(limit: int) -> int:
    """Connections beyond ``listen.max_connections`` that still get PostgreSQL's polite
    ``53300`` refusal (after TLS and the startup packet) instead of a bare close."""
    return max(16, limit // 10)


ServerTLS = ssl.SSLContext | native.TlsServerConfig
"""The client-facing TLS of one configuration generation: Python's or the native engine's."""


def server_ssl_context(config: GatewayConfig) -> ServerTLS | None:
    """The client-facing TLS context (ALPN ``postgresql``), or ``None`` without a certificate:
    a ``native.TlsServerConfig`` with ``tls.engine: native``.  Raises ``ssl.SSLError``,
    ``OSError`` or ``ValueError`` for files that cannot be used."""
    tls = config.tls
    if tls.cert_file is None:
        return None
    if tlsnative.uses_native(config):
        return tlsnative.server_config(config)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    ctx.set_alpn_protocols([upstream.ALPN])
    return ctx


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _name(session: Session) -> str | None:
    return session.target.name if session.target is not None else None


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    try:
        if data:
            sock.send(data)
    except OSError:
        pass
    finally:
        sock.close()


class Gateway:
    """An identity-aware PostgreSQL gateway listening on ``config.listen``."""

    def __init__(
        self,
        config: GatewayConfig,
        authenticator: Authenticator,
        worker: WorkerSpec | None = None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.worker = worker
        """This process's place among ``serve --workers N`` (None: the only process)."""
        self.cancel_registry: CancelRegistry[Session] = (
            CancelRegistry(worker.id, worker.bits) if worker is not None else CancelRegistry()
        )
        self._worker_cancels: WorkerCancelServer | None = None
        self._relay_window = 0.0
        self._relayed = 0
        self.connection_counter = ConnectionCounter()
        self.upstream_pool = UpstreamPool()
        """Idle upstream connections for reuse (targets' ``pool``; empty when it is off)."""
        """Sessions per principal and per policy tier (limits.max_connections_per_principal,
        a tier's max_connections)."""
        self._ssl = server_ssl_context(config)
        self._sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cancels: set[asyncio.Task[Any]] = set()
        """Cancels of statements whose session ended (awaited by drain / close)."""
        self._lsock: socket.socket | None = None
        self._port = 0
        self._accepting = False
        self._closing = False
        self.paused_targets: dict[str, asyncio.Event] = {}
        self.accounting = Accounting(lambda: self._sessions)
        """Per target and tier session metrics (ended sessions' totals + live counts)."""
        """Targets an administrator paused: new sessions wait for the event (set on resume)."""
        """Draining (or closing): a handshake that completes now gets 57P01."""
        self._all_closed: asyncio.Event | None = None
        self.policy_engine: PolicyEngine | None = None
        self.policy_watcher: PolicyFileWatcher | None = None
        self.audit_sink: AuditSink | None = None
        """Where masking counts go (the JSON-lines log and/or the session recorder)."""
        self.decision_sink: AuditSink | None = None
        """Where the policy enforcer sends a DecisionEvent per decision (the JSON-lines log);
        the session recorder gets decisions from the enforcer directly, with no event object."""
        self.recorder: Recorder | None = None
        """The session recorder (``audit`` section)."""
        self._policy_timer: asyncio.TimerHandle | None = None
        self._catalogs: dict[tuple[str, str, int, str, str], Catalog] = {}
        """Masking catalogs, one per upstream login (shared by that login's sessions)."""
        self.approvals: ApprovalService | None = None
        """Just-in-time approvals (with a policy); its store opens when a rule needs it."""
        self.hash_keys = KeyGenerations()
        """The masking hash key's generations (read at start, on reloads and on first use)."""
        bytecache.set_total_budget(config.limits.cache_bytes)
        self.generation = 1
        """The configuration generation serving new sessions (bumped by each applied reload)."""
        if config.audit is not None:
            from veilgate.audit.recorder import Recorder

            # raises ValueError naming a bad key (`veilgate serve` validated the config)
            self.recorder = Recorder(
                self._worker_audit(config.audit), state=config.state, config_source=config.source
            )
        if config.policy is not None:
            # raises PolicyError (file, line, key): `veilgate serve` validated it already
            self._setup_policy(config, load_policy(config.policy.file))
            self._load_hash_key()

    def _worker_audit(self, audit: AuditConfig) -> AuditConfig:
        """With ``--workers N`` (N > 1) worker ``k`` records into ``<audit.dir>/worker-<k>``:
        a recording directory has one writer (its lock), each with its own hash chain."""
        worker = self.worker
        if worker is None or worker.count <= 1:
            return audit
        base = Path(audit.dir)
        base.mkdir(mode=0o700, parents=False, exist_ok=True)
        return dataclasses.replace(audit, dir=str(base / f"worker-{worker.id}"))

    def _setup_policy(self, config: GatewayConfig, policy: Policy) -> None:
        """The policy engine, its file watcher, the decision log and approvals (at start, or
        when a reload adds the ``policy`` section)."""
        from veilgate.approvals.service import ApprovalService

        assert config.policy is not None
        self.policy_engine = PolicyEngine(policy)
        self.policy_watcher = PolicyFileWatcher(
            config.policy.file,
            self.policy_engine,
            require_end_marker=config.policy.require_end_marker,
        )
        if config.policy.audit_log is not None:
            self.decision_sink = JsonLinesAuditSink(config.policy.audit_log)
        sinks = [s for s in (self.decision_sink, self.recorder) if s is not None]
        if len(sinks) == 2:
            self.audit_sink = TeeAuditSink(*sinks)
        elif sinks:
            self.audit_sink = sinks[0]
        self.approvals = ApprovalService(config.state, config.approvals, audit=self.audit_sink)
        self.approvals.cancel_handler = self._relayed_cancel
        self.approvals.verdict_cache = self.policy_engine.native_verdicts

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None, *, accept: bool = True) -> None:
        """Bind ``config.listen`` (port 0 picks an ephemeral port), or serve on ``sock`` (a
        listening socket handed over by the process serving before this one); start accepting
        unless ``accept`` is false (then :meth:`resume_accepting` starts)."""
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        if sock is not None:
            lsock = sock
            lsock.setblocking(False)
        elif self.worker is not None:
            # every worker binds the same address; the kernel spreads connections over them
            lsock = await bind_listener(
                listen.host, self.worker.port, listen.backlog, reuse_port=True
            )
        else:
            lsock = await bind_listener(listen.host, listen.port, listen.backlog)
        try:
            if self.worker is not None:
                cancels = WorkerCancelServer(self.worker, self._forwarded_cancel)
                await cancels.start()
                self._worker_cancels = cancels
            if self.recorder is not None:
                await self.recorder.start()
        except BaseException:
            lsock.close()
            await self._close_worker_cancels()
            raise
        self._lsock = lsock
        self._port = lsock.getsockname()[1]
        metrics.SESSION_ROLLUPS.append(self.accounting.rollup)
        if accept:
            self.resume_accepting()
        if self.policy_watcher is not None:
            self._policy_timer = loop.call_later(POLICY_CHECK_INTERVAL_S, self._policy_tick)
        await self._start_approvals()
        log.event(
            logger,
            "listening",
            host=listen.host,
            port=self._port,
            tls=self._ssl is not None,
            targets=sorted(self.config.targets),
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def listening_socket(self) -> socket.socket | None:
        """The listening socket (for a hand-over to the next process)."""
        return self._lsock

    def resume_accepting(self) -> None:
        """Accept connections on the listening socket (again)."""
        if self._lsock is None or self._accepting:
            return
        self._accepting = True
        asyncio.get_running_loop().add_reader(self._lsock.fileno(), self._accept_ready)

    def pause_accepting(self) -> None:
        """Stop taking connections off the queue, keep the socket: connections that arrive wait
        in the kernel's accept queue for whoever accepts next (this process again, or the one
        it handed the socket to).  Sessions accepted before keep going.  Accepting is a
        readiness callback, not a task, so pausing never loses a connection already accepted."""
        if self._accepting and self._lsock is not None:
            asyncio.get_running_loop().remove_reader(self._lsock.fileno())
        self._accepting = False

    def session_count(self) -> int:
        return len(self._sessions)

    # --- policy ----------------------------------------------------------------------------------

    def reload_policy(self, force: bool = True) -> bool | None:
        """Reload the policy file (SIGHUP; ``force=False``: only if it changed).  A broken file
        is logged and the old policy keeps serving.  True/False = reloaded/refused, None =
        unchanged or no policy."""
        watcher, engine = self.policy_watcher, self.policy_engine
        if watcher is None or engine is None:
            return None
        generation = engine.generation
        try:
            result = watcher.reload() if force else watcher.check()
        except Exception:
            logger.exception("policy reload failed")
            return False
        if engine.generation != generation:
            self._policy_changed()
        return result

    def _load_hash_key(self) -> None:
        """Read the masking hash key at start, so that the log and the admin console name its
        generation; one that cannot be read is logged, and read again by the next masked
        session (refused until then: fail closed)."""
        masking = self.policy_engine.policy.masking if self.policy_engine is not None else None
        if masking is not None and masking.uses_hash:
            with contextlib.suppress(MaskingUnavailable):
                self.hash_keys.for_session(masking.hash_key_env, masking.hash_key_file)

    def _policy_changed(self) -> None:
        for session in list(self._sessions):
            session.policy_reloaded()
        self._spawn(self._start_approvals())

    def reconfigure(
        self,
        config: GatewayConfig,
        ssl_context: ServerTLS | None,
        policy: Policy | None,
        hash_key: tuple[bytes, str] | None = None,
    ) -> None:
        """Serve new sessions with ``config`` (a reload; see :mod:`veilgate.reload`).

        Everything that can fail (the certificate, the policy file, the masking hash key) was
        loaded by the caller, so this swaps without failing.  Running sessions keep their
        principal, tier, upstream login and hash key; the new policy applies to their next
        statements, as on a policy file reload.  ``hash_key``: the key (and its source) read
        whole for this generation: a changed one is the next key generation (:mod:`.keys`)."""
        self.config = config
        self._ssl = ssl_context
        self.generation += 1
        if hash_key is not None:
            self.hash_keys.install(*hash_key, "reload")
        # idle upstream connections were made under the old configuration (logins, passwords,
        # TLS): closed; sessions of the old generation close theirs at their end
        self.upstream_pool.flush()
        bytecache.set_total_budget(config.limits.cache_bytes)
        if config.policy is None or policy is None:
            return
        engine = self.policy_engine
        if engine is None:
            self._setup_policy(config, policy)
            if self._accepting and self._policy_timer is None:
                loop = asyncio.get_running_loop()
                self._policy_timer = loop.call_later(POLICY_CHECK_INTERVAL_S, self._policy_tick)
            # a running session whose tier the new policy masks ends (fail closed)
            self._policy_changed()
            return
        watcher = self.policy_watcher
        if (
            watcher is None
            or watcher.path != config.policy.file
            or watcher.require_end_marker != config.policy.require_end_marker
        ):
            self.policy_watcher = PolicyFileWatcher(
                config.policy.file, engine, require_end_marker=config.policy.require_end_marker
            )
        old = engine.policy
        if policy.digest != old.digest:
            # the caller checked it with policy.reload.reload_refusal (end marker, masking)
            engine.reload(policy)
            log.event(
                logger,
                "policy_reloaded",
                file=str(config.policy.file),
                digest=policy.digest[:12],
                previous=old.digest[:12],
                tiers=len(policy.tiers),
                generation=engine.generation,
                changes={n: ch.as_dict() for n, ch in policy_changes(old, policy).items()},
            )
            self._policy_changed()

    async def _start_approvals(self) -> None:
        """Open the approval store once the policy has approve rules or elevation tiers (a store
        that is down is logged; approvals then fail closed and the next need retries)."""
        from veilgate.approvals.policy import needs_approvals

        engine, service = self.policy_engine, self.approvals
        if engine is not None and service is not None and needs_approvals(engine.policy):
            await service.start()

    def masking_planner(
        self, principal: Principal, login: TargetConfig, key: HashKey | None = None
    ) -> SessionMasking | None:
        """A masking planner for a session of ``principal`` upstream as ``login``, or None when
        its policy tier is not masked.  ``key``: the hash key generation the session started
        with (a running session keeps it across reloads); None: the live one.  Raises
        ``MaskingUnavailable`` when the tier is masked but the masking cannot be built (the
        session is then refused)."""
        engine = self.policy_engine
        if engine is None:
            return None
        masking = engine.policy.masking
        tier = engine.tier_for(principal)
        if masking is None or tier is None or not masking.applies_to(tier.name):
            return None
        if key is None and masking.uses_hash:
            key = self.hash_keys.for_session(masking.hash_key_env, masking.hash_key_file)
        tier_masking = masking.for_tier(tier.name, key)
        if tier_masking is None:
            return None
        # build the native maskers now (hash key included): a tier that cannot be masked
        # refuses its sessions at startup, not at their first result
        tier_masking.scanner  # noqa: B018
        from veilgate.masking.planner import SessionMasking

        where = (login.name, login.host, login.port, login.dbname, login.user)
        catalog = self._catalogs.get(where)
        if catalog is None:
            catalog = self._catalogs[where] = Catalog.for_target(login)
        return SessionMasking(tier_masking, catalog)

    def open_recording(self, session: Session) -> SessionRecording | None:
        """Start recording a session that begins relaying (None without an ``audit`` section)."""
        if self.recorder is None:
            return None
        return open_recording(self.recorder, session)

    def reopen_audit(self) -> None:
        """SIGHUP: start a new audit segment (and pick up a rotated signing key); reopen the
        JSON-lines log (logrotate moved it)."""
        if self.recorder is not None:
            self.recorder.rotate()
        reopen = getattr(self.decision_sink, "reopen", None)
        if reopen is not None:
            reopen()

    def _policy_tick(self) -> None:
        self._policy_timer = None
        self.reload_policy(force=False)
        if self._lsock is not None or self._sessions:
            loop = asyncio.get_running_loop()
            self._policy_timer = loop.call_later(POLICY_CHECK_INTERVAL_S, self._policy_tick)

    async def _close_catalogs(self) -> None:
        catalogs = list(self._catalogs.values())
        self._catalogs.clear()
        for c in catalogs:
            await c.close()

    async def _close_approvals(self) -> None:
        if self.approvals is not None:
            await self.approvals.close()

    def _close_policy(self) -> None:
        if self._policy_timer is not None:
            self._policy_timer.cancel()
            self._policy_timer = None
        if self.decision_sink is not None:
            self.decision_sink.close()
            self.decision_sink = None
        self.audit_sink = None

    async def _close_recorder(self) -> None:
        """Every session has ended (and queued its terminator): write it all, close the
        segment (in a thread: the writer may be waiting for a full disk)."""
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            await recorder.stop()

    def _stop_accepting(self) -> None:
        self.pause_accepting()
        self._closing_metrics()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None

    async def _close_worker_cancels(self) -> None:
        """The last thing to go: a sibling may pass a cancel on until the sessions are gone."""
        if self._worker_cancels is not None:
            cancels, self._worker_cancels = self._worker_cancels, None
            await cancels.close()

    async def drain(self, timeout: float, *, wait_for_clients: bool = False) -> None:  # noqa: ASYNC109
        """Stop accepting; end idle sessions with 57P01 now and busy ones at their next
        ReadyForQuery; at the deadline close whatever is left.

        ``wait_for_clients`` (after a hand-over to a new process): first let every session,
        handshakes in progress included, go on until its client ends it, for up to ``timeout``;
        only then drain what is left as above."""
        self._stop_accepting()
        self.upstream_pool.close()
        if wait_for_clients and self._sessions:
            log.event(logger, "handover_wait", sessions=len(self._sessions), timeout_s=timeout)
            await self._wait_all_closed(timeout)
        self._closing = True
        log.event(logger, "draining", sessions=len(self._sessions), timeout_s=timeout)
        for session in list(self._sessions):
            session.drain()
        if not await self._wait_all_closed(timeout):
            log.event(logger, "drain_deadline", logging.WARNING, sessions=len(self._sessions))
        for session in list(self._sessions):
            session.abort()
        await self._await_cancels()
        await self._cancel_tasks()
        await self._close_approvals()
        self._close_policy()
        await self._close_recorder()
        await self._close_catalogs()
        await self._close_worker_cancels()

    async def _wait_all_closed(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until no session is left (True) or ``timeout`` passed (False)."""
        if not self._sessions:
            return True
        self._all_closed = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
        except TimeoutError:
            return False
        finally:
            self._all_closed = None
        return True

    async def close(self) -> None:
        """Stop accepting and drop every session now."""
        self._stop_accepting()
        self.upstream_pool.close()
        self._closing = True
        for session in list(self._sessions):
            session.close(ADMIN_SHUTDOWN, "gateway_close")
        await self._await_cancels()
        await self._cancel_tasks()
        await self._close_approvals()
        self._close_policy()
        await self._close_recorder()
        await self._close_catalogs()
        await self._close_worker_cancels()
        self.accounting.detach()
        await asyncio.sleep(0)

    async def _await_cancels(self) -> None:
        """Let the cancels of abandoned statements reach the server (bounded)."""
        pending = [t for t in self._cancels if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CANCEL_FORWARD_TIMEOUT_S + 1)

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def session_closed(self, session: Session) -> None:
        if session in self._sessions:
            self.accounting.session_ended(session)
            self._sessions.discard(session)
            metrics.connections_active.dec()
            if not self._sessions and self._all_closed is not None:
                self._all_closed.set()

    # --- accepting -------------------------------------------------------------------------------

    def _accept_ready(self) -> None:
        """The listening socket is readable: accept what is queued (bounded per wake-up)."""
        lsock = self._lsock
        for _ in range(ACCEPT_BATCH):
            if not self._accepting or lsock is None:
                return
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS...: back off, the queue keeps them
                log.event(logger, "accept_failed", logging.ERROR, error=str(exc))
                self.pause_accepting()
                asyncio.get_running_loop().call_later(ACCEPT_BACKOFF_S, self._accept_again, lsock)
                return
            self._accepted(sock, addr)

    def _accept_again(self, lsock: socket.socket) -> None:
        if self._lsock is lsock and not self._closing:
            self.resume_accepting()

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        metrics.connections_total.inc()
        limit = self.config.listen.max_connections
        if len(self._sessions) >= limit + _over_limit_margin(limit):
            # far over the limit: not even a polite refusal (bounded work under a flood)
            metrics.errors_total.inc(kind="too_many_connections")
            sock.close()
            return
        self._spawn(self._handle(sock, addr, over_limit=len(self._sessions) >= limit))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handle(self, sock: socket.socket, addr: Any, *, over_limit: bool = False) -> None:
        loop = asyncio.get_running_loop()
        host, port = str(addr[0]), int(addr[1])
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock.setblocking(False)
        upstream.tune_socket(sock)
        deadline = loop.time() + self.config.listen.handshake_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                neg = await negotiate(loop, sock, tls_available=self._ssl is not None)
        except NegotiationError as exc:
            metrics.errors_total.inc(kind="negotiation")
            log.event(logger, "negotiation_failed", logging.INFO, peer=peer, reason=exc.reason)
            _send_and_close(sock, exc.reply)
            return
        except (ClientGone, TimeoutError, OSError):
            sock.close()
            return
        except asyncio.CancelledError:
            sock.close()
            raise

        if neg.outcome is Outcome.CANCEL:
            assert neg.packet is not None
            try:
                await self.handle_cancel(neg.packet)
            finally:
                sock.close()
            return
        if neg.outcome is Outcome.PLAIN and not (
            self.config.tls.allow_plaintext_loopback and _is_loopback(host)
        ):
            metrics.errors_total.inc(kind="tls")
            log.event(logger, "plaintext_refused", logging.INFO, peer=peer)
            _send_and_close(sock, PLAINTEXT_REFUSED)
            return

        session = Session(self, peer)
        session.over_limit = over_limit
        session.handshake_task = asyncio.current_task()
        self._sessions.add(session)
        metrics.connections_active.inc()
        server_tls = self._ssl
        try:
            if neg.outcome is Outcome.PLAIN:
                await loop.connect_accepted_socket(lambda: session.client, sock)
            elif isinstance(server_tls, native.TlsServerConfig):
                # the handshake on the raw socket; then a plain transport whose buffer
                # decrypts (the configuration of this moment: a reload serves new sessions)
                conn = native.TlsConnection.server(server_tls)
                async with asyncio.timeout_at(deadline):
                    await tlsnative.handshake(loop, sock, conn)
                session.client_rb.attach_tls(conn)
                session.client_tls = conn
                await loop.connect_accepted_socket(lambda: session.client, sock)
            else:
                remaining = max(deadline - loop.time(), 0.001)
                await loop.connect_accepted_socket(
                    lambda: session.client,
                    sock,
                    ssl=server_tls,
                    ssl_handshake_timeout=remaining,
                    ssl_shutdown_timeout=upstream.SSL_SHUTDOWN_TIMEOUT_S,
                )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, native.TlsError) as exc:
            metrics.errors_total.inc(kind="tls")
            log.event(logger, "tls_failed", logging.INFO, peer=peer, error=str(exc))
            sock.close()
            session.close(None, "tls_failed")
            return
        except asyncio.CancelledError:
            sock.close()
            session.close(None, "cancelled")
            raise
        if neg.outcome is Outcome.DIRECT_TLS:
            ssl_object = session.client_transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != upstream.ALPN:
                metrics.errors_total.inc(kind="tls")
                log.event(logger, "direct_tls_without_alpn", logging.INFO, peer=peer)
                session.close(NO_ALPN, "no_alpn")
                return
        if self._closing:
            session.close(ADMIN_SHUTDOWN, "drain")
            return
        await session.run_handshake(neg.packet if neg.outcome is Outcome.PLAIN else None, deadline)

    def _closing_metrics(self) -> None:
        """Stopped accepting: the totals stay in the exposition (counters never go back while
        the process runs); the live sessions are counted until they end."""

    # --- the admin console ----------------------------------------------------------------------

    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def find_session(self, session_id: str) -> Session | None:
        for session in self._sessions:
            if session.id == session_id:
                return session
        return None

    def terminate_session(self, session: Session, by: str) -> None:
        """End a session now (57P01), as pg_terminate_backend does."""
        log.event(logger, "session_terminated", id=session.id, by=by, target=_name(session))
        session.close(TERMINATED_BY_ADMIN, "terminated")

    async def cancel_session(self, session: Session, by: str) -> str:
        """Cancel the session's running statement upstream: ``cancelled``, ``idle`` (nothing
        runs) or ``failed``."""
        if session.enforcer is not None and session.enforcer.cancel_wait():
            return "cancelled"  # it waited for an approval in the gateway
        if not session.state.busy or session.upstream_pid is None:
            return "idle"
        if not await self._send_upstream_cancel(session):
            return "failed"
        metrics.cancel_requests_total.inc(outcome="admin")
        log.event(logger, "session_cancelled", id=session.id, by=by, target=_name(session))
        return "cancelled"

    def pause_target(self, name: str, by: str) -> bool:
        """New sessions for ``name`` wait (up to their handshake deadline) until resumed;
        running sessions go on.  False when there is no such target."""
        if name not in self.config.targets:
            return False
        if name not in self.paused_targets:
            self.paused_targets[name] = asyncio.Event()
            log.event(logger, "target_paused", logging.WARNING, target=name, by=by)
        return True

    def resume_target(self, name: str, by: str) -> bool:
        if name not in self.config.targets and name not in self.paused_targets:
            return False
        event = self.paused_targets.pop(name, None)
        if event is not None:
            event.set()
            log.event(logger, "target_resumed", target=name, by=by)
        return True

    # --- cancel -----------------------------------------------------------------------------------

    async def handle_cancel(self, packet: bytes, *, from_worker: bool = False) -> None:
        """Forward a CancelRequest for a known, busy session; ignore everything else.

        With ``--workers N``, a key whose worker bits name a sibling goes to that worker
        (``from_worker``: a sibling passed it here; it is never passed on to a worker again)."""
        try:
            request = wire.parse_cancel_request(packet)
        except wire.WireError:
            metrics.cancel_requests_total.inc(outcome="invalid")
            return
        session = self.cancel_registry.lookup(request.pid, request.key)
        if session is None:
            worker = self.worker
            if worker is not None and not from_worker:
                owner = self.cancel_registry.worker_of(request.key, worker.bits)
                if owner != worker.id and await forward_cancel(worker, owner, packet):
                    metrics.cancel_requests_total.inc(outcome="to_worker")
                    return
            await self._relay_cancel(request.pid, request.key)
            return
        await self._cancel_session(session)

    async def _forwarded_cancel(self, packet: bytes) -> None:
        metrics.cancel_requests_total.inc(outcome="from_worker")
        await self.handle_cancel(packet, from_worker=True)

    async def _relay_cancel(self, pid: int, key: bytes) -> None:
        """A CancelRequest for no session of this gateway: with approvals' shared store
        started, every gateway using it is told (the pid and a digest of the secret), and the
        one holding the session cancels it (a load balancer sends a CancelRequest to any
        gateway).  Bounded per second: a flood of made-up keys is not multiplied."""
        service = self.approvals
        now = asyncio.get_running_loop().time()
        if now - self._relay_window >= 1.0:
            self._relay_window, self._relayed = now, 0
        if service is None or not service.started or self._relayed >= CANCEL_RELAY_PER_S:
            metrics.cancel_requests_total.inc(outcome="unknown")
            return
        self._relayed += 1
        if await service.relay_cancel(pid, cancel_digest(pid, key)):
            metrics.cancel_requests_total.inc(outcome="relayed")
        else:
            metrics.cancel_requests_total.inc(outcome="unknown")

    def _relayed_cancel(self, pid: int, digest: str) -> None:
        """Another gateway received a CancelRequest: cancel the session here it names, if any."""
        session = self.cancel_registry.lookup_digest(pid, digest)
        if session is not None:
            self._spawn(self._cancel_session(session, relayed=True))

    async def _cancel_session(self, session: Session, *, relayed: bool = False) -> None:
        if relayed:
            metrics.cancel_requests_total.inc(outcome="from_peer")
        if session.enforcer is not None and session.enforcer.cancel_wait():
            # the statement waits for an approval in the gateway: it never reached the server
            metrics.cancel_requests_total.inc(outcome="approval_wait")
            return
        if not session.state.busy or session.target is None:
            metrics.cancel_requests_total.inc(outcome="idle")
            return
        if await self._send_upstream_cancel(session):
            metrics.cancel_requests_total.inc(outcome="forwarded")
            log.event(
                logger,
                "cancel_forwarded",
                principal=session.principal.label() if session.principal else None,
                target=session.target.name,
            )

    async def _send_upstream_cancel(self, session: Session) -> bool:
        pid, key, target = session.upstream_pid, session.upstream_key, session.target
        if pid is None or key is None or target is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CANCEL_FORWARD_TIMEOUT_S):
                await upstream.send_cancel(loop, target, pid, key)
        except (OSError, ssl.SSLError, TimeoutError, upstream.UpstreamError) as exc:
            metrics.cancel_requests_total.inc(outcome="failed")
            log.event(logger, "cancel_failed", logging.WARNING, target=target.name, error=str(exc))
            return False
        return True

    def cancel_abandoned(self, session: Session, reason: str) -> None:
        """A session ends while its statement runs upstream (the client went away, the drain
        deadline passed): cancel that statement on the server, which would otherwise run it to
        the end (it notices the closed connection only when it next writes)."""
        if session.upstream_pid is None or session.target is None:
            return

        async def cancel() -> None:
            if await self._send_upstream_cancel(session):
                metrics.cancel_requests_total.inc(outcome="abandoned")
                log.event(
                    logger,
                    "upstream_statement_cancelled",
                    principal=session.principal.label() if session.principal else None,
                    target=session.target.name if session.target else None,
                    reason=reason,
                )

        task = self._spawn(cancel())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)


class GatewayThread:
    """A :class:`Gateway` on a uvloop loop in a background thread (for blocking clients)."""

    def __init__(
        self, config: GatewayConfig, authenticator: Authenticator, *, use_uvloop: bool = True
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.use_uvloop = use_uvloop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gateway: Gateway | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> GatewayThread:
        self._thread = threading.Thread(target=self._run, name="veilgate-gateway", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("gateway failed to start") from self._error
        if self.gateway is None:
            raise RuntimeError("gateway did not start in time")
        return self

    def _run(self) -> None:
        if self.use_uvloop:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            gateway = Gateway(self.config, self.authenticator)
            loop.run_until_complete(gateway.start())
            self.gateway = gateway
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run ``coro`` on the gateway's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def session_count(self) -> int:
        assert self.gateway is not None
        gateway = self.gateway

        async def count() -> int:
            return gateway.session_count()

        return self.call(count())

    def drain(self, timeout: float) -> None:
        assert self.gateway is not None
        self.call(self.gateway.drain(timeout), timeout + 30)

    def stop(self) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if self.gateway is not None:
            try:
                self.call(self.gateway.close(), 30)
            except Exception:
                logger.exception("gateway close failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    def __enter__(self) -> GatewayThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_thread(
    config: GatewayConfig, authenticator: Authenticator, *, use_uvloop: bool = True
) -> GatewayThread:
    """Start a gateway in a background thread (on uvloop unless ``use_uvloop=False``); use as a
    context manager or call ``.stop()``."""
    return GatewayThread(config, authenticator, use_uvloop=use_uvloop).start()
