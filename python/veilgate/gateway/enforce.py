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

Text the policy cannot parse is not a policy decision: the client gets the server's own parse
error.  In its place a *parse probe* goes upstream (:func:`parse_probe`, a Parse of the same
text that cannot succeed; a Query becomes that Parse and a Sync).  The server's raw-parser error
is forwarded unchanged; the probe's own refusal (the server parsed the text) is replaced by the
policy's denial.

Which statement a Bind binds, which SQL an ``EXECUTE name`` runs, which portal an Execute runs:
the session's :class:`~veilgate.gateway.mirror.ServerMirror` (shared with the masking relay) says,
following the server's confirmations; what the client sent and the server has not answered yet
is judged as what it will be (a Parse or PREPARE of a name that exists fails and leaves the old
statement, which is the one judged).  The policy's note on each statement (its decision and
generation) is kept on the mirror's statement.

Portals bound before a policy reload.  A statement is judged again at its next Bind, but a portal
bound before the reload (a protocol-level cursor inside a transaction block, the unnamed portal of
a pipeline segment in flight) lives until its transaction ends and could otherwise be Executed
under the old decision.  So a reload that finds the session not idle opens a *stale window*: until
the server answers a request sent after the reload with ReadyForQuery 'I' (no transaction block
means no portal survives), Bind ``B`` and Execute ``E`` are surfaced and ReadyForQuery ``Z`` too.
During the window the mirror tracks portals (BindComplete); an Execute of such a portal is judged
by the current policy (again if the policy changed since), as is every portal the name may hold
when a Bind of it is still unanswered.  A portal bound before
the window was never seen being bound: it came from one of the statements the session may have
bound since it was last known to hold no portal (its named statements, its unnamed statement, and
the texts those replaced -- at most ``_RETIRED_MAX``, beyond which the gateway stops remembering
and such portals are refused).  If the new policy allows all of them the Execute runs; if it denies
all of them under one rule that rule's 42501 is sent; otherwise the gateway cannot tell and refuses
it (rule ``stale-portal``, HINT: bind the portal again).  A denied Execute becomes, upstream, a
marker Parse under a statement name of its own: it fails at parse analysis before creating
anything, so the client's unnamed statement and portals are untouched, and the server fails the
transaction and skips to Sync as for the Execute's own error.  A reload that finds the session idle
(nothing in flight, no transaction block) costs nothing: no portal can exist.  Portals of SQL
``DECLARE`` cursors are judged at DECLARE (a ``FETCH`` is a statement of its own).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import struct
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Final

from veilgate import log, metrics
from veilgate.gateway.limits import SubstituteMessage
from veilgate.gateway.masking import scs_dependent
from veilgate.gateway.mirror import ServerMirror, Statement
from veilgate.gateway.protocols import EnforcedSession
from veilgate.gateway.sqleffects import may_have_effects
from veilgate.identity.base import Principal
from veilgate.pgwire import wire
from veilgate.policy.analysis import MessageAnalysis
from veilgate.policy.audit import AuditSink, DecisionEvent, session_members, verdict_members
from veilgate.policy.engine import Decision, PolicyEngine, SessionContext, Verdict
from veilgate.policy.excerpt import DEFAULT_AUDIT_SQL_BYTES, sql_excerpt

if TYPE_CHECKING:
    import veilgate_native as native

    from veilgate.approvals.service import ApprovalService
    from veilgate.gateway.approval import ApprovalGate, PendingApproval

__all__ = [
    "MARKER_PREFIX",
    "STALE_PORTAL_RULE",
    "PolicyEnforcer",
    "denial_frame",
    "stale_portal_denial",
]

logger = log.get("gateway.policy")

MARKER_PREFIX: Final = "veilgate-denied-"
_MARKER_PREFIX_B: Final = MARKER_PREFIX.encode()
_APPROVAL_HINT: Final = (
    "this statement needs an approval, which a protocol-level FunctionCall cannot get: "
    "call the function from SQL"
)

_Q, _P, _F, _B = ord("Q"), ord("P"), ord("F"), ord("B")
_SYNC: Final = wire.frame(b"S", b"")
_count_decision: Final = metrics.policy_decisions_total.inc_one
_E, _Z, _S = ord("E"), ord("Z"), ord("S")
"""``_E`` is Execute from a client and ErrorResponse from the server."""
_IDLE: Final = ord("I")
_TX_TAGS: Final = frozenset(b"CEZ")
_RETIRED_MAX: Final = 64
"""Replaced statement texts remembered as possible sources of portals bound before a reload;
beyond this the gateway refuses such portals rather than grow per session."""
UNPARSEABLE_RULE: Final = "unparseable"
_RAW_PARSER_FILES: Final = frozenset({"scan.l", "gram.y", "parser.c", "scansup.c"})
"""Source files of the server's raw parser: an error raised there is what the server answers
for text it cannot parse, whatever sends it."""
_PARAM_REF: Final = re.compile(rb"\$([0-9]{1,5})")
_MAX_PARAMS: Final = 65535
STALE_PORTAL_RULE: Final = "stale-portal"
_STALE_PORTAL_HINT: Final = (
    "the policy was reloaded after this portal was bound; bind it again (or run the statement "
    "again) so that it is judged by the current policy"
)


