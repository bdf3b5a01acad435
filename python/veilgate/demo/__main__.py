"""``python -m veilgate.demo`` (``make demo``): PostgreSQL with sample PII data + veilgate in
front of it with the demo policy (tiers by role, result masking), and the psql command to try it.

``--check`` starts everything and shows what the gateway is for: a SELECT through it comes back
masked (no raw SSN, card number or e-mail of the sample rows, compared with the same query
straight to PostgreSQL), a DROP is denied (42501, with the rule id), the unmasked role sees the
raw values, and an agent's DELETE without WHERE is held for approval (42Z01 with the request
id), approved from the CLI, then runs once when retried; exits 0 only if all of that holds.  Raw
values are compared, never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from veilgate.demo.identity import ADMIN_ROLE, DevIdPIdentity
from veilgate.demo.stack import DemoError, DemoStack

TRY_SQL = "SELECT * FROM customers LIMIT 5;"
"""What the banner suggests first (masked for the default role)."""
MASKED_SQL = "SELECT * FROM customers ORDER BY id LIMIT 5"
RAW_SQL = "SELECT ssn, card_number, email FROM customers ORDER BY id LIMIT 5"
"""The sensitive values of the rows :data:`MASKED_SQL` returns (straight from PostgreSQL)."""
TABLE_SQL = "SELECT * FROM customers"
TABLE_RAW_SQL = "SELECT ssn, card_number, email, phone, iban, host(ip_address) FROM customers"
"""Every value of the customers columns the demo policy masks (notes aside: free text)."""
DENIED_SQL = "DROP TABLE customers"
VERBOSE_PSQL = "\\set VERBOSITY verbose"
DENY_RULE = "read-no-destruction"
"""The demo policy's rule that denies :data:`DENIED_SQL` for the read tier."""
HELD_SQL = "DELETE FROM orders"
"""What the admin tier may only run with an approval (a DELETE without WHERE)."""
APPROVE_RULE = "admin-approve-destructive"
APPROVER = "demo-approver"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m veilgate.demo", description=__doc__)
    p.add_argument("--check", action="store_true", help="run one query through it, then stop")
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="working directory (.demo)")
    p.add_argument("--port", type=int, help="gateway port (default 6432, or a free one)")
    p.add_argument("--admin-port", type=int, help="admin port (default 9187, or a free one)")
    return p


def partial_mask(value: str, keep_last: int = 4) -> str:
    """What the ``partial`` operator makes of ``value``: digits and letters masked except the
    last ``keep_last`` of them, separators kept."""
    out: list[str] = []
    kept = 0
    for ch in reversed(value):
        if ch.isalnum():
            out.append(ch if kept < keep_last else "*")
            kept += 1
        else:
            out.append(ch)
    return "".join(reversed(out))


def _fail(what: str) -> int:
    print(f"demo: check FAILED: {what}", file=sys.stderr)
    return 1


def _check_masked(stack: DemoStack) -> int:
    """A SELECT through the gateway as Db.Read: raw SSNs, cards and e-mails must not appear."""
    print(f"demo: [Db.Read] psql {stack.conninfo()} -c {shlex.quote(MASKED_SQL)}")
    result = stack.psql(MASKED_SQL)
    print(result.stdout.rstrip())
    if result.returncode != 0:
        return _fail(f"psql exited {result.returncode}: {result.stderr.strip()}")
    raw = stack.query_direct(RAW_SQL)
    if len(raw) != 5:
        return _fail(f"PostgreSQL returned {len(raw)} rows for {RAW_SQL!r}")
    values = [v for row in raw for v in row]
    leaked = sum(1 for v in values if v in result.stdout)
    print(
        f"demo: same rows straight from PostgreSQL: {len(values)} raw SSN/card/e-mail values, "
        f"{leaked} of them in the gateway's result (values not printed)"
    )
    if leaked:
        return _fail(f"{leaked} raw value(s) came through the gateway unmasked")
    partial = [partial_mask(ssn) for ssn, card, _ in raw] + [partial_mask(c) for _, c, _ in raw]
    missing = sum(1 for v in partial if v not in result.stdout)
    if missing:
        return _fail(f"{missing} SSN/card value(s) not masked as partial keep_last 4")
    # the whole table, not printed: no raw value of any masked column comes through
    result = stack.psql(TABLE_SQL)
    if result.returncode != 0:
        return _fail(f"psql exited {result.returncode}: {result.stderr.strip()}")
    values = [v for row in stack.query_direct(TABLE_RAW_SQL) for v in row]
    leaked = sum(1 for v in values if v in result.stdout)
    print(
        f"demo: whole table ({TABLE_SQL}): {len(values)} raw ssn/card/email/phone/iban/ip "
        f"values, {leaked} of them in the gateway's result (output not printed)"
    )
    if leaked:
        return _fail(f"{leaked} raw value(s) came through the gateway unmasked")
    print("demo: masked OK (ssn, card_number, iban keep their last 4; email is a keyed hash)")
    return 0


