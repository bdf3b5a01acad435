//! Where a candidate of the combined automaton may start: a cheap forward pass that skips text
//! no built-in detector could match, so the automaton only runs (anchored) at a few positions.
//!
//! The combined lazy DFA alone ran at 90-230 MB/s on the team's data: every byte is a
//! transition, and digits, dots and letters keep some alternative alive almost everywhere.
//! Nearly every alternative needs particular first bytes and a non-word byte before it (see the
//! validators), so the pass finds the few positions worth an anchored search.  The positions
//! are a superset of where a candidate that can pass validation starts (a candidate glued to a
//! word on its left, which every validator but email's and keyword's rejects, is never
//! proposed): a leftmost-first search from a position equals the anchored search at the first
//! listed position that matches (see [`super::scan`]).
//!
//! Three streams of positions are merged, each cached until the scan passes it (the scan only
//! moves forward, so each stream costs about one pass over the value):
//! - openings of a number, address, IBAN, token or PEM block: byte-class masks of 64-byte blocks
//!   ([`classify`], SIMD) combine with shifts into word starts whose first bytes fit, and
//!   `Starts::opens_at` checks each against the shape its alternatives need (a card's issuer
//!   and Luhn sum, four octets, `ddd-dd-dddd`, seven colons or `::`, ...);
//! - the first letter or digit of an email's local part (the run of local-part bytes before an
//!   `@`, found with `memchr`), once per `@`;
//! - keyword literals (`password`, `api_key`, ...), which may start mid-word (`DB_PASSWORD=`),
//!   found backwards from the `:` or `=` that must follow them.

use super::boundary::token_left_ok;
use super::candidates::Kind;
use super::classify::{classify, Masks};
use super::validate::email::is_local_part_byte;
use super::validate::{card, ip, phone};

/// The literals a keyword secret starts with (the `(?i:...)` group of its pattern, expanded).
const KEYWORDS: [&str; 11] = [
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "access-key",
    "accesskey",
    "token",
];

/// Where a keyword literal ends right before the separator at `sep` (after an optional quote
/// and blanks) and starts at or after `at`: its start.
fn keyword_before(text: &[u8], at: usize, sep: usize) -> Option<usize> {
    let mut j = sep;
    while j > at && matches!(text[j - 1], b' ' | b'\t') {
        j -= 1;
    }
    if j > at && matches!(text[j - 1], b'"' | b'\'') {
        j -= 1;
    }
    // Every keyword ends in `d`, `t`, `y` or `n`: most separators (times, ports) fail here.
    if j == at || !matches!(text[j - 1] | 0x20, b'd' | b't' | b'y' | b'n') {
        return None;
    }
    KEYWORDS
        .iter()
        .filter_map(|k| {
            let s = j.checked_sub(k.len())?;
            (s >= at && text[s..j].eq_ignore_ascii_case(k.as_bytes())).then_some(s)
        })
        .min()
}

/// The PEM block's fixed opening.
const PEM_OPEN: &[u8] = b"-----BEGIN";

