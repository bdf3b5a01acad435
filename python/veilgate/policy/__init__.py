"""Policy: SQL analysis with the real PostgreSQL parser, policy files, decisions, audit events.

The gateway's entry points are :class:`~veilgate.policy.engine.PolicyEngine` (``decide``) and
:func:`~veilgate.policy.loader.load_policy`; see the module docstrings of ``engine`` and ``model``.
"""
