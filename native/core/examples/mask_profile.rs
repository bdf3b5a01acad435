//! One pass of the built-in masker over the rows of a file, for instruction-count profiles
//! (`valgrind --tool=callgrind --toggle-collect='*mask_profile::measured*'`): wall-clock times
//! are noise on a shared machine, instruction counts are not.  A first pass over every row
//! warms the lazy DFA's states and the per-thread buffers; the second is the measured one.
//!
//! `cargo build --profile profiling -p veilgate-core --example mask_profile`, then
//! `mask_profile FILE [mask|scan]` (one row per line).

use std::hint::black_box;

use veilgate_core::mask::{Masker, Tally, ValueMask};

#[inline(never)]
fn run(masker: &Masker, rows: &[&[u8]], scan_only: bool) -> u64 {
    let mut out = Vec::with_capacity(1 << 16);
    let mut tally = Tally::new();
    let mut spans = 0;
    for r in rows {
        if scan_only {
            spans += masker.scan(r).len() as u64;
        } else {
            out.clear();
            black_box(masker.mask_value(r, &mut out, &mut tally));
        }
    }
    spans + tally.total()
}

#[inline(never)]
fn measured(masker: &Masker, rows: &[&[u8]], scan_only: bool) -> u64 {
    run(masker, rows, scan_only)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args.next().expect("FILE");
    let scan_only = args.next().as_deref() == Some("scan");
    let text = std::fs::read(&file).expect("readable file");
    let rows: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .collect();
    let bytes: usize = rows.iter().map(|r| r.len()).sum();
    let masker = Masker::builtin();
    run(&masker, &rows, scan_only);
    let found = measured(&masker, &rows, scan_only);
    println!("{} rows, {bytes} bytes, {found} found", rows.len());
}
