//! `RowPlan` and `CopyPlan`: column plans built by the control plane, applied by a server-side
//! `RecvBuffer` to every DataRow / CopyData of one result set (`RecvBuffer.set_row_plan`).
//!
//! A plan object is immutable and may be installed many times; what it masked is counted into
//! its shared tallies, which Python reads with `take_tally` (at statement end, for audit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use veilgate_core::mask::Tally;
use veilgate_core::rewrite::{self, ColumnAction, CopyFormat, Rewriter, TypedColumn};

use crate::codec::{format, PyCodec};
use crate::json::value_mask;

create_exception!(
    veilgate_native,
    MaskingError,
    PyValueError,
    "A row could not be masked (no plan while masking is required, a column count other than \
     the plan's, a malformed row): nothing of it was forwarded; close the session."
);

/// Column action codes (the Python constants `KEEP`, `NULL`, `TEXT`, `JSONB`, `TYPED`).
pub const KEEP: u8 = 0;
pub const NULL: u8 = 1;
pub const TEXT: u8 = 2;
pub const JSONB: u8 = 3;
pub const TYPED: u8 = 4;

/// Counts per column, shared by a plan object and every buffer it is installed on.
pub(crate) type SharedTallies = Arc<Mutex<Vec<Tally>>>;

fn lock(t: &SharedTallies) -> MutexGuard<'_, Vec<Tally>> {
    // A panic while holding the lock cannot leave counts half-updated in a harmful way.
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// `take_tally`: per column, entity name -> count; then reset.
fn take(t: &SharedTallies, columns: usize) -> Vec<HashMap<String, u64>> {
    let mut tallies = lock(t);
    let out = (0..columns)
        .map(|i| {
            tallies
                .get(i)
                .map(|t| t.named().into_iter().collect())
                .unwrap_or_default()
        })
        .collect();
    tallies.iter_mut().for_each(Tally::clear);
    out
}
/// One plan column as Python gives it: `(action, mask)` or `(TYPED, mask, codec, format)`.
type PyColumn<'py> = (
    u8,
    Option<Bound<'py, PyAny>>,
    Option<PyRef<'py, PyCodec>>,
    Option<i64>,
);

/// Plan columns to column actions.
fn column_actions(columns: &Bound<'_, PyAny>) -> PyResult<Vec<ColumnAction>> {
    columns
        .try_iter()?
        .enumerate()
        .map(|(i, item)| {
            let item = item?;
            let column: PyColumn<'_> = match item.len()? {
                2 => {
                    let (code, mask) = item.extract()?;
                    (code, mask, None, None)
                }
                4 => {
                    let (code, mask, codec, fmt) = item.extract()?;
                    (code, mask, Some(codec), Some(fmt))
                }
                n => {
                    return Err(PyValueError::new_err(format!(
                        "column {i}: (action, mask) or (TYPED, mask, codec, format), not {n} items"
                    )))
                }
            };
            column_action(i, column)
        })
        .collect()
}

fn column_action(i: usize, (code, mask, codec, fmt): PyColumn<'_>) -> PyResult<ColumnAction> {
    match (code, mask, codec, fmt) {
        (KEEP, None, None, None) => Ok(ColumnAction::Keep),
        (NULL, None, None, None) => Ok(ColumnAction::Null),
        (KEEP | NULL, _, _, _) => Err(PyValueError::new_err(format!(
            "column {i}: KEEP and NULL take no masker"
        ))),
        (TEXT, Some(m), None, None) => Ok(ColumnAction::Text(value_mask(&m)?)),
        (JSONB, Some(m), None, None) => Ok(ColumnAction::Jsonb(value_mask(&m)?)),
        (TYPED, Some(m), Some(c), Some(f)) => Ok(ColumnAction::Typed(Arc::new(TypedColumn::new(
            c.codec(),
            format(f)?,
            value_mask(&m)?,
        )))),
        (TEXT | JSONB | TYPED, None, _, _) => Err(PyValueError::new_err(format!(
            "column {i}: TEXT, JSONB and TYPED need a Masker or an Operator"
        ))),
        (TEXT | JSONB, Some(_), _, _) => Err(PyValueError::new_err(format!(
            "column {i}: TEXT and JSONB take (action, mask)"
        ))),
        (TYPED, Some(_), _, _) => Err(PyValueError::new_err(format!(
            "column {i}: TYPED takes (TYPED, mask, codec, format)"
        ))),
        (other, _, _, _) => Err(PyValueError::new_err(format!(
            "column {i}: unknown action {other} (KEEP, NULL, TEXT, JSONB or TYPED)"
        ))),
    }
}

