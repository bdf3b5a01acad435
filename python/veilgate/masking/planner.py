"""Column plans: what each result column (DataRow) or COPY field gets, per session.

The gateway calls, per result set: :meth:`SessionMasking.statement` once per statement text
(cached lineage), then :meth:`~SessionMasking.row_plan_cached` on a RowDescription; ``None``
means catalog facts are missing, so it awaits :meth:`~SessionMasking.row_plan` (one batched
catalog round trip).  COPY TO STDOUT gets :meth:`~SessionMasking.copy_plan`; a statement whose
output cannot be masked with certainty raises :class:`MaskRefusal` (the gateway answers with an
ErrorResponse and never forwards the data).

Decision per column (the first that applies):

1. direct lineage (RowDescription table OID + attnum resolved through the catalog) to a table:
   the first ``column`` rule matching ``schema.table.column`` (for a partition or inheritance
   child, also its ancestors' names), else the first ``name`` rule matching the result column
   name or the source column's name (an alias does not escape a name rule), else KEEP;
2. a ``name`` rule matching the result column name;
3. otherwise the column's lineage from the statement's resolution
   (:mod:`veilgate.masking.resolve`: every base column its value depends on, through aliases,
   subqueries, CTEs, set operations, functions in FROM, joins, whole rows and views expanded from
   their definitions; a direct column of a view gets the lineage of the view's column):

   * a value passed through unchanged from base columns that share one rule: that rule (KEEP
     when none has one);
   * a value computed from a masked column (any function, operator, cast, aggregate, CASE,
     subquery over it): masked as a whole -- ``<MASKED>`` (NULL for types that cannot say it;
     NULL when ``unknown_lineage`` is ``null``), whatever ``unknown_lineage`` says otherwise:
     content scanning cannot see through ``reverse()`` or ``encode()``;
   * a value of unknown origin (a PL/pgSQL or SECURITY DEFINER function, a name the catalog
     does not have, a statement that does not parse): ``unknown_lineage`` (redact / null /
     scan) on a tier whose rules mask some column -- ``scan`` only when the statement reads no
     masked column and runs no code of unknown origin, else redacted whole (code may scramble
     a masked value past the detectors); on a tier with detectors only, a content scan when
     ``scan_unknown``;
   * a value computed only from unmasked columns and constants (``count(*)``, ``max(id)``):
     KEEP.

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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypeVar

from ..bytecache import SESSION_CACHE_BYTES, ByteLRU, text_cost
from .analysis import AnalysisError, Analyzer, analyzer_for, view_select
from .catalog import Catalog, CatalogError, ColumnInfo, TypeInfo
from .codecs import NeedType, codec_for
from .fields import Field, parse_row_description
from .invalidation import invalidation_scope
from .lineage import CopyInfo, StatementInfo, statement_info
from .overlay import (
    ANY_SCHEMA,
    OverlayCatalog,
    OverlayFacts,
    SessionRelations,
    functions_defined,
)
from .policy import ColumnRule, MaskingUnavailable, TierMasking
from .resolve import OPAQUE, Col, Lineage, Resolution, parse_tree

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


class MaskRefusal(Exception):
    """Masking cannot be guaranteed for this statement: answer with an ErrorResponse."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class NeedCatalog(Exception):
    """A decision needs catalog facts that are not cached (call the async path)."""

    def __init__(self, what: str, analysis: str | None = None) -> None:
        super().__init__(what)
        self.analysis = analysis
        """The statement text whose analysis is missing (None: column or type facts)."""


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


_RUNS_CODE: Final = frozenset({b"DO", b"CALL", b"CREATE EXTENSION", b"ALTER EXTENSION"})
"""Tags of statements that may define functions the gateway cannot name."""

_CREATING: Final = (b"CREATE TABLE", b"SELECT ", b"CREATE VIEW", b"CREATE MATERIALIZED VIEW")
"""Command tags of statements that may create a relation the session's overlay keeps."""


def _ANY_SCHEMA_ONLY() -> tuple[str, ...]:
    return (ANY_SCHEMA,)


