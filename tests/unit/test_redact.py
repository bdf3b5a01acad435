"""Tokens typed where a name belongs never reach a log line (issue 10 item 7)."""

from __future__ import annotations

import io
import json
import logging
import secrets

from veilgate import log
from veilgate.redact import redact_name, scrub

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZ2VudCIsImF1ZCI6InZnIn0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
)


def test_names_that_look_like_credentials_are_redacted() -> None:
    for secret in (JWT, "vg-" + secrets.token_urlsafe(32), secrets.token_hex(24)):
        out = redact_name(secret)
        assert out == f"<redacted {len(secret)} chars>", secret
    for name in ("agent", "ci-bot", "ada@example.com", "svc_reporting_2024", "postgres", None):
        assert redact_name(name) == name


def test_scrub_removes_embedded_tokens() -> None:
    assert scrub(f"user {JWT} failed") == "user <redacted token> failed"
    assert scrub("nothing here") == "nothing here"


def test_every_log_line_is_scrubbed() -> None:
    root = logging.getLogger("veilgate")
    saved = (list(root.handlers), root.propagate, root.level)
    try:
        _scrubbed_lines()
    finally:
        root.handlers[:] = saved[0]
        root.propagate = saved[1]
        root.setLevel(saved[2])


def _scrubbed_lines() -> None:
    stream = io.StringIO()
    log.setup("info", "json", stream)
    logger = log.get("test.redact")
    static = "vg-" + secrets.token_urlsafe(32)
    log.event(logger, "auth_failed", user=static, application_name=JWT, detail=f"token {JWT}")
    log.setup("info", "text", stream)
    log.event(logger, "auth_failed", user=JWT, detail=f"x {JWT}")
    out = stream.getvalue()
    assert JWT not in out and static not in out
    first = json.loads(out.splitlines()[0])
    assert first["user"].startswith("<redacted") and first["detail"] == "token <redacted token>"
