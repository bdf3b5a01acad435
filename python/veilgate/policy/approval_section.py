"""Validation of a rule's ``approval:`` and a tier's ``elevation:`` (YAML nodes → specs).

Called by :mod:`veilgate.policy.loader` with its compiler as the reporter, so every problem names
the file, the line and the key.  The shapes are documented in
:mod:`veilgate.policy.approval_spec`.
"""

from __future__ import annotations

from typing import Any

from yaml.nodes import Node, ScalarNode

from ..masking.section import Reporter
from .approval_spec import (
    APPROVAL_KEYS,
    APPROVER_KEYS,
    ELEVATION_KEYS,
    MODES,
    ApprovalSpec,
    ApproverSpec,
    ElevationSpec,
)

__all__ = ["compile_approval", "compile_elevation"]

_DAY = 86400.0


def _number(
    c: Reporter, node: Node, key: str, lo: float, hi: float, *, integer: bool = False
) -> float | None:
    v = c.scalar(node) if isinstance(node, ScalarNode) else None
    ok = isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi
    if integer:
        ok = ok and isinstance(v, int)
    if not ok:
        kind = "an integer" if integer else "a number"
        c.error(node, key, f"expected {kind} between {lo:g} and {hi:g}, got {_show(c, node)}")
        return None
    assert isinstance(v, int | float)
    return float(v)


def _bool(c: Reporter, node: Node, key: str) -> bool | None:
    v = c.scalar(node) if isinstance(node, ScalarNode) else None
    if not isinstance(v, bool):
        c.error(node, key, f"expected true or false, got {_show(c, node)}")
        return None
    return v


def _show(c: Reporter, node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(c.scalar(node))
    return "a mapping or list"


def _approvers(c: Reporter, node: Node, key: str) -> ApproverSpec | None:
    m = c.mapping(node, key, APPROVER_KEYS)
    if m is None:
        return None
    values: dict[str, frozenset[str]] = {}
    for k, (_kn, vn) in m.items():
        lst = c.string_list(vn, f"{key}.{k}")
        if lst is None:
            return None
        if not lst:
            c.warn(vn, f"{key}.{k}", "empty list: nobody qualifies through it")
        values[k] = frozenset(lst)
    return ApproverSpec(**values)


def _common(c: Reporter, m: dict[str, tuple[Node, Node]], key: str, kw: dict[str, Any]) -> bool:
    """``approvers``, ``required``, ``require_reason`` (shared by both sections)."""
    ok = True
    if "approvers" in m:
        a = _approvers(c, m["approvers"][1], f"{key}.approvers")
        ok = ok and a is not None
        if a is not None:
            kw["approvers"] = a
    if "required" in m:
        n = _number(c, m["required"][1], f"{key}.required", 1, 16, integer=True)
        ok = ok and n is not None
        if n is not None:
            kw["required"] = int(n)
    if "require_reason" in m:
        b = _bool(c, m["require_reason"][1], f"{key}.require_reason")
        ok = ok and b is not None
        if b is not None:
            kw["require_reason"] = b
    approvers: ApproverSpec = kw.get("approvers", ApproverSpec())
    required: int = kw.get("required", 1)
    named = len(approvers.users)
    if not approvers.roles and not approvers.groups and named and required > named:
        c.error(
            m["required"][1] if "required" in m else None,
            f"{key}.required",
            f"{required} approvers required but only {named} users may approve",
        )
        ok = False
    return ok


def compile_approval(c: Reporter, node: Node | None, key: str) -> ApprovalSpec | None:
    """A rule's ``approval:`` (``node`` None: the rule has none, defaults apply)."""
    if node is None:
        return ApprovalSpec()
    m = c.mapping(node, key, APPROVAL_KEYS)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    ok = _common(c, m, key, kw)
    for name, lo, hi, integer in (
        ("grant_ttl_s", 1.0, 7 * _DAY, False),
        ("grant_uses", 0, 1_000_000, True),
        ("request_ttl_s", 1.0, 30 * _DAY, False),
        ("wait_timeout_s", 0.1, _DAY, False),
    ):
        if name in m:
            v = _number(c, m[name][1], f"{key}.{name}", lo, hi, integer=integer)
            ok = ok and v is not None
            if v is not None:
                kw[name] = int(v) if integer else v
    if "match_constants" in m:
        b = _bool(c, m["match_constants"][1], f"{key}.match_constants")
        ok = ok and b is not None
        if b is not None:
            kw["match_constants"] = b
    if "mode" in m:
        mode = c.choice(m["mode"][1], f"{key}.mode", MODES)
        ok = ok and mode is not None
        if mode is not None:
            kw["mode"] = mode
    return ApprovalSpec(**kw) if ok else None


def compile_elevation(c: Reporter, node: Node, key: str) -> ElevationSpec | None:
    m = c.mapping(node, key, ELEVATION_KEYS)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    ok = _common(c, m, key, kw)
    if "max_ttl_s" in m:
        v = _number(c, m["max_ttl_s"][1], f"{key}.max_ttl_s", 1.0, 30 * _DAY)
        ok = ok and v is not None
        if v is not None:
            kw["max_ttl_s"] = v
    if "from_tiers" in m:
        lst = c.string_list(m["from_tiers"][1], f"{key}.from_tiers")
        ok = ok and lst is not None
        if lst is not None:
            kw["from_tiers"] = frozenset(lst)
    return ElevationSpec(**kw) if ok else None
