"""Generated SQL-ish texts for the differential tests of the native scanner and shape key.

Each text is a run of fragments that exercise one rule of PostgreSQL's scanner (scan.l): keywords
and identifiers (plain, quoted with doubled quotes, ``U&""``, multi-byte), every literal kind
(standard, ``E''`` with every escape form valid or not, ``U&''`` with ``\\XXXX`` / ``\\+XXXXXX``
escapes, ``B''``, ``X''``, ``N''``, dollar quotes with nested tags, continuations across newlines
and ``--`` comments), numbers (underscores, hex / octal / binary, the int4 boundary in every base,
exponents, ``1..2``, trailing junk), parameters, operators (random runs of operator characters,
comment starts inside them, trailing ``+`` / ``-``), nested comments, punctuation and control
characters, glued together with and without white space.  Unterminated and malformed forms are
in on purpose: the server's scanner must refuse exactly what the port refuses.

:func:`pglast_tokens` is pglast's (libpg_query's) view of a text in the same form as
``veilgate_native.sql_tokens``.
"""

from __future__ import annotations

import random
from typing import Final

from pglast import parser as pg

__all__ = ["constant_variant", "corpus", "pglast_tokens", "random_text"]

WORDS: Final = (
    "select", "SELECT", "from", "where", "and", "or", "not", "in", "null", "true", "is", "as",
    "x", "t1", "_a", "a$b", "é", "日本", "nchar", "n", "u", "e", "b", "N", "U", "E", "B", "X",
    "uescape", "UESCAPE", "int", "interval", "varchar", "order", "by", "limit", "é_x", "ñ1$",
    "abc_", "Ab9", "z",
)  # fmt: skip
E_ESCAPES: Final = (
    "\\n", "\\'", "\\\\", "\\x41", "\\xC3\\xA9", "\\xC3", "\\xe9", "\\101", "\\0", "\\00",
    "\\400", "\\377", "\\u00e9", "\\U0001F600", "\\uD83D\\uDE00", "\\uD83D", "\\uDE00",
    "\\uD83Dx", "\\u12", "\\u", "\\U1234", "\\x", "\\xg", "\\9", "\\é", "\\b\\f\\r\\t\\v",
    "\\u0000", "\\U00110000", "\\uD83D\\U0001F600", "\\uD83D\\UDE00", "''", "\\",
)  # fmt: skip
U_ESCAPES: Final = (
    "\\0041", "\\+01F600", "\\\\", "\\D83D\\DE00", "\\D83D", "\\DE00", "\\zz", "\\+12",
    "\\0000", "\\+110000", "\\D83Dx", "\\D83D\\\\", "\\00e9", "''", "\\+00004",
)  # fmt: skip
NUMBERS: Final = (
    "0", "1", "42", "2147483647", "2147483648", "02147483647", "00000000000000000002147483647",
    "0x7FFFFFFF", "0x80000000", "0x7fff_ffff", "0o17777777777", "0o20000000000",
    "0b" + "1" * 31, "0b1" + "0" * 31, "1_2_3", "1__2", "1_", "0x", "0x_", "0x_1", "0xg", "0b2",
    "0o8", "0X1F", "0B1", "0O7", "1.", ".5", "1.5e10", "1e", "1e+", "1E-5", "1.e5", "1..2",
    "1.2.3", "1_000.000_1", "1.5_", "9999999999999999999999", "1e5_0", "1_2e5", ".5e-3", "1ea",
    "1.x", "0.0", "1_000_000", "2_147_483_648",
)  # fmt: skip
PARAMS: Final = ("$1", "$0", "$2147483647", "$2147483648", "$1a", "$", "$a", "$01", "$1$")
OPS: Final = (
    "::", ":=", "..", "=>", "<=", ">=", "<>", "!=", "::=", "<=>", "->>", "#>>", "@>", "||",
    "=-", "*-", "@-", "!=-", "+/*c*/", "-/**/", "=--c\n", "~~*", "?|", "&&", "<<=", "%",
)  # fmt: skip
OP_CHARS: Final = "~!@#^&|`?+-*/%<>="
PUNCT: Final = (*",()[].;:+-*/%^<>=", "{", "}", "\\", "\x01", "\x7f", "$", "&")
COMMENTS: Final = (
    "-- x\n", "--", "--é", "/* a */", "/* a /* b */ c */", "/**/", "/* ' */", "/*/ */",
    "/* a", "/* a /* b */", "/***/", "/* * / */", "-- '\r",
)  # fmt: skip
SPACES: Final = ("", " ", "  ", "\n", "\t", "\r\n", "\x0b", "\x0c", " \n ")
CONTINUE: Final = (" ", "\n", " -- c\n ", "\n-- c\n", "\r", "\t\n\t", " /* c */\n", "--x\n\n")
TEXT_CHARS: Final = ("a", " ", "é", "€", "日", "😀", "$", '"', "\\", "\n", "x", "1", ";", "--")


