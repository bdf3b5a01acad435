"""``python -m veilgate.demo``: the demo shows policy and result masking, not just a relay.

``--check`` runs as a user would run it (a subprocess); the in-process test drives the same
:class:`~veilgate.demo.stack.DemoStack` to look at what ``--check`` does not print: the free-text
column, the whole table as the unmasked role, the banner.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml
from tests.integration.test_serve import subprocess_env

from veilgate.demo import __main__ as demo_main
from veilgate.demo.identity import ADMIN_ROLE, DevIdPIdentity
from veilgate.demo.stack import MASK_KEY_ENV, POLICY_SOURCE, DemoStack

pytestmark = pytest.mark.pg

# what the detectors must find in the free-text notes of the sample data
NOTE_EMAIL = re.compile(r"[a-z]+@mail\.example\.org")
NOTE_PHONE = re.compile(r"\+1-202-555-\d{4}")


def test_demo_check_shows_masking_and_denial(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "veilgate.demo", "--check", "--dir", str(demo_dir)),
            *("--port", "0", "--admin-port", "0"),
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # the SELECT came back masked: SSNs and cards keep only their last 4, nothing raw leaked
    assert re.search(r"\| \*\*\*-\*\*-\d{4} \|", out), out
    assert re.search(r"\| \*{12}\d{4} +\|", out), out
    assert "<PHONE>" in out
    # the inet column is still an inet: the address zeroed by the default replace
    assert re.search(r"\| 0\.0\.0\.0 +\|", out), out
    assert "15 raw SSN/card/e-mail values, 0 of them in the gateway's result" in out
    assert "6000 raw ssn/card/email/phone/iban/ip values, 0 of them" in out
    assert "demo: masked OK" in out
    # the DROP was denied by the policy, with the SQLSTATE and the rule id
    assert "ERROR:  42501: veilgate policy" in out
    assert "DETAIL:  rule read-no-destruction (tier read)" in out
    assert "demo: denied OK" in out
    assert "demo: unmasked OK (15/15 raw values" in out
    # the agent's DELETE was held, approved from the CLI, then ran once when retried
    assert "ERROR:  42Z01: veilgate: approval required (request ap-" in out
    assert "approved" in out and "DELETE 3000" in out
    assert "demo: approval OK (held by admin-approve-destructive" in out
    assert "demo: check OK" in out and "demo: stopped" in out
    assert (demo_dir / "veilgate-state.db").exists()

    # the gateway ran with the demo policy and an audit log in the demo directory
    config = yaml.safe_load((demo_dir / "veilgate.yaml").read_text())
    assert config["policy"] == {"file": "policy.yaml", "audit_log": "audit.jsonl"}
    assert (demo_dir / "policy.yaml").read_text() == POLICY_SOURCE.read_text()
    events = [json.loads(x) for x in (demo_dir / "audit.jsonl").read_text().splitlines()]
    assert any(
        e.get("action") == "deny" and e.get("rule_id") == "read-no-destruction" for e in events
    )
    assert any(e.get("kind") == "mask" and e.get("tier") == "read" for e in events)
    assert not any(e.get("kind") == "mask" and e.get("tier") == "admin" for e in events)

    # the HMAC key: random, private, handed over by environment only, never printed or logged
    key_file = demo_dir / "mask.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert len(key) == 64
    policy = yaml.safe_load(POLICY_SOURCE.read_text())
    assert policy["masking"]["hash_key_env"] == MASK_KEY_ENV
    for text in (
        out,
        proc.stderr,
        (demo_dir / "veilgate.log").read_text(),
        (demo_dir / "veilgate.yaml").read_text(),
        (demo_dir / "audit.jsonl").read_text(),
    ):
        assert key not in text
        assert "eyJ" not in text  # no token either


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[tuple[DemoStack, DevIdPIdentity]]:
    identity = DevIdPIdentity()
    stack = DemoStack(tmp_path / "demo", identity, port=0, admin_port=0, out=io.StringIO())
    try:
        identity.start()
        stack.start()
        yield stack, identity
    finally:
        stack.stop()
        identity.stop()


def test_demo_masks_free_text_and_admin_sees_raw(
    running_demo: tuple[DemoStack, DevIdPIdentity],
) -> None:
    stack, identity = running_demo
    raw_notes = "\n".join(row[0] for row in stack.query_direct("SELECT notes FROM customers"))
    emails, phones = set(NOTE_EMAIL.findall(raw_notes)), set(NOTE_PHONE.findall(raw_notes))
    assert len(emails) >= 20 and len(phones) >= 50  # the sample data has them

    masked = stack.psql("SELECT id, notes FROM customers ORDER BY id")
    assert masked.returncode == 0, masked.stderr
    assert "Call back on <PHONE> after 2pm." in masked.stdout
    assert "Prefers contact at <EMAIL>;" in masked.stdout
    assert [v for v in emails | phones if v in masked.stdout] == []

    # an e-mail hashes to the same value in every session (joins, GROUP BY), not to itself
    raw_email = stack.query_direct("SELECT email FROM customers WHERE id = 1")[0][0]
    hashed = [
        stack.psql("SELECT email FROM customers WHERE id = 1").stdout.splitlines()[2].strip()
        for _ in range(2)
    ]
    assert "@" in hashed[0] and hashed[0] != raw_email
    assert hashed[0] == hashed[1]

    # the admin tier is unmasked: every raw note comes through as PostgreSQL has it
    admin_token = identity.mint(ADMIN_ROLE)
    admin = stack.psql("SELECT id, notes FROM customers ORDER BY id", password=admin_token)
    assert admin.returncode == 0, admin.stderr
    assert all(v in admin.stdout for v in emails | phones)
    # ... but a destructive statement needs an approval (held: 42Z01 naming the request)
    drop = stack.psql("DROP TABLE orders", password=admin_token)
    assert drop.returncode != 0 and "admin-approve-destructive" in drop.stderr
    assert "42Z01" in drop.stderr and "veilgate approvals approve ap-" in drop.stderr
    assert stack.query_direct("SELECT count(*) FROM orders") == [["3000"]]

    # a role the policy does not know gets nothing
    other = stack.psql("SELECT 1", password=identity.mint("Db.Other"))
    assert other.returncode != 0 and "password authentication failed" in other.stderr


def test_demo_banner_says_what_to_try(running_demo: tuple[DemoStack, DevIdPIdentity]) -> None:
    stack, identity = running_demo
    buf = io.StringIO()
    with redirect_stdout(buf):
        demo_main._banner(stack, identity)
    banner = buf.getvalue()
    assert "SELECT * FROM customers LIMIT 5;" in banner
    assert "DROP TABLE customers;" in banner and "42501" in banner
    assert "read-no-destruction" in banner
    assert f"--role {ADMIN_ROLE}" in banner and "--role Db.Read" in banner
    assert "audit.jsonl" in banner and "policy.yaml" in banner
    assert "DELETE FROM orders;" in banner and "veilgate approvals approve ap-" in banner
    assert "eyJ" not in banner
    assert stack.mask_key_file.read_text().strip() not in banner
