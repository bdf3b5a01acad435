"""``python bench/run.py mask``: what result masking costs, in the engine and end to end.

Two parts (``--part engine|e2e|all``, default all):

* **engine**: masking throughput on ONE core (the bench pins itself to one CPU) over the seeded
  labelled sets of ``tests/masking_data.py``: ``engine-dense`` (about 5 PII values in about 200
  characters per row) and ``engine-clean`` (realistic rows with look-alikes and no PII).  Targets:
  ``native`` (``veilgate_native.Masker.mask_batch``), ``python-re`` (:class:`PyReMasker`: one
  alternation, validation in Python, masking into a new string, as MASKING.md describes) and
  ``presidio`` (Presidio's pattern recognizers only, no NLP model: a ``NoOpNlpEngine``; it runs
  at a few hundred rows per second, so it gets a small row count).  Medians of several runs;
  one row per workload x target with MB/s (UTF-8 bytes in) and rows/s.
* **e2e**: ``large-c1`` and ``large-c8`` (1,000 rows x 6 PII-rich columns per transaction, as in
  ``relay``) through two gateways that differ only in masking: ``veilgate`` runs the policy
  ``workloads/mask_policy.yaml`` (column rules plus content scanning), ``veilgate-nomask`` the
  same file without its ``masking:`` section.  A smoke check proves masking is really on (and
  really off): row 1's card number is masked through ``veilgate`` and raw through
  ``veilgate-nomask``.  Rows in the ``relay.json`` format.

Everything lands in ``results/mask.json`` (engine rows first).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

import harness
import policy_targets
from harness import REPO, WORKLOADS_DIR, BenchError, Workload, say

if str(REPO / "tests") not in sys.path:  # tests/masking_data.py: the labelled data
    sys.path.insert(0, str(REPO / "tests"))
import masking_data

MASK_POLICY = WORKLOADS_DIR / "mask_policy.yaml"
MASK_KEY_ENV = "VEILGATE_BENCH_MASK_KEY"
"""The hash operator's key: a fresh random value per bench run, passed to the gateways only."""
MASK_TARGETS = ("veilgate", "veilgate-nomask", "veilgate-columns")
DEFAULT_TARGETS = ("veilgate", "veilgate-nomask")
BASELINE = "veilgate-nomask"
TARGET_MODES = {"veilgate": "on", "veilgate-nomask": "off", "veilgate-columns": "columns"}
"""What each target's gateway runs: the whole policy (``on``), the policy without its masking
section (``off``), or only the masking section's operator column rules, no content scanning
(``columns``; a diagnostic target that splits the cost of masking in two)."""
TPS_BAR = 0.80
"""The bar: masking on keeps at least 80% of the masking-off TPS on the large workloads."""
ENGINE_TARGETS = ("native", "python-re", "presidio")
ENGINE_WORKLOADS = ("engine-dense", "engine-clean")


