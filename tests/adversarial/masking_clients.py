"""The masked table the masking attacks aim at, the clients they use, and the leak check.

:func:`make_table` creates a ``vg_adv_*`` table (and a view and a materialized view over it) whose
masked columns hold known values (``RAW``).  :func:`attack` runs one statement through one way of
talking to the gateway (``MODES``) and returns *everything the client received*: for the raw wire
modes every byte of every message; for psql its whole output; for psycopg and asyncpg every value,
error and notice field they surface.  :func:`leaks` looks for any raw value, and for the forms a
query could turn one into (reversed, digits only, upper / lower case, hex, base64), in those bytes.

Modes: ``psql`` (simple Query), ``psycopg-simple`` (ClientCursor: simple Query, text),
``psycopg-text`` / ``psycopg-binary`` (extended protocol, text / binary results), ``asyncpg``
(extended protocol, binary results), ``wire-simple`` and ``wire-extended-text`` /
``wire-extended-binary`` (a raw protocol client: Parse / Bind / Describe / Execute / Sync).  Each
runs outside a transaction, or inside ``BEGIN`` ... ``COMMIT`` (``in_tx``): then it also reports
what the COMMIT answered (a refused statement must have failed the transaction on the server).
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from tests.integration import pgwire as pw

__all__ = [
    "MODES",
    "POLICY_FILE",
    "RAW",
    "Outcome",
    "attack",
    "leaks",
    "make_table",
    "start_gateway",
]

SSN = "536-22-8141"
EMAIL = "alice.smith@example.org"
CARD = "4111111111111111"
SECRET = "Vault-Key-9f8e7d6c5b4a"
NOTE_EMAIL = "bob.jones@example.com"
NOTES = f"call 212-555-0143 or write to {NOTE_EMAIL}"
SECOND_SSN = "287-65-4329"

RAW: tuple[str, ...] = (SSN, EMAIL, CARD, SECRET, NOTE_EMAIL, SECOND_SSN)
"""The masked values in the table (rows 1 and 2)."""

MODES = (
    "psql",
    "psycopg-simple",
    "psycopg-text",
    "psycopg-binary",
    "asyncpg",
    "wire-simple",
    "wire-extended-text",
    "wire-extended-binary",
)


def _forms(value: str) -> set[bytes]:
    """Byte forms a query could turn a value into without the gateway seeing the value."""
    digits = "".join(ch for ch in value if ch.isdigit())
    out = {value, value[::-1], value.upper(), value.lower(), value.replace("-", "")}
    if len(digits) >= 9:
        out |= {digits, digits[::-1]}
    forms = {o.encode() for o in out}
    raw = value.encode()
    forms |= {raw.hex().encode(), base64.b64encode(raw).rstrip(b"=")}
    return forms


_LEAK_FORMS: dict[str, set[bytes]] = {v: _forms(v) for v in RAW}


def leaks(received: bytes, values: tuple[str, ...] = RAW) -> list[str]:
    """The raw values (in any of their forms) found in ``received``."""
    low = received.lower()
    return [v for v in values if any(f.lower() in low for f in _LEAK_FORMS.get(v, _forms(v)))]


def make_table(pg_cluster: Any) -> str:
    """A fresh ``vg_adv_*`` table with two rows of masked values; ``<t>_v`` a view and
    ``<t>_mv`` a materialized view over it; ``<t>_copy`` a table masked like ``card``."""
    name = "vg_adv_" + secrets.token_hex(4)
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(
            f"create table {name} (id int primary key, ssn text, email text unique, card text,"
            " notes text, api_secret text, label text)"
        )
        conn.execute(
            f"insert into {name} values (1, %s, %s, %s, %s, %s, 'one'),"
            " (2, %s, 'carol@example.net', null, 'nothing', null, 'two')",
            (SSN, EMAIL, CARD, NOTES, SECRET, SECOND_SSN),
        )
        conn.execute(f"create view {name}_v as select id, ssn, lower(email) as le from {name}")
        conn.execute(f"create materialized view {name}_mv as select id, reverse(ssn) r from {name}")
        conn.execute(
            f"create table {name}_copy (id int not null, copy_card text unique, plain text)"
        )
    return name


@dataclass
class Outcome:
    """What one client saw."""

    received: bytes = b""
    """Everything the client received that could carry a value."""
    rows: list[list[Any]] = field(default_factory=list)
    sqlstate: str | None = None
    message: str = ""
    detail: str = ""
    hint: str = ""
    commit: str | None = None
    """In a transaction: the COMMIT's command tag (``ROLLBACK`` when the transaction failed)."""

    def leaked(self) -> list[str]:
        return leaks(self.received)


