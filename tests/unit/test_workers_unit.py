"""The pieces of ``serve --workers N`` that need no process: the merged metrics exposition, the
worker spec on the command line, and the worker id carried in cancel secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilgate.gateway.cancel import CancelRegistry
from veilgate.gateway.workerlink import WorkerSpec, worker_bits
from veilgate.workers import merge_metrics, resolve_workers

W0 = """# HELP veilgate_x_total Things.
# TYPE veilgate_x_total counter
veilgate_x_total 3.0
# HELP veilgate_h Latency.
# TYPE veilgate_h histogram
veilgate_h_bucket{le="0.1"} 1
veilgate_h_bucket{le="+Inf"} 2
veilgate_h_sum 0.3
veilgate_h_count 2
# HELP veilgate_y Labelled.
# TYPE veilgate_y gauge
veilgate_y{kind="a b}c"} 1.0
"""
W1 = W0.replace("veilgate_x_total 3.0", "veilgate_x_total 4.0")


def test_merge_adds_a_worker_label_and_keeps_families_together() -> None:
    text = merge_metrics({0: W0, 1: W1})
    lines = text.splitlines()
    assert lines.count("# TYPE veilgate_x_total counter") == 1
    assert lines.count("# TYPE veilgate_h histogram") == 1
    i = lines.index("# TYPE veilgate_x_total counter")
    assert lines[i + 1 : i + 3] == [
        'veilgate_x_total{worker="0"} 3.0',
        'veilgate_x_total{worker="1"} 4.0',
    ]
    # histogram series (bucket, sum, count) stay under their family's header
    h = lines.index("# TYPE veilgate_h histogram")
    y = lines.index("# TYPE veilgate_y gauge")
    assert 'veilgate_h_sum{worker="1"} 0.3' in lines[h:y]
    assert 'veilgate_h_bucket{worker="0",le="+Inf"} 2' in lines[h:y]
    assert 'veilgate_y{worker="1",kind="a b}c"} 1.0' in lines[y:]
    # nothing lost, nothing invented
    assert sum(1 for line in lines if not line.startswith("#")) == 2 * sum(
        1 for line in W0.splitlines() if not line.startswith("#")
    )


def test_worker_spec_round_trips_and_rejects_garbage() -> None:
    spec = WorkerSpec(1, 3, Path("/tmp/x:y"), 6432, 42, 7)
    assert WorkerSpec.decode(spec.encode()) == spec
    assert WorkerSpec.decode(WorkerSpec(0, 2, Path("/r"), 1, 2).encode()).status_fd is None
    for bad in ("", "1:1:6432:42::/r", "0:2:0:42::/r", "a:2:6432:42::/r", "2:2:6432:1::/r"):
        with pytest.raises(ValueError):
            WorkerSpec.decode(bad)


@pytest.mark.parametrize("count", [2, 3, 4, 5, 8, 64])
def test_cancel_secrets_carry_the_worker(count: int) -> None:
    bits = worker_bits(count)
    assert (1 << bits) >= count and (1 << (bits - 1)) < count
    for wid in range(count):
        reg: CancelRegistry[str] = CancelRegistry(wid, bits)
        for pid in range(50):
            key = reg.register(f"s{pid}", pid)
            assert reg.worker_of(key, bits) == wid
            assert reg.lookup(pid, key) == f"s{pid}"


def test_one_worker_needs_no_bits_and_auto_counts_cores() -> None:
    assert worker_bits(1) == 0
    assert resolve_workers(3) == 3
    assert resolve_workers(0) >= 1


def test_a_family_named_like_another_familys_series_stays_its_own() -> None:
    text = (
        "# TYPE veilgate_q gauge\nveilgate_q 1\n"
        "# TYPE veilgate_q_count counter\nveilgate_q_count 5\n"
    )
    lines = merge_metrics({0: text}).splitlines()
    assert lines == [
        "# TYPE veilgate_q gauge",
        'veilgate_q{worker="0"} 1',
        "# TYPE veilgate_q_count counter",
        'veilgate_q_count{worker="0"} 5',
    ]
