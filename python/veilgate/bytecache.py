"""Caches bounded in bytes, not entries.

A cache keyed by statement text with an entry limit is bounded only if statements are small: one
client sending many distinct megabyte statements would fill 8192 entries with gigabytes and grow
the gateway for everybody.  :class:`ByteLRU` charges each entry what it holds (the caller's
estimate: the texts it keeps plus a fixed overhead per object) and evicts least recently used
entries until the total is within its budget.  An entry costing more than a fraction of the
budget is not cached at all: one huge statement never flushes the cache.

It *is* an ``OrderedDict``: lookups on the hot path are the C ``get`` / ``move_to_end``, exactly
as before; only :meth:`put` (on a miss) does the accounting.  The budgets come from
``limits.cache_bytes`` (see :func:`budget`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Generic, TypeVar

__all__ = [
    "ENTRY_OVERHEAD",
    "SESSION_CACHE_BYTES",
    "ByteLRU",
    "budget",
    "set_total_budget",
    "text_cost",
]

K = TypeVar("K")
V = TypeVar("V")

ENTRY_OVERHEAD: Final = 1024
"""Bytes charged per entry on top of its texts (dict slots, the key tuple, small objects)."""
_MAX_SHARE: Final = 8
"""An entry may cost at most 1/_MAX_SHARE of the budget to be cached."""

_SHARES: Final = {
    "policy.analyses": 0.25,
    "policy.decisions": 0.25,
    "policy.shapes": 0.15,
    "masking.lineage": 0.35,
}
"""How ``limits.cache_bytes`` is divided among the gateway-wide statement-keyed caches."""

SESSION_CACHE_BYTES: Final = 256 * 1024
"""Budget of each per-session statement-keyed cache (a masked session's statement splits and
result plans): a session's share is bounded, and so sessions of one principal are by
``max_connections_per_principal``."""

_total = 64 << 20


def set_total_budget(total_bytes: int) -> None:
    """Set ``limits.cache_bytes`` (the gateway calls this once at start, before any cache is
    made; caches made earlier keep their budget)."""
    global _total
    _total = max(1 << 20, int(total_bytes))


def budget(name: str) -> int:
    """The byte budget of the cache ``name`` (a key of the shares table)."""
    return max(64 * 1024, int(_total * _SHARES[name]))


def text_cost(*texts: str, copies: int = 1) -> int:
    """What keeping ``texts`` costs, ``copies`` times each (slices of a text are copies), plus
    the per-entry overhead.  ``len(str)`` is within 4x of its memory for any text; UTF-8 heavy
    texts are charged their worst case."""
    n = 0
    for t in texts:
        n += len(t) if t.isascii() else 4 * len(t)
    return ENTRY_OVERHEAD + copies * n


class ByteLRU(OrderedDict[K, V], Generic[K, V]):
    """An LRU ``OrderedDict`` whose entries are charged bytes; see the module docstring."""

    def __init__(self, max_bytes: int | str) -> None:
        """``max_bytes``: a budget, or the name of a share of ``limits.cache_bytes`` (looked up
        at each insertion, so a cache made at import time follows the configuration)."""
        super().__init__()
        self._budget = max_bytes if isinstance(max_bytes, str) else max(1, int(max_bytes))
        self.bytes = 0
        """What the entries held now cost, by the callers' estimates."""
        self._costs: dict[K, int] = {}
        self.evictions = 0

    @property
    def max_bytes(self) -> int:
        b = self._budget
        return budget(b) if isinstance(b, str) else b

    def put(self, key: K, value: V, cost: int) -> bool:
        """Insert (or replace) ``key``; evict the least recently used entries until the total is
        within budget.  Returns False (nothing stored) when ``cost`` alone is too large."""
        limit = self.max_bytes
        if cost * _MAX_SHARE > limit:
            self.pop(key, None)
            return False
        old = self._costs.get(key)
        if old is not None:
            self.bytes -= old
        self[key] = value
        self.move_to_end(key)
        self._costs[key] = cost
        self.bytes += cost
        while self.bytes > limit and len(self) > 1:
            self.popitem(last=False)
            self.evictions += 1
        return True

    def popitem(self, last: bool = True) -> tuple[K, V]:
        k, v = super().popitem(last=last)
        self.bytes -= self._costs.pop(k, 0)
        return k, v

    def pop(self, key: K, *default: V | None) -> V | None:  # type: ignore[override]
        if key in self:
            self.bytes -= self._costs.pop(key, 0)
        return super().pop(key, *default)

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self.bytes -= self._costs.pop(key, 0)

    def clear(self) -> None:
        super().clear()
        self._costs.clear()
        self.bytes = 0
