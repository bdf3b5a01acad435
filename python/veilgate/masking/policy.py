"""The compiled ``masking:`` section of a policy file.

Shape (validated by :mod:`veilgate.masking.section`, which names file:line:key on errors)::

    masking:
      apply_to: [readonly]              # tiers whose sessions are masked (default: every tier)
      hash_key_env: VEILGATE_MASK_KEY   # or hash_key_file: path; required if any op is hash
      detectors: [EMAIL, PHONE]         # built-in detectors used by content scans (default: all)
      custom:                           # extra entities: a regex or a word list
        - {entity: EMPLOYEE_ID, regex: "EMP-[0-9]{6}"}
        - {entity: CODENAME, words: [bluebird, nightjar]}
      operators:                        # what a span found by scanning becomes, per entity
        default: {op: replace}
        CREDIT_CARD: {op: partial, keep_last: 4}
      columns:                          # first match wins
        - {column: "public.customers.ssn", op: partial, keep_last: 4}
        - {name: "*password*", op: redact}
        - {column: "public.notes.body", scan: true}
        - {column: "public.customers.id", op: keep}
        - column: "public.orders.payload"   # json / jsonb: rules per JSON path
          json:
            customer.email: {op: hash}
            "items[*].card": {op: partial, keep_last: 4}
            meta: {op: keep}                # every other leaf is content-scanned
      unknown_lineage: redact           # values of unknown origin: redact | null | scan
      scan_unknown: true                # tiers with detectors only: scan such values

A section that is present (even ``masking: {}``) masks every tier unless ``apply_to`` narrows
it: forgetting a tier name must not leak data (fail closed).

The native objects (``veilgate_native.Operator`` / ``Masker``) are built lazily, once per policy,
tier and hash key generation, by :class:`TierMasking`; the gateway hands it the key generation a
session uses (:mod:`.keys`), other callers have the key read then (never at lint time); a missing
key raises :class:`MaskingUnavailable` so the gateway refuses the session instead of passing data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from .keys import HashKey, MaskingUnavailable, key_source, read_key

__all__ = [
    "ALLOWED_USES",
    "BUILTIN_ENTITIES",
    "OPERATOR_KINDS",
    "UNKNOWN_LINEAGE_ACTIONS",
    "ColumnRule",
    "CustomEntity",
    "MaskingPolicy",
    "MaskingUnavailable",
    "OperatorSpec",
    "TierMasking",
]

BUILTIN_ENTITIES: Final = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN",
    "IP_ADDRESS",
    "SECRET",
)
"""Detectors the native engine ships (kept in step with ``veilgate_native.BUILTIN_ENTITIES``)."""

OPERATOR_KINDS: Final = ("replace", "redact", "partial", "hash", "null")
"""Operators for scanned spans; column rules also accept ``keep``."""

UNKNOWN_LINEAGE_ACTIONS: Final = ("redact", "null", "scan")

ALLOWED_USES: Final = ("equals", "join", "group", "order", "filter", "compute", "all")
"""What a column rule's ``allow:`` may permit beyond selecting the (masked) column:

* ``equals``: comparing it with a constant or parameter (``= 'x'``, ``IN (...)``, ``IS NOT
  DISTINCT FROM $1``, a simple ``CASE``, NULLIF), and writing a value into it that a unique
  index or foreign key checks against stored ones;
* ``join``: equality with another column (``JOIN ... ON a.x = b.y``, ``USING``, ``NATURAL``):
  joins on a keyed-hash column keep working;
* ``group``: GROUP BY, DISTINCT (ON), window PARTITION BY, set operations that compare rows,
  aggregates over DISTINCT values, unique constraints;
* ``order``: ORDER BY (queries, windows, aggregates);
* ``filter``: any predicate (``LIKE``, ranges, functions of it in WHERE / ON / HAVING /
  FILTER / CASE WHEN, LIMIT expressions, row security and CHECK conditions); implies ``equals``
  and ``join``;
