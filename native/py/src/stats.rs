//! Module-level functions over the process-wide counters.

use std::collections::HashMap;

use pyo3::prelude::*;
use veilgate_core::stats::{self as core_stats, LATENCY_BUCKETS};

#[pyfunction]
pub fn stats() -> HashMap<&'static str, u64> {
    let t = core_stats::traffic();
    HashMap::from([
        ("client_bytes", t.client_bytes),
        ("client_messages", t.client_messages),
        ("server_bytes", t.server_bytes),
        ("server_messages", t.server_messages),
    ])
}

#[pyfunction]
pub fn latency_histogram() -> (Vec<f64>, Vec<u64>, f64, u64) {
    let s = core_stats::latency();
    (
        LATENCY_BUCKETS.to_vec(),
        s.cumulative.to_vec(),
        s.sum_seconds,
        s.count,
    )
}