def attack(
    target: pw.Target, mode: str, sql: str, *, in_tx: bool = False, setup: tuple[str, ...] = ()
) -> Outcome:
    """Run ``sql`` through ``mode``; see the module docstring.  ``setup``: statements run
    first in the same session (in the transaction, with ``in_tx``), each as a simple Query (or
    the client's plain execute); what they answer is not part of the outcome."""
    if mode == "psql":
        return _psql(target, sql, in_tx, setup)
    if mode.startswith("psycopg"):
        return _psycopg(target, sql, mode, in_tx, setup)
    if mode == "asyncpg":
        return asyncio.run(_asyncpg(target, sql, in_tx, setup))
    if mode.startswith("wire"):
        return _wire(target, sql, mode, in_tx, setup)
    raise ValueError(mode)


def _psql(target: pw.Target, sql: str, in_tx: bool, setup: tuple[str, ...] = ()) -> Outcome:
    first = "".join(f"{s};\n" for s in setup)
    script = f"BEGIN;\n{first}{sql};\nCOMMIT;\n" if in_tx else f"{first}{sql};\n"
    res = subprocess.run(
        [
            "psql",
            target.conninfo(),
            "-X",
            "-v",
            "VERBOSITY=verbose",
            "-v",
            "ON_ERROR_STOP=0",
            "-f",
            "-",
        ],
        input=script,
        env=target.psql_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = Outcome((res.stdout + res.stderr).encode())
    for line in res.stderr.splitlines():
        # "psql:<stdin>:1: ERROR:  42501: message" (VERBOSITY verbose)
        head, sep, rest = line.partition("ERROR:")
        if sep and out.sqlstate is None and head.startswith(("psql:", "")):
            code, _, message = rest.strip().partition(": ")
            out.sqlstate = code
            out.message = message.strip()
        elif line.startswith("DETAIL:") and not out.detail:
            out.detail = line[7:].strip()
        elif line.startswith("HINT:") and not out.hint:
            out.hint = line[5:].strip()
    if in_tx:
        lines = res.stdout.strip().splitlines()
        out.commit = lines[-1] if lines else None
    return out


def _diag_bytes(exc: psycopg.Error) -> bytes:
    d = exc.diag
    parts = [
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.context,
        d.statement_position,
        d.internal_query,
        d.column_name,
        d.table_name,
        d.constraint_name,
        d.datatype_name,
    ]
    return "\x00".join(p for p in parts if p).encode()


def _psycopg(
    target: pw.Target, sql: str, mode: str, in_tx: bool, setup: tuple[str, ...] = ()
) -> Outcome:
    out = Outcome()
    chunks: list[bytes] = []
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: chunks.append(str(d.message_primary).encode()))
        if mode == "psycopg-simple":
            cur: Any = psycopg.ClientCursor(conn)
        else:
            cur = conn.cursor(binary=mode == "psycopg-binary")
        try:
            if in_tx:
                conn.execute("BEGIN")
            for s in setup:
                conn.execute(s)
            cur.execute(sql)
            res = cur.pgresult
            if res is not None and res.nfields:
                cells = [
                    res.get_value(r, c) for r in range(res.ntuples) for c in range(res.nfields)
                ]
                chunks.extend(v for v in cells if v is not None)
                out.rows = [list(r) for r in cur.fetchall()] if cur.description else []
        except psycopg.Error as exc:
            out.sqlstate = exc.sqlstate
            out.message = exc.diag.message_primary or ""
            out.detail = exc.diag.message_detail or ""
            out.hint = exc.diag.message_hint or ""
            chunks.append(_diag_bytes(exc))
        if in_tx:
            try:
                cur2 = conn.execute("COMMIT")
                out.commit = cur2.statusmessage
            except psycopg.Error as exc:  # pragma: no cover - COMMIT does not fail here
                out.commit = f"error {exc.sqlstate}"
    out.received = b"\x00".join(chunks)
    return out


