"""Column plans: what each result column (DataRow) or COPY field gets, per session.

The gateway calls, per result set: :meth:`SessionMasking.statement` once per statement text
(cached lineage), then :meth:`~SessionMasking.row_plan_cached` on a RowDescription; ``None``
means catalog facts are missing, so it awaits :meth:`~SessionMasking.row_plan` (one batched
catalog round trip).  COPY TO STDOUT gets :meth:`~SessionMasking.copy_plan`; a statement whose
output cannot be masked with certainty raises :class:`MaskRefusal` (the gateway answers with an
ErrorResponse and never forwards the data).

Decision per column (the first that applies):

1. lineage known (RowDescription table OID + attnum resolved through the catalog): the first
   ``column`` rule matching ``schema.table.column`` (for a partition or inheritance child, also
   its ancestors' names);
2. the first ``name`` rule matching the RowDescription column name or, lineage known, the
   source column's name (an alias does not escape a name rule);
3. lineage known and no rule: KEEP, unless the column belongs to a view / materialized view that
   depends on masked base columns: then it is handled as unknown lineage, with the statement
   counted as referencing a masked column;
4. unknown lineage (table OID 0, or a column dropped since): ``unknown_lineage`` (redact to
   ``<MASKED>`` / null / scan) when the statement references a masked column, a star or whole
   row of a table with masked columns, or a view over masked columns (unparseable text counts as
   referencing); otherwise KEEP when the statement is *pure* (its values are computed from the
   columns it names with built-ins that read nothing else: ``count(*)``, ``max(id) + 1``; see
   :data:`veilgate.masking.lineage.PURE_FUNCTIONS`), else a content scan when ``scan_unknown``,
   else KEEP.

A star or whole-row reference (``row_to_json(u)``, ``u.*``) reads every column of the relation:
it counts as referencing a masked column when any column of that table (every schema's table of
that name, for an unqualified name) is masked by a column or name rule.

How a masked column travels (:meth:`SessionMasking._decision`) depends on its type's codec
(:mod:`veilgate.masking.codecs`), the same in the text and the binary format: text-likes (text,
varchar, bpchar, name, citext, enums, domains over them) are masked as text; other types go
through the native engine's codec for the type, which decodes the value, masks it and encodes
a valid value of the type again (numbers stay numbers of the same width, an inet an inet, json
valid JSON, arrays and composites element by element); a content scan keeps the types that
cannot carry a detectable entity (floats, dates, uuids, ranges...), a column rule masks them as
their codec says; a type the engine cannot read becomes NULL when it must be masked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from .catalog import Catalog, CatalogError, ColumnInfo, RelationInfo, TypeInfo, ViewDeps
from .codecs import NeedType, codec_for
from .fields import Field, parse_row_description
from .invalidation import invalidation_scope
from .lineage import CopyInfo, Name, StatementInfo, statement_info
from .policy import ColumnRule, MaskingUnavailable, TierMasking

__all__ = [
    "ColumnDecision",
    "Field",
    "MaskRefusal",
    "NeedCatalog",
    "SessionMasking",
    "parse_row_description",
]

KEEP: Final = "keep"
NULL: Final = "null"
TEXT: Final = "text"
TYPED: Final = "typed"

PLAN_CACHE: Final = 512

_T = TypeVar("_T")


class Facts(Protocol):
    """Catalog facts a decision reads: the catalog's cache (:class:`Catalog`) or what one
    lookup returned (:class:`~veilgate.masking.catalog.CatalogFacts`)."""

    def column(self, table_oid: int, attnum: int) -> ColumnInfo | None: ...
    def type(self, oid: int) -> TypeInfo | None: ...
    def view_deps(self, view_oid: int) -> ViewDeps | None: ...
    def relations_named(self, name: Name) -> tuple[RelationInfo, ...] | None: ...
    def views_named(self, name: Name) -> list[ViewDeps] | None: ...
    def shadowed_builtins(self) -> frozenset[str] | None: ...


class MaskRefusal(Exception):
    """Masking cannot be guaranteed for this statement: answer with an ErrorResponse."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class NeedCatalog(Exception):
    """A decision needs catalog facts that are not cached (call the async path)."""


@dataclass(frozen=True, slots=True)
class ColumnDecision:
    """What one column gets, before native objects are built.

    ``action`` is how values travel (keep / null / text / typed); ``how`` says what masks them
    (``keep``, ``null``, ``rule``, ``scan``, ``redact``); ``rule`` is the policy rule, if any;
    ``codec`` (a ``veilgate_native.Codec``) and ``format`` are a typed column's type and wire
    format."""

    action: str
    how: str
    rule: ColumnRule | None = None
    reason: str = ""
    codec: Any = None
    format: int = 0


