"""Who is connecting: authenticators turn a presented token into a :class:`Principal`."""

from veilgate.identity.base import AuthContext, Authenticator, AuthError, Principal

__all__ = ["AuthContext", "AuthError", "Authenticator", "Principal"]
