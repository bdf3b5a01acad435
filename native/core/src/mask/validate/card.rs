//! CREDIT_CARD: 13-19 digits, optionally grouped by one kind of separator (a dash, one space or
//! two), Luhn-valid, with a known issuer prefix (IIN) for its length, 13 to 19 digits (twelve-digit
//! Maestro cards are rare; twelve digits are tracking numbers and ids).

use super::Range;
use crate::mask::boundary::{token_left_ok, token_right_ok};

/// Luhn checksum over ASCII digits.
pub fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The leading `n` digits as a number.
fn prefix(digits: &[u8], n: usize) -> u32 {
    digits[..n]
        .iter()
        .fold(0, |acc, &d| acc * 10 + u32::from(d - b'0'))
}

/// True if the issuer prefix is a known scheme for a number of this length.
pub fn iin_ok(digits: &[u8]) -> bool {
    let len = digits.len();
    if len < 6 {
        return false;
    }
    let p2 = prefix(digits, 2);
    let p3 = prefix(digits, 3);
    let p4 = prefix(digits, 4);
    let visa = digits[0] == b'4' && matches!(len, 13 | 16 | 19);
    let mastercard = len == 16 && ((51..=55).contains(&p2) || (2221..=2720).contains(&p4));
    let amex = len == 15 && (p2 == 34 || p2 == 37);
    let discover =
        (16..=19).contains(&len) && (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3));
    // JCB: 3528-3589 today; test generators (Faker) use the whole 35 block, and the old
    // 15-digit 2131 / 1800 cards still exist.
    let jcb = ((16..=19).contains(&len) && p2 == 35) || (len == 15 && (p4 == 2131 || p4 == 1800));
    let diners =
        (14..=19).contains(&len) && (p2 == 36 || p2 == 38 || p2 == 39 || (300..=305).contains(&p3));
    // Maestro 50 / 56-69 also covers UnionPay (62), RuPay's 60 / 65 / 508, Elo's 50xx / 636x
    // and Hipercard (606282); RuPay also issues 81 and 82.
    let maestro = (12..=19).contains(&len) && (p2 == 50 || (56..=69).contains(&p2));
    let rupay = len == 16 && (p2 == 81 || p2 == 82);
    visa || mastercard || amex || discover || jcb || diners || maestro || rupay
}

/// Digits and separator layout of `s` (digits, spaces and dashes only; two spaces count as one
/// separator).  `None` if two kinds of separator are mixed or the groups do not look like a
/// card's (first group of 4, none over 6).
fn digits_of(s: &[u8], buf: &mut [u8; 19]) -> Option<usize> {
    let mut n = 0;
    let mut sep = None;
    let mut group = 0;
    let mut first_group = None;
    for (i, &b) in s.iter().enumerate() {
        if b == b' ' && i > 0 && s[i - 1] == b' ' {
            continue; // the second space of a double-space separator
        }
        if b.is_ascii_digit() {
            if n == buf.len() {
                return None;
            }
            buf[n] = b;
            n += 1;
            group += 1;
            if group > 6 && sep.is_some() {
                return None;
            }
        } else {
            if *sep.get_or_insert(b) != b {
                return None;
            }
            first_group.get_or_insert(group);
            group = 0;
        }
    }
    if sep.is_some() && (first_group != Some(4) || group > 6) {
        return None;
    }
    Some(n)
}

fn valid(s: &[u8]) -> bool {
    let mut buf = [0u8; 19];
    let Some(n) = digits_of(s, &mut buf) else {
        return false;
    };
    let d = &buf[..n];
    // Twelve digits are an id or a tracking number (`6865-2911-6648`) far more often than one
    // of the rare 12-digit Maestro cards: cards have 13 to 19 digits here.
    (13..=19).contains(&n) && d.iter().any(|&x| x != d[0]) && luhn_ok(d) && iin_ok(d)
}

