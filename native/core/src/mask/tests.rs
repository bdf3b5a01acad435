//! Detector tests through the whole [`Masker`]: positives in context, adversarial negatives,
//! overlaps, custom entities, and properties over arbitrary bytes.

use proptest::prelude::*;

use super::*;

fn found(m: &Masker, text: &str) -> Vec<(String, String)> {
    m.scan(text.as_bytes())
        .into_iter()
        .map(|s| (m.name(s.entity).to_owned(), text[s.start..s.end].to_owned()))
        .collect()
}

fn only(text: &str) -> Vec<(String, String)> {
    found(&Masker::builtin(), text)
}

fn one(entity: &str, text: &str, value: &str) {
    assert_eq!(
        only(text),
        vec![(entity.to_owned(), value.to_owned())],
        "in {text:?}"
    );
}

fn none(text: &str) {
    assert_eq!(only(text), vec![], "in {text:?}");
}

#[test]
fn emails_in_context() {
    one(
        "EMAIL",
        "contact: john.doe+x@mail.example.co.uk.",
        "john.doe+x@mail.example.co.uk",
    );
    one(
        "EMAIL",
        "<a href=\"mailto:ann@example.org\">",
        "ann@example.org",
    );
    none("user@localhost and @handle and a@b.c");
}

#[test]
fn phones_in_context() {
    one("PHONE", "call (415) 555-2671 now", "(415) 555-2671");
    one("PHONE", "tel 415-555-2671.", "415-555-2671");
    one("PHONE", "tel +1 415.555.2671 x123", "+1 415.555.2671 x123");
    one("PHONE", "uk +44 20 7946 0958", "+44 20 7946 0958");
    one("PHONE", "e164 +14155552671", "+14155552671");
    none("SKU-415-555-2671");
    none("part 415-555-2671-XL");
    none("order 4155552671");
    none("mixed 415-555.2671");
}

#[test]
fn cards_in_context() {
    one(
        "CREDIT_CARD",
        "tier 2 5525 0204 7300 2387 ok",
        "5525 0204 7300 2387",
    );
    none("batch ref 3579 6285 1428 1417 and 6993 7505 9325 3007");
    assert_eq!(
        only("ssn 123-45-6789 4111 1111 1111 1111"),
        vec![
            ("US_SSN".to_owned(), "123-45-6789".to_owned()),
            ("CREDIT_CARD".to_owned(), "4111 1111 1111 1111".to_owned())
        ]
    );
    one(
        "CREDIT_CARD",
        "visa 4111 1111 1111 1111 exp 12/29",
        "4111 1111 1111 1111",
    );
    one(
        "CREDIT_CARD",
        "mc 2223-0031-2200-3222",
        "2223-0031-2200-3222",
    );
    one("CREDIT_CARD", "amex 378282246310005", "378282246310005");
    one(
        "CREDIT_CARD",
        "maestro 6759649826438453",
        "6759649826438453",
    );
    one("CREDIT_CARD", "jcb 3530111333300000;", "3530111333300000");
    one("CREDIT_CARD", "diners 30569309025904", "30569309025904");
    one(
        "CREDIT_CARD",
        "discover 6011111111111117",
        "6011111111111117",
    );
    none("not luhn 4111111111111112");
    none("order 1234567890123456");
    none("ts 20261129094500123");
}

#[test]
fn ssns_in_context() {
    one("US_SSN", "ssn 123-45-6789", "123-45-6789");
    one("US_SSN", "ssn: 536 22 1234;", "536 22 1234");
    none("ssn 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000");
    none("ssn 111-11-1111 and 123-45 6789");
    none("ref 2026-123-45-6789");
}

#[test]
fn ibans_in_context() {
    one(
        "IBAN",
        "iban GB82 WEST 1234 5698 7654 32 ok",
        "GB82 WEST 1234 5698 7654 32",
    );
    one(
        "IBAN",
        "iban DE89370400440532013000.",
        "DE89370400440532013000",
    );
    none("iban GB82WEST12345698765433");
}

