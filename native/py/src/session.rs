//! `SessionState`: the request tracker shared by the two receive buffers of one session.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::prelude::*;
use veilgate_core::SessionTracker;

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
    fn busy(&self) -> bool {
        lock(&self.inner).busy()
    }

    #[getter]
    fn tx_status(&self) -> u8 {
        lock(&self.inner).tx_status()
    }

    fn discard_request(&self) -> bool {
        lock(&self.inner).discard_request()
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
