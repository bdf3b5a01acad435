"""Shared setup of the masking integration tests: the policy, the table, the raw values.

The policy (``masking_policy.yaml``) has two tiers: ``masked`` (every masking layer on) and
``raw`` (the same statements, unmasked).  :func:`make_table` creates a fresh table whose columns
hold one sensitive value each (plus a free-text column with several), so that a test can look
for every raw value in whatever a client received.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle, with_policy

POLICY_FILE = Path(__file__).with_name("masking_policy.yaml")

SSN = "536-22-8141"
EMAIL = "alice.smith@example.org"
CARD = "4111111111111111"
PHONE = "212-555-0143"
IBAN = "GB82WEST12345698765432"
IP = "203.0.113.77"
NOTE_PHONE = "646-555-0199"
NOTE_EMAIL = "bob.jones@example.com"
NOTE_IBAN = "DE89370400440532013000"
NOTE_IP = "198.51.100.23"
NOTES = f"contact {NOTE_PHONE} or {NOTE_EMAIL}; IBAN {NOTE_IBAN} from {NOTE_IP}"

SECOND_SSN = "287-65-4329"
SECOND_EMAIL = "carol.white@example.net"

RAW_VALUES: tuple[str, ...] = (
    SSN,
    SSN.replace("-", ""),
    SECOND_SSN,
    SECOND_SSN.replace("-", ""),
    EMAIL,
    SECOND_EMAIL,
    CARD,
    PHONE,
    IBAN,
    IP,
    NOTE_PHONE,
    NOTE_EMAIL,
    NOTE_IBAN,
    NOTE_IP,
)
"""Every sensitive value in the table, in the forms a query could turn them into."""


def leaked(output: str | bytes, values: Iterable[str] = RAW_VALUES) -> list[str]:
    """The raw values found in ``output`` (text, or bytes from a binary result / COPY)."""
    if isinstance(output, bytes):
        return [v for v in values if v.encode() in output]
    return [v for v in values if v in output]


Factory = Callable[..., GatewayHandle]


@dataclass
class MaskedGateway:
    target: pw.Target
    handle: GatewayHandle
    audit_log: Path


def start_gateway(
    factory: Factory,
    audit_log: Path,
    role: str,
    *,
    use_uvloop: bool = True,
    policy_file: Path = POLICY_FILE,
) -> MaskedGateway:
    """A gateway with the masking policy; its token carries ``role`` (db.masked / db.raw)."""

    handle = factory(with_policy(policy_file, audit_log, role), use_uvloop=use_uvloop)
    return MaskedGateway(pw.gateway_target(handle), handle, audit_log)


def make_table(pg_cluster: Any) -> str:
    """A fresh ``vg_mask_*`` table (two rows), a view over it; returns the table name."""
    name = "vg_mask_" + secrets.token_hex(4)
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(
            f"""
            create table {name} (
                id int primary key,
                ssn text,
                email text,
                card text,
                phone text,
                iban text,
                ip text,
                notes text,
                legacy text,
                salary bigint
            )
            """
        )
        conn.execute(
            f"insert into {name} values (1, %s, %s, %s, %s, %s, %s, %s, null, 1000),"
            f" (2, %s, %s, null, null, null, null, 'nothing to see', null, 2000)",
            (SSN, EMAIL, CARD, PHONE, IBAN, IP, NOTES, SECOND_SSN, SECOND_EMAIL),
        )
        conn.execute(f"create view {name}_v as select id, ssn, email from {name}")
    return name


def bypass_queries(t: str) -> dict[str, str]:
    """Statements that try to get the sensitive values out by another shape than ``select ssn``."""
    return {
        "star": f"select * from {t} order by id",
        "alias": f"select ssn as x, email as y, card as z from {t} order by id",
        "expression": f"select lower(ssn), upper(email), substr(card, 1, 16) from {t} order by id",
        "cast": f"select ssn::text, ssn::varchar(20), email::bpchar from {t} order by id",
        "concat": f"select 'x' || ssn || 'y', email || '' from {t} order by id",
        "row_to_json": f"select row_to_json(m) from {t} m order by id",
        "whole_row": f"select m from {t} m order by id",
        "cte": f"with c as (select ssn, email, notes from {t}) select * from c",
        "view": f"select * from {t}_v order by id",
        "array_agg": f"select array_agg(ssn), array_agg(email) from {t}",
        "json_agg": f"select json_agg(m) from {t} m",
        "subquery": f"select (select ssn from {t} where id = 1), (select email from {t} limit 1)",
        "union": f"select ssn from {t} union all select email from {t}",
        "format": f"select format('%s/%s', ssn, email) from {t}",
    }
