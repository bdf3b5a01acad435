"""Does a filter (``WHERE``, ``MERGE ... ON``) actually select rows of its target?

A guardrail such as "no DELETE without WHERE" must judge what the server will do, not how the
text looks: ``WHERE 1 = 1``, ``WHERE id = id OR x``, ``WHERE NOT false``, ``WHERE EXISTS (SELECT
1)`` and ``WHERE 't'::boolean`` all touch every row, while ``WHERE false`` touches none.
:func:`judge_filter` folds the expression to one of three answers:

* ``ROW``: the filter depends on the target row (a real filter);
* ``ALL``: it is true for every row (constant true, a self-comparison such as ``x = x``), or it
  does not depend on the row at all (``WHERE $1``, ``WHERE (SELECT count(*) FROM u) > 0``,
  ``WHERE now() > '2020-01-01'``: all rows or none), so it counts as no filter;
* ``NONE``: it is provably false or NULL for every row (``WHERE false``, ``WHERE 1 = 0``,
  ``WHERE NULL``): a filter that matches nothing.

Three-valued logic is followed (``NULL AND x`` never selects a row).  Self-comparisons (``x = x``,
``x >= x``, ``x IS NOT DISTINCT FROM x``, ``x BETWEEN x AND x``) count as true: they only leave out
rows where ``x`` is NULL.  Constants are compared only when the answer does not depend on a
collation or a type the analysis cannot see (numbers, booleans, identical strings); anything else
that does not depend on the row is ``ALL``.

Which column references are "the row": a reference qualified with the target's alias (or its
name when it has none); an unqualified reference only when the statement has no other relation
(``USING`` / ``FROM`` / the ``MERGE`` source), since it may name a column of those.  Inside a
subquery only qualified references count, and not when the subquery binds the same name itself
(``EXISTS (SELECT 1 FROM u AS t WHERE t.a = t.a)`` does not depend on the outer ``t``).  This errs
towards "no filter": a correlated subquery must qualify its outer references to count.

Not detected (documented limits): predicates that are true for every row only because of the
data or the schema (``id > -1`` on a serial key, ``length(x) >= 0``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = [
    "ALL",
    "FALSE",
    "INDEPENDENT",
    "NONE",
    "NULL",
    "ROW",
    "TRUE",
    "FilterScope",
    "coarse",
    "conjoin",
    "evaluate",
    "judge_filter",
    "negate",
]

ROW: Final = "row"
"""The filter depends on the target row (also a truth value of :func:`evaluate`)."""
ALL: Final = "all"
NONE: Final = "none"

TRUE: Final = "true"
FALSE: Final = "false"
NULL: Final = "null"
INDEPENDENT: Final = "independent"
"""Truth values of :func:`evaluate`: true / false / null for every row, ``ROW`` (depends on the
row), ``INDEPENDENT`` (the same for every row, value unknown: all rows or none)."""

_T, _F, _N, _R, _I = TRUE, FALSE, NULL, ROW, INDEPENDENT

_SELF_TRUE_OPS: Final = frozenset({"=", ">=", "<=", "~~", "~~*"})
"""Operators true when both sides are the same non-null value.  ``x LIKE x`` is not always true
(a pattern with a backslash), but counting it as true only ever flags more statements."""
_SELF_FALSE_OPS: Final = frozenset({"<>", "!=", "<", ">"})
_BOOL_TRUE: Final = frozenset({"t", "true", "y", "yes", "on", "1"})
_BOOL_FALSE: Final = frozenset({"f", "false", "n", "no", "off", "0"})
_BOOL_TYPES: Final = frozenset({"bool", "boolean"})
_INT_TYPES: Final = frozenset({"int2", "int4", "int8", "integer", "smallint", "bigint", "numeric"})


class _Const:
    """A constant of the expression, with the value the analysis understands (or None)."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: Any) -> None:
        self.kind = kind  # "bool", "num", "str", "null"
        self.value = value


class FilterScope:
    """Names that denote the target row in a filter, and whether unqualified columns do."""

    __slots__ = ("names", "unqualified")

    def __init__(self, names: Iterable[str], *, unqualified: bool) -> None:
        self.names = frozenset(names)
        self.unqualified = unqualified


