//! EMAIL: ASCII addresses; the candidate regex already requires an alphabetic TLD of two or more
//! letters.  Domain labels must not start or end with `-`; leading punctuation is trimmed off
//! the local part.

use super::Range;
use crate::mask::boundary::is_word_byte;

pub fn validate(text: &[u8], (mut start, end): Range) -> Option<Range> {
    // The candidate class lets punctuation lead the local part (`...john@x.io`): drop it.
    while start < end && !text[start].is_ascii_alphanumeric() {
        start += 1;
    }
    let c = &text[start..end];
    let at = c.iter().position(|&b| b == b'@')?;
    let (local, domain) = (&c[..at], &c[at + 1..]);
    // Lenient on the local part (any length, `..`): masking a malformed address costs nothing,
    // and rejecting it would make the scan retry inside the run.
    let local_ok = !local.is_empty();
    let domain_ok = domain
        .split(|&b| b == b'.')
        .all(|l| !l.is_empty() && !l.starts_with(b"-") && !l.ends_with(b"-"));
    let right_ok = text.get(end).map_or(true, |&b| !is_word_byte(b));
    (local_ok && domain_ok && right_ok).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &str) -> Option<&str> {
        validate(s.as_bytes(), (0, s.len())).map(|(a, b)| &s[a..b])
    }

    #[test]
    fn emails() {
        assert_eq!(found("john.doe@example.com"), Some("john.doe@example.com"));
        assert_eq!(
            found("..x+tag@mail.example.co.uk"),
            Some("x+tag@mail.example.co.uk")
        );
        assert_eq!(found("a..b@example.com"), Some("a..b@example.com"));
        assert_eq!(found("a@-bad.com"), None);
    }
}
