//! PostgreSQL's lexical scanner (`src/backend/parser/scan.l`, PostgreSQL 18, the version of the
//! libpg_query the policy engine parses with), as far as token boundaries, token kinds and
//! scanner errors go.
//!
//! Token values are not computed, except where the scanner itself rejects a value (integer
//! literals that overflow become `FCONST`, a parameter number too large, escapes of `E''`
//! strings that make invalid UTF-8, `\u` escapes out of range, ...): a text this scanner accepts
//! is exactly a text the server's scanner accepts, and its tokens are the server's.  The
//! differential tests (`tests/native/test_shape.py`) hold it to pglast's scanner
//! (libpg_query's `pg_query_scan`) on generated texts.
//!
//! Flex picks the longest match among the rules of the current start condition, the first rule
//! on a tie; each function below says which rules compete where.  `standard_conforming_strings`
//! is on (callers never use this scanner otherwise).  Input must be valid UTF-8 without NUL.

/// What a token is.  Keywords and plain identifiers are both [`Kind::Word`]: they are lexed
/// alike, and callers that care (a shape key) keep their text verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// An identifier or keyword (`{identifier}`).
    Word = 1,
    /// A double-quoted identifier (`IDENT` from `"..."`).
    QuotedIdent,
    /// `U&"..."` (`UIDENT`).
    UIdent,
    /// `'...'`, `E'...'`, `$tag$...$tag$` (`SCONST`).
    Sconst,
    /// `U&'...'` (`USCONST`).
    Usconst,
    /// `B'...'` (`BCONST`).
    Bconst,
    /// `X'...'` (`XCONST`).
    Xconst,
    /// An integer literal that fits an int4 (`ICONST`).
    Iconst,
    /// Any other numeric literal (`FCONST`).
    Fconst,
    /// `$n` (`PARAM`).
    Param,
    /// An operator (`Op`).
    Op,
    /// `::`
    Typecast,
    /// `..`
    DotDot,
    /// `:=`
    ColonEquals,
    /// `=>`
    EqualsGreater,
    /// `<=`
    LessEquals,
    /// `>=`
    GreaterEquals,
    /// `<>` or `!=`
    NotEquals,
    /// A single-character token (`{self}` or `{other}`): the byte at the token's start.
    Char,
    /// `/* ... */` (nested), as libpg_query reports it (`C_COMMENT`).
    CComment,
    /// `-- ...` up to the end of the line (`SQL_COMMENT`).
    SqlComment,
    /// The `n` of `n'...'` (the keyword `NCHAR`); the string follows as its own token.
    Nchar,
}

impl Kind {
    /// Whether the token is a constant (its value may change without changing a shape).
    #[inline]
    pub fn is_constant(self) -> bool {
        matches!(
            self,
            Kind::Sconst
                | Kind::Usconst
                | Kind::Bconst
                | Kind::Xconst
                | Kind::Iconst
                | Kind::Fconst
        )
    }
}

/// One token: `start..end` are byte offsets into the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub start: u32,
    pub end: u32,
    pub kind: Kind,
}

/// The scanner refused the text (the server raises a syntax error for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset where the scanner gave up.
    pub at: usize,
}

/// PostgreSQL's `NAMEDATALEN`: an operator of this many characters or more is an error.
const NAMEDATALEN: usize = 64;

