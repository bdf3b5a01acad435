"""Structured logging: one JSON object per line.

Use :func:`event` for everything operational: ``event(log, "auth_failed", reason="expired")``.
Fields must never hold a token, a password or an unmasked value; pass identities as
``Principal.label()``.  As a last line of defence both formatters remove JWT-shaped text from
every string field and redact credential-looking values of the client-chosen name fields
(``user``, ``application_name``; see :mod:`veilgate.redact`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .redact import redact_name, scrub

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
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
