//! The combined candidate automaton for the built-in detectors.
//!
//! All candidate patterns are compiled into ONE multi-pattern regex (`regex-automata`'s meta
//! engine, the engine behind `regex::bytes`): one lazy-DFA pass over the value finds the leftmost
//! candidate, and the pattern id that comes with the match tells which alternative matched, so
//! the hot path needs no capture groups.  The same automaton answers anchored per-pattern
//! searches when a candidate fails validation and another alternative may start at the same
//! byte.  Patterns are ASCII and byte-oriented (Unicode off); validation lives in [`validate`].
//!
//! The scan runs the automaton anchored, only where [`super::prefilter`] finds a possible start;
//! EMAIL is searched on its own there ([`build_forward`] builds the rest as a bare forward DFA).

use regex_automata::hybrid;
use regex_automata::meta::Regex;
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::syntax;
use regex_automata::MatchKind;

use super::entity::Builtin;
use super::validate::{card, email, iban, ip, phone, secret, ssn, Range};

/// Memory the lazy DFA may use per search cache (per thread).  The combined automaton needs
/// well under 1 MiB on real text; the cap keeps adversarial input from growing it further
/// (the cache is cleared and rebuilt instead).
pub const LAZY_DFA_CACHE: usize = 4 << 20;

/// Size limit for an ahead-of-time DFA: the combined pattern is far too large for one, so the
/// meta engine uses the lazy DFA (plus a one-pass/backtracking engine for short haystacks).
pub const FULL_DFA_LIMIT: usize = 64 << 10;

/// One alternative of the combined automaton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PemBlock,
    Token,
    KeywordSecret,
    Email,
    Iban,
    Card,
    Ssn,
    Ipv6,
    Ipv4,
    Phone,
}

impl Kind {
    /// Priority order: when two alternatives match at the same start the earlier one wins.
    /// EMAIL comes last on purpose: its local part (`[A-Za-z0-9._%+-]*`) stays alive across
    /// long runs of digits and dots, and in a leftmost-first automaton a live higher-priority
    /// alternative makes every search scan to the end of the run.  For the same reason the
    /// local part must start with a letter or digit: a thread started at a `.` would outrank
    /// (leftmost) every candidate after it until the run ends.  [`super::scan`] still lets
    /// an email that starts where another candidate starts win when it is longer.
    ///
    /// PHONE's pattern only marks where a number may start (its validator reads the number), so
    /// it comes after every alternative with a real pattern: a card, an SSN or an address that
    /// validates at the same start wins, and one that does not is retried as a phone.
    pub const ALL: [Kind; 10] = [
        Kind::PemBlock,
        Kind::Token,
        Kind::KeywordSecret,
        Kind::Iban,
        Kind::Card,
        Kind::Ssn,
        Kind::Ipv6,
        Kind::Ipv4,
        Kind::Phone,
        Kind::Email,
    ];

    pub fn entity(self) -> Builtin {
        match self {
            Kind::PemBlock | Kind::Token | Kind::KeywordSecret => Builtin::Secret,
            Kind::Email => Builtin::Email,
            Kind::Iban => Builtin::Iban,
            Kind::Card => Builtin::CreditCard,
            Kind::Phone => Builtin::Phone,
            Kind::Ssn => Builtin::UsSsn,
            Kind::Ipv6 | Kind::Ipv4 => Builtin::IpAddress,
        }
    }

