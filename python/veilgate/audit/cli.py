"""``veilgate sessions ...`` and ``veilgate audit ...``: read, check and manage session records.

Where the recording is: ``--config FILE`` (its ``audit`` section: directory and keys) or
``--dir DIR``; keys for verification: the config's ``audit.key`` and ``audit.old_keys``, or
``--key ID=FILE`` (repeatable).  Exit codes: 0 fine, 1 a check failed (verify found tampering,
simulate found newly allowed statements, a session is not there), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .segments import ROTATE_REQUEST, SegmentDir

__all__ = ["register_audit", "register_sessions"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


@dataclass
class Where:
    dir: Path
    keys: dict[str, bytes]


def _add_location(p: argparse.ArgumentParser, *, keys: bool = False) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="gateway configuration (audit section)")
    p.add_argument("--dir", metavar="DIR", help="recording directory (instead of --config)")
    if keys:
        p.add_argument(
            "--key",
            action="append",
            default=[],
            metavar="ID=FILE",
            help="a verification key (repeatable; default: the config's audit keys)",
        )


def _where(args: argparse.Namespace, *, need_keys: bool = False, path: str | None = None) -> Where:
    keys: dict[str, bytes] = {}
    directory: Path | None = Path(args.dir) if getattr(args, "dir", None) else None
    if getattr(args, "config", None):
        from veilgate import config

        try:
            cfg = config.load(args.config)
        except config.ConfigError as e:
            raise UsageError(str(e)) from None
        if cfg.audit is None:
            raise UsageError(f"{args.config}: no audit section")
        if directory is None:
            directory = Path(cfg.audit.dir)
        if need_keys:
            try:
                keys.update(cfg.audit.keyring())
            except (OSError, ValueError) as e:
                raise UsageError(str(e)) from None
    for spec in getattr(args, "key", None) or []:
        kid, sep, file = spec.partition("=")
        if not sep or not kid or not file:
            raise UsageError(f"--key {spec!r}: expected ID=FILE")
        try:
            data = Path(file).read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"--key {kid}: {e}") from None
        keys[kid] = data
    if path is not None:
        directory = Path(path)
    if directory is None:
        raise UsageError("say where the recording is: --config FILE or --dir DIR")
    if need_keys and not keys:
        raise UsageError("no verification keys: --config FILE (audit keys) or --key ID=FILE")
    return Where(directory, keys)


def _run(func: Any, args: argparse.Namespace) -> int:
    try:
        code: int = func(args)
        return code
    except UsageError as e:
        print(f"veilgate: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK


# --- sessions verify ---------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    where = _where(args, need_keys=True, path=args.path)
    if not where.dir.exists():
        raise UsageError(f"{where.dir}: no such file or directory")
    report = verify(where.dir, where.keys, session=args.session, allow_open=args.allow_open)
    if args.json:
        out = {
            "ok": report.ok,
            "segments": report.segments,
            "records": report.records,
            "batches": report.batches,
            "sessions": report.sessions,
            "terminated": report.terminated,
            "open_sessions": report.open_sessions,
            "findings": [
                {
                    "severity": f.severity,
                    "file": f.file,
                    "line": f.line,
                    "message": f.message,
                    "sid": f.sid,
                }
                for f in report.findings
            ],
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK if report.ok else EXIT_FAILED
    errors = report.errors
    if errors:
        print(f"TAMPERED OR INCOMPLETE: first problem: {errors[0]}")
    for f in report.findings[: args.max_findings]:
        print(str(f))
    if len(report.findings) > args.max_findings:
        print(f"... and {len(report.findings) - args.max_findings} more")
    what = f"session {args.session}" if args.session else str(where.dir)
    summary = (
        f"{what}: {report.records} records in {report.batches} sealed batches, "
        f"{report.segments} segment(s), {report.sessions} session(s), "
        f"{report.terminated} terminated"
    )
    if report.ok:
        print(f"OK: {summary}")
        return EXIT_OK
    print(f"FAILED: {len(errors)} error(s); {summary}")
    return EXIT_FAILED


# --- audit rotate / new-key --------------------------------------------------------------------


def _cmd_rotate(args: argparse.Namespace) -> int:
    where = _where(args)
    seg_dir = SegmentDir(where.dir)
    before = seg_dir.segments()
    request = where.dir / ROTATE_REQUEST
    try:
        request.touch(mode=0o600)
    except OSError as e:
        raise UsageError(f"{request}: {e}") from None
    deadline = time.monotonic() + args.wait
    while request.exists():
        if time.monotonic() >= deadline:
            print(
                f"veilgate: no gateway took the rotate request within {args.wait:g} s (is one "
                f"recording into {where.dir}?); the request stays for the next start",
                file=sys.stderr,
            )
            return EXIT_FAILED
        time.sleep(0.05)
    after = seg_dir.segments()
    newest = after[-1][1] if after else None
    print(f"rotated: {len(before)} -> {len(after)} segment(s); writing to {newest}")
    return EXIT_OK


def _cmd_new_key(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{out}: exists (never overwritten: old segments need old keys)") from None
    except OSError as e:
        raise UsageError(f"{out}: {e}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    print(f"wrote a new 256-bit audit key to {out} (mode 0600)")
    print(
        "use it as audit.key {id: NEW_ID, file: ...}, move the old key to audit.old_keys, then "
        "SIGHUP the gateway",
        file=sys.stderr,
    )
    return EXIT_OK


def register_sessions(sub: Any) -> None:
    """``veilgate sessions ...``"""
    from veilgate.cli import _add, _group

    group = _group(sub, "sessions", help="recorded sessions: verify, list, show, export, replay")
    p = _add(
        group,
        "verify",
        lambda a: _run(_cmd_verify, a),
        help="check a recording for tampering, loss or truncation",
        description="Checks a recording directory, one segment file, or one session "
        "(--session) and names the first record that was altered, removed, reordered, spliced "
        "in or cut off.  Exit 1 if anything is wrong.",
    )
    p.add_argument("path", nargs="?", help="directory or segment file (default: from --config)")
    _add_location(p, keys=True)
    p.add_argument("--session", metavar="SID", help="check only this session")
    p.add_argument(
        "--allow-open",
        action="store_true",
        help="sessions without a terminator are fine (the gateway is still running)",
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--max-findings", type=int, default=20, help="findings printed (default 20)")
    for register in SESSION_COMMANDS:
        register(group)


def register_audit(sub: Any) -> None:
    """``veilgate audit ...``"""
    from veilgate.cli import _add, _group

    group = _group(sub, "audit", help="the session recorder: rotate, keys, index")
    p = _add(
        group,
        "rotate",
        lambda a: _run(_cmd_rotate, a),
        help="make the running gateway start a new segment (as SIGHUP does)",
    )
    _add_location(p)
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait (default 10)")
    p = _add(
        group,
        "new-key",
        lambda a: _run(_cmd_new_key, a),
        help="write a new random signing key to a file (0600)",
    )
    p.add_argument("--out", required=True, metavar="FILE")
    for register in AUDIT_COMMANDS:
        register(group)


SESSION_COMMANDS: list[Any] = []
"""More ``sessions`` subcommands (list, show, export, replay) register here."""
AUDIT_COMMANDS: list[Any] = []
"""More ``audit`` subcommands register here."""