async def _asyncpg(
    target: pw.Target, sql: str, in_tx: bool, setup: tuple[str, ...] = ()
) -> Outcome:
    out = Outcome()
    chunks: list[bytes] = []
    conn = await asyncpg.connect(**target.asyncpg_kwargs())
    conn.add_log_listener(lambda _c, msg: chunks.append(repr(msg.as_dict()).encode()))
    try:
        if in_tx:
            await conn.execute("BEGIN")
        for s in setup:
            await conn.execute(s)
        try:
            records = await conn.fetch(sql)
            out.rows = [list(r.values()) for r in records]
            chunks.append(repr(out.rows).encode())
        except asyncpg.PostgresError as exc:
            fields = exc.as_dict()
            out.sqlstate = exc.sqlstate
            out.message = str(fields.get("message", ""))
            out.detail = str(fields.get("detail") or "")
            out.hint = str(fields.get("hint") or "")
            chunks.append(repr(fields).encode())
        if in_tx:
            out.commit = await conn.execute("COMMIT")
    finally:
        await conn.close()
    out.received = b"\x00".join(chunks)
    return out


def _wire(
    target: pw.Target, sql: str, mode: str, in_tx: bool, setup: tuple[str, ...] = ()
) -> Outcome:
    out = Outcome()
    conn = pw.connect(target.endpoint())
    msgs: list[pw.Msg] = []
    try:
        if in_tx:
            msgs += conn.simple("BEGIN")
        for s in setup:
            conn.simple(s)
        if mode == "wire-simple":
            msgs += conn.simple(sql)
        else:
            fmt = 1 if mode.endswith("binary") else 0
            conn.send(
                pw.parse("", sql)
                + pw.bind("", "", result_formats=(fmt,))
                + pw.describe("P")
                + pw.execute()
                + pw.sync()
            )
            msgs += conn.recv_until_ready()
        if in_tx:
            done = conn.simple("COMMIT")
            msgs += done
            tags = [pw.command_tag(m.body) for m in done if m.tag == "C"]
            out.commit = tags[0] if tags else None
    finally:
        conn.terminate()
    err = pw.first_error(msgs)
    if err is not None:
        out.sqlstate = err.get("C")
        out.message = err.get("M", "")
        out.detail = err.get("D", "")
        out.hint = err.get("H", "")
    out.rows = [pw.data_row(m.body) for m in msgs if m.tag == "D"]
    out.received = b"".join(m.tag.encode() + m.body for m in msgs)
    return out


POLICY_FILE = Path(__file__).with_name("policy.yaml")
KEY_ENV = "VEILGATE_ADV_MASK_KEY"


def start_gateway(base: Any, certs: Any, audit_dir: Any, role: str) -> Any:
    """A gateway running the suite's policy, whose static token carries ``role``
    (``db.masked`` or ``db.raw``); the caller stops it (``handle.thread.stop()``)."""
    from tests.integration.conftest import _start, with_policy

    os.environ.setdefault(KEY_ENV, secrets.token_hex(32))
    config, token = base
    ca, _ = certs
    config = with_policy(POLICY_FILE, audit_dir / f"audit-{role}.jsonl", role)(config)
    return _start(config, token, str(ca.cert_file))
