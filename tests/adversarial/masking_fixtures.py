"""Fixtures of the masking attacks (lineage, inference, side channels): a fresh masked table per
module, and a gateway per tier running the suite's policy (``masked``, ``raw``), module-scoped.
Test modules import the ones they use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.adversarial.masking_clients import make_table, start_gateway
from tests.integration import pgwire as pw

__all__ = ["masked", "raw", "table"]


@pytest.fixture(scope="module")
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


def _gateway(base: Any, certs: Any, tmp: Any, role: str) -> Iterator[pw.Target]:
    handle = start_gateway(base, certs, tmp.mktemp("adv"), role)
    try:
        yield pw.gateway_target(handle)
    finally:
        handle.thread.stop()


@pytest.fixture(scope="module")
def masked(
    gateway_base_config: Any, gateway_certs: Any, tmp_path_factory: Any
) -> Iterator[pw.Target]:
    """A gateway whose sessions are in the masked tier."""
    yield from _gateway(gateway_base_config, gateway_certs, tmp_path_factory, "db.masked")


@pytest.fixture(scope="module")
def raw(gateway_base_config: Any, gateway_certs: Any, tmp_path_factory: Any) -> Iterator[pw.Target]:
    """The same policy, unmasked tier: the values are really there."""
    yield from _gateway(gateway_base_config, gateway_certs, tmp_path_factory, "db.raw")
