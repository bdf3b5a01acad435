//! `Message`: one whole message surfaced as an event (an owned copy).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[pyclass(module = "veilgate_native", frozen)]
pub struct Message {
    tag: u8,
    /// The whole message as it arrived (tag, length, body).
    frame: Py<PyBytes>,
    /// The statement log's id of this message (0: none, or the session is not recorded).
    stmt_id: u64,
}

impl Message {
    /// Copies `frame` (a whole message) into a new `Message`.
    pub fn from_frame(py: Python<'_>, frame: &[u8]) -> Message {
        Self::with_id(py, frame, 0)
    }

    /// Copies `frame` into a new `Message` carrying the statement log's id of it.
    pub fn with_id(py: Python<'_>, frame: &[u8], stmt_id: u64) -> Message {
        Message {
            tag: frame[0],
            frame: PyBytes::new(py, frame).unbind(),
            stmt_id,
        }
    }
}

#[pymethods]
impl Message {
    #[getter]
    fn tag(&self) -> u8 {
        self.tag
    }

    #[getter]
    fn stmt_id(&self) -> u64 {
        self.stmt_id
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.frame.as_bytes(py)[5..])
    }

    fn frame(&self, py: Python<'_>) -> Py<PyBytes> {
        self.frame.clone_ref(py)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.frame.as_bytes(py).len()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let len = self.frame.as_bytes(py).len() - 5;
        if self.tag.is_ascii_graphic() {
            format!("<Message {:?} body={len} bytes>", char::from(self.tag))
        } else {
            format!("<Message 0x{:02x} body={len} bytes>", self.tag)
        }
    }
}
