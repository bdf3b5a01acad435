"""Load and validate the YAML configuration into :mod:`veilgate.config_model` dataclasses.

The schema is derived from the dataclasses (field name = key, type hint = what the key takes, no
default = required) plus the constraints in each field's ``metadata`` (see :data:`RULES`).  The
walker works on the YAML node tree (``yaml.compose``), so every error names the file, the line and
the key path::

    veilgate.yaml:12: targets.app.port: expected an integer between 1 and 65535, got 'abc'

All errors are collected and raised together as one :class:`ConfigError`.  Values of keys marked
``secret`` (and anything that might be a credential) are never echoed in an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import ssl
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from veilgate.config_model import GatewayConfig, TLSEngine, UpstreamTLSMode

__all__ = ["RULES", "ConfigError", "Issue", "is_loopback", "load", "load_str", "warnings"]

RULES: Mapping[str, str] = {
    "min": "smallest number allowed (int and float fields)",
    "max": "largest number allowed (int and float fields)",
    "what": "how to describe the allowed values in an error message",
    "choices": "tuple of allowed strings",
    "pattern": "regular expression the whole string must match",
    "max_len": "longest string allowed, in UTF-8 bytes",
    "secret": "never echo the value in an error message",
    "raw": "take a plain scalar's text as the string (no int/float/bool resolution)",
    "config": "False: not a configuration key (set by the loader)",
}
"""The ``field(metadata=...)`` keys the loader understands."""

_YAML_INT = "tag:yaml.org,2002:int"
_YAML_FLOAT = "tag:yaml.org,2002:float"
_YAML_NULL = "tag:yaml.org,2002:null"
_YAML_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a configuration file."""

    source: str
    line: int
    """1-based line, 0 when the problem is not tied to a line."""
    path: str
    """Key path such as ``targets.app.port``; empty for the whole file."""
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = tuple(sorted(issues, key=lambda i: (i.line, i.path)))
        super().__init__("\n".join(str(i) for i in self.issues))


class _Invalid(Exception):
    """Raised by the walker after recording an issue: the value cannot be used."""


