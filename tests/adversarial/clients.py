"""One statement through every client and protocol the suite attacks with.

``CLIENTS`` names the ways: ``psql`` (simple Query), ``psycopg-simple`` (``execute`` without
parameters: simple Query), ``psycopg-extended`` (``prepare=True``: Parse / Bind / Execute),
``asyncpg-simple`` (``execute`` without arguments) and ``asyncpg-extended`` (``fetch``: a prepared
statement).  :func:`run` returns the SQLSTATE and message of the error the client saw (None when
the statement succeeded) and checks that the connection is still usable afterwards.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg

__all__ = ["CLIENTS", "Outcome", "run"]

CLIENTS = ("psql", "psycopg-simple", "psycopg-extended", "asyncpg-simple", "asyncpg-extended")
_PSQL_ERROR = re.compile(r"ERROR:\s+([0-9A-Z]{5}):\s+(.*)")


@dataclass(frozen=True)
class Outcome:
    sqlstate: str | None
    message: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.sqlstate is None


def run(client: str, handle: Any, sql: str, *, in_transaction: bool = False) -> Outcome:
    """Run ``sql`` through ``client`` against the gateway ``handle``; inside ``BEGIN`` ...
    ``ROLLBACK`` when ``in_transaction``."""
    if client == "psql":
        return _psql(handle, sql, in_transaction)
    if client.startswith("psycopg"):
        return _psycopg(handle, sql, client.endswith("extended"), in_transaction)
    if client.startswith("asyncpg"):
        return asyncio.run(_asyncpg(handle, sql, client.endswith("extended"), in_transaction))
    raise ValueError(client)


def _psql(handle: Any, sql: str, in_transaction: bool) -> Outcome:
    commands = ["BEGIN", sql, "ROLLBACK"] if in_transaction else [sql]
    args = ["psql", handle.dsn(), "-X", "-A", "-t", "-v", "VERBOSITY=verbose"]
    for c in [*commands, "select 'still-usable'"]:
        args += ["-c", c]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert "still-usable" in res.stdout, res.stderr  # the session survived
    m = _PSQL_ERROR.search(res.stderr)
    if m is None:
        return Outcome(None)
    detail = re.search(r"DETAIL:\s+(.*)", res.stderr)
    return Outcome(m.group(1), m.group(2), detail.group(1) if detail else "")


def _psycopg(handle: Any, sql: str, extended: bool, in_transaction: bool) -> Outcome:
    with psycopg.connect(handle.dsn(), autocommit=not in_transaction) as conn:
        try:
            conn.execute(sql, prepare=True) if extended else conn.execute(sql)
            outcome = Outcome(None)
        except psycopg.Error as exc:
            diag = exc.diag
            outcome = Outcome(exc.sqlstate, diag.message_primary or "", diag.message_detail or "")
        if in_transaction:
            conn.rollback()
        conn.autocommit = True
        assert conn.execute("select 1").fetchone() == (1,)
    return outcome


async def _asyncpg(handle: Any, sql: str, extended: bool, in_transaction: bool) -> Outcome:
    conn = await asyncpg.connect(**handle.asyncpg_kwargs())
    try:
        tx = conn.transaction() if in_transaction else None
        if tx is not None:
            await tx.start()
        try:
            if extended:
                await conn.fetch(sql)
            else:
                await conn.execute(sql)
            outcome = Outcome(None)
        except asyncpg.PostgresError as exc:
            outcome = Outcome(
                exc.sqlstate, str(exc.args[0]) if exc.args else "", str(exc.detail or "")
            )
        if tx is not None:
            await tx.rollback()
        assert await conn.fetchval("select 1") == 1
        return outcome
    finally:
        await conn.close()
