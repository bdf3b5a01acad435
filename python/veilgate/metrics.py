"""Process metrics in the Prometheus text format.

Counters on the per-connection path are plain Python integers updated at connection boundaries;
per-message counters and the statement-latency histogram live in the native engine (atomics) and
are read only when ``/metrics`` is scraped, so the hot path pays nothing for them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


@dataclass
class _Metric:
    name: str
    help: str
    kind: str
    labelnames: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def add(self, amount: float, *label_values: str) -> None:
        """Add ``amount`` to the series of ``label_values`` (``labelnames`` order)."""
        if len(label_values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(label_values)} label values for {self.labelnames}")
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        if not self.labelnames and not self.values:
            yield f"{self.name} 0"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {value:g}"


class Counter(_Metric):
    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, "counter", labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def inc_one(self, *label_values: str) -> None:
        """``inc()`` by one, label values given positionally in ``labelnames`` order: for
        per-statement paths, where building and checking a keyword dict costs microseconds."""
        if len(label_values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(label_values)} label values for {self.labelnames}")
        values = self.values
        values[label_values] = values.get(label_values, 0.0) + 1.0

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)


class Gauge(_Metric):
    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, "gauge", labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = value

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)


class Histogram(_Metric):
    """Cumulative buckets (upper bounds in seconds), sum and count; no labels."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help, "histogram")
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for bound, c in zip(self.buckets, self.counts, strict=True):
            yield f'{self.name}_bucket{{le="{bound:g}"}} {c}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {self.sum:g}"
        yield f"{self.name}_count {self.count}"


class LabelledHistogram(_Metric):
    """A histogram per label set (cumulative buckets, sum, count in the exposition)."""

    def __init__(
        self, name: str, help: str, labelnames: tuple[str, ...], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help, "histogram", labelnames)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        """label values -> (non-cumulative counts, one more for +Inf; [sum])."""

    def _slot(self, labels: tuple[str, ...]) -> tuple[list[int], list[float]]:
        slot = self.series.get(labels)
        if slot is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(labels)} label values for {self.labelnames}")
            slot = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        return slot

    def observe(self, value: float, *labels: str) -> None:
        counts, total = self._slot(labels)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def add_histogram(self, counts: Sequence[int], total: float, *labels: str) -> None:
        """Add a histogram kept elsewhere (same bounds; non-cumulative, +Inf last)."""
        mine, s = self._slot(labels)
        if len(counts) != len(mine):
            raise ValueError(f"{self.name}: {len(counts)} buckets, expected {len(mine)}")
        for i, c in enumerate(counts):
            mine[i] += c
        s[0] += total

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key, (counts, total) in sorted(self.series.items()):
            labels = _labels(self.labelnames, key)[1:-1]
            acc = 0
            for bound, c in zip(self.buckets, counts, strict=False):
                acc += c
                yield f'{self.name}_bucket{{{labels},le="{bound:g}"}} {acc}'
            acc += counts[-1]
            yield f'{self.name}_bucket{{{labels},le="+Inf"}} {acc}'
            yield f"{self.name}_sum{{{labels}}} {total[0]:g}"
            yield f"{self.name}_count{{{labels}}} {acc}"


connections_total = Counter("veilgate_client_connections_total", "Client TCP connections accepted.")
connections_active = Gauge("veilgate_client_connections_active", "Client connections open now.")
sessions_total = Counter(
    "veilgate_sessions_total",
    "Authenticated sessions relayed to an upstream, by target and tier.",
    ("target", "tier"),
)
auth_failures_total = Counter(
    "veilgate_auth_failures_total", "Client authentication failures by reason.", ("reason",)
)
errors_total = Counter(
    "veilgate_errors_total",
    "Connections ended by an error, by kind (protocol, tls, upstream, startup, internal...).",
    ("kind",),
)
upstream_connections_active = Gauge(
    "veilgate_upstream_connections_active", "Upstream connections open now."
)
upstream_pool_total = Counter(
    "veilgate_upstream_pool_total",
    "Upstream connection reuse (targets.<name>.pool): kept (reset with DISCARD ALL and kept "
    "idle), reused (taken by a new session), closed (a reset failed, idle too long, pool full).",
    ("outcome",),
)
cancel_requests_total = Counter(
    "veilgate_cancel_requests_total",
    "CancelRequests received, by outcome (forwarded, idle, unknown, approval_wait, failed, "
    "relayed: passed to the other gateways of the shared store, from_peer: one they passed; "
    "serve --workers N: to_worker: passed to the worker owning the session, from_worker: one "
    "a sibling worker passed here, then counted again by what became of it).",
    ("outcome",),
)
jwks_fetches_total = Counter(
    "veilgate_jwks_fetches_total",
    "OIDC discovery and JWKS documents requested, by provider and document (discovery, jwks).",
    ("provider", "document"),
)
jwks_refresh_failures_total = Counter(
    "veilgate_jwks_refresh_failures_total",
    "Failed JWKS refreshes (IdP unreachable, bad document, discovery issuer mismatch).",
    ("provider",),
)
policy_decisions_total = Counter(
    "veilgate_policy_decisions_total",
    "Statement policy decisions, by action (allow, deny, approve).",
    ("action",),
)
masked_values_total = Counter(
    "veilgate_masked_values_total",
    "Result values masked in flight, by entity (COLUMN for column rules).",
    ("entity",),
)

