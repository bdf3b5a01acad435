//! Arbitrary statement texts through the recorder's lexer, and arbitrary message sequences
//! through a session's statement log, then sealed: nothing may panic; an excerpt stays within
//! its bound and is valid UTF-8; every record the chain writes is one JSON line.
#![no_main]

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use veilgate_core::record::sql::statement_text;
use veilgate_core::record::{Chain, LogConfig, RecordQueue, StatementLog};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(knobs) * 4;
    let t = statement_text(rest, max, knobs & 1 == 1);
    assert!(t.excerpt.len() <= max);
    assert_eq!(t.len, rest.len());

    // the same bytes as a stream of messages, alternately from the client and the server
    let queue = Arc::new(RecordQueue::new(1 << 16, 1 << 16));
    let cfg = LogConfig {
        max_excerpt: 64,
        redact_literals: knobs & 2 == 2,
        decisions: true,
    };
    let mut log = StatementLog::new("fuzz", Arc::clone(&queue), cfg);
    let now = Instant::now();
    let mut pos = 0u64;
    let mut i = 0;
    let mut side = false;
    while i < rest.len() {
        let tag = rest[i];
        let len = usize::from(rest.get(i + 1).copied().unwrap_or(0) % 32);
        let end = (i + 2 + len).min(rest.len());
        let mut frame = vec![tag];
        frame.extend_from_slice(&i32::try_from(end - i + 2).unwrap_or(4).to_be_bytes());
        frame.extend_from_slice(&rest[(i + 2).min(end)..end]);
        if side {
            log.on_server(tag, &frame, pos, now);
            pos += frame.len() as u64;
        } else {
            let id = log.on_client(tag, &frame, now);
            if id % 3 == 1 {
                log.refuse(id, *b"42501");
            }
        }
        side = !side;
        i = end;
    }
    log.finish(now);
    let mut chain = Chain::new("fuzz", "k", b"0123456789abcdef");
    if let Some(b) = chain.seal(queue.take(1 << 16, std::time::Duration::ZERO), SystemTime::now()) {
        for line in b.bytes.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.starts_with(b"{") && line.ends_with(b"}"));
            assert!(std::str::from_utf8(line).is_ok());
        }
    }
});
