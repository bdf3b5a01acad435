//! Instructions per DataRow of the bench's large workload (`bench/workloads/large_setup.sql`,
//! `bench/workloads/mask_policy.yaml`), for callgrind (issue 15 item 3):
//! `valgrind --tool=callgrind --toggle-collect='*customers_profile::measured*' customers_profile`.
//!
//! Six text columns per row, as the bench policy plans them: `full_name` and `phone` scanned by
//! the detectors, `email` hashed (keyed), `card_number` partial (last four kept), `iban`
//! replaced, `notes` scanned.  10,000 customers, rows read in windows of 1,000 as the bench does.

// Row numbers below 10,000 index small tables.
#![allow(clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::sync::Arc;

use veilgate_core::codec::Scratch;
use veilgate_core::mask::{ColumnOperator, HashKey, Masker, MaskerConfig, Operator, Tally};
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

const FIRST: [&str; 10] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis",
];
const LAST: [&str; 11] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
    "Ritchie", "Perlman",
];
const CARDS: [&str; 6] = [
    "4111111111111111",
    "5555555555554444",
    "4012888888881881",
    "378282246310005",
    "6011111111111117",
    "5105105105105100",
];

/// Row `g` of `bench_customers` (the columns the workload selects), as large_setup.sql builds it.
fn customer(g: u64) -> Vec<u8> {
    let first = FIRST[(g % 10) as usize];
    let last = LAST[((g * 7) % 11) as usize];
    let notes = match g % 4 {
        0 => format!(
            "Customer asked to be contacted at {}@mail.example.org about order {}.",
            first.to_lowercase(),
            g * 7
        ),
        1 => format!(
            "Call back on +44 20 7946 {:04} after 2pm; prefers phone over e-mail.",
            g % 10000
        ),
        2 => format!(
            "Long-standing customer, loyalty tier {}, no open tickets, renewal due in month {}.",
            g % 5,
            1 + g % 12
        ),
        _ => format!(
            "Paid with card ending {:04}; invoice sent; delivery confirmed by courier.",
            g % 10000
        ),
    };
    body(&[
        format!("{first} {last}").as_bytes(),
        format!(
            "{}.{}{g}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        )
        .as_bytes(),
        format!("+1-202-555-{:04}", g % 10000).as_bytes(),
        CARDS[(g % 6) as usize].as_bytes(),
        format!(
            "DE{:02}{:018}",
            g % 97,
            (g * 2_654_435_761) % 1_000_000_000_000_000_000
        )
        .as_bytes(),
        notes.as_bytes(),
    ])
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
    // Windows of 1,000 rows at pseudo-random starts, as pgbench's `random(1, 9001)`.
    let mut rows = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..5 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let start = 1 + (seed >> 33) % 9001;
        rows.extend((start..start + 1000).map(customer));
    }
    let col = |op: Operator| ColumnAction::Text(Arc::new(ColumnOperator::new(op, "COLUMN")));
    let scan = Arc::new(
        Masker::new(MaskerConfig {
            operators: vec![
                (
                    "CREDIT_CARD".into(),
                    Operator::Partial {
                        keep_first: 0,
                        keep_last: 4,
                        mask_char: '*',
                        keep_separators: true,
                    },
                ),
                ("EMAIL".into(), Operator::Hash(HashKey::new(b"bench key"))),
            ],
            ..MaskerConfig::default()
        })
        .expect("valid"),
    );
    let mut columns = vec![
        ColumnAction::Text(scan.clone()),
        col(Operator::Hash(HashKey::new(b"bench key"))),
        ColumnAction::Text(scan.clone()),
        col(Operator::Partial {
            keep_first: 0,
            keep_last: 4,
            mask_char: '*',
            keep_separators: true,
        }),
        col(Operator::Replace(None)),
        ColumnAction::Text(scan),
    ];
    // `CUSTOMERS_ONLY=i`: column i masked, the others kept (the cost of one column).
    if let Some(only) = std::env::var("CUSTOMERS_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for (i, c) in columns.iter_mut().enumerate() {
            if i != only {
                *c = ColumnAction::Keep;
            }
        }
    }
    let plan = RowPlan::new(columns);
    let mut tallies = plan.new_tallies();
    run(&plan, &rows[..1000], &mut tallies);
    let n = measured(&plan, &rows, &mut tallies);
    println!("{} rows, {n} bytes out", rows.len());
}
