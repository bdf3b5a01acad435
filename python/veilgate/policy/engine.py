"""Decisions: who (principal → tier) may run what (statement analysis), with caches.

The gateway's calls (all synchronous, no I/O, safe to call from the event loop)::

    engine = PolicyEngine(load_policy(path))
    session = SessionContext(session_id="...")                 # one per client connection
    d = engine.decide(principal, sql, session=session)         # Query text, or Parse text
    if d.action != "allow": ...                                 # 42501 / approval; d.rule_id
    # after the server ran the message successfully (CommandComplete / ParseComplete):
    session.apply(d)                                           # PREPARE / DEALLOCATE / DISCARD
    session.remember_parse(name, d)                            # protocol Parse of a named stmt
    engine.reload(new_policy)                                  # SIGHUP / file change

* **Simple Query**: ``decide(principal, text, session=s)``; deny the whole message unless
  ``d.action == "allow"``.
* **Parse**: ``decide`` the Parse text at Parse time; keep ``(d, engine.generation)`` with the
  named statement; at Bind/Execute, if ``engine.generation`` changed, decide the same text again
  (a cache hit after the first statement) so statements prepared before a reload are judged by the
  new policy.  Named protocol statements share the namespace of SQL ``EXECUTE``: register them with
  ``session.remember_parse`` so ``EXECUTE name`` is judged by what they run.
* ``session.standard_conforming_strings`` must follow the server's ParameterStatus.

Caches: analysis by ``(text, standard_conforming_strings)`` (principal-independent), decision by
``(tier, text, standard_conforming_strings)``; both bounded LRU.  Messages whose decision depends
on session state (``EXECUTE`` of a name prepared earlier) are never cached by text.  ``reload``
swaps the policy and the decision cache in one assignment.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ..identity.base import Principal
from .analysis import MessageAnalysis, StatementAnalysis, analyze, resolve_executes
from .model import SEVERITY, Policy, Tier

__all__ = [
    "Decision",
    "PolicyEngine",
    "SessionContext",
    "StatementDecision",
    "Verdict",
]

_perf_ns: Final = time.perf_counter_ns


@dataclass(frozen=True, slots=True)
class StatementDecision:
    """One statement's analysis and what the tier made of it."""

    analysis: StatementAnalysis
    action: str
    rule_id: str
    message: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The cacheable part of a decision (everything but timing)."""

    action: str
    tier: str | None
    rule_id: str
    message: str
    reason: str
    statements: tuple[StatementDecision, ...]
    fingerprint: str
    analysis: MessageAnalysis
    generation: int
    cacheable: bool

    @property
    def statement_classes(self) -> tuple[str, ...]:
        return tuple(s.analysis.statement_class for s in self.statements)


class Decision:
    """The answer to one ``decide`` call: a (shared, cached) :class:`Verdict` plus its timing."""

    __slots__ = ("cached", "elapsed_us", "verdict")

    def __init__(self, verdict: Verdict, elapsed_us: float, cached: bool) -> None:
        self.verdict = verdict
        self.elapsed_us = elapsed_us
        self.cached = cached

    @property
    def action(self) -> str:
        return self.verdict.action

    @property
    def allowed(self) -> bool:
        return self.verdict.action == "allow"

    @property
    def tier(self) -> str | None:
        return self.verdict.tier

    @property
    def rule_id(self) -> str:
        return self.verdict.rule_id

    @property
    def message(self) -> str:
        return self.verdict.message

    @property
    def reason(self) -> str:
        return self.verdict.reason

    @property
    def statements(self) -> tuple[StatementDecision, ...]:
        return self.verdict.statements

    @property
    def fingerprint(self) -> str:
        return self.verdict.fingerprint

    @property
    def analysis(self) -> MessageAnalysis:
        return self.verdict.analysis

    @property
    def generation(self) -> int:
        return self.verdict.generation

    def error_fields(self) -> dict[str, str]:
        """ErrorResponse fields for a denial (PROTOCOL.md section 9): SQLSTATE 42501, the rule id
        in DETAIL, what to do in HINT.  The approval code for ``approve`` is the approvals
        module's business; this gives the denial form."""
        v = self.verdict
        tier = f" (tier {v.tier})" if v.tier else ""
        return {
            "S": "ERROR",
            "V": "ERROR",
            "C": "42501",
            "M": f"veilgate policy: {v.message}",
            "D": f"rule {v.rule_id}{tier}: {v.reason}",
            "H": "nothing in this message was run; ask the policy owner, or run "
            "`veilgate policy check` with this statement to see the decision",
        }

    def __repr__(self) -> str:
        return (
            f"Decision(action={self.action!r}, tier={self.tier!r}, rule_id={self.rule_id!r}, "
            f"elapsed_us={self.elapsed_us:.1f}, cached={self.cached})"
        )


