"""Approval metrics in the Prometheus exposition: counters by outcome, the decision histogram."""

from __future__ import annotations

from veilgate import metrics


def test_histogram_buckets_are_cumulative() -> None:
    h = metrics.Histogram("t_seconds", "test", (1, 10, 100))
    for v in (0.5, 5, 5, 50, 500):
        h.observe(v)
    lines = list(h.render())
    assert 't_seconds_bucket{le="1"} 1' in lines
    assert 't_seconds_bucket{le="10"} 3' in lines
    assert 't_seconds_bucket{le="100"} 4' in lines
    assert 't_seconds_bucket{le="+Inf"} 5' in lines
    assert "t_seconds_sum 560.5" in lines and "t_seconds_count 5" in lines


def test_approval_metrics_are_exposed() -> None:
    metrics.approval_requests_total.inc(kind="statement", outcome="requested")
    metrics.approval_decision_seconds.observe(12.0)
    text = metrics.render()
    assert 'veilgate_approval_requests_total{kind="statement",outcome="requested"}' in text
    assert "# TYPE veilgate_approval_decision_seconds histogram" in text
    assert 'veilgate_approval_decision_seconds_bucket{le="15"}' in text
    for name in ("veilgate_approval_checks_total", "veilgate_approval_waits_total"):
        assert f"# TYPE {name} counter" in text
