//! Byte classes of a 64-byte block as bit masks (bit k = byte k), computed 32 bytes at a time
//! with AVX2 on x86_64 CPUs that have it (detected at run time, once), 16 bytes at a time with
//! SSE2 on the others (part of the x86_64 baseline), and byte by byte elsewhere.
//! [`super::prefilter`] combines the masks with shifts to find, branch-free, the few word
//! starts where a candidate may open.

/// Masks of one block (bits past the block's end are zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    /// ASCII letters, digits and `_` (see [`super::boundary::is_word_byte`]).
    pub word: u64,
    pub digit: u64,
    /// `0`: a trunk prefix (`030 ...`) or `00` before a country code.
    pub zero: u64,
    pub hex: u64,
    pub upper: u64,
    pub colon: u64,
    pub dot: u64,
    pub space: u64,
    pub dash: u64,
    pub plus: u64,
    pub paren: u64,
    pub slash: u64,
    /// Second bytes of the token prefixes: `y` (eyJ), `h` (gh), `o` (xox), `k` (sk_/rk_).
    pub token_second: u64,
    /// First bytes of the token prefixes: `e`, `g`, `x`, `r`, `s`, `A`.
    pub token_first: u64,
    /// `K`, `S`, `I`, `R`, `G`, `N`: second bytes of the `A...` prefixes.
    pub aws_second: u64,
}

/// The masks of `block` (at most 64 bytes).
#[inline]
pub fn classify(block: &[u8]) -> Masks {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above; the answer is cached by std).
        return unsafe { avx2::classify(block) };
    }
    classify_by_16(block)
}

/// [`classify`] 16 bytes at a time (SSE2 on x86_64, scalar elsewhere).
pub fn classify_by_16(block: &[u8]) -> Masks {
    let mut m = Masks::default();
    for (i, chunk) in block.chunks(16).enumerate() {
        let c = match <&[u8; 16]>::try_from(chunk) {
            Ok(full) => classify16(full),
            Err(_) => {
                // A short last chunk is padded with NUL, which is in no class.
                let mut a = [0u8; 16];
                a[..chunk.len()].copy_from_slice(chunk);
                classify16(&a)
            }
        };
        let shift = 16 * i;
        m.word |= c.word << shift;
        m.digit |= c.digit << shift;
        m.zero |= c.zero << shift;
        m.hex |= c.hex << shift;
        m.upper |= c.upper << shift;
        m.colon |= c.colon << shift;
        m.dot |= c.dot << shift;
        m.space |= c.space << shift;
        m.dash |= c.dash << shift;
        m.plus |= c.plus << shift;
        m.paren |= c.paren << shift;
        m.slash |= c.slash << shift;
        m.token_second |= c.token_second << shift;
        m.token_first |= c.token_first << shift;
        m.aws_second |= c.aws_second << shift;
    }
    m
}

/// The masks of up to 64 bytes, one byte at a time (the reference for the SIMD version).
pub fn classify_scalar(bytes: &[u8]) -> Masks {
    let mut m = Masks::default();
    for (k, &b) in bytes.iter().enumerate() {
        let bit = |yes: bool| u64::from(yes) << k;
        m.word |= bit(b.is_ascii_alphanumeric() || b == b'_');
        m.digit |= bit(b.is_ascii_digit());
        m.zero |= bit(b == b'0');
        m.hex |= bit(b.is_ascii_hexdigit());
        m.upper |= bit(b.is_ascii_uppercase());
        m.colon |= bit(b == b':');
        m.dot |= bit(b == b'.');
        m.space |= bit(b == b' ');
        m.dash |= bit(b == b'-');
        m.plus |= bit(b == b'+');
        m.paren |= bit(b == b'(');
        m.slash |= bit(b == b'/');
        m.token_second |= bit(matches!(b, b'y' | b'h' | b'o' | b'k'));
        m.token_first |= bit(matches!(b, b'e' | b'g' | b'x' | b'r' | b's' | b'A'));
        m.aws_second |= bit(matches!(b, b'K' | b'S' | b'I' | b'R' | b'G' | b'N'));
    }
    m
}

