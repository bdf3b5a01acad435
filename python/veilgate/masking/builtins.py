"""What the lineage resolver knows about PostgreSQL's built-in functions, operators and types.

Three questions, each answered fail-closed (a name not listed gets the cautious answer):

* **Does a function's result come only from its arguments?**  Every ``pg_catalog`` function is
  taken to compute its result from its arguments (and catalog or session facts that are no table
  data), except :data:`DATA_READERS`: those run SQL given as text, read files, large objects, WAL
  or cursors, so their result is of unknown origin ("opaque").  A function outside
  ``pg_catalog`` (a user or extension function) is always opaque, and so is an unqualified
  name some other schema also defines (the server may pick that one).
* **Can it fail or branch on a masked argument?**  A masked value may flow into an argument
  position listed in :data:`TOTAL_FUNCTIONS` / :data:`TOTAL_OPERATORS` (the function cannot
  raise an error, nor behave visibly differently, because of that value: its result is masked
  as a whole anyway).  Any other position is a *use* of the masked column: an error or a branch
  there tells the client something about the value (``ssn::int`` fails for some values and not
  for others), so tiers that mask deny it by default.
* **Which casts are total?**  A cast to a text type never fails (:data:`TEXT_TYPES`); any other
  target type may.

The lists name functions by their unqualified name, as PostgreSQL stores them in ``pg_proc``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ALL_ARGS",
    "BUILTIN_TYPES",
    "DATA_READERS",
    "NULLNESS_ONLY",
    "OPAQUE_EXTENSION_FUNCTIONS",
    "SYSTEM_COLUMNS",
    "TEXT_TYPES",
    "TOTAL_FUNCTIONS",
    "TOTAL_OPERATORS",
    "opaque_extension_function",
    "total_positions",
]

ALL_ARGS: Final = frozenset({-1})
"""Every argument position is total."""

DATA_READERS: Final = frozenset(
    {
        # run SQL passed as text, or read a cursor
        *("query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema"),
        *("table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema"),
        *("cursor_to_xml", "cursor_to_xmlschema"),
        *("schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema"),
        *("database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema"),
        *("ts_stat", "ts_rewrite"),
        # files, large objects, WAL
        *("pg_read_file", "pg_read_binary_file", "lo_get", "loread", "lo_export"),
        *("pg_logical_slot_get_changes", "pg_logical_slot_peek_changes"),
        *("pg_logical_slot_get_binary_changes", "pg_logical_slot_peek_binary_changes"),
        # other sessions' statement text
        *("pg_stat_get_activity", "pg_stat_get_backend_activity"),
    }
)
"""``pg_catalog`` functions whose result is not computed from their arguments alone."""

_STR0: Final = frozenset({0})

TOTAL_FUNCTIONS: Final[dict[str, frozenset[int]]] = {
    # strings: the value in, a value out, no error for any input
    **dict.fromkeys(
        (
            "lower",
            "upper",
            "initcap",
            "length",
            "char_length",
            "character_length",
            "octet_length",
            "bit_length",
            "md5",
            "sha224",
            "sha256",
            "sha384",
            "sha512",
            "reverse",
            "concat",
            "concat_ws",
            "textcat",
            "btrim",
            "ltrim",
            "rtrim",
            "replace",
            "translate",
            "strpos",
            "position",
            "starts_with",
            "quote_literal",
            "quote_ident",
            "quote_nullable",
            "to_hex",
            "ascii",
            "left",
            "right",
            "textlen",
            "hashtext",
            "hashtextextended",
            "unistr",
        ),
        ALL_ARGS,
    ),
    **dict.fromkeys(("substr", "substring", "split_part", "repeat", "encode"), _STR0),
    **dict.fromkeys(("lpad", "rpad"), frozenset({0, 2})),
    **dict.fromkeys(("overlay",), frozenset({0, 1})),
    **dict.fromkeys(
        ("regexp_replace",), frozenset({0, 2})
    ),  # source and replacement; the pattern may not compile
    **dict.fromkeys(
        ("regexp_match", "regexp_matches", "regexp_like", "regexp_count", "regexp_substr"),
        _STR0,
    ),
    "format": frozenset(range(1, 101)),  # the values, not the format string
    "to_char": _STR0,
    # json built from values
    **dict.fromkeys(
        (
            "to_json",
            "to_jsonb",
            "row_to_json",
            "array_to_json",
            "json_build_object",
            "jsonb_build_object",
            "json_build_array",
            "jsonb_build_array",
            "json_typeof",
            "jsonb_typeof",
            "jsonb_pretty",
            "json_strip_nulls",
            "jsonb_strip_nulls",
            "json_extract_path",
            "jsonb_extract_path",
            "json_extract_path_text",
            "jsonb_extract_path_text",
        ),
        ALL_ARGS,
    ),
    # aggregates and window functions that only collect, count or pick values
    **dict.fromkeys(
        (
            "count",
            "min",
            "max",
            "sum",
            "avg",
            "array_agg",
            "string_agg",
            "json_agg",
            "jsonb_agg",
            "json_object_agg",
            "jsonb_object_agg",
            "bool_and",
            "bool_or",
            "every",
            "lag",
            "lead",
            "first_value",
            "last_value",
            "nth_value",
            "any_value",
            "mode",
            "percentile_disc",
        ),
        ALL_ARGS,
    ),
    # arrays
    **dict.fromkeys(
        (
            "array_length",
            "cardinality",
            "array_to_string",
            "array_cat",
            "array_append",
            "array_prepend",
            "array_remove",
            "array_position",
            "array_positions",
            "array_ndims",
            "array_dims",
            "unnest",
        ),
        ALL_ARGS,
    ),
    # numbers that cannot overflow or divide
    **dict.fromkeys(("round", "floor", "ceil", "ceiling", "sign", "trunc"), _STR0),
    # dates: the value (not the field name or format)
    **dict.fromkeys(("date_trunc",), frozenset({1})),
    **dict.fromkeys(("date_part", "extract"), frozenset({1})),
    # network addresses: parts of a valid value
    **dict.fromkeys(
        ("host", "abbrev", "family", "masklen", "netmask", "network", "broadcast", "hostmask"),
        ALL_ARGS,
    ),
    # nothing to do with the value
    **dict.fromkeys(("pg_typeof", "pg_column_size", "num_nulls", "num_nonnulls"), ALL_ARGS),
}
"""Function name -> argument positions (0-based) where a masked value cannot make the call fail
or branch visibly (:data:`ALL_ARGS`: every position)."""

NULLNESS_ONLY: Final = frozenset({"count", "num_nulls", "num_nonnulls"})
"""Functions whose result says only whether arguments are NULL (which masking does not hide:
a NULL stays NULL): the result does not carry the arguments' lineage."""

