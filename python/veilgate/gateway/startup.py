"""Client StartupMessage handling: protocol version negotiation and the parameter allow-list.

Sans-IO: :func:`negotiate_startup` takes a parsed :class:`~veilgate.pgwire.wire.StartupPacket`
and returns what to do, or raises :class:`StartupRefused` with the FATAL to send.

Parameter policy (a startup parameter is a GUC the server applies with the login role's
privileges, so only harmless ones pass):

* ``user``, ``database``, ``application_name`` are consumed by the gateway (identity context and
  target selection); the upstream gets the target's role and database, and the client's own
  ``application_name`` or the principal's tag (:func:`upstream_application_name`).
* :data:`FORWARDED_PARAMS` are forwarded upstream unchanged.
* ``replication`` and ``options`` are refused (``28000``): walsender mode and ``-c`` settings
  (``role``, ``search_path``, ``default_transaction_read_only``...) bypass statement policy.
* ``_pq_.*`` protocol options are not supported: listed in NegotiateProtocolVersion and ignored.
* Anything else is refused (``28000``) with the parameter's name, rather than silently dropped;
  clients can ``SET`` it after connecting, where policy sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from veilgate.pgwire import wire

SUPPORTED_MAJOR = 3
NEWEST_MINOR = 0
"""The gateway speaks protocol 3.0 to clients (4-byte cancel keys)."""

CONSUMED_PARAMS = frozenset({"user", "database", "application_name"})
FORWARDED_PARAMS = frozenset(
    {"client_encoding", "DateStyle", "TimeZone", "extra_float_digits", "IntervalStyle"}
)
REFUSED_PARAMS = frozenset({"replication", "options"})

_CANONICAL = {name.lower(): name for name in CONSUMED_PARAMS | FORWARDED_PARAMS}


class StartupRefused(Exception):
    """The startup packet is refused: send ``FATAL <code> <message>`` and close."""

    def __init__(self, code: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        """Short slug for logs and metrics."""


@dataclass(frozen=True, slots=True)
class ClientStartup:
    user: str
    database: str
    application_name: str | None
    forwarded: tuple[tuple[str, str], ...]
    """Parameters to send upstream, in the client's order."""
    negotiate: bytes | None
    """A NegotiateProtocolVersion message to send before authentication, if needed."""


def negotiate_startup(packet: wire.StartupPacket) -> ClientStartup:
    """Apply version negotiation and the parameter allow-list to a client StartupMessage."""
    if packet.major != SUPPORTED_MAJOR:
        raise StartupRefused(
            "08P01",
            f"unsupported frontend protocol {packet.major}.{packet.minor}: "
            f"server supports {SUPPORTED_MAJOR}.0 to {SUPPORTED_MAJOR}.{NEWEST_MINOR}",
            "unsupported_protocol",
        )
    user: str | None = None
    database: str | None = None
    application_name: str | None = None
    forwarded: list[tuple[str, str]] = []
    unrecognised: list[str] = []
    seen: set[str] = set()
    for raw_name, value in packet.params:
        if raw_name.startswith("_pq_."):
            unrecognised.append(raw_name)
            continue
        if raw_name in REFUSED_PARAMS or raw_name.lower() in REFUSED_PARAMS:
            raise StartupRefused(
                "28000",
                f'startup parameter "{raw_name}" is not allowed through this gateway',
                f"param_{raw_name.lower()}",
            )
        name = _CANONICAL.get(raw_name.lower())
        if name is None:
            raise StartupRefused(
                "28000",
                f'startup parameter "{raw_name}" is not allowed through this gateway',
                "param_unknown",
            )
        if name in seen:
            raise StartupRefused(
                "08P01", f'duplicate startup parameter "{raw_name}"', "param_duplicate"
            )
        seen.add(name)
        if name == "user":
            user = value
        elif name == "database":
            database = value
        elif name == "application_name":
            application_name = value
        else:
            forwarded.append((name, value))
    if not user:
        raise StartupRefused(
            "28000", "no PostgreSQL user name specified in startup packet", "no_user"
        )
    negotiate = None
    if packet.minor > NEWEST_MINOR or unrecognised:
        negotiate = wire.negotiate_protocol_version(
            (SUPPORTED_MAJOR << 16) | NEWEST_MINOR, unrecognised
        )
    return ClientStartup(
        user=user,
        database=database or user,
        application_name=application_name,
        forwarded=tuple(forwarded),
        negotiate=negotiate,
    )


def _principal_tag(label: str) -> str:
    """``veilgate(<label>)`` cut to 63 bytes (NAMEDATALEN - 1) on a character boundary."""
    name = f"veilgate({label})"
    raw = name.encode()
    if len(raw) <= 63:
        return name
    return raw[:63].decode("utf-8", "ignore")


def upstream_application_name(
    label: str, client_app: str | None = None, *, tagged: bool = False
) -> str:
    """The upstream ``application_name`` (what ``pg_stat_activity`` shows).

    Untagged (a target's ``application_name: client``): the client's own value verbatim, so
    ``SHOW application_name`` answers what it would direct; ``veilgate(<label>)`` when the client
    gave none.  Tagged: ``veilgate(<label>)`` first, then the client's own after a space: the
    tag comes first so that the 63 bytes ``pg_stat_activity`` keeps always hold the principal."""
    if client_app and not tagged:
        return client_app
    tag = _principal_tag(label)
    return f"{tag} {client_app}" if client_app else tag


class ApplicationName:
    """The upstream ``application_name`` names the principal; the client is told its own.

    The server reports ``application_name`` in ParameterStatus at startup and whenever it
    changes (``SET``, ``RESET``, a rolled-back ``SET``).  A report of the gateway's upstream
    value reaches the client as the client's own part of it (the server cleans what it is given,
    e.g. non-ASCII bytes, so the client sees what a direct connection would report); any other
    value is one the client set itself and passes unchanged."""

    __slots__ = ("client", "upstream")

    def __init__(self, upstream: str, client: str) -> None:
        self.upstream = upstream
        """The value the server reported for the gateway's upstream name."""
        self.client = client
        """What the client is told instead."""

    @classmethod
    def from_parameters(
        cls, frames: list[bytes], label: str, client: str | None, *, tagged: bool = False
    ) -> ApplicationName:
        """From the server's startup ParameterStatus messages, for the principal ``label``, the
        client's startup ``application_name`` and the target's mode (see
        :func:`upstream_application_name`)."""
        reported: str | None = None
        for f in frames:
            try:
                name, value = wire.parse_parameter_status(f[5:])
            except wire.WireError:
                continue
            if name == "application_name":
                reported = value
        if reported is None:
            return cls("", client or "")
        tag = _principal_tag(label)
        if not client:
            return cls(reported, "")
        if not tagged:
            # the server's report of the client's own value (cleaned by it, as direct)
            return cls(reported, reported)
        prefix = f"{tag} "
        own = reported[len(prefix) :] if reported.startswith(prefix) else client
        return cls(reported, own)

    def client_frame(self, frame: bytes) -> bytes:
        """``frame`` (a ParameterStatus) as the client should see it."""
        if not frame.startswith(b"S", 0) or b"application_name\0" not in frame[:23]:
            return frame
        try:
            name, value = wire.parse_parameter_status(frame[5:])
        except wire.WireError:
            return frame
        if name != "application_name" or value != self.upstream:
            return frame
        return wire.parameter_status("application_name", self.client)