# --- the Python `re` baseline ------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PY_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "SECRET",
        r"AKIA[0-9A-Z]{16}(?![0-9A-Za-z])"
        r"|eyJ[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]{10,}"
        r"|gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9])",
    ),
    ("EMAIL", r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    ("IBAN", r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)"),
    ("CREDIT_CARD", r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"),
    ("US_SSN", r"(?<![\w-])\d{3}([- ])\d{2}(?P=sep_ssn)\d{4}(?![\w-])"),
    (
        "PHONE",
        r"(?<![\w+])(?:\+1[ .-]?|1[ .-])?(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?!\d)"
        r"|(?<![\w+])\+[1-9]\d{6,14}(?!\d)"
        r"|(?<![\w+])\+[1-9]\d{0,2}(?: \d{1,8}){1,5}(?![\d])",
    ),
    ("IP_ADDRESS", rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)"),
    ("IPV6", r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"),
)


def _py_alternation() -> re.Pattern[str]:
    parts = []
    for name, rx in _PY_PATTERNS:
        rx = rx.replace("([- ])", "(?P<sep_ssn>[- ])")
        parts.append(f"(?P<{name}>{rx})")
    return re.compile("|".join(parts))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer_ok(digits: str) -> bool:
    """Issuer (IIN) ranges and lengths of the major schemes (Mastercard 2221-2720 included)."""
    n = len(digits)
    p2, p4, p6 = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p4 == 6011 or p2 == 65 or 644 <= int(digits[:3]) <= 649 or 622126 <= p6 <= 622925:
        return 16 <= n <= 19
    if 300 <= int(digits[:3]) <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19
    if p2 == 62 or p2 == 50 or 56 <= p2 <= 58 or p2 in (63, 67):  # UnionPay, Maestro
        return 13 <= n <= 19
    return False


def ssn_ok(text: str) -> bool:
    area, group, serial = text[:3], text[4:6], text[7:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    digits = area + group + serial
    return digits != digits[0] * 9


def _bban_len(shape: str) -> int:
    return sum(int(n) for n in re.findall(r"\d+", shape))


IBAN_LENGTHS = {
    "SE": 24, "DK": 18, "FI": 18, "LU": 20, "CZ": 24, "SK": 24, "HU": 28, "RO": 24,
    **{c: 4 + _bban_len(shape) for c, shape in masking_data.IBAN_BBAN.items()},
}  # fmt: skip
"""IBAN length per country: the data's countries and a few more."""


def iban_span(text: str, start: int, end: int) -> int | None:
    """End of a valid IBAN starting at ``start`` inside the candidate ``text[start:end]`` (the
    candidate may run into a following word), or None."""
    want = IBAN_LENGTHS.get(text[start : start + 2])
    if want is None:
        return None
    seen = 0
    for i in range(start, end):
        if text[i] != " ":
            seen += 1
            if seen == want:
                compact = text[start : i + 1].replace(" ", "")
                moved = compact[4:] + compact[:4]
                ok = int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
                return i + 1 if ok else None
    return None


def phone_ok(text: str) -> bool:
    if text.startswith("+") and text[1:].replace(" ", "").isdigit():
        digits = text[1:].replace(" ", "")
        return 8 <= len(digits) <= 15 and not (digits[0] == "1" and digits[1] in "01")
    digits = re.sub(r"\D", "", text)
    if len(digits) == 11:
        digits = digits[1:]
    return len(digits) == 10 and digits[0] >= "2" and digits[3] >= "2"


class PyReMasker:
    """A fair pure-Python masker: one ``re`` alternation over all entities, each candidate
    validated in Python (Luhn + issuer ranges, SSN rules, IBAN mod-97 and length, NANP rules,
    ``ipaddress`` for IPv6), masked to ``<ENTITY>``.  A rejected candidate resumes the scan one
    character later, so a failed card candidate does not hide an SSN starting at the same place."""

    def __init__(self) -> None:
        self._rx = _py_alternation()

    def scan(self, text: str) -> list[tuple[int, int, str]]:
        spans: list[tuple[int, int, str]] = []
        pos = 0
        search = self._rx.search
        while True:
            m = search(text, pos)
            if m is None:
                return spans
            kind = m.lastgroup
            if kind == "sep_ssn":  # lastgroup names the innermost group: the SSN separator
                kind = "US_SSN"
            start, end = m.span()
            value = m.group()
            ok = True
            if kind == "CREDIT_CARD":
                digits = value.replace(" ", "").replace("-", "")
                ok = card_issuer_ok(digits) and luhn_ok(digits)
            elif kind == "US_SSN":
                ok = ssn_ok(value)
            elif kind == "IBAN":
                iend = iban_span(text, start, end)
                ok = iend is not None
                end = iend if iend is not None else end
            elif kind == "PHONE":
                ok = phone_ok(value)
            elif kind == "IPV6":
                kind = "IP_ADDRESS"
                try:
                    ipaddress.IPv6Address(value)
                except ValueError:
                    ok = False
            if ok and kind is not None:
                spans.append((start, end, kind))
                pos = end
            else:
                pos = start + 1

    def mask(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for start, end, kind in self.scan(text):
            out.append(text[last:start])
            out.append(f"<{kind}>")
            last = end
        out.append(text[last:])
        return "".join(out)

    def mask_batch(self, texts: Sequence[str]) -> list[str]:
        return [self.mask(t) for t in texts]


# --- Presidio (pattern recognizers only) -------------------------------------------------------


class PresidioMasker:
    """Presidio's analyzer with its pattern recognizers for our entities and no NLP model
    (``NoOpNlpEngine``, the documented way to run self-contained recognizers only); spans are
    replaced by ``<ENTITY>`` in Python, as presidio-anonymizer's ``replace`` would."""

    ENTITIES: ClassVar[dict[str, str]] = {
        "CREDIT_CARD": "CREDIT_CARD",
        "US_SSN": "US_SSN",
        "EMAIL_ADDRESS": "EMAIL",
        "IBAN_CODE": "IBAN",
        "IP_ADDRESS": "IP_ADDRESS",
        "PHONE_NUMBER": "PHONE",
    }

    def __init__(self) -> None:
        import logging

        import tldextract.tldextract as tld
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )

        # The e-mail recognizer's tldextract would fetch the public-suffix list: use the snapshot
        # it ships (no network here, and a fetch would be timed).
        tld.TLD_EXTRACTOR.suffix_list_urls = ()
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        registry = RecognizerRegistry(supported_languages=["en"])
        for rec in (
            CreditCardRecognizer(),
            UsSsnRecognizer(),
            EmailRecognizer(),
            IbanRecognizer(),
            IpRecognizer(),
            PhoneRecognizer(),
        ):
            registry.add_recognizer(rec)
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        self._engine = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])

    def scan(self, text: str) -> list[tuple[int, int, str]]:
        found = self._engine.analyze(text, language="en")
        spans = sorted(
            (r.start, r.end, self.ENTITIES.get(r.entity_type, r.entity_type)) for r in found
        )
        merged: list[tuple[int, int, str]] = []
        for s in spans:  # overlapping results (two recognizers, one value): keep the first
            if merged and s[0] < merged[-1][1]:
                if s[1] > merged[-1][1]:
                    merged[-1] = (merged[-1][0], s[1], merged[-1][2])
                continue
            merged.append(s)
        return merged

    def mask_batch(self, texts: Sequence[str]) -> list[str]:
        out = []
        for text in texts:
            pieces, last = [], 0
            for start, end, kind in self.scan(text):
                pieces += [text[last:start], f"<{kind}>"]
                last = end
            pieces.append(text[last:])
            out.append("".join(pieces))
        return out


def presidio_unavailable() -> str | None:
    """Why Presidio cannot run here (None: it can)."""
    try:
        PresidioMasker()
    except Exception as exc:  # ImportError, or a model / network error at construction
        return f"{type(exc).__name__}: {exc}"
    return None


# --- engine measurements -----------------------------------------------------------------------


@dataclass
class EngineRow:
    workload: str
    target: str
    mb_s: float
    rows_s: float
    rows: int
    bytes: int
    runs: int
    values_leaked: int | None
    """Labelled values (dense set) still present verbatim in the output; None for clean rows."""

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "target": self.target,
            "mb_s": round(self.mb_s, 4),
            "rows_s": round(self.rows_s, 1),
            "rows": self.rows,
            "bytes": self.bytes,
            "runs": self.runs,
            "values_leaked": self.values_leaked,
        }


