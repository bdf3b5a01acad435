"""The throwaway cluster the suite runs on: TLS on, SCRAM over TCP, sample data in place."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from veilgate.certs import make_ca, make_cert, make_self_signed

if TYPE_CHECKING:
    from tests.conftest import PgEnv

pytestmark = pytest.mark.pg


def test_ssl_and_scram_are_on(pg_cluster: PgEnv) -> None:
    assert pg_cluster.execute("SHOW ssl") == "on"
    assert pg_cluster.execute("SHOW password_encryption") == "scram-sha-256"
    hashes = pg_cluster.execute(
        "SELECT rolname || '=' || left(rolpassword, 14) FROM pg_authid "
        "WHERE rolname IN ('postgres', 'app_owner', 'veilgate_app') ORDER BY rolname"
    ).splitlines()
    assert hashes == [
        "app_owner=SCRAM-SHA-256$",
        "postgres=SCRAM-SHA-256$",
        "veilgate_app=SCRAM-SHA-256$",
    ]


def test_scram_login_over_tls_verify_full(pg_cluster: PgEnv) -> None:
    dsn = pg_cluster.dsn(user=pg_cluster.gw_role, password=pg_cluster.gw_password, dbname="app")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None and row[0] is True
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1000,)
        assert conn.info.host == "127.0.0.1"
    with psycopg.connect(
        pg_cluster.dsn(user="postgres", password=pg_cluster.superuser_password, dbname="postgres")
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_plaintext_with_the_wrong_password_fails(pg_cluster: PgEnv) -> None:
    dsn = pg_cluster.dsn(
        user=pg_cluster.gw_role, password="not-the-password", dbname="app", sslmode="disable"
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=10)


def test_gateway_role_can_write_the_sample_tables(pg_cluster: PgEnv) -> None:
    with psycopg.connect(pg_cluster.gw_dsn()) as conn:
        conn.execute("UPDATE customers SET notes = notes WHERE id = 1")
        n = conn.execute("SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id")
        assert n.fetchone() == (3000,)
        conn.rollback()


def test_sample_data_is_deterministic_and_valid(pg_cluster: PgEnv) -> None:
    out = pg_cluster.execute(
        "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c", "app"
    )
    pg_cluster.execute("CREATE DATABASE sample_again OWNER app_owner")
    try:
        pg_cluster.cluster.load_sample_data("sample_again")
        pg_cluster.cluster.load_sample_data("sample_again")  # idempotent
        again = pg_cluster.execute(
            "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c", "sample_again"
        )
    finally:
        pg_cluster.execute("DROP DATABASE sample_again")
    assert out == again
    cards = pg_cluster.execute("SELECT replace(card_number, ' ', '') FROM customers", "app")
    for number in cards.splitlines():
        digits = [int(d) for d in reversed(number)]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits)
        )
        assert total % 10 == 0, number
    for iban in pg_cluster.execute("SELECT iban FROM customers", "app").splitlines():
        moved = iban[4:] + iban[:4]
        assert int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1, iban


def test_execute_raises_with_the_server_message(pg_cluster: PgEnv) -> None:
    with pytest.raises(RuntimeError, match="no_such_table"):
        pg_cluster.execute("SELECT * FROM no_such_table")


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake between two contexts over memory BIOs (raises on verification failure)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", cli), ("s", srv)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_certs_verify_with_the_ssl_module(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    leaf = make_cert(tmp_path, "srv", ["localhost", "127.0.0.1"], ca)
    own = make_self_signed(tmp_path, ["localhost"])
    for pair in (ca, leaf, own):
        assert stat.S_IMODE(pair.key_file.stat().st_mode) == 0o600
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(leaf.cert_file, leaf.key_file)
    client = ssl.create_default_context(cafile=str(ca.cert_file))
    _handshake(server, client, "localhost")
    _handshake(server, client, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "example.com")
    server2 = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server2.load_cert_chain(own.cert_file, own.key_file)
    _handshake(server2, ssl.create_default_context(cafile=str(own.cert_file)), "localhost")


def test_start_retries_on_a_port_collision_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from veilgate.testing import cluster as mod

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = iter([busy])
    real = mod.free_port
    monkeypatch.setattr(mod, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host))
    try:
        with mod.TempCluster(max_connections=20) as pg:
            assert pg.port != busy
            assert pg.execute("SELECT 1") == "1"
            base = pg.base_dir
            assert pg.startup_seconds is not None and pg.startup_seconds < 15
        assert not base.exists()
        with pytest.raises(mod.ClusterError, match="did not start"):
            mod.TempCluster(port=busy, max_connections=20).start()
    finally:
        taken.close()
