//! Boundary checks the candidate regex cannot express (the regex crates have no look-around).
//!
//! A value like `SKU-415-555-2671` or `v1.2.3.4` must not yield a phone or an address: a
//! candidate is rejected when it touches a letter or digit, directly or through a joiner
//! (`-`, `.`, `/`) that continues the same token.

/// Letters, digits and `_`: bytes that continue a word.  Bytes >= 0x80 count as word bytes too
/// (they are parts of non-ASCII letters in every ASCII-compatible encoding we see).
#[inline]
pub fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
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
        Some(b) if is_joiner(b) => !(start >= 2 && text[start - 2].is_ascii_alphanumeric()),
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

/// Plain word boundaries (dictionary terms): no word byte on either side.
#[inline]
pub fn word_bounded(text: &[u8], start: usize, end: usize) -> bool {
    let left = start == 0 || !is_word_byte(text[start - 1]);
    let right = text.get(end).is_none_or(|&b| !is_word_byte(b));
    left && right
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
}
