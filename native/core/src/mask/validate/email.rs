//! EMAIL: ASCII addresses; the candidate regex already requires an alphabetic TLD of two or more
//! letters.  Domain labels must not start or end with `-`; leading punctuation is trimmed off
//! the local part, and a local part with non-ASCII letters is taken whole.

use super::Range;
use crate::mask::boundary::is_word_byte;
use crate::mask::candidates::is_local_part_byte;

pub fn validate(text: &[u8], (mut start, end): Range) -> Option<Range> {
    // UTF-8 local parts (`józef@...`): the candidate starts after the last non-ASCII byte;
    // take the whole local part so no part of the name is left visible.
    while start > 0 && (text[start - 1] >= 0x80 || is_local_part_byte(text[start - 1])) {
        start -= 1;
    }
    // The candidate class lets punctuation lead the local part (`...john@x.io`): drop it.
    while start < end && text[start] < 0x80 && !text[start].is_ascii_alphanumeric() {
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
    let right_ok = text.get(end).is_none_or(|&b| !is_word_byte(b));
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
        let t = "mail józef.x@example.com";
        let r = validate(t.as_bytes(), (9, t.len())).unwrap();
        assert_eq!(&t[r.0..r.1], "józef.x@example.com");
        let t = "mail éric@example.com";
        let r = validate(t.as_bytes(), (7, t.len())).unwrap();
        assert_eq!(&t[r.0..r.1], "éric@example.com");
    }
}
