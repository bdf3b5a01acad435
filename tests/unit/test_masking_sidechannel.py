"""Masking of error / notice / notification / parameter messages (veilgate.masking.sidechannel),
with the real detectors and operators and a fake catalog."""

from __future__ import annotations

import struct
from typing import cast

import pytest
from tests.unit.test_masking_planner import FakeCatalog

from veilgate.masking.catalog import Catalog
from veilgate.masking.planner import SessionMasking
from veilgate.masking.resolve import parse_tree, resolve
from veilgate.masking.sidechannel import SideChannelMasker
from veilgate.policy.loader import load_policy_text

POLICY = """\
version: 1
tiers:
  - name: ro
    match: {roles: [r]}
    rules:
      - {id: a, message: m, action: allow, classes: [read]}
masking:
  columns:
    - {column: "public.customers.email", op: replace, value: "<EMAIL-COL>"}
    - {column: "public.customers.ssn", op: partial, keep_last: 4}
    - {column: "public.customers.id", op: keep}
"""
SSN = "536-22-8141"


@pytest.fixture
def side() -> SideChannelMasker:
    pytest.importorskip("veilgate_native")
    policy = load_policy_text(POLICY, "policy.yaml")
    assert policy.masking is not None
    tier = policy.masking.for_tier("ro")
    assert tier is not None
    return SideChannelMasker(SessionMasking(tier, cast(Catalog, FakeCatalog())))


def _error(**fields: str) -> bytes:
    return b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"


def _fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        out[chr(part[0])] = part[1:].decode()
    return out


def test_key_values_get_the_column_rule(side: SideChannelMasker) -> None:
    body = _error(
        S="ERROR",
        C="23505",
        M='duplicate key value violates unique constraint "customers_email_key"',
        D="Key (email)=(alice@corp.example) already exists.",
        s="public",
        t="customers",
    )
    out = side.error_or_notice(body, None)
    assert out is not None
    f = _fields(out)
    assert f["D"] == "Key (email)=(<EMAIL-COL>) already exists."
    assert f["M"] == 'duplicate key value violates unique constraint "customers_email_key"'
    # several columns: the whole tuple
    body = _error(S="ERROR", D="Key (id, ssn)=(1, 536-22-8141) already exists.", t="customers")
    f = _fields(side.error_or_notice(body, None) or b"")
    assert f["D"] == "Key (id, ssn)=(<MASKED>) already exists." and SSN not in f["D"]
    # an unmasked key column is left alone
    body = _error(S="ERROR", D="Key (id)=(7) already exists.", s="public", t="customers")
    assert side.error_or_notice(body, None) is None


def test_a_failing_row_of_a_masked_table_is_redacted(side: SideChannelMasker) -> None:
    body = _error(
        S="ERROR",
        D="Failing row contains (null, secret-value-xyz, 536-22-8141).",
        s="public",
        t="customers",
    )
    f = _fields(side.error_or_notice(body, None) or b"")
    assert f["D"] == "Failing row contains (<MASKED>)."


def test_quoted_values_of_a_statement_reading_a_masked_column(side: SideChannelMasker) -> None:
    sql = "SELECT ssn::int FROM customers"
    res = resolve(parse_tree(sql), FakeCatalog())
    body = _error(S="ERROR", M='invalid input syntax for type integer: "536-22-8141"')
    f = _fields(side.error_or_notice(body, res, sql) or b"")
    # one masked column involved: its own rule
    assert f["M"] == 'invalid input syntax for type integer: "***-**-8141"'
    # names the statement spells stay
    body = _error(S="ERROR", M='column "ssn" does not exist')
    assert side.error_or_notice(body, res, sql) is None


def test_everything_else_is_scanned(side: SideChannelMasker) -> None:
    body = _error(S="NOTICE", M=f"found {SSN} and bob@example.com", W="PL/pgSQL function f()")
    f = _fields(side.error_or_notice(body, None) or b"")
    assert SSN not in f["M"] and "bob@example.com" not in f["M"]
    assert side.error_or_notice(_error(S="NOTICE", M="nothing here"), None) is None
    assert side.error_or_notice(b"Mno terminator", None) is None  # malformed: as sent


def test_notifications_and_parameters(side: SideChannelMasker) -> None:
    body = struct.pack("!i", 42) + b"chan\0" + f"ssn {SSN}".encode() + b"\0"
    out = side.notification(body)
    assert out is not None and out.startswith(struct.pack("!i", 42) + b"chan\0")
    assert SSN.encode() not in out
    assert side.notification(struct.pack("!i", 1) + b"c\0plain\0") is None
    assert side.parameter_status(b"application_name\0me bob@example.com\0") is not None
    assert side.parameter_status(b"client_encoding\0UTF8\0") is None
    assert side.parameter_status(b"server_version\0" + SSN.encode() + b"\0") is None
