//! Rewriter tests: examples per format, then properties (framing valid, lengths recomputed,
//! keep plans byte-identical, escaping round-trips, never a panic).

use std::sync::Arc;

use proptest::prelude::*;

use crate::mask::entity_id;
use crate::rewrite::copy_binary::SIGNATURE;
use crate::rewrite::testing::*;
use crate::rewrite::*;

fn datarow(plan: &RowPlan, body: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = b"prefix".to_vec();
    let mut tallies = plan.new_tallies();
    rewrite_datarow(body, plan, &mut out, &mut tallies)?;
    assert_eq!(&out[..6], b"prefix");
    Ok(out.split_off(6))
}

/// Checks a whole message's framing and returns its body.
fn body_of(tag: u8, message: &[u8]) -> &[u8] {
    assert_eq!(message[0], tag);
    let len = i32::from_be_bytes(message[1..5].try_into().unwrap());
    assert_eq!(usize::try_from(len).unwrap(), message.len() - 1);
    &message[5..]
}

#[test]
fn datarow_columns_are_kept_nulled_and_masked() {
    let plan = RowPlan::new(vec![
        ColumnAction::Keep,
        ColumnAction::Null,
        upper(),
        lengthen(),
        nuller(),
        upper(),
    ]);
    assert_eq!(
        (plan.len(), plan.is_empty(), plan.is_passthrough()),
        (6, false, false)
    );
    let body = fields(&[
        Some(b"id"),
        Some(b"x"),
        Some(b"abc"),
        Some(b"v"),
        Some(b"y"),
        None,
    ]);
    let out = datarow(&plan, &body).unwrap();
    let got = parse_fields(body_of(b'D', &out));
    let long = lengthened(b"v");
    let want: Vec<Option<&[u8]>> = vec![Some(b"id"), None, Some(b"ABC"), Some(&long), None, None];
    assert_eq!(
        got,
        want.iter()
            .map(|v| v.map(<[u8]>::to_vec))
            .collect::<Vec<_>>()
    );
}

#[test]
fn datarow_tallies_count_per_column() {
    let plan = Arc::new(RowPlan::new(vec![upper(), ColumnAction::Keep, upper()]));
    let mut r = Rewriter::row(Arc::clone(&plan));
    assert_eq!((r.tag(), r.is_passthrough()), (b'D', false));
    let mut out = Vec::new();
    for row in [
        [Some(&b"a"[..]), Some(b"b"), Some(b"C")],
        [Some(b"a"), None, Some(b"c")],
    ] {
        r.rewrite(&msg(b'D', &fields(&row)), &mut out).unwrap();
    }
    let up = usize::from(entity_id("TEST_UPPER"));
    let counts: Vec<u64> = r
        .tallies()
        .iter()
        .map(|t| t.counts().get(up).copied().unwrap_or(0))
        .collect();
    assert_eq!(counts, vec![2, 0, 1]);
    let mut sink = Vec::new();
    r.drain_tallies(&mut sink);
    assert_eq!(sink.len(), 3);
    assert_eq!(sink[0].named(), vec![("TEST_UPPER".to_owned(), 2)]);
    assert!(r.tallies().iter().all(crate::mask::Tally::is_empty));
}

