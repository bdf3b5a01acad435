"""Cancel keys: the gateway's own BackendKeyData per client, mapped to its session.

Clients only ever see gateway-generated keys (a random PID with the sign bit cleared and a random
32-bit secret); the upstream's keys stay private to the session.  A CancelRequest is forwarded
upstream only when the session is running something (``SessionState.busy``).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Generic, TypeVar

T = TypeVar("T")


class CancelRegistry(Generic[T]):
    """Gateway key → session."""

    def __init__(self) -> None:
        self._by_pid: dict[int, tuple[bytes, T]] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def register(self, session: T) -> tuple[int, bytes]:
        """A fresh (pid, 4-byte key) for ``session``."""
        while True:
            pid = secrets.randbits(31)
            if pid and pid not in self._by_pid:
                break
        key = secrets.token_bytes(4)
        self._by_pid[pid] = (key, session)
        return pid, key

    def unregister(self, pid: int) -> None:
        self._by_pid.pop(pid, None)

    def lookup(self, pid: int, key: bytes) -> T | None:
        """The session owning (pid, key), or ``None`` (unknown pid, wrong or long key)."""
        entry = self._by_pid.get(pid)
        if entry is None:
            return None
        expected, session = entry
        if len(key) != len(expected) or not hmac.compare_digest(key, expected):
            return None
        return session
