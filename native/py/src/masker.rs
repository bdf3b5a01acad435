//! `Masker` and `Operator`: the masking engine of `veilgate_core::mask` for Python.
//!
//! Both expose [`value_mask`](PyMasker::value_mask) so the row plans (`plan` module) can take
//! either object and call the same `ValueMask` per column value, without Python per row.

use std::ops::Range;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use veilgate_core::mask::{
    ColumnOperator, EntityId, HashKey, Masker, MaskerConfig, Operator, Outcome, Span, Tally,
    ValueMask,
};

/// A masking operator: whole-value (a column rule, [`ColumnOperator`]) or per entity in a
/// [`PyMasker`].
#[pyclass(module = "veilgate_native", name = "Operator", frozen)]
pub struct PyOperator {
    column: Arc<ColumnOperator>,
    entity: String,
}

impl PyOperator {
    pub(crate) fn operator(&self) -> &Operator {
        self.column.operator()
    }

    pub(crate) fn value_mask(&self) -> Arc<dyn ValueMask> {
        self.column.clone()
    }
}

fn build_operator(
    kind: &str,
    value: Option<String>,
    keep_first: usize,
    keep_last: usize,
    mask_char: &str,
    keep_separators: bool,
    key: Option<&[u8]>,
) -> PyResult<Operator> {
    if value.is_some() && kind != "replace" {
        return Err(PyValueError::new_err(
            "value= is only for the replace operator",
        ));
    }
    if key.is_some() && kind != "hash" {
        return Err(PyValueError::new_err("key= is only for the hash operator"));
    }
    Ok(match kind {
        "replace" => Operator::Replace(value.map(String::into_bytes)),
        "redact" => Operator::Redact,
        "null" => Operator::Null,
        "partial" => {
            let mut chars = mask_char.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(PyValueError::new_err("mask_char must be one character"));
            };
            Operator::Partial {
                keep_first,
                keep_last,
                mask_char: c,
                keep_separators,
            }
        }
        "hash" => match key {
            Some(k) if !k.is_empty() => Operator::Hash(HashKey::new(k)),
            _ => {
                return Err(PyValueError::new_err(
                    "the hash operator needs a non-empty key",
                ))
            }
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown operator {other:?} (replace, redact, partial, hash, null)"
            )))
        }
    })
}

/// UTF-8 bytes the engine produced from a `str`: operators keep multi-byte sequences whole
/// and write only ASCII or whole characters, so this cannot fail for `str` input.
fn utf8(bytes: &[u8]) -> PyResult<&str> {
    std::str::from_utf8(bytes).map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pymethods]
impl PyOperator {
    #[new]
    #[pyo3(signature = (kind, *, value=None, keep_first=0, keep_last=0, mask_char="*",
                        keep_separators=true, key=None, entity="COLUMN"))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one per option
    fn new(
        kind: &str,
        value: Option<String>,
        keep_first: usize,
        keep_last: usize,
        mask_char: &str,
        keep_separators: bool,
        key: Option<&[u8]>,
        entity: &str,
    ) -> PyResult<Self> {
        let op = build_operator(
            kind,
            value,
            keep_first,
            keep_last,
            mask_char,
            keep_separators,
            key,
        )?;
        Ok(PyOperator {
            column: Arc::new(ColumnOperator::new(op, entity)),
            entity: entity.to_owned(),
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.operator().kind()
    }

    #[getter]
    fn entity(&self) -> &str {
        &self.entity
    }

    /// The whole value masked; `None` means SQL NULL.
    fn apply(&self, text: &str) -> PyResult<Option<String>> {
        let mut out = Vec::new();
        match self
            .column
            .mask_value(text.as_bytes(), &mut out, &mut Tally::new())
        {
            Outcome::Null => Ok(None),
            Outcome::Unchanged => Ok(Some(text.to_owned())),
            Outcome::Written => Ok(Some(utf8(&out)?.to_owned())),
        }
    }

    fn __repr__(&self) -> String {
        // Never the key or the constant: a repr can end up in logs.
        format!("<Operator {} entity={:?}>", self.kind(), self.entity)
    }
}

/// Detectors + per-entity operators over text values.
#[pyclass(module = "veilgate_native", name = "Masker", frozen)]
pub struct PyMasker {
    inner: Arc<Masker>,
}

impl PyMasker {
    pub(crate) fn value_mask(&self) -> Arc<dyn ValueMask> {
        self.inner.clone()
    }
}

/// `(key, value)` pairs of any Mapping.
fn mapping_items<'py, V: for<'a> FromPyObjectOwned<'py>>(
    m: &Bound<'py, PyAny>,
) -> PyResult<Vec<(String, V)>> {
    m.call_method0("items")?
        .try_iter()?
        .map(|item| item?.extract::<(String, V)>())
        .collect()
}

/// Byte offsets of sorted, disjoint spans to character offsets of `text`.
fn char_offsets(text: &str, spans: &[Span]) -> Vec<(usize, usize, EntityId)> {
    let mut out = Vec::with_capacity(spans.len());
    if text.is_ascii() {
        out.extend(spans.iter().map(|s| (s.start, s.end, s.entity)));
        return out;
    }
    let (mut byte, mut chars) = (0, 0);
    // Count UTF-8 lead bytes (not `str` slicing: no char-boundary panic whatever a custom
    // pattern matched).
    let bytes = text.as_bytes();
    let mut advance = |to: usize| {
        chars += bytes[byte..to]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count();
        byte = to;
        chars
    };
    for s in spans {
        let a = advance(s.start);
        let b = advance(s.end);
        out.push((a, b, s.entity));
    }
    out
}

