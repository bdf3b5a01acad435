"""SQL analysis with the real PostgreSQL parser (pglast / libpg_query, PostgreSQL 18 grammar).

:func:`analyze` turns the text of one Query (or Parse) message into a :class:`MessageAnalysis`: one
:class:`StatementAnalysis` per statement of a multi-statement string, each with

* ``classes``: every statement class involved (see :data:`CLASSES`).  A statement can have several:
  ``WITH d AS (DELETE ...) SELECT ...`` is ``{read, write}``; ``COPY (SELECT ...) TO STDOUT`` is
  ``{copy_out, read}``.  ``statement_class`` is the most significant one (for logs and audit).
* ``reads`` / ``writes``: relations as written in the SQL (``(schema or None, name)``), CTE names
  excluded with proper scoping.  Resolution of unqualified names is the policy's job (tier
  ``search_path``).
* ``functions``: every function called anywhere in the tree (``(schema or None, name)``).
* ``constructs``: named dangerous constructs (see :data:`CONSTRUCTS`), with human ``details``.

Judging rules that live here (not in policy):

* ``EXPLAIN ANALYZE X`` executes X: it is judged as X (plus ``explain_analyze``).  Plain
  ``EXPLAIN X`` is ``utility``; the relations of X count as reads and function-derived constructs
  are kept (the planner may evaluate functions), statement-shape constructs are dropped.
* ``PREPARE p AS X`` is judged as X; ``EXECUTE p`` (also inside ``EXPLAIN`` or ``CREATE TABLE AS``)
  is judged as what ``p`` was prepared as: earlier in the same message, else the session's map
  passed as ``prepared`` (named statements from protocol-level Parse share that namespace).  An
  ``EXECUTE`` of a name nobody knows carries ``unknown_prepared_statement``: policy must deny it.
* Text the parser rejects gives ``MessageAnalysis.unparseable`` (policy denies: fail closed).  So
  does a tree too deep to walk.

``standard_conforming_strings = off``: libpg_query always lexes with the setting on.  With it off
the server reads backslash escapes inside ordinary ``'...'`` literals, so ``'a\\' || ' ; DROP ...'``
would hide a statement from an analyzer lexing the other way.  With
``standard_conforming_strings=False`` the text is first re-lexed the way the server would
(:func:`rewrite_nonstandard_strings`): every ordinary literal becomes the equivalent ``E'...'``
literal, then parsed.  ``U&'...'`` literals are refused there (the server refuses them too).
Limitations: the rewrite follows the PostgreSQL 18 lexer rules for comments (nested ``/* */``,
``--``), quoted identifiers, dollar quoting, bit/hex strings and string continuation across
newlines; it does not model ``backslash_quote`` or client-only multibyte encodings (SJIS, BIG5,
GBK, ...): the gateway must refuse those client encodings.  Statement texts and fingerprints are
then those of the rewritten text.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pglast import parser as _pg

from ._builtins import BUILTIN_FUNCTIONS
from .embedded import Embedded, function_sql, plpgsql_sql, table_argument, tries_every_argument
from .filters import ALL, TRUE, FilterScope, coarse, conjoin, evaluate, negate

__all__ = [
    "CLASSES",
    "CONSTRUCTS",
    "SENSITIVE_FUNCTIONS",
    "SENSITIVE_RELATIONS",
    "MessageAnalysis",
    "Name",
    "SettingChange",
    "StatementAnalysis",
    "analyze",
    "is_builtin",
    "resolve_executes",
    "rewrite_nonstandard_strings",
    "split_identifiers",
]

Name = tuple[str | None, str]
"""A relation or function name as written: (schema or None, name)."""

CLASSES: tuple[str, ...] = (
    "read",
    "write",
    "merge",
    "ddl",
    "dcl",
    "session",
    "role_change",
    "copy_in",
    "copy_out",
    "transaction",
    "utility",
    "maintenance",
    "prepare",
    "call",
    "do",
    "other",
)
"""Statement classes, in the order ``statement_class`` prefers them (most significant first)."""

_CLASS_PRIORITY = {
    c: i
    for i, c in enumerate(
        (
            "dcl",
            "role_change",
            "ddl",
            "do",
            "call",
            "copy_in",
            "merge",
            "write",
            "copy_out",
            "maintenance",
            "session",
            "other",
            "read",
            "utility",
            "prepare",
            "transaction",
        )
    )
}

CONSTRUCTS: dict[str, str] = {
    "drop": "DROP of any object (also DROP OWNED, ALTER TABLE ... DROP COLUMN)",
    "truncate": "TRUNCATE",
    "delete_without_where": "DELETE (or MERGE ... DELETE) of every row: no WHERE clause, or one "
    "true for every row (1 = 1, x = x, OR true, NOT false...) or independent of the row",
    "update_without_where": "UPDATE (or MERGE ... UPDATE) of every row: as delete_without_where",
    "alter_system": "ALTER SYSTEM",
    "copy_program": "COPY ... TO/FROM PROGRAM",
    "copy_server_file": "COPY ... TO/FROM a server-side file",
    "file_functions": "server file access functions (pg_read_file, pg_ls_dir, lo_import, ...)",
    "large_object": "large-object functions (lo_*, loread, lowrite)",
    "dblink": "dblink* functions, postgres_fdw, CREATE SERVER / USER MAPPING / FOREIGN TABLE",
    "set_role": "SET ROLE / RESET ROLE (also via set_config)",
    "set_session_authorization": "SET/RESET SESSION AUTHORIZATION (also via set_config)",
    "do_block": "DO block (anonymous code)",
    "security_definer_function": "CREATE/ALTER FUNCTION ... SECURITY DEFINER",
    "create_function": "CREATE FUNCTION / PROCEDURE",
    "terminate_backend": "backend signalling and admin functions (pg_terminate_backend, ...)",
    "data_modifying_cte": "INSERT/UPDATE/DELETE/MERGE inside WITH",
    "explain_analyze": "EXPLAIN ANALYZE (executes the statement)",
    "dangerous_guc": "SET of a dangerous setting (session_replication_role, read-only off, ...)",
    "search_path_change": "change of search_path (SET or set_config)",
    "set_config": "set_config() function",
    "read_write_transaction": "BEGIN/START/SET TRANSACTION ... READ WRITE",
    "locking_read": "SELECT ... FOR UPDATE/SHARE",
    "lock_table": "LOCK TABLE",
    "load_library": "LOAD of a shared library",
    "create_extension": "CREATE EXTENSION",
    "dynamic_sql": "SQL computed at run time (EXECUTE of a computed string, query_to_xml / dblink "
    "of a non-constant, schema_to_xml...) or code the gateway cannot inspect",
    "sensitive_catalog": "catalog and statistics views or functions that expose data values or "
    "other sessions' statement text (pg_stats, pg_statistic, pg_stat_activity, "
    "pg_stat_statements, pg_stat_get_activity(), ...)",
    "sequence_write": "nextval / setval",
    "notify": "NOTIFY / pg_notify",
    "prepared_transaction": "PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED",
    "unknown_prepared_statement": "EXECUTE of a statement name this session never prepared",
    "user_function": "call of a function or procedure that is not a PostgreSQL built-in",
    "fastpath_function_call": "protocol-level FunctionCall message (function by OID, no SQL)",
}
"""Named dangerous constructs and what they flag."""

_FILE_FUNCTIONS = frozenset(
    {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_ls_summariesdir",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        "lo_import",
        "lo_export",
    }
)
_TERMINATE_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_rotate_logfile_old",
        "pg_promote",
        "pg_switch_wal",
        "pg_switch_xlog",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_log_backend_memory_contexts",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_replication_slot_advance",
        "pg_sync_replication_slots",
        "pg_logical_emit_message",
        "pg_replication_origin_create",
        "pg_replication_origin_drop",
        "pg_stat_reset",
        "pg_stat_reset_shared",
        "pg_stat_reset_single_table_counters",
        "pg_stat_reset_single_function_counters",
        "pg_stat_reset_slru",
        "pg_stat_reset_replication_slot",
        "pg_stat_reset_subscription_stats",
        "pg_stat_reset_backend_stats",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_replication_origin_advance",
        "pg_replication_origin_session_setup",
        "pg_replication_origin_session_reset",
        "pg_replication_origin_xact_setup",
        "pg_replication_origin_xact_reset",
        "brin_summarize_new_values",
        "brin_summarize_range",
        "brin_desummarize_range",
        "gin_clean_pending_list",
        "pg_import_system_collations",
        "pg_stop_making_pinned_objects",
        "pg_extension_config_dump",
    }
)
_DYNAMIC_SQL_FUNCTIONS = frozenset(
    {
        f"{what}_to_{kind}"
        for what in ("query", "cursor", "table", "schema", "database")
        for kind in ("xml", "xmlschema", "xml_and_xmlschema")
    }
    | {"ts_stat", "ts_rewrite"}
)
SENSITIVE_RELATIONS: frozenset[str] = frozenset(
    {
        # column statistics: most common values, histogram bounds (data values)
        "pg_stats",
        "pg_stats_ext",
        "pg_stats_ext_exprs",
        "pg_statistic",
        "pg_statistic_ext_data",
        # other sessions' statement text (with the constants they ran)
        "pg_stat_activity",
        "pg_stat_statements",
        "pg_stat_monitor",
        "pg_qualstats",
        "pg_qualstats_all",
        "pg_qualstats_by_query",
        "pg_qualstats_pretty",
        "pg_store_plans",
        # stored values and secrets (privileged, but never through a masked tier)
        "pg_largeobject",
        "pg_user_mappings",
        "pg_user_mapping",
        "pg_authid",
        "pg_shadow",
        "pg_file_settings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_stat_wal_receiver",
    }
)
"""Relations (any schema: extensions install where they are told) whose rows hold data values or
other sessions' statement text.  Read access needs the ``sensitive_catalog`` construct."""