_MISSING: Any = object()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Walker:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.issues: list[Issue] = []
        self.lines: dict[str, int] = {}
        self.failed: set[str] = set()
        self.ctor = SafeConstructor()

    # -- reporting -------------------------------------------------------------------------------

    def error(self, line: int, path: str, message: str) -> None:
        self.issues.append(Issue(self.source, line, path, message))
        self.failed.add(path)

    def fail(self, node: Node, path: str, message: str) -> typing.NoReturn:
        self.error(_line(node), path, message)
        raise _Invalid

    def path_failed(self, prefix: str) -> bool:
        return any(p == prefix or p.startswith((prefix + ".", prefix + "[")) for p in self.failed)

    def describe(self, node: Node, secret: bool = False) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        if secret:
            return "a value (not shown)"
        value = self.scalar(node)
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return repr(_short(value))
        return _short(str(value))

    def scalar(self, node: Node) -> Any:
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.YAMLError:
            return node.value if isinstance(node, ScalarNode) else None

    # -- the walk --------------------------------------------------------------------------------

    def value(self, node: Node, tp: Any, path: str, meta: Mapping[str, Any]) -> Any:
        self.lines.setdefault(path, _line(node))
        if tp is Any:
            return self.raw(node, path)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            if len(inner) == len(args) - 1 and _is_null(node):
                return None
            assert len(inner) == 1, f"unsupported union {tp}"
            return self.value(node, inner[0], path, meta)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.dataclass(node, tp, path)
        if origin is dict:
            return self.mapping_of(node, args[1], path)
        if origin is tuple:
            assert len(args) == 2 and args[1] is Ellipsis, f"unsupported tuple {tp}"
            return tuple(self.list_of(node, args[0], path))
        if origin is frozenset:
            return frozenset(self.list_of(node, args[0], path))
        if tp is bool:
            value = self.scalar(node) if isinstance(node, ScalarNode) else _MISSING
            if not isinstance(value, bool):
                self.fail(node, path, f"expected true or false, got {self.describe(node)}")
            return value
        if tp is int:
            return self.integer(node, path, meta)
        if tp is float:
            return self.number(node, path, meta)
        if tp is str:
            return self.string(node, path, meta)
        if tp is Path:
            return self.file(node, path, meta)
        if isinstance(tp, type) and issubclass(tp, Enum):
            choices = tuple(str(m.value) for m in tp)
            text = self.string(node, path, {**meta, "choices": choices})
            return tp(text)
        raise AssertionError(f"{path}: unsupported type {tp!r} in the config model")

    def raw(self, node: Node, path: str) -> Any:
        """Plain YAML data (validated later by its own parser); records each key's line."""
        self.lines.setdefault(path, _line(node))
        if isinstance(node, MappingNode):
            return {
                key: self.raw(vnode, _join(path, key))
                for key, _, vnode in self.mapping_pairs(node, path)
            }
        if isinstance(node, SequenceNode):
            return [self.raw(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self.scalar(node)

    def integer(self, node: Node, path: str, meta: Mapping[str, Any]) -> int:
        value = self.scalar(node) if _tag(node) == _YAML_INT else _MISSING
        if type(value) is not int or not _in_range(value, meta):
            self.fail(
                node, path, f"expected {_what(meta, 'an integer')}, got {self.describe(node)}"
            )
        return value

    def number(self, node: Node, path: str, meta: Mapping[str, Any]) -> float:
        value = self.scalar(node) if _tag(node) in (_YAML_INT, _YAML_FLOAT) else _MISSING
        if (
            type(value) not in (int, float)
            or not math.isfinite(value)
            or not _in_range(value, meta)
        ):
            self.fail(node, path, f"expected {_what(meta, 'a number')}, got {self.describe(node)}")
        return float(value)

    def string(self, node: Node, path: str, meta: Mapping[str, Any]) -> str:
        secret = bool(meta.get("secret"))
        value = self.scalar(node) if isinstance(node, ScalarNode) else _MISSING
        if meta.get("raw") and isinstance(node, ScalarNode) and value is not None:
            value = str(node.value)  # e.g. a digest that happens to be all digits
        choices: tuple[str, ...] | None = meta.get("choices")
        if choices is not None:
            if value not in choices:
                allowed = ", ".join(repr(c) for c in choices)
                self.fail(node, path, f"expected one of {allowed}, got {self.describe(node)}")
            return str(value)
        if not isinstance(value, str):
            hint = " (quote it)" if isinstance(node, ScalarNode) and value is not None else ""
            self.fail(node, path, f"expected a string, got {self.describe(node, secret)}{hint}")
        if not value.strip():
            self.fail(node, path, "expected a non-empty string")
        pattern: str | None = meta.get("pattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            what = meta.get("what", f"a string matching {pattern}")
            got = f"{len(value)} characters" if secret else repr(_short(value))
            self.fail(node, path, f"expected {what}, got {got}")
        max_len: int | None = meta.get("max_len")
        if max_len is not None and len(value.encode()) > max_len:
            self.fail(node, path, f"expected at most {max_len} bytes, got {len(value.encode())}")
        return value

    def file(self, node: Node, path: str, meta: Mapping[str, Any]) -> Path:
        text = self.string(node, path, meta)
        resolved = (self.base_dir / Path(text).expanduser()).resolve()
        if not resolved.exists():
            self.fail(node, path, f"file not found: {resolved}")
        if not resolved.is_file():
            self.fail(node, path, f"not a regular file: {resolved}")
        if not os.access(resolved, os.R_OK):
            self.fail(node, path, f"file not readable: {resolved}")
        return resolved

    def list_of(self, node: Node, tp: Any, path: str) -> list[Any]:
        if not isinstance(node, SequenceNode):
            if _is_null(node):
                return []
            self.fail(node, path, f"expected a list, got {self.describe(node)}")
        out = []
        for i, item in enumerate(node.value):
            try:
                out.append(self.value(item, tp, f"{path}[{i}]", {}))
            except _Invalid:
                self.failed.add(path)
        return out

    def mapping_pairs(self, node: Node, path: str) -> list[tuple[str, Node, Node]]:
        """The (key, key node, value node) pairs of a mapping; reports bad and duplicate keys."""
        if not isinstance(node, MappingNode):
            self.fail(node, path or "(top level)", f"expected a mapping, got {self.describe(node)}")
        try:
            self.ctor.flatten_mapping(node)  # resolves `<<: *anchor` merges
        except yaml.YAMLError as e:
            self.fail(node, path, f"invalid merge: {e}")
        seen: dict[str, int] = {}
        pairs = []
        for knode, vnode in node.value:
            key = self.scalar(knode) if isinstance(knode, ScalarNode) else None
            if not isinstance(key, str) or not key:
                self.error(_line(knode), path, f"keys must be strings, got {self.describe(knode)}")
                continue
            sub = _join(path, key)
            if key in seen:
                self.error(_line(knode), sub, f"duplicate key (first on line {seen[key]})")
                continue
            seen[key] = _line(knode)
            self.lines[sub] = _line(knode)
            pairs.append((key, knode, vnode))
        return pairs

    def mapping_of(self, node: Node, tp: Any, path: str) -> dict[str, Any]:
        if _is_null(node):
            return {}
        out: dict[str, Any] = {}
        for key, knode, vnode in self.mapping_pairs(node, path):
            sub = _join(path, key)
            fixed: dict[str, Any] = {}
            if dataclasses.is_dataclass(tp) and "name" in _fields(tp):
                meta = _fields(tp)["name"].metadata
                try:
                    fixed["name"] = self.string(knode, sub, meta)
                except _Invalid:
                    continue
            try:
                out[key] = (
                    self.dataclass(vnode, tp, sub, fixed)
                    if fixed
                    else self.value(vnode, tp, sub, {})
                )
            except _Invalid:
                self.failed.add(sub)
        return out

    def dataclass(
        self, node: Node, cls: type[Any], path: str, fixed: Mapping[str, Any] | None = None
    ) -> Any:
        fixed = fixed or {}
        fields = {
            name: f
            for name, f in _fields(cls).items()
            if f.metadata.get("config", True) and name not in fixed
        }
        pairs = [] if _is_null(node) else self.mapping_pairs(node, path)
        hints = _hints(cls)
        kwargs: dict[str, Any] = dict(fixed)
        unusable = False
        given = set()
        for key, knode, vnode in pairs:
            sub = _join(path, key)
            given.add(key)
            if key not in fields:
                self.error(_line(knode), sub, self.unknown_key_message(cls, key, list(fields)))
                continue
            try:
                kwargs[key] = self.value(vnode, hints[key], sub, fields[key].metadata)
            except _Invalid:
                if _required(fields[key]):
                    unusable = True
        for name, f in fields.items():
            if name not in given and _required(f):
                self.error(_line(node), _join(path, name), "required key is missing")
                unusable = True
        if unusable:
            raise _Invalid
        return cls(**kwargs)

    def unknown_key_message(self, cls: type[Any], key: str, allowed: list[str]) -> str:
        if key == "password" and "password_env" in allowed:
            return (
                "a plaintext password is not accepted in the config file; put it in an "
                "environment variable (password_env) or a file (password_file)"
            )
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            return f"{message} (did you mean {close[0]!r}?)"
        return f"{message} (allowed: {', '.join(allowed)})"


# -- cross-field rules ---------------------------------------------------------------------------


def _check(cfg: GatewayConfig, w: _Walker) -> None:
    def line(*paths: str) -> int:
        for p in paths:
            if p in w.lines:
                return w.lines[p]
        return 1

    if not w.path_failed("tls") and not w.path_failed("listen.host"):
        tls = cfg.tls
        if (tls.cert_file is None) != (tls.key_file is None):
            missing, given = (
                ("key_file", "cert_file") if tls.key_file is None else ("cert_file", "key_file")
            )
            w.error(
                line(f"tls.{given}", "tls"), f"tls.{missing}", f"required when tls.{given} is set"
            )
        elif tls.cert_file is None:
            if not tls.allow_plaintext_loopback:
                w.error(
                    line("tls", "listen"),
                    "tls",
                    "cert_file and key_file are required (clients must use TLS); the "
                    "development switch allow_plaintext_loopback works only on a loopback "
                    "listen.host",
                )
            elif not is_loopback(cfg.listen.host):
                w.error(
                    line("tls.allow_plaintext_loopback", "tls"),
                    "tls.allow_plaintext_loopback",
                    f"only allowed when listen.host is a loopback address, not "
                    f"{cfg.listen.host!r}; configure cert_file and key_file",
                )
        if tls.allow_plaintext_loopback and tls.cert_file and not is_loopback(cfg.listen.host):
            w.error(
                line("tls.allow_plaintext_loopback"),
                "tls.allow_plaintext_loopback",
                f"only allowed when listen.host is a loopback address, not {cfg.listen.host!r}",
            )

    if not cfg.targets and not w.path_failed("targets"):
        w.error(line("targets"), "targets", "at least one target is required")
    login_roles = _check_oidc(cfg, w, line)
    for name, target in cfg.targets.items():
        path = f"targets.{name}"
        if target.password_env is not None and target.password_file is not None:
            w.error(
                line(f"{path}.password_file", path),
                path,
                "password_env and password_file are mutually exclusive; use one",
            )
        for role, login in target.logins.items():
            lpath = f"{path}.logins.{role}"
            if login.password_env is not None and login.password_file is not None:
                w.error(
                    line(f"{lpath}.password_file", lpath),
                    lpath,
                    "password_env and password_file are mutually exclusive; use one",
                )
            elif (
                login.password_env is None
                and login.password_file is None
                and not w.path_failed(lpath)
            ):
                w.error(line(lpath), lpath, "password_env or password_file is required")
            if login_roles is not None and role not in login_roles:
                known = ", ".join(sorted(login_roles)) or "none"
                w.error(
                    line(lpath),
                    lpath,
                    f"no tier uses login_role {role!r} (login roles of the tiers: {known})",
                )
        tls_failed = w.path_failed(f"{path}.tls") or w.path_failed(f"{path}.host")
        if (
            not tls_failed
            and target.tls.mode is UpstreamTLSMode.DISABLE
            and not is_loopback(target.host)
        ):
            w.error(
                line(f"{path}.tls.mode", path),
                f"{path}.tls.mode",
                f"'disable' is only allowed for a loopback host, not {target.host!r}",
            )

    if not cfg.auth.static_tokens and cfg.auth.oidc is None and not w.path_failed("auth"):
        w.error(
            line("auth.static_tokens", "auth"),
            "auth",
            "at least one authentication source is required (auth.static_tokens or auth.oidc)",
        )
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, tok in enumerate(cfg.auth.static_tokens):
        path = f"auth.static_tokens[{i}]"
        if tok.name in names:
            w.error(
                line(f"{path}.name", path),
                f"{path}.name",
                f"duplicate token name {tok.name!r} (also auth.static_tokens[{names[tok.name]}])",
            )
        names.setdefault(tok.name, i)
        digest = tok.sha256.lower()
        if digest in digests:
            w.error(
                line(f"{path}.sha256", path),
                f"{path}.sha256",
                f"same digest as auth.static_tokens[{digests[digest]}]: each token must be unique",
            )
        digests.setdefault(digest, i)

    _check_tls_files(cfg, w, line)
    _check_policy(cfg, w, line)
    _check_state(cfg, w, line)
    _check_approvals(cfg, w, line)
    _check_audit(cfg, w, line)

    limits = cfg.limits
    if not w.path_failed("limits") and limits.write_low_water > limits.write_high_water:
        w.error(
            line("limits.write_low_water", "limits"),
            "limits.write_low_water",
            f"must not exceed limits.write_high_water ({limits.write_high_water})",
        )


def _check_oidc(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> set[str] | None:
    """Validate ``auth.oidc``; returns the login roles tiers (and static tokens) can use, or
    ``None`` when that is unknown (the section is invalid)."""
    from veilgate.identity import providers

    roles: set[str] = set()
    tier_roles: dict[str, str] = {}
    if cfg.auth.oidc is not None:
        if w.path_failed("auth.oidc"):
            return None
        try:
            settings = providers.identity_from_mapping(cfg.auth.oidc, "auth.oidc")
        except providers.ConfigError as e:
            w.error(_nearest_line(w, e.path), e.path, e.message)
            return None
        for rule in settings.rules:
            if rule.login_role is not None:
                roles.add(rule.login_role)
                tier_roles.setdefault(rule.tier, rule.login_role)
    for tok in cfg.auth.static_tokens:
        if tok.tier is not None:
            roles.add(tier_roles.get(tok.tier, tok.tier))
    return roles


def _check_policy(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> None:
    """The policy file must load (its own errors name its file, line and key); the audit log's
    directory must exist."""
    policy = cfg.policy
    if policy is None or w.path_failed("policy"):
        return
    from veilgate.policy.loader import PolicyError, load_policy

    try:
        loaded = load_policy(policy.file)
        if policy.require_end_marker and not loaded.end_marker:
            w.error(
                line("policy.require_end_marker", "policy"),
                "policy.require_end_marker",
                f"{policy.file} does not end with 'end: true' (the end-of-policy marker)",
            )
    except PolicyError as e:
        for issue in e.issues:
            w.error(line("policy.file", "policy"), "policy.file", f"invalid policy: {issue}")
    except OSError as e:
        w.error(line("policy.file", "policy"), "policy.file", f"cannot read: {e}")
    if policy.audit_log is not None:
        parent = (w.base_dir / Path(policy.audit_log).expanduser()).resolve().parent
        if not parent.is_dir():
            w.error(
                line("policy.audit_log", "policy"),
                "policy.audit_log",
                f"directory does not exist: {parent}",
            )


def _check_state(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> None:
    """``state``: a PostgreSQL backend needs its DSN from exactly one place; an SQLite file's
    directory must exist (the file itself is created on first use)."""
    from veilgate.config_model import StateBackend

    state = cfg.state
    if w.path_failed("state"):
        return
    if state.backend is StateBackend.POSTGRES:
        if (state.dsn_env is None) == (state.dsn_file is None):
            w.error(
                line("state.dsn_env", "state.dsn_file", "state"),
                "state",
                "backend postgres needs exactly one of dsn_env or dsn_file",
            )
        return
    if state.dsn_env is not None or state.dsn_file is not None:
        w.error(
            line("state.dsn_env", "state.dsn_file", "state"),
            "state",
            "dsn_env / dsn_file apply to backend postgres only",
        )
    parent = (w.base_dir / Path(state.path).expanduser()).resolve().parent
    if not parent.is_dir():
        w.error(line("state.path", "state"), "state.path", f"directory does not exist: {parent}")


def _check_approvals(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> None:
    """Webhooks: a URL the sender will use, known events, exactly one signing secret."""
    from veilgate.identity.http import check_url

    for i, hook in enumerate(cfg.approvals.webhooks):
        path = f"approvals.webhooks[{i}]"
        if w.path_failed(path):
            continue
        try:
            check_url(hook.url, allow_insecure_http=hook.allow_insecure_http)
        except ValueError as e:
            w.error(line(f"{path}.url", path), f"{path}.url", str(e))
        for event in hook.events:
            if event not in ("request", "decision"):
                w.error(
                    line(f"{path}.events", path),
                    f"{path}.events",
                    f"unknown event {event!r} (expected request, decision)",
                )
        if (hook.secret_env is None) == (hook.secret_file is None):
            w.error(
                line(path),
                path,
                "exactly one of secret_env or secret_file is required (bodies are HMAC-signed)",
            )


def _check_audit(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> None:
    """Keys must be readable and long enough, ids unique; the directory's parent must exist."""
    audit = cfg.audit
    if audit is None or w.path_failed("audit"):
        return
    seen: set[str] = set()
    for path, key in [("audit.key", audit.key)] + [
        (f"audit.old_keys[{i}]", k) for i, k in enumerate(audit.old_keys)
    ]:
        if (key.file is None) == (key.env is None):
            w.error(line(path), path, "set exactly one of file and env")
            continue
        if key.id in seen:
            w.error(line(f"{path}.id", path), f"{path}.id", f"duplicate key id {key.id!r}")
        seen.add(key.id)
        if key.file is not None:
            try:
                key.read()
            except (OSError, ValueError) as e:
                w.error(line(f"{path}.file", path), f"{path}.file", str(e))
    parent = (w.base_dir / Path(audit.dir).expanduser()).resolve().parent
    if not parent.is_dir():
        w.error(line("audit.dir", "audit"), "audit.dir", f"directory does not exist: {parent}")


def _nearest_line(w: _Walker, path: str) -> int:
    """The line of ``path``, or of its closest parent the walker saw."""
    while path:
        if path in w.lines:
            return w.lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return 0


def _no_passphrase() -> str:
    raise ValueError("encrypted private keys are not supported (no passphrase prompt)")


def _check_native_tls(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> None:
    """``tls.engine: native``: rustls must accept the files too (it reads fewer key formats)."""
    import veilgate_native as native

    tls = cfg.tls
    assert tls.cert_file is not None and tls.key_file is not None
    try:
        native.TlsServerConfig(Path(tls.cert_file).read_bytes(), Path(tls.key_file).read_bytes())
    except (ValueError, OSError) as e:
        w.error(
            line("tls.engine", "tls"),
            "tls",
            f"cannot use cert_file/key_file with tls.engine native: {e}",
        )


def _check_tls_files(cfg: GatewayConfig, w: _Walker, line: Callable[..., int]) -> None:
    """Load the PEM files now, so a wrong or mismatched file is a config error with a line."""
    tls = cfg.tls
    if tls.cert_file is not None and tls.key_file is not None and not w.path_failed("tls"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
        except (ssl.SSLError, ValueError, OSError) as e:
            w.error(
                line("tls.cert_file", "tls"),
                "tls",
                f"cannot use cert_file/key_file: {_ssl_reason(e)} (PEM certificate chain and "
                "its unencrypted private key expected)",
            )
        else:
            if tls.engine is TLSEngine.NATIVE:
                _check_native_tls(cfg, w, line)
    for name, target in cfg.targets.items():
        cert, key = target.tls.cert_file, target.tls.key_file
        path = f"targets.{name}.tls.cert_file"
        if cert is None or w.path_failed(path):
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                cert, key, password=_no_passphrase
            )
        except (ssl.SSLError, ValueError, OSError) as e:
            w.error(
                line(path, f"targets.{name}.tls"),
                path,
                f"cannot use cert_file/key_file: {_ssl_reason(e)} (PEM certificate chain and "
                "its unencrypted private key expected)",
            )
    for name, target in cfg.targets.items():
        ca = target.tls.ca_file
        path = f"targets.{name}.tls.ca_file"
        if ca is None or w.path_failed(path):
            continue
        try:
            ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, ValueError, OSError) as e:
            w.error(line(path), path, f"not a PEM CA certificate file: {_ssl_reason(e)}")


_SSL_REASONS = {
    "KEY_VALUES_MISMATCH": "the private key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in the file",
    "PEM lib": "not a PEM certificate or key",
}


def _ssl_reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        text = str(e.reason or e.strerror or e)
        for key, nicer in _SSL_REASONS.items():
            if key in text:
                return nicer
        return text
    return str(e)


# -- entry points --------------------------------------------------------------------------------


def load_str(text: str, source: str = "<config>", base_dir: Path | None = None) -> GatewayConfig:
    """Parse and validate ``text``; ``source`` names it in errors, relative paths resolve
    against ``base_dir`` (default: the current directory)."""
    w = _Walker(source, (base_dir or Path.cwd()).resolve())
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError([Issue(source, line, "", f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([Issue(source, 0, "", f"invalid YAML: {e}")]) from None
    cfg: GatewayConfig | None = None
    try:
        cfg = GatewayConfig() if root is None else w.dataclass(root, GatewayConfig, "")
    except _Invalid:
        cfg = None
    if cfg is not None:
        _check(cfg, w)
    if w.issues or cfg is None:
        raise ConfigError(w.issues)
    if cfg.policy is not None and cfg.policy.audit_log is not None:
        # relative to the configuration file, like every other path
        audit_log = str((w.base_dir / Path(cfg.policy.audit_log).expanduser()).resolve())
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, audit_log=audit_log))
    if cfg.listen.handover_socket is not None:
        handover = str((w.base_dir / Path(cfg.listen.handover_socket).expanduser()).resolve())
        cfg = dataclasses.replace(
            cfg, listen=dataclasses.replace(cfg.listen, handover_socket=handover)
        )
    state_path = str((w.base_dir / Path(cfg.state.path).expanduser()).resolve())
    cfg = dataclasses.replace(cfg, state=dataclasses.replace(cfg.state, path=state_path))
    if cfg.audit is not None:
        audit_dir = str((w.base_dir / Path(cfg.audit.dir).expanduser()).resolve())
        cfg = dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, dir=audit_dir))
    return cfg


def warnings(cfg: GatewayConfig) -> list[str]:
    """Things that are valid but probably wrong where this runs (e.g. an unset password env var).

    Never includes a secret value."""
    out: list[str] = []
    for name, target in cfg.targets.items():
        if target.password_env is not None and not os.environ.get(target.password_env):
            out.append(
                f"targets.{name}.password_env: ${target.password_env} is not set in this "
                "environment (the gateway reads it when it connects upstream)"
            )
        for role, login in target.logins.items():
            if login.password_env is not None and not os.environ.get(login.password_env):
                out.append(
                    f"targets.{name}.logins.{role}.password_env: ${login.password_env} is not "
                    "set in this environment (the gateway reads it when it connects upstream)"
                )
    if cfg.tls.allow_plaintext_loopback:
        out.append("tls.allow_plaintext_loopback: plaintext clients are accepted (development)")
    if cfg.approvals.api and cfg.admin.enabled and not is_loopback(cfg.admin.host):
        out.append(
            f"approvals.api: approvers send their tokens to the admin listener on "
            f"{cfg.admin.host}, which has no TLS: keep it on loopback or behind a TLS proxy"
        )
    if cfg.audit is not None:
        for path, key in [("audit.key", cfg.audit.key)] + [
            (f"audit.old_keys[{i}]", k) for i, k in enumerate(cfg.audit.old_keys)
        ]:
            if key.env is not None and len(os.environ.get(key.env, "")) < 16:
                out.append(
                    f"{path}.env: ${key.env} is not set (or shorter than 16 bytes) in this "
                    "environment (the gateway reads it when it starts)"
                )
    return out


def load(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load ``path``; raises :class:`ConfigError` naming the file, line and key of every error."""
    p = Path(path)
    source = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Issue(source, 0, "", "file not found")]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([Issue(source, 0, "", f"not UTF-8 text: {e.reason}")]) from None
    except OSError as e:
        raise ConfigError([Issue(source, 0, "", f"cannot read: {e.strerror or e}")]) from None
    cfg = load_str(text, source, p.resolve().parent)
    return dataclasses.replace(cfg, source=p.resolve())


# -- helpers -------------------------------------------------------------------------------------


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _tag(node: Node) -> str | None:
    return node.tag if isinstance(node, ScalarNode) else None


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _YAML_NULL


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _what(meta: Mapping[str, Any], kind: str) -> str:
    if "what" in meta:
        return f"{kind} from {meta['what']}"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{kind} between {_num(lo)} and {_num(hi)}"
    if lo is not None:
        return f"{kind} >= {_num(lo)}"
    if hi is not None:
        return f"{kind} <= {_num(hi)}"
    return kind


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _fields(cls: Any) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
