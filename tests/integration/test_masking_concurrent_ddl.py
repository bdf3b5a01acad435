"""Masking under concurrent DDL: many sessions of one login share the masking catalog while
half of them create, alter and drop temp tables (each DDL tag invalidates part of it).

No session may be closed for it, and every masked result must still be masked exactly as
without the DDL (the catalog answers each plan from a lookup made after the plan asked).
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tests.integration.masking_setup import (
    SSN,
    Factory,
    MaskedGateway,
    leaked,
    make_table,
    start_gateway,
)

pytestmark = pytest.mark.pg

SESSIONS = 150
ROUNDS = 3


@pytest.fixture
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def masked(gateway_factory: Factory, tmp_path: Path) -> MaskedGateway:
    return start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.masked")


def _check_masked_row(row: Any) -> None:
    ssn, email = row
    assert ssn != SSN and ssn.endswith(SSN[-4:]) and len(ssn) == len(SSN), ssn
    assert email == "<EMAIL>", email


async def _ddl_session(conn: Any, i: int, table: str) -> list[str]:
    """Temp tables created, altered and dropped (tags CREATE TABLE, ALTER TABLE, DROP TABLE)
    between masked reads."""
    out = []
    for k in range(ROUNDS):
        await conn.execute(f"create temp table tt{k} (x int)")
        await conn.execute(f"insert into tt{k} values ({i})")
        # computed from the temp table only: the planner looks its name up in the catalog
        assert await conn.fetchval(f"select sum(x) from tt{k}") == i
        await conn.execute(f"alter table tt{k} add column note text")
        await conn.execute(f"update tt{k} set note = 'n{i}'")
        assert tuple(await conn.fetchrow(f"select x, note from tt{k}")) == (i, f"n{i}")
        await conn.execute(f"drop table tt{k}")
        row = await conn.fetchrow(f"select ssn, email from {table} where id = 1")
        _check_masked_row(tuple(row))
        out.append(repr(tuple(row)))
    return out


async def _read_session(conn: Any, table: str) -> list[str]:
    """Masked reads of every kind: by lineage, unknown lineage, whole row, through a view."""
    out = []
    for _ in range(ROUNDS):
        row = await conn.fetchrow(f"select ssn, email from {table} where id = 1")
        _check_masked_row(tuple(row))
        lowered = await conn.fetchval(f"select lower(ssn) from {table} where id = 1")
        assert lowered != SSN.lower(), lowered
        whole = await conn.fetchval(f"select row_to_json(m)::text from {table} m where id = 1")
        view = await conn.fetchrow(f"select ssn, email from {table}_v where id = 1")
        _check_masked_row(tuple(view))
        out += [repr(tuple(row)), repr(lowered), repr(whole), repr(tuple(view))]
    return out


def test_many_sessions_with_temp_table_ddl_stay_open_and_masked(
    masked: MaskedGateway, table: str
) -> None:
    async def session(i: int, barrier: asyncio.Barrier) -> list[str]:
        conn = await asyncpg.connect(**masked.target.asyncpg_kwargs(timeout=120))
        try:
            await barrier.wait()
            if i % 2:
                return await _ddl_session(conn, i, table)
            return await _read_session(conn, table)
        finally:
            await conn.close()

    async def run() -> list[Any]:
        barrier = asyncio.Barrier(SESSIONS)
        return await asyncio.gather(
            *(session(i, barrier) for i in range(SESSIONS)), return_exceptions=True
        )

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} sessions failed: {errors[:3]}"
    for r in results:
        assert len(r) in (ROUNDS, 4 * ROUNDS)
        found = leaked(" ".join(r))
        assert not found, found
