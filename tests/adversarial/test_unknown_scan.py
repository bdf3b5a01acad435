"""``unknown_lineage: scan`` scans only what cannot have come from a masked column.

Promise (README "Security model"): on a tier whose rules mask columns, a value of unknown origin
is content-scanned (``unknown_lineage: scan``) only when its statement reads no column the tier
masks and runs no code the resolver cannot follow; a value that code of unknown origin
(PL/pgSQL, SECURITY DEFINER) returns is masked whole, since it may be a masked column
scrambled so that no detector finds it (``reverse(ssn)``).  (The planner's unit tests cover
the scanned case: a relation of unknown shape read on its own.)
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.adversarial.masking_clients import KEY_ENV, POLICY_FILE, attack
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def scanning(
    gateway_base_config: Any, gateway_certs: Any, tmp_path_factory: Any
) -> Iterator[pw.Target]:
    """The suite's masked tier with ``unknown_lineage: scan``."""
    from tests.integration.conftest import _start, with_policy

    tmp = tmp_path_factory.mktemp("scan")
    policy = tmp / "policy.yaml"
    policy.write_text(
        POLICY_FILE.read_text().replace("unknown_lineage: redact", "unknown_lineage: scan")
    )
    os.environ.setdefault(KEY_ENV, secrets.token_hex(32))
    config, token = gateway_base_config
    ca, _ = gateway_certs
    config = with_policy(policy, tmp / "audit.jsonl", "db.masked")(config)
    handle = _start(config, token, str(ca.cert_file))
    try:
        yield pw.gateway_target(handle)
    finally:
        handle.thread.stop()


@pytest.fixture(scope="module")
def code(pg_cluster: Any, table: str) -> str:
    t = table
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(
            f"create function {t}_rev() returns text language plpgsql"
            f" as 'begin return (select reverse(ssn) from {t} where id = 1); end'"
        )
    return t


@pytest.mark.parametrize("mode", ["psql", "psycopg-binary", "asyncpg", "wire-extended-text"])
def test_code_of_unknown_origin_is_masked_whole(
    scanning: pw.Target, raw: pw.Target, code: str, mode: str
) -> None:
    assert attack(raw, mode, f"select {code}_rev()").leaked()
    out = attack(scanning, mode, f"select {code}_rev()")
    assert out.sqlstate is None, out.message
    assert not out.leaked(), out.received
