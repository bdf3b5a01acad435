"""Readiness checks: can this gateway serve a client right now?

One function per cause, each returning :class:`Check` values named so an operator knows what to
fix (``upstream:app``, ``upstream:app/vg_read``, ``identity:entra/v2.0``, ``masking_key``,
``tls_certificate``, ``audit``, ``draining``).  ``/readyz`` (:class:`Readiness`) and
``veilgate config check --strict`` run the same functions.

Upstream checks connect with each login a session may use (TLS, SCRAM, then Terminate): a
server that is down, refuses the login or the password fails the check.  They run in the
background every ``health.upstream_interval_s``; ``/readyz`` reports the last result and never
waits for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from veilgate import log
from veilgate.config_model import GatewayConfig, TargetConfig

if TYPE_CHECKING:
    from veilgate.policy.model import Policy

__all__ = [
    "AuditHealth",
    "Check",
    "Readiness",
    "audit_dir_check",
    "certificate_checks",
    "identity_checks",
    "masking_key_check",
    "upstream_checks",
]

_log = log.get("health")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail} if self.detail else {"ok": self.ok}


class AuditHealth(Protocol):
    """The session recorder, as the probes see it."""

    @property
    def blocked(self) -> bool: ...

    def health(self) -> dict[str, Any]: ...


# -- one function per cause ----------------------------------------------------------------------


def logins(target: TargetConfig) -> list[tuple[str, TargetConfig]]:
    """Every upstream login a session of ``target`` may use: (check name, login)."""
    from veilgate.identity.combined import TierGrant, upstream_login

    out = [(f"upstream:{target.name}", target)]
    for role in sorted(target.logins):
        login = upstream_login(target, TierGrant(role, role))
        out.append((f"upstream:{target.name}/{role}", login))
    return out


async def upstream_check(name: str, login: TargetConfig) -> Check:
    """Connect and authenticate as ``login``, then hang up."""
    from veilgate.masking.sideconn import SideConnection, SideConnectionError
    from veilgate.pgwire.upstream import UpstreamError

    try:
        async with asyncio.timeout(login.connect_timeout_s):
            conn = await SideConnection.open(login, application_name="veilgate-health")
    except TimeoutError:
        return Check(name, False, f"timeout connecting to {login.host}:{login.port}")
    except UpstreamError as e:
        # the client-safe message plus the reason slug; the detail may name internals
        where = f"{login.host}:{login.port} as {login.user}"
        return Check(name, False, f"{e.reason}: {e.message} ({where})")
    except (OSError, SideConnectionError) as e:
        return Check(name, False, f"cannot connect to {login.host}:{login.port}: {e}")
    conn.close()
    return Check(name, True)


async def upstream_checks(config: GatewayConfig) -> list[Check]:
    jobs = [
        upstream_check(name, login)
        for target in config.targets.values()
        for name, login in logins(target)
    ]
    return list(await asyncio.gather(*jobs))


def identity_checks(authenticator: object) -> list[Check]:
    """Each OIDC key cache: fresh, or stale within its serve-stale window."""
    current = getattr(authenticator, "current", authenticator)
    oidc = getattr(current, "oidc", None)
    caches = getattr(oidc, "caches", None) or {}
    out = []
    for name, cache in sorted(caches.items()):
        state, past = cache.status()
        if state == "fresh":
            out.append(Check(f"identity:{name}", True))
        elif state == "stale":
            detail = (
                f"keys stale for {past:.0f}s (served up to {cache.max_stale_s:.0f}s); "
                f"last error: {cache.last_error or 'none'}"
            )
            out.append(Check(f"identity:{name}", True, detail))
        else:
            detail = f"no usable signing keys; last error: {cache.last_error or 'not fetched'}"
            out.append(Check(f"identity:{name}", False, detail))
    return out


async def refresh_identity(authenticator: object) -> None:
    """Refresh every expired key cache (keeps keys fresh while nobody logs in)."""
    current = getattr(authenticator, "current", authenticator)
    caches = getattr(getattr(current, "oidc", None), "caches", None) or {}
    for cache in caches.values():
        if cache.status()[0] != "fresh":
            with contextlib.suppress(Exception):  # the cache logs and keeps its last error
                await cache.refresh()


def masking_key_check(policy: Policy | None) -> Check | None:
    """The keyed-hash masking key is present (only when the policy hashes)."""
    from veilgate.masking.policy import MaskingUnavailable

    masking = policy.masking if policy is not None else None
    if masking is None or not masking.uses_hash:
        return None
    try:
        masking.hash_key()
    except MaskingUnavailable as e:
        return Check("masking_key", False, str(e))
    return Check("masking_key", True)


def certificate_checks(config: GatewayConfig, now: _dt.datetime | None = None) -> list[Check]:
    """The client-facing certificate is valid now and for ``health.certificate_min_days``."""
    from cryptography import x509

    path = config.tls.cert_file
    if path is None:
        return []
    now = now or _dt.datetime.now(_dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        return [Check("tls_certificate", False, f"{path}: {e}")]
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    window = _dt.timedelta(days=config.health.certificate_min_days)
    expires = f"{path}: expires {after.isoformat()}"
    if now < before:
        return [Check("tls_certificate", False, f"{path}: not valid before {before.isoformat()}")]
    if now >= after:
        return [Check("tls_certificate", False, f"{expires} (expired)")]
    if now + window >= after:
        days = config.health.certificate_min_days
        return [Check("tls_certificate", False, f"{expires}, within {days:g} days")]
    return [Check("tls_certificate", True, expires)]


def audit_check(recorder: AuditHealth | None) -> Check | None:
    """The session record is being written (the recorder's own health)."""
    if recorder is None:
        return None
    info = recorder.health()
    if recorder.blocked or not info.get("healthy", True):
        return Check(
            "audit", False, str(info.get("error") or "the session record cannot be written")
        )
    return Check("audit", True)


def audit_dir_check(config: GatewayConfig) -> Check | None:
    """Before a rollout: the recorder's directory can be written (created if missing)."""
    if config.audit is None:
        return None
    d = Path(config.audit.dir)
    try:
        d.mkdir(mode=0o700, parents=False, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".veilgate-check-"):
            pass
    except OSError as e:
        return Check("audit", False, f"{d}: {e.strerror or e}")
    return Check("audit", True)


async def strict_checks(config: GatewayConfig) -> list[Check]:
    """``veilgate config check --strict``: what ``/readyz`` checks, run once from here."""
    from veilgate.identity.combined import GatewayAuthenticator
    from veilgate.identity.live import aclose, prefetch
    from veilgate.policy.loader import load_policy

    authenticator = GatewayAuthenticator.from_config(config)
    try:
        await prefetch(authenticator)
        out = await upstream_checks(config)
        out += identity_checks(authenticator)
    finally:
        await aclose(authenticator)
    policy = load_policy(config.policy.file) if config.policy is not None else None
    for check in (masking_key_check(policy), audit_dir_check(config)):
        if check is not None:
            out.append(check)
    return out + certificate_checks(config)


def failing(checks: Iterable[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


# -- /readyz ------------------------------------------------------------------------------------


class Readiness:
    """The checks ``/readyz`` answers from; :meth:`run` keeps the upstream and identity parts
    current in the background."""

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        authenticator: object,
        policy: Callable[[], Policy | None],
        recorder: Callable[[], AuditHealth | None],
    ) -> None:
        self._config = config
        self._authenticator = authenticator
        self._policy = policy
        self._recorder = recorder
        self.draining = False
        self._upstream: list[Check] | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Check upstream again now (after a reload)."""
        self._wake.set()

    async def run(self) -> None:
        """Forever: refresh identity keys, try every upstream login, sleep the interval."""
        while True:
            self._wake.clear()
            cfg = self._config()
            try:
                await refresh_identity(self._authenticator)
                checks = await upstream_checks(cfg)
            except Exception:  # a bug here must never stop the checks
                _log.exception("readiness check failed")
            else:
                if self._upstream is None or failing(checks) != failing(self._upstream):
                    log.event(
                        _log,
                        "upstream_checked",
                        logging.INFO if not failing(checks) else logging.WARNING,
                        failing=failing(checks),
                    )
                self._upstream = checks
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.health.upstream_interval_s):
                    await self._wake.wait()

    def checks(self) -> list[Check]:
        cfg = self._config()
        out: list[Check] = [Check("draining", not self.draining)]
        if self._upstream is None:
            out.append(Check("upstream", False, "not checked yet"))
        else:
            out += self._upstream
        out += identity_checks(self._authenticator)
        for check in (masking_key_check(self._policy()), audit_check(self._recorder())):
            if check is not None:
                out.append(check)
        out += certificate_checks(cfg)
        return out

    def report(self) -> tuple[bool, dict[str, Any]]:
        checks = self.checks()
        bad = failing(checks)
        body: dict[str, Any] = {
            "status": "ready" if not bad else "not_ready",
            "failing": bad,
            "checks": {c.name: c.to_json() for c in checks},
        }
        return not bad, body
