"""Gateway CPU per statement: an ``approve`` rule's grant check vs a plain allow rule.

``python bench/approvals_cpu.py [--transactions N] [--rounds R] [--profile DIR] [--callgrind]``

A deterministic companion of ``run.py policy``'s ``veilgate-approve`` target (issue 13's bar):
the same two gateways (``veilgate``: the guardrail policy; ``veilgate-approve``: the same policy
plus an approve rule on pgbench's reads with a standing grant, approved before the runs), one
client, a fixed number of pgbench ``-S`` transactions (one statement each) per protocol, and the
gateway process's user+system CPU (``/proc``) divided by the statements.  No throughput is
measured: CPU per statement does not depend on how loaded the machine is as much as TPS does
(it is not immune: caches and frequency are shared).  Medians of ``--rounds``, the two targets
interleaved.  ``--profile DIR`` also records py-spy stacks (raw format) of the first round (needs
py-spy).

``--callgrind``: the deterministic measure.  Both gateways run under valgrind's callgrind with
instrumentation off; for each run it is switched on around the pgbench run and the counters
dumped (``callgrind_control``), and the instructions per statement are the difference between a
run of ``--transactions`` and one of a fifth of that, divided by the difference in statements
(connection set-up and pgbench's start-up queries cancel out).  Instructions executed by the
gateway process (all threads), independent of the machine's load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import approvals_bench
import harness
from harness import BenchError, say
from policy_targets import POLICY_FILE, VeilgatePolicyTarget

MODES = ("simple", "prepared")
KEEP: Path | None = None
"""Where ``--keep-dumps`` copies the callgrind dumps (for callgrind_annotate)."""


def _target(env: harness.BenchEnv, name: str, valgrind: bool) -> VeilgatePolicyTarget:
    command = None
    if valgrind:
        out = env.workdir / f"callgrind-{name}.out"
        command = (
            f"valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={out} "
            f"{sys.executable} -m veilgate"
        )
    t: VeilgatePolicyTarget
    if name == "veilgate-approve":
        t = approvals_bench.VeilgateApproveTarget(env, name, command=command)
    else:
        t = VeilgatePolicyTarget(env, name, policy_file=POLICY_FILE, command=command)
    if valgrind:
        t.startup_timeout_s = 600.0
    return t


def _callgrind(pid: int, *args: str) -> str:
    proc = subprocess.run(
        ["callgrind_control", *args, str(pid)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"callgrind_control {args}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def _instructions(env: harness.BenchEnv, target: VeilgatePolicyTarget, mode: str, n: int) -> int:
    """Instructions the gateway executed (all threads) over one pgbench run of ``n``."""
    pid = target.proxy_pid()
    assert pid is not None
    before = set(env.workdir.glob(f"callgrind-{target.name}.out*"))
    _callgrind(pid, "-z")
    _callgrind(pid, "-i", "on")
    _pgbench(env, target, mode, n)
    _callgrind(pid, "-i", "off")
    _callgrind(pid, "-d")
    new = set(env.workdir.glob(f"callgrind-{target.name}.out*")) - before
    if len(new) != 1:
        raise BenchError(f"expected one new callgrind dump, got {sorted(new)}")
    dump = new.pop()
    total = None
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            total = int(line.split()[1])
    if KEEP is not None:
        shutil.copy(dump, KEEP / f"{target.name}-{mode}-{n}.callgrind")
    dump.unlink()
    if total is None:
        raise BenchError(f"{dump}: no totals")
    return total


def _pgbench(env: harness.BenchEnv, target: VeilgatePolicyTarget, mode: str, n: int) -> None:
    ep = target.endpoint()
    proc = subprocess.run(
        [env.pgbench(), *ep.args(), "-n", "-S", "-M", mode, "-c", "1", "-t", str(n), ep.dbname],
        env=ep.env(),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0 or f"actually processed: {n}/{n}" not in proc.stdout:
        raise BenchError(f"{target.name} -M {mode}: pgbench failed:\n{proc.stdout}{proc.stderr}")


def _check(env: harness.BenchEnv, target: VeilgatePolicyTarget) -> None:
    if target.name == "veilgate-approve":
        assert isinstance(target, approvals_bench.VeilgateApproveTarget)
        target.approve_pgbench(env)


def _cpu_seconds(pid: int) -> float:
    """CPU time of every live thread of ``pid`` in ns resolution (``schedstat``; /proc/PID/stat
    counts clock ticks of 10 ms)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _run(
    env: harness.BenchEnv,
    target: VeilgatePolicyTarget,
    mode: str,
    n: int,
    profile: Path | None,
) -> float:
    """Gateway CPU µs per statement over ``n`` pgbench -S transactions."""
    pid = target.proxy_pid()
    assert pid is not None
    spy = None
    if profile is not None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise BenchError("--profile needs py-spy")
        out = profile / f"{target.name}-{mode}.txt"
        spy = subprocess.Popen(
            [exe, "record", "-p", str(pid), "-o", str(out), "-r", "250", "-f", "raw"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    cpu0 = _cpu_seconds(pid)
    _pgbench(env, target, mode, n)
    used = _cpu_seconds(pid) - cpu0
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    return used * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--callgrind", action="store_true", help="instructions (see the docstring)")
    p.add_argument("--keep-dumps", type=Path, default=None, help="copy callgrind dumps here")
    args = p.parse_args(argv)
    global KEEP
    KEEP = args.keep_dumps
    if KEEP is not None:
        KEEP.mkdir(parents=True, exist_ok=True)
    if args.callgrind:
        return _main_callgrind(args)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    names = ["veilgate", "veilgate-approve"]
    results: dict[tuple[str, str], list[float]] = {}
    with (
        harness.bench_env(scale=1) as env,
        harness.started_targets(
            env, names, lambda n: _target(env, n, False), check=_check
        ) as targets,
    ):
        for t in targets:  # warm-up: caches filled, grants used once
            for mode in MODES:
                _run(env, t, mode, 500, None)
        for r in range(args.rounds):
            for mode in MODES:
                for t in targets:
                    us = _run(env, t, mode, args.transactions, args.profile if r == 0 else None)
                    results.setdefault((t.name, mode), []).append(us)
                    say(f"round {r + 1} {mode:8} {t.name:17} {us:7.2f} µs/statement")
    say("")
    say(
        f"gateway CPU per statement, medians of {args.rounds} x {args.transactions} "
        "(pgbench -S -c 1)"
    )
    for mode in MODES:
        allow = statistics.median(results[("veilgate", mode)])
        appr = statistics.median(results[("veilgate-approve", mode)])
        say(
            f"  {mode:8} allow {allow:7.2f}  approve {appr:7.2f}  "
            f"extra {appr - allow:+6.2f} µs ({appr / allow:.3f}x)"
        )
    return 0


def _main_callgrind(args: argparse.Namespace) -> int:
    names = ["veilgate", "veilgate-approve"]
    big = args.transactions
    small = max(1, big // 5)
    per: dict[tuple[str, str], list[float]] = {}
    with (
        harness.bench_env(scale=1) as env,
        harness.started_targets(
            env, names, lambda n: _target(env, n, True), check=_check
        ) as targets,
    ):
        for t in targets:  # warm-up: caches filled, grants used once
            for mode in MODES:
                _pgbench(env, t, mode, 50)
        for r in range(args.rounds):
            for mode in MODES:
                for t in targets:
                    lo = _instructions(env, t, mode, small)
                    hi = _instructions(env, t, mode, big)
                    ins = (hi - lo) / (big - small)
                    per.setdefault((t.name, mode), []).append(ins)
                    say(f"round {r + 1} {mode:8} {t.name:17} {ins:10.0f} instructions/statement")
    say("")
    say(
        f"gateway instructions per statement (callgrind), medians of {args.rounds}: "
        f"(run of {big} - run of {small}) / {big - small}, pgbench -S -c 1"
    )
    for mode in MODES:
        allow = statistics.median(per[("veilgate", mode)])
        appr = statistics.median(per[("veilgate-approve", mode)])
        say(
            f"  {mode:8} allow {allow:9.0f}  approve {appr:9.0f}  "
            f"extra {appr - allow:+9.0f} ({appr / allow:.3f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
