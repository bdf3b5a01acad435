"""Policy file loading: errors name file, line and key; warnings for lint."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from veilgate.policy.loader import PolicyError, lint_policy, load_policy, load_policy_text

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "python" / "veilgate" / "policy" / "example_policy.yaml"
)

GOOD = """\
version: 1
tiers:
  - name: ro
    match:
      roles: [db.read]
    rules:
      - id: read
        message: reads
        action: allow
        classes: [read]
        tables: ["public.*"]
      - id: no-drop
        message: no drops
        action: deny
        constructs: [drop]
masking: {}
"""


def _errors(text: str, name: str = "policy.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(textwrap.dedent(text), name)
    return [str(i) for i in info.value.issues]


def test_example_policy_loads() -> None:
    p = load_policy(EXAMPLE)
    assert [t.name for t in p.tiers] == ["readonly", "readwrite", "dba"]
    assert p.digest and p.source.endswith("example_policy.yaml")
    assert p.masking is not None and p.masking.for_tier("dba") is None


def test_good_policy() -> None:
    p = load_policy_text(GOOD)
    (tier,) = p.tiers
    assert tier.default == "deny"
    assert tier.search_path == ("public",)
    assert [r.id for r in tier.rules] == ["read", "no-drop"]
    assert tier.rules[0].line == 7


def test_bad_action_names_file_line_key() -> None:
    text = GOOD.replace("action: deny", "action: permit")
    assert _errors(text) == [
        "policy.yaml:14: tiers[0].rules[1].action: expected one of allow, deny, approve, "
        "got 'permit'"
    ]


def test_many_errors_reported_at_once() -> None:
    text = """\
    version: 2
    tiers:
      - name: a
        match: {}
        default: maybe
        rules:
          - id: x
            action: allow
            classes: [reads]
            bogus: 1
    """
    errs = _errors(text)
    assert "policy.yaml:1: version: unsupported version 2 (expected 1)" in errs
    assert (
        "policy.yaml:4: tiers[0].match: empty match (would match every principal): refused" in errs
    )
    assert "policy.yaml:5: tiers[0].default: expected one of deny, allow, got 'maybe'" in errs
    assert any(e.startswith("policy.yaml:7: tiers[0].rules[0].message: required key") for e in errs)
    assert any(
        e.startswith("policy.yaml:9: tiers[0].rules[0].classes[0]: unknown statement class 'reads'")
        for e in errs
    )
    assert any(e.startswith("policy.yaml:10: tiers[0].rules[0].bogus: unknown key") for e in errs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "policy.yaml:1: empty policy file"),
        ("version: 1\ntiers: [\n", "policy.yaml:3: YAML syntax error"),
        ("- 1\n", "policy.yaml:1: expected a mapping, got a list"),
        ("version: 1\n", "policy.yaml:1: tiers: required key missing"),
        ("version: 1\ntiers: []\n", "policy.yaml:2: tiers: expected a non-empty list of tiers"),
        ("version: 1\nversion: 1\ntiers: []\n", "policy.yaml:2: version: duplicate key"),
        (
            "version: 1\ntiers:\n  - name: a\n    match: {roles: []}\n",
            "policy.yaml:4: tiers[0].match.roles: empty list matches nobody",
        ),
        (
            "version: 1\ntiers:\n  - name: a\n    match: {app_only: maybe}\n",
            "policy.yaml:4: tiers[0].match.app_only: expected true or false, got 'maybe'",
        ),
        (
            "version: 1\ntiers:\n  - name: a\n    match: {roles: [r]}\nmasking: [1]\n",
            "policy.yaml:5: masking: expected a mapping, got a list",
        ),
        (
            "version: 1\ntiers:\n  - name: a\n    match: {colour: [r]}\n",
            "policy.yaml:4: tiers[0].match.colour: unknown key",
        ),
    ],
)
def test_error_locations(text: str, expected: str) -> None:
    errs = _errors(text)
    assert any(e.startswith(expected) for e in errs), errs


def test_duplicate_rule_ids_and_tier_names() -> None:
    text = """\
    version: 1
    tiers:
      - name: a
        match: {roles: [r]}
        rules:
          - {id: x, message: m, action: deny, classes: [ddl]}
      - name: a
        match: {roles: [s]}
        rules:
          - {id: x, message: m, action: deny, classes: [dcl]}
    """
    errs = _errors(text)
    assert "policy.yaml:10: tiers[1].rules[0].id: duplicate rule id 'x' (first at line 6)" in errs
    assert "policy.yaml:7: tiers[1].name: duplicate tier name 'a' (first at line 3)" in errs


def test_lint_warnings(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        textwrap.dedent(
            """\
            version: 1
            tiers:
              - name: a
                match: {roles: [r]}
                default: allow
                rules:
                  - {id: deny-ddl, message: m, action: deny, classes: [ddl, dcl]}
                  - {id: deny-ddl-again, message: m, action: approve, classes: [ddl]}
                  - {id: allow-ddl, message: m, action: allow, classes: [ddl]}
                  - {id: typo, message: m, action: deny, constructs: [dropp]}
              - name: b
                match: {roles: [r], tenants: [t]}
            """
        )
    )
    policy, issues = lint_policy(f)
    assert policy is not None
    text = [str(i) for i in issues]
    assert any(":5: tiers[0].default: warning: default allow" in t for t in text), text
    assert any(":8: rule deny-ddl-again: warning: unreachable: rule deny-ddl" in t for t in text)
    assert any(":9: rule allow-ddl: warning: unreachable: rule deny-ddl" in t for t in text)
    assert any(
        ":10: tiers[0].rules[3].constructs[0]: warning: unknown construct 'dropp'" in t
        for t in text
    )
    assert any(
        ":11: tier b: warning: unreachable: every principal it matches is taken by tier a" in t
        for t in text
    )
    assert any(":11: tiers[1].rules: warning: tier has no rules" in t for t in text)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "missing.yaml")
    assert "cannot read policy file" in str(info.value)


def test_single_string_selector_and_search_path() -> None:
    p = load_policy_text(
        "version: 1\ntiers:\n  - name: a\n    match: {subjects: s1}\n"
        "    search_path: [app, public]\n"
        "    rules:\n      - {id: r, message: m, action: allow, classes: read, tables: orders}\n"
    )
    r = p.tiers[0].rules[0]
    assert r.classes == frozenset({"read"})
    assert r.tables == ("orders",)
    assert r.search_path == ("app", "public")