/// One masked value of a batch: unchanged, a range of the shared output buffer, or NULL.
enum Masked {
    Unchanged,
    Written(Range<usize>),
    Null,
}

fn mask_into(mask: &dyn ValueMask, value: &[u8], out: &mut Vec<u8>) -> Masked {
    let start = out.len();
    match mask.mask_value(value, out, &mut Tally::new()) {
        Outcome::Unchanged => Masked::Unchanged,
        Outcome::Null => Masked::Null,
        Outcome::Written => Masked::Written(start..out.len()),
    }
}

#[pymethods]
impl PyMasker {
    #[new]
    #[pyo3(signature = (*, entities=None, operators=None, default_operator=None,
                        custom_patterns=Vec::new(), dictionaries=None))]
    #[pyo3(
        text_signature = "(*, entities=None, operators=None, default_operator=None, \
                             custom_patterns=(), dictionaries=None)"
    )]
    fn new(
        entities: Option<Vec<String>>,
        operators: Option<&Bound<'_, PyAny>>,
        default_operator: Option<PyRef<'_, PyOperator>>,
        custom_patterns: Vec<(String, String)>,
        dictionaries: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let operators = match operators {
            None => Vec::new(),
            Some(m) => mapping_items::<PyRef<'_, PyOperator>>(m)?
                .into_iter()
                .map(|(name, op)| (name, op.operator().clone()))
                .collect(),
        };
        let dictionaries = match dictionaries {
            None => Vec::new(),
            Some(m) => mapping_items::<Vec<String>>(m)?,
        };
        let config = MaskerConfig {
            entities,
            operators,
            default_operator: default_operator
                .map_or_else(Operator::default, |o| o.operator().clone()),
            custom_patterns,
            dictionaries,
        };
        let inner = Masker::new(config).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyMasker {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn entities(&self) -> Vec<String> {
        self.inner.entities()
    }

    /// `text` with every sensitive span masked; `None` when an operator nulls the value.
    fn mask<'py>(&self, text: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyString>>> {
        let s = text.to_str()?;
        let mut out = Vec::new();
        Ok(match mask_into(&*self.inner, s.as_bytes(), &mut out) {
            Masked::Unchanged => Some(text.clone()),
            Masked::Null => None,
            Masked::Written(r) => Some(PyString::new(text.py(), utf8(&out[r])?)),
        })
    }

    /// The same over raw bytes (any ASCII-compatible encoding).
    fn mask_bytes<'py>(&self, data: &Bound<'py, PyBytes>) -> Option<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        match mask_into(&*self.inner, data.as_bytes(), &mut out) {
            Masked::Unchanged => Some(data.clone()),
            Masked::Null => None,
            Masked::Written(r) => Some(PyBytes::new(data.py(), &out[r])),
        }
    }

    /// `(start, end, entity)` for each span, in character offsets.
    fn scan(&self, text: &str) -> Vec<(usize, usize, String)> {
        let spans = self.inner.scan(text.as_bytes());
        self.named(char_offsets(text, &spans))
    }

    /// `mask` over many values in one call (the GIL is released while masking).
    fn mask_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<Bound<'py, PyString>>,
    ) -> PyResult<Vec<Option<Bound<'py, PyString>>>> {
        let strs = texts
            .iter()
            .map(|t| t.to_str())
            .collect::<PyResult<Vec<&str>>>()?;
        let inner = &*self.inner;
        let (out, results) = py.detach(|| {
            // Masked values are about as long as their inputs: one allocation for the batch.
            let mut out = Vec::with_capacity(strs.iter().map(|s| s.len()).sum::<usize>() + 64);
            let results: Vec<Masked> = strs
                .iter()
                .map(|s| mask_into(inner, s.as_bytes(), &mut out))
                .collect();
            (out, results)
        });
        texts
            .iter()
            .zip(results)
            .map(|(t, m)| {
                Ok(match m {
                    Masked::Unchanged => Some(t.clone()),
                    Masked::Null => None,
                    Masked::Written(r) => Some(PyString::new(py, utf8(&out[r])?)),
                })
            })
            .collect()
    }

    /// `scan` over many values in one call (the GIL is released while scanning).
    fn scan_batch(
        &self,
        py: Python<'_>,
        texts: Vec<Bound<'_, PyString>>,
    ) -> PyResult<Vec<Vec<(usize, usize, String)>>> {
        let strs = texts
            .iter()
            .map(|t| t.to_str())
            .collect::<PyResult<Vec<&str>>>()?;
        let inner = &*self.inner;
        let found = py.detach(|| {
            strs.iter()
                .map(|s| char_offsets(s, &inner.scan(s.as_bytes())))
                .collect::<Vec<_>>()
        });
        Ok(found.into_iter().map(|spans| self.named(spans)).collect())
    }

    fn __repr__(&self) -> String {
        format!("<Masker entities={:?}>", self.inner.entities())
    }
}

impl PyMasker {
    fn named(&self, spans: Vec<(usize, usize, EntityId)>) -> Vec<(usize, usize, String)> {
        spans
            .into_iter()
            .map(|(a, b, id)| (a, b, self.inner.name(id).to_owned()))
            .collect()
    }
}