def _check_denied(stack: DemoStack) -> int:
    """A DROP through the gateway as Db.Read: denied with 42501 and the rule id; nothing ran."""
    print(f"demo: [Db.Read] psql ... -c {shlex.quote(DENIED_SQL)}")
    result = stack.psql(DENIED_SQL)
    print(result.stderr.rstrip())
    if result.returncode == 0:
        return _fail("the DROP was not refused")
    if "42501" not in result.stderr or DENY_RULE not in result.stderr:
        return _fail(f"expected 42501 and rule {DENY_RULE}, got: {result.stderr.strip()}")
    if stack.query_direct("SELECT to_regclass('public.customers') IS NOT NULL") != [["t"]]:
        return _fail("the customers table is gone")
    print(f"demo: denied OK (42501, rule {DENY_RULE}; the table is still there)")
    return 0


def _check_unmasked(stack: DemoStack, identity: DevIdPIdentity) -> int:
    """The same sensitive columns as Db.Admin (the unmasked tier): the raw values."""
    print(f"demo: [{ADMIN_ROLE}] psql ... -c {shlex.quote(RAW_SQL)}  (output not printed)")
    result = stack.psql(RAW_SQL, password=identity.mint(ADMIN_ROLE))
    if result.returncode != 0:
        return _fail(f"psql exited {result.returncode}: {result.stderr.strip()}")
    values = [v for row in stack.query_direct(RAW_SQL) for v in row]
    seen = sum(1 for v in values if v in result.stdout)
    if seen != len(values):
        return _fail(f"{ADMIN_ROLE} saw {seen}/{len(values)} raw values (the tier is unmasked)")
    print(f"demo: unmasked OK ({seen}/{len(values)} raw values, as PostgreSQL has them)")
    return 0


def _check_audit(stack: DemoStack) -> int:
    """The audit log names the denial's rule and records the masked result."""
    try:
        events = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
    except (OSError, ValueError) as e:
        return _fail(f"cannot read the audit log {stack.audit_log}: {e}")
    denials = [e for e in events if e.get("action") == "deny" and e.get("rule_id") == DENY_RULE]
    masks = [e for e in events if e.get("kind") == "mask" and e.get("tier") == "read"]
    if not denials or not masks:
        return _fail(f"the audit log lacks the denial ({DENY_RULE}) or the masked results")
    print(
        f"demo: audit log {stack.audit_log}: {len(events)} events, "
        f"{len(denials)} denial by {DENY_RULE}, {len(masks)} masked results"
    )
    return 0


