"""bench/run.py connect (bench/harness.py): cycle latencies from pgbench -l logs, and the -C
summary line."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run_module() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import harness

    return harness


def test_cycle_latencies_and_including_tps(tmp_path: Path) -> None:
    run = _run_module()
    prefix = tmp_path / "pgbench_connect"
    # client_id transaction_no latency_us script_no epoch_s epoch_us
    (tmp_path / "pgbench_connect.100").write_text(
        "0 0 150 0 1700000000 000100\n"
        "1 0 160 0 1700000000 000200\n"
        "0 1 150 0 1700000000 002100\n"
        "1 1 170 0 1700000000 003200\n"
        "0 2 150 0 1700000001 000100\n"
    )
    assert run.read_cycle_latencies_us(prefix) == [2000.0, 3000.0, 998000.0]
    assert not list(tmp_path.iterdir())  # the logs are consumed
    out = (
        "number of transactions actually processed: 1234\n"
        "latency average = 0.5 ms\n"
        "average connection time = 4.1 ms\n"
        "tps = 240.5 (including reconnection times)\n"
    )
    assert run.parse_pgbench_output(out)[:2] == (240.5, 1234)
    import run as bench_run

    names = [w.name for w in bench_run.connect_workloads()]
    assert names == ["connect-c1", "connect-c8"]
    assert all("-C" in w.pgbench_args and w.cycle_latency for w in bench_run.connect_workloads())
