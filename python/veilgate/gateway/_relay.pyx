# cython: language_level=3, auto_pickle=False, autotestdict=False
"""The per-read hot path of a relayed session, compiled.

One :class:`RelayProtocol` per connection side (client, upstream).  uvloop reads straight into the
side's native ``RecvBuffer`` (``get_buffer`` → ``prepare``), and ``buffer_updated`` frames what
arrived (``advance``) and, while relaying, writes it to the peer transport in one call.  Everything
else (handshake data, events, errors, connection loss) goes to the owning session object, which is
plain Python: it is called at session boundaries and for the rare event messages, never per row.

Owner callbacks (all called with the side as first argument):

* ``side_connected(side, transport)``
* ``handshake_data(side, result)`` -- the result of ``advance`` (may be ``None``) while not relaying
* ``relay_event(side, message)`` -- a ``Message`` event while relaying (tags set by the owner)
* ``framing_error(side, exc)``
* ``masking_error(side, exc)`` -- the engine refused to forward a row it has no plan for
* ``side_eof(side)`` -- the peer half-closed; the side is then closed
* ``side_lost(side, exc)``
* ``verdict_hits(side)`` -- Queries the buffer answered from the verdict cache wait with their
  verdicts (after a read, when ``set_verdict_drain(True)``)
"""

import asyncio

import veilgate_native

_FramingError = veilgate_native.FramingError
# the masking engine's fail-closed error (a DataRow / CopyData with no plan on a masked session);
# caught before FramingError in case it is a subclass
_MaskingError = veilgate_native.MaskingError

# why a side's transport is paused; it reads again only when no reason is left
cdef int _PAUSE_HELD = 1
cdef int _PAUSE_PEER_FULL = 2


# PostgreSQL hands OpenSSL at most 8 KiB at a time (its send buffer), so its TLS records carry at
# most 8 KiB of plaintext, and libpq always reads with at least 8 KiB of room (pqReadData)
cdef Py_ssize_t _RECORD_PLAINTEXT_MAX = 8192


cdef class RecordSizedTransport:
    """A client TLS transport whose writes leave in TLS records of at most 8 KiB of plaintext, as
    PostgreSQL's own do; every other attribute is the wrapped transport's.

    libpq's asynchronous API (psycopg 3, and libpq 18.0 still) polls the socket when a read left a
    message incomplete.  From a record larger than the room libpq reads with, OpenSSL keeps the
    rest decrypted in its own buffer, where poll() cannot see it: the client then waits for bytes
    it already has, while the server waits for the client (psycopg's binary COPY between two
    connections hung through the gateway, never straight to PostgreSQL).  Records no larger than
    PostgreSQL's never leave anything behind.
    """

    def __init__(self, transport):
        self.transport = transport
        self._write = transport.write
        self._writelines = transport.writelines

    def write(self, data):
        cdef Py_ssize_t n = len(data)
        cdef Py_ssize_t i
        if n <= _RECORD_PLAINTEXT_MAX:
            self._write(data)
            return
        # one SSL write per piece: asyncio's and uvloop's TLS transports write each piece of a
        # writelines() with its own SSL_write, which makes one record of it
        view = memoryview(data).cast("B")
        self._writelines(
            [view[i : i + _RECORD_PLAINTEXT_MAX] for i in range(0, n, _RECORD_PLAINTEXT_MAX)]
        )

    def writelines(self, list_of_data):
        for data in list_of_data:
            self.write(data)

    def __getattr__(self, name):
        return getattr(self.transport, name)


cdef class NativeTlsTransport:
    """A plain transport carrying the TLS records of a native ``TlsConnection``
    (``tls.engine: native``); every other attribute is the wrapped transport's.

    The relay's forwarded batches are encrypted by the engine (``RecvBuffer.advance(n,
    encrypt=True)``) and written with the raw transport's ``write``; what the control plane
    writes itself (events, errors, handshake messages) goes through :meth:`write`, which
    encrypts it on the spot.  Both take the connection's lock and write at once, so records
    leave in the order they were made.  ``get_extra_info("ssl_object")`` is the connection
    (ALPN, version, cipher, peer certificate).
    """

    def __init__(self, transport, tls):
        self.transport = transport
        self.tls = tls
        self._write = transport.write
        self._encrypt = tls.encrypt

    def write(self, data):
        out = self._encrypt(data)
        if out:
            self._write(out)

    def writelines(self, list_of_data):
        self.write(b"".join(list_of_data))

    def close(self):
        """close_notify, then close (what is buffered is sent first)."""
        transport = self.transport
        if not transport.is_closing():
            out = self.tls.close_notify()
            if out:
                transport.write(out)
        transport.close()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self.tls
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name):
        return getattr(self.transport, name)


