"""``python bench/run.py policy``: what statement policy costs on the data path.

pgbench select-only (``-S``; simple and prepared protocol; 1 and 8 clients) through two gateways
that differ only in their ``policy`` section:

* ``veilgate``: the guardrail policy ``workloads/policy_guardrails.yaml`` (the token's app role
  ``db.readonly`` selects its read-only tier; every statement is judged against all its rules);
* ``veilgate-nopolicy``: no ``policy`` section, every statement is relayed undecided;
* ``veilgate-audit`` (only with ``--targets``): the same policy plus ``audit_log``, one JSON line
  per decision;
* ``veilgate-rw`` / ``veilgate-rw-recording``: pgbench's own TPC-B script (``-b tpcb-like -M
  simple``: BEGIN, three UPDATEs, a SELECT, an INSERT, END, new literals in every statement)
  through the read-write tier of ``workloads/policy_readwrite.yaml`` (the same guardrails as the
  read-only tier, writes with a WHERE clause allowed), without and with session recording,
  against ``veilgate-nopolicy`` (TPC-B workloads only; the read-only targets skip them);
* ``veilgate-approve``: the same policy plus an ``approve`` rule on the pgbench reads, approved
  once before the runs: every statement runs on its grant (bench/approvals_bench.py), compared
  with ``veilgate`` (the reads allowed by a plain rule).  With it, the run ends with the wake-up
  latency of a held statement (decision -> result) for the SQLite and PostgreSQL state stores.

Same machinery as every other bench (``run.py``: cluster, TLS, interleaved rounds, pgbench-log
percentiles, proxy CPU); rows in the ``relay.json`` format in ``results/policy.json``.  See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import approvals_bench
import harness
from harness import BenchError, Workload, say
from policy_targets import (
    DENIED_PROBE,
    PGBENCH_STATEMENTS,
    POLICY_FILE,
    READWRITE_POLICY_FILE,
    READWRITE_ROLES,
    TOKEN_ROLES,
    TPCB_STATEMENTS,
    VeilgatePolicyTarget,
)

POLICY_TARGETS = (
    "veilgate",
    "veilgate-nopolicy",
    "veilgate-audit",
    "veilgate-approve",
    "veilgate-recording",
    "veilgate-rw",
    "veilgate-rw-recording",
)
DEFAULT_TARGETS = (
    "veilgate",
    "veilgate-nopolicy",
    "veilgate-approve",
    "veilgate-recording",
    "veilgate-rw",
    "veilgate-rw-recording",
)
APPROVE_BAR = 0.95
"""Issue 13's bar: the grant check on the allowed path costs at most 5% TPS vs a plain allow."""
BASELINE = "veilgate-nopolicy"
TPS_BAR = 0.90
"""The issue's bar: policy on keeps at least 90% of the policy-off TPS."""


def policy_workloads() -> list[Any]:
    return [
        Workload("select-simple-c1", ("-S", "-M", "simple"), 1, 1),
        Workload("select-simple-c8", ("-S", "-M", "simple"), 8, 2),
        Workload("select-prepared-c1", ("-S", "-M", "prepared"), 1, 1),
        Workload("select-prepared-c8", ("-S", "-M", "prepared"), 8, 2),
        # a Parse into the unnamed statement for every statement (psycopg / JDBC before their
        # prepare thresholds): the re-Parse the client buffer answers natively
        Workload("select-extended-c1", ("-S", "-M", "extended"), 1, 1),
        Workload("select-extended-c8", ("-S", "-M", "extended"), 8, 2),
        Workload("tpcb-simple-c1", ("-b", "tpcb-like", "-M", "simple"), 1, 1),
        Workload("tpcb-simple-c8", ("-b", "tpcb-like", "-M", "simple"), 8, 2),
    ]


def make_policy_target(name: str, env: Any, args: argparse.Namespace) -> Any:
    if name == "veilgate":
        return VeilgatePolicyTarget(env, name, policy_file=POLICY_FILE, command=args.veilgate_cmd)
    if name == "veilgate-nopolicy":
        return VeilgatePolicyTarget(env, name, policy_file=None, command=args.veilgate_cmd)
    if name == "veilgate-audit":
        return VeilgatePolicyTarget(
            env, name, policy_file=POLICY_FILE, audit=True, command=args.veilgate_cmd
        )
    if name == "veilgate-approve":
        return approvals_bench.VeilgateApproveTarget(env, name, command=args.veilgate_cmd)
    if name == "veilgate-recording":
        return VeilgatePolicyTarget(
            env, name, policy_file=POLICY_FILE, recording=True, command=args.veilgate_cmd
        )
    if name in ("veilgate-rw", "veilgate-rw-recording"):
        return VeilgatePolicyTarget(
            env,
            name,
            policy_file=READWRITE_POLICY_FILE,
            recording=name.endswith("-recording"),
            readwrite=True,
            command=args.veilgate_cmd,
        )
    raise BenchError(f"unknown target {name!r} (choose from {', '.join(POLICY_TARGETS)})")