#[test]
fn datarow_errors_append_nothing() {
    let plan = RowPlan::new(vec![upper(), upper()]);
    let mut out = vec![1, 2, 3];
    let mut tallies = plan.new_tallies();
    let one = fields(&[Some(b"a")]);
    assert_eq!(
        rewrite_datarow(&one, &plan, &mut out, &mut tallies),
        Err(RewriteError::ColumnCount {
            expected: 2,
            got: 1
        })
    );
    let mut cut = fields(&[Some(b"a"), Some(b"bcd")]);
    cut.pop();
    let err = rewrite_datarow(&cut, &plan, &mut out, &mut tallies).unwrap_err();
    assert!(matches!(err, RewriteError::Malformed(_)), "{err}");
    let mut extra = fields(&[Some(b"a"), None]);
    extra.push(0);
    let err = rewrite_datarow(&extra, &plan, &mut out, &mut tallies).unwrap_err();
    assert!(err.to_string().contains("left over"), "{err}");
    assert!(rewrite_datarow(&[], &plan, &mut out, &mut tallies).is_err());
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn jsonb_keeps_the_version_byte() {
    let plan = RowPlan::new(vec![
        ColumnAction::Jsonb(Arc::new(Upper)),
        ColumnAction::Jsonb(Arc::new(Upper)),
    ]);
    let body = fields(&[Some(b"\x01{\"a\": 1}"), Some(b"\x01{}")]);
    let out = datarow(&plan, &body).unwrap();
    let got = parse_fields(body_of(b'D', &out));
    assert_eq!(
        got,
        vec![Some(b"\x01{\"A\": 1}".to_vec()), Some(b"\x01{}".to_vec())]
    );
    let empty = fields(&[Some(b""), None]);
    assert_eq!(
        datarow(&plan, &empty),
        Err(RewriteError::EmptyJsonb { column: 0 })
    );
}

fn copy(plan: CopyPlan, bodies: &[&[u8]]) -> Result<Vec<Vec<u8>>, RewriteError> {
    let mut r = CopyRewriter::new(Arc::new(plan));
    let mut res = Vec::new();
    for b in bodies {
        let mut out = Vec::new();
        r.rewrite_copydata(b, &mut out)?;
        res.push(body_of(b'd', &out).to_vec());
    }
    Ok(res)
}

fn text_plan(columns: Vec<ColumnAction>) -> CopyPlan {
    CopyPlan::new(CopyFormat::text(), columns).unwrap()
}

fn csv_plan(columns: Vec<ColumnAction>, header: bool) -> CopyPlan {
    let mut format = CopyFormat::csv();
    if let CopyFormat::Csv { header: h, .. } = &mut format {
        *h = header;
    }
    CopyPlan::new(format, columns).unwrap()
}

#[test]
fn copy_text_rows() {
    let plan = text_plan(vec![ColumnAction::Keep, upper(), lengthen(), nuller()]);
    let out = copy(plan, &[b"1\tab\\tc\tx\ty\n", b"2\t\\N\t\\\\\t\\N\r\n"]).unwrap();
    assert_eq!(out[0], b"1\tAB\\tC\t<x\\t,\"\\n\\r\\\\|>\t\\N\n");
    // NULL stays NULL; a masked backslash is escaped again; CRLF kept.
    assert_eq!(out[1], b"2\t\\N\t<\\\\\\t,\"\\n\\r\\\\|>\t\\N\r\n");
}

#[test]
fn copy_text_unescapes_before_masking() {
    // \x41 is 'A', \101 is 'A', \q is 'q': the masker sees "aAAq" and uppercases it.
    let plan = text_plan(vec![upper()]);
    let out = copy(plan, &[b"a\\x41\\101\\q\n"]).unwrap();
    assert_eq!(out[0], b"AAAQ\n");
    // Already upper: unchanged, raw bytes kept as they were.
    let out = copy(text_plan(vec![upper()]), &[b"\\x41\\101\n"]).unwrap();
    assert_eq!(out[0], b"\\x41\\101\n");
}

#[test]
fn copy_text_options_header_and_errors() {
    let format = CopyFormat::Text {
        delimiter: b'|',
        null: b"NULL".to_vec(),
        header: true,
    };
    let plan = CopyPlan::new(format, vec![upper(), lengthen()]).unwrap();
    let out = copy(plan.clone(), &[b"name|note\n", b"a\\|b|NULL\n", b"c|d\n"]).unwrap();
    assert_eq!(out[0], b"name|note\n");
    assert_eq!(out[1], b"A\\|B|NULL\n");
    assert_eq!(out[2], b"C|<d\\t,\"\\n\\r\\\\\\|>\n");
    assert_eq!(
        copy(plan.clone(), &[b"h\n", b"a|b|c\n"]),
        Err(RewriteError::ColumnCount {
            expected: 2,
            got: 3
        })
    );
    assert_eq!(
        copy(plan.clone(), &[b"h\n", b"a\n"]),
        Err(RewriteError::ColumnCount {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        copy(plan, &[b"h\n", b"a|b"]),
        Err(RewriteError::UnterminatedRow)
    );
    for bad in [b'\\', b'\n', b'a', b'5', b'.', 0xff] {
        let format = CopyFormat::Text {
            delimiter: bad,
            null: Vec::new(),
            header: false,
        };
        assert!(CopyPlan::new(format, vec![]).is_err(), "{bad}");
    }
    let format = CopyFormat::Text {
        delimiter: b',',
        null: b"a\nb".to_vec(),
        header: false,
    };
    assert!(CopyPlan::new(format, vec![]).is_err());
}

#[test]
fn copy_csv_rows() {
    let plan = csv_plan(
        vec![ColumnAction::Keep, upper(), lengthen(), upper(), nuller()],
        true,
    );
    let out = copy(
        plan,
        &[
            b"id,\"we,ird\"\"\nname\",c,d,e\n",
            b"1,\"a,\"\"b\"\"\nc\",x,,\"\"\n",
            b"2,plain,,\"\",z\r\n",
        ],
    )
    .unwrap();
    // The header row is kept, quoted newlines and all.
    assert_eq!(out[0], b"id,\"we,ird\"\"\nname\",c,d,e\n");
    // Quoted input stays quoted; the lengthened value needs quotes; an unquoted empty field is
    // NULL and stays NULL; a quoted empty string is a value (nulled by the plan: empty).
    assert_eq!(out[1], b"1,\"A,\"\"B\"\"\nC\",\"<x\t,\"\"\n\r\\|>\",,\n");
    assert_eq!(out[2], b"2,PLAIN,,\"\",\r\n");
}

#[test]
fn copy_csv_options_and_errors() {
    let format = CopyFormat::Csv {
        delimiter: b';',
        quote: b'\'',
        escape: b'\\',
        null: b"NULL".to_vec(),
        header: false,
    };
    let plan = CopyPlan::new(format, vec![upper(), lengthen()]).unwrap();
    let out = copy(
        plan.clone(),
        &[b"'it\\'s; \\\\ok';NULL\n", b"null;'NULL'\n"],
    )
    .unwrap();
    assert_eq!(out[0], b"'IT\\'S; \\\\OK';NULL\n");
    // A value masked into the NULL string must be quoted to stay a value.
    assert_eq!(out[1], b"'NULL';'<NULL\t,\"\n\r\\\\|>'\n");
    assert_eq!(
        copy(plan.clone(), &[b"'abc;d\n"]),
        Err(RewriteError::UnterminatedQuote)
    );
    assert_eq!(
        copy(plan.clone(), &[b"a;b"]),
        Err(RewriteError::UnterminatedRow)
    );
    assert_eq!(
        copy(plan, &[b"a\n"]),
        Err(RewriteError::ColumnCount {
            expected: 2,
            got: 1
        })
    );
    let format = CopyFormat::Csv {
        delimiter: b'"',
        quote: b'"',
        escape: b'"',
        null: vec![],
        header: false,
    };
    assert!(CopyPlan::new(format, vec![]).is_err());
}

#[test]
fn copy_csv_masked_value_equal_to_null_is_quoted() {
    // Default CSV NULL is the empty string: an empty masked value must come out as "".
    struct Empty;
    impl crate::mask::ValueMask for Empty {
        fn mask_value(
            &self,
            _: &[u8],
            _: &mut Vec<u8>,
            _: &mut crate::mask::Tally,
        ) -> crate::mask::Outcome {
            crate::mask::Outcome::Written
        }
    }
    let plan = csv_plan(
        vec![ColumnAction::Text(Arc::new(Empty)), ColumnAction::Null],
        false,
    );
    let out = copy(plan, &[b"secret,x\n"]).unwrap();
    assert_eq!(out[0], b"\"\",\n");
}

fn binary_header() -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&0i32.to_be_bytes());
    h.extend_from_slice(&4i32.to_be_bytes());
    h.extend_from_slice(b"ext!");
    h
}

#[test]
fn copy_binary_header_tuples_trailer() {
    let plan = CopyPlan::new(
        CopyFormat::Binary,
        vec![ColumnAction::Keep, upper(), ColumnAction::Null],
    )
    .unwrap();
    let first = [
        binary_header(),
        fields(&[Some(b"\0\0\0\x01"), Some(b"abc"), Some(b"x")]),
    ]
    .concat();
    let second = fields(&[None, Some(b"def"), None]);
    let out = copy(plan.clone(), &[&first, &second, b"\xff\xff"]).unwrap();
    assert_eq!(&out[0][..binary_header().len()], binary_header().as_slice());
    assert_eq!(
        parse_fields(&out[0][binary_header().len()..]),
        vec![Some(b"\0\0\0\x01".to_vec()), Some(b"ABC".to_vec()), None]
    );
    assert_eq!(
        parse_fields(&out[1]),
        vec![None, Some(b"DEF".to_vec()), None]
    );
    assert_eq!(out[2], b"\xff\xff");
    // Empty result: header and trailer in one CopyData.
    let both = [binary_header(), b"\xff\xff".to_vec()].concat();
    assert_eq!(copy(plan.clone(), &[&both]).unwrap()[0], both);
    assert_eq!(
        copy(plan.clone(), &[&both, b"\0\0"]),
        Err(RewriteError::AfterTrailer)
    );
    let wrong = [binary_header(), fields(&[None])].concat();
    assert_eq!(
        copy(plan.clone(), &[&wrong]),
        Err(RewriteError::ColumnCount {
            expected: 3,
            got: 1
        })
    );
    let mut oids = binary_header();
    oids[11..15].copy_from_slice(&0x0001_0000i32.to_be_bytes());
    assert!(matches!(
        copy(plan.clone(), &[&oids]),
        Err(RewriteError::BadCopyHeader(_))
    ));
    assert!(matches!(
        copy(plan.clone(), &[b"PGCOPY"]),
        Err(RewriteError::BadCopyHeader(_))
    ));
    let mut sig = binary_header();
    sig[0] = b'X';
    assert!(matches!(
        copy(plan.clone(), &[&sig]),
        Err(RewriteError::BadCopyHeader(_))
    ));
    let mut ext = binary_header();
    ext[15..19].copy_from_slice(&99i32.to_be_bytes());
    assert!(matches!(
        copy(plan, &[&ext]),
        Err(RewriteError::BadCopyHeader(_))
    ));
}

#[test]
fn copy_errors_keep_the_position() {
    let plan = Arc::new(csv_plan(vec![upper()], true));
    let mut r = Rewriter::copy(plan);
    assert_eq!(r.tag(), b'd');
    let mut out = Vec::new();
    // A failing first CopyData does not consume the header.
    assert!(r.rewrite(&msg(b'd', b"h\nbad,row\n"), &mut out).is_err());
    assert!(out.is_empty());
    r.rewrite(&msg(b'd', b"head\n"), &mut out).unwrap();
    r.rewrite(&msg(b'd', b"x\n"), &mut out).unwrap();
    assert_eq!(out, [msg(b'd', b"head\n"), msg(b'd', b"X\n")].concat());
}

// ---- properties ----------------------------------------------------------------------------

/// Values drawn from bytes every format treats specially.
/// A typed column: `codec` in `format`, scanned by the built-in detectors (cards keep their
/// last four digits).
fn typed(codec: crate::codec::Codec, format: crate::codec::Format) -> ColumnAction {
    use crate::mask::{Masker, MaskerConfig, Operator};
    let masker = Masker::new(MaskerConfig {
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
    .unwrap();
    ColumnAction::Typed(Arc::new(TypedColumn::new(
        Arc::new(codec),
        format,
        Arc::new(masker),
    )))
}

/// The same typed value gets the same treatment in a DataRow (binary and text) and in every
/// COPY format.
#[test]
fn typed_columns_agree_across_paths() {
    use crate::codec::{Codec, Format};
    let card = 4_111_111_111_111_111i64.to_be_bytes();
    let ip = [2u8, 32, 0, 4, 203, 0, 113, 77];
    let row = RowPlan::new(vec![
        typed(Codec::Int8, Format::Binary),
        typed(Codec::Inet, Format::Binary),
        typed(Codec::Float8, Format::Binary),
    ]);
    let f = 1.5f64.to_be_bytes();
    let out = datarow(&row, &fields(&[Some(&card), Some(&ip), Some(&f)])).unwrap();
    let got = parse_fields(body_of(b'D', &out));
    assert_eq!(
        got,
        vec![
            Some(1111i64.to_be_bytes().to_vec()),
            Some(vec![2, 32, 0, 4, 0, 0, 0, 0]),
            Some(f.to_vec()), // a float cannot carry an entity: unchanged
        ]
    );
    let text_row = RowPlan::new(vec![
        typed(Codec::Int8, Format::Text),
        typed(Codec::Inet, Format::Text),
        typed(Codec::Float8, Format::Text),
    ]);
    let out = datarow(
        &text_row,
        &fields(&[
            Some(b"4111111111111111"),
            Some(b"203.0.113.77"),
            Some(b"1.5"),
        ]),
    )
    .unwrap();
    assert_eq!(
        parse_fields(body_of(b'D', &out)),
        vec![
            Some(b"1111".to_vec()),
            Some(b"0.0.0.0".to_vec()),
            Some(b"1.5".to_vec())
        ]
    );
    let cols = || {
        vec![
            typed(Codec::Int8, Format::Text),
            typed(Codec::Inet, Format::Text),
            typed(Codec::Float8, Format::Text),
        ]
    };
    let out = copy(
        text_plan(cols()),
        &[b"4111111111111111\t203.0.113.77\t1.5\n"],
    )
    .unwrap();
    assert_eq!(out, vec![b"1111\t0.0.0.0\t1.5\n".to_vec()]);
    let out = copy(
        csv_plan(cols(), false),
        &[b"4111111111111111,\"203.0.113.77\",1.5\n"],
    )
    .unwrap();
    assert_eq!(out, vec![b"1111,\"0.0.0.0\",1.5\n".to_vec()]);
    let plan = CopyPlan::new(
        CopyFormat::Binary,
        vec![
            typed(Codec::Int8, Format::Binary),
            typed(Codec::Inet, Format::Binary),
            typed(Codec::Float8, Format::Binary),
        ],
    )
    .unwrap();
    let body = [
        binary_header(),
        fields(&[Some(&card), Some(&ip), Some(&f)]),
        (-1i16).to_be_bytes().to_vec(),
    ]
    .concat();
    let out = copy(plan, &[&body]).unwrap();
    let expected = [
        binary_header(),
        fields(&[
            Some(&1111i64.to_be_bytes()),
            Some(&[2, 32, 0, 4, 0, 0, 0, 0]),
            Some(&f),
        ]),
        (-1i16).to_be_bytes().to_vec(),
    ]
    .concat();
    assert_eq!(out, vec![expected]);
    // a malformed typed value is NULL, the row is still forwarded
    let out = datarow(&row, &fields(&[Some(b"\0"), None, Some(&f)])).unwrap();
    assert_eq!(
        parse_fields(body_of(b'D', &out)),
        vec![None, None, Some(f.to_vec())]
    );
}

fn arb_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    let byte = prop::sample::select(b"ab\t,;\"'\\\n\rN|x.\x08\x0b".to_vec());
    prop::option::weighted(0.85, prop::collection::vec(byte, 0..8))
}

#[derive(Debug, Clone, Copy)]
enum Act {
    Keep,
    Null,
    Upper,
    Nuller,
    Lengthen,
}

fn arb_act() -> impl Strategy<Value = Act> {
    prop::sample::select(vec![
        Act::Keep,
        Act::Null,
        Act::Upper,
        Act::Nuller,
        Act::Lengthen,
    ])
}

impl Act {
    fn action(self) -> ColumnAction {
        match self {
            Act::Keep => ColumnAction::Keep,
            Act::Null => ColumnAction::Null,
            Act::Upper => upper(),
            Act::Nuller => nuller(),
            Act::Lengthen => lengthen(),
        }
    }

    fn expect(self, v: &Option<Vec<u8>>) -> Option<Vec<u8>> {
        let v = v.as_ref()?;
        match self {
            Act::Keep => Some(v.clone()),
            Act::Null | Act::Nuller => None,
            Act::Upper => Some(v.to_ascii_uppercase()),
            Act::Lengthen => Some(lengthened(v)),
        }
    }
}

/// Independent text-format encoder and decoder (delimiter tab, NULL `\N`).
fn text_encode(row: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for &c in v {
                    match c {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        _ => out.push(c),
                    }
                }
            }
        }
    }
    out.push(b'\n');
    out
}

