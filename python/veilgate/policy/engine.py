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
swaps the policy and the decision caches in one assignment.

A second decision cache is keyed by ``(tier, literal-normalised text)``
(:mod:`veilgate.policy.literals`): ``... WHERE aid = 4711`` reuses the decision made for
``... WHERE aid = 17`` when that decision did not depend on a constant's value and every constant
was a plain value of the parse tree.  It is used only with ``standard_conforming_strings`` on and
``session.normalize_literals`` (the gateway clears it for client-only encodings); a reused
decision carries the new text (audit) and is returned with ``cached=True``.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import veilgate_native

from ..bytecache import ByteLRU, budget, text_cost
from ..identity.base import Principal
from .analysis import MessageAnalysis, StatementAnalysis, analyze, resolve_executes
from .literals import LiteralTemplate, literal_template, statement_texts
from .model import SEVERITY, Policy, Tier
from .names import SearchPath

__all__ = [
    "STATEMENT_TOO_LARGE",
    "Decision",
    "PolicyEngine",
    "SessionContext",
    "StatementDecision",
    "Verdict",
]

_perf_ns: Final = time.perf_counter_ns
_MAX_SCOPES: Final = 4096
STATEMENT_TOO_LARGE: Final = "statement-too-large"


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
    changes_session: bool = False
    """Some statement prepares, deallocates or changes ``search_path``: what
    :meth:`SessionContext.apply` records (nothing to do when False)."""
    sqlstate: str = "42501"
    """SQLSTATE of the refusal (54000 for a statement over the size limit)."""
    shared: bool = False
    """Texts with this text's literal-normalised key share it (the shape cache holds it)."""

    @property
    def statement_classes(self) -> tuple[str, ...]:
        return tuple(s.analysis.statement_class for s in self.statements)