    pub fn pattern(self) -> &'static str {
        match self {
            // The header only: the validator takes the key material after it (to its footer, or
            // as far as the material goes when the footer is missing).
            Kind::PemBlock => r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----",
            Kind::Token => concat!(
                r"(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}",
                r"|eyJ[A-Za-z0-9_\-]{7,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
                r"|gh[opsur]_[A-Za-z0-9]{36}",
                r"|github_pat_[A-Za-z0-9_]{22,}",
                r"|xox[bpars]-[A-Za-z0-9\-]{10,}",
                r"|[rs]k_live_[A-Za-z0-9]{16,}",
                r"|AIza[0-9A-Za-z_\-]{35}"
            ),
            Kind::KeywordSecret => concat!(
                r"(?i:password|passwd|pwd|secret|api[_\-]?key|access[_\-]?key|token)",
                r#"["']?[ \t]*(?::=|:|=)[ \t]*["']?[A-Za-z0-9+/=_\-.~!@#$%^*]{20,}"#
            ),
            // The local part: RFC 5322 atext and dots, except `=` and `/`, which in text far more
            // often join a key or a path to the address (`user=ann@...`); the domain: ASCII or
            // UTF-8 labels (the validator reads it), then an alphabetic or punycode TLD.
            Kind::Email => concat!(
                r"[A-Za-z0-9][A-Za-z0-9._%+\-'!#$&*?^`{|}~]*@",
                r"[A-Za-z0-9\-\x80-\xFF]+(?:\.[A-Za-z0-9\-\x80-\xFF]+)*",
                r"\.(?:[A-Za-z]{2,}|xn--[A-Za-z0-9\-]{2,})"
            ),
            Kind::Iban => r"[A-Z]{2}[0-9]{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,3})?",
            Kind::Card => r"[0-9](?:(?:[ \-]| {2})?[0-9]){11,18}",
            // Where a number may start; [`phone::validate`] reads it.
            Kind::Phone => r"\+ ?[0-9]|\(?[0-9]",
            Kind::Ssn => r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}",
            // Eight full groups, or groups around one `::` (times like 09:45:00 never match),
            // optionally ending in a dotted IPv4 part (`::ffff:192.0.2.1`).
            Kind::Ipv6 => concat!(
                r"(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
                r"|(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?::",
                r"(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?(?:\.[0-9]{1,3}){0,3}"
            ),
            Kind::Ipv4 => r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",
        }
    }

    /// True if a match of this alternative can start with `b` (prunes the anchored retries).
    pub fn may_start(self, b: u8) -> bool {
        match self {
            Kind::PemBlock => b == b'-',
            Kind::Token => matches!(b, b'A' | b'e' | b'g' | b'x' | b'r' | b's'),
            Kind::KeywordSecret => matches!(b.to_ascii_lowercase(), b'p' | b's' | b'a' | b't'),
            Kind::Email => {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
            }
            Kind::Iban => b.is_ascii_uppercase(),
            Kind::Card | Kind::Ssn | Kind::Ipv4 => b.is_ascii_digit(),
            Kind::Phone => b.is_ascii_digit() || b == b'+' || b == b'(',
            Kind::Ipv6 => b.is_ascii_hexdigit() || b == b':',
        }
    }

    /// Validates a candidate of this alternative: the span to mask, or `None`.
    pub fn validate(self, text: &[u8], r: Range) -> Option<Range> {
        match self {
            Kind::PemBlock => secret::validate_pem(text, r),
            Kind::Token => secret::validate_token(text, r),
            Kind::KeywordSecret => secret::validate_keyword(text, r),
            Kind::Email => email::validate(text, r),
            Kind::Iban => iban::validate(text, r),
            Kind::Card => card::validate(text, r),
            Kind::Phone => phone::validate(text, r),
            Kind::Ssn => ssn::validate(text, r),
            Kind::Ipv6 => ip::validate_v6(text, r),
            Kind::Ipv4 => ip::validate_v4(text, r),
        }
    }
}

/// Builds the combined automaton over `kinds` (pattern id i is `kinds[i]`).
pub fn build(kinds: &[Kind]) -> Regex {
    let patterns: Vec<&str> = kinds.iter().map(|k| k.pattern()).collect();
    Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(
            Regex::config()
                .which_captures(WhichCaptures::Implicit)
                .hybrid_cache_capacity(LAZY_DFA_CACHE)
                .dfa_size_limit(Some(FULL_DFA_LIMIT)),
        )
        .build_many(&patterns)
        .expect("built-in candidate patterns compile")
}

/// The forward lazy DFA alone over `kinds`, for anchored searches at prefilter positions: an
/// anchored leftmost-first match needs only its end (the start is the anchor), so the meta
/// engine's strategy layers, reverse searches and capture engines are pure overhead there.
pub fn build_forward(kinds: &[Kind]) -> hybrid::dfa::DFA {
    let patterns: Vec<&str> = kinds.iter().map(|k| k.pattern()).collect();
    hybrid::dfa::DFA::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(
            thompson::Config::new()
                .utf8(false)
                .which_captures(WhichCaptures::None),
        )
        .configure(
            hybrid::dfa::DFA::config()
                .match_kind(MatchKind::LeftmostFirst)
                .cache_capacity(LAZY_DFA_CACHE)
                .skip_cache_capacity_check(true),
        )
        .build_many(&patterns)
        .expect("built-in candidate patterns compile")
}
