"""Structured logging: one JSON object per line.

Use :func:`event` for everything operational: ``event(log, "auth_failed", reason="expired")``.
Fields must never hold a token, a password or an unmasked value; pass identities as
``Principal.label()``.  As a last line of defence both formatters remove JWT-shaped text from
every string field and redact credential-looking values of the client-chosen name fields
(``user``, ``application_name``; see :mod:`veilgate.redact`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Any

from .redact import redact_name, scrub

SESSION: ContextVar[dict[str, Any] | None] = ContextVar("veilgate_session", default=None)
"""The session a line is logged for: a dict the session fills in as it learns (``session`` id,
``tenant``, ``subject``, ``tier``, ``target``).  Set in the task that accepts the connection, so
every callback of its transports (which copy that context) shares the same dict; the JSON
formatter adds its fields to each line (explicit fields win)."""


def rfc3339(ts: float) -> str:
    """``2026-12-07T17:40:00.123456Z`` (UTC, microseconds)."""
    stamp = _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "pid": record.process if record.process is not None else os.getpid(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        session = SESSION.get()
        if session:
            out.update(_safe_fields(session))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(_safe_fields(fields))
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _safe_fields(getattr(record, "fields", None) or {})
        kv = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():5} {record.name}: {record.getMessage()} {kv}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


_NAME_FIELDS = frozenset({"user", "username", "application_name"})


def _safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with credential-looking names redacted and token-shaped text removed."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if isinstance(v, str):
            v = redact_name(v) if k in _NAME_FIELDS else scrub(v)
        out[k] = v
    return out


def setup(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure the root ``veilgate`` logger (idempotent)."""
    root = logging.getLogger("veilgate")
    root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"veilgate.{name}")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
