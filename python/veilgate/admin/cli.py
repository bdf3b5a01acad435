"""``veilgate admin ...`` (and ``veilgate reload``): the admin console from the command line.

Talks HTTP to a running gateway's admin listener (:mod:`veilgate.admin.console`).  Where: ``--url``,
else ``--config FILE``'s ``admin.host`` / ``admin.port``, else ``$VEILGATE_ADMIN_URL``, else
``http://127.0.0.1:9187``.  The token: ``--token-file``, else ``--token-env NAME``, else the
config's ``admin.token_file`` / ``admin.token_env``, else ``$VEILGATE_ADMIN_TOKEN``.  The token is
never printed.  Exit status: 0 done, 1 the gateway refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["main", "reload_main"]

DEFAULT_URL = "http://127.0.0.1:9187"
TOKEN_ENV = "VEILGATE_ADMIN_TOKEN"  # noqa: S105 (a variable's name)


class _Failed(Exception):
    pass


def _parser(prog: str = "veilgate admin") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="Sessions, targets and the configuration of a running gateway."
    )
    ap.add_argument("--url", help=f"admin listener (default: from --config, else {DEFAULT_URL})")
    ap.add_argument("--config", "-c", metavar="FILE", help="the gateway's configuration file")
    ap.add_argument("--token-file", metavar="FILE", help="file holding the admin token")
    ap.add_argument(
        "--token-env", metavar="NAME", help=f"variable holding it (default {TOKEN_ENV})"
    )
    ap.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("sessions", help="list sessions")
    for name, what in (
        ("session", "show one session"),
        ("cancel", "cancel a session's running statement"),
        ("terminate", "end a session now (57P01)"),
    ):
        sub.add_parser(name, help=what).add_argument("id", help="session id (see sessions)")
    sub.add_parser("targets", help="list targets and their upstream connections")
    for name, what in (
        ("pause", "new sessions for TARGET wait until resumed"),
        ("resume", "let new sessions for TARGET go on"),
    ):
        sub.add_parser(name, help=what).add_argument("target")
    sub.add_parser("config", help="configuration generation, version and build")
    sub.add_parser("reload", help="reload the configuration file (as SIGHUP)")
    sub.add_parser("drain", help="drain the gateway and make it exit (as SIGTERM)")
    return ap


def _config_admin(path: str | None) -> Any:
    if path is None:
        return None
    from veilgate import config

    try:
        return config.load(path).admin
    except config.ConfigError as e:
        raise _Failed(str(e)) from None


def _url(args: argparse.Namespace, admin: Any) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    if admin is not None:
        host = "127.0.0.1" if admin.host in ("0.0.0.0", "", "::") else admin.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{admin.port}"
    return os.environ.get("VEILGATE_ADMIN_URL", DEFAULT_URL).rstrip("/")


def _token(args: argparse.Namespace, admin: Any) -> str:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    if args.token_env:
        return os.environ.get(args.token_env, "").strip()
    if admin is not None and admin.token_file is not None:
        return Path(admin.token_file).read_text().strip()
    if admin is not None and admin.token_env is not None:
        return os.environ.get(admin.token_env, "").strip()
    return os.environ.get(TOKEN_ENV, "").strip()


def call(url: str, token: str, method: str, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(  # noqa: S310 (http(s) URL from the operator)
        url + path,
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
            return int(r.status), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return int(e.code), json.loads(body)
        except ValueError:
            return int(e.code), {"error": "http", "message": body.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as e:
        raise _Failed(f"cannot reach the admin listener at {url}: {e}") from None


_ROUTES: dict[str, tuple[str, str]] = {
    "sessions": ("GET", "/v1/admin/sessions"),
    "session": ("GET", "/v1/admin/sessions/{id}"),
    "cancel": ("POST", "/v1/admin/sessions/{id}/cancel"),
    "terminate": ("POST", "/v1/admin/sessions/{id}/terminate"),
    "targets": ("GET", "/v1/admin/targets"),
    "pause": ("POST", "/v1/admin/targets/{target}/pause"),
    "resume": ("POST", "/v1/admin/targets/{target}/resume"),
    "config": ("GET", "/v1/admin/config"),
    "reload": ("POST", "/v1/admin/reload"),
    "drain": ("POST", "/v1/admin/drain"),
}


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _print(command: str, body: Any, as_json: bool, out: TextIO) -> None:
    if as_json or not isinstance(body, dict):
        print(json.dumps(body, indent=2), file=out)
        return
    cols: tuple[str, ...]
    if command == "sessions":
        cols = ("id", "state", "principal", "tier", "target", "client", "age_s", "upstream_pid")
        _table(body["sessions"], cols, out)
    elif command == "targets":
        cols = ("name", "host", "port", "dbname", "paused", "sessions", "upstream_connections")
        _table(body["targets"], cols, out)
    elif command == "reload":
        if body.get("ok"):
            print(f"reloaded: generation {body['generation']}", file=out)
            for key in body.get("restart_required", []):
                print(f"restart required: {key}", file=out)
            mask_key = body.get("masking_key") or {}
            if mask_key.get("changed"):
                print(
                    f"masking hash key: generation {mask_key['generation']} "
                    f"(fingerprint {mask_key['fingerprint']}) for new sessions",
                    file=out,
                )
            if mask_key.get("error"):
                print(f"masking hash key: {mask_key['error']}", file=out)
        else:
            for e in body.get("errors", []):
                print(e, file=out)
    else:
        for k, v in body.items():
            print(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}", file=out)


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    try:
        admin = _config_admin(args.config)
        url, token = _url(args, admin), _token(args, admin)
        method, path = _ROUTES[args.command]
        path = path.format(**{k: _quote(v) for k, v in vars(args).items() if isinstance(v, str)})
        status, body = call(url, token, method, path)
    except (_Failed, OSError) as e:
        print(f"veilgate admin: {e}", file=err)
        return 1
    if status >= 400 and not (args.command == "reload" and status == 409):
        message = body.get("message", body) if isinstance(body, dict) else body
        print(f"veilgate admin: {status}: {message}", file=err)
        return 1
    _print(args.command, body, args.json, out)
    return 0 if status < 400 else 1


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def reload_main(argv: Sequence[str] | None = None) -> int:
    """``veilgate reload [admin options]``: ``veilgate admin reload``."""
    return main([*(argv or []), "reload"])
