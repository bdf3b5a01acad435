//! Country calling codes (ITU-T E.164) and the lengths of national significant numbers (the
//! digits after the country code, without the trunk prefix), compiled from the national
//! numbering plans.  Codes are prefix-free, so the first one to three digits after `+` / `00`
//! name at most one country.  A code with no entry of its own gets [`DEFAULT_NSN`].

/// NSN lengths of assigned codes we have no closer figure for.
pub const DEFAULT_NSN: (u8, u8) = (6, 12);

/// `(code, shortest NSN, longest NSN)` for the codes whose plan we know.  Longest includes the
/// longest direct-dial extension people write as part of the number (DE, AT).
const PLANS: &[(u16, u8, u8)] = &[
    (1, 10, 10),   // NANP
    (7, 10, 10),   // RU, KZ
    (20, 8, 10),   // EG
    (27, 9, 9),    // ZA
    (30, 10, 10),  // GR
    (31, 9, 9),    // NL
    (32, 8, 9),    // BE
    (33, 9, 9),    // FR
    (34, 9, 9),    // ES
    (36, 8, 9),    // HU
    (39, 6, 11),   // IT (leading 0 is part of the NSN)
    (40, 9, 9),    // RO
    (41, 9, 9),    // CH
    (43, 4, 13),   // AT
    (44, 9, 10),   // GB
    (45, 8, 8),    // DK
    (46, 7, 10),   // SE
    (47, 8, 8),    // NO
    (48, 9, 9),    // PL
    (49, 5, 14),   // DE (area code + subscriber + optional extension)
    (51, 8, 9),    // PE
    (52, 10, 10),  // MX
    (53, 8, 8),    // CU
    (54, 10, 11),  // AR
    (55, 10, 11),  // BR
    (56, 9, 9),    // CL
    (57, 10, 10),  // CO
    (58, 10, 10),  // VE
    (60, 8, 10),   // MY
    (61, 9, 9),    // AU
    (62, 8, 12),   // ID
    (63, 8, 10),   // PH
    (64, 8, 10),   // NZ
    (65, 8, 8),    // SG
    (66, 8, 9),    // TH
    (81, 9, 10),   // JP
    (82, 8, 10),   // KR
    (84, 9, 10),   // VN
    (86, 10, 11),  // CN
    (90, 10, 10),  // TR
    (91, 10, 10),  // IN
    (92, 9, 10),   // PK
    (93, 9, 9),    // AF
    (94, 9, 9),    // LK
    (95, 8, 10),   // MM
    (98, 10, 10),  // IR
    (212, 9, 9),   // MA
    (213, 9, 9),   // DZ
    (216, 8, 8),   // TN
    (233, 9, 9),   // GH
    (234, 8, 10),  // NG
    (251, 9, 9),   // ET
    (254, 9, 9),   // KE
    (255, 9, 9),   // TZ
    (256, 9, 9),   // UG
    (351, 9, 9),   // PT
    (352, 4, 11),  // LU
    (353, 7, 9),   // IE
    (354, 7, 9),   // IS
    (358, 5, 12),  // FI
    (359, 8, 9),   // BG
    (370, 8, 8),   // LT
    (371, 8, 8),   // LV
    (372, 7, 8),   // EE
    (380, 9, 9),   // UA
    (381, 8, 9),   // RS
    (385, 8, 9),   // HR
    (386, 8, 8),   // SI
    (420, 9, 9),   // CZ
    (421, 9, 9),   // SK
    (852, 8, 8),   // HK
    (853, 8, 8),   // MO
    (855, 8, 9),   // KH
    (880, 10, 10), // BD
    (886, 8, 9),   // TW
    (960, 7, 7),   // MV
    (961, 7, 8),   // LB
    (962, 8, 9),   // JO
    (964, 10, 10), // IQ
    (965, 8, 8),   // KW
    (966, 9, 9),   // SA
    (971, 8, 9),   // AE
    (972, 8, 9),   // IL
    (973, 8, 8),   // BH
    (974, 8, 8),   // QA
    (977, 10, 10), // NP
    (998, 9, 9),   // UZ
];

/// True if `code` (one to three digits) is an assigned country calling code.  Unassigned:
/// the spare and reserved ranges of E.164 (0, 28x, 80x, 83x, 89x, 99x ...).
fn assigned(code: u16) -> bool {
    const ONE_TWO: &[u16] = &[
        1, 7, 20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53,
        54, 55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
    ];
    const THREE: &[(u16, u16)] = &[
        (211, 213),
        (216, 216),
        (218, 218),
        (220, 258),
        (260, 269),
        (290, 291),
        (297, 299),
        (350, 359),
        (370, 383),
        (385, 387),
        (389, 389),
        (420, 421),
        (423, 423),
        (500, 509),
        (590, 599),
        (670, 670),
        (672, 692),
        (850, 850),
        (852, 853),
        (855, 856),
        (880, 880),
        (886, 886),
        (960, 968),
        (970, 977),
        (992, 998),
    ];
    ONE_TWO.contains(&code) || THREE.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
}

/// The country code at the start of `digits` (ASCII) and its NSN length range: codes are
/// prefix-free, so the shortest assigned prefix is the code.
pub fn country(digits: &[u8]) -> Option<(u16, usize, (u8, u8))> {
    let mut code = 0u16;
    for (i, &d) in digits.iter().take(3).enumerate() {
        code = code * 10 + u16::from(d - b'0');
        if i == 0 && code == 0 {
            return None;
        }
        if assigned(code) {
            let range = PLANS
                .iter()
                .find(|p| p.0 == code)
                .map_or(DEFAULT_NSN, |p| (p.1, p.2));
            return Some((code, i + 1, range));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_prefix_free_lookups() {
        assert_eq!(country(b"14155552671").map(|c| c.0), Some(1));
        assert_eq!(country(b"4930123456").map(|c| (c.0, c.1)), Some((49, 2)));
        assert_eq!(country(b"351912345678").map(|c| (c.0, c.1)), Some((351, 3)));
        assert_eq!(country(b"8613812345678").map(|c| c.2), Some((10, 11)));
        assert_eq!(country(b"0123"), None);
        assert_eq!(country(b"2800"), None); // 28x is spare
        assert!(PLANS.iter().all(|p| assigned(p.0) && p.1 <= p.2));
    }
}
