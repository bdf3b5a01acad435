"""veilgate.config: strict YAML validation with file:line: key messages."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from veilgate import config
from veilgate.certs import make_ca, make_self_signed
from veilgate.config import ConfigError
from veilgate.config_model import (
    GatewayConfig,
    LimitsConfig,
    ListenConfig,
    ShutdownConfig,
    UpstreamTLSMode,
)

DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
DIGEST2 = "a" * 64

VALID = f"""\
listen:
  host: 0.0.0.0
  port: 6543
  handshake_timeout_s: 5
tls:
  cert_file: certs/server.crt
  key_file: certs/server.key
admin:
  port: 0
auth:
  static_tokens:
    - name: ci-bot
      sha256: {DIGEST}
      roles: [reader, writer]
targets:
  app:
    host: db.internal
    port: 5433
    dbname: appdb
    user: veilgate_app
    password_file: secrets/pg.pass
    tls:
      mode: verify-ca
      ca_file: certs/db-ca.crt
  reports:
    host: 127.0.0.1
    password_env: REPORTS_PG_PASSWORD
    tls: {{mode: disable}}
shutdown:
  drain_timeout_s: 2.5
logging:
  level: debug
  format: text
"""


@pytest.fixture
def confdir(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A directory with the files VALID names; also the current directory (short file names)."""
    monkeypatch.chdir(tmp_path)
    certs = _certs(tmp_path_factory)
    shutil.copytree(certs, tmp_path / "certs")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/pg.pass").write_text("x\n")
    return tmp_path


_CERTS: list[Path] = []


def _certs(factory: pytest.TempPathFactory) -> Path:
    """server.crt/.key (self-signed) and db-ca.crt, made once per session."""
    if not _CERTS:
        d = factory.mktemp("certs")
        make_self_signed(d, ["localhost"], name="server")
        make_ca(d, "db-ca")
        (d / "db-ca.key").unlink()
        _CERTS.append(d)
    return _CERTS[0]


