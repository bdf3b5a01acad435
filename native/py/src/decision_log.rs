//! `DecisionLog`: the JSON-lines decision log (`policy.audit_log`) as a native file writer.
//!
//! The Python sink (`veilgate.policy.audit.JsonLinesAuditSink`) writes every line it renders
//! through it, and a client `RecvBuffer` whose verdict cache answers Queries renders the line
//! of each answered Query here and writes the lines of one read in one `write(2)`, without
//! calling Python.  One file descriptor, one buffer, lines in the order they were handed over
//! (an answered Query's line is written at the end of the read that answered it, before any
//! event of a later message reaches Python).
//!
//! A write that fails drops what it tried to write (as the Python sink always did: the log is
//! a convenience stream, the session recording is the tamper-evident record) and counts a
//! failure; `reopen` (SIGHUP, after rotation) opens the path again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use veilgate_core::record::json;
use veilgate_core::record::sql::statement_text;

pub struct LogInner {
    path: PathBuf,
    file: Option<File>,
    /// Lines written so far.
    lines: u64,
    /// Writes that failed (their lines are lost).
    failures: u64,
    /// The error of the last failed write.
    last_error: String,
}

impl LogInner {
    /// Writes `data` (whole lines) in one call; a failure is counted and drops them.
    fn write_lines(&mut self, data: &[u8], lines: u64) -> Result<(), &'static str> {
        if data.is_empty() {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else {
            return Err("closed");
        };
        // O_APPEND: each write lands whole at the end, whoever else appends
        if let Err(e) = file.write_all(data) {
            self.failures += 1;
            self.last_error = e.to_string();
            return Err("failed");
        }
        self.lines += lines;
        Ok(())
    }
}

fn lock(m: &Mutex<LogInner>) -> MutexGuard<'_, LogInner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// The seconds since the epoch as Python's `repr(time.time())` writes them (shortest
/// round-trip form, at least one fractional digit).
fn push_ts(out: &mut Vec<u8>, t: SystemTime) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let s = format!("{secs}");
    out.extend_from_slice(s.as_bytes());
    if !s.contains('.') {
        out.extend_from_slice(b".0");
    }
}

/// What a client buffer needs to log the Queries its verdict cache answers.
pub struct HitLog {
    inner: Arc<Mutex<LogInner>>,
    /// `"principal_key":...,"principal_label":...,"session_id":...` of the session.
    prefix: Vec<u8>,
    max_sql_bytes: usize,
    record_sql: bool,
    /// Lines rendered during the current read.
    pending: Vec<u8>,
    pending_lines: u64,
}

impl HitLog {
    /// Renders the line of a Query answered with the cached `event` members (the verdict's
    /// part of the line) for the statement `text` (valid UTF-8).
    pub fn hit(&mut self, event: &[u8], text: &[u8]) {
        let out = &mut self.pending;
        out.extend_from_slice(b"{\"ts\":");
        push_ts(out, SystemTime::now());
        out.push(b',');
        out.extend_from_slice(&self.prefix);
        out.push(b',');
        out.extend_from_slice(event);
        if self.record_sql {
            let t = statement_text(text, self.max_sql_bytes, false);
            out.extend_from_slice(b",\"sql\":");
            json::string(out, &t.excerpt);
        }
        out.extend_from_slice(b",\"sql_len\":");
        json::uint(out, text.len() as u64);
        out.extend_from_slice(b"}\n");
        self.pending_lines += 1;
    }

    /// Writes the lines of this read (one call).
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let _ = lock(&self.inner).write_lines(&self.pending, self.pending_lines);
        self.pending.clear();
        self.pending_lines = 0;
    }
}

impl Drop for HitLog {
    fn drop(&mut self) {
        self.flush();
    }
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct DecisionLog {
    inner: Arc<Mutex<LogInner>>,
}

impl DecisionLog {
    /// A client buffer's handle: lines of answered Queries carry `prefix` (the session's
    /// members), a `sql` excerpt of at most `max_sql_bytes` bytes when `record_sql`.
    pub fn hit_log(&self, prefix: &[u8], max_sql_bytes: usize, record_sql: bool) -> HitLog {
        HitLog {
            inner: Arc::clone(&self.inner),
            prefix: prefix.to_vec(),
            max_sql_bytes,
            record_sql,
            pending: Vec::new(),
            pending_lines: 0,
        }
    }
}

#[pymethods]
impl DecisionLog {
    /// Opens (creates 0600) `path` for appending; `OSError` when it cannot.
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        let file = open(&path)?;
        Ok(DecisionLog {
            inner: Arc::new(Mutex::new(LogInner {
                path,
                file: Some(file),
                lines: 0,
                failures: 0,
                last_error: String::new(),
            })),
        })
    }

    /// Appends `data` (whole lines, each ending in a newline) in one write.  False when the
    /// write failed (counted in :attr:`failures`; the data is dropped); `ValueError` once
    /// closed.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<bool> {
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        py.detach(|| match lock(&self.inner).write_lines(data, lines) {
            Ok(()) => Ok(true),
            Err("closed") => Err(PyValueError::new_err("audit sink is closed")),
            Err(_) => Ok(false),
        })
    }

    /// Opens the path again (the old file was rotated away); the old descriptor is closed.
    /// `OSError` when it cannot be opened (the old one stays).  Nothing once closed.
    fn reopen(&self) -> PyResult<()> {
        let mut inner = lock(&self.inner);
        if inner.file.is_none() {
            return Ok(());
        }
        let file = open(&inner.path)?;
        inner.file = Some(file);
        Ok(())
    }

    /// Closes the file: later writes raise, buffers armed with it drop their lines.
    fn close(&self) {
        lock(&self.inner).file = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).file.is_none()
    }

    /// Lines written so far (by Python and by client buffers).
    #[getter]
    fn lines(&self) -> u64 {
        lock(&self.inner).lines
    }

    /// Writes that failed so far.
    #[getter]
    fn failures(&self) -> u64 {
        lock(&self.inner).failures
    }

    /// The error of the last failed write ("" before any).
    #[getter]
    fn last_error(&self) -> String {
        lock(&self.inner).last_error.clone()
    }

    #[getter]
    fn path(&self) -> String {
        lock(&self.inner).path.to_string_lossy().into_owned()
    }

    fn __repr__(&self) -> String {
        let inner = lock(&self.inner);
        format!(
            "<DecisionLog path={:?} lines={} failures={}{}>",
            inner.path,
            inner.lines,
            inner.failures,
            if inner.file.is_none() { " closed" } else { "" }
        )
    }
}