def denial_frame(d: Decision) -> bytes:
    """The ErrorResponse a client gets for a denied (or approval-needing) message."""
    f = d.error_fields()
    if d.action == "approve":
        hint = _APPROVAL_HINT
    elif d.rule_id == STALE_PORTAL_RULE:
        hint = _STALE_PORTAL_HINT
    else:
        hint = f["H"]
    return wire.error_response("ERROR", f["C"], f["M"], f["D"], hint)


def _error_frame(d: Decision | bytes) -> bytes:
    """What a marker's error becomes: the decision's denial, or the frame given in its place."""
    return d if isinstance(d, bytes) else denial_frame(d)


def _sqlstate(error: bytes) -> str:
    """The SQLSTATE of an ErrorResponse frame (42501 if it has none)."""
    try:
        return wire.parse_error_fields(error[5:]).get("C", "42501")
    except wire.WireError:
        return "42501"


def stale_portal_denial(generation: int, why: str) -> Decision:
    """The gateway's own denial of a portal whose statement it cannot judge after a reload."""
    verdict = Verdict(
        action="deny",
        tier=None,
        rule_id=STALE_PORTAL_RULE,
        message="a portal bound before a policy reload cannot be executed",
        reason=why,
        statements=(),
        fingerprint="",
        analysis=MessageAnalysis("", (), ""),
        generation=generation,
        cacheable=False,
    )
    return Decision(verdict, 0.0, False)


def parse_probe(name: bytes, text: bytes) -> bytes | None:
    """A Parse of ``text`` that the server always refuses, and refuses exactly as it refuses the
    text itself when its parser cannot parse it (None if no such Parse can be built).

    For a statement the policy cannot parse, the client must get the server's own syntax error
    (SQLSTATE, message, cursor position), not a policy decision.  The server's raw parser runs
    first on a Parse, so its error is the one the client would get directly; should the server
    parse what our parser could not (a newer grammar), the Parse still fails right after parse
    analysis, before anything is stored: it declares one parameter more than the text refers to
    (type unspecified), and "could not determine data type of parameter" (42P18) follows.
    Nothing in the text runs either way.  ``name`` is the statement name the client used (b""
    for a simple Query, which drops the unnamed statement as this Parse does)."""
    used = {int(n) for n in _PARAM_REF.findall(text)}
    k = 1
    while k in used:
        k += 1
    if k > _MAX_PARAMS:
        return None
    types = struct.pack(f"!H{k}I", k, *([0] * k))
    return wire.frame(b"P", name + b"\0" + text + b"\0" + types)


def _raw_parser_error(fields: dict[str, str]) -> bool:
    return fields.get("F") in _RAW_PARSER_FILES


def _probe_passed_parser(fields: dict[str, str]) -> bool:
    """The probe's own refusal: the server parsed what the policy could not."""
    routine = fields.get("R")
    code = fields.get("C")
    return (code == "42P18" and routine == "pg_analyze_and_rewrite_varparams") or (
        code == "42601" and routine == "exec_parse_message"
    )


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
_HIGH_BACKSLASH: Final = re.compile(rb"[\x80-\xff]\\")
"""A backslash right after a non-ASCII byte: a client-only encoding may read the two bytes as one
character (see :meth:`PolicyEnforcer._decide`)."""
"""Stands for text that does not decode in the client encoding: it does not parse, so it is
denied (the server would refuse the bytes too)."""


NativeParse = tuple[bytes, bytes, Verdict, str, str, bytes | None]
"""(name, text bytes, verdict, rule, fingerprint, decision-log members): what
``RecvBuffer.set_verdicts(parses=...)`` takes per statement."""


class _Stmt:
    """A protocol-level statement the client prepared (text and under which policy); also what
    a portal bound during a stale window came from."""

    __slots__ = ("approval", "denied", "generation", "native", "native_scope", "text")

    def __init__(self, text: str, generation: int) -> None:
        self.text = text
        self.generation = generation
        self.native: NativeParse | None = None
        """Set when the client buffer may answer a Parse of the same name and text natively
        (see :meth:`PolicyEnforcer.native_parse`)."""
        self.native_scope = 0
        """The decision scope ``native`` was decided under."""
        self.denied: Decision | None = None
        self.approval: PendingApproval | None = None
        """An approve rule matched it: each Bind is checked for a grant (gateway.approval)."""


