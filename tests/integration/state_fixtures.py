"""A PostgreSQL state database in the suite's throwaway cluster (for ``state.backend: postgres``).

``state_pg`` gives each test module its own database (owned by a dedicated login role, reached
over TLS + SCRAM like any server) and the DSN a gateway or the CLI would be configured with.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

STATE_ROLE = "veilgate_state"
STATE_DSN_ENV = "VEILGATE_TEST_STATE_DSN"


@dataclass
class StatePg:
    dsn: str
    dbname: str
    cluster: Any

    def terminate_backends(self, application_name: str | None = None) -> None:
        """Cut every connection to the state database (a server restart, as clients see it)."""
        extra = f" AND application_name = '{application_name}'" if application_name else ""
        self.cluster.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 (test names)
            f"WHERE datname = '{self.dbname}' AND pid <> pg_backend_pid(){extra}"
        )


@pytest.fixture(scope="module")
def state_pg(pg_cluster: Any) -> Iterator[StatePg]:
    password = secrets.token_urlsafe(18)
    pg_cluster.create_role(STATE_ROLE, password)
    dbname = "vgstate_" + secrets.token_hex(4)
    pg_cluster.create_database(dbname, owner=STATE_ROLE)
    dsn = pg_cluster.dsn(user=STATE_ROLE, password=password, dbname=dbname)
    os.environ[STATE_DSN_ENV] = dsn
    try:
        yield StatePg(dsn, dbname, pg_cluster)
    finally:
        os.environ.pop(STATE_DSN_ENV, None)
        pg_cluster.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
