//! `SessionState`: the request tracker shared by the two receive buffers of one session.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use veilgate_core::record::{Decision, LogConfig, StatementLog};
use veilgate_core::SessionTracker;

use crate::recorder::AuditRecorder;

#[pyclass(module = "veilgate_native", frozen)]
pub struct SessionState {
    pub(crate) inner: Arc<Mutex<SessionTracker>>,
}

/// Locks a tracker; a panic while it was held cannot leave it inconsistent (plain counters).
#[inline]
pub fn lock(m: &Mutex<SessionTracker>) -> MutexGuard<'_, SessionTracker> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[pymethods]
impl SessionState {
    #[new]
    fn new() -> Self {
        SessionState {
            inner: Arc::new(Mutex::new(SessionTracker::new())),
        }
    }

    #[getter]
    fn pending(&self) -> usize {
        lock(&self.inner).pending()
    }

    #[getter]
    fn since_ready(&self) -> u32 {
        lock(&self.inner).since_ready()
    }

    #[getter]
    fn busy(&self) -> bool {
        lock(&self.inner).busy()
    }

    #[getter]
    fn tx_status(&self) -> u8 {
        lock(&self.inner).tx_status()
    }

    #[getter]
    fn statements(&self) -> u64 {
        lock(&self.inner).statements()
    }

    /// This session's statement latencies: non-cumulative counts per bucket of
    /// `latency_histogram()`'s bounds (one more for `+Inf`) and their sum in seconds.
    fn latency(&self) -> (Vec<u64>, f64) {
        let t = lock(&self.inner);
        let (buckets, ns) = t.latency();
        #[allow(clippy::cast_precision_loss)]
        (buckets.to_vec(), ns as f64 / 1e9)
    }

    fn error_classes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (class, n) in lock(&self.inner).error_classes() {
            out.set_item(String::from_utf8_lossy(class), n)?;
        }
        Ok(out)
    }

    #[pyo3(signature = (sqlstate=None))]
    fn discard_request(&self, sqlstate: Option<&str>) -> PyResult<bool> {
        let state = sqlstate.map(sqlstate_bytes).transpose()?;
        let mut t = lock(&self.inner);
        if let Some(s) = state {
            t.count_error([s[0], s[1]]);
        }
        if let Some(log) = t.log.as_mut() {
            log.discard(state, Instant::now());
            log.flush();
        }
        Ok(t.discard_request())
    }

    /// Records this session's statements into `recorder` under session id `sid`.
    #[pyo3(signature = (recorder, sid, *, max_excerpt=2048, redact_literals=false, decisions=true))]
    fn start_recording(
        &self,
        recorder: PyRef<'_, AuditRecorder>,
        sid: &str,
        max_excerpt: usize,
        redact_literals: bool,
        decisions: bool,
    ) {
        let cfg = LogConfig {
            max_excerpt,
            redact_literals,
            decisions,
        };
        let log = StatementLog::new(sid, Arc::clone(&recorder.queue), cfg);
        lock(&self.inner).log = Some(Box::new(log));
    }

    /// Attaches a policy decision to the message with this `stmt_id`.  False if unknown.
    #[pyo3(signature = (stmt_id, action, rule, fingerprint="", sqlstate=None, approval=None))]
    fn note_decision(
        &self,
        stmt_id: u64,
        action: &str,
        rule: &str,
        fingerprint: &str,
        sqlstate: Option<&str>,
        approval: Option<&str>,
    ) -> PyResult<bool> {
        if let Some(s) = sqlstate {
            sqlstate_bytes(s)?;
        }
        let mut t = lock(&self.inner);
        let Some(log) = t.log.as_mut() else {
            return Ok(false);
        };
        let d = Decision {
            action: action.to_owned(),
            rule: rule.to_owned(),
            fingerprint: fingerprint.to_owned(),
            sqlstate: sqlstate.map(str::to_owned),
            approval: approval.map(str::to_owned),
        };
        Ok(log.decide(stmt_id, Arc::new(d)))
    }

    /// The gateway answered the message `stmt_id` with `sqlstate` instead of running it (a
    /// Bind: the Execute that follows it).  False if unknown.
    fn note_refused(&self, stmt_id: u64, sqlstate: &str) -> PyResult<bool> {
        let code = sqlstate_bytes(sqlstate)?;
        let mut t = lock(&self.inner);
        Ok(t.log.as_mut().is_some_and(|log| log.refuse(stmt_id, code)))
    }

    /// Ends the recording: statements in flight are recorded as interrupted.  Returns the
    /// session's totals and distinct statements (None when it was not recorded).
    fn finish_recording<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut t = lock(&self.inner);
        let Some(log) = t.log.as_mut() else {
            return Ok(None);
        };
        log.finish(Instant::now());
        let s = log.totals();
        let d = PyDict::new(py);
        d.set_item("statements", s.statements)?;
        d.set_item("errors", s.errors)?;
        d.set_item("refused", s.refused)?;
        d.set_item("denied", s.denied)?;
        d.set_item("held", s.held)?;
        d.set_item("rows", s.rows)?;
        d.set_item("bytes", s.bytes)?;
        let fps: Vec<(String, String)> = log
            .fingerprints()
            .into_iter()
            .map(|(fp, text)| (format!("{fp:016x}"), text))
            .collect();
        d.set_item("fingerprints", fps)?;
        Ok(Some(d))
    }

    #[getter]
    fn recording(&self) -> bool {
        lock(&self.inner).log.is_some()
    }

    fn __repr__(&self) -> String {
        let s = lock(&self.inner);
        format!(
            "<SessionState pending={} busy={} tx_status={:?}>",
            s.pending(),
            s.busy(),
            char::from(s.tx_status())
        )
    }
}

fn sqlstate_bytes(s: &str) -> PyResult<[u8; 5]> {
    s.as_bytes()
        .try_into()
        .map_err(|_| PyValueError::new_err("a SQLSTATE is 5 characters"))
}
