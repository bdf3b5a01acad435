//! Codec tests: known wire encodings both ways, every operator per type (the result decodes as
//! the type, text and binary agree), content scans, malformed values, and properties over
//! generated values and arbitrary bytes.

use proptest::prelude::*;

use super::*;
use crate::mask::{ColumnOperator, HashKey, Masker, MaskerConfig, Operator, Tally, ValueMask};

const T: Format = Format::Text;
const B: Format = Format::Binary;

/// Masks `value` with `mask`: `None` for NULL, the value itself when unchanged.
fn run(codec: &Codec, fmt: Format, value: &[u8], mask: &dyn ValueMask) -> Option<Vec<u8>> {
    let (mut tally, mut scratch, mut out) = (Tally::new(), Scratch::new(), vec![b'#']);
    let mut cx = Cx::new(mask, &mut tally, &mut scratch);
    match codec.mask(fmt, value, &mut cx, &mut out) {
        Outcome::Unchanged => {
            assert_eq!(out, b"#", "Unchanged appends nothing");
            Some(value.to_vec())
        }
        Outcome::Null => {
            assert_eq!(out, b"#", "Null appends nothing");
            None
        }
        Outcome::Written => Some(out[1..].to_vec()),
    }
}

fn rule(op: Operator) -> ColumnOperator {
    ColumnOperator::new(op, "COLUMN")
}

fn key() -> HashKey {
    HashKey::new(b"test key")
}

fn ops() -> Vec<(&'static str, ColumnOperator)> {
    vec![
        ("replace", rule(Operator::Replace(None))),
        ("constant", rule(Operator::Replace(Some(b"x\"y".to_vec())))),
        ("redact", rule(Operator::Redact)),
        (
            "partial",
            rule(Operator::Partial {
                keep_first: 1,
                keep_last: 2,
                mask_char: '*',
                keep_separators: true,
            }),
        ),
        ("hash", rule(Operator::Hash(key()))),
    ]
}

fn text(codec: &Codec, binary: &[u8]) -> String {
    String::from_utf8(codec.transcode(B, binary).expect("decodes")).unwrap()
}

fn binary(codec: &Codec, text: &str) -> Vec<u8> {
    codec.transcode(T, text.as_bytes()).expect("decodes")
}

/// Text and binary forms of one value agree, and both read back.
fn pair(codec: &Codec, t: &str, b: &[u8]) {
    assert_eq!(binary(codec, t), b, "{codec} text {t:?} to binary");
    assert_eq!(text(codec, b), t, "{codec} binary to text");
}

