//! Python exceptions raised by the engine.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;
use veilgate_core::FrameError;

create_exception!(
    veilgate_native,
    FramingError,
    PyValueError,
    "Malformed input: a length below 4, a message over ``max_message``, a bad startup length."
);

/// The Python form of a framing error.
pub fn framing_error(e: &FrameError) -> PyErr {
    FramingError::new_err(e.to_string())
}
