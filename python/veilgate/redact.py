"""Keep tokens out of logs and audit events even when a client puts one where a name belongs.

A client may type its token into the user name field (a misconfigured driver, an agent that
mixes up its settings): the startup ``user`` is then a bearer credential.  :func:`redact_name`
replaces user names (and other client-chosen names: ``application_name``) that look like
credentials -- JWT-shaped, or long and high-entropy -- by a placeholder that keeps only their
length; :func:`scrub` removes JWT-shaped substrings from any text.  The log formatters scrub
every string field, and the gateway stores the redacted user name for its logs and records.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Final

__all__ = ["redact_name", "scrub"]

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_TOKENISH: Final = re.compile(r"[A-Za-z0-9+/=_.~-]+")
_MIN_SECRET_LEN: Final = 24
_MIN_ENTROPY: Final = 3.5
"""Bits per character above which a long name is taken for a secret (random base64 has ~6,
hex ~4, words and ordinary identifiers well under 3.5)."""


def _entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def redact_name(name: str | None) -> str | None:
    """``name`` unless it looks like a credential (then ``<redacted N chars>``)."""
    if name is None:
        return None
    if _JWT.search(name) or (
        len(name) >= _MIN_SECRET_LEN
        and _TOKENISH.fullmatch(name) is not None
        and _entropy(name) >= _MIN_ENTROPY
    ):
        return f"<redacted {len(name)} chars>"
    return name


def scrub(text: str) -> str:
    """``text`` with JWT-shaped substrings replaced (cheap when there are none)."""
    if "eyJ" not in text:
        return text
    return _JWT.sub("<redacted token>", text)
