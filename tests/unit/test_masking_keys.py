"""The masking hash key's reading and generations (veilgate.masking.keys)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import pytest

from veilgate.masking.keys import (
    MIN_KEY_BYTES,
    KeyGenerations,
    MaskingUnavailable,
    fingerprint,
    read_key,
)

KEY_A = b"a-key-of-thirty-two-bytes-length"
KEY_B = b"another-key-that-is-long-enough!"


def test_read_key_file_strips_and_refuses_unusable(tmp_path: Path) -> None:
    f = tmp_path / "mask.key"
    f.write_bytes(b"  " + KEY_A + b"\n")
    assert read_key(None, f) == KEY_A
    f.write_bytes(b"x" * (MIN_KEY_BYTES - 1) + b"\n")
    with pytest.raises(MaskingUnavailable, match="too short") as e:
        read_key(None, f)
    assert "x" * 4 not in str(e.value)  # never the key, even a short one
    f.write_bytes(b"\n\n")
    with pytest.raises(MaskingUnavailable, match="empty or unset"):
        read_key(None, f)
    f.unlink()
    with pytest.raises(MaskingUnavailable, match=f"cannot read the masking hash key file {f}"):
        read_key(None, f)


def test_read_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VG_TEST_KEYS_KEY", KEY_A.decode())
    assert read_key("VG_TEST_KEYS_KEY", None) == KEY_A
    monkeypatch.delenv("VG_TEST_KEYS_KEY")
    with pytest.raises(MaskingUnavailable, match="environment variable VG_TEST_KEYS_KEY"):
        read_key("VG_TEST_KEYS_KEY", None)


def test_fingerprint_is_a_keyed_hash_of_a_constant() -> None:
    fp = fingerprint(KEY_A)
    assert len(fp) == 12 and fp == fingerprint(KEY_A) and fp != fingerprint(KEY_B)
    assert fp == hmac.new(KEY_A, b"veilgate masking key fingerprint", "sha256").hexdigest()[:12]
    assert fp not in hashlib.sha256(KEY_A).hexdigest()  # not the key's plain digest


def test_generations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "mask.key"
    f.write_bytes(KEY_A)
    keys = KeyGenerations()
    caplog.set_level(logging.INFO, logger="veilgate")
    first = keys.for_session(None, f)
    assert (first.generation, first.material, first.source) == (1, KEY_A, f"file {f}")
    # the live key serves later sessions without reading the file again
    f.write_bytes(KEY_B)
    assert keys.for_session(None, f) is first
    # a reload installs what it read: the same key keeps its generation, another one is next
    assert keys.install(KEY_A, f"file {f}", "reload") is first
    second = keys.install(KEY_B, f"file {f}", "reload")
    assert second.generation == 2 and keys.live is second
    # a failed read keeps the live generation and says why
    keys.failed("masking hash key file x is too short", "reload")
    assert (
        keys.live is second and keys.describe()["error"] == "masking hash key file x is too short"
    )
    assert keys.describe()["generation"] == 2
    # the first key again is a new generation
    assert keys.install(KEY_A, f"file {f}", "reload").generation == 3
    assert keys.describe()["error"] is None
    events = [r.getMessage() for r in caplog.records]
    assert events.count("masking_key_loaded") == 1 and events.count("masking_key_changed") == 2
    assert "masking_key_unusable" in events
    text = caplog.text + repr(first) + repr(keys.describe())
    assert KEY_A.decode() not in text and KEY_B.decode() not in text


def test_another_source_is_read_at_first_use(tmp_path: Path) -> None:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    a.write_bytes(KEY_A)
    keys = KeyGenerations()
    assert keys.for_session(None, a).generation == 1
    # a policy reload named another key file that cannot be read: refused (fail closed)
    with pytest.raises(MaskingUnavailable):
        keys.for_session(None, b)
    assert keys.live is not None and keys.live.generation == 1 and keys.error is not None
    b.write_bytes(KEY_B)
    assert keys.for_session(None, b).generation == 2
