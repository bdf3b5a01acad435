"""veilgate's native engine: zero-copy receive buffers and PostgreSQL message framing.

The engine sees bytes, never sockets, policy files or tokens.  A connection side owns one
``RecvBuffer``; the event loop reads straight into it (buffer protocol), and ``advance`` walks the
complete messages, returning what to forward and the messages the control plane asked to see.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias, final

__version__: Final[str]
"""The engine's version (the crate's, which moves with the ``veilgate`` distribution)."""

__all__ = [
    "BUILTIN_ENTITIES",
    "__version__",
    "AuditRecorder",
    "CLIENT",
    "MAX_STARTUP_PACKET",
    "SERVER",
    "JSONB",
    "KEEP",
    "NULL",
    "TEXT",
    "TYPED",
    "Codec",
    "CopyPlan",
    "DecisionLog",
    "FramingError",
    "MaskingError",
    "JsonMasker",
    "Masker",
    "Message",
    "Operator",
    "RecvBuffer",
    "RowPlan",
    "SealedBatch",
    "SessionState",
    "GrantHandle",
    "VerdictCache",
    "latency_histogram",
    "may_have_effects",
    "shape_key",
    "sql_tokens",
    "statement_excerpt",
    "stats",
    "TlsClientConfig",
    "TlsConnection",
    "TlsError",
    "TlsServerConfig",
    "grant_hits",
    "verdict_hits",
]

CLIENT: Final[int]
"""Direction of a buffer that receives from the client (frontend messages)."""
SERVER: Final[int]
"""Direction of a buffer that receives from the upstream server (backend messages)."""

MAX_STARTUP_PACKET: Final[int]
"""Largest untagged startup packet accepted (10000 bytes, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH)."""

class FramingError(ValueError):
    """Malformed input: a length below 4, a message over ``max_message``, a bad startup length."""

class TlsError(FramingError):
    """The peer broke TLS (a bad record, a failed handshake, a refused certificate).  The
    connection then only hands out the alert it owes the peer."""

class MaskingError(ValueError):
    """A row could not be masked (no plan while masking is required, a column count other than
    the plan's, a malformed row): nothing of it was forwarded; close the session."""

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
    @property
    def stmt_id(self) -> int:
        """On a recorded session, the statement log's id of a Query, Parse, Bind, Execute or
        FunctionCall (pass it to :meth:`SessionState.note_decision`); 0 otherwise."""
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
    def since_ready(self) -> int:
        """Client messages framed since the server last answered everything (a ReadyForQuery
        with nothing pending or unsynced); 1 while the message being judged is the only one."""
    @property
    def busy(self) -> bool:
        """True while the server may be executing something for this client."""
    @property
    def tx_status(self) -> int:
        """Status byte of the last ReadyForQuery (``ord('I')``, ``'T'`` or ``'E'``); 0 before any."""
    @property
    def statements(self) -> int:
        """Requests the server answered with ReadyForQuery (the session's statement count)."""
    def latency(self) -> tuple[list[int], float]:
        """This session's statement latencies: non-cumulative counts per bucket of
        :func:`latency_histogram`'s bounds plus one for ``+Inf``, and their sum in seconds."""
    def error_classes(self) -> dict[str, int]:
        """Errors by SQLSTATE class (``"42"``; ``"??"`` without a valid code): the server's
        ErrorResponses and the gateway's own refusals (``discard_request(sqlstate)``); at most
        32 classes per session, later ones counted as ``"??"``."""
    def discard_request(self, sqlstate: str | None = None) -> bool:
        """Forget the oldest pending request without recording a latency.

        For a request the gateway answered itself (e.g. a denied Query it never forwarded): the
        client-side buffer counted it, and no ReadyForQuery from the server will pop it.  On a
        recorded session the statement is recorded as refused with ``sqlstate``.
        Returns False if nothing was pending.
        """
    def start_recording(
        self,
        recorder: AuditRecorder,
        sid: str,
        *,
        max_excerpt: int = 2048,
        redact_literals: bool = False,
        decisions: bool = True,
    ) -> None:
        """Record this session's statements into ``recorder`` as session ``sid``.

        The receive buffers must be told too (:meth:`RecvBuffer.set_recording`).  Each statement
        is recorded when it ends: its text (an excerpt of at most ``max_excerpt`` bytes;
        credentials always redacted, every constant too with ``redact_literals``), fingerprint,
        path, decision, command tag, rows, response bytes, SQLSTATE and duration.
        ``decisions``: a policy will decide on Parse and Bind messages (their ids are kept for
        :meth:`note_decision`); without one, nothing is kept per message.
        """
    def note_decision(
        self,
        stmt_id: int,
        action: str,
        rule: str,
        fingerprint: str = "",
        sqlstate: str | None = None,
        approval: str | None = None,
    ) -> bool:
        """Attach the policy's decision to the message ``stmt_id`` (:attr:`Message.stmt_id`): a
        Query, FunctionCall or Execute is that statement; a Parse or Bind is the statement it
        prepares or binds (its executions carry it).  ``sqlstate``: the gateway refused it with
        that SQLSTATE as it decided.  False if the id is unknown (or the session is not
        recorded)."""
    def note_refused(self, stmt_id: int, sqlstate: str) -> bool:
        """The gateway answered the message ``stmt_id`` with ``sqlstate`` instead of running it
        (a Bind: the Execute that follows it); the statement is recorded as refused."""
    def finish_recording(self) -> dict[str, Any] | None:
        """End the recording (statements in flight are recorded as interrupted) and return the
        totals: ``statements``, ``errors``, ``refused`` (not let run), ``denied``, ``held``,
        ``rows``, ``bytes``, and ``fingerprints``: the session's distinct statements as
        ``(fingerprint, excerpt)`` pairs (at most 1024).  None if not recorded."""
    @property
    def recording(self) -> bool:
        """Whether the session's statements are recorded."""

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
    def prepare(self, sizehint: int) -> bool:
        """Make room for the next read (compact, grow to fit a pending event message).

        Raises ``BufferError`` if a view of the buffer is still exported.  Returns whether TLS
        is attached (:meth:`attach_tls`): the loop then reads ciphertext into a buffer that
        never moves (nothing to do here, no error for live views), so one view of this buffer
        may serve every read.
        """
    def __len__(self) -> int:
        """Length of the writable free tail (never 0 after :meth:`prepare`)."""
    def __buffer__(self, flags: int, /) -> memoryview:
        """The writable free tail, as ``memoryview(rb)`` (so a ``RecvBuffer`` is a
        ``collections.abc.Buffer`` and can be returned from ``get_buffer``)."""
    def advance(self, n: int, encrypt: bool = False) -> None | bytes | list[bytes | Message]:
        """Account for ``n`` bytes just received and frame everything complete.

        With TLS attached (:meth:`attach_tls`) the ``n`` bytes are ciphertext, decrypted first
        (a bad record raises :class:`TlsError`).  With ``encrypt`` and an output connection
        (:meth:`set_output_tls`), a batch with no event comes back as the TLS records to write
        to the peer instead of its plaintext (write them at once: records are numbered); a
        batch with events still comes back as the plaintext list.

        Returns ``None`` when there is nothing to do yet, ``bytes`` when everything framed is to be
        forwarded as is (the fast path: one call, one write), or a list, in stream order, of byte
        chunks to forward and :class:`Message` events (the tags chosen with :meth:`set_events`).
        A pass-through message that has only partly arrived is forwarded as far as it has arrived
        (so a huge row never has to fit in the buffer: it streams out in pieces); event messages
        (and ReadyForQuery on a server-side buffer with a session) are buffered whole, up to
        ``max_message``.  In startup mode nothing is framed: use
        :meth:`take_startup`.  ``advance(0)`` frames what is already buffered.

        Raises :class:`FramingError` on malformed input; the connection must then be closed.

        With a row plan installed (:meth:`set_row_plan`) the plan's rows come out rewritten, in
        place, inside the forwarded ``bytes`` (still one object per run between events).  Stops
        after a barrier event (:meth:`set_barrier_events`).  Raises :class:`MaskingError` when a
        row cannot be masked, or arrives with no plan while masking is required; nothing of that
        read is returned and the connection must be closed.
        """
    def take_startup(self) -> bytes | None:
        """Remove and return one whole untagged startup packet (Int32 length included), or
        ``None`` if it has not fully arrived.  Raises :class:`FramingError` on a bad length."""
    def set_startup_mode(self, on: bool) -> None:
        """Untagged packets (startup) when on; tagged messages when off (the default)."""
    def set_events(self, tags: bytes) -> None:
        """Message tags to surface as :class:`Message` events; every other message is forwarded."""
    def set_recording(self, on: bool) -> None:
        """The session (its :class:`SessionState`) is recorded: frame whole the messages the
        statement log reads, and track the server's outcomes.  Call it after
        :meth:`SessionState.start_recording` (what the server sent before, the start-up, is
        no statement's response)."""
    def set_all_events(self, on: bool) -> None:
        """Surface every message as an event (handshake phases), overriding :meth:`set_events`."""
    def set_verdicts(
        self,
        cache: VerdictCache | None,
        scope: int = 0,
        *,
        max_frame: int = ...,
        events: bool = False,
        log: DecisionLog | None = None,
        log_prefix: bytes = ...,
        max_sql_bytes: int = 4096,
        record_sql: bool = True,
        grant_scope: int | None = None,
        queries: bool = True,
        parses: Sequence[tuple[bytes, bytes, Any, str, str, bytes | None]] | None = None,
    ) -> None:
        """Client buffers: forward, without surfacing it, every Query that ``cache`` allows
        under decision scope ``scope`` (its decision goes to the statement log at once); None
        surfaces every Query again.  Query messages larger than ``max_frame`` bytes, text that
        is not UTF-8 or whose namespace effects the mirror must see always surface, as does
        every Query once the cache was cleared after arming.  ``events``: keep each hit's
        verdict and text for :meth:`take_verdict_hits`.  ``log``: write each hit's
        decision-log line to it natively (``{"ts":..., <log_prefix>, <the entry's event>,
        "sql":<excerpt of at most max_sql_bytes, credentials redacted>, "sql_len":...}``, the
        ``sql`` member only with ``record_sql``), the lines of a read in one write; entries
        inserted without ``event`` then surface.  ``grant_scope``: the principal's standing
        grants (:meth:`VerdictCache.insert_grant`), looked up when ``scope`` has no entry; a
        grant's entry answers only while its :class:`GrantHandle` is live, and counts the use
        there (with a ``log`` it surfaces: it has no line).  ``queries``: answer Queries (else
        only ``parses``).  ``parses``: (name, text, verdict, rule, fingerprint, decision-log
        members or None) of statements the server holds whose re-Parse (same name, same text,
        any parameter types) is answered as a Query hit is (counted, logged, kept with
        ``events``), while the cache's generation is the one armed.  ``ValueError`` on a
        server buffer."""
    @property
    def verdicts_armed(self) -> bool:
        """A verdict cache is installed (:meth:`set_verdicts`)."""
    @property
    def verdict_events(self) -> int:
        """Answered Queries waiting with their verdicts (armed with ``events``)."""
    def take_grant_hits(self) -> int:
        """Of the Queries answered natively since the last call, those run on standing
        grants."""
    def take_verdict_hits(self) -> tuple[int, list[tuple[Any, bytes]]]:
        """The Queries answered natively since the last call: their count, and (verdict, text)
        of each in order when armed with ``events``."""
    def set_barrier_events(self, tags: bytes) -> None:
        """Event tags after which :meth:`advance` stops: it returns the actions up to and
        including such an event and leaves the rest unframed (:attr:`at_barrier` is then true).
        Install a plan, then call ``advance(0)`` to go on.  A tag only acts as a barrier while it
        is also an event (:meth:`set_events`)."""
    @property
    def at_barrier(self) -> bool:
        """The last :meth:`advance` stopped at a barrier event (bytes may remain buffered)."""
    def set_row_plan(self, plan: RowPlan | CopyPlan | None) -> None:
        """Mask the rows of the current result set (server buffers only).

        From the next unframed byte on, every DataRow (:class:`RowPlan`) or CopyData
        (:class:`CopyPlan`) is rewritten through ``plan``, until a message that ends the result
        set clears it, in stream order: CommandComplete, PortalSuspended, EmptyQueryResponse,
        ErrorResponse, ReadyForQuery, NoData, RowDescription (a new result set needs a new plan)
        and CopyDone.  Install it after the RowDescription / CopyOutResponse (a barrier event).
        While a plan is active its rows, and the messages that end it, are buffered whole (up to
        ``max_message``); rewritten rows and the messages around them still leave as one
        ``bytes`` per run.  ``None`` removes the plan.  A plan that keeps every column
        (``is_passthrough``) reads no row.  A row the plan cannot rewrite raises
        :class:`MaskingError` from :meth:`advance` and fails the buffer for good.
        ``ValueError`` on a client buffer, ``TypeError`` for another object."""
    @property
    def row_plan_active(self) -> bool:
        """A plan is installed and its result set has not ended yet."""
    def set_mask_required(self, on: bool) -> None:
        """While on, a DataRow or CopyData with no active plan makes :meth:`advance` raise
        :class:`MaskingError` (as soon as its header arrives; nothing of it is returned, and
        asking again raises again).  Server buffers only."""
    @property
    def mask_required(self) -> bool: ...
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
    def attach_tls(self, conn: TlsConnection) -> int:
        """This side's TLS connection, after its handshake: the loop then reads ciphertext into
        a buffer of its own (what ``len()`` and the buffer protocol give), and :meth:`advance`
        decrypts it here.  Plaintext the connection decrypted already is received at once; its
        length is returned.  ``ValueError`` if one is attached already, ``BufferError`` while
        exported."""
    def set_output_tls(self, conn: TlsConnection | None) -> None:
        """The peer's TLS connection, which ``advance(n, encrypt=True)`` encrypts into."""
    @property
    def tls(self) -> bool:
        """A TLS connection is attached."""

# --- TLS: the record layer of both sides (veilgate_core::tls, rustls) ---

@final
class TlsServerConfig:
    """The gateway's client-facing TLS: TLS 1.2 and 1.3, ALPN ``postgresql`` (a client
    offering only other protocols is refused), records of at most 8 KiB of plaintext."""

    def __new__(cls, cert_pem: bytes, key_pem: bytes) -> TlsServerConfig:
        """A PEM certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1);
        ``ValueError`` naming what cannot be used (never quoting key material)."""
    @property
    def certificate(self) -> bytes:
        """The leaf certificate (DER)."""

@final
class TlsClientConfig:
    """An upstream TLS configuration (rustls resumes sessions per configuration)."""

    def __new__(
        cls,
        mode: str,
        ca_pem: bytes | None = None,
        *,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
    ) -> TlsClientConfig:
        """``mode`` is PostgreSQL's ``require`` (any certificate), ``verify-ca`` (the chain) or
        ``verify-full`` (chain and host name); the last two need ``ca_pem``.  ``cert_pem`` and
        ``key_pem`` give a client certificate.  ALPN ``postgresql``, TLS 1.2 and 1.3."""

@final
class TlsConnection:
    """One TLS connection, sans-IO: :meth:`feed` ciphertext from the peer, write what
    :meth:`take_ciphertext` returns, until :attr:`handshaking` is false; then attach it to the
    side's :class:`RecvBuffer`.  Also the ``ssl_object`` of its transport (the methods named
    as ``ssl.SSLObject``'s)."""

    @staticmethod
    def server(config: TlsServerConfig) -> TlsConnection:
        """The gateway's end of a client's connection."""
    @staticmethod
    def client(config: TlsClientConfig, server_name: str) -> TlsConnection:
        """The gateway's end of an upstream connection; ``server_name`` (DNS name or IP
        address) is what ``verify-full`` checks."""
    def feed(self, data: bytes) -> int:
        """Ciphertext from the peer; returns the plaintext waiting for :meth:`take_plaintext`.
        :class:`TlsError` on a bad record or a failed handshake (:meth:`take_ciphertext` then
        has the alert for the peer), and on every call after."""
    def take_plaintext(self) -> bytes: ...
    def write_plaintext(self, data: bytes) -> None:
        """Queue plaintext to send (records of at most 8 KiB)."""
    def take_ciphertext(self) -> bytes:
        """The records waiting to be sent (handshake, alerts, application data)."""
    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """:meth:`write_plaintext` then :meth:`take_ciphertext`.  On a broken connection: only
        the alert owed to the peer, no exception, the plaintext dropped."""
    def close_notify(self) -> bytes:
        """close_notify (and whatever waited before it), to write before closing."""
    @property
    def handshaking(self) -> bool: ...
    @property
    def peer_closed(self) -> bool:
        """The peer sent close_notify."""
    @property
    def failed(self) -> str | None:
        """The first error, if any."""
    @property
    def server_side(self) -> bool: ...
    @property
    def certificate(self) -> bytes | None:
        """The gateway's own certificate (DER), on the server side."""
    def selected_alpn_protocol(self) -> str | None: ...
    def version(self) -> str | None:
        """``TLSv1.2`` or ``TLSv1.3``."""
    def cipher(self) -> tuple[str, str, int] | None:
        """(suite, protocol version, secret bits), as ``ssl.SSLObject.cipher()``."""
    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        """The peer's certificate (DER); only ``binary_form=True`` is supported."""

# --- Masking: Masker / Operator (veilgate_core::mask) ---

BUILTIN_ENTITIES: Final[tuple[str, ...]]
"""Entities the built-in detectors find: ``EMAIL``, ``PHONE``, ``CREDIT_CARD``, ``US_SSN``,
``IBAN``, ``IP_ADDRESS``, ``SECRET``."""

@final
class Operator:
    """A masking operator.  Alone it masks whole values (a column rule, counted under
    ``entity``); given to :class:`Masker` it masks the spans of one entity.

    Kinds: ``replace`` (``value``, default the ``<ENTITY>`` tag), ``redact`` (empty string),
    ``partial`` (keep ``keep_first`` / ``keep_last`` ASCII alphanumerics, the others become
    ``mask_char``; other ASCII bytes stay when ``keep_separators``), ``hash`` (HMAC-SHA256 with
    ``key``, deterministic, same length, digits stay digits and letters keep their case) and
    ``null`` (the whole value becomes SQL NULL).  Non-ASCII characters are never split.
    Raises ``ValueError`` on an unknown kind, a ``hash`` without a key, or an option that the
    kind does not take."""

    def __new__(
        cls,
        kind: str,
        *,
        value: str | None = None,
        keep_first: int = 0,
        keep_last: int = 0,
        mask_char: str = "*",
        keep_separators: bool = True,
        key: bytes | None = None,
        entity: str = "COLUMN",
    ) -> Operator: ...
    @property
    def kind(self) -> str:
        """``replace``, ``redact``, ``partial``, ``hash`` or ``null``."""
    @property
    def entity(self) -> str:
        """The entity whole-value masking counts under (and the ``replace`` tag's name)."""
    def apply(self, text: str) -> str | None:
        """``text`` masked as a whole; ``None`` means SQL NULL."""

@final
class Masker:
    """Content detectors with an operator per entity.

    ``entities`` picks built-in entities (``None``: all of :data:`BUILTIN_ENTITIES`);
    ``operators`` maps entity names to operators, the others use ``default_operator``
    (``replace`` with the ``<ENTITY>`` tag).  ``custom_patterns`` adds ``(entity, regex)``
    detectors (Rust regex syntax) and ``dictionaries`` adds whole-word, ASCII case-insensitive
    terms per entity.  Spans never overlap: the longest wins.  Values are found in any script
    (CJK, accented text, emoji and full-width punctuation end an ASCII value; full-width digits
    and separators are read as ASCII and masked in their original characters).  Raises
    ``ValueError`` on an unknown entity name or a bad regex."""

    def __new__(
        cls,
        *,
        entities: Sequence[str] | None = None,
        operators: Mapping[str, Operator] | None = None,
        default_operator: Operator | None = None,
        custom_patterns: Sequence[tuple[str, str]] = (),
        dictionaries: Mapping[str, Sequence[str]] | None = None,
    ) -> Masker: ...
    @property
    def entities(self) -> list[str]:
        """The entities detected: enabled built-ins, then custom ones."""
    def mask(self, text: str) -> str | None:
        """``text`` with every span masked (the same object when nothing was found);
        ``None`` when an operator nulls the value."""
    def mask_bytes(self, data: bytes) -> bytes | None:
        """:meth:`mask` over bytes in any ASCII-compatible encoding."""
    def scan(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, entity)`` per span, in character offsets into ``text``, in order."""
    def mask_batch(self, texts: Sequence[str]) -> list[str | None]:
        """:meth:`mask` over many values in one call (releases the GIL while masking)."""
    def scan_batch(self, texts: Sequence[str]) -> list[list[tuple[int, int, str]]]:
        """:meth:`scan` over many values in one call (releases the GIL while scanning)."""

@final
class JsonMasker:
    """JSON-aware masking of json / jsonb documents (and JSON lines).

    String leaves are decoded (escapes) before detection and encoded again after masking;
    numbers stay numbers (the digits the operator kept, ``0`` when none); keys, literals,
    structure and whitespace are kept, so the result is always valid JSON.  ``paths`` are
    ``(path, mask)`` rules, first match wins: a path (``customer.email``, ``items[*].card``,
    ``*.phone``, ``"a.b".c``) covers the leaves at it and under it; its mask is a
    :class:`Masker`, an :class:`Operator` or ``None`` (keep).  Other leaves get ``default``
    (kept when ``None``).  Text that is not JSON is masked as text by ``default`` and counted
    under ``JSON_INVALID``.  Usable as a column mask in :class:`RowPlan` / :class:`CopyPlan`.
    Raises ``ValueError`` on a bad path."""

    def __new__(
        cls,
        default: Masker | Operator | None = None,
        paths: Sequence[tuple[str, Masker | Operator | None]] = (),
    ) -> JsonMasker: ...
    @property
    def paths(self) -> list[str]:
        """The rules' paths, in order."""
    def mask(self, text: str) -> str | None:
        """The JSON document ``text`` masked (the same object when nothing changed); ``None``
        when an operator nulls it."""

# --- Row plans: rewriting DataRow / CopyData (veilgate_core::rewrite) ---

KEEP: Final[int]
"""Column action: forward the value unchanged."""
NULL: Final[int]
"""Column action: every non-NULL value becomes NULL (right for any type and format)."""
TEXT: Final[int]
"""Column action: the value is text (a text-format column, or a text-like binary one: text,
varchar, bpchar, name, json); mask it with the column's :class:`Masker` or :class:`Operator`."""
JSONB: Final[int]
"""Column action: a binary-format jsonb value (version byte, then text): the text is masked, the
version byte kept.  In text and CSV COPY jsonb is plain text (same as :data:`TEXT`).  (The
planner uses :data:`TYPED` with the jsonb :class:`Codec`, which also keeps the result JSON.)"""
TYPED: Final[int]
"""Column action: a value of the column's :class:`Codec` type in the given format (0 text, 1
binary; text and CSV COPY values are always text): decoded, masked in the type's own domain and
encoded again, so a masked value is still a valid value of its type.  A column is
``(TYPED, mask, codec, format)``."""

@final
class Codec:
    """How the engine reads, masks and writes the values of one PostgreSQL type, in the text and
    the binary wire format (``veilgate_core::codec``).  Immutable, hashable, comparable.

    Kinds: ``text`` (text-likes: the binary format is the text), ``bytea``, ``json``, ``jsonb``
    (the result is always valid JSON), ``int2``, ``int4``, ``int8``, ``numeric`` (digits masked
    into digits, the width / scale kept), ``inet``, ``cidr`` (same family and prefix), ``uuid``,
    ``float4``, ``float8``, ``bool``, ``date``, ``time``, ``timetz``, ``timestamp``,
    ``timestamptz``, ``interval`` (a content scan keeps these; a column rule gives a value of the
    type), ``array`` and ``composite`` (element by element), ``record`` (an anonymous record:
    attribute types from each binary value), ``range`` and ``multirange`` (over a scannable
    subtype: a masked range is ``empty``, a masked multirange drops it), ``hstore`` (keys and
    values as text), ``other`` (kept by a scan, NULL under a rule),
    ``unknown`` (cannot be read: NULL whenever it must be masked).  A value that does not decode
    as its type is masked to NULL."""

    @staticmethod
    def builtin(oid: int) -> Codec | None:
        """The codec of a built-in type OID (arrays of the common ones included), or ``None``."""
    @staticmethod
    def scalar(name: str) -> Codec:
        """A scalar codec by kind name; ``ValueError`` for another name."""
    @staticmethod
    def array(elem: Codec, elem_oid: int, delimiter: str = ",") -> Codec:
        """An array of ``elem`` (whose type OID binary values must name; 0 accepts any), with the
        element type's text delimiter."""
    @staticmethod
    def composite(attributes: Sequence[tuple[int, Codec]]) -> Codec:
        """A named composite: ``(type OID, codec)`` per attribute, in order (OID 0 accepts any)."""
    @staticmethod
    def range(subtype: Codec) -> Codec:
        """A range over ``subtype``: kept unless a bound is masked, then the empty range."""
    @staticmethod
    def multirange(subtype: Codec) -> Codec:
        """A multirange over ranges of ``subtype``: a range with a masked bound is dropped."""
    @property
    def kind(self) -> str:
        """The codec's kind (see the class)."""
    @property
    def scannable(self) -> bool:
        """Whether a content scan could change a value of this type (``False``: a scanned column
        of it can be kept whole)."""
    def transcode(self, value: bytes, format: int) -> bytes | None:
        """``value`` in ``format`` (0 text, 1 binary) re-encoded in the other format as the server
        would send it; ``None`` when it is not a value of the type (arrays, composites, records,
        ``other`` and ``unknown`` are not transcoded: ``None``)."""
    def mask(self, value: bytes, format: int, mask: Masker | Operator | JsonMasker) -> bytes | None:
        """``value`` (in ``format``) masked by ``mask``, in the same format; ``None`` means NULL
        (the mask nulls it, or it does not decode)."""

_PlanColumn: TypeAlias = (
    tuple[int, Masker | Operator | JsonMasker | None]
    | tuple[int, Masker | Operator | JsonMasker, Codec, int]
)
"""One plan column: ``(action, mask)`` or ``(TYPED, mask, codec, format)``."""

@final
class RowPlan:
    """What to do with each column of a result set (RowDescription order), for
    :meth:`RecvBuffer.set_row_plan`.  Immutable; may be installed many times.

    ``columns`` holds ``(action, mask)`` pairs: ``(KEEP, None)``, ``(NULL, None)``,
    ``(TEXT, masker_or_operator)``, ``(JSONB, masker_or_operator)``, or
    ``(TYPED, masker_or_operator, codec, format)``.  A DataRow with another
    column count, or one that does not parse, is a :class:`MaskingError`, never forwarded.
    ``ValueError`` on an unknown action or a mask missing / given where it does not belong;
    ``TypeError`` when a mask is not a :class:`Masker` or :class:`Operator`."""

    def __new__(cls, columns: Sequence[_PlanColumn]) -> RowPlan: ...
    def __len__(self) -> int:
        """The column count every row must have."""
    @property
    def is_passthrough(self) -> bool:
        """Every column is KEEP: rows are forwarded without being read."""
    def take_tally(self) -> list[dict[str, int]]:
        """Per column, entity name to count of values masked (from every buffer the plan was
        installed on) since the last call; resets.  Counts only, never values."""

@final
class CopyPlan:
    """The plan of one ``COPY ... TO STDOUT``: its format and options as the statement gave
    them, and one ``(action, mask)`` per column (as :class:`RowPlan`).

    ``format``: ``text`` (``delimiter`` default tab, ``null`` default ``\\N``, backslash escapes:
    values are de-escaped, masked and escaped again), ``csv`` (``delimiter`` default ``,``,
    ``quote``, ``escape`` default ``quote``, ``null`` default empty; quoted fields may hold
    delimiters, quotes and newlines; a masked value is quoted when it must be, or when the
    original was) or ``binary`` (file header kept, tuples like DataRow, trailer kept).  With
    ``header`` the first text / CSV row is kept as it is.  Any number of rows per CopyData is
    accepted.  A row with another column count is a :class:`MaskingError`.  ``ValueError`` on an
    unknown format or an option the server would refuse."""

    def __new__(
        cls,
        format: str,
        columns: Sequence[_PlanColumn],
        *,
        delimiter: str | None = None,
        null: str | None = None,
        quote: str = '"',
        escape: str | None = None,
        header: bool = False,
    ) -> CopyPlan: ...
    def __len__(self) -> int:
        """The column count every row must have."""
    @property
    def format(self) -> str:
        """``text``, ``csv`` or ``binary``."""
    @property
    def is_passthrough(self) -> bool:
        """Every column is KEEP: rows are forwarded without being read."""
    def take_tally(self) -> list[dict[str, int]]:
        """As :meth:`RowPlan.take_tally`."""

@final
class SealedBatch:
    """One batch of records, hash-chained and sealed (``AuditRecorder.next_batch``)."""

    @property
    def data(self) -> bytes:
        """The lines to append to the current segment (records, then the seal)."""
    @property
    def batch(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def records(self) -> int:
        """Records in the batch (gap records included)."""
    @property
    def items(self) -> int:
        """Queued records it took (``AuditRecorder.pushed_total`` counts the same)."""
    @property
    def seal(self) -> bytes:
        """SHA-256 of this batch's seal line."""
    @property
    def prev_seal(self) -> bytes | None:
        """SHA-256 of the seal line before it (None for the first batch ever)."""
    @property
    def ended(self) -> list[str]:
        """Sessions whose terminator (``session_end``) is in this batch."""

@final
class AuditRecorder:
    """The session record queue and the chain that seals it.

    The data path only pushes (the sessions' statement logs, :meth:`push`); the writer thread
    calls :meth:`next_batch`, which waits, drains, serialises, hashes and signs without the GIL.
    See ``veilgate.audit`` for the file format.
    """

    def __new__(
        cls,
        node: str,
        key_id: str,
        key: bytes,
        *,
        capacity: int = 262144,
        wake_at: int = 4096,
    ) -> AuditRecorder:
        """``key`` (at least 16 bytes) signs seals, headers and terminators as ``key_id``.
        ``capacity`` records are queued at most (more are dropped and counted, then recorded as
        gaps); ``wake_at`` queued records wake the writer before its interval."""
    def push(
        self, sid: str, members: str, *, terminator: bool = False, ts: float | None = None
    ) -> bool:
        """Queue a record built by the control plane: ``members`` are the JSON members after
        ``"kind":``, e.g. ``'"session_start","tier":"ro"'``; ``terminator`` marks the session's
        last record (it is signed).  False if dropped (queue full or closed)."""
    def next_batch(self, max_records: int, timeout: float) -> SealedBatch | None:
        """Wait up to ``timeout`` seconds, then take at most ``max_records`` and seal them."""
    def header(
        self,
        segment: int,
        first_seq: int,
        first_batch: int,
        prev_seal: bytes | None,
        created: float | None = None,
    ) -> bytes:
        """The signed header line of a new segment (newline included)."""
    def trailer(
        self,
        segment: int,
        last_seq: int,
        last_batch: int,
        prev_seal: bytes | None,
        reason: str,
        at: float | None = None,
    ) -> bytes:
        """The signed trailer line that closes a segment (newline included)."""
    def resume(self, next_seq: int, next_batch: int, prev_seal: bytes | None) -> None:
        """Continue the numbering and the seal chain of an earlier run."""
    def set_key(self, key_id: str, key: bytes) -> None:
        """Sign with another key from the next batch on."""
    def wake(self) -> None:
        """Wake a waiting :meth:`next_batch` now."""
    def close(self) -> None:
        """Refuse further records (they count as dropped) and wake the writer."""
    @property
    def queued(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def dropped_total(self) -> int: ...
    @property
    def pushed_total(self) -> int: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def next_batch_number(self) -> int: ...
    @property
    def open_sessions(self) -> int:
        """Sessions with records written and no terminator yet."""
    @property
    def key_id(self) -> str: ...

def statement_excerpt(
    text: str, max_bytes: int = 2048, redact_literals: bool = False
) -> tuple[str, bool, str]:
    """The recorded form of a statement: ``(excerpt, truncated, fingerprint)``.  A string literal
    after ``PASSWORD`` or shaped like a credential (``password=`` in a connection string, a
    ``user:secret@`` URI) is always replaced by ``'***'``; with ``redact_literals`` every
    constant becomes a ``$n`` parameter.  The excerpt holds at most ``max_bytes`` bytes (cut on a
    character boundary); the fingerprint (16 hex digits) ignores constants, comments, white
    space and keyword case."""

def stats() -> dict[str, int]:
    """Process-wide counters: ``client_bytes``, ``client_messages``, ``server_bytes``,
    ``server_messages`` (received by all buffers of that direction)."""

def latency_histogram() -> tuple[list[float], list[int], float, int]:
    """Statement latency (request to ReadyForQuery) across all sessions: bucket upper bounds in
    seconds, cumulative counts per bucket, sum of seconds, total count (Prometheus shape)."""

def sql_tokens(text: bytes) -> list[tuple[int, int, str]] | None:
    """PostgreSQL's scanner (a native port, standard_conforming_strings on): the tokens of
    ``text`` as ``(start, end, kind)`` with byte offsets (end exclusive) and pglast's kind names,
    except that keywords and plain identifiers are ``WORD`` and quoted identifiers ``QIDENT``.
    None when the server's scanner refuses the text, or it is not UTF-8 or holds a NUL."""

@final
class VerdictCache:
    """Allowed Query texts a client :class:`RecvBuffer` answers without calling Python, keyed
    by (decision scope, literal-normalised shape) or (decision scope, exact text); bounded by
    ``max_entries`` and ``max_bytes`` (an arbitrary entry goes first)."""

    def __new__(cls, *, max_entries: int = 16384, max_bytes: int = ...) -> VerdictCache: ...
    def insert(
        self,
        scope: int,
        text: bytes,
        shape: bool,
        verdict: Any,
        rule: str,
        fingerprint: str,
        cost: int = 0,
        event: bytes | None = None,
    ) -> bool:
        """``verdict`` (an allow) answers ``text`` under ``scope``: by its shape key when
        ``shape``, else by the exact text.  ``rule`` and ``fingerprint`` are what the statement
        log records for each hit; ``cost`` is what the verdict keeps alive, charged with the
        key against ``max_bytes``; ``event``: the verdict's members of a decision-log line
        (buffers armed with a :class:`DecisionLog` answer only entries that have them).  False
        when the text cannot be keyed or the entry alone is over the budget."""
    def insert_grant(
        self,
        grant_scope: int,
        text: bytes,
        shape: bool,
        verdict: Any,
        rule: str,
        fingerprint: str,
        approval: str,
        grant: GrantHandle,
        cost: int = 0,
    ) -> bool:
        """``text`` runs on the standing ``grant`` under ``grant_scope`` (a principal's own
        scope): keyed as :meth:`insert` keys; ``verdict`` is what hit events carry; the
        statement log records an ``approve`` decision of ``rule`` naming request ``approval``.
        The entry answers while ``grant`` is live, counting each use in it."""
    def lookup(self, scope: int, text: bytes) -> Any | None:
        """The verdict an armed buffer would answer the Query ``text`` with (None: it would
        surface it); the buffer's own path, without counting a hit (never a grant's entry)."""
    def purge_grants(self) -> int:
        """Drop the entries of grants no longer live (they answer nothing already); how many."""
    def clear(self) -> None:
        """Drop every entry and bump :attr:`generation` (a policy reload)."""
    @property
    def generation(self) -> int: ...
    @property
    def hits(self) -> int: ...
    @property
    def inserts(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    def __len__(self) -> int: ...

@final
class DecisionLog:
    """The JSON-lines decision log's writer: appends to ``path`` (created 0600), one
    ``write(2)`` per call; client buffers armed with it write the lines of the Queries their
    verdict cache answers (see :meth:`RecvBuffer.set_verdicts`).  ``OSError`` when the path
    cannot be opened."""

    def __new__(cls, path: str) -> DecisionLog: ...
    def write(self, data: bytes) -> bool:
        """Append ``data`` (whole lines) in one write; False when it failed (counted in
        :attr:`failures`, the data dropped); ``ValueError`` once closed."""
    def reopen(self) -> None:
        """Open the path again (after rotation); ``OSError`` if it cannot (the old file stays)."""
    def close(self) -> None:
        """Close the file: later writes raise, armed buffers drop their lines."""
    @property
    def closed(self) -> bool: ...
    @property
    def lines(self) -> int:
        """Lines written so far (by Python and by client buffers)."""
    @property
    def failures(self) -> int:
        """Writes that failed so far."""
    @property
    def last_error(self) -> str:
        """The error of the last failed write ("" before any)."""
    @property
    def path(self) -> str: ...

def verdict_hits() -> int:
    """Queries answered by every verdict cache of the process so far."""

def grant_hits() -> int:
    """Of :func:`verdict_hits`, the Queries answered on a standing grant."""

@final
class GrantHandle:
    """A grant without a use limit as the verdict cache answers from it: live for ``ttl_s``
    seconds (monotonic) until :meth:`revoke`; counts the uses made natively."""

    def __new__(cls, ttl_s: float) -> GrantHandle: ...
    def revoke(self) -> None:
        """No entry answers on this grant any more."""
    @property
    def live(self) -> bool: ...
    def take_uses(self) -> int:
        """Uses counted since the last call (reset)."""
    @property
    def total_uses(self) -> int: ...

def may_have_effects(body: bytes) -> bool:
    """Whether a Query body (with its NUL) may change the server's statement / portal
    namespace (the native port of the mirror's prefilter)."""

def shape_key(text: bytes) -> bytes | None:
    """The literal-normalised shape key of ``text``: equal for texts whose tokens differ only in
    the values of constants (every other token and everything between tokens is kept verbatim).
    None when ``text`` has none (see :func:`sql_tokens`, and ``U&''`` strings the parser
    rejects)."""
