"""The policy file's ``masking:`` section: compiled shape, and every error naming file:line:key."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from veilgate.masking.policy import BUILTIN_ENTITIES, MaskingPolicy, MaskingUnavailable
from veilgate.policy.cli import lint_main
from veilgate.policy.loader import PolicyError, lint_policy, load_policy_text

HEAD = """\
version: 1
tiers:
  - name: readonly
    match: {roles: [db.read]}
    rules:
      - {id: r1, message: reads, action: allow, classes: [read]}
  - name: readwrite
    match: {roles: [db.write]}
    rules:
      - {id: r2, message: writes, action: allow, classes: [read, write]}
"""
HEAD_LINES = HEAD.count("\n")

GOOD = """\
masking:
  apply_to: [readonly]
  hash_key_env: VG_TEST_MASK_KEY
  detectors: [EMAIL, PHONE, CREDIT_CARD, US_SSN, IBAN, IP_ADDRESS, SECRET]
  custom:
    - {entity: EMPLOYEE_ID, regex: "EMP-[0-9]{6}"}
    - {entity: CODENAME, words: [bluebird, nightjar]}
  operators:
    default: {op: replace}
    CREDIT_CARD: {op: partial, keep_last: 4}
    EMAIL: {op: hash}
  columns:
    - {column: "public.customers.ssn", op: partial, keep_last: 4, mask_char: "#"}
    - {column: "public.customers.email", op: hash}
    - {name: "*password*", op: redact}
    - {column: "public.notes.body", scan: true}
    - {column: "public.customers.id", op: keep}
    - {column: "*.*.token", op: replace, value: "[token]"}
  scan_unknown: false
  unknown_lineage: null
