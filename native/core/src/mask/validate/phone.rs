//! PHONE: national and international numbers as people write them.
//!
//! The candidate regex only says "a number may start here" (`+`, `(` or a digit); this module
//! reads the number itself: digit groups separated by at most one of `-` `.` `/` with spaces
//! around it, or by parentheses (`(0)`, `(030)`, `075(609)2427`), then an optional extension
//! (`x123`, `ext. 45`).  Accepted shapes, each checked against a number plan:
//!
//! - **international**: `+CC` or `00CC` (with separators), the country code looked up in
//!   [`phone_plan`], an optional trunk `(0)` or `0` dropped, the national significant number
//!   of the country's length (NANP area and exchange codes start 2-9);
//! - **national with a trunk prefix**: `0` then an area code of any length (`030 12345678`,
//!   `(0161) 496 0000`, `03-1234-5678`, `01 23 45 67 89`, `0120-123-456`), 10 to 13 digits
//!   (10 or 11 when written without separators); dates (`01.02.2026 10`) are not numbers;
//! - **national without one**: NANP (`(415) 555-2671`, `415.555.2671`, `1-415-555-2671`),
//!   Chinese mobiles (`13812345678`, `138 1234 5678`), Indian mobiles (`98765 43210`),
//!   Brazilian numbers with their area code (`(11) 91234-5678`, `11 91234-5678`), and a bare
//!   country code followed by a separator (`44 20 7946 0958`).
//!
//! Bare runs of digits are phones only in the distinctive shapes above (trunk `0`, Chinese
//! mobile): ten digits alone are an order number as often as a phone.

use super::phone_plan;
use super::Range;
use crate::mask::boundary::{is_word_byte, token_left_ok};

/// At most this many digits in a number (E.164 has 15, plus `00` and a written extension).
const MAX_DIGITS: usize = 20;
const MAX_GROUPS: usize = 8;

/// One group of digits: where its digits are in the text and in the digit buffer, and what
/// separated it from the group before.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    /// Index of the group's first digit in [`Number::digits`].
    first: u8,
    len: u8,
    /// Byte offset just after the group (after its `)` when parenthesized).
    end: usize,
    /// Written in parentheses.
    paren: bool,
    /// The separator before it: `-`, `.`, `/`, ` ` (spaces only) or 0 (none, or only a `(`).
    sep: u8,
}

#[derive(Debug, Default)]
struct Number {
    plus: bool,
    digits: [u8; MAX_DIGITS],
    n_digits: usize,
    groups: [Group; MAX_GROUPS],
    n_groups: usize,
}

impl Number {
    fn digits(&self, groups: &[Group]) -> &[u8] {
        let last = groups[groups.len() - 1];
        &self.digits[..usize::from(last.first) + usize::from(last.len)]
    }
}

