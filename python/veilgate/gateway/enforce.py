"""Statement policy on a relayed session (PROTOCOL.md sections 3, 4 and 9).

Only sessions of a gateway with a ``policy`` configured have a :class:`PolicyEnforcer`; without one
the relay is pure pass-through and nothing here runs.

The client-side buffer surfaces Query ``Q``, Parse ``P`` and FunctionCall ``F`` (and Bind ``B``
while statements prepared under an older policy generation, or denied by the current one, exist).
An allowed message is forwarded unchanged.  A denied one is **not** forwarded: in its place the
server gets a *marker* that fails at parse analysis with a unique nonce (``SELECT
"veilgate-denied-<nonce>"`` as a Query, or as a Parse for Parse and Bind).  The server then does
what it does for any error -- fails the transaction block, skips a pipeline to its Sync, sends one
ReadyForQuery per request -- so ordering and transaction state stay the server's.  While a marker
is outstanding the server-side buffer surfaces ErrorResponse ``E`` and ReadyForQuery ``Z``: the
error naming an outstanding nonce is replaced by the policy's 42501 ErrorResponse; every other
error (e.g. 25P02 in an already failed transaction) is forwarded as is.  A marker is done when its
error arrives (earlier markers whose error never came were skipped by the server), or once a
ReadyForQuery has left nothing in flight (checked after the whole read is handled: the native
buffer counts a read's ReadyForQuery messages before it returns their events).  ParameterStatus
``S`` is always surfaced (rare) to follow ``standard_conforming_strings``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from veilgate import log, metrics
from veilgate.gateway import wire
from veilgate.identity.base import Principal
from veilgate.policy.audit import AuditSink, DecisionEvent
from veilgate.policy.engine import Decision, PolicyEngine, SessionContext

if TYPE_CHECKING:
    from veilgate.gateway.session import Session

__all__ = ["MARKER_PREFIX", "PolicyEnforcer", "denial_frame"]

logger = log.get("gateway.policy")

MARKER_PREFIX: Final = "veilgate-denied-"
_MARKER_PREFIX_B: Final = MARKER_PREFIX.encode()
_APPROVAL_HINT: Final = (
    "this statement needs an approval, and approvals are not available yet in this gateway: "
    "ask the policy owner"
)

_Q, _P, _F, _B = ord("Q"), ord("P"), ord("F"), ord("B")
_count_decision: Final = metrics.policy_decisions_total.inc_one
_E, _Z, _S = ord("E"), ord("Z"), ord("S")


def denial_frame(d: Decision) -> bytes:
    """The ErrorResponse a client gets for a denied (or approval-needing) message."""
    f = d.error_fields()
    hint = _APPROVAL_HINT if d.action == "approve" else f["H"]
    return wire.error_response("ERROR", f["C"], f["M"], f["D"], hint)


# Client-only encodings whose second byte can be ASCII (a backslash, say): the statement text
# must be decoded as the server will read it, or a string literal could end elsewhere for the
# policy than for the server.  Every other encoding PostgreSQL accepts keeps ASCII bytes ASCII.
_CLIENT_ONLY_CODECS: Final = {
    "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "cp950",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}
_UNDECODABLE: Final = "\ufffd"
"""Stands for text that does not decode in the client encoding: it does not parse, so it is
denied (the server would refuse the bytes too)."""


class _Stmt:
    """A named protocol-level statement the client prepared (text and under which policy)."""

    __slots__ = ("denied", "generation", "text")

    def __init__(self, text: str, generation: int) -> None:
        self.text = text
        self.generation = generation
        self.denied: Decision | None = None


class PolicyEnforcer:
    """Per-session policy state; called by :class:`Session` for the event messages."""

    def __init__(
        self,
        session: Session,
        engine: PolicyEngine,
        principal: Principal,
        audit: AuditSink | None,
    ) -> None:
        self.session = session
        self.engine = engine
        self.principal = principal
        self.audit = audit
        self.ctx = SessionContext(session_id=session.peer)
        self._codec: str | None = None
        for frame in session.upstream_parameters:
            self._parameter_status(frame[5:])
        self._markers: OrderedDict[bytes, Decision] = OrderedDict()
        self._stmts: dict[bytes, _Stmt] = {}
        self._binds = False
        self._check_scheduled = False

    # --- which messages the buffers surface -----------------------------------------------------

    def client_tags(self) -> bytes:
        return b"QPFB" if self._binds else b"QPF"

    def upstream_tags(self) -> bytes:
        return b"SEZ" if self._markers else b"S"

    @property
    def outstanding(self) -> int:
        """Markers sent upstream whose error has not been seen yet."""
        return len(self._markers)

    # --- client side ---------------------------------------------------------------------------

    def client_message(self, m: Any) -> None:
        tag = m.tag
        if tag == _Q:
            self._query(m)
        elif tag == _P:
            self._parse(m)
        elif tag == _B:
            self._bind(m)
        elif tag == _F:
            self._function_call(m)
        else:
            self._write(m.frame())

    def _text(self, raw: bytes) -> str:
        codec = self._codec
        if codec is None:
            return raw.decode("utf-8", "replace")
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            return _UNDECODABLE

    def _write(self, data: bytes) -> None:
        t = self.session.upstream_transport
        if t is not None:
            t.write(data)

    def _query(self, m: Any) -> None:
        # one copy of the message (frame), not two (body and frame): this runs per Query
        frame = m.frame()
        end = frame.find(b"\0", 5)
        d = self.engine.decide(
            self.principal, self._text(frame[5:] if end < 0 else frame[5:end]), session=self.ctx
        )
        self._record(d)
        if d.allowed:
            self._write(frame)
            self.ctx.apply(d)
            return
        self._write(wire.frame(b"Q", wire.cstr(f'SELECT "{self._marker(d)}"')))

    def _parse(self, m: Any) -> None:
        body = m.body
        i = body.find(b"\0")
        j = body.find(b"\0", i + 1) if i >= 0 else -1
        if j < 0:  # malformed: the server answers it with a protocol error
            self._write(m.frame())
            return
        name, text = body[:i], self._text(body[i + 1 : j])
        d = self.engine.decide(self.principal, text, session=self.ctx)
        self._record(d)
        if d.allowed:
            self._write(m.frame())
            if name:
                sname = self._text(name)
                self.ctx.remember_parse(sname, d)
                self._stmts[name] = _Stmt(text, d.generation)
                if self._binds:
                    self._update_binds()
            return
        if name:
            self._stmts.pop(name, None)
        marker = wire.cstr(f'SELECT "{self._marker(d)}"')
        self._write(wire.frame(b"P", name + b"\0" + marker + b"\0\0"))

    def _bind(self, m: Any) -> None:
        body = m.body
        i = body.find(b"\0")
        j = body.find(b"\0", i + 1) if i >= 0 else -1
        stmt = self._stmts.get(body[i + 1 : j]) if j > i else None
        if stmt is None:
            self._write(m.frame())
            return
        if stmt.generation != self.engine.generation:
            name = self._text(body[i + 1 : j])
            d = self.engine.decide(self.principal, stmt.text, session=self.ctx)
            self._record(d)
            stmt.generation = d.generation
            if d.allowed:
                stmt.denied = None
                self.ctx.remember_parse(name, d)
            else:
                stmt.denied = d
                self.ctx.forget(name)
            self._update_binds()
        elif stmt.denied is not None:
            self._record(stmt.denied)
        if stmt.denied is None:
            self._write(m.frame())
            return
        # a marker Parse under a name of its own: the client's unnamed statement survives
        nonce = self._marker(stmt.denied)
        marker = wire.cstr(nonce) + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
        self._write(wire.frame(b"P", marker))

    def _function_call(self, m: Any) -> None:
        body = m.body
        oid = int.from_bytes(body[:4], "big") if len(body) >= 4 else 0
        d = self.engine.decide_function_call(self.principal, oid, session=self.ctx)
        self._record(d)
        if d.allowed:
            self._write(m.frame())
            return
        self._write(wire.frame(b"Q", wire.cstr(f'SELECT "{self._marker(d)}"')))

    def _marker(self, d: Decision) -> str:
        nonce = MARKER_PREFIX + secrets.token_hex(12)
        first = not self._markers
        self._markers[nonce.encode()] = d
        if first:
            self.session.set_upstream_events()
        return nonce

    # --- policy reload -------------------------------------------------------------------------

    def policy_reloaded(self) -> None:
        """The engine has a new generation: judge named statements again at their next Bind."""
        self._update_binds()

    def _update_binds(self) -> None:
        gen = self.engine.generation
        want = any(s.generation != gen or s.denied is not None for s in self._stmts.values())
        if want != self._binds:
            self._binds = want
            self.session.set_client_events()

    # --- server side ---------------------------------------------------------------------------

    def server_message(self, m: Any) -> bytes:
        """An event message from the server: what to send the client instead of it."""
        tag = m.tag
        if tag == _E:
            markers = self._markers
            body = m.body
            if markers and _MARKER_PREFIX_B in body:
                for nonce in markers:
                    if nonce in body:
                        # errors come in order: markers before this one were skipped
                        while True:
                            key, d = markers.popitem(last=False)
                            if key == nonce:
                                break
                        if not markers:
                            self.session.set_upstream_events()
                        return denial_frame(d)
        elif tag == _Z:
            if self._markers and not self._check_scheduled:
                # the buffer has framed (and counted) the whole read already: judge "nothing in
                # flight" once every event of this read has been handled
                self._check_scheduled = True
                asyncio.get_running_loop().call_soon(self._check_done)
        elif tag == _S:
            self._parameter_status(m.body)
        return bytes(m.frame())

    def _check_done(self) -> None:
        self._check_scheduled = False
        if self._markers and not self.session.state.busy:
            # every request has been answered: markers whose error never came were skipped
            self._markers.clear()
            self.session.set_upstream_events()

    def _parameter_status(self, body: bytes) -> None:
        try:
            name, value = wire.parse_parameter_status(body)
        except wire.WireError:
            return
        if name == "standard_conforming_strings":
            self.ctx.standard_conforming_strings = value.lower() == "on"
        elif name == "client_encoding":
            self._codec = _CLIENT_ONLY_CODECS.get(value.upper())
            # texts in these encodings are not lexed by the literal-normalised decision cache
            self.ctx.normalize_literals = self._codec is None

    # --- decisions -----------------------------------------------------------------------------

    def _record(self, d: Decision) -> None:
        _count_decision(d.action)
        if self.audit is not None:
            try:
                self.audit.emit(
                    DecisionEvent.from_decision(d, self.principal, session_id=self.ctx.session_id)
                )
            except (OSError, ValueError) as exc:
                log.event(logger, "audit_failed", logging.ERROR, error=str(exc))
        if not d.allowed:
            log.event(
                logger,
                "policy_denied",
                logging.INFO,
                peer=self.session.peer,
                principal=self.principal.label(),
                action=d.action,
                rule_id=d.rule_id,
                tier=d.tier,
                fingerprint=d.fingerprint,
            )