/// Digits in `s`.
fn digit_count(s: &[u8]) -> usize {
    s.iter().filter(|b| b.is_ascii_digit()).count()
}

/// True if a space-grouped candidate continues a run of card-sized digit groups on its left
/// (`ref 3579 6285 1428 1417` must not yield `6285 1428 1417...`; `tier 2 4111 ...` may).
fn inside_group_run(text: &[u8], start: usize, end: usize) -> bool {
    if start < 2 || text[start - 1] != b' ' || !text[start..end].contains(&b' ') {
        return false;
    }
    let group = text[..start - 1]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    // Only a bare group counts (`3579 6285...`), not the tail of another value (`123-45-6789`).
    let before = (start - 1 - group).checked_sub(1).map(|i| text[i]);
    (3..=6).contains(&group) && matches!(before, None | Some(b' '))
}

/// Validates a card candidate.  If the whole run fails because a short group follows the card
/// (a CVV or an expiry: `4111 1111 1111 1111 123`), the longest prefix of 13+ digits ending at
/// a space that is a valid card wins.
pub fn validate(text: &[u8], (start, end): Range) -> Option<Range> {
    if !token_left_ok(text, start) || inside_group_run(text, start, end) {
        return None;
    }
    let cand = &text[start..end];
    if valid(cand) && token_right_ok(text, end) {
        return Some((start, end));
    }
    // The digit group after `e` (a space), up to the next non-digit.
    let tail = |e: usize| {
        let rest = &text[e + 1..];
        rest.iter().take_while(|b| b.is_ascii_digit()).count()
    };
    (start + 13..end)
        .rev()
        .filter(|&e| text[e] == b' ')
        .find(|&e| {
            let t = tail(e);
            let after = e + 1 + t;
            (1..=4).contains(&t)
                && !(text.get(after) == Some(&b' ')
                    && text.get(after + 1).is_some_and(u8::is_ascii_digit))
                && digit_count(&text[start..e]) >= 13
                && valid(&text[start..e])
        })
        .map(|e| (start, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &str) -> Option<&str> {
        validate(s.as_bytes(), (0, s.len())).map(|(a, b)| &s[a..b])
    }

    #[test]
    fn schemes() {
        for ok in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555555555554444",
            "2223003122003222",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6759649826438453",
            "4222222222222",
            "3566002020360505",
            "213100000000001",
            "4638  7146  7710  0636",
            "3768  934596  47966",
            "6212345678901232",
            "6212 3456 7890 1234 569",
            "8198 3352 1762 0660",
            "6062 8200 0000 0003",
        ] {
            assert_eq!(found(ok), Some(ok), "{ok}");
        }
    }

    #[test]
    fn negatives() {
        for bad in [
            "4111111111111112",    // Luhn
            "1234567812345678",    // Luhn-valid? no IIN
            "4111 1111-1111 1111", // mixed separators
            "0000000000000000",
            "9111111111111111",
            "41 11111111111111",
            "500012345673",   // a bare 12-digit Luhn-valid Maestro-like id
            "5000 1234 5673", // grouped: a tracking number as often
        ] {
            assert_eq!(found(bad), None, "{bad}");
        }
    }

    #[test]
    fn trailing_group_is_trimmed() {
        let s = "4111 1111 1111 1111 1234";
        assert_eq!(found(s), Some("4111 1111 1111 1111"));
        let s = "4111 1111 1111 1111 123";
        assert_eq!(found(s), Some("4111 1111 1111 1111"));
        // A 12-digit prefix of a non-Luhn run of groups is not a card.
        assert_eq!(found("6993 7505 9325 3007"), None);
        let t = b"ref 3579 6285 1428 1417";
        assert_eq!(validate(t, (9, t.len())), None);
        let t = b"tier 2 5525 0204 7300 2387";
        assert_eq!(validate(t, (7, t.len())), Some((7, t.len())));
    }
}