class PolicyEnforcer:
    """Per-session policy state; called by :class:`~veilgate.gateway.session.Session` for the
    event messages."""

    def __init__(
        self,
        session: EnforcedSession,
        engine: PolicyEngine,
        principal: Principal,
        audit: AuditSink | None,
        approvals: ApprovalService | None = None,
        mirror: ServerMirror | None = None,
    ) -> None:
        self.session = session
        self.mirror = mirror if mirror is not None else ServerMirror()
        """The server's statements and portals (shared with the masking relay)."""
        self.mirror.on_change = self._namespace_changed
        self.mirror.on_drop = self._dropped
        self._prepared_stale = False
        self.last_fingerprint = ""
        self.decisions: dict[str, int] = {}
        """Decisions of this session by action (per-target metrics)."""
        """Fingerprint of the latest statement judged (the admin console's current statement)."""
        self._stale_names: set[bytes] | None = set()
        """Names whose entry in ``ctx.prepared`` must be looked up again (None: all)."""
        self.engine = engine
        self.principal = principal
        self.audit = audit
        # (getattr: the session may be a test double without the limits)
        self.ctx = SessionContext(
            session_id=session.peer,
            started_search_path=getattr(session, "pinned_search_path", None),
        )
        self._audit_sql_bytes: int = getattr(session, "audit_sql_bytes", DEFAULT_AUDIT_SQL_BYTES)
        self._log_prefix: bytes | None = None
        """The session's members of a natively written decision-log line (rendered once)."""
        self._codec: str | None = None
        for frame in session.upstream_parameters:
            self._parameter_status(frame[5:])
        self._markers: OrderedDict[bytes, Decision | bytes] = OrderedDict()
        """Outstanding markers: the denial's decision, or the error frame to send in its place."""
        self._probes: deque[bytes] = deque()
        """Keys in ``_markers`` of parse probes, oldest first."""
        self._retired: set[str] | None = set()
        """Texts of statements replaced since the session was last known to hold no portal (a
        portal outlives its statement); None once more than ``_RETIRED_MAX``."""
        self._binds = False
        self._check_scheduled = False
        self._window = False
        """Portals bound before the last reload may exist (see the module docstring)."""
        self._z_before = 0
        """ReadyForQuery still due for requests sent before the last reload."""
        self._untracked: Decision | None = None
        """The decision for portals bound before the window (None: allowed)."""
        self.stale_executes = 0
        """Execute messages judged in stale windows (observable: none outside a window)."""
        self.approvals: ApprovalGate | None = None
        """Just-in-time approval of what ``approve`` rules match (None: such statements are
        refused, as before approvals existed)."""
        if approvals is not None:
            from veilgate.gateway.approval import ApprovalGate

            self.approvals = ApprovalGate(self, approvals)

    # --- which messages the buffers surface -----------------------------------------------------

    def client_tags(self) -> bytes:
        if self._window:
            return b"QPFBE"
        return b"QPFB" if self._binds else b"QPF"

    def client_barriers(self) -> bytes:
        """Client events after which framing stops: Parse, while some rule approves (the Bind
        of an approve-matched statement, framed next, must be an event)."""
        if self.approvals is None:
            return b""
        return b"P" if self.approvals.active() else b""

    def upstream_tags(self) -> bytes:
        gate = self.approvals
        if gate is not None and gate.tracking:
            return b"SEZC"  # a SET veilgate.reason follows its transaction
        if self._markers:
            return b"SEZ"
        return b"SZ" if self._window else b"S"

    @property
    def stale_window(self) -> bool:
        """Whether portals bound before the last policy reload may still exist."""
        return self._window

    @property
    def outstanding(self) -> int:
        """Markers sent upstream whose error has not been seen yet."""
        return len(self._markers)

    # --- client side ---------------------------------------------------------------------------

    def client_message(self, m: Any) -> None:
        tag = m.tag
        if type(m) is SubstituteMessage:  # the gateway's own marker (refuse_oversized)
            self._write(m.frame())
            return
        if tag == _Q:
            self._query(m)
        elif tag == _P:
            self._parse(m)
        elif tag == _B:
            self._bind(m)
        elif tag == _E:
            self._execute(m)
        elif tag == _F:
            self._function_call(m)
        else:
            self._write(m.frame())

    def _decide(self, text: str, raw: bytes | None = None) -> Decision:
        """The policy's decision on ``text`` (``raw``: its bytes) as the server may read it.
        The settings the gateway knows are the server's last confirmed ones, and a change may be
        in flight (a prepared ``SET`` executed by a Bind / Execute the gateway does not see, a
        ``SET`` in the same pipeline), so a text the server may read differently is judged in
        every such reading and gets the stricter decision: one that reads differently with
        ``standard_conforming_strings`` on and off (a backslash in an ordinary string literal),
        and one whose backslash follows a non-ASCII byte (a client-only encoding such as SJIS
        reads the pair as one character, UTF-8 and the others leave the backslash live).  A
        reading that does not decode is denied (fail closed).  Only when an arriving Query or
        Parse is the first message since the server answered everything are the known settings
        certain: then the one reading is judged."""
        ctx = self.ctx
        arriving = raw is not None  # a Query / Parse judged as it arrives (not re-judged)
        d = self.engine.decide(self.principal, text, session=ctx)
        if d.action == "deny":
            return d
        if raw is None:
            raw = text.encode(self._codec or "utf-8", "replace")
        if b"\\" not in raw:
            return d
        if arriving and self.session.state.since_ready <= 1:
            # The first message since the server answered everything: its ParameterStatus
            # reports came before that ReadyForQuery, so it reads this text with the settings
            # the gateway knows (a client that turned standard_conforming_strings off and
            # waited is judged by that reading alone).
            return d
        readings = [text]
        if _HIGH_BACKSLASH.search(raw) is not None:
            for codec in ("utf-8", *_CLIENT_ONLY_CODECS.values()):
                try:
                    reading = raw.decode(codec)
                except UnicodeDecodeError:
                    reading = _UNDECODABLE
                if reading not in readings:
                    readings.append(reading)
        scs = ctx.standard_conforming_strings
        for reading in readings:
            for flipped in (False, True):
                if flipped:
                    if not scs_dependent(reading):
                        continue
                    ctx.standard_conforming_strings = not scs
                elif reading == text:
                    continue  # decided above
                try:
                    other = self.engine.decide(self.principal, reading, session=ctx)
                finally:
                    ctx.standard_conforming_strings = scs
                if other.action == "deny":
                    return other
                if other.action == "approve" and d.allowed:
                    d = other
        return d

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
        raw = frame[5:] if end < 0 else frame[5:end]
        text = self._text(raw)
        if self._prepared_stale:
            self._sync_prepared()
        gate = self.approvals
        d = gate.setting(text, query=True) if gate is not None else None
        native = d is None
        if d is None:
            d = self._decide(text, raw)
        self._record(d)
        if d.allowed:
            if native and end == len(frame) - 1 and not may_have_effects(frame[5:]):
                # the next Query of this shape is answered by the client buffer (when armed)
                event = verdict_members(d.verdict) if self.audit is not None else None
                self.engine.remember_native(d, raw, self.ctx, event)
            # what it PREPAREs / DEALLOCATEs is the mirror's, once the server has done it; a
            # search_path it may set joins the session's possible paths now (as for a Parse)
            self._write(frame)
            self.ctx.note_search_path(d)
            return
        if d.rule_id == UNPARSEABLE_RULE:
            probe = parse_probe(b"", frame[5:] if end < 0 else frame[5:end])
            if probe is not None:
                self._probe(d)
                self._write(probe + _SYNC)
                return
        if gate is not None and d.action == "approve":
            gate.query(d, frame, text)
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
        if self._prepared_stale:
            self._sync_prepared()
        gate = self.approvals
        d = gate.setting(text) if gate is not None else None
        native = d is None
        if d is None:
            d = self._decide(text, body[i + 1 : j])
        self._record(d)
        approve = gate is not None and d.action == "approve"
        # the mirror has this Parse's statement (it becomes the server's if the Parse succeeds)
        parsed = self.mirror.last_parsed
        note = _Stmt(text, d.generation)
        if native and not name and d.allowed and self.engine.native_ok(d, self.ctx):
            # a Parse of the same text into the unnamed statement, once the server holds this
            # one, is answered by the client buffer (see native_parse)
            v = d.verdict
            event = verdict_members(v) if self.audit is not None else None
            note.native = (name, body[i + 1 : j], v, v.rule_id, v.fingerprint, event)
            note.native_scope = self.engine.session_scope(self.principal, self.ctx)
        if approve:
            note.approval = self._pending_approval(d, body)
        elif not d.allowed:
            note.denied = d  # the server never gets it (the marker fails): never bind it
        if parsed is not None and parsed.name == name:
            parsed.policy = note
            self._namespace_changed(name)
        if self._binds or approve or not d.allowed:
            self._update_binds()
        if d.allowed or approve:
            # an approve-matched statement is parsed (that runs nothing); each Bind is checked
            self._write(m.frame())
            self.ctx.note_search_path(d)
            return
        if d.rule_id == UNPARSEABLE_RULE:
            probe = parse_probe(name, body[i + 1 : j])
            if probe is not None:
                self._probe(d)
                self._write(probe)
                return
        marker = wire.cstr(f'SELECT "{self._marker(d)}"')
        self._write(wire.frame(b"P", name + b"\0" + marker + b"\0\0"))

    def _bind(self, m: Any) -> None:
        body = m.body
        i = body.find(b"\0")
        j = body.find(b"\0", i + 1) if i >= 0 else -1
        if j < 0:  # malformed: the server answers it with a protocol error
            self._write(m.frame())
            return
        sname = body[i + 1 : j]
        # the statement the server will bind: its own, whatever the client prepared under the
        # name (a Parse or PREPARE of an existing name fails and leaves it as it was)
        stmt = self._note(self.mirror.projected_statement(sname))
        if stmt is None:  # the server has none: it refuses the Bind itself
            self._write(m.frame())
            return
        if stmt.generation != self.engine.generation:
            self._judge_again(stmt)
            self._update_binds()
        elif stmt.denied is not None:
            self._record(stmt.denied)
        if stmt.denied is None:
            if stmt.approval is not None and self.approvals is not None:
                self.approvals.bind(stmt.approval, m.frame(), body, stmt.text)
                return
            self._write(m.frame())
            return
        # a marker Parse under a name of its own: the client's unnamed statement survives, and
        # the server keeps whatever portal of that name it had (so does the tracking of it)
        nonce = self._marker(stmt.denied)
        marker = wire.cstr(nonce) + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
        self._write(wire.frame(b"P", marker))

    def _note(self, stmt: Statement | None) -> _Stmt | None:
        """The policy's note on a statement of the mirror (judged now if it has none: one
        prepared with SQL PREPARE, judged as part of its Query)."""
        if stmt is None:
            return None
        note = stmt.policy
        if not isinstance(note, _Stmt):
            note = _Stmt(stmt.query, -1)
            stmt.policy = note
        return note

    def _judge_again(self, stmt: _Stmt) -> Decision:
        """Judge a statement prepared under an older policy by the current one."""
        d = self._decide(stmt.text)
        self._record(d)
        stmt.generation = d.generation
        approve = self.approvals is not None and d.action == "approve"
        stmt.denied = None if d.allowed or approve else d
        if approve:
            types = stmt.approval.param_types if stmt.approval is not None else ()
            stmt.approval = self._pending_approval(d, None, types)
        else:
            stmt.approval = None
        return d

    def _execute(self, m: Any) -> None:
        if not self._window:  # surfaced for the masking relay only
            self._write(m.frame())
            return
        self.stale_executes += 1
        body = m.body
        i = body.find(b"\0")
        if i < 0:  # malformed: the server answers it with a protocol error
            self._write(m.frame())
            return
        d = self._judge_portal(body[:i])
        if d is None:
            self._write(m.frame())
            return
        # a marker Parse under a name of its own fails before creating anything: the client's
        # unnamed statement and portals stay as they were; the transaction fails as it would
        # for the Execute's own error
        nonce = self._marker(d)
        marker = wire.cstr(nonce) + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
        self._write(wire.frame(b"P", marker))

    def refuse_oversized(self, m: Any, limit: int) -> SubstituteMessage:
        """A Query or Parse over ``limits.max_statement_bytes``: refused with 54000 before
        anything parses it.  Returns the marker that replaces it (on its way through masking, if
        any, then :meth:`client_message`)."""
        body = m.body
        if m.tag == _Q:
            name, raw = b"", body
        else:
            i = body.find(b"\0")
            name, raw = (body[:i], body[i + 1 :]) if i >= 0 else (b"", body)
        limit_bytes = self._audit_sql_bytes
        head = raw[: limit_bytes + 4].split(b"\0", 1)[0]
        excerpt = sql_excerpt(self._text(head), limit_bytes)
        d = self.engine.refuse_oversized(self.principal, len(m), limit, excerpt, session=self.ctx)
        self._record(d, sql_len=len(raw))
        marker = wire.cstr(f'SELECT "{self._marker(d)}"')
        stmt_id = getattr(m, "stmt_id", 0)
        if m.tag == _Q:
            return SubstituteMessage(_Q, marker, stmt_id)
        return SubstituteMessage(_P, name + b"\0" + marker + b"\0\0", stmt_id)

    def _judge_portal(self, portal: bytes) -> Decision | None:
        """In a stale window: the decision for an Execute of ``portal`` (None: it runs).  Every
        portal the server may run under that name is judged (a Bind still in flight may fail
        and leave the one before); one the gateway did not see bound gets the decision for
        portals bound before the window."""
        denied: Decision | None = None
        for cand in self.mirror.portal_candidates(portal):
            d: Decision | None
            if cand is None:
                d = self._untracked
            elif not cand.known:
                d = stale_portal_denial(
                    self.engine.generation,
                    "the portal was bound from a statement the gateway did not see prepared",
                )
            elif cand.statement is None:  # a SQL cursor: judged when it was declared
                d = None
            else:
                note = self._note(cand.statement)
                assert note is not None
                if note.generation != self.engine.generation:
                    self._judge_again(note)
                d = note.denied
                if d is None and note.approval is not None:
                    # its Bind was checked under the old policy: bind it again to be checked
                    d = stale_portal_denial(
                        self.engine.generation, "the policy now wants an approval for it"
                    )
            if d is not None and denied is None:
                denied = d
        if denied is not None:
            self._record(denied)
        return denied

    def _dropped(self, stmt: Statement) -> None:
        """The server dropped or replaced a statement: its portals outlive it."""
        self._retire(stmt.query)

    def _namespace_changed(self, name: bytes | None) -> None:
        if name is None:
            self._prepared_stale = True
            self._stale_names = None
        elif name:  # the unnamed statement is not SQL's to EXECUTE
            self._prepared_stale = True
            if self._stale_names is not None:
                self._stale_names.add(name)
        if self._binds:
            self._update_binds()

    def _sync_prepared(self) -> None:
        """``SessionContext.prepared`` (what SQL ``EXECUTE`` runs) from the mirror's projected
        statements: protocol Parse and SQL PREPARE share the names, as in the server."""
        names = self._stale_names
        self._prepared_stale = False
        self._stale_names = set()
        prepared = self.ctx.prepared
        mirror = self.mirror
        if names is None:
            prepared.clear()
            names = set(mirror.projected_statements())
        for name in names:
            if not name:
                continue
            key = self._text(name)
            prepared.pop(key, None)
            stmt = mirror.projected_statement(name)
            if stmt is None:
                continue
            note = stmt.policy
            if isinstance(note, _Stmt) and note.denied is not None:
                continue  # never reaches the server
            msg = self.engine.analyze(
                stmt.text, standard_conforming_strings=self.ctx.standard_conforming_strings
            )
            if len(msg.statements) == 1:
                prepared[key] = msg.statements[0]

    def _retire(self, text: str) -> None:
        """A statement was replaced: portals bound from it may outlive it."""
        retired = self._retired
        if retired is not None and text not in retired:
            if len(retired) >= _RETIRED_MAX:
                self._retired = None
            else:
                retired.add(text)

    def _function_call(self, m: Any) -> None:
        body = m.body
        oid = int.from_bytes(body[:4], "big") if len(body) >= 4 else 0
        d = self.engine.decide_function_call(self.principal, oid, session=self.ctx)
        self._record(d)
        if d.allowed:
            self._write(m.frame())
            return
        self.mirror.function_call_replaced(self.session.state.pending)
        self._write(wire.frame(b"Q", wire.cstr(f'SELECT "{self._marker(d)}"')))

    def _probe(self, d: Decision) -> None:
        """A parse probe (see :func:`parse_probe`) goes upstream for ``d``: its error is the
        server's own, unless the server parsed the text (then ``d``'s denial replaces it)."""
        key = b"probe-" + secrets.token_bytes(12)
        first = not self._markers
        self._markers[key] = d
        self._probes.append(key)
        if first:
            self.session.set_upstream_events()

    def _probe_error(self, body: bytes) -> bytes | None:
        """An ErrorResponse while parse probes are outstanding: the denial to send instead, or
        None (forward it: the server's own parse error, or any other error)."""
        probes, markers = self._probes, self._markers
        while probes and probes[0] not in markers:  # skipped by an earlier error
            probes.popleft()
        if not probes:
            return None
        try:
            fields = wire.parse_error_fields(body)
        except wire.WireError:
            return None
        if _raw_parser_error(fields):
            markers.pop(probes.popleft(), None)
            replaced = None
        elif _probe_passed_parser(fields):
            replaced = _error_frame(markers.pop(probes.popleft()))
        else:
            return None
        if not markers:
            self.session.set_upstream_events()
        return replaced

    def _marker(self, d: Decision | bytes) -> str:
        """A nonce the server will fail on; its error is replaced by ``d``'s denial (or by
        ``d`` itself, an ErrorResponse frame)."""
        nonce = MARKER_PREFIX + secrets.token_hex(12)
        first = not self._markers
        self._markers[nonce.encode()] = d
        if first:
            self.session.set_upstream_events()
        recording = self.session.recording
        if recording is not None:  # the message being handled is answered by the gateway
            code = "42501" if isinstance(d, Decision) else _sqlstate(d)
            recording.refused(code)
        return nonce

    # --- the verdict cache ---------------------------------------------------------------------

    def native_scope(self) -> int | None:
        """The decision scope under which the client buffer may answer Queries from the
        engine's verdict cache, or None while every Query must come here: a stale window,
        markers or probes outstanding, text the cache cannot lex as the server does, or a
        mirror that must see Queries."""
        ctx = self.ctx
        if (
            self._window
            or self._markers
            or self._probes
            or not ctx.standard_conforming_strings
            or not ctx.normalize_literals
            or not self.mirror.quiet_for_queries
        ):
            return None
        return self.engine.session_scope(self.principal, ctx)

    def native_parse(self) -> NativeParse | None:
        """The Parse the client buffer may answer natively now, or None: the unnamed statement
        the server holds (confirmed, nothing in flight; see ``ServerMirror.quiet_for_parses``)
        when the current policy allowed its text for this session's current scope in a way
        that may be repeated without Python (``PolicyEngine.native_ok``).  Parsing that text
        into the unnamed statement again leaves the server holding the same statement (or none,
        should the Parse fail), so nothing the gateway follows changes; its decision is logged
        natively.  Not while a stale window, a marker or probe, or approve rules need Parses."""
        ctx = self.ctx
        if (
            self._window
            or self._markers
            or self._probes
            or not ctx.standard_conforming_strings
            or not ctx.normalize_literals
            or (self.approvals is not None and self.approvals.active())
            or not self.mirror.quiet_for_parses
        ):
            return None
        stmt = self.mirror.statement(b"")
        note = stmt.policy if stmt is not None else None
        if (
            not isinstance(note, _Stmt)
            or note.native is None
            or note.generation != self.engine.generation
            or note.denied is not None
            or note.approval is not None
            or stmt is None
            or stmt.source != "parse"
            or note.native_scope != self.engine.session_scope(self.principal, ctx)
        ):
            return None
        return note.native

    def native_log(self) -> tuple[native.DecisionLog, bytes, int, bool] | None:
        """Where the client buffer writes the decision-log lines of the Queries it answers
        (the log, the session's members of each line, the SQL excerpt's bound, whether lines
        carry SQL), or None: no log, or one that takes events from here (:meth:`native_hits`)."""
        audit = self.audit
        log = getattr(audit, "native_log", None)
        if log is None:
            return None
        if self._log_prefix is None:
            self._log_prefix = session_members(self.principal, self.ctx.session_id)
        record_sql = bool(getattr(audit, "record_sql", True))
        return log, self._log_prefix, self._audit_sql_bytes, record_sql

    def native_hits(self, count: int, hits: list[tuple[Any, bytes]], granted: int = 0) -> None:
        """``count`` Queries the client buffer answered from the verdict cache (``granted`` of
        them run on standing grants, the rest allowed), with the verdict and text of each when
        the buffer keeps them: their decision events (the statement record has their decisions
        already, the process-wide metric counts them natively, a native decision log has their
        lines).  The per-target counts read ``decisions``: the hits are in it too.  A hit run on
        a standing grant carries a :class:`~veilgate.gateway.approval.NativeGrantUse` (its
        ``approve`` decision event, then the gate's ``grant_used`` event)."""
        decisions = self.decisions
        if count > granted:
            decisions["allow"] = decisions.get("allow", 0) + count - granted
        if granted:
            decisions["approve"] = decisions.get("approve", 0) + granted
        uses: list[tuple[Any, str]] | None = None
        audit = self.audit
        if audit is None:
            return
        principal, sid, limit = self.principal, self.ctx.session_id, self._audit_sql_bytes
        ts = time.time()
        events = []
        for item, raw in hits:
            text = self._text(raw)
            verdict = item
            if type(item) is not Verdict:  # a Query run on a standing grant (NativeGrantUse)
                verdict = item.verdict
                if uses is None:
                    uses = []
                uses.append((item, text))
            events.append(
                DecisionEvent.from_verdict(
                    verdict, text, principal, session_id=sid, ts=ts, max_sql_bytes=limit
                )
            )
        many = getattr(audit, "emit_many", None)
        try:
            if many is not None:
                many(events)
            else:
                for event in events:
                    audit.emit(event)
        except (OSError, ValueError) as exc:
            log.event(logger, "audit_failed", logging.ERROR, error=str(exc))
        if uses is not None and self.approvals is not None:
            self.approvals.native_uses(uses)

    def native_grant_scope(self, scope: int) -> int | None:
        """The principal's grant scope for a client buffer armed with ``scope`` (None: no
        approvals)."""
        gate = self.approvals
        return gate.native_scope(scope) if gate is not None else None

    # --- for the approval gate ----------------------------------------------------------------

    def _pending_approval(
        self, d: Decision, parse_body: bytes | None, types: tuple[int, ...] = ()
    ) -> PendingApproval:
        from veilgate.approvals.fingerprint import parse_param_types
        from veilgate.gateway.approval import PendingApproval

        if parse_body is not None:
            types = tuple(parse_param_types(parse_body))
        return PendingApproval(d, types)

    def forward(self, frame: bytes) -> None:
        """Send a message the approval gate let through."""
        self._write(frame)

    def refuse(self, error: bytes, *, query: bool) -> None:
        """Answer the message being handled (a Query, or a Bind when ``query`` is false) with
        ``error`` instead of running it: the server gets a marker that fails (a Query, or a
        Parse under a statement name of its own, which fails before creating anything), so the
        transaction and the pipeline fail exactly as for the server's own error."""
        nonce = self._marker(error)
        if query:
            self._write(wire.frame(b"Q", wire.cstr(f'SELECT "{nonce}"')))
        else:
            marker = wire.cstr(nonce) + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
            self._write(wire.frame(b"P", marker))

    def cancel_wait(self) -> bool:
        """A CancelRequest: ends a statement's wait for approval (True), if one waits."""
        return self.approvals is not None and self.approvals.cancel_wait()

    def close(self) -> None:
        """The session ended."""
        if self.approvals is not None:
            self.approvals.close()

    # --- policy reload -------------------------------------------------------------------------

    def policy_reloaded(self) -> None:
        """The engine has a new generation: judge statements again at their next Bind, and
        portals bound before now at their next Execute."""
        self._update_binds()
        if self.approvals is not None:
            self.session.set_client_events()  # approve rules may have come or gone
        state = self.session.state
        if not state.busy and state.tx_status in (0, _IDLE):
            # nothing in flight and no transaction block: no portal exists
            if self._window:
                self._close_window()
            self._retired = set()
            return
        # ReadyForQuery 'I' for a request sent after this reload ends the window
        self._z_before = state.pending
        self._untracked = self._judge_untracked()
        if not self._window:
            self._window = True
            self.mirror.track_portals(True, busy=state.busy)
            self.session.set_client_events()
            self.session.set_upstream_events()

    def _judge_untracked(self) -> Decision | None:
        """What an Execute of a portal bound before the window gets (None: it runs)."""
        gen = self.engine.generation
        if self._retired is None:
            return stale_portal_denial(
                gen, "the gateway does not know which statement the portal was bound from"
            )
        texts = {s.query for s in self.mirror.possible_statements()} | self._retired
        denied = [d for d in (self._decide(t) for t in texts) if not d.allowed]
        if not denied:
            return None
        first = denied[0]
        if len(denied) == len(texts) and all(
            d.rule_id == first.rule_id and d.action == first.action for d in denied
        ):
            return first  # whichever statement it came from, this rule denies it
        return stale_portal_denial(
            gen,
            "the portal may have been bound from a statement the current policy denies",
        )

    def _close_window(self) -> None:
        """No portal bound before the reload survives.  Portals bound since are possible sources
        for the next reload's untracked portals: their texts are kept as replaced texts."""
        self._window = False
        self._untracked = None
        retired: set[str] | None = {
            p.query for p in self.mirror.portals().values() if p.source == "bind"
        }
        if len(retired or ()) > _RETIRED_MAX:
            retired = None
        self._retired = retired
        self.mirror.track_portals(False)
        self.session.set_client_events()
        self.session.set_upstream_events()

    def _update_binds(self) -> None:
        gen = self.engine.generation
        want = False
        for stmt in self.mirror.projected_statements().values():
            note = stmt.policy
            if (
                not isinstance(note, _Stmt)
                or note.generation != gen
                or note.denied is not None
                or note.approval is not None
            ):
                want = True
                break
        if want != self._binds:
            self._binds = want
            self.session.set_client_events()

    # --- server side ---------------------------------------------------------------------------

    def server_message(self, m: Any) -> bytes:
        """An event message from the server: what to send the client instead of it."""
        tag = m.tag
        gate = self.approvals
        if (
            gate is not None
            and gate.tracking
            and tag in _TX_TAGS
            and not gate.server_event(tag, bytes(m.body), not self.session.state.busy)
        ):
            self.session.set_upstream_events()  # settled: C stops being an event
        if tag == _E:
            markers = self._markers
            body = m.body
            if self._probes:
                replaced = self._probe_error(body)
                if replaced is not None:
                    return replaced
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
                        return _error_frame(d)
        elif tag == _Z:
            if self._window:
                if self._z_before > 0:
                    self._z_before -= 1
                elif m.body[:1] == b"I":
                    self._close_window()
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
            self._probes.clear()
            self.session.set_upstream_events()

    @property
    def client_only_encoding(self) -> bool:
        """The client encoding is one whose multi-byte characters can hold ASCII bytes (SJIS,
        BIG5, ...): result masking refuses it (its detectors and COPY parsing assume ASCII
        bytes are ASCII characters)."""
        return self._codec is not None

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

    def _record(self, d: Decision, sql_len: int | None = None) -> None:
        _count_decision(d.action)
        self.last_fingerprint = d.fingerprint
        decisions = self.decisions
        decisions[d.action] = decisions.get(d.action, 0) + 1
        if logger.isEnabledFor(logging.DEBUG):  # debug traces every statement of a session
            log.event(
                logger,
                "statement",
                logging.DEBUG,
                action=d.action,
                rule_id=d.rule_id,
                fingerprint=d.fingerprint,
                tier=d.tier,
            )
        recording = self.session.recording
        if recording is not None:
            recording.decision(self.session.current_stmt_id, d)
        if self.audit is not None:
            try:
                self.audit.emit(
                    DecisionEvent.from_decision(
                        d,
                        self.principal,
                        session_id=self.ctx.session_id,
                        max_sql_bytes=self._audit_sql_bytes,
                        sql_len=sql_len,
                    )
                )
            except (OSError, ValueError) as exc:
                log.event(logger, "audit_failed", logging.ERROR, error=str(exc))
        if not d.allowed and d.action != "approve":  # approvals log their own outcome
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
