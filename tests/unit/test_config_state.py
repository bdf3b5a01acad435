"""The ``state`` section: SQLite by default (path relative to the config file), PostgreSQL with a
DSN from an environment variable or a file, errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilgate import config
from veilgate.config import ConfigError
from veilgate.config_model import StateBackend

DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
BASE = f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{allow_plaintext_loopback: true}}
auth:
  static_tokens:
    - {{name: t, sha256: {DIGEST}}}
targets:
  app: {{host: 127.0.0.1, tls: {{mode: disable}}}}
"""


def test_default_is_sqlite_beside_the_config_file(tmp_path: Path) -> None:
    cfg = config.load_str(BASE, base_dir=tmp_path)
    assert cfg.state.backend is StateBackend.SQLITE
    assert cfg.state.path == str((tmp_path / "veilgate-state.db").resolve())


def test_sqlite_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        config.load_str(BASE + "state:\n  path: nowhere/st.db\n", base_dir=tmp_path)
    assert "<config>:9: state.path: directory does not exist" in str(ei.value)
    (tmp_path / "nowhere").mkdir()
    cfg = config.load_str(BASE + "state:\n  path: nowhere/st.db\n", base_dir=tmp_path)
    assert cfg.state.path == str((tmp_path / "nowhere" / "st.db").resolve())


def test_postgres_needs_exactly_one_dsn_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="state: backend postgres needs exactly one of dsn_env"):
        config.load_str(BASE + "state: {backend: postgres}\n", base_dir=tmp_path)
    (tmp_path / "dsn").write_text("postgresql://x@h/db\n")
    with pytest.raises(ConfigError, match="exactly one"):
        config.load_str(
            BASE + "state: {backend: postgres, dsn_env: X, dsn_file: dsn}\n", base_dir=tmp_path
        )
    cfg = config.load_str(BASE + "state: {backend: postgres, dsn_file: dsn}\n", base_dir=tmp_path)
    assert cfg.state.backend is StateBackend.POSTGRES
    assert cfg.state.dsn() == "postgresql://x@h/db"
    with pytest.raises(ConfigError, match="apply to backend postgres only"):
        config.load_str(BASE + "state: {dsn_env: X}\n", base_dir=tmp_path)


def test_bad_values_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        config.load_str(
            BASE + "state:\n  backend: redis\n  timeout_s: 0\n  dsn_env: 'bad name'\n",
            base_dir=tmp_path,
        )
    text = str(ei.value)
    assert "<config>:9: state.backend: expected one of 'sqlite', 'postgres'" in text
    assert "<config>:10: state.timeout_s" in text
    assert "<config>:11: state.dsn_env: expected an environment variable name" in text
