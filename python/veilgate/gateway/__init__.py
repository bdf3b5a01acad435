"""The data path: listener, TLS, startup and authentication, upstream connection, relay.

Modules (one job each):

* :mod:`~veilgate.gateway.server` -- :class:`~veilgate.gateway.server.Gateway` (accept loop, drain,
  cancel routing) and :func:`~veilgate.gateway.server.run_in_thread`;
* :mod:`~veilgate.gateway.session` -- one client session: handshake, then relay;
* :mod:`~veilgate.gateway.startup` -- StartupMessage policy (versions, parameter allow-list);
* :mod:`~veilgate.gateway.cancel` -- gateway cancel keys → sessions;
* ``_relay`` (Cython) -- the BufferedProtocol the event loop calls on every read.

The wire protocol itself (message builders, upstream connect + SCRAM, pre-TLS negotiation) is
the lower package :mod:`veilgate.pgwire`.  Importing this package is cheap; :mod:`server` and
:mod:`session` import the native engine.
"""
