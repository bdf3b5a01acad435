"""Which cached catalog facts a command may have changed, judged from its CommandComplete tag.

The catalog (:mod:`.catalog`) caches three kinds of facts, each forgotten on its own:

* :attr:`Scope.RELATIONS`: keyed by relation OID: a column's schema / table / column name,
  relkind, ancestors and generated flag; a view's base-column dependencies;
* :attr:`Scope.TYPES`: keyed by type OID: name, base type, category, element type;
* :attr:`Scope.NAMES`: keyed by name: the relations a name can denote (with their columns,
  view definitions, ancestors and the unique indexes / foreign keys a write is checked
  against), the functions of a name, and the type / operator names that exist outside
  ``pg_catalog``.

A statement that only *creates* a relation or routine gets a new OID: it cannot change what an
existing OID-keyed entry says, only what a name can denote (``CREATE TEMP TABLE customers``
shadows ``public.customers``; a new ``public.upper`` shadows a built-in).  Everything that can
change an existing object (``ALTER``, ``DROP``, ``CREATE OR REPLACE VIEW`` whose tag is
``CREATE VIEW``, ``CREATE RULE``, an extension script, a ``DO`` block or procedure running any of
those) forgets everything.  Tags known to leave every cached fact alone (indexes, statistics,
comments, privileges, data-only commands) forget nothing.  An unknown DDL-looking tag forgets
everything: the list fails closed.

DDL run where the gateway cannot see its tag (another gateway, a function doing ``EXECUTE``,
``CREATE TABLE AS`` / ``CREATE MATERIALIZED VIEW ... AS`` whose tag is ``SELECT n``) is picked
up by the catalog's age limit (:data:`veilgate.masking.catalog.MAX_AGE_S`).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["Scope", "invalidation_scope"]


class Scope(enum.Flag):
    """Kinds of cached catalog facts."""

    NONE = 0
    RELATIONS = enum.auto()
    TYPES = enum.auto()
    NAMES = enum.auto()
    ALL = RELATIONS | TYPES | NAMES


_DDL_PREFIXES: Final = (
    b"CREATE",
    b"ALTER",
    b"DROP",
    b"COMMENT",
    b"GRANT",
    b"REVOKE",
    b"SECURITY LABEL",
    b"REFRESH",
    b"IMPORT FOREIGN SCHEMA",
    b"TRUNCATE",
)
"""Tags that may come from a statement changing the catalog; every other tag (``SELECT n``,
``INSERT 0 n``, ``COMMIT``, ``SET`` ...) forgets nothing, except:"""

_RUNS_ANYTHING: Final = frozenset({b"DO", b"CALL"})
"""Whole tags of statements that run arbitrary SQL whose own tags the client never sees."""

_NEW_NAMES: Final = frozenset(
    {
        # a new relation (temp, partition, inheritance child or LIKE included): new OID, but
        # a name may now denote it, and its row type may shadow a built-in type name
        b"CREATE TABLE",
        b"CREATE TABLE AS",
        b"SELECT INTO",
        b"CREATE FOREIGN TABLE",
        b"CREATE MATERIALIZED VIEW",
        b"IMPORT FOREIGN SCHEMA",
        b"CREATE SCHEMA",  # may hold CREATE TABLE / CREATE VIEW (new OIDs only)
        # routines, operators, domains: may shadow a pure built-in by name; CREATE OR REPLACE
        # FUNCTION does not change any relation's columns or a view's dependencies
        b"CREATE FUNCTION",
        b"CREATE PROCEDURE",
        b"CREATE AGGREGATE",
        b"CREATE OPERATOR",
        b"CREATE DOMAIN",
        # relation facts list unique indexes and sequences are relations a name can denote
        b"CREATE INDEX",
        b"DROP INDEX",
        b"CREATE SEQUENCE",
        b"DROP SEQUENCE",
    }
)

_NEW_TYPES: Final = frozenset(
    {
        # CREATE TYPE also completes a shell type, keeping its OID: forget cached types too
        b"CREATE TYPE",
    }
)

_NO_FACTS: Final = frozenset(
    {
        b"CREATE STATISTICS",
        b"ALTER STATISTICS",
        b"DROP STATISTICS",
        b"CREATE TRIGGER",
        b"DROP TRIGGER",
        b"CREATE POLICY",
        b"ALTER POLICY",
        b"DROP POLICY",
        b"CREATE ROLE",
        b"ALTER ROLE",
        b"DROP ROLE",
        b"CREATE DATABASE",
        b"DROP DATABASE",
        b"ALTER DEFAULT PRIVILEGES",
        b"ALTER SYSTEM",
        b"COMMENT",
        b"GRANT",
        b"REVOKE",
        b"GRANT ROLE",
        b"REVOKE ROLE",
        b"SECURITY LABEL",
        b"REFRESH MATERIALIZED VIEW",
        b"TRUNCATE TABLE",
    }
)
"""DDL that changes no cached fact: names, relkinds, columns, view definitions, unique indexes
and types are all untouched.
``ALTER INDEX`` is not here: PostgreSQL accepts ``ALTER INDEX <table> RENAME``."""


def invalidation_scope(tag: bytes) -> Scope:
    """The cached facts a statement with CommandComplete ``tag`` may have changed."""
    t = tag.rstrip(b"\0").strip().upper()
    if t in _RUNS_ANYTHING:
        return Scope.ALL
    if not t.startswith(_DDL_PREFIXES):
        return Scope.NONE
    if t in _NO_FACTS:
        return Scope.NONE
    if t in _NEW_NAMES:
        return Scope.NAMES
    if t in _NEW_TYPES:
        return Scope.NAMES | Scope.TYPES
    return Scope.ALL
