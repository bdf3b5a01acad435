"""Inference and laundering: statements a masking tier refuses before they reach the server.

Masking values in flight hides them in results.  It cannot stop a client from *using* a masked
column to learn its values without ever returning them -- ``WHERE ssn LIKE '5%'`` answers one
question per row, ``ORDER BY ssn`` sorts by it, a failing cast tells which values are numbers --
nor from copying it somewhere it reads back unmasked (``INSERT INTO notes SELECT ssn ...``,
``CREATE TEMP TABLE t AS SELECT reverse(ssn) ...``).  So on a tier that masks a column:

* every use of it the resolver records (:class:`~veilgate.masking.resolve.Use`: predicates,
  joins, grouping, ordering, LIMIT, arguments of functions and casts that can fail or branch on
  it, unique probes of writes, DDL that renames it out of its rule) is denied, unless the
  column's rule allows that kind of use (``allow:`` in the policy, see
  :data:`~veilgate.masking.policy.ALLOWED_USES`);
* every write of a value derived from it is denied unless the destination column is masked the
  same way: for a value passed through unchanged, the destination's rule must be the same
  operator; for a computed value, the destination's rule must hide values entirely (``redact``,
  ``null``, ``replace``, ``hash``); a destination outside tables (a file) never is.

A denial is ``42501`` naming the column and where it was used, with a hint; the gateway refuses
the statement in a way that keeps the server's transaction state authoritative (see
:mod:`veilgate.gateway.guard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .policy import ALLOWED_USES, ColumnRule
from .resolve import Col, Resolution, Use, Write

if TYPE_CHECKING:
    from .planner import SessionMasking

__all__ = ["Denial", "judge"]

_HIDING_OPS: Final = frozenset({"redact", "null", "replace", "hash"})
"""Operators whose output says nothing about the value's characters (any value derived from a
masked one may be stored under them)."""

_WHAT: Final = {
    "equals": "compared with a constant",
    "join": "compared with another column",
    "group": "grouped or de-duplicated",
    "order": "sorted",
    "filter": "filtered on",
    "compute": "passed to something that can fail or branch on its value",
    "rename": "renamed or moved out of its masking rule",
}

_USE_DETAIL: Final = (
    "masking hides a column's values in results; a statement that filters, joins, sorts or "
    "groups on it, or makes an error depend on it, can reveal those values without returning "
    "them, so this tier refuses such uses"
)
_USE_HINT: Final = (
    "select the column itself (its values come back masked); if this use is needed, the "
    "policy owner can allow it on the column's rule (masking.columns[].allow: {allow})"
)
_WRITE_DETAIL: Final = (
    "a value copied from a masked column into a column (or file) that is not masked the same "
    "way could be read back unmasked"
)
_WRITE_HINT: Final = (
    "write into a column masked by the same rule, or keep the value out of the write"
)


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a statement is refused (no values: column names and clauses only)."""

    column: str
    message: str
    detail: str
    hint: str
    use: str
    """The kind of use (or ``write``), for the audit record."""

    sqlstate: str = "42501"


def judge(res: Resolution, planner: SessionMasking) -> Denial | None:
    """The first reason the tier of ``planner`` refuses a statement with resolution ``res``."""
    for use in res.uses:
        d = _use(use, planner)
        if d is not None:
            return d
    for w in res.writes:
        d = _write(w, planner)
        if d is not None:
            return d
    return None


def _use(use: Use, planner: SessionMasking) -> Denial | None:
    tier = planner.tier
    for col in sorted(use.cols, key=Col.label):
        if col.table == "*":  # a whole schema renamed
            if tier.schema_may_mask(col.schema) and not _all_allowed(planner):
                return _use_denial(f"schema {col.schema}", use, "all")
            continue
        rule = planner.base_rule(col)
        if rule is None or not rule.masks or rule.allows(use.kind):
            continue
        return _use_denial(col.label(), use, _suggest(use.kind))
    return None


def _all_allowed(planner: SessionMasking) -> bool:
    rules = planner.tier.column_rules + planner.tier.name_rules
    return all("all" in r.allow for r in rules if r.masks)


def _suggest(kind: str) -> str:
    """The ``allow:`` word that would permit a use of this kind."""
    return kind if kind in ALLOWED_USES else "all"


def _use_denial(what: str, use: Use, allow: str) -> Denial:
    where = use.clause
    return Denial(
        column=what,
        message=(
            f"column {what} is masked for this tier: it cannot be {_WHAT.get(use.kind, 'used')}"
            f" ({where})"
        ),
        detail=_USE_DETAIL,
        hint=_USE_HINT.format(allow=f"[{allow}]"),
        use=use.kind,
    )


def _write(w: Write, planner: SessionMasking) -> Denial | None:
    masked = sorted((c for c in w.source.cols if planner.masks(c)), key=Col.label)
    if not masked:
        return None
    dest = w.dest
    # a table created unqualified may be in any schema of the session's search_path: each
    # candidate must be masked the same way
    dest_rules = planner.base_rules(dest) if dest is not None else [None]
    for col in masked:
        rule = planner.base_rule(col)
        assert rule is not None
        if "all" in rule.allow:
            continue
        if dest_rules and all(
            d is not None and _masked_the_same_way(rule, d, w.source.exact) for d in dest_rules
        ):
            continue
        return Denial(
            column=col.label(),
            message=(
                f"column {col.label()} is masked for this tier: its values cannot be copied into"
                f" {w.label}, which is not masked the same way"
            ),
            detail=_WRITE_DETAIL,
            hint=_WRITE_HINT,
            use="write",
        )
    return None


def _masked_the_same_way(src: ColumnRule, dest: ColumnRule, exact: bool) -> bool:
    if not dest.masks:
        return False
    if exact:
        # the same values under the same operator: reading them back shows what reading the
        # source shows
        return dest.op == src.op and dest.scan == src.scan
    # a computed value (reverse(ssn) under ``partial keep_last 4`` would show other characters):
    # only operators that hide the whole value
    return dest.op is not None and dest.op.kind in _HIDING_OPS
