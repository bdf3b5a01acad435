"""The gateway's approvals: the store, wake-ups, grant checks, elevations, audit and metrics.

One :class:`ApprovalService` per gateway process.  Sessions call it when a statement matched an
``approve`` rule (:mod:`veilgate.gateway.approval`); the admin API calls it for votes.  It
listens on the store's channel: a notification (a request made, a vote cast, anywhere) makes it
re-read that request, wake the sessions waiting on it, apply an approved elevation to this node's
sessions of that principal, and audit the new votes -- each vote is claimed by exactly one gateway
(:meth:`ApprovalStore.claim_votes`), so each is audited and counted once whichever node or CLI
cast it.

Grant checks: a grant with a use limit is consumed in the store (one conditional ``UPDATE``: never
more uses than allowed, however many gateways); a grant without one (``grant_uses: 0``) is cached
on first use and later uses are counted in memory and added to the store by the sweeper, so the
allowed path of such a rule costs two dictionary lookups -- or none: the session's Query texts
that ran on it are answered by the native verdict cache (:meth:`handle`, a
:class:`veilgate_native.GrantHandle` counting the uses, live until the grant's expiry).  A cached
grant stops being used the moment this node learns that it ended: revoked here
(:meth:`revoke`), a notification about its request from any node (it is dropped; its next use
asks the store), the sweeper, or lost notifications (every cached grant is dropped).
Fingerprints of texts are cached.

Failures of the store never block the event loop and never let a statement through: callers get
:class:`StateUnavailable` and refuse the statement (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import veilgate_native

from .. import log, metrics
from ..config_model import ApprovalsConfig, StateConfig
from ..identity.base import Principal
from ..policy.audit import AuditEvent, AuditSink
from ..state import StateDB, StateUnavailable, open_state
from .events import ApprovalEvent
from .fingerprint import fingerprint
from .model import KIND_ELEVATION, ApprovalError, Grant, Request, Vote, VoteResult
from .store import CHANNEL, ApprovalStore
from .webhooks import WebhookSender

__all__ = ["ApprovalService", "ElevationListener"]

logger = log.get("approvals")

_FP_CACHE_MAX: Final = 4096
CANCEL_CHANNEL: Final = "veilgate_cancel"
"""CancelRequests passed between gateways: ``<pid>:<digest of the secret>``."""
_DECIDED: Final = ("approved", "denied", "expired")


class ElevationListener(Protocol):
    """A session of some principal (:class:`veilgate.gateway.approval.ApprovalGate`)."""

    principal_key: str

    def elevation_changed(self, grant: Grant | None) -> None: ...


def _node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ApprovalService:
    def __init__(
        self,
        state: StateConfig,
        config: ApprovalsConfig,
        *,
        audit: AuditSink | None = None,
        db: StateDB | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_config = state
        self.config = config
        self.audit = audit
        self.clock = clock
        self.node = _node_id()
        self._db = db
        self._store: ApprovalStore | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._fingerprints: OrderedDict[tuple[str, bool, bool], str] = OrderedDict()
        self._open_grants: dict[tuple[str, str], Grant] = {}
        """Grants without a use limit this node has used: (principal key, fingerprint)."""
        self._uses: dict[str, int] = {}
        """Uses of cached grants not yet added to the store."""
        self._handles: dict[str, tuple[Grant, veilgate_native.GrantHandle]] = {}
        """Grant id -> the native handle the verdict cache answers that grant's uses from."""
        self.verdict_cache: veilgate_native.VerdictCache | None = None
        """The policy engine's native verdict cache (set by the gateway): entries of grants
        that ended are purged from it."""
        self._waiters: dict[str, set[asyncio.Future[Request]]] = {}
        self._elevations: dict[str, Grant] = {}
        self._elevation_timers: dict[str, asyncio.TimerHandle] = {}
        self._listeners: dict[str, set[ElevationListener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.webhooks = WebhookSender(config.webhooks, self.how_to_approve)
        self.cancel_handler: Callable[[int, str], None] | None = None
        """Called with (pid, digest) for a CancelRequest another gateway received (the gateway
        looks the session up in its own cancel keys)."""

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def store(self) -> ApprovalStore:
        """The store (its database is opened lazily; raises StateUnavailable when it cannot)."""
        if self._store is None:
            db = self._db if self._db is not None else open_state(self.state_config)
            self._db = db
            self._store = ApprovalStore(db, clock=self.clock)
        return self._store

    async def start(self) -> bool:
        """Open the store, listen, load live elevations, start the sweeper and the webhooks.
        Returns False (and logs) when the store is down: approvals then fail closed until it is
        back, and the next call retries."""
        if self._started or self._closed:
            return self._started
        async with self._start_lock:
            if self.started:  # another caller got there while this one waited for the lock
                return True
            try:
                store = self.store
                await store.open()
                await store.db.listen(CHANNEL, self._on_notify)
                await store.db.listen(CANCEL_CHANNEL, self._on_cancel)
                for g in await store.live_grants(KIND_ELEVATION):
                    self._set_elevation(g)
            except StateUnavailable as exc:
                log.event(logger, "approvals_store_unavailable", logging.ERROR, error=str(exc))
                return False
            self._started = True
            self.webhooks.start()
            self._schedule_sweep()
            log.event(logger, "approvals_started", store=store.db.describe(), node=self.node)
            return True

    @property
    def started(self) -> bool:
        return self._started

    async def ensure_started(self) -> None:
        """Raise StateUnavailable unless the store is open and listened to."""
        if not await self.start():
            raise StateUnavailable("the approval store is unavailable")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        for t in self._elevation_timers.values():
            t.cancel()
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.cancel()
        with contextlib.suppress(StateUnavailable):
            await self._flush_uses()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.webhooks.close()
        if self._db is not None:
            await self._db.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- text for clients ------------------------------------------------------------------------

    def how_to_approve(self, request_id: str) -> str:
        text = (
            f'an approver runs "veilgate approvals approve {request_id}" or uses the gateway\'s '
            f"approvals API (POST /v1/approvals/{request_id}/approve)"
        )
        if self.config.how_to_approve:
            text += f"; {self.config.how_to_approve}"
        return text

    # --- fingerprints ----------------------------------------------------------------------------

    def text_fingerprint(self, text: str, *, constants: bool, exact: bool) -> str:
        """The (cached) fingerprint of a text without parameters or prepared statements."""
        key = (text, constants, exact)
        cache = self._fingerprints
        fp = cache.get(key)
        if fp is None:
            fp = fingerprint(text, constants=constants, exact_text=exact)
            cache[key] = fp
            if len(cache) > _FP_CACHE_MAX:
                cache.popitem(last=False)
        return fp

    # --- grants ----------------------------------------------------------------------------------

    def cached_grant(self, principal_key: str, fp: str) -> Grant | None:
        """A grant without a use limit this node has used before, still live: counts a use."""
        g = self._open_grants.get((principal_key, fp))
        if g is None:
            return None
        if g.expires_at <= self.clock():
            self._forget(g)
            return None
        self._uses[g.id] = self._uses.get(g.id, 0) + 1
        return g

    def handle(self, grant: Grant) -> veilgate_native.GrantHandle | None:
        """The native handle of a cached grant without a use limit (made on first call), for
        the verdict cache to answer its uses; None when it is not cached here or has ended."""
        if self._open_grants.get((grant.principal_key, grant.fingerprint)) is not grant:
            return None
        held = self._handles.get(grant.id)
        if held is not None:
            return held[1] if held[1].live else None
        ttl = grant.expires_at - self.clock()
        if ttl <= 0:
            return None
        h = veilgate_native.GrantHandle(ttl)
        self._handles[grant.id] = (grant, h)
        return h

    def _forget(self, grant: Grant, *, purge: bool = True) -> None:
        """Stop using a cached grant (ended, revoked, expired): its native entries answer
        nothing from now on; the uses they counted are kept for the store."""
        key = (grant.principal_key, grant.fingerprint)
        if (cached := self._open_grants.get(key)) is not None and cached.id == grant.id:
            del self._open_grants[key]
        held = self._handles.pop(grant.id, None)
        if held is not None:
            held[1].revoke()
            if n := held[1].take_uses():
                self._uses[grant.id] = self._uses.get(grant.id, 0) + n
            if purge and self.verdict_cache is not None:
                self.verdict_cache.purge_grants()

    def forget_all(self) -> None:
        """Drop every cached grant (notifications may have been lost): uses go to the store."""
        for g in list(self._open_grants.values()):
            self._forget(g, purge=False)
        for g, _h in list(self._handles.values()):
            self._forget(g, purge=False)
        if self.verdict_cache is not None:
            self.verdict_cache.purge_grants()

    async def consume(self, principal_key: str, fp: str) -> Grant | None:
        """Use one run of a live grant (raises StateUnavailable)."""
        await self.ensure_started()
        g = await self.store.consume(principal_key, fp)
        if g is not None and g.unlimited:
            self._open_grants[(principal_key, fp)] = g
        return g

    def _take_native_uses(self) -> None:
        for gid, (g, h) in list(self._handles.items()):
            if n := h.take_uses():
                self._uses[gid] = self._uses.get(gid, 0) + n
            if not h.live:  # expired: its entries answer nothing
                del self._handles[gid]
                if self._open_grants.get((g.principal_key, g.fingerprint)) is g:
                    del self._open_grants[(g.principal_key, g.fingerprint)]

    async def _flush_uses(self) -> None:
        self._take_native_uses()
        uses, self._uses = self._uses, {}
        for gid, n in uses.items():
            try:
                await self.store.count_uses(gid, n)
            except StateUnavailable:
                self._uses[gid] = self._uses.get(gid, 0) + n  # next sweep
                raise

    async def revoke(
        self, request_id: str, *, by: str, via: str, comment: str = ""
    ) -> Grant | None:
        """End the grant of ``request_id`` now, on every node (the store notifies them); this
        node stops using it at once.  Returns the grant ended (None: it had none live)."""
        await self.ensure_started()
        grant = await self.store.revoke(request_id)
        if grant is not None:
            self._forget(grant)
            self.emit(
                ApprovalEvent.of_grant(
                    "grant_revoked", grant, principal_label=grant.principal_key, session_id=""
                )
            )
            log.event(
                logger, "grant_revoked", request_id=request_id, by=by, via=via, comment=comment
            )
        return grant

    # --- requests --------------------------------------------------------------------------------

    async def request(
        self,
        *,
        kind: str,
        principal: Principal,
        session_id: str,
        tier: str | None,
        rule_id: str,
        fingerprint: str,
        sql: str,
        params: list[str | None] | None,
        reason: str | None,
        requested_tier: str | None,
        spec: dict[str, Any],
    ) -> Request:
        """The open request for this principal and fingerprint (made now, audited and sent to
        the webhooks, when there was none)."""
        await self.ensure_started()
        req, created = await self.store.request(
            kind=kind,
            principal=principal,
            session_id=session_id,
            tier=tier,
            rule_id=rule_id,
            fingerprint=fingerprint,
            sql=sql,
            params=params,
            reason=reason,
            requested_tier=requested_tier,
            spec=spec,
            node=self.node,
        )
        if created:
            metrics.approval_requests_total.inc(kind=kind, outcome="requested")
            self.emit(ApprovalEvent.of_request("request", req))
            self.webhooks.send("request", req)
            log.event(
                logger,
                "approval_requested",
                request_id=req.id,
                kind=kind,
                principal=req.principal_label,
                rule_id=rule_id,
                fingerprint=fingerprint,
            )
        return req

    async def wait(self, request_id: str, timeout: float) -> Request | None:  # noqa: ASYNC109
        """The request once decided (approved, denied, expired); None after ``timeout``.
        Woken by the store's notification, never by polling."""
        await self.ensure_started()
        fut: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(request_id, set())
        waiters.add(fut)
        try:
            req = await self.store.get(request_id)  # decided before we listened?
            if req.status != "pending":
                return req
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                return None
        finally:
            waiters.discard(fut)
            if not waiters:
                self._waiters.pop(request_id, None)

    async def get(self, request_id: str) -> Request:
        await self.ensure_started()
        return await self.store.get(request_id)

    async def requests(self, *, status: str | None = None, limit: int = 100) -> list[Request]:
        await self.ensure_started()
        return await self.store.requests(status=status, limit=limit)

    async def vote(
        self,
        request_id: str,
        *,
        approver: str,
        approver_label: str,
        via: str,
        vote: str,
        comment: str,
        check: Callable[[Request], None],
    ) -> VoteResult:
        """Cast a vote (the HTTP API); auditing follows through the notification."""
        await self.ensure_started()
        return await self.store.vote(
            request_id,
            approver=approver,
            approver_label=approver_label,
            via=via,
            vote=vote,
            comment=comment,
            check=check,
        )

    # --- CancelRequests between gateways ----------------------------------------------------------

    async def relay_cancel(self, pid: int, digest: str) -> bool:
        """Tell every gateway sharing the store of a CancelRequest none here matched (False when
        the store is not started or fails: the cancel is then ignored, as by the server)."""
        if not self._started or self._closed:
            return False
        try:
            async with self.store.db.transaction() as tx:
                tx.notify(CANCEL_CHANNEL, f"{pid}:{digest}")
        except StateUnavailable as exc:
            log.event(logger, "cancel_relay_failed", logging.WARNING, error=str(exc))
            return False
        return True

    def _on_cancel(self, payload: str | None) -> None:
        handler = self.cancel_handler
        if payload is None or handler is None or self._closed:
            return
        pid, sep, digest = payload.partition(":")
        if not sep or len(digest) != 64:
            return
        try:
            handler(int(pid), digest)
        except ValueError:  # not a pid
            return
        except Exception:  # a bug: never crash the listener
            logger.exception("relayed cancel failed")

    # --- notifications ---------------------------------------------------------------------------

    def _on_notify(self, payload: str | None) -> None:
        if self._closed:
            return
        if payload is None:  # notifications may have been lost: re-read what matters here
            self.forget_all()  # fail closed: the next use of a cached grant asks the store
            for rid in list(self._waiters):
                self._spawn(self._refresh(rid))
            self._spawn(self._reload_elevations())
            return
        self._spawn(self._refresh(payload))

    async def _refresh(self, request_id: str) -> None:
        try:
            req, votes = await self.store.claim_votes(request_id)
        except StateUnavailable as exc:
            log.event(logger, "approvals_refresh_failed", logging.WARNING, error=str(exc))
            return
        except ApprovalError:  # an id that is no request (a stray wake-up datagram)
            return
        except Exception:  # a bug: never crash the loop
            logger.exception("approvals refresh failed")
            return
        self._check_cached(request_id)
        if req.status != "pending":
            for fut in list(self._waiters.get(request_id, ())):
                if not fut.done():
                    fut.set_result(req)
        for v in votes:
            self._audit_vote(req, v)
        if req.status == "approved" and req.kind == KIND_ELEVATION:
            try:
                grant = await self.store.grant_of(req.id)
            except StateUnavailable:
                return
            if grant is not None and grant.expires_at > self.clock():
                self._set_elevation(grant)

    def _check_cached(self, request_id: str) -> None:
        """A notification about ``request_id`` (a revoke, an expiry, a vote, on any node): a
        grant of it cached here is dropped at once (fail closed); its next use asks the store,
        which caches it again if it is still live."""
        cached = [g for g in self._open_grants.values() if g.request_id == request_id]
        cached += [g for g, _h in self._handles.values() if g.request_id == request_id]
        for g in cached:
            self._forget(g)

    def _audit_vote(self, req: Request, v: Vote) -> None:
        self.emit(ApprovalEvent.of_vote(req, v))
        if req.status in ("approved", "denied") and req.decided_at == v.at:
            # the vote that decided it: counted once, by whichever gateway claimed it
            metrics.approval_requests_total.inc(kind=req.kind, outcome=req.status)
            metrics.approval_decision_seconds.observe(max(0.0, v.at - req.created_at))
            self.emit(ApprovalEvent.of_request(req.status, req, ts=v.at))
            self.webhooks.send("decision", req)
            log.event(
                logger,
                "approval_decided",
                request_id=req.id,
                status=req.status,
                approver=v.approver_label,
                principal=req.principal_label,
            )

    # --- elevations ------------------------------------------------------------------------------

    def register(self, listener: ElevationListener) -> Grant | None:
        """A session of a principal started: its live elevation, if any."""
        self._listeners.setdefault(listener.principal_key, set()).add(listener)
        g = self._elevations.get(listener.principal_key)
        return g if g is not None and g.expires_at > self.clock() else None

    def unregister(self, listener: ElevationListener) -> None:
        group = self._listeners.get(listener.principal_key)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.principal_key]

    def _set_elevation(self, grant: Grant) -> None:
        current = self._elevations.get(grant.principal_key)
        if current is not None and current.id == grant.id:
            return
        self._elevations[grant.principal_key] = grant
        old = self._elevation_timers.pop(grant.principal_key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, grant.expires_at - self.clock())
        self._elevation_timers[grant.principal_key] = loop.call_later(
            delay, self._end_elevation, grant
        )
        for listener in list(self._listeners.get(grant.principal_key, ())):
            listener.elevation_changed(grant)

    def _end_elevation(self, grant: Grant) -> None:
        if self._elevations.get(grant.principal_key) is not grant:
            return
        del self._elevations[grant.principal_key]
        self._elevation_timers.pop(grant.principal_key, None)
        for listener in list(self._listeners.get(grant.principal_key, ())):
            listener.elevation_changed(None)

    async def _reload_elevations(self) -> None:
        try:
            grants = await self.store.live_grants(KIND_ELEVATION)
        except StateUnavailable:
            return
        for g in grants:
            self._set_elevation(g)

    # --- expiry ----------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._sweep_timer = loop.call_later(
            self.config.sweep_interval_s, lambda: self._spawn(self.sweep())
        )

    async def sweep(self) -> tuple[list[Request], list[Grant]]:
        """Close and record expired requests and ended grants; add cached uses to the store."""
        try:
            with contextlib.suppress(StateUnavailable):
                await self._flush_uses()
            try:
                requests, grants = await self.store.sweep()
            except StateUnavailable as exc:
                log.event(logger, "approvals_sweep_failed", logging.WARNING, error=str(exc))
                return [], []
            for req in requests:
                metrics.approval_requests_total.inc(kind=req.kind, outcome="expired")
                self.emit(ApprovalEvent.of_request("expired", req))
            for g in grants:
                self._forget(g)
                self.emit(
                    ApprovalEvent.of_grant(
                        "grant_ended", g, principal_label=g.principal_key, session_id=""
                    )
                )
            return requests, grants
        finally:
            self._schedule_sweep()

    # --- audit -----------------------------------------------------------------------------------

    def emit(self, event: AuditEvent) -> None:
        if self.audit is None:
            return
        try:
            self.audit.emit(event)
        except (OSError, ValueError) as exc:
            log.event(logger, "audit_failed", logging.ERROR, error=str(exc))

    def waiting(self) -> Sequence[str]:
        """Request ids sessions of this node wait on (tests, diagnostics)."""
        return list(self._waiters)
