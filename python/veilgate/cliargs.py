"""Building blocks of the ``veilgate`` command line, for :mod:`veilgate.cli` and the command
groups it registers (``veilgate sessions``, ``veilgate audit``...): a lower module, so that a
group does not import the command line that imports it.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "Subparsers",
    "add_command",
    "add_group",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Subparsers = Any
"""``argparse._SubParsersAction`` (private in typeshed)."""
Handler = Callable[[argparse.Namespace], int]


def add_command(
    sub: Subparsers, name: str, handler: Handler, **kwargs: Any
) -> argparse.ArgumentParser:
    """A command: ``handler`` gets the parsed namespace and returns the exit code."""
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=handler)
    return parser


def add_group(sub: Subparsers, name: str, **kwargs: Any) -> Subparsers:
    """A command with its own subcommands (``veilgate config check``)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=lambda _args: usage(parser))
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE
