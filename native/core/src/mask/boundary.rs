//! Boundary checks the candidate regex cannot express (the regex crates have no look-around).
//!
//! A value like `SKU-415-555-2671` or `v1.2.3.4` must not yield a phone or an address: a
//! candidate is rejected when it touches a letter or digit, directly or through a joiner
//! (`-`, `.`, `/`) that continues the same token.
//!
//! Every built-in entity is written in ASCII, so a non-ASCII byte never continues its token:
//! `電話03-1234-5678`, `café: 4111...`, `📞+33 1 23 45 67 89` all have a boundary there (CJK
//! text puts no space around values).  Dictionary terms may themselves be non-ASCII words, so
//! [`word_bounded`] treats letters of two-byte UTF-8 scripts (Latin with diacritics, Greek,
//! Cyrillic...) as word characters and three- and four-byte ones (CJK, punctuation, emoji) not.

/// ASCII letters, digits and `_`: bytes that continue an ASCII token.
#[inline]
pub fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True if the UTF-8 character ending right before `at` is a word character of a two-byte
/// script (lead byte 0xC2..=0xDF), or an ASCII word byte.
fn word_char_before(text: &[u8], at: usize) -> bool {
    match at.checked_sub(1).map(|i| text[i]) {
        None => false,
        Some(b) if b < 0x80 => is_word_byte(b),
        Some(b) if b >= 0xC0 => false, // a lead byte without its continuation: not a letter
        Some(_) => at >= 2 && (0xC2..=0xDF).contains(&text[at - 2]),
    }
}

/// True if the UTF-8 character starting at `at` is a word character of a two-byte script, or
/// an ASCII word byte.
fn word_char_at(text: &[u8], at: usize) -> bool {
    match text.get(at).copied() {
        None => false,
        Some(b) if b < 0x80 => is_word_byte(b),
        Some(b) => (0xC2..=0xDF).contains(&b),
    }
}

#[inline]
fn is_joiner(b: u8) -> bool {
    matches!(b, b'-' | b'.' | b'/')
}

/// True if nothing joins `text[start..]` to a token on its left.
#[inline]
pub fn token_left_ok(text: &[u8], start: usize) -> bool {
    match start.checked_sub(1).map(|i| text[i]) {
        None => true,
        Some(b) if is_word_byte(b) => false,
        Some(b) if is_joiner(b) => !(start >= 2 && is_word_byte(text[start - 2])),
        Some(_) => true,
    }
}

/// True if nothing joins `text[..end]` to a token on its right.
#[inline]
pub fn token_right_ok(text: &[u8], end: usize) -> bool {
    match text.get(end).copied() {
        None => true,
        Some(b) if is_word_byte(b) => false,
        Some(b) if is_joiner(b) => !text.get(end + 1).is_some_and(u8::is_ascii_alphanumeric),
        Some(_) => true,
    }
}

/// Plain word boundaries (dictionary terms): no word character on either side.
#[inline]
pub fn word_bounded(text: &[u8], start: usize, end: usize) -> bool {
    !word_char_before(text, start) && !word_char_at(text, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_tokens_are_rejected() {
        let t = b"SKU-415-555-2671";
        assert!(!token_left_ok(t, 4));
        let t = b"tel: 415-555-2671.";
        assert!(token_left_ok(t, 5));
        assert!(token_right_ok(t, 17));
        let t = b"415-555-2671-XL";
        assert!(!token_right_ok(t, 12));
        assert!(word_bounded(b"a bob c", 2, 5));
        assert!(!word_bounded(b"a bobby", 2, 5));
    }

    #[test]
    fn non_ascii_neighbours() {
        // CJK and full-width punctuation end an ASCII token; so do emoji.
        let t = "電話03-1234-5678です".as_bytes();
        assert!(token_left_ok(t, 6));
        assert!(token_right_ok(t, 18));
        let t = "📞+33".as_bytes();
        assert!(token_left_ok(t, 4));
        // Dictionary words: accented letters continue a word, CJK does not.
        let t = "bluebirdé".as_bytes();
        assert!(!word_bounded(t, 0, 8));
        let t = "コード名bluebirdです".as_bytes();
        assert!(word_bounded(t, 12, 20));
        let t = "ébluebird".as_bytes();
        assert!(!word_bounded(t, 2, 10));
    }
}
