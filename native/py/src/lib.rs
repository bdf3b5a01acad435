//! Python bindings for veilgate-core.  This crate only converts: the framing, request tracking
//! and statistics live in `veilgate-core`; Python owns sockets, auth and policy.
//!
//! The stubs and docs are in `veilgate_native.pyi`, checked against this module by stubtest.
//!
//! Modules: `buffer` (the raw allocation behind a receive buffer), `recv` (`RecvBuffer`),
//! `message` (`Message`), `session` (`SessionState`), `stats` (module functions), `errors`
//! (`FramingError`), `plan` (`RowPlan`, `CopyPlan`, `MaskingError`), `codec` (`Codec`),
//! `recorder` (`AuditRecorder`, `SealedBatch`: the session record queue and its sealing), `json`
//! (`JsonMasker`), `shape` (`sql_tokens`, `shape_key`: the native SQL scanner), `tls`
//! (`TlsServerConfig`, `TlsClientConfig`, `TlsConnection`, `TlsError`: the TLS record layer),
//! `verdict` (`VerdictCache`: allowed Queries answered without the control plane), `decision_log`
//! (`DecisionLog`: the JSON-lines decision log's writer; answered Queries' lines rendered natively).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod buffer;
mod codec;
mod decision_log;
mod errors;
mod json;
mod masker;
mod message;
mod plan;
mod recorder;
mod recv;
mod session;
mod shape;
mod stats;
mod tls;
mod verdict;

use pyo3::prelude::*;

#[pymodule]
mod veilgate_native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::codec::PyCodec;
    #[pymodule_export]
    use crate::decision_log::DecisionLog;
    #[pymodule_export]
    use crate::json::PyJsonMasker;
    #[pymodule_export]
    use crate::masker::{PyMasker, PyOperator};
    #[pymodule_export]
    use crate::message::Message;
    #[pymodule_export]
    use crate::plan::{CopyPlan, RowPlan};
    #[pymodule_export]
    use crate::recorder::{statement_excerpt, AuditRecorder, SealedBatch};
    #[pymodule_export]
    use crate::recv::RecvBuffer;
    #[pymodule_export]
    use crate::session::SessionState;
    #[pymodule_export]
    use crate::shape::{shape_key, sql_tokens};
    #[pymodule_export]
    use crate::stats::{latency_histogram, stats};
    #[pymodule_export]
    use crate::tls::{TlsClientConfig, TlsConnection, TlsServerConfig};
    #[pymodule_export]
    use crate::verdict::{
        grant_hits, py_may_have_effects, verdict_hits, GrantHandle, VerdictCache,
    };

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("FramingError", py.get_type::<crate::errors::FramingError>())?;
        m.add("MaskingError", py.get_type::<crate::plan::MaskingError>())?;
        m.add("TlsError", py.get_type::<crate::tls::TlsError>())?;
        m.add("KEEP", crate::plan::KEEP)?;
        m.add("NULL", crate::plan::NULL)?;
        m.add("TEXT", crate::plan::TEXT)?;
        m.add("JSONB", crate::plan::JSONB)?;
        m.add("TYPED", crate::plan::TYPED)?;
        m.add("CLIENT", crate::recv::CLIENT)?;
        m.add("SERVER", crate::recv::SERVER)?;
        m.add(
            "BUILTIN_ENTITIES",
            pyo3::types::PyTuple::new(py, veilgate_core::mask::BUILTIN_ENTITIES)?,
        )?;
        m.add(
            "MAX_STARTUP_PACKET",
            veilgate_core::startup::MAX_STARTUP_PACKET,
        )?;
        Ok(())
    }
}
