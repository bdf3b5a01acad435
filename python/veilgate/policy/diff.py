"""What a policy reload changes, tier by tier, and whether it takes masking away.

:func:`policy_changes` compares the running policy with a new one and says, per tier, what it
gained and what it lost (rules added, removed or changed; default, search_path, settings,
connection limits; masking turned on or off, column rules, detectors...).  The reload log
carries it, so an operator reading the log sees what a reload did to each tier.

:func:`masking_losses` is the part a reload may not do silently: a tier whose sessions were
masked and are not any more (its masking was turned off, its tier removed or renamed, so its
principals may land in an unmasked tier), or whose masking got weaker (a column rule removed or
turned into ``keep``, a detector removed, unknown lineage no longer redacted, content scanning
of unknown columns turned off).  The watcher refuses such a reload unless it is confirmed for
exactly that file content (see :mod:`veilgate.policy.reload`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..masking.policy import ColumnRule, MaskingPolicy
from .model import Policy, Rule, Tier

__all__ = ["TierChanges", "masking_losses", "policy_changes"]


@dataclass
class TierChanges:
    gained: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.gained or self.lost)

    def as_dict(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if self.gained:
            out["gained"] = self.gained
        if self.lost:
            out["lost"] = self.lost
        return out


def _rule_sig(r: Rule) -> tuple[object, ...]:
    return (
        r.action,
        r.classes,
        r.constructs,
        r.tables,
        r.functions,
        r.message,
    )


def _rule_label(r: Rule) -> str:
    return f"{r.action} rule {r.id}"


def _masking_of(policy: Policy, tier: str) -> MaskingPolicy | None:
    m = policy.masking
    return m if m is not None and m.applies_to(tier) else None


def _column_sig(r: ColumnRule) -> tuple[object, ...]:
    return (r.by, r.pattern, r.op, r.scan, r.allow)


def _masking_changes(old: MaskingPolicy | None, new: MaskingPolicy | None) -> TierChanges:
    ch = TierChanges()
    if old is None and new is None:
        return ch
    if old is None:
        ch.gained.append("masking")
        return ch
    if new is None:
        ch.lost.append("masking (results are no longer masked)")
        return ch
    old_cols = {(r.by, r.pattern): r for r in old.columns}
    new_cols = {(r.by, r.pattern): r for r in new.columns}
    for key, r in old_cols.items():
        n = new_cols.get(key)
        if n is None:
            if r.masks:
                ch.lost.append(f"masking of {r.by} {r.pattern}")
        elif _column_sig(n) != _column_sig(r):
            if r.masks and not n.masks:
                ch.lost.append(f"masking of {r.by} {r.pattern} (now keep)")
            elif n.allow - r.allow:
                ch.lost.append(
                    f"{r.by} {r.pattern} now allows " + ", ".join(sorted(n.allow - r.allow))
                )
            else:
                ch.gained.append(f"changed masking of {r.by} {r.pattern}")
    for key, n in new_cols.items():
        if key not in old_cols:
            ch.gained.append(f"{'keep' if n.keeps else 'masking'} of {n.by} {n.pattern}")
    for d in old.entities:
        if d not in new.entities:
            ch.lost.append(f"detector {d}")
    for d in new.entities:
        if d not in old.entities:
            ch.gained.append(f"detector {d}")
    if old.scan_unknown and not new.scan_unknown:
        ch.lost.append("content scan of columns of unknown lineage")
    elif new.scan_unknown and not old.scan_unknown:
        ch.gained.append("content scan of columns of unknown lineage")
    if old.unknown_lineage != new.unknown_lineage:
        weaker = new.unknown_lineage == "scan"
        (ch.lost if weaker else ch.gained).append(
            f"unknown_lineage {old.unknown_lineage} -> {new.unknown_lineage}"
        )
    return ch


def _tier_changes(old: Tier, new: Tier) -> TierChanges:
    ch = TierChanges()
    old_rules = {r.id: r for r in old.rules}
    new_rules = {r.id: r for r in new.rules}
    for rid, r in old_rules.items():
        n = new_rules.get(rid)
        if n is None:
            ch.lost.append(_rule_label(r))
        elif _rule_sig(n) != _rule_sig(r):
            ch.gained.append(f"changed {_rule_label(n)}")
    for rid, n in new_rules.items():
        if rid not in old_rules:
            ch.gained.append(_rule_label(n))
    if old.default != new.default:
        ch.gained.append(f"default {old.default} -> {new.default}")
    if old.match != new.match:
        ch.gained.append(f"match {old.match.describe()} -> {new.match.describe()}")
    if old.search_path != new.search_path:
        ch.gained.append(f"search_path {', '.join(new.search_path)}")
    if old.pin_search_path != new.pin_search_path:
        (ch.gained if new.pin_search_path else ch.lost).append("pinned search_path")
    if old.settings != new.settings:
        if new.settings is None:
            ch.lost.append("settings allowance (any setting may now be changed)")
        else:
            ch.gained.append("settings allowance " + ", ".join(sorted(new.settings)))
    for limit in ("max_connections", "max_connections_per_principal"):
        a, b = getattr(old, limit), getattr(new, limit)
        if a != b:
            ch.gained.append(f"{limit} {a} -> {b}")
    return ch


def policy_changes(old: Policy, new: Policy) -> dict[str, TierChanges]:
    """Per tier name: what the reload from ``old`` to ``new`` gives and takes."""
    out: dict[str, TierChanges] = {}
    old_tiers = {t.name: t for t in old.tiers}
    new_tiers = {t.name: t for t in new.tiers}
    for name in [*old_tiers, *(n for n in new_tiers if n not in old_tiers)]:
        o, n = old_tiers.get(name), new_tiers.get(name)
        if o is None:
            ch = TierChanges(gained=["tier"])
        elif n is None:
            ch = TierChanges(lost=["tier (its principals may now match another tier)"])
        else:
            ch = _tier_changes(o, n)
        m = _masking_changes(
            _masking_of(old, name) if o is not None else None,
            _masking_of(new, name) if n is not None else None,
        )
        if o is None:
            m.lost.clear()
        ch.gained.extend(m.gained)
        ch.lost.extend(m.lost)
        if ch:
            out[name] = ch
    return out


def masking_losses(old: Policy, new: Policy) -> dict[str, list[str]]:
    """Tiers of ``old`` whose masking ``new`` removes or weakens, and what they lose."""
    out: dict[str, list[str]] = {}
    new_names = {t.name for t in new.tiers}
    for t in old.tiers:
        before = _masking_of(old, t.name)
        if before is None:
            continue
        if t.name not in new_names:
            out[t.name] = ["masking (the tier is gone; its principals may match an unmasked one)"]
            continue
        lost = _masking_changes(before, _masking_of(new, t.name)).lost
        if lost:
            out[t.name] = lost
    return out
