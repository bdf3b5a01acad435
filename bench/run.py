#!/usr/bin/env python3
"""veilgate end-to-end benchmarks: one set of pgbench workloads vs Postgres, veilgate, PgBouncer.

    python bench/run.py relay [--quick] [--rounds N] [--duration S] [--targets direct,pgbouncer]

Everything runs in this process's children on this machine: a throwaway PostgreSQL cluster
(:class:`veilgate.testing.cluster.TempCluster`, TLS + SCRAM), PgBouncer (session pooling) and the
gateway (``python -m veilgate serve``), each with its own files in a temporary directory.  Every
client connection uses TLS (``PGSSLMODE=require``).  Targets are interleaved round-robin inside each
round, so drift on a shared machine hits all of them alike; summaries are medians over rounds.

The machinery (targets, pgbench runs, per-transaction-log percentiles, proxy CPU accounting, the
round-robin matrix and the summary table) is ``harness.py``, shared by every subcommand: a new
bench is a list of :class:`~harness.Workload` and a ``register`` function.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # loaded by path (tests): the bench modules sit next to us
    sys.path.insert(0, str(BENCH_DIR))

from harness import (  # noqa: E402
    ALL_TARGETS,
    CONNECT_TARGETS,
    WORKLOADS_DIR,
    BenchError,
    Workload,
    add_common_args,
    compare_table,
    run_bench,
)
from veilgate.testing.cluster import ClusterError  # noqa: E402

# --- relay -------------------------------------------------------------------------------------


def relay_workloads() -> list[Workload]:
    large = str(WORKLOADS_DIR / "large.pgbench")
    return [
        Workload("select-simple-c1", ("-S", "-M", "simple"), 1, 1),
        Workload("select-simple-c8", ("-S", "-M", "simple"), 8, 2),
        Workload("select-prepared-c1", ("-S", "-M", "prepared"), 1, 1),
        Workload("select-prepared-c8", ("-S", "-M", "prepared"), 8, 2),
        Workload("large-c1", ("-f", large, "-M", "prepared"), 1, 1),
        Workload("large-c8", ("-f", large, "-M", "prepared"), 8, 2),
        # the workers comparison: veilgate (--workers 1) vs veilgate-w2 (--workers 2)
        Workload("select-simple-c16", ("-S", "-M", "simple"), 16, 2),
        Workload("select-prepared-c16", ("-S", "-M", "prepared"), 16, 2),
    ]


def cmd_relay(args: argparse.Namespace) -> int:
    return run_bench(args, "relay", relay_workloads())


def register_relay(sub: Any) -> None:
    p = sub.add_parser(
        "relay",
        help="pass-through cost: pgbench select-only and a large-result workload",
        description="pgbench -S (simple and prepared, 1 and 8 clients) and a 1,000-row x 6-column "
        "result workload against direct Postgres, veilgate and PgBouncer (session mode); "
        "pgbench -S at 16 clients adds veilgate-w2 (serve --workers 2) for the workers ratio "
        "veilgate-w2/veilgate.",
    )
    add_common_args(p, default_targets=ALL_TARGETS)
    p.set_defaults(func=cmd_relay)


# --- connect -----------------------------------------------------------------------------------


def connect_workloads() -> list[Workload]:
    script = str(WORKLOADS_DIR / "connect.pgbench")
    return [
        Workload("connect-c1", ("-C", "-f", script, "-M", "simple"), 1, 1, cycle_latency=True),
        Workload("connect-c8", ("-C", "-f", script, "-M", "simple"), 8, 2, cycle_latency=True),
    ]


def cmd_connect(args: argparse.Namespace) -> int:
    args.veilgate_auth = "oidc"
    return run_bench(args, "connect", connect_workloads(), CONNECT_TARGETS)


def register_connect(sub: Any) -> None:
    p = sub.add_parser(
        "connect",
        help="connection setup: new TLS connections per second, OIDC token vs SCRAM",
        description="pgbench -C (a new TLS connection for every one-statement transaction), 1 and "
        "8 clients: veilgate validating a dev-IdP RS256 access token (then SCRAM upstream; "
        "veilgate-reuse: an idle upstream connection reused instead) vs direct PostgreSQL with "
        "SCRAM vs PgBouncer (session mode, SCRAM). tps = connections per second; p50/p99 = "
        "connect + SELECT 1 + disconnect latency.",
    )
    add_common_args(p, default_targets=CONNECT_TARGETS, known_targets=CONNECT_TARGETS)
    p.set_defaults(func=cmd_connect)


def register_policy(sub: Any) -> None:
    from policy_bench import register_policy as register  # bench/policy_bench.py

    register(sub)


def register_mask(sub: Any) -> None:
    from mask_bench import register_mask as register  # bench/mask_bench.py

    register(sub)


# --- compare -----------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    print(compare_table(args.a, args.b))
    return 0


def register_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="two results files side by side (e.g. two commits): medians and B/A ratios",
        description="Reads two results files of the same bench (results/relay.json and another "
        "run's copy, say) and prints, per workload x target in both, the median TPS of each with "
        "its spread over rounds and the B/A ratios of TPS, p50, p99 and proxy CPU per "
        "transaction, under each file's commit, date and machine.  Runs nothing.",
    )
    p.add_argument("a", type=Path, metavar="A.json")
    p.add_argument("b", type=Path, metavar="B.json")
    p.set_defaults(func=cmd_compare)


# Later benches add a register_* function here.
REGISTRY: list[Callable[[Any], None]] = [
    register_relay,
    register_connect,
    register_policy,
    register_mask,
    register_compare,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRY:
        register(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except (BenchError, ClusterError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
