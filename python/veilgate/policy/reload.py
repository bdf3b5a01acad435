"""Reloading the policy file: on SIGHUP and when the file changes, never into a broken policy.

::

    watcher = PolicyFileWatcher(path, engine)
    loop.add_signal_handler(signal.SIGHUP, watcher.reload)     # forced reload
    # every second (the gateway's policy tick):
    watcher.check()                                            # reload once the file settled

A new file takes effect only when it is complete and valid:

* **Still being written.**  A change seen by the watcher is applied once the file has stopped
  changing: ``check`` waits until its (mtime, size, inode) stamp is the same on two looks at
  least ``settle_s`` apart.  Every load (SIGHUP too) stats the file before and after reading it:
  a file that changed while it was read is left for a later tick (``policy_reload_deferred``).
  Writing a temporary file and renaming it over the policy is still the safest way to edit it.
* **Invalid.**  A file that does not compile (YAML, unknown keys, bad values...) leaves the old
  policy; each error is logged (``policy_reload_failed``, naming file, line and key).
* **Cut short.**  A truncated YAML file often still parses: losing its last rules or tiers.  A
  policy file may end with the top-level key ``end: true`` (it must be the last key); once the
  running policy has it, a file without it is refused (``policy_reload_refused``, reason
  ``no end marker``), and with ``policy.require_end_marker: true`` in the gateway configuration
  every policy file must have it.  A file cut anywhere loses its last line, so it cannot be
  mistaken for an intentionally shorter one.
* **Silently unmasking.**  A reload that takes masking away from a tier (turns it off, removes
  the tier, removes or ``keep``s a masked column rule, removes a detector, stops redacting
  unknown lineage; :func:`~veilgate.policy.diff.masking_losses`) is refused unless it is
  confirmed for exactly that content: ``veilgate policy confirm FILE`` writes the file's SHA-256
  to ``FILE.confirm``, and only a file with that digest is let through.  Changing the file again
  needs a new confirmation.

Every applied reload logs ``policy_reloaded`` with ``changes``: per tier, what it gained and lost
(:func:`~veilgate.policy.diff.policy_changes`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .. import log
from .diff import masking_losses, policy_changes
from .engine import PolicyEngine
from .loader import PolicyError, load_policy_text
from .model import Policy

__all__ = [
    "CONFIRM_SUFFIX",
    "SETTLE_S",
    "PolicyFileWatcher",
    "Refusal",
    "confirm_path",
    "file_digest",
    "reload_refusal",
]

_log = log.get("policy")

SETTLE_S: Final = 1.0
"""How long a changed policy file must stay unchanged before it is loaded."""
CONFIRM_SUFFIX: Final = ".confirm"

_Stamp = tuple[int, int, int]


def confirm_path(path: str | Path) -> Path:
    """Where the confirmation of a masking-removing reload of ``path`` lives."""
    return Path(str(path) + CONFIRM_SUFFIX)


def file_digest(text: str) -> str:
    """The SHA-256 a policy and its confirmation are identified by (as ``Policy.digest``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a valid policy may not replace the running one."""

    reason: str
    """``no end marker`` or ``masking removed``."""
    detail: str
    losses: dict[str, list[str]] = field(default_factory=dict)
    """Tiers whose masking the new policy removes or weakens, and what they lose."""

    def __str__(self) -> str:
        return f"reload refused ({self.reason}): {self.detail}"


def reload_refusal(
    old: Policy, new: Policy, path: str | Path, *, require_end_marker: bool = False
) -> Refusal | None:
    """None when ``new`` (loaded from ``path``) may replace ``old``; else why not.  Every path
    that swaps a policy in (the file watcher, SIGHUP, a configuration reload) asks this."""
    if not new.end_marker and (old.end_marker or require_end_marker):
        why = (
            "the running policy ends with 'end: true' and this file does not: it may be cut "
            "short (add 'end: true' as its last line if it is complete)"
            if old.end_marker
            else "policy.require_end_marker is set and the file has no 'end: true' last line"
        )
        return Refusal("no end marker", why)
    losses = masking_losses(old, new)
    if losses and not _confirmed(path, new.digest):
        return Refusal(
            "masking removed",
            f"the reload takes masking away; confirm it with `veilgate policy confirm {path}` "
            "(for exactly this content) and reload again",
            losses,
        )
    return None


def log_refusal(path: str | Path, old: Policy, refusal: Refusal) -> None:
    log.event(
        _log,
        "policy_reload_refused",
        logging.ERROR,
        file=str(path),
        reason=refusal.reason,
        detail=refusal.detail,
        losses=refusal.losses,
        kept_digest=old.digest[:12],
    )


def _confirmed(path: str | Path, digest: str) -> bool:
    try:
        raw = confirm_path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return digest in raw.split()


class PolicyFileWatcher:
    def __init__(
        self,
        path: str | Path,
        engine: PolicyEngine,
        *,
        require_end_marker: bool = False,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.engine = engine
        self.require_end_marker = require_end_marker
        self.settle_s = settle_s
        self._clock = clock
        self._applied = self._stat()
        """The stamp of the file the running policy came from (or was refused from)."""
        self._seen = self._applied
        self._seen_at = clock()
        self._forced = False
        """A SIGHUP whose load was deferred (the file was still changing)."""
        self.failures = 0
        """Consecutive failed reloads (for health checks)."""
        self.last_error: str | None = None

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check(self) -> bool | None:
        """Reload if the file changed and has settled since: True/False = reloaded/refused,
        None = unchanged or still settling."""
        stamp = self._stat()
        now = self._clock()
        if stamp != self._seen:
            self._seen, self._seen_at = stamp, now
            return None
        if not self._forced and stamp == self._applied:
            return None
        if now - self._seen_at < self.settle_s:
            return None
        return self.reload()

    def reload(self) -> bool | None:
        """Load the file now (SIGHUP); swap it in if it is complete and valid, else keep the old
        policy.  None: the file is still being written (loaded by a later :meth:`check`)."""
        old = self.engine.policy
        before = self._stat()
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return self._failed(old, [(str(self.path), 0, "", f"cannot read policy file: {exc}")])
        after = self._stat()
        if before != after:
            self._forced = True
            self._seen, self._seen_at = after, self._clock()
            log.event(_log, "policy_reload_deferred", file=str(self.path), reason="file changing")
            return None
        self._forced = False
        self._applied = after
        try:
            policy = load_policy_text(text, str(self.path))
        except PolicyError as exc:
            return self._failed(old, [(i.file, i.line, i.key, i.message) for i in exc.issues])
        refusal = reload_refusal(old, policy, self.path, require_end_marker=self.require_end_marker)
        if refusal is not None:
            self.failures += 1
            self.last_error = f"{self.path}: {refusal}"
            log_refusal(self.path, old, refusal)
            return False
        self.failures = 0
        self.last_error = None
        if policy.digest == old.digest:
            return True
        changes = policy_changes(old, policy)
        self.engine.reload(policy)
        log.event(
            _log,
            "policy_reloaded",
            file=str(self.path),
            digest=policy.digest[:12],
            previous=old.digest[:12],
            tiers=len(policy.tiers),
            generation=self.engine.generation,
            changes={name: ch.as_dict() for name, ch in changes.items()},
        )
        return True

    def _failed(self, old: Policy, issues: list[tuple[str, int, str, str]]) -> bool:
        self.failures += 1
        self.last_error = "\n".join(f"{f}:{line}: {key}: {msg}" for f, line, key, msg in issues)
        for file, line, key, message in issues:
            log.event(
                _log,
                "policy_reload_failed",
                logging.ERROR,
                file=file,
                line=line,
                key=key,
                error=message,
                kept_digest=old.digest[:12],
            )
        return False
