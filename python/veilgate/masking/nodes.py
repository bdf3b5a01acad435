"""Every node type of the SQL grammar, classified for the lineage resolver.

The resolver (:mod:`veilgate.masking.resolve`) has a rule for each expression, FROM item and
statement node type it reads.  Everything else the grammar can produce is listed here with the
reason it needs no rule of its own: a part its parent's rule reads, a node only the server's
analyzer creates (never in a raw parse tree), or a statement that neither returns table data nor
moves column values.  ``tests/unit/test_masking_nodes.py`` checks that every node type pglast
knows is in exactly one class, so a grammar upgrade that adds one fails until someone decides.

:data:`RENAMING` lists the node types that introduce or rename a column (what a masked value
could escape its name through); each must have a rule (or be a part its parent's rule reads).
"""

from __future__ import annotations

from typing import Final

from .resolve import _EXPRESSIONS, _FROM, _STATEMENTS

__all__ = ["ANALYZED", "HANDLED", "PARTS", "RENAMING", "UTILITY"]

HANDLED: Final = frozenset(_EXPRESSIONS) | frozenset(_FROM) | frozenset(_STATEMENTS)
"""Node types with a rule of their own in the resolver."""

PARTS: Final[dict[str, str]] = {
    "A_Star": "ColumnRef / A_Indirection (star expansion, whole rows)",
    "A_Indices": "A_Indirection (subscripts)",
    "Alias": "FROM items (alias and column list: renames)",
    "CaseWhen": "CaseExpr",
    "CommonTableExpr": "WITH (CTE name and column list: renames)",
    "WithClause": "statements (CTEs)",
    "CTESearchClause": "CommonTableExpr (SEARCH adds a column)",
    "CTECycleClause": "CommonTableExpr (CYCLE adds columns, compares values)",
    "ResTarget": "target lists, INSERT column lists, UPDATE SET (output names: renames)",
    "SortBy": "ORDER BY",
    "WindowDef": "WINDOW / OVER",
    "GroupingSet": "GROUP BY (ROLLUP, CUBE, GROUPING SETS)",
    "IntoClause": "SELECT INTO / CREATE TABLE AS (names the new table's columns)",
    "OnConflictClause": "INSERT",
    "InferClause": "INSERT ... ON CONFLICT",
    "IndexElem": "ON CONFLICT, CREATE INDEX, exclusion constraints",
    "MergeWhenClause": "MERGE",
    "ReturningClause": "RETURNING",
    "ReturningOption": "RETURNING WITH (OLD AS o, NEW AS n): renames the old / new rows",
    "RangeTableFuncCol": "XMLTABLE (column names)",
    "JsonTableColumn": "JSON_TABLE (column names)",
    "JsonTablePathSpec": "JSON_TABLE (a path: a constant)",
    "JsonArgument": "JSON_TABLE / JSON_VALUE ... PASSING",
    "JsonFormat": "JSON expressions (no value)",
    "JsonReturning": "JSON expressions (a type)",
    "JsonOutput": "JSON constructors (a type)",
    "JsonBehavior": "JSON_VALUE / JSON_QUERY (ON ERROR DEFAULT expr: read with its parent)",
    "JsonAggConstructor": "JSON_OBJECTAGG / JSON_ARRAYAGG (FILTER, ORDER BY, OVER)",
    "ColumnDef": "column definition lists, ALTER TABLE (names the columns)",
    "TypeName": "casts, column definitions",
    "NamedArgExpr": "function calls (named arguments)",
    "Constraint": "ALTER TABLE (CHECK, GENERATED, UNIQUE)",
    "AlterTableCmd": "ALTER TABLE",
    "PartitionCmd": "ALTER TABLE ... DETACH PARTITION",
    "String": "names",
    "Integer": "constants",
    "Float": "constants",
    "Boolean": "constants",
    "BitString": "constants",
    "ValUnion": "constants",
    "DefElem": "statement options (constants)",
    "RoleSpec": "role names",
    "LockingClause": "FOR UPDATE / FOR SHARE (locks rows, reads nothing)",
    "TableLikeClause": "CREATE TABLE (LIKE t): copies definitions, not data",
    "PartitionSpec": "CREATE TABLE ... PARTITION BY (a new, empty table)",
    "PartitionElem": "CREATE TABLE ... PARTITION BY",
    "PartitionBoundSpec": "CREATE TABLE ... PARTITION OF (constants)",
    "PartitionRangeDatum": "partition bounds (constants)",
    "ObjectWithArgs": "utility statements (object names)",
    "AccessPriv": "GRANT (privilege and column names)",
    "FunctionParameter": "CREATE FUNCTION (parameter names of the function body)",
    "StatsElem": "CREATE STATISTICS",
    "TriggerTransition": "CREATE TRIGGER ... REFERENCING (names for the trigger's own code)",
    "VacuumRelation": "VACUUM / ANALYZE",
    "PublicationObjSpec": "CREATE PUBLICATION",
    "PublicationTable": "CREATE PUBLICATION",
    "CreateOpClassItem": "CREATE OPERATOR CLASS",
    "ATAlterConstraint": "ALTER TABLE ... ALTER CONSTRAINT (deferrability)",
    "InlineCodeBlock": "DO (the block's code: judged by the policy's do_block rules)",
    "RawStmt": "the parse result's statement wrapper",
}
"""Node types their parent's rule reads (with where)."""