class _Eval:
    __slots__ = ("read_constants",)

    def __init__(self) -> None:
        self.read_constants = False
        """Set once the answer depended on the value of a constant (the decision must then be
        cached by exact text only: see veilgate.policy.literals)."""

    # -- entry -------------------------------------------------------------------------------

    def truth(self, node: Any, scope: FilterScope | None, depth: int = 0) -> str:
        """``node`` as one of T, F, N, R, I."""
        v = self.value(node, scope, depth)
        if isinstance(v, _Const):
            return self._const_truth(v)
        return v

    def _const_truth(self, c: _Const) -> str:
        self.read_constants = True
        if c.kind == "null":
            return _N
        if c.kind == "bool":
            return _T if c.value else _F
        if c.kind == "str" and isinstance(c.value, str):
            low = c.value.strip().lower()
            if low in _BOOL_TRUE:
                return _T
            if low in _BOOL_FALSE:
                return _F
        return _I  # the server would reject or coerce it: not our business here

    # -- values ------------------------------------------------------------------------------

    def value(self, node: Any, scope: FilterScope | None, depth: int) -> str | _Const:
        if depth > 200 or not isinstance(node, dict) or len(node) != 1:
            return self._fallback(node, scope)
        ((kind, body),) = node.items()
        if not isinstance(body, dict):
            return self._fallback(node, scope)
        method = _DISPATCH.get(kind)
        if method is None:
            return self._fallback(node, scope)
        return method(self, body, scope, depth + 1)

    def _fallback(self, node: Any, scope: FilterScope | None) -> str:
        return _R if _mentions_row(node, scope) else _I

    def _a_const(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> _Const:
        if body.get("isnull"):
            return _Const("null", None)
        if "boolval" in body:
            return _Const("bool", bool(body["boolval"].get("boolval", False)))
        if "ival" in body:
            return _Const("num", Decimal(int(body["ival"].get("ival", 0))))
        if "fval" in body:
            try:
                return _Const("num", Decimal(str(body["fval"].get("fval", ""))))
            except InvalidOperation:
                return _Const("num", None)
        if "sval" in body:
            return _Const("str", str(body["sval"].get("sval", "")))
        return _Const("str", None)

    def _column_ref(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        return _R if _column_is_row(body, scope) else _I

    def _type_cast(
        self, body: Mapping[str, Any], scope: FilterScope | None, depth: int
    ) -> str | _Const:
        inner = self.value(body.get("arg"), scope, depth)
        if not isinstance(inner, _Const):
            return inner
        names = [
            str(n.get("String", {}).get("sval", ""))
            for n in (body.get("typeName", {}) or {}).get("names", [])
            if isinstance(n, dict)
        ]
        target = names[-1].lower() if names else ""
        if inner.kind == "null":
            return inner
        self.read_constants = True
        if target in _BOOL_TYPES:
            if inner.kind == "bool":
                return inner
            if inner.kind == "str" and isinstance(inner.value, str):
                low = inner.value.strip().lower()
                if low in _BOOL_TRUE:
                    return _Const("bool", True)
                if low in _BOOL_FALSE:
                    return _Const("bool", False)
            if inner.kind == "num" and inner.value is not None and inner.value == int(inner.value):
                return _Const("bool", inner.value != 0)  # int::boolean
            return _I
        if target in _INT_TYPES:
            if inner.kind == "num":
                return inner
            if inner.kind == "str" and isinstance(inner.value, str):
                try:
                    return _Const("num", Decimal(inner.value.strip()))
                except InvalidOperation:
                    return _I
            return _I
        if target in ("text", "varchar", "bpchar") and inner.kind == "str":
            return inner
        return _I

    def _bool_expr(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        op = body.get("boolop")
        args = [self.truth(a, scope, depth) for a in body.get("args", []) or []]
        if op == "NOT_EXPR":
            a = args[0] if args else _I
            return {_T: _F, _F: _T}.get(a, a)
        if op == "AND_EXPR":
            for v in (_F, _N, _R, _I):
                if v in args:
                    return v
            return _T
        if op == "OR_EXPR":
            for v in (_T, _R, _I, _N):
                if v in args:
                    return v
            return _F
        return _I

    def _a_expr(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        kind = body.get("kind")
        names = [
            str(n.get("String", {}).get("sval", ""))
            for n in body.get("name", []) or []
            if isinstance(n, dict)
        ]
        op = names[-1] if names else ""
        lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
        if kind in (
            "AEXPR_OP",
            "AEXPR_NOT_DISTINCT",
            "AEXPR_DISTINCT",
            "AEXPR_LIKE",
            "AEXPR_ILIKE",
        ):
            if lexpr is not None and rexpr is not None and self._same(lexpr, rexpr):
                # a self-comparison: true (or false) whatever the row holds
                if kind == "AEXPR_NOT_DISTINCT" or op in _SELF_TRUE_OPS:
                    return _T
                if kind == "AEXPR_DISTINCT" or op in _SELF_FALSE_OPS:
                    return _F
            left = self.value(lexpr, scope, depth) if lexpr is not None else _I
            right = self.value(rexpr, scope, depth) if rexpr is not None else _I
            if _R in (left, right):
                return _R
            if isinstance(left, _Const) and isinstance(right, _Const):
                return self._compare(kind, op, left, right)
            return _I
        if kind == "AEXPR_IN":
            items = rexpr.get("List", {}).get("items", []) if isinstance(rexpr, dict) else []
            left = self.value(lexpr, scope, depth)
            vals = [self.value(i, scope, depth) for i in items]
            if left == _R or _R in vals:
                return _R
            if lexpr is not None and any(self._same(lexpr, i) for i in items):
                return _T if op == "=" else _F
            if isinstance(left, _Const) and all(isinstance(v, _Const) for v in vals):
                results = [self._compare("AEXPR_OP", "=", left, v) for v in vals]  # type: ignore[arg-type]
                any_true = _T if _T in results else (_I if _I in results else _F)
                return any_true if op == "=" else {_T: _F, _F: _T}.get(any_true, any_true)
            return _I
        if kind in (
            "AEXPR_BETWEEN",
            "AEXPR_NOT_BETWEEN",
            "AEXPR_BETWEEN_SYM",
            "AEXPR_NOT_BETWEEN_SYM",
        ):
            items = rexpr.get("List", {}).get("items", []) if isinstance(rexpr, dict) else []
            parts = [self.value(lexpr, scope, depth), *(self.value(i, scope, depth) for i in items)]
            if _R in parts:
                if (
                    lexpr is not None
                    and len(items) == 2
                    and all(self._same(lexpr, i) for i in items)
                ):
                    return _T if "NOT" not in str(kind) else _F
                return _R
            return _I
        # ANY / ALL over arrays, OF, NULLIF...: row-dependent if they mention the row
        return self._fallback({"A_Expr": body}, scope)

    def _same(self, a: Any, b: Any) -> bool:
        """:func:`_same`; a match of constants (``1 = 1``) depends on their values."""
        if not _same(a, b):
            return False
        if _has_const(a):
            self.read_constants = True
        return True

    def _compare(self, kind: Any, op: str, a: _Const, b: _Const) -> str:
        self.read_constants = True
        if a.kind == "null" or b.kind == "null":
            if kind == "AEXPR_NOT_DISTINCT":
                return _T if a.kind == b.kind else _F
            if kind == "AEXPR_DISTINCT":
                return _F if a.kind == b.kind else _T
            return _N
        if a.value is None or b.value is None:
            return _I
        if kind == "AEXPR_NOT_DISTINCT":
            op = "="
        elif kind == "AEXPR_DISTINCT":
            op = "<>"
        if a.kind == b.kind == "num" or a.kind == b.kind == "bool":
            x, y = a.value, b.value
        elif a.kind == b.kind == "str" and op in ("=", "<>", "!="):
            # equality of identical strings holds under every collation; inequality of
            # different ones too, except under nondeterministic collations: stay unknown then
            if a.value == b.value:
                return _T if op == "=" else _F
            return _I
        else:
            return _I
        result = {
            "=": x == y,
            "<>": x != y,
            "!=": x != y,
            "<": x < y,
            ">": x > y,
            "<=": x <= y,
            ">=": x >= y,
        }.get(op)
        if result is None:
            return _I
        return _T if result else _F

    def _null_test(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        arg = self.value(body.get("arg"), scope, depth)
        if not isinstance(arg, _Const):
            return arg
        self.read_constants = True
        is_null = arg.kind == "null"
        if body.get("nulltesttype") == "IS_NULL":
            return _T if is_null else _F
        return _F if is_null else _T

    def _boolean_test(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        arg = self.truth(body.get("arg"), scope, depth)
        if arg in (_R, _I):
            return arg
        test = str(body.get("booltesttype", ""))
        table = {
            "IS_TRUE": {_T: _T, _F: _F, _N: _F},
            "IS_NOT_TRUE": {_T: _F, _F: _T, _N: _T},
            "IS_FALSE": {_T: _F, _F: _T, _N: _F},
            "IS_NOT_FALSE": {_T: _T, _F: _F, _N: _T},
            "IS_UNKNOWN": {_T: _F, _F: _F, _N: _T},
            "IS_NOT_UNKNOWN": {_T: _T, _F: _T, _N: _F},
        }
        return table.get(test, {}).get(arg, _I)

    def _case_expr(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        if body.get("arg") is not None:
            return self._fallback({"CaseExpr": body}, scope)
        outcomes: list[str] = []
        for w in body.get("args", []) or []:
            cw = w.get("CaseWhen", {}) if isinstance(w, dict) else {}
            cond = self.truth(cw.get("expr"), scope, depth)
            result = self.truth(cw.get("result"), scope, depth)
            if cond == _T:
                outcomes.append(result)
                return _join_outcomes(outcomes)
            if cond in (_F, _N):
                continue
            outcomes.extend([cond if cond == _R else _I, result])
        default = body.get("defresult")
        outcomes.append(self.truth(default, scope, depth) if default is not None else _N)
        return _join_outcomes(outcomes)

    def _coalesce(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        outcomes: list[str] = []
        for a in body.get("args", []) or []:
            v = self.truth(a, scope, depth)
            if v in (_T, _F):
                outcomes.append(v)
                return _join_outcomes(outcomes)
            if v == _N:
                continue
            outcomes.append(v)
        outcomes.append(_N)
        return _join_outcomes(outcomes)

    def _sub_link(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        sub = body.get("subselect")
        inner_scope = _inner_scope(sub, scope)
        mentions = _mentions_row(sub, inner_scope) or _mentions_row(body.get("testexpr"), scope)
        if mentions:
            return _R
        if body.get("subLinkType") == "EXISTS_SUBLINK":
            sel = sub.get("SelectStmt", {}) if isinstance(sub, dict) else {}
            plain = (
                isinstance(sel, dict)
                and not sel.get("fromClause")
                and sel.get("op", "SETOP_NONE") == "SETOP_NONE"
                and sel.get("limitCount") is None
                and not sel.get("havingClause")
                and not sel.get("groupClause")
            )
            if plain:
                where = sel.get("whereClause")
                if where is None:
                    return _T  # EXISTS (SELECT 1): one row, always
                w = self.truth(where, inner_scope, depth)
                if w == _T:
                    return _T
                if w in (_F, _N):
                    return _F
        return _I

    def _row_or_list(self, body: Mapping[str, Any], scope: FilterScope | None, depth: int) -> str:
        return self._fallback({"RowExpr": body}, scope)


def _join_outcomes(outcomes: list[str]) -> str:
    """A CASE / COALESCE whose branch is chosen at run time: the weakest guarantee."""
    if _R in outcomes:
        return _R
    if _I in outcomes:
        return _I
    if all(o == _T for o in outcomes):
        return _T
    if all(o in (_F, _N) for o in outcomes):
        return _F
    return _I


_Method = Callable[[_Eval, Mapping[str, Any], "FilterScope | None", int], "str | _Const"]

_DISPATCH: Final[dict[str, _Method]] = {
    "A_Const": _Eval._a_const,
    "ColumnRef": _Eval._column_ref,
    "TypeCast": _Eval._type_cast,
    "BoolExpr": _Eval._bool_expr,
    "A_Expr": _Eval._a_expr,
    "NullTest": _Eval._null_test,
    "BooleanTest": _Eval._boolean_test,
    "CaseExpr": _Eval._case_expr,
    "CoalesceExpr": _Eval._coalesce,
    "SubLink": _Eval._sub_link,
}


def _strip_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_locations(v)
            for k, v in node.items()
            if k not in ("location", "rexpr_list_start", "rexpr_list_end")
        }
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


def _same(a: Any, b: Any) -> bool:
    """The same expression (up to where it is written), and free of volatile calls."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    if _has_call(a):
        return False  # random() = random() is not true
    return bool(_strip_locations(a) == _strip_locations(b))


def _has_const(node: Any) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if "A_Const" in n:
                return True
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return False


def _has_call(node: Any) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if "FuncCall" in n or "SubLink" in n:
                return True
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return False


def _column_is_row(body: Mapping[str, Any], scope: FilterScope | None) -> bool:
    if scope is None:
        return False
    fields = [f for f in body.get("fields", []) or [] if isinstance(f, dict)]
    names = [str(f["String"].get("sval", "")) for f in fields if "String" in f]
    if len(fields) == 1:
        return scope.unqualified  # a bare column name
    if not names:
        return False
    # t.col, s.t.col, t.* ...: the relation is the name before the column
    qualifier = names[-2] if len(names) >= 2 and "String" in fields[-1] else names[-1]
    return qualifier in scope.names


def _bound_names(select: Any) -> set[str]:
    """Relation names a SELECT binds in its FROM (aliases, else relation names)."""
    out: set[str] = set()
    if not isinstance(select, dict):
        return out
    stack = list(select.get("fromClause", []) or [])
    while stack:
        item = stack.pop()
        if not isinstance(item, dict) or len(item) != 1:
            continue
        ((kind, body),) = item.items()
        if not isinstance(body, dict):
            continue
        alias = body.get("alias")
        if isinstance(alias, dict) and alias.get("aliasname"):
            out.add(str(alias["aliasname"]))
        elif kind == "RangeVar":
            out.add(str(body.get("relname", "")))
        if kind == "JoinExpr":
            stack.extend([body.get("larg"), body.get("rarg")])
    return out


def _inner_scope(sub: Any, scope: FilterScope | None) -> FilterScope | None:
    """The target names still visible inside a subquery (unqualified columns never count)."""
    if scope is None:
        return None
    sel = sub.get("SelectStmt") if isinstance(sub, dict) else None
    bound = _bound_names(sel) if isinstance(sel, dict) else set()
    names = scope.names - bound
    return FilterScope(names, unqualified=False) if names else None


def _mentions_row(node: Any, scope: FilterScope | None) -> bool:
    """Whether ``node`` references the target row anywhere (scopes of subqueries followed)."""
    if scope is None:
        return False
    stack: list[tuple[Any, FilterScope | None]] = [(node, scope)]
    while stack:
        n, sc = stack.pop()
        if sc is None:
            continue
        if isinstance(n, list):
            stack.extend((v, sc) for v in n)
            continue
        if not isinstance(n, dict):
            continue
        if "ColumnRef" in n and isinstance(n["ColumnRef"], dict):
            if _column_is_row(n["ColumnRef"], sc):
                return True
            continue
        if "CurrentOfExpr" in n:
            return True
        if "SelectStmt" in n and isinstance(n["SelectStmt"], dict):
            inner = _inner_scope(n, sc)
            stack.extend((v, inner) for v in n["SelectStmt"].values())
            continue
        stack.extend((v, sc) for v in n.values())
    return False


def evaluate(expr: Any, scope: FilterScope) -> tuple[str, bool]:
    """(truth value, whether it read a constant's value) of the filter ``expr`` (a parse-tree
    node; None = no filter: ``TRUE``)."""
    if expr is None:
        return _T, False
    ev = _Eval()
    return ev.truth(expr, scope), ev.read_constants


def negate(v: str) -> str:
    return {_T: _F, _F: _T}.get(v, v)


def conjoin(*values: str) -> str:
    """``a AND b AND ...`` of truth values."""
    for v in (_F, _N, _R, _I):
        if v in values:
            return v
    return _T


def coarse(v: str) -> str:
    """A truth value as ``ROW`` (a real filter), ``ALL`` (no filter) or ``NONE`` (nothing)."""
    if v == _R:
        return ROW
    if v in (_F, _N):
        return NONE
    return ALL


def judge_filter(expr: Any, scope: FilterScope) -> tuple[str, bool]:
    """(``ROW`` / ``ALL`` / ``NONE``, whether the answer read a constant's value) for the filter
    ``expr`` (a parse-tree node; None = no filter at all: ``ALL``)."""
    v, read = evaluate(expr, scope)
    return coarse(v), read
