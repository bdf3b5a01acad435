"""Every node type of the grammar is classified for the lineage resolver, exactly once.

pglast (libpg_query) ships a class per node type PostgreSQL's parser knows.  A new grammar
version adds some: this test fails until each is either given a rule in the resolver or put in
a class that says why it needs none (veilgate.masking.nodes).  Node types that introduce or
rename columns must have a rule (or be a part their parent's rule reads).
"""

from __future__ import annotations

import inspect
import itertools

import pglast.ast as ast

from veilgate.masking import nodes, resolve


def _grammar_nodes() -> set[str]:
    return {
        name
        for name, cls in inspect.getmembers(ast, inspect.isclass)
        if issubclass(cls, ast.Node) and cls is not ast.Node
    }


def test_every_node_type_is_classified() -> None:
    classes = {
        "handled": set(nodes.HANDLED),
        "parts": set(nodes.PARTS),
        "analyzed": set(nodes.ANALYZED),
        "utility": set(nodes.UTILITY),
    }
    known = set().union(*classes.values())
    grammar = _grammar_nodes()
    assert not grammar - known, f"node types nobody decided about: {sorted(grammar - known)}"
    assert not known - grammar, f"classified but not in the grammar: {sorted(known - grammar)}"
    for (a, xs), (b, ys) in itertools.combinations(classes.items(), 2):
        assert not xs & ys, f"in both {a} and {b}: {sorted(xs & ys)}"


def test_renaming_node_types_have_rules() -> None:
    handled = set(nodes.HANDLED) | set(nodes.PARTS)
    assert handled >= nodes.RENAMING, sorted(nodes.RENAMING - handled)
    # the ones that introduce FROM items have their own FROM rule
    for kind in ("RangeVar", "RangeSubselect", "RangeFunction", "JoinExpr", "RangeTableFunc"):
        assert kind in resolve._FROM
    for kind in ("ColumnRef", "A_Indirection", "SubLink", "RowExpr", "MultiAssignRef"):
        assert kind in resolve._EXPRESSIONS


def test_handled_types_really_have_a_rule() -> None:
    rules = set(resolve._EXPRESSIONS) | set(resolve._FROM) | set(resolve._STATEMENTS)
    assert set(nodes.HANDLED) == rules
    for table in (resolve._EXPRESSIONS, resolve._FROM, resolve._STATEMENTS):
        assert all(callable(h) for h in table.values())


def test_parts_say_where_they_are_read() -> None:
    assert all(isinstance(v, str) and v for v in nodes.PARTS.values())
