//! SECRET: provider tokens with fixed prefixes (AWS key ids, JWTs, GitHub, Slack, Stripe, Google),
//! PEM private key blocks, and high-entropy values right after a keyword (`password=`,
//! `"api_key": "..."`, `token: ...`).

use super::Range;
use crate::mask::boundary::is_word_byte;

/// Minimum Shannon entropy (bits per byte) of a keyword's value: random tokens of 20+ characters
/// sit near 4; placeholders (`xxxxxxxx...`, `changeme_changeme...`) fall below 3.
pub const MIN_KEYWORD_ENTROPY: f64 = 3.0;

/// Minimum length of a keyword's value.
pub const MIN_KEYWORD_VALUE: usize = 20;

/// Shannon entropy of `s` in bits per byte.
pub fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A prefixed token or a PEM block: whole words only.
pub fn validate_token(text: &[u8], (start, end): Range) -> Option<Range> {
    if text[start] == b'-' {
        return Some((start, end)); // -----BEGIN ... PRIVATE KEY----- .. -----END ...-----
    }
    let left = start == 0 || !(is_word_byte(text[start - 1]) || text[start - 1] == b'-');
    // A full stop after a token ends the sentence; `.`, `-` followed by more token continue it.
    let right = match text.get(end) {
        None => true,
        Some(&b) if is_word_byte(b) => false,
        Some(b'.' | b'-') => !text.get(end + 1).is_some_and(|&b| is_word_byte(b)),
        Some(_) => true,
    };
    (left && right).then_some((start, end))
}

/// `keyword [:=] value`: masks only the value, when it is long and random enough.
pub fn validate_keyword(text: &[u8], (start, end): Range) -> Option<Range> {
    let c = &text[start..end];
    let sep = c.iter().position(|&b| b == b':' || b == b'=')?;
    let skip = c[sep..]
        .iter()
        .position(|&b| !matches!(b, b':' | b'=' | b' ' | b'\t' | b'"' | b'\''))?;
    // A value at the end of a sentence: the full stop is not part of it.
    let trailing = c.iter().rev().take_while(|&&b| b == b'.').count();
    let value = &c[sep + skip..c.len() - trailing];
    (value.len() >= MIN_KEYWORD_VALUE && entropy(value) >= MIN_KEYWORD_ENTROPY)
        .then_some((start + sep + skip, end - trailing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_values() {
        let t = b"password=Zx8vQ2mN4pL7sK1wE9rT";
        assert_eq!(validate_keyword(t, (0, t.len())), Some((9, t.len())));
        let t = b"token: Zx8vQ2mN4pL7sK1wE9rT.";
        assert_eq!(validate_keyword(t, (0, t.len())), Some((7, t.len() - 1)));
        let t = b"password=aaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(validate_keyword(t, (0, t.len())), None);
        let t = br#""api_key": "Zx8vQ2mN4pL7sK1wE9rT5y""#;
        let v = validate_keyword(t, (0, t.len() - 1)).unwrap();
        assert_eq!(&t[v.0..v.1], b"Zx8vQ2mN4pL7sK1wE9rT5y");
    }

    #[test]
    fn entropy_values() {
        assert!(entropy(b"aaaa") < 0.01);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
