"""Adversarial suite: each file attacks one class of promise (guardrail semantics, limits, reload,
lineage, inference...) from several clients and both protocols, and fails if the forbidden effect
is seen on the server.

The gateway fixtures are the integration suite's (re-exported here); :mod:`tests.adversarial.
clients` runs one statement through psql, psycopg and asyncpg in the simple and extended protocol.
"""

from __future__ import annotations

from tests.adversarial.masking_fixtures import masked, raw, table  # noqa: F401 (fixtures)
from tests.integration.conftest import (  # noqa: F401 (fixtures)
    direct,
    gateway,
    gateway_base_config,
    gateway_certs,
    gateway_factory,
    gw,
)
