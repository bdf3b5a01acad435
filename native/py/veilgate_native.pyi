"""veilgate's native engine: zero-copy receive buffers and PostgreSQL message framing.

The engine sees bytes, never sockets, policy files or tokens.  A connection side owns one
``RecvBuffer``; the event loop reads straight into it (buffer protocol), and ``advance`` walks the
complete messages, returning what to forward and the messages the control plane asked to see.
"""

from typing import Final, final

__all__ = [
    "CLIENT",
    "MAX_STARTUP_PACKET",
    "SERVER",
    "FramingError",
    "Message",
    "RecvBuffer",
    "SessionState",
    "latency_histogram",
    "stats",
]

CLIENT: Final[int]
"""Direction of a buffer that receives from the client (frontend messages)."""
SERVER: Final[int]
"""Direction of a buffer that receives from the upstream server (backend messages)."""

MAX_STARTUP_PACKET: Final[int]
"""Largest untagged startup packet accepted (10000 bytes, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH)."""

class FramingError(ValueError):
    """Malformed input: a length below 4, a message over ``max_message``, a bad startup length."""

@final
class Message:
    """One whole message surfaced as an event (a copy: it never aliases the receive buffer)."""

    @property
    def tag(self) -> int:
        """Type byte, e.g. ``ord('Q')``."""
    @property
    def body(self) -> bytes:
        """Payload without the type byte and the Int32 length."""
    def frame(self) -> bytes:
        """The whole message as it arrived: tag, length, body."""
    def __len__(self) -> int:
        """Length of the whole message (``len(m.frame())``)."""

@final
class SessionState:
    """Shared by the two buffers of one client session.

    The client-side buffer counts requests that end with a ReadyForQuery (Query, Sync,
    FunctionCall) and notes extended-protocol messages sent since the last Sync; the server-side
    buffer counts ReadyForQuery.  From that it knows whether a statement is running (cancel is only
    forwarded then) and records statement latency into the process-wide histogram.

    COPY FROM STDIN is accounted for: a Sync the server ignores in copy-in mode (one pipelined
    right behind the COPY's Execute, or one sent before CopyDone / CopyFail) is not counted.
    """

    def __init__(self) -> None: ...
    @property
    def pending(self) -> int:
        """Requests forwarded upstream not yet answered by ReadyForQuery."""
    @property
    def busy(self) -> bool:
        """True while the server may be executing something for this client."""
    @property
    def tx_status(self) -> int:
        """Status byte of the last ReadyForQuery (``ord('I')``, ``'T'`` or ``'E'``); 0 before any."""
    def discard_request(self) -> bool:
        """Forget the oldest pending request without recording a latency.

        For a request the gateway answered itself (e.g. a denied Query it never forwarded): the
        client-side buffer counted it, and no ReadyForQuery from the server will pop it.
        Returns False if nothing was pending.
        """

@final
class RecvBuffer:
    """A receive buffer the event loop writes into directly.

    Protocol: ``get_buffer(hint)`` calls :meth:`prepare` and returns the buffer itself (it exports
    only its writable free tail, and ``len()`` is that tail's length); ``buffer_updated(n)`` calls
    :meth:`advance`.  Compaction and growth happen only in :meth:`prepare`, never while exported.
    """

    # A pyo3 constructor is ``__new__`` at runtime; declaring it so keeps stubtest exact.
    def __new__(
        cls,
        direction: int,
        session: SessionState | None = None,
        *,
        capacity: int = 65536,
        max_message: int = 1 << 30,
    ) -> RecvBuffer:
        """``direction`` is :data:`CLIENT` or :data:`SERVER`.  With a ``session``, a client-side
        buffer counts requests into it and a server-side one answers them (ReadyForQuery).
        ``capacity`` is the initial size (the buffer grows to fit event messages and shrinks
        back when empty); ``max_message`` is the largest message body accepted."""
    def prepare(self, sizehint: int) -> None:
        """Make room for the next read (compact, grow to fit a pending event message).

        Raises ``BufferError`` if a view of the buffer is still exported.
        """
    def __len__(self) -> int:
        """Length of the writable free tail (never 0 after :meth:`prepare`)."""
    def __buffer__(self, flags: int, /) -> memoryview:
        """The writable free tail, as ``memoryview(rb)`` (so a ``RecvBuffer`` is a
        ``collections.abc.Buffer`` and can be returned from ``get_buffer``)."""
    def advance(self, n: int) -> None | bytes | list[bytes | Message]:
        """Account for ``n`` bytes just received and frame everything complete.

        Returns ``None`` when there is nothing to do yet, ``bytes`` when everything framed is to be
        forwarded as is (the fast path: one call, one write), or a list, in stream order, of byte
        chunks to forward and :class:`Message` events (the tags chosen with :meth:`set_events`).
        A pass-through message that has only partly arrived is forwarded as far as it has arrived
        (so a huge row never has to fit in the buffer: it streams out in pieces); event messages
        (and ReadyForQuery on a server-side buffer with a session) are buffered whole, up to
        ``max_message``.  In startup mode nothing is framed: use
        :meth:`take_startup`.  ``advance(0)`` frames what is already buffered.

        Raises :class:`FramingError` on malformed input; the connection must then be closed.
        """
    def take_startup(self) -> bytes | None:
        """Remove and return one whole untagged startup packet (Int32 length included), or
        ``None`` if it has not fully arrived.  Raises :class:`FramingError` on a bad length."""
    def set_startup_mode(self, on: bool) -> None:
        """Untagged packets (startup) when on; tagged messages when off (the default)."""
    def set_events(self, tags: bytes) -> None:
        """Message tags to surface as :class:`Message` events; every other message is forwarded."""
    def set_all_events(self, on: bool) -> None:
        """Surface every message as an event (handshake phases), overriding :meth:`set_events`."""
    @property
    def max_message(self) -> int:
        """Largest message body accepted (bytes after the Int32 length); larger is a
        :class:`FramingError`.  Lower it during handshakes."""
    @max_message.setter
    def max_message(self, value: int) -> None: ...
    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned."""
    @property
    def capacity(self) -> int: ...
    @property
    def direction(self) -> int:
        """:data:`CLIENT` or :data:`SERVER`, as given to the constructor."""
    @property
    def exports(self) -> int:
        """Live buffer-protocol exports (1 while the loop is reading into it)."""

def stats() -> dict[str, int]:
    """Process-wide counters: ``client_bytes``, ``client_messages``, ``server_bytes``,
    ``server_messages`` (received by all buffers of that direction)."""

def latency_histogram() -> tuple[list[float], list[int], float, int]:
    """Statement latency (request to ReadyForQuery) across all sessions: bucket upper bounds in
    seconds, cumulative counts per bucket, sum of seconds, total count (Prometheus shape)."""