/// True if `text` has a byte >= 0x80 (16 bytes at a time with SSE2 on x86_64).
pub fn has_non_ascii(text: &[u8]) -> bool {
    let mut chunks = text.chunks_exact(16);
    for chunk in &mut chunks {
        let chunk: &[u8; 16] = chunk.try_into().expect("chunks_exact(16)");
        if high_bits16(chunk) != 0 {
            return true;
        }
    }
    !chunks.remainder().is_ascii()
}

#[cfg(not(target_arch = "x86_64"))]
fn high_bits16(chunk: &[u8; 16]) -> u32 {
    u32::from(!chunk.is_ascii())
}

#[cfg(target_arch = "x86_64")]
fn high_bits16(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_movemask_epi8};
    // SAFETY: SSE2 is part of the x86_64 baseline; the load reads exactly the 16 bytes of
    // `chunk` and `loadu` has no alignment requirement.
    unsafe { _mm_movemask_epi8(_mm_loadu_si128(chunk.as_ptr().cast::<__m128i>())).cast_unsigned() }
}

#[cfg(not(target_arch = "x86_64"))]
fn classify16(chunk: &[u8; 16]) -> Masks {
    classify_scalar(chunk)
}

#[cfg(target_arch = "x86_64")]
fn classify16(chunk: &[u8; 16]) -> Masks {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so every intrinsic here is available; the
    // load reads exactly the 16 bytes of `chunk` and `loadu` has no alignment requirement.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let splat = |b: u8| _mm_set1_epi8(i8::from_ne_bytes([b]));
        let eq = |b: u8| _mm_cmpeq_epi8(v, splat(b));
        // Signed compares: bytes >= 0x80 are negative, so they fall in no ASCII range.
        let range = |x: __m128i, lo: u8, hi: u8| {
            _mm_and_si128(
                _mm_cmpgt_epi8(x, splat(lo - 1)),
                _mm_cmpgt_epi8(splat(hi + 1), x),
            )
        };
        // `movemask` sets only the low 16 bits.
        let bits = |x: __m128i| u64::from(_mm_movemask_epi8(x).cast_unsigned());
        let digit = range(v, b'0', b'9');
        // Folding case with `| 0x20` maps no non-letter ASCII byte into `a..=z`.
        let folded = _mm_or_si128(v, splat(0x20));
        let alpha = range(folded, b'a', b'z');
        let upper = _mm_andnot_si128(_mm_cmpeq_epi8(folded, v), alpha);
        let hex = _mm_or_si128(digit, range(folded, b'a', b'f'));
        let any = |bs: &[u8]| {
            bs.iter()
                .fold(_mm_set1_epi8(0), |acc, &b| _mm_or_si128(acc, eq(b)))
        };
        Masks {
            word: bits(_mm_or_si128(_mm_or_si128(digit, alpha), eq(b'_'))),
            digit: bits(digit),
            zero: bits(eq(b'0')),
            hex: bits(hex),
            upper: bits(upper),
            colon: bits(eq(b':')),
            dot: bits(eq(b'.')),
            space: bits(eq(b' ')),
            dash: bits(eq(b'-')),
            plus: bits(eq(b'+')),
            paren: bits(eq(b'(')),
            slash: bits(eq(b'/')),
            token_second: bits(any(b"yhok")),
            token_first: bits(any(b"egxrsA")),
            aws_second: bits(any(b"KSIRGN")),
        }
    }
}