@dataclass(frozen=True, slots=True)
class _Treatment:
    how: str  # keep | null | rule | scan | redact
    rule: ColumnRule | None
    reason: str


_KEEP_T: Final = _Treatment("keep", None, "no rule")


class SessionMasking:
    """The masking planner of one session (one tier, one upstream login's catalog)."""

    def __init__(self, tier: TierMasking, catalog: Catalog) -> None:
        self.tier = tier
        self.catalog = catalog
        self._plans: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._plan_labels: dict[int, list[str]] = {}

    # -- statements --------------------------------------------------------------------------

    def statement(self, sql: str) -> StatementInfo:
        """Lineage facts of a statement text (cached across sessions)."""
        return statement_info(sql)

    def note_command_tag(self, tag: bytes) -> None:
        """A CommandComplete tag: after DDL, the catalog facts it may have changed are dropped
        (:func:`~veilgate.masking.invalidation.invalidation_scope`), with this session's plans
        (other sessions' plans are keyed on the catalog generation)."""
        scope = invalidation_scope(tag)
        if scope:
            self.catalog.invalidate(scope)
            self._plans.clear()
            self._plan_labels.clear()

    # -- row plans ---------------------------------------------------------------------------

    def row_plan_cached(self, fields: list[Field], stmt: StatementInfo) -> Any | None:
        """The native ``RowPlan`` from cached facts, or ``None`` when the catalog must be asked."""
        self.catalog.expire_if_stale()
        key = (self.catalog.generation, stmt.text, tuple(fields))
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        try:
            decisions = self.decide(fields, stmt)
        except NeedCatalog:
            return None
        plan = self._build_row_plan(decisions, fields)
        self._remember(key, plan, fields)
        return plan

    async def row_plan(self, fields: list[Field], stmt: StatementInfo) -> Any:
        """The native ``RowPlan``, fetching catalog facts as needed.

        Raises :class:`~veilgate.masking.catalog.CatalogError` (fail closed) or
        :class:`~veilgate.masking.policy.MaskingUnavailable`."""
        plan = self.row_plan_cached(fields, stmt)
        if plan is not None:
            return plan
        # Sessions of the same login share the catalog, and their DDL (temp tables too) may
        # invalidate it while this lookup is in flight: the facts it returns still serve this
        # plan (read after it was asked for), but the plan is cached only if nothing was
        # invalidated meanwhile.  No retry: one lookup, shared with concurrent sessions.
        generation = self.catalog.generation
        facts = await self.catalog.resolve(fields, self._names(stmt))
        decisions = _complete(lambda: self.decide(fields, stmt, facts))
        plan = self._build_row_plan(decisions, fields)
        if self.catalog.generation == generation:
            self._remember((generation, stmt.text, tuple(fields)), plan, fields)
        return plan

    def decide(
        self, fields: Iterable[Field], stmt: StatementInfo, facts: Facts | None = None
    ) -> list[ColumnDecision]:
        """Per-column decisions from ``facts`` (default: the cached catalog facts); raises
        :class:`NeedCatalog` when some are missing."""
        facts = self.catalog if facts is None else facts
        refs: list[bool] = []  # computed once, on the first unknown-lineage column
        out = []
        for f in fields:
            t = self._treatment(f, stmt, refs, facts)
            out.append(self._decision(t, f.format, self._codec_for(t, f, facts)))
        return out

    def _codec_for(self, t: _Treatment, f: Field, facts: Facts) -> Any:
        """The column type's codec (``None`` for type OID 0); keep and null never look at the
        value, so they need no type."""
        if t.how in ("keep", "null") or f.type_oid == 0:
            return None
        try:
            return codec_for(f.type_oid, facts, _native())
        except NeedType as exc:
            raise NeedCatalog(str(exc)) from None

    def _column(self, f: Field, facts: Facts) -> ColumnInfo | None:
        """Known column facts, ``None`` for unknown lineage (OID 0 or dropped)."""
        if f.table_oid == 0:
            return None
        col = facts.column(f.table_oid, f.attnum)
        if col is None:
            raise NeedCatalog(f"column {f.table_oid}.{f.attnum}")
        return col if Catalog.column_known(col) else None

    def _column_rule(self, col: ColumnInfo) -> ColumnRule | None:
        tier = self.tier
        rule = tier.column_rule(col.schema, col.table, col.column)
        if rule is None:
            for schema, table in col.ancestors:
                rule = tier.column_rule(schema, table, col.column)
                if rule is not None:
                    break
        return rule

    def _treatment(
        self, f: Field, stmt: StatementInfo, refs: list[bool], facts: Facts
    ) -> _Treatment:
        tier = self.tier
        col = self._column(f, facts)
        if col is not None:
            rule = self._column_rule(col)
            if rule is None:
                # a name rule also follows the column under an alias (``password AS p``)
                rule = tier.name_rule(f.name) or tier.name_rule(col.column)
            if rule is not None:
                return _rule_treatment(rule)
            if col.is_view:
                deps = facts.view_deps(f.table_oid)
                if deps is None:
                    raise NeedCatalog(f"view {f.table_oid}")
                if any(self._dep_masked(d) for d in deps.columns):
                    return self._unknown(
                        True, f"view {col.schema}.{col.table} depends on masked columns"
                    )
            return _KEEP_T
        rule = tier.name_rule(f.name)
        if rule is not None:
            return _rule_treatment(rule)
        if not refs:
            refs.append(self.references_masked(stmt, facts))
        if not refs[0] and stmt.pure and not self._shadowed(stmt, facts):
            # computed by the statement from unmasked columns with pure built-ins: nothing a
            # scan could find that a plain select of those columns would not show anyway
            return _Treatment("keep", None, "computed from unmasked columns")
        return self._unknown(refs[0], "unknown lineage")

    def _shadowed(self, stmt: StatementInfo, facts: Facts) -> bool:
        """Whether a pure built-in the statement calls unqualified has a namesake outside
        pg_catalog (which PostgreSQL may pick instead: then it is not pure)."""
        if not stmt.calls:
            return False
        shadowed = facts.shadowed_builtins()
        if shadowed is None:
            raise NeedCatalog("shadowed built-ins")
        return not shadowed.isdisjoint(stmt.calls)

    def _unknown(self, references_masked: bool, why: str) -> _Treatment:
        tier = self.tier
        if references_masked:
            how = tier.unknown_lineage
            how = "redact" if how == "redact" else ("null" if how == "null" else "scan")
            return _Treatment(how, None, f"{why}; the statement references masked columns")
        if tier.scan_unknown:
            return _Treatment("scan", None, f"{why}; content scan")
        return _Treatment("keep", None, f"{why}; scan_unknown is off")

    def _dep_masked(self, dep: tuple[str, str, str | None]) -> bool:
        schema, table, column = dep
        if column is None:  # the whole relation (a whole-row reference)
            return self.tier.table_may_mask(schema, table) or bool(self.tier.name_rules)
        return self.tier.masks_column(schema, table, column)

    def _names(self, stmt: StatementInfo) -> list[Name]:
        names = stmt.relations | stmt.star_relations
        return sorted(names, key=lambda n: (n[0] or "", n[1]))

    def references_masked(self, stmt: StatementInfo, facts: Facts | None = None) -> bool:
        """Whether ``stmt`` reads a masked column by name, a star / whole row of a table with
        masked columns, or a view over masked columns.  Raises :class:`NeedCatalog` when the
        views among its relations are not known yet (in ``facts``, default: the cache)."""
        facts = self.catalog if facts is None else facts
        if not stmt.parsed:
            return True
        tier = self.tier
        rels = stmt.relations
        for c in stmt.columns:
            r = tier.name_rule(c)
            if r is not None and r.masks:
                return True
            for rule in tier.column_rules:
                if (
                    rule.masks
                    and _glob(rule.column_pattern, c)
                    and any(_table_glob(rule.table_pattern, rel) for rel in rels)
                ):
                    return True
        stars = rels if stmt.star_all else stmt.star_relations
        for rel in rels | stars:
            found = facts.relations_named(rel)
            views = facts.views_named(rel)
            if found is None or views is None:
                raise NeedCatalog(f"relation {rel}")
            if any(self._dep_masked(d) for v in views for d in v.columns):
                return True
            if rel not in stars:
                continue
            # a star or whole row reads every column: masked if any of them is
            if not found and tier.table_may_mask(*rel):
                return True  # not a catalog relation (a CTE name...): by the rules' globs
            for info in found:
                if any(tier.masks_column(info.schema, info.table, c) for c in info.columns):
                    return True
        return False

    def _decision(self, t: _Treatment, fmt: int, codec: Any) -> ColumnDecision:
        """How the values of a column travel, given what masks them (``t``), the column's wire
        format and its type's codec."""
        if t.how == "keep":
            return ColumnDecision(KEEP, "keep", t.rule, t.reason)
        if t.how == "null":
            return ColumnDecision(NULL, "null", t.rule, t.reason)
        if codec is None or fmt not in (0, 1):
            return ColumnDecision(NULL, "null", t.rule, f"{t.reason}; unknown type or format")
        if t.how == "scan" and not codec.scannable:
            why = f"{t.reason}; {codec.kind} cannot carry a detectable entity"
            return ColumnDecision(KEEP, "keep", t.rule, why)
        if codec.kind == "text":
            return ColumnDecision(TEXT, t.how, t.rule, t.reason)
        # rule, scan or redact ("<MASKED>" for text, its codec's masked value otherwise)
        return ColumnDecision(TYPED, t.how, t.rule, t.reason, codec, fmt)

    # -- COPY --------------------------------------------------------------------------------

    async def copy_plan(
        self, stmt: StatementInfo, overall_format: int, column_formats: list[int]
    ) -> Any:
        """The native ``CopyPlan`` for a ``COPY ... TO STDOUT`` statement.

        ``column_formats`` may be empty (planned before the statement is sent: the format then
        comes from the statement).  Raises :class:`MaskRefusal` (0A000) when the output's
        lineage cannot be known, :class:`CatalogError` when the catalog is unreachable."""
        copy = stmt.copy
        if not stmt.parsed or copy is None:
            raise MaskRefusal(
                "0A000", "COPY output cannot be masked: the statement is not understood"
            )
        if copy.is_from or not copy.to_stdout:
            raise MaskRefusal("0A000", "only COPY ... TO STDOUT is supported on a masked session")
        sql = _copy_describe_sql(copy)
        if sql is None:
            raise MaskRefusal("0A000", "COPY output cannot be masked: its query cannot be analysed")
        try:
            fields = await self.catalog.describe(sql)
        except CatalogError as exc:
            if "connection" in str(exc):
                raise
            raise MaskRefusal(
                "0A000", "COPY output cannot be masked: its columns cannot be determined"
            ) from None
        binary = copy.format == "binary" or overall_format == 1
        fmts = column_formats if len(column_formats) == len(fields) else None
        fields = [
            Field(f.name, f.table_oid, f.attnum, f.type_oid, (fmts[i] if fmts else int(binary)))
            for i, f in enumerate(fields)
        ]
        unqualified = {rel[1] for rel in stmt.relations if rel[0] is None}
        # one lookup (usually nothing to fetch); its facts serve this plan even if DDL
        # invalidates the catalog meanwhile (see row_plan)
        facts = await self.catalog.resolve(fields, self._names(stmt))
        if copy.relation is not None and not copy.columns:
            fields = _complete(lambda: self._without_generated(fields, facts))
        decisions = _complete(lambda: self._decide_copy(fields, stmt, unqualified, facts))
        return self._build_copy_plan(decisions, fields, copy, binary)

    def _without_generated(self, fields: list[Field], facts: Facts) -> list[Field]:
        """``COPY table TO`` without a column list leaves generated columns out (``SELECT *``,
        which was described, has them)."""
        out = []
        for f in fields:
            col = self._column(f, facts)
            if col is None or not col.generated:
                out.append(f)
        return out

    def _decide_copy(
        self, fields: list[Field], stmt: StatementInfo, unqualified: set[str], facts: Facts
    ) -> list[ColumnDecision]:
        # The side connection resolves unqualified names with its own search_path, which may not
        # be the session's: a column rule then also matches the same table.column in any schema.
        out = []
        refs: list[bool] = []
        for f in fields:
            col = self._column(f, facts)
            t: _Treatment | None = None
            if col is not None and col.table in unqualified and self._column_rule(col) is None:
                rule = next(
                    (
                        r
                        for r in self.tier.column_rules
                        if _glob(r.column_pattern, col.column)
                        and _glob(r.table_pattern.rsplit(".", 1)[-1], col.table)
                    ),
                    None,
                )
                if rule is not None:
                    t = _rule_treatment(rule)
            if t is None:
                t = self._treatment(f, stmt, refs, facts)
            out.append(self._decision(t, f.format, self._codec_for(t, f, facts)))
        return out

    # -- audit -------------------------------------------------------------------------------

    def take_tallies(self, plan: Any, fields: list[Field]) -> dict[str, dict[str, int]]:
        """What ``plan`` masked since the last call: ``{column: {entity: count}}``.  Counts
        only: never values."""
        take = getattr(plan, "take_tally", None)
        if take is None:
            return {}
        per_column = take()
        labels = self._plan_labels.get(id(plan)) or _labels(fields)
        out: dict[str, dict[str, int]] = {}
        for i, counts in enumerate(per_column):
            if not counts:
                continue
            label = labels[i] if i < len(labels) else f"column{i + 1}"
            kept = {str(e): int(n) for e, n in dict(counts).items() if int(n) > 0}
            if kept:
                out[label] = kept
        return out

    # -- native objects ----------------------------------------------------------------------

    def _remember(self, key: tuple[Any, ...], plan: Any, fields: list[Field]) -> None:
        self._plans[key] = plan
        self._plan_labels[id(plan)] = _labels(fields)
        if len(self._plans) > PLAN_CACHE:
            _, old = self._plans.popitem(last=False)
            self._plan_labels.pop(id(old), None)

    def _masker(self, d: ColumnDecision) -> Any:
        if d.how == "scan":
            return self.tier.scanner
        if d.how == "redact":
            return self.tier.redactor
        if d.how == "rule" and d.rule is not None:
            return self.tier.operator_for(d.rule)
        return None

    def _columns(self, decisions: list[ColumnDecision]) -> list[tuple[Any, ...]]:
        native = _native()
        consts = {
            KEEP: _const(native, "KEEP"),
            NULL: _const(native, "NULL"),
            TEXT: _const(native, "TEXT"),
            TYPED: _const(native, "TYPED"),
        }
        return [
            (consts[d.action], self._masker(d), d.codec, d.format)
            if d.action == TYPED
            else (consts[d.action], self._masker(d))
            for d in decisions
        ]

    def _build_row_plan(self, decisions: list[ColumnDecision], fields: list[Field]) -> Any:
        return _native().RowPlan(self._columns(decisions))

    def _build_copy_plan(
        self, decisions: list[ColumnDecision], fields: list[Field], copy: CopyInfo, binary: bool
    ) -> Any:
        plan = _native().CopyPlan(
            "binary" if binary else copy.format,
            self._columns(decisions),
            delimiter=copy.delimiter,
            null=copy.null,
            quote=copy.quote if copy.quote is not None else '"',
            escape=copy.escape,
            header=copy.header,
        )
        self._plan_labels[id(plan)] = _labels(fields)
        if len(self._plan_labels) > 4 * PLAN_CACHE:
            self._plan_labels.clear()
        return plan


