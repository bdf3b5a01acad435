//! SECRET: provider tokens with fixed prefixes (AWS key ids, JWTs, GitHub, Slack, Stripe, Google),
//! PEM private keys (the header and the key material after it, to the footer if there is one), and high-entropy values right after a keyword (`password=`,
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

/// Base64 characters of PEM key material.
fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// A line break at `i`, written or JSON-escaped (`\n`, `\r\n`): its length, or 0.
fn line_break(text: &[u8], i: usize) -> usize {
    match text.get(i..).unwrap_or_default() {
        [b'\r', b'\n', ..] | [b'\\', b'n', ..] | [b'\\', b'r', ..] => 2,
        [b'\n' | b'\r', ..] => 1,
        _ => 0,
    }
}

fn run(text: &[u8], i: usize, f: impl Fn(u8) -> bool) -> usize {
    text[i.min(text.len())..]
        .iter()
        .take_while(|&&b| f(b))
        .count()
}

/// Base64 characters a key pasted on one line must have after a blank (words of prose are
/// shorter).
const PEM_SAME_LINE_MATERIAL: usize = 32;

/// A PEM private key: the header (`-----BEGIN ... PRIVATE KEY-----`, the candidate), the key
/// material after it (base64 lines, written or JSON-escaped line breaks, the `Proc-Type:` /
/// `DEK-Info:` headers of encrypted keys) and the footer when there is one.  A header without
/// its footer masks the material that follows and nothing after it; a header with no material
/// after it (`expected -----BEGIN PRIVATE KEY----- or ...`) is a mention, not a key.
pub fn validate_pem(text: &[u8], (start, header_end): Range) -> Option<Range> {
    let mut i = header_end;
    let mut end = header_end;
    let mut material = 0;
    let mut after_break = false;
    loop {
        let br = line_break(text, i);
        if br > 0 {
            i += br;
            after_break = true;
            continue;
        }
        if after_break
            && (text[i..].starts_with(b"Proc-Type:") || text[i..].starts_with(b"DEK-Info:"))
        {
            i += run(text, i, |b| b != b'\n' && b != b'\r' && b != b'\\');
            end = i;
            continue;
        }
        if text[i.min(text.len())..].starts_with(b"-----END ") {
            let tail = &text[i..text.len().min(i + 60)];
            let close = tail[9..]
                .windows(5)
                .position(|w| w == b"-----")
                .map(|p| i + 9 + p + 5);
            return match close {
                Some(e) if material > 0 => Some((start, e)),
                _ => (material > 0).then_some((start, end)),
            };
        }
        let n = run(text, i, is_base64);
        if n > 0 && (after_break || material > 0) {
            i += n;
            end = i;
            material += n;
            after_break = false;
            continue;
        }
        // A key pasted on one line: a blank, then a long base64 run.
        let blanks = run(text, i, |b| b == b' ' || b == b'\t');
        let n = run(text, i + blanks, is_base64);
        if (1..=2).contains(&blanks) && n >= PEM_SAME_LINE_MATERIAL {
            i += blanks + n;
            end = i;
            material += n;
            continue;
        }
        return (material > 0).then_some((start, end));
    }
}

/// A prefixed token: whole words only.
pub fn validate_token(text: &[u8], (start, end): Range) -> Option<Range> {
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

    fn pem(s: &str) -> Option<&str> {
        let h = s.find("-----BEGIN")?;
        let e = s[h + 10..].find("-----")? + h + 15;
        validate_pem(s.as_bytes(), (h, e)).map(|(a, b)| &s[a..b])
    }

    #[test]
    fn pem_blocks() {
        let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----";
        assert_eq!(pem(&format!("{block}\ntrailer")), Some(block));
        // No footer: the material, not the rest of the value.
        assert_eq!(
            pem("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg+/= then the log goes on"),
            Some("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg+/=")
        );
        // JSON-escaped line breaks.
        let t = r#"{"k": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\nAoGCCqGSM49", "n": 1}"#;
        assert_eq!(
            pem(t),
            Some(r"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\nAoGCCqGSM49")
        );
        // One line, the newlines lost.
        let t = "key -----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC ok";
        assert_eq!(
            pem(t),
            Some("-----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC")
        );
        // Mentions.
        assert_eq!(
            pem("expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----"),
            None
        );
        assert_eq!(
            pem("(it starts with -----BEGIN OPENSSH PRIVATE KEY-----) into the vault"),
            None
        );
        assert_eq!(pem("-----BEGIN PRIVATE KEY-----"), None);
    }

    #[test]
    fn entropy_values() {
        assert!(entropy(b"aaaa") < 0.01);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
