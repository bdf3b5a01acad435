"""Seeded, labelled text for measuring the masking detectors (accuracy tests and the mask bench).

Two sets, both deterministic for a given seed and row count:

* :func:`dense_rows`: rows of about 200 characters holding about five PII values each (cards of
  several schemes with and without separators, SSNs, e-mails, IBANs of several countries compact
  and grouped, IPv4 / IPv6, NANP and E.164 phones, now and then a secret) inside realistic filler
  text.  Every value's span is known by construction: the row is assembled piece by piece.
* :func:`clean_rows`: realistic operational rows (orders, shipments, logs, builds) with adversarial
  negatives (order ids, timestamps, UUIDs, 16-digit numbers that fail Luhn, version strings, SKUs,
  prices, zip codes, MAC addresses, epoch milliseconds) and no PII at all.

Values are built to be valid the way a validating detector checks them (Luhn and issuer ranges,
SSN area / group / serial rules, IBAN mod-97 and country length, NANP area and exchange codes),
so a miss is the detector's, not the data's.  Faker supplies names, e-mails, IBANs and filler;
numbers whose validity matters are built here from the seeded ``random.Random``.

Spans are Python string (character) offsets, as ``Masker.scan`` reports them.
"""

from __future__ import annotations

import ipaddress
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from faker import Faker

DEFAULT_SEED = 20261129
DETECTED_ENTITIES = ("CREDIT_CARD", "US_SSN", "EMAIL", "IBAN", "IP_ADDRESS", "PHONE")
"""Entities every dense row draws from (``SECRET`` is added to some rows on top)."""
ALL_ENTITIES = (*DETECTED_ENTITIES, "SECRET")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity: str


@dataclass(frozen=True)
class LabelledRow:
    text: str
    spans: tuple[Span, ...]

    def value(self, span: Span) -> str:
        return self.text[span.start : span.end]


# --- validity helpers (also used by the tests to check the generator itself) -------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_check_digit(body: str) -> str:
    for d in "0123456789":
        if luhn_ok(body + d):
            return d
    raise AssertionError("unreachable: one of ten check digits always fits")


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


IBAN_BBAN = {
    "DE": "n18", "FR": "n10a11n2", "GB": "A4n14", "ES": "n20", "IT": "A1n10a12", "NL": "A4n10",
    "PL": "n24", "PT": "n21", "AT": "n16", "BE": "n12", "CH": "n5a12", "NO": "n11", "IE": "A4n14",
}  # fmt: skip
"""Countries the generator draws IBANs from and their BBAN shapes (SWIFT registry notation:
n digits, A upper-case letters, a upper-case letters or digits); IBAN length = 4 + BBAN length."""


def _bban(r: random.Random, shape: str) -> str:
    alphabet = {"n": string.digits, "A": string.ascii_uppercase}
    out = []
    for kind, count in re.findall(r"([nAa])(\d+)", shape):
        chars = alphabet.get(kind, string.ascii_uppercase + string.digits)
        out.append("".join(r.choice(chars) for _ in range(int(count))))
    return "".join(out)


def iban_compact(r: random.Random) -> str:
    country = r.choice(sorted(IBAN_BBAN))
    bban = _bban(r, IBAN_BBAN[country])
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    return f"{country}{check:02d}{bban}"


# --- cards -------------------------------------------------------------------------------------

# (scheme, prefix chooser, lengths, grouping of the printed form)
_CardScheme = tuple[str, Callable[[random.Random], str], tuple[int, ...], tuple[int, ...] | None]

CARD_SCHEMES: tuple[_CardScheme, ...] = (
    ("visa", lambda r: "4", (16, 16, 16, 13, 19), None),
    ("mastercard-5", lambda r: str(r.randint(51, 55)), (16,), None),
    ("mastercard-2", lambda r: str(r.randint(2221, 2720)), (16,), None),
    ("amex", lambda r: r.choice(("34", "37")), (15,), (4, 6, 5)),
    ("discover", lambda r: r.choice(("6011", "65", "644", "649")), (16,), None),
    ("diners", lambda r: r.choice(("36", "300", "305")), (14,), (4, 6, 4)),
    ("jcb", lambda r: str(r.randint(3528, 3589)), (16,), None),
)
"""Issuer ranges every card detector must know (Mastercard 2-series: 2221-2720)."""


def card_number(r: random.Random) -> tuple[str, str]:
    """(scheme, Luhn-valid digits)."""
    scheme, prefix_of, lengths, _ = r.choice(CARD_SCHEMES)
    prefix = prefix_of(r)
    length = r.choice(lengths)
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return scheme, body + luhn_check_digit(body)


