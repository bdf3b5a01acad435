"""Reloading the policy file: on SIGHUP and when the file changes, never into a broken policy.

::

    watcher = PolicyFileWatcher(path, engine)
    loop.add_signal_handler(signal.SIGHUP, watcher.reload)     # forced reload
    # every few seconds (or from an inotify hook):
    watcher.check()                                            # reload only if the file changed

A file that does not load leaves the engine on the old policy and logs one ``policy_reload_failed``
event naming file, line and key for each error; a good file swaps the policy atomically
(``PolicyEngine.reload``): connections pick it up at their next statement.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import log
from .engine import PolicyEngine
from .loader import PolicyError, load_policy

__all__ = ["PolicyFileWatcher"]

_log = log.get("policy")


class PolicyFileWatcher:
    def __init__(self, path: str | Path, engine: PolicyEngine) -> None:
        self.path = Path(path)
        self.engine = engine
        self._stamp = self._stat()
        self.failures = 0
        """Consecutive failed reloads (for health checks)."""
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check(self) -> bool | None:
        """Reload if the file changed since the last look: True/False = reloaded/refused,
        None = unchanged."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        return self.reload()

    def reload(self) -> bool:
        """Load the file now; swap it in if it is valid, else keep the old policy."""
        old = self.engine.policy
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.failures += 1
            self.last_error = str(exc)
            for issue in exc.issues:
                log.event(
                    _log,
                    "policy_reload_failed",
                    logging.ERROR,
                    file=issue.file,
                    line=issue.line,
                    key=issue.key,
                    error=issue.message,
                    kept_digest=old.digest[:12],
                )
            return False
        self.failures = 0
        self.last_error = None
        if policy.digest == old.digest:
            return True
        self.engine.reload(policy)
        log.event(
            _log,
            "policy_reloaded",
            file=str(self.path),
            digest=policy.digest[:12],
            previous=old.digest[:12],
            tiers=len(policy.tiers),
            generation=self.engine.generation,
        )
        return True