approval_requests_total = Counter(
    "veilgate_approval_requests_total",
    "Approval requests by kind (statement, elevation) and outcome (requested, approved, denied, "
    "expired).",
    ("kind", "outcome"),
)
approval_decision_seconds = Histogram(
    "veilgate_approval_decision_seconds",
    "Time from an approval request to its decision (approved or denied).",
    (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400),
)
approval_checks_total = Counter(
    "veilgate_approval_checks_total",
    "Statements an approve rule matched, by result (granted, required, refused, unavailable).",
    ("result",),
)
approval_waits_total = Counter(
    "veilgate_approval_waits_total",
    "Wait-mode statements by outcome (approved, denied, timeout, cancelled, expired, error).",
    ("outcome",),
)
audit_healthy = Gauge(
    "veilgate_audit_healthy",
    "1 while session records (and the session index) are being written, 0 while writing fails.",
)
audit_records_written_total = Counter(
    "veilgate_audit_records_written_total", "Session records written to the audit segments."
)
audit_bytes_written_total = Counter(
    "veilgate_audit_bytes_written_total", "Bytes written to the audit segments."
)
audit_write_failures_total = Counter(
    "veilgate_audit_write_failures_total",
    "Times writing the session record started failing (disk full, permission, storage lost).",
)
audit_dropped_total = Counter(
    "veilgate_audit_records_dropped_total",
    "Session records dropped because the queue was full while writing failed (continue mode).",
)
audit_queued_records = Gauge(
    "veilgate_audit_queued_records", "Session records waiting to be written."
)
audit_index_retries_total = Counter(
    "veilgate_audit_index_retries_total",
    "Session index writes that failed and were retried (the index lags; a recording failure "
    "only past audit.index_grace_s).",
)
audit_index_pending = Gauge(
    "veilgate_audit_index_pending", "Session index updates waiting to be written."
)
audit_log_failures_total = Counter(
    "veilgate_audit_log_failures_total",
    "Events the JSON-lines audit log (policy.audit_log) could not write.",
)
audit_refused_total = Counter(
    "veilgate_audit_refused_statements_total",
    "Statements refused (58030) because the session record could not be written (block mode).",
)

config_generation = Gauge(
    "veilgate_config_generation",
    "Configuration generation serving new sessions (1 at start, +1 per applied reload).",
)
config_reloads_total = Counter(
    "veilgate_config_reloads_total",
    "Configuration reloads (SIGHUP, veilgate reload) by result (applied, failed).",
    ("result",),
)
masking_key_generation = Gauge(
    "veilgate_masking_key_generation",
    "Generation of the hash operator's key new sessions use (0: none loaded; +1 per changed key).",
)

# --- per target and tier ------------------------------------------------------------------------
# Labels are bounded: target names come from the configuration, tiers from the policy (or the
# identity tiers; "" for none), SQLSTATE classes are two characters (at most 32 per session),
# entities are the detectors' and the policy's, decisions allow / deny / approve.  The session
# counters below are rebuilt at each scrape from the sessions' own counts (kept natively or once
# per result; nothing per row or message in Python): see :data:`SESSION_ROLLUPS`.

