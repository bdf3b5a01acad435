"""The ``veilgate`` command line: exit codes, token tools, config check."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from veilgate import __version__, cli

REPO = Path(__file__).resolve().parents[2]
DIGEST = hashlib.sha256(b"t0ken").hexdigest()

GOOD = f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{allow_plaintext_loopback: true}}
auth:
  static_tokens: [{{name: bot, sha256: {DIGEST}}}]
targets:
  app: {{host: 127.0.0.1, password_env: PGPASS}}
"""


def run_module(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "python"), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "veilgate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_config_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert cli.main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "app" in out


def test_config_check_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("port: 0", "port: many").replace("password_env", "password"))
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"{path}:1: listen.port: expected an integer from 0 (ephemeral) to 65535, got 'many'"
    )
    assert err[1].startswith(f"{path}:6: targets.app.password: a plaintext password")
    assert err[2] == f"{path}: 2 errors"


def test_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_serve_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("host: 127.0.0.1, port: 0", "host: 127.0.0.1, port: 0, x: 1"))
    assert cli.main(["serve", "--config", str(path)]) == 2
    assert f"{path}:1: listen.x: unknown key 'x'" in capsys.readouterr().err


def test_token_hash_reads_stdin_and_never_echoes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("t0ken\n"))
    assert cli.main(["token", "hash"]) == 0
    out, err = capsys.readouterr()
    assert out == DIGEST + "\n"
    assert "t0ken" not in out and "t0ken" not in err


@pytest.mark.parametrize("data", ["", "\n", " s3cr3t \n", "s3cr3t\nx7z\n"])
def test_token_hash_rejects_bad_input(
    data: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(data))
    assert cli.main(["token", "hash"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    for word in ("s3cr3t", "x7z"):
        assert word not in err


def test_token_new(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "new"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token = lines[0].removeprefix("token:").strip()
    digest = lines[1].removeprefix("sha256:").strip()
    assert len(token) >= 40
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert cli.main(["token", "new"]) == 0
    assert token not in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"veilgate {__version__} ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["config"]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["serve"])  # --config is required
    assert info.value.code == 2


def test_commands_are_pluggable() -> None:
    seen: list[str] = []

    def register(sub: cli.Subparsers) -> None:
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda _args: seen.append("hello") or 7)

    cli.COMMANDS.append(register)
    try:
        assert cli.main(["hello"]) == 7
    finally:
        cli.COMMANDS.remove(register)
    assert seen == ["hello"]


def test_python_dash_m_token_hash_subprocess() -> None:
    proc = run_module("token", "hash", stdin="t0ken")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DIGEST + "\n"
    assert "t0ken" not in proc.stderr


def test_python_dash_m_config_check_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(GOOD)
    assert run_module("config", "check", str(path)).returncode == 0
    path.write_text(GOOD + "extra: 1\n")
    proc = run_module("config", "check", str(path))
    assert proc.returncode == 2
    assert f"{path}:7: extra: unknown key 'extra'" in proc.stderr