/// The plan a `RecvBuffer` installs: a fresh rewriter (per-result-set state) and where its
/// counts go.
pub(crate) struct Installed {
    pub rewriter: Rewriter,
    pub tallies: SharedTallies,
}

/// `plan` (a `RowPlan` or a `CopyPlan`) ready to install.
pub(crate) fn install(plan: &Bound<'_, PyAny>) -> PyResult<Installed> {
    if let Ok(p) = plan.extract::<PyRef<'_, RowPlan>>() {
        return Ok(Installed {
            rewriter: Rewriter::row(Arc::clone(&p.plan)),
            tallies: Arc::clone(&p.tallies),
        });
    }
    if let Ok(p) = plan.extract::<PyRef<'_, CopyPlan>>() {
        return Ok(Installed {
            rewriter: Rewriter::copy(Arc::clone(&p.plan)),
            tallies: Arc::clone(&p.tallies),
        });
    }
    Err(PyTypeError::new_err(format!(
        "a row plan must be a RowPlan, a CopyPlan or None, not {}",
        plan.get_type().name()?
    )))
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct RowPlan {
    plan: Arc<rewrite::RowPlan>,
    tallies: SharedTallies,
}

#[pymethods]
impl RowPlan {
    #[new]
    fn new(columns: &Bound<'_, PyAny>) -> PyResult<Self> {
        let plan = rewrite::RowPlan::new(column_actions(columns)?);
        Ok(RowPlan {
            tallies: Arc::new(Mutex::new(plan.new_tallies())),
            plan: Arc::new(plan),
        })
    }

    fn __len__(&self) -> usize {
        self.plan.len()
    }

    #[getter]
    fn is_passthrough(&self) -> bool {
        self.plan.is_passthrough()
    }

    fn take_tally(&self) -> Vec<HashMap<String, u64>> {
        take(&self.tallies, self.plan.len())
    }

    fn __repr__(&self) -> String {
        format!("<RowPlan {:?}>", self.plan.columns)
    }
}

/// One ASCII character from an option string.
fn one_char(name: &str, value: &str) -> PyResult<u8> {
    match value.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(PyValueError::new_err(format!(
            "COPY {name} must be a single one-byte character"
        ))),
    }
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct CopyPlan {
    plan: Arc<rewrite::CopyPlan>,
    tallies: SharedTallies,
}

#[pymethods]
impl CopyPlan {
    #[new]
    #[pyo3(signature = (format, columns, *, delimiter=None, null=None, quote="\"", escape=None,
                        header=false))]
    fn new(
        format: &str,
        columns: &Bound<'_, PyAny>,
        delimiter: Option<&str>,
        null: Option<&str>,
        quote: &str,
        escape: Option<&str>,
        header: bool,
    ) -> PyResult<Self> {
        let copy_format = match format.to_ascii_lowercase().as_str() {
            "text" => CopyFormat::Text {
                delimiter: delimiter.map_or(Ok(b'\t'), |d| one_char("delimiter", d))?,
                null: null.unwrap_or("\\N").as_bytes().to_vec(),
                header,
            },
            "csv" => {
                let quote = one_char("quote", quote)?;
                CopyFormat::Csv {
                    delimiter: delimiter.map_or(Ok(b','), |d| one_char("delimiter", d))?,
                    quote,
                    escape: escape.map_or(Ok(quote), |e| one_char("escape", e))?,
                    null: null.unwrap_or("").as_bytes().to_vec(),
                    header,
                }
            }
            "binary" => {
                if delimiter.is_some() || null.is_some() || escape.is_some() || header {
                    return Err(PyValueError::new_err(
                        "binary COPY takes no delimiter, null, escape or header",
                    ));
                }
                CopyFormat::Binary
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown COPY format {other:?} (text, csv or binary)"
                )))
            }
        };
        let columns = column_actions(columns)?;
        let plan = rewrite::CopyPlan::new(copy_format, columns).map_err(PyValueError::new_err)?;
        Ok(CopyPlan {
            tallies: Arc::new(Mutex::new(vec![Tally::new(); plan.len()])),
            plan: Arc::new(plan),
        })
    }

    fn __len__(&self) -> usize {
        self.plan.len()
    }

    #[getter]
    fn is_passthrough(&self) -> bool {
        self.plan.is_passthrough()
    }

    #[getter]
    fn format(&self) -> &'static str {
        match self.plan.format {
            CopyFormat::Text { .. } => "text",
            CopyFormat::Csv { .. } => "csv",
            CopyFormat::Binary => "binary",
        }
    }

    fn take_tally(&self) -> Vec<HashMap<String, u64>> {
        take(&self.tallies, self.plan.len())
    }

    fn __repr__(&self) -> String {
        format!("<CopyPlan {} {:?}>", self.format(), self.plan.columns)
    }
}
