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

from .segments import ROTATE_REQUEST, SegmentDir, worker_dirs

__all__ = ["register_audit", "register_sessions"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


@dataclass
class Where:
    dir: Path
    keys: dict[str, bytes]
    state: Any = None
    """The configuration's ``StateConfig`` (the session index), when ``--config`` is given."""


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
    state = None
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
        state = cfg.state if cfg.audit.index else None
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
    return Where(directory, keys, state)


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
    workers = worker_dirs(where.dir)
    if workers:
        own = [where.dir] if SegmentDir(where.dir).segments() else []  # before --workers
        return _verify_workers(args, where, own + workers)
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


def _verify_workers(args: argparse.Namespace, where: Where, dirs: list[Path]) -> int:
    """``serve --workers N``'s recording: each worker's directory is its own hash chain, and
    each must verify (with ``--session``: the directory holding that session)."""
    from .reader import read_records
    from .verify import verify

    if args.session:
        dirs = [d for d in dirs if next(read_records(d, sid=args.session), None) is not None]
        if not dirs:
            print(f"FAILED: session {args.session}: no records in {where.dir}")
            return EXIT_FAILED
    ok = True
    out: dict[str, Any] = {}
    for d in dirs:
        report = verify(d, where.keys, session=args.session, allow_open=args.allow_open)
        ok = ok and report.ok
        out[d.name] = {"ok": report.ok, "records": report.records, "errors": report.errors}
        if not args.json:
            state = "OK" if report.ok else "FAILED"
            print(
                f"{state}: {d}: {report.records} records in {report.batches} sealed batches, "
                f"{report.segments} segment(s), {report.sessions} session(s), "
                f"{report.terminated} terminated"
            )
            for f in report.findings[: args.max_findings]:
                print(f"  {f}")
    if args.json:
        print(json.dumps({"ok": ok, "workers": out}, indent=2, default=str))
    elif not ok:
        print(f"FAILED: {where.dir}: a worker's recording does not verify")
    return EXIT_OK if ok else EXIT_FAILED


# --- audit rotate / new-key --------------------------------------------------------------------


def _cmd_rotate(args: argparse.Namespace) -> int:
    where = _where(args)
    workers = worker_dirs(where.dir)
    if workers:  # serve --workers N: every worker rotates its own directory
        code = EXIT_OK
        for d in workers:
            one = argparse.Namespace(**{**vars(args), "dir": str(d), "config": None})
            code = max(code, _cmd_rotate(one))
        return code
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
    from veilgate.cliargs import add_command, add_group

    group = add_group(sub, "sessions", help="recorded sessions: verify, list, show, export, replay")
    p = add_command(
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
    from veilgate.cliargs import add_command, add_group

    group = add_group(sub, "audit", help="the session recorder: rotate, keys, index")
    p = add_command(
        group,
        "rotate",
        lambda a: _run(_cmd_rotate, a),
        help="make the running gateway start a new segment (as SIGHUP does)",
    )
    _add_location(p)
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait (default 10)")
    p = add_command(
        group,
        "new-key",
        lambda a: _run(_cmd_new_key, a),
        help="write a new random signing key to a file (0600)",
    )
    p.add_argument("--out", required=True, metavar="FILE")
    for register in AUDIT_COMMANDS:
        register(group)


# --- selecting sessions -------------------------------------------------------------------------


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--principal", help="subject, client app, tenant or label (substring)")
    p.add_argument("--tier")
    p.add_argument("--since", help="ISO 8601 time or a duration ago (2h, 3d)")
    p.add_argument("--until", help="ISO 8601 time or a duration ago")
    p.add_argument(
        "--decision",
        choices=("deny", "approve", "refused", "error", "allow"),
        help="sessions with a denied / held / refused / failed statement (allow: none refused)",
    )
    p.add_argument("--table", help="sessions that read or wrote this table (name or schema.name)")
    p.add_argument("--fingerprint", help="sessions that ran a statement with this fingerprint")
    p.add_argument("--limit", type=int)
    p.add_argument(
        "--scan",
        action="store_true",
        help="read the segments instead of the session index (slower; no index needed)",
    )


def _filter(args: argparse.Namespace, spec: str | None = None) -> Any:
    from .query import parse_filter

    try:
        return parse_filter(
            spec,
            principal=getattr(args, "principal", None),
            tier=getattr(args, "tier", None),
            since=getattr(args, "since", None),
            until=getattr(args, "until", None),
            decision=getattr(args, "decision", None),
            table=getattr(args, "table", None),
            fingerprint=getattr(args, "fingerprint", None),
            limit=getattr(args, "limit", None),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _select(where: Where, f: Any, scan: bool) -> list[Any]:
    from veilgate.state import StateUnavailable

    from .query import select_sessions

    try:
        return select_sessions(where.dir, f, state=where.state, scan=scan)
    except StateUnavailable as e:
        raise UsageError(f"the session index is unavailable ({e}); use --scan") from None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- sessions list / show / export / replay ------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    where = _where(args)
    rows = _select(where, _filter(args), args.scan)
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in rows], indent=2, default=list))
        return EXIT_OK
    print(
        f"{'session':16}  {'started':20}  {'ended':20}  {'principal':28}  {'tier':12}  "
        f"{'stmts':>6}  {'refused':>7}  {'errors':>6}  tables"
    )
    for r in rows:
        print(
            f"{r.sid:16}  {_when(r.started):20}  {_when(r.ended):20}  "
            f"{(r.principal or '-')[:28]:28}  {(r.tier or '-')[:12]:12}  {r.statements:>6}  "
            f"{r.refused:>7}  {r.errors:>6}  {', '.join(r.tables[:6])}"
        )
    print(f"{len(rows)} session(s)")
    return EXIT_OK