@dataclass(slots=True)
class SessionContext:
    """Per-connection state the analysis depends on.  Owned by the gateway's connection."""

    session_id: str = ""
    standard_conforming_strings: bool = True
    prepared: dict[str, StatementAnalysis] = field(default_factory=dict)
    """Prepared statement name → what it runs (SQL PREPARE and protocol Parse share names)."""
    principal: Principal | None = None
    tier_generation: int = -1
    tier: Tier | None = None
    """Tier cached for ``principal``, valid while ``tier_generation`` is the engine's."""

    def apply(self, decision: Decision) -> None:
        """Record the effects of a message the server has run: PREPARE, DEALLOCATE, DISCARD."""
        for st in decision.statements:
            a = st.analysis
            if a.prepares is not None:
                self.prepared[a.prepares] = a
            if a.deallocates is not None:
                if a.deallocates == "*":
                    self.prepared.clear()
                else:
                    self.prepared.pop(a.deallocates, None)

    def remember_parse(self, name: str, decision: Decision) -> None:
        """A named protocol-level statement now exists (after ParseComplete)."""
        if name and len(decision.statements) == 1:
            self.prepared[name] = decision.statements[0].analysis

    def forget(self, name: str) -> None:
        """Close('S', name)."""
        self.prepared.pop(name, None)


class _State:
    """Everything ``reload`` replaces at once."""

    __slots__ = ("decisions", "generation", "policy", "tiers_by_principal")

    def __init__(self, policy: Policy, generation: int) -> None:
        self.policy = policy
        self.generation = generation
        self.decisions: OrderedDict[tuple[str | None, str, bool], Verdict] = OrderedDict()
        self.tiers_by_principal: dict[Principal, Tier | None] = {}


