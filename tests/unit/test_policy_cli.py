"""`veilgate policy lint` / `veilgate policy check` entry points."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from veilgate.policy.cli import check_main, lint_main, principal_from_claims

EXAMPLE = str(
    Path(__file__).resolve().parents[2] / "python" / "veilgate" / "policy" / "example_policy.yaml"
)
RO = json.dumps({"provider": "entra", "subject": "agent-1", "roles": ["db.readonly"]})
RW = json.dumps({"roles": ["db.readwrite"]})


def _run(fn: object, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    rc = fn(argv, out=out)  # type: ignore[operator]
    return rc, out.getvalue()


def test_lint_ok() -> None:
    rc, out = _run(lint_main, [EXAMPLE])
    assert rc == 0
    assert "OK (3 tier(s): readonly, readwrite, dba" in out
    assert "warning: default allow" in out


def test_lint_strict_fails_on_warnings() -> None:
    rc, out = _run(lint_main, [EXAMPLE, "--strict"])
    assert rc == 2
    assert "--strict" in out


def test_lint_errors(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(
        "version: 1\ntiers:\n  - name: a\n    match: {roles: [r]}\n    rules:\n"
        "      - {id: x, message: m, action: permit}\n"
    )
    rc, out = _run(lint_main, [str(f)])
    assert rc == 2
    assert (
        f"{f}:6: tiers[0].rules[0].action: expected one of allow, deny, approve, got 'permit'"
        in out
    )
    assert "1 error(s)" in out


def test_lint_missing_file(tmp_path: Path) -> None:
    rc, out = _run(lint_main, [str(tmp_path / "nope.yaml")])
    assert rc == 2 and "cannot read policy file" in out


def test_check_allow() -> None:
    rc, out = _run(check_main, [EXAMPLE, "--principal", RO, "--sql", "select * from orders"])
    assert rc == 0
    assert "tier: readonly" in out
    assert "decision: allow" in out
    assert "rule: ro-read" in out
    assert "reads: orders" in out


def test_check_deny_explains_each_statement() -> None:
    sql = "select 1; with d as (delete from orders returning *) select * from d"
    rc, out = _run(check_main, [EXAMPLE, "--principal", RW, "--sql", sql])
    assert rc == 1
    assert "decision: deny" in out
    assert "rule: rw-no-destruction" in out
    assert (
        "why: statement 2 of 2: rule rw-no-destruction denies construct delete_without_where" in out
    )
    assert "statement 1: select 1" in out
    assert "  decision: allow (rule rw-dml)" in out
    assert "constructs: data_modifying_cte, delete_without_where" in out
    assert "    - DELETE with no WHERE clause affects every row" in out


def test_check_no_tier_and_unparseable() -> None:
    rc, out = _run(check_main, [EXAMPLE, "--principal", "{}", "--sql", "select 1"])
    assert rc == 1 and "tier: (none)" in out and "rule: no-tier" in out
    rc, out = _run(check_main, [EXAMPLE, "--principal", RO, "--sql", "selec 1"])
    assert rc == 1 and "rule: unparseable" in out and "parse error: syntax error" in out


def test_check_scs_off() -> None:
    sql = "select 'a\\' || ' ; drop table orders; --'"
    rc, _ = _run(check_main, [EXAMPLE, "--principal", RW, "--sql", sql])
    assert rc == 0
    rc, out = _run(
        check_main,
        [EXAMPLE, "--principal", RW, "--sql", sql, "--standard-conforming-strings", "off"],
    )
    assert rc == 1 and "drop table orders" in out


def test_check_principal_from_file(tmp_path: Path) -> None:
    f = tmp_path / "claims.json"
    f.write_text(RO)
    rc, out = _run(check_main, [EXAMPLE, "--principal", f"@{f}", "--sql", "begin"])
    assert rc == 0 and "principal: entra:agent-1" in out


@pytest.mark.parametrize("bad", ["[]", "{not json", '{"roles": "x"}', '{"color": 1}'])
def test_check_bad_principal(bad: str) -> None:
    rc, out = _run(check_main, [EXAMPLE, "--principal", bad, "--sql", "select 1"])
    assert rc == 2 and out.startswith("--principal:")


def test_check_bad_policy(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("version: 3\n")
    rc, out = _run(check_main, [str(f), "--principal", RO, "--sql", "select 1"])
    assert rc == 2 and f"{f}:1: version" in out


def test_principal_groups_unknown() -> None:
    assert principal_from_claims({"groups": None}).groups is None
    assert principal_from_claims({"groups": ["g"]}).groups == frozenset({"g"})