"""


def _masking(section: str) -> MaskingPolicy:
    policy = load_policy_text(HEAD + section, "policy.yaml")
    assert policy.masking is not None
    return policy.masking


def _errors(section: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        load_policy_text(HEAD + section, "policy.yaml")
    return [str(i) for i in err.value.issues]


def _line(section: str, needle: str) -> int:
    """Line number in the whole file of the first section line containing ``needle``."""
    for i, text in enumerate(section.splitlines()):
        if needle in text:
            return HEAD_LINES + i + 1
    raise AssertionError(needle)


def test_good_section_compiles() -> None:
    m = _masking(GOOD)
    assert m.apply_to == frozenset({"readonly"})
    assert m.hash_key_env == "VG_TEST_MASK_KEY"
    assert m.detectors == BUILTIN_ENTITIES
    assert [(c.entity, c.regex, c.words) for c in m.custom] == [
        ("EMPLOYEE_ID", "EMP-[0-9]{6}", ()),
        ("CODENAME", None, ("bluebird", "nightjar")),
    ]
    assert m.default_operator.kind == "replace"
    assert m.operators["CREDIT_CARD"].keep_last == 4
    assert m.operators["EMAIL"].kind == "hash"
    assert m.scan_unknown is False
    assert m.unknown_lineage == "null"
    assert m.uses_hash
    ssn = m.columns[0]
    assert (ssn.by, ssn.pattern, ssn.op and ssn.op.kind, ssn.line) == (
        "column",
        "public.customers.ssn",
        "partial",
        _line(GOOD, "customers.ssn"),
    )
    assert ssn.op is not None and ssn.op.mask_char == "#"
    assert m.columns[3].scan and m.columns[3].op is None


def test_tier_lookup_and_rules() -> None:
    m = _masking(GOOD)
    assert m.for_tier("readwrite") is None  # not in apply_to
    tm = m.for_tier("readonly")
    assert tm is not None and m.for_tier("readonly") is tm
    rule = tm.column_rule("public", "customers", "ssn")
    assert rule is not None and rule.op is not None and rule.op.kind == "partial"
    assert tm.column_rule("other", "customers", "ssn") is None
    keep = tm.column_rule("public", "customers", "id")
    assert keep is not None and keep.keeps and not keep.masks
    assert tm.column_rule("crm", "sessions", "token") is not None  # *.*.token
    assert tm.name_rule("user_password_hash") is not None
    assert tm.name_rule("email") is None
    assert tm.masks_column("public", "customers", "email")
    assert not tm.masks_column("public", "customers", "id")
    assert tm.table_may_mask("public", "customers")
    assert tm.table_may_mask(None, "customers")
    assert tm.table_may_mask("crm", "sessions")  # *.*.token may hit any table


def test_present_but_empty_section_masks_every_tier() -> None:
    m = _masking("masking: {}\n")
    assert m.apply_to is None
    assert m.for_tier("readonly") is not None and m.for_tier("readwrite") is not None
    assert m.detectors == BUILTIN_ENTITIES
    assert m.scan_unknown is True and m.unknown_lineage == "redact"


def test_no_section_means_no_masking() -> None:
    policy = load_policy_text(HEAD, "policy.yaml")
    assert policy.masking is None


def test_hash_key_read_at_use_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = _masking(GOOD)
    monkeypatch.delenv("VG_TEST_MASK_KEY", raising=False)
    with pytest.raises(MaskingUnavailable, match="VG_TEST_MASK_KEY"):
        m.hash_key()
    monkeypatch.setenv("VG_TEST_MASK_KEY", "k" * 32)
    assert m.hash_key() == b"k" * 32
    key_file = tmp_path / "mask.key"
    key_file.write_text("secret-key-material\n")
    fm = _masking(GOOD.replace("hash_key_env: VG_TEST_MASK_KEY", f"hash_key_file: {key_file}"))
    assert fm.hash_key() == b"secret-key-material"
    # no hash operator: no key needed
    assert _masking("masking: {}\n").hash_key() is None


def test_missing_key_message_never_shows_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VG_TEST_MASK_KEY", "")
    with pytest.raises(MaskingUnavailable) as err:
        _masking(GOOD).hash_key()
    assert "empty or unset" in str(err.value)


@pytest.mark.parametrize(
    ("section", "needle", "expected"),
    [
        (
            "masking:\n  colums: []\n",
            "colums",
            "masking.colums: unknown key (expected one of apply_to",
        ),
        (
            "masking:\n  apply_to: [readonly, nobody]\n",
            "apply_to",
            "masking.apply_to[1]: no tier named 'nobody'",
        ),
        (
            "masking:\n  detectors: [EMAIL, PASSPORT]\n",
            "detectors",
            "masking.detectors[1]: unknown detector 'PASSPORT'",
        ),
        (
            "masking:\n  custom:\n    - {entity: EMP, regex: 'EMP-[0-9'}\n",
            "EMP-",
            "masking.custom[0].regex: bad regex: unterminated character set",
        ),
        (
            "masking:\n  custom:\n    - {entity: EMP, regex: '(?<=x)EMP'}\n",
            "EMP",
            "masking.custom[0].regex: look-around and backreferences are not supported",
        ),
        (
            "masking:\n  custom:\n    - {entity: EMP, regex: 'x*'}\n",
            "EMP",
            "masking.custom[0].regex: regex matches the empty string",
        ),
        (
            "masking:\n  custom:\n    - {entity: EMAIL, words: [a]}\n",
            "EMAIL",
            "masking.custom[0].entity: 'EMAIL' is a built-in detector",
        ),
        (
            "masking:\n  custom:\n    - {entity: COLUMN, words: [a]}\n",
            "COLUMN",
            "masking.custom[0].entity: 'COLUMN' is reserved",
        ),
        (
            "masking:\n  custom:\n    - {entity: emp_id, words: [a]}\n",
            "emp_id",
            "masking.custom[0].entity: entity names are UPPER_CASE words",
        ),
        (
            "masking:\n  custom:\n    - {entity: EMP, regex: 'E', words: [a]}\n",
            "EMP",
            "masking.custom[0]: give exactly one of regex or words",
        ),
        (
            "masking:\n  operators:\n    PASSPORT: {op: redact}\n",
            "PASSPORT",
            "masking.operators.PASSPORT: unknown entity 'PASSPORT'",
        ),
        (
            "masking:\n  operators:\n    EMAIL: {op: scramble}\n",
            "scramble",
            "masking.operators.EMAIL.op: expected one of replace, redact, partial, hash, null,"
            " got 'scramble'",
        ),
        (
            "masking:\n  operators:\n    EMAIL: {op: keep}\n",
            "keep",
            "masking.operators.EMAIL.op: expected one of replace, redact, partial, hash, null,"
            " got 'keep'",
        ),
        (
            "masking:\n  columns:\n    - {column: 'public.t.c', op: hash}\n",
            "public.t.c",
            "masking.hash_key_env: a hash operator is used: set hash_key_env or hash_key_file",
        ),
        (
            "masking:\n  columns:\n    - {column: 'customers.ssn', op: redact}\n",
            "customers.ssn",
            "masking.columns[0].column: expected schema.table.column",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', name: c, op: redact}\n",
            "a.b.c",
            "masking.columns[0]: give exactly one of column",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c'}\n",
            "a.b.c",
            "masking.columns[0].op: required key missing (an op, or scan: true)",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', scan: true, op: redact}\n",
            "a.b.c",
            "masking.columns[0].op: scan: true takes no operator",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', op: redact, keep_last: 4}\n",
            "a.b.c",
            "masking.columns[0].keep_last: only for op partial (op is redact)",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', op: partial, keep_last: -1}\n",
            "a.b.c",
            "masking.columns[0].keep_last: expected a non-negative integer, got -1",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', op: partial, keep_last: 2,"
            " mask_char: '**'}\n",
            "a.b.c",
            "masking.columns[0].mask_char: expected one character, got '**'",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', op: replace, value: 3}\n",
            "a.b.c",
            "masking.columns[0].value: expected a string, got 3",
        ),
        (
            "masking:\n  columns:\n    - {column: 'a.b.c', op: keep, colour: red}\n",
            "a.b.c",
            "masking.columns[0].colour: unknown key",
        ),
        (
            "masking:\n  scan_unknown: maybe\n",
            "scan_unknown",
            "masking.scan_unknown: expected true or false, got 'maybe'",
        ),
        (
            "masking:\n  unknown_lineage: drop\n",
            "unknown_lineage",
            "masking.unknown_lineage: expected one of redact, null, scan, got 'drop'",
        ),
        (
            "masking:\n  hash_key_env: 'not a name'\n",
            "hash_key_env",
            "masking.hash_key_env: expected an environment variable name",
        ),
        ("masking: [1]\n", "masking", "masking: expected a mapping, got a list"),
        (
            "masking:\n  columns:\n    - column: a.b.payload\n      json:\n"
            "        'items[x].card': {op: redact}\n",
            "items[x]",
            "masking.columns[0].json.items[x].card: bad JSON path",
        ),
        (
            "masking:\n  columns:\n    - column: a.b.payload\n      json:\n"
            "        customer.email: {op: shred}\n",
            "shred",
            "masking.columns[0].json.customer.email.op: expected one of",
        ),
        (
            "masking:\n  columns:\n    - column: a.b.payload\n      op: hash\n"
            "      json: {a: {op: keep}}\n",
            "op: hash",
            "masking.columns[0].op: json: takes no op or scan beside it",
        ),
        (
            "masking:\n  columns:\n    - column: a.b.payload\n      json: []\n",
            "json: []",
            "masking.columns[0].json: expected a mapping of JSON paths",
        ),
    ],
)
def test_errors_name_file_line_and_key(section: str, needle: str, expected: str) -> None:
    errors = _errors(section)
    line = _line(section, needle)
    assert any(e.startswith(f"policy.yaml:{line}: {expected}") for e in errors), errors


def test_lint_reports_masking_errors_and_values_stay_out(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    section = "masking:\n  custom:\n    - {entity: EMP, regex: 'EMP-(['}\n"
    f.write_text(HEAD + section)
    out = io.StringIO()
    rc = lint_main([str(f)], out=out)
    text = out.getvalue()
    assert rc == 2
    assert f"{f}:{_line(section, 'EMP-')}: masking.custom[0].regex: bad regex" in text


def test_lint_policy_ok_with_masking(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(HEAD + GOOD)
    policy, issues = lint_policy(f)
    assert policy is not None and policy.masking is not None
    assert [i for i in issues if i.severity == "error"] == []


def test_example_policy_has_a_valid_masking_section() -> None:
    example = Path(__file__).resolve().parents[2] / "python/veilgate/policy/example_policy.yaml"
    policy, issues = lint_policy(example)
    assert policy is not None, [str(i) for i in issues]
    assert policy.masking is not None
    assert policy.masking.columns, "the example shows column rules"


def test_partial_without_keep_is_a_warning() -> None:
    section = textwrap.dedent(
        """\
        masking:
          columns:
            - {column: 'a.b.c', op: partial}
        """
    )
    policy, issues = _lint_text(section)
    assert policy is not None
    assert any("partial without keep_first/keep_last" in str(i) for i in issues)


def _lint_text(section: str) -> tuple[object, list[object]]:
    from veilgate.policy.loader import _Compiler

    return _Compiler("policy.yaml").run(HEAD + section)  # type: ignore[return-value]


def test_regex_syntax_is_the_engines() -> None:
    """Custom regexes are checked with the engine's parser (Rust regex): a class Python's re
    lacks is accepted, one the engine refuses is an error on its line."""
    native = pytest.importorskip("veilgate_native")
    if not hasattr(native, "Masker"):  # pragma: no cover - only while the engine is built
        pytest.skip("veilgate_native has no Masker yet")
    ok = _masking("masking:\n  custom:\n    - {entity: GREEK, regex: '\\p{Greek}{3,}'}\n")
    assert ok.custom[0].regex == "\\p{Greek}{3,}"
    section = "masking:\n  custom:\n    - {entity: BAD, regex: 'x{2,1}'}\n"
    errors = _errors(section)
    line = _line(section, "BAD")
    assert len(errors) == 1
    assert errors[0].startswith(f"policy.yaml:{line}: masking.custom[0].regex: bad regex")


def test_json_path_rules_compile_and_build_a_json_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    section = """masking:
  hash_key_env: VG_TEST_MASK_KEY
  columns:
    - column: "public.orders.payload"
      json:
        customer.email: {op: hash}
        "items[*].sku": {op: keep}
        notes: {scan: true}
"""
    m = _masking(section)
    rule = m.columns[0]
    assert rule.op is None and not rule.scan and rule.masks
    assert [(p, op and op.kind) for p, op in rule.json] == [
        ("customer.email", "hash"),
        ("items[*].sku", "keep"),
        ("notes", None),
    ]
    assert m.uses_hash
    monkeypatch.setenv("VG_TEST_MASK_KEY", "k" * 32)
    tier = m.for_tier("readonly")
    assert tier is not None
    jm = tier.operator_for(rule)
    assert jm.paths == ["customer.email", "items[*].sku", "notes"]
    out = json.loads(
        jm.mask(
            json.dumps(
                {
                    "customer": {"email": "ann@example.com", "tel": "+44 20 7946 0958"},
                    "items": [{"sku": "4111111111111111"}],
                    "notes": "ip 10.1.2.3",
                }
            )
        )
    )
    assert out["customer"]["email"] != "ann@example.com" and "@" in out["customer"]["email"]
    assert out["customer"]["tel"] == "<PHONE>"
    assert out["items"] == [{"sku": "4111111111111111"}]
    assert out["notes"] == "ip <IP_ADDRESS>"
