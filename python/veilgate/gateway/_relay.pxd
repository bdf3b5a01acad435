# Declarations for the relay glue (see _relay.pyx).

cdef class RelaySide:
    cdef readonly object rb
    """The side's native RecvBuffer."""
    cdef readonly object transport
    cdef readonly object peer
    """The other side's transport, once relaying."""
    cdef object owner
    cdef object _peer_write
    cdef bint _relaying
    cdef bint _closed
    cdef bint _paused_peer
    cdef bint _wrap_view

    cdef _dispatch(self, object r)
