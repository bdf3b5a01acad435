#!/usr/bin/env python3
"""What session recording costs per statement, in CPU time (not wall-clock TPS).

    python bench/recording_cpu.py [--transactions 4000] [--rounds 3] [--paths relay,policy]

Starts the bench cluster (scale 1) and, per path, the gateway with recording off and on
(``relay``: the relay bench's ``veilgate`` / ``veilgate-recording``; ``policy``: the policy
bench's, with the guardrail policy).  Each run is ``pgbench -S -t N -c 8 -j 2`` (a fixed
transaction count, simple and prepared) and reads the gateway's CPU before and after from
``/proc/<pid>/task/*/schedstat`` (nanoseconds of run time per thread: no 10 ms tick), split into
the event-loop thread and the other threads (the audit writer, the index...).  Rounds alternate
off / on.  Reported: µs of gateway CPU per transaction (median over rounds), and on - off.

CPU time per transaction still depends on the machine's load (caches, frequency), much less
than TPS does; compare on and off of the same run, never numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402
from harness import Workload, say  # noqa: E402
from policy_targets import POLICY_FILE, VeilgatePolicyTarget  # noqa: E402

VERBOSE = bool(os.environ.get("RECORDING_CPU_VERBOSE"))

WORKLOADS = (
    Workload("select-simple-c8", ("-S", "-M", "simple"), 8, 2),
    Workload("select-prepared-c8", ("-S", "-M", "prepared"), 8, 2),
)


def thread_cpu_ns(pid: int) -> tuple[int, int]:
    """(event-loop thread, every other thread) run time in ns."""
    main = other = 0
    for entry in os.scandir(f"/proc/{pid}/task"):
        try:
            ns = int(Path(entry.path, "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if int(entry.name) == pid:
            main += ns
        else:
            other += ns
    return main, other


def other_threads_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of every thread but the event loop's."""
    user = system = 0
    for entry in os.scandir(f"/proc/{pid}/task"):
        if int(entry.name) == pid:
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        user += int(rest[11])
        system += int(rest[12])
    return user, system