class Decision:
    """The answer to one ``decide`` call: a (shared, cached) :class:`Verdict` plus its timing.

    A decision reused from a text that differs only in constants (the literal-normalised cache)
    holds that text's verdict plus this text and its statement texts; :attr:`verdict` (and
    everything with a text in it: :attr:`analysis`, :attr:`statements`) is rebound to this text
    on first access, so a hot path that only needs the action never pays for the copy."""

    __slots__ = ("_sql", "_texts", "_verdict", "cached", "elapsed_us")

    def __init__(
        self,
        verdict: Verdict,
        elapsed_us: float,
        cached: bool,
        *,
        sql: str | None = None,
        texts: tuple[str, ...] = (),
    ) -> None:
        self._verdict = verdict
        self._sql = sql
        """Set while ``_verdict`` is another text's (same literal-normalised key)."""
        self._texts = texts
        self.elapsed_us = elapsed_us
        self.cached = cached

    @property
    def verdict(self) -> Verdict:
        if self._sql is not None:
            self._verdict = _rebind(self._verdict, self._sql, self._texts)
            self._sql = None
        return self._verdict

    # text-independent: straight from the (possibly shared) verdict

    @property
    def action(self) -> str:
        return self._verdict.action

    @property
    def allowed(self) -> bool:
        return self._verdict.action == "allow"

    @property
    def tier(self) -> str | None:
        return self._verdict.tier

    @property
    def rule_id(self) -> str:
        return self._verdict.rule_id

    @property
    def message(self) -> str:
        return self._verdict.message

    @property
    def reason(self) -> str:
        return self._verdict.reason

    @property
    def fingerprint(self) -> str:
        return self._verdict.fingerprint

    @property
    def generation(self) -> int:
        return self._verdict.generation

    # with texts: this decision's own

    @property
    def statements(self) -> tuple[StatementDecision, ...]:
        return self.verdict.statements

    @property
    def analysis(self) -> MessageAnalysis:
        return self.verdict.analysis

    def error_fields(self) -> dict[str, str]:
        """ErrorResponse fields for a denial (PROTOCOL.md section 9): SQLSTATE 42501, the rule id
        in DETAIL, what to do in HINT.  The approval code for ``approve`` is the approvals
        module's business; this gives the denial form."""
        v = self._verdict
        tier = f" (tier {v.tier})" if v.tier else ""
        if v.rule_id == STATEMENT_TOO_LARGE:
            return {
                "S": "ERROR",
                "V": "ERROR",
                "C": v.sqlstate,
                "M": v.message,
                "D": f"rule {v.rule_id}{tier}: {v.reason}",
                "H": "send large values as bind parameters or in several statements, or ask the "
                "gateway's operator to raise limits.max_statement_bytes",
            }
        return {
            "S": "ERROR",
            "V": "ERROR",
            "C": v.sqlstate,
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
    elevated_tier: str | None = None
    """A tier the principal was granted for a while (approvals: ``SET veilgate.request_tier``):
    statements are judged by it instead of the tier its claims match.  Whoever sets it also
    sets ``tier_generation = -1`` so the cached tier is looked up again."""
    normalize_literals: bool = True
    """Whether decisions may be shared by texts that differ only in constants.  The gateway
    clears it for client-only encodings (SJIS, BIG5, GBK...), whose texts it will not lex;
    ``standard_conforming_strings = off`` disables it too."""
    started_search_path: tuple[str, ...] | None = None
    """The search_path the gateway set upstream when the session started (a pinned tier), or
    None (the login role's own default, assumed to be the tier's declared search_path)."""
    shadows: frozenset[tuple[str, str]] = frozenset()
    """(schema, name) of functions outside pg_catalog that carry a built-in's name, as the
    session's upstream catalog showed them (see :meth:`SearchPath.function_candidates`)."""
    scope: int = 0
    """Decision-cache scope of (tier, search path, shadows), valid with ``tier_generation``."""
    _path: SearchPath | None = None
    """The search paths this session may have set (None: never changed it)."""

    @property
    def search_path(self) -> SearchPath:
        """Where this session's unqualified names may resolve (the lineage of masked columns
        and the policy's table and function rules use the same answer).

        ``.exact`` is True when the path is known for certain; otherwise
        ``.relation_candidates(name)`` / ``.schemas()`` list every schema a name may resolve to
        (``*``: any schema, when the session set a path computed at run time)."""
        if self._path is not None:
            return self._path
        if self.started_search_path is not None:
            return SearchPath.of(self.started_search_path, pinned=True)
        tier = self.tier
        return SearchPath.of(tier.search_path if tier is not None else ("public",))

    def apply(self, decision: Decision) -> None:
        """Record the effects of a message the server has run: PREPARE, DEALLOCATE, DISCARD,
        search_path changes."""
        verdict = decision._verdict
        if not verdict.changes_session:
            return
        # names only: the shared verdict will do (no rebinding) unless something is prepared
        for i, st in enumerate(verdict.statements):
            a = st.analysis
            if a.prepares is not None:
                self.prepared[a.prepares] = decision.statements[i].analysis
            if a.deallocates is not None:
                if a.deallocates == "*":
                    self.prepared.clear()
                else:
                    self.prepared.pop(a.deallocates, None)
        self.note_search_path(decision)

    def note_search_path(self, decision: Decision) -> None:
        """A message that may change ``search_path`` was sent (Query or Parse): its paths join
        the ones the session may have.  Added, never replaced: the change may be rolled back or
        local to a transaction (see :mod:`veilgate.policy.names`)."""
        verdict = decision._verdict
        if not verdict.changes_session:
            return
        path = self.search_path
        for st in verdict.statements:
            for change in st.analysis.settings:
                if change.how in _SESSION_SETTERS and change.name in ("search_path", "*"):
                    path = path.with_change(change)
        if path is not self.search_path:
            self._path = path
            self.tier_generation = -1  # new decision scope at the next decide

    def remember_parse(self, name: str, decision: Decision) -> None:
        """A named protocol-level statement now exists (after ParseComplete)."""
        if name and len(decision.statements) == 1:
            self.prepared[name] = decision.statements[0].analysis

    def forget(self, name: str) -> None:
        """Close('S', name)."""
        self.prepared.pop(name, None)


_SESSION_SETTERS: Final = frozenset({"SET", "SET LOCAL", "set_config()"})

_Scope = tuple[str | None, SearchPath, frozenset[tuple[str, str]]]


class _State:
    """Everything ``reload`` replaces at once."""

    __slots__ = (
        "decisions",
        "generation",
        "grant_scopes",
        "policy",
        "scopes",
        "shapes",
        "tiers_by_principal",
    )

    def __init__(
        self, policy: Policy, generation: int, decision_bytes: int, shape_bytes: int
    ) -> None:
        self.policy = policy
        self.generation = generation
        self.decisions: ByteLRU[tuple[int, str, bool], Verdict] = ByteLRU(decision_bytes)
        self.shapes: ByteLRU[tuple[int, tuple[str, tuple[str, ...]]], Verdict] = ByteLRU(
            shape_bytes
        )
        """Literal-normalised decisions: (scope, template key) -> a verdict for some text."""
        self.tiers_by_principal: dict[Principal, tuple[Tier | None, int]] = {}
        self.scopes: dict[_Scope, int] = {}
        """(tier, search path, shadows) -> the small int decisions are cached under."""
        self.grant_scopes: dict[tuple[int, str], int] = {}
        """(decision scope, principal key) -> the scope of that principal's standing grants in
        the native verdict cache (ids from the same counter: never equal to a decision scope)."""


class PolicyEngine:
    """Decides messages for principals under one (reloadable) policy."""

    def __init__(
        self,
        policy: Policy,
        *,
        analysis_cache_size: int = 8192,
        decision_cache_size: int = 16384,
        shape_cache_size: int = 4096,
        cache_bytes: tuple[int, int, int] | None = None,
    ) -> None:
        """``cache_bytes``: byte budgets of the analysis, decision and shape caches (default:
        their shares of ``limits.cache_bytes``, see :mod:`veilgate.bytecache`); the entry counts
        bound them too."""
        analyses, decisions, shapes = cache_bytes or (
            budget("policy.analyses"),
            budget("policy.decisions"),
            budget("policy.shapes"),
        )
        self._decision_bytes = decisions
        self._shape_bytes = shapes
        self._state = _State(policy, 1, decisions, shapes)
        self._scope_ids = itertools.count(1)
        self._scope_info: dict[int, _Scope] = {}
        self._analyses: ByteLRU[tuple[str, bool], MessageAnalysis] = ByteLRU(analyses)
        self._analysis_max = max(1, analysis_cache_size)
        self._decision_max = max(1, decision_cache_size)
        self._shape_max = max(1, shape_cache_size)
        self.native_verdicts = veilgate_native.VerdictCache(
            max_entries=self._decision_max, max_bytes=max(4096, shapes)
        )
        """Allowed Query texts answered by the client buffers without calling Python
        (:meth:`remember_native`); emptied by every :meth:`reload`."""

    @property
    def policy(self) -> Policy:
        return self._state.policy

    @property
    def generation(self) -> int:
        """Bumped by every :meth:`reload`; decisions carry the generation they were made under."""
        return self._state.generation

    def reload(self, policy: Policy) -> None:
        """Swap in a new policy (already validated) and drop all cached decisions."""
        self._state = _State(
            policy, self._state.generation + 1, self._decision_bytes, self._shape_bytes
        )
        # buffers armed under the old generation answer nothing from now on
        self.native_verdicts.clear()

    def session_scope(self, principal: Principal, session: SessionContext) -> int:
        """The decision scope ``decide`` would use for ``session`` now (its tier, search path
        and shadows under the current policy), refreshed as ``decide`` refreshes it."""
        state = self._state
        if session.tier_generation != state.generation or session.principal is not principal:
            session.tier = _session_tier(state.policy, principal, session)
            session.tier_generation = state.generation
            session.principal = principal
            session.scope = self._scope(state, session.tier, session.search_path, session.shadows)
        return session.scope

    def remember_native(
        self,
        decision: Decision,
        text: bytes,
        session: SessionContext,
        event: bytes | None = None,
    ) -> bool:
        """Let client buffers answer ``text`` (a Query the session just ran ``decide`` on)
        natively from now on, when that is sound: an allow, cacheable, that changes nothing in
        the session, sets and executes nothing, decided under the session's current scope and
        the current policy, with the text lexed as the server will.  Keyed by shape when texts
        that differ only in constants share the verdict, else by the exact text.  ``event``:
        the verdict's members of a decision-log line (``veilgate.policy.audit.verdict_members``;
        buffers that log natively answer only entries that have them)."""
        if not self.native_ok(decision, session):
            return False
        v = decision._verdict
        # the verdict it keeps alive holds the text and its statements' texts
        cost = text_cost(v.analysis.text, copies=2)
        return bool(
            self.native_verdicts.insert(
                session.scope, text, v.shared, v, v.rule_id, v.fingerprint, cost, event
            )
        )

    def native_ok(self, decision: Decision, session: SessionContext) -> bool:
        """Whether ``decision`` (just made by ``decide`` for ``session``) may be given again
        without calling Python: an allow, cacheable, that changes nothing in the session, sets
        and executes nothing, decided under the session's current scope and the current
        policy, with the text lexed as the server will."""
        return self._repeatable(decision, session, "allow")

    def _repeatable(self, decision: Decision, session: SessionContext, action: str) -> bool:
        """``decision`` is ``action``, cacheable, changes nothing in the session, sets and
        executes nothing, and was decided under the session's current scope and the current
        policy with the text lexed as the server will: what lets the native cache repeat it."""
        v = decision._verdict
        state = self._state
        return not (
            v.action != action
            or not v.cacheable
            or v.changes_session
            or v.analysis.needs_session
            or v.generation != state.generation
            or session.tier_generation != state.generation
            or not session.standard_conforming_strings
            or not session.normalize_literals
            or not v.statements
            or any(
                s.analysis.settings or s.analysis.executes or s.analysis.unresolved
                for s in v.statements
            )
        )

    def grant_scope(self, scope: int, principal_key: str) -> int:
        """The native verdict cache's scope for the standing grants of ``principal_key`` under
        decision scope ``scope`` (a fresh id, never another principal's or a decision scope;
        forgotten ids only cost their entries a miss)."""
        scopes = self._state.grant_scopes
        key = (scope, principal_key)
        gid = scopes.get(key)
        if gid is None:
            if len(scopes) >= _MAX_SCOPES:
                scopes.clear()
            gid = next(self._scope_ids)
            scopes[key] = gid
        return gid

    def remember_grant(
        self,
        decision: Decision,
        text: bytes,
        session: SessionContext,
        *,
        grant_scope: int,
        shape: bool,
        event: object,
        handle: Any,
        request_id: str,
    ) -> bool:
        """Let client buffers armed with ``grant_scope`` answer ``text`` (a Query the session
        just ran on a standing grant, ``handle``) natively while the grant is live: only when
        it is as sound as :meth:`remember_native` is for an allow (an ``approve`` verdict,
        cacheable, changing nothing in the session, setting and executing nothing, decided
        under the session's current scope and policy, the text lexed as the server will).
        ``shape``: texts of the same shape run on the same grant (the rule ignores constants
        and the engine shares the verdict between them); else the exact text only."""
        if not self._repeatable(decision, session, "approve"):
            return False
        v = decision._verdict
        cost = text_cost(v.analysis.text, copies=2)
        return bool(
            self.native_verdicts.insert_grant(
                grant_scope,
                text,
                shape and v.shared,
                event,
                v.rule_id,
                v.fingerprint,
                request_id,
                handle,
                cost,
            )
        )

    def tier_for(self, principal: Principal) -> Tier | None:
        return self._state.policy.tier_for(principal)

    def _scope(
        self,
        state: _State,
        tier: Tier | None,
        path: SearchPath,
        shadows: frozenset[tuple[str, str]],
    ) -> int:
        """The decision-cache scope of (tier, search path, shadows): ids are never reused, so a
        scope forgotten here (bounded) only costs its cache entries a miss."""
        key: _Scope = (tier.name if tier is not None else None, path, shadows)
        sid = state.scopes.get(key)
        if sid is None:
            if len(state.scopes) >= _MAX_SCOPES:
                for old in state.scopes.values():
                    self._scope_info.pop(old, None)
                state.scopes.clear()
            sid = next(self._scope_ids)
            state.scopes[key] = sid
            self._scope_info[sid] = key
        return sid

    def cache_info(self) -> dict[str, int]:
        state = self._state
        return {
            "analyses": len(self._analyses),
            "decisions": len(state.decisions),
            "shapes": len(state.shapes),
            "generation": state.generation,
            "analysis_bytes": self._analyses.bytes,
            "decision_bytes": state.decisions.bytes,
            "shape_bytes": state.shapes.bytes,
        }

    # -- the hot path ------------------------------------------------------------------------

    def decide(
        self, principal: Principal, sql: str, *, session: SessionContext | None = None
    ) -> Decision:
        t0 = _perf_ns()
        state = self._state
        if session is not None:
            scope = self.session_scope(principal, session)
            tier = session.tier
            scs = session.standard_conforming_strings
            normalize = scs and session.normalize_literals
        else:
            try:
                tier, scope = state.tiers_by_principal[principal]
            except KeyError:
                tier = state.policy.tier_for(principal)
                path = (
                    tier.default_search_path() if tier is not None else SearchPath.of(("public",))
                )
                scope = self._scope(state, tier, path, frozenset())
                if len(state.tiers_by_principal) > 4096:
                    state.tiers_by_principal.clear()
                state.tiers_by_principal[principal] = (tier, scope)
            scs = normalize = True
        key = (scope, sql, scs)
        decisions = state.decisions
        hit = decisions.get(key)
        if hit is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs ~0.3 us on the hot path
                decisions.move_to_end(key)
            except KeyError:  # evicted by a concurrent caller: the verdict is still valid
                pass
            return Decision(hit, (_perf_ns() - t0) / 1000.0, True)
        template = literal_template(sql) if normalize else None
        if template is not None:
            shape_key = (scope, template.key)
            shaped = self._from_shape(state, shape_key, sql)
            if shaped is not None:
                verdict, texts = shaped
                return Decision(verdict, (_perf_ns() - t0) / 1000.0, True, sql=sql, texts=texts)
        verdict = self._judge(state, tier, scope, sql, scs, session)
        if verdict.cacheable:
            shared = template is not None and _shareable(verdict, template)
            if shared:
                verdict = dataclasses.replace(verdict, shared=True)
            # the verdict holds the text and its statements' texts (2 copies), the key one more
            decisions.put(key, verdict, text_cost(sql, copies=2))
            if len(decisions) > self._decision_max:
                decisions.popitem(last=False)
            if shared:
                shapes = state.shapes
                # the template text, its token kinds (~1 per 4 characters) and the verdict
                shapes.put(shape_key, verdict, text_cost(sql, copies=4))
                if len(shapes) > self._shape_max:
                    shapes.popitem(last=False)
        return Decision(verdict, (_perf_ns() - t0) / 1000.0, False)

    def _from_shape(
        self,
        state: _State,
        shape_key: tuple[int, tuple[str, tuple[str, ...]]],
        sql: str,
    ) -> tuple[Verdict, tuple[str, ...]] | None:
        """The verdict of a text with the same literal-normalised key, and the statement texts of
        ``sql`` to rebind it to."""
        shapes = state.shapes
        shaped = shapes.get(shape_key)
        if shaped is None:
            return None
        # the full grammar must accept this text too (a few rules reject particular values)
        texts = statement_texts(sql)
        if texts is None or len(texts) != len(shaped.statements):
            return None
        try:  # noqa: SIM105 - see decide
            shapes.move_to_end(shape_key)
        except KeyError:
            pass
        return shaped, texts

    def analyze(self, sql: str, *, standard_conforming_strings: bool = True) -> MessageAnalysis:
        """The (cached) analysis of ``sql``, ``EXECUTE``s not yet resolved."""
        key = (sql, standard_conforming_strings)
        cache = self._analyses
        a = cache.get(key)
        if a is not None:
            cache.move_to_end(key)
            return a
        a = analyze(sql, standard_conforming_strings=standard_conforming_strings)
        cache.put(key, a, text_cost(sql, copies=2))
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

    def refuse_oversized(
        self,
        principal: Principal,
        size: int,
        limit: int,
        excerpt: str,
        *,
        session: SessionContext | None = None,
    ) -> Decision:
        """The refusal of a statement larger than ``limit`` bytes (``54000``), made before any
        parsing: ``excerpt`` (a bounded prefix) is all of the text the decision holds."""
        state = self._state
        if session is not None and session.tier_generation == state.generation:
            tier = session.tier
        else:
            tier = state.policy.tier_for(principal)
        fingerprint = "oversized:" + str(size)
        st = StatementAnalysis(
            text=excerpt,
            kind="Oversized",
            classes=frozenset({"other"}),
            details=(f"statement of {size} bytes, over the limit of {limit}",),
            fingerprint=fingerprint,
        )
        msg = MessageAnalysis(text=excerpt, statements=(st,), fingerprint=fingerprint)
        message = f"statement too large: {size} bytes (the gateway's limit is {limit} bytes)"
        reason = "limits.max_statement_bytes: the statement was refused before it was parsed"
        sd = StatementDecision(st, "deny", STATEMENT_TOO_LARGE, message, reason)
        verdict = Verdict(
            action="deny",
            tier=tier.name if tier is not None else None,
            rule_id=STATEMENT_TOO_LARGE,
            message=message,
            reason=reason,
            statements=(sd,),
            fingerprint=fingerprint,
            analysis=msg,
            generation=state.generation,
            cacheable=False,
            sqlstate="54000",
        )
        return Decision(verdict, 0.0, False)

    # -- the slow path -----------------------------------------------------------------------

    def _judge(
        self,
        state: _State,
        tier: Tier | None,
        scope: int,
        sql: str,
        scs: bool,
        session: SessionContext | None,
    ) -> Verdict:
        _tier_name, path, shadows = self._scope_info.get(scope) or (
            None,
            tier.default_search_path() if tier is not None else SearchPath.of(("public",)),
            frozenset(),
        )
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
                v = tier.judge(st, path, shadows)
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
            changes_session=_changes_session(msg),
        )


