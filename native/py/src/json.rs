//! `JsonMasker`: JSON-aware masking with path rules (`veilgate_core::mask::json`) for Python.

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use veilgate_core::mask::{JsonMasker, JsonPath, Outcome, Tally, ValueMask};

use crate::masker::{PyMasker, PyOperator};

/// Masks json documents leaf by leaf: `paths` are `(path, mask)` rules (first match wins; a
/// `None` mask keeps the leaves), every other leaf gets `default` (kept when `None`).
#[pyclass(module = "veilgate_native", name = "JsonMasker", frozen)]
pub struct PyJsonMasker {
    inner: Arc<JsonMasker>,
    paths: Vec<String>,
}

impl PyJsonMasker {
    pub(crate) fn value_mask(&self) -> Arc<dyn ValueMask> {
        self.inner.clone()
    }
}

/// The `ValueMask` of a mask argument: a `Masker`, an `Operator` or a `JsonMasker` (here, beside
/// the mask type that composes the others, so that `codec` and `plan` both take masks without
/// importing each other).
pub(crate) fn value_mask(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn ValueMask>> {
    if let Ok(m) = obj.extract::<PyRef<'_, PyMasker>>() {
        return Ok(m.value_mask());
    }
    if let Ok(o) = obj.extract::<PyRef<'_, PyOperator>>() {
        return Ok(o.value_mask());
    }
    if let Ok(j) = obj.extract::<PyRef<'_, PyJsonMasker>>() {
        return Ok(j.value_mask());
    }
    Err(PyTypeError::new_err(format!(
        "a column mask must be a Masker, an Operator or a JsonMasker, not {}",
        obj.get_type().name()?
    )))
}

fn mask_or_keep(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Arc<dyn ValueMask>>> {
    obj.filter(|o| !o.is_none()).map(value_mask).transpose()
}

#[pymethods]
impl PyJsonMasker {
    #[new]
    #[pyo3(signature = (default=None, paths=Vec::new()))]
    #[pyo3(text_signature = "(default=None, paths=())")]
    fn new(
        default: Option<Bound<'_, PyAny>>,
        paths: Vec<(String, Option<Bound<'_, PyAny>>)>,
    ) -> PyResult<Self> {
        let mut rules = Vec::with_capacity(paths.len());
        let mut names = Vec::with_capacity(paths.len());
        for (path, mask) in &paths {
            let parsed = JsonPath::parse(path).map_err(|e| PyValueError::new_err(e.to_string()))?;
            rules.push((parsed, mask_or_keep(mask.as_ref())?));
            names.push(path.clone());
        }
        Ok(PyJsonMasker {
            inner: Arc::new(JsonMasker::new(mask_or_keep(default.as_ref())?, rules)),
            paths: names,
        })
    }

    /// `text` (a JSON document) masked; `None` when an operator nulls it.
    fn mask<'py>(&self, text: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyString>>> {
        let s = text.to_str()?;
        let mut out = Vec::new();
        Ok(
            match self
                .inner
                .mask_json(s.as_bytes(), &mut out, &mut Tally::new())
            {
                Outcome::Unchanged => Some(text.clone()),
                Outcome::Null => None,
                Outcome::Written => {
                    let masked = std::str::from_utf8(&out)
                        .map_err(|e| PyValueError::new_err(e.to_string()))?;
                    Some(PyString::new(text.py(), masked))
                }
            },
        )
    }

    #[getter]
    fn paths(&self) -> Vec<String> {
        self.paths.clone()
    }

    fn __repr__(&self) -> String {
        format!("<JsonMasker paths={:?}>", self.paths)
    }
}
