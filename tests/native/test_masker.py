"""veilgate_native.Masker / Operator: the Python API of the native masking engine."""

from __future__ import annotations

import pytest
import veilgate_native as vn
from hypothesis import given
from hypothesis import strategies as st

ROW = (
    "Ann <ann.lee@example.org> paid with 4111 1111 1111 1111 from 192.168.1.20, "
    "call (415) 555-2671, ssn 123-45-6789, iban GB82 WEST 1234 5698 7654 32, "
    "key AKIAIOSFODNN7EXAMPLE"
)
VALUES = {
    "EMAIL": "ann.lee@example.org",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IP_ADDRESS": "192.168.1.20",
    "PHONE": "(415) 555-2671",
    "US_SSN": "123-45-6789",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "SECRET": "AKIAIOSFODNN7EXAMPLE",
}


def test_builtin_entities() -> None:
    assert vn.BUILTIN_ENTITIES == (
        "EMAIL", "PHONE", "CREDIT_CARD", "US_SSN", "IBAN", "IP_ADDRESS", "SECRET",
    )  # fmt: skip
    assert vn.Masker().entities == list(vn.BUILTIN_ENTITIES)


def test_scan_finds_every_entity_in_order() -> None:
    spans = vn.Masker().scan(ROW)
    assert [(ROW[a:b], e) for a, b, e in spans] == [(v, e) for e, v in VALUES.items()]


def test_default_mask_replaces_with_tags() -> None:
    masked = vn.Masker().mask(ROW)
    assert masked is not None
    for entity, value in VALUES.items():
        assert value not in masked
        assert f"<{entity}>" in masked
    assert masked.startswith("Ann <<EMAIL>> paid with <CREDIT_CARD> from <IP_ADDRESS>,")


@pytest.mark.parametrize(
    "clean",
    [
        "order 4111111111111112 shipped 2026-11-29 09:45:00",
        "uuid 550e8400-e29b-41d4-a716-446655440000, build v1.2.3.4 / 1.2.3",
        "SKU-415-555-2671, ssn-like 000-12-3456, iban GB82WEST12345698765433",
        "password=changeme and time 23:59:59",
        "",
    ],
)
def test_clean_text_comes_back_as_the_same_object(clean: str) -> None:
    m = vn.Masker()
    assert m.scan(clean) == []
    assert m.mask(clean) is clean


def test_scan_offsets_are_character_offsets() -> None:
    text = "Zürich → józef@example.ch ☎ +41 44 668 18 00 ✓"
    spans = vn.Masker().scan(text)
    assert [(text[a:b], e) for a, b, e in spans] == [
        ("józef@example.ch", "EMAIL"),
        ("+41 44 668 18 00", "PHONE"),
    ]


def test_per_entity_operators_and_null() -> None:
    m = vn.Masker(
        operators={
            "CREDIT_CARD": vn.Operator("partial", keep_last=4),
            "EMAIL": vn.Operator("hash", key=b"k1"),
            "IP_ADDRESS": vn.Operator("redact"),
            "PHONE": vn.Operator("replace", value="[phone]"),
        },
        default_operator=vn.Operator("replace", value="#"),
    )
    masked = m.mask("card 4111-1111-1111-1111 ip 10.0.0.1 tel 415-555-2671 ssn 123-45-6789")
    assert masked == "card ****-****-****-1111 ip  tel [phone] ssn #"
    hashed = m.mask("a@example.com")
    assert hashed is not None and hashed != "a@example.com"
    assert len(hashed) == len("a@example.com") and hashed.count("@") == 1
    assert m.mask("a@example.com") == hashed  # deterministic

    nulling = vn.Masker(operators={"US_SSN": vn.Operator("null")})
    assert nulling.mask("ssn 123-45-6789") is None
    assert nulling.mask("no ssn") == "no ssn"


def test_hash_operator_is_keyed_deterministic_and_shaped() -> None:
    a = vn.Operator("hash", key=b"key-a")
    b = vn.Operator("hash", key=b"key-b")
    value = "John.Smith-42@Example.com"
    out = a.apply(value)
    assert out is not None
    assert out == a.apply(value)
    assert out != b.apply(value)
    assert len(out) == len(value)
    for x, y in zip(out, value, strict=True):
        assert x.isdigit() == y.isdigit()
        assert x.islower() == y.islower()
        assert x.isupper() == y.isupper()
        if not y.isalnum():
            assert x == y
    assert a.apply("naïve-1") is not None and "ï" in (a.apply("naïve-1") or "")