/// [`classify`] 32 bytes at a time with AVX2.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Masks;
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_andnot_si256, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8,
        _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
        _mm256_setzero_si256,
    };

    /// The masks of `block` (at most 64 bytes).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn classify(block: &[u8]) -> Masks {
        let mut m = Masks::default();
        for (i, chunk) in block.chunks(32).enumerate() {
            let mut padded = [0u8; 32];
            let bytes: &[u8; 32] = match <&[u8; 32]>::try_from(chunk) {
                Ok(full) => full,
                Err(_) => {
                    // A short last chunk is padded with NUL, which is in no class.
                    padded[..chunk.len()].copy_from_slice(chunk);
                    &padded
                }
            };
            let c = classify32(bytes);
            let shift = 32 * i;
            m.word |= c.word << shift;
            m.digit |= c.digit << shift;
            m.zero |= c.zero << shift;
            m.hex |= c.hex << shift;
            m.upper |= c.upper << shift;
            m.colon |= c.colon << shift;
            m.dot |= c.dot << shift;
            m.space |= c.space << shift;
            m.dash |= c.dash << shift;
            m.plus |= c.plus << shift;
            m.paren |= c.paren << shift;
            m.slash |= c.slash << shift;
            m.token_second |= c.token_second << shift;
            m.token_first |= c.token_first << shift;
            m.aws_second |= c.aws_second << shift;
        }
        m
    }

    #[target_feature(enable = "avx2")]
    fn classify32(chunk: &[u8; 32]) -> Masks {
        // SAFETY: the load reads exactly the 32 bytes of `chunk` and `loadu` has no alignment
        // requirement (this function only runs where AVX2 is enabled).
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>()) };
        let splat = |b: u8| _mm256_set1_epi8(i8::from_ne_bytes([b]));
        let eq = |b: u8| _mm256_cmpeq_epi8(v, splat(b));
        // Signed compares: bytes >= 0x80 are negative, so they fall in no ASCII range.
        let range = |x: __m256i, lo: u8, hi: u8| {
            _mm256_and_si256(
                _mm256_cmpgt_epi8(x, splat(lo - 1)),
                _mm256_cmpgt_epi8(splat(hi + 1), x),
            )
        };
        // `movemask` sets one bit per byte: 32 bits.
        let bits = |x: __m256i| u64::from(_mm256_movemask_epi8(x).cast_unsigned());
        let digit = range(v, b'0', b'9');
        // Folding case with `| 0x20` maps no non-letter ASCII byte into `a..=z`.
        let folded = _mm256_or_si256(v, splat(0x20));
        let alpha = range(folded, b'a', b'z');
        let upper = _mm256_andnot_si256(_mm256_cmpeq_epi8(folded, v), alpha);
        let hex = _mm256_or_si256(digit, range(folded, b'a', b'f'));
        let any = |bs: &[u8]| {
            bs.iter().fold(_mm256_setzero_si256(), |acc, &b| {
                _mm256_or_si256(acc, eq(b))
            })
        };
        Masks {
            word: bits(_mm256_or_si256(_mm256_or_si256(digit, alpha), eq(b'_'))),
            digit: bits(digit),
            zero: bits(eq(b'0')),
            hex: bits(hex),
            upper: bits(upper),
            colon: bits(eq(b':')),
            dot: bits(eq(b'.')),
            space: bits(eq(b' ')),
            dash: bits(eq(b'-')),
            plus: bits(eq(b'+')),
            paren: bits(eq(b'(')),
            slash: bits(eq(b'/')),
            token_second: bits(any(b"yhok")),
            token_first: bits(any(b"egxrsA")),
            aws_second: bits(any(b"KSIRGN")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn simd_matches_scalar(v in proptest::collection::vec(any::<u8>(), 0..=64)) {
            prop_assert_eq!(classify(&v), classify_scalar(&v));
            prop_assert_eq!(classify_by_16(&v), classify_scalar(&v));
        }
    }

    proptest! {
        #[test]
        fn non_ascii_check_is_exact(v in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(has_non_ascii(&v), !v.is_ascii());
        }
    }

    #[test]
    fn every_byte_value() {
        let all: Vec<u8> = (0..=255).collect();
        for block in all.chunks(64) {
            assert_eq!(classify(block), classify_scalar(block));
            assert_eq!(classify_by_16(block), classify_scalar(block));
        }
    }
}
