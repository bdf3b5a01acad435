"""Top-level fixtures: the throwaway PostgreSQL cluster (``pg_cluster``) and hypothesis profiles.

``pg_cluster`` (session scope) is a :class:`PgEnv`: a :class:`~veilgate.testing.cluster.TempCluster`
with TLS and SCRAM on, a database ``app`` owned by ``app_owner`` holding the sample PII schema
(``customers``, ``orders``), and a login role ``veilgate_app`` (the gateway's upstream role) with
read/write rights on it.  It forwards the cluster's API (``host``, ``port``, ``ca_file``,
``execute``, ``create_role``, ``dsn``...) and carries the passwords it set.  Gateway fixtures live
in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("veilgate") is None:  # not installed: use the source tree
    sys.path.insert(0, str(_ROOT / "python"))
if str(_ROOT) not in sys.path:  # `from tests.integration import pgwire`
    sys.path.insert(0, str(_ROOT))

from veilgate.testing.cluster import TempCluster  # noqa: E402

settings.register_profile("ci", max_examples=50, deadline=None)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pg: needs the throwaway PostgreSQL cluster the suite starts"
    )


@dataclass
class PgEnv:
    """The session's cluster, its sample database and the passwords of the roles it created."""

    cluster: TempCluster
    app_db: str = "app"
    app_owner: str = "app_owner"
    app_owner_password: str = ""
    gw_role: str = "veilgate_app"
    gw_password: str = ""

    # The cluster's API, forwarded (fixtures written against TempCluster work unchanged).
    @property
    def host(self) -> str:
        return self.cluster.host

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def ca_file(self) -> Path:
        return self.cluster.ca_file

    @property
    def server_hostname(self) -> str:
        return self.cluster.server_hostname

    @property
    def socket_dir(self) -> Path:
        return self.cluster.socket_dir

    @property
    def superuser(self) -> str:
        return self.cluster.superuser

    @property
    def superuser_password(self) -> str:
        return self.cluster.superuser_password

    def execute(self, sql: str, dbname: str = "postgres") -> str:
        return self.cluster.execute(sql, dbname)

    def create_role(
        self, name: str, password: str | None, *, superuser: bool = False, login: bool = True
    ) -> None:
        self.cluster.create_role(name, password, superuser=superuser, login=login)
        # Keep the recorded passwords true when a fixture resets one of ours.
        if name == self.gw_role and password is not None:
            self.gw_password = password
        elif name == self.app_owner and password is not None:
            self.app_owner_password = password

    def create_database(self, name: str, owner: str | None = None) -> None:
        self.cluster.create_database(name, owner)

    def dsn(self, *, user: str, password: str, dbname: str, sslmode: str = "verify-full") -> str:
        return self.cluster.dsn(user=user, password=password, dbname=dbname, sslmode=sslmode)

    def gw_dsn(self, sslmode: str = "verify-full") -> str:
        """DSN of ``app`` as the gateway's upstream role, straight to Postgres."""
        return self.dsn(
            user=self.gw_role, password=self.gw_password, dbname=self.app_db, sslmode=sslmode
        )

    def pg_ctl_log(self) -> str:
        return self.cluster.pg_ctl_log()


def setup_pg_env(cluster: TempCluster) -> PgEnv:
    """Create ``app`` (owned by ``app_owner``), its sample data, and the ``veilgate_app`` role."""
    env = PgEnv(
        cluster,
        app_owner_password=secrets.token_urlsafe(18),
        gw_password=secrets.token_urlsafe(18),
    )
    cluster.create_role(env.app_owner, env.app_owner_password)
    cluster.create_database(env.app_db, owner=env.app_owner)
    cluster.load_sample_data(env.app_db)
    cluster.create_role(env.gw_role, env.gw_password)
    gw, owner = env.gw_role, env.app_owner
    cluster.execute(
        f"""
        GRANT CONNECT, TEMPORARY ON DATABASE {env.app_db} TO {gw};
        SET ROLE {owner};
        GRANT USAGE, CREATE ON SCHEMA public TO {gw};
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {gw};
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {gw};
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {gw};
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {gw};
        RESET ROLE;
        """,
        env.app_db,
    )
    return env


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgEnv]:
    """A TLS + SCRAM PostgreSQL cluster for the whole session, with the sample ``app`` database."""
    cluster = TempCluster()
    cluster.start()
    try:
        yield setup_pg_env(cluster)
    finally:
        cluster.stop()