def run_fixed(
    env: harness.BenchEnv, target: harness.Target, w: Workload, txns: int
) -> tuple[float, float, int]:
    """One pgbench run of ``txns`` transactions per client: (loop µs/txn, other µs/txn, txns)."""
    pid = target.proxy_pid()
    assert pid is not None
    ep = target.endpoint()
    m0, o0 = thread_cpu_ns(pid)
    u0, s0 = other_threads_ticks(pid)
    proc = subprocess.run(
        [env.pgbench(), *ep.args(), "-n", "-t", str(txns), *w.argv(), ep.dbname],
        env=ep.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    m1, o1 = thread_cpu_ns(pid)
    u1, s1 = other_threads_ticks(pid)
    if o1 - o0 > 0 and VERBOSE:
        say(f"    other threads: user {u1 - u0} ticks, system {s1 - s0} ticks")
    if proc.returncode != 0:
        raise harness.BenchError(f"pgbench failed: {proc.stderr[-2000:]}")
    _, done, failed, _ = harness.parse_pgbench_output(proc.stdout)
    if failed or not done:
        raise harness.BenchError(f"{failed} failed transactions of {done}")
    return (m1 - m0) / 1e3 / done, (o1 - o0) / 1e3 / done, done


def make(
    env: harness.BenchEnv,
    path: str,
    recording: bool,
    command: str | None = None,
    name: str | None = None,
) -> harness.Target:
    name = name or ("veilgate-recording" if recording else "veilgate")
    if path == "relay":
        cls: type[harness.VeilgateTarget] = (
            harness.VeilgateRecordingTarget if recording else harness.VeilgateTarget
        )
        if name != cls.name:  # a second target of the class: its own directory
            cls = type(cls.__name__, (cls,), {"name": name})
        return cls(env, command=command)
    return VeilgatePolicyTarget(
        env, name, policy_file=POLICY_FILE, recording=recording, command=command
    )


def start_slow(t: harness.Target, timeout_s: float = 300.0) -> None:
    """``ProcessTarget.start`` with a longer wait for the port (a gateway under valgrind)."""
    import socket
    import time

    assert isinstance(t, harness.ProcessTarget)
    with t.output.open("wb") as out:
        t.proc = subprocess.Popen(
            t.command(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=t.workdir,
            start_new_session=True,
            **t.popen_kwargs(),
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            raise harness.BenchError(f"{t.name} exited: {t.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", t.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.5)
    raise harness.BenchError(f"{t.name} did not start: {t.log_tail()}")


def callgrind(args: argparse.Namespace, paths: list[str], workloads: list[Workload]) -> int:
    """Instructions per transaction under callgrind (deterministic, every thread): counters
    zeroed after a warm-up, dumped after a fixed run."""
    out_dir = Path(args.callgrind).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    with harness.bench_env(scale=1) as env:
        for path in paths:
            for rec in (False, True):
                tag = f"{path}-{'on' if rec else 'off'}"
                cmd = (
                    f"valgrind --tool=callgrind --separate-threads=yes "
                    f"--callgrind-out-file={out_dir}/{tag}.%p {sys.executable} -m veilgate"
                )
                t = make(env, path, rec, cmd)
                start_slow(t)
                try:
                    for attempt in range(5):  # the first connection is slow under valgrind
                        try:
                            harness.smoke_check(env, t)
                            break
                        except harness.BenchError:
                            if attempt == 4:
                                raise
                    for w in workloads:
                        run_fixed(env, t, w, max(50, args.transactions // 10))
                        pid = t.proxy_pid()
                        subprocess.run(
                            ["callgrind_control", "-z", str(pid)], check=True, capture_output=True
                        )
                        _, _, done = run_fixed(env, t, w, args.transactions)
                        subprocess.run(
                            ["callgrind_control", "-d", f"{w.name}", str(pid)],
                            check=True,
                            capture_output=True,
                        )
                        lines.append(f"{tag} {w.name} {done} transactions (pid {pid})")
                        say(lines[-1])
                finally:
                    t.stop()
    for line in lines:
        say(line)
    return 0


def _with_native(native: str, start: object) -> None:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [native, old]))
    try:
        start()  # type: ignore[operator]
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def compare_natives(
    args: argparse.Namespace, paths: list[str], workloads: list[Workload], natives: list[str]
) -> int:
    """Recording on with each native build (and off with the first), rounds interleaved."""
    lines = []
    with harness.bench_env(scale=1) as env:
        for path in paths:
            targets: dict[str, harness.Target] = {}
            off = make(env, path, False)
            _with_native(natives[0], off.start)
            targets["off"] = off
            for i, native in enumerate(natives):
                t = make(env, path, True, name=f"veilgate-recording-{i}")
                _with_native(native, t.start)
                targets[f"on:{Path(native).name}"] = t
            try:
                for t in targets.values():
                    harness.smoke_check(env, t)
                for w in workloads:
                    res: dict[str, list[float]] = {k: [] for k in targets}
                    for t in targets.values():
                        run_fixed(env, t, w, max(200, args.transactions // 10))
                    for r in range(args.rounds):
                        names = list(targets)
                        names = names[r % len(names) :] + names[: r % len(names)]
                        for name in names:
                            loop_us, other_us, _ = run_fixed(
                                env, targets[name], w, args.transactions
                            )
                            res[name].append(loop_us + other_us)
                            say(f"  {path} {w.name} {name} round {r + 1}: {loop_us + other_us:.2f}")
                    med = {k: statistics.median(v) for k, v in res.items()}
                    lines.append(
                        f"{path:6} {w.name:20} "
                        + " | ".join(
                            f"{k} {v:.2f} (+{v - med['off']:.2f})" if k != "off" else f"off {v:.2f}"
                            for k, v in med.items()
                        )
                    )
            finally:
                for t in targets.values():
                    t.stop()
    say("gateway CPU µs per transaction (median of rounds), recording on per native build:")
    for line in lines:
        say(line)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=4000, help="per client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paths", default="relay,policy")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    ap.add_argument(
        "--perf",
        metavar="DIR",
        help="after the rounds, one more run per target under `perf record -e cpu-clock` "
        "(files DIR/<path>-<workload>-<off|on>.data)",
    )
    ap.add_argument("--callgrind", metavar="DIR", help="instruction counts under callgrind")
    ap.add_argument(
        "--natives",
        metavar="DIR,DIR",
        help="compare builds of the native engine: directories that hold a veilgate_native "
        "package each (put first on PYTHONPATH); recording on with each, and off with the first",
    )
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    wanted = set(args.workloads.split(","))
    workloads = [w for w in WORKLOADS if w.name in wanted]
    if args.callgrind:
        return callgrind(args, paths, workloads)
    if args.natives:
        return compare_natives(args, paths, workloads, args.natives.split(","))
    lines = []
    with harness.bench_env(scale=1) as env:
        for path in paths:
            targets = {rec: make(env, path, rec) for rec in (False, True)}
            for t in targets.values():
                t.start()
                harness.smoke_check(env, t)
            try:
                for w in workloads:
                    res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
                    for t in targets.values():  # warm-up
                        run_fixed(env, t, w, max(200, args.transactions // 10))
                    for r in range(args.rounds):
                        order = (False, True) if r % 2 == 0 else (True, False)
                        for rec in order:
                            loop_us, other_us, _ = run_fixed(
                                env, targets[rec], w, args.transactions
                            )
                            res[rec].append((loop_us, other_us))
                            say(
                                f"  {path} {w.name} recording={'on ' if rec else 'off'} "
                                f"round {r + 1}: loop {loop_us:.2f} µs/txn, "
                                f"other threads {other_us:.2f} µs/txn"
                            )
                    if args.perf:
                        for rec, t in targets.items():
                            out = Path(args.perf) / f"{path}-{w.name}-{'on' if rec else 'off'}.data"
                            out.parent.mkdir(parents=True, exist_ok=True)
                            perf = subprocess.Popen(
                                [
                                    "perf",
                                    "record",
                                    "-q",
                                    "-e",
                                    "cpu-clock",
                                    "-F",
                                    "2000",
                                    "-o",
                                    str(out),
                                    "-p",
                                    str(t.proxy_pid()),
                                ],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                            try:
                                run_fixed(env, t, w, args.transactions)
                            finally:
                                perf.send_signal(2)
                                perf.wait(60)
                    med = {
                        rec: (
                            statistics.median(x[0] for x in v),
                            statistics.median(x[1] for x in v),
                            statistics.median(x[0] + x[1] for x in v),
                        )
                        for rec, v in res.items()
                    }
                    off, on = med[False], med[True]
                    lines.append(
                        f"{path:6} {w.name:20} off {off[2]:6.2f} µs/txn (loop {off[0]:.2f}) | "
                        f"on {on[2]:6.2f} (loop {on[0]:.2f}, other {on[1]:.2f}) | "
                        f"+{on[2] - off[2]:.2f} µs/txn (loop +{on[0] - off[0]:.2f})"
                    )
            finally:
                for t in targets.values():
                    t.stop()
    say("gateway CPU per transaction (median of rounds; pgbench -S, 1 statement per txn):")
    for line in lines:
        say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
