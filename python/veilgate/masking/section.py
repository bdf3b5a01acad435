"""Validation of the policy file's ``masking:`` section (YAML nodes → :class:`MaskingPolicy`).

Called by :mod:`veilgate.policy.loader` with its compiler as the reporter, so every problem names
the file, the line and the key (``policy.yaml:31: masking.columns[2].op: ...``) like the rest of
the file.  Regexes are compiled here with Python's ``re`` as a first check; the native engine uses
Rust's ``regex`` crate (no look-around, no backreferences), so those constructs are refused here
rather than at the first session.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .policy import (
    ALLOWED_USES,
    BUILTIN_ENTITIES,
    OPERATOR_KINDS,
    UNKNOWN_LINEAGE_ACTIONS,
    ColumnRule,
    CustomEntity,
    JsonRule,
    MaskingPolicy,
    OperatorSpec,
)

__all__ = ["compile_masking"]

_KEYS = (
    "apply_to",
    "hash_key_env",
    "hash_key_file",
    "detectors",
    "custom",
    "operators",
    "columns",
    "scan_unknown",
    "unknown_lineage",
)
_OP_KEYS = ("op", "value", "keep_first", "keep_last", "mask_char", "keep_separators")
_RULE_KEYS = ("column", "name", "scan", "allow", "json", *_OP_KEYS)
_ENTITY_RX = re.compile(r"[A-Z][A-Z0-9_]*")
_RESERVED_ENTITIES = frozenset({"COLUMN", "MASKED", "DEFAULT"})
"""Names the planner counts under: whole-column operators, redaction, the default operator."""
_ENV_RX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Constructs Python's re accepts and Rust's regex crate refuses.
_UNSUPPORTED_RX = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]|\(\?P=")


class Reporter(Protocol):
    """The loader's compiler: error/warn plus its node helpers."""

    file: str

    def error(self, node: Node | None, key: str, message: str) -> None: ...
    def warn(self, node: Node | None, key: str, message: str) -> None: ...
    def mapping(
        self, node: Node, key: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[Node, Node]] | None: ...
    def scalar(self, node: Node) -> Any: ...
    def string(self, node: Node, key: str) -> str | None: ...
    def choice(self, node: Node, key: str, choices: tuple[str, ...]) -> str | None: ...
    def string_list(self, node: Node, key: str, check: Any = None) -> list[str] | None: ...