def utf8_bytes(texts: Sequence[str]) -> int:
    return sum(len(t.encode()) for t in texts)


def throughput(n_bytes: int, n_rows: int, seconds: Sequence[float]) -> tuple[float, float]:
    """(MB/s, rows/s) from the median of per-pass times (MB = 10^6 bytes)."""
    med = statistics.median(seconds)
    if med <= 0:
        raise BenchError("a measured pass took no time: use more rows")
    return n_bytes / med / 1e6, n_rows / med


def interleaved_passes(
    work: dict[str, tuple[Callable[[Sequence[str]], Any], Sequence[str], int]],
) -> dict[str, list[float]]:
    """Seconds per full pass for each ``name: (fn, texts, passes)``, after one warm-up pass each;
    the targets take turns pass by pass, so drift on a shared machine hits them alike."""
    for fn, texts, _ in work.values():
        fn(texts)
    times: dict[str, list[float]] = {name: [] for name in work}
    for i in range(max(passes for _, _, passes in work.values())):
        for name, (fn, texts, passes) in work.items():
            if i < passes:
                t0 = time.perf_counter()
                fn(texts)
                times[name].append(time.perf_counter() - t0)
    return times


def values_leaked(rows: Sequence[masking_data.LabelledRow], masked: Sequence[str | None]) -> int:
    """How many labelled values still appear verbatim in the masked output."""
    leaked = 0
    for row, out in zip(rows, masked, strict=True):
        if out is None:  # None: an operator nulled the whole value
            continue
        leaked += sum(1 for s in row.spans if row.value(s) in out)
    return leaked


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """Pin this process to one CPU for the engine runs (restored after)."""
    if not hasattr(os, "sched_getaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def native_masker() -> Any:
    """The engine with its built-in detectors and default operator (``<ENTITY>`` replacement)."""
    try:
        import veilgate_native as native

        return native.Masker()
    except (ImportError, AttributeError) as exc:
        raise BenchError(
            f"veilgate_native.Masker unavailable ({exc}): rebuild with "
            "`pip install --no-deps --no-build-isolation ./native/py`"
        ) from None


def engine_plan(quick: bool) -> dict[str, tuple[int, int]]:
    """Per target: (rows per set, timed passes)."""
    if quick:
        return {"native": (2_000, 5), "python-re": (1_000, 3), "presidio": (50, 1)}
    return {"native": (10_000, 9), "python-re": (10_000, 5), "presidio": (300, 3)}


def run_engine(targets: Sequence[str], quick: bool) -> list[EngineRow]:
    plan = engine_plan(quick)
    n_max = max(plan[t][0] for t in targets)
    dense = masking_data.dense_rows(max(n_max, 10_000))
    clean = masking_data.clean_rows(max(n_max, 10_000))
    engines: dict[str, Callable[[Sequence[str]], Any]] = {}
    for t in targets:
        if t == "native":
            engines[t] = native_masker().mask_batch
        elif t == "python-re":
            engines[t] = PyReMasker().mask_batch
        elif t == "presidio":
            why = presidio_unavailable()
            if why is not None:
                say(f"engine: presidio skipped ({why}); pip install presidio-analyzer to add it")
                continue
            engines[t] = PresidioMasker().mask_batch
        else:
            raise BenchError(f"unknown engine target {t!r} (choose from {ENGINE_TARGETS})")
    rows: list[EngineRow] = []
    with one_core() as cpu:
        say(
            f"engine: pinned to CPU {cpu}; load average {os.getloadavg()[0]:.2f}; "
            f"rows per set and timed passes: {plan}"
        )
        for workload in ENGINE_WORKLOADS:
            sets: dict[str, tuple[list[str], Sequence[masking_data.LabelledRow] | None]] = {}
            for target in engines:
                n = plan[target][0]
                labelled = dense[:n] if workload == "engine-dense" else None
                texts = [r.text for r in labelled] if labelled is not None else list(clean[:n])
                sets[target] = (texts, labelled)
            times = interleaved_passes(
                {t: (fn, sets[t][0], plan[t][1]) for t, fn in engines.items()}
            )
            for target, fn in engines.items():
                texts, of_rows = sets[target]
                mb_s, rows_s = throughput(utf8_bytes(texts), len(texts), times[target])
                leaked = values_leaked(of_rows, fn(texts)) if of_rows is not None else None
                rows.append(
                    EngineRow(
                        workload,
                        target,
                        mb_s,
                        rows_s,
                        len(texts),
                        utf8_bytes(texts),
                        len(times[target]),
                        leaked,
                    )
                )
                say(
                    f"  {workload:<13} {target:<10} {mb_s:10.3f} MB/s {rows_s:12.0f} rows/s "
                    f"({len(texts)} rows x {len(times[target])} passes)"
                )
        say(f"engine: load average at the end {os.getloadavg()[0]:.2f}")
    return rows


def engine_table(rows: Sequence[EngineRow]) -> str:
    """MB/s and rows/s per workload x target, and native's speed-up over each baseline."""
    head = (
        f"{'workload':<13} {'target':<10} {'rows':>6} {'MB/s':>10} {'rows/s':>12} "
        f"{'leaked values':>14}  {'native is':>10}"
    )
    lines = [head, "-" * len(head)]
    for w in dict.fromkeys(r.workload for r in rows):
        native = next((r for r in rows if r.workload == w and r.target == "native"), None)
        for r in (r for r in rows if r.workload == w):
            leaked = "-" if r.values_leaked is None else str(r.values_leaked)
            speedup = ""
            if native is not None and r is not native and r.mb_s > 0:
                speedup = f"{native.mb_s / r.mb_s:,.0f}x"
            lines.append(
                f"{w:<13} {r.target:<10} {r.rows:>6} {r.mb_s:>10.3f} {r.rows_s:>12,.0f} "
                f"{leaked:>14}  {speedup:>10}"
            )
        lines.append("")
    return "\n".join(lines)


# --- end to end --------------------------------------------------------------------------------


def mask_workloads() -> list[Any]:
    large = str(WORKLOADS_DIR / "large.pgbench")
    return [
        Workload("large-c1", ("-f", large, "-M", "prepared"), 1, 1),
        Workload("large-c8", ("-f", large, "-M", "prepared"), 8, 2),
    ]


def policy_variant(src: Path, dest: Path, mode: str) -> Path:
    """The bench policy for a target's ``mode``: ``off`` drops the ``masking:`` section,
    ``columns`` keeps only its operator column rules (no ``scan`` rules, no scanning of
    unknown columns); ``on`` is the file itself."""
    if mode == "on":
        return src
    doc = yaml.safe_load(src.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("masking"), dict):
        raise BenchError(f"{src}: expected a policy with a masking section")
    if mode == "off":
        doc.pop("masking")
        what = "without its masking section"
    elif mode == "columns":
        m = doc["masking"]
        m["columns"] = [c for c in m.get("columns", []) if not c.get("scan")]
        m["scan_unknown"] = False
        m["unknown_lineage"] = "redact"
        what = "with column rules only (no content scanning)"
    else:
        raise BenchError(f"unknown masking mode {mode!r}")
    dest.write_text(f"# {src.name} {what} (written by the mask bench)\n")
    with dest.open("a") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return dest


class VeilgateMaskTarget(policy_targets.VeilgatePolicyTarget):
    """The gateway with the bench policy in one of :data:`TARGET_MODES`.  The hash key reaches
    the gateway through its environment only."""

    def __init__(self, env: Any, name: str, *, mode: str, key: str, command: str | None) -> None:
        policy = policy_variant(MASK_POLICY, env.workdir / f"mask_policy_{mode}.yaml", mode)
        self.mode = mode
        self._key = key
        super().__init__(env, name, policy_file=policy, command=command)

    def popen_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = super().popen_kwargs()
        kw["env"][MASK_KEY_ENV] = self._key
        return kw


def parse_masked_metrics(text: str) -> dict[str, float]:
    """``{entity: count}`` from a Prometheus exposition's ``veilgate_masked_values_total``."""
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^veilgate_masked_values_total\{[^}]*entity="([^"]+)"[^}]*\} ([0-9.e+]+)$', text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def masked_values(target: Any) -> dict[str, float] | None:
    """The gateway's masked-value counters by entity (None: the admin endpoint did not answer)."""
    url = f"http://127.0.0.1:{target.admin_port()}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_masked_metrics(resp.read().decode())
    except OSError:
        return None


