//! Python bindings for veilgate-core.  This crate only converts: the framing, request tracking
//! and statistics live in `veilgate-core`; Python owns sockets, auth and policy.
//!
//! The stubs and docs are in `veilgate_native.pyi`, checked against this module by stubtest.
//!
//! Modules: `buffer` (the raw allocation behind a receive buffer), `recv` (`RecvBuffer`),
//! `message` (`Message`), `session` (`SessionState`), `stats` (module functions), `errors`
//! (`FramingError`).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod buffer;
mod errors;
mod message;
mod recv;
mod session;
mod stats;

use pyo3::prelude::*;

#[pymodule]
mod veilgate_native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::message::Message;
    #[pymodule_export]
    use crate::recv::RecvBuffer;
    #[pymodule_export]
    use crate::session::SessionState;
    #[pymodule_export]
    use crate::stats::{latency_histogram, stats};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("FramingError", py.get_type::<crate::errors::FramingError>())?;
        m.add("CLIENT", crate::recv::CLIENT)?;
        m.add("SERVER", crate::recv::SERVER)?;
        m.add(
            "MAX_STARTUP_PACKET",
            veilgate_core::startup::MAX_STARTUP_PACKET,
        )?;
        Ok(())
    }
}