TOTAL_OPERATORS: Final[dict[str, frozenset[int]]] = {
    # comparisons: a boolean that is masked as a whole
    **dict.fromkeys(("=", "<>", "!=", "<", ">", "<=", ">="), ALL_ARGS),
    "||": ALL_ARGS,
    # LIKE / regular expressions: the text side (a pattern may be malformed)
    **dict.fromkeys(("~~", "~~*", "!~~", "!~~*", "~", "~*", "!~", "!~*"), _STR0),
    # json / jsonb access and containment
    **dict.fromkeys(("->", "->>", "#>", "#>>", "@>", "<@", "?", "?|", "?&"), ALL_ARGS),
}
"""Operator name -> argument positions (0 left, 1 right) where a masked value is harmless."""

TEXT_TYPES: Final = frozenset(
    {"text", "varchar", "bpchar", "char", "name", "character varying", "character", "citext"}
)
"""Cast targets any value converts to without error."""

BUILTIN_TYPES: Final = frozenset(
    {
        *TEXT_TYPES,
        *("int2", "int4", "int8", "numeric", "float4", "float8", "bool", "date", "time"),
        *("timetz", "timestamp", "timestamptz", "interval", "json", "jsonb", "uuid", "oid"),
        *("bytea", "inet", "cidr", "macaddr", "money", "bit", "varbit", "xml", "tsvector"),
        *("tsquery", "int4range", "int8range", "numrange", "daterange", "tsrange"),
        *("tstzrange", "record", "regtype", "regclass", "regproc", "regprocedure"),
        *("regoper", "regoperator", "regnamespace", "regrole", "regconfig"),
        *("regdictionary", "regcollation", "anyelement", "unknown", "void", "xid", "cid"),
        *("tid", "pg_lsn", "point", "line", "lseg", "box", "path", "polygon", "circle"),
        *("jsonpath", "txid_snapshot", "pg_snapshot", "xid8", "aclitem"),
    }
)
"""Types PostgreSQL defines in ``pg_catalog`` (a cast to one of these runs no user code)."""

SYSTEM_COLUMNS: Final = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
"""System columns every table has: row bookkeeping, no table data."""


def total_positions(name: str, operator: bool = False) -> frozenset[int]:
    """Argument positions where a masked value is harmless for this built-in (empty: none)."""
    table = TOTAL_OPERATORS if operator else TOTAL_FUNCTIONS
    return table.get(name, frozenset())


OPAQUE_EXTENSION_FUNCTIONS: Final = frozenset(
    {
        # run SQL given as text (here or on another server)
        "dblink*",
        "crosstab*",
        "connectby",
        "xpath_table",
        # other sessions' statement text
        "pg_stat_statements*",
        "pg_stat_monitor*",
        "pg_qualstats*",
        # raw pages, tuples and WAL: stored values
        "get_raw_page",
        "*_page_items",
        "*_page_items_bytea",
        "gin_leafpage_items",
        "tuple_data_split",
        "heap_page_item_attrs",
        "pg_get_wal_*",
        # files and large objects
        "pg_file_read",
        "pg_read_*",
        "lo_*",
    }
)
"""Name globs of extension C functions whose result is not computed from their arguments alone
(every other C function an extension installed counts as a built-in for lineage)."""


def opaque_extension_function(name: str) -> bool:
    """Whether an extension's C function of this name is of unknown origin (see
    :data:`OPAQUE_EXTENSION_FUNCTIONS`)."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern) for pattern in OPAQUE_EXTENSION_FUNCTIONS)
