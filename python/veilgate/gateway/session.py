"""One client session: the client-side handshake, the upstream handshake, then the relay.

The session owns both connection sides (:class:`~veilgate.gateway._relay.RelayProtocol`) and is
their callback target.  During the handshake it consumes whole messages (the native buffers are
in startup / all-events mode); once both sides are authenticated it switches them to pure
pass-through, after which it is called only at boundaries: errors, connection loss, and the rare
event messages it asks for (ReadyForQuery while draining).  With a statement policy configured,
the messages the policy judges are events too (:mod:`veilgate.gateway.enforce`); a session whose
tier is masked also surfaces what places results and plans them (:mod:`veilgate.gateway.masking`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import veilgate_native as native

from veilgate import log, metrics
from veilgate.config_model import TargetConfig
from veilgate.gateway._relay import NativeTlsTransport, RelayProtocol, record_sized
from veilgate.gateway.enforce import NativeParse, PolicyEnforcer
from veilgate.gateway.limits import STATEMENT_TAGS, ConnectionGrant
from veilgate.gateway.masking import BARRIER_TAGS, CLIENT_TAGS, UPSTREAM_TAGS, MaskingRelay
from veilgate.gateway.mirror import Desynchronised, ServerMirror
from veilgate.gateway.pool import PooledConnection, PoolKey, pool_key
from veilgate.gateway.recording import REFUSED_TAGS, new_session_id
from veilgate.gateway.startup import (
    ApplicationName,
    StartupRefused,
    negotiate_startup,
    upstream_application_name,
)
from veilgate.identity.base import AuthContext, AuthError, Principal
from veilgate.identity.combined import LoginDenied, grant_for, upstream_login
from veilgate.masking.keys import HashKey, MaskingUnavailable
from veilgate.masking.overlay import creation_schemas
from veilgate.pgwire import tlsnative, upstream, wire
from veilgate.policy.names import quote_search_path
from veilgate.redact import redact_name

if TYPE_CHECKING:
    from veilgate.approvals.service import ApprovalService
    from veilgate.config_model import GatewayConfig
    from veilgate.gateway.cancel import CancelRegistry
    from veilgate.gateway.limits import ConnectionCounter
    from veilgate.gateway.pool import UpstreamPool
    from veilgate.gateway.recording import SessionRecording
    from veilgate.gateway.startup import ClientStartup
    from veilgate.identity.base import Authenticator
    from veilgate.masking.planner import SessionMasking
    from veilgate.policy.audit import AuditSink
    from veilgate.policy.engine import PolicyEngine, SessionContext

logger = log.get("gateway.session")

ADMIN_SHUTDOWN = wire.fatal("57P01", "terminating connection due to administrator command")
TOKEN_EXPIRED = wire.fatal("28000", "access token expired; reconnect")
SESSION_AGE_REACHED = wire.fatal("28000", "maximum session age reached; reconnect")
MASKING_ENCODING_REFUSED = wire.fatal(
    "0A000",
    "this client_encoding is not supported on a masked session",
    hint="use UTF8 (or another ASCII-safe encoding) as client_encoding",
)
MASKING_NOW_REQUIRED = wire.fatal(
    "57P01",
    "terminating connection: the policy now masks this session's results; reconnect",
)
_Z = ord("Z")
_S = ord("S")
_X = ord("X")
_IDLE = ord("I")
_UPSTREAM_GONE = frozenset({"upstream_closed"})


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


class Phase(Enum):
    HANDSHAKE = "handshake"
    RELAY = "relay"
    CLOSED = "closed"


class _SideClosed(Exception):
    """A side went away (or broke framing) while the handshake waited on it."""


class _Refuse(Exception):
    """End the handshake with this FATAL (already counted and logged by the raiser)."""

    def __init__(self, frame: bytes) -> None:
        super().__init__("refused")
        self.frame = frame


class _Inbox:
    __slots__ = ("closed", "error", "items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        if self.closed or self.error is not None:
            raise _SideClosed from self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise _SideClosed from self.error


class SessionHost(Protocol):
    """What a session needs of the gateway that accepted it
    (:class:`~veilgate.gateway.server.Gateway` is one; a protocol, so that this module does not
    import the server that imports it)."""

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def cancel_registry(self) -> CancelRegistry[Session]: ...
    @property
    def connection_counter(self) -> ConnectionCounter: ...
    @property
    def policy_engine(self) -> PolicyEngine | None: ...
    @property
    def audit_sink(self) -> AuditSink | None: ...
    @property
    def decision_sink(self) -> AuditSink | None: ...
    @property
    def approvals(self) -> ApprovalService | None: ...
    @property
    def upstream_pool(self) -> UpstreamPool: ...
    @property
    def generation(self) -> int: ...
    @property
    def paused_targets(self) -> dict[str, asyncio.Event]: ...
    async def handle_cancel(self, packet: bytes) -> None: ...
    def masking_planner(
        self, principal: Principal, login: TargetConfig, key: HashKey | None = None
    ) -> SessionMasking | None: ...
    def open_recording(self, session: Session) -> SessionRecording | None: ...
    def cancel_abandoned(self, session: Session, reason: str) -> None: ...
    def session_closed(self, session: Session) -> None: ...


class Session:
    """One client connection and, once authenticated, its upstream connection."""

    def __init__(self, gateway: SessionHost, peer: str) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.peer = peer
        limits = self.config.limits
        self.state = native.SessionState()
        self.client_rb = native.RecvBuffer(
            native.CLIENT,
            self.state,
            capacity=limits.read_buffer_bytes,
            max_message=limits.max_password_bytes + 5,
        )
        self.client_rb.set_startup_mode(True)
        self._wrap_view = not _is_uvloop(asyncio.get_running_loop())
        self.client = RelayProtocol(self, self.client_rb, self._wrap_view)
        self.client_transport: Any = None
        self.client_tls: native.TlsConnection | None = None
        """The client's TLS connection when TLS runs in the native engine (set before the
        transport starts: the client buffer has it attached)."""
        self.upstream_tls: native.TlsConnection | None = None
        self.upstream_rb: Any = None
        self.upstream: RelayProtocol | None = None
        self.upstream_transport: Any = None
        self._client_in = _Inbox()
        self._upstream_in = _Inbox()
        self.phase = Phase.HANDSHAKE
        self.principal: Principal | None = None
        self.target: TargetConfig | None = None
        self.tier: str | None = None
        self.tier_label = ""
        """The session's tier as operators see it (metrics label, admin console): the policy
        tier at start, else the identity tier, else empty."""
        self._lifetime_timer: asyncio.TimerHandle | None = None
        self._lifetime_end: tuple[bytes, str] | None = None
        """Set once the session outlived its token / max age: (FATAL to send, reason)."""
        self.user: str | None = None
        self.application_name = ApplicationName("", "")
        """The upstream application_name (the principal's tag) and the client's own."""
        self.cancel_key: tuple[int, bytes] | None = None
        """(pid, secret) of the BackendKeyData the client got."""
        self.upstream_pid: int | None = None
        self.upstream_key: bytes | None = None
        self.draining = False
        self.over_limit = False
        """Accepted over ``listen.max_connections``: refused with 53300 after the startup."""
        self.handshake_task: asyncio.Task[None] | None = None
        self.mirror: ServerMirror | None = None
        """The server's statements, portals and cursors (policy sessions)."""
        self.enforcer: PolicyEnforcer | None = None
        """Statement policy of this session (only when the gateway has a policy)."""
        self.masking: MaskingRelay | None = None
        """Result masking of this session (only when its policy tier is masked)."""
        self._planner: SessionMasking | None = None
        """The masking planner, when the session's tier is masked (made during the handshake)."""
        self._hash_key: HashKey | None = None
        """The masking hash key generation this session started with (kept across reloads)."""
        self._login: TargetConfig | None = None
        self._client_barriers = b""
        self.startup: ClientStartup | None = None
        """The client's startup (user, database, application_name) once negotiated."""
        self.recording: SessionRecording | None = None
        """The session's recording (only when the gateway records sessions)."""
        self.current_stmt_id = 0
        """On a recorded session, the statement log's id of the client message being handled
        (refusals are noted against it)."""
        self.upstream_parameters: list[bytes] = []
        """The server's ParameterStatus messages of the handshake (whole frames)."""
        self.pinned_search_path: tuple[str, ...] | None = None
        """The search_path set upstream at startup for a tier that pins it."""
        self.audit_sql_bytes = limits.audit_sql_bytes
        self._max_statement = limits.max_statement_bytes
        self._connection_grant: ConnectionGrant | None = None
        self._started = asyncio.get_running_loop().time()
        self._pool_key: PoolKey | None = None
        """Set when the login reuses upstream connections (its target's ``pool``)."""
        self._pool_generation = 0
        """The configuration generation the session's login comes from."""
        self.upstream_reused = False
        self._armed: tuple[int | None, int, int | None, NativeParse | None] | None = None
        """(scope, cache generation) the client buffer answers Queries under (None: it
        surfaces every Query; see :meth:`arm_verdicts`)."""
        self.id = new_session_id()
        """Random 16 hex digits: the admin console's and the session recording's id."""
        self.log_context: dict[str, Any] = {"session": self.id}
        """What every log line of this session carries (:data:`veilgate.log.SESSION`)."""
        log.SESSION.set(self.log_context)  # the accepting task: its transports copy it
        self._deadline: float | None = None
        """End of the handshake (a paused target waits for at most this)."""

    # --- callbacks from RelayProtocol ------------------------------------------------------------

    def side_connected(self, side: RelayProtocol, transport: Any) -> None:
        limits = self.config.limits
        transport.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)
        if side is self.client:
            if self.client_tls is not None:
                self.client_transport = NativeTlsTransport(transport, self.client_tls)
            else:
                # TLS records no larger than PostgreSQL's (libpq's async API hangs on larger
                # ones); the native engine's are so already
                self.client_transport = record_sized(transport)
        else:
            if self.upstream_tls is not None:
                transport = NativeTlsTransport(transport, self.upstream_tls)
            self.upstream_transport = transport
            if self.phase is Phase.CLOSED:
                # the session ended while the upstream connection was being opened
                transport.close()

    def handshake_data(self, side: RelayProtocol, result: Any) -> None:
        inbox = self._client_in if side is self.client else self._upstream_in
        if isinstance(result, list):
            inbox.items.extend(result)
        inbox.wake()

    @property
    def login(self) -> TargetConfig | None:
        """The upstream login the session uses (its tier's)."""
        return self._login

    def relay_event(self, side: RelayProtocol, message: Any) -> None:
        enforcer = self.enforcer
        if enforcer is not None and self.masking is None:
            if side is self.client and self._armed is not None:
                # decisions in stream order: the Queries answered natively before this one
                self.verdict_hits(side)
            self._relay_event(side, message)
            self.arm_verdicts()
            return
        self._relay_event(side, message)

    def _relay_event(self, side: RelayProtocol, message: Any) -> None:
        enforcer = self.enforcer
        masking = self.masking
        recording = self.recording
        mirror = self.mirror
        if message.tag == _X and side is self.client:
            self.close(None, "client_terminate")
            return
        if mirror is not None and not self._mirror_message(side is self.client, message):
            return
        if side is self.client:
            if recording is not None:
                self.current_stmt_id = message.stmt_id
                if recording.blocked and message.tag in REFUSED_TAGS and recording.refuse(message):
                    return
            if (
                enforcer is not None
                and len(message) > self._max_statement
                and message.tag in STATEMENT_TAGS
            ):
                message = enforcer.refuse_oversized(message, self._max_statement)
            if masking is not None:
                masking.client_message(message)
            elif enforcer is not None:
                enforcer.client_message(message)
            else:
                self.upstream_transport.write(message.frame())
            return
        out: bytes | None
        if masking is not None:
            out = masking.server_message(message)
        elif enforcer is not None:
            out = enforcer.server_message(message)
        else:
            out = message.frame()
        if message.tag == _S and out is not None:
            out = self.application_name.client_frame(bytes(out))
        if recording is not None and recording.outstanding:
            out = recording.server_message(message, out)
        if out is not None and self.phase is Phase.RELAY:
            self.client_transport.write(out)
        if message.tag == _S and masking is not None:
            self._check_masked_encoding()
        # ReadyForQuery is asked for while draining: a busy session ends at its last one
        if message.tag == _Z and self.draining and not self.state.busy:
            self.close(ADMIN_SHUTDOWN, "drain")
        elif message.tag == _Z and self._lifetime_end is not None and self._idle():
            self.close(*self._lifetime_end)

    # --- the verdict cache (allowed Queries answered natively) ---------------------------------

    def arm_verdicts(self) -> None:
        """Let the client buffer answer the Queries the engine's verdict cache allows, and a
        re-Parse of the unnamed statement the policy allowed, without surfacing them, while
        nothing about this session needs to see them: a policy session without masking,
        relaying, its recording not refusing, and the enforcer's and the mirror's state quiet
        (:meth:`PolicyEnforcer.native_scope`, :meth:`PolicyEnforcer.native_parse`).  Otherwise
        every Query and Parse surfaces, as before.  Called after every event handled here and
        whenever what the buffers surface changes; a reload disarms by itself (the cache's
        generation)."""
        enforcer = self.enforcer
        scope: int | None = None
        parse: NativeParse | None = None
        if (
            enforcer is not None
            and self.masking is None
            and self.phase is Phase.RELAY
            and (
                self.recording is None or not (self.recording.blocked or self.recording.outstanding)
            )
        ):
            scope = enforcer.native_scope()
            parse = enforcer.native_parse()
        rb = self.client_rb
        if scope is None and parse is None:
            if self._armed is not None:
                self._armed = None
                rb.set_verdicts(None)
                self.client.set_verdict_drain(False)
            return
        assert enforcer is not None
        cache = enforcer.engine.native_verdicts
        grants = enforcer.native_grant_scope(scope) if scope is not None else None
        armed = (scope, cache.generation, grants, parse)
        if armed != self._armed:
            parses = [parse] if parse is not None else None
            queries = scope is not None
            native_log = enforcer.native_log()
            if native_log is not None:
                # the buffer writes the hits' decision-log lines itself: no events, no drain
                # (a standing grant's entry has no line: with a log, its uses surface)
                log_, prefix, max_sql, record_sql = native_log
                rb.set_verdicts(
                    cache,
                    scope or 0,
                    max_frame=self._max_statement,
                    log=log_,
                    log_prefix=prefix,
                    max_sql_bytes=max_sql,
                    record_sql=record_sql,
                    grant_scope=grants,
                    queries=queries,
                    parses=parses,
                )
                events = False
            else:
                events = enforcer.audit is not None
                rb.set_verdicts(
                    cache,
                    scope or 0,
                    max_frame=self._max_statement,
                    events=events,
                    grant_scope=grants,
                    queries=queries,
                    parses=parses,
                )
            self.client.set_verdict_drain(events)
            self._armed = armed

    def verdict_hits(self, side: RelayProtocol | None = None) -> None:
        """Queries the client buffer answered natively: their decision events."""
        rb = self.client_rb
        count, hits = rb.take_verdict_hits()
        if count and self.enforcer is not None:
            self.enforcer.native_hits(count, hits, rb.take_grant_hits())

    def _mirror_message(self, from_client: bool, message: Any) -> bool:
        """Feed the statement / portal mirror (before anyone reads it for this message).
        False: the session ended (the mirror lost track of the server: fail closed)."""
        mirror = self.mirror
        assert mirror is not None
        if from_client:
            mirror.client_message(message.tag, message.body, self.state.pending)
            return True
        try:
            mirror.server_message(message.tag, message.body)
        except Desynchronised as exc:
            metrics.errors_total.inc(kind="protocol")
            log.event(
                logger,
                "server_state_lost",
                logging.ERROR,
                peer=self.peer,
                principal=self.principal.label() if self.principal else None,
                detail=str(exc),
            )
            self.close(
                wire.fatal(
                    "08P01",
                    "the gateway lost track of the server's statements and portals; "
                    "the session is closed",
                    hint="send Sync after extended-protocol messages before a simple Query",
                ),
                "server_state",
            )
            return False
        return True

    def framing_error(self, side: RelayProtocol, exc: BaseException) -> None:
        from_client = side is self.client
        metrics.errors_total.inc(kind="protocol")
        log.event(
            logger,
            "protocol_violation",
            logging.WARNING,
            peer=self.peer,
            side="client" if from_client else "upstream",
            error=str(exc),
            principal=self.principal.label() if self.principal else None,
        )
        if self.phase is Phase.HANDSHAKE:
            inbox = self._client_in if from_client else self._upstream_in
            inbox.error = exc
            inbox.wake()
            return
        if isinstance(exc, native.TlsError):
            # a bad record: the client's connection only carries the alert it is owed
            msg = (
                None
                if from_client
                else wire.fatal("08006", "the TLS connection to the upstream server failed")
            )
            self.close(msg, "tls")
            return
        if from_client:
            msg = wire.fatal("08P01", f"invalid frontend message: {exc}")
        else:
            msg = wire.fatal("08P01", "invalid message from the upstream server")
        self.close(msg, "protocol")

    def masking_error(self, side: RelayProtocol, exc: BaseException) -> None:
        """The engine met a row it has no plan for (or could not mask): fail closed."""
        if self.masking is not None:
            self.masking.fail("engine", exc)
            return
        metrics.errors_total.inc(kind="masking")
        log.event(
            logger,
            "masking_error",
            logging.ERROR,
            peer=self.peer,
            principal=self.principal.label() if self.principal else None,
            error=str(exc),
        )
        self.close(wire.fatal("XX000", "result masking failed; the session is closed"), "masking")

    def side_eof(self, side: RelayProtocol) -> None:
        pass

    # --- used by the policy enforcer and the masking relay -------------------------------------

    def forward_client(self, message: Any) -> None:
        """A client message on its way upstream (through the policy, when there is one)."""
        if self.enforcer is not None:
            self.enforcer.client_message(message)
        else:
            self.write_upstream(message.frame())

    def server_frame(self, message: Any) -> bytes:
        """What the client gets for a server event message (the policy's rewrite, if any)."""
        if self.enforcer is not None:
            return self.enforcer.server_message(message)
        return bytes(message.frame())

    def write_upstream(self, data: bytes) -> None:
        t = self.upstream_transport
        if t is not None and self.phase is Phase.RELAY:
            t.write(data)

    def write_client(self, data: bytes) -> None:
        t = self.client_transport
        if t is not None and self.phase is Phase.RELAY:
            t.write(data)

    def upstream_side(self) -> RelayProtocol:
        assert self.upstream is not None
        return self.upstream

    def side_lost(self, side: RelayProtocol, exc: BaseException | None) -> None:
        from_client = side is self.client
        if self.phase is Phase.HANDSHAKE:
            inbox = self._client_in if from_client else self._upstream_in
            inbox.closed = True
            inbox.wake()
            return
        if self.phase is Phase.RELAY:
            self.close(None, "client_closed" if from_client else "upstream_closed")

    # --- handshake -----------------------------------------------------------------------------

    async def _startup_packet(self) -> bytes:
        while True:
            try:
                packet = self.client_rb.take_startup()
            except native.FramingError as exc:
                raise self._refuse("08P01", "invalid length of startup packet", "startup") from exc
            if packet is not None:
                return bytes(packet)
            await self._client_in.wait()

    async def _client_message(self) -> Any:
        while not self._client_in.items:
            await self._client_in.wait()
        return self._client_in.items.popleft()

    async def _upstream_message(self) -> Any:
        while not self._upstream_in.items:
            await self._upstream_in.wait()
        return self._upstream_in.items.popleft()

    def _refuse(self, code: str, message: str, kind: str, **fields: Any) -> _Refuse:
        metrics.errors_total.inc(kind=kind)
        log.event(
            logger, "session_refused", logging.INFO, peer=self.peer, code=code, kind=kind, **fields
        )
        return _Refuse(wire.fatal(code, message))

    async def run_handshake(self, first_packet: bytes | None, deadline: float) -> None:
        """Startup, client authentication, upstream connection; then relay (or close)."""
        self._deadline = deadline
        try:
            async with asyncio.timeout_at(deadline):
                await self._handshake(first_packet)
        except _Refuse as refusal:
            self.close(refusal.frame, "refused")
        except _SideClosed:
            if self._client_in.error is not None:
                # malformed or oversized client message during the handshake
                self.close(wire.fatal("08P01", "invalid message length"), "protocol")
            else:
                self.close(None, "handshake_aborted")
        except TimeoutError:
            metrics.errors_total.inc(kind="timeout")
            log.event(logger, "handshake_timeout", logging.INFO, peer=self.peer)
            self.close(wire.fatal("08P01", "canceling authentication due to timeout"), "timeout")
        except asyncio.CancelledError:
            self.close(ADMIN_SHUTDOWN if self.draining else None, "cancelled")
            raise
        except Exception:
            metrics.errors_total.inc(kind="internal")
            logger.exception("handshake failed", extra={"fields": {"peer": self.peer}})
            self.close(wire.fatal("XX000", "internal error in the gateway"), "internal")

    async def _handshake(self, first_packet: bytes | None) -> None:
        packet = first_packet if first_packet is not None else await self._startup_packet()
        try:
            code = wire.packet_code(packet)
        except wire.WireError as exc:
            raise self._refuse("08P01", str(exc), "startup") from exc
        if code == wire.CANCEL_REQUEST_CODE:
            await self.gateway.handle_cancel(packet)
            self.close(None, "cancel_request")
            return
        if code in (wire.SSL_REQUEST_CODE, wire.GSSENC_REQUEST_CODE):
            raise self._refuse(
                "08P01", "encryption request received on an encrypted connection", "startup"
            )
        try:
            startup = negotiate_startup(wire.parse_startup_message(packet))
        except wire.WireError as exc:
            raise self._refuse("08P01", str(exc), "startup") from exc
        except StartupRefused as exc:
            raise self._refuse(exc.code, exc.message, "startup", reason=exc.reason) from exc
        if self.over_limit:
            raise self._refuse("53300", "sorry, too many clients already", "too_many_connections")
        # a token typed into the user name field must never reach a log or a record
        self.user = redact_name(startup.user)
        self.startup = startup
        transport = self.client_transport
        if startup.negotiate is not None:
            transport.write(startup.negotiate)
        transport.write(wire.AUTHENTICATION_CLEARTEXT_PASSWORD)

        self.client_rb.set_startup_mode(False)
        self.client_rb.set_all_events(True)
        self.client.flush_buffered()
        message = await self._client_message()
        if message.tag != ord("p"):
            raise self._refuse(
                "08P01",
                f"expected password response, got message type {message.tag}",
                "protocol",
            )
        body = message.body
        del message
        if len(body) > self.config.limits.max_password_bytes:
            raise self._refuse("08P01", "invalid password packet size", "protocol")
        try:
            token = wire.parse_password_message(body)
        except wire.WireError as exc:
            raise self._refuse("08P01", "invalid password packet", "protocol") from exc
        del body
        transport.pause_reading()

        ctx = AuthContext(
            peer=self.peer,
            user=startup.user,
            database=startup.database,
            application_name=startup.application_name,
        )
        failed = wire.fatal("28P01", f'password authentication failed for user "{startup.user}"')
        try:
            principal = await self.gateway.authenticator.authenticate(token, ctx)
        except AuthError as exc:
            metrics.auth_failures_total.inc(reason=exc.reason)
            metrics.token_validations_total.add(1, getattr(exc, "provider", "") or "", exc.reason)
            log.event(
                logger,
                "auth_failed",
                logging.WARNING,
                peer=self.peer,
                user=self.user,
                database=startup.database,
                reason=exc.reason,
                detail=exc.detail,
            )
            raise _Refuse(failed) from None
        except Exception:
            metrics.auth_failures_total.inc(reason="authenticator_error")
            logger.exception(
                "authenticator raised", extra={"fields": {"peer": self.peer, "user": self.user}}
            )
            raise _Refuse(failed) from None
        finally:
            del token
        metrics.token_validations_total.add(1, principal.provider, "valid")
        self.log_context.update(tenant=principal.tenant, subject=principal.subject)
        self.principal = principal
        self._count_connection(principal)

        target = self.config.targets.get(startup.database)
        if target is None:
            raise self._refuse(
                "3D000",
                f'database "{startup.database}" does not exist',
                "startup",
                principal=principal.label(),
                reason="unknown_target",
            )
        self.target = target
        grant = grant_for(self.gateway.authenticator, principal)
        try:
            login = upstream_login(target, grant)
        except LoginDenied as exc:
            raise self._refuse(
                "28000",
                f'not allowed to connect to database "{startup.database}"',
                "auth",
                principal=principal.label(),
                tier=grant.tier if grant else None,
                reason=exc.reason,
                detail=exc.detail,
            ) from None
        self.tier = grant.tier if grant else None
        engine = self.gateway.policy_engine
        policy_tier = engine.tier_for(principal) if engine is not None else None
        self.tier_label = policy_tier.name if policy_tier is not None else (self.tier or "")
        self.log_context.update(tier=self.tier_label or None, target=target.name)
        self._login = login
        self._planner = self._masking_planner(principal, login)
        self._hash_key = self._planner.tier.hash_key if self._planner is not None else None
        if target.name in self.gateway.paused_targets:
            await self._wait_target(target.name, principal)

        params = [
            ("user", login.user),
            ("database", target.dbname),
            (
                "application_name",
                upstream_application_name(
                    principal.label(),
                    startup.application_name,
                    tagged=target.application_name == "tagged",
                ),
            ),
            *startup.forwarded,
            *self._pinned_parameters(principal),
        ]
        hs: upstream.UpstreamHandshake | PooledConnection | None = None
        if login.pool.size > 0:
            self._pool_key = pool_key(login, self.tier, params)
            self._pool_generation = self.gateway.generation
            hs = await self._reuse_upstream(login, dict(params)["application_name"])
        started = asyncio.get_running_loop().time()
        connected = "reused" if hs is not None else "failed"
        try:
            async with asyncio.timeout(target.connect_timeout_s):
                if hs is None:
                    hs = await self._connect_upstream(login, params)
                    connected = "ok"
        except TimeoutError:
            raise self._upstream_failed(
                upstream.UpstreamError(
                    "08001",
                    f'timeout connecting to the upstream server for database "{target.name}"',
                    "upstream_timeout",
                )
            ) from None
        except upstream.UpstreamError as exc:
            raise self._upstream_failed(exc) from None
        except _SideClosed:
            if self._client_in.closed:
                raise
            raise self._upstream_failed(
                upstream.UpstreamError(
                    "08006",
                    f'the upstream server for database "{target.name}" closed the connection',
                    "upstream_closed",
                )
            ) from None
        finally:
            elapsed = asyncio.get_running_loop().time() - started
            metrics.upstream_connect_seconds.observe(elapsed, target.name, connected)

        assert hs is not None
        self.upstream_pid, self.upstream_key = hs.backend_pid, hs.backend_key
        self.upstream_parameters = hs.parameters
        # the server's own pid (pg_backend_pid(), NOTIFY pids agree), the gateway's own secret
        pid = hs.backend_pid
        assert pid is not None
        key = self.gateway.cancel_registry.register(self, pid)
        self.cancel_key = (pid, key)
        self.application_name = ApplicationName.from_parameters(
            hs.parameters,
            principal.label(),
            startup.application_name,
            tagged=target.application_name == "tagged",
        )
        if self._client_in.closed:
            raise _SideClosed
        transport.write(
            b"".join(
                [
                    wire.AUTHENTICATION_OK,
                    *map(self.application_name.client_frame, hs.parameters),
                    wire.backend_key_data(pid, key),
                    wire.ready_for_query(hs.tx_status),
                ]
            )
        )
        self._start_relay()
        self._arm_lifetime(principal)
        metrics.sessions_total.inc(target=target.name, tier=self.tier_label)
        log.event(
            logger,
            "session_started",
            peer=self.peer,
            principal=principal.label(),
            target=target.name,
            tier=self.tier,
            upstream_user=login.user,
            upstream_pid=self.upstream_pid,
            upstream_auth=hs.mechanism,
            handshake_ms=round((asyncio.get_running_loop().time() - self._started) * 1000, 1),
        )

    def _count_connection(self, principal: Principal) -> None:
        """Per-principal and per-tier connection limits: ``FATAL 53300`` naming the limit."""
        engine = self.gateway.policy_engine
        tier = engine.tier_for(principal) if engine is not None else None
        per_principal = self.config.limits.max_connections_per_principal
        if tier is not None and tier.max_connections_per_principal is not None:
            per_principal = tier.max_connections_per_principal
        per_tier = tier.max_connections if tier is not None else None
        if per_principal is None and per_tier is None:
            return
        grant = self.gateway.connection_counter.acquire(
            principal.key,
            principal.label(),
            tier.name if tier is not None else None,
            per_principal=per_principal,
            per_tier=per_tier,
        )
        if isinstance(grant, str):
            raise self._refuse("53300", grant, "too_many_connections", principal=principal.label())
        self._connection_grant = grant

    def _pinned_parameters(self, principal: Principal) -> list[tuple[str, str]]:
        """The ``search_path`` startup parameter of a tier that pins it (policy option
        ``pin_search_path``): the server then resolves names the way the policy judges them."""
        engine = self.gateway.policy_engine
        tier = engine.tier_for(principal) if engine is not None else None
        if tier is None or not tier.pin_search_path:
            return []
        self.pinned_search_path = tier.search_path
        return [("search_path", quote_search_path(tier.search_path))]

    def _arm_lifetime(self, principal: Principal) -> None:
        """Schedule the end of the session at max age / token expiry (if configured)."""
        auth = self.config.auth
        loop = asyncio.get_running_loop()
        ends: list[tuple[float, bytes, str]] = []
        if auth.max_session_age_s is not None:
            ends.append((self._started + auth.max_session_age_s, SESSION_AGE_REACHED, "max_age"))
        if auth.terminate_on_token_expiry and principal.expires_at is not None:
            at = loop.time() + (principal.expires_at - time.time())
            ends.append((at, TOKEN_EXPIRED, "token_expired"))
        if ends and self.phase is Phase.RELAY:
            at, frame, reason = min(ends, key=lambda e: e[0])
            self._lifetime_timer = loop.call_at(at, self._lifetime_reached, frame, reason)

    def _idle(self) -> bool:
        state = self.state
        return not state.busy and state.tx_status in (0, _IDLE)

    def _lifetime_reached(self, frame: bytes, reason: str) -> None:
        """Idle: close now.  Busy or in a transaction: at the next ReadyForQuery 'I'."""
        self._lifetime_timer = None
        if self.phase is not Phase.RELAY:
            return
        log.event(
            logger,
            "session_lifetime_reached",
            peer=self.peer,
            principal=self.principal.label() if self.principal else None,
            reason=reason,
            idle=self._idle(),
        )
        if self._idle():
            self.close(frame, reason)
            return
        self._lifetime_end = (frame, reason)
        # only now does the server side report ReadyForQuery: the hot path paid nothing before
        self.set_upstream_events()

    async def _connect_upstream(
        self, target: TargetConfig, params: list[tuple[str, str]]
    ) -> upstream.UpstreamHandshake:
        loop = asyncio.get_running_loop()
        self.upstream_rb = native.RecvBuffer(
            native.SERVER, self.state, capacity=self.config.limits.read_buffer_bytes
        )
        self.upstream_rb.set_all_events(True)
        side = RelayProtocol(self, self.upstream_rb, self._wrap_view)
        self.upstream = side
        if tlsnative.uses_native(self.config) and upstream.client_ssl_context(target) is not None:
            sock, conn = await tlsnative.connect_upstream(loop, target)
            self.upstream_rb.attach_tls(conn)
            self.upstream_tls = conn
            try:
                await loop.create_connection(lambda: side, sock=sock)
            except OSError as exc:
                sock.close()
                raise upstream.UpstreamError(
                    "08001",
                    f'could not connect to the upstream server for database "{target.name}"',
                    "unreachable",
                    str(exc),
                ) from exc
            transport = self.upstream_transport
        else:
            transport, _ = await upstream.connect(loop, target, lambda: side)
        metrics.upstream_connections_active.inc()
        hs = upstream.UpstreamHandshake(
            target, target.password(), transport.get_extra_info("ssl_object")
        )
        transport.write(wire.startup_message(params))
        while not hs.done:
            message = await self._upstream_message()
            for out in hs.feed(message.tag, message.body):
                transport.write(out)
        if hs.backend_pid is None or hs.backend_key is None:
            raise upstream.UpstreamError(
                "08006",
                f'the upstream server for database "{target.name}" sent no cancel key',
                "upstream_protocol",
            )
        return hs

    async def _reuse_upstream(self, login: TargetConfig, app_name: str) -> PooledConnection | None:
        """An idle upstream connection of the pool, with ``application_name`` set, taken over by
        this session (None: open a new one)."""
        assert self._pool_key is not None
        conn = await self.gateway.upstream_pool.acquire(self._pool_key, login, app_name)
        if conn is None:
            return None
        if self.phase is not Phase.HANDSHAKE or self._client_in.closed:
            self.gateway.upstream_pool.release(self._pool_key, login, conn)
            raise _SideClosed
        self.upstream_rb = native.RecvBuffer(
            native.SERVER, self.state, capacity=self.config.limits.read_buffer_bytes
        )
        self.upstream_rb.set_all_events(True)
        side = RelayProtocol(self, self.upstream_rb, self._wrap_view)
        self.upstream = side
        transport = conn.transport
        if conn.tls is not None:
            # the TLS connection goes on in this session's buffer (side_connected wraps the
            # plain transport again)
            self.upstream_rb.attach_tls(conn.tls)
            self.upstream_tls = conn.tls
            transport = transport.transport
        conn.transport.set_protocol(side)
        side.connection_made(transport)
        metrics.upstream_connections_active.inc()
        self.upstream_reused = True
        return conn

    def _upstream_failed(self, exc: upstream.UpstreamError) -> _Refuse:
        metrics.errors_total.inc(kind="upstream")
        log.event(
            logger,
            "upstream_failed",
            logging.WARNING,
            peer=self.peer,
            principal=self.principal.label() if self.principal else None,
            target=self.target.name if self.target else None,
            reason=exc.reason,
            detail=exc.detail,
        )
        return _Refuse(wire.fatal(exc.code, exc.message))

    def _start_relay(self) -> None:
        assert self.upstream is not None
        client_rb, upstream_rb = self.client_rb, self.upstream_rb
        client_rb.max_message = self.config.limits.max_message_bytes
        engine = self.gateway.policy_engine
        if engine is not None and self.principal is not None:
            self.mirror = ServerMirror(
                track_portals=self._planner is not None, on_tags=self._mirror_tags
            )
            self.enforcer = PolicyEnforcer(
                self,
                engine,
                self.principal,
                self.gateway.decision_sink,
                self.gateway.approvals,
                self.mirror,
            )
        self.masking = self._masking()
        self.recording = self.gateway.open_recording(self)
        client_rb.set_all_events(False)
        upstream_rb.set_all_events(False)
        if self.masking is not None:
            # rows wait at RowDescription / CopyOutResponse for their plan; none is a refusal
            upstream_rb.set_barrier_events(BARRIER_TAGS)
            upstream_rb.set_mask_required(True)
            self.upstream.set_barriers(True)
        # the server's last words (a FATAL) reach the client even when a plan holds them
        self.upstream.deliver_before_loss(True)
        self.set_client_events()
        self.set_upstream_events()
        self.phase = Phase.RELAY
        self.client.start_relay(self.upstream_transport, self.upstream)
        self.upstream.start_relay(self.client_transport, self.client)
        # whatever arrived during the handshake beyond the messages it consumed
        if self.masking is not None or self.enforcer is not None:
            self.client.dispatch(self._client_in.items)
        else:
            pending = [m.frame() for m in self._client_in.items]
            if pending:
                self.upstream_transport.write(b"".join(pending))
        pending = [m.frame() for m in self._upstream_in.items]
        if pending:
            self.client_transport.write(b"".join(pending))
        self._client_in.items.clear()
        self._upstream_in.items.clear()
        self.client.flush_buffered()
        self.upstream.flush_buffered()
        if self.masking is not None:
            self._check_masked_encoding()
        if self.phase is Phase.RELAY:
            self.arm_verdicts()
            self.client_transport.resume_reading()
        if self.draining:
            self.drain()

    def set_client_events(self) -> None:
        """Client messages surfaced as events: none without a policy (pure pass-through)."""
        tags = self.enforcer.client_tags() if self.enforcer else b""
        if self.masking is not None:
            tags += CLIENT_TAGS
        if self.recording is not None:
            tags += self.recording.client_tags()
        barriers = self.enforcer.client_barriers() if self.enforcer else b""
        if self.mirror is not None:
            # what the mirror asks for applies to the rest of the read (see gateway.mirror)
            tags += self.mirror.client_tags()
            barriers += self.mirror.client_barriers()
        if self._pool_key is not None:
            tags += b"X"  # a Terminate ends the session here: its connection may be reused
        self.client_rb.set_events(tags)
        self.arm_verdicts()
        if barriers != self._client_barriers:
            # the enforcer changes which tags it needs after some events (an approve-matched
            # Parse wants its Bind): framing stops after them so the rest is framed anew
            self._client_barriers = barriers
            self.client_rb.set_barrier_events(barriers)
            self.client.set_barriers(bool(barriers))

    def _mirror_tags(self) -> None:
        if self.phase is Phase.RELAY:
            self.set_client_events()
            self.set_upstream_events()

    def set_upstream_events(self) -> None:
        """Server messages surfaced as events: ReadyForQuery while draining or ending, plus what
        the policy enforcer and the masking need."""
        # ParameterStatus (rare): application_name is reported to the client as its own
        tags = b"SZ" if self.draining or self._lifetime_end is not None else b"S"
        if self.enforcer is not None:
            tags += self.enforcer.upstream_tags()
        if self.masking is not None:
            tags += UPSTREAM_TAGS
        if self.recording is not None:
            tags += self.recording.upstream_tags()
        if self.mirror is not None:
            tags += self.mirror.upstream_tags()
        self.upstream_rb.set_events(tags)
        self.arm_verdicts()

    def _masking_planner(self, principal: Principal, login: TargetConfig) -> SessionMasking | None:
        """The masking planner for this session's policy tier (None: not masked).  A tier that
        is masked but whose masking cannot be built refuses the session (fail closed)."""
        try:
            return self.gateway.masking_planner(principal, login)
        except MaskingUnavailable as exc:
            raise self._refuse(
                "XX000",
                "result masking is unavailable; the gateway refuses the session",
                "masking",
                principal=principal.label(),
                detail=str(exc),
            ) from None

    def _masking(self) -> MaskingRelay | None:
        """The masking of this session, when its policy tier is masked."""
        planner, principal = self._planner, self.principal
        if planner is None or principal is None or self.mirror is None:
            return None
        if self.enforcer is not None and self._login is not None:
            planner.creation_schemas = _creation_schemas_of(self.enforcer.ctx, self._login.user)
        relay = MaskingRelay(
            self,
            planner,
            principal,
            planner.tier.tier,
            self.gateway.audit_sink,
            self.forward_client,
            self.server_frame,
            self.mirror,
        )
        enforcer = self.enforcer
        if enforcer is not None:  # it follows the server's ParameterStatus
            relay.scs_on = lambda: enforcer.ctx.standard_conforming_strings
        return relay

    def policy_reloaded(self) -> None:
        if self.phase is not Phase.RELAY:
            return
        if self.enforcer is not None:
            self.verdict_hits()
            self.enforcer.policy_reloaded()
            self.arm_verdicts()
        if self.masking is not None:
            self._masking_reloaded()
        else:
            self._unmasked_reloaded()

    def _check_masked_encoding(self) -> None:
        """A masked session in a client-only encoding (SJIS, BIG5, ...) ends: the detectors and
        the COPY parsers read ASCII bytes as ASCII characters, which those encodings break, so
        masking could not be guaranteed (fail closed)."""
        if self.enforcer is None:
            return
        if not self.enforcer.client_only_encoding:
            return
        log.event(logger, "masking_encoding_refused", logging.WARNING, peer=self.peer)
        self.close(MASKING_ENCODING_REFUSED, "masking_encoding")

    def _unmasked_reloaded(self) -> None:
        """A session that started unmasked cannot be switched to masking mid-stream (the request
        and portal state masking follows was never tracked), so if the new policy masks its tier
        it ends now, and its client reconnects into a masked session: fail closed."""
        if self.principal is None or self._login is None:
            return
        try:
            masked = self.gateway.masking_planner(self.principal, self._login) is not None
        except MaskingUnavailable:
            masked = True
        if not masked:
            return
        log.event(
            logger,
            "session_closed_for_masking",
            logging.WARNING,
            peer=self.peer,
            principal=self.principal.label(),
        )
        self.close(MASKING_NOW_REQUIRED, "policy_masking")

    def _masking_reloaded(self) -> None:
        """New masking rules apply to this session's next results.  A session stays masked even
        if its tier no longer is (masking is chosen when a session starts: fail closed); a
        session that started unmasked stays so until it reconnects."""
        assert self.masking is not None and self.principal is not None and self._login
        try:
            # the hash key it started with stays (its tokens stay joinable within the session)
            planner = self.gateway.masking_planner(self.principal, self._login, self._hash_key)
        except MaskingUnavailable as exc:
            log.event(logger, "masking_reload_failed", logging.ERROR, error=str(exc))
            return
        if planner is not None:
            self.masking.replace_planner(planner)
            if self._hash_key is None:
                self._hash_key = planner.tier.hash_key

    # --- shutdown ------------------------------------------------------------------------------

    def drain(self) -> None:
        """Graceful stop: idle sessions end now, busy ones after their next ReadyForQuery."""
        self.draining = True
        if self.phase is Phase.HANDSHAKE:
            task = self.handshake_task
            if task is not None and not task.done():
                task.cancel()
            else:
                self.close(ADMIN_SHUTDOWN, "drain")
        elif self.phase is Phase.RELAY:
            if not self.state.busy:
                self.close(ADMIN_SHUTDOWN, "drain")
            else:
                self.set_upstream_events()

    async def _wait_target(self, name: str, principal: Principal) -> None:
        """The target is paused by an administrator: wait (within the handshake's deadline, less
        a moment to answer) for it to resume, else refuse with 57P03."""
        resumed = self.gateway.paused_targets.get(name)
        if resumed is None:
            return
        loop = asyncio.get_running_loop()
        wait = (self._deadline or loop.time()) - loop.time() - 0.25
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                await resumed.wait()
        except TimeoutError:
            raise self._refuse(
                "57P03",
                f'database "{name}" is paused by an administrator; try again later',
                "target_paused",
                principal=principal.label(),
            ) from None

    def info(self) -> dict[str, Any]:
        """What the admin console shows of this session (no secret, no statement text)."""
        p = self.principal
        if self.phase is Phase.HANDSHAKE:
            state = "handshake"
        elif self.phase is Phase.CLOSED:
            state = "closed"
        elif self.state.busy:
            state = "active"
        else:
            state = {ord("T"): "idle_in_transaction", ord("E"): "idle_in_failed_transaction"}.get(
                self.state.tx_status, "idle"
            )
        return {
            "id": self.id,
            "client": self.peer,
            "state": state,
            "draining": self.draining,
            "principal": p.label() if p else None,
            "provider": p.provider if p else None,
            "tenant": p.tenant if p else None,
            "subject": p.subject if p else None,
            "tier": self.tier_label or None,
            "target": self.target.name if self.target else None,
            "login_role": self._login.user if self._login else None,
            "upstream_pid": self.upstream_pid,
            "statement_fingerprint": self.enforcer.last_fingerprint if self.enforcer else None,
            "age_s": round(asyncio.get_running_loop().time() - self._started, 3),
            "bytes_from_client": self.client.received,
            "bytes_from_server": self.upstream.received if self.upstream is not None else 0,
        }

    def close(self, client_message: bytes | None, reason: str) -> None:
        """End the session: optional last message to the client, Terminate upstream, close both."""
        if self.phase is Phase.CLOSED:
            return
        if self._lifetime_timer is not None:
            self._lifetime_timer.cancel()
            self._lifetime_timer = None
        was_relaying = self.phase is Phase.RELAY
        was_handshaking = self.phase is Phase.HANDSHAKE
        self.phase = Phase.CLOSED
        if self._armed is not None:
            self.verdict_hits()
            self.arm_verdicts()  # disarmed: the session is closed
        if self.recording is not None:
            self.recording.close(reason, asyncio.get_running_loop().time() - self._started)
        task = self.handshake_task
        if was_handshaking and task is not None and task is not asyncio.current_task():
            task.cancel()
        self.client.stop_relay()
        if self.upstream is not None:
            self.upstream.stop_relay()
        if self.masking is not None:
            self.masking.close()
        if self.enforcer is not None:
            self.enforcer.close()
        ct = self.client_transport
        if ct is not None and not ct.is_closing():
            if client_message:
                ct.write(client_message)
            ct.close()
        ut = self.upstream_transport
        if ut is not None:
            self.upstream_transport = None
            if not ut.is_closing() and self._give_back(ut, reason, was_relaying):
                pass
            elif not ut.is_closing():
                if reason in _UPSTREAM_GONE:
                    ut.close()
                elif self.state.busy:
                    # the server would only read Terminate after the statement, and notices a
                    # dropped connection only when it next writes: cancel the statement, then drop
                    self.gateway.cancel_abandoned(self, reason)
                    ut.abort()
                else:
                    ut.write(wire.TERMINATE)
                    ut.close()
            metrics.upstream_connections_active.dec()
        if self._connection_grant is not None:
            self.gateway.connection_counter.release(self._connection_grant)
            self._connection_grant = None
        if self.cancel_key is not None:
            self.gateway.cancel_registry.unregister(*self.cancel_key)
        self.gateway.session_closed(self)
        if was_relaying:
            log.event(
                logger,
                "session_ended",
                peer=self.peer,
                principal=self.principal.label() if self.principal else None,
                target=self.target.name if self.target else None,
                reason=reason,
                duration_s=round(asyncio.get_running_loop().time() - self._started, 3),
            )

    def _give_back(self, transport: Any, reason: str, was_relaying: bool) -> bool:
        """Hand the upstream connection to the pool: only after a clean end by the client
        (Terminate or disconnect) of a relaying session whose server is idle (ReadyForQuery
        ``I``, nothing outstanding, no COPY); the pool resets it and keeps it, or closes it."""
        login = self._login
        if (
            self._pool_key is None
            or login is None
            or not was_relaying
            or reason not in ("client_terminate", "client_closed")
            or self.draining
            or self._pool_generation != self.gateway.generation  # made under an older config
            or self.state.busy
            # no ReadyForQuery seen yet (0) on a reused connection: nothing was sent since the
            # pool left it idle
            or self.state.tx_status not in ((_IDLE, 0) if self.upstream_reused else (_IDLE,))
            or self.upstream_pid is None
            or self.upstream_key is None
        ):
            return False
        conn = PooledConnection(
            transport,
            self.upstream_pid,
            self.upstream_key,
            list(self.upstream_parameters),
            "reused",
            # native TLS: the pool decrypts with the connection while it owns it, and the
            # next session's buffer takes the connection over (transport encrypts writes)
            tls=self.upstream_tls,
        )
        return self.gateway.upstream_pool.release(self._pool_key, login, conn)

    def abort(self) -> None:
        """Hard stop (deadline passed): drop both connections without flushing."""
        ct, ut = self.client_transport, self.upstream_transport
        self.close(None, "abort")
        for t in (ct, ut):
            if t is not None:
                t.abort()


def _creation_schemas_of(ctx: SessionContext, user: str) -> Callable[[], tuple[str, ...]]:
    """Where a table the session creates without a schema may go: each schema of each
    search_path the session may have (:func:`veilgate.masking.overlay.creation_schemas`).  The
    same tuple object is returned while the path does not change (verdicts are cached on it)."""
    memo: list[Any] = [None, ()]

    def schemas() -> tuple[str, ...]:
        path = ctx.search_path
        if path != memo[0]:
            memo[0] = path
            memo[1] = creation_schemas(path.paths, path.unknown, user)
        result: tuple[str, ...] = memo[1]
        return result

    return schemas