def write(directory: Path, text: str, name: str = "veilgate.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path.relative_to(Path.cwd()))
    return str(info.value).splitlines()


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# -- valid files ---------------------------------------------------------------------------------


def test_valid_file_round_trip(confdir: Path) -> None:
    path = write(confdir, VALID)
    cfg = config.load(path)
    assert cfg.source == path.resolve()
    assert cfg.listen == ListenConfig(host="0.0.0.0", port=6543, handshake_timeout_s=5.0)
    assert isinstance(cfg.listen.handshake_timeout_s, float)
    assert cfg.tls.cert_file == (confdir / "certs/server.crt").resolve()
    assert cfg.tls.key_file == (confdir / "certs/server.key").resolve()
    assert cfg.tls.allow_plaintext_loopback is False
    assert cfg.admin.port == 0 and cfg.admin.enabled
    (tok,) = cfg.auth.static_tokens
    assert (tok.name, tok.sha256, tok.roles) == ("ci-bot", DIGEST, frozenset({"reader", "writer"}))
    assert list(cfg.targets) == ["app", "reports"]
    app = cfg.targets["app"]
    assert app.name == "app"
    assert (app.host, app.port, app.dbname, app.user) == (
        "db.internal",
        5433,
        "appdb",
        "veilgate_app",
    )
    assert app.password_file == (confdir / "secrets/pg.pass").resolve()
    assert app.password_env is None
    assert app.tls.mode is UpstreamTLSMode.VERIFY_CA
    assert app.tls.ca_file == (confdir / "certs/db-ca.crt").resolve()
    assert app.password() == "x"
    reports = cfg.targets["reports"]
    assert reports.tls.mode is UpstreamTLSMode.DISABLE
    assert reports.password_env == "REPORTS_PG_PASSWORD"
    # defaults come from the dataclasses
    assert reports.port == 5432 and reports.dbname == "postgres" and reports.user == "postgres"
    assert reports.connect_timeout_s == 10.0
    assert cfg.limits == LimitsConfig()
    assert cfg.shutdown == ShutdownConfig(drain_timeout_s=2.5)
    assert (cfg.logging.level, cfg.logging.format) == ("debug", "text")


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    cfg = config.load_str(
        f"""\
tls: {{allow_plaintext_loopback: true}}
auth: {{static_tokens: [{{name: a, sha256: {DIGEST}}}]}}
targets: {{db: {{host: localhost}}}}
""",
        "mini.yaml",
    )
    defaults = GatewayConfig()
    assert cfg.listen == defaults.listen
    assert cfg.admin == defaults.admin
    assert cfg.limits == defaults.limits
    assert cfg.targets["db"].tls.mode is UpstreamTLSMode.VERIFY_FULL
    assert cfg.source is None


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "veilgate.yaml"
    if not example.exists():
        pytest.skip("examples/veilgate.yaml not present")
    # the example points at files that exist only on a real deployment: check everything else
    with pytest.raises(ConfigError) as info:
        config.load(example)
    for issue in info.value.issues:
        assert "file not found" in issue.message, str(issue)


def test_relative_paths_resolve_against_config_dir(
    confdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(confdir, VALID)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load(path)
    assert cfg.tls.cert_file == (confdir / "certs/server.crt").resolve()
    # the same file loaded from another directory via a relative path
    monkeypatch.chdir(confdir.parent)
    cfg2 = config.load(Path(confdir.name) / "veilgate.yaml")
    assert cfg2.tls.cert_file == cfg.tls.cert_file


def test_absolute_and_home_paths(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(confdir))
    text = replace(VALID, "cert_file: certs/server.crt", "cert_file: ~/certs/server.crt")
    text = replace(text, "key_file: certs/server.key", f"key_file: {confdir}/certs/server.key")
    cfg = config.load(write(confdir, text))
    assert cfg.tls.cert_file == (confdir / "certs/server.crt").resolve()
    assert cfg.tls.key_file == (confdir / "certs/server.key").resolve()


# -- one class of error each ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    port: 5433",
            "    port: abc",
            "veilgate.yaml:18: targets.app.port: expected an integer between 1 and 65535, "
            "got 'abc'",
        ),
        (
            "    port: 5433",
            "    port: 70000",
            "veilgate.yaml:18: targets.app.port: expected an integer between 1 and 65535, "
            "got 70000",
        ),
        (
            "  port: 6543",
            "  port: -1",
            "veilgate.yaml:3: listen.port: expected an integer from 0 (ephemeral) to 65535",
        ),
        (
            "  port: 6543",
            "  port: 6543.5",
            "veilgate.yaml:3: listen.port: expected an integer",
        ),
        (
            "  port: 6543",
            "  port: true",
            "veilgate.yaml:3: listen.port: expected an integer from 0 (ephemeral) to 65535, "
            "got true",
        ),
        (
            "  handshake_timeout_s: 5",
            "  handshake_timeout_s: soon",
            "veilgate.yaml:4: listen.handshake_timeout_s: expected a number between 0.001 and "
            "86400, got 'soon'",
        ),
        (
            "  drain_timeout_s: 2.5",
            "  drain_timeout_s: .nan",
            "veilgate.yaml:30: shutdown.drain_timeout_s: expected a number",
        ),
        (
            "  port: 0",
            "  port: 0\n  enabled: maybe",
            "veilgate.yaml:10: admin.enabled: expected true or false, got 'maybe'",
        ),
        (
            "  level: debug",
            "  level: loud",
            "veilgate.yaml:32: logging.level: expected one of 'debug', 'info', 'warning', "
            "'error', 'critical', got 'loud'",
        ),
        (
            "      mode: verify-ca",
            "      mode: verify",
            "veilgate.yaml:23: targets.app.tls.mode: expected one of 'disable', 'require', "
            "'verify-ca', 'verify-full', got 'verify'",
        ),
        (
            "  host: 0.0.0.0",
            "  hots: 0.0.0.0",
            "veilgate.yaml:2: listen.hots: unknown key 'hots' (did you mean 'host'?)",
        ),
        (
            "shutdown:",
            "bogus: 1\nshutdown:",
            "veilgate.yaml:29: bogus: unknown key 'bogus'",
        ),
        (
            "    dbname: appdb",
            "    dbname: 42",
            "veilgate.yaml:19: targets.app.dbname: expected a string, got 42 (quote it)",
        ),
        (
            "    dbname: appdb",
            "    dbname: ''",
            "veilgate.yaml:19: targets.app.dbname: expected a non-empty string",
        ),
        (
            "    host: db.internal",
            "    hostname: db.internal",
            "veilgate.yaml:17: targets.app.host: required key is missing",
        ),
        (
            "      roles: [reader, writer]",
            "      roles: reader",
            "veilgate.yaml:14: auth.static_tokens[0].roles: expected a list, got 'reader'",
        ),
        (
            "  static_tokens:",
            "  static_tokens: {}\n  old_tokens:",
            "veilgate.yaml:11: auth.static_tokens: expected a list, got a mapping",
        ),
        (
            "    password_env: REPORTS_PG_PASSWORD",
            "    password_env: 'not a name'",
            "veilgate.yaml:27: targets.reports.password_env: expected an environment variable "
            "name, got 'not a name'",
        ),
        (
            "    password_file: secrets/pg.pass",
            "    password_file: secrets/missing.pass",
            "veilgate.yaml:21: targets.app.password_file: file not found: ",
        ),
        (
            "  cert_file: certs/server.crt",
            "  cert_file: certs",
            "veilgate.yaml:6: tls.cert_file: not a regular file: ",
        ),
        (
            "      ca_file: certs/db-ca.crt",
            "      ca_file: nope/ca.crt",
            "veilgate.yaml:24: targets.app.tls.ca_file: file not found: ",
        ),
    ],
)
def test_each_error_names_file_line_and_key(
    confdir: Path, old: str, new: str, expected: str
) -> None:
    errors = errors_of(write(confdir, replace(VALID, old, new)))
    assert errors[0].startswith(expected), errors
    # a renamed key is also reported as unknown; nothing else
    assert len(errors) == 1 or "unknown key" in errors[1], errors


