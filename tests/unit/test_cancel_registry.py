"""CancelRegistry: (server pid, gateway secret) -> session."""

from __future__ import annotations

import pytest

from veilgate.gateway.cancel import KEY_BYTES, CancelRegistry


def test_sessions_with_the_same_server_pid_get_different_secrets() -> None:
    reg: CancelRegistry[str] = CancelRegistry()
    keys = {reg.register(f"s{i}", 4242) for i in range(200)}
    assert len(keys) == 200 and len(reg) == 200
    assert all(len(k) == KEY_BYTES for k in keys)


def test_lookup_needs_pid_and_secret() -> None:
    reg: CancelRegistry[str] = CancelRegistry()
    ka = reg.register("a", 100)
    kb = reg.register("b", 100)
    kc = reg.register("c", 200)
    assert reg.lookup(100, ka) == "a"
    assert reg.lookup(100, kb) == "b"
    assert reg.lookup(200, kc) == "c"
    assert reg.lookup(200, ka) is None  # a secret of another pid
    assert reg.lookup(100, kc) is None
    assert reg.lookup(300, ka) is None
    assert reg.lookup(100, ka + b"\0") is None  # long key
    assert reg.lookup(100, ka[:3]) is None


def test_unregister() -> None:
    reg: CancelRegistry[str] = CancelRegistry()
    ka = reg.register("a", 100)
    kb = reg.register("b", 100)
    reg.unregister(100, ka)
    reg.unregister(100, ka)  # twice: no effect
    assert reg.lookup(100, ka) is None and reg.lookup(100, kb) == "b"
    assert len(reg) == 1
    reg.unregister(100, kb)
    assert len(reg) == 0


def test_worker_id_in_the_secrets_top_bits() -> None:
    reg: CancelRegistry[str] = CancelRegistry(worker_id=5, worker_bits=4)
    for i in range(50):
        key = reg.register(str(i), 7)
        assert key[0] >> 4 == 5
        assert reg.worker_of(key, 4) == 5
    with pytest.raises(ValueError):
        CancelRegistry(worker_id=16, worker_bits=4)


def test_lookup_by_digest_for_a_cancel_another_gateway_received() -> None:
    from veilgate.gateway.cancel import cancel_digest

    reg: CancelRegistry[str] = CancelRegistry()
    key = reg.register("s1", 4242)
    other = reg.register("s2", 4242)
    digest = cancel_digest(4242, key)
    assert key.hex() not in digest  # the secret is not in what other gateways are told
    assert reg.lookup_digest(4242, digest) == "s1"
    assert reg.lookup_digest(4242, cancel_digest(4242, other)) == "s2"
    assert reg.lookup_digest(4243, digest) is None  # bound to the pid too
    assert reg.lookup_digest(4242, cancel_digest(4242, bytes(4))) is None
    assert reg.lookup_digest(4242, "not hex") is None