#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[inline]
fn is_newline(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

#[inline]
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

#[inline]
fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

#[inline]
fn is_dolq_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

#[inline]
fn is_op_char(b: u8) -> bool {
    matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

#[inline]
fn is_self(b: u8) -> bool {
    matches!(
        b,
        b',' | b'('
            | b')'
            | b'['
            | b']'
            | b'.'
            | b';'
            | b':'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'^'
            | b'<'
            | b'>'
            | b'='
    )
}

/// The byte at `i`, or 0 past the end (the text has no NUL, so 0 is "end").
#[inline]
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// Scans `text` into `out` (cleared first).
pub fn scan(text: &[u8], out: &mut Vec<Token>) -> Result<(), ScanError> {
    out.clear();
    if u32::try_from(text.len()).is_err() {
        return Err(ScanError { at: 0 });
    }
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if is_space(b) {
            i += 1;
            while i < text.len() && is_space(text[i]) {
                i += 1;
            }
            continue;
        }
        let start = i;
        let (kind, end) = token(text, i)?;
        out.push(Token {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
            kind,
        });
        i = end;
    }
    Ok(())
}

/// The token starting at `i` (not whitespace): its kind and end.
fn token(s: &[u8], i: usize) -> Result<(Kind, usize), ScanError> {
    let b = s[i];
    let next = at(s, i + 1);
    match b {
        b'-' if next == b'-' => Ok((Kind::SqlComment, line_end(s, i))),
        b'/' if next == b'*' => c_comment(s, i).map(|e| (Kind::CComment, e)),
        b'\'' => quoted(s, i + 1, Quote::Standard).map(|e| (Kind::Sconst, e)),
        b'"' => delimited(s, i + 1).map(|e| (Kind::QuotedIdent, e)),
        b'$' => dollar(s, i),
        b'0'..=b'9' => number(s, i),
        b'.' if next.is_ascii_digit() => number(s, i),
        b'.' if next == b'.' => Ok((Kind::DotDot, i + 2)),
        b':' if next == b':' => Ok((Kind::Typecast, i + 2)),
        b':' if next == b'=' => Ok((Kind::ColonEquals, i + 2)),
        _ if is_op_char(b) => Ok(operator(s, i)?),
        _ if is_self(b) => Ok((Kind::Char, i + 1)),
        _ if is_ident_start(b) => word(s, i),
        _ => Ok((Kind::Char, i + 1)),
    }
}

/// `{comment}`: `--` up to (not including) the next newline.
fn line_end(s: &[u8], i: usize) -> usize {
    let mut j = i + 2;
    while j < s.len() && !is_newline(s[j]) {
        j += 1;
    }
    j
}

/// `<xc>`: a C-style comment starting at `i` (`/*`), nested; returns its end.
fn c_comment(s: &[u8], i: usize) -> Result<usize, ScanError> {
    let mut depth = 0usize;
    let mut j = i + 2;
    loop {
        let Some(&b) = s.get(j) else {
            return Err(ScanError { at: i }); // unterminated /* comment
        };
        if b == b'/' && at(s, j + 1) == b'*' {
            // {xcstart}: the op chars after it are put back (yyless(2))
            depth += 1;
            j += 2;
        } else if b == b'*' {
            let mut k = j;
            while at(s, k) == b'*' {
                k += 1;
            }
            if at(s, k) == b'/' {
                // {xcstop}
                if depth == 0 {
                    return Ok(k + 1);
                }
                depth -= 1;
                j = k + 1;
            } else {
                j = k;
            }
        } else {
            j += 1;
        }
    }
}

/// The kinds of quoted strings that share the `<xqs>` continuation logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `<xq>`, `<xus>`: `''` is a quote, nothing else is special.
    Standard,
    /// `<xe>`: backslash escapes.
    Escape,
    /// `<xb>`, `<xh>`: nothing is special, not even `''`.
    Bits,
}

/// A quoted string whose body starts at `i` (after the opening quote): returns the end of the
/// token (after the closing quote of its last continuation).
fn quoted(s: &[u8], mut i: usize, q: Quote) -> Result<usize, ScanError> {
    let open = i;
    // E'' strings: the bytes escapes produce, checked as the server checks them
    let mut saw_non_ascii = false;
    let mut lit: Vec<u8> = Vec::new();
    loop {
        let Some(&b) = s.get(i) else {
            return Err(ScanError { at: open }); // unterminated quoted string
        };
        if b == b'\'' {
            if q != Quote::Bits && at(s, i + 1) == b'\'' {
                // {xqdouble}
                if q == Quote::Escape {
                    lit.push(b'\'');
                }
                i += 2;
                continue;
            }
            // {quote} -> <xqs>
            let end = i + 1;
            match continuation(s, end) {
                Some(next) => {
                    i = next;
                    continue;
                }
                None => {
                    if saw_non_ascii && !valid_text(&lit) {
                        return Err(ScanError { at: open });
                    }
                    return Ok(end);
                }
            }
        }
        if q == Quote::Escape && b == b'\\' {
            let (n, nonascii) = escape(s, i, &mut lit)?;
            saw_non_ascii |= nonascii;
            i += n;
            continue;
        }
        if q == Quote::Escape {
            lit.push(b);
        }
        i += 1;
    }
}