def test_operator_options() -> None:
    assert vn.Operator("replace").apply("x") == "<COLUMN>"
    assert vn.Operator("replace", entity="NAME").apply("x") == "<NAME>"
    assert vn.Operator("redact").apply("secret") == ""
    assert vn.Operator("null").apply("x") is None
    partial = vn.Operator("partial", keep_first=1, keep_last=2, mask_char="#")
    assert partial.apply("AB-123-CD") == "A#-###-CD"
    flat = vn.Operator("partial", keep_last=2, keep_separators=False)
    assert flat.apply("AB-12") == "***12"
    op = vn.Operator("hash", key=b"secret-key")
    assert (op.kind, op.entity) == ("hash", "COLUMN")
    assert "secret-key" not in repr(op)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("shuffle",), {}),
        (("hash",), {}),
        (("hash",), {"key": b""}),
        (("redact",), {"value": "x"}),
        (("replace",), {"key": b"k"}),
        (("partial",), {"mask_char": "**"}),
    ],
)
def test_bad_operators_raise(args: tuple[str], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        vn.Operator(*args, **kwargs)  # type: ignore[arg-type]


def test_bad_masker_configs_raise() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        vn.Masker(entities=["NOPE"])
    with pytest.raises(ValueError, match="EMP"):
        vn.Masker(custom_patterns=[("EMP", "EMP-(")])
    with pytest.raises(ValueError, match="TYPO"):
        vn.Masker(operators={"TYPO": vn.Operator("redact")})


def test_entity_subset() -> None:
    m = vn.Masker(entities=["EMAIL"])
    assert m.entities == ["EMAIL"]
    assert m.mask("x@example.com 123-45-6789") == "<EMAIL> 123-45-6789"


def test_custom_patterns_and_dictionaries() -> None:
    m = vn.Masker(
        entities=[],
        custom_patterns=[("EMPLOYEE_ID", r"\bEMP-\d{6}\b")],
        dictionaries={"PROJECT": ["Blue Falcon", "falcon"]},
        operators={"PROJECT": vn.Operator("replace", value="[project]")},
    )
    assert m.entities == ["EMPLOYEE_ID", "PROJECT"]
    text = "EMP-123456 works on blue falcon, not on falconry or EMP-1234567"
    assert m.scan(text) == [(0, 10, "EMPLOYEE_ID"), (20, 31, "PROJECT")]
    assert m.mask(text) == "<EMPLOYEE_ID> works on [project], not on falconry or EMP-1234567"


def test_mask_bytes_keeps_other_encodings() -> None:
    m = vn.Masker()
    latin1 = "café ann@example.org".encode("latin-1")
    assert m.mask_bytes(latin1) == "café <EMAIL>".encode("latin-1")
    clean = b"caf\xe9 \xff"
    assert m.mask_bytes(clean) is clean


def test_batches_match_single_calls() -> None:
    m = vn.Masker(operators={"US_SSN": vn.Operator("null")})
    texts = [ROW, "clean", "ssn 123-45-6789", "", "héllo x@y.io"]
    assert m.mask_batch(texts) == [m.mask(t) for t in texts]
    assert m.scan_batch(texts) == [m.scan(t) for t in texts]
    assert m.mask_batch(()) == []


@given(st.text())
def test_mask_never_raises_and_scan_offsets_index_the_text(text: str) -> None:
    m = vn.Masker()
    spans = m.scan(text)
    end = 0
    for start, stop, entity in spans:
        assert end <= start < stop <= len(text)
        assert entity in vn.BUILTIN_ENTITIES
        end = stop
    masked = m.mask(text)
    if not spans:
        assert masked is text
    else:
        assert masked is not None and masked != text


PII_PIECES = st.sampled_from(
    [*VALUES.values(), "10.0.0.1", "+1 415 555 2671", "x", " ", "-", ".", "@", "1", "é"]
)


# Pieces are separated by "; ": detection depends on neighbours by design (a value glued to a
# word or inside a run of digit groups is not taken), and masking a neighbour changes that context.
@given(st.lists(PII_PIECES, max_size=12).map("; ".join))
def test_masked_output_keeps_no_found_value(text: str) -> None:
    m = vn.Masker()
    masked = m.mask(text)
    assert masked is not None
    for start, stop, _ in m.scan(text):
        found = text[start:stop]
        assert all(masked[a:b] != found for a, b, _ in m.scan(masked))
