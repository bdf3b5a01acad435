"""JSON-aware masking end to end: json, jsonb and jsonb[] values, and JSON held in text, reach
real clients (psycopg in text and binary, asyncpg in binary, COPY) as valid JSON with the
structure and keys of the original, string leaves masked after their escapes are decoded,
numbers holding a card still numbers, and path rules (``payload.customer.email``) applied."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle, with_policy

pytestmark = pytest.mark.pg

POLICY_FILE = Path(__file__).with_name("masking_json_policy.yaml")
KEY_ENV = "VG_TEST_JSON_MASK_KEY"
EMAIL = "ann.o'brien@example.org"
PHONE = "+44 20 7946 0958"
CARD = 4111111111111111

DOC = {
    "customer": {"email": EMAIL, "phone": PHONE, "name": "Ann"},
    "items": [{"sku": "4111111111111111", "card": CARD, "qty": 2}],
    "note": "call " + PHONE + ' or mail "' + EMAIL + '"\n',
    "ok": True,
    "none": None,
}
# The same document with a string written with escapes (\u0040 is "@"): decoded before detection.
ESCAPED = json.dumps(DOC).replace("@example.org", "\\u0040example.org")
DOCS = {
    "payload": ("jsonb", ESCAPED),
    "doc": ("json", ESCAPED),
    "docs": ("jsonb[]", None),
    "raw": ("text", json.dumps(DOC)),
}


def _skeleton(v: Any) -> Any:
    """Structure and keys, every leaf replaced by its JSON type."""
    if isinstance(v, dict):
        return {k: _skeleton(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_skeleton(x) for x in v]
    return type(v).__name__ if not isinstance(v, bool) else "bool"


@pytest.fixture(scope="module")
def table(pg_cluster: Any) -> str:
    t = "vg_json_" + secrets.token_hex(4)
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(
            f"create table {t} (id int primary key, payload jsonb, doc json, docs jsonb[], "
            "raw text)"
        )
        conn.execute(
            f"insert into {t} values (1, %s::jsonb, %s::json, array[%s::jsonb, %s::jsonb], %s)",
            (ESCAPED, ESCAPED, ESCAPED, json.dumps({"x": [EMAIL]}), json.dumps(DOC)),
        )
    return t


@pytest.fixture
def gw(gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pw.Target:
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    handle: GatewayHandle = gateway_factory(
        with_policy(POLICY_FILE, tmp_path / "audit.jsonl", "db.masked")
    )
    return pw.gateway_target(handle)


def _check_doc(v: Any, *, path_rules: bool) -> None:
    """A masked copy of DOC: same skeleton, PII gone, path rules applied."""
    doc = json.loads(v) if isinstance(v, str) else v
    assert _skeleton(doc) == _skeleton(DOC)
    text = json.dumps(doc)
    assert EMAIL not in text and "7946" not in text
    assert doc["customer"]["name"] == "Ann" and doc["ok"] is True and doc["none"] is None
    assert doc["customer"]["phone"] == "<PHONE>"
    assert doc["items"][0]["card"] == 1111  # a card stored as a number: still a number
    assert doc["note"] == 'call <PHONE> or mail "<EMAIL>"\n'
    if path_rules:
        email = doc["customer"]["email"]
        assert email != EMAIL and "@" in email and email != "<EMAIL>"  # hashed, shape kept
        assert doc["items"][0]["sku"] == "4111111111111111"  # kept by its path rule
    else:
        assert doc["customer"]["email"] == "<EMAIL>"
        assert doc["items"][0]["sku"] == "************1111"


def _check_row(row: dict[str, Any]) -> None:
    _check_doc(row["payload"], path_rules=True)
    _check_doc(row["doc"], path_rules=False)
    _check_doc(row["raw"], path_rules=False)
    first, second = (json.loads(d) if isinstance(d, str) else d for d in row["docs"])
    _check_doc(first, path_rules=False)
    assert second == {"x": ["<EMAIL>"]}


def _select(t: str) -> str:
    return f"select payload, doc, docs, raw from {t} order by id"


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_text_and_binary(gw: pw.Target, table: str, binary: bool) -> None:
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute(_select(table))
        names = [d.name for d in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert len(rows) == 1
    _check_row(rows[0])


def test_asyncpg_binary(gw: pw.Target, table: str) -> None:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(**gw.asyncpg_kwargs())
        try:
            return [dict(r) for r in await conn.fetch(_select(table))]
        finally:
            await conn.close()

    rows = asyncio.run(fetch())
    _check_row(rows[0])


def test_copy_csv(gw: pw.Target, table: str) -> None:
    with psycopg.connect(gw.conninfo(), autocommit=True) as conn:
        cur = conn.cursor()
        with cur.copy(f"copy (select payload, doc from {table}) to stdout (format csv)") as cp:
            data = b"".join(bytes(b) for b in cp)
    import csv
    import io

    (payload, doc) = next(csv.reader(io.StringIO(data.decode())))
    _check_doc(payload, path_rules=True)
    _check_doc(doc, path_rules=False)