def _approvals_cli(stack: DemoStack, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "veilgate", "approvals", args[0], "--config"]
    cmd += [str(stack.config_file), *args[1:]]
    print(
        f"demo: veilgate approvals {args[0]} --config {stack.config_file.name} "
        + " ".join(shlex.quote(a) for a in args[1:])
    )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _check_approval(stack: DemoStack, identity: DevIdPIdentity) -> int:
    """A DELETE without WHERE as Db.Admin: held (42Z01, request id), nothing deleted; approved
    from the CLI; the identical statement then runs, once."""
    token = identity.mint(ADMIN_ROLE)
    before = stack.query_direct("SELECT count(*) FROM orders")
    print(f"demo: [{ADMIN_ROLE}] psql ... -c {shlex.quote(HELD_SQL)}")
    held = stack.psql(HELD_SQL, password=token)
    print(held.stderr.rstrip())
    found = re.search(r"\b(ap-[a-z0-9]{16})\b", held.stderr)
    if held.returncode == 0 or "42Z01" not in held.stderr or found is None:
        return _fail(f"expected 42Z01 with a request id, got: {held.stderr.strip()}")
    if stack.query_direct("SELECT count(*) FROM orders") != before:
        return _fail("the held DELETE ran")
    rid = found.group(1)
    approved = _approvals_cli(stack, "approve", rid, "--as", APPROVER, "-m", "demo: go ahead")
    print(approved.stdout.rstrip() or approved.stderr.rstrip())
    if approved.returncode != 0 or "approved" not in approved.stdout:
        return _fail(f"the approval failed: {approved.stderr.strip()}")
    print(f"demo: [{ADMIN_ROLE}] psql ... -c {shlex.quote(HELD_SQL)}  (retried)")
    ran = stack.psql(HELD_SQL, password=token)
    print(ran.stdout.rstrip())
    if ran.returncode != 0 or stack.query_direct("SELECT count(*) FROM orders") != [["0"]]:
        return _fail(f"the approved DELETE did not run: {ran.stderr.strip()}")
    again = stack.psql(HELD_SQL, password=token)
    if "42Z01" not in again.stderr:
        return _fail("the grant allowed a second run")
    print(f"demo: approval OK (held by {APPROVE_RULE}, approved by {APPROVER}, ran once)")
    return 0


