"""``veilgate policy lint`` and ``veilgate policy check`` (wired into the ``veilgate`` CLI by it).

``lint_main(["FILE", "--strict"])``: exit 0 when the file is usable (warnings printed), 2 on errors
(each naming file, line and key), also 2 on warnings with ``--strict``.

``check_main(["FILE", "--principal", CLAIMS_JSON, "--sql", SQL])``: prints the tier, the decision,
the rule id and why, per statement; exit 0 on allow, 1 on deny or approve, 2 on a bad policy file or
arguments.  ``CLAIMS_JSON`` is a JSON object with the :class:`~veilgate.identity.base.Principal`
fields (``provider``, ``subject``, ``tenant``, ``client_app``, ``app_only``, ``roles``, ``groups``;
``groups: null`` means unknown) or ``@file.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..identity.base import Principal
from .engine import PolicyEngine, SessionContext
from .loader import PolicyError, lint_policy, load_policy, load_policy_text
from .reload import confirm_path, file_digest

__all__ = ["check_main", "confirm_main", "lint_main", "principal_from_claims"]


def lint_main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    ap = argparse.ArgumentParser(prog="veilgate policy lint", description="Validate a policy file.")
    ap.add_argument("file")
    ap.add_argument("--strict", action="store_true", help="treat warnings as errors")
    args = ap.parse_args(argv)
    policy, issues = lint_policy(args.file)
    errors = [i for i in issues if i.severity == "error"]
    warnings = [i for i in issues if i.severity != "error"]
    for i in sorted(issues, key=lambda i: (i.line, i.severity)):
        print(str(i), file=out)
    if errors or policy is None:
        print(f"{args.file}: {len(errors)} error(s), {len(warnings)} warning(s)", file=out)
        return 2
    if warnings and args.strict:
        print(f"{args.file}: {len(warnings)} warning(s) (--strict)", file=out)
        return 2
    tiers = ", ".join(t.name for t in policy.tiers)
    rules = sum(len(t.rules) for t in policy.tiers)
    print(
        f"{args.file}: OK ({len(policy.tiers)} tier(s): {tiers}; {rules} rule(s); "
        f"{len(warnings)} warning(s))",
        file=out,
    )
    return 0


def confirm_main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``veilgate policy confirm FILE``: allow the next reload of exactly this content to take
    masking away from tiers (see :mod:`veilgate.policy.reload`); writes ``FILE.confirm``."""
    out = out or sys.stdout
    ap = argparse.ArgumentParser(
        prog="veilgate policy confirm",
        description="Confirm a policy file whose reload removes or weakens masking.",
    )
    ap.add_argument("file")
    args = ap.parse_args(argv)
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
        load_policy_text(text, str(path))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot read: {exc}", file=out)
        return 2
    except PolicyError as exc:
        print(str(exc), file=out)
        return 2
    digest = file_digest(text)
    target = confirm_path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{digest}\n# veilgate policy confirm: a reload of exactly this content may ")
        fh.write("remove masking\n")
    print(
        f"{path}: confirmed sha256 {digest} in {target}; reload the gateway (SIGHUP) to apply",
        file=out,
    )
    return 0


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Build a principal from a claims-like JSON object (for ``policy check``)."""
    known = {"provider", "subject", "tenant", "client_app", "app_only", "roles", "groups"}
    unknown = set(claims) - known
    if unknown:
        raise ValueError(f"unknown principal field(s): {', '.join(sorted(unknown))}")
    groups = claims.get("groups", [])
    for k in ("roles", "groups"):
        v = claims.get(k, [])
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise ValueError(f"{k}: expected a list of strings")
    for k in ("provider", "subject", "tenant", "client_app"):
        v = claims.get(k)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{k}: expected a string")
    if not isinstance(claims.get("app_only", False), bool):
        raise ValueError("app_only: expected true or false")
    return Principal(
        provider=claims.get("provider", "check"),
        subject=claims.get("subject", "policy-check"),
        tenant=claims.get("tenant"),
        client_app=claims.get("client_app"),
        app_only=claims.get("app_only", False),
        roles=frozenset(claims.get("roles", [])),
        groups=None if groups is None else frozenset(groups),
    )


def check_main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    ap = argparse.ArgumentParser(
        prog="veilgate policy check", description="Explain the decision for one identity and SQL."
    )
    ap.add_argument("file")
    ap.add_argument("--principal", required=True, help="claims JSON, or @file.json")
    ap.add_argument("--sql", required=True, help="the Query text (may hold several statements)")
    ap.add_argument(
        "--standard-conforming-strings",
        choices=("on", "off"),
        default="on",
        help="the session's standard_conforming_strings (default on)",
    )
    args = ap.parse_args(argv)
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(str(exc), file=out)
        return 2
    raw = args.principal
    try:
        if raw.startswith("@"):
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        claims = json.loads(raw)
        if not isinstance(claims, dict):
            raise ValueError("expected a JSON object")
        principal = principal_from_claims(claims)
    except (OSError, ValueError) as exc:
        print(f"--principal: {exc}", file=out)
        return 2
    engine = PolicyEngine(policy)
    session = SessionContext(
        session_id="policy-check",
        standard_conforming_strings=args.standard_conforming_strings == "on",
    )
    d = engine.decide(principal, args.sql, session=session)
    print(f"principal: {principal.label()}", file=out)
    print(f"tier: {d.tier or '(none)'}", file=out)
    print(f"decision: {d.action}", file=out)
    print(f"rule: {d.rule_id}", file=out)
    print(f"message: {d.message}", file=out)
    print(f"why: {d.reason}", file=out)
    print(f"fingerprint: {d.fingerprint}", file=out)
    if d.analysis.unparseable:
        print(f"parse error: {d.analysis.error}", file=out)
    for i, sd in enumerate(d.statements, 1):
        a = sd.analysis
        print(f"statement {i}: {a.text}", file=out)
        print(f"  classes: {', '.join(sorted(a.classes))}", file=out)
        if a.reads:
            print(f"  reads: {', '.join(sorted(_name(n) for n in a.reads))}", file=out)
        if a.writes:
            print(f"  writes: {', '.join(sorted(_name(n) for n in a.writes))}", file=out)
        if a.functions:
            print(f"  functions: {', '.join(sorted(_name(n) for n in a.functions))}", file=out)
        if a.constructs:
            print(f"  constructs: {', '.join(sorted(a.constructs))}", file=out)
            for detail in a.details:
                print(f"    - {detail}", file=out)
        print(f"  decision: {sd.action} (rule {sd.rule_id}): {sd.reason}", file=out)
    return 0 if d.action == "allow" else 1


def _name(n: tuple[str | None, str]) -> str:
    return f"{n[0]}.{n[1]}" if n[0] else n[1]


if __name__ == "__main__":  # pragma: no cover
    cmd = sys.argv[1:2]
    if cmd == ["lint"]:
        raise SystemExit(lint_main(sys.argv[2:]))
    if cmd == ["check"]:
        raise SystemExit(check_main(sys.argv[2:]))
    print("usage: python -m veilgate.policy.cli lint|check ...", file=sys.stderr)
    raise SystemExit(2)
