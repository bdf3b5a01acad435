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

/// A window of block masks: 128 bits (`cur` then `nxt`) or, when `nxt` is empty, 64.
trait Window:
    Copy
    + Eq
    + From<bool>
    + std::ops::BitAnd<Output = Self>
    + std::ops::BitOr<Output = Self>
    + std::ops::BitOrAssign
    + std::ops::Not<Output = Self>
    + std::ops::Shl<u32, Output = Self>
    + std::ops::Shr<u32, Output = Self>
{
    const ZERO: Self;
    /// The window over `cur`'s mask and `nxt`'s (ignored, all zero, in a 64-bit window).
    fn window(cur: u64, nxt: u64) -> Self;
    /// The bits of `cur`.
    fn low(self) -> u64;
}

impl Window for u64 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn window(cur: u64, nxt: u64) -> Self {
        debug_assert_eq!(nxt, 0);
        cur
    }
    #[inline(always)]
    fn low(self) -> u64 {
        self
    }
}

impl Window for u128 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn window(cur: u64, nxt: u64) -> Self {
        u128::from(cur) | u128::from(nxt) << 64
    }
    #[inline(always)]
    #[allow(clippy::cast_possible_truncation)] // the low 64 bits of the window are `cur`'s
    fn low(self) -> u64 {
        self as u64
    }
}

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
    ///
    /// When `nxt` is empty (the value ends in `cur`: every short value, and the last block of
    /// a long one) the window's high half is all zeros, and the same conditions evaluated on
    /// 64-bit words give exactly its low half: a right shift brings in zeros either way, and
    /// no negated mask is shifted again (see [`Families::window_candidates`]).  Half the work.
    #[inline]
    fn candidates(&self, cur: &Masks, nxt: &Masks, prev_word: bool) -> u64 {
        if *nxt == Masks::default() {
            self.window_candidates::<u64>(cur, nxt, prev_word)
        } else {
            self.window_candidates::<u128>(cur, nxt, prev_word)
        }
    }

    /// [`Families::candidates`] computed on windows of `W` bits.
    ///
    /// The masks are read as one window (`cur` then `nxt`; 128 bits, or 64 when `nxt` is empty),
    /// so `m >> k` is "the byte `k` positions on" for every byte of `cur` (no look-ahead here
    /// reaches past the window).
    /// Bytes before `cur` shift in as zeros, so an exclusion that needs a byte before the
    /// block never applies there: the set stays a superset.  Each condition below is one that
    /// `opens_at` (or the shape check it calls) requires, read bit-parallel; clean text is full
    /// of dates, times, versions, amounts and ids, and every opening rejected here is one
    /// `opens_at` call (a few hundred instructions) saved.  Negated masks (`!x`) are only ever
    /// ANDed, never shifted right afterwards: that is what makes the 64-bit window exact.
    fn window_candidates<W: Window>(&self, cur: &Masks, nxt: &Masks, prev_word: bool) -> u64 {
        let w = |f: fn(&Masks) -> u64| W::window(f(cur), f(nxt));
        let (word, digit, hex) = (w(|m| m.word), w(|m| m.digit), w(|m| m.hex));
        let (colon, dot, space, dash) =
            (w(|m| m.colon), w(|m| m.dot), w(|m| m.space), w(|m| m.dash));
        let slash = w(|m| m.slash);
        let prev_word = W::from(prev_word);
        let after_non_word = !(word << 1 | prev_word);
        let paren = w(|m| m.paren);
        // Prose (names, words): every alternative but the provider tokens opens on a digit,
        // a `:` (IPv6), a `+` or `(` (phones) or a `-` (PEM), and each term below is ANDed
        // with one of those masks.  Without any of them in the window only tokens can open.
        if digit | colon | dash | paren | w(|m| m.plus) == W::ZERO {
            let tokens = if self.tokens {
                w(|m| m.token_first) & w(|m| m.token_second | m.aws_second) >> 1
            } else {
                W::ZERO
            };
            return (tokens & after_non_word).low();
        }
        // `-`, `.` or `/` glued to a word on the left (`ORD-2024`, `v1.2`, `a/1`): nothing but
        // an IPv6 group starts a number there (`token_left_ok`).
        let glued = (dash | dot | slash) << 1 & (word << 2 | prev_word << 1);
        let d = digit & !glued;
        let mut opens = W::ZERO;
        // Digit runs: `dN` has bit i when the N bytes from i are all digits.
        let d2 = digit & digit >> 1;
        let d4 = d2 & d2 >> 2;
        let d8 = d4 & d4 >> 4;
        if self.card {
            // Twelve digits, or four and a separator of one byte or two spaces and a digit
            // (`card_shape`).
            let grouped = (dash | space) >> 4 & digit >> 5 | space >> 4 & space >> 5 & digit >> 6;
            opens |= d & d4 & (d8 & d4 >> 8 | grouped);
        }
        if self.ssn {
            // `ddd-dd-dddd` or `ddd dd dddd` (`ssn_shape`).
            let seps = dash >> 3 & dash >> 6 | space >> 3 & space >> 6;
            opens |= d & d2 & digit >> 2 & seps & d2 >> 4 & d4 >> 7;
        }
        if self.ipv4 {
            // Four dot-separated groups of one to three digits (`ipv4_shape`): the first
            // group, its dot and a digit.
            let g1 = digit & dot >> 1 & digit >> 2;
            let g2 = d2 & dot >> 2 & digit >> 3;
            let g3 = d2 & digit >> 2 & dot >> 3 & digit >> 4;
            opens |= d & (g1 | g2 | g3);
        }
        if self.phone {
            // The first digit group of a number (`phone::may_start_at_digit`): a separator
            // and the next group after one to three digits (`1-`, `44 `, `415-`), after five
            // and a blank (`98765 43210`), after a run that starts with `0` (`030 `, `0049 `);
            // or ten or eleven digits alone (`0312345678`, `13812345678`).
            let grp = digit | paren;
            // Bit j: a separator at j followed by the next group (`sep_then_group`).
            let sep = space & (grp >> 1 | space >> 1 & grp >> 2)
                | (dash | slash | paren) & grp >> 1
                | dot & digit >> 1;
            let d1 = digit >> 1;
            let ten = d8 & d2 >> 8;
            let twelve = d8 & d4 >> 8;
            let first_group = !d1 & sep >> 1
                | d1 & !(digit >> 2) & (space | dash) >> 2 & sep >> 2
                | d2 & digit >> 2 & !(digit >> 3) & sep >> 3
                | d4 & digit >> 4 & space >> 5 & sep >> 5
                | w(|m| m.zero) & d1 & !(colon >> 2)
                | ten & digit >> 10 & !twelve;
            // Not the minutes or seconds of a time (`08:34:00`), nor a group right after a
            // group of three digits and a blank (`4480 0843`, `phone::left_ok`).
            let in_time = colon << 1 & digit << 2;
            let group_before = space << 1 & (digit & d2 >> 1) << 4;
            opens |= d & first_group & !in_time & !group_before;
        }
        if self.ipv6 {
            let group = colon >> 1
                | hex >> 1 & (colon >> 2 | hex >> 2 & (colon >> 3 | hex >> 3 & colon >> 4));
            // Both forms need a `::` or seven colons in the run of hex digits and colons from
            // the opening (`ipv6_group`): seven colons take at least 14 bytes.  Times and
            // MAC addresses fail here; a `::` anywhere in the window lets every group through.
            let hc = hex | colon;
            let h2 = hc & hc >> 1;
            let h4 = h2 & h2 >> 2;
            let h8 = h4 & h4 >> 4;
            let dc = if colon & colon >> 1 == W::ZERO {
                W::ZERO
            } else {
                !W::ZERO
            };
            let long = h8 & h8 >> 6;
            // Not right after a `.` (inside a version), nor after a `:` that follows a hex
            // digit or another `:` (inside a time, a MAC address or an address); after a key's
            // `:` (`ip:2001:...`) it may.
            let after_joiner = dot << 1 | colon << 1 & hc << 2;
            opens |= (hex & group & (dc | long) | colon & colon >> 1) & !after_joiner;
        }
        if self.phone {
            opens |= w(|m| m.plus) & (digit | space) >> 1 | paren & digit >> 1;
        }
        if self.tokens {
            opens |=
                w(|m| m.token_first) & w(|m| m.token_second | m.aws_second) >> 1 & !(dash << 1);
        }
        if self.iban {
            let upper = w(|m| m.upper);
            opens |= upper & upper >> 1 & d2 >> 2 & !glued;
        }
        let pem = if self.pem { dash & dash >> 1 } else { W::ZERO };
        // The low half is `cur`'s.
        (opens & after_non_word | pem).low()
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

    /// True if no candidate can start anywhere in the value, a value of at most 64 bytes (one
    /// block): no opening in its block masks, no `@` when emails are detected, no `:` or `=`
    /// when keyword secrets are.  Only when [`Starts::next`] from 0 finds nothing (a `:` with
    /// no keyword before it is left to the streams), with one byte search instead of the
    /// streams' set-up.  The block classified here is the one `next` starts from.
    pub fn nothing_opens(&mut self) -> bool {
        let text = self.text;
        debug_assert!(text.len() <= 64);
        let cur = classify(text);
        let nxt = Masks::default();
        let candidates = self.families.candidates(&cur, &nxt, false);
        self.block = Some(Block {
            base: 0,
            candidates,
            last_word: cur.word >> 63 != 0,
            nxt,
        });
        let (email, keywords) = (self.families.email, self.families.keywords);
        let marked = match (email, keywords) {
            (true, true) => memchr::memchr3(b'@', b':', b'=', text).is_some(),
            (true, false) => memchr::memchr(b'@', text).is_some(),
            (false, true) => memchr::memchr2(b':', b'=', text).is_some(),
            (false, false) => false,
        };
        if !marked {
            // Neither stream has anything in this value: settled now, not searched again.
            self.keyword = Cached {
                from: 0,
                next: usize::MAX,
            };
            self.email = EmailStream {
                at_sign: usize::MAX,
                run_start: 0,
                dead: false,
                started: true,
            };
        }
        candidates == 0 && !marked
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
        'blocks: loop {
            while b.candidates != 0 {
                let i = b.base + b.candidates.trailing_zeros() as usize;
                if self.opens_at(i, CLASS[usize::from(text[i])]) {
                    next = i;
                    break 'blocks;
                }
                b.candidates &= b.candidates - 1;
            }
            if b.base + 64 >= text.len() {
                break; // the value ends in this block
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every position where `opens_at` accepts an opening, and where the scan consults it
    /// (after a non-word byte, or at a `-`), is one the block masks propose: the masks are a
    /// superset, whatever block boundary the opening sits at.
    fn masks_cover_openings(kinds: &[Kind], text: &[u8]) -> Result<(), TestCaseError> {
        let families = Families::new(kinds);
        let mut starts = Starts::new(&families, text);
        let mut proposed = vec![false; text.len()];
        let mut at = 0;
        while at < text.len() {
            let p = starts.next_opening(at);
            if p >= text.len() {
                break;
            }
            proposed[p] = true;
            at = p + 1;
        }
        for (i, &b) in text.iter().enumerate() {
            let class = CLASS[usize::from(b)];
            let consulted =
                i == 0 || CLASS[usize::from(text[i - 1])] & WORD == 0 || class & DASH != 0;
            if consulted && starts.opens_at(i, class) {
                prop_assert!(
                    proposed[i],
                    "opening at {} not proposed in {:?}",
                    i,
                    String::from_utf8_lossy(text)
                );
            }
        }
        Ok(())
    }

    /// Text dense in digits, separators and hex letters (where the openings are), long enough
    /// to cross block boundaries.
    fn number_text() -> impl Strategy<Value = Vec<u8>> {
        let frag = prop_oneof![
            "[0-9]{1,14}".prop_map(String::into_bytes),
            "[0-9a-fA-F]{1,5}".prop_map(String::into_bytes),
            "[ .:+()/_=-]{1,3}".prop_map(String::into_bytes),
            "[0-9]{1,3}(\\.[0-9]{1,4}){1,4}".prop_map(String::into_bytes),
            "[0-9a-f]{1,4}(:[0-9a-f]{0,4}){1,8}".prop_map(String::into_bytes),
            "[0-9]{4}([ -]{1,2}[0-9]{2,6}){1,4}".prop_map(String::into_bytes),
            "[+(]?[0-9]{1,5}\\)?([ ./-]{0,2}\\(?[0-9]{1,6}\\)?){0,5}".prop_map(String::into_bytes),
            "(eyJ|gh|xox|sk_live|rk_live|AKIA|ASIA|GB82|DE89|-----BEGIN)[A-Za-z0-9_]{0,8}"
                .prop_map(String::into_bytes),
            "[a-zA-Z]{1,6}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..6),
        ];
        proptest::collection::vec(frag, 0..40).prop_map(|v| v.concat())
    }

    /// The 64-bit window used when the next block is empty gives exactly the low half of the
    /// 128-bit window, for every family subset and any bytes (the whole value in one block).
    fn narrow_window_is_exact(kinds: &[Kind], text: &[u8], prev_word: bool) {
        let f = Families::new(kinds);
        let cur = classify(&text[..text.len().min(64)]);
        let nxt = Masks::default();
        assert_eq!(
            f.window_candidates::<u64>(&cur, &nxt, prev_word),
            f.window_candidates::<u128>(&cur, &nxt, prev_word),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn narrow_window_equals_wide(v in number_text(), prev_word in any::<bool>()) {
            for kinds in [
                &Kind::ALL[..],
                &[Kind::Phone][..],
                &[Kind::Ipv6, Kind::Ipv4][..],
                &[Kind::Card, Kind::Ssn, Kind::Iban, Kind::Token][..],
            ] {
                narrow_window_is_exact(kinds, &v, prev_word);
            }
        }

        /// The short-value reject never skips a value the position streams would propose a
        /// start in (it may let through one they then dismiss: the masks are a superset).
        #[test]
        fn nothing_opens_only_without_starts(v in number_text(), kinds in 0usize..4) {
            let sets: [&[Kind]; 4] = [
                &Kind::ALL,
                &[Kind::Email, Kind::Phone],
                &[Kind::KeywordSecret, Kind::Ipv6],
                &[Kind::Card, Kind::Token, Kind::PemBlock],
            ];
            let f = Families::new(sets[kinds]);
            for end in [v.len().min(64), v.len().min(12), v.len().min(1)] {
                let text = &v[..end];
                let mut primed = Starts::new(&f, text);
                if primed.nothing_opens() {
                    prop_assert!(
                        Starts::new(&f, text).next(0).is_none(),
                        "{:?}", String::from_utf8_lossy(text)
                    );
                }
                // the block it classified is the one a fresh stream starts from
                let mut fresh = Starts::new(&f, text);
                let mut at = 0;
                while at <= text.len() {
                    let (p, q) = (primed.next(at), fresh.next(at));
                    prop_assert_eq!(p, q);
                    match p {
                        Some(p) => at = p + 1,
                        None => break,
                    }
                }
            }
        }

        #[test]
        fn narrow_window_equals_wide_any_bytes(
            v in proptest::collection::vec(any::<u8>(), 0..64), prev_word in any::<bool>()
        ) {
            narrow_window_is_exact(&Kind::ALL, &v, prev_word);
        }

        #[test]
        fn block_masks_cover_every_opening(v in number_text()) {
            let all: Vec<Kind> = Kind::ALL.to_vec();
            masks_cover_openings(&all, &v)?;
            masks_cover_openings(&[Kind::Phone], &v)?;
            masks_cover_openings(&[Kind::Ipv6, Kind::Ipv4], &v)?;
            masks_cover_openings(&[Kind::Card, Kind::Ssn, Kind::Iban, Kind::Token], &v)?;
        }

        #[test]
        fn block_masks_cover_openings_in_any_bytes(
            v in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            masks_cover_openings(&Kind::ALL, &v)?;
        }
    }
}
