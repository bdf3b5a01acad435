"""bench/harness.py results hygiene: every results file says what ran where (commit, dirty flag,
versions, CPU, date, command line); a --quick run never replaces a full run's file; tables carry
the spread over rounds; ``run.py compare`` puts two runs side by side; PgBouncer's transaction
mode skips what it cannot run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def h() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import harness

    return harness


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"output": None, "quick": False, **kw})


def test_meta_names_the_run(h: ModuleType) -> None:
    meta = h.run_meta(None, quick=True, argv=["bench/run.py", "relay", "--quick"])
    assert meta["quick"] is True
    assert meta["command"] == "bench/run.py relay --quick"
    assert len(meta["commit"]) == 40 and isinstance(meta["dirty"], bool)
    assert set(meta["versions"]) == {"python", "rust", "postgres", "pgbouncer", "veilgate"}
    assert meta["versions"]["python"].count(".") == 2
    assert meta["cpu"]["cores"] >= 1 and meta["cpu"]["model"]
    assert meta["date"].endswith("Z")
    json.dumps(meta)  # serialisable as it is


def test_quick_runs_go_to_their_own_file(h: ModuleType, tmp_path: Path) -> None:
    assert h.results_path(_args(), "relay") == h.RESULTS_DIR / "relay.json"
    assert h.results_path(_args(quick=True), "relay") == h.RESULTS_DIR / "relay.quick.json"
    assert h.results_path(_args(quick=True, output=tmp_path / "x.json"), "relay") == (
        tmp_path / "x.json"
    )


def _sample(h: ModuleType, target: str, tps: float, rnd: int = 1) -> Any:
    return h.Sample("select-simple-c1", target, rnd, tps, 0.1, 0.2, 50.0)


def test_a_quick_run_never_overwrites_a_full_one(h: ModuleType, tmp_path: Path) -> None:
    full = {"quick": False}
    quick = {"quick": True}
    legacy = tmp_path / "legacy.json"  # a list: written before results carried metadata
    legacy.write_text(json.dumps([_sample(h, "direct", 1.0).as_json()]))
    before = legacy.read_text()
    with pytest.raises(h.BenchError, match="full run"):
        h.write_results(legacy, [_sample(h, "direct", 2.0)], quick)
    assert legacy.read_text() == before
    path = tmp_path / "relay.json"
    h.write_results(path, [_sample(h, "direct", 3.0)], full)
    with pytest.raises(h.BenchError):
        h.write_results(path, [_sample(h, "direct", 4.0)], quick)
    meta, rows = h.read_results(path)
    assert meta == full and rows[0]["tps"] == 3.0
    q = tmp_path / "relay.quick.json"
    h.write_results(q, [_sample(h, "direct", 5.0)], quick)
    h.write_results(q, [_sample(h, "direct", 6.0)], quick)  # quick over quick is fine
    h.write_results(path, [_sample(h, "direct", 7.0)], full)  # a full run replaces a full run
    assert h.read_results(q)[1][0]["tps"] == 6.0 and h.read_results(path)[1][0]["tps"] == 7.0
    assert h.read_results(legacy) == ({}, json.loads(before))


def test_tables_show_the_spread_over_rounds(h: ModuleType) -> None:
    assert h.spread_pct([100.0, 110.0, 90.0]) == pytest.approx(20.0)
    assert h.spread_pct([100.0]) is None
    samples = [_sample(h, "veilgate", t, r) for r, t in enumerate((100.0, 110.0, 90.0), 1)]
    table = h.summary_table(samples, ["veilgate"])
    assert "±%" in table.splitlines()[0]
    assert "  20.0 " in table.splitlines()[2]


def test_compare_two_runs(h: ModuleType, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    h.write_results(a, [_sample(h, "veilgate", 1000.0), _sample(h, "direct", 2000.0)], {})
    a.write_text(json.dumps(h.read_results(a)[1]))  # A: an old file without metadata
    meta_b = {"commit": "f" * 40, "dirty": True, "quick": False, "date": "2026-12-07T18:00:00Z"}
    h.write_results(b, [_sample(h, "veilgate", 1250.0), _sample(h, "pgbouncer", 9.0)], meta_b)
    text = h.compare_table(a, b)
    lines = text.splitlines()
    assert "no metadata" in lines[0] and "ffffffffffff+dirty" in lines[1]
    row = next(line for line in lines if " veilgate " in line)
    assert "1000.0" in row and "1250.0" in row and " 1.250 " in row
    assert "in one file only: select-simple-c1/direct, select-simple-c1/pgbouncer" in text


def test_pgbouncer_transaction_mode_skips_prepared_before_1_21(h: ModuleType) -> None:
    t = object.__new__(h.PgBouncerTarget)
    t.mode, t.version = "transaction", (1, 18, 0)
    prepared = h.Workload("p", ("-S", "-M", "prepared"))
    simple = h.Workload("s", ("-S", "-M", "simple"))
    assert "1.18.0 < 1.21" in t.unsupported(prepared)
    assert t.unsupported(simple) is None
    t.version = (1, 21, 0)
    assert t.unsupported(prepared) is None
    t.mode, t.version = "session", (1, 18, 0)
    assert t.unsupported(prepared) is None
    assert "pgbouncer-tx" in h.ALL_TARGETS


def test_connect_bench_has_the_reuse_target(h: ModuleType) -> None:
    import run

    assert "veilgate-reuse" in h.CONNECT_TARGETS and "veilgate-reuse" not in h.ALL_TARGETS
    assert h.parse_targets("direct,veilgate-reuse", h.CONNECT_TARGETS) == [
        "direct",
        "veilgate-reuse",
    ]
    with pytest.raises(h.BenchError):
        h.parse_targets("veilgate-reuse")  # relay: not one of its targets
    assert h.VeilgateReuseOIDCTarget.pool_size > 0 and h.VeilgateTarget.pool_size == 0
    S = h.Sample
    rows = [
        S("connect-c1", "veilgate", 1, 100.0, 10.0, 20.0, 800.0),
        S("connect-c1", "veilgate-reuse", 1, 300.0, 4.0, 8.0, 200.0),
    ]
    table = h.summary_table(rows, ["veilgate", "veilgate-reuse"])
    assert "veilgate-reuse/veilgate" in table and "tps 3.00" in table and "cpu 0.25" in table
    assert run.REGISTRY  # the entry point loads
