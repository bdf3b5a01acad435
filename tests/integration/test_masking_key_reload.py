"""The masking hash key (``masking.hash_key_file``) on SIGHUP, with a real ``veilgate serve``:
a changed key becomes the next key generation for new sessions while running sessions keep
theirs (also across a policy reload); a key file that is missing, empty or cut short keeps the
running generation and the reload says why; the key itself never reaches the log."""

# ruff: noqa: S608 (SQL built from the test's own table name)

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.reload_support import ServeDir, serve_dir, wait_for
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
    http_get,
    metric,
)

pytestmark = pytest.mark.pg

EMAIL = "alice.liddell@example.com"
ADMIN_TOKEN = "vg-admin-" + secrets.token_urlsafe(16)


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    sd = serve_dir(cluster, tmp_path, "keyreload")
    cluster.execute(
        "DROP TABLE IF EXISTS people;"
        "CREATE TABLE people (id int primary key, email text);"
        f"INSERT INTO people VALUES (1, '{EMAIL}');"
        f'ALTER TABLE people OWNER TO "{sd.role}";',
        dbname=sd.db,
    )
    return sd


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def reload_events(p: ServeProcess) -> list[dict[str, Any]]:
    return [e for e in p.events() if e.get("event") in ("config_reloaded", "config_reload_failed")]


def hup(p: ServeProcess) -> dict[str, Any]:
    """SIGHUP; the reload's log event."""
    before = len(reload_events(p))
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(reload_events(p)) > before, what="a reload event")
    assert p.proc.poll() is None, "the process exited"
    return reload_events(p)[-1]


def admin_config(admin: int) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}/v1/admin/config",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback)
        body: dict[str, Any] = json.loads(resp.read())
    return body


def masked_email(sd: ServeDir, port: int) -> str:
    """The email as a new asyncpg session sees it."""

    async def run() -> str:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="agent",
            password=sd.token,
            database="app",
            ssl=sd.client_ssl(),
            timeout=10,
        )
        try:
            value = await conn.fetchval("select email from people where id = 1")
        finally:
            await conn.close()
        assert isinstance(value, str)
        return value

    return asyncio.run(run())


def email_of(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("select email from people where id = 1").fetchone()
    assert row is not None and isinstance(row[0], str)
    return row[0]


def hashed(value: str) -> bool:
    """A hash of EMAIL: never the value, same shape (letters stay letters, '@' and '.' stay)."""
    return (
        value != EMAIL
        and len(value) == len(EMAIL)
        and all((a.isalpha() and b.isalpha()) or a == b for a, b in zip(EMAIL, value, strict=True))
    )


def test_key_file_rotation_on_sighup(sd: ServeDir) -> None:
    key_file = sd.directory / "mask.key"
    keys = [secrets.token_hex(32) for _ in range(2)]
    write_atomic(key_file, keys[0] + "\n")
    (sd.directory / "admin.token").write_text(ADMIN_TOKEN)
    policy_file = sd.directory / "policy.yaml"
    policy = (
        "version: 1\n"
        "tiers:\n"
        "  - {name: agents, match: {subjects: [agent-a]}, default: allow}\n"
        "masking:\n"
        "  apply_to: [agents]\n"
        f"  hash_key_file: {key_file}\n"
        '  columns: [{name: "email", op: hash}]\n'
    )
    write_atomic(policy_file, policy)
    sd.extra = "policy: {file: policy.yaml}\n"
    sd.write(admin="admin: {host: 127.0.0.1, port: 0, token_file: admin.token}")
    p, port, admin = sd.start()
    try:
        # generation 1: loaded at start, named in the log and the admin console
        loaded = p.wait_event("masking_key_loaded")
        assert loaded["generation"] == 1 and loaded["source"] == f"file {key_file}"
        first = admin_config(admin)["masking_key"]
        assert first["generation"] == 1 and first["error"] is None
        assert first["fingerprint"] == loaded["fingerprint"]
        assert metric(http_get(admin, "/metrics")[1], "veilgate_masking_key_generation") == 1

        old_session = psycopg.connect(sd.dsn(port), autocommit=True)
        with old_session:
            h1 = email_of(old_session)
            assert hashed(h1), h1
            assert masked_email(sd, port) == h1  # deterministic under one key

            # a new key: the next generation for new sessions, the running one keeps its key
            write_atomic(key_file, keys[1] + "\n")
            ev = hup(p)
            assert ev["event"] == "config_reloaded", ev
            assert ev["masking_key"]["generation"] == 2 and ev["masking_key"]["changed"]
            changed = p.wait_event("masking_key_changed")
            assert changed["previous_generation"] == 1 and changed["generation"] == 2
            assert changed["fingerprint"] != changed["previous_fingerprint"]
            h2 = masked_email(sd, port)
            assert hashed(h2) and h2 != h1, (h1, h2)
            assert email_of(old_session) == h1
            view = admin_config(admin)["masking_key"]
            assert view["generation"] == 2 and view["fingerprint"] == changed["fingerprint"]

            # a policy reload: the running session still keeps its key, new ones the live one
            write_atomic(
                policy_file,
                policy.replace(
                    '"email", op: hash}]', '"email", op: hash}, {name: "phone", op: redact}]'
                ),
            )
            ev = hup(p)
            assert ev["event"] == "config_reloaded", ev
            assert ev["masking_key"]["generation"] == 2 and not ev["masking_key"]["changed"]
            assert email_of(old_session) == h1
            assert masked_email(sd, port) == h2

            # unusable key files: refused, generation 2 stays and says why
            for bad, why in (
                ("short\n", "too short"),
                ("\n", "empty or unset"),
                (None, "cannot read"),
            ):
                if bad is None:
                    key_file.unlink()
                else:
                    write_atomic(key_file, bad)
                ev = hup(p)
                assert ev["event"] == "config_reload_failed", ev
                assert any(why in e and "generation 2" in e for e in ev["errors"]), ev
                assert ev["masking_key"]["generation"] == 2 and not ev["masking_key"]["changed"]
                assert why in ev["masking_key"]["error"]
                view = admin_config(admin)["masking_key"]
                assert view["generation"] == 2 and why in view["error"]
                assert masked_email(sd, port) == h2
                assert email_of(old_session) == h1

            # the first key again, through `veilgate reload`: a new generation (3) that hashes
            # as generation 1 did
            write_atomic(key_file, keys[0])
            before = len(reload_events(p))
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "veilgate", "reload"),
                    *("--config", str(sd.config_file), "--url", f"http://127.0.0.1:{admin}"),
                ],
                env=sd.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert "masking hash key: generation 3 (fingerprint" in done.stdout, done.stdout
            wait_for(lambda: len(reload_events(p)) > before, what="a reload event")
            ev = reload_events(p)[-1]
            assert ev["event"] == "config_reloaded", ev
            assert ev["masking_key"]["generation"] == 3 and ev["masking_key"]["error"] is None
            assert masked_email(sd, port) == h1
            assert metric(http_get(admin, "/metrics")[1], "veilgate_masking_key_generation") == 3
    finally:
        p.stop()
    log = "\n".join(p.lines)
    assert EMAIL not in log
    for key in keys:
        assert key not in log and key[:16] not in log