def _complete(decide: Callable[[], _T]) -> _T:
    """``decide()`` with the facts a lookup returned: they cover everything a decision reads,
    so a gap is a bug; it fails closed like an unreachable catalog."""
    try:
        return decide()
    except NeedCatalog as exc:
        raise CatalogError(f"catalog lookup incomplete: {exc}") from None


def _labels(fields: list[Field]) -> list[str]:
    """Column labels for tallies (the result column names, numbered when repeated)."""
    seen: dict[str, int] = {}
    out = []
    for f in fields:
        n = seen.get(f.name, 0) + 1
        seen[f.name] = n
        out.append(f.name if n == 1 else f"{f.name}#{n}")
    return out


def _rule_treatment(rule: ColumnRule) -> _Treatment:
    if rule.op is None:
        return _Treatment("scan", rule, f"rule {rule.label()}")
    if rule.op.kind == "keep":
        return _Treatment("keep", rule, f"rule {rule.label()}")
    if rule.op.kind == "null":
        return _Treatment("null", rule, f"rule {rule.label()}")
    return _Treatment("rule", rule, f"rule {rule.label()}")


def _glob(pattern: str, text: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(text, pattern)


def _table_glob(table_pattern: str, rel: Name) -> bool:
    schema, table = rel
    if schema is not None:
        return _glob(table_pattern, f"{schema}.{table}")
    # unqualified: any schema it could resolve to
    return _glob(table_pattern.rsplit(".", 1)[-1], table)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _copy_describe_sql(copy: CopyInfo) -> str | None:
    """A query with the same output columns as the COPY (for a Describe)."""
    if copy.query is not None:
        return copy.query
    if copy.relation is None:
        return None
    schema, table = copy.relation
    rel = _quote_ident(table) if schema is None else f"{_quote_ident(schema)}.{_quote_ident(table)}"
    cols = ", ".join(_quote_ident(c) for c in copy.columns) if copy.columns else "*"
    return f"SELECT {cols} FROM {rel}"  # noqa: S608 (identifiers quoted)


def _native() -> Any:
    try:
        import veilgate_native as native
    except ImportError as exc:  # pragma: no cover - the package depends on it
        raise MaskingUnavailable(f"native masking engine unavailable: {exc}") from None
    if not hasattr(native, "RowPlan"):
        raise MaskingUnavailable("native masking engine unavailable: no RowPlan in veilgate_native")
    return native


def _const(native: Any, name: str) -> Any:
    value = getattr(native, name, None)
    if value is None:
        value = getattr(native.RowPlan, name)
    return value
