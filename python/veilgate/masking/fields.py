"""RowDescription fields: what the masking planner needs of each result column."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Field", "parse_row_description"]


@dataclass(frozen=True, slots=True)
class Field:
    """One RowDescription column."""

    name: str
    table_oid: int
    """OID of the table the column comes from, 0 when it is not a plain column reference."""
    attnum: int
    type_oid: int
    format: int
    """0 text, 1 binary."""


def parse_row_description(body: bytes) -> list[Field]:
    """Decode a RowDescription ('T') body.  Raises ``ValueError`` on a malformed body."""
    try:
        (count,) = struct.unpack_from("!h", body, 0)
        pos = 2
        fields: list[Field] = []
        for _ in range(count):
            end = body.index(b"\0", pos)
            name = body[pos:end].decode("utf-8", "replace")
            table_oid, attnum, type_oid, _size, _mod, fmt = struct.unpack_from(
                "!IhIhih", body, end + 1
            )
            fields.append(Field(name, table_oid, attnum, type_oid, fmt))
            pos = end + 1 + 18
    except struct.error as exc:
        raise ValueError(f"malformed RowDescription: {exc}") from None
    return fields
