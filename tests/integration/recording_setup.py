"""Shared setup of the session-recording tests: a gateway that records into a temporary
directory, and helpers to read what it wrote."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle

from veilgate.audit import reader
from veilgate.config_model import (
    AuditConfig,
    AuditFailureMode,
    AuditKeyConfig,
    GatewayConfig,
    StateBackend,
)

KEY_ID = "k1"


def audit_config(directory: Path, key_file: Path, **overrides: Any) -> AuditConfig:
    cfg = AuditConfig(
        dir=str(directory),
        key=AuditKeyConfig(id=KEY_ID, file=key_file),
        flush_interval_ms=20,
        fsync=False,
    )
    return replace(cfg, **overrides) if overrides else cfg


def make_key(tmp: Path, name: str = "audit.key") -> Path:
    path = tmp / name
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


def with_audit(audit: AuditConfig) -> Callable[[GatewayConfig], GatewayConfig]:
    """The audit section, and the state store (the session index) beside the recording."""

    def transform(cfg: GatewayConfig) -> GatewayConfig:
        state = cfg.state
        if state.backend is StateBackend.SQLITE and not Path(state.path).is_absolute():
            state = replace(state, path=str(Path(audit.dir).parent / "state.db"))
        return replace(cfg, audit=audit, state=state)

    return transform


def keyring(audit: AuditConfig) -> dict[str, bytes]:
    return audit.keyring()


def recorder_of(handle: GatewayHandle) -> Any:
    gw = handle.thread.gateway
    assert gw is not None and gw.recorder is not None
    return gw.recorder


def flush(handle: GatewayHandle, timeout: float = 15.0) -> None:
    """Wait until the gateway has written every record queued so far."""
    assert recorder_of(handle).wait_written(timeout), "the audit writer did not catch up"


def wait_sessions_ended(handle: GatewayHandle, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while handle.session_count() > 0:
        assert time.monotonic() < deadline, "sessions did not end"
        time.sleep(0.02)


def sessions(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return reader.sessions(directory)


def statements(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "statement"]


def psql(t: pw.Target, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", t.conninfo(with_password=False), "-X", "-A", "-t", *args],
        env=t.psql_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def only_session(directory: Path) -> list[dict[str, Any]]:
    s = sessions(directory)
    assert len(s) == 1, list(s)
    return next(iter(s.values()))


__all__ = [
    "KEY_ID",
    "AuditFailureMode",
    "audit_config",
    "flush",
    "keyring",
    "make_key",
    "only_session",
    "psql",
    "recorder_of",
    "sessions",
    "statements",
    "wait_sessions_ended",
    "with_audit",
]
