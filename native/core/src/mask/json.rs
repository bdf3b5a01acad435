//! JSON-aware masking: a json / jsonb value (or a JSON line) is masked leaf by leaf, and the
//! result is always a JSON document with the same structure, the same keys and the same
//! whitespace.
//!
//! - a string is decoded (escapes, `\uXXXX` and surrogate pairs) before detection, masked, and
//!   encoded again (`"\u0040"` is an `@` to the detectors, a masked `"` is escaped);
//! - a number is masked as its text and stays a number: when the masked text is not a JSON
//!   number, the digits the operator kept make it (`************1111` is `1111`, as the numeric
//!   codecs mask), or `0` when it kept none (`<CREDIT_CARD>`);
//! - keys, `true` / `false` / `null` are kept; an operator that nulls a value writes `null`;
//! - a path rule ([`JsonPath`], `customer.email`, `items[*].card`, `*.phone`) masks every leaf at
//!   or under its path with its own mask (or keeps them); other leaves get the default mask.
//!
//! The walk is iterative (no recursion, however deep the document) and reads the value once.
//! Text that is not one JSON value is reported as [`NotJson`]; callers mask it as text and
//! count it (see [`mask_document`]).

use std::fmt;
use std::sync::Arc;

use super::value::{entity_id, Finding, Outcome, Tally, ValueMask};

/// One step of a path rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object member by name.
    Key(String),
    /// `*`: any member.
    AnyKey,
    /// `[n]`: one array element.
    Index(usize),
    /// `[*]`: any array element.
    AnyIndex,
}

/// A path rule's path: `customer.email`, `items[*].card`, `*.phone`, `[0].id`.  It matches a
/// leaf at the path or anywhere under it (a rule on `customer` masks every leaf of the
/// customer object; one on `phones` every element of that array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(pub Vec<Segment>);

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub String);

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadPath {}

impl JsonPath {
    /// Parses `a.b[*].c` (names are any characters but `.`, `[` and `]`; `"..."`-quoted names
    /// may hold them).
    pub fn parse(text: &str) -> Result<JsonPath, BadPath> {
        let bad = |why: &str| Err(BadPath(format!("bad JSON path {text:?}: {why}")));
        let b = text.as_bytes();
        let mut segs = Vec::new();
        let mut i = 0;
        let mut need_name = true; // at the start or after a `.`
        while i < b.len() {
            match b[i] {
                b'[' => {
                    let Some(close) = b[i..].iter().position(|&c| c == b']') else {
                        return bad("unclosed [");
                    };
                    let inner = &text[i + 1..i + close];
                    segs.push(if inner == "*" {
                        Segment::AnyIndex
                    } else {
                        match inner.parse::<usize>() {
                            Ok(n) => Segment::Index(n),
                            Err(_) => return bad("an index is a number or *"),
                        }
                    });
                    i += close + 1;
                    need_name = false;
                }
                b'.' => {
                    if need_name {
                        return bad("empty name");
                    }
                    i += 1;
                    need_name = true;
                }
                b'"' => {
                    let Some(close) = b[i + 1..].iter().position(|&c| c == b'"') else {
                        return bad("unclosed quote");
                    };
                    segs.push(Segment::Key(text[i + 1..i + 1 + close].to_owned()));
                    i += close + 2;
                    need_name = false;
                }
                b']' => return bad("unbalanced ]"),
                _ => {
                    if !need_name {
                        return bad("a name must follow a `.`");
                    }
                    let len = b[i..]
                        .iter()
                        .position(|&c| matches!(c, b'.' | b'[' | b']'))
                        .unwrap_or(b.len() - i);
                    let name = &text[i..i + len];
                    segs.push(if name == "*" {
                        Segment::AnyKey
                    } else {
                        Segment::Key(name.to_owned())
                    });
                    i += len;
                    need_name = false;
                }
            }
        }
        if segs.is_empty() || need_name {
            return bad("empty path or trailing `.`");
        }
        Ok(JsonPath(segs))
    }

