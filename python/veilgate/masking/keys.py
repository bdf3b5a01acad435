"""The key of the keyed hash (the ``hash`` operator), read whole and kept in generations.

The policy's ``masking.hash_key_file`` (or ``hash_key_env``) names the HMAC key.  The gateway
reads it when the first masked session needs it and again on every configuration reload
(SIGHUP, ``veilgate reload``, ``POST /v1/admin/reload``):

* a key that reads the same (same SHA-256) keeps its generation;
* a changed key becomes the next *key generation*: sessions that start from then on hash with
  it, sessions already running keep the key they started with (their tokens stay joinable
  within the session), also across policy reloads;
* a key file that cannot be read, is empty or shorter than :data:`MIN_KEY_BYTES` (cut short),
  or changed while it was read (still being written) is never used: the running generation
  stays and the reload says why.

What is shown of a key (log lines, the admin console, the reload result, readiness) is its
source, its generation and a *fingerprint*: the first 12 hex digits of
HMAC-SHA256(key, ``veilgate masking key fingerprint``).  That is a keyed hash of a constant,
which tells no more about the key than one masked value does (every client sees many); enough
to check that two gateways hash alike.  The key and its plain SHA-256 are never shown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from veilgate import log, metrics

__all__ = [
    "MIN_KEY_BYTES",
    "HashKey",
    "KeyGenerations",
    "MaskingUnavailable",
    "fingerprint",
    "key_source",
    "read_key",
]

MIN_KEY_BYTES: Final = 16
"""A shorter key (a file's surrounding white space stripped) is refused: 128 bits at least, and
a file cut short while it was written is not taken for a key."""

_FINGERPRINT_INPUT: Final = b"veilgate masking key fingerprint"

_log = log.get("masking")


class MaskingUnavailable(Exception):
    """The masking engine cannot be built (hash key missing, native engine absent)."""


def key_source(env: str | None, file: Path | None) -> str:
    """How the key is named in messages (never its value)."""
    if env is not None:
        return f"environment variable {env}"
    if file is not None:
        return f"file {file}"
    return "(none configured)"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_key(env: str | None, file: Path | None) -> bytes:
    """The key, read now from the environment variable ``env`` or the file ``file``; raises
    :class:`MaskingUnavailable` (naming the source, never a value) when it is unset, unreadable,
    empty, too short, or a file that changed while it was read."""
    where = key_source(env, file)
    raw: bytes | None = None
    if env is not None:
        value = os.environ.get(env)
        raw = value.encode("utf-8") if value is not None else None
    elif file is not None:
        before = _stamp(file)
        try:
            raw = file.read_bytes().strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MaskingUnavailable(
                f"cannot read the masking hash key {where}: {reason}"
            ) from None
        if _stamp(file) != before:
            raise MaskingUnavailable(
                f"the masking hash key {where} changed while it was read (still being "
                "written?): write it to a temporary file and rename it over the key"
            )
    if not raw:
        raise MaskingUnavailable(f"masking hash key missing: {where} is empty or unset")
    if len(raw) < MIN_KEY_BYTES:
        raise MaskingUnavailable(
            f"masking hash key {where} is too short ({len(raw)} bytes; at least "
            f"{MIN_KEY_BYTES}): a key file cut short is never used"
        )
    return raw


def fingerprint(key: bytes) -> str:
    """What may be shown of ``key`` (see the module documentation)."""
    return hmac.new(key, _FINGERPRINT_INPUT, hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class HashKey:
    """One key generation."""

    material: bytes = field(repr=False)
    source: str
    """``file PATH`` or ``environment variable NAME``."""
    generation: int
    """1 for the first key the gateway loaded, +1 for each changed key."""
    digest: bytes = field(repr=False, default=b"")
    """SHA-256 of the key: compared between reloads, never shown."""
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def make(cls, material: bytes, source: str, generation: int) -> HashKey:
        return cls(material, source, generation, hashlib.sha256(material).digest())

    def same_key(self, material: bytes, source: str) -> bool:
        return self.source == source and hmac.compare_digest(
            self.digest, hashlib.sha256(material).digest()
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.material)

    def describe(self) -> dict[str, object]:
        """What the log, the admin console and the reload result show of this generation."""
        return {
            "generation": self.generation,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "loaded_at": round(self.loaded_at, 3),
        }


class KeyGenerations:
    """The key generations of one gateway: the live one (new sessions hash with it) and why the
    last attempt to read a key failed."""

    def __init__(self) -> None:
        self.live: HashKey | None = None
        self.error: str | None = None
        """Why the last read failed (None after a good read)."""

    def for_session(self, env: str | None, file: Path | None) -> HashKey:
        """The key a new session hashes with: the live generation when it comes from the source
        the policy names; else (first use, or a policy reload named another source) the key is
        read now.  Raises :class:`MaskingUnavailable` (the session is refused: fail closed)."""
        source = key_source(env, file)
        live = self.live
        if live is not None and live.source == source:
            return live
        try:
            material = read_key(env, file)
        except MaskingUnavailable as exc:
            self.failed(str(exc), "session")
            raise
        return self.install(material, source, "session")

    def install(self, material: bytes, source: str, trigger: str) -> HashKey:
        """Make ``material`` (read whole and valid) the live key: the same key keeps its
        generation, another one starts the next generation (logged, never the key)."""
        live = self.live
        self.error = None
        if live is not None and live.digest == hashlib.sha256(material).digest():
            if live.source != source:
                self.live = live = dataclasses.replace(live, source=source)
            return live
        key = HashKey.make(material, source, live.generation + 1 if live is not None else 1)
        self.live = key
        metrics.masking_key_generation.set(key.generation)
        fields: dict[str, Any] = {"trigger": trigger, **key.describe()}
        if live is None:
            log.event(_log, "masking_key_loaded", **fields)
        else:
            log.event(
                _log,
                "masking_key_changed",
                logging.WARNING,
                previous_generation=live.generation,
                previous_fingerprint=live.fingerprint,
                note="new sessions hash with the new key; running sessions keep theirs",
                **fields,
            )
        return key

    def failed(self, reason: str, trigger: str) -> None:
        """A key could not be read: the live generation (if any) stays."""
        self.error = reason
        live = self.live
        log.event(
            _log,
            "masking_key_unusable",
            logging.ERROR,
            trigger=trigger,
            error=reason,
            kept_generation=live.generation if live is not None else None,
        )

    def describe(self) -> dict[str, Any]:
        """The admin console's and the reload result's view (never the key)."""
        out: dict[str, Any] = self.live.describe() if self.live is not None else {"generation": 0}
        out["error"] = self.error
        return out
