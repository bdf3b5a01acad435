"""The data path: listener, TLS, startup and authentication, upstream connection, relay.

Modules (one job each):

* :mod:`~veilgate.gateway.server` -- :class:`~veilgate.gateway.server.Gateway` (accept loop, drain,
  cancel routing) and :func:`~veilgate.gateway.server.run_in_thread`;
* :mod:`~veilgate.gateway.negotiate` -- pre-TLS negotiation on the raw accepted socket;
* :mod:`~veilgate.gateway.session` -- one client session: handshake, then relay;
* :mod:`~veilgate.gateway.startup` -- StartupMessage policy (versions, parameter allow-list);
* :mod:`~veilgate.gateway.upstream` -- upstream TCP/TLS connect and the SCRAM client;
* :mod:`~veilgate.gateway.cancel` -- gateway cancel keys → sessions;
* :mod:`~veilgate.gateway.wire` -- builders/parsers for the handshake messages;
* ``_relay`` (Cython) -- the BufferedProtocol the event loop calls on every read.

Importing this package is cheap; :mod:`server` and :mod:`session` import the native engine.
"""