/// Byte classes of single bytes (the SIMD masks of [`classify`] cover blocks).
const WORD: u8 = 1;
/// `-`: may open a PEM block (`-----BEGIN`), even right after a word.
const DASH: u8 = 2;

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c: u8 = 0;
    loop {
        let word = c.is_ascii_alphanumeric() || c == b'_';
        t[c as usize] = if word { WORD } else { 0 } | if c == b'-' { DASH } else { 0 };
        if c == u8::MAX {
            break;
        }
        c += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

/// Which families the scanner's alternatives include (a masker may detect a subset).
#[derive(Debug, Clone, Default)]
pub struct Families {
    card: bool,
    ssn: bool,
    ipv4: bool,
    phone: bool,
    ipv6: bool,
    iban: bool,
    tokens: bool,
    pem: bool,
    email: bool,
    keywords: bool,
}

impl Families {
    pub fn new(kinds: &[Kind]) -> Families {
        let mut f = Families::default();
        for k in kinds {
            match k {
                Kind::PemBlock => f.pem = true,
                Kind::Token => f.tokens = true,
                Kind::KeywordSecret => f.keywords = true,
                Kind::Email => f.email = true,
                Kind::Iban => f.iban = true,
                Kind::Card => f.card = true,
                Kind::Ssn => f.ssn = true,
                Kind::Ipv4 => f.ipv4 = true,
                Kind::Phone => f.phone = true,
                Kind::Ipv6 => f.ipv6 = true,
            }
        }
        f
    }

    /// Bit k set if byte k of the block `cur` may open a candidate (a superset of
    /// [`Starts::opens_at`]); `nxt` is the following block, `prev_word` tells whether the byte
    /// before `cur` is a word byte.
    fn candidates(&self, cur: &Masks, nxt: &Masks, prev_word: bool) -> u64 {
        // The mask of the bytes `k` positions on (k in 1..=4), across the block boundary.
        let on = |k: u32, field: fn(&Masks) -> u64| field(cur) >> k | field(nxt) << (64 - k);
        let after_non_word = !(cur.word << 1 | u64::from(prev_word));
        let mut opens = 0;
        // The digit openings of `opens_at`: four digits (a card), three and a separator (SSN,
        // NANP; `001` too), one to three and a dot (IPv4).
        let digit = |k| on(k, |m| m.digit);
        let dot = |k| on(k, |m| m.dot);
        if self.card {
            opens |= cur.digit & digit(1) & digit(2) & digit(3);
        }
        if self.ssn {
            opens |= cur.digit & digit(1) & digit(2) & on(3, |m| m.dash | m.space);
        }
        if self.phone {
            // The first digit group of a number (a superset of `phone::may_start_at_digit`):
            // `0` and a digit (trunk, `00`), any group of up to three and a separator (`1-`,
            // `44 `, `415-`, `090-`), five and a blank (`98765 43210`), or eleven digits alone
            // (`13812345678`); never a group joined to a word on its left (`2026-11-09`).
            // A separator is followed by the next group (or one more blank, or a `(`).
            let group_at = |k| on(k, |m| m.digit | m.paren | m.space);
            let sep = |k| on(k, |m| m.space | m.dash | m.dot | m.paren | m.slash) & group_at(k + 1);
            let blank_or_dash = |k| on(k, |m| m.space | m.dash) & group_at(k + 1);
            let first_group = cur.zero & digit(1) & !on(2, |m| m.colon)
                | sep(1)
                | digit(1) & blank_or_dash(2)
                | digit(1) & digit(2) & (sep(3) | digit(3));
            // ... and not the minutes or seconds of a time (`08:34:00`).
            let joined = (cur.dash | cur.dot | cur.slash) << 1
                & (cur.word << 2 | u64::from(prev_word) << 1)
                | cur.colon << 1 & cur.digit << 2;
            opens |= cur.digit & first_group & !joined;
        }
        if self.ipv4 {
            opens |= cur.digit & (dot(1) | digit(1) & (dot(2) | digit(2) & dot(3)));
        }
        if self.ipv6 {
            let hex = |k| on(k, |m| m.hex);
            let colon = |k| on(k, |m| m.colon);
            let group = colon(1) | hex(1) & (colon(2) | hex(2) & (colon(3) | hex(3) & colon(4)));
            // Not right after a `.` (inside a version), nor after a `:` that follows a hex
            // digit or another `:` (inside a time, a MAC address or an address); after a key's
            // `:` (`ip:2001:...`) it may.
            let after_joiner = cur.dot << 1 | cur.colon << 1 & (cur.hex | cur.colon) << 2;
            opens |= (cur.hex & group | cur.colon & colon(1)) & !after_joiner;
        }
        if self.phone {
            opens |= cur.plus & on(1, |m| m.digit | m.space) | cur.paren & on(1, |m| m.digit);
        }
        if self.tokens {
            opens |= cur.token_first & on(1, |m| m.token_second | m.aws_second);
        }
        if self.iban {
            opens |= cur.upper & on(1, |m| m.upper);
        }
        let pem = if self.pem {
            cur.dash & on(1, |m| m.dash)
        } else {
            0
        };
        opens & after_non_word | pem
    }
}

/// One scan's position streams over one value.  Queries must not go backwards.
pub struct Starts<'a> {
    families: &'a Families,
    text: &'a [u8],
    /// Next word-start opening at or after the last query (`usize::MAX`: none left).
    opening: Cached,
    /// The 64-byte block the opening stream is in (classified once, however often queried).
    block: Option<Block>,
    keyword: Cached,
    email: EmailStream,
}

