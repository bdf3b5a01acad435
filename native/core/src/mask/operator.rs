//! Masking operators: what replaces a sensitive span or a whole value.

use super::hash::HashKey;

/// How a span (or a whole value) is masked.  Non-ASCII bytes are never split: `partial` and
/// `hash` keep them as they are, `replace` and `redact` drop the whole span.
#[derive(Debug, Clone)]
pub enum Operator {
    /// A constant; `None` means the entity's tag, e.g. `<EMAIL>`.
    Replace(Option<Vec<u8>>),
    /// Nothing (an empty string).
    Redact,
    /// Keep the first / last alphanumerics, mask the rest with `mask_char`; separators
    /// (other ASCII bytes) stay when `keep_separators`.
    Partial {
        keep_first: usize,
        keep_last: usize,
        mask_char: char,
        keep_separators: bool,
    },
    /// Keyed deterministic hash, same length and character classes ([`HashKey::shape`]).
    Hash(HashKey),
    /// The whole value becomes SQL NULL.
    Null,
}

impl Default for Operator {
    fn default() -> Self {
        Operator::Replace(None)
    }
}

impl Operator {
    /// The operator's name, as the Python API spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Operator::Replace(_) => "replace",
            Operator::Redact => "redact",
            Operator::Partial { .. } => "partial",
            Operator::Hash(_) => "hash",
            Operator::Null => "null",
        }
    }

    /// Appends the masked form of `span` to `out`; `tag` is the entity's `<NAME>` tag.
    /// Returns false (nothing written) when the value must become NULL.
    pub fn apply(&self, span: &[u8], tag: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            Operator::Replace(v) => out.extend_from_slice(v.as_deref().unwrap_or(tag)),
            Operator::Redact => {}
            Operator::Partial {
                keep_first,
                keep_last,
                mask_char,
                keep_separators,
            } => partial(
                span,
                *keep_first,
                *keep_last,
                *mask_char,
                *keep_separators,
                out,
            ),
            Operator::Hash(key) => key.shape(span, out),
            Operator::Null => return false,
        }
        true
    }
}

fn partial(
    span: &[u8],
    keep_first: usize,
    keep_last: usize,
    mask_char: char,
    keep_separators: bool,
    out: &mut Vec<u8>,
) {
    let mut buf = [0u8; 4];
    let mask = mask_char.encode_utf8(&mut buf).as_bytes();
    let total = span.iter().filter(|b| b.is_ascii_alphanumeric()).count();
    let tail_from = total.saturating_sub(keep_last);
    let mut k = 0;
    out.reserve(span.len() * mask.len());
    // An ASCII mask character (the usual `*`, `#`, `X`) is one push, not a copy per byte.
    let push_mask = |out: &mut Vec<u8>| match mask {
        [one] => out.push(*one),
        _ => out.extend_from_slice(mask),
    };
    for &b in span {
        if b.is_ascii_alphanumeric() {
            if k < keep_first || k >= tail_from {
                out.push(b);
            } else {
                push_mask(out);
            }
            k += 1;
        } else if keep_separators || !b.is_ascii() {
            out.push(b);
        } else {
            push_mask(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: &Operator, s: &str) -> Option<String> {
        let mut out = Vec::new();
        op.apply(s.as_bytes(), b"<X>", &mut out)
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn operators() {
        assert_eq!(run(&Operator::default(), "a").as_deref(), Some("<X>"));
        let c = Operator::Replace(Some(b"***".to_vec()));
        assert_eq!(run(&c, "abc").as_deref(), Some("***"));
        assert_eq!(run(&Operator::Redact, "abc").as_deref(), Some(""));
        assert_eq!(run(&Operator::Null, "abc"), None);
        let p = Operator::Partial {
            keep_first: 0,
            keep_last: 4,
            mask_char: '*',
            keep_separators: true,
        };
        assert_eq!(
            run(&p, "4111-1111-1111-1234").as_deref(),
            Some("****-****-****-1234")
        );
        let p = Operator::Partial {
            keep_first: 1,
            keep_last: 0,
            mask_char: '#',
            keep_separators: false,
        };
        assert_eq!(run(&p, "jo.é@x.io").as_deref(), Some("j##é#####"));
        let p = Operator::Partial {
            keep_first: 0,
            keep_last: 2,
            mask_char: '•',
            keep_separators: true,
        };
        assert_eq!(run(&p, "1234-56").as_deref(), Some("••••-56"));
    }
}
