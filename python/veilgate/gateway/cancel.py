"""Cancel keys: the BackendKeyData each client gets, mapped back to its session.

A client's BackendKeyData carries the **server's real backend pid** (so ``pg_backend_pid()``,
the pid in NotificationResponse and what client libraries report agree) and a **secret the
gateway makes**: the upstream's own secret never leaves the gateway.  A CancelRequest is looked up
by (pid, secret); it is forwarded upstream, with the upstream's own key, only when the session is
running something (``SessionState.busy``).

Several sessions may have the same pid (one gateway in front of several servers, each with its
own pid space): the registry is keyed by the pair, and a secret is drawn again until the pair is
new.  The secret's top ``worker_bits`` bits hold a worker id (0 today, one process), so that a
later multi-process or multi-node mode can route a CancelRequest that reaches the wrong worker
(PgBouncer's ``peer_id`` does the same); the rest is random.

Several gateways behind a load balancer: a CancelRequest may reach a gateway that does not hold
the session.  That gateway passes it on through the shared state store's notifications (with
approvals' store started) as the pid and :func:`cancel_digest` of the secret -- never the secret
itself -- and the gateway that holds the session finds it with :meth:`CancelRegistry.lookup_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final, Generic, TypeVar

T = TypeVar("T")

KEY_BYTES: Final = 4
"""Protocol 3.0 cancel keys are 4 bytes."""


def cancel_digest(pid: int, key: bytes) -> str:
    """What another gateway is told of a CancelRequest's secret (SHA-256, hex)."""
    return hashlib.sha256(b"veilgate-cancel\0%d\0" % pid + key).hexdigest()


class CancelRegistry(Generic[T]):
    """(server pid, gateway secret) → session."""

    def __init__(self, worker_id: int = 0, worker_bits: int = 0) -> None:
        if not 0 <= worker_bits <= 16 or not 0 <= worker_id < (1 << worker_bits):
            raise ValueError("worker_id must fit in worker_bits (at most 16)")
        self._worker_prefix = worker_id << (8 * KEY_BYTES - worker_bits)
        self._random_bits = 8 * KEY_BYTES - worker_bits
        self._by_pid: dict[int, dict[bytes, T]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def register(self, session: T, pid: int) -> bytes:
        """A fresh secret for ``session``, whose server backend is ``pid``."""
        keys = self._by_pid.setdefault(pid, {})
        while True:
            value = self._worker_prefix | secrets.randbits(self._random_bits)
            key = value.to_bytes(KEY_BYTES, "big")
            if key not in keys:
                break
        keys[key] = session
        self._count += 1
        return key

    def unregister(self, pid: int, key: bytes) -> None:
        keys = self._by_pid.get(pid)
        if keys is None or keys.pop(key, None) is None:
            return
        self._count -= 1
        if not keys:
            del self._by_pid[pid]

    def worker_of(self, key: bytes, worker_bits: int) -> int:
        """The worker id a secret carries (for routing between workers)."""
        if len(key) != KEY_BYTES or worker_bits == 0:
            return 0
        return int.from_bytes(key, "big") >> (8 * KEY_BYTES - worker_bits)

    def lookup_digest(self, pid: int, digest: str) -> T | None:
        """The session whose (pid, secret) has :func:`cancel_digest` ``digest``, or ``None``."""
        keys = self._by_pid.get(pid)
        if keys is None:
            return None
        found: T | None = None
        want = digest.encode("ascii", "replace")
        for k, session in keys.items():
            if hmac.compare_digest(cancel_digest(pid, k).encode(), want):
                found = session
        return found

    def lookup(self, pid: int, key: bytes) -> T | None:
        """The session owning (pid, key), or ``None`` (unknown pair, wrong or long key)."""
        keys = self._by_pid.get(pid)
        if keys is None or len(key) != KEY_BYTES:
            return None
        found: T | None = None
        # every secret of this pid (usually one) compared in constant time
        for k, session in keys.items():
            if hmac.compare_digest(key, k):
                found = session
        return found
