"""The codec of a result column's type: how the native engine reads, masks and writes its values.

Built-in types have fixed OIDs and the engine knows their codecs
(``veilgate_native.Codec.builtin``); every other type is described from catalog facts
(:class:`~veilgate.masking.catalog.TypeInfo`, which the catalog fetches with everything a value
of the type contains):

* a domain is its base type;
* an enum is ``other``: its labels are the schema's (``CREATE TYPE``), not data, so a content
  scan keeps them, and a column rule on one gives NULL (a masked label would not be a label);
* a range or multirange is ``range`` / ``multirange`` over its subtype's codec when a scan could
  change the subtype (a range of text), a masked range being the type's ``empty`` and a masked
  multirange leaving that range out; ``other`` otherwise (a range over a user's float domain);
* ``hstore`` (an extension, so no fixed OID) is ``hstore``: keys and values masked as text;
* an array is its element type's codec, with the element OID (checked against binary values) and
  the element type's delimiter;
* a composite is its attributes' codecs, in order;
* ``citext`` (an extension, so no fixed OID) is text;
* anything else (an extension's base type...) is ``unknown``: the engine cannot read it, so a
  value that must be masked becomes NULL (fail closed).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from .catalog import TypeInfo

__all__ = ["MAX_DEPTH", "NeedType", "codec_for"]

MAX_DEPTH: Final = 16
"""Deeper nesting (arrays of composites of arrays...) than this is ``unknown``."""


class TypeFacts(Protocol):
    def type(self, oid: int) -> TypeInfo | None: ...


class NeedType(Exception):
    """The facts lack a type a codec needs (the caller fetches it)."""

    def __init__(self, oid: int) -> None:
        super().__init__(f"type {oid}")
        self.oid = oid


def codec_for(oid: int, facts: TypeFacts, native: Any, depth: int = 0) -> Any:
    """The ``veilgate_native.Codec`` of type ``oid``; raises :class:`NeedType` when ``facts``
    do not know a type it depends on."""
    codec = native.Codec.builtin(oid)
    if codec is not None:
        return codec
    if depth > MAX_DEPTH:
        return native.Codec.scalar("unknown")
    t = facts.type(oid)
    if t is None:
        raise NeedType(oid)
    if t.base_oid != oid:  # a domain: its base type
        codec = native.Codec.builtin(t.base_oid)
        if codec is not None:
            return codec
    if t.is_array:
        elem = codec_for(t.elem_oid, facts, native, depth + 1)
        return native.Codec.array(elem, t.elem_oid, t.delimiter)
    if t.typtype == "c":
        return native.Codec.composite(
            [(a, codec_for(a, facts, native, depth + 1)) for a in t.attributes]
        )
    if t.typtype in ("r", "m") and t.range_oid:
        subtype = t.range_oid
        if t.typtype == "m":  # its range type, then the range's subtype
            rng = facts.type(subtype)
            if rng is None:
                raise NeedType(subtype)
            subtype = rng.range_oid
        sub = codec_for(subtype, facts, native, depth + 1) if subtype else None
        if sub is None:
            return native.Codec.scalar("unknown")
        if not sub.scannable:
            return native.Codec.scalar("other")
        return (native.Codec.range if t.typtype == "r" else native.Codec.multirange)(sub)
    if t.typtype == "e":
        return native.Codec.scalar("other")
    if t.typtype == "b" and t.base_name == "citext":
        return native.Codec.scalar("text")
    if t.typtype == "b" and t.base_name == "hstore":
        return native.Codec.scalar("hstore")
    return native.Codec.scalar("unknown")