    /// True if this path is `steps` or an ancestor of it.
    fn covers(&self, steps: &[Step], keys: &[u8]) -> bool {
        self.0.len() <= steps.len()
            && self
                .0
                .iter()
                .zip(steps)
                .all(|(seg, step)| match (seg, step) {
                    (Segment::Key(k), Step::Key(a, b)) => k.as_bytes() == &keys[*a..*b],
                    (Segment::AnyKey, Step::Key(..)) | (Segment::AnyIndex, Step::Index(_)) => true,
                    (Segment::Index(n), Step::Index(i)) => n == i,
                    _ => false,
                })
    }
}

/// Where a leaf is: member names (ranges of decoded key bytes) and array indices.
#[derive(Debug, Clone, Copy)]
enum Step {
    Key(usize, usize),
    Index(usize),
}

/// Text that is not one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

/// What masks the leaves: a default (None keeps them) and path rules, first match wins.
pub struct Leaves<'a> {
    pub default: Option<&'a dyn ValueMask>,
    pub paths: &'a [(JsonPath, Option<Arc<dyn ValueMask>>)],
}

impl<'a> Leaves<'a> {
    fn mask_at(&self, steps: &[Step], keys: &[u8]) -> Option<&'a dyn ValueMask> {
        for (path, mask) in self.paths {
            if path.covers(steps, keys) {
                return mask.as_deref();
            }
        }
        self.default
    }
}

/// The entity a value that is not JSON is counted under (it is masked as text).
pub const NOT_JSON: &str = "JSON_INVALID";

/// Masks a JSON document (see the module docs).  Text that is not one JSON value is masked as
/// text by `leaves.default` (kept when there is none) and counted under [`NOT_JSON`].
pub fn mask_document(
    text: &[u8],
    leaves: &Leaves<'_>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Outcome {
    let at = out.len();
    let mut local = Tally::new();
    match walk(text, leaves, out, &mut local) {
        Ok(true) => {
            tally.merge(&local);
            Outcome::Written
        }
        Ok(false) => {
            out.truncate(at);
            Outcome::Unchanged
        }
        Err(NotJson) => {
            out.truncate(at);
            tally.add(entity_id(NOT_JSON), 1);
            match leaves.default {
                Some(m) => m.mask_value(text, out, tally),
                None => Outcome::Unchanged,
            }
        }
    }
}

/// True if `text` may be a JSON object or array (worth a [`mask_container`] try).
#[inline]
pub fn looks_like_container(text: &[u8]) -> bool {
    let t = text.trim_ascii();
    matches!(
        (t.first(), t.last()),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    )
}

/// Masks `text` as a JSON document if it is one, writing nothing otherwise (`Err`; the caller
/// masks it as text).
pub fn mask_container(
    text: &[u8],
    leaves: &Leaves<'_>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<Outcome, NotJson> {
    let at = out.len();
    match walk(text, leaves, out, tally) {
        Ok(true) => Ok(Outcome::Written),
        Ok(false) => {
            out.truncate(at);
            Ok(Outcome::Unchanged)
        }
        Err(e) => {
            out.truncate(at);
            Err(e)
        }
    }
}

/// Containers being walked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    Object,
    Array(usize),
}

