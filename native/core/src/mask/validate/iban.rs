//! IBAN: country code + 2 check digits + BBAN, compact or in groups of 4 separated by spaces
//! (or dashes);
//! the country's length and the ISO 7064 mod-97 check must hold.

use super::Range;
use crate::mask::boundary::{token_left_ok, token_right_ok};

/// IBAN length per country (SWIFT IBAN registry).
const LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

fn country_length(cc: &[u8]) -> Option<usize> {
    LENGTHS.iter().find(|(c, _)| &c[..] == cc).map(|&(_, n)| n)
}

/// ISO 7064 mod 97-10 over the rearranged IBAN (BBAN, country, check digits).
fn mod97(chars: &[u8]) -> u32 {
    let (head, tail) = chars.split_at(4);
    tail.iter().chain(head).fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            (acc * 10 + u32::from(c - b'0')) % 97
        } else {
            (acc * 100 + u32::from(c - b'A' + 10)) % 97
        }
    })
}

pub fn validate(text: &[u8], (start, end): Range) -> Option<Range> {
    if !token_left_ok(text, start) {
        return None;
    }
    let len = country_length(&text[start..start + 2])?;
    // Take exactly `len` characters; one kind of separator (a space or a dash) may only follow
    // each full group of 4.
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut i = start;
    let mut sep = None;
    while n < len {
        let b = *text[..end].get(i)?;
        if b == b' ' || b == b'-' {
            if n % 4 != 0 || n == 0 || *sep.get_or_insert(b) != b || text[i - 1] == b {
                return None;
            }
        } else {
            chars[n] = b;
            n += 1;
        }
        i += 1;
    }
    if sep.is_some() && i - start != len + (len - 1) / 4 {
        return None;
    }
    if !token_right_ok(text, i) {
        return None;
    }
    (mod97(&chars[..n]) == 1).then_some((start, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &str) -> Option<&str> {
        validate(s.as_bytes(), (0, s.len())).map(|(a, b)| &s[a..b])
    }

    #[test]
    fn ibans() {
        for ok in [
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
            "NO9386011117947",
            "GB82-WEST-1234-5698-7654-32",
        ] {
            assert_eq!(found(ok), Some(ok), "{ok}");
        }
        assert_eq!(found("GB82WEST12345698765433"), None);
        assert_eq!(found("GB82WEST1234569876543"), None);
        assert_eq!(found("XX82WEST12345698765432"), None);
        assert_eq!(found("GB82WEST123456987654321"), None);
        assert_eq!(found("GB82 WEST1234 5698 7654 32"), None);
        assert_eq!(found("GB82 WEST-1234 5698 7654 32"), None);
    }
}
