//! Instructions per masked value in DataRow rewriting, for callgrind (issue 15 item 3):
//! `valgrind --tool=callgrind --toggle-collect='*rewrite_profile::measured*' rewrite_profile`.
//!
//! Rows of an orders-like result: an id kept, a customer email and a phone masked by column
//! rules (keyed hash, replace), a free-text note scanned by the detectors, a status kept.
//! Customers repeat across rows (2,000 customers over 20,000 rows), as they do in results.

use std::hint::black_box;
use std::sync::Arc;

use veilgate_core::codec::Scratch;
use veilgate_core::mask::{ColumnOperator, HashKey, Masker, Operator, Tally};
use veilgate_core::rewrite::{rewrite_datarow_with, ColumnAction, RowPlan};

fn body(fields: &[&[u8]]) -> Vec<u8> {
    let mut b = u16::try_from(fields.len())
        .expect("few")
        .to_be_bytes()
        .to_vec();
    for f in fields {
        b.extend_from_slice(&i32::try_from(f.len()).expect("short").to_be_bytes());
        b.extend_from_slice(f);
    }
    b
}

#[inline(never)]
fn run(plan: &RowPlan, rows: &[Vec<u8>], tallies: &mut [Tally]) -> usize {
    let mut out = Vec::with_capacity(1 << 16);
    let mut scratch = Scratch::new();
    let mut n = 0;
    for r in rows {
        out.clear();
        rewrite_datarow_with(r, plan, &mut out, tallies, &mut scratch).expect("a valid row");
        n += black_box(out.len());
    }
    n
}

#[inline(never)]
fn measured(plan: &RowPlan, rows: &[Vec<u8>], tallies: &mut [Tally]) -> usize {
    run(plan, rows, tallies)
}

fn main() {
    let rows: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| {
            let c = i % 2000;
            body(&[
                format!("{i}").as_bytes(),
                format!("customer{c}@example.com").as_bytes(),
                format!("+1 415 555 {:04}", c).as_bytes(),
                b"left at the front desk, call before delivery",
                b"shipped",
            ])
        })
        .collect();
    let hash = Arc::new(ColumnOperator::new(
        Operator::Hash(HashKey::new(b"bench key")),
        "COLUMN",
    ));
    let replace = Arc::new(ColumnOperator::new(Operator::Replace(None), "COLUMN"));
    let plan = RowPlan::new(vec![
        ColumnAction::Keep,
        ColumnAction::Text(hash),
        ColumnAction::Text(replace),
        ColumnAction::Text(Arc::new(Masker::builtin())),
        ColumnAction::Keep,
    ]);
    let mut tallies = plan.new_tallies();
    run(&plan, &rows, &mut tallies);
    let n = measured(&plan, &rows, &mut tallies);
    println!("{} rows, {n} bytes out", rows.len());
}