#[test]
fn known_encodings() {
    pair(&Codec::Int2, "-32768", &i16::MIN.to_be_bytes());
    pair(&Codec::Int4, "2147483647", &i32::MAX.to_be_bytes());
    pair(
        &Codec::Int8,
        "4111111111111111",
        &4_111_111_111_111_111i64.to_be_bytes(),
    );
    // numeric: ndigits, weight, sign, dscale, base-10000 digits
    let num = |nd: i16, w: i16, sign: u16, ds: u16, d: &[u16]| {
        let mut v = Vec::new();
        for x in [
            nd.to_be_bytes(),
            w.to_be_bytes(),
            sign.to_be_bytes(),
            ds.to_be_bytes(),
        ] {
            v.extend_from_slice(&x);
        }
        for x in d {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    };
    pair(&Codec::Numeric, "123.450", &num(2, 0, 0, 3, &[123, 4500]));
    pair(&Codec::Numeric, "0.00", &num(0, 0, 0, 2, &[]));
    pair(
        &Codec::Numeric,
        "-12345678.9",
        &num(3, 1, 0x4000, 1, &[1234, 5678, 9000]),
    );
    pair(&Codec::Numeric, "0.0001", &num(1, -1, 0, 4, &[1]));
    pair(&Codec::Numeric, "100000000", &num(1, 2, 0, 0, &[1]));
    pair(&Codec::Numeric, "NaN", &num(0, 0, 0xC000, 0, &[]));
    pair(&Codec::Numeric, "-Infinity", &num(0, 0, 0xF000, 0, &[]));
    pair(
        &Codec::Inet,
        "192.168.0.1/24",
        &[2, 24, 0, 4, 192, 168, 0, 1],
    );
    pair(
        &Codec::Inet,
        "203.0.113.77",
        &[2, 32, 0, 4, 203, 0, 113, 77],
    );
    pair(&Codec::Cidr, "10.0.0.0/8", &[2, 8, 1, 4, 10, 0, 0, 0]);
    let v6 = |bits: u8, cidr: u8, a: [u8; 16]| {
        let mut v = vec![3, bits, cidr, 16];
        v.extend_from_slice(&a);
        v
    };
    let mut mapped = [0u8; 16];
    mapped[10..].copy_from_slice(&[0xff, 0xff, 1, 2, 3, 4]);
    pair(&Codec::Inet, "::ffff:1.2.3.4", &v6(128, 0, mapped));
    let mut compat = [0u8; 16];
    compat[12..].copy_from_slice(&[1, 2, 3, 4]);
    pair(&Codec::Inet, "::1.2.3.4", &v6(128, 0, compat));
    let mut one = [0u8; 16];
    one[15] = 1;
    pair(&Codec::Inet, "::1", &v6(128, 0, one));
    pair(&Codec::Cidr, "::/0", &v6(0, 1, [0; 16]));
    let mut db8 = [0u8; 16];
    db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    db8[15] = 1;
    pair(&Codec::Inet, "2001:db8::1/64", &v6(64, 0, db8));
    let mut single = [0x11u8; 16];
    single[4] = 0;
    single[5] = 0;
    pair(
        &Codec::Inet,
        "1111:1111:0:1111:1111:1111:1111:1111",
        &v6(128, 0, single),
    );
    pair(
        &Codec::Uuid,
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        &[
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ],
    );
    pair(&Codec::Float8, "1.5", &1.5f64.to_be_bytes());
    pair(&Codec::Float8, "1e+21", &1e21f64.to_be_bytes());
    pair(&Codec::Float8, "100000000000000", &1e14f64.to_be_bytes());
    pair(&Codec::Float8, "1e+15", &1e15f64.to_be_bytes());
    pair(&Codec::Float8, "1.5e-05", &1.5e-5f64.to_be_bytes());
    pair(&Codec::Float8, "0.0001", &1e-4f64.to_be_bytes());
    pair(
        &Codec::Float8,
        "-Infinity",
        &f64::NEG_INFINITY.to_be_bytes(),
    );
    pair(&Codec::Float4, "123456", &123_456f32.to_be_bytes());
    pair(&Codec::Float4, "1.234567e+06", &1_234_567f32.to_be_bytes());
    pair(&Codec::Float4, "0.1", &0.1f32.to_be_bytes());
    pair(&Codec::Bool, "t", &[1]);
    pair(&Codec::Date, "2000-01-01", &0i32.to_be_bytes());
    pair(&Codec::Date, "2024-02-29", &8825i32.to_be_bytes());
    pair(&Codec::Date, "0044-03-15 BC", &(-746_117i32).to_be_bytes());
    pair(&Codec::Date, "infinity", &i32::MAX.to_be_bytes());
    let usecs = |days: i64, secs: i64, frac: i64| (days * 86_400 + secs) * 1_000_000 + frac;
    pair(
        &Codec::Timestamp,
        "2024-02-29 10:11:12.5",
        &usecs(8825, 36_672, 500_000).to_be_bytes(),
    );
    // 10:11:12+05:30 local is 04:41:12 UTC
    pair(
        &Codec::TimestampTz,
        "2024-02-29 04:41:12+00",
        &usecs(8825, 16_872, 0).to_be_bytes(),
    );
    assert_eq!(
        binary(&Codec::TimestampTz, "2024-02-29 10:11:12+05:30"),
        usecs(8825, 16_872, 0).to_be_bytes()
    );
    pair(
        &Codec::Time,
        "23:59:59.000001",
        &usecs(0, 86_399, 1).to_be_bytes(),
    );
    let mut ttz = usecs(0, 3600, 0).to_be_bytes().to_vec();
    ttz.extend_from_slice(&(-19_800i32).to_be_bytes());
    pair(&Codec::TimeTz, "01:00:00+05:30", &ttz);
    let iv = |us: i64, d: i32, m: i32| {
        let mut v = us.to_be_bytes().to_vec();
        v.extend_from_slice(&d.to_be_bytes());
        v.extend_from_slice(&m.to_be_bytes());
        v
    };
    pair(
        &Codec::Interval,
        "1 year 2 mons 3 days 04:05:06.5",
        &iv(usecs(0, 14_706, 500_000), 3, 14),
    );
    pair(
        &Codec::Interval,
        "-1 days +02:03:00",
        &iv(usecs(0, 7380, 0), -1, 0),
    );
    pair(&Codec::Interval, "00:00:00", &iv(0, 0, 0));
    pair(&Codec::Interval, "1 mon -00:00:01", &iv(-1_000_000, 0, 1));
    pair(&Codec::Bytea, "\\x00ff41", &[0, 0xff, 0x41]);
    assert_eq!(binary(&Codec::Bytea, "a\\\\b\\001"), b"a\\b\x01");
    pair(&Codec::Jsonb, "{\"a\": 1}", b"\x01{\"a\": 1}");
}

#[test]
fn other_date_styles_do_not_decode() {
    for (codec, t) in [
        (Codec::Date, "02/29/2024"),
        (Codec::Date, "29.02.2024"),
        (Codec::Timestamp, "Thu Feb 29 10:11:12 2024"),
        (Codec::Interval, "@ 1 year 2 mons"),
        (Codec::Interval, "P1Y2M"),
        (Codec::Date, "2023-02-29"),
    ] {
        assert_eq!(codec.transcode(T, t.as_bytes()), None, "{t}");
        let r = rule(Operator::Redact);
        assert_eq!(run(&codec, T, t.as_bytes(), &r), None, "{t} masks to NULL");
    }
}

/// Every operator on every scalar type: the masked value decodes as the type, the text and the
/// binary form of the same value give the same masked value.
#[test]
fn operators_keep_values_valid_and_formats_agree() {
    let samples: &[(Codec, &str)] = &[
        (Codec::Int2, "-12345"),
        (Codec::Int4, "536228141"),
        (Codec::Int8, "4111111111111111"),
        (Codec::Int8, "-9223372036854775808"),
        (Codec::Numeric, "4111111111111111.25"),
        (Codec::Numeric, "-0.000123"),
        (Codec::Inet, "203.0.113.77"),
        (Codec::Inet, "2001:db8::42/64"),
        (Codec::Cidr, "198.51.100.0/24"),
        (Codec::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (Codec::Float8, "-1234.5678"),
        (Codec::Float4, "3.25"),
        (Codec::Bool, "t"),
        (Codec::Date, "1987-06-05"),
        (Codec::Timestamp, "1987-06-05 04:03:02.1"),
        (Codec::TimestampTz, "1987-06-05 04:03:02+02"),
        (Codec::Time, "04:03:02"),
        (Codec::TimeTz, "04:03:02-07"),
        (Codec::Interval, "3 days 04:00:00"),
        (Codec::Bytea, "\\x414243"),
        (Codec::Json, "{\"email\": \"ann@example.org\"}"),
        (Codec::Jsonb, "{\"email\": \"ann@example.org\"}"),
    ];
    for (codec, t) in samples {
        let b = binary(codec, t);
        for (name, op) in ops() {
            let mt = run(codec, T, t.as_bytes(), &op).expect("not NULL");
            let mb = run(codec, B, &b, &op).expect("not NULL");
            assert!(
                codec.transcode(B, &mb).is_some(),
                "{codec} {name}: masked binary {mb:?} does not decode"
            );
            let mt_binary = codec
                .transcode(T, &mt)
                .unwrap_or_else(|| panic!("{codec} {name}: masked text {mt:?} does not decode"));
            assert_eq!(
                mt_binary, mb,
                "{codec} {name} of {t}: text and binary disagree"
            );
        }
        let null = rule(Operator::Null);
        assert_eq!(run(codec, T, t.as_bytes(), &null), None, "{codec} null");
        assert_eq!(run(codec, B, &b, &null), None, "{codec} null");
    }
}

fn masked_text(codec: &Codec, t: &str, op: Operator) -> String {
    let r = rule(op);
    String::from_utf8(run(codec, T, t.as_bytes(), &r).unwrap()).unwrap()
}

fn partial(keep_first: usize, keep_last: usize) -> Operator {
    Operator::Partial {
        keep_first,
        keep_last,
        mask_char: '*',
        keep_separators: true,
    }
}

#[test]
fn operator_meaning_per_type() {
    assert_eq!(
        masked_text(&Codec::Int8, "4111111111111111", Operator::Redact),
        "0"
    );
    assert_eq!(
        masked_text(&Codec::Int8, "4111111111111111", partial(0, 4)),
        "1111" // leading zeros dropped
    );
    assert_eq!(
        masked_text(&Codec::Int8, "-4111111111111111", partial(2, 2)),
        "-4100000000000011"
    );
    assert_eq!(
        masked_text(&Codec::Numeric, "-12.50", Operator::Redact),
        "0.00"
    );
    assert_eq!(
        masked_text(&Codec::Numeric, "1234.5678", partial(1, 1)),
        "1000.0008"
    );
    assert_eq!(
        masked_text(&Codec::Inet, "203.0.113.77/24", Operator::Redact),
        "0.0.0.0/24"
    );
    assert_eq!(
        masked_text(&Codec::Inet, "203.0.113.77", partial(2, 0)),
        "203.0.0.0"
    );
    assert_eq!(
        masked_text(&Codec::Cidr, "2001:db8::/32", Operator::Redact),
        "::/32"
    );
    let h = masked_text(&Codec::Cidr, "198.51.100.0/24", Operator::Hash(key()));
    assert!(h.ends_with(".0/24"), "cidr host bits stay zero: {h}");
    assert_eq!(
        masked_text(
            &Codec::Uuid,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            partial(4, 2)
        ),
        "a0ee0000-0000-0000-0000-000000000011"
    );
    assert_eq!(
        masked_text(&Codec::Date, "1987-06-05", Operator::Redact),
        "1970-01-01"
    );
    assert_eq!(
        masked_text(&Codec::Date, "1987-06-05", partial(0, 0)),
        "1987-01-01"
    );
    assert!(masked_text(&Codec::Date, "1987-06-05", Operator::Hash(key())).starts_with("1987-"));
    assert_eq!(
        masked_text(
            &Codec::TimestampTz,
            "1987-06-05 04:03:02.5+02",
            Operator::Redact
        ),
        "1970-01-01 02:00:00+02"
    );
    assert_eq!(
        masked_text(&Codec::Time, "04:03:02", partial(0, 0)),
        "04:00:00"
    );
    assert_eq!(
        masked_text(&Codec::TimeTz, "04:03:02+05:30", Operator::Redact),
        "00:00:00+05:30"
    );
    assert_eq!(
        masked_text(&Codec::Float8, "-1234.5", Operator::Redact),
        "0"
    );
    let h = masked_text(&Codec::Float8, "-1234.5", Operator::Hash(key()));
    let v: f64 = h.parse().unwrap();
    assert!(
        (-2048.0..=-1024.0).contains(&v),
        "same sign and binary exponent: {h}"
    );
    assert_eq!(masked_text(&Codec::Bool, "t", Operator::Redact), "f");
    assert_eq!(
        masked_text(&Codec::Interval, "3 days 04:00:00", Operator::Redact),
        "00:00:00"
    );
    assert_eq!(
        masked_text(&Codec::Bytea, "\\x414243", Operator::Redact),
        "\\x"
    );
    assert_eq!(masked_text(&Codec::Bytea, "ABC", partial(1, 0)), "A**");
    // json: replace writes its constant as a JSON string; anything invalid becomes "<MASKED>"
    assert_eq!(
        masked_text(&Codec::Json, "{\"a\": 1}", Operator::Replace(None)),
        "\"<COLUMN>\""
    );
    assert_eq!(
        masked_text(
            &Codec::Json,
            "[1]",
            Operator::Replace(Some(b"a\"b\\\n".to_vec()))
        ),
        "\"a\\\"b\\\\\\u000a\""
    );
    assert_eq!(
        masked_text(&Codec::Json, "{\"a\": 1}", Operator::Redact),
        "\"\""
    );
    assert_eq!(
        masked_text(&Codec::Json, "{\"a\": 1}", partial(0, 0)),
        "\"<MASKED>\""
    );
    // infinities and NaN carry nothing
    assert_eq!(
        masked_text(&Codec::Date, "infinity", Operator::Redact),
        "infinity"
    );
    assert_eq!(masked_text(&Codec::Numeric, "NaN", Operator::Redact), "NaN");
    assert_eq!(
        masked_text(&Codec::Float8, "NaN", Operator::Hash(key())),
        "NaN"
    );
}

#[test]
fn hash_fits_the_integer_width() {
    let h = rule(Operator::Hash(key()));
    for v in [i16::MAX, i16::MIN, 32000, -9999, 12345] {
        let b = v.to_be_bytes();
        let m = run(&Codec::Int2, B, &b, &h).unwrap();
        assert_eq!(m.len(), 2);
        // deterministic: the text form of the same value hashes the same
        let t = run(&Codec::Int2, T, v.to_string().as_bytes(), &h).unwrap();
        assert_eq!(text(&Codec::Int2, &m).as_bytes(), t);
    }
}

fn scanner() -> Masker {
    Masker::new(MaskerConfig {
        operators: vec![(
            "CREDIT_CARD".into(),
            Operator::Partial {
                keep_first: 0,
                keep_last: 4,
                mask_char: '*',
                keep_separators: true,
            },
        )],
        ..MaskerConfig::default()
    })
    .unwrap()
}

#[test]
fn content_scans_by_type() {
    let m = scanner();
    let scan = |c: &Codec, f: Format, v: &[u8]| run(c, f, v, &m);
    let card = 4_111_111_111_111_111i64;
    // a card number stored as a bigint or a numeric is found and masked in the digit domain
    assert_eq!(scan(&Codec::Int8, T, b"4111111111111111").unwrap(), b"1111");
    assert_eq!(
        scan(&Codec::Int8, B, &card.to_be_bytes()).unwrap(),
        1111i64.to_be_bytes()
    );
    let num = binary(&Codec::Numeric, "4111111111111111");
    assert_eq!(
        text(&Codec::Numeric, &scan(&Codec::Numeric, B, &num).unwrap()),
        "1111"
    );
    // a clean number is unchanged (the same bytes)
    assert_eq!(scan(&Codec::Int8, T, b"12345").unwrap(), b"12345");
    // an address is an IP_ADDRESS: zeroed by the default replace
    assert_eq!(scan(&Codec::Inet, T, b"203.0.113.77").unwrap(), b"0.0.0.0");
    let ip = binary(&Codec::Inet, "203.0.113.77/24");
    assert_eq!(
        text(&Codec::Inet, &scan(&Codec::Inet, B, &ip).unwrap()),
        "0.0.0.0/24"
    );
    // types that cannot carry an entity pass unchanged
    for (c, t) in [
        (Codec::Float8, "4111111111111111"),
        (Codec::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (Codec::Date, "2024-01-01"),
        (Codec::Other, "(1,2)"),
    ] {
        assert_eq!(scan(&c, T, t.as_bytes()).unwrap(), t.as_bytes(), "{c}");
    }
    // text-likes and bytea are scanned as text
    assert_eq!(
        scan(&Codec::Text, B, b"mail ann@example.org").unwrap(),
        b"mail <EMAIL>"
    );
    let bytea = binary(&Codec::Bytea, "\\x616e6e406578616d706c652e6f7267");
    assert_eq!(scan(&Codec::Bytea, B, &bytea).unwrap(), b"<EMAIL>");
    assert_eq!(
        scan(&Codec::Bytea, T, b"\\x616e6e406578616d706c652e6f7267").unwrap(),
        b"\\x3c454d41494c3e"
    );
    // json stays JSON (mask::json): a card inside a JSON number stays a number
    let j = b"{\"n\": 4111111111111111, \"e\": \"ann@example.org\"}";
    assert_eq!(
        scan(&Codec::Json, T, j).unwrap(),
        b"{\"n\": 1111, \"e\": \"<EMAIL>\"}"
    );
    let j = b"{\"e\": \"ann@example.org\"}";
    assert_eq!(
        scan(&Codec::Jsonb, B, &[&[1u8][..], j].concat()).unwrap(),
        b"\x01{\"e\": \"<EMAIL>\"}"
    );
    // unknown types: text found -> NULL, clean text kept; binary always NULL
    assert_eq!(
        scan(&Codec::Unknown, T, b"\"k\"=>\"ann@example.org\""),
        None
    );
    assert_eq!(
        scan(&Codec::Unknown, T, b"\"k\"=>\"v\"").unwrap(),
        b"\"k\"=>\"v\""
    );
    assert_eq!(scan(&Codec::Unknown, B, b"anything"), None);
}

fn text_array(elem: Codec, elem_oid: u32) -> Codec {
    Codec::Array(Box::new(ArrayCodec {
        elem,
        elem_oid,
        delimiter: b',',
    }))
}

fn bin_array(elem_oid: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&i32::try_from(dims.len()).unwrap().to_be_bytes());
    v.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
    v.extend_from_slice(&elem_oid.to_be_bytes());
    for (n, lb) in dims {
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&lb.to_be_bytes());
    }
    for e in elems {
        match e {
            None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(b) => {
                v.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
                v.extend_from_slice(b);
            }
        }
    }
    v
}

#[test]
fn arrays_element_by_element() {
    let m = scanner();
    let texts = text_array(Codec::Text, 25);
    let got = run(
        &texts,
        T,
        b"{\"mail ann@example.org\",NULL,plain,\"a,b\"}",
        &m,
    )
    .unwrap();
    assert_eq!(got, b"{\"mail <EMAIL>\",NULL,plain,\"a,b\"}");
    let got = run(&texts, T, b"[0:1]={{x,ann@example.org},{\"\",y}}", &m).unwrap();
    assert_eq!(got, b"[0:1]={{x,<EMAIL>},{\"\",y}}");
    // the binary form: same elements, lengths rewritten
    let arr = bin_array(
        25,
        &[(3, 1)],
        &[Some(b"ann@example.org"), None, Some(b"ok")],
    );
    let got = run(&texts, B, &arr, &m).unwrap();
    assert_eq!(
        got,
        bin_array(25, &[(3, 1)], &[Some(b"<EMAIL>"), None, Some(b"ok")])
    );
    // numbers in an array are masked as numbers
    let ints = text_array(Codec::Int8, 20);
    assert_eq!(
        run(&ints, T, b"{1,4111111111111111}", &m).unwrap(),
        b"{1,1111}"
    );
    // a NULL-ing operator makes NULL elements (and sets the has-nulls flag)
    let nuller = Masker::new(MaskerConfig {
        operators: vec![("EMAIL".into(), Operator::Null)],
        ..MaskerConfig::default()
    })
    .unwrap();
    let arr = bin_array(25, &[(2, 1)], &[Some(b"ann@example.org"), Some(b"ok")]);
    let got = run(&texts, B, &arr, &nuller).unwrap();
    assert_eq!(got, bin_array(25, &[(2, 1)], &[None, Some(b"ok")]));
    assert_eq!(
        run(&texts, T, b"{ann@example.org,ok}", &nuller).unwrap(),
        b"{NULL,ok}"
    );
    // a column rule masks every element; the result is a text[] of masked elements
    let r = rule(Operator::Replace(Some(b"NULL".to_vec())));
    assert_eq!(
        run(&texts, T, b"{a,b}", &r).unwrap(),
        b"{\"NULL\",\"NULL\"}"
    );
    // an array of a type a scan cannot change is not even read
    let dates = text_array(Codec::Date, 1082);
    assert_eq!(
        run(&dates, T, b"{not-a-date}", &m).unwrap(),
        b"{not-a-date}"
    );
    // malformed: wrong element type, truncated, unbalanced -> NULL
    let arr = bin_array(23, &[(1, 1)], &[Some(b"x")]);
    assert_eq!(run(&texts, B, &arr, &m), None);
    assert_eq!(run(&texts, B, &arr[..arr.len() - 1], &m), None);
    assert_eq!(run(&texts, T, b"{a,b", &m), None);
    assert_eq!(run(&texts, T, b"{a}}", &m), None);
}

fn composite(attrs: &[(u32, Codec)]) -> Codec {
    Codec::Composite(
        attrs
            .iter()
            .map(|(oid, c)| Attribute {
                oid: *oid,
                codec: c.clone(),
            })
            .collect(),
    )
}

fn bin_record(atts: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
    let mut v = i32::try_from(atts.len()).unwrap().to_be_bytes().to_vec();
    for (oid, a) in atts {
        v.extend_from_slice(&oid.to_be_bytes());
        match a {
            None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(b) => {
                v.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
                v.extend_from_slice(b);
            }
        }
    }
    v
}

#[test]
fn composites_attribute_by_attribute() {
    let m = scanner();
    let row = composite(&[
        (23, Codec::Int4),
        (25, Codec::Text),
        (20, Codec::Int8),
        (1082, Codec::Date),
    ]);
    let got = run(
        &row,
        T,
        b"(1,\"mail ann@example.org\",4111111111111111,2024-01-01)",
        &m,
    )
    .unwrap();
    assert_eq!(got, b"(1,\"mail <EMAIL>\",1111,2024-01-01)");
    assert_eq!(run(&row, T, b"(1,,,)", &m).unwrap(), b"(1,,,)");
    let card = 4_111_111_111_111_111i64.to_be_bytes();
    let value = bin_record(&[
        (23, Some(&7i32.to_be_bytes())),
        (25, Some(b"ann@example.org")),
        (20, Some(&card)),
        (1082, None),
    ]);
    let got = run(&row, B, &value, &m).unwrap();
    assert_eq!(
        got,
        bin_record(&[
            (23, Some(&7i32.to_be_bytes())),
            (25, Some(b"<EMAIL>")),
            (20, Some(&1111i64.to_be_bytes())),
            (1082, None),
        ])
    );
    // an anonymous record takes its attribute types from the value
    let got = run(&Codec::Record, B, &value, &m).unwrap();
    assert_eq!(got, run(&row, B, &value, &m).unwrap());
    // an attribute of a type the engine does not know is NULL when the record is masked
    let odd = bin_record(&[(99_999, Some(b"ann@example.org")), (25, Some(b"x"))]);
    assert_eq!(
        run(&Codec::Record, B, &odd, &m).unwrap(),
        bin_record(&[(99_999, None), (25, Some(b"x"))])
    );
    // quoting as record_out does
    let r = rule(Operator::Replace(Some(b"a \"b\" (c)".to_vec())));
    let texts = composite(&[(25, Codec::Text)]);
    assert_eq!(
        run(&texts, T, b"(x)", &r).unwrap(),
        b"(\"a \"\"b\"\" (c)\")"
    );
    assert_eq!(
        run(&texts, T, b"(\"a \"\"b\"\" (c)\")", &m).unwrap(),
        b"(\"a \"\"b\"\" (c)\")"
    );
    // mismatches fail closed
    let wrong = bin_record(&[(25, Some(b"x"))]);
    assert_eq!(run(&row, B, &wrong, &m), None);
    assert_eq!(run(&row, T, b"(1,2)", &m), None);
    assert_eq!(run(&row, T, b"(1,a,3,2024-01-01", &m), None);
}

#[test]
fn malformed_values_become_null() {
    let m = scanner();
    let r = rule(Operator::Redact);
    for (c, f, v) in [
        (Codec::Int4, B, &b"\x00\x01"[..]),
        (Codec::Int4, T, b"12a"),
        (Codec::Int2, T, b"40000"),
        (Codec::Int8, T, b"007"),
        (
            Codec::Numeric,
            B,
            b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10",
        ), // digit 10000
        (Codec::Numeric, T, b"1e5"),
        (Codec::Inet, B, b"\x02\x21\x00\x04\x01\x02\x03\x04"), // /33
        (Codec::Inet, T, b"300.1.1.1"),
        (Codec::Jsonb, B, b"\x02{}"),
        (Codec::Bytea, T, b"\\x4"),
    ] {
        assert_eq!(run(&c, f, v, &m), None, "{c} {v:?} (scan)");
        assert_eq!(run(&c, f, v, &r), None, "{c} {v:?} (rule)");
    }
    for (c, f, v) in [
        (Codec::Uuid, T, &b"a0eebc99"[..]),
        (Codec::Float8, B, b"\x00"),
        (Codec::Date, B, b"\x00"),
        (Codec::Bool, T, b"true"),
        (Codec::Interval, B, b"\x00"),
    ] {
        assert_eq!(run(&c, f, v, &r), None, "{c} {v:?} (rule)");
    }
}

#[test]
fn is_json_follows_the_grammar() {
    let ok = |s: &str| json::is_json(s.as_bytes(), &mut Vec::new());
    for s in [
        "1",
        "-0.5e+3",
        "\"\\u00e9\"",
        " [ ] ",
        "{}",
        "{\"a\":[1,{\"b\":null}],\"c\":true}",
        "[[[[]]]]",
    ] {
        assert!(ok(s), "{s}");
    }
    for s in [
        "",
        "01",
        "1.",
        "[1,]",
        "{\"a\"}",
        "{\"a\":1,}",
        "[1 2]",
        "\"\\x\"",
        "tru",
        "{} {}",
        "<EMAIL>",
        "\"\n\"",
        "[",
        "]",
        "{\"a\":}",
    ] {
        assert!(!ok(s), "{s}");
    }
}

fn all_codecs() -> Vec<Codec> {
    let mut v: Vec<Codec> = [
        "text",
        "bytea",
        "json",
        "jsonb",
        "int2",
        "int4",
        "int8",
        "numeric",
        "inet",
        "cidr",
        "uuid",
        "float4",
        "float8",
        "bool",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "record",
        "other",
        "unknown",
    ]
    .iter()
    .map(|n| Codec::scalar(n).unwrap())
    .collect();
    v.push(text_array(Codec::Int8, 20));
    v.push(text_array(Codec::Text, 25));
    v.push(composite(&[(25, Codec::Text), (1700, Codec::Numeric)]));
    v.push(Codec::Range(Box::new(Codec::Text)));
    v.push(Codec::Multirange(Box::new(Codec::Text)));
    v.push(Codec::Hstore);
    v
}

fn bin_range(flags: u8, bounds: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![flags];
    for b in bounds {
        v.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
        v.extend_from_slice(b);
    }
    v
}

#[test]
fn ranges_of_text_are_kept_or_empty() {
    let r = Codec::Range(Box::new(Codec::Text));
    let m = Codec::Multirange(Box::new(Codec::Text));
    let s = scanner();
    // nothing found: kept as they are, in both formats (quoted bounds, infinite bounds)
    for v in [
        &b"[\"a b\",c)"[..],
        b"(,zz]",
        b"empty",
        b"[\"x\"\"y\",\"q\\\\\")",
    ] {
        assert_eq!(
            run(&r, T, v, &s).as_deref(),
            Some(v),
            "{}",
            String::from_utf8_lossy(v)
        );
    }
    let plain = bin_range(0x02, &[b"a b", b"c"]);
    assert_eq!(run(&r, B, &plain, &s), Some(plain.clone()));
    assert_eq!(run(&r, B, &[0x01], &s), Some(vec![0x01]));
    assert_eq!(run(&r, B, &[0x08 | 0x10], &s), Some(vec![0x18]));
    // an entity in a bound: the empty range
    assert_eq!(
        run(&r, T, b"[\"mail ann@example.org\",zz)", &s).unwrap(),
        b"empty"
    );
    let found = bin_range(0x02, &[b"ann@example.org", b"zz"]);
    assert_eq!(run(&r, B, &found, &s).unwrap(), vec![0x01]);
    // a column rule: empty; null: NULL
    for (name, op) in ops() {
        assert_eq!(run(&r, T, b"[a,b)", &op).unwrap(), b"empty", "{name}");
        assert_eq!(run(&r, B, &plain, &op).unwrap(), vec![0x01], "{name}");
        assert_eq!(run(&m, T, b"{[a,b)}", &op).unwrap(), b"{}", "{name}");
    }
    assert_eq!(run(&r, T, b"[a,b)", &rule(Operator::Null)), None);
    // a multirange leaves the masked range out
    let text = b"{[\"a b\",c],[\"mail ann@example.org\",zz)}";
    assert_eq!(run(&m, T, text, &s).unwrap(), b"{[\"a b\",c]}");
    assert_eq!(run(&m, T, b"{}", &s).unwrap(), b"{}");
    let mut bin = 2i32.to_be_bytes().to_vec();
    for r in [&plain, &found] {
        bin.extend_from_slice(&i32::try_from(r.len()).unwrap().to_be_bytes());
        bin.extend_from_slice(r);
    }
    let mut want = 1i32.to_be_bytes().to_vec();
    want.extend_from_slice(&i32::try_from(plain.len()).unwrap().to_be_bytes());
    want.extend_from_slice(&plain);
    assert_eq!(run(&m, B, &bin, &s).unwrap(), want);
    // not a range: NULL
    for v in [&b"[a,b"[..], b"a,b)", b"[a,b,c)", b"emptyx"] {
        assert_eq!(run(&r, T, v, &s), None);
    }
    assert_eq!(run(&r, B, &[0x02, 0, 0, 0, 9, b'a'], &s), None);
}

#[test]
fn hstore_keys_and_values_masked_as_text() {
    let h = Codec::Hstore;
    let s = scanner();
    let plain = br#""a\"b"=>"c\\d", "n"=>NULL"#;
    assert_eq!(run(&h, T, plain, &s).as_deref(), Some(&plain[..]));
    assert_eq!(run(&h, T, b"", &s).as_deref(), Some(&b""[..]));
    assert_eq!(
        run(&h, T, br#""mail"=>"ann@example.org", "n"=>NULL"#, &s).unwrap(),
        br#""mail"=>"<EMAIL>", "n"=>NULL"#
    );
    let mut bin = 2i32.to_be_bytes().to_vec();
    for (k, v) in [(&b"ann@example.org"[..], Some(&b"x"[..])), (b"n", None)] {
        bin.extend_from_slice(&i32::try_from(k.len()).unwrap().to_be_bytes());
        bin.extend_from_slice(k);
        match v {
            Some(v) => {
                bin.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                bin.extend_from_slice(v);
            }
            None => bin.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let out = run(&h, B, &bin, &s).unwrap();
    assert_eq!(&out[..8], &[0, 0, 0, 2, 0, 0, 0, 7]);
    assert_eq!(&out[8..15], b"<EMAIL>");
    assert_eq!(run(&h, T, br#""a"=>"b""#, &rule(Operator::Null)), None);
    assert_eq!(run(&h, T, br#""a"=>"b"#, &s), None);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_outputs_decode(
        value in proptest::collection::vec(any::<u8>(), 0..64),
        which in 0usize..29,
        binary in any::<bool>(),
        op in 0usize..6,
    ) {
        let codecs = all_codecs();
        let codec = &codecs[which % codecs.len()];
        let fmt = if binary { B } else { T };
        let mask: Box<dyn ValueMask> = if op == 5 {
            Box::new(scanner())
        } else {
            Box::new(ops().swap_remove(op).1)
        };
        if let Some(out) = run(codec, fmt, &value, &*mask) {
            if out != value && codec.transcode(fmt, &value).is_some() {
                // what a codec wrote decodes as its type
                prop_assert!(codec.transcode(fmt, &out).is_some(), "{codec} {out:?}");
            }
        }
    }

    #[test]
    fn integers_round_trip(v in any::<i64>()) {
        let t = v.to_string();
        prop_assert_eq!(binary(&Codec::Int8, &t), v.to_be_bytes());
        prop_assert_eq!(text(&Codec::Int8, &v.to_be_bytes()), t.clone());
        for (name, op) in ops() {
            let mb = run(&Codec::Int8, B, &v.to_be_bytes(), &op).unwrap();
            let mt = run(&Codec::Int8, T, t.as_bytes(), &op).unwrap();
            prop_assert_eq!(text(&Codec::Int8, &mb).into_bytes(), mt, "{}", name);
        }
    }

    #[test]
    fn floats_round_trip(bits in any::<u64>()) {
        let v = f64::from_bits(bits);
        let t = text(&Codec::Float8, &v.to_be_bytes());
        let back = binary(&Codec::Float8, &t);
        if v.is_nan() {
            prop_assert!(f64::from_be_bytes(back.try_into().unwrap()).is_nan());
        } else {
            prop_assert_eq!(back, v.to_be_bytes(), "{}", t);
        }
        let f = f32::from_bits(u32::try_from(bits >> 32).unwrap());
        let t = text(&Codec::Float4, &f.to_be_bytes());
        if !f.is_nan() {
            prop_assert_eq!(binary(&Codec::Float4, &t), f.to_be_bytes(), "{}", t);
        }
    }

    #[test]
    fn numerics_round_trip(
        neg in any::<bool>(),
        int in "[1-9][0-9]{0,30}|0",
        frac in "[0-9]{0,20}",
    ) {
        let mut t = String::new();
        if neg && (int != "0" || frac.bytes().any(|c| c != b'0')) {
            t.push('-');
        }
        t.push_str(&int);
        if !frac.is_empty() {
            t.push('.');
            t.push_str(&frac);
        }
        let b = binary(&Codec::Numeric, &t);
        prop_assert_eq!(text(&Codec::Numeric, &b), t.clone());
        for (name, op) in ops() {
            let mb = run(&Codec::Numeric, B, &b, &op).unwrap();
            let mt = run(&Codec::Numeric, T, t.as_bytes(), &op).unwrap();
            prop_assert_eq!(text(&Codec::Numeric, &mb).into_bytes(), mt, "{}", name);
        }
    }

    #[test]
    fn dates_and_timestamps_round_trip(
        day in -2_451_545i64..2_000_000,
        usecs in 0i64..86_400_000_000,
        offset in -50_000i32..50_000,
    ) {
        let d = i32::try_from(day).unwrap();
        let t = text(&Codec::Date, &d.to_be_bytes());
        prop_assert_eq!(binary(&Codec::Date, &t), d.to_be_bytes());
        let stamp = day * 86_400_000_000 + usecs;
        let b = stamp.to_be_bytes();
        let t = text(&Codec::Timestamp, &b);
        prop_assert_eq!(binary(&Codec::Timestamp, &t), b);
        let t = text(&Codec::TimestampTz, &b);
        prop_assert_eq!(binary(&Codec::TimestampTz, &t), b);
        let mut tz = usecs.to_be_bytes().to_vec();
        tz.extend_from_slice(&offset.to_be_bytes());
        let t = text(&Codec::TimeTz, &tz);
        prop_assert_eq!(binary(&Codec::TimeTz, &t), tz);
    }

    #[test]
    fn inets_round_trip(addr in any::<[u8; 16]>(), v6 in any::<bool>(), bits in 0u8..=128) {
        let mut b = if v6 { vec![3, bits, 0, 16] } else { vec![2, bits % 33, 0, 4] };
        b.extend_from_slice(&addr[..if v6 { 16 } else { 4 }]);
        let t = text(&Codec::Inet, &b);
        prop_assert_eq!(binary(&Codec::Inet, &t), b, "{}", t);
    }

    #[test]
    fn intervals_round_trip(usecs in any::<i64>(), days in any::<i32>(), months in any::<i32>()) {
        let mut b = (usecs / 1000).to_be_bytes().to_vec();
        b.extend_from_slice(&days.to_be_bytes());
        b.extend_from_slice(&months.to_be_bytes());
        let t = text(&Codec::Interval, &b);
        prop_assert_eq!(binary(&Codec::Interval, &t), b, "{}", t);
    }
}

#[test]
fn nesting_is_bounded() {
    let m = scanner();
    // ROW(ROW(ROW(... 'ann@example.org' ...))): anonymous records to any depth
    let nest = |depth: usize| {
        let mut v = bin_record(&[(25, Some(b"ann@example.org"))]);
        for _ in 0..depth {
            v = bin_record(&[(2249, Some(&v))]);
        }
        v
    };
    let shallow = run(&Codec::Record, B, &nest(20), &m).unwrap();
    assert!(shallow.windows(7).any(|w| w == b"<EMAIL>"));
    // too deep: the innermost record is NULL (its parent keeps its shape), nothing passes
    let deep = run(&Codec::Record, B, &nest(40), &m).unwrap();
    assert!(!deep.windows(15).any(|w| w == b"ann@example.org"));
    let deep = run(&Codec::Record, B, &nest(2000), &m).unwrap();
    assert!(!deep.windows(15).any(|w| w == b"ann@example.org"));
}

// -- read_field: the composite and range text walks it replaced, as references -----------------

fn old_text_bound(value: &[u8], mut pos: usize, end: u8) -> Option<(Option<Vec<u8>>, usize)> {
    let mut field = Vec::new();
    let mut in_quotes = false;
    let mut quoted = false;
    loop {
        let c = *value.get(pos)?;
        if in_quotes {
            match c {
                b'"' if value.get(pos + 1) == Some(&b'"') => {
                    field.push(b'"');
                    pos += 2;
                }
                b'"' => {
                    in_quotes = false;
                    pos += 1;
                }
                b'\\' => {
                    field.push(*value.get(pos + 1)?);
                    pos += 2;
                }
                _ => {
                    field.push(c);
                    pos += 1;
                }
            }
            continue;
        }
        if c == end || (end == b']' && c == b')') {
            let absent = field.is_empty() && !quoted;
            return Some(((!absent).then_some(field), pos));
        }
        match c {
            b'"' => {
                in_quotes = true;
                quoted = true;
                pos += 1;
            }
            b'\\' => {
                field.push(*value.get(pos + 1)?);
                pos += 2;
            }
            b',' | b'[' | b'(' | b']' | b')' => return None,
            _ => {
                field.push(c);
                pos += 1;
            }
        }
    }
}

/// The composite field walk before [`read_field`]: (terminator position, quoted, field).
fn old_composite_field(value: &[u8], mut pos: usize) -> Option<(usize, bool, Vec<u8>)> {
    let mut field = Vec::new();
    let mut in_quotes = false;
    let mut was_quoted = false;
    loop {
        let c = *value.get(pos)?;
        if in_quotes {
            match c {
                b'"' if value.get(pos + 1) == Some(&b'"') => {
                    field.push(b'"');
                    pos += 2;
                }
                b'"' => {
                    in_quotes = false;
                    pos += 1;
                }
                b'\\' => {
                    field.push(*value.get(pos + 1)?);
                    pos += 2;
                }
                _ => {
                    field.push(c);
                    pos += 1;
                }
            }
            continue;
        }
        match c {
            b',' | b')' => return Some((pos, was_quoted, field)),
            b'"' => {
                in_quotes = true;
                was_quoted = true;
                pos += 1;
            }
            b'\\' => {
                field.push(*value.get(pos + 1)?);
                pos += 2;
            }
            _ => {
                field.push(c);
                pos += 1;
            }
        }
    }
}

fn literal_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b' '),
            Just(b','),
            Just(b'('),
            Just(b')'),
            Just(b'['),
            Just(b']'),
            Just(b'"'),
            Just(b'\\'),
        ],
        0..24,
    )
}

proptest! {
    #[test]
    fn read_field_walks_as_the_composite_and_range_walks_did(
        value in literal_bytes(), pos in 0usize..4, end in prop_oneof![Just(b','), Just(b']')]
    ) {
        let mut field = Vec::new();
        let new = read_field(&value, pos, &mut field, |c| Some(c == b',' || c == b')'))
            .map(|(at, quoted)| (at, quoted, field.clone()));
        prop_assert_eq!(new, old_composite_field(&value, pos));

        let mut field = Vec::new();
        let new = read_field(&value, pos, &mut field, |c| {
            if c == end || (end == b']' && c == b')') {
                Some(true)
            } else if matches!(c, b',' | b'[' | b'(' | b']' | b')') {
                None
            } else {
                Some(false)
            }
        })
        .map(|(at, quoted)| {
            let absent = field.is_empty() && !quoted;
            ((!absent).then_some(field.clone()), at)
        });
        prop_assert_eq!(new, old_text_bound(&value, pos, end));
    }
}