def format_card(r: random.Random, scheme: str, digits: str) -> str:
    """Compact, or grouped with spaces or dashes the way the scheme prints them."""
    style = r.random()
    if style < 0.4:
        return digits
    sep = " " if style < 0.75 else "-"
    groups = next(g for s, _, _, g in CARD_SCHEMES if s == scheme)
    if groups is None or sum(groups) != len(digits):
        groups = tuple(4 for _ in range(len(digits) // 4)) + (
            (len(digits) % 4,) if len(digits) % 4 else ()
        )
    out, i = [], 0
    for g in groups:
        out.append(digits[i : i + g])
        i += g
    return sep.join(out)


# --- the other entities ------------------------------------------------------------------------


def ssn(r: random.Random) -> str:
    """Area 001-899 except 666, group 01-99, serial 0001-9999; dashes or spaces."""
    area = r.choice([a for a in range(1, 900) if a != 666])
    sep = "-" if r.random() < 0.8 else " "
    return f"{area:03d}{sep}{r.randint(1, 99):02d}{sep}{r.randint(1, 9999):04d}"


def email(r: random.Random, fake: Faker) -> str:
    style = r.random()
    if style < 0.35:
        return str(fake.email())
    if style < 0.55:
        return str(fake.free_email())
    if style < 0.75:
        return str(fake.company_email())
    user = fake.user_name()
    tag = r.choice(("", "+billing", "+2026", ".ops", "_01"))
    domain = r.choice(
        ("mail.example.co.uk", "corp.example-group.de", "eu.example.io", "example.fr")
    )
    return f"{user}{tag}@{domain}"


def iban(r: random.Random) -> str:
    """Valid mod-97 check digits; compact, or printed in groups of four."""
    value = iban_compact(r)
    if r.random() < 0.5:
        return value
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def ip_address(r: random.Random, fake: Faker) -> str:
    style = r.random()
    if style < 0.45:
        return str(fake.ipv4_public())
    if style < 0.65:
        return str(fake.ipv4_private())
    v6 = ipaddress.IPv6Address(fake.ipv6())
    if style < 0.8:
        return v6.exploded
    if style < 0.9:
        return str(v6)  # compressed form (it rarely has a "::" for random addresses)
    # a documentation-style address with a real "::" gap
    return str(
        ipaddress.IPv6Address(f"2001:db8:{r.randint(1, 0xFFFF):x}::{r.randint(1, 0xFFFF):x}")
    )


def phone(r: random.Random) -> str:
    """NANP (area and exchange start with 2-9) in the common US notations, or international."""
    area = f"{r.randint(2, 9)}{r.randint(0, 9)}{r.randint(0, 9)}"
    exch = f"{r.randint(2, 9)}{r.randint(0, 9)}{r.randint(0, 9)}"
    line = f"{r.randint(0, 9999):04d}"
    style = r.random()
    if style < 0.2:
        return f"({area}) {exch}-{line}"
    if style < 0.4:
        return f"{area}-{exch}-{line}"
    if style < 0.5:
        return f"{area}.{exch}.{line}"
    if style < 0.6:
        return f"+1 {area} {exch} {line}"
    if style < 0.7:
        return f"+1-{area}-{exch}-{line}"
    # International: a country code and a national number of a plausible length, written
    # compact (E.164) or in the country's usual groups ("+44 20 7946 0958")
    cc, groups = r.choice(_INTL_PHONE)
    national = str(r.randint(2, 9)) + "".join(
        r.choice(string.digits) for _ in range(sum(groups) - 1)
    )
    if r.random() < 0.2:
        cc, groups, national = "1", (3, 3, 4), area + exch + line
    if r.random() < 0.6:
        return f"+{cc}{national}"
    out, i = [], 0
    for g in groups:
        out.append(national[i : i + g])
        i += g
    return f"+{cc} " + " ".join(out)


_INTL_PHONE = (
    ("44", (2, 4, 4)),
    ("49", (3, 8)),
    ("33", (1, 2, 2, 2, 2)),
    ("34", (3, 3, 3)),
    ("61", (1, 4, 4)),
)
"""Country code and the digit groups of a national number as it is usually printed."""


_B64URL = string.ascii_letters + string.digits + "-_"


def secret(r: random.Random) -> tuple[str, str]:
    """(context, value): an AWS access key id, a JWT or a GitHub token."""
    kind = r.random()
    if kind < 0.4:
        key = "AKIA" + "".join(r.choice(string.ascii_uppercase + "234567") for _ in range(16))
        return r.choice(("aws_access_key_id=", "AWS key ", "access key: ")), key
    if kind < 0.75:

        def seg(n: int) -> str:
            return "".join(r.choice(_B64URL) for _ in range(n))

        jwt = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{seg(r.randint(40, 60))}.{seg(43)}"
        return r.choice(("Authorization: Bearer ", "token ", "jwt=")), jwt
    token = "ghp_" + "".join(r.choice(string.ascii_letters + string.digits) for _ in range(36))
    return r.choice(("GITHUB_TOKEN=", "pat ", "token: ")), token


# --- rows --------------------------------------------------------------------------------------

_CONTEXT: dict[str, tuple[str, ...]] = {
    "CREDIT_CARD": ("card ", "paid with ", "PAN ", "cc: ", "charged ", "card on file ", ""),
    "US_SSN": ("SSN ", "ssn: ", "social security no. ", "tax id ", ""),
    "EMAIL": ("email ", "contact ", "reply to ", "<", "cc ", ""),
    "IBAN": ("IBAN ", "refund to ", "account ", "bank: ", ""),
    "IP_ADDRESS": ("from ", "login from ", "client ip ", "src=", "[", ""),
    "PHONE": ("call ", "tel. ", "mobile ", "phone: ", "cell ", ""),
}
_CLOSE = {"<": ">", "[": "]"}
_KEYS: dict[str, tuple[str, ...]] = {
    "CREDIT_CARD": ("card_number", "pan"),
    "US_SSN": ("ssn", "tax_id"),
    "EMAIL": ("email", "user_email"),
    "IBAN": ("iban", "payout_account"),
    "IP_ADDRESS": ("client_ip", "remote_addr"),
    "PHONE": ("phone", "msisdn"),
}
"""Field names for values written as log fields or JSON members (``"email": "..."``)."""


def _wrapping(r: random.Random, entity: str, value: str) -> tuple[str, str]:
    """(before, after) a value: a context word, a log field or a JSON member; IP addresses now
    and then with a port (``10.1.2.3:5432``, ``[2001:db8::1]:443``)."""
    style = r.random()
    if style < 0.8:
        before = r.choice(_CONTEXT[entity])
        after = _CLOSE.get(before, "")
    else:
        key = r.choice(_KEYS[entity])
        before, after = r.choice(((f'"{key}": "', '"'), (f"{key}=", ""), (f"{key}='", "'")))
    if entity == "IP_ADDRESS" and r.random() < 0.25 and not before.endswith("["):
        port = r.choice(("5432", "443", "8080", "22"))
        if ":" in value:
            before, after = before + "[", f"]:{port}{after}"
        else:
            after = f":{port}{after}"
    return before, after


_JOINERS = (", ", "; ", " and ", ". ", " - ", " / ", " ")


def _faker(seed: int) -> Faker:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    return fake


def _filler(r: random.Random, fake: Faker) -> str:
    if r.random() < 0.5:
        return str(fake.sentence(nb_words=r.randint(3, 7))).rstrip(".").lower()
    who = fake.name() if r.random() < 0.6 else fake.first_name()
    return r.choice(
        (
            f"{who} asked to update the account",
            f"note from {who}",
            "customer called about the last invoice",
            "ticket escalated to tier 2",
            f"verified by {who}",
            "duplicate charge disputed",
            "address change requested",
            f"{who} confirmed the details",
        )
    )


def _dense_row(r: random.Random, fake: Faker) -> LabelledRow:
    entities = r.sample(DETECTED_ENTITIES, 5)
    if r.random() < 0.08:
        entities[r.randrange(5)] = "SECRET"
    parts: list[tuple[str, str | None]] = [(_filler(r, fake).capitalize() + ": ", None)]
    for i, entity in enumerate(entities):
        if i > 0:
            joiner = r.choice(_JOINERS)
            if r.random() < 0.35:
                joiner = f"{joiner}{_filler(r, fake)}{r.choice((', ', ' '))}"
            parts.append((joiner, None))
        if entity == "SECRET":
            context, value = secret(r)
            close = ""
        else:
            if entity == "CREDIT_CARD":
                scheme, digits = card_number(r)
                value = format_card(r, scheme, digits)
            elif entity == "US_SSN":
                value = ssn(r)
            elif entity == "EMAIL":
                value = email(r, fake)
            elif entity == "IBAN":
                value = iban(r)
            elif entity == "IP_ADDRESS":
                value = ip_address(r, fake)
            else:
                value = phone(r)
            context, close = _wrapping(r, entity, value)
        if not context and parts[-1][0] == " ":
            # Two bare values one space apart ("4111... 123 45 6789") are ambiguous even to a
            # reader: real text puts a comma or a word between them.
            parts[-1] = (", ", None)
        parts.append((context, None))
        parts.append((value, entity))
        parts.append((close, None))
    parts.append((r.choice((".", "", " (verified).", "; " + _filler(r, fake) + ".")), None))
    text, spans = "", []
    for piece, label in parts:
        if label is not None:
            spans.append(Span(len(text), len(text) + len(piece), label))
        text += piece
    return LabelledRow(text, tuple(spans))


@lru_cache(maxsize=8)
def dense_rows(n: int = 10_000, seed: int = DEFAULT_SEED) -> tuple[LabelledRow, ...]:
    """``n`` PII-dense labelled rows (about 5 values in about 200 characters each)."""
    r = random.Random(seed)
    fake = _faker(seed)
    return tuple(_dense_row(r, fake) for _ in range(n))


# --- clean rows --------------------------------------------------------------------------------


def _non_luhn16(r: random.Random) -> str:
    body = str(r.randint(3, 6)) + "".join(r.choice(string.digits) for _ in range(14))
    good = luhn_check_digit(body)
    return body + r.choice([d for d in string.digits if d != good])


def _clean_row(r: random.Random, fake: Faker) -> str:
    def uuid() -> str:
        return "".join(r.choice("0123456789abcdef") for _ in range(32))

    u = uuid()
    u = f"{u[:8]}-{u[8:12]}-4{u[13:16]}-{r.choice('89ab')}{u[17:20]}-{u[20:]}"
    ts = f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
    clock = f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
    epoch_ms = str(r.randint(1_700_000_000_000, 1_799_999_999_999))
    order = f"ORD-{r.randint(2019, 2026)}-{r.randint(0, 999999):06d}"
    sku = r.choice(
        (
            f"SKU-{r.randint(1000, 9999)}-{r.choice(('XS', 'M', 'XL'))}-{r.randint(1, 99):02d}",
            f"{r.randint(1000, 9999)}-{r.randint(200, 999)}-{r.randint(0, 9999):04d}",  # phone-like
            # NANP-shaped but area code 1xx, which NANP never assigns
            f"PN {r.randint(100, 199)}.{r.randint(100, 999)}.{r.randint(1000, 9999)}",
        )
    )
    price = f"${r.randint(1, 9999):,}.{r.randint(0, 99):02d}"
    zip_code = (
        f"{r.randint(10000, 99999)}"
        if r.random() < 0.6
        else f"{r.randint(10000, 99999)}-{r.randint(0, 9999):04d}"
    )
    version = r.choice(
        (
            f"v{r.randint(0, 9)}.{r.randint(0, 40)}.{r.randint(0, 20)}",
            f"{r.randint(1, 3)}.{r.randint(0, 30)}.{r.randint(0, 9)}-rc.{r.randint(1, 5)}",
            f"build {r.randint(100, 140)}.0.{r.randint(1000, 9999)}.{r.randint(10, 300)}",
        )
    )
    ref16 = _non_luhn16(r)
    if r.random() < 0.3:
        ref16 = " ".join(ref16[i : i + 4] for i in range(0, 16, 4))
    mac = ":".join(f"{r.randint(0, 255):02x}" for _ in range(6))
    qty = r.randint(1, 40)
    commit = "".join(r.choice("0123456789abcdef") for _ in range(r.choice((7, 12))))
    words = str(fake.sentence(nb_words=r.randint(3, 6))).rstrip(".").lower()
    status = r.choice(("ok", "retried once", "queued", "partial", "backordered", "delivered"))
    templates = (
        f"Order {order} shipped {ts} {clock} UTC, {qty} x {sku} at {price}, warehouse zip "
        f"{zip_code}, status {status}; request {u}; {words}.",
        f"[{ts}T{clock}Z] worker {version} handled job {u} in {r.randint(2, 900)} ms "
        f"(batch ref {ref16}, ts {epoch_ms}), status {status}, queue depth {qty}; {words}.",
        f"Invoice {order}: {qty} units of {sku}, subtotal {price}, tax {r.randint(0, 25)}%, "
        f"ship from zip {zip_code} on {ts}, status {status}, carrier ref {commit.upper()}; "
        f"{words}.",
        f"Deploy of commit {commit} ({version}) at {clock} on {ts} finished {status}; device "
        f"{mac}; correlation id {u}; {r.randint(2, 64)} pods restarted.",
        f"Payment batch {ref16} settled {ts}: {r.randint(2, 300)} items, total {price}, "
        f"reconciled by job {order} at {clock}, status {status}; {words}.",
        f"Sensor {mac} reported {r.uniform(-20, 45):.2f} C at {epoch_ms} ms, firmware "
        f"{version}, ticket {order}, status {status}, next check {ts} {clock}; {words}.",
    )
    return r.choice(templates)


@lru_cache(maxsize=8)
def clean_rows(n: int = 10_000, seed: int = DEFAULT_SEED) -> tuple[str, ...]:
    """``n`` realistic rows with adversarial look-alikes and no PII."""
    r = random.Random(seed ^ 0x5EED)
    fake = _faker(seed ^ 0x5EED)
    return tuple(_clean_row(r, fake) for _ in range(n))


def texts(rows: Sequence[LabelledRow]) -> list[str]:
    return [row.text for row in rows]


# --- scoring -----------------------------------------------------------------------------------

Detection = tuple[int, int, str]
"""(start, end, entity) in character offsets, as ``Masker.scan`` returns them."""


@dataclass
class EntityScore:
    labelled: int = 0
    found: int = 0
    """Labelled values whose every letter and digit is covered by detections of the same entity."""
    detected: int = 0
    true_positive: int = 0
    """Detections overlapping a labelled value of the same entity."""
    labelled_chars: int = 0
    leaked_chars: int = 0
    """Letters and digits of labelled values no detection (of any entity) covers."""
    missed: list[str] | None = None
    false: list[str] | None = None

    @property
    def recall(self) -> float:
        return self.found / self.labelled if self.labelled else 1.0

    @property
    def precision(self) -> float:
        return self.true_positive / self.detected if self.detected else 1.0


@dataclass
class Score:
    entities: dict[str, EntityScore]
    clean_rows: int
    clean_rows_flagged: int
    clean_examples: list[str]

    @property
    def clean_fp_rate(self) -> float:
        return self.clean_rows_flagged / self.clean_rows if self.clean_rows else 0.0

    def table(self) -> str:
        head = (
            f"{'entity':<12} {'labelled':>8} {'recall':>7} {'detected':>8} {'precision':>9} "
            f"{'leaked chars':>13}"
        )
        lines = [head, "-" * len(head)]
        for name, e in sorted(self.entities.items()):
            lines.append(
                f"{name:<12} {e.labelled:>8} {e.recall:>7.4f} {e.detected:>8} "
                f"{e.precision:>9.4f} {e.leaked_chars:>6}/{e.labelled_chars:<6}"
            )
        lines.append(
            f"clean rows flagged: {self.clean_rows_flagged}/{self.clean_rows} "
            f"({self.clean_fp_rate:.3%})"
        )
        return "\n".join(lines)


def score(
    dense: Sequence[LabelledRow],
    dense_found: Sequence[Sequence[Detection]],
    clean: Sequence[str],
    clean_found: Sequence[Sequence[Detection]],
    *,
    examples: int = 5,
) -> Score:
    """Per-entity recall, precision and leaked characters of a detector's results."""
    ents: dict[str, EntityScore] = {e: EntityScore(missed=[], false=[]) for e in ALL_ENTITIES}

    def entity(name: str) -> EntityScore:
        return ents.setdefault(name, EntityScore(missed=[], false=[]))

    for row, found in zip(dense, dense_found, strict=True):
        for span in row.spans:
            e = entity(span.entity)
            e.labelled += 1
            wanted = [i for i in range(span.start, span.end) if row.text[i].isalnum()]
            e.labelled_chars += len(wanted)
            same = [(s, t) for s, t, k in found if k == span.entity]
            if all(any(s <= i < t for s, t in same) for i in wanted):
                e.found += 1
            elif e.missed is not None and len(e.missed) < examples:
                e.missed.append(f"{row.value(span)!r} in {row.text!r}")
            e.leaked_chars += sum(1 for i in wanted if not any(s <= i < t for s, t, _ in found))
        for s, t, k in found:
            e = entity(k)
            e.detected += 1
            if any(sp.entity == k and s < sp.end and sp.start < t for sp in row.spans):
                e.true_positive += 1
            elif e.false is not None and len(e.false) < examples:
                e.false.append(f"{row.text[s:t]!r} in {row.text!r}")
    flagged, clean_examples = 0, list[str]()
    for text, found in zip(clean, clean_found, strict=True):
        if found:
            flagged += 1
            if len(clean_examples) < examples * 2:
                clean_examples.append(
                    ", ".join(f"{k} {text[s:t]!r}" for s, t, k in found) + f" in {text!r}"
                )
        for s, t, k in found:
            e = entity(k)
            e.detected += 1
            if e.false is not None and len(e.false) < examples:
                e.false.append(f"{text[s:t]!r} in {text!r}")
    return Score(ents, len(clean), flagged, clean_examples)