/// `<xqs>` after a closing quote ending at `end`: the position after the opening quote of a
/// continuation (`{quotecontinue}`: whitespace holding a newline, then a quote), or None.
pub(crate) fn continuation(s: &[u8], end: usize) -> Option<usize> {
    let mut j = end;
    let mut newline = false;
    loop {
        let b = at(s, j);
        if is_space(b) {
            newline |= is_newline(b);
            j += 1;
        } else if b == b'-' && at(s, j + 1) == b'-' {
            j = line_end(s, j);
        } else if b == b'\'' && newline {
            return Some(j + 1);
        } else {
            return None;
        }
    }
}

/// One backslash escape of an `E''` string at `i`: its length, and whether it set
/// `saw_non_ascii` (the literal is then checked for valid UTF-8 at the end).  Appends the bytes
/// it stands for to `lit`.
fn escape(s: &[u8], i: usize, lit: &mut Vec<u8>) -> Result<(usize, bool), ScanError> {
    let c = at(s, i + 1);
    match c {
        b'u' | b'U' => {
            // {xeunicode} (\uXXXX, \UXXXXXXXX), else {xeunicodefail} (also for a bare \u:
            // it ties with {xeescape} and comes first)
            let want = if c == b'u' { 4 } else { 8 };
            let digits = hex_run(s, i + 2, want);
            if digits < want {
                return Err(ScanError { at: i });
            }
            let cp = hex_value(&s[i + 2..i + 2 + want]);
            let mut n = 2 + want;
            let cp = if is_surrogate_first(cp) {
                // <xeu>: the second half must follow as \uXXXX or \UXXXXXXXX
                let c2 = at(s, i + n + 1);
                if at(s, i + n) != b'\\' || !(c2 == b'u' || c2 == b'U') {
                    return Err(ScanError { at: i });
                }
                let want2 = if c2 == b'u' { 4 } else { 8 };
                if hex_run(s, i + n + 2, want2) < want2 {
                    return Err(ScanError { at: i });
                }
                let second = hex_value(&s[i + n + 2..i + n + 2 + want2]);
                if !is_surrogate_second(second) {
                    return Err(ScanError { at: i });
                }
                n += 2 + want2;
                0x10000 + ((cp - 0xD800) << 10) + (second - 0xDC00)
            } else if is_surrogate_second(cp) {
                return Err(ScanError { at: i });
            } else {
                cp
            };
            push_codepoint(cp, lit).ok_or(ScanError { at: i })?;
            Ok((n, false))
        }
        b'0'..=b'7' => {
            // {xeoctesc}
            let mut n = 1;
            let mut v: u32 = 0;
            while n <= 3 && matches!(at(s, i + n), b'0'..=b'7') {
                v = v * 8 + u32::from(at(s, i + n) - b'0');
                n += 1;
            }
            let byte = (v & 0xff) as u8;
            lit.push(byte);
            Ok((n, byte == 0 || byte >= 0x80))
        }
        b'x' if at(s, i + 2).is_ascii_hexdigit() => {
            // {xehexesc}
            let digits = hex_run(s, i + 2, 2);
            let byte = (hex_value(&s[i + 2..i + 2 + digits]) & 0xff) as u8;
            lit.push(byte);
            Ok((2 + digits, byte == 0 || byte >= 0x80))
        }
        0 if i + 1 >= s.len() => {
            // `<xe>.`: a backslash just before the end (unterminated anyway)
            lit.push(b'\\');
            Ok((1, false))
        }
        _ => {
            // {xeescape}: a backslash and any one byte
            let byte = match c {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 0x0b,
                other => other,
            };
            lit.push(byte);
            Ok((2, byte == 0 || byte >= 0x80))
        }
    }
}

/// How many hex digits (at most `max`) start at `i`.
fn hex_run(s: &[u8], i: usize, max: usize) -> usize {
    let mut n = 0;
    while n < max && at(s, i + n).is_ascii_hexdigit() {
        n += 1;
    }
    n
}

fn hex_value(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |v, &d| {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        v.wrapping_mul(16).wrapping_add(u32::from(x))
    })
}

