//! What recording costs per statement, part by part, on pgbench -S shaped traffic:
//!
//! ```text
//! cargo run --profile profiling -p veilgate-core --example record_cost [PART] [N]
//! valgrind --tool=callgrind target/profiling/examples/record_cost PART N   # instructions
//! ```
//!
//! PART: `text` (the recorded form of a simple Query's text: lexing, redaction, fingerprint),
//! `simple` / `prepared` (the statement log on the event loop: the client's messages and the
//! server's replies of one transaction, then the flush into the queue), `seal` /
//! `seal-prepared` (that, then the writer: take + chain + seal per record), or `all` (default).  Prints the best of 5 runs in ns per
//! statement; under callgrind, divide the instructions by N (the setup is small).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use veilgate_core::record::log::{LogConfig, StatementLog};
use veilgate_core::record::sql::statement_text;
use veilgate_core::record::{Chain, RecordQueue};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let len = i32::try_from(body.len() + 4).expect("small");
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cs(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

fn query(i: u64) -> Vec<u8> {
    let sql = format!(
        "SELECT abalance FROM pgbench_accounts WHERE aid = {};\0",
        1 + (i * 7919) % 100_000
    );
    msg(b'Q', sql.as_bytes())
}

fn replies() -> Vec<Vec<u8>> {
    vec![
        msg(
            b'T',
            b"\0\x01abalance\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        ),
        msg(b'D', b"\0\x01\0\0\0\x041234"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ]
}

struct Feed {
    log: StatementLog,
    queue: Arc<RecordQueue>,
    pos: u64,
}

impl Feed {
    fn new() -> Feed {
        let queue = Arc::new(RecordQueue::new(1 << 22, 1 << 22));
        let cfg = LogConfig {
            max_excerpt: 2048,
            redact_literals: false,
            decisions: false,
        };
        Feed {
            log: StatementLog::new("0123456789abcdef", Arc::clone(&queue), cfg),
            queue,
            pos: 0,
        }
    }

    fn client(&mut self, frames: &[Vec<u8>], now: Instant) {
        for f in frames {
            self.log.on_client(f[0], f, now);
        }
    }

    fn server(&mut self, frames: &[Vec<u8>], now: Instant) {
        for f in frames {
            self.log.on_server(f[0], f, self.pos, now);
            self.pos += f.len() as u64;
        }
        self.log.flush();
    }
}

fn best_of<F: FnMut() -> usize>(mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let n = f();
        #[allow(clippy::cast_precision_loss)]
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        best = best.min(ns);
    }
    best
}

fn part_text(n: usize) -> usize {
    let texts: Vec<Vec<u8>> = (0..256).map(|i| query(i)[5..].to_vec()).collect();
    let mut sum = 0usize;
    for i in 0..n {
        let t = &texts[i % texts.len()];
        sum += statement_text(&t[..t.len() - 1], 2048, false).len;
    }
    std::hint::black_box(sum);
    n
}

fn part_simple(n: usize, feed: &mut Feed) -> usize {
    let queries: Vec<Vec<u8>> = (0..256).map(query).collect();
    let replies = replies();
    let now = Instant::now();
    for i in 0..n {
        feed.client(std::slice::from_ref(&queries[i % queries.len()]), now);
        feed.server(&replies, now);
    }
    n
}

fn part_prepared(n: usize, feed: &mut Feed) -> usize {
    let now = Instant::now();
    let parse = msg(
        b'P',
        &cs(&[
            b"P0_1",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            b"",
        ]),
    );
    feed.client(&[parse, msg(b'S', b"")], now);
    feed.server(&[msg(b'1', b""), msg(b'Z', b"I")], now);
    let mut bind = b"\0P0_1\0\0\0\0\x01\0\0\0\x0512345\0\0".to_vec();
    bind = msg(b'B', &std::mem::take(&mut bind));
    let txn = [bind, msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")];
    let mut rep = vec![msg(b'2', b"")];
    rep.extend(replies().into_iter().skip(1));
    for _ in 0..n {
        feed.client(&txn, now);
        feed.server(&rep, now);
    }
    n
}

fn part_seal(n: usize, feed: &mut Feed, prepared: bool) -> usize {
    // records as the event loop made them, then sealed in batches of 4096
    if prepared {
        part_prepared(n, feed);
    } else {
        part_simple(n, feed);
    }
    let mut chain = Chain::new("node", "k1", b"0123456789abcdef0123456789abcdef");
    let mut sealed = 0usize;
    while !feed.queue.is_empty() {
        let taken = feed.queue.take(4096, Duration::ZERO);
        if let Some(b) = chain.seal(taken, SystemTime::now()) {
            sealed += b.items;
            if std::env::var_os("RECORD_COST_SHOW").is_some() {
                let line = b.bytes.split(|&c| c == b'\n').next().unwrap_or_default();
                eprintln!(
                    "{} bytes per record; first: {}",
                    b.bytes.len() / b.records,
                    String::from_utf8_lossy(line)
                );
            }
            std::hint::black_box(&b.bytes);
        }
    }
    sealed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let part = args.get(1).map_or("all", String::as_str);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let timed = part == "all";
    let run = |name: &str| -> usize {
        match name {
            "text" => part_text(n),
            "simple" => {
                let mut f = Feed::new();
                let k = part_simple(n, &mut f);
                drop(f.queue.take(usize::MAX, Duration::ZERO));
                k
            }
            "prepared" => {
                let mut f = Feed::new();
                let k = part_prepared(n, &mut f);
                drop(f.queue.take(usize::MAX, Duration::ZERO));
                k
            }
            "seal" => part_seal(n, &mut Feed::new(), false),
            "seal-prepared" => part_seal(n, &mut Feed::new(), true),
            other => panic!("unknown part {other}"),
        }
    };
    if timed {
        for name in ["text", "simple", "prepared", "seal", "seal-prepared"] {
            let ns = best_of(|| run(name));
            let what = match name {
                "seal" => "(includes simple)",
                "seal-prepared" => "(includes prepared)",
                _ => "",
            };
            println!("{name:9} {ns:8.0} ns per statement {what}");
        }
    } else {
        run(part);
    }
}
