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
        search_path: [public]       # how unqualified table names resolve (default [public])
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

Statement classes: ``read write ddl dcl session role_change copy_in copy_out transaction utility
maintenance prepare call do other``; constructs: see
:data:`veilgate.policy.analysis.CONSTRUCTS`.

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
  ``search_path``.  An unqualified name in SQL resolves to each schema of the tier's
  ``search_path`` (plus ``pg_catalog`` for ``pg_*`` names): ``deny`` matches if any candidate does,
  ``allow`` needs all of them.  Deny ``search_path_change`` (or only allow qualified names) in a
  tier that relies on table scopes.
* Functions: a pattern without a dot matches the function's own name in any schema; a dotted
  pattern matches ``schema.name``.  An unqualified call of a PostgreSQL built-in counts as
  ``pg_catalog.name`` (where PostgreSQL looks first), any other unqualified call as each schema of
  the tier's ``search_path`` (``allow`` needs all, ``deny`` any; ``deny`` also tries
  ``pg_catalog``).  Calls of non-built-in functions also carry the ``user_function`` construct, so
  an allow rule only lets them through when it lists ``user_function``: a user function can write.

A message (several statements) gets the most restrictive of its statements' actions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Final

from ..identity.base import Principal
from ..masking.policy import MaskingPolicy
from .analysis import CLASSES, CONSTRUCTS, Name, StatementAnalysis, is_builtin

__all__ = [
    "ACTIONS",
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
    _tables_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _func_bare_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _func_qual_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

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
            _tables_re=_compile(expanded),
            _func_bare_re=_compile(f for f in funcs or () if "." not in f),
            _func_qual_re=_compile(f for f in funcs or () if "." in f),
        )

    @property
    def has_selectors(self) -> bool:
        return any(
            x is not None for x in (self.classes, self.constructs, self.tables, self.functions)
        )

    # -- matching --------------------------------------------------------------------------

    def _relation_candidates(self, name: Name) -> list[str]:
        schema, rel = name
        if schema is not None:
            return [f"{schema}.{rel}"]
        out = [f"{s}.{rel}" for s in self.search_path]
        if rel.startswith("pg_"):
            out.append(f"pg_catalog.{rel}")
        return out

    def _table_hit(self, name: Name) -> bool:
        rx = self._tables_re
        return rx is not None and any(rx.fullmatch(c) for c in self._relation_candidates(name))

    def _table_covered(self, name: Name) -> bool:
        rx = self._tables_re
        return rx is not None and all(rx.fullmatch(c) for c in self._relation_candidates(name))

    def _function_candidates(self, name: Name) -> list[str]:
        """Where an unqualified call can resolve: built-ins in pg_catalog, else search_path."""
        schema, fn = name
        if schema is not None:
            return [f"{schema}.{fn}"]
        if is_builtin(name):
            return [f"pg_catalog.{fn}"]
        return [f"{s}.{fn}" for s in self.search_path]

    def _function_hit(self, name: Name) -> bool:
        schema, fn = name
        if self._func_bare_re is not None and self._func_bare_re.fullmatch(fn):
            return True
        rx = self._func_qual_re
        if rx is None:
            return False
        cands = self._function_candidates(name)
        if schema is None:
            cands = [f"pg_catalog.{fn}", *(f"{s}.{fn}" for s in self.search_path)]
        return any(rx.fullmatch(c) for c in cands)

    def _function_covered(self, name: Name) -> bool:
        if self._func_bare_re is not None and self._func_bare_re.fullmatch(name[1]):
            return True
        rx = self._func_qual_re
        return rx is not None and all(rx.fullmatch(c) for c in self._function_candidates(name))

    def hit(self, st: StatementAnalysis) -> str | None:
        """For deny/approve: what in ``st`` this rule matches (None = no match)."""
        why: list[str] = []
        if self.classes is not None:
            common = st.classes & self.classes
            if not common:
                return None
            why.append("class " + ", ".join(sorted(common)))
        if self.constructs is not None:
            common = st.constructs & self.constructs
            if not common:
                return None
            why.append("construct " + ", ".join(sorted(common)))
        if self.tables is not None:
            hits = [n for n in st.reads | st.writes if self._table_hit(n)]
            if not hits:
                return None
            why.append("table " + ", ".join(sorted(_show(n) for n in hits)))
        if self.functions is not None:
            hits = [n for n in st.functions if self._function_hit(n)]
            if not hits:
                return None
            why.append("function " + ", ".join(sorted(_show(n) for n in hits)))
        return "; ".join(why) if why else "every statement"

    def uncovered(self, st: StatementAnalysis) -> str | None:
        """For allow: None when this rule covers ``st``, else what it does not cover."""
        if self.classes is not None and not st.classes <= self.classes:
            return "class " + ", ".join(sorted(st.classes - self.classes))
        extra = st.constructs - (self.constructs or frozenset())
        if extra:
            return "construct " + ", ".join(sorted(extra))
        if self.tables is not None:
            bad = [n for n in st.reads | st.writes if not self._table_covered(n)]
            if bad:
                return "table " + ", ".join(sorted(_show(n) for n in bad))
        if self.functions is not None:
            badf = [n for n in st.functions if not self._function_covered(n)]
            if badf:
                return "function " + ", ".join(sorted(_show(n) for n in badf))
        return None


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

    def judge(self, st: StatementAnalysis) -> TierVerdict:
        """The verdict of this tier's rules on one (resolved, parseable) statement."""
        approve: tuple[Rule, str] | None = None
        allow: Rule | None = None
        near_miss: tuple[Rule, str] | None = None
        for r in self.rules:
            if r.action == "allow":
                if allow is not None:
                    continue
                missing = r.uncovered(st)
                if missing is None:
                    allow = r
                elif near_miss is None and (r.classes is None or r.classes & st.classes):
                    near_miss = (r, missing)
                continue
            what = r.hit(st)
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


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    tiers: tuple[Tier, ...]
    masking: MaskingPolicy | None = None
    """The ``masking:`` section (None: no masking anywhere); see :mod:`veilgate.masking.policy`."""
    source: str = "<memory>"
    digest: str = ""

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
