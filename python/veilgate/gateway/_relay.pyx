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
* ``side_eof(side)`` -- the peer half-closed; the side is then closed
* ``side_lost(side, exc)``
"""

import asyncio

from veilgate_native import FramingError

_FramingError = FramingError


cdef class RelaySide:
    def __init__(self, owner, rb, bint wrap_view=False):
        self.owner = owner
        self.rb = rb
        self._wrap_view = wrap_view
        self.transport = None
        self.peer = None
        self._peer_write = None
        self._relaying = False
        self._closed = False
        self._paused_peer = False

    # --- control, called by the session ---------------------------------------------------

    def start_relay(self, peer):
        """Forward everything framed from now on to ``peer`` (a transport)."""
        self.peer = peer
        self._peer_write = peer.write
        self._relaying = True

    def stop_relay(self):
        self._relaying = False
        self._peer_write = None

    @property
    def relaying(self):
        return self._relaying

    @property
    def closed(self):
        return self._closed

    def flush_buffered(self):
        """Frame and forward what is already buffered (after switching modes)."""
        self._dispatch(self.rb.advance(0))

    # --- asyncio protocol -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.owner.side_connected(self, transport)

    def get_buffer(self, Py_ssize_t sizehint):
        self.rb.prepare(sizehint)
        if self._wrap_view:
            # stdlib asyncio's SSL transport slices the returned buffer (``buf[offset:]``):
            # hand it a memoryview so the slice is a view, not an error or a copy
            return memoryview(self.rb)
        return self.rb

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef object r
        try:
            r = self.rb.advance(nbytes)
        except _FramingError as exc:
            self.owner.framing_error(self, exc)
            return
        if self._relaying:
            if r is None:
                return
            if type(r) is bytes:
                self._peer_write(r)
                return
        self._dispatch(r)

    cdef _dispatch(self, object r):
        cdef object item
        if not self._relaying:
            self.owner.handshake_data(self, r)
            return
        if r is None:
            return
        if type(r) is bytes:
            self._peer_write(r)
            return
        for item in r:
            if not self._relaying:
                # the owner stopped relaying while handling an event (e.g. closing)
                return
            if type(item) is bytes:
                self._peer_write(item)
            else:
                self.owner.relay_event(self, item)

    def eof_received(self):
        self.owner.side_eof(self)
        return False

    def connection_lost(self, exc):
        self._closed = True
        self._relaying = False
        self._peer_write = None
        self.owner.side_lost(self, exc)

    def pause_writing(self):
        # our transport's write buffer is full: stop reading what fills it
        peer = self.peer
        if peer is not None and not self._paused_peer:
            self._paused_peer = True
            try:
                peer.pause_reading()
            except RuntimeError:
                pass

    def resume_writing(self):
        peer = self.peer
        if peer is not None and self._paused_peer:
            self._paused_peer = False
            try:
                peer.resume_reading()
            except RuntimeError:
                pass


class RelayProtocol(RelaySide, asyncio.BufferedProtocol):
    """A connection side: the compiled core plus the asyncio BufferedProtocol type."""

    __slots__ = ()
