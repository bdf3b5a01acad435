"""``veilgate mask``: CSV and JSON lines through the real command (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

native = pytest.importorskip("veilgate_native")
if not hasattr(native, "Masker"):  # pragma: no cover - only while the engine is being built
    pytest.skip("veilgate_native has no Masker yet", allow_module_level=True)

POLICY = """\
version: 1
tiers:
  - name: ro
    match: {roles: [r]}
    rules:
      - {id: a, message: m, action: allow, classes: [read]}
  - name: rw
    match: {roles: [w]}
    rules:
      - {id: b, message: m, action: allow, classes: [read, write]}
masking:
  apply_to: [ro]
  hash_key_env: VG_TEST_MASK_CLI_KEY
  custom:
    - {entity: EMPLOYEE_ID, regex: "EMP-[0-9]{6}"}
  columns:
    - {column: "*.*.id", op: keep}
    - {column: "*.*.ssn", op: partial, keep_last: 4}
    - {column: "public.customers.card", op: partial, keep_last: 4}
    - {name: "*password*", op: redact}
    - {name: "login", op: hash}
"""

EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
PASSWORD = "hunter2-very-secret"
EMPLOYEE = "EMP-123456"


def _mask(
    policy: Path, data: str, *args: str, env_key: str | None = "k" * 32
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VG_TEST_MASK_CLI_KEY", None)
    if env_key is not None:
        env["VG_TEST_MASK_CLI_KEY"] = env_key
    return subprocess.run(
        [sys.executable, "-m", "veilgate", "mask", "--policy", str(policy), *args],
        input=data,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


def test_csv(policy: Path) -> None:
    data = (
        "id,email,ssn,user_password,notes,login,public.customers.card\n"
        f'42,{EMAIL},{SSN},{PASSWORD},"call {EMPLOYEE}, or mail {EMAIL}",jdoe,4111111111111111\n'
        "43,,,,,,\n"
    )
    r = _mask(policy, data, "--format", "csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "id,email,ssn,user_password,notes,login,public.customers.card"
    row = lines[1].split(",", 4)
    assert row[0] == "42"  # explicit keep
    assert row[1] == "<EMAIL>"  # no rule: content scan
    assert row[2].endswith("6789") and row[2] != SSN  # partial keep_last 4
    assert row[3] == ""  # redact
    rest = lines[1].split(",")
    assert rest[-1].endswith("1111") and "4111111111111111" not in r.stdout
    # the notes field: both entities masked inside the text
    assert "<EMPLOYEE_ID>" in lines[1] and lines[1].count("<EMAIL>") == 2
    # hash: deterministic, not the input
    login = rest[-2]
    assert login and login != "jdoe"
    again = _mask(policy, data, "--format", "csv")
    assert again.stdout == r.stdout
    assert lines[2] == "43,,,,,,"
    for secret in (EMAIL, SSN, PASSWORD, EMPLOYEE):
        assert secret not in r.stdout


def test_jsonl(policy: Path) -> None:
    rows = [
        {
            "id": 7,
            "user": {"email": EMAIL, "password": PASSWORD, "ssn": SSN},
            "tags": ["plain", f"reach me at {EMAIL}"],
            "card": 4111111111111111,
            "count": 3,
            "ok": True,
            "none": None,
        },
        {"note": f"badge {EMPLOYEE}"},
    ]
    data = "\n".join(json.dumps(r) for r in rows) + "\n"
    r = _mask(policy, data, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    first = out[0]
    assert list(first) == ["id", "user", "tags", "card", "count", "ok", "none"]  # order kept
    assert first["id"] == 7
    assert first["user"]["email"] == "<EMAIL>"
    assert first["user"]["password"] == ""
    assert first["user"]["ssn"].endswith("6789") and first["user"]["ssn"] != SSN
    assert first["tags"] == ["plain", "reach me at <EMAIL>"]
    # a masked number stays a JSON number
    assert isinstance(first["card"], int) and first["card"] != 4111111111111111
    assert first["count"] == 3 and first["ok"] is True and first["none"] is None
    assert out[1] == {"note": "badge <EMPLOYEE_ID>"}
    for secret in (EMAIL, SSN, PASSWORD, EMPLOYEE, "4111111111111111"):
        assert secret not in r.stdout


def test_a_line_that_is_not_json_is_masked_as_text_and_counted(policy: Path) -> None:
    data = (
        json.dumps({"a": 1})
        + "\n"
        + '{"password": "'
        + PASSWORD
        + '", "mail": '
        + EMAIL
        + ", oops}\n"
        + json.dumps({"b": EMAIL})
        + "\n"
    )
    r = _mask(policy, data, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == {"a": 1}
    assert EMAIL not in lines[1] and "<EMAIL>" in lines[1]  # the detectors still ran
    assert json.loads(lines[2]) == {"b": "<EMAIL>"}
    assert "<stdin>: 1 line(s) not JSON, masked as text" in r.stderr
    assert "lines 2" in r.stderr
    assert PASSWORD not in r.stderr and EMAIL not in r.stderr


def test_jsonl_path_rules_and_escapes(policy: Path, tmp_path: Path) -> None:
    p = tmp_path / "paths.yaml"
    p.write_text(
        POLICY
        + """    - name: payload
      json:
        customer.email: {op: partial, keep_first: 1}
        "items[*].sku": {op: keep}
"""
    )
    doc = {
        "payload": {
            "customer": {"email": EMAIL, "phone": "+44 20 7946 0958"},
            "items": [{"sku": "4111111111111111", "card": 4111111111111111}],
        },
        "note": "mail \u0061" + EMAIL[1:],
    }
    r = _mask(p, json.dumps(doc) + "\n", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["payload"]["customer"]["email"] == "j***.***@*******.***"
    assert out["payload"]["customer"]["phone"] == "<PHONE>"
    assert out["payload"]["items"] == [{"sku": "4111111111111111", "card": 0}]
    assert out["note"] == "mail <EMAIL>"


def test_input_file_and_malformed_csv(policy: Path, tmp_path: Path) -> None:
    f = tmp_path / "in.csv"
    f.write_text('id,notes\n1,fine\n2,"' + "x" * 200_000 + '"\n')
    r = _mask(policy, "", str(f))
    assert r.returncode == 1
    assert f"{f}:3: malformed CSV" in r.stderr
    assert "x" * 100 not in r.stderr


def test_tier_selection(policy: Path) -> None:
    data = f"email\n{EMAIL}\n"
    r = _mask(policy, data, "--tier", "ro")
    assert r.returncode == 0 and EMAIL not in r.stdout
    r = _mask(policy, data, "--tier", "rw")
    assert r.returncode == 2 and "tier 'rw' is not masked" in r.stderr
    r = _mask(policy, data, "--tier", "nobody")
    assert r.returncode == 2 and "no tier named 'nobody'" in r.stderr


def test_bad_policy_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(POLICY.replace('{name: "login", op: hash}', '{name: "login", op: hsah}'))
    line = POLICY.splitlines().index('    - {name: "login", op: hash}') + 1
    r = _mask(p, "a\n1\n")
    assert r.returncode == 2
    assert f"{p}:{line}: masking.columns[4].op: expected one of" in r.stderr


def test_missing_hash_key_is_refused_without_output(policy: Path) -> None:
    r = _mask(policy, "login\njdoe\n", env_key=None)
    assert r.returncode == 2
    assert "VG_TEST_MASK_CLI_KEY" in r.stderr
    assert r.stdout == ""
