"""The session record's file format, as readers see it (the writer is the native engine).

A *segment* is one file of JSON lines (``segment-000000001.jsonl``).  Every line is one object:

* **header** (first line): ``segment``, ``format``, ``node``, ``created``, ``first_seq``,
  ``first_batch``, ``prev_seal`` (hash of the last seal of the previous segment), signed;
* **record**: ``seq`` (every record of the gateway, contiguous), ``sid`` (session id), ``n``
  (0, 1, ... within the session), ``ts``, ``kind``, the kind's members, ``prev`` (hash of the
  session's record ``n - 1``; empty for ``n = 0``).  A session's last record, ``session_end``,
  is signed (its *terminator*);
* **seal** (after each batch of records): ``seal`` (batch number, contiguous), ``first_seq``,
  ``last_seq``, ``count``, ``hashes`` (the first 16 hex digits of each record's hash),
  ``digest`` (SHA-256 over the records' full hashes), ``prev_seal`` (hash of the previous seal
  line), ``ts``, signed;
* **trailer** (last line of a closed segment): ``closed``, ``last_seq``, ``last_batch``,
  ``reason`` (``rotate`` / ``shutdown``), ``ts``, ``prev_seal``, signed.

A line's hash is SHA-256 of its bytes (without the newline).  A signed line ends with
``,"mac":"<64 hex>"}``: HMAC-SHA256, with the key its ``kid`` member names, of the line without
that member (its bytes up to that comma, then ``}``).  Records of sid ``-`` are the gateway's own
events (start, purge, recovery, key rotation): they are chained like a session that never ends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "FORMAT",
    "GATEWAY_SID",
    "Line",
    "line_hash",
    "mac_ok",
    "parse_line",
    "segment_name",
    "segment_number",
]

FORMAT: Final = "veilgate-audit/1"
GATEWAY_SID: Final = "-"
"""The sid of the gateway's own records (audit start, purge, recovery, key rotation)."""
SEGMENT_PREFIX: Final = "segment-"
SEGMENT_SUFFIX: Final = ".jsonl"
_MAC_MEMBER: Final = b',"mac":"'
_MAC_TAIL: Final = len(_MAC_MEMBER) + 64 + 2


def segment_name(number: int) -> str:
    return f"{SEGMENT_PREFIX}{number:09d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    """The number of a segment file name, or None for any other name."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def line_hash(line: bytes) -> bytes:
    return hashlib.sha256(line).digest()


def mac_ok(line: bytes, kid: str, keyring: dict[str, bytes]) -> bool | None:
    """Whether a signed line's MAC verifies (None: the key ``kid`` is not in ``keyring``)."""
    key = keyring.get(kid)
    if key is None:
        return None
    if len(line) < _MAC_TAIL or line[-_MAC_TAIL : -_MAC_TAIL + len(_MAC_MEMBER)] != _MAC_MEMBER:
        return False
    signed = line[:-_MAC_TAIL] + b"}"
    want = hmac.new(key, signed, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(want, line[-66:-2])


@dataclass(frozen=True, slots=True)
class Line:
    """One parsed line of a segment."""

    kind: str
    """``header``, ``record``, ``seal``, ``trailer``."""
    number: int
    """1-based line number in its file."""
    raw: bytes
    """The line's bytes, without the newline."""
    data: dict[str, Any]

    @property
    def hash(self) -> bytes:
        return line_hash(self.raw)


_KINDS: Final = (("seq", "record"), ("seal", "seal"), ("segment", "header"), ("closed", "trailer"))


def parse_line(raw: bytes, number: int) -> Line | None:
    """A line of a segment, or None when it is not one (corrupt, torn, foreign)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key, kind in _KINDS:
        if key in data and isinstance(data[key], int):
            return Line(kind, number, raw, data)
    return None
