//! `AuditRecorder`: the record queue and the chain that seals it, for the control plane's writer.
//!
//! The data path pushes into the queue (the sessions' statement logs, and `push` for records the
//! control plane builds); the writer thread calls `next_batch`, which waits, drains and seals
//! without holding the GIL, and appends the bytes it returns to the current segment file.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use veilgate_core::record::{chain::Hash, Body, Chain, Item, RecordQueue};

#[pyclass(module = "veilgate_native", frozen)]
pub struct AuditRecorder {
    pub(crate) queue: Arc<RecordQueue>,
    chain: Mutex<Chain>,
}

/// One sealed batch (see `AuditRecorder.next_batch`).
#[pyclass(module = "veilgate_native", frozen, get_all)]
pub struct SealedBatch {
    data: Py<PyBytes>,
    batch: u64,
    first_seq: u64,
    last_seq: u64,
    records: usize,
    items: usize,
    seal: Py<PyBytes>,
    prev_seal: Option<Py<PyBytes>>,
    ended: Vec<String>,
}

fn to_time(ts: Option<f64>) -> SystemTime {
    match ts {
        Some(s) if s.is_finite() && s >= 0.0 => UNIX_EPOCH + Duration::from_secs_f64(s),
        _ => SystemTime::now(),
    }
}

fn to_hash(h: Option<&[u8]>) -> PyResult<Option<Hash>> {
    h.map(|b| Hash::try_from(b).map_err(|_| PyValueError::new_err("a seal hash is 32 bytes")))
        .transpose()
}

impl AuditRecorder {
    fn chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl AuditRecorder {
    #[new]
    #[pyo3(signature = (node, key_id, key, *, capacity=262_144, wake_at=4096))]
    fn new(
        node: &str,
        key_id: &str,
        key: &[u8],
        capacity: usize,
        wake_at: usize,
    ) -> PyResult<Self> {
        if key.len() < 16 {
            return Err(PyValueError::new_err(
                "the audit key must be at least 16 bytes",
            ));
        }
        Ok(AuditRecorder {
            queue: Arc::new(RecordQueue::new(capacity, wake_at)),
            chain: Mutex::new(Chain::new(node, key_id, key)),
        })
    }

    /// Queues a record the control plane built: `members` are the JSON members after
    /// `"kind":` (e.g. `"session_start","tier":"ro"`).  False if it was dropped (queue full).
    #[pyo3(signature = (sid, members, *, terminator=false, ts=None))]
    fn push(&self, sid: &str, members: String, terminator: bool, ts: Option<f64>) -> bool {
        self.queue.push(Item {
            sid: Arc::from(sid),
            ts: to_time(ts),
            body: Body::Fragment {
                members,
                terminator,
            },
        })
    }

    /// Waits up to `timeout` seconds for records (less once `wake_at` are queued), then takes
    /// at most `max_records`, chains and seals them.  None when there was nothing to write.
    #[pyo3(signature = (max_records, timeout))]
    fn next_batch(
        &self,
        py: Python<'_>,
        max_records: usize,
        timeout: f64,
    ) -> PyResult<Option<SealedBatch>> {
        let wait = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let batch = py.detach(|| {
            let taken = self.queue.take(max_records.max(1), wait);
            self.chain().seal(taken, SystemTime::now())
        });
        Ok(batch.map(|b| SealedBatch {
            data: PyBytes::new(py, &b.bytes).unbind(),
            batch: b.batch,
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            records: b.records,
            items: b.items,
            seal: PyBytes::new(py, &b.seal).unbind(),
            prev_seal: b.prev_seal.map(|h: Hash| PyBytes::new(py, &h).unbind()),
            ended: b.ended.iter().map(|s| s.to_string()).collect(),
        }))
    }

    /// The signed header line of a new segment.
    #[pyo3(signature = (segment, first_seq, first_batch, prev_seal, created=None))]
    fn header<'py>(
        &self,
        py: Python<'py>,
        segment: u64,
        first_seq: u64,
        first_batch: u64,
        prev_seal: Option<&[u8]>,
        created: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let prev = to_hash(prev_seal)?;
        let line = self
            .chain()
            .header(segment, first_seq, first_batch, prev, to_time(created));
        Ok(PyBytes::new(py, &line))
    }

    /// The signed trailer line that closes a segment.
    #[allow(clippy::too_many_arguments)] // the Python signature
    #[pyo3(signature = (segment, last_seq, last_batch, prev_seal, reason, at=None))]
    fn trailer<'py>(
        &self,
        py: Python<'py>,
        segment: u64,
        last_seq: u64,
        last_batch: u64,
        prev_seal: Option<&[u8]>,
        reason: &str,
        at: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let prev = to_hash(prev_seal)?;
        let line = self
            .chain()
            .trailer(segment, last_seq, last_batch, prev, reason, to_time(at));
        Ok(PyBytes::new(py, &line))
    }

    /// Continues the numbering and the seal chain of an earlier run.
    #[pyo3(signature = (next_seq, next_batch, prev_seal))]
    fn resume(&self, next_seq: u64, next_batch: u64, prev_seal: Option<&[u8]>) -> PyResult<()> {
        let prev = to_hash(prev_seal)?;
        self.chain().resume(next_seq, next_batch, prev);
        Ok(())
    }

    /// Signs with another key from the next batch on (rotation).
    fn set_key(&self, key_id: &str, key: &[u8]) -> PyResult<()> {
        if key.len() < 16 {
            return Err(PyValueError::new_err(
                "the audit key must be at least 16 bytes",
            ));
        }
        self.chain().set_key(key_id, key);
        Ok(())
    }

    /// Wakes a waiting `next_batch` now.
    fn wake(&self) {
        self.queue.wake();
    }

    /// Refuses further records (counted as dropped) and wakes the writer.
    fn close(&self) {
        self.queue.close();
    }

    #[getter]
    fn queued(&self) -> usize {
        self.queue.len()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    #[getter]
    fn dropped_total(&self) -> u64 {
        self.queue.dropped_total()
    }

    #[getter]
    fn pushed_total(&self) -> u64 {
        self.queue.pushed_total()
    }

    #[getter]
    fn next_seq(&self) -> u64 {
        self.chain().next_seq()
    }

    #[getter]
    fn next_batch_number(&self) -> u64 {
        self.chain().next_batch()
    }

    #[getter]
    fn open_sessions(&self) -> usize {
        self.chain().open_sessions()
    }

    #[getter]
    fn key_id(&self) -> String {
        self.chain().kid().to_owned()
    }

    fn __repr__(&self) -> String {
        format!(
            "<AuditRecorder queued={} next_seq={}>",
            self.queue.len(),
            self.chain().next_seq()
        )
    }
}

/// The recorded form of a statement text: `(excerpt, truncated, fingerprint)` (see
/// `veilgate_core::record::sql`): credentials always redacted, every constant with
/// `redact_literals`, at most `max_bytes` bytes.
#[pyfunction]
#[pyo3(signature = (text, max_bytes=2048, redact_literals=false))]
pub fn statement_excerpt(
    text: &str,
    max_bytes: usize,
    redact_literals: bool,
) -> (String, bool, String) {
    let t = veilgate_core::record::sql::statement_text(text.as_bytes(), max_bytes, redact_literals);
    (t.excerpt, t.truncated, format!("{:016x}", t.fingerprint))
}
