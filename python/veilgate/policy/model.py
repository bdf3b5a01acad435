"""The compiled policy and how one statement is judged against a tier.

Policy file shape (YAML; loaded and validated by :mod:`veilgate.policy.loader`)::

    version: 1                      # required, must be 1
    tiers:                          # required, evaluated in order: the first tier that matches
      - name: agents-readonly       # required, unique
        match:                      # required, non-empty; every key listed must match
          roles: [db.read]          #   any of these app roles / groups / client apps / ...
          groups: [<group id>]      #   principal groups unknown (overage) never match
          client_apps: [<app id>]
          tenants: [<tenant id>]
          providers: [entra]
          subjects: [<object id>]
          app_only: true            #   app-only (client credentials) tokens only
        default: deny               # deny (default) | allow: what a statement no rule judges gets
        search_path: [public]       # how unqualified names resolve (default [public])
        pin_search_path: true       # set search_path upstream at session start; refuse changes
        settings:                   # settings sessions may change, and to what (absent: the
          statement_timeout: {min: 1s, max: 10min}   #   rules alone decide)
          work_mem: {max: 64MB}
          application_name: any
        max_connections: 50         # sessions of this tier at once (FATAL 53300 beyond)
        max_connections_per_principal: 5
        rules:
          - id: ro-no-destruction   # required, unique in the file; reported in DETAIL and audit
            message: "..."          # required; shown to the client (HINT) and in `policy check`
            action: deny            # allow | deny | approve
            classes: [write, ddl]   # selectors (all optional; see below)
            constructs: [drop]
            tables: ["audit.*"]
            functions: ["pg_sleep"]
    masking: {...}                  # optional: what result values are masked for which tiers;
                                    # see veilgate.masking.policy (present = every tier masked)
    end: true                       # optional end-of-file marker: must be the last key; once a
                                    # loaded policy has it, reloads without it are refused

Statement classes: ``read write merge ddl dcl session role_change copy_in copy_out transaction
utility maintenance prepare call do other``; constructs: see
:data:`veilgate.policy.analysis.CONSTRUCTS`.

Before any rule, a tier applies its own checks (reported as rule ids): ``pinned-search-path``
(with ``pin_search_path``, any change of search_path is denied) and ``settings`` (with a
``settings`` allowance, every setting change outside it is denied; see
:mod:`veilgate.policy.settings`).  After the rules, a masked tier denies statements with the
``sensitive_catalog`` construct that no allow rule lists (``masked-tier-catalog``).

How a statement is judged by its tier (every rule contributes; the most restrictive wins:
``deny`` > ``approve`` > ``allow``; no rule matching gives the tier ``default``):

* A ``deny`` or ``approve`` rule **matches** when each selector it lists hits: ``classes`` any class
  of the statement; ``constructs`` any construct present; ``tables`` any relation read or written;
  ``functions`` any function called.  A rule with no selectors matches every statement.
* An ``allow`` rule **matches** only when it covers the whole statement: every class of the
  statement is in ``classes``, every relation matches ``tables``, every function matches
  ``functions`` (an absent selector means "any"), and every dangerous construct present is listed
  in ``constructs`` (an absent ``constructs`` means "none": an allow rule never silently allows a
  named dangerous construct).  Coverage is per rule: put all schemas a read rule allows in one
  rule's ``tables``.
* Tables are globs (``fnmatchcase``) over ``schema.name`` as PostgreSQL stores them (lower case
  unless quoted).  A pattern without a schema is qualified with each schema of the tier's
  ``search_path``.  An unqualified name in SQL resolves to each schema the *session's* search_path
  may hold (:mod:`veilgate.policy.names`: the tier's ``search_path``, plus every path the session
  set since unless it is pinned; ``pg_catalog`` too for ``pg_*`` names): ``deny`` matches if any
  candidate does, ``allow`` needs all of them.  After a search_path computed at run time an
  unqualified name may be in any schema: deny patterns match it by name, allow patterns only with
  a ``*`` schema.  Pin the search_path (or deny ``search_path_change``) in a tier that relies on
  table scopes.
* Functions: a pattern without a dot matches the function's own name in any schema; a dotted
  pattern matches ``schema.name``.  An unqualified call of a PostgreSQL built-in counts as
  ``pg_catalog.name`` when ``pg_catalog`` comes first on every path the session may have (the
  default); a path that lists other schemas before ``pg_catalog`` adds those schemas' candidates
  and the ``user_function`` construct.  Any other unqualified call counts as each schema of the
  path (``allow`` needs all, ``deny`` any; ``deny`` also tries ``pg_catalog``).  Calls of
  non-built-in functions carry the ``user_function`` construct, so an allow rule only lets them
  through when it lists ``user_function``: a user function can write.

A message (several statements) gets the most restrictive of its statements' actions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Final

from ..identity.base import Principal
from ..masking.policy import MaskingPolicy
from .analysis import CLASSES, CONSTRUCTS, Name, StatementAnalysis, is_builtin
from .approval_spec import ApprovalSpec, ElevationSpec
from .names import ANY_SCHEMA, PG_CATALOG, SearchPath
from .settings import SettingAllowance, check_change

__all__ = [
    "ACTIONS",
    "BUILTIN_RULES",
    "CLASSES",
    "CONSTRUCTS",
    "MATCH_KEYS",
    "SEVERITY",
    "Policy",
    "Rule",
    "Tier",
    "TierMatch",
    "TierVerdict",
]

BUILTIN_RULES: Final = {
    "pinned-search-path": "the tier pins search_path: changing it is refused",
    "settings": "a setting the tier's settings allowance does not permit",
    "masked-tier-catalog": "a masked tier reads catalog or statistics data that holds values",
}
"""Rule ids the gateway itself judges with (reported like a policy rule's id)."""

ACTIONS: Final = ("allow", "deny", "approve")
SEVERITY: Final = {"allow": 0, "approve": 1, "deny": 2}
MATCH_KEYS: Final = (
    "roles",
    "groups",
    "client_apps",
    "tenants",
    "providers",
    "subjects",
    "app_only",
)


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    pats = list(patterns)
    if not pats:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in pats))


