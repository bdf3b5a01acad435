//! EMAIL: local parts with every RFC 5322 atext character but `=` and `/` (see the candidate
//! pattern), ASCII or internationalised (UTF-8) domain labels and punycode (`xn--`).  The
//! validator reads the domain itself from the `@`: labels of ASCII letters, digits and `-` (not
//! at either end) or of UTF-8 letters, the last one an alphabetic or punycode TLD, so CJK
//! punctuation or text right after an address is never taken into it.  Leading punctuation is
//! trimmed off the local part, and a local part with letters of a two-byte UTF-8 script
//! (`józef@`) is taken whole; CJK text before an address is not part of it.

use super::Range;
use crate::mask::boundary::is_word_byte;

/// Length of the UTF-8 letter at `text[i]` that may be part of an internationalised domain
/// label, or 0: two-byte scripts, and three-byte ones except punctuation and symbols (U+2000 to
/// U+2BFF, U+3000 to U+303F, the full-width and special blocks U+FF00 to U+FFFF).
fn idn_char(text: &[u8], i: usize) -> usize {
    let cont = |k: usize| text.get(i + k).is_some_and(|&b| (0x80..0xC0).contains(&b));
    match text[i] {
        0xC2..=0xDF if cont(1) => 2,
        0xE2 | 0xEF => 0,
        0xE3 if text.get(i + 1) == Some(&0x80) => 0,
        0xE0..=0xEF if cont(1) && cont(2) => 3,
        _ => 0,
    }
}

/// The end of the domain that starts at `from` (after the `@`), if there is a valid one: the
/// longest run of labels ending with a TLD.
fn domain_end(text: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let mut best = None;
    let mut labels = 0;
    loop {
        let label_start = i;
        let mut ascii_alpha = true;
        while i < text.len() {
            let b = text[i];
            if b.is_ascii_alphanumeric() || b == b'-' {
                ascii_alpha &= b.is_ascii_alphabetic();
                i += 1;
            } else {
                let n = if b >= 0x80 { idn_char(text, i) } else { 0 };
                if n == 0 {
                    break;
                }
                // `...@example.jpまで`: CJK text right after an ASCII TLD ends the address.
                if ascii_alpha && labels > 0 && i - label_start >= 2 && n == 3 {
                    best = Some(i);
                }
                ascii_alpha = false;
                i += n;
            }
        }
        let label = &text[label_start..i];
        if label.is_empty() || label.starts_with(b"-") || label.ends_with(b"-") {
            return best;
        }
        let tld = (ascii_alpha && label.len() >= 2)
            || (label.len() > 4 && label[..4].eq_ignore_ascii_case(b"xn--"));
        if labels > 0 && tld && !text.get(i).is_some_and(|&b| is_word_byte(b)) {
            best = Some(i);
        }
        labels += 1;
        if text.get(i) != Some(&b'.') {
            return best;
        }
        i += 1;
    }
}

/// True if the UTF-8 character ending before `at` is a letter of a two-byte script.
fn two_byte_letter_before(text: &[u8], at: usize) -> bool {
    at >= 2 && (0x80..0xC0).contains(&text[at - 1]) && (0xC3..=0xDF).contains(&text[at - 2])
}
/// Bytes of an email's local part (also the class of the email candidate and the prefilter's
/// backward walk): by table, the scans test it per byte of long runs.
#[inline]
pub fn is_local_part_byte(b: u8) -> bool {
    LOCAL_PART[usize::from(b)]
}

/// [`local_part_byte`] of every byte value.
static LOCAL_PART: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        #[allow(clippy::cast_possible_truncation)] // b < 256
        {
            t[b] = local_part_byte(b as u8);
        }
        b += 1;
    }
    t
};

const fn local_part_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'.' | b'_'
                | b'%'
                | b'+'
                | b'-'
                | b'\''
                | b'!'
                | b'#'
                | b'$'
                | b'&'
                | b'*'
                | b'?'
                | b'^'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
}

pub fn validate(text: &[u8], (mut start, end): Range) -> Option<Range> {
    // UTF-8 local parts (`józef@...`): the candidate starts after the last non-ASCII letter;
    // take the whole local part so no part of the name is left visible.
    loop {
        if start > 0 && is_local_part_byte(text[start - 1]) {
            start -= 1;
        } else if two_byte_letter_before(text, start) {
            start -= 2;
        } else {
            break;
        }
    }
    // The candidate class lets punctuation lead the local part (`...john@x.io`, `'ann@x.io'`):
    // drop it.
    while start < end && text[start] < 0x80 && !text[start].is_ascii_alphanumeric() {
        start += 1;
    }
    let at = start + text[start..end].iter().position(|&b| b == b'@')?;
    if at == start {
        return None;
    }
    domain_end(text, at + 1).map(|e| (start, e))
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
        assert_eq!(found("o'brien@example.ie"), Some("o'brien@example.ie"));
        assert_eq!(found("ann@bücher.de"), Some("ann@bücher.de"));
        assert_eq!(found("ann@xn--bcher-kva.de"), Some("ann@xn--bcher-kva.de"));
        assert_eq!(found("ann@example.xn--p1ai"), Some("ann@example.xn--p1ai"));
        assert_eq!(found("ann@example.c0m"), None);
        // CJK text before and after an address is not part of it.
        let t = "連絡先tanaka@例え.jpまで";
        let r = validate(t.as_bytes(), (9, 29)).unwrap();
        assert_eq!(&t[r.0..r.1], "tanaka@例え.jp");
        let t = "请发送到fsu@example.org，谢谢";
        let r = validate(t.as_bytes(), (12, 27)).unwrap();
        assert_eq!(&t[r.0..r.1], "fsu@example.org");
    }
}