def test_path_error_names_the_resolved_file(confdir: Path) -> None:
    text = replace(VALID, "password_file: secrets/pg.pass", "password_file: secrets/gone")
    (err,) = errors_of(write(confdir, text))
    assert err.endswith(str((confdir / "secrets/gone").resolve()))


def test_sha256_must_be_64_hex_and_is_never_echoed(confdir: Path) -> None:
    text = replace(VALID, f"sha256: {DIGEST}", "sha256: my-actual-secret-token")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:13: auth.static_tokens[0].sha256: expected 64 hex")
    assert "veilgate token hash" in err
    assert "my-actual-secret-token" not in err
    text = replace(VALID, f"sha256: {DIGEST}", f"sha256: {DIGEST}0")
    (err,) = errors_of(write(confdir, text))
    assert "got 65 characters" in err


def test_plaintext_password_refused_without_echo(confdir: Path) -> None:
    text = replace(VALID, "    dbname: appdb", "    dbname: appdb\n    password: hunter2")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:20: targets.app.password: a plaintext password")
    assert "password_env" in err and "password_file" in err
    assert "hunter2" not in err


def test_duplicate_target_names(confdir: Path) -> None:
    text = VALID + "targets:\n  x:\n    host: h\n"
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:34: targets: duplicate key (first on line 15)")
    text = replace(VALID, "  reports:", "  app:")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:25: targets.app: duplicate key (first on line 16)")


def test_duplicate_token_names_and_digests(confdir: Path) -> None:
    text = replace(
        VALID,
        "      roles: [reader, writer]",
        f"      roles: [reader, writer]\n    - name: ci-bot\n      sha256: {DIGEST.upper()}",
    )
    errors = errors_of(write(confdir, text))
    assert errors == [
        "veilgate.yaml:15: auth.static_tokens[1].name: duplicate token name 'ci-bot' "
        "(also auth.static_tokens[0])",
        "veilgate.yaml:16: auth.static_tokens[1].sha256: same digest as auth.static_tokens[0]: "
        "each token must be unique",
    ]