/// A classified block: its opening candidates not yet rejected, whether its last byte is a
/// word byte, and the next block's classes.
#[derive(Clone, Copy)]
struct Block {
    base: usize,
    candidates: u64,
    last_word: bool,
    nxt: Masks,
}

/// A stream's next position and the query position it was computed for.
#[derive(Clone, Copy)]
struct Cached {
    from: usize,
    next: usize,
}

impl Cached {
    const UNSET: Cached = Cached {
        from: usize::MAX,
        next: 0,
    };

    /// The cached answer if it is still the next position at or after `at`.
    fn get(&self, at: usize) -> Option<usize> {
        (self.from != usize::MAX && self.from <= at && at <= self.next).then_some(self.next)
    }
}

/// The next `@` and the first letter or digit of the local part before it.
#[derive(Clone, Copy)]
struct EmailStream {
    /// Position of the `@` being served (`usize::MAX`: none left).
    at_sign: usize,
    /// Start of the local-part run ending at `at_sign` (not before the query it was found for).
    run_start: usize,
    /// True once a search from this run found nothing: no address ends at this `@`.
    dead: bool,
    /// False until the first query (then `at_sign == usize::MAX` means no `@` is left).
    started: bool,
}

impl<'a> Starts<'a> {
    pub fn new(families: &'a Families, text: &'a [u8]) -> Starts<'a> {
        Starts {
            families,
            text,
            opening: Cached::UNSET,
            block: None,
            keyword: Cached::UNSET,
            email: EmailStream {
                at_sign: usize::MAX,
                run_start: 0,
                dead: false,
                started: false,
            },
        }
    }

    /// The first position at or after `at` where a candidate may start.
    pub fn next(&mut self, at: usize) -> Option<usize> {
        let opening = self.next_opening(at);
        let keyword = self.next_keyword(at);
        let email = self.next_email(at);
        let p = opening.min(keyword).min(email);
        (p < self.text.len()).then_some(p)
    }

    /// True if an email may start at `p`: a letter or digit in the local-part run before the
    /// `@` the email stream serves (every such start reaches the same `@` and domain).
    pub fn email_at(&self, p: usize) -> bool {
        let e = &self.email;
        self.families.email
            && e.started
            && !e.dead
            && e.at_sign != usize::MAX
            && (e.run_start..e.at_sign).contains(&p)
            && self.text[p].is_ascii_alphanumeric()
    }

    /// An anchored search at `p` found nothing: if `p` was the email stream's position, no
    /// address ends at its `@` (every start in one local-part run reaches the same `@` and
    /// domain), so the stream moves on to the next `@`.
    pub fn missed(&mut self, p: usize) {
        if self.email_at(p) {
            self.email.dead = true;
        }
    }

    /// Keywords are found from their separator: a keyword candidate is the literal, an
    /// optional quote, blanks, then `:` or `=`, and separators are far rarer than the letters
    /// the literals start with.
    fn next_keyword(&mut self, at: usize) -> usize {
        if !self.families.keywords {
            return usize::MAX;
        }
        if let Some(p) = self.keyword.get(at) {
            return p;
        }
        let text = self.text;
        let rest = &text[at..];
        let next = memchr::memchr2_iter(b':', b'=', rest)
            .find_map(|i| keyword_before(text, at, at + i))
            .unwrap_or(usize::MAX);
        self.keyword = Cached { from: at, next };
        next
    }

    fn next_email(&mut self, at: usize) -> usize {
        if !self.families.email {
            return usize::MAX;
        }
        let text = self.text;
        loop {
            let e = &mut self.email;
            if e.started && e.at_sign == usize::MAX {
                return usize::MAX; // no `@` left
            }
            if !e.started || at > e.at_sign || e.dead {
                let from = if e.started { at.max(e.at_sign + 1) } else { at };
                e.started = true;
                e.dead = false;
                e.at_sign = text
                    .get(from..)
                    .and_then(|rest| memchr::memchr(b'@', rest))
                    .map_or(usize::MAX, |i| from + i);
                if e.at_sign == usize::MAX {
                    return usize::MAX;
                }
                // Walk back over the local part, never before the query (the scan passed it).
                let mut s = e.at_sign;
                while s > at && is_local_part_byte(text[s - 1]) {
                    s -= 1;
                }
                e.run_start = s;
            }
            let lo = e.run_start.max(at);
            if let Some(i) = text[lo..e.at_sign]
                .iter()
                .position(u8::is_ascii_alphanumeric)
            {
                return lo + i;
            }
            // No letter or digit can open an address before this `@`: serve the next one.
            e.dead = true;
        }
    }

    fn next_opening(&mut self, at: usize) -> usize {
        if let Some(p) = self.opening.get(at) {
            return p;
        }
        let text = self.text;
        let mut next = usize::MAX;
        let block = |from: usize| {
            text.get(from..text.len().min(from + 64))
                .map_or_else(Masks::default, classify)
        };
        // Resume in the block a previous query classified, or classify afresh from `at`.
        let mut b = match self.block {
            Some(b) if b.base <= at && at < b.base + 64 => b,
            _ => {
                let cur = block(at);
                let nxt = block(at + 64);
                let prev_word = at > 0 && CLASS[usize::from(text[at - 1])] & WORD != 0;
                Block {
                    base: at,
                    candidates: self.families.candidates(&cur, &nxt, prev_word),
                    last_word: cur.word >> 63 != 0,
                    nxt,
                }
            }
        };
        b.candidates &= u64::MAX << (at - b.base);
        // The hot loop of a clean value, 64 bytes at a time: the byte classes (SIMD) combine
        // into the few word starts whose first bytes some opening has, and only those are
        // examined.  Branching per byte or per word start costs more than the scan itself.
        'blocks: while b.base < text.len() {
            while b.candidates != 0 {
                let i = b.base + b.candidates.trailing_zeros() as usize;
                if self.opens_at(i, CLASS[usize::from(text[i])]) {
                    next = i;
                    break 'blocks;
                }
                b.candidates &= b.candidates - 1;
            }
            let cur = b.nxt;
            let nxt = block(b.base + 128);
            b = Block {
                base: b.base + 64,
                candidates: self.families.candidates(&cur, &nxt, b.last_word),
                last_word: cur.word >> 63 != 0,
                nxt,
            };
        }
        self.block = Some(b);
        self.opening = Cached { from: at, next };
        next
    }

    /// True if some alternative other than email and keyword may start a valid candidate at `i`
    /// (each condition is one the alternative's validator or pattern requires).
    #[inline(never)]
    fn opens_at(&self, i: usize, class: u8) -> bool {
        let f = self.families;
        let text = self.text;
        let b = text[i];
        if class & DASH != 0 {
            // A PEM block is masked whole wherever it starts.
            return f.pem && text[i..].starts_with(PEM_OPEN);
        }
        // Every other alternative rejects a candidate glued to a word on its left (the caller
        // checked the byte before).  Most calls are word starts in prose: each branch rejects
        // them on the byte after.
        let prev = if i == 0 { b' ' } else { text[i - 1] };
        let at = |k: usize| text.get(i + k).copied().unwrap_or(0);
        let n1 = at(1);
        match b {
            b'0'..=b'9' => {
                if !token_left_ok(text, i) {
                    return f.ipv6 && ipv6_group(text, i);
                }
                // The shapes of [`shape_ok`], sharing one look at the digit run.
                let run = if n1.is_ascii_digit() {
                    (2..4).take_while(|&k| at(k).is_ascii_digit()).count() + 2
                } else {
                    1
                };
                let next = at(run);
                (run == 3 && f.ssn && ssn_shape(&text[i..]))
                    || (f.ipv4 && run <= 3 && next == b'.' && ipv4_shape(&text[i..]))
                    || (f.card && run == 4 && card_shape(text, i) && card_checksum_ok(text, i))
                    || (f.phone && phone::may_start_at_digit(text, i))
                    || (f.ipv6 && ipv6_group(text, i))
            }
            b'a'..=b'z' => {
                (f.tokens
                    && matches!(
                        (b, n1),
                        (b'e', b'y') | (b'g', b'h') | (b'x', b'o') | (b'r' | b's', b'k')
                    )
                    && prev != b'-'
                    && token_prefix(&text[i..]))
                    || (f.ipv6
                        && b <= b'f'
                        && (n1.is_ascii_hexdigit() || n1 == b':')
                        && ipv6_group(text, i))
            }
            b'A'..=b'Z' => {
                (f.iban
                    && n1.is_ascii_uppercase()
                    && at(2).is_ascii_digit()
                    && at(3).is_ascii_digit()
                    && token_left_ok(text, i))
                    || (f.tokens && b == b'A' && prev != b'-' && token_prefix(&text[i..]))
                    || (f.ipv6
                        && b <= b'F'
                        && (n1.is_ascii_hexdigit() || n1 == b':')
                        && ipv6_group(text, i))
            }
            b'+' => {
                f.phone
                    && prev != b'+'
                    && (matches!(n1, b'1'..=b'9') || (n1 == b' ' && matches!(at(2), b'1'..=b'9')))
            }
            b'(' => f.phone && phone::may_start_at_paren(text, i),
            b':' => f.ipv6 && n1 == b':' && !matches!(prev, b':' | b'.'),
            _ => false,
        }
    }
}