def compile_masking(c: Reporter, node: Node, tier_names: set[str]) -> MaskingPolicy | None:
    """Compile the section; ``None`` (with errors reported) when it is not usable."""
    if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
        return MaskingPolicy(source=c.file)
    m = c.mapping(node, "masking", _KEYS)
    if m is None:
        return None
    errors_before = _count_errors(c)
    kw: dict[str, Any] = {"source": c.file}

    if "apply_to" in m:
        vn = m["apply_to"][1]
        names = c.string_list(vn, "masking.apply_to")
        if names is not None:
            if not names:
                c.warn(vn, "masking.apply_to", "empty list: no tier is masked")
            for i, n in enumerate(names):
                if tier_names and n not in tier_names:
                    item = vn.value[i] if isinstance(vn, SequenceNode) else vn
                    c.error(item, f"masking.apply_to[{i}]", f"no tier named {n!r}")
            kw["apply_to"] = frozenset(names)

    if "hash_key_env" in m and "hash_key_file" in m:
        c.error(
            m["hash_key_file"][0],
            "masking.hash_key_file",
            "give hash_key_env or hash_key_file, not both",
        )
    if "hash_key_env" in m:
        vn = m["hash_key_env"][1]
        env = c.string(vn, "masking.hash_key_env")
        if env is not None and not _ENV_RX.fullmatch(env):
            c.error(vn, "masking.hash_key_env", "expected an environment variable name")
        kw["hash_key_env"] = env
    if "hash_key_file" in m:
        path = c.string(m["hash_key_file"][1], "masking.hash_key_file")
        kw["hash_key_file"] = Path(path) if path is not None else None

    if "detectors" in m:
        vn = m["detectors"][1]

        def check_detector(n: Node, where: str, v: str) -> None:
            if v not in BUILTIN_ENTITIES:
                c.error(n, where, f"unknown detector {v!r} (one of {', '.join(BUILTIN_ENTITIES)})")

        dets = c.string_list(vn, "masking.detectors", check_detector)
        if dets is not None:
            kw["detectors"] = tuple(dict.fromkeys(dets))

    custom: list[CustomEntity] = []
    if "custom" in m:
        custom = _custom(c, m["custom"][1], set(kw.get("detectors", BUILTIN_ENTITIES)))
        kw["custom"] = tuple(custom)
    entities = set(kw.get("detectors", BUILTIN_ENTITIES)) | {e.entity for e in custom}

    if "operators" in m:
        kw["operators"] = _operators(c, m["operators"][1], entities, kw)

    if "columns" in m:
        kw["columns"] = tuple(_columns(c, m["columns"][1]))

    if "scan_unknown" in m:
        vn = m["scan_unknown"][1]
        v = c.scalar(vn) if isinstance(vn, ScalarNode) else None
        if not isinstance(v, bool):
            c.error(vn, "masking.scan_unknown", f"expected true or false, got {_show(c, vn)}")
        else:
            kw["scan_unknown"] = v
    if "unknown_lineage" in m:
        v = _choice(c, m["unknown_lineage"][1], "masking.unknown_lineage", UNKNOWN_LINEAGE_ACTIONS)
        if v is not None:
            kw["unknown_lineage"] = v

    if _count_errors(c) > errors_before:
        return None
    policy = MaskingPolicy(**kw)
    if policy.uses_hash and policy.hash_key_env is None and policy.hash_key_file is None:
        c.error(
            _first_hash_op(node) or node,
            "masking.hash_key_env",
            "a hash operator is used: set hash_key_env or hash_key_file",
        )
        return None
    return policy


def _first_hash_op(root: Node) -> Node | None:
    """The first ``op: hash`` value node under ``root`` (where the missing-key error points)."""
    stack: list[Node] = [root]
    while stack:
        n = stack.pop(0)
        if isinstance(n, MappingNode):
            for k, v in n.value:
                if getattr(k, "value", None) == "op" and getattr(v, "value", None) == "hash":
                    found: Node = v
                    return found
                stack.append(v)
        elif isinstance(n, SequenceNode):
            stack.extend(n.value)
    return None


def _count_errors(c: Reporter) -> int:
    issues = getattr(c, "issues", [])
    return sum(1 for i in issues if getattr(i, "severity", "error") == "error")


