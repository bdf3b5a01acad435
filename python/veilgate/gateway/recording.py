"""Recording one relayed session (issue 14), and refusing its statements while the audit record
cannot be written (``audit.on_failure: block``).

The statements themselves are recorded by the native engine (``SessionState.start_recording``):
nothing here runs per statement on a healthy gateway, except :meth:`SessionRecording.decision`
when a policy decides.  This module writes the session's first record (who, from where, over
what, to which target) and its signed last one (why it ended, totals).

**Refusals.**  While the recorder is blocked, the client-side buffer surfaces the messages that
start statements (Query, Parse, Execute, FunctionCall) and each gets ``ERROR 58030`` instead of
running.  To keep the server's transaction state and the order of replies authoritative, a
refused message is replaced upstream by a *marker* that fails at parse analysis (as the policy
enforcer does for a denial, PROTOCOL.md section 9): the server fails the transaction block,
skips the pipeline to its Sync and answers in order; the marker's error is replaced by the
58030 one on its way to the client.  The refusals are recorded too (they wait in memory with
everything else until the record can be written).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, Protocol

import veilgate_native as native

from veilgate import metrics
from veilgate.pgwire import wire
from veilgate.redact import redact_name

if TYPE_CHECKING:
    import veilgate_native as native

    from veilgate.audit.recorder import Recorder
    from veilgate.config_model import GatewayConfig, TargetConfig
    from veilgate.gateway.mirror import ServerMirror
    from veilgate.gateway.startup import ClientStartup
    from veilgate.identity.base import Principal
    from veilgate.policy.engine import Decision, PolicyEngine

__all__ = [
    "AUDIT_REFUSED_SQLSTATE",
    "REFUSED_TAGS",
    "RecordedSession",
    "SessionRecording",
    "open_recording",
]

AUDIT_REFUSED_SQLSTATE: Final = "58030"
AUDIT_RULE: Final = "audit-unavailable"
MARKER_PREFIX: Final = "veilgate-audit-"
_MARKER_PREFIX_B: Final = MARKER_PREFIX.encode()
REFUSED_TAGS: Final = b"QPEF"
"""Client messages refused while the record cannot be written: they start statements."""
_Q, _P, _E, _F, _Z = (ord(c) for c in "QPEFZ")
_TOTALS: Final = ("statements", "errors", "refused", "denied", "held", "rows", "bytes")
_ROLLBACK: Final = re.compile(
    rb"\s*(?:rollback|abort)(?:\s+(?:work|transaction))?\s*;?\s*\x00", re.IGNORECASE
)
REFUSAL: Final = wire.error_response(
    "ERROR",
    AUDIT_REFUSED_SQLSTATE,
    "veilgate: the audit record cannot be written; statements are refused until it can",
    None,
    "the gateway's session record is failing (disk full, permission or storage lost); nothing "
    "was run; retry later",
)


class _PolicyHost(Protocol):
    @property
    def policy_engine(self) -> PolicyEngine | None: ...


class RecordedSession(Protocol):
    """What a recording needs of its session (:class:`~veilgate.gateway.session.Session` is
    one; a protocol, so that this module does not import the session that imports it)."""

    @property
    def gateway(self) -> _PolicyHost: ...
    @property
    def config(self) -> GatewayConfig: ...
    @property
    def peer(self) -> str: ...
    @property
    def state(self) -> native.SessionState: ...
    @property
    def principal(self) -> Principal | None: ...
    @property
    def tier(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def target(self) -> TargetConfig | None: ...
    @property
    def login(self) -> TargetConfig | None: ...
    @property
    def startup(self) -> ClientStartup | None: ...
    @property
    def client_transport(self) -> Any: ...
    @property
    def client_rb(self) -> Any: ...
    @property
    def upstream_rb(self) -> Any: ...
    @property
    def upstream_pid(self) -> int | None: ...
    @property
    def enforcer(self) -> object | None: ...
    @property
    def masking(self) -> object | None: ...
    @property
    def mirror(self) -> ServerMirror | None: ...
    @property
    def current_stmt_id(self) -> int: ...
    def set_client_events(self) -> None: ...
    def set_upstream_events(self) -> None: ...
    def write_upstream(self, data: bytes) -> None: ...


def _principal(session: RecordedSession) -> dict[str, Any]:
    p = session.principal
    if p is None:
        return {}
    out: dict[str, Any] = {
        "provider": p.provider,
        "tenant": p.tenant,
        "subject": p.subject,
        "client_app": p.client_app,
        "app_only": p.app_only,
        "label": p.label(),
        "roles": sorted(p.roles),
        "groups": None if p.groups is None else sorted(p.groups),
    }
    if p.token_id:
        out["token_id"] = p.token_id
    return out


def _tls(transport: Any) -> dict[str, Any] | None:
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket | native.TlsConnection):
        return None
    cipher = obj.cipher()
    return {
        "version": obj.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": obj.selected_alpn_protocol(),
    }


def session_tier(session: RecordedSession) -> str | None:
    """The session's policy tier (what its statements are judged by), else its login tier."""
    engine = session.gateway.policy_engine
    if engine is not None and session.principal is not None:
        tier = engine.tier_for(session.principal)
        if tier is not None:
            return tier.name
    return session.tier