@dataclass(frozen=True, slots=True)
class TierMatch:
    """Who a tier is for.  ``None`` = key not listed.  Every listed key must match."""

    roles: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    client_apps: frozenset[str] | None = None
    tenants: frozenset[str] | None = None
    providers: frozenset[str] | None = None
    subjects: frozenset[str] | None = None
    app_only: bool | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, k) is None for k in MATCH_KEYS)

    def matches(self, p: Principal) -> bool:
        if self.roles is not None and self.roles.isdisjoint(p.roles):
            return False
        if self.groups is not None and (p.groups is None or self.groups.isdisjoint(p.groups)):
            return False
        if self.client_apps is not None and p.client_app not in self.client_apps:
            return False
        if self.tenants is not None and p.tenant not in self.tenants:
            return False
        if self.providers is not None and p.provider not in self.providers:
            return False
        if self.subjects is not None and p.subject not in self.subjects:
            return False
        return self.app_only is None or p.app_only == self.app_only

    def describe(self) -> str:
        parts = []
        for k in MATCH_KEYS:
            v = getattr(self, k)
            if v is None:
                continue
            parts.append(f"{k}={v}" if isinstance(v, bool) else f"{k}={sorted(v)}")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule.  ``None`` selectors are absent from the file."""

    id: str
    message: str
    action: str
    classes: frozenset[str] | None = None
    constructs: frozenset[str] | None = None
    tables: tuple[str, ...] | None = None
    """Table patterns as written."""
    functions: tuple[str, ...] | None = None
    line: int = 0
    search_path: tuple[str, ...] = ("public",)
    approval: ApprovalSpec | None = None
    """For ``approve`` rules: who approves and what a grant allows (see approval_spec)."""
    _tables_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _func_bare_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _func_qual_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _tables_name_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    """Name parts of the table patterns: what a name in an unknown schema may hit (deny)."""
    _tables_anyschema_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    """Name parts of patterns whose schema part is ``*``: what covers a name in any schema."""
    _func_qual_name_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _func_anyschema_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        *,
        id: str,
        message: str,
        action: str,
        classes: Iterable[str] | None = None,
        constructs: Iterable[str] | None = None,
        tables: Iterable[str] | None = None,
        functions: Iterable[str] | None = None,
        line: int = 0,
        search_path: Iterable[str] = ("public",),
        approval: ApprovalSpec | None = None,
    ) -> Rule:
        sp = tuple(search_path)
        tabs = tuple(tables) if tables is not None else None
        funcs = tuple(functions) if functions is not None else None
        expanded: list[str] = []
        for t in tabs or ():
            if "." in t:
                expanded.append(t)
            else:
                expanded.extend(f"{s}.{t}" for s in sp)
        qual_funcs = [f for f in funcs or () if "." in f]
        return cls(
            id=id,
            message=message,
            action=action,
            classes=frozenset(classes) if classes is not None else None,
            constructs=frozenset(constructs) if constructs is not None else None,
            tables=tabs,
            functions=funcs,
            line=line,
            search_path=sp,
            approval=approval if approval is not None or action != "approve" else ApprovalSpec(),
            _tables_re=_compile(expanded),
            _func_bare_re=_compile(f for f in funcs or () if "." not in f),
            _func_qual_re=_compile(qual_funcs),
            _tables_name_re=_compile(t.split(".", 1)[1] for t in expanded),
            _tables_anyschema_re=_compile(
                t.split(".", 1)[1] for t in expanded if t.split(".", 1)[0] == "*"
            ),
            _func_qual_name_re=_compile(f.split(".", 1)[1] for f in qual_funcs),
            _func_anyschema_re=_compile(
                f.split(".", 1)[1] for f in qual_funcs if f.split(".", 1)[0] == "*"
            ),
        )

    @property
    def has_selectors(self) -> bool:
        return any(
            x is not None for x in (self.classes, self.constructs, self.tables, self.functions)
        )

    # -- matching --------------------------------------------------------------------------
    # Names are matched in every schema the session may resolve them to (``_Facts``): a
    # candidate ``*.name`` stands for a schema the gateway cannot know (a search_path computed at
    # run time): deny rules hit it when a pattern's name part matches, allow rules cover it only
    # with a ``*`` schema pattern.

    def _table_hit(self, cands: tuple[str, ...]) -> bool:
        rx = self._tables_re
        if rx is None:
            return False
        for c in cands:
            if c.startswith(_ANY):
                nrx = self._tables_name_re
                if nrx is not None and nrx.fullmatch(c[len(_ANY) :]):
                    return True
            elif rx.fullmatch(c):
                return True
        return False

    def _table_covered(self, cands: tuple[str, ...]) -> bool:
        rx = self._tables_re
        if rx is None:
            return False
        for c in cands:
            if c.startswith(_ANY):
                arx = self._tables_anyschema_re
                if arx is None or not arx.fullmatch(c[len(_ANY) :]):
                    return False
            elif not rx.fullmatch(c):
                return False
        return True

    def _function_hit(self, name: Name, cands: tuple[str, ...]) -> bool:
        if self._func_bare_re is not None and self._func_bare_re.fullmatch(name[1]):
            return True
        rx = self._func_qual_re
        if rx is None:
            return False
        if name[0] is None:
            # deny also tries pg_catalog: where PostgreSQL looks first
            cands = (f"{PG_CATALOG}.{name[1]}", *cands)
        for c in cands:
            if c.startswith(_ANY):
                nrx = self._func_qual_name_re
                if nrx is not None and nrx.fullmatch(c[len(_ANY) :]):
                    return True
            elif rx.fullmatch(c):
                return True
        return False

    def _function_covered(self, name: Name, cands: tuple[str, ...]) -> bool:
        if self._func_bare_re is not None and self._func_bare_re.fullmatch(name[1]):
            return True
        rx = self._func_qual_re
        if rx is None:
            return False
        for c in cands:
            if c.startswith(_ANY):
                arx = self._func_anyschema_re
                if arx is None or not arx.fullmatch(c[len(_ANY) :]):
                    return False
            elif not rx.fullmatch(c):
                return False
        return True

    def hit(self, facts: _Facts) -> str | None:
        """For deny/approve: what in the statement this rule matches (None = no match)."""
        why: list[str] = []
        st = facts.st
        if self.classes is not None:
            common = st.classes & self.classes
            if not common:
                return None
            why.append("class " + ", ".join(sorted(common)))
        if self.constructs is not None:
            common = facts.constructs & self.constructs
            if not common:
                return None
            why.append("construct " + ", ".join(sorted(common)))
        if self.tables is not None:
            hits = [n for n, c in facts.tables.items() if self._table_hit(c)]
            if not hits:
                return None
            why.append("table " + ", ".join(sorted(_show(n) for n in hits)))
        if self.functions is not None:
            fhits = [n for n, c in facts.functions.items() if self._function_hit(n, c)]
            if not fhits:
                return None
            why.append("function " + ", ".join(sorted(_show(n) for n in fhits)))
        return "; ".join(why) if why else "every statement"

    def uncovered(self, facts: _Facts) -> str | None:
        """For allow: None when this rule covers the statement, else what it does not cover."""
        st = facts.st
        if self.classes is not None and not st.classes <= self.classes:
            return "class " + ", ".join(sorted(st.classes - self.classes))
        extra = facts.allow_constructs - (self.constructs or frozenset())
        if extra:
            return "construct " + ", ".join(sorted(extra))
        if self.tables is not None:
            bad = [n for n, c in facts.tables.items() if not self._table_covered(c)]
            if bad:
                return "table " + ", ".join(sorted(_show(n) for n in bad))
        if self.functions is not None:
            badf = [n for n, c in facts.functions.items() if not self._function_covered(n, c)]
            if badf:
                return "function " + ", ".join(sorted(_show(n) for n in badf))
        return None


_ANY: Final = f"{ANY_SCHEMA}."


class _Facts:
    """One statement as its tier sees it: names resolved along the session's search_path."""

    __slots__ = ("allow_constructs", "constructs", "functions", "st", "tables")

    def __init__(
        self,
        st: StatementAnalysis,
        path: SearchPath,
        shadows: frozenset[tuple[str, str]],
        masked: bool,
    ) -> None:
        self.st = st
        self.tables = {n: path.relation_candidates(n) for n in st.reads | st.writes}
        self.functions = {n: path.function_candidates(n, shadows) for n in st.functions}
        constructs = st.constructs
        if "user_function" not in constructs and any(
            n[0] is None
            and is_builtin(n)
            and any(not c.startswith(f"{PG_CATALOG}.") for c in cands)
            for n, cands in self.functions.items()
        ):
            # a built-in's name that the session's search_path may resolve elsewhere
            constructs = constructs | {"user_function"}
        self.constructs = constructs
        self.allow_constructs = constructs if masked else constructs - _MASKED_ONLY
        """What an allow rule must list: ``sensitive_catalog`` only on masked tiers."""


