"""Just-in-time approval on a relayed session (DESIGN.md "approvals", PROTOCOL.md 9-10).

The policy enforcer (:mod:`veilgate.gateway.enforce`) hands this gate every message an
``approve`` rule matched: a simple Query, or the Bind of a prepared statement (its Parse went
through: parsing runs nothing, and the fingerprint needs the parameters Bind carries).

* **Grant check.**  The statement's fingerprint (:mod:`veilgate.approvals.fingerprint`) and the
  principal's identity key are looked up: a live grant runs it (one use counted) -- for grants
  without a use limit from memory, synchronously; otherwise the client side is *held* (nothing
  more of it is read or forwarded, the rest of the gateway goes on) while the store answers.
  A Query that ran on a grant without a use limit is then remembered in the native verdict
  cache under the principal's grant scope (:meth:`PolicyEngine.remember_grant`): its next runs
  (the same text, or the same shape when the rule ignores constants) are answered without
  Python, each use counted in the grant's native handle and recorded as an ``approve``
  decision naming the request, until the grant expires or this node learns it ended
  (:class:`~veilgate.approvals.service.ApprovalService`).  Grants with a use limit are never
  cached: each use is one conditional update in the store.
* **Fail-fast** (default): no grant means an approval request (the open one for this statement,
  or a new one) and ``ERROR 42Z01`` naming it and how to get it approved.  The agent retries the
  identical statement once it is approved.
* **Wait**: a ``NoticeResponse`` with the request id at once, then the statement is held until a
  decision (woken by the store's notification, on whichever gateway the approver used): approved
  runs it, denied is ``42501``, the wait's timeout or a CancelRequest is ``57014``.

Every refusal reaches the server as a *marker* that fails there (the enforcer's mechanism), so
transaction state and response order stay the server's: a refusal inside ``BEGIN`` fails the
transaction and a later ``COMMIT`` rolls back.  The store being down refuses the statement
(``42Z02``, fail closed); statements no approve rule matches never come here.

Session settings the gateway reads (the server accepts them too: PostgreSQL takes any two-part
setting name, so client and server agree on the outcome): ``SET veilgate.reason = '...'`` (the
reason attached to this session's next requests), ``SET veilgate.request_tier = 'name'`` (ask
for a time-bound elevation to that tier; the request id comes as a NoticeResponse).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from pglast import parser as _pg

from veilgate import log, metrics
from veilgate.approvals.events import ApprovalEvent
from veilgate.approvals.fingerprint import (
    bind_param_count,
    bind_parameters,
    fingerprint,
    fingerprint_base,
)
from veilgate.approvals.model import (
    KIND_ELEVATION,
    KIND_STATEMENT,
    Grant,
    Request,
    elevation_spec,
    principal_key,
    statement_spec,
)
from veilgate.approvals.policy import needs_approvals
from veilgate.approvals.store import display_params
from veilgate.gateway.protocols import ApprovalSession
from veilgate.gateway.sqleffects import may_have_effects
from veilgate.pgwire import wire
from veilgate.policy.analysis import MessageAnalysis
from veilgate.policy.approval_spec import ApprovalSpec
from veilgate.policy.engine import Decision, Verdict
from veilgate.policy.model import Tier
from veilgate.state import StateUnavailable

if TYPE_CHECKING:
    from veilgate.approvals.service import ApprovalService
    from veilgate.identity.base import Principal
    from veilgate.policy.engine import PolicyEngine, SessionContext

__all__ = [
    "APPROVAL_REQUIRED",
    "APPROVAL_UNAVAILABLE",
    "REASON_REQUIRED",
    "ApprovalGate",
    "NativeGrantUse",
    "PendingApproval",
]

logger = log.get("gateway.approval")

APPROVAL_REQUIRED: Final = "42Z01"
"""veilgate-owned (class 42: an authorization failure, never retried blindly by drivers)."""
APPROVAL_UNAVAILABLE: Final = "42Z02"
REASON_REQUIRED: Final = "42Z03"
SETTING_RULE: Final = "veilgate-setting"
_SETTINGS: Final = ("veilgate.reason", "veilgate.request_tier")
_REASON_MAX: Final = 1000
_SETTING_RX: Final = re.compile(r"\s*(?:set|reset)\s", re.IGNORECASE)
_FAST_MAX: Final = 256
"""Verdicts / prepared statements whose approval spec and fingerprint a session remembers."""
_count_check: Final = metrics.approval_checks_total.inc_one


@dataclass(frozen=True, slots=True)
class NativeGrantUse:
    """What the native verdict cache hands back for each Query it ran on a standing grant (the
    hit event, when the session audits): the verdict and the grant, for the decision event and
    the ``grant_used`` event."""

    verdict: Verdict
    grant: Grant
    action: str = "approve"


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """A prepared statement an approve rule matched: judged again at each Bind."""

    decision: Decision
    param_types: tuple[int, ...]


def _settings(text: str) -> list[tuple[str, str | None, bool]] | None:
    """``[(name, value, local)]`` when every statement of ``text`` sets or resets a
    ``veilgate.*`` setting (``None`` value: reset; ``local``: ``SET LOCAL``); None otherwise."""
    if _SETTING_RX.match(text) is None or "veilgate." not in text.lower():
        return None
    try:
        tree = json.loads(_pg.parse_sql_json(text))
    except _pg.ParseError:
        return None
    out: list[tuple[str, str | None, bool]] = []
    for raw in tree.get("stmts", ()):
        vs = raw.get("stmt", {}).get("VariableSetStmt")
        if vs is None or not str(vs.get("name", "")).startswith("veilgate."):
            return None
        kind = vs.get("kind")
        local = bool(vs.get("is_local", False))
        if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
            out.append((vs["name"], None, local))
            continue
        args = vs.get("args", [])
        if kind != "VAR_SET_VALUE" or len(args) != 1 or "A_Const" not in args[0]:
            return None
        const = args[0]["A_Const"]
        if "sval" in const:
            value = str(const["sval"].get("sval", ""))
        elif "ival" in const:
            value = str(const["ival"].get("ival", 0))
        else:
            return None
        out.append((vs["name"], value, local))
    return out or None


_UNSET: Final[Any] = object()
_T_BLOCK: Final = ord("T")
_E_BLOCK: Final = ord("E")


class TxSetting:
    """A session setting the gateway reads (``veilgate.reason``) that follows the server's
    transactions as the server's own setting of that name does: ``SET`` takes effect at once
    and is kept at ``COMMIT``, undone by ``ROLLBACK`` or by the failure of the implicit
    transaction it ran in; ``SET LOCAL`` lasts until the transaction ends; in a failed
    transaction block the server refuses the ``SET``, so nothing changes.

    The client's ``SET`` is applied when it is sent (a statement behind it in the same
    transaction sees it); while a change is not settled the gate follows the server's
    CommandComplete tags (``COMMIT``, ``ROLLBACK``, ``BEGIN``...), errors and ReadyForQuery
    (:attr:`tracking`), and settles it once the session has no request in flight.  Where
    the outcome is not certain -- a ``ROLLBACK TO SAVEPOINT`` after the change, several
    transactions in one pipeline -- a changed value is dropped (fail closed: the agent sets
    its reason again), never kept wrongly."""

    __slots__ = (
        "_committed",
        "_end",
        "_failed",
        "_in_block",
        "_local",
        "_pending",
        "_uncertain",
        "value",
    )

    def __init__(self) -> None:
        self.value: str | None = None
        """The value statements sent now see."""
        self._pending: Any = _UNSET
        """What the setting is at COMMIT (``_UNSET``: nothing changed since it was settled)."""
        self._local: Any = _UNSET
        self._committed: str | None = None
        self._end: str | None = None
        self._failed = False
        self._in_block = False
        self._uncertain = False

    @property
    def tracking(self) -> bool:
        """A change waits for the server's outcome (follow its C, E and Z messages)."""
        return self._pending is not _UNSET

    def set(self, value: str | None, *, local: bool, tx_status: int, failed_block: bool) -> None:
        """The client sent ``SET [LOCAL]`` (``value`` None: ``RESET``).  ``tx_status``: the last
        ReadyForQuery's status; ``failed_block``: the server will refuse it (the session is in
        a failed transaction block with nothing else in flight)."""
        if failed_block:
            return
        if self._pending is _UNSET:
            self._pending = self._committed
            self._end = None
            self._failed = False
            self._uncertain = False
            self._in_block = tx_status == _T_BLOCK
        if local:
            self._local = value
        else:
            self._pending = value
            self._local = _UNSET
        self.value = value

    def server(self, tag: int, body: bytes, idle: bool) -> None:
        """A CommandComplete (``C``), ErrorResponse (``E``) or ReadyForQuery (``Z``) while
        :attr:`tracking`; ``idle``: no request is in flight after this message."""
        if tag == 0x43:  # C
            if body.startswith((b"COMMIT", b"PREPARE TRANSACTION")):
                self._end = "commit"
            elif body.startswith(b"ROLLBACK"):  # a ROLLBACK, or a COMMIT of a failed block
                self._end = "rollback"
            elif body.startswith((b"BEGIN", b"START TRANSACTION")):
                self._in_block = True
        elif tag == 0x45:  # E
            if not self._in_block:
                self._failed = True  # the implicit transaction is rolled back
        elif tag == 0x5A:  # Z
            status = body[:1]
            if status in (b"T", b"E"):
                self._in_block = True
                if self._end is not None:
                    # a ROLLBACK TO SAVEPOINT, or a transaction ended and another began
                    self._uncertain = True
                    self._end = None
                return
            self._in_block = False
            if idle:
                self._settle()

    def _settle(self) -> None:
        committed = self._committed
        if self._end == "rollback" or (self._end is None and self._failed):
            value = committed
        else:
            value = self._pending
            if self._uncertain and value != committed:
                value = None
        self._committed = value
        self.value = value
        self._pending = _UNSET
        self._local = _UNSET
        self._end = None
        self._failed = False
        self._uncertain = False