def _veilgate(stack: DemoStack, *args: str) -> subprocess.CompletedProcess[str]:
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"demo: veilgate {shown}")
    cmd = [sys.executable, "-m", "veilgate", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _check_recording(stack: DemoStack) -> int:
    """Every session was recorded: listed by the index, the denied DROP in its timeline, the
    recording verifies, and a policy without the approval rule would newly allow the DELETE."""
    config = str(stack.config_file)
    deadline = time.monotonic() + 20
    while True:
        listed = _veilgate(stack, "sessions", "list", "--config", config, "--json")
        rows = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
        ended = [r for r in rows if r.get("ended")]
        if len(ended) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(ended) < 4:
        return _fail(f"the session index has {len(ended)} ended sessions: {listed.stderr}")
    print(f"demo: {len(rows)} sessions recorded")
    denied = next((r for r in rows if r.get("denied")), None)
    if denied is None:
        return _fail("no recorded session has a denied statement")
    shown = _veilgate(stack, "sessions", "show", denied["sid"], "--config", config)
    print(shown.stdout.rstrip())
    if f"DENY ({DENY_RULE})" not in shown.stdout:
        return _fail(f"the timeline of {denied['sid']} lacks the denial")
    verified = _veilgate(stack, "sessions", "verify", "--config", config, "--allow-open")
    print(verified.stdout.rstrip())
    if verified.returncode != 0:
        return _fail("the recording does not verify")
    looser = stack.directory / "policy-without-approvals.yaml"
    text = stack.policy_file.read_text()
    # the same policy without the approval rule: the admin tier's default (allow) takes over
    looser.write_text(
        re.sub(rf"      - id: {APPROVE_RULE}\n(?:        .*\n|          .*\n)*", "", text)
    )
    sim = _veilgate(
        stack,
        "policy",
        "simulate",
        "--config",
        config,
        "--policy",
        str(looser),
        "--sessions",
        "all",
    )
    print(sim.stdout.rstrip() or sim.stderr.rstrip())
    if sim.returncode != 1 or HELD_SQL not in sim.stdout:
        return _fail("simulate did not report the DELETE as newly allowed")
    print("demo: recording OK (listed, timeline, verified, simulated)")
    return 0


def _check(stack: DemoStack, identity: DevIdPIdentity) -> int:
    try:
        if (
            _check_masked(stack)
            or _check_denied(stack)
            or _check_unmasked(stack, identity)
            or _check_audit(stack)
            or _check_approval(stack, identity)
            or _check_recording(stack)
        ):
            return 1
    except FileNotFoundError:
        print("demo: psql not found (install postgresql-client)", file=sys.stderr)
        return 1
    if stack.metrics_url() is not None:
        status, body = stack.http_get("/healthz")
        print(f"demo: /healthz -> {status} {body.strip()}")
        if status != 200:
            return 1
        status, body = stack.http_get("/metrics")
        wanted = ("veilgate_client_connections_total ", "veilgate_bytes_received_total{")
        for line in body.splitlines():
            if line.startswith(wanted):
                print(f"demo: /metrics: {line}")
    print("demo: check OK")
    return 0


def _relative(path: Path, cwd: Path) -> Path:
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(cwd.resolve())
    return path


def _banner(stack: DemoStack, identity: DevIdPIdentity) -> None:
    cwd = Path.cwd()
    conn = stack.conninfo(relative_to=cwd)
    print()
    print("veilgate demo is running, with a development identity provider at")
    print(f"{identity.idp.base_url} (Entra-shaped tenant {identity.idp.tenant_id}).")
    print("Mint an access token (valid 1 hour) and connect through the gateway with:")
    print()
    print(f"  export PGPASSWORD=$({identity.token_command(relative_to=cwd)})")
    print(f'  psql "{conn}"')
    print()
    print(
        f"  (--role {identity.role} is the policy tier 'read': read-only, results masked; a token"
    )
    print("   without a mapped role, expired or tampered is refused with 28P01 and the reason is")
    print("   in the gateway log)")
    print()
    print("Then try, in psql:")
    print(f"  {TRY_SQL:<34} -- masked: ssn, card_number and iban keep their last 4,")
    print(f"  {'':<34} -- email is a keyed hash, phone/ip_address/notes are scanned")
    print(f"  {DENIED_SQL + ';':<34} -- denied: ERROR 42501, rule {DENY_RULE} in DETAIL")
    print(f"  {VERBOSE_PSQL:<34} -- to see the SQLSTATE (42501) of the denial")
    print()
    print("A token for the unmasked tier 'admin', whose destructive statements need an approval:")
    print()
    print(f"  export PGPASSWORD=$({identity.token_command(relative_to=cwd, role=ADMIN_ROLE)})")
    print(f"  {HELD_SQL + ';':<34} -- held: ERROR 42Z01 approval required (request ap-...)")
    config = _relative(stack.config_file, cwd)
    print(f"  veilgate approvals list --config {config}")
    print(f"  veilgate approvals approve ap-... --config {config} --as {APPROVER}")
    print(f"  {HELD_SQL + ';':<34} -- retried: runs, once")
    print()
    print(f"  policy:      {_relative(stack.policy_file, cwd)} (edit it: the gateway reloads it)")
    print(f"  audit log:   {_relative(stack.audit_log, cwd)} (every decision and masked result)")
    print(f"  recording:   {_relative(stack.audit_dir, cwd)} (every session, signed; try:)")
    print(f"               veilgate sessions list --config {config}")
    print(f"               veilgate sessions show SESSION --config {config}")
    print(f"               veilgate sessions verify --config {config} --allow-open")
    print(
        f"               veilgate policy simulate --config {config} --policy NEW.yaml "
        "--sessions all"
    )
    url = stack.metrics_url()
    if url is not None:
        print(f"  metrics:     {url}")
        print(f"  health:      {url.removesuffix('/metrics')}/healthz")
    print(f"  gateway log: {_relative(stack.log_file, cwd)}")
    print()
    print("Ctrl-C to stop.", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    identity = DevIdPIdentity()
    stack = DemoStack(args.dir, identity, port=args.port, admin_port=args.admin_port)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    status = 0
    try:
        try:
            identity.start()
            stack.start()
        except DemoError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        if args.check:
            status = _check(stack, identity)
        else:
            _banner(stack, identity)
            exited = stack.wait()
            print(f"demo: veilgate exited with status {exited}:\n{stack.log_tail()}")
            status = 1
    except KeyboardInterrupt:
        print("\ndemo: stopping ...", flush=True)
    finally:
        code: int | None = None
        with contextlib.suppress(KeyboardInterrupt):  # cluster.stop also runs at exit
            code = stack.stop()
        with contextlib.suppress(KeyboardInterrupt):
            identity.stop()
        signal.signal(signal.SIGTERM, previous)
        if code not in (None, 0):
            print(f"demo: veilgate exited with status {code}", file=sys.stderr)
            status = status or 1
        print("demo: stopped (gateway and PostgreSQL)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
