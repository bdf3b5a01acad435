use super::*;

fn kinds(text: &str) -> Option<Vec<(String, Kind)>> {
    let mut out = Vec::new();
    scan(text.as_bytes(), &mut out).ok()?;
    Some(
        out.iter()
            .map(|t| (text[t.start as usize..t.end as usize].to_owned(), t.kind))
            .collect(),
    )
}

fn key(text: &str) -> Option<Vec<u8>> {
    let mut s = Shaper::new();
    let mut out = Vec::new();
    s.key(text.as_bytes(), &mut out).then_some(out)
}

#[test]
fn tokens_of_a_statement() {
    let got = kinds("SELECT a.b, 'x''y', 1.5e3 FROM t WHERE c <= $1 -- tail").unwrap();
    let want = [
        ("SELECT", Kind::Word),
        ("a", Kind::Word),
        (".", Kind::Char),
        ("b", Kind::Word),
        (",", Kind::Char),
        ("'x''y'", Kind::Sconst),
        (",", Kind::Char),
        ("1.5e3", Kind::Fconst),
        ("FROM", Kind::Word),
        ("t", Kind::Word),
        ("WHERE", Kind::Word),
        ("c", Kind::Word),
        ("<=", Kind::LessEquals),
        ("$1", Kind::Param),
        ("-- tail", Kind::SqlComment),
    ];
    let want: Vec<(String, Kind)> = want.iter().map(|(t, k)| ((*t).to_owned(), *k)).collect();
    assert_eq!(got, want);
}

#[test]
fn numbers() {
    let k = |t: &str| kinds(t).map(|v| v.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
    assert_eq!(k("2147483647"), Some(vec![Kind::Iconst]));
    assert_eq!(k("2147483648"), Some(vec![Kind::Fconst]));
    assert_eq!(k("0x7FFF_FFFF"), Some(vec![Kind::Iconst]));
    assert_eq!(k("0x80000000"), Some(vec![Kind::Fconst]));
    assert_eq!(k("0b101 0o17 1_000"), Some(vec![Kind::Iconst; 3]));
    assert_eq!(
        k("1..2"),
        Some(vec![Kind::Iconst, Kind::DotDot, Kind::Iconst])
    );
    assert_eq!(k(".5 1. 1.e5"), Some(vec![Kind::Fconst; 3]));
    for junk in [
        "1a", "1_", "1__0", "0x", "0xg", "1e+", "1.x", "1_2$", "0x1F$", "1e5_0$",
    ] {
        assert_eq!(k(junk), None, "{junk}");
    }
    assert_eq!(k("1e5$"), None); // {integer_junk}: 1 and the identifier e5$
    assert_eq!(k("1e5 $"), Some(vec![Kind::Fconst, Kind::Char]));
}

#[test]
fn strings_and_continuations() {
    let k = kinds;
    let v = k("'a' -- it's\n 'b' x").unwrap();
    assert_eq!(v[0], ("'a' -- it's\n 'b'".to_owned(), Kind::Sconst));
    assert_eq!(k("'a' 'b'").unwrap().len(), 2);
    assert_eq!(k("$a$ $b$ x $a$").unwrap().len(), 1);
    assert_eq!(k("E'\\xC3\\xA9'").unwrap()[0].1, Kind::Sconst);
    assert_eq!(k("E'\\xC3'"), None); // invalid UTF-8 after unescaping
    assert_eq!(k("E'\\0'"), None);
    assert_eq!(k("E'\\u00e9 \\U0001F600'").unwrap().len(), 1);
    assert_eq!(k("E'\\uD83D\\uDE00'").unwrap().len(), 1);
    assert_eq!(k("E'\\uD83D'"), None);
    assert_eq!(k("E'\\u12'"), None);
    assert_eq!(k("E'\\u0000'"), None);
    assert_eq!(k("'unterminated"), None);
    assert_eq!(k("\"\""), None);
    assert_eq!(k("/* a /* b */ c */").unwrap()[0].1, Kind::CComment);
    assert_eq!(k("/* a /* b */"), None);
    assert_eq!(k("n'x'").unwrap()[0].1, Kind::Nchar);
    assert_eq!(k("u&x").unwrap()[0], ("u".to_owned(), Kind::Word));
}

#[test]
fn operators() {
    let k = |t: &str| kinds(t).map(|v| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>());
    assert_eq!(k("a=-1").unwrap(), ["a", "=", "-", "1"]);
    assert_eq!(k("a@-1").unwrap(), ["a", "@-", "1"]);
    assert_eq!(k("a+/*c*/1").unwrap(), ["a", "+", "/*c*/", "1"]);
    assert_eq!(k("a->>b").unwrap(), ["a", "->>", "b"]);
    assert_eq!(k("a<=>b").unwrap(), ["a", "<=>", "b"]);
    assert_eq!(k(&format!("a {} b", "~".repeat(64))), None);
}

#[test]
fn keys_share_constants_only() {
    assert_eq!(
        key("select * from t where a = 1 and b = 'x'"),
        key("select * from t where a = 42 and b = E'yy'")
    );
    assert_ne!(key("select 1"), key("select 1.5"));
    assert_ne!(key("select 1"), key("select  1"));
    assert_ne!(key("select a"), key("select b"));
    assert_eq!(key("select 1\0"), None);
    assert!(key("select U&'\\0041'").is_some());
    assert_eq!(key("select U&'\\zzzz'"), None);
    assert_eq!(key("select U&'\\D83D'"), None);
    assert!(key("select U&'\\D83D\\DE00' , U&'\\+01F600'").is_some());
    assert!(key("select U&'a' -- it's\n'\\0041'").is_some());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes: the scanner never panics, and its tokens tile the text in order.
        #[test]
        fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut shaper = Shaper::new();
            let mut out = Vec::new();
            let keyed = shaper.key(&bytes, &mut out);
            if let Some(tokens) = shaper.tokens_of(&bytes) {
                let mut at = 0;
                for t in tokens {
                    prop_assert!(t.start as usize >= at && t.start < t.end);
                    prop_assert!(t.end as usize <= bytes.len());
                    at = t.end as usize;
                }
            } else {
                prop_assert!(!keyed);
            }
        }
    }
}
