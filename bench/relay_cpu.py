"""Proxy CPU per relayed transaction, measured deterministically enough to compare commits on a
loaded machine (``python bench/relay_cpu.py``).

A throwaway cluster (TLS + SCRAM, as ``bench/run.py``), the gateway with policy and masking off
(and optionally PgBouncer in session mode); for each protocol mode ``pgbench -n -S -M MODE -c C
-t N`` runs through the proxy, and the proxy process's CPU time is read before and after from
``/proc/PID/task/*/schedstat`` (nanoseconds of run time, every thread): CPU µs per transaction.
The fastest of ``--rounds`` rounds is reported (other processes only ever add to a round), with
the median beside it.  This is CPU time, not throughput: it does not depend on how busy the other
core is, though caches shared with the load still move it by a few per cent.

``--syscalls``: system calls per transaction, by name (``strace -c`` attached to the proxy).

``--callgrind``: the gateway runs under ``valgrind --tool=callgrind``, instrumenting nothing
during start-up; for each mode a short and a long pgbench run are counted (zeroed before, dumped
after) and their difference divided by the extra transactions is user-space instructions per
transaction, connection set-up cancelled out (repeatable for the same build, whatever the load);
``--keep`` keeps the dumps for ``callgrind_annotate``.  (PgBouncer under callgrind hung here.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BenchEnv,
    BenchError,
    PgBouncerTarget,
    ProcessTarget,
    Target,
    VeilgateTarget,
    bench_env,
    say,
    smoke_check,
)


def cpu_ns(pid: int) -> int:
    """Run time of every thread of ``pid`` so far, in nanoseconds (schedstat)."""
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            total += int(Path(task.path, "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


def pgbench(env: BenchEnv, target: Target, mode: str, clients: int, txns: int) -> None:
    ep = target.endpoint()
    argv = [env.pgbench(), *ep.args(), "-n", "-S", "-M", mode, "-c", str(clients)]
    argv += ["-j", str(clients), "-t", str(txns), ep.dbname]
    proc = subprocess.run(
        argv, env=ep.env(), capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"pgbench -M {mode} failed:\n{proc.stderr.strip()[-2000:]}")


def syscalls(
    env: BenchEnv, target: ProcessTarget, pid: int, mode: str, clients: int, txns: int
) -> dict[str, int]:
    """System calls of the proxy (every thread) while ``txns`` transactions per client run,
    by name, most frequent first (``strace -c``: counts, not times)."""
    out = target.workdir / f"strace-{mode}.txt"
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-U", "name,calls", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached to every thread
    try:
        pgbench(env, target, mode, clients, txns)
    finally:
        tracer.send_signal(2)
        tracer.wait(30)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


class Callgrind:
    """A proxy target run under callgrind, instrumenting nothing until ``-i on``: mixed in
    before the target's class (:class:`CallgrindVeilgate`, :class:`CallgrindPgBouncer`)."""

    workdir: Path
    output: Path
    proc: subprocess.Popen[bytes] | None
    port: int

    def command(self) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.workdir / 'callgrind.out'}.%p",
            *super().command(),  # type: ignore[misc]
        ]

    def start(self) -> None:
        # valgrind start-up is slow: wait for the port far longer than the usual 30 s
        import contextlib
        import socket

        pre = getattr(self, "_ids", None)
        if pre is not None:  # PgBouncer runs as PostgreSQL's OS user
            self.output.touch()
            os.chown(self.output, *pre)
        with self.output.open("wb") as out:
            proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[assignment]
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                **self.popen_kwargs(),  # type: ignore[attr-defined]
            )
        self.proc = proc
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"proxy under valgrind exited:\n{self.output.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.5)
        raise BenchError("proxy under valgrind did not listen within 900 s")

    def control(self, *args: str) -> None:
        assert self.proc is not None
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=600,
        )

    def dump(self, label: str) -> int:
        """Dumps what was collected since the last zero; returns its instruction count."""
        before = set(self.workdir.glob("callgrind.out.*"))
        self.control("--dump=" + label)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in set(self.workdir.glob("callgrind.out.*")) - before:
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
            time.sleep(0.5)
        raise BenchError("callgrind dump not found")


class CallgrindVeilgate(Callgrind, VeilgateTarget):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="veilgate", help="veilgate,pgbouncer")
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("-c", "--clients", type=int, default=1)
    ap.add_argument("-t", "--transactions", type=int, default=5000, help="per client")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--callgrind", action="store_true", help="instructions per transaction")
    ap.add_argument(
        "--syscalls", action="store_true", help="system calls per transaction (strace -c)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (dumps)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if args.callgrind and shutil.which("callgrind_control") is None:
        raise BenchError("valgrind (callgrind_control) not found")
    with bench_env(scale=1, keep=args.keep) as env:
        for name in args.targets.split(","):
            target: Target
            if name == "pgbouncer" and args.callgrind:
                raise BenchError("--callgrind measures the gateway only")
            if name == "pgbouncer":
                target = PgBouncerTarget(env)
            elif name == "veilgate" and args.callgrind:
                target = CallgrindVeilgate(env)
            elif name == "veilgate":
                target = VeilgateTarget(env)
            else:
                raise BenchError(f"unknown target {name}")
            target.start()
            try:
                smoke_check(env, target)
                for mode in modes:  # warm-up: caches, statement plans, allocator
                    pgbench(env, target, mode, args.clients, 50 if args.callgrind else 500)
                n = args.clients * args.transactions
                if isinstance(target, Callgrind):
                    target.control("-i", "on")
                    small = max(1, args.transactions // 4)
                    for mode in modes:
                        # the difference of a long and a short run: connection set-up and
                        # teardown cancel out
                        ir: list[int] = []
                        for t in (small, args.transactions):
                            target.control("--zero")
                            pgbench(env, target, mode, args.clients, t)
                            ir.append(target.dump(f"{mode}-{t}"))
                        per = (ir[1] - ir[0]) / (args.clients * (args.transactions - small))
                        say(
                            f"{name} -M {mode} -c {args.clients}: {per:,.0f} instructions/txn "
                            f"(runs of {small} and {args.transactions} per client: "
                            f"{ir[0]:,} and {ir[1]:,})"
                        )
                    say(f"dumps: {target.workdir}")
                    continue
                pid = target.proxy_pid()
                assert pid is not None
                if args.syscalls:
                    assert isinstance(target, ProcessTarget)
                    for mode in modes:
                        calls = syscalls(env, target, pid, mode, args.clients, args.transactions)
                        say(
                            f"{name} -M {mode} -c {args.clients}: system calls per transaction: "
                            + ", ".join(f"{k} {v / n:.2f}" for k, v in calls.items())
                        )
                    continue
                us: dict[str, list[float]] = {m: [] for m in modes}
                for _ in range(args.rounds):
                    for mode in modes:
                        t0 = cpu_ns(pid)
                        pgbench(env, target, mode, args.clients, args.transactions)
                        us[mode].append((cpu_ns(pid) - t0) / 1000.0 / n)
                for mode in modes:
                    v = us[mode]
                    say(
                        f"{name} -M {mode} -c {args.clients} x {args.transactions}: "
                        f"CPU {min(v):.1f} us/txn (min), {statistics.median(v):.1f} (median), "
                        f"rounds {', '.join(f'{x:.1f}' for x in v)}"
                    )
            finally:
                target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