def make_mask_target(name: str, env: Any, args: argparse.Namespace, key: str) -> Any:
    if name not in MASK_TARGETS:
        raise BenchError(f"unknown target {name!r} (choose from {', '.join(MASK_TARGETS)})")
    return VeilgateMaskTarget(
        env, name, mode=TARGET_MODES[name], key=key, command=args.veilgate_cmd
    )


SMOKE_SQL = (
    "SELECT id, card_number, email, iban, notes FROM bench_customers WHERE id IN (1, 4) ORDER BY id"
)
"""Row 1 (a card, an e-mail, an IBAN) and row 4 (its notes hold an e-mail address)."""


def psql_rows(env: Any, ep: Any, sql: str) -> list[list[str]]:
    proc = subprocess.run(
        [str(env.bindir / "psql"), "-X", "-A", "-t", "-F", "\t", *ep.args(), "-d", ep.dbname],
        input=sql,
        env=ep.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"psql {sql!r} failed: {proc.stderr.strip()}")
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def masking_problems(
    raw: Sequence[Sequence[str]], seen: Sequence[Sequence[str]], mode: str
) -> list[str]:
    """What is wrong with ``seen`` (rows of :data:`SMOKE_SQL` through a gateway) against ``raw``
    (the same rows straight from PostgreSQL) for a target in ``mode``.  ``on``: the card keeps
    only its last 4 digits, e-mail and IBAN differ from the raw values, the e-mail address in row
    4's notes is gone.  ``columns``: the same column rules, notes untouched.  ``off``: every value
    is the raw one.  Messages never quote the values."""
    if len(raw) != 2 or len(seen) != 2 or any(len(r) != 5 for r in (*raw, *seen)):
        return [f"expected 2 rows x 5 columns, got {len(seen)} rows"]
    if mode == "off":
        same = [list(r) for r in raw] == [list(r) for r in seen]
        return [] if same else ["values differ from PostgreSQL's with masking off"]
    problems = []
    (_, card, email, iban, _), (_, _, _, _, notes) = raw
    (sid, scard, semail, siban, _), (_, _, _, _, snotes) = seen
    if sid != raw[0][0]:
        problems.append("the id column (kept) was changed")
    digits = re.sub(r"\D", "", scard)
    if scard == card or digits == re.sub(r"\D", "", card) or not scard.endswith(card[-4:]):
        problems.append("card_number is not partially masked (keep_last 4)")
    if semail == email or email.split("@")[0] in semail:
        problems.append("email is not masked")
    if siban == iban or iban.replace(" ", "") in siban.replace(" ", ""):
        problems.append("iban is not masked")
    found = re.search(r"\S+@\S+\.\w+", notes)
    if found is None:
        problems.append("row 4's notes hold no e-mail address (bench data changed?)")
    elif mode == "on" and found.group() in snotes:
        problems.append("the e-mail address in notes was not found by content scanning")
    elif mode == "columns" and snotes != notes:
        problems.append("notes changed although content scanning is off")
    return problems


