//! `Codec`: the type of a column, as `veilgate_core::codec` reads, masks and writes its values.
//! The control plane builds one per result column type (from the catalog) and puts it in
//! `TYPED` plan columns; `transcode` and `mask` expose the same code for tests and tools.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use veilgate_core::codec::{self, ArrayCodec, Attribute, Cx, Format, Scratch};
use veilgate_core::mask::{Outcome, Tally};

use crate::json::value_mask;

#[pyclass(module = "veilgate_native", name = "Codec", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash)]
pub struct PyCodec {
    inner: Arc<codec::Codec>,
}

impl PyCodec {
    pub(crate) fn codec(&self) -> Arc<codec::Codec> {
        Arc::clone(&self.inner)
    }

    fn wrap(c: codec::Codec) -> Self {
        PyCodec { inner: Arc::new(c) }
    }
}

pub(crate) fn format(code: i64) -> PyResult<Format> {
    Format::from_code(code).ok_or_else(|| {
        PyValueError::new_err(format!("format must be 0 (text) or 1 (binary), not {code}"))
    })
}

#[pymethods]
impl PyCodec {
    /// The codec of a built-in type OID, or `None`.
    #[staticmethod]
    fn builtin(oid: u32) -> Option<Self> {
        codec::builtin::builtin(oid).map(PyCodec::wrap)
    }

    /// A scalar codec by name.
    #[staticmethod]
    fn scalar(name: &str) -> PyResult<Self> {
        codec::Codec::scalar(name)
            .map(PyCodec::wrap)
            .ok_or_else(|| PyValueError::new_err(format!("unknown codec {name:?}")))
    }

    #[staticmethod]
    #[pyo3(signature = (elem, elem_oid, delimiter=","))]
    fn array(elem: PyRef<'_, Self>, elem_oid: u32, delimiter: &str) -> PyResult<Self> {
        let delimiter = match delimiter.as_bytes() {
            [d] if d.is_ascii() && !matches!(d, b'"' | b'\\' | b'{' | b'}') => *d,
            _ => return Err(PyValueError::new_err(
                "an array delimiter is one ASCII character other than a quote, backslash or brace",
            )),
        };
        Ok(PyCodec::wrap(codec::Codec::Array(Box::new(ArrayCodec {
            elem: (*elem.inner).clone(),
            elem_oid,
            delimiter,
        }))))
    }

    #[staticmethod]
    fn composite(attributes: Vec<(u32, PyRef<'_, Self>)>) -> Self {
        PyCodec::wrap(codec::Codec::Composite(
            attributes
                .into_iter()
                .map(|(oid, c)| Attribute {
                    oid,
                    codec: (*c.inner).clone(),
                })
                .collect(),
        ))
    }

    #[staticmethod]
    fn range(subtype: PyRef<'_, Self>) -> Self {
        PyCodec::wrap(codec::Codec::Range(Box::new((*subtype.inner).clone())))
    }

    #[staticmethod]
    fn multirange(subtype: PyRef<'_, Self>) -> Self {
        PyCodec::wrap(codec::Codec::Multirange(Box::new((*subtype.inner).clone())))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.name()
    }

    #[getter]
    fn scannable(&self) -> bool {
        self.inner.scannable()
    }

    /// `value` in `format` re-encoded in the other format (as the server would send it), or
    /// `None` when it is not a value of the type.
    #[pyo3(signature = (value, format))]
    fn transcode<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        format: i64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let from = self::format(format)?;
        Ok(self
            .inner
            .transcode(from, value)
            .map(|v| PyBytes::new(py, &v)))
    }

    /// `value` (in `format`) masked by `mask` (a `Masker` or an `Operator`), in the same
    /// format; `None` means NULL.
    #[pyo3(signature = (value, format, mask))]
    fn mask<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyBytes>,
        format: i64,
        mask: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let fmt = self::format(format)?;
        let mask = value_mask(mask)?;
        let (mut tally, mut scratch, mut out) = (Tally::new(), Scratch::new(), Vec::new());
        let mut cx = Cx::new(&*mask, &mut tally, &mut scratch);
        Ok(
            match self.inner.mask(fmt, value.as_bytes(), &mut cx, &mut out) {
                Outcome::Unchanged => Some(value.clone()),
                Outcome::Written => Some(PyBytes::new(py, &out)),
                Outcome::Null => None,
            },
        )
    }

    fn __repr__(&self) -> String {
        format!("<Codec {}>", self.inner)
    }
}