sessions_active = Gauge(
    "veilgate_sessions_active", "Sessions relaying now, by target and tier.", ("target", "tier")
)
statements_total = Counter(
    "veilgate_statements_total",
    "Requests the server answered (one per ReadyForQuery), by target and tier.",
    ("target", "tier"),
)
statement_decisions_total = Counter(
    "veilgate_statement_decisions_total",
    "Policy decisions on statements, by target, tier and decision (allow, deny, approve).",
    ("target", "tier", "decision"),
)
statement_errors_total = Counter(
    "veilgate_statement_errors_total",
    "Errors sent to clients (the server's and the gateway's refusals) by target, tier and "
    "SQLSTATE class ('??': none or malformed).",
    ("target", "tier", "class"),
)
session_bytes_total = Counter(
    "veilgate_session_bytes_total",
    "Bytes received from clients (direction=in) and from the server (direction=out) by relaying "
    "sessions, by target and tier.",
    ("target", "tier", "direction"),
)
target_masked_values_total = Counter(
    "veilgate_target_masked_values_total",
    "Result values masked, by target, tier and entity (COLUMN for column rules).",
    ("target", "tier", "entity"),
)
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""The native engine's statement latency buckets (``veilgate_native.latency_histogram()``)."""
target_statement_duration = LabelledHistogram(
    "veilgate_target_statement_duration_seconds",
    "Time from a request (Query, Sync, FunctionCall) to its ReadyForQuery, by target and tier.",
    ("target", "tier"),
    LATENCY_BOUNDS,
)
upstream_connect_seconds = LabelledHistogram(
    "veilgate_upstream_connect_seconds",
    "Time to open an upstream session (TCP, TLS, SCRAM, start-up), by target and result.",
    ("target", "result"),
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
token_validations_total = Counter(
    "veilgate_token_validations_total",
    "Client token validations by provider and outcome (valid, or the failure reason).",
    ("provider", "outcome"),
)
build_info = Gauge(
    "veilgate_build_info",
    "Always 1; the labels say what runs (version, commit, native engine version, Python).",
    ("version", "commit", "native_version", "python"),
)

SESSION_ROLLUPS: list[Callable[[], None]] = []
"""Called at each scrape after the session metrics were cleared; each adds its sessions' totals
(a gateway: its ended sessions' sums and its live sessions' counts)."""
_ROLLED_UP: tuple[_Metric, ...] = (
    sessions_active,
    statements_total,
    statement_decisions_total,
    statement_errors_total,
    session_bytes_total,
    target_masked_values_total,
)

REGISTRY: list[_Metric] = [
    connections_total,
    connections_active,
    sessions_total,
    auth_failures_total,
    errors_total,
    upstream_connections_active,
    cancel_requests_total,
    jwks_fetches_total,
    jwks_refresh_failures_total,
    policy_decisions_total,
    masked_values_total,
    approval_requests_total,
    approval_decision_seconds,
    approval_checks_total,
    approval_waits_total,
    audit_healthy,
    audit_records_written_total,
    audit_bytes_written_total,
    audit_write_failures_total,
    audit_dropped_total,
    audit_queued_records,
    audit_refused_total,
    audit_index_retries_total,
    audit_index_pending,
    config_generation,
    config_reloads_total,
    masking_key_generation,
    audit_log_failures_total,
    sessions_active,
    statements_total,
    statement_decisions_total,
    statement_errors_total,
    session_bytes_total,
    target_masked_values_total,
    target_statement_duration,
    upstream_connect_seconds,
    token_validations_total,
    build_info,
]


def _native_lines() -> Iterable[str]:
    import veilgate_native

    stats = veilgate_native.stats()
    for metric, unit in (("bytes", "Bytes"), ("messages", "Protocol messages")):
        name = f"veilgate_{metric}_received_total"
        yield f"# HELP {name} {unit} received, by direction (client = from clients)."
        yield f"# TYPE {name} counter"
        for direction in ("client", "server"):
            yield f'{name}{{direction="{direction}"}} {stats[f"{direction}_{metric}"]}'
    name = "veilgate_policy_native_verdicts_total"
    yield f"# HELP {name} Statements allowed by the native verdict cache (no Python call each)."
    yield f"# TYPE {name} counter"
    yield f"{name} {veilgate_native.verdict_hits()}"
    bounds, cumulative, total, count = veilgate_native.latency_histogram()
    name = "veilgate_statement_duration_seconds"
    yield f"# HELP {name} Time from a request (Query, Sync, FunctionCall) to its ReadyForQuery."
    yield f"# TYPE {name} histogram"
    for le, c in zip(bounds, cumulative, strict=True):
        yield f'{name}_bucket{{le="{le:g}"}} {c}'
    yield f'{name}_bucket{{le="+Inf"}} {count}'
    yield f"{name}_sum {total:g}"
    yield f"{name}_count {count}"


COLLECTORS: list[Callable[[], None]] = []
"""Called before each exposition to refresh gauges kept elsewhere (the audit queue)."""

_native_verdicts_counted = 0
_native_grants_counted = 0


def _count_native_verdicts() -> None:
    """Queries the client buffers allowed from the verdict cache (no Python call each) join
    ``veilgate_policy_decisions_total{action="allow"}``; those run on standing grants join
    ``{action="approve"}`` and ``veilgate_approval_checks_total{result="granted"}``."""
    global _native_verdicts_counted, _native_grants_counted
    import veilgate_native

    hits = veilgate_native.verdict_hits()
    granted = veilgate_native.grant_hits()
    if hits > _native_verdicts_counted:
        new_grants = granted - _native_grants_counted
        policy_decisions_total.inc(hits - _native_verdicts_counted - new_grants, action="allow")
        if new_grants:
            # Queries run on standing grants: approve decisions, granted checks
            policy_decisions_total.inc(new_grants, action="approve")
            approval_checks_total.inc(new_grants, result="granted")
        _native_verdicts_counted = hits
        _native_grants_counted = granted


COLLECTORS.append(_count_native_verdicts)


def render() -> str:
    """The whole exposition, for ``GET /metrics``."""
    for collect in list(COLLECTORS):
        collect()
    for m in _ROLLED_UP:
        m.values.clear()
    target_statement_duration.series.clear()
    for rollup in list(SESSION_ROLLUPS):
        rollup()
    if not build_info.values:
        from veilgate.buildinfo import build_info as info

        b = info()
        build_info.set(
            1,
            version=b["version"],
            commit=b["commit"],
            native_version=b["native_version"],
            python=b["python"],
        )
    lines: list[str] = []
    for metric in REGISTRY:
        lines.extend(metric.render())
    lines.extend(_native_lines())
    return "\n".join(lines) + "\n"