class PolicyEngine:
    """Decides messages for principals under one (reloadable) policy."""

    def __init__(
        self,
        policy: Policy,
        *,
        analysis_cache_size: int = 8192,
        decision_cache_size: int = 16384,
    ) -> None:
        self._state = _State(policy, 1)
        self._analyses: OrderedDict[tuple[str, bool], MessageAnalysis] = OrderedDict()
        self._analysis_max = max(1, analysis_cache_size)
        self._decision_max = max(1, decision_cache_size)

    @property
    def policy(self) -> Policy:
        return self._state.policy

    @property
    def generation(self) -> int:
        """Bumped by every :meth:`reload`; decisions carry the generation they were made under."""
        return self._state.generation

    def reload(self, policy: Policy) -> None:
        """Swap in a new policy (already validated) and drop all cached decisions."""
        self._state = _State(policy, self._state.generation + 1)

    def tier_for(self, principal: Principal) -> Tier | None:
        return self._state.policy.tier_for(principal)

    def cache_info(self) -> dict[str, int]:
        return {
            "analyses": len(self._analyses),
            "decisions": len(self._state.decisions),
            "generation": self._state.generation,
        }

    # -- the hot path ------------------------------------------------------------------------

    def decide(
        self, principal: Principal, sql: str, *, session: SessionContext | None = None
    ) -> Decision:
        t0 = _perf_ns()
        state = self._state
        if session is not None:
            if session.tier_generation != state.generation or session.principal is not principal:
                session.tier = state.policy.tier_for(principal)
                session.tier_generation = state.generation
                session.principal = principal
            tier = session.tier
            scs = session.standard_conforming_strings
        else:
            try:
                tier = state.tiers_by_principal[principal]
            except KeyError:
                tier = state.policy.tier_for(principal)
                if len(state.tiers_by_principal) > 4096:
                    state.tiers_by_principal.clear()
                state.tiers_by_principal[principal] = tier
            scs = True
        key = (tier.name if tier is not None else None, sql, scs)
        decisions = state.decisions
        hit = decisions.get(key)
        if hit is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs ~0.3 us on the hot path
                decisions.move_to_end(key)
            except KeyError:  # evicted by a concurrent caller: the verdict is still valid
                pass
            return Decision(hit, (_perf_ns() - t0) / 1000.0, True)
        verdict = self._judge(state, tier, sql, scs, session)
        if verdict.cacheable:
            decisions[key] = verdict
            if len(decisions) > self._decision_max:
                decisions.popitem(last=False)
        return Decision(verdict, (_perf_ns() - t0) / 1000.0, False)

    def analyze(self, sql: str, *, standard_conforming_strings: bool = True) -> MessageAnalysis:
        """The (cached) analysis of ``sql``, ``EXECUTE``s not yet resolved."""
        key = (sql, standard_conforming_strings)
        cache = self._analyses
        a = cache.get(key)
        if a is not None:
            cache.move_to_end(key)
            return a
        a = analyze(sql, standard_conforming_strings=standard_conforming_strings)
        cache[key] = a
        if len(cache) > self._analysis_max:
            cache.popitem(last=False)
        return a

    def decide_function_call(
        self, principal: Principal, function_oid: int, *, session: SessionContext | None = None
    ) -> Decision:
        """Judge a protocol-level FunctionCall ('F') message: it bypasses SQL text entirely.

        It is a statement of class ``call`` with the construct ``fastpath_function_call`` and the
        function named ``oid:<oid>``: only an allow rule listing that construct (and, ideally,
        ``functions: ["oid:16404"]``) lets it through.  Never cached.
        """
        t0 = _perf_ns()
        state = self._state
        tier = state.policy.tier_for(principal)
        text = f"<FunctionCall oid={function_oid}>"
        st = StatementAnalysis(
            text=text,
            kind="FunctionCall",
            classes=frozenset({"call"}),
            functions=frozenset({(None, f"oid:{function_oid}")}),
            constructs=frozenset({"fastpath_function_call"}),
            details=("protocol FunctionCall runs a function by OID, bypassing SQL",),
            fingerprint=f"fastpath:{function_oid}",
        )
        msg = MessageAnalysis(text=text, statements=(st,), fingerprint=st.fingerprint)
        if tier is None:
            sd = StatementDecision(
                st, "deny", "no-tier", "no policy tier matches this identity", "no tier"
            )
        else:
            v = tier.judge(st)
            sd = StatementDecision(st, v.action, v.rule_id, v.message, v.reason)
        verdict = Verdict(
            action=sd.action,
            tier=tier.name if tier is not None else None,
            rule_id=sd.rule_id,
            message=sd.message,
            reason=sd.reason,
            statements=(sd,),
            fingerprint=st.fingerprint,
            analysis=msg,
            generation=state.generation,
            cacheable=False,
        )
        return Decision(verdict, (_perf_ns() - t0) / 1000.0, False)

    # -- the slow path -----------------------------------------------------------------------

    def _judge(
        self,
        state: _State,
        tier: Tier | None,
        sql: str,
        scs: bool,
        session: SessionContext | None,
    ) -> Verdict:
        msg = self.analyze(sql, standard_conforming_strings=scs)
        cacheable = True
        if msg.needs_session or any(s.unresolved for s in msg.statements):
            prepared: Mapping[str, StatementAnalysis] = session.prepared if session else {}
            msg = resolve_executes(msg, prepared)
            cacheable = not msg.needs_session
        tier_name = tier.name if tier is not None else None

        def whole(action: str, rule_id: str, message: str, reason: str) -> Verdict:
            stmts = tuple(
                StatementDecision(s, action, rule_id, message, reason) for s in msg.statements
            )
            return Verdict(
                action=action,
                tier=tier_name,
                rule_id=rule_id,
                message=message,
                reason=reason,
                statements=stmts,
                fingerprint=msg.fingerprint,
                analysis=msg,
                generation=state.generation,
                cacheable=cacheable,
            )

        if msg.unparseable:
            return whole(
                "deny",
                "unparseable",
                "the statement could not be parsed; veilgate denies what it cannot analyse",
                f"parse error: {msg.error}",
            )
        if tier is None:
            return whole(
                "deny",
                "no-tier",
                "no policy tier matches this identity",
                "the principal's claims match no tier of the policy",
            )
        if not msg.statements:
            return whole("allow", "empty", "empty query", "no statements to run")
        out: list[StatementDecision] = []
        worst: StatementDecision | None = None
        for st in msg.statements:
            if st.unresolved:
                sd = StatementDecision(
                    st,
                    "deny",
                    "unknown-prepared-statement",
                    "EXECUTE of a statement this session has not prepared",
                    "; ".join(st.details) or "unknown prepared statement",
                )
            else:
                v = tier.judge(st)
                sd = StatementDecision(st, v.action, v.rule_id, v.message, v.reason)
            out.append(sd)
            if worst is None or SEVERITY[sd.action] > SEVERITY[worst.action]:
                worst = sd
        assert worst is not None
        reason = worst.reason
        if len(out) > 1 and worst.action != "allow":
            idx = out.index(worst) + 1
            reason = f"statement {idx} of {len(out)}: {reason}; nothing in the message runs"
        return Verdict(
            action=worst.action,
            tier=tier_name,
            rule_id=worst.rule_id,
            message=worst.message,
            reason=reason,
            statements=tuple(out),
            fingerprint=msg.fingerprint,
            analysis=msg,
            generation=state.generation,
            cacheable=cacheable,
        )