fn text_decode(line: &[u8]) -> Vec<Option<Vec<u8>>> {
    let line = line.strip_suffix(b"\n").expect("newline");
    let mut row = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    let mut raw: Vec<u8> = Vec::new();
    let mut it = line.iter().copied();
    let mut finish = |field: &mut Vec<u8>, raw: &mut Vec<u8>| {
        row.push(if raw.as_slice() == b"\\N" {
            None
        } else {
            Some(std::mem::take(field))
        });
        field.clear();
        raw.clear();
    };
    while let Some(c) = it.next() {
        match c {
            b'\\' => {
                let e = it.next().expect("escape");
                raw.extend([c, e]);
                field.push(match e {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'v' => 0x0b,
                    b'f' => 0x0c,
                    other => other,
                });
            }
            b'\t' => finish(&mut field, &mut raw),
            _ => {
                raw.push(c);
                field.push(c);
            }
        }
    }
    finish(&mut field, &mut raw);
    row
}

/// Independent CSV encoder and decoder (delimiter `,`, quote and escape `"`, NULL empty).
fn csv_encode(row: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(v) = v {
            if v.is_empty() || v.iter().any(|c| b",\"\n\r".contains(c)) {
                out.push(b'"');
                for &c in v {
                    if c == b'"' {
                        out.push(b'"');
                    }
                    out.push(c);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(v);
            }
        }
    }
    out.push(b'\n');
    out
}

