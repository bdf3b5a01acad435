//! Arbitrary bytes through the JSON-aware masker (`Masker::mask_json`) and a `JsonMasker` with
//! path rules: never a panic; when the input is one JSON value the output is one JSON value;
//! `Unchanged` writes nothing.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use veilgate_core::codec::json::is_json;
use veilgate_core::mask::{
    ColumnOperator, JsonMasker, JsonPath, Masker, Operator, Outcome, Tally, ValueMask,
};

fn maskers() -> &'static (Masker, JsonMasker) {
    static M: OnceLock<(Masker, JsonMasker)> = OnceLock::new();
    M.get_or_init(|| {
        let paths = vec![
            (
                JsonPath::parse("a.b").expect("a path"),
                Some(Arc::new(ColumnOperator::new(Operator::Null, "COLUMN")) as Arc<dyn ValueMask>),
            ),
            (JsonPath::parse("c[*]").expect("a path"), None),
        ];
        (
            Masker::builtin(),
            JsonMasker::new(Some(Arc::new(Masker::builtin())), paths),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (masker, json) = maskers();
    let valid = is_json(data, &mut Vec::new());
    for m in [masker as &dyn ValueMask, json as &dyn ValueMask] {
        let mut out = b"head".to_vec();
        match m.mask_json(data, &mut out, &mut Tally::new()) {
            Outcome::Unchanged => assert_eq!(out, b"head"),
            Outcome::Null => assert_eq!(out, b"head"),
            Outcome::Written => {
                if valid {
                    assert!(is_json(&out[4..], &mut Vec::new()));
                }
            }
        }
    }
});