class SessionMasking:
    """The masking planner of one session (one tier, one upstream login's catalog)."""

    def __init__(self, tier: TierMasking, catalog: Catalog) -> None:
        self.tier = tier
        self.catalog = catalog
        self.shared = analyzer_for(catalog)
        """Resolutions shared with the login's other sessions."""
        self.relations = SessionRelations()
        """Tables this session created that the catalog may not see (see :mod:`.overlay`)."""
        self._own = Analyzer(OverlayCatalog(catalog, self.relations), max_bytes=SESSION_CACHE_BYTES)
        """Resolutions of statements naming one of those tables (this session's only)."""
        self.creation_schemas: Callable[[], tuple[str, ...]] = _ANY_SCHEMA_ONLY
        """Where a table this session creates without a schema may be put (the gateway sets it
        from the session's search_path, see :func:`~veilgate.masking.overlay.creation_schemas`;
        until then: any schema, every rule's table pattern matching it)."""
        self._plans: ByteLRU[tuple[Any, ...], Any] = ByteLRU(SESSION_CACHE_BYTES)
        self._plan_labels: dict[int, list[str]] = {}
        self._definitions = False
        """The last decision read a resolution made through view definitions or SQL function
        bodies (its plan is checked against the catalog before each use)."""
        self.unseen: set[str] = set()
        """What the last decision could not look up (relations and types the side connection
        cannot see: created in the client's open transaction, temporary): their columns were
        treated as unknown lineage reading masked columns."""

    def adopt(self, old: SessionMasking) -> None:
        """A policy reload replaced ``old`` with this planner: the session's own tables (and
        where its unqualified names go) stay what they were."""
        self.relations = old.relations
        self._own = Analyzer(
            OverlayCatalog(self.catalog, self.relations), max_bytes=SESSION_CACHE_BYTES
        )
        self.creation_schemas = old.creation_schemas

    # -- statements --------------------------------------------------------------------------

    def statement(self, sql: str) -> StatementInfo:
        """Lineage facts of a statement text (cached across sessions)."""
        return statement_info(sql)

    def analyzer(self, text: str) -> Analyzer:
        """The analyzer for a statement text: this session's own when it names a table the
        session created (see :mod:`.overlay`), else the one its login's sessions share."""
        if self.relations.defines_functions:
            return self._own
        if self.relations and not self.relations.names().isdisjoint(
            n for _, n in statement_info(text).relations
        ):
            return self._own
        return self.shared

    def note_command_tag(self, tag: bytes, stmt: StatementInfo | None = None) -> None:
        """A CommandComplete tag (of ``stmt``): a table it created joins this session's own;
        after DDL, the catalog facts it may have changed are dropped
        (:func:`~veilgate.masking.invalidation.invalidation_scope`), with this session's plans
        (other sessions' plans are keyed on the catalog generation)."""
        if stmt is not None and tag.startswith(_CREATING):
            try:
                res = self.analyzer(stmt.text).try_now(stmt.text)
            except AnalysisError:
                res = None
            if res is not None and res.creates:
                self.relations.add(res.creates, self.creation_schemas())
        scope = invalidation_scope(tag)
        if scope:
            self._note_functions(tag, stmt)
            self.catalog.invalidate(scope)
            self._plans.clear()
            self._plan_labels.clear()

    def _note_functions(self, tag: bytes, stmt: StatementInfo | None) -> None:
        """DDL confirmed by the server: the functions it may have (re)defined are of unknown
        origin for the rest of this session (see :meth:`SessionRelations.define_functions`);
        code that may define anything (``DO``, ``CALL``, an extension script) makes every
        user function so."""
        t = tag.rstrip(b"\0").strip().upper()
        if t in _RUNS_CODE or stmt is None:
            self.relations.define_functions(None)
            return
        self.relations.define_functions(functions_defined(parse_tree(stmt.text)))

    # -- row plans ---------------------------------------------------------------------------

    def row_plan_cached(
        self, fields: list[Field], stmt: StatementInfo, *, checked: bool = False
    ) -> Any | None:
        """The native ``RowPlan`` from cached facts, or ``None`` when the catalog must be asked
        (facts missing, or the cache must be checked first: see
        :meth:`~veilgate.masking.catalog.Catalog.check_due`).  ``checked``: the caller has just
        checked the cache."""
        catalog = self.catalog
        catalog.expire_if_stale()
        if not checked and catalog.check_due():
            return None
        key = (catalog.generation, stmt.text, tuple(fields))
        entry = self._plans.get(key)
        if entry is not None:
            self._plans.move_to_end(key)
            plan, definitions = entry
            return plan if checked or not definitions else None
        try:
            decisions = self.decide(fields, stmt)
        except NeedCatalog:
            return None
        definitions = self._definitions
        if definitions and not checked:
            return None
        plan = self._build_row_plan(decisions, fields)
        if not self.unseen:
            self._remember(key, plan, fields, definitions)
        return plan

    def fallback_plan(self, fields: list[Field]) -> Any:
        """A plan that makes every column NULL: for a result whose plan could not be made
        although the catalog answered (a gap in the analysis).  No value passes, and the
        session goes on (fail closed means mask, not disconnect)."""
        self.unseen = set()
        decisions = [ColumnDecision(NULL, "null", None, "no plan could be made") for _ in fields]
        return self._build_row_plan(decisions, fields)

    async def row_plan(self, fields: list[Field], stmt: StatementInfo) -> Any:
        """The native ``RowPlan``, fetching catalog facts as needed.

        Raises :class:`~veilgate.masking.catalog.CatalogError` (fail closed) or
        :class:`~veilgate.masking.policy.MaskingUnavailable`."""
        # a change another connection committed (a view or function replaced, a table
        # renamed) is noticed before the plan uses cached facts: a plan through definitions
        # checks every time, any other at most every check_interval_s
        await self.catalog.check(self.catalog.check_interval_s)
        if self._definitions_at(fields, stmt):
            await self.catalog.check(0.0)
        plan = self.row_plan_cached(fields, stmt, checked=True)
        if plan is not None:
            return plan
        # Sessions of the same login share the catalog, and their DDL (temp tables too) may
        # invalidate it while this lookup is in flight: the facts it returns still serve this
        # plan (read after it was asked for), but the plan is cached only if nothing was
        # invalidated meanwhile.  No retry: one lookup, shared with concurrent sessions.
        generation = self.catalog.generation
        facts = await self.catalog.resolve(fields)
        decisions = await self._decide_fetching(fields, stmt, facts)
        plan = self._build_row_plan(decisions, fields)
        if self.catalog.generation == generation and not self.unseen:
            key = (generation, stmt.text, tuple(fields))
            self._remember(key, plan, fields, self._definitions)
        return plan

    def _definitions_at(self, fields: list[Field], stmt: StatementInfo) -> bool:
        """Whether the cached plan for this result went through view definitions or SQL
        function bodies (unknown: False, the plan is made afresh from checked facts)."""
        entry = self._plans.get((self.catalog.generation, stmt.text, tuple(fields)))
        return bool(entry is not None and entry[1])

    def decide(
        self,
        fields: Iterable[Field],
        stmt: StatementInfo,
        facts: Facts | None = None,
        analyses: dict[str, Resolution] | None = None,
    ) -> list[ColumnDecision]:
        """Per-column decisions from ``facts`` (default: the cached catalog facts) and statement
        analyses (``analyses``, then the analyzer's cache); raises :class:`NeedCatalog` when
        some are missing."""
        facts = self.catalog if facts is None else facts
        found = analyses or {}
        fields = list(fields)
        count = len(fields)
        out = []
        self.unseen = set()
        self._definitions = False
        for i, f in enumerate(fields):
            t = self._treatment(f, self._output_lineage(stmt, found, facts, i, count), facts, found)
            out.append(self._decision(t, f.format, self._codec_for(t, f, facts)))
        return out

    def _output_lineage(
        self,
        stmt: StatementInfo,
        found: dict[str, Resolution],
        facts: Facts,
        index: int,
        count: int,
    ) -> Callable[[], tuple[Lineage, Resolution]]:
        """The lineage of result column ``index`` (and the statement's resolution), analysed
        only when a decision needs it."""

        def get() -> tuple[Lineage, Resolution]:
            res = self._analysis(stmt.text, found, facts)
            return res.output(index, count), res

        return get

    async def _decide_fetching(
        self, fields: list[Field], stmt: StatementInfo, facts: Facts
    ) -> list[ColumnDecision]:
        """:meth:`decide`, analysing the statements it needs on the way (the statement; the
        views some of its columns come from)."""
        return await self._analysing(
            lambda analyses: self.decide(fields, stmt, facts, analyses), len(fields) + 2
        )

    async def _analysing(self, decide: Callable[[dict[str, Resolution]], _T], attempts: int) -> _T:
        """``decide(analyses)``, analysing each statement it reports missing (NeedCatalog with
        a statement text) and trying again; any other gap fails closed."""
        analyses: dict[str, Resolution] = {}
        for _ in range(attempts):
            try:
                return decide(analyses)
            except NeedCatalog as exc:
                if exc.analysis is None or exc.analysis in analyses:
                    raise CatalogError(f"catalog lookup incomplete: {exc}") from None
                try:
                    analyzer = self.analyzer(exc.analysis)
                    analyses[exc.analysis] = await analyzer.analyze(exc.analysis)
                except AnalysisError as err:
                    raise CatalogError(str(err)) from None
        raise CatalogError("catalog lookup incomplete: statement analyses")

    def _analysis(self, text: str, found: dict[str, Resolution], facts: Facts) -> Resolution:
        hit = found.get(text)
        if hit is None:
            # a lookup's facts (not the catalog's cache) serve this decision only
            analyzer = self.analyzer(text)
            own = None
            if facts is not self.catalog:
                own = facts if analyzer is self.shared else OverlayFacts(facts, self.relations)
            try:
                hit = analyzer.try_now(text, own)
            except AnalysisError as exc:
                raise CatalogError(str(exc)) from None
        if hit is None:
            raise NeedCatalog(f"analysis of {text[:40]!r}", analysis=text)
        if hit.definitions:
            self._definitions = True
        return hit

    def _codec_for(self, t: _Treatment, f: Field, facts: Facts) -> Any:
        """The column type's codec (``None`` for type OID 0); keep and null never look at the
        value, so they need no type."""
        if t.how in ("keep", "null") or f.type_oid == 0:
            return None
        info = facts.type(f.type_oid)
        if info is not None and not Catalog.type_known(info):
            # created in the client's open transaction: a value of a type nobody knows (as
            # for type OID 0: text masked as text, binary NULLed)
            self.unseen.add(f"type {f.type_oid}")
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
        if not Catalog.column_known(col):
            self.unseen.add(f"relation {f.table_oid}")
            return None
        return col

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
        self,
        f: Field,
        lineage: Callable[[], tuple[Lineage, Resolution]],
        facts: Facts,
        found: dict[str, Resolution],
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
            if not col.is_view:
                return _KEEP_T
            # a view's column: the lineage of that column of its definition
            view = self._analysis(view_select(col.schema, col.table), found, facts)
            out = view.output(f.attnum - 1, len(view.outputs or ()))
            return self.lineage_treatment(out, view)
        rule = tier.name_rule(f.name)
        if rule is not None:
            return _rule_treatment(rule)
        return self.lineage_treatment(*lineage())

    def lineage_treatment(self, lin: Lineage, res: Resolution | None = None) -> _Treatment:
        """What a value of this lineage gets (see the module docstring, point 3); ``res``:
        the resolution of the statement it comes from (None: not known)."""
        if lin.cols and lin.exact and not lin.opaque:
            rules = {self.base_rule(c) for c in lin.cols}
            if len(rules) == 1:
                rule = rules.pop()
                return _rule_treatment(rule) if rule is not None else _KEEP_T
        masked = sorted(c.label() for c in lin.cols if self.masks(c))
        if masked:
            how = "null" if self.tier.unknown_lineage == "null" else "redact"
            return _Treatment(how, None, f"computed from masked {', '.join(masked[:3])}")
        if lin.opaque:
            tier = self.tier
            if tier.masks_any:
                how = tier.unknown_lineage
                if how in ("redact", "null"):
                    return _Treatment(how, None, "unknown lineage")
                why = self._not_scannable(res)
                if why:
                    # code the resolver cannot follow may have computed it from a masked
                    # column: content scanning cannot see through that (masked whole)
                    return _Treatment("redact", None, f"unknown lineage; {why}")
                return _Treatment("scan", None, "unknown lineage; content scan")
            if tier.scan_unknown:
                return _Treatment("scan", None, "unknown lineage; content scan")
            return _Treatment("keep", None, "unknown lineage; scan_unknown is off")
        return _Treatment("keep", None, "computed from unmasked columns")

    def base_rule(self, c: Col) -> ColumnRule | None:
        """The rule of a base column: a column rule (its own table's, then its ancestors'),
        else a name rule on its name."""
        tier = self.tier
        if c.schema == ANY_SCHEMA:
            return self._any_schema_rule(c)
        if c.schema == "":
            rules = self.base_rules(c)
            return next(
                (r for r in rules if r is not None and r.masks), rules[0] if rules else None
            )
        rule = tier.column_rule(c.schema, c.table, c.column)
        if rule is None:
            for schema, table in c.ancestors:
                rule = tier.column_rule(schema, table, c.column)
                if rule is not None:
                    break
        return rule if rule is not None else tier.name_rule(c.column)

    def base_rules(self, c: Col) -> list[ColumnRule | None]:
        """The rule of a base column in each schema its table may be in: one, except for a
        table created unqualified (schema ``""``: each schema the session's search_path may
        create it in) or under an unknown search_path (:data:`ANY_SCHEMA`)."""
        if c.schema == "":
            return [
                self._any_schema_rule(c, every=True)
                if s == ANY_SCHEMA
                else self.base_rule(Col(s, c.table, c.column))
                for s in self.creation_schemas()
            ]
        if c.schema == ANY_SCHEMA:
            return [self._any_schema_rule(c, every=True)]
        return [self.base_rule(c)]

    def _any_schema_rule(self, c: Col, *, every: bool = False) -> ColumnRule | None:
        """The rule of a column of a table whose schema is not known.  Read (``every`` False):
        of the column rules whose table part matches it in some schema, the first that masks
        (fail closed), else the first, else the name rule.  Written (``every``): only a rule
        that matches it in every schema (its schema part is ``*``) is sure to apply."""
        hits = [
            r
            for r in self.tier.column_rules
            if _glob(r.table_pattern.rsplit(".", 1)[-1], c.table)
            and _glob(r.column_pattern, c.column)
            and (not every or r.table_pattern.rsplit(".", 1)[0].strip("*") == "")
        ]
        if every:
            return hits[0] if hits else self.tier.name_rule(c.column)
        rule = next((r for r in hits if r.masks), hits[0] if hits else None)
        return rule if rule is not None else self.tier.name_rule(c.column)

    def _not_scannable(self, res: Resolution | None) -> str:
        """Why a value of unknown origin of ``res`` may not be content-scanned
        (``unknown_lineage: scan``) but must be masked whole; "" when it may: the statement
        reads no column this tier masks and runs no code of unknown origin."""
        if res is None:
            return "statement not analysed"
        if res.opaque_code:
            return "runs code of unknown origin"
        if not res.parsed:
            return "statement not parsed"
        masked = next((c for c in res.touched_columns() if self.masks(c)), None)
        if masked is not None:
            return f"reads masked {masked.label()}"
        return ""

    def masks(self, c: Col) -> bool:
        """Whether this tier masks the base column (a rule other than ``keep``)."""
        rule = self.base_rule(c)
        return rule is not None and rule.masks

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
    ) -> Any | None:
        """The native ``CopyPlan`` for a ``COPY ... TO STDOUT`` statement, from its columns as
        the gateway's side connection describes them.

        ``column_formats`` may be empty (planned before the statement is sent: the format then
        comes from the statement).  ``None`` when the side connection cannot describe the
        columns (a table of the client's open transaction, a temporary one, one the client
        holds a lock on, one that does not exist): plan it from the server's CopyOutResponse
        with :meth:`copy_plan_undescribed` (or let the server refuse it).  Raises
        :class:`MaskRefusal` (0A000) when the output's lineage cannot be known,
        :class:`CatalogError` when the catalog is unreachable."""
        self.unseen = set()
        copy = _copy_out_of(stmt)
        sql = _copy_describe_sql(copy)
        if sql is None:
            raise MaskRefusal("0A000", "COPY output cannot be masked: its query cannot be analysed")
        own = bool(self.relations) and not self.relations.names().isdisjoint(
            n for _, n in stmt.relations
        )
        if own and copy.relation is None:
            # its query names a table this session created: the side connection may describe
            # another one of that name (or none); the server's CopyOutResponse says
            return None
        try:
            fields = await self.catalog.describe(sql)
        except CatalogError as exc:
            if "connection" in str(exc):
                raise
            return None
        if own and copy.relation is not None and not self._same_shape(copy, fields):
            # the side connection sees another table of the name than the session's own (one
            # the session dropped and created again in its open transaction)
            return None
        binary = copy.format == "binary" or overall_format == 1
        fmts = column_formats if len(column_formats) == len(fields) else None
        fields = [
            Field(f.name, f.table_oid, f.attnum, f.type_oid, (fmts[i] if fmts else int(binary)))
            for i, f in enumerate(fields)
        ]
        unqualified = {rel[1] for rel in stmt.relations if rel[0] is None}
        await self.catalog.check()  # COPY is planned afresh each time: facts checked first
        # one lookup (usually nothing to fetch); its facts serve this plan even if DDL
        # invalidates the catalog meanwhile (see row_plan)
        facts = await self.catalog.resolve(fields)
        if copy.relation is not None and not copy.columns:
            fields = _complete(lambda: self._without_generated(fields, facts))
        decisions = await self._analysing(
            lambda analyses: self._decide_copy(fields, stmt, unqualified, facts, analyses),
            len(fields) + 2,
        )
        return self._build_copy_plan(decisions, fields, copy, binary)

    def _same_shape(self, copy: CopyInfo, fields: list[Field]) -> bool:
        """Whether the columns described for ``COPY table`` are those of every table of that
        name this session created (names, in order)."""
        assert copy.relation is not None
        names = [f.name for f in fields]
        for rel in self.relations.matching(copy.relation):
            cols = list(copy.columns) if copy.columns else list(rel.columns)
            if cols != names or not set(cols) <= set(rel.columns):
                return False
        return True

    async def copy_plan_undescribed(
        self, stmt: StatementInfo, overall_format: int, column_formats: list[int]
    ) -> Any:
        """The ``CopyPlan`` of a COPY the side connection could not describe, from what the
        server's CopyOutResponse says (``column_formats``: one per column) and the statement's
        lineage, as the session sees it (its own tables included, see :mod:`.overlay`).

        The column types are not known: a column the policy leaves alone passes as it is, any
        other is NULL (a value of unknown type cannot be masked as a valid value of it), and
        :attr:`unseen` names what could not be looked up, for the client's notice."""
        await self.catalog.check()  # planned afresh each time: facts checked first
        self.unseen = set()
        copy = _copy_out_of(stmt)
        binary = copy.format == "binary" or overall_format == 1
        names = sorted(".".join(p for p in rel if p) for rel in stmt.relations)
        unseen = {f"relation {n}" for n in names} or {"the columns of the COPY's query"}
        count = len(column_formats)
        fields = [Field(f"column{i + 1}", 0, 0, 0, f) for i, f in enumerate(column_formats)]

        def decide(found: dict[str, Resolution]) -> list[ColumnDecision]:
            res = self._analysis(stmt.text, found, self.catalog)
            outs = res.outputs if res.shape_known else None
            if outs is not None and len(outs) == count:  # name rules follow the names
                fields[:] = [replace(f, name=o.name) for f, o in zip(fields, outs, strict=True)]
            return self._decide_copy(fields, stmt, set(), self.catalog, found)

        try:
            decisions = await self._analysing(decide, count + 2)
        except CatalogError as exc:
            if "connection" in str(exc):
                raise
            # not analysable: every column of unknown lineage (fail closed)
            decisions = [
                self._decision(self.lineage_treatment(OPAQUE), f.format, None) for f in fields
            ]
        self.unseen = unseen
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
        self,
        fields: list[Field],
        stmt: StatementInfo,
        unqualified: set[str],
        facts: Facts,
        found: dict[str, Resolution],
    ) -> list[ColumnDecision]:
        # The side connection resolves unqualified names with its own search_path, which may not
        # be the session's: a column rule then also matches the same table.column in any schema.
        out = []
        count = len(fields)
        for i, f in enumerate(fields):
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
                t = self._treatment(
                    f, self._output_lineage(stmt, found, facts, i, count), facts, found
                )
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

    def _remember(
        self, key: tuple[Any, ...], plan: Any, fields: list[Field], definitions: bool = False
    ) -> None:
        # the key holds the statement text; a plan and its labels cost about a field's worth
        # of bytes each per column
        cost = text_cost(str(key[1]), *(f.name for f in fields)) + 256 * len(fields)
        labels = self._plan_labels
        if not self._plans.put(key, (plan, definitions), cost):
            return
        labels[id(plan)] = _labels(fields)
        while len(self._plans) > PLAN_CACHE:
            self._plans.popitem(last=False)
        if len(labels) > len(self._plans):
            live = {id(p[0]) for p in self._plans.values()}
            for pid in [pid for pid in labels if pid not in live]:
                del labels[pid]

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


def _copy_out_of(stmt: StatementInfo) -> CopyInfo:
    """The COPY of a statement planned as ``COPY ... TO STDOUT`` (else :class:`MaskRefusal`)."""
    copy = stmt.copy
    if not stmt.parsed or copy is None:
        raise MaskRefusal("0A000", "COPY output cannot be masked: the statement is not understood")
    if copy.is_from or not copy.to_stdout:
        raise MaskRefusal("0A000", "only COPY ... TO STDOUT is supported on a masked session")
    return copy


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
    if rule.json:  # JSON paths: masked by the rule's JsonMasker (other leaves scanned)
        return _Treatment("rule", rule, f"rule {rule.label()}")
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