def record_sized(transport):
    """``transport`` wrapped in :class:`RecordSizedTransport` when it is a TLS transport."""
    if transport.get_extra_info("ssl_object") is None:
        return transport
    return RecordSizedTransport(transport)


cdef class RelaySide:
    """One connection side.

    Masked sessions also use *barriers* and *holds*.  With ``set_barriers(True)`` the buffer
    stops framing after a barrier event (a RowDescription: the rows behind it must wait for their
    plan), so after each batch the side frames again (``advance(0)``) until no barrier is pending.
    While handling an event the owner may ``hold()`` the side: it stops reading, events not yet
    handled wait in a backlog, and nothing more is framed until ``release()`` (an asynchronous
    plan is ready).
    """

    def __init__(self, owner, rb, bint wrap_view=False):
        self.owner = owner
        self.rb = rb
        self._prepare = rb.prepare
        self._advance = rb.advance
        self._tls_view = None
        self._wrap_view = wrap_view
        self.transport = None
        self.peer = None
        self.peer_side = None
        self._peer_write = None
        self._peer_raw_write = None
        self._encrypt = False
        self._relaying = False
        self._closed = False
        self._paused_peer = False
        self._barriers = False
        self._held = False
        self._drain_hits = False
        self._holds = 0
        self._pauses = 0
        self._backlog = None

    # --- control, called by the session ---------------------------------------------------

    def start_relay(self, peer, peer_side=None):
        """Forward everything framed from now on to ``peer`` (a transport).  ``peer_side`` (the
        other RelaySide) makes backpressure compose with holds: a pause of the peer for a full
        write buffer and a hold of the peer are separate reasons, and it reads again only when
        neither remains."""
        self.peer = peer
        self.peer_side = peer_side
        self._peer_write = peer.write
        if type(peer) is NativeTlsTransport:
            # forwarded batches leave encrypted by the engine, in one raw write per read
            self.rb.set_output_tls((<NativeTlsTransport>peer).tls)
            self._peer_raw_write = (<NativeTlsTransport>peer).transport.write
            self._encrypt = True
        else:
            self._peer_raw_write = peer.write
            self._encrypt = False
        self._relaying = True

    def stop_relay(self):
        self._relaying = False
        self._encrypt = False
        self._peer_write = None
        self._peer_raw_write = None

    @property
    def relaying(self):
        return self._relaying

    @property
    def closed(self):
        return self._closed

    def flush_buffered(self):
        """Frame and forward what is already buffered (after switching modes)."""
        if self._held:
            return
        try:
            r = self.rb.advance(0)
        except _MaskingError as exc:
            self.owner.masking_error(self, exc)
            return
        except _FramingError as exc:
            self.owner.framing_error(self, exc)
            return
        self._dispatch(r)
        if self._barriers:
            self._past_barriers()

    def dispatch(self, items):
        """Handle ``items`` (events, bytes) as if just framed (messages read during the
        handshake); what a hold stops waits in the backlog."""
        self._dispatch(list(items))

    def set_verdict_drain(self, bint on):
        """After each read, hand the owner the Queries the buffer answered natively, if any
        wait with their verdicts (their decision events: one call per read)."""
        self._drain_hits = on

    def deliver_before_loss(self, bint on):
        """When the connection ends while this side is held, keep what it sent until the hold
        is released, then report the loss (the server's side: its FATAL reaches the client).
        Off for the client's side: a client gone is acted on at once (its statements are
        cancelled upstream), whatever holds it."""
        self._deliver_before_loss = on

    def set_barriers(self, bint on):
        """The buffer stops at barrier events (masked sessions): frame again after each."""
        self._barriers = on

    @property
    def held(self):
        return self._held

    def hold(self):
        """Stop reading and dispatching until :meth:`release` (called from an event handler,
        or between reads).  Holds are counted: the masking relay and the approval gate may each
        hold the same side, and it reads again only when every hold was released."""
        self._holds += 1
        if self._held:
            return
        self._held = True
        self._pause(_PAUSE_HELD)

    def release(self):
        """Drop one hold; after the last, handle what waited in the backlog, frame what is
        buffered, then read again."""
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds > 0 or not self._held:
            return
        self._held = False
        backlog = self._backlog
        if backlog:
            self._backlog = None
            self._dispatch(backlog)
        if self._held:
            return
        if self._relaying:
            self.flush_buffered()
            if self._held:
                return
            self._unpause(_PAUSE_HELD)
        if self._lost:
            # the connection ended during the hold: reported now, after what it sent
            self._lost = False
            self._end(self._lost_exc)

    cdef _pause(self, int reason):
        cdef int was = self._pauses
        self._pauses = was | reason
        if was == 0 and self.transport is not None and not self._closed:
            try:
                self.transport.pause_reading()
            except RuntimeError:
                pass

    cdef _unpause(self, int reason):
        if not (self._pauses & reason):
            return
        self._pauses &= ~reason
        if self._pauses == 0 and self.transport is not None and not self._closed:
            try:
                self.transport.resume_reading()
            except RuntimeError:
                pass

    cdef _past_barriers(self):
        """After a batch that ended at a barrier event: frame the rest, batch by batch."""
        cdef object r
        rb = self.rb
        while self._relaying and not self._held and rb.at_barrier:
            try:
                r = rb.advance(0)
            except _MaskingError as exc:
                self.owner.masking_error(self, exc)
                return
            except _FramingError as exc:
                self.owner.framing_error(self, exc)
                return
            self._dispatch(r)

    # --- asyncio protocol -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.owner.side_connected(self, transport)

    def get_buffer(self, Py_ssize_t sizehint):
        cdef object view = self._tls_view
        if view is not None:
            return view
        if self._prepare(sizehint):
            # TLS attached: the loop reads ciphertext into a native buffer that never moves
            # (the engine decrypts it into the framing buffer, which it compacts itself), so
            # one view serves every read: no prepare() and no buffer export per read
            view = self._tls_view = memoryview(self.rb)
            return view
        if self._wrap_view:
            # stdlib asyncio's SSL transport slices the returned buffer (``buf[offset:]``):
            # hand it a memoryview so the slice is a view, not an error or a copy
            return memoryview(self.rb)
        return self.rb

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef object r
        # the engine encrypts a batch with no event only when it is written right here: a
        # batch kept for later (a hold) must be encrypted when it is written, in order
        cdef bint encrypt = self._encrypt and self._relaying and not self._held
        self.received += nbytes
        try:
            r = self._advance(nbytes, encrypt)
        except _MaskingError as exc:
            self.owner.masking_error(self, exc)
            return
        except _FramingError as exc:
            self.owner.framing_error(self, exc)
            return
        if self._relaying:
            if r is None:
                return
            if type(r) is bytes and not self._held:
                # encrypted records when `encrypt`, else plaintext for a plain transport
                self._peer_raw_write(r)
                if self._drain_hits and self.rb.verdict_events:
                    self.owner.verdict_hits(self)
                return
        self._dispatch(r)
        if self._barriers:
            self._past_barriers()
        if self._drain_hits and self.rb.verdict_events:
            self.owner.verdict_hits(self)

    cdef _dispatch(self, object r):
        cdef object item
        cdef Py_ssize_t i, n
        if not self._relaying:
            self.owner.handshake_data(self, r)
            return
        if r is None:
            return
        if self._held:
            # a read that raced the hold: it waits behind what is already waiting, in order
            self._keep(r if type(r) is list else [r], 0)
            return
        if type(r) is bytes:
            self._peer_write(r)
            return
        n = len(r)
        for i in range(n):
            if not self._relaying:
                # the owner stopped relaying while handling an event (e.g. closing)
                return
            item = r[i]
            if type(item) is bytes:
                self._peer_write(item)
            else:
                self.owner.relay_event(self, item)
                if self._held:
                    # the owner needs time (an asynchronous plan): the rest waits, in order
                    self._keep(r, i + 1)
                    return

    cdef _keep(self, list items, Py_ssize_t start):
        if start >= len(items):
            return
        if self._backlog is None:
            self._backlog = items[start:]
        else:
            self._backlog.extend(items[start:])

    def eof_received(self):
        self.owner.side_eof(self)
        return False

    def connection_lost(self, exc):
        self._closed = True
        if self._held and self._relaying and self._deliver_before_loss:
            # A hold (a result waiting for its masking plan) keeps what the peer sent last
            # unframed, its goodbye included (a FATAL ErrorResponse): that reaches the other
            # side, in order, when the hold is released, and the loss is reported after it.
            self._lost = True
            self._lost_exc = exc
            return
        self._end(exc)

    cdef _end(self, object exc):
        self._relaying = False
        self._encrypt = False
        self._peer_write = None
        self._peer_raw_write = None
        self.owner.side_lost(self, exc)

    def pause_writing(self):
        # our transport's write buffer is full: stop reading what fills it
        cdef RelaySide side
        peer = self.peer
        if peer is not None and not self._paused_peer:
            self._paused_peer = True
            if self.peer_side is not None:
                side = self.peer_side
                side._pause(_PAUSE_PEER_FULL)
                return
            try:
                peer.pause_reading()
            except RuntimeError:
                pass

    def resume_writing(self):
        cdef RelaySide side
        peer = self.peer
        if peer is not None and self._paused_peer:
            self._paused_peer = False
            if self.peer_side is not None:
                side = self.peer_side
                side._unpause(_PAUSE_PEER_FULL)
                return
            try:
                peer.resume_reading()
            except RuntimeError:
                pass


class RelayProtocol(RelaySide, asyncio.BufferedProtocol):
    """A connection side: the compiled core plus the asyncio BufferedProtocol type."""

    __slots__ = ()
