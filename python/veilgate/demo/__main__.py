"""``python -m veilgate.demo`` (``make demo``): PostgreSQL with sample PII data + veilgate in
front of it, and the psql command to try it.

``--check`` starts everything, runs one query through the gateway with psql, prints the result
and exits (0 when it worked).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

from veilgate.demo.identity import DevIdPIdentity
from veilgate.demo.stack import DemoError, DemoStack

CHECK_SQL = "SELECT count(*) AS customers FROM customers"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m veilgate.demo", description=__doc__)
    p.add_argument("--check", action="store_true", help="run one query through it, then stop")
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="working directory (.demo)")
    p.add_argument("--port", type=int, help="gateway port (default 6432, or a free one)")
    p.add_argument("--admin-port", type=int, help="admin port (default 9187, or a free one)")
    return p


def _check(stack: DemoStack) -> int:
    try:
        result = stack.psql(CHECK_SQL)
    except FileNotFoundError:
        print("demo: psql not found (install postgresql-client)", file=sys.stderr)
        return 1
    print(f"demo: psql {stack.conninfo()} -c {shlex.quote(CHECK_SQL)}")
    print(result.stdout.rstrip())
    if result.returncode != 0:
        print(f"demo: psql failed ({result.returncode}): {result.stderr.strip()}", file=sys.stderr)
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
    print(f"  (--role {identity.role} maps to the tier 'read'; a token without a mapped role,")
    print("   expired or tampered is refused with 28P01 and the reason is in the gateway log)")
    print("  then try:  SELECT * FROM customers LIMIT 5;")
    url = stack.metrics_url()
    if url is not None:
        print(f"  metrics:    {url}")
        print(f"  health:     {url.removesuffix('/metrics')}/healthz")
    print(f"  gateway log: {stack.log_file}")
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
            status = _check(stack)
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
