"""Shared state: the approval store, the session index (one database, versioned per component).

::

    db = open_state(config.state)                  # SQLiteDB or PostgresDB (nothing opened yet)
    await migrate(db, "sessions", MIGRATIONS)      # each component its own numbered steps
    async with db.transaction() as tx:             # $1-style placeholders in both dialects
        await tx.execute("INSERT INTO ...", a, b)
        tx.notify("veilgate_sessions", "id")       # delivered on commit, to every process
    await db.listen("veilgate_sessions", callback) # callback(payload | None) on the loop
    await db.close()

See :mod:`veilgate.state.db` for the SQL subset both dialects share and the failure contract
(:class:`StateUnavailable`: callers fail closed).
"""

from __future__ import annotations

from veilgate.config_model import StateBackend, StateConfig
from veilgate.state.db import Listener, Row, StateDB, StateUnavailable, Tx
from veilgate.state.migrate import Migration, SchemaTooNew, migrate, schema_versions

__all__ = [
    "Listener",
    "Migration",
    "Row",
    "SchemaTooNew",
    "StateDB",
    "StateUnavailable",
    "Tx",
    "migrate",
    "open_state",
    "schema_versions",
]


def open_state(config: StateConfig) -> StateDB:
    """The configured backend.  Nothing is opened until the first statement (the SQLite file
    is created then; a PostgreSQL server that is down fails that statement, not this call)."""
    if config.backend is StateBackend.POSTGRES:
        from veilgate.state.postgres import PostgresDB

        try:
            dsn = config.dsn()
        except OSError as exc:
            raise StateUnavailable(f"state: cannot read dsn_file: {exc.strerror or exc}") from None
        if not dsn:
            where = f"${config.dsn_env}" if config.dsn_env else str(config.dsn_file or "dsn_file")
            raise StateUnavailable(f"state: no PostgreSQL DSN in {where}")
        return PostgresDB(dsn.strip(), timeout_s=config.timeout_s)
    from veilgate.state.sqlite import SQLiteDB

    return SQLiteDB(config.path, timeout_s=config.timeout_s)
