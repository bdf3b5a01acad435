//! The literal-normalised shape of a SQL text, computed natively (issue 15 item 2).
//!
//! Two texts have one shape key when PostgreSQL's scanner makes the same tokens of them except
//! for the values of constants: the key is every token's kind with every non-constant token and
//! all text between tokens (whitespace, comments) verbatim, constants by kind only.  It is the
//! policy engine's literal-normalised key (`veilgate.policy.literals`, built from libpg_query's
//! scanner) made finer: that key is the text with constants as placeholders plus the token
//! kinds, which this one determines.
//!
//! - [`scan`]: the port of PostgreSQL's scanner
//! - [`Shaper::key`]: the key, or None where the policy engine would not share a decision
//!   between such texts: text that is not UTF-8, holds a NUL, does not scan, or has a `U&''`
//!   string whose escapes the parser rejects (the grammar check the engine runs on a shape hit
//!   would fail; no other value of a constant that the parse tree keeps as a value can make
//!   the grammar fail).

pub mod scan;

pub use scan::{scan, Kind, ScanError, Token};

use scan::{continuation, is_surrogate_first, is_surrogate_second, push_codepoint, valid_text};

/// Separates the tokens of a key (NUL: never in a keyed text).
const SEP: u8 = 0;

/// Reusable buffers for computing keys (no allocation per text in the steady state).
#[derive(Debug, Default)]
pub struct Shaper {
    tokens: Vec<Token>,
    value: Vec<u8>,
}

impl Shaper {
    pub fn new() -> Shaper {
        Shaper::default()
    }

    /// The tokens of the last successful [`Shaper::key`] or [`Shaper::tokens_of`].
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Scans `text` (None: not UTF-8, a NUL, or the scanner refuses it).
    pub fn tokens_of(&mut self, text: &[u8]) -> Option<&[Token]> {
        if memchr::memchr(0, text).is_some() || std::str::from_utf8(text).is_err() {
            return None;
        }
        scan(text, &mut self.tokens).ok()?;
        Some(&self.tokens)
    }

    /// Writes the shape key of `text` into `out` (cleared first); false when it has none.
    pub fn key(&mut self, text: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if self.tokens_of(text).is_none() {
            return false;
        }
        out.reserve(text.len() + 2 * self.tokens.len() + 1);
        let mut pos = 0;
        for t in &self.tokens {
            let (start, end) = (t.start as usize, t.end as usize);
            out.extend_from_slice(&text[pos..start]);
            out.push(SEP);
            out.push(t.kind as u8);
            if t.kind.is_constant() {
                if t.kind == Kind::Usconst && !usconst_valid(&text[start..end], &mut self.value) {
                    out.clear();
                    return false;
                }
            } else {
                out.extend_from_slice(&text[start..end]);
            }
            pos = end;
        }
        out.extend_from_slice(&text[pos..]);
        true
    }
}

/// Whether the parser accepts a `U&'...'` token (`str_udeescape` with the default escape
/// character `\`): every escape is `\\`, `\XXXX` or `\+XXXXXX` naming a valid code point,
/// surrogates come in pairs, and the result is valid text.  `value` is scratch space.
fn usconst_valid(token: &[u8], value: &mut Vec<u8>) -> bool {
    // the string's value: U&' prefix off, '' -> ', continuations joined
    value.clear();
    let mut i = 3;
    while i < token.len() {
        let b = token[i];
        if b == b'\'' {
            if token.get(i + 1) == Some(&b'\'') {
                value.push(b'\'');
                i += 2;
                continue;
            }
            // a closing quote: a continuation (whitespace with a newline, then a quote)?
            match continuation(token, i + 1) {
                Some(next) => i = next,
                None => break,
            }
            continue;
        }
        value.push(b);
        i += 1;
    }
    udeescape_ok(value)
}

fn hex4(v: &[u8]) -> Option<u32> {
    if v.len() < 4 || !v[..4].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(
        v[..4]
            .iter()
            .fold(0u32, |a, &d| a * 16 + (d as char).to_digit(16).unwrap_or(0)),
    )
}

fn udeescape_ok(v: &[u8]) -> bool {
    let mut out: Vec<u8> = Vec::with_capacity(v.len());
    let mut pair_first: u32 = 0;
    let mut i = 0;
    while i < v.len() {
        if v[i] != b'\\' {
            if pair_first != 0 {
                return false;
            }
            out.push(v[i]);
            i += 1;
            continue;
        }
        let rest = &v[i + 1..];
        let (cp, n) = if rest.first() == Some(&b'\\') {
            if pair_first != 0 {
                return false;
            }
            out.push(b'\\');
            i += 2;
            continue;
        } else if let Some(cp) = hex4(rest) {
            (cp, 5)
        } else if rest.first() == Some(&b'+')
            && rest.len() >= 7
            && rest[1..7].iter().all(u8::is_ascii_hexdigit)
        {
            let hi = hex4(&rest[1..5]).unwrap_or(0);
            let lo = hex4(&[rest[5], rest[6], b'0', b'0']).unwrap_or(0) >> 8;
            ((hi << 8) | lo, 8)
        } else {
            return false; // invalid Unicode escape
        };
        if cp == 0 || cp > 0x10FFFF {
            return false; // invalid Unicode escape value
        }
        let cp = if pair_first != 0 {
            if !is_surrogate_second(cp) {
                return false;
            }
            let full = 0x10000 + ((pair_first - 0xD800) << 10) + (cp - 0xDC00);
            pair_first = 0;
            full
        } else if is_surrogate_second(cp) {
            return false;
        } else {
            cp
        };
        if is_surrogate_first(cp) {
            pair_first = cp;
        } else if push_codepoint(cp, &mut out).is_none() {
            return false;
        }
        i += n;
    }
    pair_first == 0 && valid_text(&out)
}

#[cfg(test)]
mod tests;