fn csv_decode(line: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut row = Vec::new();
    let mut field = Vec::new();
    let mut quoted = false;
    let mut in_quote = false;
    let mut i = 0;
    loop {
        let c = line[i];
        i += 1;
        if in_quote {
            if c == b'"' && line.get(i) == Some(&b'"') {
                field.push(b'"');
                i += 1;
            } else if c == b'"' {
                in_quote = false;
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            b'"' => {
                quoted = true;
                in_quote = true;
            }
            b',' | b'\n' => {
                let f = std::mem::take(&mut field);
                row.push(if !quoted && f.is_empty() {
                    None
                } else {
                    Some(f)
                });
                quoted = false;
                if c == b'\n' {
                    assert_eq!(i, line.len());
                    return row;
                }
            }
            _ => field.push(c),
        }
    }
}

/// A row of values (`None`: NULL).
type Row = Vec<Option<Vec<u8>>>;

fn arb_rows() -> impl Strategy<Value = (Vec<Act>, Vec<Row>)> {
    prop::collection::vec(arb_act(), 1..6).prop_flat_map(|acts| {
        let n = acts.len();
        let rows = prop::collection::vec(prop::collection::vec(arb_value(), n), 0..5);
        (Just(acts), rows)
    })
}

proptest! {
    #[test]
    fn datarow_rewrites_as_the_plan_says((acts, rows) in arb_rows()) {
        let plan = RowPlan::new(acts.iter().map(|a| a.action()).collect());
        let keep = RowPlan::new(vec![ColumnAction::Keep; acts.len()]);
        for row in &rows {
            let refs: Vec<Option<&[u8]>> = row.iter().map(Option::as_deref).collect();
            let body = fields(&refs);
            let out = datarow(&plan, &body).unwrap();
            let got = parse_fields(body_of(b'D', &out));
            let want: Vec<_> = acts.iter().zip(row).map(|(a, v)| a.expect(v)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(datarow(&keep, &body).unwrap(), msg(b'D', &body));
        }
    }

    #[test]
    fn copy_text_round_trips((acts, rows) in arb_rows()) {
        let columns: Vec<_> = acts.iter().map(|a| a.action()).collect();
        let bodies: Vec<Vec<u8>> = rows.iter().map(|r| text_encode(r)).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let out = copy(text_plan(columns), &refs).unwrap();
        for (row, line) in rows.iter().zip(&out) {
            let want: Vec<_> = acts.iter().zip(row).map(|(a, v)| a.expect(v)).collect();
            prop_assert_eq!(text_decode(line), want);
        }
        let keep = copy(text_plan(vec![ColumnAction::Keep; acts.len()]), &refs).unwrap();
        prop_assert_eq!(keep, bodies);
    }

    #[test]
    fn copy_csv_round_trips((acts, rows) in arb_rows(), header in any::<bool>()) {
        let columns: Vec<_> = acts.iter().map(|a| a.action()).collect();
        let mut bodies: Vec<Vec<u8>> = rows.iter().map(|r| csv_encode(r)).collect();
        if header {
            bodies.insert(0, b"\"a\nb\",c\n".to_vec());
        }
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let mut out = copy(csv_plan(columns, header), &refs).unwrap();
        if header {
            prop_assert_eq!(out.remove(0), bodies[0].clone());
        }
        for (row, line) in rows.iter().zip(&out) {
            let want: Vec<_> = acts.iter().zip(row).map(|(a, v)| a.expect(v)).collect();
            prop_assert_eq!(csv_decode(line), want);
        }
        // Many rows in one CopyData read the same as one per CopyData.
        let joined = bodies.concat();
        let one = copy(csv_plan(acts.iter().map(|a| a.action()).collect(), header), &[&joined]).unwrap();
        let all: Vec<u8> = (if header { [vec![bodies[0].clone()], out].concat() } else { out }).concat();
        prop_assert_eq!(&one[0], &all);
        let keep = copy(csv_plan(vec![ColumnAction::Keep; acts.len()], header), &refs).unwrap();
        prop_assert_eq!(keep, bodies);
    }

    #[test]
    fn copy_binary_rewrites_as_the_plan_says((acts, rows) in arb_rows()) {
        let columns: Vec<_> = acts.iter().map(|a| a.action()).collect();
        let mut bodies: Vec<Vec<u8>> = rows.iter().map(|r| {
            let refs: Vec<Option<&[u8]>> = r.iter().map(Option::as_deref).collect();
            fields(&refs)
        }).collect();
        prop_assume!(!rows.is_empty());
        bodies.push(b"\xff\xff".to_vec());
        bodies[0] = [binary_header(), bodies[0].clone()].concat();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let mut out = copy(CopyPlan::new(CopyFormat::Binary, columns).unwrap(), &refs).unwrap();
        prop_assert_eq!(out.pop().unwrap(), b"\xff\xff".to_vec());
        let header = binary_header();
        let h = header.len();
        prop_assert_eq!(&out[0][..h], header.as_slice());
        out[0].drain(..h);
        for (row, tuple) in rows.iter().zip(&out) {
            let want: Vec<_> = acts.iter().zip(row).map(|(a, v)| a.expect(v)).collect();
            prop_assert_eq!(parse_fields(tuple), want);
        }
        let keep = copy(CopyPlan::new(CopyFormat::Binary, vec![ColumnAction::Keep; acts.len()]).unwrap(), &refs).unwrap();
        prop_assert_eq!(keep, bodies);
    }

    #[test]
    fn arbitrary_input_never_panics(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4),
        acts in prop::collection::vec(arb_act(), 0..4),
        format in 0u8..3,
        typed_column in any::<bool>(),
    ) {
        let mut columns: Vec<_> = acts.iter().map(|a| a.action()).collect();
        if typed_column {
            use crate::codec::{ArrayCodec, Codec, Format};
            let elem = Codec::Numeric;
            let array = Codec::Array(Box::new(ArrayCodec { elem, elem_oid: 1700, delimiter: b',' }));
            let fmt = if format == 2 { Format::Binary } else { Format::Text };
            columns.push(typed(array, fmt));
        }
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let _ = datarow(&RowPlan::new(columns.clone()), refs[0]);
        let format = match format {
            0 => CopyFormat::text(),
            1 => CopyFormat::csv(),
            _ => CopyFormat::Binary,
        };
        let mut r = CopyRewriter::new(Arc::new(CopyPlan::new(format, columns).unwrap()));
        for b in refs {
            let mut out = Vec::new();
            if r.rewrite_copydata(b, &mut out).is_ok() {
                body_of(b'd', &out);
            } else {
                prop_assert!(out.is_empty());
            }
        }
    }
}