def parse_policy_targets(spec: str) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    bad = [t for t in names if t not in POLICY_TARGETS]
    if bad or not names:
        raise BenchError(
            f"--targets: unknown {', '.join(bad) or '(empty)'}; "
            f"choose from {', '.join(POLICY_TARGETS)}"
        )
    return names


def target_check(env: Any, target: Any) -> None:
    """The denial check; the approve target also gets pgbench's statements approved."""
    denial_check(env, target)
    if target.name == "veilgate-approve":
        target.approve_pgbench(env)


def denial_check(env: Any, target: Any) -> None:
    """A guarded statement through psql: denied with 42501 and the rule id when the target has a
    policy, run when it has none (so the two gateways really differ only in policy)."""
    sql, rule = DENIED_PROBE[0], getattr(target, "denied_rule", DENIED_PROBE[1])
    ep = target.endpoint()
    proc = subprocess.run(
        [
            str(env.bindir / "psql"),
            *("-X", "-v", "VERBOSITY=verbose"),
            *ep.args(),
            *("-d", ep.dbname, "-c", sql),
        ],
        env=ep.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if target.policy_file is None:
        if proc.returncode != 0:
            raise BenchError(f"{target.name}: {sql!r} failed without a policy: {proc.stderr}")
    elif proc.returncode == 0 or "42501" not in proc.stderr or rule not in proc.stderr:
        raise BenchError(
            f"{target.name}: {sql!r} was not denied by rule {rule} (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}\n--- {target.name} log ---\n{target.log_tail()}"
        )


def check_policy_allows(
    path: Path = POLICY_FILE,
    roles: Sequence[str] = TOKEN_ROLES,
    statements: Sequence[str] = PGBENCH_STATEMENTS,
) -> None:
    """The bench policy must allow what pgbench sends (else the bench measures denials)."""
    from veilgate.identity.base import Principal
    from veilgate.policy.engine import PolicyEngine, SessionContext
    from veilgate.policy.loader import load_policy

    engine = PolicyEngine(load_policy(path))
    who = Principal(provider="static", subject="bench", roles=frozenset(roles))
    for sql in statements:
        d = engine.decide(who, sql, session=SessionContext(session_id="bench-check"))
        if d.action != "allow":
            raise BenchError(f"{path}: {sql!r} is not allowed ({d.action}, rule {d.rule_id})")


# --- summary -----------------------------------------------------------------------------------


def policy_table(samples: Sequence[Any], targets: Sequence[str]) -> str:
    """Medians over rounds per workload x target, then each policy target against
    ``veilgate-nopolicy``: TPS ratio (on/off), latency ratios and the extra proxy CPU."""
    first = [t for t in targets if t != "veilgate-recording"]
    lines, worst = harness.on_off_table(
        samples, first, BASELINE, workload_width=20, label=lambda t: t + "/off"
    )
    for t, tr in worst.items():
        verdict = "within" if tr >= TPS_BAR else "OVER"
        lines.append(
            f"{t}: worst TPS ratio vs {BASELINE} {tr:.3f} ({(1 - tr) * 100:+.1f}% cost); "
            f"bar: cost <= {(1 - TPS_BAR) * 100:.0f}% -> {verdict}"
        )
    if "veilgate-recording" in targets and "veilgate" in targets:
        lines += ["", "session recording on the policy path (veilgate-recording vs veilgate):"]
        lines.append(harness.recording_table(samples))
    if "veilgate-rw-recording" in targets and "veilgate-rw" in targets:
        more, _ = harness.on_off_table(
            samples,
            ["veilgate-rw", "veilgate-rw-recording"],
            "veilgate-rw",
            workload_width=20,
            label=lambda t: t + "/rw",
        )
        lines += ["", "session recording on TPC-B (veilgate-rw-recording vs veilgate-rw):"]
        lines += more
    if "veilgate-approve" in targets and "veilgate" in targets:
        more, worst = harness.on_off_table(
            samples,
            ["veilgate", "veilgate-approve"],
            "veilgate",
            workload_width=20,
            label=lambda t: t + "/allow",
        )
        lines += ["", "grant check on the allowed path (approve rule with a grant vs allow):"]
        lines += more
        for t, tr in worst.items():
            verdict = "within" if tr >= APPROVE_BAR else "OVER"
            lines.append(
                f"{t}: worst TPS ratio vs veilgate {tr:.3f} ({(1 - tr) * 100:+.1f}% cost); "
                f"bar: cost <= {(1 - APPROVE_BAR) * 100:.0f}% -> {verdict}"
            )
    return "\n".join(lines)


# --- the subcommand ----------------------------------------------------------------------------


def cmd_policy(args: argparse.Namespace) -> int:
    targets_wanted = parse_policy_targets(args.targets)
    workloads = harness.select_workloads(policy_workloads(), args.workloads)
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 20.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    scale = args.scale if args.scale is not None else (1 if args.quick else 10)
    output = harness.results_path(args, "policy")
    check_policy_allows()
    check_policy_allows(READWRITE_POLICY_FILE, READWRITE_ROLES, TPCB_STATEMENTS)
    est = args.rounds * len(workloads) * len(targets_wanted) * (duration + 0.5)
    say(
        f"policy: {len(workloads)} workloads x {len(targets_wanted)} targets x {args.rounds} "
        f"rounds, {duration:g} s each (~{est / 60:.1f} min), TLS everywhere, policy "
        f"{POLICY_FILE.relative_to(harness.REPO)}, {os.cpu_count()} CPUs"
    )
    samples: list[Any] = []
    decisions: dict[str, dict[str, float]] = {}
    with harness.bench_env(scale=scale, keep=args.keep) as env:
        say(harness.versions(env, ["veilgate"]))
        meta = harness.run_meta(env, quick=args.quick)
        with harness.started_targets(
            env, targets_wanted, lambda n: make_policy_target(n, env, args), check=target_check
        ) as targets:
            samples = harness.run_matrix(
                env,
                targets,
                workloads,
                rounds=args.rounds,
                duration_s=duration,
                warmup_s=warmup,
                on_sample=lambda done: harness.write_results(output, done, meta),
            )
            for target in targets:
                decisions[target.name] = target.policy_decisions()
        wakeups: list[dict[str, Any]] = []
        if "veilgate-approve" in targets_wanted and args.wakeup_rounds > 0:
            rounds = args.wakeup_rounds if not args.quick else min(args.wakeup_rounds, 3)
            for backend in ("sqlite", "postgres"):
                wakeups.append(approvals_bench.measure_wakeup(env, backend, rounds))
            (output.parent / "approvals_wakeup.json").write_text(json.dumps(wakeups, indent=2))
    harness.write_results(output, samples, meta)
    say("")
    say(
        f"policy: medians of {args.rounds} round(s), {duration:g} s runs; proxy CPU = gateway "
        "process user+sys CPU / transactions; ratios = policy target / veilgate-nopolicy"
    )
    say(policy_table(samples, targets_wanted))
    for name, d in decisions.items():
        counts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(d.items())) or "none"
        say(f"{name}: policy decisions (gateway metrics, incl. warm-up and checks): {counts}")
    if wakeups:
        say(approvals_bench.wakeup_table(wakeups))
    say(f"results: {output}")
    return 0


def register_policy(sub: Any) -> None:
    p = sub.add_parser(
        "policy",
        help="statement policy cost: pgbench -S through veilgate, guardrail policy on vs off",
        description="pgbench -S (simple and prepared, 1 and 8 clients) through veilgate with the "
        "guardrail policy workloads/policy_guardrails.yaml (target veilgate) and through the "
        "same gateway without a policy (target veilgate-nopolicy); optional target "
        "veilgate-audit adds the JSON-lines audit log.  pgbench's TPC-B script (tpcb-like, "
        "simple protocol, 1 and 8 clients) through the read-write tier of "
        "workloads/policy_readwrite.yaml (veilgate-rw, and veilgate-rw-recording with session "
        "recording) against veilgate-nopolicy.",
    )
    harness.add_common_args(p, default_targets=DEFAULT_TARGETS, known_targets=POLICY_TARGETS)
    p.add_argument(
        "--wakeup-rounds",
        type=int,
        default=30,
        help="decisions timed per state store for the wake-up latency (with veilgate-approve; "
        "0: skip; --quick: at most 3)",
    )
    p.set_defaults(func=cmd_policy)