/// An IPv6 opening with a hex group at `i`: a `:` within four hex digits, where an address may
/// start (see `ip::v6_left_ok`).
fn ipv6_group(text: &[u8], i: usize) -> bool {
    if !ip::v6_left_ok(text, i) {
        return false;
    }
    let n = text[i..]
        .iter()
        .take(5)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if !((1..=4).contains(&n) && text.get(i + n) == Some(&b':')) {
        return false;
    }
    // Both forms need seven colons or a `::` among the hex groups (times like 09:45:00 and
    // MAC addresses have neither).
    let mut colons = 0;
    let mut last = 0;
    for &b in text[i..].iter().take(45) {
        if b == b':' {
            if last == b':' {
                return true;
            }
            colons += 1;
        } else if !b.is_ascii_hexdigit() {
            break;
        }
        last = b;
    }
    colons >= 7
}

/// A cheap necessary condition for a candidate of `kind` at `start` (its pattern's opening), so
/// that neither the prefilter nor the retries after a rejected candidate run an automaton
/// search that cannot match.  Clean text is full of digit runs (dates, times, ids, amounts)
/// that open no number alternative at all.
pub fn shape_ok(kind: Kind, text: &[u8], start: usize) -> bool {
    let at = |k: usize| text.get(start + k).copied().unwrap_or(0);
    let digits = |from: usize, max: usize| {
        (from..from + max)
            .take_while(|&k| at(k).is_ascii_digit())
            .count()
    };
    match kind {
        Kind::Card => card_shape(text, start),
        Kind::Ssn => digits(0, 3) == 3 && matches!(at(3), b'-' | b' '),
        Kind::Phone => match at(0) {
            b'+' => true,
            b'(' => phone::may_start_at_paren(text, start),
            _ => phone::may_start_at_digit(text, start),
        },
        Kind::Ipv4 => {
            let n = digits(0, 4);
            (1..=3).contains(&n) && at(n) == b'.'
        }
        Kind::Ipv6 => {
            if at(0) == b':' {
                return at(1) == b':';
            }
            ipv6_group(text, start)
        }
        _ => true,
    }
}