SENSITIVE_FUNCTIONS: frozenset[str] = frozenset(
    {
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_stat_statements",
        "pg_stat_monitor_internal",
        "pg_qualstats",
        "pg_qualstats_example_query",
        "pg_qualstats_example_queries",
        "pg_store_plans",
        "pg_mcv_list_items",
        "pg_show_all_file_settings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_peek_binary_changes",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_get_binary_changes",
        # pageinspect / pg_walinspect: raw tuples and WAL records
        "get_raw_page",
        "heap_page_items",
        "heap_page_item_attrs",
        "tuple_data_split",
        "bt_page_items",
        "brin_page_items",
        "gin_leafpage_items",
        "hash_page_items",
        "gist_page_items",
        "pg_get_wal_record_info",
        "pg_get_wal_records_info",
        "pg_get_wal_block_info",
        "pg_get_wal_records_info_till_end_of_wal",
    }
)
"""Functions whose results hold data values or other sessions' statement text."""

_MAX_NESTING = 8
"""SQL inside SQL (query_to_xml text inside a DO block inside...) deeper than this is not
inspected: ``dynamic_sql``."""

_DANGEROUS_GUCS = frozenset(
    {
        "session_replication_role",
        "session_preload_libraries",
        "local_preload_libraries",
        "allow_system_table_mods",
        "ignore_system_indexes",
        "zero_damaged_pages",
        "lo_compat_privileges",
        "allow_in_place_tablespaces",
        "jit_provider",
    }
)
_READ_ONLY_GUCS = frozenset({"default_transaction_read_only", "transaction_read_only"})
_FALSE_WORDS = frozenset({"off", "false", "no", "0", "f", "n", "of"})

