"""Versioned schema migrations, per component, in one table both backends share.

Each component (``approvals``, ``sessions``...) owns an ordered list of :class:`Migration` steps
and calls :func:`migrate` when it opens the store.  ``veilgate_schema`` records the version each
component's tables are at; steps newer than that run in one transaction, under a lock (PostgreSQL:
an advisory transaction lock; SQLite: ``BEGIN IMMEDIATE``), so gateways starting at the same time
migrate once.  A database at a newer version than this veilgate knows is refused: an older binary
must not write to tables it does not understand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from veilgate.state.db import StateDB, StateUnavailable

__all__ = ["Migration", "SchemaTooNew", "migrate", "schema_versions"]

_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS veilgate_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)"""
_LOCK_KEY = 0x7665696C  # 'veil': the advisory lock every migrating gateway takes


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: statements run in order (``sqlite`` / ``postgres`` override ``sql``)."""

    version: int
    sql: tuple[str, ...] = ()
    sqlite: tuple[str, ...] | None = None
    postgres: tuple[str, ...] | None = None

    def statements(self, dialect: str) -> tuple[str, ...]:
        own = self.sqlite if dialect == "sqlite" else self.postgres
        return own if own is not None else self.sql


class SchemaTooNew(StateUnavailable):
    """The database was migrated by a newer veilgate."""


def _check_steps(component: str, steps: Sequence[Migration]) -> None:
    versions = [m.version for m in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise ValueError(f"{component}: migrations must be numbered 1..n, got {versions}")


async def migrate(db: StateDB, component: str, steps: Sequence[Migration]) -> int:
    """Bring ``component``'s tables to the newest step; returns the version now in place."""
    _check_steps(component, steps)
    target = len(steps)
    async with db.transaction() as tx:
        if db.dialect == "postgres":
            await tx.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await tx.execute(_SCHEMA_TABLE)
        row = await tx.fetchrow(
            "SELECT version FROM veilgate_schema WHERE component = $1", component
        )
        current = int(row["version"]) if row is not None else 0
        if current > target:
            raise SchemaTooNew(
                f"{db.describe()}: the {component} tables are at schema version {current}; this "
                f"veilgate knows up to {target} (upgrade veilgate)"
            )
        if current == target:
            return current
        for step in steps[current:]:
            for sql in step.statements(db.dialect):
                await tx.execute(sql)
        await tx.execute(
            "INSERT INTO veilgate_schema (component, version, updated_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, "
            "updated_at = EXCLUDED.updated_at",
            component,
            target,
            time.time(),
        )
    return target


async def schema_versions(db: StateDB) -> dict[str, int]:
    """Every component's schema version (empty before the first migration)."""
    async with db.transaction() as tx:
        await tx.execute(_SCHEMA_TABLE)
        rows = await tx.fetch("SELECT component, version FROM veilgate_schema")
    return {str(r["component"]): int(r["version"]) for r in rows}
