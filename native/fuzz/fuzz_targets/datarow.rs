//! Arbitrary DataRow bodies: every range yielded lies within the body; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate_core::DataRowRanges;

fuzz_target!(|body: &[u8]| {
    if let Ok(cols) = DataRowRanges::new(body) {
        let mut prev_end = 2;
        for col in cols {
            match col {
                Ok(Some(r)) => {
                    assert!(r.start >= prev_end + 4 && r.end <= body.len());
                    prev_end = r.end;
                }
                Ok(None) => prev_end += 4,
                Err(_) => break,
            }
        }
    }
});