def start_members(session: RecordedSession, node: str) -> str:
    """The ``session_start`` record: who, from where, over what, as which tier, to what."""
    target = session.target
    login = session.login
    startup = session.startup
    host, _, port = session.peer.rpartition(":")
    members: dict[str, Any] = {
        "principal": _principal(session),
        "client": {
            "address": host.strip("[]"),
            "port": int(port) if port.isdigit() else None,
            "user": session.user,
            "database": startup.database if startup is not None else None,
            "application_name": redact_name(startup.application_name)
            if startup is not None
            else None,
            "tls": _tls(session.client_transport),
        },
        "tier": session_tier(session),
        "login_tier": session.tier,
        "target": None
        if target is None
        else {
            "name": target.name,
            "host": target.host,
            "port": target.port,
            "dbname": target.dbname,
            "login": login.user if login is not None else None,
            "tls": target.tls.mode.value,
        },
        "upstream_pid": session.upstream_pid,
        "masked": session.masking is not None,
        "policy": session.enforcer is not None,
        "gateway": node,
    }
    body = json.dumps(members, separators=(",", ":"), ensure_ascii=False, default=str)
    return '"session_start",' + body[1:-1]


def open_recording(recorder: Recorder, session: RecordedSession) -> SessionRecording:
    """Start recording ``session`` (when it starts relaying)."""
    from veilgate.audit.index import SessionStart

    rec = SessionRecording(recorder, session, getattr(session, "id", None) or new_session_id())
    p = session.principal
    target = session.target
    recorder.open_session(
        rec,
        SessionStart(
            provider=p.provider if p else None,
            tenant=p.tenant if p else None,
            subject=p.subject if p else None,
            client_app=p.client_app if p else None,
            principal=p.label() if p else None,
            tier=session_tier(session),
            target=target.name if target else None,
            client_addr=session.peer,
        ),
    )
    return rec


