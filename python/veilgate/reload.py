"""What a configuration reload may change while the gateway runs, and what it reports.

``veilgate serve`` re-reads its whole configuration file on SIGHUP, on ``veilgate reload`` and on
``POST /v1/admin/reload``.  The new file is validated exactly like ``veilgate config check`` (every
error names file, line and key); a file that does not validate changes nothing.  Otherwise the new
configuration becomes the next *generation*: new sessions get its tokens, identity providers,
targets and upstream credentials, client certificate and key, limits, log level and policy, while
running sessions keep the identity, tier and upstream login they started with.

Some settings cannot change under a running process (the listening addresses, the state store,
the session recorder's directory); a changed one is reported in ``restart_required`` and the
running value stays.  Removing the ``policy`` or ``audit`` section is refused: a half-written
file looks exactly like that, and it must never switch enforcement or recording off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from veilgate.config_model import GatewayConfig

__all__ = ["ReloadOutcome", "refused_changes", "restart_required", "without_restart_changes"]

_RESTART_KEYS: dict[str, tuple[str, ...] | None] = {
    "listen": ("host", "port", "backlog", "handover_socket"),
    "admin": ("host", "port", "enabled"),
    "state": None,
    "approvals": None,
    "server": None,
}
"""Sections (and their keys; None = every key) a running process cannot take over."""

_AUDIT_LIVE = ("key", "old_keys")
"""``audit`` keys a reload takes (the recorder re-reads the signing key itself)."""


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The result of one reload request."""

    ok: bool
    generation: int
    """The configuration generation live after the request."""
    errors: tuple[str, ...] = ()
    """Why the file was refused (``config check`` lines); empty when applied."""
    changed: tuple[str, ...] = ()
    """Top-level sections whose values changed."""
    restart_required: tuple[str, ...] = ()
    """Changed keys that keep their running value until a restart."""
    masking_key: dict[str, Any] | None = None
    """The masking hash key generation live after the request (generation, source,
    fingerprint, ``changed`` by this request, ``error`` of the last read; never the key);
    None when the policy does not hash."""

    def to_json(self) -> dict[str, Any]:
        return {
            "result": "applied" if self.ok else "failed",
            "generation": self.generation,
            "errors": list(self.errors),
            "changed": list(self.changed),
            "restart_required": list(self.restart_required),
            "masking_key": self.masking_key,
        }


def _diff(prefix: str, old: Any, new: Any, keys: Iterable[str] | None) -> list[str]:
    if old == new:
        return []
    if old is None or new is None or not dataclasses.is_dataclass(old):
        return [prefix]
    names = [f.name for f in dataclasses.fields(old)] if keys is None else list(keys)
    return [f"{prefix}.{n}" for n in names if getattr(old, n) != getattr(new, n)]


def restart_required(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Keys that differ between ``old`` and ``new`` but only take effect after a restart."""
    out: list[str] = []
    for section, keys in _RESTART_KEYS.items():
        out += _diff(section, getattr(old, section), getattr(new, section), keys)
    if old.audit is not None and new.audit is not None:
        audit_keys = [f.name for f in dataclasses.fields(old.audit) if f.name not in _AUDIT_LIVE]
        out += _diff("audit", old.audit, new.audit, audit_keys)
    elif old.audit is None and new.audit is not None:
        out.append("audit")
    if old.policy is not None and new.policy is not None:
        out += _diff("policy", old.policy, new.policy, ("audit_log",))
    return out


def refused_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Changes a reload refuses outright, as ``config check``-style messages."""
    source = str(new.source or old.source or "<config>")
    out = []
    for section, what in (("policy", "statement policy"), ("audit", "session recording")):
        if getattr(old, section) is not None and getattr(new, section) is None:
            out.append(
                f"{source}: {section}: the section is gone; a reload never turns the {what} off "
                "(a half-written file looks like this): restart to remove it"
            )
    return out


def without_restart_changes(old: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """``new`` with the running values of everything :func:`restart_required` reports."""
    listen = dataclasses.replace(
        new.listen,
        host=old.listen.host,
        port=old.listen.port,
        backlog=old.listen.backlog,
        handover_socket=old.listen.handover_socket,
    )
    audit = old.audit
    if old.audit is not None and new.audit is not None:
        audit = dataclasses.replace(old.audit, key=new.audit.key, old_keys=new.audit.old_keys)
    policy = new.policy
    if old.policy is not None and policy is not None:
        policy = dataclasses.replace(policy, audit_log=old.policy.audit_log)
    return dataclasses.replace(
        new,
        listen=listen,
        admin=dataclasses.replace(
            new.admin, host=old.admin.host, port=old.admin.port, enabled=old.admin.enabled
        ),
        state=old.state,
        approvals=old.approvals,
        server=old.server,
        audit=audit,
        policy=policy,
    )


def changed_sections(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(GatewayConfig)
        if f.metadata.get("config", True) and getattr(old, f.name) != getattr(new, f.name)
    ]