def _body(r: random.Random, n: int = 6) -> str:
    return "".join(r.choice(TEXT_CHARS) for _ in range(r.randint(0, n)))


def _string(r: random.Random) -> str:
    kind = r.randrange(9)
    if kind == 0:  # standard
        s = "'" + _body(r).replace("'", "''") + r.choice(("", "''", "x''y")) + "'"
    elif kind == 1:  # E''
        parts = [r.choice(E_ESCAPES) if r.random() < 0.5 else _body(r, 3) for _ in range(3)]
        s = r.choice("eE") + "'" + "".join(p.replace("'", "''") if p != "\\'" else p for p in parts)
        s += "'"
    elif kind == 2:  # U&''
        parts = [r.choice(U_ESCAPES) if r.random() < 0.5 else _body(r, 3) for _ in range(3)]
        body = "".join(parts).replace("''", "\x00").replace("'", "''").replace("\x00", "''")
        s = r.choice(("U&", "u&")) + "'" + body + "'"
        if r.random() < 0.15:
            s += " UESCAPE '!'"
    elif kind == 3:
        s = r.choice("bB") + "'" + "".join(r.choice("01x2 ") for _ in range(r.randint(0, 5))) + "'"
    elif kind == 4:
        s = r.choice("xX") + "'" + "".join(r.choice("0fFg ") for _ in range(r.randint(0, 5))) + "'"
    elif kind == 5:
        s = r.choice("nN") + "'" + _body(r).replace("'", "''") + "'"
    elif kind == 6:  # dollar quotes
        tag = r.choice(("", "a", "tag", "é", "_1"))
        inner = r.choice(("", "$", "$a$", "$b$ x $b$", "'", "$$", f"${tag}", "é"))
        s = f"${tag}$" + _body(r, 3) + inner + _body(r, 3)
        s += r.choice((f"${tag}$", f"${tag}$", "", f"$x{tag}$"))
    elif kind == 7:  # continued
        s = "'" + _body(r, 3).replace("'", "''") + "'" + r.choice(CONTINUE)
        s += "'" + _body(r, 3).replace("'", "''") + "'"
    else:  # unterminated or odd
        s = r.choice(("'abc", "E'\\", "U&'x", "B'01", "$$x", "$a$x$b$", "''", "E''''", "'\n'"))
    return s


def _ident(r: random.Random) -> str:
    kind = r.randrange(4)
    if kind == 0:
        return r.choice(WORDS)
    if kind == 1:
        return '"' + r.choice(("a", "A b", 'x""y', "é", "", "日本", "$1")) + '"'
    if kind == 2:
        return r.choice(("U&", "u&")) + '"' + r.choice(("a", "\\0041", "d\\0061t", "")) + '"'
    return r.choice(WORDS) + r.choice(("", "1", "_", "$", "é"))


def _operator(r: random.Random) -> str:
    if r.random() < 0.5:
        return r.choice(OPS)
    n = r.randint(1, 6)
    return "".join(r.choice(OP_CHARS) for _ in range(n))