/// A card that validates starts with 12 bare digits or with a group of four and a separator
/// (see `card::digits_of`), and has at least 12 digits, separators of one byte or two spaces
/// between them (`[0-9](?:(?:[ \-]| {2})?[0-9]){11,18}`).
fn card_shape(text: &[u8], start: usize) -> bool {
    let at = |k: usize| text.get(start + k).copied().unwrap_or(0);
    let mut n = 0;
    let mut k = 0;
    while n < 12 {
        if at(k).is_ascii_digit() {
            n += 1;
            k += 1;
        } else if n == 4 || (n > 4 && k > n) {
            // A separator (`-`, one space or two): after the first group of four, or anywhere
            // once grouped.
            let width = if at(k) == b' ' && at(k + 1) == b' ' {
                2
            } else {
                1
            };
            if !(matches!(at(k), b' ' | b'-') && at(k + width).is_ascii_digit()) {
                return false;
            }
            k += width;
        } else {
            return false;
        }
    }
    true
}

/// True if some run of 12 to 19 leading digits of the card candidate at `start` (the digits the
/// greedy `[0-9](?:[ \-]?[0-9]){11,18}` takes) has a known issuer prefix and a valid Luhn sum:
/// every card `card::validate` accepts is such a prefix (the whole candidate, or the candidate
/// cut at a space).  Long ids, epoch milliseconds and random 16-digit numbers fail here.
fn card_checksum_ok(text: &[u8], start: usize) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut k = start;
    // Digit counts where the candidate may be cut: at each space, and at its end.
    let mut cuts = 0u32;
    while n < digits.len() {
        match text.get(k) {
            Some(&b) if b.is_ascii_digit() => {
                digits[n] = b;
                n += 1;
                k += 1;
            }
            Some(&b @ (b' ' | b'-')) if n > 0 => {
                let width = if b == b' ' && text.get(k + 1) == Some(&b' ') {
                    2
                } else {
                    1
                };
                if !text.get(k + width).is_some_and(u8::is_ascii_digit) {
                    break;
                }
                if b == b' ' {
                    cuts |= 1 << n;
                }
                k += width;
            }
            _ => break,
        }
    }
    cuts |= 1 << n;
    (12..=n).any(|len| {
        cuts & (1 << len) != 0 && card::iin_ok(&digits[..len]) && card::luhn_ok(&digits[..len])
    })
}