#[inline]
pub(crate) fn is_surrogate_first(c: u32) -> bool {
    (0xD800..=0xDBFF).contains(&c)
}

#[inline]
pub(crate) fn is_surrogate_second(c: u32) -> bool {
    (0xDC00..=0xDFFF).contains(&c)
}

/// Appends the UTF-8 form of a code point (None: not a valid code point, PostgreSQL's
/// `is_valid_unicode_codepoint`: 1 ..= 0x10FFFF; surrogates never get here).
pub(crate) fn push_codepoint(cp: u32, out: &mut Vec<u8>) -> Option<()> {
    if cp == 0 || cp > 0x10FFFF {
        return None;
    }
    let ch = char::from_u32(cp)?;
    let mut buf = [0u8; 4];
    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    Some(())
}

/// What `pg_verifymbstr` accepts for UTF-8: valid UTF-8 without NUL.
pub(crate) fn valid_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

/// `<xd>` / `<xui>`: a quoted identifier whose body starts at `i`; returns its end.
fn delimited(s: &[u8], mut i: usize) -> Result<usize, ScanError> {
    let open = i;
    loop {
        let Some(&b) = s.get(i) else {
            return Err(ScanError { at: open }); // unterminated quoted identifier
        };
        if b == b'"' {
            if at(s, i + 1) == b'"' {
                i += 2; // {xddouble}
                continue;
            }
            if i == open {
                return Err(ScanError { at: open }); // zero-length delimited identifier
            }
            return Ok(i + 1);
        }
        i += 1;
    }
}

/// At `$`: `{dolqdelim}` (a dollar-quoted string), `{dolqfailed}` (a lone `$`), `{param}` or
/// `{other}`.  (libpg_query's scanner has no `{param_junk}` rule: `$1a` is a parameter and an
/// identifier, as the differential tests show; the port follows the scanner the policy uses.)
fn dollar(s: &[u8], i: usize) -> Result<(Kind, usize), ScanError> {
    let next = at(s, i + 1);
    if next.is_ascii_digit() {
        let mut j = i + 1;
        let mut value: u64 = 0;
        while at(s, j).is_ascii_digit() {
            value = (value * 10 + u64::from(at(s, j) - b'0')).min(1 << 40);
            j += 1;
        }
        if value > i32::MAX as u64 {
            return Err(ScanError { at: i }); // parameter number too large
        }
        return Ok((Kind::Param, j));
    }
    // the tag: {dolq_start}{dolq_cont}*
    let mut j = i + 1;
    if is_ident_start(next) {
        while is_dolq_cont(at(s, j)) {
            j += 1;
        }
    }
    if at(s, j) != b'$' {
        // {dolqfailed} puts back all but the '$', which is {other}
        return Ok((Kind::Char, i + 1));
    }
    let delim = &s[i..=j];
    let body = j + 1;
    match memchr::memmem::find(&s[body..], delim) {
        Some(k) => Ok((Kind::Sconst, body + k + delim.len())),
        None => Err(ScanError { at: i }), // unterminated dollar-quoted string
    }
}

/// At an op char (not a comment start): `{operator}` with its trimming, or the one- and
/// two-character tokens it overlaps.
fn operator(s: &[u8], i: usize) -> Result<(Kind, usize), ScanError> {
    let mut len = 0;
    while is_op_char(at(s, i + len)) {
        len += 1;
    }
    let text = &s[i..i + len];
    if len == 1 {
        return Ok((
            if is_self(text[0]) {
                Kind::Char
            } else {
                Kind::Op
            },
            i + 1,
        ));
    }
    // a comment start inside the operator ends it
    let mut n = len;
    for k in 0..len - 1 {
        if (text[k] == b'/' && text[k + 1] == b'*') || (text[k] == b'-' && text[k + 1] == b'-') {
            n = k;
            break;
        }
    }
    // '+' and '-' cannot end a multi-character operator made of SQL operator characters only
    if n > 1 && matches!(text[n - 1], b'+' | b'-') {
        let special = text[..n - 1].iter().any(|c| {
            matches!(
                c,
                b'~' | b'!' | b'@' | b'#' | b'^' | b'&' | b'|' | b'`' | b'?' | b'%'
            )
        });
        if !special {
            while n > 1 && matches!(text[n - 1], b'+' | b'-') {
                n -= 1;
            }
        }
    }
    let t = &text[..n];
    if n == 1 && is_self(t[0]) {
        return Ok((Kind::Char, i + 1));
    }
    if n == 2 {
        let kind = match t {
            b"=>" => Some(Kind::EqualsGreater),
            b">=" => Some(Kind::GreaterEquals),
            b"<=" => Some(Kind::LessEquals),
            b"<>" | b"!=" => Some(Kind::NotEquals),
            _ => None,
        };
        if let Some(k) = kind {
            return Ok((k, i + 2));
        }
    }
    if n >= NAMEDATALEN {
        return Err(ScanError { at: i }); // operator too long
    }
    Ok((Kind::Op, i + n))
}

