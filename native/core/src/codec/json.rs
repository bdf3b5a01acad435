//! json and jsonb.  Both are JSON text in the text format; in the binary format json is the
//! text and jsonb is a version byte (1) then the text.
//!
//! A content scan masks the text through [`ValueMask::mask_json`] (today: as text; a
//! JSON-aware masker plugs in there); a column rule's `replace` writes its constant (or tag) as
//! a JSON string, `redact` the empty JSON string, `partial` and `hash` work on the text.
//! Whatever masked it, the result must be valid JSON ([`is_json`]): if not (a span replaced
//! inside a number, a constant with a quote...), the whole value becomes the JSON string
//! `"<MASKED>"`.
//!
//! [`ValueMask::mask_json`]: crate::mask::ValueMask::mask_json

use super::{invalid, Cx, Format};
use crate::mask::json::json_string;
use crate::mask::{Operator, Outcome};

/// The jsonb binary format version the server sends.
const JSONB_VERSION: u8 = 1;

/// What a masked value that is no longer JSON becomes.
pub const REDACTED: &[u8] = b"\"<MASKED>\"";

pub(super) fn mask(
    jsonb: bool,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let text = if jsonb && fmt == Format::Binary {
        match value.split_first() {
            Some((&JSONB_VERSION, text)) => {
                out.push(JSONB_VERSION);
                text
            }
            _ => return invalid(cx),
        }
    } else {
        value
    };
    let at = out.len();
    let mask = cx.mask;
    let outcome = match mask.whole() {
        Some(f) => {
            cx.tally.add(f.entity, 1);
            match f.operator {
                Operator::Null => return Outcome::Null,
                Operator::Replace(constant) => {
                    json_string(constant.as_deref().unwrap_or(f.tag), out);
                    Outcome::Written
                }
                Operator::Redact => {
                    out.extend_from_slice(b"\"\"");
                    Outcome::Written
                }
                op => {
                    if op.apply(text, f.tag, out) {
                        Outcome::Written
                    } else {
                        return Outcome::Null;
                    }
                }
            }
        }
        None => mask.mask_json(text, out, cx.tally),
    };
    if outcome != Outcome::Written {
        return outcome;
    }
    let mut stack = cx.scratch.take();
    let valid = is_json(&out[at..], &mut stack);
    cx.scratch.put(stack);
    if !valid {
        out.truncate(at);
        out.extend_from_slice(REDACTED);
    }
    Outcome::Written
}

pub(super) fn transcode(jsonb: bool, from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let text = match (jsonb, from) {
        (true, Format::Binary) => match value.split_first() {
            Some((&JSONB_VERSION, text)) => text,
            _ => return false,
        },
        _ => value,
    };
    if !is_json(text, &mut Vec::new()) {
        return false;
    }
    if jsonb && from == Format::Text {
        out.push(JSONB_VERSION);
    }
    out.extend_from_slice(text);
    true
}

/// Whether `text` is one JSON value (RFC 8259, surrounding whitespace allowed), checked
/// without recursion (`stack` is working space: container kinds, one byte per level).
pub fn is_json(text: &[u8], stack: &mut Vec<u8>) -> bool {
    stack.clear();
    let mut p = Parser { s: text, i: 0 };
    // After a value: what may come next depends on the innermost container.
    loop {
        p.ws();
        // A value is expected here.
        match p.peek() {
            Some(b'{') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b'}') {
                    p.i += 1;
                } else {
                    stack.push(b'{');
                    if !p.key() {
                        return false;
                    }
                    continue;
                }
            }
            Some(b'[') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b']') {
                    p.i += 1;
                } else {
                    stack.push(b'[');
                    continue;
                }
            }
            Some(b'"') => {
                if !p.string() {
                    return false;
                }
            }
            Some(b't') => {
                if !p.literal(b"true") {
                    return false;
                }
            }
            Some(b'f') => {
                if !p.literal(b"false") {
                    return false;
                }
            }
            Some(b'n') => {
                if !p.literal(b"null") {
                    return false;
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                if !p.number() {
                    return false;
                }
            }
            _ => return false,
        }
        // A value ended: close containers or move to the next member.
        loop {
            p.ws();
            let Some(&top) = stack.last() else {
                return p.i == p.s.len();
            };
            match (top, p.peek()) {
                (b'{', Some(b',')) => {
                    p.i += 1;
                    p.ws();
                    if !p.key() {
                        return false;
                    }
                    break;
                }
                (b'[', Some(b',')) => {
                    p.i += 1;
                    break;
                }
                (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                    p.i += 1;
                    stack.pop();
                }
                _ => return false,
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A member's key and its colon.
    fn key(&mut self) -> bool {
        if self.peek() != Some(b'"') || !self.string() {
            return false;
        }
        self.ws();
        if self.peek() != Some(b':') {
            return false;
        }
        self.i += 1;
        true
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn string(&mut self) -> bool {
        self.i += 1; // the opening quote
        loop {
            let Some(c) = self.peek() else { return false };
            self.i += 1;
            match c {
                b'"' => return true,
                b'\\' => {
                    let Some(e) = self.peek() else { return false };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.i += 4;
                        }
                        _ => return false,
                    }
                }
                0x00..=0x1f => return false,
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }
}
