"""veilgate: an identity-aware PostgreSQL gateway for AI agents and other non-human identities."""

__version__ = "0.1.0"