def test_password_env_and_file_are_exclusive(confdir: Path) -> None:
    text = replace(
        VALID,
        "    password_file: secrets/pg.pass",
        "    password_file: secrets/pg.pass\n    password_env: PGPASS",
    )
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:21: targets.app: password_env and password_file")


def test_tls_required_unless_loopback_plaintext(confdir: Path) -> None:
    no_tls = replace(
        VALID, "  cert_file: certs/server.crt\n  key_file: certs/server.key\n", "  {}\n"
    ).replace("tls:\n  {}\n", "")
    (err,) = errors_of(write(confdir, no_tls))
    assert "tls: cert_file and key_file are required" in err
    # the development switch works only on a loopback listen address
    plain = no_tls.replace("listen:\n", "tls:\n  allow_plaintext_loopback: true\nlisten:\n")
    (err,) = errors_of(write(confdir, plain))
    assert "veilgate.yaml:2: tls.allow_plaintext_loopback: only allowed when listen.host" in err
    assert "'0.0.0.0'" in err
    for host in ("127.0.0.1", "::1", "localhost", "127.1.2.3"):
        loop = plain.replace("host: 0.0.0.0", f"host: '{host}'")
        cfg = config.load(write(confdir, loop))
        assert cfg.tls.cert_file is None and cfg.tls.allow_plaintext_loopback
    # a certificate without its key
    half = replace(VALID, "  key_file: certs/server.key\n", "")
    (err,) = errors_of(write(confdir, half))
    assert err.startswith("veilgate.yaml:6: tls.key_file: required when tls.cert_file is set")


def test_upstream_tls_disable_only_for_loopback(confdir: Path) -> None:
    text = replace(VALID, "    host: 127.0.0.1", "    host: db2.internal")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:28: targets.reports.tls.mode: 'disable' is only allowed")


def test_at_least_one_target_and_auth_source(confdir: Path) -> None:
    text = "tls:\n  allow_plaintext_loopback: true\ntargets: {}\nauth:\n  static_tokens: []\n"
    errors = errors_of(write(confdir, text))
    assert errors == [
        "veilgate.yaml:3: targets: at least one target is required",
        "veilgate.yaml:5: auth: at least one authentication source is required "
        "(auth.static_tokens or auth.oidc)",
    ]


def test_write_water_marks_ordered(confdir: Path) -> None:
    text = VALID + "limits:\n  write_high_water: 1000\n  write_low_water: 2000\n"
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:36: limits.write_low_water: must not exceed")


def test_multiple_errors_reported_in_file_order(confdir: Path) -> None:
    text = replace(VALID, "  port: 6543", "  port: x")
    text = replace(text, "    port: 5433", "    port: 0")
    text = replace(text, "  level: debug", "  level: verbose")
    text = replace(text, "  format: text", "  format: xml\n  colour: true")
    errors = errors_of(write(confdir, text))
    assert [e.split(": ")[0:2] for e in errors] == [
        ["veilgate.yaml:3", "listen.port"],
        ["veilgate.yaml:18", "targets.app.port"],
        ["veilgate.yaml:32", "logging.level"],
        ["veilgate.yaml:33", "logging.format"],
        ["veilgate.yaml:34", "logging.colour"],
    ]
    with pytest.raises(ConfigError) as info:
        config.load(write(confdir, text))
    assert len(info.value.issues) == 5
    assert info.value.issues[0].line == 3 and info.value.issues[0].path == "listen.port"


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError) as info:
        config.load_str("listen:\n  port: [1, 2\nadmin: {}\n", "bad.yaml")
    msg = str(info.value)
    assert msg.startswith("bad.yaml:") and "invalid YAML" in msg


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        config.load_str("- a\n- b\n", "list.yaml")
    assert str(info.value) == "list.yaml:1: (top level): expected a mapping, got a list"


