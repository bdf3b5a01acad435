"""The optional ``policy`` section: the policy file must load, errors name its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilgate import config
from veilgate.cli import main
from veilgate.config import ConfigError

DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

BASE = f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{allow_plaintext_loopback: true}}
auth:
  static_tokens:
    - {{name: t, sha256: {DIGEST}, roles: [db.readonly]}}
targets:
  app: {{host: 127.0.0.1, tls: {{mode: disable}}}}
"""

POLICY = """\
version: 1
tiers:
  - name: readonly
    match: {roles: [db.readonly]}
    rules:
      - {id: ro-read, action: allow, message: reads, classes: [read]}
"""


def test_no_policy_section_means_no_policy(tmp_path: Path) -> None:
    assert config.load_str(BASE, base_dir=tmp_path).policy is None


def test_policy_section(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    cfg = config.load_str(
        BASE + "policy: {file: policy.yaml, audit_log: audit.jsonl}\n", base_dir=tmp_path
    )
    assert cfg.policy is not None
    assert cfg.policy.file == (tmp_path / "policy.yaml").resolve()
    assert cfg.policy.audit_log == str((tmp_path / "audit.jsonl").resolve())
    cfg = config.load_str(BASE + "policy: {file: policy.yaml}\n", base_dir=tmp_path)
    assert cfg.policy is not None and cfg.policy.audit_log is None


def test_policy_errors_name_the_policy_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY.replace("action: allow", "action: permit"))
    with pytest.raises(ConfigError) as ei:
        config.load_str(BASE + "policy: {file: policy.yaml}\n", base_dir=tmp_path)
    text = str(ei.value)
    assert "policy.file" in text and "permit" in text
    assert "policy.yaml:6: tiers[0].rules[0].action" in text


def test_policy_file_missing_and_audit_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load_str(BASE + "policy: {file: nope.yaml}\n", base_dir=tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY)
    with pytest.raises(ConfigError, match=r"policy\.audit_log"):
        config.load_str(
            BASE + "policy: {file: policy.yaml, audit_log: no/such/dir/a.jsonl}\n",
            base_dir=tmp_path,
        )


def test_serve_exits_2_on_a_broken_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text("version: 1\ntiers: [}\n")
    conf = tmp_path / "veilgate.yaml"
    conf.write_text(BASE + "policy: {file: policy.yaml}\n")
    assert main(["serve", "--config", str(conf)]) == 2
    assert "policy.yaml:" in capsys.readouterr().err