/// Reads the digit groups of a number starting at `start`.  `None` if the run is not number-like
/// at all (too many digits: a long id, not a phone cut in the middle).
fn read(text: &[u8], start: usize) -> Option<Number> {
    let mut num = Number::default();
    let mut i = start;
    if text[i] == b'+' {
        num.plus = true;
        i += 1;
        if text.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    loop {
        // The separator: one or two spaces, or one of `-./`, then maybe `(`.  A dash or slash
        // with blanks around it (`... - 2026`, `... / 4956`) separates items of a list, not the
        // groups of a number.
        let mut j = i;
        let mut sep = 0u8;
        if num.n_groups > 0 {
            match text.get(j) {
                Some(b' ') => {
                    sep = b' ';
                    j += if text.get(j + 1) == Some(&b' ') { 2 } else { 1 };
                }
                Some(&b @ (b'-' | b'.' | b'/')) => {
                    sep = b;
                    j += 1;
                }
                _ => {}
            }
        }
        let paren = text.get(j) == Some(&b'(');
        if paren {
            j += 1;
        }
        let run = text[j.min(text.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if run == 0 {
            break;
        }
        if num.n_digits + run > MAX_DIGITS {
            if num.n_groups == 0 {
                return None; // a long id, not a number
            }
            break;
        }
        if num.n_groups == MAX_GROUPS {
            break;
        }
        let mut end = j + run;
        if paren {
            if text.get(end) != Some(&b')') || run > 6 {
                break;
            }
            end += 1;
        }
        num.groups[num.n_groups] = Group {
            first: u8::try_from(num.n_digits).expect("at most MAX_DIGITS"),
            len: u8::try_from(run).expect("at most MAX_DIGITS"),
            end,
            paren,
            sep,
        };
        num.digits[num.n_digits..num.n_digits + run].copy_from_slice(&text[j..j + run]);
        num.n_digits += run;
        num.n_groups += 1;
        i = end;
    }
    (num.n_groups > 0).then_some(num)
}

fn lens(groups: &[Group]) -> impl Iterator<Item = u8> + '_ {
    groups.iter().map(|g| g.len)
}

fn shape(groups: &[Group], want: &[u8]) -> bool {
    groups.len() == want.len() && lens(groups).eq(want.iter().copied())
}

fn nonzero(d: u8) -> bool {
    (b'1'..=b'9').contains(&d)
}

/// `dd<sep>dd<sep>yyyy`: a date, not a number with a trunk prefix.
fn date_like(groups: &[Group], digits: &[u8]) -> bool {
    groups.len() >= 3
        && groups[0].len <= 2
        && groups[1].len <= 2
        && groups[2].len == 4
        && matches!(&digits[usize::from(groups[2].first)..][..2], b"19" | b"20")
        && matches!(groups[1].sep, b'.' | b'/' | b'-')
}

/// A dotted number uses dots throughout, at least twice, between groups of two to four digits
/// (`01.23.45.67.89`, `415.555.2671`): a dot mixed with dashes or slashes, or a single one, is a
/// version, a date or an amount.
fn separators_consistent(groups: &[Group]) -> bool {
    let mut dots = 0;
    let mut other = false;
    for g in &groups[1..] {
        match g.sep {
            b'.' if (2..=4).contains(&g.len) => dots += 1,
            b'.' => return false,
            b'-' | b'/' => other = true,
            _ => {}
        }
    }
    (dots == 0 || (dots >= 2 && !other)) && groups.iter().filter(|g| g.sep == b'/').count() <= 1
}

/// `+CC ...` or `00CC ...`: the country's number plan decides.
fn international(num: &Number, groups: &[Group]) -> bool {
    let digits = num.digits(groups);
    let rest = if num.plus {
        digits
    } else {
        // `00` + code, with separators: compact `00...` runs are ids as often as numbers.
        if groups.len() < 2 || groups[0].len < 2 {
            return false;
        }
        &digits[2..]
    };
    let Some((code, cc_len, (min, max))) = phone_plan::country(rest) else {
        return false;
    };
    let mut nsn = &rest[cc_len..];
    // The trunk prefix written after the code (`+44 (0)20...`, `+44 020...`); in Italy the
    // leading 0 belongs to the number.
    if nsn.first() == Some(&b'0') && code != 39 {
        nsn = &nsn[1..];
    }
    let len = nsn.len();
    if len < usize::from(min) || len > usize::from(max) {
        return false;
    }
    code != 1 || (nsn[0] >= b'2' && nsn[3] >= b'2')
}

/// `0` + area code + subscriber number.
fn trunk(groups: &[Group], digits: &[u8]) -> bool {
    let len = digits.len();
    if groups.len() == 1 {
        // Bare: ten or eleven digits (JP, FR, GB, IN, CN mobiles with their 0); longer runs
        // with a leading 0 are references as often.
        return (10..=11).contains(&len);
    }
    if groups[0].len < 2 || groups[0].len > 6 || date_like(groups, digits) {
        return false;
    }
    // A DIN 5008 extension (`0221 1234567-89`) may add a few digits to the longest numbers.
    let max = if groups[groups.len() - 1].len <= 4 && groups[groups.len() - 1].sep == b'-' {
        15
    } else {
        13
    };
    (10..=max).contains(&len) && lens(groups).all(|l| l <= 8)
}

/// NANP without a country code, or with a bare `1`: `(415) 555-2671`, `415-555-2671`,
/// `415.555.2671`, `1-415-555-2671`, `1 (415) 555-2671`.
fn nanp(groups: &[Group], digits: &[u8]) -> bool {
    let (groups, digits) = if groups.len() == 4 && groups[0].len == 1 && digits[0] == b'1' {
        (&groups[1..], &digits[1..])
    } else {
        (groups, digits)
    };
    shape(groups, &[3, 3, 4])
        && (groups[0].paren || groups[1].sep == groups[2].sep)
        && digits[0] >= b'2'
        && digits[3] >= b'2'
}

/// Shapes of numbers written without a trunk prefix outside NANP.
fn national_other(groups: &[Group], digits: &[u8]) -> bool {
    let len = digits.len();
    // China: mobiles 1[3-9]x, bare or 3-4-4 with one separator.
    if len == 11
        && digits[0] == b'1'
        && (b'3'..=b'9').contains(&digits[1])
        && (groups.len() == 1
            || (shape(groups, &[3, 4, 4])
                && groups[1].sep == groups[2].sep
                && matches!(groups[1].sep, b' ' | b'-')))
    {
        return true;
    }
    // India: mobiles 6-9, written 5-5.
    if shape(groups, &[5, 5]) && (b'6'..=b'9').contains(&digits[0]) && groups[1].sep == b' ' {
        return true;
    }
    // Brazil: a two-digit area code (DDD), then 8 digits or 9 starting with 9.
    if groups[0].len == 2 && nonzero(digits[0]) && nonzero(digits[1]) {
        let local = len - 2;
        let local_ok = local == 8 || (local == 9 && digits[2] == b'9');
        let written = match groups.len() {
            2 => groups[0].paren,
            3 => {
                (groups[0].paren || groups[1].sep == b' ')
                    && groups[2].sep == b'-'
                    && groups[2].len == 4
            }
            _ => false,
        };
        if local_ok && written {
            return true;
        }
    }
    // A bare country code and a separator (`44 20 7946 0958`, `86 138 1234 5678`).
    if groups.len() >= 3
        && groups[0].len <= 3
        && !groups[0].paren
        && matches!(groups[1].sep, b' ' | b'-')
    {
        if let Some((code, cc_len, (min, max))) = phone_plan::country(digits) {
            let nsn = len - cc_len;
            return code != 1
                && cc_len == usize::from(groups[0].len)
                && (usize::from(min)..=usize::from(max)).contains(&nsn);
        }
    }
    false
}

fn accept(num: &Number, groups: &[Group]) -> bool {
    let digits = num.digits(groups);
    if digits.len() < 7 || !separators_consistent(groups) {
        return false;
    }
    if num.plus || (digits.starts_with(b"00") && nonzero(digits[2.min(digits.len() - 1)])) {
        return international(num, groups);
    }
    if digits[0] == b'0' {
        return nonzero(digits[1]) && trunk(groups, digits);
    }
    nanp(groups, digits) || national_other(groups, digits)
}

/// True if a number may end at `end`: no word byte or joined token after it, and no `:digit`
/// (the hour of a time).
fn right_ok(text: &[u8], end: usize) -> bool {
    let next = text.get(end).copied();
    let after = text.get(end + 1).copied();
    match next {
        None => true,
        Some(b) if is_word_byte(b) => false,
        Some(b'-' | b'.' | b'/' | b':') => !after.is_some_and(|a| a.is_ascii_alphanumeric()),
        Some(_) => true,
    }
}

/// A number starts at a token boundary, and not right after a group of three or more digits
/// and a blank (`batch 4480 0843 1690 8277` is one reference, not a reference and a phone;
/// `tier 2 362-917-6247` is a phone).
fn left_ok(text: &[u8], start: usize) -> bool {
    match text[start] {
        b'(' | b'+' => start == 0 || !(is_word_byte(text[start - 1]) || text[start - 1] == b'+'),
        _ => {
            let group_before = start >= 2
                && text[start - 1] == b' '
                && text[..start - 1]
                    .iter()
                    .rev()
                    .take(3)
                    .take_while(|b| b.is_ascii_digit())
                    .count()
                    == 3;
            // `08:34:00`: the minutes and seconds of a time.
            let in_time = start >= 2 && text[start - 1] == b':' && text[start - 2].is_ascii_digit();
            token_left_ok(text, start) && !group_before && !in_time
        }
    }
}

/// An extension after the number: `x123`, ` x 123`, ` ext. 45`, `, ext 4567`.
fn extension(text: &[u8], end: usize) -> usize {
    let mut i = end;
    if text.get(i) == Some(&b',') {
        i += 1;
    }
    while text.get(i) == Some(&b' ') && i < end + 3 {
        i += 1;
    }
    let rest = &text[i.min(text.len())..];
    let word = if rest.first().is_some_and(|b| b.eq_ignore_ascii_case(&b'x')) {
        1
    } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"ext") {
        if rest.get(3) == Some(&b'.') {
            4
        } else {
            3
        }
    } else {
        return end;
    };
    let mut j = i + word;
    if text.get(j) == Some(&b' ') {
        j += 1;
    }
    let n = text[j.min(text.len())..]
        .iter()
        .take(7)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if (1..=6).contains(&n) && !text.get(j + n).is_some_and(|&b| is_word_byte(b)) {
        j + n
    } else {
        end
    }
}

/// The phone number starting at `start`, if one does (the candidate's end is not used: the
/// number is read here).
pub fn find(text: &[u8], start: usize) -> Option<Range> {
    if !left_ok(text, start) {
        return None;
    }
    let num = read(text, start)?;
    // The longest run of groups that is a number and may end where it ends (a phone followed
    // by a date or an amount: `030 1234567 2026`).
    (1..=num.n_groups).rev().find_map(|k| {
        let groups = &num.groups[..k];
        let end = groups[k - 1].end;
        // An extension (`x123`) checks its own end; otherwise the number's end must be one.
        let ext = extension(text, end);
        (!groups[k - 1].paren && (ext > end || right_ok(text, end)) && accept(&num, groups))
            .then_some((start, ext))
    })
}

/// Validates a candidate of the phone alternative (see [`find`]).
pub fn validate(text: &[u8], (start, _): Range) -> Option<Range> {
    find(text, start)
}

/// A necessary condition for [`find`] at a `(`: one to six digits and a `)`.
pub fn may_start_at_paren(text: &[u8], start: usize) -> bool {
    let n = text[start + 1..]
        .iter()
        .take(7)
        .take_while(|b| b.is_ascii_digit())
        .count();
    (1..=6).contains(&n) && text.get(start + 1 + n) == Some(&b')') && left_ok(text, start)
}

/// A necessary condition for [`find`] at a digit `start`, from the first digit group alone:
/// cheap enough to run at every number in clean text.
pub fn may_start_at_digit(text: &[u8], start: usize) -> bool {
    let at = |k: usize| text.get(start + k).copied().unwrap_or(0);
    let mut run = 1;
    while run < 13 && at(run).is_ascii_digit() {
        run += 1;
    }
    let d0 = text[start];
    let next = at(run);
    let shape = match run {
        1 if d0 == b'1' => sep_then_group(text, start + run, true),
        1..=3 if matches!(next, b' ' | b'-') => sep_then_group(text, start + run, false),
        3 => sep_then_group(text, start + run, false),
        5 if next == b' ' => sep_then_group(text, start + run, false),
        10 | 11 if d0 == b'0' => true,
        11 if d0 == b'1' => true,
        2.. if d0 == b'0' => sep_then_group(text, start + run, false),
        _ => false,
    };
    shape && left_ok(text, start)
}

/// True if a separator at `at` (` `, `-`, `.`, `/`, `(`) is followed by the next group (after at
/// most one more space, or a `(`); a dot only in a dotted number (`415.555.2671`,
/// `01.23.45.67.89`), not in an amount or a decimal (`123.45`).  `nanp`: after a lone `1`, a dot
/// starts a three-digit group (`1.415.555.2671`).
fn sep_then_group(text: &[u8], at: usize, nanp: bool) -> bool {
    let b = |k: usize| text.get(at + k).copied().unwrap_or(0);
    let group = |k: usize| b(k).is_ascii_digit() || b(k) == b'(';
    match b(0) {
        b' ' => group(1) || (b(1) == b' ' && group(2)),
        b'-' | b'/' | b'(' => group(1) || b(0) == b'(' && b(1).is_ascii_digit(),
        b'.' if nanp => b(4) == b'.' && (1..=3).all(|k| b(k).is_ascii_digit()),
        b'.' => b(1).is_ascii_digit() && b(2).is_ascii_digit() && (3..6).any(|k| b(k) == b'.'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(s: &str) -> Option<&str> {
        find(s.as_bytes(), 0).map(|(a, b)| &s[a..b])
    }

    fn whole(s: &str) {
        assert_eq!(phone(s), Some(s), "{s}");
    }

    fn not(s: &str) {
        assert_eq!(phone(s), None, "{s}");
    }

    #[test]
    fn international_forms() {
        for s in [
            "+14155552671",
            "+1 415 555 2671",
            "+1 (415) 555-2671",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "+44(0)115 4960914",
            "+44115 496 0777",
            "+49 30 12345678",
            "+49 (0)30 1234567",
            "+49(0)6812415868",
            "0049 30 1234567",
            "+33 1 23 45 67 89",
            "+33 (0)1 23 45 67 89",
            "0033 1 23 45 67 89",
            "+81-3-1234-5678",
            "+81 90 1234 5678",
            "+86 138 1234 5678",
            "+86-10-12345678",
            "+91 98765 43210",
            "+91-22-23456789",
            "+55 11 91234-5678",
            "+55 (11) 91234-5678",
            "+39 06 1234 5678",
        ] {
            whole(s);
        }
        not("+1 115 555 2671"); // NANP area codes start 2-9
        not("+44 20 79"); // too short for GB
        not("+999 1234 5678"); // unassigned code
        not("+02:00");
    }

    #[test]
    fn national_forms() {
        for s in [
            "030 12345678",
            "030/12345678",
            "(030) 1234567",
            "06221 4519409",
            "0171 1234567",
            "030 12345-67",
            "03-1234-5678",
            "090-1234-5678",
            "0120-123-456",
            "075(609)2427",
            "(03)1234-5678",
            "09012345678",
            "01 23 45 67 89",
            "01.23.45.67.89",
            "0612345678",
            "020 7946 0958",
            "(0161) 496 0000",
            "01632 960391",
            "010-12345678",
            "0755 1234 5678",
            "098765 43210",
            "022-23456789",
            "(415) 555-2671",
            "(415)555-2671",
            "415-555-2671",
            "415.555.2671",
            "1-415-555-2671",
            "13812345678",
            "138 1234 5678",
            "98765 43210",
            "(11) 91234-5678",
            "11 91234-5678",
            "(85)33340012",
            "44 20 7946 0958",
            "86 138 1234 5678",
        ] {
            whole(s);
        }
        for s in [
            "415-555.2671",
            "4155552671",
            "0301.234567",
            "1234-567-8901",
            "2026-03-02",
            "01.02.2026 10",
            "07/04/2026",
            "12345-6789",
            "0000123456",
            "1735358512",
            "123-45-6789",
            "10.0.19045.2965",
            "0.5",
            "5413-13243",
        ] {
            not(s);
        }
    }

    #[test]
    fn ends_and_extensions() {
        assert_eq!(phone("415-555-2671 x123"), Some("415-555-2671 x123"));
        assert_eq!(phone("+1-780-563-6083x7783"), Some("+1-780-563-6083x7783"));
        assert_eq!(
            phone("(415) 555-2671 ext. 45."),
            Some("(415) 555-2671 ext. 45")
        );
        assert_eq!(phone("030 1234567 2026"), Some("030 1234567"));
        assert_eq!(
            phone("+1-320-664-9262 - 2352944947495692"),
            Some("+1-320-664-9262")
        );
        assert_eq!(phone("(815) 747-5877 / 4956 3923"), Some("(815) 747-5877"));
        assert_eq!(phone("226-230-6919. 465 56 1419"), Some("226-230-6919"));
        assert_eq!(phone("(033056) 987335"), Some("(033056) 987335"));
        assert_eq!(
            phone("0049 711 45394892-030"),
            Some("0049 711 45394892-030")
        );
        assert_eq!(phone("0221 79967077-576"), Some("0221 79967077-576"));
        assert_eq!(phone("186-4127 / 2026"), None);
        let t = b"batch 4480 0843 1690 8277";
        assert_eq!(find(t, 11), None);
        let t = b"tier 2 362-917-6247";
        assert_eq!(find(t, 7), Some((7, t.len())));
        not("015594283314");
        assert_eq!(phone("01/02/2026 10:15"), None);
        assert_eq!(phone("0301234567:8080"), None);
        assert_eq!(phone("415-555-2671-XL"), None);
        let t = b"SKU-415-555-2671";
        assert_eq!(find(t, 4), None);
        let t = "電話03-1234-5678です".as_bytes();
        assert_eq!(find(t, 6), Some((6, 18)));
    }

    #[test]
    fn the_gate_is_necessary() {
        // Every accepted digit-started number passes the cheap gate.
        for s in [
            "030 1234567",
            "13812345678",
            "98765 43210",
            "1-415-555-2671",
            "44 20 7946 0958",
            "415.555.2671",
            "01.23.45.67.89",
            "0120-123-456",
            "0312345678",
        ] {
            let b = s.as_bytes();
            if b[0].is_ascii_digit() {
                assert!(may_start_at_digit(b, 0), "{s}");
            }
        }
        assert!(!may_start_at_digit(b"2026-03-02", 0));
        assert!(!may_start_at_digit(b"83.25 EUR", 0));
        assert!(!may_start_at_digit(b"657062 order", 0));
        assert!(!may_start_at_digit(b"123.45 EUR", 0));
        assert!(!may_start_at_digit(b"08:34:00", 3));
    }
}