_WRITE_STMTS = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_DCL_STMTS = frozenset(
    {
        "GrantStmt",
        "GrantRoleStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "AlterRoleSetStmt",
        "DropRoleStmt",
        "AlterDefaultPrivilegesStmt",
        "ReassignOwnedStmt",
        "DropOwnedStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
    }
)
_DDL_EXTRA = frozenset(
    {
        "DefineStmt",
        "IndexStmt",
        "ViewStmt",
        "RuleStmt",
        "RenameStmt",
        "CommentStmt",
        "SecLabelStmt",
        "CompositeTypeStmt",
        "CreatedbStmt",
        "DropdbStmt",
        "ImportForeignSchemaStmt",
        "AlterSystemStmt",
    }
)
_MAINTENANCE_STMTS = frozenset(
    {"VacuumStmt", "ClusterStmt", "ReindexStmt", "CheckPointStmt", "RefreshMatViewStmt"}
)
_UTILITY_STMTS = frozenset(
    {
        "VariableShowStmt",
        "ListenStmt",
        "UnlistenStmt",
        "NotifyStmt",
        "ClosePortalStmt",
        "LoadStmt",
        "LockStmt",
    }
)
_DROP_STMTS = frozenset(
    {
        "DropStmt",
        "DropdbStmt",
        "DropRoleStmt",
        "DropTableSpaceStmt",
        "DropOwnedStmt",
        "DropUserMappingStmt",
        "DropSubscriptionStmt",
    }
)
_FDW_STMTS = frozenset(
    {
        "CreateForeignServerStmt",
        "AlterForeignServerStmt",
        "CreateUserMappingStmt",
        "AlterUserMappingStmt",
        "CreateForeignTableStmt",
        "ImportForeignSchemaStmt",
        "CreateFdwStmt",
        "AlterFdwStmt",
        "CreateSubscriptionStmt",
        "AlterSubscriptionStmt",
    }
)
_DROP_RELATION_TYPES = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_INDEX",
        "OBJECT_SEQUENCE",
        "OBJECT_FOREIGN_TABLE",
    }
)
# Node types with nothing policy cares about below them (no relations, no function calls).
_LEAF_NODES = frozenset(
    {
        "A_Const",
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "ParamRef",
        "A_Star",
        "ColumnRef",
        "SQLValueFunction",
        "TypeName",
        "SetToDefault",
        "RoleSpec",
    }
)
# Fields whose RangeVar is the *target* of a statement (a write), by owning node type.
_TARGET_FIELDS = frozenset({"relation", "relations", "view", "rel", "objects"})
_READ_OWNERS = frozenset({"SelectStmt", "RangeSubselect", "JoinExpr", "CopyStmt", "ExplainStmt"})
# Constructs that come from the shape of a statement (dropped for plain EXPLAIN).
_SHAPE_CONSTRUCTS = frozenset(
    {"delete_without_where", "update_without_where", "data_modifying_cte", "truncate"}
)


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One change of a run-time setting a statement makes (``SET``, ``SET LOCAL``, ``RESET``,
    ``set_config()``, a function's ``SET`` clause, ``ALTER ROLE / DATABASE ... SET``)."""

    name: str
    """Lower-case setting name; ``*`` when ``set_config`` computes it."""
    values: tuple[str, ...] | None
    """The literal value(s) as written (``SET search_path = a, b``: two); None for ``RESET``,
    ``DEFAULT`` or a computed value."""
    how: str
    """``SET``, ``SET LOCAL``, ``RESET``, ``set_config()``, ``function SET``, ``ALTER ROLE ...
    SET``, ``ALTER DATABASE ... SET``."""
    computed: bool = False
    """The value is not a literal (``set_config('work_mem', f(x), false)``)."""
    local: bool = False
    """Until the end of the transaction only (``SET LOCAL``, ``set_config(..., true)``)."""

    @property
    def resets(self) -> bool:
        """Back to the session default (``RESET x``, ``SET x TO DEFAULT``)."""
        return self.values is None and not self.computed


@dataclass(frozen=True, slots=True)
class StatementAnalysis:
    """What one statement does, independent of who sends it."""

    text: str
    """The statement's own text (a slice of the message)."""
    kind: str
    """The parse node type, e.g. ``SelectStmt``, ``PrepareStmt``, ``ExecuteStmt``."""
    classes: frozenset[str]
    reads: frozenset[Name] = frozenset()
    writes: frozenset[Name] = frozenset()
    functions: frozenset[Name] = frozenset()
    constructs: frozenset[str] = frozenset()
    details: tuple[str, ...] = ()
    """Human explanations of the constructs and notable facts (language, GUC names...)."""
    fingerprint: str = ""
    """pglast fingerprint of this statement (normalized: constants and spacing do not matter)."""
    prepares: str | None = None
    """For ``PREPARE name AS ...``: the name (this analysis is what the name will run)."""
    executes: tuple[str, ...] = ()
    """Prepared statement names this statement runs (``EXECUTE``), resolved or not."""
    unresolved: bool = False
    """True while an ``EXECUTE`` has not been matched with its prepared statement."""
    deallocates: str | None = None
    """``DEALLOCATE name`` (``"*"`` for ``ALL``): the gateway drops it after success."""
    search_path: tuple[str, ...] | None = None
    """New search_path for ``SET search_path`` (for the gateway's session state)."""
    reads_literals: bool = False
    """True when this analysis looked at the value of a constant (SET values, ``set_config``
    arguments, DO / function / EXPLAIN options, COPY and LOAD file names...): two texts that
    differ only in constants may then differ in analysis, so the engine caches it by exact text
    only (see :mod:`veilgate.policy.literals`)."""
    const_locations: frozenset[int] = frozenset()
    """Parser locations (byte offsets into the message) of the ``A_Const`` nodes the analysis
    met: constants whose value the parse tree holds as a plain value, nothing else.  Empty in an
    analysis rebound to another text (:meth:`with_text`)."""
    settings: tuple[SettingChange, ...] = ()
    """Every setting the statement changes (tiers with a ``settings:`` allowance check them)."""

    def with_text(self, text: str) -> StatementAnalysis:
        """This analysis for another text that differs only in constant values (a decision the
        engine shares between such texts; see :mod:`veilgate.policy.literals`).  Positional and
        field by field: ``dataclasses.replace`` costs microseconds on that hot path.  The
        constants' locations are not known for the other text: ``const_locations`` is empty."""
        return StatementAnalysis(
            text,
            self.kind,
            self.classes,
            self.reads,
            self.writes,
            self.functions,
            self.constructs,
            self.details,
            self.fingerprint,
            self.prepares,
            self.executes,
            self.unresolved,
            self.deallocates,
            self.search_path,
            self.reads_literals,
            frozenset(),
            self.settings,
        )

    @property
    def statement_class(self) -> str:
        """The most significant class, for logs and audit."""
        if not self.classes:
            return "other"
        return min(self.classes, key=lambda c: _CLASS_PRIORITY.get(c, 99))


@dataclass(frozen=True, slots=True)
class MessageAnalysis:
    """All statements of one message (a simple Query text or a Parse text)."""

    text: str
    statements: tuple[StatementAnalysis, ...]
    fingerprint: str
    unparseable: bool = False
    error: str | None = None
    needs_session: bool = False
    """True when some statement ``EXECUTE``s a name not prepared in the same message."""
    standard_conforming_strings: bool = True

    def with_text(self, text: str, statements: tuple[StatementAnalysis, ...]) -> MessageAnalysis:
        """This analysis for another text that differs only in constant values (see
        :meth:`StatementAnalysis.with_text`)."""
        return MessageAnalysis(
            text,
            statements,
            self.fingerprint,
            self.unparseable,
            self.error,
            self.needs_session,
            self.standard_conforming_strings,
        )

    @property
    def reads_literals(self) -> bool:
        """Some statement's analysis looked at a constant's value."""
        return any(s.reads_literals for s in self.statements)

    @property
    def const_locations(self) -> frozenset[int]:
        """Locations of every ``A_Const`` the analysis met, over all statements."""
        if len(self.statements) == 1:
            return self.statements[0].const_locations
        return frozenset().union(*(s.const_locations for s in self.statements))


def analyze(
    sql: str,
    *,
    standard_conforming_strings: bool = True,
    prepared: Mapping[str, StatementAnalysis] | None = None,
) -> MessageAnalysis:
    """Analyze every statement of ``sql``.  Never raises for bad SQL: returns ``unparseable``."""
    msg = _analyze_text(sql, 0, standard_conforming_strings)
    return resolve_executes(msg, prepared or {})


def _analyze_text(sql: str, depth: int, standard_conforming_strings: bool) -> MessageAnalysis:
    text = sql
    if "\x00" in sql:
        # The parser reads C strings: it would stop at the NUL and miss the rest.
        return _unparseable(sql, "NUL character in statement text", standard_conforming_strings)
    if not standard_conforming_strings:
        try:
            text = rewrite_nonstandard_strings(sql)
        except ValueError as exc:
            return _unparseable(sql, str(exc), standard_conforming_strings)
    try:
        tree = _load_tree(_pg.parse_sql_json(text))
    except _pg.ParseError as exc:
        return _unparseable(sql, str(exc), standard_conforming_strings)
    except RecursionError:
        return _unparseable(sql, "statement too deeply nested", standard_conforming_strings)
    except (ValueError, MemoryError) as exc:  # pragma: no cover - defensive
        return _unparseable(sql, f"cannot parse: {type(exc).__name__}", standard_conforming_strings)
    raw_stmts: list[dict[str, Any]] = tree.get("stmts", [])
    out: list[StatementAnalysis] = []
    encoded = None
    try:
        for raw in raw_stmts:
            stmt_text, encoded = _slice(text, encoded, raw)
            out.append(_analyze_stmt(raw["stmt"], stmt_text, depth, standard_conforming_strings))
    except RecursionError:  # pragma: no cover - the walker is iterative; defensive
        return _unparseable(sql, "statement too deeply nested", standard_conforming_strings)
    return MessageAnalysis(
        text=sql,
        statements=tuple(out),
        # One statement: its fingerprint is the message's (comments and ';' do not count).
        fingerprint=out[0].fingerprint if len(out) == 1 else _fingerprint(text),
        standard_conforming_strings=standard_conforming_strings,
    )


_DEEP_JSON_LIMIT = 12000
"""Recursion limit while decoding a deeply nested tree (long ``a + b + ...`` chains nest ~4 JSON
levels per operator).  Deeper trees are refused as unparseable (fail closed)."""


def _load_tree(js: str) -> dict[str, Any]:
    try:
        tree: dict[str, Any] = json.loads(js)
        return tree
    except RecursionError:
        old = sys.getrecursionlimit()
        if old >= _DEEP_JSON_LIMIT:
            raise
        sys.setrecursionlimit(_DEEP_JSON_LIMIT)
        try:
            deep: dict[str, Any] = json.loads(js)
            return deep
        finally:
            sys.setrecursionlimit(old)


def resolve_executes(
    msg: MessageAnalysis, prepared: Mapping[str, StatementAnalysis]
) -> MessageAnalysis:
    """Judge each ``EXECUTE name`` as what ``name`` runs: earlier in ``msg``, else ``prepared``.

    A name still unknown leaves the statement with ``unknown_prepared_statement``; the message then
    has ``needs_session`` (its decision depends on session state and must not be cached by text).
    """
    if msg.unparseable or not any(
        s.executes or s.prepares or s.deallocates for s in msg.statements
    ):
        return msg
    local: dict[str, StatementAnalysis | None] = {}
    out: list[StatementAnalysis] = []
    needs_session = False
    for st in msg.statements:
        if st.executes:
            merged = st
            unresolved = False
            for name in st.executes:
                target: StatementAnalysis | None
                if name in local:
                    target = local[name]
                else:
                    needs_session = True
                    target = prepared.get(name)
                if target is None or target.unresolved:
                    unresolved = True
                    continue
                merged = _merge(merged, target)
            constructs = set(merged.constructs) - {"unknown_prepared_statement"}
            details = [d for d in merged.details if not d.startswith("EXECUTE of unknown")]
            if unresolved:
                constructs.add("unknown_prepared_statement")
                names = ", ".join(st.executes)
                details.append(f"EXECUTE of unknown prepared statement {names}")
            st = replace(
                merged,
                constructs=frozenset(constructs),
                details=tuple(details),
                unresolved=unresolved,
            )
        out.append(st)
        if st.prepares is not None:
            local[st.prepares] = st
        if st.deallocates is not None:
            if st.deallocates == "*":
                local.clear()
                prepared = {}
            else:
                local[st.deallocates] = None
    return replace(msg, statements=tuple(out), needs_session=needs_session)


def _merge(st: StatementAnalysis, target: StatementAnalysis) -> StatementAnalysis:
    classes = set(st.classes) | set(target.classes)
    if st.kind == "ExecuteStmt":
        classes.discard("prepare")
    return replace(
        st,
        classes=frozenset(classes),
        reads=st.reads | target.reads,
        writes=st.writes | target.writes,
        functions=st.functions | target.functions,
        constructs=st.constructs | target.constructs,
        details=st.details + target.details,
        reads_literals=st.reads_literals or target.reads_literals,
        settings=st.settings + target.settings,
    )


def _unparseable(sql: str, error: str, scs: bool) -> MessageAnalysis:
    return MessageAnalysis(
        text=sql,
        statements=(),
        fingerprint="raw:" + hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()[:16],
        unparseable=True,
        error=error,
        standard_conforming_strings=scs,
    )


def _fingerprint(text: str) -> str:
    try:
        return _pg.fingerprint(text)
    except _pg.ParseError:  # pragma: no cover - text parsed already
        return "raw:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _slice(text: str, encoded: bytes | None, raw: Mapping[str, Any]) -> tuple[str, bytes | None]:
    """The statement's text.  libpg_query locations are byte offsets into the UTF-8 text."""
    loc = int(raw.get("stmt_location", 0))
    length = int(raw.get("stmt_len", 0))
    if text.isascii():
        piece = text[loc : loc + length] if length else text[loc:]
        return piece.strip(), encoded
    if encoded is None:
        encoded = text.encode("utf-8", "surrogatepass")
    chunk = encoded[loc : loc + length] if length else encoded[loc:]
    return chunk.decode("utf-8", "surrogatepass").strip(), encoded


# --------------------------------------------------------------------------------------------
# The walker


def _name_list(items: Iterable[Any]) -> list[str]:
    out = []
    for it in items:
        if isinstance(it, dict) and "String" in it:
            out.append(str(it["String"].get("sval", "")))
    return out


def _const_str(w: _Walk, node: Any) -> str | None:
    """The text of a string/number/bool constant node, else None.  Reading one marks the
    analysis as depending on constant values (``reads_literals``)."""
    if not isinstance(node, dict):
        return None
    c = node.get("A_Const")
    if c is None:
        return None
    w.reads_literals = True
    if "sval" in c:
        return str(c["sval"].get("sval", ""))
    if "ival" in c:
        return str(c["ival"].get("ival", 0))
    if "boolval" in c:
        return "true" if c["boolval"].get("boolval", False) else "false"
    if "fval" in c:
        return str(c["fval"].get("fval", ""))
    return None


def _defelem_value(w: _Walk, arg: Any) -> str | None:
    if not isinstance(arg, dict):
        return None
    # option values can be string or number literals (LANGUAGE 'plpgsql', ANALYZE 'off')
    w.reads_literals = True
    if "String" in arg:
        return str(arg["String"].get("sval", ""))
    if "Boolean" in arg:
        return "true" if arg["Boolean"].get("boolval", False) else "false"
    if "Integer" in arg:
        return str(arg["Integer"].get("ival", 0))
    return _const_str(w, arg)


def is_builtin(name: Name) -> bool:
    """Whether a function name (as written) is a PostgreSQL built-in."""
    schema, fn = name
    if schema is None or schema == "pg_catalog":
        return fn in BUILTIN_FUNCTIONS
    return schema == "information_schema"


def _show_name(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _target_scope(relation: Any, others: bool) -> FilterScope:
    """The names that denote the target row of a DELETE / UPDATE / MERGE (see
    :mod:`veilgate.policy.filters`); unqualified columns count only without other relations."""
    names: set[str] = set()
    if isinstance(relation, dict):
        rv = relation.get("RangeVar", relation)
        alias = rv.get("alias") if isinstance(rv, dict) else None
        if isinstance(alias, dict) and alias.get("aliasname"):
            names.add(str(alias["aliasname"]))
        elif isinstance(rv, dict):
            names.add(str(rv.get("relname", "")))
    return FilterScope(names, unqualified=not others)


def split_identifiers(text: str, sep: str = ",") -> list[str] | None:
    """A ``sep``-separated list of (possibly double-quoted) identifiers, as the server splits a
    list setting (``search_path``: commas) or a qualified name (dots): unquoted names are folded
    to lower case.  None when the text is not such a list."""
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j = i + 1
            name = []
            while True:
                k = text.find('"', j)
                if k < 0:
                    return None
                name.append(text[j:k])
                if text[k + 1 : k + 2] == '"':
                    name.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            out.append("".join(name))
        else:
            j = i
            while j < n and text[j] != sep and text[j] != '"' and not text[j].isspace():
                j += 1
            if j == i:
                return None if out or text.strip() else []
            out.append(text[i:j].lower())
            i = j
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        if text[i] != sep:
            return None
        i += 1


def _regclass_name(text: str) -> Name | None:
    """A table named by a ``regclass`` literal (``'public.t'``, ``'"My T"'``)."""
    parts = split_identifiers(text, ".")
    if parts is None or not 1 <= len(parts) <= 2 or not all(parts):
        return None
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


class _Walk:
    __slots__ = (
        "classes",
        "constructs",
        "consts",
        "depth",
        "details",
        "executes",
        "functions",
        "reads",
        "reads_literals",
        "scs",
        "settings",
        "writes",
    )

    def __init__(self, depth: int = 0, scs: bool = True) -> None:
        self.depth = depth
        self.scs = scs
        """standard_conforming_strings of the session: embedded SQL is lexed the same way."""
        """How deep in embedded SQL (query_to_xml text, DO blocks...) this statement is."""
        self.settings: list[SettingChange] = []
        self.reads_literals = False
        self.consts: list[int] = []
        """Locations of the A_Const nodes met (see StatementAnalysis.const_locations)."""
        self.classes: set[str] = set()
        self.reads: set[Name] = set()
        self.writes: set[Name] = set()
        self.functions: set[Name] = set()
        self.constructs: set[str] = set()
        self.details: list[str] = []
        self.executes: list[str] = []

    def flag(self, construct: str, detail: str) -> None:
        self.constructs.add(construct)
        if detail not in self.details:
            self.details.append(detail)

    # Iterative walk: (node, owner node type, field name, visible CTE names).
    def walk(self, root: Any, owner: str, key: str, ctes: frozenset[str]) -> None:
        stack: list[tuple[Any, str, str, frozenset[str]]] = [(root, owner, key, ctes)]
        pop = stack.pop
        push = stack.append
        leaves = _LEAF_NODES
        while stack:
            node, owner, key, ctes = pop()
            if type(node) is list:
                for item in node:
                    if type(item) is dict or type(item) is list:
                        push((item, owner, key, ctes))
                continue
            if len(node) == 1:
                ((k, v),) = node.items()
                if k in leaves:
                    if k == "A_Const":
                        self.consts.append(v.get("location", -1))
                    elif k == "TypeName":
                        self._typmods(v)
                    continue
                if k[:1].isupper() and type(v) is dict:
                    self._typed(k, v, owner, key, ctes, stack)
                    continue
            if "relname" in node:
                self._range_var(node, owner, key, ctes)
                continue
            if "withClause" in node:
                ctes = self._with(node["withClause"], owner, ctes, stack)
            for k, v in node.items():
                if (type(v) is dict or type(v) is list) and k != "withClause":
                    push((v, owner, k, ctes))

    def _typmods(self, tn: Any) -> None:
        # varchar(10): the typmods are plain constants (float(p) is not: the parser turns p into
        # the type name, so its token stays uncovered)
        for m in tn.get("typmods", ()) if type(tn) is dict else ():
            if type(m) is dict and "A_Const" in m:
                self.consts.append(m["A_Const"].get("location", -1))

    def _with(
        self,
        wc: Any,
        owner: str,
        ctes: frozenset[str],
        stack: list[tuple[Any, str, str, frozenset[str]]],
    ) -> frozenset[str]:
        if not isinstance(wc, dict):
            return ctes
        items = [c.get("CommonTableExpr", {}) for c in wc.get("ctes", []) if isinstance(c, dict)]
        names = [str(c.get("ctename", "")) for c in items]
        everything = ctes | frozenset(names)
        recursive = bool(wc.get("recursive", False))
        for i, cte in enumerate(items):
            visible = everything if recursive else ctes | frozenset(names[:i])
            q = cte.get("ctequery")
            if isinstance(q, dict) and len(q) == 1 and next(iter(q)) in _WRITE_STMTS:
                self.flag(
                    "data_modifying_cte",
                    f"WITH {names[i]} AS ({next(iter(q))[:-4].upper()} ...) modifies data",
                )
            stack.append((cte, "CommonTableExpr", "ctequery", visible))
        return everything

    def _range_var(self, rv: Mapping[str, Any], owner: str, key: str, ctes: frozenset[str]) -> None:
        name = str(rv.get("relname", ""))
        schema = rv.get("schemaname")
        ref: Name = (str(schema) if schema else None, name)
        if schema is None and name in ctes:
            return
        if owner == "CopyStmt" and key == "relation":
            return  # counted by _copy (read or write depends on the direction)
        target = key in _TARGET_FIELDS and owner not in _READ_OWNERS
        (self.writes if target else self.reads).add(ref)
        if name in SENSITIVE_RELATIONS:
            self.flag(
                "sensitive_catalog",
                f"{_show_name(ref[0], name)} exposes data values or other sessions' statement text",
            )

    def _typed(
        self,
        kind: str,
        body: dict[str, Any],
        owner: str,
        key: str,
        ctes: frozenset[str],
        stack: list[tuple[Any, str, str, frozenset[str]]],
    ) -> None:
        if kind == "RangeVar":
            self._range_var(body, owner, key, ctes)
            return
        if kind == "FuncCall":
            self._func_call(body)
        elif kind == "MergeStmt":
            self.classes.add("merge")
            self._check_merge(body)
        elif kind in _WRITE_STMTS:
            self.classes.add("write")
            if kind in ("DeleteStmt", "UpdateStmt"):
                self._check_where(kind, body)
        elif kind == "SelectStmt":
            if body.get("lockingClause"):
                self.flag("locking_read", "SELECT ... FOR UPDATE/SHARE locks rows")
        elif kind == "ExecuteStmt":
            self.executes.append(str(body.get("name", "")))
        if "withClause" in body:
            ctes = self._with(body["withClause"], kind, ctes, stack)
        push = stack.append
        for k, v in body.items():
            if (type(v) is dict or type(v) is list) and k != "withClause":
                push((v, kind, k, ctes))

    def _check_where(self, kind: str, body: Mapping[str, Any]) -> None:
        where = body.get("whereClause")
        others = body.get("usingClause") if kind == "DeleteStmt" else body.get("fromClause")
        scope = _target_scope(body.get("relation"), bool(others))
        truth, read = evaluate(where, scope)
        if read:
            self.reads_literals = True  # WHERE 1 = 1 and WHERE 1 = 0 differ only in constants
        if coarse(truth) != ALL:
            return
        verb = "DELETE" if kind == "DeleteStmt" else "UPDATE"
        construct = "delete_without_where" if kind == "DeleteStmt" else "update_without_where"
        if where is None:
            how = "no WHERE clause"
        elif truth == TRUE:
            how = "a WHERE clause that is true for every row"
        else:
            how = "a WHERE clause that does not depend on the row (all rows or none)"
        self.flag(construct, f"{verb} with {how} affects every row")

    def _check_merge(self, body: Mapping[str, Any]) -> None:
        """MERGE's join condition is judged like a WHERE: a WHEN MATCHED ... DELETE / UPDATE
        under an ON that is true for every row (or a WHEN NOT MATCHED BY SOURCE under one that
        is false) touches every row of the target."""
        scope = _target_scope(body.get("relation"), True)
        on, read = evaluate(body.get("joinCondition"), scope)
        for clause in body.get("mergeWhenClauses", []) or []:
            c = clause.get("MergeWhenClause", {}) if isinstance(clause, dict) else {}
            cmd = c.get("commandType")
            if cmd not in ("CMD_DELETE", "CMD_UPDATE"):
                continue
            cond, read_cond = evaluate(c.get("condition"), scope)
            read = read or read_cond
            match = str(c.get("matchKind", ""))
            rows = conjoin(negate(on) if match.endswith("BY_SOURCE") else on, cond)
            if coarse(rows) != ALL:
                continue
            verb = "DELETE" if cmd == "CMD_DELETE" else "UPDATE"
            construct = "delete_without_where" if cmd == "CMD_DELETE" else "update_without_where"
            when = "NOT MATCHED BY SOURCE" if match.endswith("BY_SOURCE") else "MATCHED"
            self.flag(
                construct,
                f"MERGE ... WHEN {when} THEN {verb} with a join condition that selects every "
                "row of the target",
            )
        if read:
            self.reads_literals = True

    def nested(self, pieces: Iterable[Embedded], what: str) -> None:
        """Judge SQL another statement runs (see :mod:`veilgate.policy.embedded`) as part of
        this statement: its classes, relations, functions and constructs become this one's."""
        for piece in pieces:
            if piece.text is None:
                self.flag("dynamic_sql", f"{piece.where}: SQL computed at run time")
                continue
            if self.depth >= _MAX_NESTING:
                self.flag("dynamic_sql", f"{piece.where}: SQL nested too deeply to inspect")
                continue
            inner = _analyze_text(piece.text, self.depth + 1, self.scs)
            if inner.unparseable:
                self.flag("dynamic_sql", f"{piece.where}: SQL text that does not parse")
                continue
            self._absorb(inner, piece.where)

    def nested_optional(self, pieces: Iterable[Embedded]) -> None:
        """Like :meth:`nested` for arguments that may or may not be SQL (dblink connection
        strings, cursor names): strings that do not parse are not SQL."""
        for piece in pieces:
            if piece.text is not None:
                inner = _analyze_text(piece.text, self.depth + 1, self.scs)
                if inner.unparseable or not inner.statements:
                    continue
                if self.depth >= _MAX_NESTING:
                    self.flag("dynamic_sql", f"{piece.where}: SQL nested too deeply to inspect")
                    continue
                self._absorb(inner, piece.where)
            else:
                self.flag("dynamic_sql", f"{piece.where}: SQL computed at run time")

    def _absorb(self, inner: MessageAnalysis, where: str) -> None:
        self.reads_literals = True  # the SQL is a constant: another constant is another SQL
        for st in inner.statements:
            self.classes |= st.classes
            self.reads |= st.reads
            self.writes |= st.writes
            self.functions |= st.functions
            self.constructs |= st.constructs
            self.settings.extend(st.settings)
            self.executes.extend(st.executes)
            for d in st.details:
                self.flag_detail(f"{where}: {d}")
            if not st.details:
                self.flag_detail(f"{where}: runs {st.statement_class} SQL")

    def flag_detail(self, detail: str) -> None:
        if detail not in self.details:
            self.details.append(detail)

    def _func_call(self, body: Mapping[str, Any]) -> None:
        parts = _name_list(body.get("funcname", []))
        if not parts:
            return
        name = parts[-1]
        schema = parts[-2] if len(parts) > 1 else None
        self.functions.add((schema, name))
        if not is_builtin((schema, name)):
            self.flag("user_function", f"{_show_name(schema, name)}() is not a built-in function")
        self._function_constructs(name, body.get("args", []))

    def _function_constructs(self, name: str, args: Any) -> None:
        low = name.lower()
        if low in _FILE_FUNCTIONS:
            self.flag("file_functions", f"{low}() accesses server files")
        if low.startswith("lo_") or low in ("loread", "lowrite"):
            self.flag("large_object", f"{low}() is a large-object function")
        if low.startswith("dblink") or low.startswith("postgres_fdw"):
            self.flag("dblink", f"{low}() reaches another database")
        if low in _TERMINATE_FUNCTIONS:
            self.flag("terminate_backend", f"{low}() signals backends or changes server state")
        if low in SENSITIVE_FUNCTIONS:
            self.flag(
                "sensitive_catalog",
                f"{low}() exposes data values or other sessions' statement text",
            )
        arglist = args if isinstance(args, list) else []
        pieces = function_sql(low, arglist, lambda n: _const_str(self, n))
        if pieces is not None:
            if tries_every_argument(low):
                self.nested_optional(pieces)
            else:
                self.nested(pieces, f"{low}()")
        elif table_argument(low):
            table = _const_str(self, arglist[0]) if arglist else None
            ref = _regclass_name(table) if table is not None else None
            if ref is None:
                self.flag("dynamic_sql", f"{low}() reads a table named at run time")
            else:
                self.reads.add(ref)
                self.classes.add("read")
        elif low in _DYNAMIC_SQL_FUNCTIONS:
            self.flag("dynamic_sql", f"{low}() runs SQL or reads tables named in its arguments")
        if low in ("nextval", "setval"):
            self.flag("sequence_write", f"{low}() changes a sequence")
        if low == "pg_notify":
            self.flag("notify", "pg_notify() sends a notification")
        if low == "set_config":
            self.flag("set_config", "set_config() changes a setting")
            first = _const_str(self, args[0]) if isinstance(args, list) and args else None
            value = _const_str(self, args[1]) if isinstance(args, list) and len(args) > 1 else None
            local = _const_str(self, args[2]) if isinstance(args, list) and len(args) > 2 else None
            is_local = local is not None and local.lower() not in _FALSE_WORDS
            if first is None:
                # Setting name not a literal: could be anything.
                self.flag("set_role", "set_config() with a computed setting name")
                self.flag("dangerous_guc", "set_config() with a computed setting name")
                self.flag("search_path_change", "set_config() with a computed setting name")
                self.settings.append(SettingChange("*", None, "set_config()", True, is_local))
            else:
                name = first.lower()
                self.settings.append(
                    SettingChange(
                        name,
                        (value,) if value is not None else None,
                        "set_config()",
                        value is None,
                        is_local,
                    )
                )
                self._guc(name, [value] if value is not None else None, "set_config()")

    def _guc(self, name: str, values: list[str] | None, how: str) -> None:
        """Flag a setting change; ``values`` None means RESET / DEFAULT / unknown value."""
        if name == "role":
            self.flag("set_role", f"{how} changes the current role")
        elif name == "session_authorization":
            self.flag("set_session_authorization", f"{how} changes the session user")
        elif name == "search_path":
            self.flag("search_path_change", f"{how} changes search_path")
        elif name in _DANGEROUS_GUCS:
            self.flag("dangerous_guc", f"{how} sets {name}")
        elif name in _READ_ONLY_GUCS and (
            values is None or any(v.lower() in _FALSE_WORDS for v in values)
        ):
            self.flag("dangerous_guc", f"{how} turns {name} off")


def _analyze_stmt(
    node: Mapping[str, Any], text: str, depth: int = 0, scs: bool = True
) -> StatementAnalysis:
    ((kind, body),) = node.items()
    w = _Walk(depth, scs)
    deallocates: str | None = None
    search_path: tuple[str, ...] | None = None
    walk_body = True

    if kind == "ExplainStmt":
        analyze_opt = False
        for opt in body.get("options", []) or []:
            de = opt.get("DefElem", {}) if isinstance(opt, dict) else {}
            if de.get("defname") == "analyze":
                val = _defelem_value(w, de.get("arg"))
                analyze_opt = val is None or val.lower() not in _FALSE_WORDS
        inner = _analyze_stmt(body.get("query", {}), text, depth, scs)
        if w.reads_literals:
            inner = replace(inner, reads_literals=True)
        if analyze_opt:
            return replace(
                inner,
                kind=kind,
                constructs=inner.constructs | {"explain_analyze"},
                details=(*inner.details, "EXPLAIN ANALYZE executes the statement"),
                fingerprint=_fingerprint(text),
            )
        return replace(
            inner,
            kind=kind,
            classes=frozenset({"utility"}),
            reads=inner.reads | inner.writes,
            writes=frozenset(),
            constructs=inner.constructs - _SHAPE_CONSTRUCTS,
            details=tuple(
                d
                for d in inner.details
                if not d.startswith(("DELETE with", "UPDATE with", "WITH ", "TRUNCATE", "MERGE"))
            ),
            fingerprint=_fingerprint(text),
        )
    if kind == "PrepareStmt":
        inner = _analyze_stmt(body.get("query", {}), text, depth, scs)
        return replace(
            inner,
            kind=kind,
            prepares=str(body.get("name", "")),
            fingerprint=_fingerprint(text),
        )
    if kind == "DeclareCursorStmt":
        inner = _analyze_stmt(body.get("query", {}), text, depth, scs)
        return replace(inner, kind=kind, fingerprint=_fingerprint(text))

    if kind == "SelectStmt":
        if body.get("intoClause"):
            w.classes.add("ddl")
            rel = body["intoClause"].get("rel", {})
            w.writes.add((rel.get("schemaname"), str(rel.get("relname", ""))))
            body = {k: v for k, v in body.items() if k != "intoClause"}
        w.classes.add("read")
    elif kind == "MergeStmt":
        w.classes.add("merge")
    elif kind in _WRITE_STMTS:
        w.classes.add("write")
    elif kind == "TruncateStmt":
        w.classes.add("write")
        w.flag("truncate", "TRUNCATE removes every row")
    elif kind == "CopyStmt":
        _copy(w, body)
    elif kind == "VariableSetStmt":
        search_path = _variable_set(w, body, "SET")
    elif kind == "AlterSystemStmt":
        w.classes.add("ddl")
        w.flag("alter_system", "ALTER SYSTEM changes the server configuration")
        walk_body = False
    elif kind == "DiscardStmt":
        w.classes.add("session")
        if body.get("target") == "DISCARD_ALL":
            deallocates = "*"  # DISCARD ALL includes DEALLOCATE ALL
    elif kind == "TransactionStmt":
        w.classes.add("transaction")
        tkind = str(body.get("kind", ""))
        if tkind in (
            "TRANS_STMT_PREPARE",
            "TRANS_STMT_COMMIT_PREPARED",
            "TRANS_STMT_ROLLBACK_PREPARED",
        ):
            w.flag("prepared_transaction", "two-phase commit statement")
        _transaction_options(w, body.get("options", []))
        walk_body = False
    elif kind == "ConstraintsSetStmt":
        w.classes.add("transaction")
    elif kind == "DeallocateStmt":
        w.classes.add("prepare")
        deallocates = "*" if body.get("isall") else str(body.get("name", ""))
    elif kind == "ExecuteStmt":
        w.classes.add("prepare")
    elif kind == "FetchStmt":
        w.classes.add("read")
    elif kind == "CallStmt":
        w.classes.add("call")
        fc = body.get("funccall")
        if isinstance(fc, dict):
            w._func_call(fc)
            body = {k: v for k, v in body.items() if k != "funccall"}
            body["args"] = fc.get("args", [])
    elif kind == "DoStmt":
        w.classes.add("do")
        _do_block(w, body)
        walk_body = False
    elif kind in ("CreateFunctionStmt", "AlterFunctionStmt"):
        w.classes.add("ddl")
        _function_def(w, kind, body, text)
        walk_body = kind == "AlterFunctionStmt"
    elif kind in ("AlterRoleSetStmt", "AlterDatabaseSetStmt"):
        w.classes.add("dcl" if kind == "AlterRoleSetStmt" else "ddl")
        setstmt = body.get("setstmt")
        if isinstance(setstmt, dict):
            what = "ROLE" if kind == "AlterRoleSetStmt" else "DATABASE"
            _setting(w, setstmt, f"ALTER {what} ... SET")
        walk_body = False
    elif kind in _MAINTENANCE_STMTS:
        w.classes.add("maintenance")
    elif kind in _UTILITY_STMTS:
        w.classes.add("utility")
        if kind == "LockStmt":
            w.flag("lock_table", "LOCK TABLE")
        elif kind == "LoadStmt":
            w.reads_literals = True  # the file name is a literal, and in the detail
            w.flag("load_library", f"LOAD {body.get('filename', '')!r} loads a shared library")
        elif kind == "NotifyStmt":
            w.flag("notify", "NOTIFY sends a notification")
    elif kind in _DCL_STMTS:
        w.classes.add("dcl")
    elif kind in _DDL_EXTRA or kind.startswith(("Create", "Alter", "Drop", "Import")):
        w.classes.add("ddl")
    else:
        w.classes.add("other")

    if kind in _DROP_STMTS:
        w.flag("drop", f"{_drop_label(kind, body)} destroys objects")
        if kind == "DropStmt" and body.get("removeType") in _DROP_RELATION_TYPES:
            for obj in body.get("objects", []) or []:
                items = obj.get("List", {}).get("items", []) if isinstance(obj, dict) else []
                parts = _name_list(items)
                if parts:
                    w.writes.add((parts[-2] if len(parts) > 1 else None, parts[-1]))
    if kind == "AlterTableStmt":
        for cmd in body.get("cmds", []) or []:
            sub = cmd.get("AlterTableCmd", {}).get("subtype") if isinstance(cmd, dict) else None
            if sub == "AT_DropColumn":
                w.flag("drop", "ALTER TABLE ... DROP COLUMN destroys data")
    if kind in _FDW_STMTS:
        w.flag("dblink", f"{kind[:-4]} sets up access to another server")
    if kind == "CreateExtensionStmt":
        ext = str(body.get("extname", ""))
        w.flag("create_extension", f"CREATE EXTENSION {ext}")
        if ext in ("dblink", "postgres_fdw"):
            w.flag("dblink", f"extension {ext} reaches other databases")
        if ext in ("file_fdw", "adminpack"):
            w.flag("file_functions", f"extension {ext} accesses server files")

    if walk_body:
        w.walk({kind: body}, "", "", frozenset())
    return StatementAnalysis(
        text=text,
        kind=kind,
        classes=frozenset(w.classes),
        reads=frozenset(w.reads - w.writes) if kind in _WRITE_STMTS else frozenset(w.reads),
        writes=frozenset(w.writes),
        functions=frozenset(w.functions),
        constructs=frozenset(w.constructs),
        details=tuple(w.details),
        fingerprint=_fingerprint(text) if text else "",
        executes=tuple(w.executes),
        unresolved=bool(w.executes),
        deallocates=deallocates,
        search_path=search_path,
        reads_literals=w.reads_literals,
        const_locations=frozenset(w.consts),
        settings=tuple(w.settings),
    )


def _drop_label(kind: str, body: Mapping[str, Any]) -> str:
    if kind == "DropStmt":
        t = str(body.get("removeType", "OBJECT_")).removeprefix("OBJECT_").replace("_", " ")
        return f"DROP {t}"
    return {
        "DropdbStmt": "DROP DATABASE",
        "DropRoleStmt": "DROP ROLE",
        "DropTableSpaceStmt": "DROP TABLESPACE",
        "DropOwnedStmt": "DROP OWNED",
        "DropUserMappingStmt": "DROP USER MAPPING",
        "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    }.get(kind, kind)


def _copy(w: _Walk, body: Mapping[str, Any]) -> None:
    is_from = bool(body.get("is_from", False))
    w.classes.add("copy_in" if is_from else "copy_out")
    rel = body.get("relation")
    if isinstance(rel, dict):
        ref: Name = (rel.get("schemaname"), str(rel.get("relname", "")))
        (w.writes if is_from else w.reads).add(ref)
    if body.get("query") is not None:
        w.classes.add("read")
    direction = "FROM" if is_from else "TO"
    if body.get("is_program") or body.get("filename") is not None:
        w.reads_literals = True  # the command or file name is a literal
    if body.get("is_program"):
        w.flag("copy_program", f"COPY ... {direction} PROGRAM runs a shell command on the server")
    elif body.get("filename") is not None:
        w.flag("copy_server_file", f"COPY ... {direction} a server-side file")


def _variable_set(w: _Walk, body: Mapping[str, Any], how: str) -> tuple[str, ...] | None:
    vkind = str(body.get("kind", ""))
    name = str(body.get("name", "")).lower()
    args = body.get("args", []) or []
    if vkind == "VAR_SET_MULTI":
        if name == "transaction":
            w.classes.add("transaction")
        else:
            w.classes.add("session")
        _transaction_options(w, args)
        return None
    if vkind == "VAR_RESET_ALL":
        w.classes.add("session")
        return None
    if name in ("role", "session_authorization"):
        w.classes.add("role_change")
    else:
        w.classes.add("session")
    values = _setting(w, body, "SET")
    if name == "search_path" and values is not None:
        return tuple(values)
    return None


def _setting(w: _Walk, body: Mapping[str, Any], how: str) -> list[str] | None:
    """Record (and flag) one setting change of a VariableSetStmt-shaped node; its literal
    values (None: RESET / DEFAULT / FROM CURRENT)."""
    vkind = str(body.get("kind", ""))
    name = str(body.get("name", "")).lower()
    if vkind in ("VAR_SET_MULTI", "VAR_RESET_ALL") or not name:
        return None
    local = bool(body.get("is_local", False))
    verb = how
    if how == "SET":
        verb = "RESET" if vkind == "VAR_RESET" else ("SET LOCAL" if local else "SET")
    values: list[str] | None = None
    computed = False
    if vkind == "VAR_SET_VALUE":
        args = body.get("args", []) or []
        values = [v for v in (_const_str(w, a) for a in args) if v is not None]
        computed = len(values) != len(args) or not values
    w.settings.append(
        SettingChange(name, tuple(values) if values is not None else None, verb, computed, local)
    )
    if vkind in ("VAR_RESET", "VAR_SET_DEFAULT", "VAR_SET_CURRENT") and name == "search_path":
        return values  # back to the session's starting path: no change of resolution
    w._guc(name, values, f"{verb} {name}")
    return values


def _transaction_options(w: _Walk, options: Any) -> None:
    for opt in options or []:
        de = opt.get("DefElem", {}) if isinstance(opt, dict) else {}
        if de.get("defname") == "transaction_read_only":
            val = _const_str(w, de.get("arg"))
            if val is not None and val.lower() in _FALSE_WORDS:
                w.flag("read_write_transaction", "transaction explicitly READ WRITE")


def _function_def(w: _Walk, kind: str, body: Mapping[str, Any], text: str) -> None:
    opts = body.get("options" if kind == "CreateFunctionStmt" else "actions", []) or []
    language = None
    definer = False
    source: str | None = None
    for opt in opts:
        de = opt.get("DefElem", {}) if isinstance(opt, dict) else {}
        name = de.get("defname")
        if name == "language":
            language = _defelem_value(w, de.get("arg"))
        elif name == "security":
            definer = (_defelem_value(w, de.get("arg")) or "false") == "true"
        elif name == "as":
            arg = de.get("arg")
            items = arg.get("List", {}).get("items", []) if isinstance(arg, dict) else []
            strings = _name_list(items)
            source = strings[0] if strings else None
        elif name == "set" and isinstance(de.get("arg"), dict):
            setstmt = de["arg"].get("VariableSetStmt")
            if isinstance(setstmt, dict):
                _setting(w, setstmt, "function SET")
    if kind == "CreateFunctionStmt":
        what = "PROCEDURE" if body.get("is_procedure") else "FUNCTION"
        lang = f" LANGUAGE {language}" if language else ""
        w.flag("create_function", f"CREATE {what}{lang}")
        _function_body(w, (language or "sql").lower(), source, body.get("sql_body"), text)
    if definer:
        w.flag("security_definer_function", "function runs with its owner's privileges")


def _function_body(w: _Walk, language: str, source: str | None, sql_body: Any, text: str) -> None:
    """What a function created here will run, judged now (a call of it later is a
    ``user_function`` the gateway cannot see into)."""
    w.reads_literals = True  # the body is a literal
    if sql_body is not None:
        stmts = sql_body.get("List", {}).get("items", []) if isinstance(sql_body, dict) else []
        if isinstance(sql_body, dict) and "ReturnStmt" in sql_body:
            stmts = [sql_body]
        for item in stmts:
            nodes = item.get("List", {}).get("items", []) if isinstance(item, dict) else []
            for node in nodes if nodes else [item]:
                if isinstance(node, dict) and len(node) == 1:
                    inner = _analyze_stmt(node, "", w.depth + 1, w.scs)
                    w._absorb(MessageAnalysis("", (inner,), ""), "function body")
        return
    if source is None:
        return
    if language == "sql":
        w.nested([Embedded(source, "function body")], "function body")
    elif language == "plpgsql":
        pieces, error = plpgsql_sql(text, do_block=False)
        if error is not None:
            w.flag("dynamic_sql", f"function body the gateway cannot parse: {error}")
        else:
            w.nested(pieces, "function body")
    else:
        w.flag("dynamic_sql", f"function body in {language}: code the gateway cannot inspect")


def _do_block(w: _Walk, body: Mapping[str, Any]) -> None:
    lang = "plpgsql"
    code: str | None = None
    for opt in body.get("args", []) or []:
        de = opt.get("DefElem", {}) if isinstance(opt, dict) else {}
        if de.get("defname") == "language":
            lang = _defelem_value(w, de.get("arg")) or lang
        elif de.get("defname") == "as":
            code = _defelem_value(w, de.get("arg"))
    w.reads_literals = True  # the body is a literal
    w.flag("do_block", f"DO block runs anonymous {lang} code")
    if lang.lower() != "plpgsql" or code is None:
        w.flag("dynamic_sql", f"DO block in {lang}: code the gateway cannot inspect")
        return
    pieces, error = plpgsql_sql(code, do_block=True)
    if error is not None:
        w.flag("dynamic_sql", f"DO block the gateway cannot parse: {error}")
        return
    w.nested(pieces, "DO block")


# --------------------------------------------------------------------------------------------
# standard_conforming_strings = off


_IDENT_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_IDENT_REST = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_CONTINUE = re.compile(r"(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*[\n\r])*'")


def rewrite_nonstandard_strings(sql: str) -> str:
    """Re-lex ``sql`` as the server does with ``standard_conforming_strings = off``.

    Every ordinary ``'...'`` literal (and ``N'...'``) is rewritten as the equivalent ``E'...'``
    literal, so that a parser running with the setting on reads the same tokens the server will.
    Raises ``ValueError`` for ``U&'...'`` literals, which the server refuses in that mode.
    """
    out: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j])
            i = j
        elif c == "/" and sql.startswith("/*", i):
            j = _skip_block_comment(sql, i)
            out.append(sql[i:j])
            i = j
        elif c == '"':
            j = _skip_quoted_ident(sql, i)
            out.append(sql[i:j])
            i = j
        elif c == "'":
            # An identifier right before the quote (``date'...'``) must stay apart from the E.
            out.append(" E" if out and _IDENT_CHAR.match(out[-1][-1:]) else "E")
            j = _skip_string(sql, i, escapes=True)
            out.append(sql[i:j])
            i = j
        elif c == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m is None:
                out.append(c)
                i += 1
                continue
            tag = m.group(0)
            end = sql.find(tag, m.end())
            j = n if end < 0 else end + len(tag)
            out.append(sql[i:j])
            i = j
        elif c.isdigit():
            m = _NUMBER.match(sql, i)
            assert m is not None
            out.append(m.group(0))
            i = m.end()
        elif _IDENT_START.match(c):
            nxt = sql[i + 1 : i + 2]
            low = c.lower()
            if nxt == "'" and low == "e":
                j = _skip_string(sql, i + 1, escapes=True)
                out.append(sql[i:j])
                i = j
            elif nxt == "'" and low == "n":
                out.append("nchar E")
                j = _skip_string(sql, i + 1, escapes=True)
                out.append(sql[i + 1 : j])
                i = j
            elif nxt == "'" and low in ("b", "x"):
                j = _skip_string(sql, i + 1, escapes=False)
                out.append(sql[i:j])
                i = j
            elif low == "u" and nxt == "&" and sql[i + 2 : i + 3] == "'":
                raise ValueError(
                    "unsafe use of string constant with Unicode escapes "
                    "(standard_conforming_strings is off)"
                )
            elif low == "u" and nxt == "&" and sql[i + 2 : i + 3] == '"':
                j = _skip_quoted_ident(sql, i + 2)
                out.append(sql[i:j])
                i = j
            else:
                m = _IDENT_REST.match(sql, i + 1)
                assert m is not None
                out.append(sql[i : m.end()])
                i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    n = len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_quoted_ident(sql: str, i: int) -> int:
    n = len(sql)
    j = i + 1
    while j < n:
        if sql[j] == '"':
            if sql[j + 1 : j + 2] == '"':
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _skip_string(sql: str, i: int, *, escapes: bool) -> int:
    """From the opening quote at ``i``, the index after the literal (continuations included)."""
    n = len(sql)
    j = i + 1
    while j < n:
        c = sql[j]
        if escapes and c == "\\":
            j += 2
            continue
        if c == "'":
            if sql[j + 1 : j + 2] == "'":
                j += 2
                continue
            m = _CONTINUE.match(sql, j + 1)
            if m is not None:
                j = m.end()
                continue
            return j + 1
        j += 1
    return n
