//! Full-width forms folded to ASCII for the built-in detectors.
//!
//! Japanese and Chinese text writes numbers and addresses in full-width forms as often as in
//! ASCII (`０３－１２３４－５６７８`, `ｔａｎａｋａ＠example.jp`, `＋８６　１３８ ...`).  The
//! detectors are ASCII automata, so a value holding full-width forms (U+FF01..U+FF5E, the
//! ideographic space U+3000, and the Unicode hyphens and minus U+2010..U+2015, U+2212) is
//! scanned as a folded copy in which each of them is its ASCII counterpart; the spans found are
//! mapped back to byte offsets of the original, so masking rewrites the original bytes and never
//! splits a character.  Values without any of these bytes (the common case) are scanned as they
//! are: finding out costs one `memchr3`.

/// A folded copy of a value and, for each of its bytes (and its end), the offset in the
/// original.
pub struct Folded {
    pub text: Vec<u8>,
    offsets: Vec<u32>,
}

impl Folded {
    /// The original offset of folded offset `i` (`i` may be the folded length).
    #[inline]
    pub fn original(&self, i: usize) -> usize {
        self.offsets[i] as usize
    }

    /// The folded offset of original offset `i` (a character boundary the fold kept).
    pub fn folded(&self, i: usize) -> usize {
        self.offsets.partition_point(|&o| (o as usize) < i)
    }

    /// True if folded bytes `[start, end)` came from anything but themselves (then the original
    /// span is longer than the folded one).
    pub fn changed(&self, start: usize, end: usize) -> bool {
        self.original(end) - self.original(start) != end - start
    }
}

/// The ASCII byte a three-byte sequence at `s[0..3]` folds to, if it is one we fold.
#[inline]
fn fold3(s: &[u8]) -> Option<u8> {
    match *s {
        // U+FF01..U+FF3F: EF BC 81..BF -> 0x21..0x5F
        [0xEF, 0xBC, c @ 0x81..=0xBF] => Some(c - 0x81 + 0x21),
        // U+FF40..U+FF5E: EF BD 80..9E -> 0x60..0x7E
        [0xEF, 0xBD, c @ 0x80..=0x9E] => Some(c - 0x80 + 0x60),
        // U+3000 ideographic space
        [0xE3, 0x80, 0x80] => Some(b' '),
        // U+2010..U+2015 hyphens and dashes, U+2212 minus
        [0xE2, 0x80, 0x90..=0x95] | [0xE2, 0x88, 0x92] => Some(b'-'),
        _ => None,
    }
}

/// The folded copy of `text`, or `None` when nothing in it folds.
pub fn fold(text: &[u8]) -> Option<Folded> {
    if !super::classify::has_non_ascii(text) {
        return None; // 16 bytes at a time: the common case costs a few cycles
    }
    let first = memchr::memchr3_iter(0xEF, 0xE3, 0xE2, text)
        .find(|&i| text.get(i..i + 3).and_then(fold3).is_some())?;
    // Offsets are u32: values are at most 1 GiB (a protocol message), well inside.
    let off = |i: usize| u32::try_from(i).expect("values fit in u32 offsets");
    let mut out = Vec::with_capacity(text.len());
    let mut offsets = Vec::with_capacity(text.len() + 1);
    out.extend_from_slice(&text[..first]);
    offsets.extend((0..first).map(off));
    let mut i = first;
    while i < text.len() {
        match text.get(i..i + 3).and_then(fold3) {
            Some(b) => {
                out.push(b);
                offsets.push(off(i));
                i += 3;
            }
            None => {
                out.push(text[i]);
                offsets.push(off(i));
                i += 1;
            }
        }
    }
    offsets.push(off(text.len()));
    Some(Folded { text: out, offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_fullwidth_and_maps_back() {
        let t = "電話：０３－１２３４ ok".as_bytes();
        let f = fold(t).unwrap();
        assert_eq!(std::str::from_utf8(&f.text).unwrap(), "電話:03-1234 ok");
        // `0` of the folded text is at byte 6 + 3 (after the colon) in the original.
        let zero = f.text.iter().position(|&b| b == b'0').unwrap();
        assert_eq!(f.original(zero), 9);
        assert_eq!(f.original(f.text.len()), t.len());
        assert!(f.changed(zero, zero + 2));
        assert!(fold(b"plain ascii").is_none());
        assert!(fold("日本語のテキスト".as_bytes()).is_none());
        assert_eq!(
            fold("a\u{3000}b\u{2212}c".as_bytes()).unwrap().text,
            b"a b-c"
        );
    }
}
