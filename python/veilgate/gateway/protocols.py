"""What the policy enforcer and the approval gate need of their session.

:class:`~veilgate.gateway.session.Session` is both; protocols, so that
:mod:`veilgate.gateway.enforce` and :mod:`veilgate.gateway.approval` do not import the session
that imports them, nor each other for a type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import veilgate_native as native

    from veilgate.gateway._relay import RelayProtocol
    from veilgate.gateway.masking import MaskingRelay
    from veilgate.gateway.recording import SessionRecording

__all__ = ["ApprovalSession", "EnforcedSession"]


class ApprovalSession(Protocol):
    """What an approval gate (:class:`~veilgate.gateway.approval.ApprovalGate`) needs."""

    @property
    def peer(self) -> str: ...
    @property
    def current_stmt_id(self) -> int: ...
    @property
    def client(self) -> RelayProtocol: ...
    @property
    def masking(self) -> MaskingRelay | None: ...
    @property
    def recording(self) -> SessionRecording | None: ...
    def write_client(self, data: bytes) -> None: ...
    def set_upstream_events(self) -> None: ...
    @property
    def state(self) -> native.SessionState: ...


class EnforcedSession(ApprovalSession, Protocol):
    """What the policy enforcer (:class:`~veilgate.gateway.enforce.PolicyEnforcer`) needs: what
    its approval gate needs, and more."""

    @property
    def upstream_parameters(self) -> list[bytes]: ...
    @property
    def upstream_transport(self) -> Any: ...
    def set_client_events(self) -> None: ...
