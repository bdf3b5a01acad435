"""``veilgate approvals list | show | approve | deny | request-tier`` against the state store.

The CLI talks to the store directly (the config file's ``state:`` section, or ``--state FILE``
for an SQLite file): it is for operators who hold the store.  An approver is either a name it
trusts (``--as NAME``: a rule's ``approvers.users`` lists who may approve this way; a rule without
any approvers can only be approved so) or, with ``--token-env VAR`` / ``--token-file FILE`` and
``--config``, the principal of an OIDC access token validated by the configuration's
authenticator exactly like a client's, checked against the request's roles and groups.  Approvers
without the store use the HTTP API.  A decision wakes the waiting session on whichever
gateway holds it (the store's notification), and is audited by the gateway that hears of it.

Exit codes: 0 done, 1 refused or failed (unknown or closed request, self-approval, not an
approver, store unavailable), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config_model import StateConfig
from ..identity.base import Principal
from ..state import StateUnavailable, open_state
from .model import (
    KIND_ELEVATION,
    ApprovalError,
    NotAnApprover,
    Request,
    approver_key,
    elevation_spec,
    principal_key,
)
from .store import ApprovalStore

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="veilgate approvals",
        description="List and decide just-in-time approval requests (works on the state store).",
    )
    where = argparse.ArgumentParser(add_help=False)
    g = where.add_mutually_exclusive_group()
    g.add_argument("--config", "-c", metavar="FILE", help="gateway configuration (its state:)")
    g.add_argument("--state", metavar="FILE", help="an SQLite state file")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    ls = sub.add_parser("list", parents=[where], help="list requests (newest first)")
    ls.add_argument(
        "--status",
        default="pending",
        choices=("pending", "approved", "denied", "expired", "all"),
        help="which requests (default: pending)",
    )
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="JSON lines")

    show = sub.add_parser("show", parents=[where], help="one request, its statement and votes")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")

    for verb in ("approve", "deny"):
        v = sub.add_parser(verb, parents=[where], help=f"{verb} a request")
        v.add_argument("id")
        v.add_argument(
            "--as",
            dest="approver",
            default=None,
            help="your approver name (default: the login name); see approvers.users",
        )
        tok = v.add_mutually_exclusive_group()
        tok.add_argument(
            "--token-env",
            metavar="VAR",
            help="approve as the principal of the OIDC token in this environment variable "
            "(needs --config)",
        )
        tok.add_argument("--token-file", metavar="FILE", help="... or in this file")
        v.add_argument("--comment", "-m", default="", help="a comment recorded with the vote")
        v.add_argument("--json", action="store_true")

    rv = sub.add_parser(
        "revoke",
        parents=[where],
        help="end the grant of an approved request now (every gateway stops using it)",
    )
    rv.add_argument("id")
    rv.add_argument("--as", dest="approver", default=None, help="your name (default: login)")

    rt = sub.add_parser(
        "request-tier",
        parents=[where],
        help="ask for a time-bound elevation of a principal to a tier (like SET "
        "veilgate.request_tier)",
    )
    rt.add_argument("--principal", required=True, help="identity key provider|tenant|subject")
    rt.add_argument("--tier", required=True)
    rt.add_argument("--reason", default=None)
    rt.add_argument("--ttl", type=float, default=None, help="seconds (capped by max_ttl_s)")
    return p


def _load_config(path: str) -> Any:
    from .. import config

    try:
        return config.load(path)
    except config.ConfigError as e:
        raise _Usage(str(e)) from None


def _state_config(args: argparse.Namespace) -> tuple[StateConfig, Any]:
    """The state section (and the policy file path, if any) of ``--config`` or ``--state``."""
    if args.state:
        return StateConfig(path=args.state), None
    if not args.config:
        raise _Usage("give --config FILE (the gateway's configuration) or --state FILE")
    cfg = _load_config(args.config)
    return cfg.state, cfg.policy.file if cfg.policy is not None else None


def _read_token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_env", None):
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise _Usage(f"${args.token_env} is empty or not set")
        return token
    if getattr(args, "token_file", None):
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise _Usage(f"cannot read --token-file: {e.strerror or e}") from None
        if not token:
            raise _Usage("--token-file is empty")
        return token
    return None


async def _token_principal(args: argparse.Namespace, token: str) -> Principal:
    """The token's principal, validated by the configuration's authenticator."""
    if not args.config:
        raise _Usage("--token-env / --token-file need --config (its auth section validates them)")
    from ..identity.base import AuthContext, AuthError
    from ..identity.combined import GatewayAuthenticator

    auth = GatewayAuthenticator.from_config(_load_config(args.config))
    try:
        await auth.prefetch()
        ctx = AuthContext(peer="cli", user="approver", database="veilgate-cli")
        try:
            return await auth.authenticate(token, ctx)
        except AuthError as exc:
            raise NotAnApprover(f"the token was not accepted ({exc.reason})") from None
    finally:
        await auth.aclose()


class _Usage(Exception):
    pass


def _age(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def _one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _print_list(reqs: Sequence[Request]) -> None:
    if not reqs:
        print("no requests")
        return
    print(f"{'ID':<19} {'STATUS':<8} {'KIND':<9} {'VOTES':<5} {'AGE':>4}  PRINCIPAL / WHAT")
    for r in reqs:
        what = f"tier {r.requested_tier}" if r.kind == KIND_ELEVATION else _one_line(r.sql)
        votes = f"{r.approvals}/{r.required}"
        print(
            f"{r.id:<19} {r.status:<8} {r.kind:<9} {votes:<5} {_age(r.created_at):>4}  "
            f"{r.principal_label}: {what}"
        )


def _print_request(r: Request) -> None:
    rows: list[tuple[str, Any]] = [
        ("request", r.id),
        ("status", r.status),
        ("kind", r.kind),
        ("principal", f"{r.principal_label} ({r.principal_key})"),
        ("session", r.session_id),
        ("tier", r.tier),
        ("rule", r.rule_id),
        ("reason", r.reason or "-"),
        ("approvals", f"{r.approvals} of {r.required} (approvers: {_approvers(r)})"),
        ("grant", f"{r.grant_uses or 'any number of'} run(s) within {r.grant_ttl_s:g}s"),
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))),
        ("expires", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.expires_at))),
        ("fingerprint", r.fingerprint),
    ]
    if r.kind == KIND_ELEVATION:
        rows.append(("requested tier", r.requested_tier))
    for k, v in rows:
        print(f"{k + ':':<16}{v}")
    if r.kind != KIND_ELEVATION:
        print("statement:")
        for line in r.sql.splitlines() or [""]:
            print(f"    {line}")
        if r.params:
            print("parameters:")
            for i, p in enumerate(r.params, 1):
                print(f"    ${i} = {'NULL' if p is None else repr(p)}")
    for v in r.votes:
        note = f": {v.comment}" if v.comment else ""
        print(f"vote:           {v.vote} by {v.approver_label} via {v.via}{note}")


def _approvers(r: Request) -> str:
    a = r.approvers
    parts = [f"{k} {', '.join(sorted(getattr(a, k)))}" for k in ("roles", "groups", "users")]
    shown = [p for p, k in zip(parts, ("roles", "groups", "users"), strict=True) if getattr(a, k)]
    return "; ".join(shown) or "operators with the store (CLI)"


async def _run(args: argparse.Namespace) -> int:
    state, policy_file = _state_config(args)
    db = open_state(state)
    store = ApprovalStore(db)
    try:
        if args.cmd == "list":
            status = None if args.status == "all" else args.status
            reqs = await store.requests(status=status, limit=args.limit)
            if args.json:
                for r in reqs:
                    print(json.dumps(r.to_json()))
            else:
                _print_list(reqs)
            return EXIT_OK
        if args.cmd == "show":
            r = await store.get(args.id)
            if args.json:
                print(json.dumps(r.to_json(), indent=2))
            else:
                _print_request(r)
            return EXIT_OK
        if args.cmd == "revoke":
            grant = await store.revoke(args.id)
            if grant is None:
                print(f"{args.id}: no live grant to revoke", file=sys.stderr)
                return EXIT_FAILED
            who = args.approver or getpass.getuser()
            print(f"{args.id}: grant {grant.id} revoked by {who}")
            return EXIT_OK
        if args.cmd in ("approve", "deny"):
            token = _read_token(args)
            if token is not None:
                who = await _token_principal(args, token)
                del token
                name, key = who.label(), principal_key(who)

                def check(req: Request) -> None:
                    if not req.approvers.allows_principal(who):
                        raise NotAnApprover(
                            f"{name} is not among the approvers of request {req.id} "
                            f"({_approvers(req)})"
                        )

            else:
                name = args.approver or getpass.getuser()
                key = approver_key(name)

                def check(req: Request) -> None:
                    if not req.approvers.allows_user(name):
                        raise NotAnApprover(
                            f"{name!r} is not among the approvers of request {req.id} "
                            f"({_approvers(req)})"
                        )

            result = await store.vote(
                args.id,
                approver=key,
                approver_label=name,
                via="cli",
                vote=args.cmd,
                comment=args.comment,
                check=check,
            )
            r = result.request
            if args.json:
                print(json.dumps(r.to_json(with_params=False)))
            elif not result.counted:
                print(f"{r.id}: {name} has already voted; {r.approvals} of {r.required} approvals")
            elif r.status == "pending":
                print(f"{r.id}: approval recorded; {r.approvals} of {r.required} approvals")
            else:
                print(f"{r.id}: {r.status}")
            return EXIT_OK
        return await _request_tier(args, store, policy_file)
    finally:
        await db.close()


async def _request_tier(args: argparse.Namespace, store: ApprovalStore, policy_file: Any) -> int:
    from ..policy.loader import PolicyError, load_policy

    if policy_file is None:
        raise _Usage("request-tier needs --config with a policy (the tier's elevation rules)")
    try:
        policy = load_policy(policy_file)
    except PolicyError as e:
        raise _Usage(str(e)) from None
    tier = policy.tier_named(args.tier)
    if tier is None or tier.elevation is None:
        print(f"veilgate: tier {args.tier!r} cannot be requested (no elevation:)", file=sys.stderr)
        return EXIT_FAILED
    parts = args.principal.split("|")
    if len(parts) != 3:
        raise _Usage("--principal must be provider|tenant|subject (tenant '-' for none)")
    principal = Principal(parts[0], parts[2], tenant=None if parts[1] == "-" else parts[1])
    if tier.elevation.require_reason and not args.reason:
        print(f"veilgate: tier {args.tier!r} needs --reason", file=sys.stderr)
        return EXIT_FAILED
    ttl = args.ttl if args.ttl is not None else tier.elevation.max_ttl_s
    req, created = await store.request(
        kind=KIND_ELEVATION,
        principal=principal,
        session_id="cli",
        tier=None,
        rule_id=f"elevation:{args.tier}",
        fingerprint=f"tier:{args.tier}",
        sql=f"SET veilgate.request_tier = '{args.tier}'",
        params=None,
        reason=args.reason,
        requested_tier=args.tier,
        spec=elevation_spec(tier.elevation, ttl),
        node="cli",
    )
    print(f"{req.id}: {'requested' if created else 'already requested'} (tier {args.tier})")
    return EXIT_OK


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except _Usage as e:
        print(f"veilgate approvals: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ApprovalError as e:
        print(f"veilgate approvals: {e}", file=sys.stderr)
        return EXIT_FAILED
    except StateUnavailable as e:
        print(f"veilgate approvals: state store unavailable: {e}", file=sys.stderr)
        return EXIT_FAILED
