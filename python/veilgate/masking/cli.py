"""``veilgate mask``: mask CSV or JSON lines with a policy's masking rules, stdin to stdout.

For pipelines that never touch the gateway (exports, fixtures, logs)::

    veilgate mask --policy policy.yaml [--format csv|jsonl] [--tier NAME] [INPUT] < in > out

* **CSV**: the header row names the columns.  A ``name`` rule, or a ``column`` rule whose table
  part is all wildcards (``*.*.ssn``), applies by column name; a header written
  ``schema.table.column`` also matches ``column`` rules exactly.  Every other field is
  content-scanned with the detectors.  The header row is kept as is.
* **JSON lines**: one JSON value per line.  Object keys are matched like CSV column names (the
  rule then applies to every string or number under that key; a rule with ``json:`` paths masks
  the value under that key per path); every other string (and number) is content-scanned;
  nested objects and arrays are walked.  Strings are masked as decoded text and written back as
  JSON; a masked number stays a number (the digits its operator kept, else ``0``), so every
  output line is JSON with the input's structure and keys.  A line that is not JSON is masked as
  text with the detectors (key rules cannot apply to it) and counted; the count and the line
  numbers go to stderr.

``--tier`` masks as that tier's sessions would be (a tier the policy does not mask is refused);
without it every rule of the section applies.  Errors name the input and line, never a value.
Exit status: 0 done, 1 bad input (malformed CSV, not UTF-8), 2 bad arguments or policy.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ..policy.loader import PolicyError, load_policy
from .policy import ColumnRule, MaskingUnavailable, TierMasking

__all__ = ["mask_main"]

Apply = Callable[[str], str | None]


class _InputError(Exception):
    pass


def mask_main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    ap = argparse.ArgumentParser(
        prog="veilgate mask",
        description="Mask CSV or JSON lines (stdin to stdout) with a policy's masking rules.",
    )
    ap.add_argument("--policy", required=True, help="policy file with a masking: section")
    ap.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    ap.add_argument("--tier", help="mask as this tier's sessions are masked")
    ap.add_argument("input", nargs="?", help="input file (default: stdin)")
    args = ap.parse_args(argv)
    try:
        tier = _tier(args.policy, args.tier)
        masker = _Masker(tier)
    except _Refused as exc:
        print(f"veilgate mask: {exc}", file=err)
        return 2
    name = args.input or "<stdin>"
    try:
        if args.input is not None:
            with open(args.input, encoding="utf-8", newline="") as f:
                return _run(args.format, masker, f, out, err, name)
        src = stdin or sys.stdin
        return _run(args.format, masker, src, out, err, name)
    except OSError as exc:
        print(f"veilgate mask: {name}: {exc.strerror or exc}", file=err)
        return 1


def _run(fmt: str, masker: _Masker, src: TextIO, out: TextIO, err: TextIO, name: str) -> int:
    try:
        if fmt == "csv":
            masker.csv(src, out, name)
        else:
            not_json = masker.jsonl(src, out, name)
            if not_json:
                shown = ", ".join(str(n) for n in not_json[:20])
                more = " ..." if len(not_json) > 20 else ""
                print(
                    f"veilgate mask: {name}: {len(not_json)} line(s) not JSON, masked as text "
                    f"(key rules could not apply): lines {shown}{more}",
                    file=err,
                )
    except _InputError as exc:
        print(f"veilgate mask: {exc}", file=err)
        return 1
    except UnicodeDecodeError as exc:
        print(f"veilgate mask: {name}: input is not UTF-8 (byte {exc.start})", file=err)
        return 1
    return 0


class _Refused(Exception):
    pass


def _tier(path: str, name: str | None) -> TierMasking:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise _Refused("\n".join(str(i) for i in exc.issues)) from None
    m = policy.masking
    if m is None:
        raise _Refused(f"{path}: the policy has no masking: section")
    if name is None:
        return TierMasking(m, "*")
    if policy.tier_named(name) is None:
        raise _Refused(f"{path}: no tier named {name!r}")
    tm = m.for_tier(name)
    if tm is None:
        raise _Refused(f"{path}: tier {name!r} is not masked (masking.apply_to)")
    return tm


def _by_name_rule(tier: TierMasking, name: str) -> ColumnRule | None:
    """The rule for a column known only by name (see the module docstring)."""
    parts = name.split(".")
    if len(parts) == 3:
        rule = tier.column_rule(*parts)
        if rule is not None:
            return rule
        name = parts[2]
    rule = tier.name_rule(name)
    if rule is not None:
        return rule
    for r in tier.column_rules:
        if all(p == "*" for p in r.table_pattern.split(".")) and r.matches(f"x.x.{name}"):
            return r
    return None


class _Masker:
    def __init__(self, tier: TierMasking) -> None:
        self.tier = tier
        try:
            scanner = tier.scanner
            self._scan: Apply = scanner.mask
            self._rules: dict[int, Apply | None] = {}
            self._json_rules: dict[int, Apply] = {}
            for r in (*tier.column_rules, *tier.name_rules):
                self._rules[id(r)] = self._build(r)
        except (MaskingUnavailable, ValueError) as exc:
            raise _Refused(f"cannot build the masking engine: {exc}") from None

    def _build(self, rule: ColumnRule) -> Apply | None:
        if rule.keeps:
            return None
        if rule.json:
            masker = self.tier.operator_for(rule)  # a JsonMasker
            self._json_rules[id(rule)] = masker.mask
            return self._scan
        if rule.op is None:
            return self._scan
        op = self.tier.operator_for(rule)
        apply: Apply = op.apply
        return apply

    def for_name(self, name: str) -> tuple[bool, Apply | None]:
        """(has a rule, what to apply: None keeps)."""
        rule = _by_name_rule(self.tier, name)
        if rule is None:
            return False, self._scan
        return True, self._rules[id(rule)]

    def json_rule(self, name: str) -> Apply | None:
        """The JSON masker of a rule with ``json:`` paths for a key, if there is one."""
        rule = _by_name_rule(self.tier, name)
        return None if rule is None else self._json_rules.get(id(rule))

    # -- CSV ---------------------------------------------------------------------------------

    def csv(self, src: TextIO, out: TextIO, name: str) -> None:
        reader = csv.reader(src)
        writer = csv.writer(out, lineterminator="\n")
        actions: list[Apply | None] | None = None
        try:
            for row in reader:
                if actions is None:  # the header row: names the columns, kept as is
                    actions = [self.for_name(h.strip())[1] for h in row]
                    writer.writerow(row)
                    continue
                masked = []
                for i, value in enumerate(row):
                    fn = actions[i] if i < len(actions) else self._scan
                    if fn is None or value == "":
                        masked.append(value)
                    else:
                        v = fn(value)
                        masked.append("" if v is None else v)
                writer.writerow(masked)
        except csv.Error as exc:
            raise _InputError(
                f"{name}:{reader.line_num}: malformed CSV ({_csv_reason(exc)})"
            ) from None

    # -- JSON lines ----------------------------------------------------------------------------

    def jsonl(self, src: TextIO, out: TextIO, name: str) -> list[int]:
        """Masks JSON lines; returns the numbers of the lines that were not JSON (masked as
        text)."""
        not_json: list[int] = []
        for lineno, line in enumerate(src, 1):
            text = line.strip()
            if not text:
                out.write("\n")
                continue
            try:
                value = json.loads(text)
                masked = self._walk(value, self._scan)
                encoded = json.dumps(masked, ensure_ascii=False, separators=(",", ":"))
            except (json.JSONDecodeError, RecursionError):
                # not JSON (or nested too deeply to walk): masked as text, counted
                not_json.append(lineno)
                as_text = self._scan(text)
                encoded = "" if as_text is None else as_text.replace("\n", " ")
            out.write(encoded + "\n")
        return not_json

    def _walk(self, value: Any, fn: Apply | None) -> Any:
        """``value`` with ``fn`` applied to every string and number leaf (None keeps)."""
        stack: list[tuple[Any, Any, Any, Apply | None]] = []
        root: list[Any] = [None]
        stack.append((root, 0, value, fn))
        while stack:
            parent, key, v, f = stack.pop()
            if isinstance(v, dict):
                new: dict[str, Any] = dict.fromkeys(v)  # keys in input order, filled below
                parent[key] = new
                for k, child in v.items():
                    json_fn = self.json_rule(str(k))
                    if json_fn is not None:
                        new[k] = _json_masked(json_fn, child)
                        continue
                    has_rule, rule_fn = self.for_name(str(k))
                    stack.append((new, k, child, rule_fn if has_rule else f))
            elif isinstance(v, list):
                arr: list[Any] = [None] * len(v)
                parent[key] = arr
                for i, child in enumerate(v):
                    stack.append((arr, i, child, f))
            elif f is not None and isinstance(v, str):
                parent[key] = f(v)
            elif f is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                text = json.dumps(v)
                masked = f(text)
                # a number stays a number: unchanged, masked to a number, or 0
                parent[key] = v if masked == text else _as_number(masked)
            else:
                parent[key] = v
        return root[0]


def _as_number(text: str | None) -> int | float | None:
    """A masked number as a JSON number (as the engine's JSON masker does): its masked text when
    that is one, else the digits the operator kept (``1111`` of ``************1111``), else 0;
    None when an operator nulled it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    digits = "".join(c for c in text if c.isascii() and c.isdigit())
    return int(digits) if digits else 0


def _json_masked(fn: Apply, value: Any) -> Any:
    """``value`` (a JSON subtree) through a native JsonMasker (path rules)."""
    masked = fn(json.dumps(value, ensure_ascii=False))
    return None if masked is None else json.loads(masked)


def _csv_reason(exc: csv.Error) -> str:
    msg = str(exc)
    # csv messages describe the structure ("unexpected end of data", "field larger than field
    # limit"), never a value; keep them short all the same
    return msg[:80]