/// `{decinteger}`: a digit, then digits each optionally preceded by one `_`.  Returns the end
/// (None if no digit at `i`).
fn digits(s: &[u8], i: usize, ok: fn(u8) -> bool) -> Option<usize> {
    if !ok(at(s, i)) {
        return None;
    }
    let mut j = i + 1;
    loop {
        if ok(at(s, j)) {
            j += 1;
        } else if at(s, j) == b'_' && ok(at(s, j + 1)) {
            j += 2;
        } else {
            return Some(j);
        }
    }
}

fn is_dec(b: u8) -> bool {
    b.is_ascii_digit()
}
fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}
fn is_oct(b: u8) -> bool {
    matches!(b, b'0'..=b'7')
}
fn is_bin(b: u8) -> bool {
    b == b'0' || b == b'1'
}

/// The end of an `{identifier}` starting at `i`, if one does.
fn ident_end(s: &[u8], i: usize) -> Option<usize> {
    if !is_ident_start(at(s, i)) {
        return None;
    }
    let mut j = i + 1;
    while is_ident_cont(at(s, j)) {
        j += 1;
    }
    Some(j)
}

/// The longest `{X}{identifier}` (a `*_junk` rule) where `{X}` is a number whose digits after
/// `digits_from` end at `end` (greedily): the identifier starts at `end`, or at an `_` among
/// those digits (`1_2$` is `1` and the identifier `_2$`).  None when no identifier follows.
fn junk_end(s: &[u8], digits_from: usize, end: usize) -> Option<usize> {
    let c = at(s, end);
    if is_ident_start(c) {
        return ident_end(s, end);
    }
    if is_ident_cont(c) && s[digits_from.min(end)..end].contains(&b'_') {
        let mut j = end;
        while is_ident_cont(at(s, j)) {
            j += 1;
        }
        return Some(j);
    }
    None
}