/// `ddd-dd-dddd` or `ddd dd dddd` (the SSN pattern).
fn ssn_shape(s: &[u8]) -> bool {
    let d = |k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    let sep = s.get(3).copied();
    matches!(sep, Some(b'-' | b' '))
        && s.get(6).copied() == sep
        && [0, 1, 2, 4, 5, 7, 8, 9, 10].into_iter().all(d)
}

/// Four dot-separated groups of one to three digits (the IPv4 pattern).
fn ipv4_shape(s: &[u8]) -> bool {
    let mut k = 0;
    for part in 0..4 {
        if part > 0 {
            if s.get(k) != Some(&b'.') {
                return false;
            }
            k += 1;
        }
        let n = s[k.min(s.len())..]
            .iter()
            .take(3)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n == 0 {
            return false;
        }
        k += n;
    }
    true
}

/// True if `s` starts like one of the provider tokens (a superset of the token alternatives).
fn token_prefix(s: &[u8]) -> bool {
    match s.first() {
        Some(b'A') => {
            let t = s.get(1..4).unwrap_or(b"");
            matches!(
                t,
                b"KIA" | b"SIA" | b"IDA" | b"ROA" | b"GPA" | b"NPA" | b"NVA" | b"IPA" | b"Iza"
            )
        }
        Some(b'e') => s.starts_with(b"eyJ"),
        Some(b'g') => s.starts_with(b"gh"),
        Some(b'x') => s.starts_with(b"xox"),
        Some(b'r' | b's') => s.get(1..7) == Some(b"k_live"),
        _ => false,
    }
}