def _changes_session(msg: MessageAnalysis) -> bool:
    return any(
        s.prepares is not None
        or s.deallocates is not None
        or any(c.name in ("search_path", "*") for c in s.settings)
        for s in msg.statements
    )


def _session_tier(policy: Policy, principal: Principal, session: SessionContext) -> Tier | None:
    """The session's elevated tier while it has one (and the policy still has it), else the
    tier the principal's claims match."""
    if session.elevated_tier is not None:
        tier = policy.tier_named(session.elevated_tier)
        if tier is not None:
            return tier
    return policy.tier_for(principal)


def _shareable(verdict: Verdict, template: LiteralTemplate) -> bool:
    """Whether texts with ``template``'s key may reuse ``verdict`` (see module docstring)."""
    msg = verdict.analysis
    return (
        not msg.unparseable
        and msg.standard_conforming_strings
        and not msg.needs_session
        and not msg.reads_literals
        and template.covered_by(msg.const_locations)
    )


def _rebind(v: Verdict, sql: str, texts: tuple[str, ...]) -> Verdict:
    """``v`` for another text with the same literal-normalised key: only the texts change
    (fingerprints ignore constant values; nothing else in an analysis that did not read a
    constant can depend on one)."""
    stmts = tuple(
        [
            StatementDecision(
                sd.analysis.with_text(text), sd.action, sd.rule_id, sd.message, sd.reason
            )
            for sd, text in zip(v.statements, texts, strict=True)
        ]
    )
    msg = v.analysis.with_text(sql, tuple([sd.analysis for sd in stmts]))
    return Verdict(
        v.action,
        v.tier,
        v.rule_id,
        v.message,
        v.reason,
        stmts,
        v.fingerprint,
        msg,
        v.generation,
        v.cacheable,
        v.changes_session,
        v.sqlstate,
        v.shared,
    )