* ``compute``: arguments of functions, operators and casts that can fail or branch on a value;
* ``all``: every use, and DDL that renames it out of its rule."""

REDACTED: Final = "<MASKED>"
"""What ``unknown_lineage: redact`` turns a whole value into."""


@dataclass(frozen=True, slots=True)
class OperatorSpec:
    """One operator as written in the policy (pure data; :meth:`build` makes the native one)."""

    kind: str  # replace | redact | partial | hash | null | keep
    value: str | None = None
    keep_first: int = 0
    keep_last: int = 0
    mask_char: str = "*"
    keep_separators: bool = True

    def build(self, entity: str, key: bytes | None) -> Any:
        """The ``veilgate_native.Operator`` for this spec (``keep`` has none)."""
        import veilgate_native as native

        return native.Operator(
            self.kind,
            value=self.value,
            keep_first=self.keep_first,
            keep_last=self.keep_last,
            mask_char=self.mask_char,
            keep_separators=self.keep_separators,
            key=key if self.kind == "hash" else None,
            entity=entity,
        )


@dataclass(frozen=True, slots=True)
class CustomEntity:
    entity: str
    regex: str | None = None
    words: tuple[str, ...] = ()


JsonRule = tuple[str, OperatorSpec | None]
"""A ``json:`` entry of a column rule: a JSON path and its operator (``None``: content scan,
``keep``: left as it is)."""


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """A ``columns:`` entry: ``column`` globs ``schema.table.column``, ``name`` globs the result
    column name.  ``op`` None with ``scan`` True means content scanning; ``json`` (with ``op``
    None) masks a json / jsonb value per JSON path, every other leaf content-scanned."""

    pattern: str
    by: str  # "column" | "name"
    op: OperatorSpec | None = None
    scan: bool = False
    line: int = 0
    _rx: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)
    allow: frozenset[str] = frozenset()
    """Uses of the masked column the tier permits (see :data:`ALLOWED_USES`)."""
    json: tuple[JsonRule, ...] = ()

    @staticmethod
    def build(
        pattern: str,
        by: str,
        op: OperatorSpec | None,
        scan: bool,
        line: int,
        allow: frozenset[str] = frozenset(),
        json: tuple[JsonRule, ...] = (),
    ) -> ColumnRule:
        return ColumnRule(pattern, by, op, scan, line, re.compile(translate(pattern)), allow, json)

    def allows(self, kind: str) -> bool:
        """Whether a use of this kind (a :class:`~veilgate.masking.resolve.Use` kind) is
        permitted on a column this rule masks."""
        allow = self.allow
        return bool(allow) and (
            "all" in allow or kind in allow or (kind in ("equals", "join") and "filter" in allow)
        )

    @property
    def keeps(self) -> bool:
        return self.op is not None and self.op.kind == "keep"

    @property
    def masks(self) -> bool:
        """True when the rule changes values (anything but an explicit keep)."""
        return not self.keeps

    def matches(self, text: str) -> bool:
        return self._rx.fullmatch(text) is not None

    @property
    def table_pattern(self) -> str:
        """``schema.table`` part of a column rule (``*`` pieces stay globs)."""
        return self.pattern.rsplit(".", 1)[0]

    @property
    def column_pattern(self) -> str:
        return self.pattern.rsplit(".", 1)[-1]

    def label(self) -> str:
        what = "json paths" if self.json else "scan" if self.op is None else self.op.kind
        return f"{self.by} {self.pattern} ({what}, line {self.line})"


@dataclass(frozen=True)
class MaskingPolicy:
    """The whole ``masking:`` section, compiled."""

    apply_to: frozenset[str] | None = None
    hash_key_env: str | None = None
    hash_key_file: Path | None = None
    detectors: tuple[str, ...] = BUILTIN_ENTITIES
    custom: tuple[CustomEntity, ...] = ()
    operators: Mapping[str, OperatorSpec] = field(default_factory=dict)
    default_operator: OperatorSpec = OperatorSpec("replace")
    columns: tuple[ColumnRule, ...] = ()
    scan_unknown: bool = True
    unknown_lineage: str = "redact"
    source: str = "<policy>"

    def __post_init__(self) -> None:
        # per-tier native objects, built on first use (frozen: set through object)
        object.__setattr__(self, "_tiers", {})

    @property
    def uses_hash(self) -> bool:
        ops = [self.default_operator, *self.operators.values()]
        ops += [r.op for r in self.columns if r.op is not None]
        ops += [op for r in self.columns for _, op in r.json if op is not None]
        return any(o.kind == "hash" for o in ops)

    @property
    def entities(self) -> tuple[str, ...]:
        """Every entity a content scan can report (detectors, then custom ones)."""
        return self.detectors + tuple(c.entity for c in self.custom)

    def applies_to(self, tier: str) -> bool:
        return self.apply_to is None or tier in self.apply_to

    def for_tier(self, name: str, key: HashKey | None = None) -> TierMasking | None:
        """The masking of sessions in tier ``name``; ``None`` when the tier is not masked.
        ``key``: the key generation its hash operators use (the gateway's, see
        :mod:`.keys`); None: the key is read when the native objects are built."""
        if not self.applies_to(name):
            return None
        tiers: dict[tuple[str, bytes | None], TierMasking] = self._tiers  # type: ignore[attr-defined]
        cache_key = (name, key.digest if key is not None else None)
        tm = tiers.get(cache_key)
        if tm is None:
            if len(tiers) >= 64:  # key generations of running sessions: bounded
                tiers.clear()
            tm = tiers[cache_key] = TierMasking(self, name, key)
        return tm

    @property
    def key_source(self) -> str:
        """Where the hash key comes from, as messages name it."""
        return key_source(self.hash_key_env, self.hash_key_file)

    def hash_key(self) -> bytes | None:
        """The HMAC key, read now from the environment or file (None when unused); raises
        :class:`MaskingUnavailable` (see :func:`.keys.read_key`)."""
        if not self.uses_hash:
            return None
        if self.hash_key_env is None and self.hash_key_file is None:  # the loader refuses this
            raise MaskingUnavailable("masking hash key missing: none configured")
        return read_key(self.hash_key_env, self.hash_key_file)


class TierMasking:
    """The masking of one tier: rule lookups plus the native objects, built once."""

    def __init__(self, policy: MaskingPolicy, tier: str, key: HashKey | None = None) -> None:
        self.policy = policy
        self.tier = tier
        self.hash_key = key
        """The key generation of the hash operators (None: read by :attr:`key`)."""
        self.column_rules = tuple(r for r in policy.columns if r.by == "column")
        self.name_rules = tuple(r for r in policy.columns if r.by == "name")
        self._col_cache: dict[str, ColumnRule | None] = {}

    # -- rules -------------------------------------------------------------------------------

    @property
    def scan_unknown(self) -> bool:
        return self.policy.scan_unknown

    @property
    def unknown_lineage(self) -> str:
        return self.policy.unknown_lineage

    def column_rule(self, schema: str, table: str, column: str) -> ColumnRule | None:
        """The first column rule for ``schema.table.column`` (as PostgreSQL stores the names)."""
        key = f"{schema}.{table}.{column}"
        if key in self._col_cache:
            return self._col_cache[key]
        hit = next((r for r in self.column_rules if r.matches(key)), None)
        if len(self._col_cache) < 65536:
            self._col_cache[key] = hit
        return hit

    def name_rule(self, name: str) -> ColumnRule | None:
        """The first ``name`` rule for a result column name."""
        return next((r for r in self.name_rules if r.matches(name)), None)

    def masks_column(self, schema: str, table: str, column: str) -> bool:
        r = self.column_rule(schema, table, column)
        if r is None:
            r = self.name_rule(column)
        return r is not None and r.masks

    def table_may_mask(self, schema: str | None, table: str) -> bool:
        """Whether some column rule could mask a column of this table (``schema`` None: any)."""
        for r in self.column_rules:
            if not r.masks:
                continue
            tp = r.table_pattern
            if schema is None:
                if re.fullmatch(translate(tp.rsplit(".", 1)[-1]), table):
                    return True
            elif re.fullmatch(translate(tp), f"{schema}.{table}"):
                return True
        return False

    @cached_property
    def masks_any(self) -> bool:
        """Whether some rule masks a column (a value of unknown origin may then carry one)."""
        return any(r.masks for r in self.column_rules + self.name_rules)

    def schema_may_mask(self, schema: str) -> bool:
        """Whether some column rule could mask a column of a table in ``schema``."""
        return any(
            r.masks and re.fullmatch(translate(r.table_pattern.split(".", 1)[0]), schema)
            for r in self.column_rules
        )

    def name_masked(self, column: str) -> bool:
        """Whether a column of this name is masked by some rule (by name or by any column rule
        whose column part matches): used to judge references in statement text."""
        r = self.name_rule(column)
        if r is not None and r.masks:
            return True
        return any(
            r.masks and re.fullmatch(translate(r.column_pattern), column) for r in self.column_rules
        )

    # -- native objects ----------------------------------------------------------------------

    @cached_property
    def key(self) -> bytes | None:
        if not self.policy.uses_hash:
            return None
        if self.hash_key is not None:
            return self.hash_key.material
        return self.policy.hash_key()

    @cached_property
    def scanner(self) -> Any:
        """The content-scanning ``veilgate_native.Masker`` (detectors + custom entities)."""
        try:
            import veilgate_native as native

            masker_cls = native.Masker
        except (ImportError, AttributeError) as exc:
            raise MaskingUnavailable(f"native masking engine unavailable: {exc}") from None
        p = self.policy
        key = self.key
        return masker_cls(
            entities=list(p.detectors),
            operators={e: spec.build(e, key) for e, spec in p.operators.items()},
            default_operator=p.default_operator.build("DEFAULT", key),
            custom_patterns=[(c.entity, c.regex) for c in p.custom if c.regex is not None],
            dictionaries={c.entity: list(c.words) for c in p.custom if c.words},
        )

    def operator_for(self, rule: ColumnRule) -> Any:
        """The native object a column rule applies: an Operator, the scanner, a JsonMasker (a
        rule with ``json:`` paths), or None (keep)."""
        if rule.json:
            cached = self._ops.get(rule.line)
            if cached is None:
                cached = self._ops[rule.line] = self._json_masker(rule)
            return cached
        if rule.op is None:
            return self.scanner
        if rule.op.kind == "keep":
            return None
        cached = self._ops.get(rule.line)
        if cached is None:
            cached = self._ops[rule.line] = rule.op.build("COLUMN", self.key)
        return cached

    @cached_property
    def _ops(self) -> dict[int, Any]:
        return {}

    def _json_masker(self, rule: ColumnRule) -> Any:
        import veilgate_native as native

        paths: list[tuple[str, Any]] = []
        for path, op in rule.json:
            if op is None:
                paths.append((path, self.scanner))
            elif op.kind == "keep":
                paths.append((path, None))
            else:
                paths.append((path, op.build("COLUMN", self.key)))
        return native.JsonMasker(self.scanner, paths)

    @cached_property
    def redactor(self) -> Any:
        """What ``unknown_lineage: redact`` applies: the whole value becomes ``<MASKED>``."""
        return OperatorSpec("replace", value=REDACTED).build("MASKED", None)