_MASKED_ONLY: Final = frozenset({"sensitive_catalog"})


def _show(n: Name) -> str:
    return f"{n[0]}.{n[1]}" if n[0] else n[1]


@dataclass(frozen=True, slots=True)
class TierVerdict:
    """How one statement fares in one tier."""

    action: str
    rule_id: str
    message: str
    reason: str


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    match: TierMatch
    default: str = "deny"
    rules: tuple[Rule, ...] = ()
    search_path: tuple[str, ...] = ("public",)
    line: int = 0
    pin_search_path: bool = False
    """The gateway sets ``search_path`` upstream at session start and refuses changes."""
    settings: Mapping[str, SettingAllowance] | None = None
    """Which settings sessions may change, and to what (None: the rules alone decide)."""
    masked: bool = False
    """Results of this tier are masked (set from the ``masking:`` section)."""
    max_connections: int | None = None
    """Sessions of this tier at once, gateway-wide (53300 beyond)."""
    max_connections_per_principal: int | None = None
    """Sessions of one principal in this tier at once (53300 beyond)."""
    elevation: ElevationSpec | None = None
    """Principals of other tiers may ask for this tier for a while (``SET
    veilgate.request_tier``); who approves that (see approval_spec)."""

    def default_search_path(self) -> SearchPath:
        """Where a new session of this tier starts (pinned: exactly this)."""
        return SearchPath.of(self.search_path, pinned=self.pin_search_path)

    def judge(
        self,
        st: StatementAnalysis,
        path: SearchPath | None = None,
        shadows: frozenset[tuple[str, str]] = frozenset(),
    ) -> TierVerdict:
        """The verdict of this tier's rules on one (resolved, parseable) statement, its names
        resolved along ``path`` (default: the tier's own search_path) with ``shadows`` (non-
        catalog functions that carry a built-in's name) as possible resolutions."""
        facts = _Facts(st, path or self.default_search_path(), shadows, self.masked)
        builtin = self._builtin_rules(st)
        if builtin is not None:
            return builtin
        approve: tuple[Rule, str] | None = None
        allow: Rule | None = None
        near_miss: tuple[Rule, str] | None = None
        for r in self.rules:
            if r.action == "allow":
                if allow is not None:
                    continue
                missing = r.uncovered(facts)
                if missing is None:
                    allow = r
                elif near_miss is None and (r.classes is None or r.classes & st.classes):
                    near_miss = (r, missing)
                continue
            what = r.hit(facts)
            if what is None:
                continue
            if r.action == "deny":
                return TierVerdict("deny", r.id, r.message, f"rule {r.id} denies {what}")
            if approve is None:
                approve = (r, what)
        if approve is not None:
            r, what = approve
            return TierVerdict(
                "approve", r.id, r.message, f"rule {r.id} requires approval for {what}"
            )
        if allow is not None:
            return TierVerdict("allow", allow.id, allow.message, f"rule {allow.id} allows it")
        if self.masked and "sensitive_catalog" in facts.constructs:
            rule_id = "masked-tier-catalog"
            return TierVerdict(
                "deny",
                rule_id,
                BUILTIN_RULES[rule_id],
                f"tier {self.name} is masked and no rule allows construct sensitive_catalog: "
                + "; ".join(d for d in st.details if "exposes" in d),
            )
        rule_id = f"default-{self.default}"
        cls = ", ".join(sorted(st.classes)) or "statement"
        if near_miss is not None:
            r, missing = near_miss
            reason = (
                f"tier {self.name} default {self.default}: rule {r.id} does not allow {missing}"
            )
        else:
            reason = f"tier {self.name} default {self.default}: no rule allows {cls}"
        msg = (
            f"not allowed by policy tier {self.name}"
            if self.default == "deny"
            else f"allowed by default in tier {self.name}"
        )
        return TierVerdict(self.default, rule_id, msg, reason)

    def _builtin_rules(self, st: StatementAnalysis) -> TierVerdict | None:
        """The gateway's own checks that come before every rule: a pinned search_path and the
        ``settings`` allowance."""
        for change in st.settings:
            session = change.how in ("SET", "SET LOCAL", "set_config()")
            if (
                self.pin_search_path
                and change.name in ("search_path", "*")
                and not change.resets
                and (session or change.how.startswith("ALTER"))
            ):
                rule_id = "pinned-search-path"
                return TierVerdict(
                    "deny",
                    rule_id,
                    BUILTIN_RULES[rule_id],
                    f"tier {self.name} pins search_path to {', '.join(self.search_path)}: "
                    f"{change.how} of it is refused",
                )
            if self.settings is not None:
                why = check_change(self.settings, change)
                if why is not None:
                    rule_id = "settings"
                    return TierVerdict(
                        "deny",
                        rule_id,
                        f"setting not allowed by tier {self.name}: {why}",
                        f"tier {self.name} settings allowance: {why}",
                    )
        return None


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    tiers: tuple[Tier, ...]
    masking: MaskingPolicy | None = None
    """The ``masking:`` section (None: no masking anywhere); see :mod:`veilgate.masking.policy`."""
    source: str = "<memory>"
    digest: str = ""
    end_marker: bool = False
    """The file ended with ``end: true`` (a reload of a file without it is refused)."""

    def tier_for(self, principal: Principal) -> Tier | None:
        """The first tier whose ``match`` the principal satisfies."""
        for t in self.tiers:
            if t.match.matches(principal):
                return t
        return None

    def tier_named(self, name: str) -> Tier | None:
        for t in self.tiers:
            if t.name == name:
                return t
        return None

    def rule_named(self, rule_id: str) -> Rule | None:
        """The rule with this id (ids are unique in a file)."""
        for t in self.tiers:
            for r in t.rules:
                if r.id == rule_id:
                    return r
        return None