#[test]
fn ips_in_context() {
    one("IP_ADDRESS", "from 192.168.10.1:5432", "192.168.10.1");
    one(
        "IP_ADDRESS",
        "host [2001:db8::8a2e:370:7334]:443",
        "2001:db8::8a2e:370:7334",
    );
    one("IP_ADDRESS", "lo ::1", "::1");
    // A four-part dotted number is a valid address: masked on purpose (see validate::ip).
    one("IP_ADDRESS", "1.2.3.4", "1.2.3.4");
    none("v1.2.3.4 and version 1.2.3 and 1.2.3.4.5 and 999.1.1.1");
}

#[test]
fn secrets_in_context() {
    one("SECRET", "aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE");
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    one("SECRET", &format!("Authorization: Bearer {jwt}"), jwt);
    one("SECRET", &format!("jwt={jwt}. next"), jwt);
    let gh = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    one("SECRET", &format!("token {gh}"), gh);
    one("SECRET", &format!("token: {gh}."), gh);
    one(
        "SECRET",
        "xoxb-123456789012-abcdefABCDEF",
        "xoxb-123456789012-abcdefABCDEF",
    );
    one(
        "SECRET",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    );
    one(
        "SECRET",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    );
    one(
        "SECRET",
        "DB_PASSWORD=Zx8vQ2mN4pL7sK1wE9rT&x=1",
        "Zx8vQ2mN4pL7sK1wE9rT",
    );
    one(
        "SECRET",
        r#"{"api_key": "q8Z2mN4pL7sK1wE9rT5yU3"}"#,
        "q8Z2mN4pL7sK1wE9rT5yU3",
    );
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----";
    one("SECRET", &format!("key:\n{pem}\ntrailer"), pem);
    let cut = "-----BEGIN PRIVATE KEY-----\nMIIEow";
    one("SECRET", cut, cut);
    none("password=aaaaaaaaaaaaaaaaaaaaaaaaaa and token: short");
}

#[test]
fn international_phones_in_context() {
    one(
        "PHONE",
        "Tel.: +49 (0)30 1234567, Fax folgt",
        "+49 (0)30 1234567",
    );
    one("PHONE", "Appelez le 01 23 45 67 89.", "01 23 45 67 89");
    one("PHONE", "call 0044 20 7946 0958 now", "0044 20 7946 0958");
    one("PHONE", "Me liga no (11) 91234-5678.", "(11) 91234-5678");
    one("PHONE", "mob 98765 43210 pls", "98765 43210");
    one("PHONE", "tel 44 20 7946 0958", "44 20 7946 0958");
    one("PHONE", "DE 030/12345678", "030/12345678");
    one(
        "PHONE",
        "ring (0161) 496 0000 ext. 12",
        "(0161) 496 0000 ext. 12",
    );
    none("PO 4500123456 / ref 0352-545 / on 07/04/2026 10:15 / v1.23.0-rc.1 (1.2.3)");
    none("batch 4480 0843 1690 8277 and zip 12345-6789 and 2026-03-02T10:15:00");
}

#[test]
fn entities_touching_non_ascii_text() {
    one(
        "PHONE",
        "お電話は03-1234-5678までお願いします。",
        "03-1234-5678",
    );
    one("PHONE", "请拨打13812345678联系我", "13812345678");
    one(
        "EMAIL",
        "メール：tanaka@example.jpまで",
        "tanaka@example.jp",
    );
    one("EMAIL", "请发送到fsu@example.org，谢谢", "fsu@example.org");
    one(
        "IP_ADDRESS",
        "サーバー192.168.208.86に接続",
        "192.168.208.86",
    );
    one(
        "IP_ADDRESS",
        "接続元IP：2001:db8:55bd::4c4aから",
        "2001:db8:55bd::4c4a",
    );
    one(
        "CREDIT_CARD",
        "カード番号4111 1111 1111 1111で決済",
        "4111 1111 1111 1111",
    );
    one(
        "SECRET",
        "APIキー：AKIAIOSFODNN7EXAMPLEです",
        "AKIAIOSFODNN7EXAMPLE",
    );
    one("PHONE", "📞+33 1 23 45 67 89👍", "+33 1 23 45 67 89");
    one(
        "EMAIL",
        "Réponse à « o'brien@bücher.de ».",
        "o'brien@bücher.de",
    );
    one("IP_ADDRESS", "depuis 10.1.0.0/16, port 22", "10.1.0.0/16");
}