ANALYZED: Final = frozenset(
    {
        *("Aggref", "AlternativeSubPlan", "ArrayCoerceExpr", "ArrayExpr", "CallContext"),
        *("CaseTestExpr", "CoerceToDomain", "CoerceToDomainValue", "CoerceViaIO"),
        *("CollateExpr", "ConvertRowtypeExpr", "Expr", "FieldSelect", "FieldStore"),
        *("FromExpr", "FuncExpr", "InferenceElem", "JsonConstructorExpr", "JsonExpr"),
        *("MergeAction", "OnConflictExpr", "OpExpr", "Param", "Query", "RangeTblEntry"),
        *("RangeTblFunction", "RangeTblRef", "RelabelType", "ReturningExpr"),
        *("RowCompareExpr", "RowMarkClause", "RTEPermissionInfo", "ScalarArrayOpExpr"),
        # a raw tree writes set operations as SelectStmt (op, larg, rarg) and subscripts as
        # A_Indirection
        *("SetOperationStmt", "SubscriptingRef"),
        *("SortGroupClause", "SubPlan", "TableFunc", "TableSampleClause", "TargetEntry"),
        *("Var", "WindowClause", "WindowFunc", "WindowFuncRunCondition", "WithCheckOption"),
        # PL/pgSQL-only and SQL-function-body-only statements
        *("PLAssignStmt", "ReturnStmt"),
    }
)
"""Node types only the server's analyzer (or PL/pgSQL) creates: never in a raw parse tree of
a client statement."""

UTILITY: Final = frozenset(
    {
        *("AlterCollationStmt", "AlterDatabaseRefreshCollStmt", "AlterDatabaseSetStmt"),
        *("AlterDatabaseStmt", "AlterDefaultPrivilegesStmt", "AlterDomainStmt"),
        *("AlterEnumStmt", "AlterEventTrigStmt", "AlterExtensionContentsStmt"),
        *("AlterExtensionStmt", "AlterFdwStmt", "AlterForeignServerStmt"),
        *("AlterFunctionStmt", "AlterObjectDependsStmt", "AlterOpFamilyStmt"),
        *("AlterOperatorStmt", "AlterOwnerStmt", "AlterPublicationStmt", "AlterRoleSetStmt"),
        *("AlterRoleStmt", "AlterSeqStmt", "AlterStatsStmt", "AlterSubscriptionStmt"),
        *("AlterSystemStmt", "AlterTSConfigurationStmt", "AlterTSDictionaryStmt"),
        *("AlterTableMoveAllStmt", "AlterTableSpaceOptionsStmt", "AlterTypeStmt"),
        *("AlterUserMappingStmt", "CheckPointStmt", "ClosePortalStmt", "ClusterStmt"),
        *("CommentStmt", "CompositeTypeStmt", "ConstraintsSetStmt", "CreateAmStmt"),
        *("CreateCastStmt", "CreateConversionStmt", "CreateDomainStmt", "CreateEnumStmt"),
        *("CreateEventTrigStmt", "CreateExtensionStmt", "CreateFdwStmt"),
        *("CreateForeignServerStmt", "CreateForeignTableStmt", "CreateFunctionStmt"),
        *("CreateOpClassStmt", "CreateOpFamilyStmt", "CreatePLangStmt"),
        *("CreatePublicationStmt", "CreateRangeStmt", "CreateRoleStmt", "CreateSchemaStmt"),
        *("CreateSeqStmt", "CreateStatsStmt", "CreateSubscriptionStmt"),
        *("CreateTableSpaceStmt", "CreateTransformStmt", "CreateUserMappingStmt"),
        *("CreatedbStmt", "DeallocateStmt", "DefineStmt", "DiscardStmt", "DoStmt"),
        *("DropOwnedStmt", "DropRoleStmt", "DropStmt", "DropSubscriptionStmt"),
        *("DropTableSpaceStmt", "DropUserMappingStmt", "DropdbStmt", "GrantRoleStmt"),
        *("GrantStmt", "ImportForeignSchemaStmt", "ListenStmt", "LoadStmt", "LockStmt"),
        *("NotifyStmt", "ReassignOwnedStmt", "RefreshMatViewStmt", "ReindexStmt"),
        *("ReplicaIdentityStmt", "SecLabelStmt", "TransactionStmt", "TruncateStmt"),
        *("UnlistenStmt", "VacuumStmt", "VariableSetStmt"),
    }
)
"""Statements that return no table data and move no column values.  (Code they install --
functions, DO blocks, event triggers -- runs with the tier's login and is judged by the policy's
guardrails, not here; CREATE STATISTICS and ANALYZE feed the statistics views the guardrails
deny on masked tiers.)"""

RENAMING: Final = frozenset(
    {
        # FROM items and their aliases / column lists
        *("RangeVar", "Alias", "RangeSubselect", "RangeFunction", "ColumnDef", "JoinExpr"),
        *("RangeTableSample", "RangeTableFunc", "RangeTableFuncCol", "JsonTable"),
        *("JsonTableColumn",),
        # CTEs, set operations, VALUES, output names
        *("CommonTableExpr", "WithClause", "CTESearchClause", "CTECycleClause"),
        *("SelectStmt", "ResTarget", "IntoClause"),
        # references that expand or select parts of rows
        *("ColumnRef", "A_Star", "A_Indirection", "RowExpr", "SubLink", "MultiAssignRef"),
        # rows that reach the client through something else's name
        *("CreateTableAsStmt", "ViewStmt", "PrepareStmt", "DeclareCursorStmt"),
        *("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "ReturningClause"),
        *("ReturningOption", "CopyStmt", "RenameStmt", "AlterObjectSchemaStmt"),
        *("AlterTableStmt", "RuleStmt"),
    }
)
"""Node types that introduce or rename a column (or move one out of its masking rule)."""
