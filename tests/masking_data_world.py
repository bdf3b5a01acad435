# ruff: noqa: RUF001  (full-width and typographic characters are the point of this data)
"""The second accuracy set: PII as eight locales write it, inside realistic carriers.

Written independently of :mod:`masking_data` (the set the detectors were first tuned on) and before
the detectors were changed for issue 12, from how each locale really writes these values:

* **Locales**: ja_JP, zh_CN, de_DE, fr_FR, pt_BR, en_IN, en_GB, en_US.  Faker (seeded, one
  instance per locale) gives names, user names, domains, sentences in the locale's language and
  card numbers; numbers whose national shape matters (phones, IBANs) are built here from each
  country's numbering plan and the notations people use (national with the trunk ``0``, ``+CC``,
  ``00CC``, ``(0)``, area codes in parentheses, extensions, dots / dashes / spaces / slashes,
  full-width digits in Japanese and Chinese text).
* **Entities per locale** (only where the type exists there): PHONE, EMAIL, CREDIT_CARD,
  IP_ADDRESS, SECRET everywhere; IBAN in de_DE, fr_FR, en_GB, pt_BR; US_SSN in en_US.
* **Carriers**: log lines, chat messages in the locale's language (no spaces around values in
  CJK text, full-width punctuation, emoji), CSV records (``;`` where the locale's spreadsheets
  use it), nested JSON documents (``json.dumps`` with ``ensure_ascii=False``) and free-text notes.
* **Clean rows** (:func:`clean_rows`): the same carriers with look-alikes and no PII: order ids,
  timestamps, versions, UUIDs, hashes, prices in local notation, postal codes, tracking numbers,
  coordinates, and mentions of key formats (``-----BEGIN PRIVATE KEY-----`` in an error message).

Spans are Python string (character) offsets, as ``Masker.scan`` reports them; the scoring helpers
of :mod:`masking_data` are shared (same recall / precision / leaked-characters definitions).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from faker import Faker

from masking_data import LabelledRow, Score, Span, iban_ok, luhn_check_digit, score

DEFAULT_SEED = 20260302
LOCALES = ("ja_JP", "zh_CN", "de_DE", "fr_FR", "pt_BR", "en_IN", "en_GB", "en_US")
COMMON = ("PHONE", "EMAIL", "CREDIT_CARD", "IP_ADDRESS", "SECRET")
ENTITIES_BY_LOCALE: dict[str, tuple[str, ...]] = {
    "ja_JP": COMMON,
    "zh_CN": COMMON,
    "de_DE": (*COMMON, "IBAN"),
    "fr_FR": (*COMMON, "IBAN"),
    "pt_BR": (*COMMON, "IBAN"),
    "en_IN": COMMON,
    "en_GB": (*COMMON, "IBAN"),
    "en_US": (*COMMON, "US_SSN"),
}
"""Which entity types exist in each locale (recall is reported per locale for these)."""

FULLWIDTH = str.maketrans(
    "0123456789-+()./@: ", "０１２３４５６７８９－＋（）．／＠：　"
)  # fmt: skip
"""ASCII to full-width forms (U+FF01..U+FF5E, ideographic space)."""


@dataclass(frozen=True)
class WorldRow(LabelledRow):
    locale: str = ""
    carrier: str = ""


def _digits(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def _nz(r: random.Random) -> str:
    return str(r.randint(1, 9))


def _group(digits: str, sizes: tuple[int, ...], sep: str) -> str:
    out, i = [], 0
    for s in sizes:
        out.append(digits[i : i + s])
        i += s
    if i < len(digits):
        out.append(digits[i:])
    return sep.join(x for x in out if x)


# --- phones, per country numbering plan ------------------------------------------------------


def phone_jp(r: random.Random) -> str:
    """Japan (+81): 10-digit national numbers after the trunk 0; area codes of 1-4 digits
    (03 Tokyo, 06 Osaka, 045 Yokohama, 0466 Fujisawa), mobiles 070/080/090 + 8, free dial 0120."""
    kind = r.random()
    if kind < 0.45:
        area, rest = r.choice(("70", "80", "90")), _digits(r, 8)
        groups = (area, rest[:4], rest[4:])
    elif kind < 0.8:
        area = r.choice(("3", "6", "45", "52", "92", "466", "11", "22", "75"))
        local = 9 - len(area)
        rest = _nz(r) + _digits(r, local - 1)
        split = local - 4
        groups = (area, rest[:split], rest[split:])
    else:
        return "0120-" + _digits(r, 3) + "-" + _digits(r, 3)
    style = r.random()
    if style < 0.45:
        s = f"0{groups[0]}-{groups[1]}-{groups[2]}"
    elif style < 0.55:
        s = f"0{groups[0]}({groups[1]}){groups[2]}"
    elif style < 0.62:
        s = f"(0{groups[0]}){groups[1]}-{groups[2]}"
    elif style < 0.72:
        s = f"0{''.join(groups)}"
    elif style < 0.87:
        s = f"+81-{groups[0]}-{groups[1]}-{groups[2]}"
    else:
        s = f"+81 {groups[0]} {groups[1]} {groups[2]}"
    return s


def phone_cn(r: random.Random) -> str:
    """China (+86): 11-digit mobiles 1[3-9]x written bare or 3-4-4; landlines with a 2-3 digit
    area code after the trunk 0 (010 Beijing, 021 Shanghai, 0755 Shenzhen) and 7-8 digits."""
    if r.random() < 0.6:
        m = "1" + r.choice("3456789") + _digits(r, 9)
        style = r.random()
        if style < 0.45:
            return m
        if style < 0.65:
            return _group(m, (3, 4, 4), " ")
        if style < 0.75:
            return _group(m, (3, 4, 4), "-")
        if style < 0.9:
            return "+86 " + _group(m, (3, 4, 4), " ")
        return "+86" + m
    area = r.choice(("10", "21", "20", "755", "571", "28", "512"))
    local = _nz(r) + _digits(r, (10 - len(area)) - 1)
    style = r.random()
    if style < 0.45:
        return f"0{area}-{local}"
    if style < 0.6:
        return f"(0{area}){local}"
    if style < 0.7:
        return f"0{area} {local[:4]} {local[4:]}"
    if style < 0.85:
        return f"+86-{area}-{local}"
    return f"+86 {area} {local}"


def phone_de(r: random.Random) -> str:
    """Germany (+49): area codes of 2-5 digits after the trunk 0 (030 Berlin, 089 Munich, 0221
    Cologne, 06221 Heidelberg), national numbers of 9-10 digits after the 0, mobiles 015x-017x;
    DIN 5008 spaces, the old slash and parentheses, ``+49 (0)``, ``0049``, extensions ``-12``."""
    if r.random() < 0.35:
        area = r.choice(("151", "160", "170", "171", "176", "1575"))
        sub = _nz(r) + _digits(r, 10 - len(area) - 1 + (1 if len(area) == 3 else 0))
    else:
        # national significant numbers (area code + subscriber) of 9 or 10 digits
        area = r.choice(("30", "40", "89", "69", "221", "211", "711", "6221", "4621", "33056"))
        sub = _nz(r) + _digits(r, max(5, r.choice((9, 10)) - len(area)) - 1)
    ext = ""
    if r.random() < 0.12:
        ext = "-" + _digits(r, r.choice((1, 2, 3)))
    style = r.random()
    if style < 0.3:
        s = f"0{area} {sub}{ext}"
    elif style < 0.42:
        s = f"0{area}/{sub}{ext}"
    elif style < 0.5:
        s = f"(0{area}) {sub}{ext}"
    elif style < 0.62:
        s = f"+49 {area} {sub}{ext}"
    elif style < 0.74:
        s = f"+49 (0){area} {sub}{ext}"
    elif style < 0.8:
        s = f"+49(0){area}-{sub}{ext}"
    elif style < 0.88:
        s = f"0049 {area} {sub}{ext}"
    elif style < 0.94:
        s = f"0{area} {_group(sub, (2, 2, 2, 2), ' ')}"
    else:
        s = f"+49{area}{sub}"
    return s


def phone_fr(r: random.Random) -> str:
    """France (+33): ten digits after the trunk 0, written in pairs (``01 23 45 67 89``),
    with dots, ``+33 1 ...``, ``+33 (0)1 ...`` or ``0033``."""
    first = r.choice("1234567899")
    n = first + _digits(r, 8)
    style = r.random()
    if style < 0.4:
        return "0" + first + " " + _group(n[1:], (2, 2, 2, 2), " ")
    if style < 0.55:
        return "0" + first + "." + _group(n[1:], (2, 2, 2, 2), ".")
    if style < 0.62:
        return "0" + n
    if style < 0.8:
        return "+33 " + first + " " + _group(n[1:], (2, 2, 2, 2), " ")
    if style < 0.9:
        return "+33 (0)" + first + " " + _group(n[1:], (2, 2, 2, 2), " ")
    if style < 0.95:
        return "0033 " + first + " " + _group(n[1:], (2, 2, 2, 2), " ")
    return "+33" + n


def phone_br(r: random.Random) -> str:
    """Brazil (+55): two-digit area codes (DDD, 11-99), mobiles 9 + 8 digits, landlines 8
    digits; ``(11) 91234-5678``, ``11 91234-5678``, ``+55 11 91234-5678``, ``+55 (11) ...``."""
    ddd = str(r.choice((11, 21, 31, 41, 47, 51, 61, 71, 81, 85, 92, 98)))
    sub = "9" + _digits(r, 8) if r.random() < 0.65 else r.choice("2345") + _digits(r, 7)
    local = f"{sub[:-4]}-{sub[-4:]}"
    style = r.random()
    if style < 0.4:
        return f"({ddd}) {local}"
    if style < 0.55:
        return f"{ddd} {local}"
    if style < 0.75:
        return f"+55 {ddd} {local}"
    if style < 0.85:
        return f"+55 ({ddd}) {local}"
    if style < 0.92:
        return f"({ddd}){sub}"
    return f"+55{ddd}{sub}"


def phone_in(r: random.Random) -> str:
    """India (+91): ten-digit mobiles starting 6-9 (written 5-5), landlines with an STD code
    after the trunk 0 (022 Mumbai, 011 Delhi, 080 Bengaluru, 0484 Kochi)."""
    if r.random() < 0.65:
        m = r.choice("6789") + _digits(r, 9)
        style = r.random()
        if style < 0.35:
            return "+91 " + _group(m, (5, 5), " ")
        if style < 0.5:
            return "+91-" + m
        if style < 0.6:
            return "+91" + m
        if style < 0.75:
            return _group(m, (5, 5), " ")
        if style < 0.88:
            return "0" + m
        return "0" + _group(m, (5, 5), " ")
    std = r.choice(("22", "11", "80", "44", "484", "712"))
    local = r.choice("2345") + _digits(r, 10 - len(std) - 1)
    style = r.random()
    if style < 0.4:
        return f"0{std}-{local}"
    if style < 0.6:
        return f"0{std} {local[:4]} {local[4:]}"
    if style < 0.8:
        return f"+91 {std} {local}"
    return f"+91-{std}-{local}"


def phone_gb(r: random.Random) -> str:
    """United Kingdom (+44): ten digits after the trunk 0 with 2-5 digit area codes (020 London,
    0161 Manchester, 01632 drama range), mobiles 07xxx; ``+44 (0)``, ``(020)``."""
    kind = r.random()
    if kind < 0.35:
        area, sub = "7" + r.choice("45789") + _digits(r, 2), _digits(r, 6)
        national = (area, sub)
    elif kind < 0.6:
        area, sub = "20", r.choice("378") + _digits(r, 7)
        national = (area, sub[:4] + " " + sub[4:])
    elif kind < 0.85:
        area, sub = r.choice(("161", "121", "113", "131", "141", "117")), _digits(r, 7)
        national = (area, sub[:3] + " " + sub[3:])
    else:
        area, sub = r.choice(("1632", "1223", "1865", "1904")), _digits(r, 6)
        national = (area, sub)
    style = r.random()
    if style < 0.4:
        return f"0{national[0]} {national[1]}"
    if style < 0.5:
        return f"(0{national[0]}) {national[1]}"
    if style < 0.7:
        return f"+44 {national[0]} {national[1]}"
    if style < 0.85:
        return f"+44 (0){national[0]} {national[1]}"
    if style < 0.92:
        return f"+44{national[0]}{national[1].replace(' ', '')}"
    return f"0044 {national[0]} {national[1]}"


def phone_us(r: random.Random) -> str:
    """NANP (+1): area and exchange codes start 2-9; the common US notations, ``1-`` and ``+1``
    prefixes, extensions (``x123``, ``ext. 45``)."""
    a = str(r.randint(2, 9)) + _digits(r, 2)
    e = str(r.randint(2, 9)) + _digits(r, 2)
    n = _digits(r, 4)
    style = r.random()
    if style < 0.25:
        s = f"({a}) {e}-{n}"
    elif style < 0.45:
        s = f"{a}-{e}-{n}"
    elif style < 0.55:
        s = f"{a}.{e}.{n}"
    elif style < 0.65:
        s = f"1-{a}-{e}-{n}"
    elif style < 0.75:
        s = f"+1 {a} {e} {n}"
    elif style < 0.85:
        s = f"+1 ({a}) {e}-{n}"
    elif style < 0.9:
        s = f"({a}){e}-{n}"
    else:
        s = f"+1{a}{e}{n}"
    if r.random() < 0.12:
        s += r.choice((f" x{_digits(r, 3)}", f" ext. {_digits(r, 2)}", f" ext {_digits(r, 4)}"))
    return s


PHONES: dict[str, Callable[[random.Random], str]] = {
    "ja_JP": phone_jp,
    "zh_CN": phone_cn,
    "de_DE": phone_de,
    "fr_FR": phone_fr,
    "pt_BR": phone_br,
    "en_IN": phone_in,
    "en_GB": phone_gb,
    "en_US": phone_us,
}


# --- cards -------------------------------------------------------------------------------------

_SCHEMES: dict[str, tuple[tuple[str, Callable[[random.Random], str], int], ...]] = {
    "visa": (("visa", lambda r: "4", 16),),
    "mc": (("mc", lambda r: str(r.randint(51, 55)), 16), ("mc2", lambda r: "2", 16)),
    "amex": (("amex", lambda r: r.choice(("34", "37")), 15),),
    "jcb": (("jcb", lambda r: str(r.randint(3528, 3589)), 16),),
    "unionpay": (("unionpay", lambda r: "62" + str(r.randint(1, 8)), 16),
                 ("unionpay19", lambda r: "62" + str(r.randint(1, 8)), 19)),
    "rupay": (("rupay", lambda r: r.choice(("60", "652", "81", "82", "508")), 16),),
    "elo": (("elo", lambda r: r.choice(("636368", "438935", "504175", "451416", "5067")), 16),),
    "hipercard": (("hipercard", lambda r: "606282", 16),),
    "discover": (("discover", lambda r: r.choice(("6011", "65")), 16),),
}  # fmt: skip

_CARD_MIX = {
    "ja_JP": ("jcb", "jcb", "visa", "mc", "amex"),
    "zh_CN": ("unionpay", "unionpay", "visa", "mc"),
    "de_DE": ("visa", "mc", "mc", "amex"),
    "fr_FR": ("visa", "visa", "mc"),
    "pt_BR": ("elo", "hipercard", "visa", "mc"),
    "en_IN": ("rupay", "rupay", "visa", "mc"),
    "en_GB": ("visa", "mc", "amex"),
    "en_US": ("visa", "mc", "amex", "discover"),
}
"""The schemes each market mostly carries (JCB in Japan, UnionPay in China, RuPay in India,
Elo / Hipercard in Brazil)."""


def card(r: random.Random, locale: str) -> str:
    scheme, prefix_of, length = r.choice(_SCHEMES[r.choice(_CARD_MIX[locale])])
    prefix = prefix_of(r)
    if scheme == "mc2":  # Mastercard 2-series: 2221-2720
        prefix = str(r.randint(2221, 2720))
    body = prefix + _digits(r, length - len(prefix) - 1)
    digits = body + luhn_check_digit(body)
    style = r.random()
    if style < 0.3:
        return digits
    if scheme == "amex":
        sizes: tuple[int, ...] = (4, 6, 5)
    else:
        sizes = (4, 4, 4, 4, 3)
    sep = " " if style < 0.65 else ("-" if style < 0.9 else "  ")
    return _group(digits, sizes, sep)


# --- IBANs -------------------------------------------------------------------------------------

_IBAN_SHAPES = {"DE": "n18", "FR": "n10a11n2", "GB": "A4n14", "BR": "n23A1a1"}
_IBAN_COUNTRY = {"de_DE": "DE", "fr_FR": "FR", "en_GB": "GB", "pt_BR": "BR"}


def iban(r: random.Random, locale: str) -> str:
    country = _IBAN_COUNTRY[locale]
    alphabet = {"n": string.digits, "A": string.ascii_uppercase}
    bban = ""
    shape = _IBAN_SHAPES[country]
    i = 0
    while i < len(shape):
        kind = shape[i]
        j = i + 1
        while j < len(shape) and shape[j].isdigit():
            j += 1
        chars = alphabet.get(kind, string.ascii_uppercase + string.digits)
        bban += "".join(r.choice(chars) for _ in range(int(shape[i + 1 : j])))
        i = j
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    value = f"{country}{check:02d}{bban}"
    assert iban_ok(value)
    style = r.random()
    if style < 0.35:
        return value
    if style < 0.9:
        return _group(value, (4,) * 9, " ")
    return _group(value, (4,) * 9, "-")


# --- emails, addresses, secrets ----------------------------------------------------------------

_IDN_DOMAINS = {
    "ja_JP": ("例え.jp", "xn--r8jz45g.jp", "会社.jp"),
    "zh_CN": ("例子.cn", "xn--fsqu00a.cn", "公司.cn"),
    "de_DE": ("bücher.de", "xn--bcher-kva.de", "müller-bau.de", "straße.de"),
    "fr_FR": ("café-paris.fr", "xn--caf-paris-b4a.fr", "élysée.fr"),
    "pt_BR": ("açaí.com.br", "xn--aa-yia7b.com.br", "joão.com.br"),
    "en_IN": ("xn--h2brj9c.in", "example.co.in"),
    "en_GB": ("example.co.uk", "xn--mnchen-3ya.co.uk"),
    "en_US": ("xn--80ak6aa92e.com", "example.us"),
}


def email(r: random.Random, fake: Faker, locale: str) -> str:
    style = r.random()
    if style < 0.35:
        return str(fake.email())
    user = str(fake.user_name())
    if style < 0.5:
        first, last = str(fake.first_name_male()), str(fake.last_name())
        ascii_ok = first.isascii() and last.isascii()
        user = f"{first}.{last}".lower() if ascii_ok else user
    if style < 0.6:
        user = (
            r.choice(("o'brien", "d'angelo", "l'oreal.contact", "o'neill.j"))
            + r.choice(("", ".", "_", ""))
            + r.choice(("", "22", "x"))
        )
    elif style < 0.7:
        user = user + "+" + r.choice(("billing", "news", "2026", "shop"))
    elif style < 0.75:
        user = user + r.choice(("!", "#ops", "&co", "*", "~dev", "{x}", "|a", "^^", "`q", "$1"))
    domain = r.choice(_IDN_DOMAINS[locale]) if r.random() < 0.3 else str(fake.free_email_domain())
    return f"{user}@{domain}"


def ip_address(r: random.Random, fake: Faker) -> tuple[str, str]:
    """(value, text after it): IPv4 / IPv6, now and then in CIDR notation (the prefix length is
    part of the value: it is one token) or followed by a port (not part of the value)."""
    style = r.random()
    if style < 0.4:
        v = str(fake.ipv4_public())
        suffix = r.choice(("", "", f":{r.choice((22, 443, 5432, 8080))}", f"/{r.randint(8, 32)}"))
    elif style < 0.55:
        v, suffix = str(fake.ipv4_private()), r.choice(("", "/24", ":3000"))
    elif style < 0.8:
        import ipaddress

        v6 = ipaddress.IPv6Address(str(fake.ipv6()))
        v, suffix = (v6.exploded if r.random() < 0.3 else str(v6)), r.choice(("", "/64", "/128"))
    else:
        gap = f"2001:db8:{r.randint(1, 0xFFFF):x}::{r.randint(1, 0xFFFF):x}"
        v = r.choice((gap, f"fe80::{r.randint(1, 0xFFFF):x}:{r.randint(1, 0xFFFF):x}"))
        suffix = ""
    return (v + suffix, "") if suffix.startswith("/") else (v, suffix)


_B64 = string.ascii_letters + string.digits + "+/"


def secret(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.3:
        return "AKIA" + "".join(r.choice(string.ascii_uppercase + "234567") for _ in range(16))
    if kind < 0.55:
        seg = "".join(r.choice(string.ascii_letters + string.digits + "-_") for _ in range(50))
        sig = "".join(r.choice(string.ascii_letters + string.digits + "-_") for _ in range(43))
        return f"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{seg}.{sig}"
    if kind < 0.75:
        return "ghp_" + "".join(r.choice(string.ascii_letters + string.digits) for _ in range(36))
    # a private key header followed by key material, the footer cut off (a truncated paste)
    body = "".join(r.choice(_B64) for _ in range(r.randint(40, 64)))
    kind_name = r.choice(("RSA ", "", "OPENSSH ", "EC ")) + "PRIVATE KEY"
    return f"-----BEGIN {kind_name}-----\nMII{body}"


# --- carriers ----------------------------------------------------------------------------------

_CHAT: dict[str, dict[str, tuple[str, ...]]] = {
    "ja_JP": {
        "PHONE": (
            "お電話は{v}までお願いします。",
            "電話：{v}（平日9時〜18時）",
            "携帯{v}に連絡ください📞",
            "TEL {v}",
            "連絡先は{v}です！",
        ),
        "EMAIL": (
            "メール：{v}までご連絡ください。",
            "{v}宛に送付しました。",
            "連絡先メール（{v}）",
        ),
        "CREDIT_CARD": ("カード番号{v}で決済しました。", "カード：{v}", "お支払いカード【{v}】"),
        "IP_ADDRESS": ("接続元IP：{v}からのアクセス", "サーバー{v}に接続できません。"),
        "SECRET": ("APIキー：{v}", "トークンは{v}です。"),
    },
    "zh_CN": {
        "PHONE": (
            "请拨打{v}联系我。",
            "手机：{v}，随时联系",
            "电话{v}（工作日）",
            "联系方式：{v}😊",
        ),
        "EMAIL": ("邮箱：{v}。", "请发送到{v}，谢谢！", "我的邮箱是{v}"),
        "CREDIT_CARD": ("银行卡号：{v}。", "卡号{v}已绑定"),
        "IP_ADDRESS": ("登录IP：{v}，异常", "来自{v}的请求"),
        "SECRET": ("密钥：{v}", "令牌{v}已过期"),
    },
    "de_DE": {
        "PHONE": (
            "Bitte rufen Sie mich unter {v} an.",
            "Tel.: {v}",
            "Erreichbar unter {v} (ab 9 Uhr).",
            "Telefon {v}, Fax folgt",
        ),
        "EMAIL": ("Schreiben Sie an {v}.", "E-Mail: {v}", "Antwort bitte an „{v}“."),
        "CREDIT_CARD": ("Kreditkarte {v} wurde belastet.", "Kartennummer: {v}"),
        "IBAN": ("Bitte überweisen Sie auf {v}.", "IBAN: {v}, BIC folgt", "Konto {v} (Sparkasse)"),
        "IP_ADDRESS": ("Zugriff von {v} blockiert.", "Server-IP {v}"),
        "SECRET": ("Der Schlüssel lautet {v}", "Token: {v}"),
    },
    "fr_FR": {
        "PHONE": (
            "Appelez-moi au {v}.",
            "Tél. : {v}",
            "Joignable au {v} après 18h.",
            "Portable : {v}",
        ),
        "EMAIL": ("Écrivez à {v}.", "Courriel : {v}", "Réponse à « {v} »."),
        "CREDIT_CARD": ("Carte bancaire {v} débitée.", "N° de carte : {v}"),
        "IBAN": ("Virement sur le compte {v}.", "IBAN : {v}", "RIB : {v}"),
        "IP_ADDRESS": ("Connexion depuis {v} refusée.", "Adresse IP : {v}"),
        "SECRET": ("Clé d'API : {v}", "Jeton : {v}"),
    },
    "pt_BR": {
        "PHONE": ("Me liga no {v}.", "Tel: {v}", "WhatsApp {v} 📱", "Contato: {v} (comercial)"),
        "EMAIL": ("Mande para {v}.", "E-mail: {v}", "Contato por e-mail: {v}"),
        "CREDIT_CARD": ("Cartão {v} aprovado.", "Número do cartão: {v}"),
        "IBAN": ("Transferência para {v}.", "IBAN: {v}"),
        "IP_ADDRESS": ("Acesso do IP {v} bloqueado.", "Servidor {v} fora do ar"),
        "SECRET": ("Chave de API: {v}", "Token {v}"),
    },
    "en_IN": {
        "PHONE": ("Call me on {v}.", "Mob: {v}", "Contact no. {v} (office)", "Ph: {v}"),
        "EMAIL": ("Mail me at {v}.", "Email ID: {v}", "Send it to {v} pls"),
        "CREDIT_CARD": ("Card {v} was charged.", "Card no: {v}"),
        "IP_ADDRESS": ("Login from {v}.", "Server IP {v} is down"),
        "SECRET": ("API key: {v}", "token {v}"),
    },
    "en_GB": {
        "PHONE": ("Ring me on {v}.", "Tel: {v}", "Mobile {v} (evenings)", "Call {v} to book"),
        "EMAIL": ("Email {v}.", "Contact: {v}", "Reply to ‘{v}’."),
        "CREDIT_CARD": ("Card ending {v} charged.", "Card number {v}"),
        "IBAN": ("Pay into {v}.", "IBAN: {v}", "Account {v} (Barclays)"),
        "IP_ADDRESS": ("Login from {v}.", "Server {v} unreachable"),
        "SECRET": ("API key: {v}", "token {v}"),
    },
    "en_US": {
        "PHONE": ("Call me at {v}.", "Phone: {v}", "Cell {v} (after 5)", "Reach us at {v}!"),
        "EMAIL": ("Email me at {v}.", "Contact: {v}", "Reply to “{v}”."),
        "CREDIT_CARD": ("Card {v} was charged.", "Card #: {v}"),
        "US_SSN": ("SSN {v} on file.", "Social Security No. {v}", "ssn: {v}"),
        "IP_ADDRESS": ("Login from {v}.", "Server {v} unreachable"),
        "SECRET": ("API key: {v}", "token {v}"),
    },
}
"""Chat phrases per locale and entity; ``{v}`` is where the value goes (CJK text puts no space
around it, and uses full-width punctuation)."""

_KEYS = {
    "PHONE": ("phone", "tel", "mobile", "contact_phone"),
    "EMAIL": ("email", "mail", "contact_email"),
    "CREDIT_CARD": ("card", "pan", "card_number"),
    "IBAN": ("iban", "account"),
    "US_SSN": ("ssn",),
    "IP_ADDRESS": ("ip", "client_ip", "remote_addr"),
    "SECRET": ("api_key", "auth", "credential"),
}

_CSV_SEP = {"de_DE": ";", "fr_FR": ";", "pt_BR": ";"}


@dataclass
class _Builder:
    text: str = ""
    spans: list[Span] | None = None

    def add(self, piece: str, entity: str | None = None) -> None:
        if self.spans is None:
            self.spans = []
        if entity is not None:
            self.spans.append(Span(len(self.text), len(self.text) + len(piece), entity))
        self.text += piece


class _Values:
    """Draws labelled values for one locale."""

    def __init__(self, r: random.Random, fake: Faker, locale: str) -> None:
        self.r, self.fake, self.locale = r, fake, locale

    def draw(self, entity: str) -> tuple[str, str]:
        """(value, text right after it that is not part of it)."""
        r, loc = self.r, self.locale
        if entity == "PHONE":
            v = PHONES[loc](r)
            if loc in ("ja_JP", "zh_CN") and r.random() < 0.15:
                v = v.translate(FULLWIDTH)
            return v, ""
        if entity == "EMAIL":
            return email(r, self.fake, loc), ""
        if entity == "CREDIT_CARD":
            v = card(r, loc)
            if loc == "ja_JP" and r.random() < 0.1:
                v = v.translate(FULLWIDTH)
            return v, ""
        if entity == "IBAN":
            return iban(r, loc), ""
        if entity == "US_SSN":
            area = r.choice([a for a in range(1, 900) if a != 666])
            sep = "-" if r.random() < 0.85 else " "
            return f"{area:03d}{sep}{r.randint(1, 99):02d}{sep}{r.randint(1, 9999):04d}", ""
        if entity == "IP_ADDRESS":
            return ip_address(r, self.fake)
        return secret(r), ""


def _cjk_break(b: _Builder, r: random.Random) -> None:
    """CJK text runs phrases together without spaces, but a writer ends a phrase that closes on
    an ASCII value (a number, an address) before the next one starts."""
    if b.text and (b.text[-1].isascii() or "\uff01" <= b.text[-1] <= "\uff5e"):
        b.add(r.choice(("。", "\n", " ", "、")))


def _chat(b: _Builder, vals: _Values, entities: list[str]) -> None:
    r, loc = vals.r, vals.locale
    cjk = loc in ("ja_JP", "zh_CN")
    for i, e in enumerate(entities):
        if i and not cjk:
            b.add(" ")
        if cjk:
            _cjk_break(b, r)
        if r.random() < 0.4:
            b.add(str(vals.fake.sentence()) + ("" if cjk else " "))
        tmpl = r.choice(_CHAT[loc][e])
        head, tail = tmpl.split("{v}")
        v, after = vals.draw(e)
        b.add(head)
        b.add(v, e)
        b.add(after + tail)


def _log(b: _Builder, vals: _Values, entities: list[str]) -> None:
    r = vals.r
    ts = f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:"
    ts += f"{r.randint(0, 59):02d}:{r.randint(0, 59):02d}.{r.randint(0, 999):03d}Z"
    b.add(f"{ts} {r.choice(('INFO', 'WARN', 'DEBUG'))} [{r.choice(('api', 'auth', 'billing'))}] ")
    b.add(r.choice(("request handled", "user updated", "login ok", "payment ok")) + " ")
    for e in entities:
        key = r.choice(_KEYS[e])
        v, after = vals.draw(e)
        quote = r.choice(('"', "", "'")) if " " in v or r.random() < 0.3 else ""
        if quote == "" and (" " in v or "\n" in v):
            quote = '"'
        b.add(f"{key}={quote}")
        b.add(v, e)
        b.add(after + quote + " ")
    b.add(f"took={r.randint(1, 900)}ms")


def _csv(b: _Builder, vals: _Values, entities: list[str]) -> None:
    r, loc = vals.r, vals.locale
    sep = _CSV_SEP.get(loc, ",")
    fields: list[tuple[str, str | None, str]] = [(str(r.randint(1, 99999)), None, "")]
    fields.append((str(vals.fake.name()), None, ""))
    for e in entities:
        v, after = vals.draw(e)
        fields.append((v, e, after))
    fields.append((f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}", None, ""))
    for i, (v, e, after) in enumerate(fields):
        if i:
            b.add(sep)
        quote = '"' if (sep in v or sep in after or "\n" in v or r.random() < 0.25) else ""
        b.add(quote)
        b.add(v, e)
        b.add(after + quote)


def _json_doc(b: _Builder, vals: _Values, entities: list[str]) -> None:
    r = vals.r
    values: list[tuple[str, str, str]] = []
    for e in entities:
        v, after = vals.draw(e)
        values.append((v, after, e))
    marks = [f"@@V{i}@@" for i in range(len(values))]
    doc: dict[str, object] = {
        "id": r.randint(1, 10**6),
        "customer": {"name": str(vals.fake.name()), "contact": {}},
        "events": [],
        "meta": {"source": r.choice(("web", "app", "import")), "v": 2},
    }
    contact: dict[str, object] = doc["customer"]["contact"]  # type: ignore[index]
    events: list[object] = doc["events"]  # type: ignore[assignment]
    for i, (_, _, e) in enumerate(values):
        key = r.choice(_KEYS[e])
        if r.random() < 0.5:
            contact[f"{key}{i}" if key in contact else key] = marks[i]
        else:
            events.append({"type": e.lower(), "value": marks[i], "at": r.randint(1, 99)})
    text = json.dumps(doc, ensure_ascii=False)
    # the marks appear in document order (contact members first), not in drawing order
    order = sorted(range(len(values)), key=lambda i: text.index(marks[i]))
    pos = 0
    for i in order:
        v, after, e = values[i]
        at = text.index(marks[i], pos)
        b.add(text[pos:at])
        # the labelled span is the value as it stands in the document (escapes included); a
        # port after an address is in the same string but not part of the value
        b.add(json.dumps(v, ensure_ascii=False)[1:-1], e)
        b.add(json.dumps(after, ensure_ascii=False)[1:-1])
        pos = at + len(marks[i])
    b.add(text[pos:])


def _note(b: _Builder, vals: _Values, entities: list[str]) -> None:
    r, loc = vals.r, vals.locale
    cjk = loc in ("ja_JP", "zh_CN")
    b.add(str(vals.fake.paragraph(nb_sentences=2)) + ("" if cjk else " "))
    for e in entities:
        v, after = vals.draw(e)
        tmpl = r.choice(_CHAT[loc][e])
        head, tail = tmpl.split("{v}")
        if cjk:
            _cjk_break(b, r)
        b.add(head)
        b.add(v, e)
        b.add(after + tail + ("" if cjk else " "))
        if r.random() < 0.5:
            b.add(str(vals.fake.sentence()) + ("" if cjk else " "))


CARRIERS: dict[str, Callable[[_Builder, _Values, list[str]], None]] = {
    "chat": _chat,
    "log": _log,
    "csv": _csv,
    "json": _json_doc,
    "note": _note,
}


def _faker(locale: str, seed: int) -> Faker:
    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


@lru_cache(maxsize=4)
def labelled_rows(per_locale: int = 1500, seed: int = DEFAULT_SEED) -> tuple[WorldRow, ...]:
    """``per_locale`` rows per locale, each with one to three labelled values in one carrier."""
    out: list[WorldRow] = []
    for li, locale in enumerate(LOCALES):
        r = random.Random(seed * 31 + li)
        vals = _Values(r, _faker(locale, seed + li), locale)
        kinds = ENTITIES_BY_LOCALE[locale]
        for i in range(per_locale):
            # every entity type equally often, one to three per row
            first = kinds[i % len(kinds)]
            extra = r.sample([k for k in kinds if k != first], r.choice((0, 1, 2)))
            entities = [first, *extra]
            carrier = r.choice(tuple(CARRIERS))
            b = _Builder()
            CARRIERS[carrier](b, vals, entities)
            out.append(WorldRow(b.text, tuple(b.spans or ()), locale, carrier))
    return tuple(out)


# --- clean rows --------------------------------------------------------------------------------

_PRICES = {
    "ja_JP": lambda r: f"¥{r.randint(100, 999999):,}",
    "zh_CN": lambda r: f"¥{r.randint(1, 99999):,}.{r.randint(0, 99):02d}",
    "de_DE": lambda r: f"{r.randint(1, 9999):,}".replace(",", ".") + f",{r.randint(0, 99):02d} €",
    "fr_FR": lambda r: f"{r.randint(1, 9999):,}".replace(",", " ") + f",{r.randint(0, 99):02d} €",
    "pt_BR": lambda r: "R$ " + f"{r.randint(1, 99999):,}".replace(",", ".")
    + f",{r.randint(0, 99):02d}",
    "en_IN": lambda r: f"₹{r.randint(1, 99)},{r.randint(10, 99)},{r.randint(100, 999)}.00",
    "en_GB": lambda r: f"£{r.randint(1, 9999):,}.{r.randint(0, 99):02d}",
    "en_US": lambda r: f"${r.randint(1, 99999):,}.{r.randint(0, 99):02d}",
}  # fmt: skip

_POSTCODES = {
    "ja_JP": lambda r: f"〒{r.randint(100, 999)}-{r.randint(0, 9999):04d}",
    "zh_CN": lambda r: f"{r.randint(100000, 999999)}",
    "de_DE": lambda r: f"{r.randint(10000, 99999)}",
    "fr_FR": lambda r: f"{r.randint(10000, 95999)}",
    "pt_BR": lambda r: f"CEP {r.randint(10000, 99999)}-{r.randint(0, 999):03d}",
    "en_IN": lambda r: f"PIN {r.randint(110001, 855999)}",
    "en_GB": lambda r: f"SW{r.randint(1, 20)} {r.randint(1, 9)}AA",
    "en_US": lambda r: f"{r.randint(10000, 99999)}-{r.randint(0, 9999):04d}",
}

_KEY_MENTIONS = (
    "unsupported key format: expected -----BEGIN PRIVATE KEY----- or "
    "-----BEGIN RSA PRIVATE KEY-----",
    "paste the PEM block (it starts with -----BEGIN OPENSSH PRIVATE KEY-----) into the vault, "
    "not here",
    "error: no -----END RSA PRIVATE KEY----- footer found in upload",
    "supported: PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY), "
    "SEC1 (BEGIN EC PRIVATE KEY)",
    "rotate the AWS access key id and the GitHub token (ghp_ prefix) every 90 days",
    "set API_KEY in the environment; the token field must not be empty",
    "certificate -----BEGIN CERTIFICATE----- chain is valid until 2027-01-01",
)


def _clean(r: random.Random, fake: Faker, locale: str) -> str:
    hexs = "0123456789abcdef"
    u = "".join(r.choice(hexs) for _ in range(32))
    uuid = f"{u[:8]}-{u[8:12]}-4{u[13:16]}-{r.choice('89ab')}{u[17:20]}-{u[20:]}"
    sha = "".join(r.choice(hexs) for _ in range(r.choice((7, 40, 64))))
    date = r.choice(
        (
            f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:"
            f"{r.randint(0, 59):02d}:{r.randint(0, 59):02d}+09:00",
            f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/2026 "
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
            f"2026年{r.randint(1, 12)}月{r.randint(1, 28)}日 "
            f"{r.randint(0, 23)}:{r.randint(0, 59):02d}",
            f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.2026",
            str(r.randint(1_700_000_000, 1_799_999_999)),
            str(r.randint(1_700_000_000_000, 1_799_999_999_999)),
        )
    )
    order = r.choice(
        (
            f"ORD-{r.randint(2019, 2026)}-{r.randint(0, 999999):06d}",
            f"#{r.randint(100000, 9999999)}",
            f"注文番号{r.randint(10**9, 10**10 - 1)}",
            f"PO {r.randint(4500000000, 4599999999)}",
            f"{r.randint(100, 999)}-{r.randint(1000000, 9999999)}-{r.randint(1000000, 9999999)}",
        )
    )
    version = r.choice(
        (
            f"v{r.randint(0, 9)}.{r.randint(0, 40)}.{r.randint(0, 20)}",
            f"{r.randint(1, 3)}.{r.randint(0, 30)}.{r.randint(0, 9)}-beta.{r.randint(1, 5)}",
            f"10.0.{r.randint(19041, 26100)}.{r.randint(1000, 5000)}",
            f"build {r.randint(100, 140)}.0.{r.randint(1000, 9999)}.{r.randint(10, 300)}",
        )
    )
    tracking = r.choice(
        (
            f"{r.randint(1000, 9999)}-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}",
            f"1Z{''.join(r.choice(string.ascii_uppercase + string.digits) for _ in range(16))}",
            f"SF{r.randint(10**12, 10**13 - 1)}",
            f"LX{r.randint(10**8, 10**9 - 1)}DE",
        )
    )
    price = _PRICES[locale](r)
    postcode = _POSTCODES[locale](r)
    coords = f"{r.uniform(-60, 60):.4f}, {r.uniform(-170, 170):.4f}"
    pct = f"{r.uniform(0, 100):.1f}%"
    mention = r.choice(_KEY_MENTIONS)
    words = str(fake.sentence())
    templates = (
        f"{date} INFO [orders] {order} shipped, tracking {tracking}, total {price}, "
        f"request_id={uuid}",
        f"{words} {order} / {price} / {postcode} / {date}",
        f'{{"order": "{order}", "amount": "{price}", "trace": "{uuid}", "ts": "{date}", '
        f'"build": "{version}", "commit": "{sha}"}}',
        f"{r.randint(1, 9999)},{order},{price},{postcode},{tracking},{date},{version}",
        f"{date} WARN [tls] {mention} (request {uuid})",
        f"deploy {version} commit {sha} at {date}: {pct} rollout, node {coords}",
        f"{words} {mention}.",
        f"{words} {tracking} {postcode} {pct} {version}",
    )
    return r.choice(templates)


@lru_cache(maxsize=4)
def clean_rows(per_locale: int = 1500, seed: int = DEFAULT_SEED) -> tuple[tuple[str, str], ...]:
    """``(locale, text)``: realistic rows with look-alikes and no PII."""
    out: list[tuple[str, str]] = []
    for li, locale in enumerate(LOCALES):
        r = random.Random(seed * 37 + li)
        fake = _faker(locale, seed + 100 + li)
        out.extend((locale, _clean(r, fake, locale)) for _ in range(per_locale))
    return tuple(out)


# --- scoring per locale ------------------------------------------------------------------------


@dataclass
class WorldScore:
    """Per-locale scores (:class:`masking_data.Score`) and the clean set's flagged rows."""

    by_locale: dict[str, Score]
    clean_rows: int
    clean_flagged: int
    clean_examples: list[str]

    @property
    def clean_fp_rate(self) -> float:
        return self.clean_flagged / self.clean_rows if self.clean_rows else 0.0

    def table(self) -> str:
        head = (
            f"{'locale':<6} {'entity':<12} {'labelled':>8} {'recall':>7} {'precision':>9} "
            f"{'leaked chars':>15}"
        )
        lines = [head, "-" * len(head)]
        for locale, s in self.by_locale.items():
            for name in ENTITIES_BY_LOCALE[locale]:
                e = s.entities[name]
                lines.append(
                    f"{locale:<6} {name:<12} {e.labelled:>8} {e.recall:>7.4f} "
                    f"{e.precision:>9.4f} {e.leaked_chars:>7}/{e.labelled_chars:<7}"
                )
        lines.append(
            f"clean rows flagged: {self.clean_flagged}/{self.clean_rows} ({self.clean_fp_rate:.3%})"
        )
        return "\n".join(lines)


def score_world(
    rows: tuple[WorldRow, ...],
    found: list[list[tuple[int, int, str]]],
    clean: tuple[tuple[str, str], ...],
    clean_found: list[list[tuple[int, int, str]]],
) -> WorldScore:
    by_locale: dict[str, Score] = {}
    for locale in LOCALES:
        idx = [i for i, row in enumerate(rows) if row.locale == locale]
        by_locale[locale] = score([rows[i] for i in idx], [found[i] for i in idx], [], [])
    flagged = [(loc, text, f) for (loc, text), f in zip(clean, clean_found, strict=True) if f]
    examples = [
        f"[{loc}] " + ", ".join(f"{k} {text[s:t]!r}" for s, t, k in f) + f" in {text!r}"
        for loc, text, f in flagged[:12]
    ]
    return WorldScore(by_locale, len(clean), len(flagged), examples)
