//! Arbitrary bytes through the built-in `Masker` and a masker with custom entities: never a
//! panic; spans are sorted, disjoint and in bounds; `Unchanged` exactly when nothing is found;
//! `Written` output keeps every byte outside the spans; NULL writes nothing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veilgate_core::mask::{HashKey, Masker, MaskerConfig, Operator, Outcome, Tally, ValueMask};

fn maskers() -> &'static [Masker; 2] {
    static M: OnceLock<[Masker; 2]> = OnceLock::new();
    M.get_or_init(|| {
        let custom = Masker::new(MaskerConfig {
            operators: vec![
                ("EMAIL".into(), Operator::Hash(HashKey::new(b"fuzz"))),
                (
                    "CREDIT_CARD".into(),
                    Operator::Partial {
                        keep_first: 2,
                        keep_last: 4,
                        mask_char: '\u{2022}',
                        keep_separators: false,
                    },
                ),
                ("US_SSN".into(), Operator::Null),
            ],
            custom_patterns: vec![("EMP".into(), r"EMP-[0-9]{3,}".into())],
            dictionaries: vec![("WORD".into(), vec!["secret".into(), "top secret".into()])],
            ..MaskerConfig::default()
        })
        .expect("valid config");
        [Masker::builtin(), custom]
    })
}

fuzz_target!(|data: &[u8]| {
    for m in maskers() {
        let spans = m.scan(data);
        let mut prev = 0;
        for s in &spans {
            assert!(prev <= s.start && s.start < s.end && s.end <= data.len());
            prev = s.end;
        }
        let mut out = b"head".to_vec();
        let mut tally = Tally::new();
        match m.mask_value(data, &mut out, &mut tally) {
            Outcome::Unchanged => {
                assert!(spans.is_empty() && out == b"head" && tally.is_empty());
            }
            Outcome::Null => assert!(out == b"head" && !tally.is_empty()),
            Outcome::Written => {
                assert!(!spans.is_empty() && out.starts_with(b"head"));
                let out = &out[4..];
                // The bytes before the first span and after the last are copied as they are.
                let (first, last) = (spans[0], spans[spans.len() - 1]);
                assert!(out.starts_with(&data[..first.start]));
                assert!(out.ends_with(&data[last.end..]));
                assert_eq!(tally.total(), spans.len() as u64);
            }
        }
    }
});
