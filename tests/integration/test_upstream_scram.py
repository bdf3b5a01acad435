"""The gateway's SCRAM client against a real PostgreSQL: SCRAM-SHA-256-PLUS over TLS, the PBKDF2
paid once per role (the second login is a cache hit), and a password change on either side never
authenticated by a cached entry."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veilgate.config_model import TargetConfig, UpstreamTLSConfig, UpstreamTLSMode
from veilgate.masking.sideconn import SideConnection
from veilgate.pgwire import scram
from veilgate.pgwire.upstream import UpstreamError


@pytest.fixture
def scram_role(pg_cluster: Any) -> Iterator[tuple[Any, str, str, TargetConfig]]:
    role = "scram_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(18)
    pg_cluster.create_role(role, password)
    env = "VG_TEST_SCRAM_PW_" + secrets.token_hex(4).upper()
    os.environ[env] = password
    target = TargetConfig(
        name="scramtest",
        host=str(pg_cluster.host),
        port=int(pg_cluster.port),
        dbname="postgres",
        user=role,
        password_env=env,
        tls=UpstreamTLSConfig(
            mode=UpstreamTLSMode.VERIFY_FULL,
            ca_file=Path(pg_cluster.ca_file),
            server_name=str(pg_cluster.server_hostname),
        ),
    )
    try:
        yield pg_cluster, role, env, target
    finally:
        os.environ.pop(env, None)
        pg_cluster.execute(f"DROP ROLE IF EXISTS {role}")


async def _login(target: TargetConfig) -> list[list[tuple[str | None, ...]]]:
    conn = await SideConnection.open(target, application_name="scram-test")
    try:
        return await conn.query("SELECT current_user")
    finally:
        conn.close()


def test_scram_plus_and_one_pbkdf2_per_role(
    scram_role: tuple[Any, str, str, TargetConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, role, _, target = scram_role
    mechanisms: list[str] = []

    class Recording(scram.ScramClient):
        def client_first(self) -> bytes:
            mechanisms.append(self.mechanism_name)
            return super().client_first()

    monkeypatch.setattr(scram, "ScramClient", Recording)
    hits, misses = scram.SALTED.hits, scram.SALTED.misses
    assert asyncio.run(_login(target)) == [[(role,)]]
    assert (scram.SALTED.hits - hits, scram.SALTED.misses - misses) == (0, 1)
    assert asyncio.run(_login(target)) == [[(role,)]]
    assert (scram.SALTED.hits - hits, scram.SALTED.misses - misses) == (1, 1)
    assert mechanisms == ["SCRAM-SHA-256-PLUS"] * 2


def test_password_changes_never_use_a_stale_entry(
    scram_role: tuple[Any, str, str, TargetConfig],
) -> None:
    cluster, role, env, target = scram_role
    old = os.environ[env]
    assert asyncio.run(_login(target)) == [[(role,)]]  # cached under the old verifier's salt
    # the server's password changes (new salt): the old configured password is refused
    new = secrets.token_urlsafe(18)
    cluster.execute(f"ALTER ROLE {role} PASSWORD '{new}'")
    with pytest.raises(UpstreamError) as err:
        asyncio.run(_login(target))
    assert old not in str(err.value) and new not in str(err.value)
    os.environ[env] = new
    assert asyncio.run(_login(target)) == [[(role,)]]
    # the configuration goes back to the old password while the server keeps the new one: the
    # entry cached for (role, salt, iterations) was derived from the new password; the old one
    # misses it, derives anew and is refused
    os.environ[env] = old
    misses = scram.SALTED.misses
    with pytest.raises(UpstreamError):
        asyncio.run(_login(target))
    assert scram.SALTED.misses == misses + 1