def _session_records(where: Where, sid: str) -> list[Any]:
    from .reader import session_records

    if not where.dir.exists():
        raise UsageError(f"{where.dir}: no such directory")
    records = session_records(where.dir, sid)
    if not records:
        raise UsageError(f"session {sid}: no records in {where.dir}")
    return records


def _cmd_show(args: argparse.Namespace) -> int:
    from .timeline import render_timeline

    where = _where(args)
    records = _session_records(where, args.sid)
    if args.json:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))
        return EXIT_OK
    print(render_timeline(records))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import ocsf_events, write_csv, write_jsonl
    from .reader import read_records

    where = _where(args)
    if args.session:
        sids = {args.session}
    else:
        sids = {r.sid for r in _select(where, _filter(args), args.scan)}
    records = (r for r in read_records(where.dir) if r.get("sid") in sids)
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        events = ocsf_events(records)
        n = write_csv(events, out) if args.format == "csv" else write_jsonl(events, out)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} event(s) of {len(sids)} session(s)", file=sys.stderr)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from .replay import plan, to_script, to_server

    where = _where(args)
    items = plan(_session_records(where, args.sid), include_refused=args.include_refused)
    if args.to is None:
        n = to_script(items, sys.stdout)
        print(f"-- {n} of {len(items)} statement(s) replayable", file=sys.stderr)
        return EXIT_OK
    dsn = os.environ.get(args.to[1:], "") if args.to.startswith("$") else args.to
    if not dsn:
        raise UsageError(f"--to {args.to}: empty (an environment variable that is not set?)")
    res = to_server(items, dsn, stop_on_error=args.stop_on_error, log=sys.stdout)
    print(
        f"replayed {res.replayed} statement(s): {res.same} with the recorded outcome, "
        f"{len(res.differed)} different; {res.skipped} not replayable"
    )
    return EXIT_OK if not res.differed else EXIT_FAILED


# --- audit reindex --------------------------------------------------------------------------------


def _cmd_reindex(args: argparse.Namespace) -> int:
    import asyncio

    from veilgate.state import StateUnavailable, migrate, open_state

    from . import index
    from .query import rows_from_records

    where = _where(args)
    if where.state is None:
        raise UsageError("reindex needs --config with an audit section (the index is in state:)")
    rows = rows_from_records(where.dir)
    fps: dict[str, set[str]] = {}
    from .reader import read_records

    for r in read_records(where.dir):
        if r.get("kind") == "statement" and r.get("fp"):
            fps.setdefault(str(r.get("sid")), set()).add(str(r["fp"]))

    async def run() -> None:
        db = open_state(where.state)
        try:
            await migrate(db, index.COMPONENT, index.MIGRATIONS)
            async with db.transaction() as tx:
                for row in rows:
                    start = {
                        "sid": row.sid,
                        "node": row.node,
                        "started": row.started,
                        "provider": None,
                        "tenant": row.tenant,
                        "subject": row.subject,
                        "client_app": row.client_app,
                        "principal": row.principal,
                        "tier": row.tier,
                        "target": row.target,
                        "client_addr": row.client_addr,
                    }
                    ops = index.start_ops(start)
                    if row.ended is not None:
                        totals = {
                            "statements": row.statements,
                            "errors": row.errors,
                            "refused": row.refused,
                            "denied": row.denied,
                            "held": row.held,
                            "rows": row.rows,
                            "bytes": row.bytes,
                        }
                        ops += index.end_ops(
                            row.sid,
                            row.ended,
                            row.reason or "",
                            totals,
                            row.tables,
                            fps.get(row.sid, ()),
                        )
                    for sql, params in ops:
                        await tx.execute(sql, *params)
        finally:
            await db.close()

    try:
        asyncio.run(run())
    except StateUnavailable as e:
        raise UsageError(f"the session index is unavailable: {e}") from None
    print(f"indexed {len(rows)} session(s) from {where.dir}")
    return EXIT_OK


