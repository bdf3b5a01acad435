"""The PostgreSQL wire protocol, shared by the data path and the control plane's side connections.

A lower layer than :mod:`veilgate.gateway` and :mod:`veilgate.masking` (both use it); it imports
only the configuration model and the standard library:

* :mod:`~veilgate.pgwire.wire` -- builders/parsers for the messages the gateway speaks itself;
* :mod:`~veilgate.pgwire.upstream` -- upstream TCP/TLS connect and the SCRAM client;
* :mod:`~veilgate.pgwire.negotiate` -- pre-TLS negotiation on a raw accepted socket;
* :mod:`~veilgate.pgwire.tlsnative` -- TLS in the native engine (``tls.engine: native``): its
  configurations and the handshake on a raw socket (it also imports ``veilgate_native``).
"""
