"""Per target and tier session metrics (``veilgate_statements_total`` and the rest of
:mod:`veilgate.metrics`' per-target block), without per-message work in Python.

Each session keeps its own counts where they are cheapest: the native session tracker counts
answered requests, SQLSTATE classes of errors and a latency histogram; the relay counts bytes per
side (a C addition per read); the enforcer counts decisions and the masking relay masked values
once per result.  At session end those counts are added to the totals of its (target, tier); at
each scrape the totals plus the live sessions' counts become the exposition, so every counter
only grows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veilgate import log, metrics

if TYPE_CHECKING:
    from veilgate.gateway.session import Session

__all__ = ["Accounting"]

_log = log.get("gateway.accounting")

_BUCKETS = len(metrics.LATENCY_BOUNDS) + 1


@dataclass
class _Totals:
    statements: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    latency_sum: float = 0.0

    def add_session(self, session: Session) -> None:
        state = session.state
        self.statements += state.statements
        self.bytes_in += session.client.received
        if session.upstream is not None:
            self.bytes_out += session.upstream.received
        _merge(self.errors, state.error_classes())
        if session.enforcer is not None:
            # Queries the client buffer answered since its last event are counted there
            session.verdict_hits()
            _merge(self.decisions, session.enforcer.decisions)
        if session.masking is not None:
            _merge(self.masked, session.masking.masked)
        buckets, total = state.latency()
        for i, n in enumerate(buckets[:_BUCKETS]):
            self.latency[i] += n
        self.latency_sum += total


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, n in counts.items():
        into[k] = into.get(k, 0) + n


def _key(session: Session) -> tuple[str, str] | None:
    if session.target is None or session.upstream is None:
        return None  # never relayed: nothing to count
    return session.target.name, session.tier_label


class Accounting:
    """The ended sessions' totals of one gateway, and its rollup for the exposition."""

    def __init__(self, live: Callable[[], Iterable[Session]]) -> None:
        self._live = live
        self._ended: dict[tuple[str, str], _Totals] = {}

    def detach(self) -> None:
        """The gateway closed: keep the totals, stop looking at its (now ended) sessions."""
        self._live = tuple

    def session_ended(self, session: Session) -> None:
        key = _key(session)
        if key is None:
            return
        totals = self._ended.get(key)
        if totals is None:
            totals = self._ended[key] = _Totals()
        try:
            totals.add_session(session)
        except Exception as e:  # counting never breaks closing a session
            log.event(_log, "session_metrics_failed", logging.WARNING, error=repr(e))

    def rollup(self) -> None:
        """Add this gateway's totals to the (just cleared) per-target metrics."""
        merged = {k: _copy(t) for k, t in self._ended.items()}
        active: dict[tuple[str, str], int] = {}
        for session in list(self._live()):
            key = _key(session)
            if key is None:
                continue
            active[key] = active.get(key, 0) + 1
            totals = merged.get(key)
            if totals is None:
                totals = merged[key] = _Totals()
            try:
                totals.add_session(session)
            except Exception as e:  # a scrape never fails over one session
                log.event(_log, "session_metrics_failed", logging.WARNING, error=repr(e))
        for (target, tier), n in active.items():
            metrics.sessions_active.add(n, target, tier)
        for (target, tier), t in merged.items():
            metrics.statements_total.add(t.statements, target, tier)
            metrics.session_bytes_total.add(t.bytes_in, target, tier, "in")
            metrics.session_bytes_total.add(t.bytes_out, target, tier, "out")
            for decision, n in t.decisions.items():
                metrics.statement_decisions_total.add(n, target, tier, decision)
            for cls, n in t.errors.items():
                metrics.statement_errors_total.add(n, target, tier, cls)
            for entity, n in t.masked.items():
                metrics.target_masked_values_total.add(n, target, tier, entity)
            metrics.target_statement_duration.add_histogram(t.latency, t.latency_sum, target, tier)


def _copy(t: _Totals) -> _Totals:
    return _Totals(
        t.statements,
        t.bytes_in,
        t.bytes_out,
        dict(t.decisions),
        dict(t.errors),
        dict(t.masked),
        list(t.latency),
        t.latency_sum,
    )
