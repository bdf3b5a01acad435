"""The state database interface both backends implement (SQLite and PostgreSQL).

SQL is written once, in the subset both dialects accept, with ``$1, $2 ...`` placeholders (the
SQLite backend rewrites them to its numbered ``?1`` form).  Values are ``str``, ``int``, ``float``,
``bytes`` or ``None``; rows come back as plain dicts.  Times are seconds since the epoch
(``DOUBLE PRECISION``), booleans are integers, JSON is text.

Every operation is bounded by the configured timeout; a failure of the database (unreachable,
locked too long, disk full, a statement the server refused for a reason that is not the caller's
fault) raises :class:`StateUnavailable`, which callers turn into a fail-closed answer.

Notifications: :meth:`StateDB.notify` inside a transaction is delivered after it commits (to every
process listening on that channel, this one included); :meth:`StateDB.listen` registers a callback.
A callback called with ``None`` means "notifications may have been lost" (the listener was
reconnected): re-read what you wait for.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from typing import Any, Final, TypeAlias

__all__ = [
    "Listener",
    "Row",
    "StateDB",
    "StateUnavailable",
    "Tx",
    "check_channel",
]

Row: TypeAlias = dict[str, Any]
Listener: TypeAlias = Callable[[str | None], None]
"""Called on the event loop with the payload (or ``None``: re-read, notifications were lost)."""

_CHANNEL: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_channel(channel: str) -> str:
    """Channel names are plain lower-case identifiers (they are interpolated into LISTEN)."""
    if _CHANNEL.fullmatch(channel) is None:
        raise ValueError(f"bad notification channel name {channel!r}")
    return channel


class StateUnavailable(Exception):
    """The state database cannot be used right now (the message says why; never a DSN)."""


class Tx(abc.ABC):
    """Statements inside one transaction (see :meth:`StateDB.transaction`)."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it affected."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query; its rows."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    @abc.abstractmethod
    def notify(self, channel: str, payload: str) -> None:
        """Deliver ``payload`` on ``channel`` once (and only if) this transaction commits."""


class StateDB(abc.ABC):
    """A connection (pool) to the state database."""

    dialect: str
    """``sqlite`` or ``postgres``."""

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as tx:`` -- one serialisable unit of work (SQLite:
        ``BEGIN IMMEDIATE``; PostgreSQL: a transaction on one pooled connection)."""

    async def execute(self, sql: str, *args: Any) -> int:
        async with self.transaction() as tx:
            n: int = await tx.execute(sql, *args)
            return n

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self.transaction() as tx:
            rows: list[Row] = await tx.fetch(sql, *args)
            return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def listen(self, channel: str, callback: Listener) -> None:
        """Call ``callback`` for every notification on ``channel`` (from any process)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection and stop listening (idempotent)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the state lives, for logs and errors (never a password)."""
