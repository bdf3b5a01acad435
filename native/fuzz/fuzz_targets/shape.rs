//! The SQL scanner and shape key on arbitrary bytes: never a panic; a keyed text's tokens tile
//! it in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate_core::shape::Shaper;

fuzz_target!(|data: &[u8]| {
    let mut shaper = Shaper::new();
    let mut key = Vec::new();
    if shaper.key(data, &mut key) {
        let mut at = 0usize;
        for t in shaper.tokens() {
            assert!(t.start as usize >= at && t.start < t.end && t.end as usize <= data.len());
            at = t.end as usize;
        }
    }
});
