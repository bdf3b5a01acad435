//! How fast the writer seals records: `cargo run --release --example record_throughput`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use veilgate_core::record::item::{Path, Slot, StatementRecord, Status, Tag};
use veilgate_core::record::sql::statement_text;
use veilgate_core::record::{Body, Chain, Item, RecordQueue};

fn main() {
    let slot = Slot::new(
        Some(statement_text(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            2048,
            false,
        )),
        None,
    );
    let sid: Arc<str> = Arc::from("0123456789abcdef");
    let item = Item {
        sid: Arc::clone(&sid),
        ts: SystemTime::now(),
        body: Body::Statement(Box::new(StatementRecord {
            stmt: 1,
            path: Path::Extended,
            slot,
            decision: None,
            started: SystemTime::now(),
            duration_us: 123,
            status: Status::Ok,
            tag: Some(Tag::new(b"SELECT 1")),
            commands: 1,
            rows: 1,
            bytes: 68,
            sqlstate: None,
        })),
    };
    let q = RecordQueue::new(1 << 20, 1 << 20);
    let mut chain = Chain::new("node", "k1", b"0123456789abcdef0123456789abcdef");
    let batches = 200;
    let per = 4096;
    let mut total = 0usize;
    let mut bytes = 0usize;
    let t0 = Instant::now();
    for _ in 0..batches {
        q.push_all(std::iter::repeat_n(item.clone(), per));
        let taken = q.take(per, std::time::Duration::ZERO);
        let b = chain.seal(taken, SystemTime::now()).expect("a batch");
        total += b.records;
        bytes += b.bytes.len();
    }
    let dt = t0.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let per_record = dt.as_nanos() as f64 / total as f64;
    println!(
        "{total} records, {:.0} ns/record (push + take + seal), {} bytes/record",
        per_record,
        bytes / total
    );
}
