"""Masked-column uses refused before they reach the server (issue 10, item 4).

On a masked session every Query and Parse passes here first (one call site in
:meth:`MaskingRelay.client_message <veilgate.gateway.masking.MaskingRelay.client_message>`).
Each statement's resolution (:mod:`veilgate.masking.analysis`) is judged against the tier
(:func:`veilgate.masking.inference.judge`):

* **steady state**: the resolution and the verdict are cached per statement text: a dictionary
  lookup, no round trip, and the message goes on unchanged;
* **first sight**: the client side is *held* (nothing more is read from it, later messages wait
  in order) while the catalog facts the resolver needs are fetched, as COPY planning does; then
  the message goes on, or is refused;
* **refused**: ``42501`` naming the column.  Idle outside a transaction block the gateway answers
  a Query itself; otherwise (and for Parse) a *marker* that fails on the server goes upstream in
  its place, so the server fails the transaction, skips to Sync and answers exactly as for the
  statement's own error, and the client gets the denial in the marker's place (the masking
  relay's marker mechanism).

What is logged and audited names the column, the clause and the statement's fingerprint: never a
value.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from pglast import parser as _pg

from veilgate import log, metrics
from veilgate.bytecache import SESSION_CACHE_BYTES, ByteLRU, text_cost
from veilgate.masking.analysis import AnalysisError
from veilgate.masking.inference import Denial, judge
from veilgate.masking.lineage import StatementInfo
from veilgate.masking.resolve import Resolution
from veilgate.pgwire import wire
from veilgate.policy.audit import DecisionEvent

if TYPE_CHECKING:
    from veilgate.identity.base import Principal
    from veilgate.masking.planner import SessionMasking
    from veilgate.policy.audit import AuditSink

__all__ = ["InferenceGuard"]

logger = log.get("gateway.masking")

_VERDICTS: Final = 2048
_P: Final = ord("P")
_B: Final = ord("B")
RULE_ID: Final = "masked-column-use"
"""The rule id denials are recorded under."""
_TOO_COMPLEX: Final = Denial(
    column="",
    message="this statement cannot be checked for uses of masked columns (too deeply nested)",
    detail="the gateway refuses what it cannot analyse on a masked session",
    hint="split the statement into simpler ones",
    use="unanalysable",
)


class _Peer(Protocol):
    @property
    def peer(self) -> str: ...


class GuardedRelay(Protocol):
    """What the guard needs of its session's masking relay
    (:class:`~veilgate.gateway.masking.MaskingRelay` is one; a protocol, so that this module
    does not import the relay that imports it)."""

    @property
    def session(self) -> _Peer: ...
    @property
    def planner(self) -> SessionMasking: ...
    @property
    def principal(self) -> Principal: ...
    @property
    def tier(self) -> str: ...
    @property
    def audit(self) -> AuditSink | None: ...
    @property
    def closed(self) -> bool: ...
    def spawn(self, coro: Any) -> None: ...
    def hold_client(self) -> None: ...
    def release_client(self) -> None: ...
    def fail(self, reason: str, detail: str | BaseException) -> None: ...
    def refuse_query(self, error: bytes) -> None: ...
    def refuse_parse(self, m: Any, error: bytes) -> None: ...
    def refuse_bind(self, error: bytes) -> None: ...


class InferenceGuard:
    """The masked-column checks of one session."""

    def __init__(self, relay: GuardedRelay) -> None:
        self.relay = relay
        self._verdicts: ByteLRU[str, tuple[Resolution, tuple[str, ...], Denial | None]] = ByteLRU(
            SESSION_CACHE_BYTES
        )

    # --- the call site -----------------------------------------------------------------------

    def intercept(self, m: Any, infos: list[StatementInfo], go_on: Any) -> bool:
        """Judge a Query / Parse whose statements are ``infos``.  False: allowed now (the
        caller goes on as usual).  True: taken over -- refused now, or held until the catalog
        answered, after which ``go_on()`` runs (allowed) or the refusal is sent."""
        pending: list[StatementInfo] = []
        for info in infos:
            verdict = self._cached_verdict(info)
            if verdict is _UNKNOWN:
                pending.append(info)
            elif verdict is not None:
                assert isinstance(verdict, Denial)
                self._refuse(m, info, verdict)
                return True
        if not pending:
            return False
        relay = self.relay
        relay.hold_client()
        relay.spawn(self._judge_later(m, infos, go_on))
        return True

    def judged(self, text: str) -> bool:
        """Whether this guard (this policy's) allowed ``text`` already: a Bind of it needs no
        new judgement."""
        hit = self._verdicts.get(text)
        return hit is not None and hit[2] is None

    # --- verdicts ------------------------------------------------------------------------------

    def _cached_verdict(self, info: StatementInfo) -> object:
        if not info.parsed:
            # syntax errors: the server answers them (and the policy judges them); text the
            # parser could not take in (too deep) cannot be checked: refused
            err = info.error or ""
            return _TOO_COMPLEX if err.startswith("cannot parse") else None
        planner = self.relay.planner
        analyzer = planner.analyzer(info.text)
        res = analyzer.cached(info.text)
        if res is None:
            # first sight of this text: the catalog's cached facts usually suffice (no hold)
            try:
                res = analyzer.try_now(info.text)
            except AnalysisError:
                return _TOO_COMPLEX
            if res is None:
                return _UNKNOWN
        hit = self._verdicts.get(info.text)
        # where an unqualified CREATE puts its table follows the session's search_path
        schemas = planner.creation_schemas()
        if hit is not None and hit[0] is res and hit[1] is schemas:
            self._verdicts.move_to_end(info.text)
            return hit[2]
        verdict = judge(res, planner)
        self._verdicts.put(info.text, (res, schemas, verdict), text_cost(info.text))
        if len(self._verdicts) > _VERDICTS:
            self._verdicts.popitem(last=False)
        return verdict

    async def _judge_later(self, m: Any, infos: list[StatementInfo], go_on: Any) -> None:
        relay = self.relay
        denial: tuple[StatementInfo, Denial] | None = None
        try:
            for info in infos:
                if not info.parsed:
                    verdict = self._cached_verdict(info)
                else:
                    planner = relay.planner
                    try:
                        res = await planner.analyzer(info.text).analyze(info.text)
                    except AnalysisError:
                        verdict = _TOO_COMPLEX
                    else:
                        verdict = judge(res, planner)
                if isinstance(verdict, Denial):
                    denial = (info, verdict)
                    break
        except Exception as exc:  # the catalog is unreachable: fail closed
            relay.fail("masked_column_check", exc)
            return
        if relay.closed:
            return
        if denial is not None:
            self._refuse(m, *denial)
        else:
            go_on()
        relay.release_client()

    # --- refusing ------------------------------------------------------------------------------

    def _refuse(self, m: Any, info: StatementInfo, d: Denial) -> None:
        relay = self.relay
        self._record(info, d)
        error = wire.error_response("ERROR", d.sqlstate, d.message, d.detail, d.hint)
        if m.tag == _P:
            relay.refuse_parse(m, error)
        elif m.tag == _B:
            relay.refuse_bind(error)
        else:
            relay.refuse_query(error)

    def _record(self, info: StatementInfo, d: Denial) -> None:
        relay = self.relay
        principal = relay.principal
        fingerprint = statement_fingerprint(info.text)
        metrics.policy_decisions_total.inc_one("deny")
        log.event(
            logger,
            "masked_column_refused",
            logging.INFO,
            peer=relay.session.peer,
            principal=principal.label(),
            tier=relay.tier,
            column=d.column,
            use=d.use,
            fingerprint=fingerprint,
        )
        if relay.audit is None:
            return
        event = DecisionEvent(
            ts=time.time(),
            principal_key=principal.key,
            principal_label=principal.label(),
            session_id=relay.session.peer,
            fingerprint=fingerprint,
            statement_classes=(),
            action="deny",
            rule_id=RULE_ID,
            tier=relay.tier,
            decision_us=0.0,
            reason=d.message,
            sql=info.text,
        )
        try:
            relay.audit.emit(event)
        except (OSError, ValueError) as exc:
            log.event(logger, "audit_failed", logging.ERROR, error=str(exc))


_UNKNOWN: Final = object()
"""A verdict that needs the catalog first."""


def statement_fingerprint(text: str) -> str:
    """The statement's pg_query fingerprint (a hash of the raw text when it does not parse):
    what logs and audit events name instead of the text."""
    try:
        return str(_pg.fingerprint(text))
    except Exception:
        return "raw:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
