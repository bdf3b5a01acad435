"""Bounded statement text for logs and audit events.

An agent can send statements of many megabytes; an audit event (or a log line, or a cached
decision) that keeps the whole text lets one client grow every other client's costs.  Events carry
the statement's fingerprint (which identifies it whatever its constants) plus :func:`sql_excerpt`:
at most ``limits.audit_sql_bytes`` bytes of the text, cut on a character boundary, and the full
length so a reader knows it was cut.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_AUDIT_SQL_BYTES", "sql_excerpt", "utf8_length"]

DEFAULT_AUDIT_SQL_BYTES: Final = 4096


def sql_excerpt(text: str, max_bytes: int = DEFAULT_AUDIT_SQL_BYTES) -> str:
    """At most ``max_bytes`` UTF-8 bytes of ``text`` (never half a character)."""
    if len(text) <= max_bytes // 4:
        return text  # even all 4-byte characters fit
    head = text[:max_bytes]  # a character is at least one byte: this holds enough
    raw = head.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return head
    return raw[:max_bytes].decode("utf-8", "ignore")


def utf8_length(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes (what the client sent)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