def masking_check(env: Any, target: Any) -> None:
    """Masking really on through ``veilgate``, really off through ``veilgate-nomask`` (and
    column rules only through ``veilgate-columns``)."""
    raw = psql_rows(env, harness.DirectTarget(env).endpoint(), SMOKE_SQL)
    seen = psql_rows(env, target.endpoint(), SMOKE_SQL)
    problems = masking_problems(raw, seen, target.mode)
    if problems:
        raise BenchError(
            f"{target.name}: masking {target.mode} check failed: "
            f"{'; '.join(problems)}\n--- {target.name} log ---\n{target.log_tail()}"
        )
    say(f"  {target.name}: masking {target.mode} as expected (smoke rows)")


def check_policy_loads(path: Path = MASK_POLICY) -> None:
    """The bench policy must load cleanly, allow the workload's SELECT, and have a masking
    section (else the bench would measure denials or nothing)."""
    from veilgate.identity.base import Principal
    from veilgate.policy.engine import PolicyEngine, SessionContext
    from veilgate.policy.loader import load_policy

    policy = load_policy(path)
    if getattr(policy, "masking", None) is None:
        raise BenchError(f"{path}: no masking section")
    engine = PolicyEngine(policy)
    who = Principal(provider="static", subject="bench", roles=frozenset(policy_targets.TOKEN_ROLES))
    sql = (WORKLOADS_DIR / "large.pgbench").read_text()
    sql = sql[sql.index("SELECT") :].replace(":start", "1")
    for stmt in (sql, SMOKE_SQL, *policy_targets.PGBENCH_STATEMENTS):
        d = engine.decide(who, stmt, session=SessionContext(session_id="bench-check"))
        if d.action != "allow":
            raise BenchError(f"{path}: {stmt!r} is not allowed ({d.action}, rule {d.rule_id})")