/// Walks `text`, writing the masked document to `out`.  `Ok(changed)`.
fn walk(
    text: &[u8],
    leaves: &Leaves<'_>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<bool, NotJson> {
    let mut p = Reader { s: text, i: 0 };
    let mut frames: Vec<Frame> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut keys: Vec<u8> = Vec::new(); // decoded member names, one per open object member
    let mut scratch = Vec::new();
    let mut masked = Vec::new();
    let mut changed = false;
    loop {
        // A value is expected.
        p.ws(out);
        match p.peek() {
            Some(b'{') => {
                p.copy(1, out);
                p.ws(out);
                if p.peek() == Some(b'}') {
                    p.copy(1, out);
                } else {
                    frames.push(Frame::Object);
                    member(&mut p, &mut steps, &mut keys, &mut scratch, out)?;
                    continue;
                }
            }
            Some(b'[') => {
                p.copy(1, out);
                p.ws(out);
                if p.peek() == Some(b']') {
                    p.copy(1, out);
                } else {
                    frames.push(Frame::Array(0));
                    steps.push(Step::Index(0));
                    continue;
                }
            }
            Some(b'"') => {
                let start = p.i;
                decode_string(&mut p, &mut scratch)?;
                let mask = leaves.mask_at(&steps, &keys);
                changed |= leaf_string(&text[start..p.i], &scratch, mask, &mut masked, out, tally);
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = p.i;
                p.number()?;
                let mask = leaves.mask_at(&steps, &keys);
                changed |= leaf_number(&text[start..p.i], mask, &mut masked, out, tally);
            }
            Some(b't') => p.literal(b"true", out)?,
            Some(b'f') => p.literal(b"false", out)?,
            Some(b'n') => p.literal(b"null", out)?,
            _ => return Err(NotJson),
        }
        // A value ended: next member or element, or close containers.
        loop {
            p.ws(out);
            let Some(top) = frames.last_mut() else {
                return if p.i == text.len() {
                    Ok(changed)
                } else {
                    Err(NotJson)
                };
            };
            match (*top, p.peek()) {
                (Frame::Object, Some(b',')) => {
                    p.copy(1, out);
                    pop_key(&mut steps, &mut keys);
                    member(&mut p, &mut steps, &mut keys, &mut scratch, out)?;
                    break;
                }
                (Frame::Array(n), Some(b',')) => {
                    p.copy(1, out);
                    *top = Frame::Array(n + 1);
                    steps.pop();
                    steps.push(Step::Index(n + 1));
                    break;
                }
                (Frame::Object, Some(b'}')) => {
                    p.copy(1, out);
                    pop_key(&mut steps, &mut keys);
                    frames.pop();
                }
                (Frame::Array(_), Some(b']')) => {
                    p.copy(1, out);
                    steps.pop();
                    frames.pop();
                }
                _ => return Err(NotJson),
            }
        }
    }
}

fn pop_key(steps: &mut Vec<Step>, keys: &mut Vec<u8>) {
    if let Some(Step::Key(a, _)) = steps.pop() {
        keys.truncate(a);
    }
}

/// A member's key (copied as written, decoded onto `keys`) and its colon.
fn member(
    p: &mut Reader<'_>,
    steps: &mut Vec<Step>,
    keys: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), NotJson> {
    p.ws(out);
    if p.peek() != Some(b'"') {
        return Err(NotJson);
    }
    let start = p.i;
    decode_string(p, scratch)?;
    out.extend_from_slice(&p.s[start..p.i]);
    let a = keys.len();
    keys.extend_from_slice(scratch);
    steps.push(Step::Key(a, keys.len()));
    p.ws(out);
    if p.peek() != Some(b':') {
        return Err(NotJson);
    }
    p.copy(1, out);
    Ok(())
}

