"""The ``veilgate`` command line.

Each command group registers itself through a function in :data:`COMMANDS` (``register(sub)``
adds a subparser and sets ``func``: a callable taking the parsed namespace and returning the exit
code).  A later group (``dev-idp``, ``policy``, ``mask``, ``sessions``...) adds one function.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from veilgate import __version__
from veilgate.cliargs import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    Subparsers,
    add_command,
    add_group,
    usage,
)

if TYPE_CHECKING:
    from veilgate.config_model import GatewayConfig

# -- serve ---------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from veilgate.service import ignore_quiet_signals

    # first of all: a SIGHUP while the config loads must not end the process
    ignore_quiet_signals()
    from veilgate import config, log
    from veilgate.service import run

    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    log.setup(args.log_level or cfg.logging.level, args.log_format or cfg.logging.format)
    overrides = (args.log_level, args.log_format)
    if args.worker is not None:
        return _serve_worker(cfg, args.worker, overrides)
    logger = log.get("config")
    for warning in config.warnings(cfg):
        log.event(logger, "config_warning", logging.WARNING, file=args.config, warning=warning)
    from veilgate.workers import resolve_workers

    workers = resolve_workers(cfg.server.workers if args.workers is None else args.workers)
    if workers == 1:
        return run(cfg, overrides)
    if cfg.listen.handover_socket is not None:
        print(
            f"{args.config}: listen.handover_socket works with one worker only "
            f"(--workers {workers}); set server.workers: 1 or pass --workers 1",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from veilgate.workers import supervise

    return supervise(cfg, workers, overrides)


def _serve_worker(
    cfg: GatewayConfig, spec_text: str, overrides: tuple[str | None, str | None]
) -> int:
    """One worker under ``serve --workers N`` (started by the supervisor, never by hand)."""
    import os

    from veilgate.gateway.workerlink import WorkerSpec
    from veilgate.service import run
    from veilgate.workers import set_parent_death_signal

    try:
        spec = WorkerSpec.decode(spec_text)
    except ValueError as e:
        print(f"veilgate: --worker: {e}", file=sys.stderr)
        return EXIT_USAGE
    set_parent_death_signal()
    if os.getppid() != spec.parent_pid:  # the supervisor died before the line above
        return EXIT_FAILURE
    return run(cfg, overrides, worker=spec)


def _workers_arg(text: str) -> int:
    if text == "auto":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of processes or 'auto'") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError("expected 1 to 256 (or 'auto')")
    return n


def _register_serve(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "serve",
        _cmd_serve,
        help="run the gateway",
        description="Run the gateway until SIGTERM/SIGINT (graceful drain; a second SIGINT "
        "closes every session at once).",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML configuration")
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error", "critical"),
        help="override logging.level",
    )
    p.add_argument("--log-format", choices=("json", "text"), help="override logging.format")
    p.add_argument(
        "--workers",
        type=_workers_arg,
        metavar="N",
        help="gateway processes sharing the port (SO_REUSEPORT); 'auto': one per CPU core; "
        "overrides server.workers (default 1: one process)",
    )
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)


# -- config --------------------------------------------------------------------------------------


def _cmd_config_check(args: argparse.Namespace) -> int:
    from veilgate import config

    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        n = len(e.issues)
        print(f"{args.file}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return EXIT_USAGE
    for warning in config.warnings(cfg):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    if args.strict:
        import asyncio

        from veilgate.health import strict_checks

        checks = asyncio.run(strict_checks(cfg))
        for c in checks:
            mark = "ok  " if c.ok else "FAIL"
            print(f"{mark} {c.name}" + (f": {c.detail}" if c.detail else ""))
        bad = [c.name for c in checks if not c.ok]
        if bad:
            print(f"{args.file}: not ready: {', '.join(bad)}", file=sys.stderr)
            return EXIT_FAILURE
    targets = ", ".join(sorted(cfg.targets))
    print(f"{args.file}: OK (listen {cfg.listen.host}:{cfg.listen.port}; targets: {targets})")
    return EXIT_OK


def _register_config(sub: Subparsers) -> None:
    group = add_group(sub, "config", help="configuration tools")
    p = add_command(
        group,
        "check",
        _cmd_config_check,
        help="validate a configuration file",
        description="Validate FILE (every error names file, line and key; exit 2).  With "
        "--strict, also run the readiness checks /readyz runs, from this machine: every "
        "upstream login, identity provider keys, masking key, certificate validity, audit "
        "directory (exit 1 if one fails).",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--strict",
        action="store_true",
        help="also connect upstream, fetch identity keys and check keys and certificates",
    )


# -- token ---------------------------------------------------------------------------------------


def _read_token(stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass("token (not echoed): ", stream=sys.stderr)
    data = stdin.read(1 << 20)
    return data.rstrip("\r\n")


def _cmd_token_hash(args: argparse.Namespace) -> int:
    from veilgate.identity.static import token_digest

    token = _read_token(sys.stdin)
    if not token:
        print("veilgate: no token on standard input", file=sys.stderr)
        return EXIT_USAGE
    if token != token.strip() or "\n" in token:
        print(
            "veilgate: the token has leading/trailing spaces or several lines; "
            "pass exactly one token",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(token_digest(token))
    return EXIT_OK


def _cmd_token_new(args: argparse.Namespace) -> int:
    from veilgate.identity.static import token_digest

    token = secrets.token_urlsafe(args.bytes)
    print(f"token:  {token}")
    print(f"sha256: {token_digest(token)}")
    print(
        "Give the token to the client (as its password) and put only the sha256 in "
        "auth.static_tokens.",
        file=sys.stderr,
    )
    return EXIT_OK


def _register_token(sub: Subparsers) -> None:
    group = add_group(sub, "token", help="static token tools")
    add_command(
        group,
        "hash",
        _cmd_token_hash,
        help="print the sha256 of a token read from standard input",
        description="Reads one token from standard input (or prompts without echo on a "
        "terminal) and prints its SHA-256 hex digest, the value for auth.static_tokens[].sha256.",
    )
    p = add_command(group, "new", _cmd_token_new, help="generate a random token and its sha256")
    p.add_argument("--bytes", type=int, default=32, help="random bytes (default 32)")


# -- version -------------------------------------------------------------------------------------


def _cmd_version(args: argparse.Namespace) -> int:
    try:
        import veilgate_native

        native = getattr(veilgate_native, "__version__", "installed")
    except ImportError:
        native = "not installed"
    from veilgate.buildinfo import build_info

    commit = build_info()["commit"][:12]
    print(
        f"veilgate {__version__} (native engine: {native}; python {sys.version.split()[0]}; "
        f"commit {commit})"
    )
    return EXIT_OK


def _register_version(sub: Subparsers) -> None:
    add_command(sub, "version", _cmd_version, help="print the version")


# -- commands that parse their own arguments ----------------------------------------------------

DELEGATED: dict[tuple[str, ...], tuple[str, str]] = {
    ("policy", "lint"): ("veilgate.policy.cli:lint_main", "validate a policy file"),
    ("policy", "confirm"): (
        "veilgate.policy.cli:confirm_main",
        "confirm a policy file whose reload removes masking from a tier",
    ),
    ("policy", "check"): (
        "veilgate.policy.cli:check_main",
        "explain the decision for one identity and statement",
    ),
    ("policy", "simulate"): (
        "veilgate.audit.cli:simulate_main",
        "what a new policy would change for recorded sessions (exit 1: something newly allowed)",
    ),
    ("mask",): (
        "veilgate.masking.cli:mask_main",
        "mask CSV or JSON lines (stdin to stdout) with a policy's masking rules",
    ),
    ("dev-idp",): (
        "veilgate.identity.devidp:dev_idp_main",
        "run a development OIDC identity provider on 127.0.0.1",
    ),
    ("dev-token",): (
        "veilgate.identity.devidp:dev_token_main",
        "mint a token from the development identity provider",
    ),
    ("approvals",): (
        "veilgate.approvals.cli:main",
        "list, show, approve or deny just-in-time approval requests",
    ),
    ("admin",): (
        "veilgate.admin.cli:main",
        "a running gateway's sessions, targets and configuration (the admin console)",
    ),
    ("reload",): (
        "veilgate.admin.cli:reload_main",
        "reload a running gateway's configuration (through its admin console)",
    ),
}
"""Commands whose module parses its own arguments: ``words -> (module:function, help)``."""


def _run_delegated(target: str, argv: list[str]) -> int:
    import importlib

    module, func = target.split(":")
    entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    return entry(argv)


def _register_delegated(sub: Subparsers) -> None:
    """List delegated commands in ``--help``; :func:`main` dispatches them before parsing."""
    groups: dict[str, Subparsers] = {}
    for words, (_target, help_text) in DELEGATED.items():
        parent = sub
        if len(words) == 2:
            if words[0] not in groups:
                groups[words[0]] = add_group(sub, words[0], help=f"{words[0]} commands")
            parent = groups[words[0]]
        parent.add_parser(words[-1], help=help_text, add_help=False)


def _register_sessions(sub: Subparsers) -> None:
    from veilgate.audit.cli import register_sessions

    register_sessions(sub)


def _register_audit(sub: Subparsers) -> None:
    from veilgate.audit.cli import register_audit

    register_audit(sub)


COMMANDS: list[Callable[[Subparsers], None]] = [
    _register_serve,
    _register_config,
    _register_token,
    _register_delegated,
    _register_sessions,
    _register_audit,
    _register_version,
]
"""Command registrations, in help order; later command groups append theirs."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veilgate",
        description="Identity-aware PostgreSQL gateway.",
    )
    parser.add_argument("--version", action="version", version=f"veilgate {__version__}")
    parser.set_defaults(func=lambda _args: usage(parser))
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    for prefix, (target, _help) in DELEGATED.items():
        if tuple(words[: len(prefix)]) == prefix:
            return _run_delegated(target, words[len(prefix) :])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
