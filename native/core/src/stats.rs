//! Process-wide counters: traffic per direction and the statement latency histogram.
//!
//! Plain relaxed atomics: each is an independent monotonic counter, read for metrics only.
//! Receive buffers add their counts once per read, never once per message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::direction::Direction;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The same bounds in nanoseconds, for comparisons without floating point.
const LATENCY_BUCKETS_NS: [u64; 18] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

/// `[direction][0 = bytes, 1 = messages]`.
static TRAFFIC: [[AtomicU64; 2]; 2] = [[ZERO, ZERO], [ZERO, ZERO]];
/// Non-cumulative counts; the last slot is `+Inf` (above 60 s).
static BUCKETS: [AtomicU64; LATENCY_BUCKETS.len() + 1] = [ZERO; LATENCY_BUCKETS.len() + 1];
static LATENCY_SUM_NS: AtomicU64 = AtomicU64::new(0);
static LATENCY_COUNT: AtomicU64 = AtomicU64::new(0);

/// Totals received per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub client_bytes: u64,
    pub client_messages: u64,
    pub server_bytes: u64,
    pub server_messages: u64,
}

/// Adds one read's worth of traffic.
#[inline]
pub fn add_traffic(direction: Direction, bytes: u64, messages: u64) {
    let slot = &TRAFFIC[direction.index()];
    if bytes != 0 {
        slot[0].fetch_add(bytes, Relaxed);
    }
    if messages != 0 {
        slot[1].fetch_add(messages, Relaxed);
    }
}

/// The traffic totals so far.
pub fn traffic() -> Traffic {
    let get = |d: Direction, i: usize| TRAFFIC[d.index()][i].load(Relaxed);
    Traffic {
        client_bytes: get(Direction::Client, 0),
        client_messages: get(Direction::Client, 1),
        server_bytes: get(Direction::Server, 0),
        server_messages: get(Direction::Server, 1),
    }
}

/// Records one statement's latency (request to ReadyForQuery); returns its bucket index (the
/// last one is `+Inf`) and the latency in nanoseconds, for a session's own histogram.
#[inline]
pub fn record_latency(latency: Duration) -> (usize, u64) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    let i = LATENCY_BUCKETS_NS.partition_point(|&bound| bound < ns);
    BUCKETS[i].fetch_add(1, Relaxed);
    LATENCY_SUM_NS.fetch_add(ns, Relaxed);
    LATENCY_COUNT.fetch_add(1, Relaxed);
    (i, ns)
}

/// A Prometheus-shaped view of the latency histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative count per bound of [`LATENCY_BUCKETS`].
    pub cumulative: [u64; LATENCY_BUCKETS.len()],
    /// Sum of all recorded latencies, in seconds.
    pub sum_seconds: f64,
    /// Number of recorded latencies (the `+Inf` bucket).
    pub count: u64,
}

/// The latency histogram so far (each counter read once; concurrent updates may be half seen).
pub fn latency() -> LatencySnapshot {
    let mut cumulative = [0u64; LATENCY_BUCKETS.len()];
    let mut acc = 0u64;
    for (c, b) in cumulative.iter_mut().zip(&BUCKETS) {
        acc += b.load(Relaxed);
        *c = acc;
    }
    // Counts are bumped bucket first, so the total read last is at least the buckets' sum.
    let count = LATENCY_COUNT.load(Relaxed).max(acc);
    #[allow(clippy::cast_precision_loss)]
    let sum_seconds = LATENCY_SUM_NS.load(Relaxed) as f64 / 1e9;
    LatencySnapshot {
        cumulative,
        sum_seconds,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (s, ns) in LATENCY_BUCKETS.iter().zip(LATENCY_BUCKETS_NS) {
            #[allow(clippy::cast_precision_loss)]
            let back = ns as f64 / 1e9;
            assert!((s - back).abs() < 1e-12);
        }
    }

    // The only test in this crate touching the globals: counts may only grow, so compare deltas.
    #[test]
    fn records_into_the_right_buckets() {
        let before = latency();
        let t0 = traffic();
        record_latency(Duration::from_micros(100)); // le 0.0001 (inclusive)
        record_latency(Duration::from_micros(101)); // le 0.00025
        record_latency(Duration::from_secs(61)); // +Inf only
        add_traffic(Direction::Client, 10, 2);
        add_traffic(Direction::Server, 7, 0);
        let after = latency();
        let d = |i: usize| after.cumulative[i] - before.cumulative[i];
        assert_eq!((d(0), d(1), d(17)), (1, 2, 2));
        assert_eq!(after.count - before.count, 3);
        assert!(after.sum_seconds - before.sum_seconds >= 61.0);
        let t1 = traffic();
        assert_eq!(t1.client_bytes - t0.client_bytes, 10);
        assert_eq!(t1.client_messages - t0.client_messages, 2);
        assert_eq!(t1.server_bytes - t0.server_bytes, 7);
    }
}