class SessionRecording:
    """The recording of one session, and its refusals while the recorder is blocked."""

    def __init__(self, recorder: Recorder, session: RecordedSession, sid: str) -> None:
        self.recorder = recorder
        self.session = session
        self.sid = sid
        self.state: native.SessionState = session.state
        self.blocked = False
        self._markers: OrderedDict[bytes, int] = OrderedDict()
        self._check_scheduled = False
        self._closed = False

    @property
    def peer(self) -> str:
        return self.session.peer

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Record the session's statements from now on, and its start."""
        cfg = self.recorder.config
        self.state.start_recording(
            self.recorder.native,
            self.sid,
            max_excerpt=self.session.config.limits.audit_sql_bytes,
            redact_literals=cfg.redact_literals,
            decisions=self.session.enforcer is not None,
        )
        self.session.client_rb.set_recording(True)
        self.session.upstream_rb.set_recording(True)
        self.recorder.push(self.sid, start_members(self.session, self.recorder.node))

    def close(self, reason: str, duration_s: float) -> None:
        """The signed last record: why the session ended and its totals."""
        if self._closed:
            return
        self._closed = True
        totals: dict[str, Any] = self.state.finish_recording() or {}
        members = {
            "reason": reason,
            "duration_s": round(duration_s, 6),
            **{k: totals.get(k, 0) for k in _TOTALS},
        }
        body = json.dumps(members, separators=(",", ":"))
        self.recorder.push(self.sid, '"session_end",' + body[1:-1], terminator=True)
        self.recorder.session_closed(self, reason, totals)

    # --- decisions ---------------------------------------------------------------------------

    def decision(self, stmt_id: int, d: Decision, *, approval: str | None = None) -> None:
        """The policy decided on the message ``stmt_id`` (what it said, not what the gateway did
        about it: see :meth:`refused`); ``approval``: the approval request it runs under."""
        if stmt_id:
            self.state.note_decision(stmt_id, d.action, d.rule_id, d.fingerprint, None, approval)

    def refused(self, sqlstate: str, stmt_id: int | None = None) -> None:
        """The gateway answered the message being handled (or ``stmt_id``) with ``sqlstate``
        instead of running it."""
        sid = self.session.current_stmt_id if stmt_id is None else stmt_id
        if sid:
            self.state.note_refused(sid, sqlstate)

    # --- refusals while blocked ----------------------------------------------------------------

    def set_blocked(self, on: bool) -> None:
        if on == self.blocked:
            return
        self.blocked = on
        self.session.set_client_events()

    def client_tags(self) -> bytes:
        return REFUSED_TAGS if self.blocked else b""

    def upstream_tags(self) -> bytes:
        return b"EZ" if self._markers else b""

    def refuse(self, m: Any) -> bool:
        """A statement-starting message while the record cannot be written: a marker in its
        place upstream; its error becomes 58030 for the client.  A plain ROLLBACK is let
        through (it runs nothing and ends a transaction the refusals failed); False then."""
        if m.tag == _Q and _ROLLBACK.fullmatch(m.body) is not None:
            return False
        metrics.audit_refused_total.inc()
        self.state.note_decision(m.stmt_id, "refuse", AUDIT_RULE, "", AUDIT_REFUSED_SQLSTATE)
        nonce = MARKER_PREFIX + secrets.token_hex(12)
        first = not self._markers
        self._markers[nonce.encode()] = 1
        if first:
            self.session.set_upstream_events()
        sql = wire.cstr(f'SELECT "{nonce}"')
        tag = m.tag
        if tag == _P:
            # under the client's own statement name: a failed Parse leaves a named statement as
            # it was (the unnamed one is dropped, as it would be by the server)
            body = m.body
            end = body.find(b"\0")
            name = body[:end] if end >= 0 else b""
            self.session.write_upstream(wire.frame(b"P", name + b"\0" + sql + b"\0\0"))
        elif tag == _E:
            # a Parse under a name of its own fails before creating anything
            self.session.write_upstream(wire.frame(b"P", wire.cstr(nonce) + sql + b"\0\0"))
        else:
            mirror = self.session.mirror
            if tag == _F and mirror is not None:
                # a Query in place of a FunctionCall drops the unnamed statement and portal
                mirror.function_call_replaced(self.session.state.pending)
            self.session.write_upstream(wire.frame(b"Q", sql))
        return True

    def server_message(self, m: Any, out: bytes | None) -> bytes | None:
        """What the client gets for a server event while markers are outstanding."""
        tag = m.tag
        markers = self._markers
        if tag == ord("E") and markers:
            body = m.body
            if _MARKER_PREFIX_B in body:
                for nonce in markers:
                    if nonce in body:
                        while True:  # errors come in order: earlier markers were skipped
                            key, _ = markers.popitem(last=False)
                            if key == nonce:
                                break
                        if not markers:
                            self.session.set_upstream_events()
                        return REFUSAL
        elif tag == _Z and markers and not self._check_scheduled:
            self._check_scheduled = True
            asyncio.get_running_loop().call_soon(self._check_done)
        return out

    def _check_done(self) -> None:
        self._check_scheduled = False
        if self._markers and not self.state.busy:
            # every request was answered: markers whose error never came were skipped
            self._markers.clear()
            self.session.set_upstream_events()

    @property
    def outstanding(self) -> int:
        return len(self._markers)


def new_session_id() -> str:
    """A session id: 16 hex digits, random."""
    return secrets.token_hex(8)