def _setting_decision(text: str, generation: int, tier: str | None) -> Decision:
    verdict = Verdict(
        action="allow",
        tier=tier,
        rule_id=SETTING_RULE,
        message="a veilgate session setting",
        reason="SET veilgate.* is read by the gateway",
        statements=(),
        fingerprint="",
        analysis=MessageAnalysis(text, (), ""),
        generation=generation,
        cacheable=False,
    )
    return Decision(verdict, 0.0, False)


class GatedEnforcer(Protocol):
    """What an approval gate needs of the policy enforcer that makes it
    (:class:`~veilgate.gateway.enforce.PolicyEnforcer`)."""

    @property
    def session(self) -> ApprovalSession: ...
    @property
    def principal(self) -> Principal: ...
    @property
    def engine(self) -> PolicyEngine: ...
    @property
    def ctx(self) -> SessionContext: ...
    def forward(self, frame: bytes) -> None: ...
    def refuse(self, error: bytes, *, query: bool) -> None: ...


class ApprovalGate:
    """Approvals of one session (made by its :class:`~veilgate.gateway.enforce.PolicyEnforcer`)."""

    def __init__(self, enforcer: GatedEnforcer, service: ApprovalService) -> None:
        self.enforcer = enforcer
        self.service = service
        self.session = enforcer.session
        self.principal = enforcer.principal
        self.principal_key = principal_key(self.principal)
        self._reason = TxSetting()
        self._task: asyncio.Task[None] | None = None
        self._cancel: asyncio.Future[None] | None = None
        """Set while a statement waits for a decision: a CancelRequest resolves it."""
        self._holding = False
        self._closed = False
        self._elevation: Grant | None = None
        self._active = False
        self._active_gen = -1
        self._specs: dict[tuple[int, tuple[str, ...]], ApprovalSpec | None] = {}
        self._by_verdict: dict[int, Any] = {}
        """id(verdict) -> (verdict, spec, fingerprint or None, exact): the allowed path of a
        statement seen before costs a few dictionary lookups."""
        self._by_statement: dict[int, Any] = {}
        """id(PendingApproval) -> (pending, spec, FingerprintBase, exact)."""
        grant = service.register(self)
        if grant is not None:
            self.elevation_changed(grant)

    @property
    def reason(self) -> str | None:
        """``SET veilgate.reason``, as the server's transactions left it."""
        return self._reason.value

    @property
    def tracking(self) -> bool:
        """A ``SET veilgate.reason`` waits for its transaction's outcome: the enforcer passes
        the server's CommandComplete, ErrorResponse and ReadyForQuery to :meth:`server_event`."""
        return self._reason.tracking

    def server_event(self, tag: int, body: bytes, idle: bool) -> bool:
        """Follow the server's message; True while still :attr:`tracking`."""
        self._reason.server(tag, body, idle)
        return self._reason.tracking

    @property
    def base_tier(self) -> Tier | None:
        """The tier the principal's claims match under the current policy (not the elevation)."""
        return self.enforcer.engine.tier_for(self.principal)

    def active(self) -> bool:
        """The policy has approve rules (or elevation tiers)."""
        gen = self.enforcer.engine.generation
        if self._active_gen != gen:
            self._active = needs_approvals(self.enforcer.engine.policy)
            self._active_gen = gen
        return self._active

    # --- settings ------------------------------------------------------------------------------

    def setting(self, text: str, *, query: bool = False) -> Decision | None:
        """An allow decision for a message of ``SET veilgate.reason`` / ``request_tier``
        statements (their effect is applied here; the reason follows the transaction, see
        :class:`TxSetting`); None for anything else (other ``veilgate.*`` names are judged by
        the policy like any setting)."""
        if self._exact():
            # the gateway's parser may split such a text where the server does not: the
            # policy (which lexes it as the server will) judges it like any statement
            return None
        parsed = _settings(text)
        if parsed is None or any(name not in _SETTINGS for name, _, _ in parsed):
            return None
        requested: str | None = None
        was_tracking = self._reason.tracking
        state = self.session.state
        tx_status = state.tx_status
        # in a failed block with nothing else in flight (this Query aside) the server refuses
        # it; a Parse is judged here too, where its SET runs at Execute (right behind it)
        failed_block = tx_status == _E_BLOCK and state.pending <= (1 if query else 0)
        for name, value, local in parsed:
            if name == "veilgate.reason":
                self._reason.set(
                    value[:_REASON_MAX] if value else None,
                    local=local,
                    tx_status=tx_status,
                    failed_block=failed_block,
                )
            elif not failed_block:
                requested = value
        if self._reason.tracking and not was_tracking:
            self.session.set_upstream_events()
        if requested:
            self._request_tier(requested)
        ctx = self.enforcer.ctx
        tier = ctx.tier.name if ctx.tier is not None else None
        return _setting_decision(text, self.enforcer.engine.generation, tier)

    # --- statements ----------------------------------------------------------------------------

    def _spec(self, d: Decision) -> ApprovalSpec | None:
        """The approval every approve-matched statement of the message asks for; None when
        they ask for different ones (such a message is refused: send them separately)."""
        rules = tuple(sorted({s.rule_id for s in d._verdict.statements if s.action == "approve"}))
        key = (d.generation, rules or (d.rule_id,))
        if key in self._specs:
            return self._specs[key]
        policy = self.enforcer.engine.policy
        specs = set()
        for rid in key[1]:
            rule = policy.rule_named(rid)
            specs.add(rule.approval if rule is not None and rule.approval else ApprovalSpec())
        spec = specs.pop() if len(specs) == 1 else None
        if len(self._specs) > 64:
            self._specs.clear()
        self._specs[key] = spec
        return spec

    def _exact(self) -> bool:
        ctx = self.enforcer.ctx
        return not (ctx.standard_conforming_strings and ctx.normalize_literals)

    def _prepared_texts(self, d: Decision) -> tuple[str, ...]:
        names = [n for s in d._verdict.statements for n in s.analysis.executes]
        prepared = self.enforcer.ctx.prepared
        return tuple(prepared[n].text for n in names if n in prepared)

    def query(self, d: Decision, frame: bytes, text: str) -> None:
        """A simple Query an approve rule matched."""
        v = d._verdict
        exact = self._exact()
        hit = self._by_verdict.get(id(v))
        if hit is not None and hit[0] is v and hit[3] == exact:
            spec, fp = hit[1], hit[2]
        else:
            found = self._spec(d)
            if found is None:
                self._conflict(query=True)
                return
            spec, fp = found, None
            if not spec.match_constants and not exact and not self._executes(v):
                # texts that share a verdict differ at most in plain constants (the engine's
                # literal-normalised cache), which this fingerprint leaves out
                fp = self.service.text_fingerprint(text, constants=False, exact=False)
            self._remember(self._by_verdict, id(v), (v, spec, fp, exact))
        if fp is None:
            prepared = self._prepared_texts(d)
            if prepared:
                fp = fingerprint(
                    text, constants=spec.match_constants, exact_text=exact, prepared=prepared
                )
            else:
                fp = self.service.text_fingerprint(
                    text, constants=spec.match_constants, exact=exact
                )
        grant = self.service.cached_grant(self.principal_key, fp)
        if grant is not None:
            self._run(d, grant, frame, query=True, spec=spec)
            return
        self._start(self._check(d, spec, fp, frame, text, None, query=True))

    def bind(self, pending: PendingApproval, frame: bytes, body: bytes, text: str) -> None:
        """The Bind of a prepared statement an approve rule matched."""
        d = pending.decision
        exact = self._exact()
        hit = self._by_statement.get(id(pending))
        if hit is not None and hit[0] is pending and hit[3] == exact:
            spec, base = hit[1], hit[2]
        else:
            found = self._spec(d)
            if found is None:
                self._conflict(query=False)
                return
            spec = found
            base = fingerprint_base(
                text,
                constants=spec.match_constants,
                exact_text=exact,
                prepared=self._prepared_texts(d),
                param_types=pending.param_types,
            )
            if not self._executes(d._verdict):  # what EXECUTE names may change meanwhile
                self._remember(self._by_statement, id(pending), (pending, spec, base, exact))
        if not spec.match_constants:
            # only the number of parameters is part of the fingerprint: a grant held here
            # without a use limit runs it without reading them (else the full path below)
            n = bind_param_count(body)
            if n is not None:
                grant = self.service.cached_grant(self.principal_key, base.with_count(n))
                if grant is not None:
                    self._run(d, grant, frame, query=False)
                    return
        parsed = bind_parameters(body)
        if parsed is None:  # malformed: the server answers it with a protocol error
            self.enforcer.forward(frame)
            return
        params = parsed[2]
        fp = base.with_params(params)
        grant = self.service.cached_grant(self.principal_key, fp)
        if grant is not None:
            self._run(d, grant, frame, query=False)
            return
        shown = display_params(params, pending.param_types) if params else None
        self._start(self._check(d, spec, fp, frame, text, shown, query=False))

    @staticmethod
    def _executes(v: Verdict) -> bool:
        return any(s.analysis.executes for s in v.statements)

    @staticmethod
    def _remember(cache: dict[int, Any], key: int, value: Any) -> None:
        if len(cache) >= _FAST_MAX:
            cache.clear()
        cache[key] = value

    def _conflict(self, *, query: bool) -> None:
        metrics.approval_checks_total.inc_one("refused")
        self.enforcer.refuse(
            wire.error_response(
                "ERROR",
                "42501",
                "veilgate policy: statements in this message need different approvals",
                "nothing in this message was run",
                "send the statements that need approval one at a time",
            ),
            query=query,
        )

    def _run(
        self,
        d: Decision,
        grant: Grant,
        frame: bytes,
        *,
        query: bool,
        spec: ApprovalSpec | None = None,
    ) -> None:
        """Run the statement on ``grant``.  ``spec``: given on the synchronous path only, where
        ``d`` was decided under the session's current scope just now (never after an await: an
        elevation may have changed the scope meanwhile): the Query may then be remembered in
        the native verdict cache."""
        _count_check("granted")
        if self.service.audit is not None:
            self.service.emit(
                ApprovalEvent.of_grant(
                    "grant_used",
                    grant,
                    principal_label=self.principal.label(),
                    session_id=self.enforcer.ctx.session_id,
                    rule_id=d.rule_id,
                    tier=d.tier,
                    sql=d.analysis.text,
                )
            )
        recording = self.session.recording
        if recording is not None:  # the statement record names the approval it ran under
            recording.decision(self.session.current_stmt_id, d, approval=grant.request_id)
        # what it PREPAREs / DEALLOCATEs is the statement mirror's once the server has done it
        self.enforcer.forward(frame)
        if query and grant.unlimited and spec is not None:
            self._remember_native(d, grant, frame, spec)

    def _remember_native(self, d: Decision, grant: Grant, frame: bytes, spec: ApprovalSpec) -> None:
        """Let the native verdict cache run this Query's next uses of ``grant`` (see the module
        docstring); nothing when it would not be sound (the engine's checks, the message's)."""
        if self._exact() or frame[-1:] != b"\0" or frame.find(b"\0", 5) != len(frame) - 1:
            return
        body = frame[5:]
        if may_have_effects(body):
            return
        handle = self.service.handle(grant)
        if handle is None:
            return
        engine = self.enforcer.engine
        ctx = self.enforcer.ctx
        scope = engine.session_scope(self.principal, ctx)
        engine.remember_grant(
            d,
            body[:-1],
            ctx,
            grant_scope=engine.grant_scope(scope, self.principal_key),
            shape=not spec.match_constants,
            event=NativeGrantUse(d._verdict, grant),
            handle=handle,
            request_id=grant.request_id,
        )

    def native_scope(self, scope: int) -> int | None:
        """The grant scope a client buffer armed with decision ``scope`` looks up (None: the
        policy has no approve rules)."""
        if not self.active():
            return None
        return self.enforcer.engine.grant_scope(scope, self.principal_key)

    def native_uses(self, uses: list[tuple[NativeGrantUse, str]]) -> None:
        """Queries the native verdict cache ran on grants (audited sessions): their
        ``grant_used`` events (their uses are counted in the grants' handles)."""
        if self.service.audit is None:
            return
        label = self.principal.label()
        sid = self.enforcer.ctx.session_id
        for use, text in uses:
            v = use.verdict
            self.service.emit(
                ApprovalEvent.of_grant(
                    "grant_used",
                    use.grant,
                    principal_label=label,
                    session_id=sid,
                    rule_id=v.rule_id,
                    tier=v.tier,
                    sql=text,
                )
            )

    def _start(self, coro: Any) -> None:
        """Hold the client side while ``coro`` decides (the rest of the gateway goes on)."""
        self.session.client.hold()
        self._holding = True
        self._task = asyncio.get_running_loop().create_task(coro)

    def _release(self) -> None:
        self._task = None
        if self._holding and not self._closed:
            self._holding = False
            self.session.client.release()

    def _refuse(self, code: str, message: str, detail: str, hint: str, *, query: bool) -> None:
        self.enforcer.refuse(wire.error_response("ERROR", code, message, detail, hint), query=query)

    async def _check(
        self,
        d: Decision,
        spec: ApprovalSpec,
        fp: str,
        frame: bytes,
        text: str,
        params: list[str | None] | None,
        *,
        query: bool,
    ) -> None:
        try:
            await self._check_inner(d, spec, fp, frame, text, params, query=query)
        except StateUnavailable as exc:
            metrics.approval_checks_total.inc_one("unavailable")
            log.event(
                logger,
                "approval_store_unavailable",
                logging.ERROR,
                peer=self.session.peer,
                principal=self.principal.label(),
                error=str(exc),
            )
            self._refuse(
                APPROVAL_UNAVAILABLE,
                "veilgate: this statement needs an approval and the approval store is "
                "unavailable; it was not run",
                f"rule {d.rule_id}: {d.message}",
                "try again later; statements that need no approval are not affected",
                query=query,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("approval check failed")
            metrics.approval_checks_total.inc_one("unavailable")
            self._refuse(
                APPROVAL_UNAVAILABLE,
                "veilgate: the approval check failed; the statement was not run",
                f"rule {d.rule_id}",
                "try again; the gateway log has the details",
                query=query,
            )
        finally:
            if not self._closed:
                self._release()

    async def _check_inner(
        self,
        d: Decision,
        spec: ApprovalSpec,
        fp: str,
        frame: bytes,
        text: str,
        params: list[str | None] | None,
        *,
        query: bool,
    ) -> None:
        grant = await self.service.consume(self.principal_key, fp)
        if self.gone():
            return
        if grant is not None:
            self._run(d, grant, frame, query=query)
            return
        if spec.require_reason and not self.reason:
            metrics.approval_checks_total.inc_one("refused")
            self._refuse(
                REASON_REQUIRED,
                "veilgate: this statement needs an approval, and a request needs a reason",
                f"rule {d.rule_id} (tier {d.tier}): {d.message}",
                "SET veilgate.reason = 'why this is needed', then run the statement again",
                query=query,
            )
            return
        req = await self.service.request(
            kind=KIND_STATEMENT,
            principal=self.principal,
            session_id=self.enforcer.ctx.session_id,
            tier=d.tier,
            rule_id=d.rule_id,
            fingerprint=fp,
            sql=text,
            params=params,
            reason=self.reason,
            requested_tier=None,
            spec=statement_spec(spec),
        )
        if self.gone():
            return
        metrics.approval_checks_total.inc_one("required")
        if spec.mode != "wait":
            self._refuse(
                APPROVAL_REQUIRED,
                f"veilgate: approval required (request {req.id})",
                self._detail(d, req),
                f"{self.service.how_to_approve(req.id)}; then run the identical statement again",
                query=query,
            )
            return
        await self._wait(d, spec, fp, frame, req, query=query)

    def _detail(self, d: Decision, req: Request) -> str:
        approvals = f"{req.approvals} of {req.required} approvals"
        return f"rule {d.rule_id} (tier {d.tier}): {d.message}; {approvals} so far"

    async def _wait(
        self, d: Decision, spec: ApprovalSpec, fp: str, frame: bytes, req: Request, *, query: bool
    ) -> None:
        self.session.write_client(
            wire.notice_response(
                "01000",
                f"veilgate: waiting up to {spec.wait_timeout_s:g}s for approval (request {req.id})",
                self._detail(d, req),
                self.service.how_to_approve(req.id),
            )
        )
        loop = asyncio.get_running_loop()
        cancel: asyncio.Future[None] = loop.create_future()
        self._cancel = cancel
        waiter = loop.create_task(self.service.wait(req.id, spec.wait_timeout_s))
        try:
            await asyncio.wait(
                [waiter, cancel],
                return_when=asyncio.FIRST_COMPLETED,  # type: ignore[type-var]
            )
        finally:
            self._cancel = None
        if cancel.done():
            waiter.cancel()
            self._wait_ended("cancelled", req)
            self._refuse(
                "57014",
                "canceling statement due to user request",
                f"the statement was waiting for approval request {req.id} (still pending)",
                "run it again to wait again, or once it is approved",
                query=query,
            )
            return
        decided = waiter.result()  # StateUnavailable propagates: fail closed
        if self.gone():
            return
        if decided is None or decided.status == "expired":
            outcome = "timeout" if decided is None else "expired"
            self._wait_ended(outcome, req)
            self._refuse(
                "57014",
                f"canceling statement: no approval decision within {spec.wait_timeout_s:g}s "
                f"(request {req.id})"
                if decided is None
                else f"canceling statement: approval request {req.id} expired",
                self._detail(d, req),
                "run the identical statement again once it is approved",
                query=query,
            )
            return
        if decided.status == "denied":
            self._wait_ended("denied", decided)
            who = ", ".join(
                f"{v.approver_label}" + (f" ({v.comment})" if v.comment else "")
                for v in decided.votes
                if v.vote == "deny"
            )
            self._refuse(
                "42501",
                f"veilgate: approval request {req.id} was denied",
                f"denied by {who or 'an approver'}; rule {d.rule_id}",
                "nothing was run",
                query=query,
            )
            return
        grant = await self.service.consume(self.principal_key, fp)
        if self.gone():
            return
        if grant is None:
            self._wait_ended("error", decided)
            self._refuse(
                APPROVAL_REQUIRED,
                f"veilgate: the grant of request {req.id} was already used",
                self._detail(d, decided),
                "run the statement again to ask for a new approval",
                query=query,
            )
            return
        self._wait_ended("approved", decided)
        self._run(d, grant, frame, query=query)

    def _wait_ended(self, outcome: str, req: Request) -> None:
        metrics.approval_waits_total.inc_one(outcome)
        if outcome in ("timeout", "cancelled"):
            self.service.emit(
                ApprovalEvent.of_request(
                    f"wait_{outcome}", req, session_id=self.enforcer.ctx.session_id
                )
            )

    def cancel_wait(self) -> bool:
        """A CancelRequest for this session: ends a wait for approval (57014); False when no
        statement is waiting (the cancel then goes to the server as usual)."""
        fut = self._cancel
        if fut is None or fut.done():
            return False
        fut.set_result(None)
        return True

    # --- elevation -----------------------------------------------------------------------------

    def _request_tier(self, name: str) -> None:
        """``SET veilgate.request_tier``: ask for ``name`` (the SET itself goes through)."""
        policy = self.enforcer.engine.policy
        target = policy.tier_named(name)
        base = self.base_tier.name if self.base_tier is not None else None
        if target is None or target.elevation is None:
            self._notice(f'veilgate: tier "{name}" cannot be requested', "WARNING")
            return
        spec = target.elevation
        if not spec.allows_from(base) or base == name:
            self._notice(f'veilgate: tier "{name}" cannot be requested from tier {base}', "WARNING")
            return
        if spec.require_reason and not self.reason:
            self._notice(
                f'veilgate: a request for tier "{name}" needs a reason: '
                "SET veilgate.reason = '...' first",
                "WARNING",
            )
            return
        masking = policy.masking
        if self.session.masking is None and masking is not None and masking.for_tier(name):
            self._notice(
                f'veilgate: tier "{name}" masks results and this session is not masked: '
                "elevation cannot switch masking on",
                "WARNING",
            )
            return
        self._start(self._elevation_request(name, spec.max_ttl_s, spec))

    async def _elevation_request(self, name: str, ttl: float, spec: Any) -> None:
        try:
            req = await self.service.request(
                kind=KIND_ELEVATION,
                principal=self.principal,
                session_id=self.enforcer.ctx.session_id,
                tier=self.base_tier.name if self.base_tier is not None else None,
                rule_id=f"elevation:{name}",
                fingerprint=f"tier:{name}",
                sql=f"SET veilgate.request_tier = '{name}'",
                params=None,
                reason=self.reason,
                requested_tier=name,
                spec=elevation_spec(spec, ttl),
            )
            self._notice(
                f'veilgate: elevation to tier "{name}" requested (request {req.id})',
                "NOTICE",
                hint=self.service.how_to_approve(req.id),
            )
        except StateUnavailable:
            self._notice(
                "veilgate: the approval store is unavailable; no request was made", "WARNING"
            )
        finally:
            if not self._closed:
                self._release()

    def _notice(self, message: str, severity: str, *, hint: str | None = None) -> None:
        self.session.write_client(wire.notice_response("01000", message, None, hint, severity))

    def elevation_changed(self, grant: Grant | None) -> None:
        """The principal's elevation started or ended (this node's service calls it)."""
        ctx = self.enforcer.ctx
        policy = self.enforcer.engine.policy
        tier = grant.tier if grant is not None else None
        if tier is not None and policy.tier_named(tier) is None:
            tier = None
        masking = policy.masking
        if tier is not None and self.session.masking is None and masking is not None:
            # never unmask by elevation: a masked tier needs a masked session
            tier = None if masking.for_tier(tier) is not None else tier
        if ctx.elevated_tier == tier:
            return
        ctx.elevated_tier = tier
        ctx.tier_generation = -1
        # Queries answered natively were answered under the old tier's scope
        arm = getattr(self.session, "arm_verdicts", None)
        if arm is not None:
            arm()
        event_grant = grant if tier is not None else self._elevation
        self._elevation = grant if tier is not None else None
        if event_grant is not None:
            self.service.emit(
                ApprovalEvent.of_grant(
                    "elevation_applied" if tier is not None else "elevation_ended",
                    event_grant,
                    principal_label=self.principal.label(),
                    session_id=ctx.session_id,
                    tier=tier if tier is not None else ctx.elevated_tier,
                )
            )
        log.event(
            logger,
            "elevation_changed",
            peer=self.session.peer,
            principal=self.principal.label(),
            tier=tier,
        )

    # --- end -----------------------------------------------------------------------------------

    def gone(self) -> bool:
        """The session ended (checked after every await: nothing is written then)."""
        return self._closed

    def close(self) -> None:
        self._closed = True
        self.service.unregister(self)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