def mask_table(samples: Sequence[Any], targets: Sequence[str]) -> str:
    """Medians over rounds, then each masking target against ``veilgate-nomask``: TPS, p50 and
    p99 ratios, CPU ratio and the extra gateway CPU per transaction; the worst TPS ratio of
    ``veilgate`` (the whole policy) against the bar."""
    lines, worst = harness.on_off_table(
        samples,
        targets,
        BASELINE,
        workload_width=12,
        label=lambda t: "on/off" if t == "veilgate" else f"{t.removeprefix('veilgate-')}/off",
    )
    for t, tr in worst.items():
        if t == "veilgate":
            verdict = "meets" if tr >= TPS_BAR else "BELOW"
            lines.append(
                f"masking on/off: worst TPS ratio {tr:.3f}; bar >= {TPS_BAR:.2f}x -> {verdict}"
            )
        else:
            lines.append(f"{t} / {BASELINE}: worst TPS ratio {tr:.3f} (diagnostic, no bar)")
    return "\n".join(lines)


def run_e2e(
    args: argparse.Namespace, output: Path, engine_rows: list[EngineRow], meta: dict[str, Any]
) -> list[Any]:
    targets_wanted = parse_mask_targets(args.targets)
    workloads = harness.select_workloads(mask_workloads(), args.workloads)
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 20.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    scale = args.scale if args.scale is not None else (1 if args.quick else 10)
    check_policy_loads()
    est = args.rounds * len(workloads) * len(targets_wanted) * (duration + 0.5)
    say(
        f"mask e2e: {len(workloads)} workloads x {len(targets_wanted)} targets x {args.rounds} "
        f"rounds, {duration:g} s each (~{est / 60:.1f} min), TLS everywhere, policy "
        f"{MASK_POLICY.relative_to(REPO)}, {os.cpu_count()} CPUs"
    )
    key = secrets.token_urlsafe(32)
    samples: list[Any] = []
    with harness.bench_env(scale=scale, keep=args.keep) as env:
        say(harness.versions(env, ["veilgate"]))
        with harness.started_targets(
            env,
            targets_wanted,
            lambda n: make_mask_target(n, env, args, key),
            check=masking_check,
        ) as targets:
            samples = harness.run_matrix(
                env,
                targets,
                workloads,
                rounds=args.rounds,
                duration_s=duration,
                warmup_s=warmup,
                on_sample=lambda done: harness.write_results(output, [*engine_rows, *done], meta),
            )
            for target in targets:
                counts = masked_values(target)
                shown = (
                    "(admin endpoint unavailable)"
                    if counts is None
                    else ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items())) or "none"
                )
                say(f"{target.name}: masked values (gateway metrics, incl. checks): {shown}")
    return samples