def _fragment(r: random.Random) -> str:
    kind = r.randrange(9)
    if kind in (0, 1):
        return _ident(r)
    if kind == 2:
        return _string(r)
    if kind == 3:
        return r.choice(NUMBERS)
    if kind == 4:
        return r.choice(PARAMS)
    if kind == 5:
        return _operator(r)
    if kind == 6:
        return r.choice(PUNCT)
    if kind == 7:
        return r.choice(COMMENTS)
    return "~" * r.choice((63, 64)) if r.random() < 0.05 else r.choice(SPACES)


def random_text(r: random.Random) -> str:
    """One generated text (never a NUL).  Half of them are built only of fragments that scan
    on their own, so that most of those scan as a whole (the other half mostly do not)."""
    clean = r.random() < 0.5
    out = []
    for _ in range(r.randint(1, 12)):
        frag = _fragment(r)
        while clean and pglast_tokens(frag) is None:
            frag = _fragment(r)
        out.append(frag)
        out.append(r.choice(SPACES) if r.random() < 0.7 else (" " if clean else ""))
    return "".join(out)


def corpus(n: int, seed: int = 15) -> list[str]:
    r = random.Random(seed)
    return [random_text(r) for _ in range(n)]


def pglast_tokens(text: str) -> list[tuple[int, int, str]] | None:
    """pglast's tokens of ``text`` in ``veilgate_native.sql_tokens``'s form: byte offsets (end
    exclusive); keywords and plain identifiers ``WORD``, quoted identifiers ``QIDENT``, the
    ``n`` of ``n'...'`` ``NCHAR``, single characters ``ASCII_<byte>``."""
    try:
        tokens = pg.scan(text)
    except (pg.ParseError, UnicodeError, ValueError):
        # (as veilgate.policy.literals: pglast fails to decode some scanner errors' messages)
        return None
    raw = text.encode()
    at = [0]
    for ch in text:
        at.append(at[-1] + len(ch.encode()))
    out = []
    for t in tokens:
        start, end = at[t.start], at[t.end + 1]
        name = t.name
        if t.kind != "NO_KEYWORD":
            name = "NCHAR" if name == "NCHAR" and end - start == 1 else "WORD"
        elif name == "IDENT":
            name = "QIDENT" if text[t.start] == '"' else "WORD"
        elif name == "UNKNOWN" or name.startswith("ASCII_"):
            name = f"ASCII_{raw[start]}"
        out.append((start, end, name))
    return out


_CONSTANT_VALUES: Final = {
    "ICONST": ("0", "7", "2147483647", "0x10", "0b1", "1_0"),
    "FCONST": ("1.5", ".5", "1e3", "2147483648", "0x80000000", "1_0.2"),
    "SCONST": ("'a'", "'it''s'", "E'\\n'", "$$x$$", "$q$'$q$", "''", "'é'"),
    "USCONST": ("U&'a'", "U&'\\0041'", "u&'\\+01F600'", "U&'x''y'"),
    "BCONST": ("B'1'", "b'0101'", "B''"),
    "XCONST": ("X'ff'", "x'1'", "X''"),
}


def constant_variant(text: str, r: random.Random) -> str | None:
    """``text`` with every constant token replaced by another constant of the same kind (None
    when it does not scan or has no constant).  Separated from its neighbours by the original
    spacing; a replacement that changes how the neighbours scan is caught by the tests' own
    comparison of both texts' tokens."""
    toks = pglast_tokens(text)
    if not toks:
        return None
    raw = text.encode()
    out, pos, changed = [], 0, False
    for start, end, name in toks:
        values = _CONSTANT_VALUES.get(name)
        if values is None:
            continue
        out.append(raw[pos:start] + r.choice(values).encode())
        pos = end
        changed = True
    if not changed:
        return None
    return (b"".join(out) + raw[pos:]).decode()
