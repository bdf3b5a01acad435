"""Policy file (YAML) → compiled :class:`~veilgate.policy.model.Policy`.

The file shape is documented in :mod:`veilgate.policy.model`.  Validation walks the composed YAML
node tree so every problem names the file, the line and the key, e.g.::

    policy.yaml:14: tiers[0].rules[2].action: expected one of allow, deny, approve, got 'permit'

:func:`load_policy` raises :class:`PolicyError` (carrying every error found, not only the first);
:func:`lint_policy` also returns warnings (unreachable rules and tiers, unknown construct names,
``default: allow``...).  A policy with errors is never returned: reload keeps the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..masking.policy import MaskingPolicy
from ..masking.section import compile_masking
from .analysis import CLASSES, CONSTRUCTS
from .approval_section import compile_approval, compile_elevation
from .model import ACTIONS, MATCH_KEYS, SEVERITY, Policy, Rule, Tier, TierMatch
from .settings import SettingAllowance, SettingsError

__all__ = ["Issue", "PolicyError", "lint_policy", "load_policy", "load_policy_text"]

_TOP_KEYS = ("version", "tiers", "masking", "end")
_TIER_KEYS = (
    "name",
    "match",
    "default",
    "search_path",
    "pin_search_path",
    "settings",
    "max_connections",
    "max_connections_per_principal",
    "rules",
    "elevation",
)
_RULE_KEYS = (
    "id",
    "message",
    "action",
    "classes",
    "constructs",
    "tables",
    "functions",
    "approval",
)
_DEFAULTS = ("deny", "allow")


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int
    key: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else "warning: "
        key = f" {self.key}:" if self.key else ""
        return f"{self.file}:{self.line}:{key} {tag}{self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used.  ``issues`` lists every error."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def load_policy(path: str | Path) -> Policy:
    """Load and compile a policy file; raise :class:`PolicyError` naming file, line and key."""
    policy, issues = lint_policy(path)
    errors = [i for i in issues if i.severity == "error"]
    if errors or policy is None:
        raise PolicyError(errors)
    return policy


def load_policy_text(text: str, filename: str = "<policy>") -> Policy:
    policy, issues = _Compiler(filename).run(text)
    errors = [i for i in issues if i.severity == "error"]
    if errors or policy is None:
        raise PolicyError(errors)
    return policy


def lint_policy(path: str | Path) -> tuple[Policy | None, list[Issue]]:
    """Compile ``path``; return the policy (None if any error) and all errors and warnings."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Issue(name, 0, "", f"cannot read policy file: {exc}")]
    return _Compiler(name).run(text)


def _describe(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value)
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a list"