def parse_mask_targets(spec: str) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    bad = [t for t in names if t not in MASK_TARGETS]
    if bad or not names:
        raise BenchError(
            f"--targets: unknown {', '.join(bad) or '(empty)'}; "
            f"choose from {', '.join(MASK_TARGETS)}"
        )
    return names


def parse_engine_targets(spec: str) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    bad = [t for t in names if t not in ENGINE_TARGETS]
    if bad or not names:
        raise BenchError(
            f"--engines: unknown {', '.join(bad) or '(empty)'}; "
            f"choose from {', '.join(ENGINE_TARGETS)}"
        )
    return names


def cmd_mask(args: argparse.Namespace) -> int:
    output = harness.results_path(args, "mask")
    meta = harness.run_meta(None, quick=args.quick)
    engine_rows: list[EngineRow] = []
    samples: list[Any] = []
    if args.part in ("engine", "all"):
        engine_rows = run_engine(parse_engine_targets(args.engines), args.quick)
        harness.write_results(output, engine_rows, meta)
    if args.part == "cpu":
        import mask_cpu  # bench/mask_cpu.py

        check_policy_loads()
        return mask_cpu.run_cpu(
            args, make_mask_target, masking_check, parse_mask_targets(args.targets)
        )
    if args.part in ("e2e", "all"):
        samples = run_e2e(args, output, engine_rows, meta)
    harness.write_results(output, [*engine_rows, *samples], meta)
    say("")
    if engine_rows:
        say(
            "mask engine: one core, medians of the timed passes; MB/s = UTF-8 input bytes "
            "(10^6) per second; leaked values = labelled dense values still verbatim in the "
            "output; presidio = pattern recognizers only, on a few hundred rows"
        )
        say(engine_table(engine_rows))
    if samples:
        say(
            f"mask e2e: medians of {args.rounds} round(s); proxy CPU = gateway process "
            "user+sys CPU / transactions; on/off = veilgate / veilgate-nomask"
        )
        say(mask_table(samples, parse_mask_targets(args.targets)))
    say(f"results: {output}")
    return 0


