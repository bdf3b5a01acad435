"""``python bench/run.py mask --part cpu``: what masking costs the gateway per row, measured
without a clock.

Each target (``veilgate``, ``veilgate-nomask``, ``veilgate-columns``) serves a fixed number of
transactions of the large workload (1,000 rows x 6 text columns each, ``-M prepared``, one
client); the gateway process's user+sys CPU and, when ``perf`` can attach, its instruction count
over exactly those transactions are divided by the transaction count.  Instructions do not
depend on how loaded the machine is, so this measure is usable where wall-clock TPS is not;
it says nothing about latency or TPS.  ``--profile`` also records a ``perf`` call profile of each
target and prints its top symbols (shared object and function).

Where the CPU has no hardware counters for ``perf`` (virtual machines often do not),
``--callgrind`` runs each gateway under ``valgrind --tool=callgrind`` with instrumentation off,
switches it on (``callgrind_control -i on``) for exactly the measured transactions and reads the
instructions executed (Ir) from a dump: the same number on a loaded machine as on a quiet one.
The gateway is then about 50x slower, so keep ``--transactions`` small (50-100).  Valgrind's
CPU emulation has no SHA extensions: the keyed hash runs its portable code there, so the hash's
share is larger than on the real CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import WORKLOADS_DIR, BenchError, say

ROWS_PER_TXN = 1000
"""Rows of one large-workload transaction (workloads/large.pgbench)."""


@dataclass
class CpuRow:
    target: str
    transactions: int
    cpu_us_per_txn: float
    instructions_per_txn: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": "large-cpu",
            "target": self.target,
            "transactions": self.transactions,
            "cpu_us_per_txn": round(self.cpu_us_per_txn, 2),
            "instructions_per_txn": None
            if self.instructions_per_txn is None
            else round(self.instructions_per_txn),
        }


def perf_usable() -> bool:
    return shutil.which("perf") is not None


@contextlib.contextmanager
def perf_attached(pid: int, out: Path, record: bool) -> Iterator[None]:
    """``perf stat`` (or ``perf record -g``) attached to ``pid`` for the duration of the block."""
    if record and os.environ.get("VG_PROFILER") == "py-spy":
        argv = ["py-spy", "record", "-r", "499", "-f", "raw", "-o", str(out), "-p", str(pid)]
    elif record:
        graph = os.environ.get("VG_PERF_CALL_GRAPH", "fp")  # dwarf: Rust frames too (bigger)
        argv = ["perf", "record", "-q", "--call-graph", graph, "-F", "999"]
        argv += ["-o", str(out), "-p", str(pid)]
    else:
        argv = ["perf", "stat", "-x", ",", "-e", "instructions", "-o", str(out), "-p", str(pid)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # perf needs a moment to attach; a short pause is not a measurement
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def read_instructions(path: Path) -> float | None:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2].startswith("instructions"):
                with contextlib.suppress(ValueError):
                    return float(parts[0])
    return None


def top_symbols(data: Path, limit: int = 40) -> str:
    """The hottest (shared object, symbol) pairs of a perf recording, self time."""
    proc = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--no-children",
            "--stdio",
            "-g",
            "none",
            "--sort",
            "dso,sym",
            "--percent-limit",
            "0.5",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"\s+\d+\.\d+%", ln)]
    return "\n".join(lines[:limit])


def run_pgbench_count(env: Any, ep: Any, transactions: int, logdir: Path) -> int:
    """``transactions`` large-workload transactions on one client; the number pgbench ran."""
    argv = [
        env.pgbench(),
        *ep.args(),
        "-n",
        "-t",
        str(transactions),
        "-f",
        str(WORKLOADS_DIR / "large.pgbench"),
        "-M",
        "prepared",
        "-c",
        "1",
        ep.dbname,
    ]
    proc = subprocess.run(
        argv, env=ep.env(), cwd=logdir, capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"pgbench failed with exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    m = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    if m is None:
        raise BenchError(f"pgbench output without a transaction count:\n{proc.stdout[-2000:]}")
    return int(m.group(1))


def callgrind_instructions(pid: int, transactions: int, env: Any, ep: Any) -> tuple[int, int]:
    """(transactions run, instructions) of the gateway under callgrind over those
    transactions only."""
    out_dir = env.workdir / f"callgrind-{pid}"
    out_dir.mkdir(exist_ok=True)

    def control(*args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(pid)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    control("-z")  # zero what the warm-up counted
    control("-i", "on")
    done = run_pgbench_count(env, ep, transactions, env.workdir)
    control("-i", "off")
    before = set(env.workdir.glob("veilgate*/callgrind.out*"))
    control("-d")
    dumps = [p for p in env.workdir.glob("veilgate*/callgrind.out*") if p not in before]
    total = 0
    for dump in dumps:
        # "summary:" may stay 0 when collection was toggled; "totals:" has the count
        found = re.findall(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
        total = max([total, *(int(n) for n in found)])
    if not total:
        raise BenchError(f"no callgrind dump with a total for pid {pid} ({dumps})")
    return done, total


def measure_target(
    env: Any, target: Any, transactions: int, profile: bool, callgrind: bool = False
) -> tuple[CpuRow, str | None]:
    pid = target.proxy_pid()
    if pid is None:
        raise BenchError(f"{target.name}: no gateway process")
    ep = target.endpoint()
    run_pgbench_count(env, ep, max(20, transactions // 10), env.workdir)  # warm caches and plans
    if callgrind:
        cpu0 = harness.process_tree_cpu_seconds(pid)
        done, instr = callgrind_instructions(pid, transactions, env, ep)
        cpu = harness.process_tree_cpu_seconds(pid) - cpu0
        return CpuRow(target.name, done, cpu * 1e6 / done, instr / done), None
    stat_out = env.workdir / f"perf-stat-{target.name}.txt"
    cpu0 = harness.process_tree_cpu_seconds(pid)
    with perf_attached(pid, stat_out, record=False) if perf_usable() else contextlib.nullcontext():
        done = run_pgbench_count(env, ep, transactions, env.workdir)
    cpu = harness.process_tree_cpu_seconds(pid) - cpu0
    instr = read_instructions(stat_out) if perf_usable() else None
    row = CpuRow(
        target.name,
        done,
        cpu * 1e6 / done,
        None if instr is None else instr / done,
    )
    report = None
    if profile and perf_usable():
        data = env.workdir / f"perf-{target.name}.data"
        with perf_attached(pid, data, record=True):
            run_pgbench_count(env, ep, transactions, env.workdir)
        report = top_symbols(data)
    return row, report


def cpu_table(rows: Sequence[CpuRow], baseline: str) -> str:
    base = next((r for r in rows if r.target == baseline), None)
    head = (
        f"{'target':<18} {'txns':>6} {'cpu µs/txn':>11} {'instr/txn':>13} "
        f"{'instr/row':>10} {'extra instr/row':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ipt = r.instructions_per_txn
        extra = ""
        if ipt is not None and base is not None and base.instructions_per_txn is not None:
            extra = f"{(ipt - base.instructions_per_txn) / ROWS_PER_TXN:16,.0f}"
        lines.append(
            f"{r.target:<18} {r.transactions:>6} {r.cpu_us_per_txn:>11.1f} "
            f"{'-' if ipt is None else f'{ipt:13,.0f}':>13} "
            f"{'-' if ipt is None else f'{ipt / ROWS_PER_TXN:10,.0f}':>10} {extra}"
        )
    return "\n".join(lines)


def started_slowly(target: Any, args: argparse.Namespace) -> Any:
    """``target``, given ten minutes to listen when it runs under valgrind."""
    if args.callgrind:
        target.startup_timeout_s = 600.0
    return target


def run_cpu(args: argparse.Namespace, make_target: Any, check: Any, targets: Sequence[str]) -> int:
    transactions = args.transactions
    if args.callgrind:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            raise BenchError("--callgrind needs valgrind (apt-get install valgrind)")
        inner = args.veilgate_cmd or f"{sys.executable} -m veilgate"
        args.veilgate_cmd = (
            "valgrind --tool=callgrind --instr-atstart=no --dump-instr=no "
            "--callgrind-out-file=callgrind.out.%p " + inner
        )

    key = secrets.token_urlsafe(32)
    rows: list[CpuRow] = []
    reports: dict[str, str] = {}
    scale = args.scale if args.scale is not None else 1
    with (
        harness.bench_env(scale=scale, keep=args.keep) as env,
        harness.started_targets(
            env,
            list(targets),
            lambda n: started_slowly(make_target(n, env, args, key), args),
            check=check,
        ) as started,
    ):
        if not perf_usable():
            say("perf not found: CPU time only (no instruction counts)")
        for target in started:
            row, report = measure_target(
                env, target, transactions, args.profile, callgrind=args.callgrind
            )
            rows.append(row)
            say(
                f"  {target.name:<18} {row.transactions} txns  {row.cpu_us_per_txn:9.1f} µs/txn"
                + (
                    ""
                    if row.instructions_per_txn is None
                    else f"  {row.instructions_per_txn:14,.0f} instructions/txn"
                )
            )
            if report is not None:
                reports[target.name] = report
    say("")
    how = "callgrind" if args.callgrind else "perf stat"
    say(
        f"mask cpu: gateway process user+sys CPU and instructions ({how}) per transaction of "
        f"the large workload ({ROWS_PER_TXN} rows x 6 text columns, -M prepared, -c 1, TLS both "
        f"sides); load average {os.getloadavg()[0]:.2f} (instructions do not depend on it, CPU "
        "time does somewhat)"
    )
    say(cpu_table(rows, "veilgate-nomask"))
    for name, report in reports.items():
        say(f"\nperf profile of {name} (self, dso + symbol):\n{report}")
    return 0