def _register_list(group: Any) -> None:
    from veilgate.cliargs import add_command

    p = add_command(group, "list", lambda a: _run(_cmd_list, a), help="list recorded sessions")
    _add_location(p)
    _add_filters(p)
    p.add_argument("--json", action="store_true")
    p = add_command(group, "show", lambda a: _run(_cmd_show, a), help="one session as a timeline")
    p.add_argument("sid")
    _add_location(p)
    p.add_argument("--json", action="store_true", help="the session's records as JSON lines")
    p = add_command(
        group,
        "export",
        lambda a: _run(_cmd_export, a),
        help="records as JSON lines or CSV with OCSF-style field names (for a SIEM)",
    )
    _add_location(p)
    _add_filters(p)
    p.add_argument("--session", metavar="SID", help="only this session")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    p = add_command(
        group,
        "replay",
        lambda a: _run(_cmd_replay, a),
        help="re-emit a session's statements (a script, or run on a test server)",
    )
    p.add_argument("sid")
    _add_location(p)
    p.add_argument(
        "--to",
        metavar="DSN",
        help="run them on this PostgreSQL server (a libpq DSN, or $VAR to read it from the "
        "environment); default: print a psql script",
    )
    p.add_argument(
        "--include-refused", action="store_true", help="also statements that did not run"
    )
    p.add_argument("--stop-on-error", action="store_true")


def _register_reindex(group: Any) -> None:
    from veilgate.cliargs import add_command

    p = add_command(
        group,
        "reindex",
        lambda a: _run(_cmd_reindex, a),
        help="rebuild the session index from the recording",
    )
    _add_location(p)


SESSION_COMMANDS: list[Any] = [_register_list]
"""More ``sessions`` subcommands register here."""
AUDIT_COMMANDS: list[Any] = [_register_reindex]
"""More ``audit`` subcommands register here."""


# --- policy simulate (delegated: parses its own arguments) ---------------------------------------


def simulate_main(argv: list[str] | None = None) -> int:
    """``veilgate policy simulate --policy NEW.yaml --sessions FILTER (--config FILE | --dir
    DIR)``: exit 0 when nothing would be newly allowed or unmasked, 1 otherwise, 2 on bad
    input."""
    ap = argparse.ArgumentParser(
        prog="veilgate policy simulate",
        description="Judge the statements of recorded sessions by a new policy and report, per "
        "rule and principal, what would change.  Exit 1 when a statement would newly be allowed "
        "or a session's results newly unmasked.",
    )
    ap.add_argument("--policy", required=True, metavar="FILE", help="the new policy file")
    ap.add_argument(
        "--sessions",
        default="all",
        metavar="FILTER",
        help="which sessions: all, or key=value[,key=value...] with keys sid, principal, tier, "
        "since, until, decision, table, fingerprint",
    )
    _add_location(ap)
    ap.add_argument("--scan", action="store_true", help="select sessions from the segments")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    return _run(_cmd_simulate, args)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from veilgate.policy.loader import PolicyError, load_policy

    from .reader import read_records
    from .simulate import render, simulate

    try:
        policy = load_policy(args.policy)
    except PolicyError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        raise UsageError(f"{args.policy}: {e}") from None
    where = _where(args)
    f = _filter(args, args.sessions)
    sids = {r.sid for r in _select(where, f, args.scan)}
    sessions: dict[str, list[Any]] = {}
    for r in read_records(where.dir):
        sid = r.get("sid")
        if sid in sids:
            sessions.setdefault(str(sid), []).append(r)
    report = simulate(policy, sessions)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for line in render(report):
            print(line)
    return EXIT_FAILED if report.widens else EXIT_OK