class _Compiler:
    def __init__(self, filename: str) -> None:
        self.file = filename
        self.issues: list[Issue] = []
        self._ctor = SafeConstructor()

    # -- reporting ---------------------------------------------------------------------------

    def error(self, node: Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.issues.append(Issue(self.file, line, key, message))

    def warn(self, node: Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.issues.append(Issue(self.file, line, key, message, "warning"))

    # -- node helpers ------------------------------------------------------------------------

    def mapping(
        self, node: Node, key: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[Node, Node]] | None:
        if not isinstance(node, MappingNode):
            self.error(node, key, f"expected a mapping, got {_describe(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                self.error(k, key, "mapping keys must be plain strings")
                continue
            name = str(k.value)
            where = f"{key}.{name}" if key else name
            if name in out:
                self.error(k, where, "duplicate key")
                continue
            if name not in allowed:
                self.error(k, where, f"unknown key (expected one of {', '.join(allowed)})")
                continue
            out[name] = (k, v)
        return out

    def scalar(self, node: Node) -> Any:
        try:
            return self._ctor.construct_object(node, deep=True)
        except (ConstructorError, ValueError) as exc:  # pragma: no cover - odd tags
            self.error(node, "", f"bad value: {exc}")
            return None

    def string(self, node: Node, key: str) -> str | None:
        if isinstance(node, ScalarNode):
            v = self.scalar(node)
            if isinstance(v, str) and v.strip():
                return v
        self.error(node, key, f"expected a non-empty string, got {_describe(node)}")
        return None

    def choice(self, node: Node, key: str, choices: tuple[str, ...]) -> str | None:
        v = self.scalar(node) if isinstance(node, ScalarNode) else None
        if isinstance(v, str) and v in choices:
            return v
        got = repr(v) if isinstance(node, ScalarNode) else _describe(node)
        self.error(node, key, f"expected one of {', '.join(choices)}, got {got}")
        return None

    def string_list(
        self,
        node: Node,
        key: str,
        check: Callable[[Node, str, str], None] | None = None,
    ) -> list[str] | None:
        if isinstance(node, ScalarNode) and isinstance(self.scalar(node), str):
            items: list[Node] = [node]  # a single string is a one-element list
        elif isinstance(node, SequenceNode):
            items = list(node.value)
        else:
            self.error(node, key, f"expected a list of strings, got {_describe(node)}")
            return None
        out: list[str] = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(node, SequenceNode) else key
            s = self.string(item, where)
            if s is None:
                continue
            if check is not None:
                check(item, where, s)
            out.append(s)
        return out

    # -- the file ----------------------------------------------------------------------------

    def run(self, text: str) -> tuple[Policy | None, list[Issue]]:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            self.issues.append(Issue(self.file, line, "", f"YAML syntax error: {exc.problem}"))
            return None, self.issues
        except yaml.YAMLError as exc:
            self.issues.append(Issue(self.file, 0, "", f"YAML error: {exc}"))
            return None, self.issues
        if root is None:
            self.issues.append(Issue(self.file, 1, "", "empty policy file"))
            return None, self.issues
        top = self.mapping(root, "", _TOP_KEYS)
        if top is None:
            return None, self.issues
        version = 0
        if "version" not in top:
            self.error(root, "version", "required key missing (version: 1)")
        else:
            vnode = top["version"][1]
            v = self.scalar(vnode) if isinstance(vnode, ScalarNode) else None
            if v != 1 or isinstance(v, bool):
                got = repr(v) if isinstance(vnode, ScalarNode) else _describe(vnode)
                self.error(vnode, "version", f"unsupported version {got} (expected 1)")
            else:
                version = 1
        tiers: list[Tier] = []
        if "tiers" not in top:
            self.error(root, "tiers", "required key missing")
        else:
            tnode = top["tiers"][1]
            if not isinstance(tnode, SequenceNode) or not tnode.value:
                self.error(tnode, "tiers", "expected a non-empty list of tiers")
            else:
                rule_ids: dict[str, int] = {}
                names: dict[str, int] = {}
                for i, n in enumerate(tnode.value):
                    t = self.tier(n, f"tiers[{i}]", rule_ids, names)
                    if t is not None:
                        tiers.append(t)
        masking: MaskingPolicy | None = None
        if "masking" in top:
            # present (even empty) = masking on for every tier unless apply_to narrows it
            masking = compile_masking(self, top["masking"][1], {t.name for t in tiers})
            if masking is not None:
                tiers = [
                    dataclasses.replace(t, masked=True) if masking.applies_to(t.name) else t
                    for t in tiers
                ]
        end_marker = self.end_marker(root, top)
        self.lint_tiers(tiers)
        if any(i.severity == "error" for i in self.issues):
            return None, self.issues
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        policy = Policy(
            version=version,
            tiers=tuple(tiers),
            masking=masking,
            source=self.file,
            digest=digest,
            end_marker=end_marker,
        )
        return policy, self.issues

    def end_marker(self, root: Node, top: dict[str, tuple[Node, Node]]) -> bool:
        """``end: true``, the file's last key: a file cut short anywhere loses it (see
        :mod:`veilgate.policy.reload`)."""
        if "end" not in top:
            return False
        kn, vn = top["end"]
        if not (isinstance(vn, ScalarNode) and self.scalar(vn) is True):
            self.error(vn, "end", "expected true (the end-of-policy marker)")
            return False
        assert isinstance(root, MappingNode)
        last = root.value[-1][0]
        if last is not kn:
            self.error(kn, "end", "must be the last key of the file (it marks the end)")
            return False
        return True

    def tier(
        self, node: Node, key: str, rule_ids: dict[str, int], names: dict[str, int]
    ) -> Tier | None:
        m = self.mapping(node, key, _TIER_KEYS)
        if m is None:
            return None
        line = node.start_mark.line + 1
        ok = True
        name = None
        if "name" not in m:
            self.error(node, f"{key}.name", "required key missing")
            ok = False
        else:
            nnode = m["name"][1]
            name = self.string(nnode, f"{key}.name")
            ok = ok and name is not None
            if name is not None and name in names:
                self.error(
                    nnode,
                    f"{key}.name",
                    f"duplicate tier name {name!r} (first at line {names[name]})",
                )
                ok = False
            elif name is not None:
                names[name] = nnode.start_mark.line + 1
        match = None
        if "match" not in m:
            self.error(node, f"{key}.match", "required key missing (an empty match is refused)")
            ok = False
        else:
            match = self.match(m["match"][1], f"{key}.match")
            ok = ok and match is not None
        default = "deny"
        if "default" in m:
            d = self.choice(m["default"][1], f"{key}.default", _DEFAULTS)
            if d is None:
                ok = False
            else:
                default = d
                if d == "allow":
                    self.warn(
                        m["default"][1],
                        f"{key}.default",
                        "default allow: statements no rule mentions are allowed",
                    )
        search_path: tuple[str, ...] = ("public",)
        if "search_path" in m:
            sp = self.string_list(m["search_path"][1], f"{key}.search_path")
            if sp is None or not sp:
                if sp is not None:
                    self.error(m["search_path"][1], f"{key}.search_path", "must not be empty")
                ok = False
            else:
                search_path = tuple(sp)
        options = self.tier_options(m, key)
        if options is None:
            ok = False
        rules: list[Rule] = []
        if "rules" not in m:
            self.warn(node, f"{key}.rules", f"tier has no rules: everything gets {default}")
        else:
            rnode = m["rules"][1]
            if not isinstance(rnode, SequenceNode):
                self.error(rnode, f"{key}.rules", f"expected a list, got {_describe(rnode)}")
                ok = False
            else:
                for i, rn in enumerate(rnode.value):
                    r = self.rule(rn, f"{key}.rules[{i}]", search_path, rule_ids)
                    if r is None:
                        ok = False
                    else:
                        rules.append(r)
        elevation = None
        if "elevation" in m:
            elevation = compile_elevation(self, m["elevation"][1], f"{key}.elevation")
            ok = ok and elevation is not None
        if not ok or name is None or match is None or options is None:
            return None
        return Tier(
            name=name,
            match=match,
            default=default,
            rules=tuple(rules),
            search_path=search_path,
            line=line,
            **options,
            elevation=elevation,
        )

    def tier_options(self, m: dict[str, tuple[Node, Node]], key: str) -> dict[str, Any] | None:
        """``pin_search_path``, ``settings``, ``max_connections[_per_principal]`` of a tier."""
        out: dict[str, Any] = {}
        ok = True
        if "pin_search_path" in m:
            vn = m["pin_search_path"][1]
            v = self.scalar(vn) if isinstance(vn, ScalarNode) else None
            if not isinstance(v, bool):
                self.error(
                    vn, f"{key}.pin_search_path", f"expected true or false, got {_describe(vn)}"
                )
                ok = False
            else:
                out["pin_search_path"] = v
        for limit in ("max_connections", "max_connections_per_principal"):
            if limit in m:
                vn = m[limit][1]
                v = self.scalar(vn) if isinstance(vn, ScalarNode) else None
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    self.error(
                        vn, f"{key}.{limit}", f"expected a positive integer, got {_describe(vn)}"
                    )
                    ok = False
                else:
                    out[limit] = v
        if "settings" in m:
            settings = self.settings(m["settings"][1], f"{key}.settings")
            if settings is None:
                ok = False
            else:
                out["settings"] = settings
        return out if ok else None

    def settings(self, node: Node, key: str) -> dict[str, SettingAllowance] | None:
        if not isinstance(node, MappingNode):
            self.error(node, key, f"expected a mapping of setting names, got {_describe(node)}")
            return None
        out: dict[str, SettingAllowance] = {}
        ok = True
        for kn, vn in node.value:
            name = self.scalar(kn) if isinstance(kn, ScalarNode) else None
            if not isinstance(name, str) or not name.strip():
                self.error(kn, key, "setting names must be plain strings")
                ok = False
                continue
            name = name.strip().lower()
            where = f"{key}.{name}"
            if name in out:
                self.error(kn, where, "duplicate setting")
                ok = False
                continue
            spec: Any
            if isinstance(vn, ScalarNode) and self.scalar(vn) in (None, "any"):
                spec = {}
            elif isinstance(vn, MappingNode):
                spec = self.scalar(vn)
            else:
                self.error(
                    vn,
                    where,
                    f"expected a mapping (min, max, values, unit) or 'any', got {_describe(vn)}",
                )
                ok = False
                continue
            try:
                out[name] = SettingAllowance.build(name, spec)
            except SettingsError as exc:
                self.error(vn, where, str(exc))
                ok = False
        return out if ok else None

    def match(self, node: Node, key: str) -> TierMatch | None:
        m = self.mapping(node, key, MATCH_KEYS)
        if m is None:
            return None
        if not m:
            self.error(node, key, "empty match (would match every principal): refused")
            return None
        values: dict[str, Any] = {}
        ok = True
        for k, (_kn, vn) in m.items():
            if k == "app_only":
                v = self.scalar(vn) if isinstance(vn, ScalarNode) else None
                if not isinstance(v, bool):
                    self.error(
                        vn, f"{key}.app_only", f"expected true or false, got {_describe(vn)}"
                    )
                    ok = False
                values[k] = v
                continue
            lst = self.string_list(vn, f"{key}.{k}")
            if lst is None:
                ok = False
            elif not lst:
                self.error(vn, f"{key}.{k}", "empty list matches nobody")
                ok = False
            else:
                values[k] = frozenset(lst)
        return TierMatch(**values) if ok else None

    def rule(
        self, node: Node, key: str, search_path: tuple[str, ...], rule_ids: dict[str, int]
    ) -> Rule | None:
        m = self.mapping(node, key, _RULE_KEYS)
        if m is None:
            return None
        line = node.start_mark.line + 1
        ok = True
        fields: dict[str, Any] = {}
        for req in ("id", "message", "action"):
            if req not in m:
                self.error(node, f"{key}.{req}", "required key missing")
                ok = False
        if "id" in m:
            rid = self.string(m["id"][1], f"{key}.id")
            if rid is None:
                ok = False
            elif rid in rule_ids:
                self.error(
                    m["id"][1],
                    f"{key}.id",
                    f"duplicate rule id {rid!r} (first at line {rule_ids[rid]})",
                )
                ok = False
            else:
                rule_ids[rid] = m["id"][1].start_mark.line + 1
                fields["id"] = rid
        if "message" in m:
            msg = self.string(m["message"][1], f"{key}.message")
            ok = ok and msg is not None
            fields["message"] = msg
        if "action" in m:
            act = self.choice(m["action"][1], f"{key}.action", ACTIONS)
            ok = ok and act is not None
            fields["action"] = act

        def check_class(n: Node, where: str, v: str) -> None:
            nonlocal ok
            if v not in CLASSES:
                self.error(n, where, f"unknown statement class {v!r} (one of {', '.join(CLASSES)})")
                ok = False

        def check_construct(n: Node, where: str, v: str) -> None:
            if v not in CONSTRUCTS:
                self.warn(n, where, f"unknown construct {v!r}: it never matches")

        def check_pattern(n: Node, where: str, v: str) -> None:
            nonlocal ok
            if v.count(".") > 1:
                self.error(n, where, f"pattern {v!r}: expected name or schema.name")
                ok = False

        for sel, check in (
            ("classes", check_class),
            ("constructs", check_construct),
            ("tables", check_pattern),
            ("functions", check_pattern),
        ):
            if sel in m:
                lst = self.string_list(m[sel][1], f"{key}.{sel}", check)
                if lst is None:
                    ok = False
                elif not lst:
                    self.warn(m[sel][1], f"{key}.{sel}", "empty list: the rule never matches")
                fields[sel] = lst
        if not self.rule_approval(m, node, key, fields):
            return None
        if not ok:
            return None
        return Rule.build(line=line, search_path=search_path, **fields)

    def rule_approval(
        self, m: dict[str, tuple[Node, Node]], node: Node, key: str, fields: dict[str, Any]
    ) -> bool:
        """A rule's ``approval:`` (approve rules only); False on errors."""
        action = fields.get("action")
        if "approval" in m and action != "approve":
            self.error(m["approval"][0], f"{key}.approval", "only rules with action: approve")
            return False
        if action != "approve":
            return True
        spec = compile_approval(
            self, m["approval"][1] if "approval" in m else None, f"{key}.approval"
        )
        if spec is None:
            return False
        if spec.approvers.empty:
            self.warn(
                node,
                f"{key}.approval.approvers",
                "no approvers: only operators with the state store can approve "
                "(veilgate approvals approve)",
            )
        fields["approval"] = spec
        return True

    # -- warnings across rules ---------------------------------------------------------------

    def lint_tiers(self, tiers: list[Tier]) -> None:
        seen: list[Tier] = []
        for t in tiers:
            for earlier in seen:
                if _match_covers(earlier.match, t.match):
                    self.issues.append(
                        Issue(
                            self.file,
                            t.line,
                            f"tier {t.name}",
                            f"unreachable: every principal it matches is taken by tier "
                            f"{earlier.name} (line {earlier.line})",
                            "warning",
                        )
                    )
                    break
            seen.append(t)
            for i, r in enumerate(t.rules):
                where = f"rule {r.id}"
                if not r.has_selectors and r.action != "allow":
                    self.issues.append(
                        Issue(
                            self.file,
                            r.line,
                            where,
                            f"{r.action} rule without selectors matches every statement: "
                            "less restrictive rules of this tier never take effect",
                            "warning",
                        )
                    )
                for prev in t.rules[:i]:
                    if (
                        prev.action != "allow"
                        and SEVERITY[prev.action] >= SEVERITY[r.action]
                        and _selectors_cover(prev, r)
                    ):
                        self.issues.append(
                            Issue(
                                self.file,
                                r.line,
                                where,
                                f"unreachable: rule {prev.id} (line {prev.line}) already "
                                f"{prev.action}s everything this rule matches",
                                "warning",
                            )
                        )
                        break


def _match_covers(a: TierMatch, b: TierMatch) -> bool:
    """True when every principal ``b`` matches is also matched by ``a`` (conservative)."""
    for k in MATCH_KEYS:
        av = getattr(a, k)
        bv = getattr(b, k)
        if av is None:
            continue
        if bv is None:
            return False
        if isinstance(av, bool):
            if av != bv:
                return False
        elif not bv <= av:
            return False
    return True


def _selectors_cover(prev: Rule, r: Rule) -> bool:
    """True when deny/approve rule ``prev`` matches every statement allow/deny rule ``r`` can."""
    if r.action == "allow":
        # Everything an allow rule covers has classes within its ``classes``: shadowed when prev
        # matches on classes alone and those include them all.
        if prev.constructs is not None or prev.tables is not None or prev.functions is not None:
            return False
        return prev.classes is None or (r.classes is not None and r.classes <= prev.classes)
    for p, q in (
        (prev.classes, r.classes),
        (prev.constructs, r.constructs),
    ):
        if p is None:
            continue
        if q is None or not q <= p:
            return False
    for pt, qt in ((prev.tables, r.tables), (prev.functions, r.functions)):
        if pt is None:
            continue
        if qt is None or not set(qt) <= set(pt):
            return False
    return True