def register_mask(sub: Any) -> None:
    p = sub.add_parser(
        "mask",
        help="masking cost: engine MB/s (native vs Python re vs Presidio) and large results "
        "through veilgate with masking on vs off",
        description="Engine: Masker.mask_batch on the seeded PII-dense and clean sets "
        "(tests/masking_data.py), one core, against a Python re baseline and Presidio's "
        "pattern recognizers.  End to end: large-c1 / large-c8 through veilgate with "
        "workloads/mask_policy.yaml (target veilgate) vs the same policy without its masking "
        "section (target veilgate-nomask).",
    )
    harness.add_common_args(p, default_targets=DEFAULT_TARGETS, known_targets=MASK_TARGETS)
    p.add_argument(
        "--part",
        choices=("engine", "e2e", "all", "cpu"),
        default="all",
        help="engine throughput, end-to-end pgbench, or both (default); cpu: gateway CPU and "
        "instructions per transaction over a fixed count of large transactions (no clock: "
        "usable on a loaded machine; not part of all)",
    )
    p.add_argument(
        "--transactions",
        type=int,
        default=300,
        help="--part cpu: large transactions per target (300)",
    )
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="--part cpu: count instructions with callgrind (gateway under valgrind; use "
        "--transactions 50-100): deterministic where perf has no hardware counters",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="--part cpu: also record a perf profile per target and print its top symbols",
    )
    p.add_argument(
        "--engines",
        default=",".join(ENGINE_TARGETS),
        help=f"comma-separated engine targets, from {','.join(ENGINE_TARGETS)} (default: all)",
    )
    p.set_defaults(func=cmd_mask)
