# Declarations for the relay glue (see _relay.pyx).

cdef class RelaySide:
    cdef readonly object rb
    """The side's native RecvBuffer."""
    cdef readonly object transport
    cdef readonly object peer
    """The other side's transport, once relaying."""
    cdef readonly object peer_side
    """The other RelaySide, when the session gave it (backpressure composes with holds)."""
    cdef object owner
    cdef object _prepare
    cdef object _advance
    cdef object _tls_view
    """With TLS attached: the one view of ``rb`` every read goes into (see get_buffer)."""
    cdef object _peer_write
    cdef object _peer_raw_write
    cdef bint _encrypt
    cdef bint _relaying
    cdef bint _closed
    cdef bint _paused_peer
    cdef bint _wrap_view
    cdef bint _barriers
    cdef bint _held
    cdef bint _drain_hits
    cdef int _holds
    cdef int _pauses
    cdef list _backlog
    cdef bint _lost
    cdef bint _deliver_before_loss
    cdef object _lost_exc
    cdef readonly unsigned long long received
    """Bytes read from this side (the admin console's per-session byte counts)."""

    cdef _dispatch(self, object r)
    cdef _keep(self, list items, Py_ssize_t start)
    cdef _pause(self, int reason)
    cdef _unpause(self, int reason)
    cdef _past_barriers(self)
    cdef _end(self, object exc)


cdef class RecordSizedTransport:
    cdef readonly object transport
    """The wrapped TLS transport."""
    cdef object _write
    cdef object _writelines


cdef class NativeTlsTransport:
    cdef readonly object transport
    """The wrapped plain transport."""
    cdef readonly object tls
    """The native TlsConnection."""
    cdef object _write
    cdef object _encrypt