#[test]
fn full_width_values_are_masked_in_their_original_bytes() {
    let m = Masker::new(MaskerConfig {
        operators: vec![(
            "PHONE".into(),
            Operator::Partial {
                keep_first: 0,
                keep_last: 2,
                mask_char: '*',
                keep_separators: true,
            },
        )],
        ..MaskerConfig::default()
    })
    .unwrap();
    let text = "電話：０３－１２３４－５６７８です。mail ｔａｎａｋａ＠example.jp";
    let spans = m.scan(text.as_bytes());
    let got: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (m.name(s.entity), &text[s.start..s.end]))
        .collect();
    assert_eq!(
        got,
        vec![
            ("PHONE", "０３－１２３４－５６７８"),
            ("EMAIL", "ｔａｎａｋａ＠example.jp")
        ]
    );
    let mut out = Vec::new();
    assert_eq!(
        m.mask_value(text.as_bytes(), &mut out, &mut Tally::new()),
        Outcome::Written
    );
    // The full-width number is masked as its ASCII form: no original digit survives.
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "電話：**-****-**78です。mail <EMAIL>"
    );
}

#[test]
fn key_headers_without_footers_end_with_their_material() {
    let log = "2026-03-02 ERROR upload: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n user=ann took=12ms";
    assert_eq!(
        only(log),
        vec![(
            "SECRET".to_owned(),
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7".to_owned()
        )]
    );
    none("unsupported key format: expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----");
    none("paste it (it starts with -----BEGIN OPENSSH PRIVATE KEY-----) into the vault");
    none("error: no -----END RSA PRIVATE KEY----- footer found in upload");
}

#[test]
fn adversarial_negatives() {
    none("order #A-20261129-00042 shipped 2026-11-29 09:45:00.123+01");
    none("uuid 550e8400-e29b-41d4-a716-446655440000");
    none("build v1.2.3 / 1.2.3 / release-2.10.0");
    none("sku 12-3456-7890 and 555-1234 and ISBN 978-3-16-148410-0");
    none("mac 00:1a:2b:3c:4d:5e time 23:59:59 std::vector add::bed");
    none("ids 4111111111111112 9999999999999999 1234567812345670");
}

#[test]
fn spans_never_overlap_and_longest_wins() {
    let m = Masker::new(MaskerConfig {
        custom_patterns: vec![("EMPLOYEE_ID".into(), r"EMP-\d{6}".into())],
        dictionaries: vec![(
            "CODENAME".into(),
            vec!["blue falcon".into(), "falcon".into()],
        )],
        ..MaskerConfig::default()
    })
    .unwrap();
    let t = "EMP-123456 flies Blue Falcon; falconry ok; mail x@EMP-123456.com";
    assert_eq!(
        found(&m, t),
        vec![
            ("EMPLOYEE_ID".to_owned(), "EMP-123456".to_owned()),
            ("CODENAME".to_owned(), "Blue Falcon".to_owned()),
            ("EMAIL".to_owned(), "x@EMP-123456.com".to_owned()),
        ]
    );
}