def test_empty_file_reports_what_is_required() -> None:
    with pytest.raises(ConfigError) as info:
        config.load_str("", "empty.yaml")
    text = str(info.value)
    assert "targets: at least one target is required" in text
    assert "auth: at least one authentication source" in text
    assert "tls: cert_file and key_file are required" in text


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_anchors_and_merge_keys(confdir: Path) -> None:
    text = replace(
        VALID,
        "  reports:\n    host: 127.0.0.1",
        "  reports:\n    <<: &common {user: shared}\n    host: 127.0.0.1",
    )
    cfg = config.load(write(confdir, text))
    assert cfg.targets["reports"].user == "shared"


def test_multiple_documents_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config.load_str("a: 1\n---\nb: 2\n", "multi.yaml")
    assert "invalid YAML" in str(info.value)


def test_is_loopback() -> None:
    assert config.is_loopback("127.0.0.1") and config.is_loopback("::1")
    assert config.is_loopback("localhost")
    assert not config.is_loopback("0.0.0.0") and not config.is_loopback("db.example")


def test_tls_files_must_load(confdir: Path) -> None:
    (confdir / "certs/garbage.pem").write_text("not a certificate\n")
    text = replace(VALID, "cert_file: certs/server.crt", "cert_file: certs/garbage.pem")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:6: tls: cannot use cert_file/key_file: ")
    # a key that does not belong to the certificate
    other = make_self_signed(confdir / "other", ["localhost"])
    text = replace(VALID, "key_file: certs/server.key", f"key_file: {other.key_file}")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:6: tls: cannot use cert_file/key_file: ")
    # an upstream CA file that is not a certificate
    text = replace(VALID, "ca_file: certs/db-ca.crt", "ca_file: certs/garbage.pem")
    (err,) = errors_of(write(confdir, text))
    assert err.startswith("veilgate.yaml:24: targets.app.tls.ca_file: not a PEM CA certificate")


def test_target_pool_section(tmp_path: Path) -> None:
    base = f"""\
tls: {{allow_plaintext_loopback: true}}
auth: {{static_tokens: [{{name: a, sha256: {DIGEST}}}]}}
"""
    cfg = config.load_str(base + "targets: {db: {host: localhost}}\n", "pool.yaml")
    assert cfg.targets["db"].pool.size == 0  # reuse is off unless asked for
    cfg = config.load_str(
        base + "targets: {db: {host: localhost, pool: {size: 8, idle_timeout_s: 30}}}\n",
        "pool.yaml",
    )
    assert (cfg.targets["db"].pool.size, cfg.targets["db"].pool.idle_timeout_s) == (8, 30.0)
    with pytest.raises(config.ConfigError) as err:
        config.load_str(base + "targets: {db: {host: localhost, pool: {size: -1}}}\n", "p.yaml")
    assert "targets.db.pool.size" in str(err.value)


def test_tls_engine_and_upstream_client_certificate(confdir: Path) -> None:
    text = replace(
        VALID, "  key_file: certs/server.key\n", "  key_file: certs/server.key\n  engine: native\n"
    )
    text = replace(
        text,
        "      ca_file: certs/db-ca.crt\n",
        "      ca_file: certs/db-ca.crt\n      cert_file: certs/server.crt\n"
        "      key_file: certs/server.key\n",
    )
    cfg = config.load(write(confdir, text))
    assert cfg.tls.engine.value == "native"
    assert cfg.targets["app"].tls.cert_file == (confdir / "certs/server.crt").resolve()
    # a client certificate whose key file holds no key is an error naming the certificate
    bad = replace(text, "      key_file: certs/server.key\n", "      key_file: certs/db-ca.key\n")
    (confdir / "certs/db-ca.key").write_bytes(b"not a key")
    errors = errors_of(write(confdir, bad))
    assert any("targets.app.tls.cert_file: cannot use cert_file/key_file" in e for e in errors), (
        errors
    )
    # an unknown engine is refused with the choices
    errors = errors_of(write(confdir, replace(text, "engine: native", "engine: openssl")))
    assert any("tls.engine" in e and "native" in e for e in errors), errors
