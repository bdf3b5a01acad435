"""client_encoding changed in flight on a masked session.

Promise: a masked session never passes a masked column's value because the server read a
statement's text in another client encoding than the gateway did.  SJIS and the other
client-only encodings can end a multi-byte character with a backslash (0x5c), so
``E'<c4 81>\\' || ssn ...`` is one literal in UTF-8 and a literal followed by the masked column
in SJIS.  The server reports the change (ParameterStatus) only at the ReadyForQuery of the
request that made it, so a pipeline can carry the change and such a text together.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.masking_setup import SSN, make_table, start_gateway

pytestmark = pytest.mark.pg


@pytest.fixture
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def target(gateway_factory: Any, tmp_path: Path) -> pw.Target:
    handle: GatewayHandle = start_gateway(
        gateway_factory, tmp_path / "audit.jsonl", "db.masked"
    ).handle
    return pw.gateway_target(handle)


def _parse_bytes(sql: bytes) -> bytes:
    return pw.tagged(b"P", b"\0" + sql + b"\0" + struct.pack("!H", 0))


def _hiding(table: str) -> bytes:
    # valid UTF-8 (U+0101); in SJIS 0xc4 is a katakana and 0x81 0x5c one character
    return b"select E'\xc4\x81\\' || ssn from " + table.encode() + b" where id = 1 --'"


def _drain(c: pw.RawConn, readies: int) -> list[pw.Msg]:
    """Everything up to the ``readies``-th ReadyForQuery, or until the gateway ends the session."""
    out: list[pw.Msg] = []
    try:
        for _ in range(readies):
            out += c.recv_until_ready(timeout=10)
    except pw.ConnectionClosed as e:
        out += e.received
    return out


def _no_raw_value(msgs: list[pw.Msg]) -> None:
    raw = SSN.encode()
    for m in msgs:
        assert raw not in m.body, (m.tag, m.body)


@pytest.mark.parametrize(
    "change",
    [
        "set client_encoding = 'SJIS'",
        "select set_config('client_encoding', 'SJIS', false)",
    ],
)
def test_encoding_changed_in_an_unsynced_pipeline(
    target: pw.Target, table: str, change: str
) -> None:
    with pw.connect(target.endpoint()) as c:
        c.send(
            pw.parse("", change)
            + pw.bind("", "")
            + pw.execute()
            + _parse_bytes(_hiding(table))
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        _no_raw_value(_drain(c, 1))


def test_encoding_changed_by_a_query_sent_before_the_text(target: pw.Target, table: str) -> None:
    with pw.connect(target.endpoint()) as c:
        c.send(pw.query("set client_encoding = 'SJIS'") + pw.tagged(b"Q", _hiding(table) + b"\0"))
        _no_raw_value(_drain(c, 2))


def test_the_text_reads_the_column_in_sjis(table: str, pg_cluster: Any) -> None:
    """The control: read by the server in SJIS, the text returns the column's raw value (so
    the tests above attack something real)."""
    out = pg_cluster.execute(
        "set client_encoding = 'SJIS';\n" + _hiding(table).decode("utf-8"), pg_cluster.app_db
    )
    assert SSN in out, out