/// Masks a string leaf (`raw` as written, `decoded` its text).  True if it changed.
fn leaf_string(
    raw: &[u8],
    decoded: &[u8],
    mask: Option<&dyn ValueMask>,
    masked: &mut Vec<u8>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> bool {
    leaf(raw, decoded, mask, masked, out, tally, json_string)
}

/// Masks a number leaf; a masked number stays a number.  True if it changed.
fn leaf_number(
    raw: &[u8],
    mask: Option<&dyn ValueMask>,
    masked: &mut Vec<u8>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> bool {
    leaf(raw, raw, mask, masked, out, tally, |masked, out| {
        if is_number(masked) {
            out.extend_from_slice(masked);
        } else {
            // Keep what the operator kept of the digits (`partial` keeps the last four,
            // `hash` writes digits), as the numeric codecs do; nothing kept: 0.
            let digits = masked.iter().filter(|b| b.is_ascii_digit());
            let mut kept = digits.skip_while(|&&b| b == b'0').peekable();
            if kept.peek().is_none() {
                out.push(b'0');
            }
            out.extend(kept);
        }
    })
}

/// Masks one leaf: `raw` as written is kept when nothing masks it, `value` (what the mask
/// reads) masked is re-encoded by `encode`, a NULL becomes JSON `null`.  True if it changed.
fn leaf(
    raw: &[u8],
    value: &[u8],
    mask: Option<&dyn ValueMask>,
    masked: &mut Vec<u8>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
    encode: impl FnOnce(&[u8], &mut Vec<u8>),
) -> bool {
    let Some(mask) = mask else {
        out.extend_from_slice(raw);
        return false;
    };
    masked.clear();
    match mask.mask_value(value, masked, tally) {
        Outcome::Unchanged => {
            out.extend_from_slice(raw);
            false
        }
        Outcome::Written => {
            encode(masked, out);
            true
        }
        Outcome::Null => {
            out.extend_from_slice(b"null");
            true
        }
    }
}

/// Appends `s` as a JSON string (quotes, backslashes and control characters escaped; other
/// bytes, UTF-8 included, as they are).
pub fn json_string(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

/// True if `s` is a JSON number (RFC 8259).
pub fn is_number(s: &[u8]) -> bool {
    let mut r = Reader { s, i: 0 };
    r.number().is_ok() && r.i == s.len()
}

/// Decodes the JSON string at `p` (at its opening quote) into `into`; moves past it.
fn decode_string(p: &mut Reader<'_>, into: &mut Vec<u8>) -> Result<(), NotJson> {
    into.clear();
    p.i += 1;
    loop {
        // Copy the plain run up to the next quote, backslash or control character at once.
        let rest = &p.s[p.i..];
        let run = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .ok_or(NotJson)?;
        into.extend_from_slice(&rest[..run]);
        p.i += run;
        let c = p.s[p.i];
        p.i += 1;
        match c {
            b'"' => return Ok(()),
            b'\\' => {
                let e = *p.s.get(p.i).ok_or(NotJson)?;
                p.i += 1;
                let b = match e {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        let mut cp = p.hex4()?;
                        if (0xD800..0xDC00).contains(&cp) {
                            // A high surrogate: its low half must follow.
                            if p.s.get(p.i..p.i + 2) != Some(b"\\u") {
                                return Err(NotJson);
                            }
                            p.i += 2;
                            let low = p.hex4()?;
                            if !(0xDC00..0xE000).contains(&low) {
                                return Err(NotJson);
                            }
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                        } else if (0xDC00..0xE000).contains(&cp) {
                            return Err(NotJson);
                        }
                        let ch = char::from_u32(cp).ok_or(NotJson)?;
                        let mut buf = [0u8; 4];
                        into.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        continue;
                    }
                    _ => return Err(NotJson),
                };
                into.push(b);
            }
            _ => return Err(NotJson), // a raw control character
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn copy(&mut self, n: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.s[self.i..self.i + n]);
        self.i += n;
    }

    fn ws(&mut self, out: &mut Vec<u8>) {
        let n = self.s[self.i..]
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        self.copy(n, out);
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Result<(), NotJson> {
        if self.s[self.i..].starts_with(word) {
            self.copy(word.len(), out);
            Ok(())
        } else {
            Err(NotJson)
        }
    }

    fn hex4(&mut self) -> Result<u32, NotJson> {
        let h = self.s.get(self.i..self.i + 4).ok_or(NotJson)?;
        let mut v = 0u32;
        for &c in h {
            v = v * 16 + char::from(c).to_digit(16).ok_or(NotJson)?;
        }
        self.i += 4;
        Ok(v)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), NotJson> {
        let digits = |r: &mut Self| {
            let n = r.s[r.i..].iter().take_while(|c| c.is_ascii_digit()).count();
            r.i += n;
            n
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(NotJson),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(NotJson);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(NotJson);
            }
        }
        Ok(())
    }
}

/// A [`ValueMask`] for JSON documents with path rules: what a column rule with `json:` paths
/// builds.  Leaves no path names get `default` (a content scanner, or kept when `None`).
pub struct JsonMasker {
    default: Option<Arc<dyn ValueMask>>,
    paths: Vec<(JsonPath, Option<Arc<dyn ValueMask>>)>,
}

impl JsonMasker {
    pub fn new(
        default: Option<Arc<dyn ValueMask>>,
        paths: Vec<(JsonPath, Option<Arc<dyn ValueMask>>)>,
    ) -> JsonMasker {
        JsonMasker { default, paths }
    }
}

impl ValueMask for JsonMasker {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        self.mask_json(value, out, tally)
    }

    /// Never a whole-value operator: a json value is always walked (paths first).
    fn whole(&self) -> Option<Finding<'_>> {
        None
    }

    /// On a value of another type (a rule with paths on a non-JSON column) the paths cannot
    /// apply: the default mask decides, as a whole-value operator or a content scan.
    fn find<'m>(&'m self, text: &[u8], found: &mut Vec<Finding<'m>>) {
        if let Some(m) = &self.default {
            match m.whole() {
                Some(f) => found.push(Finding {
                    start: 0,
                    end: text.len(),
                    ..f
                }),
                None => m.find(text, found),
            }
        }
    }

    fn mask_json(&self, text: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        let leaves = Leaves {
            default: self.default.as_deref(),
            paths: &self.paths,
        };
        mask_document(text, &leaves, out, tally)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::json::is_json;
    use crate::mask::{ColumnOperator, HashKey, Masker, Operator};

    fn masked(m: &dyn ValueMask, text: &str) -> (String, Tally) {
        let mut out = Vec::new();
        let mut tally = Tally::new();
        match m.mask_json(text.as_bytes(), &mut out, &mut tally) {
            Outcome::Unchanged => (text.to_owned(), tally),
            Outcome::Written => (String::from_utf8(out).unwrap(), tally),
            Outcome::Null => ("NULL".to_owned(), tally),
        }
    }

    /// The document with every leaf replaced by `_`: structure, keys and whitespace.
    fn skeleton(text: &str) -> String {
        let everything = ColumnOperator::new(Operator::Replace(Some(b"_".to_vec())), "X");
        let leaves = Leaves {
            default: Some(&everything),
            paths: &[],
        };
        let mut out = Vec::new();
        let mut tally = Tally::new();
        assert!(walk(text.as_bytes(), &leaves, &mut out, &mut tally).is_ok());
        String::from_utf8(out).unwrap().replace("\"_\"", "_")
    }

    #[test]
    fn leaves_are_masked_and_the_document_kept() {
        let m = Masker::builtin();
        let doc = r#"{"note": "mail ann@example.com now", "card": 4111111111111111,
            "esc": "\u0061nn@example.com \"quoted\"", "list": ["x", 13812345678, true, null],
            "n": 42, "ann@example.com": {"ip": "10.1.2.3"}}"#;
        let (out, tally) = masked(&m, doc);
        assert!(is_json(out.as_bytes(), &mut Vec::new()), "{out}");
        assert_eq!(skeleton(&out), skeleton(doc));
        assert!(out.contains(r#""note": "mail <EMAIL> now""#), "{out}");
        assert!(out.contains(r#""card": 0,"#), "{out}");
        // Decoded before detection; what is left of the string re-encoded.
        assert!(out.contains(r#""esc": "<EMAIL> \"quoted\"""#), "{out}");
        assert!(out.contains(r#"["x", 0, true, null]"#), "{out}");
        assert!(out.contains(r#""n": 42"#));
        // Keys are kept as they are (structure and keys unchanged).
        assert!(
            out.contains(r#""ann@example.com": {"ip": "<IP_ADDRESS>"}"#),
            "{out}"
        );
        assert_eq!(tally.total(), 5);
    }

    #[test]
    fn numbers_stay_numbers() {
        let hash = Masker::new(crate::mask::MaskerConfig {
            operators: vec![("CREDIT_CARD".into(), Operator::Hash(HashKey::new(b"k")))],
            ..Default::default()
        })
        .unwrap();
        let (out, _) = masked(&hash, r#"[4111111111111111, -1.5e3]"#);
        let first = out[1..out.find(',').unwrap()].to_owned();
        assert!(is_number(first.as_bytes()) || first == "0", "{out}");
        assert_ne!(first, "4111111111111111");
        assert!(out.ends_with(", -1.5e3]"));
    }

    #[test]
    fn path_rules() {
        let paths = vec![
            (
                JsonPath::parse("customer.email").unwrap(),
                Some(Arc::new(ColumnOperator::new(
                    Operator::Partial {
                        keep_first: 1,
                        keep_last: 0,
                        mask_char: '*',
                        keep_separators: true,
                    },
                    "COLUMN",
                )) as Arc<dyn ValueMask>),
            ),
            (JsonPath::parse("items[*].sku").unwrap(), None),
        ];
        let m = JsonMasker::new(Some(Arc::new(Masker::builtin())), paths);
        let doc = r#"{"customer": {"email": "ann@example.com", "phone": "+44 20 7946 0958"},
            "items": [{"sku": "4111111111111111", "n": 1}]}"#;
        let (out, _) = masked(&m, doc);
        assert!(out.contains(r#""email": "a**@*******.***""#), "{out}");
        assert!(out.contains(r#""phone": "<PHONE>""#), "{out}");
        assert!(out.contains(r#""sku": "4111111111111111""#), "{out}"); // kept by its rule
        assert_eq!(skeleton(&out), skeleton(doc));
        assert_eq!(
            JsonPath::parse("a.b[*][2].*.\"x.y\"").unwrap().0,
            vec![
                Segment::Key("a".into()),
                Segment::Key("b".into()),
                Segment::AnyIndex,
                Segment::Index(2),
                Segment::AnyKey,
                Segment::Key("x.y".into()),
            ]
        );
        for bad in ["", "a..b", "a.", "a[x]", "a[1", "a]", ".a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_that_is_not_json_is_masked_as_text_and_counted() {
        let m = Masker::builtin();
        let (out, tally) = masked(&m, "{\"a\": ann@example.com}");
        assert_eq!(out, "{\"a\": <EMAIL>}");
        assert!(tally.named().contains(&(NOT_JSON.to_owned(), 1)));
        for bad in [
            "",
            "{",
            "[1,]",
            "\"\\ud800\"",
            "01",
            "{\"a\" 1}",
            "[1] 2",
            "\"\u{1}\"",
        ] {
            let mut out = Vec::new();
            assert_eq!(
                walk(
                    bad.as_bytes(),
                    &Leaves {
                        default: None,
                        paths: &[]
                    },
                    &mut out,
                    &mut Tally::new()
                ),
                Err(NotJson),
                "{bad:?}"
            );
        }
    }

    /// JSON documents with PII-ish strings and numbers, escapes and nesting.
    fn document() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("\"ann@example.com\"".to_owned()),
            Just("\"call +44 20 7946 0958\"".to_owned()),
            Just("\"\\u0061nn@example.com \\\"x\\\" \\ud83d\\ude00\"".to_owned()),
            Just("4111111111111111".to_owned()),
            Just("-0.5e-3".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            "[a-z0-9 @.+-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            "[1-9][0-9]{0,17}".prop_map(|s| s),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec(("[a-z@.]{0,6}", inner), 0..6).prop_map(|v| {
                    let members: Vec<String> =
                        v.iter().map(|(k, x)| format!("\"{k}\": {x}")).collect();
                    format!("{{ {} }}", members.join(",\n"))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn masked_documents_are_json_with_the_same_skeleton(doc in document()) {
            prop_assume!(is_json(doc.as_bytes(), &mut Vec::new()));
            let m = Masker::builtin();
            let (out, _) = masked(&m, &doc);
            prop_assert!(is_json(out.as_bytes(), &mut Vec::new()), "{}", out);
            prop_assert_eq!(skeleton(&out), skeleton(&doc));
        }

        #[test]
        fn arbitrary_text_never_panics(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let m = Masker::builtin();
            let mut out = Vec::new();
            let outcome = m.mask_json(&v, &mut out, &mut Tally::new());
            if outcome == Outcome::Written && walk(&v, &Leaves { default: None, paths: &[] }, &mut Vec::new(), &mut Tally::new()).is_ok() {
                prop_assert!(is_json(&out, &mut Vec::new()));
            }
        }
    }
}