#[test]
fn masker_operators_and_tally() {
    let key = HashKey::new(b"k");
    let m = Masker::new(MaskerConfig {
        operators: vec![
            ("EMAIL".into(), Operator::Hash(key)),
            (
                "CREDIT_CARD".into(),
                Operator::Partial {
                    keep_first: 0,
                    keep_last: 4,
                    mask_char: '*',
                    keep_separators: true,
                },
            ),
            ("US_SSN".into(), Operator::Null),
        ],
        ..MaskerConfig::default()
    })
    .unwrap();
    let mut out = b"prefix|".to_vec();
    let mut tally = Tally::new();
    let v = b"card 4111 1111 1111 1111 ip 10.0.0.1 mail ann@example.org";
    assert_eq!(m.mask_value(v, &mut out, &mut tally), Outcome::Written);
    let s = String::from_utf8(out).unwrap();
    assert!(
        s.starts_with("prefix|card **** **** **** 1111 ip <IP_ADDRESS> mail "),
        "{s}"
    );
    assert!(!s.contains("ann@example.org") && s.contains('@'), "{s}");
    assert_eq!(tally.total(), 3);

    let mut out = b"keep".to_vec();
    assert_eq!(
        m.mask_value(b"ssn 123-45-6789", &mut out, &mut tally),
        Outcome::Null
    );
    assert_eq!(out, b"keep");
    assert_eq!(
        m.mask_value(b"nothing here", &mut out, &mut tally),
        Outcome::Unchanged
    );
    assert_eq!(out, b"keep");

    let col = ColumnOperator::new(Operator::default(), "COLUMN");
    let mut out = Vec::new();
    assert_eq!(col.mask_value(b"x", &mut out, &mut tally), Outcome::Written);
    assert_eq!(out, b"<COLUMN>");
}