/// A numeric literal at `i` (a digit, or `.` then a digit): the longest of flex's number rules,
/// the first on a tie.
fn number(s: &[u8], i: usize) -> Result<(Kind, usize), ScanError> {
    let err = Err(ScanError { at: i });
    // candidates, in rule order: (length, what)
    #[derive(Clone, Copy, PartialEq)]
    enum R {
        Int(u32),
        Fail,
        Numeric,
        NumericFail,
        Real,
        Junk,
    }
    let mut best: (usize, R) = (0, R::Fail);
    let mut consider = |end: usize, r: R| {
        if end > best.0 {
            best = (end, r);
        }
    };
    let dec = digits(s, i, is_dec);
    if let Some(e) = dec {
        consider(e, R::Int(10));
    }
    if at(s, i) == b'0' {
        for (letters, base, ok) in [
            (b"xX", 16u32, is_hex as fn(u8) -> bool),
            (b"oO", 8, is_oct),
            (b"bB", 2, is_bin),
        ] {
            if letters.contains(&at(s, i + 1)) {
                // 0[xX](_?{hexdigit})+
                let mut j = i + 2;
                let mut any = false;
                loop {
                    if ok(at(s, j)) {
                        j += 1;
                        any = true;
                    } else if at(s, j) == b'_' && ok(at(s, j + 1)) {
                        j += 2;
                        any = true;
                    } else {
                        break;
                    }
                }
                if any {
                    consider(j, R::Int(base));
                }
                // {hexfail}: 0[xX]_?
                let fail = if at(s, i + 2) == b'_' { i + 3 } else { i + 2 };
                consider(fail, R::Fail);
            }
        }
    }
    // {numeric}: {decinteger}\.{decinteger}? | \.{decinteger}
    let numeric = match dec {
        Some(e) if at(s, e) == b'.' => Some(digits(s, e + 1, is_dec).unwrap_or(e + 1)),
        Some(_) => None,
        None => digits(s, i + 1, is_dec), // at '.'
    };
    if let Some(e) = numeric {
        consider(e, R::Numeric);
    }
    // {numericfail}: {decinteger}\.\.
    if let Some(e) = dec {
        if at(s, e) == b'.' && at(s, e + 1) == b'.' {
            consider(e + 2, R::NumericFail);
        }
    }
    // {real} / {realfail}: ({decinteger}|{numeric})[Ee][-+]?{decinteger}
    for base in [dec, numeric].into_iter().flatten() {
        if matches!(at(s, base), b'e' | b'E') {
            let mut j = base + 1;
            let signed = matches!(at(s, j), b'+' | b'-');
            if signed {
                j += 1;
            }
            match digits(s, j, is_dec) {
                Some(e) => {
                    consider(e, R::Real);
                    if let Some(junk) = junk_end(s, j, e) {
                        consider(junk, R::Junk); // {real_junk}
                    }
                }
                None if signed => consider(j, R::Fail), // {realfail}
                None => {}
            }
        }
    }
    // {integer_junk}, {numeric_junk}
    if let Some(e) = dec {
        if let Some(junk) = junk_end(s, i, e) {
            consider(junk, R::Junk);
        }
    }
    if let Some(e) = numeric {
        let fraction = dec.map_or(i + 1, |d| d + 1);
        if let Some(junk) = junk_end(s, fraction, e) {
            consider(junk, R::Junk);
        }
    }
    match best.1 {
        R::Int(base) => Ok((integer_kind(&s[i..best.0], base), best.0)),
        R::Numeric | R::Real => Ok((Kind::Fconst, best.0)),
        R::NumericFail => {
            // the ".." goes back: the integer before it
            let e = best.0 - 2;
            Ok((integer_kind(&s[i..e], 10), e))
        }
        R::Fail | R::Junk => err,
    }
}

/// `process_integer_literal`: `ICONST` when the value fits an int4, else `FCONST`.
fn integer_kind(text: &[u8], base: u32) -> Kind {
    let body = if base == 10 { text } else { &text[2..] };
    let mut v: u64 = 0;
    for &d in body {
        if d == b'_' {
            continue;
        }
        let x = u64::from(match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        });
        v = v * u64::from(base) + x;
        if v > i32::MAX as u64 {
            return Kind::Fconst;
        }
    }
    Kind::Iconst
}

/// At an identifier start: the string prefixes (`B'`, `X'`, `N'`, `E'`, `U&'`, `U&"`, and `U&`
/// alone), or `{identifier}`.
fn word(s: &[u8], i: usize) -> Result<(Kind, usize), ScanError> {
    let b = s[i];
    let next = at(s, i + 1);
    if next == b'\'' {
        match b {
            b'b' | b'B' => return quoted(s, i + 2, Quote::Bits).map(|e| (Kind::Bconst, e)),
            b'x' | b'X' => return quoted(s, i + 2, Quote::Bits).map(|e| (Kind::Xconst, e)),
            b'e' | b'E' => return quoted(s, i + 2, Quote::Escape).map(|e| (Kind::Sconst, e)),
            // {xnstart}: only the 'n' now (the keyword NCHAR); the string is scanned next
            b'n' | b'N' => return Ok((Kind::Nchar, i + 1)),
            _ => {}
        }
    }
    if (b == b'u' || b == b'U') && next == b'&' {
        return match at(s, i + 2) {
            b'\'' => quoted(s, i + 3, Quote::Standard).map(|e| (Kind::Usconst, e)),
            b'"' => delimited(s, i + 3).map(|e| (Kind::UIdent, e)),
            // {xufailed}: the 'u' is an identifier, the '&' is scanned next
            _ => Ok((Kind::Word, i + 1)),
        };
    }
    let end = ident_end(s, i).unwrap_or(i + 1);
    Ok((Kind::Word, end))
}
