"""Process metrics in the Prometheus text format.

Counters on the per-connection path are plain Python integers updated at connection boundaries;
per-message counters and the statement-latency histogram live in the native engine (atomics) and
are read only when ``/metrics`` is scraped, so the hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


connections_total = Counter("veilgate_client_connections_total", "Client TCP connections accepted.")
connections_active = Gauge("veilgate_client_connections_active", "Client connections open now.")
sessions_total = Counter(
    "veilgate_sessions_total", "Authenticated sessions relayed to an upstream.", ("target",)
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
    "relayed: passed to the other gateways of the shared store, from_peer: one they passed).",
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
    audit_log_failures_total,
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


def _count_native_verdicts() -> None:
    """Queries the client buffers allowed from the verdict cache (no Python call each) join
    ``veilgate_policy_decisions_total{action="allow"}``."""
    global _native_verdicts_counted
    import veilgate_native

    hits = veilgate_native.verdict_hits()
    if hits > _native_verdicts_counted:
        policy_decisions_total.inc(hits - _native_verdicts_counted, action="allow")
        _native_verdicts_counted = hits


COLLECTORS.append(_count_native_verdicts)


def render() -> str:
    """The whole exposition, for ``GET /metrics``."""
    for collect in list(COLLECTORS):
        collect()
    lines: list[str] = []
    for metric in REGISTRY:
        lines.extend(metric.render())
    lines.extend(_native_lines())
    return "\n".join(lines) + "\n"
