"""Nothing secret in anything the recorder writes: not the token, not the upstream password, not
the audit key, not a credential in a statement, not a bind parameter, not one of the masked
values of the test data (which the session read through every bypass shape, with psql, psycopg
and asyncpg, in text, binary and COPY)."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import PASSWORD_ENV, GatewayHandle, with_policy
from tests.integration.masking_setup import (
    NOTES,
    POLICY_FILE,
    RAW_VALUES,
    SSN,
    bypass_queries,
    make_table,
)
from tests.integration.recording_setup import (
    audit_config,
    flush,
    make_key,
    psql,
    recorder_of,
    sessions,
    statements,
    wait_sessions_ended,
    with_audit,
)

pytestmark = pytest.mark.pg

PASSWORD_IN_SQL = "Sup3r-Secret-Pw!"
DSN_PASSWORD = "dsn-secret-9731"
URI_PASSWORD = "uri-secret-4417"


def test_the_recording_holds_no_secret(
    gateway_factory: Callable[..., GatewayHandle], tmp_path: Path, pg_cluster: Any
) -> None:
    key_file = make_key(tmp_path)
    audit = audit_config(tmp_path / "audit", key_file)
    pol = with_policy(POLICY_FILE, tmp_path / "decisions.jsonl", "db.masked")
    handle = gateway_factory(transform=lambda c: with_audit(audit)(pol(c)))
    t = pw.gateway_target(handle)
    table = make_table(pg_cluster)
    queries = list(bypass_queries(table).values())

    # psql: every bypass shape, a COPY, statements that carry credentials (they fail, which is
    # fine: the text is what matters)
    res = psql(
        t,
        *[x for q in queries for x in ("-c", q)],
        "-c",
        f"copy (select * from {table}) to stdout",
        "-c",
        f"alter role no_such_role with password '{PASSWORD_IN_SQL}'",
        "-c",
        f"select 'host=db user=u password={DSN_PASSWORD} dbname=x' as conninfo",
        "-c",
        f"select 'postgresql://u:{URI_PASSWORD}@db/x' as uri",
    )
    assert res.returncode in (0, 1), res.stderr
    # psycopg: bind parameters holding raw values (text and binary), a prepared statement
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        # filtering on a masked column is refused (it would rebuild the value): the parameter,
        # a raw value, is not recorded either way
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select id from {table} where ssn = %s", (SSN,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select * from {table} where email = %s", (RAW_VALUES[4],), prepare=True)
        conn.execute("select %s::text", (NOTES,), binary=True).fetchall()
        conn.execute("select %s::text as x", (SSN,)).fetchall()
        with conn.cursor().copy(f"copy {table} to stdout (format binary)") as cp:
            for _ in cp:
                pass

    # asyncpg: binary results, parameters
    async def run_asyncpg() -> None:
        conn = await asyncpg.connect(**handle.asyncpg_kwargs())
        try:
            await conn.fetch(f"select * from {table} order by id")
            await conn.fetch("select $1::text", RAW_VALUES[6])
        finally:
            await conn.close()

    asyncio.run(run_asyncpg())
    wait_sessions_ended(handle)
    flush(handle)
    rec = recorder_of(handle)
    assert rec.index is not None

    async def index_flushed() -> bool:
        assert rec.index is not None
        return await rec.index.flush()

    assert asyncio.run_coroutine_threadsafe(index_flushed(), handle.thread.loop).result(30)  # type: ignore[arg-type]

    # the recording is not empty: the statements are there
    recorded = [s for recs in sessions(tmp_path / "audit").values() for s in statements(recs)]
    texts = {s["sql"] for s in recorded}
    assert f"select * from {table} order by id" in texts
    assert "alter role no_such_role with password '***'" in texts
    assert any(s["decision"]["action"] == "allow" for s in recorded)
    assert (
        sum(
            1 for recs in sessions(tmp_path / "audit").values() for r in recs if r["kind"] == "mask"
        )
        >= 3
    )

    secrets_ = {
        "token": handle.token,
        "upstream password": os.environ[PASSWORD_ENV],
        "audit key": key_file.read_text().strip(),
        "password in a statement": PASSWORD_IN_SQL,
        "password in a connection string": DSN_PASSWORD,
        "password in a URI": URI_PASSWORD,
        **{f"masked value {v!r}": v for v in RAW_VALUES},
    }
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != key_file]
    names = {p.name for p in written}
    assert any(n.startswith("segment-") for n in names) and "veilgate-state.db" in names
    assert "decisions.jsonl" in names
    for path in written:
        data = path.read_bytes()
        for what, value in secrets_.items():
            assert value.encode() not in data, f"{what} found in {path}"