def _show(c: Reporter, node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(c.scalar(node))
    return "a mapping" if isinstance(node, MappingNode) else "a list"


def _choice(c: Reporter, node: Node, key: str, choices: tuple[str, ...]) -> str | None:
    # By the raw text: a plain ``null`` is YAML's null, but here it names the operator.
    if isinstance(node, ScalarNode) and node.value in choices:
        return str(node.value)
    return c.choice(node, key, choices)


def _int(c: Reporter, node: Node, key: str) -> int | None:
    v = c.scalar(node) if isinstance(node, ScalarNode) else None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 1_000_000:
        c.error(node, key, f"expected a non-negative integer, got {_show(c, node)}")
        return None
    return v


def _operator(
    c: Reporter,
    node: Node,
    key: str,
    *,
    allowed_keys: tuple[str, ...],
    allow_keep: bool,
    m: dict[str, tuple[Node, Node]] | None = None,
) -> OperatorSpec | None:
    if m is None:
        m = c.mapping(node, key, allowed_keys)
        if m is None:
            return None
    kinds = (*OPERATOR_KINDS, "keep") if allow_keep else OPERATOR_KINDS
    if "op" not in m:
        c.error(node, f"{key}.op", f"required key missing (one of {', '.join(kinds)})")
        return None
    kind = _choice(c, m["op"][1], f"{key}.op", kinds)
    if kind is None:
        return None
    ok = True
    kw: dict[str, Any] = {}
    for k in ("keep_first", "keep_last"):
        if k in m:
            if kind != "partial":
                c.error(m[k][0], f"{key}.{k}", f"only for op partial (op is {kind})")
                ok = False
                continue
            v = _int(c, m[k][1], f"{key}.{k}")
            ok = ok and v is not None
            kw[k] = v
    if "mask_char" in m:
        vn = m["mask_char"][1]
        v = c.scalar(vn) if isinstance(vn, ScalarNode) else None
        if kind != "partial":
            c.error(m["mask_char"][0], f"{key}.mask_char", f"only for op partial (op is {kind})")
            ok = False
        elif not isinstance(v, str) or len(v) != 1:
            c.error(vn, f"{key}.mask_char", f"expected one character, got {_show(c, vn)}")
            ok = False
        else:
            kw["mask_char"] = v
    if "keep_separators" in m:
        vn = m["keep_separators"][1]
        v = c.scalar(vn) if isinstance(vn, ScalarNode) else None
        if kind != "partial":
            c.error(
                m["keep_separators"][0],
                f"{key}.keep_separators",
                f"only for op partial (op is {kind})",
            )
            ok = False
        elif not isinstance(v, bool):
            c.error(vn, f"{key}.keep_separators", f"expected true or false, got {_show(c, vn)}")
            ok = False
        else:
            kw["keep_separators"] = v
    if "value" in m:
        vn = m["value"][1]
        v = c.scalar(vn) if isinstance(vn, ScalarNode) else None
        if kind != "replace":
            c.error(m["value"][0], f"{key}.value", f"only for op replace (op is {kind})")
            ok = False
        elif not isinstance(v, str):
            c.error(vn, f"{key}.value", f"expected a string, got {_show(c, vn)}")
            ok = False
        else:
            kw["value"] = v
    if kind == "partial" and ok and not kw.get("keep_first") and not kw.get("keep_last"):
        c.warn(node, key, "partial without keep_first/keep_last masks every character")
    return OperatorSpec(kind, **kw) if ok else None


def _operators(
    c: Reporter, node: Node, entities: set[str], kw: dict[str, Any]
) -> dict[str, OperatorSpec]:
    """``operators:`` keys are entity names (or ``default``); sets ``kw["default_operator"]``."""
    ops: dict[str, OperatorSpec] = {}
    if not isinstance(node, MappingNode):
        c.error(node, "masking.operators", f"expected a mapping, got {_show(c, node)}")
        return ops
    for kn, vn in node.value:
        name = str(kn.value) if isinstance(kn, ScalarNode) else ""
        where = f"masking.operators.{name}"
        if name in ops or (name == "default" and "default_operator" in kw):
            c.error(kn, where, "duplicate key")
            continue
        if name != "default" and name not in entities:
            if name in BUILTIN_ENTITIES:
                c.warn(kn, where, f"detector {name!r} is not enabled: this operator is unused")
            else:
                c.error(kn, where, f"unknown entity {name!r} (not a detector or custom entity)")
                continue
        spec = _operator(c, vn, where, allowed_keys=_OP_KEYS, allow_keep=False)
        if spec is None:
            continue
        if name == "default":
            kw["default_operator"] = spec
        else:
            ops[name] = spec
    return ops


def _regex_problem(rx: str) -> str | None:
    """Why ``rx`` cannot be a detector, or None.  The engine's own parser (Rust ``regex``) is
    the authority when it is importable; Python's ``re`` gives the readable message."""
    if _UNSUPPORTED_RX.search(rx):
        return "look-around and backreferences are not supported"
    py_error: str | None = None
    compiled: re.Pattern[str] | None = None
    try:
        compiled = re.compile(rx)
    except re.error as exc:
        py_error = f"bad regex: {exc.msg}"
    native_error = _native_regex_error(rx)
    if native_error is not None:
        return py_error or f"bad regex for the masking engine (Rust regex syntax): {native_error}"
    if py_error is not None and not _native_available():
        return py_error
    if compiled is not None and compiled.fullmatch(""):
        return "regex matches the empty string"
    return None


def _native_available() -> bool:
    try:
        import veilgate_native as native
    except ImportError:  # pragma: no cover - the package depends on it
        return False
    return hasattr(native, "Masker")


def _native_regex_error(rx: str) -> str | None:
    if not _native_available():
        return None
    import veilgate_native as native

    try:
        native.Masker(entities=[], custom_patterns=[("LINT", rx)])
    except ValueError as exc:
        return str(exc).replace('for entity "LINT": ', "")
    return None


def _custom(c: Reporter, node: Node, detectors: set[str]) -> list[CustomEntity]:
    out: list[CustomEntity] = []
    if not isinstance(node, SequenceNode):
        c.error(node, "masking.custom", f"expected a list, got {_show(c, node)}")
        return out
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        key = f"masking.custom[{i}]"
        m = c.mapping(item, key, ("entity", "regex", "words"))
        if m is None:
            continue
        if "entity" not in m:
            c.error(item, f"{key}.entity", "required key missing")
            continue
        en = m["entity"][1]
        entity = c.string(en, f"{key}.entity")
        if entity is None:
            continue
        if not _ENTITY_RX.fullmatch(entity):
            c.error(en, f"{key}.entity", f"entity names are UPPER_CASE words, got {entity!r}")
            continue
        if entity in BUILTIN_ENTITIES or entity in detectors:
            c.error(en, f"{key}.entity", f"{entity!r} is a built-in detector")
            continue
        if entity in _RESERVED_ENTITIES:
            c.error(en, f"{key}.entity", f"{entity!r} is reserved (audit counts use it)")
            continue
        if entity in seen:
            c.error(en, f"{key}.entity", f"duplicate custom entity {entity!r}")
            continue
        seen.add(entity)
        if ("regex" in m) == ("words" in m):
            c.error(item, key, "give exactly one of regex or words")
            continue
        if "regex" in m:
            rn = m["regex"][1]
            rx = c.string(rn, f"{key}.regex")
            if rx is None:
                continue
            problem = _regex_problem(rx)
            if problem is not None:
                c.error(rn, f"{key}.regex", problem)
                continue
            out.append(CustomEntity(entity, regex=rx))
        else:
            words = c.string_list(m["words"][1], f"{key}.words")
            if words is None:
                continue
            if not words:
                c.error(m["words"][1], f"{key}.words", "empty word list")
                continue
            out.append(CustomEntity(entity, words=tuple(words)))
    return out


def _columns(c: Reporter, node: Node) -> list[ColumnRule]:
    out: list[ColumnRule] = []
    if not isinstance(node, SequenceNode):
        c.error(node, "masking.columns", f"expected a list, got {_show(c, node)}")
        return out
    for i, item in enumerate(node.value):
        key = f"masking.columns[{i}]"
        m = c.mapping(item, key, _RULE_KEYS)
        if m is None:
            continue
        line = item.start_mark.line + 1
        if ("column" in m) == ("name" in m):
            c.error(item, key, "give exactly one of column (schema.table.column) or name")
            continue
        by = "column" if "column" in m else "name"
        pn = m[by][1]
        pattern = c.string(pn, f"{key}.{by}")
        if pattern is None:
            continue
        if by == "column" and pattern.count(".") != 2:
            c.error(
                pn,
                f"{key}.column",
                f"expected schema.table.column (globs allowed), got {pattern!r}",
            )
            continue
        scan = False
        if "scan" in m:
            sn = m["scan"][1]
            v = c.scalar(sn) if isinstance(sn, ScalarNode) else None
            if not isinstance(v, bool):
                c.error(sn, f"{key}.scan", f"expected true or false, got {_show(c, sn)}")
                continue
            scan = v
        allow: frozenset[str] = frozenset()
        if "allow" in m:
            words = _allowed_uses(c, m["allow"][1], f"{key}.allow")
            if words is None:
                continue
            allow = words
        if "json" in m:
            extra = [k for k in m if k in (*_OP_KEYS, "scan")]
            if extra:
                c.error(m[extra[0]][0], f"{key}.{extra[0]}", "json: takes no op or scan beside it")
                continue
            paths = _json_paths(c, m["json"][1], f"{key}.json")
            if paths is not None:
                out.append(ColumnRule.build(pattern, by, None, False, line, allow, paths))
            continue
        op_keys = [k for k in m if k in _OP_KEYS]
        if scan:
            if op_keys:
                c.error(m[op_keys[0]][0], f"{key}.{op_keys[0]}", "scan: true takes no operator")
                continue
            out.append(ColumnRule.build(pattern, by, None, True, line, allow))
            continue
        if "scan" in m and not op_keys:
            c.error(item, f"{key}.op", "scan: false needs an op")
            continue
        if not op_keys:
            c.error(item, f"{key}.op", "required key missing (an op, or scan: true)")
            continue
        spec = _operator(
            c, item, key, allowed_keys=_RULE_KEYS, allow_keep=True, m={k: m[k] for k in op_keys}
        )
        if spec is not None:
            if spec.kind == "keep" and allow:
                c.warn(m["allow"][0], f"{key}.allow", "op keep masks nothing: allow has no effect")
            out.append(ColumnRule.build(pattern, by, spec, False, line, allow))
    return out


def _allowed_uses(c: Reporter, node: Node, key: str) -> frozenset[str] | None:
    """``allow: [equals, join]``: uses of a masked column the tier permits (see
    :data:`~veilgate.masking.policy.ALLOWED_USES`)."""
    words = c.string_list(node, key)
    if words is None:
        return None
    bad = [w for w in words if w not in ALLOWED_USES]
    if bad:
        c.error(node, key, f"unknown use {bad[0]!r} (one of {', '.join(ALLOWED_USES)})")
        return None
    return frozenset(words)


def _json_paths(c: Reporter, node: Node, key: str) -> tuple[JsonRule, ...] | None:
    """``json:`` of a column rule: JSON path -> operator mapping (``{op: ...}``, ``keep``
    included, or ``{scan: true}``)."""
    if not isinstance(node, MappingNode) or not node.value:
        c.error(node, key, "expected a mapping of JSON paths to operators")
        return None
    out: list[JsonRule] = []
    seen: set[str] = set()
    ok = True
    for kn, vn in node.value:
        path = str(kn.value) if isinstance(kn, ScalarNode) else ""
        where = f"{key}.{path}"
        problem = _json_path_problem(path)
        if problem is not None:
            c.error(kn, where, problem)
            ok = False
            continue
        if path in seen:
            c.error(kn, where, "duplicate JSON path")
            ok = False
            continue
        seen.add(path)
        m = c.mapping(vn, where, (*_OP_KEYS, "scan"))
        if m is None:
            ok = False
            continue
        if "scan" in m:
            sn = m["scan"][1]
            v = c.scalar(sn) if isinstance(sn, ScalarNode) else None
            if v is not True or len(m) > 1:
                c.error(sn, f"{where}.scan", "expected scan: true alone")
                ok = False
                continue
            out.append((path, None))
            continue
        spec = _operator(c, vn, where, allowed_keys=_OP_KEYS, allow_keep=True, m=m)
        if spec is None:
            ok = False
            continue
        out.append((path, spec))
    return tuple(out) if ok else None


def _json_path_problem(path: str) -> str | None:
    """Why ``path`` is not a JSON path (the engine's own parser decides), or None."""
    if not path:
        return "empty JSON path"
    if not _native_available():  # pragma: no cover - the package depends on it
        return None
    import veilgate_native as native

    try:
        native.JsonMasker(None, [(path, None)])
    except ValueError as exc:
        return str(exc)
    return None