#[test]
fn config_errors() {
    let bad = |c: MaskerConfig| Masker::new(c).unwrap_err();
    assert!(matches!(
        bad(MaskerConfig {
            entities: Some(vec!["NOPE".into()]),
            ..Default::default()
        }),
        MaskerError::UnknownEntity(_)
    ));
    assert!(matches!(
        bad(MaskerConfig {
            custom_patterns: vec![("X".into(), "(".into())],
            ..Default::default()
        }),
        MaskerError::BadPattern { .. }
    ));
    assert!(matches!(
        bad(MaskerConfig {
            operators: vec![("X".into(), Operator::Redact)],
            ..Default::default()
        }),
        MaskerError::UnknownEntity(_)
    ));
    let m = Masker::new(MaskerConfig {
        entities: Some(vec!["EMAIL".into()]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(m.entities(), vec!["EMAIL"]);
    let m = Masker::new(MaskerConfig {
        entities: Some(vec!["EMAIL".into()]),
        operators: vec![("PHONE".into(), Operator::Null)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(m.entities(), vec!["EMAIL"]);
    assert!(m.scan(b"ssn 123-45-6789").is_empty());
}

/// Text made of fragments that look like PII (or nearly), separated by `; `.  Detection depends
/// on neighbours by design (a value glued to a word or inside a run of digit groups is not
/// taken), and masking a neighbour changes that context; `;` ends every candidate.
fn piiish() -> impl Strategy<Value = Vec<u8>> {
    let frag = prop_oneof![
        Just(b"john@example.com".to_vec()),
        Just(b"4111 1111 1111 1111".to_vec()),
        Just(b"123-45-6789".to_vec()),
        Just(b"(415) 555-2671".to_vec()),
        Just(b"GB82WEST12345698765432".to_vec()),
        Just(b"10.0.0.1".to_vec()),
        Just(b"2001:db8::1".to_vec()),
        Just(b"AKIAIOSFODNN7EXAMPLE".to_vec()),
        Just(b"password=Zx8vQ2mN4pL7sK1wE9rT".to_vec()),
        Just(b"-----BEGIN PRIVATE KEY-----".to_vec()),
        "[0-9 .:@+()-]{0,20}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(frag, 0..8).prop_map(|v| v.join(&b"; "[..]))
}

proptest! {
    #[test]
    fn mask_value_never_panics(v in proptest::collection::vec(any::<u8>(), 0..300)) {
        let m = Masker::builtin();
        let mut out = Vec::new();
        let mut tally = Tally::new();
        let outcome = m.mask_value(&v, &mut out, &mut tally);
        prop_assert_eq!(outcome == Outcome::Unchanged, m.scan(&v).is_empty());
        if outcome == Outcome::Unchanged {
            prop_assert!(out.is_empty());
        }
    }

    #[test]
    fn spans_sorted_disjoint_and_masked(v in piiish()) {
        let m = Masker::builtin();
        let spans = m.scan(&v);
        for w in spans.windows(2) {
            prop_assert!(w[0].end <= w[1].start);
        }
        for s in &spans {
            prop_assert!(s.start < s.end && s.end <= v.len());
        }
        let mut out = Vec::new();
        let outcome = m.mask_value(&v, &mut out, &mut Tally::new());
        prop_assert_eq!(outcome == Outcome::Unchanged, spans.is_empty());
        // Re-scanning the masked output finds none of the original values.
        if outcome == Outcome::Written {
            let again = m.scan(&out);
            for s in &spans {
                let original = &v[s.start..s.end];
                for a in &again {
                    prop_assert_ne!(&out[a.start..a.end], original);
                }
            }
        }
    }
}

#[test]
fn an_email_starting_like_another_value_wins_when_longer() {
    one(
        "EMAIL",
        "to 4111111111111111@example.com",
        "4111111111111111@example.com",
    );
    one(
        "EMAIL",
        "to 10.0.0.1.x@example.com",
        "10.0.0.1.x@example.com",
    );
}

#[test]
fn long_adversarial_runs_finish() {
    // Runs of near-candidates: the scan must stay linear (no time is asserted; a quadratic
    // scan of these 64 KiB values would take minutes).
    let m = Masker::builtin();
    for unit in [
        "1.",
        "1-",
        "1 ",
        "1",
        "12-",
        "123-45-",
        "4111 ",
        "GB82 ",
        "password=",
        "::",
        "1.1.1.1+",
    ] {
        let v = unit.repeat((64 << 10) / unit.len());
        let spans = m.scan(v.as_bytes());
        assert!(spans.windows(2).all(|w| w[0].end <= w[1].start));
    }
}

/// Fragments that sit right at the prefilter's edges: glued to words, inside digit runs,
/// keyword separators, local parts with punctuation, dashes before PEM blocks.
fn prefilter_edges() -> impl Strategy<Value = Vec<u8>> {
    let frag = prop_oneof![
        Just(b"x.1abc@ex.com".to_vec()),
        Just(b"._1a@b.co".to_vec()),
        Just(b"a@b@c.com".to_vec()),
        Just(b"DB_PASSWORD = \"Zx8vQ2mN4pL7sK1wE9rT\"".to_vec()),
        Just(b"Api-Key:'Zx8vQ2mN4pL7sK1wE9rT5y'".to_vec()),
        Just(b"x-----BEGIN RSA PRIVATE KEY-----abc-----END RSA PRIVATE KEY-----".to_vec()),
        Just(b"001-415-555-2671".to_vec()),
        Just(b"+44 20 7946 0958".to_vec()),
        Just(b"3782 822463 10005".to_vec()),
        Just(b"5000 1234 5673".to_vec()),
        Just(b"::ffff:192.0.2.1".to_vec()),
        Just(b"fe80::1ff:fe23:4567:890a".to_vec()),
        Just(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig".to_vec()),
        Just(b"ghp_Y3DjN6ozzQ9MXU9cmJyJrE7i9DfTI0LRYc2S".to_vec()),
        Just(b"GB82 WEST 1234 5698 7654 32".to_vec()),
        "[0-9a-fA-F .:@+()=_-]{0,24}".prop_map(String::into_bytes),
        "[a-zA-Z0-9]{0,6}".prop_map(String::into_bytes),
        "[3-6][0-9]{11,19}".prop_map(String::into_bytes),
        "[3-6][0-9]{3}[ -][0-9]{4,6}[ -][0-9]{4,5}([ -][0-9]{1,4})?( [0-9]{1,4})?"
            .prop_map(String::into_bytes),
        "[0-9]{1,4}(:[0-9a-f]{1,4}){1,8}(::[0-9a-f]{0,4})?".prop_map(String::into_bytes),
        "(\\+1|001)?[ .-]?[1-9][0-9]{2}[ .-][1-9][0-9]{2}[ .-][0-9]{4}"
            .prop_map(String::into_bytes),
        "\\(?[1-9][0-9]{2}\\)? ?[0-9]{3}-[0-9]{4}( x[0-9]{1,4})?".prop_map(String::into_bytes),
        "[0-9]{3}[ -][0-9]{2}[ -][0-9]{4}".prop_map(String::into_bytes),
        "[0-9]{1,3}(\\.[0-9]{1,4}){2,4}".prop_map(String::into_bytes),
        // National and international phones, dates and versions that look like them.
        Just(b"030 12345678".to_vec()),
        Just(b"(0161) 496 0000".to_vec()),
        Just(b"+49 (0)30 1234567".to_vec()),
        Just(b"0049 30 1234567-89".to_vec()),
        Just(b"01.23.45.67.89".to_vec()),
        Just(b"13812345678".to_vec()),
        Just(b"98765 43210".to_vec()),
        Just(b"(11) 91234-5678".to_vec()),
        Just(b"075(609)2427".to_vec()),
        Just(b"07/04/2026 10:15".to_vec()),
        Just(b"1.23.0-rc.1 (1.2.3)".to_vec()),
        Just("電話：".as_bytes().to_vec()),
        Just("📞".as_bytes().to_vec()),
        Just("é".as_bytes().to_vec()),
        "[+(]?[0-9]{1,5}\\)?([ ./-]{0,2}\\(?[0-9]{1,6}\\)?){0,5}( ?(x|ext\\.?) ?[0-9]{1,5})?"
            .prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    let sep = prop_oneof![
        Just(&b""[..]),
        Just(&b" "[..]),
        Just(&b"-"[..]),
        Just(&b"."[..])
    ];
    proptest::collection::vec((frag, sep), 0..8).prop_map(|v| {
        v.into_iter()
            .flat_map(|(f, s)| f.into_iter().chain(s.iter().copied()))
            .collect()
    })
}

fn unfiltered_equal(entities: &[Builtin], v: &[u8]) -> Result<(), TestCaseError> {
    let scanner = scan::BuiltinScanner::shared(entities);
    let mut fast = Vec::new();
    scanner.scan_unbudgeted(v, |s| fast.push(s));
    let mut reference = Vec::new();
    scanner.scan_unfiltered(v, |s| reference.push(s));
    // One allowed difference: an email the validator widens to the left over its local part
    // (non-ASCII letters, glued punctuation) may start earlier, over a glued word the reference
    // scan had proposed (and rejected) as a candidate, which moved its "already scanned" mark;
    // the prefilter never proposes a candidate glued to a word.
    let email = Builtin::Email.id();
    prop_assert_eq!(
        fast.len(),
        reference.len(),
        "in {:?}",
        String::from_utf8_lossy(v)
    );
    for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
        let widened = f.entity == email
            && f.start < r.start
            && v[f.start..r.start]
                .iter()
                .all(|&b| b >= 0x80 || validate::email::is_local_part_byte(b));
        let after_previous = i == 0 || fast[i - 1].end <= f.start;
        prop_assert!(
            (f.start == r.start || (widened && after_previous))
                && f.end == r.end
                && f.entity == r.entity,
            "{:?} vs {:?} in {:?}",
            fast,
            reference,
            String::from_utf8_lossy(v)
        );
    }
    Ok(())
}

proptest! {
    /// The prefiltered scan finds exactly what one unanchored search per candidate finds.
    #[test]
    fn prefilter_changes_nothing(v in prefilter_edges()) {
        unfiltered_equal(&Builtin::ALL, &v)?;
        unfiltered_equal(&[Builtin::Email, Builtin::Phone], &v)?;
        unfiltered_equal(&[Builtin::Secret, Builtin::IpAddress], &v)?;
        unfiltered_equal(&[Builtin::CreditCard, Builtin::UsSsn, Builtin::Iban], &v)?;
    }

    #[test]
    fn prefilter_changes_nothing_on_piiish_text(v in piiish()) {
        unfiltered_equal(&Builtin::ALL, &v)?;
    }

    #[test]
    fn prefilter_changes_nothing_on_bytes(v in proptest::collection::vec(any::<u8>(), 0..300)) {
        unfiltered_equal(&Builtin::ALL, &v)?;
    }
}
