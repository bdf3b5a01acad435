"""Policy reloads that change masking: a session that started unmasked never sees raw values
once the new policy masks its tier (it is closed and reconnects masked)."""

# ruff: noqa: S608 (SQL built from table names the tests generate)

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.conftest import wait_policy_generation
from tests.integration.masking_setup import (
    POLICY_FILE,
    SSN,
    Factory,
    leaked,
    make_table,
    start_gateway,
)


def test_unmasked_session_closed_when_reload_masks_its_tier(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    table = make_table(pg_cluster)
    policy = tmp_path / "policy.yaml"
    text = POLICY_FILE.read_text()
    policy.write_text(text)
    gw = start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.raw", policy_file=policy)
    with psycopg.connect(gw.target.conninfo(), autocommit=True) as conn:
        first = conn.execute(f"select ssn from {table} where id = 1").fetchone()
        assert first == (SSN,)  # the raw tier sees raw values
        # the new policy masks the raw tier too
        policy.write_text(text.replace("apply_to: [masked]", "apply_to: [masked, raw]"))
        wait_policy_generation(gw.handle, 2)
        with pytest.raises(psycopg.OperationalError) as ei:
            conn.execute(f"select ssn from {table} where id = 1").fetchone()
        assert "the policy now masks this session" in str(ei.value)
    # a new session of the same principal is masked
    with psycopg.connect(gw.target.conninfo(), autocommit=True) as conn:
        row = conn.execute(f"select ssn from {table} where id = 1").fetchone()
        assert row is not None and not leaked(str(row)), row
        assert str(row[0]).endswith(SSN[-4:])


def test_unmasked_session_survives_reload_that_keeps_it_unmasked(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    table = make_table(pg_cluster)
    policy = tmp_path / "policy.yaml"
    text = POLICY_FILE.read_text()
    policy.write_text(text)
    gw = start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.raw", policy_file=policy)
    with psycopg.connect(gw.target.conninfo(), autocommit=True) as conn:
        assert conn.execute(f"select ssn from {table} where id = 1").fetchone() == (SSN,)
        policy.write_text(text.replace("unknown_lineage: redact", "unknown_lineage: null"))
        wait_policy_generation(gw.handle, 2)
        assert conn.execute(f"select ssn from {table} where id = 1").fetchone() == (SSN,)


@pytest.mark.parametrize("how", ["startup", "set"])
def test_masked_session_refuses_client_only_encoding(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any, how: str
) -> None:
    """SJIS second bytes can be ASCII: the detectors could not be trusted, so the session ends."""
    table = make_table(pg_cluster)
    gw = start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.masked")
    if how == "startup":
        with (
            pytest.raises(psycopg.Error) as ei,
            psycopg.connect(gw.target.conninfo(client_encoding="SJIS")) as conn,
        ):
            conn.execute(f"select ssn from {table}").fetchall()
    else:
        with (
            psycopg.connect(gw.target.conninfo(), autocommit=True) as conn,
            pytest.raises(psycopg.Error) as ei,
        ):
            conn.execute("set client_encoding = 'SJIS'")
            conn.execute(f"select ssn from {table}").fetchall()
    assert "client_encoding is not supported on a masked session" in str(ei.value)
    assert ei.value.sqlstate in ("0A000", None)  # None: libpq reported it while connecting
    # UTF8 sessions are fine
    with psycopg.connect(gw.target.conninfo(), autocommit=True) as conn:
        rows = conn.execute(f"select ssn from {table} order by id").fetchall()
        assert rows and not leaked(str(rows))
