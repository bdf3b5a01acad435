//! `RecvBuffer`: a receive buffer the event loop reads into directly (buffer protocol), framed
//! by `veilgate_core::Framer`.
//!
//! Layout: `[0, start)` consumed, `[start, end)` received and not yet returned, `[end, cap)` the
//! free tail, the only part ever exported.  `prepare` (called from `Protocol.get_buffer`) is the
//! only place that moves or reallocates bytes, and it refuses while a view is exported; `advance`
//! (from `Protocol.buffer_updated`, where uvloop still holds its export) only moves indices.
//!
//! Masking (server side): `set_row_plan` installs a `RowPlan` / `CopyPlan`; the framer then
//! hands the plan's rows out whole (`Action::Rewrite`) until a message that ends the result set,
//! and `advance` rewrites them into `rewritten`, then builds one bytes object per run of
//! forwarded and rewritten messages (one write per read when no event interrupts).  With no
//! plan installed none of this runs: the pass-through path is the same as without masking.
//!
//! TLS (`attach_tls`): the loop reads ciphertext into a second allocation (`cipher`, then the
//! only part ever exported), and `advance` decrypts it into `[end, cap)` of the framing buffer,
//! growing that buffer when needed and shrinking it back once it is drained (it is never
//! exported while TLS is attached; `prepare` then does nothing, and the relay keeps one view of
//! the cipher buffer for every read).  With the
//! peer's connection set as the output (`set_output_tls`), `advance(n, encrypt=True)` returns
//! the TLS records of a batch that has no event instead of its plaintext: what arrived in one
//! read leaves in one write, with no Python call per record.

use std::ffi::{c_int, c_void};
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use pyo3::exceptions::{PyBufferError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use veilgate_core::record::log::{CLIENT_RECORDED_WHOLE, SERVER_RECORDED, SERVER_RECORDED_WHOLE};
use veilgate_core::session::{CLIENT_TRACKED, SERVER_TRACKED, SERVER_WHOLE};
use veilgate_core::tls::PlainSink;
use veilgate_core::{
    startup, stats, Action, Direction, FrameError, FrameOutcome, Framer, SessionTracker, TagSet,
};

use crate::buffer::RawBuf;
use crate::decision_log::DecisionLog;
use crate::errors::framing_error;
use crate::message::Message;
use crate::plan::{install, Installed, MaskingError};
use crate::session::{lock, SessionState};
use crate::tls::{self as ptls, SharedTls, TlsConnection, TlsError};
use crate::verdict::{drain_events, Armed, HitEvents, Hits, ParseEntry, ParseSpec, VerdictCache};

pub const CLIENT: u8 = 0;
/// A simple Query (the message the verdict cache may answer).
const QUERY_TAG: u8 = b'Q';
/// A Parse (the verdict cache answers re-parses of statements the server holds).
const PARSE_TAG: u8 = b'P';
pub const SERVER: u8 = 1;

/// The free tail `prepare` guarantees at least (when the capacity allows it).
const MIN_FREE: usize = 16 * 1024;

/// The rewrite buffer is dropped after a read that grew it past this (or the base capacity).
const MAX_KEPT_REWRITE: usize = 1 << 20;

/// What `advance` does with received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Tagged messages (the normal case).
    Framing,
    /// Untagged start-up packets: nothing is framed (`take_startup`).
    Startup,
    /// A row could not be masked: the stream is unusable, every `advance` raises.
    Failed,
}

#[pyclass(module = "veilgate_native")]
pub struct RecvBuffer {
    buf: RawBuf,
    /// First byte not yet returned.
    start: usize,
    /// First free byte.
    end: usize,
    /// The capacity asked for at construction; the buffer shrinks back to it when empty.
    base_capacity: usize,
    /// Live buffer-protocol exports.  Atomic (not behind the borrow flag) so that a release
    /// never fails to borrow, and because a pyclass must be `Sync`.
    exports: AtomicUsize,
    direction: Direction,
    framer: Framer,
    mode: Mode,
    session: Option<Arc<Mutex<SessionTracker>>>,
    /// Reused across `advance` calls: no allocation per read in the steady state.
    actions: Vec<Action>,
    /// The row plan installed, while the framer says it is active.
    plan: Option<Installed>,
    /// The rows rewritten by the last `advance`, one range per `Action::Rewrite`, in order.
    rewritten: Vec<u8>,
    rewritten_at: Vec<Range<usize>>,
    /// The last `advance` stopped at a barrier event.
    at_barrier: bool,
    /// Server tags fed to the session tracker ([`SERVER_TRACKED`], plus [`SERVER_RECORDED`]
    /// while the session is recorded).
    server_tracked: TagSet,
    /// Client side, recording: (offset in the last `frame`'s input, statement-log id) of the
    /// messages that got an id, in stream order; stamped on the events built from them.
    ids: Vec<(usize, u64)>,
    /// This side's TLS connection and the ciphertext buffer the loop reads into.
    tls_in: Option<TlsIn>,
    /// The peer's TLS connection: forwarded batches are encrypted into it.
    tls_out: Option<SharedTls>,
    /// Reused: the plaintext of a batch of several pieces, and the records of a batch.
    scratch: Vec<u8>,
    records: Vec<u8>,
    /// Client side: the verdict cache Queries are answered from (None: every Query surfaces).
    verdicts: Option<Armed>,
    /// Queries answered natively since the control plane last drained them.
    hits: Hits,
}

struct TlsIn {
    core: SharedTls,
    cipher: RawBuf,
}

/// The free tail of the framing buffer as the sink of decrypted plaintext: compacted or grown
/// on demand (legal only while nothing is exported from it, i.e. with TLS attached).
struct PlainTail<'a> {
    buf: &'a mut RawBuf,
    start: &'a mut usize,
    end: &'a mut usize,
    added: usize,
}

impl PlainSink for PlainTail<'_> {
    fn fill_from(&mut self, n: usize, src: &mut dyn Read) -> io::Result<usize> {
        let cap = self.buf.capacity();
        if cap - *self.end < n {
            let live = *self.end - *self.start;
            if cap - live >= n {
                // SAFETY: with TLS attached the framing buffer is never exported.
                unsafe { self.buf.compact(*self.start, *self.end) };
            } else {
                let new_cap = (live + n).max(cap.saturating_mul(2));
                // SAFETY: as above; `[start, end)` is kept at offset 0.
                unsafe { self.buf.reallocate(new_cap, *self.start, *self.end) };
            }
            *self.start = 0;
            *self.end = live;
        }
        // SAFETY: `[end, end + n)` is in bounds (made so above), beyond the received data, and
        // not exported (TLS attached): nothing else accesses it.
        let region = unsafe { self.buf.slice_mut(*self.end, *self.end + n) };
        let k = src.read(region)?;
        *self.end += k;
        self.added += k;
        Ok(k)
    }
}

impl RecvBuffer {
    /// The bytes received and not yet returned.
    #[inline]
    fn unparsed(&self) -> &[u8] {
        // SAFETY: in bounds (`start <= end <= cap`).  A view exported before the last `advance`
        // may still cover these bytes (uvloop releases its view after `buffer_updated`), but
        // the loop wrote them before calling `buffer_updated`, and nothing can write through a
        // view while this borrow lives: we hold the GIL and never release it (an abi3 build has
        // no free-threaded mode), so no Python code runs meanwhile.
        unsafe { self.buf.slice(self.start, self.end) }
    }

    /// Size of a message at `start` that must arrive whole and has not yet.
    fn need(&self) -> usize {
        let unparsed = self.unparsed();
        if self.mode == Mode::Startup {
            match startup::packet_len(unparsed) {
                Ok(Some(n)) if n > unparsed.len() => n,
                _ => 0,
            }
        } else {
            self.framer.need(unparsed)
        }
    }

    /// Frames `[start, end)` into `self.actions`, feeding the session tracker.
    fn frame(&mut self, py: Python<'_>) -> Result<FrameOutcome, FrameError> {
        self.actions.clear();
        // SAFETY: as in `unparsed`; borrowed field by field so the framer can be `&mut`.
        let unparsed = unsafe { self.buf.slice(self.start, self.end) };
        let framer = &mut self.framer;
        let actions = &mut self.actions;
        let ids = &mut self.ids;
        ids.clear();
        let verdicts = &mut self.verdicts;
        let hits = &mut self.hits;
        let origin = unparsed.as_ptr() as usize;
        let outcome = match (&self.session, self.direction) {
            (None, Direction::Client) if verdicts.is_some() => {
                framer.frame_answering(unparsed, actions, |tag, bytes| match tag {
                    QUERY_TAG => verdicts
                        .as_mut()
                        .is_some_and(|v| v.answer(py, bytes, hits).is_some()),
                    PARSE_TAG => verdicts
                        .as_mut()
                        .is_some_and(|v| v.answer_parse(py, bytes, hits).is_some()),
                    _ => false,
                })
            }
            (None, _) => framer.frame(unparsed, actions, |_, _| {}),
            (Some(session), direction) => {
                // Lock at most once per read, and only if a tracked message went by.
                let mut guard: Option<MutexGuard<'_, SessionTracker>> = None;
                let mut now: Option<Instant> = None;
                let outcome = match direction {
                    Direction::Client => framer.frame_answering(unparsed, actions, |tag, bytes| {
                        if !CLIENT_TRACKED.contains(tag) {
                            return false;
                        }
                        let t = *now.get_or_insert_with(Instant::now);
                        let g = guard.get_or_insert_with(|| lock(session));
                        g.on_client(tag, t);
                        let mut id = 0;
                        if let Some(log) = g.log.as_mut() {
                            id = log.on_client(tag, bytes, t);
                            if id != 0 {
                                ids.push((bytes.as_ptr() as usize - origin, id));
                            }
                        }
                        let Some(v) = verdicts.as_mut() else {
                            return false;
                        };
                        let answered = match tag {
                            QUERY_TAG => v.answer(py, bytes, hits),
                            PARSE_TAG => v.answer_parse(py, bytes, hits),
                            _ => None,
                        };
                        let Some(decision) = answered else {
                            return false;
                        };
                        if id != 0 {
                            if let Some(log) = g.log.as_mut() {
                                log.decide(id, decision);
                            }
                        }
                        true
                    }),
                    Direction::Server => {
                        let tracked = self.server_tracked;
                        let base = framer.bytes();
                        framer.frame(unparsed, actions, |tag, bytes| {
                            if tracked.contains(tag) {
                                let t = *now.get_or_insert_with(Instant::now);
                                let g = guard.get_or_insert_with(|| lock(session));
                                g.on_server(tag, bytes, t);
                                if let Some(log) = g.log.as_mut() {
                                    let pos = base + (bytes.as_ptr() as usize - origin) as u64;
                                    log.on_server(tag, bytes, pos, t);
                                }
                            }
                        })
                    }
                };
                // statements completed by this read go to the record queue: one lock
                if let Some(log) = guard.as_mut().and_then(|g| g.log.as_mut()) {
                    log.flush();
                }
                outcome
            }
        };
        // the decision-log lines of the Queries this read answered: one write
        if let Some(v) = verdicts.as_mut() {
            v.flush_log();
        }
        let outcome = outcome?;
        self.at_barrier = outcome.barrier;
        Ok(outcome)
    }

    /// Rewrites the plan's rows of the last `frame` into `rewritten`.
    fn rewrite_rows(&mut self) -> Result<(), String> {
        self.rewritten.clear();
        self.rewritten_at.clear();
        let Some(plan) = self.plan.as_mut() else {
            return Ok(());
        };
        // SAFETY: as in `unparsed`; borrowed field by field so the rewriter can be `&mut`.
        let unparsed = unsafe { self.buf.slice(self.start, self.end) };
        for a in &self.actions {
            if let Action::Rewrite(r) = a {
                let at = self.rewritten.len();
                plan.rewriter
                    .rewrite(&unparsed[r.clone()], &mut self.rewritten)
                    .map_err(|e| e.to_string())?;
                self.rewritten_at.push(at..self.rewritten.len());
            }
        }
        Ok(())
    }

    /// After a rewrite: hands the counts to the plan object, and drops the plan once the
    /// framer has seen the end of its result set.
    fn settle_plan(&mut self) {
        let Some(plan) = self.plan.as_mut() else {
            return;
        };
        if plan.rewriter.tallies().iter().any(|t| !t.is_empty()) {
            let mut sink = plan.tallies.lock().unwrap_or_else(|e| e.into_inner());
            plan.rewriter.drain_tallies(&mut sink);
        }
        if !self.framer.row_plan_active() {
            self.plan = None;
        }
    }

    /// The Python value for the actions of the last `frame` (ranges relative to `start`):
    /// `None`, one `bytes`, or a list in which every run of forwarded and rewritten messages
    /// is one `bytes` and every event a `Message`.
    fn build_result<'py>(&mut self, py: Python<'py>, encrypt: bool) -> PyResult<Bound<'py, PyAny>> {
        if encrypt && !self.actions.is_empty() {
            if let Some(out) = self.encrypted_result(py)? {
                return Ok(out.into_any());
            }
        }
        let unparsed = self.unparsed();
        let mut ids = self.ids.iter().peekable();
        match self.actions.as_slice() {
            [] => Ok(py.None().into_bound(py)),
            [Action::Forward(r)] => Ok(PyBytes::new(py, &unparsed[r.clone()]).into_any()),
            actions => {
                let list = PyList::empty(py);
                let mut rows = self.rewritten_at.iter();
                let mut run: Vec<&[u8]> = Vec::new();
                for a in actions {
                    match a {
                        Action::Forward(r) => run.push(&unparsed[r.clone()]),
                        Action::Rewrite(_) => {
                            let Some(r) = rows.next() else {
                                return Err(PyRuntimeError::new_err(
                                    "row to rewrite with no plan installed",
                                ));
                            };
                            run.push(&self.rewritten[r.clone()]);
                        }
                        Action::Event(r) => {
                            flush_run(py, &mut run, &list)?;
                            while ids.next_if(|(at, _)| *at < r.start).is_some() {}
                            let id = ids
                                .next_if(|(at, _)| *at == r.start)
                                .map_or(0, |(_, id)| *id);
                            list.append(Message::with_id(py, &unparsed[r.clone()], id))?;
                        }
                    }
                }
                flush_run(py, &mut run, &list)?;
                if list.len() == 1 {
                    let only = list.get_item(0)?;
                    if only.is_instance_of::<PyBytes>() {
                        return Ok(only);
                    }
                }
                Ok(list.into_any())
            }
        }
    }

    /// The records of the last `frame`'s batch, encrypted into the peer's connection, when the
    /// batch has no event (`None`: it has one, the plaintext list is built instead).
    fn encrypted_result<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if self.actions.iter().any(|a| matches!(a, Action::Event(_))) {
            return Ok(None);
        }
        let Some(out) = self.tls_out.as_ref() else {
            return Err(PyRuntimeError::new_err(
                "advance(encrypt=True) with no output TLS connection (set_output_tls)",
            ));
        };
        // SAFETY: as in `unparsed`; borrowed field by field.
        let unparsed = unsafe { self.buf.slice(self.start, self.end) };
        let mut rows = self.rewritten_at.iter();
        let plain: &[u8] = match self.actions.as_slice() {
            [Action::Forward(r)] => &unparsed[r.clone()],
            actions => {
                // one write of the whole batch: rustls makes a record per write
                self.scratch.clear();
                for a in actions {
                    match a {
                        Action::Forward(r) => self.scratch.extend_from_slice(&unparsed[r.clone()]),
                        Action::Rewrite(_) => {
                            let Some(r) = rows.next() else {
                                return Err(PyRuntimeError::new_err(
                                    "row to rewrite with no plan installed",
                                ));
                            };
                            self.scratch.extend_from_slice(&self.rewritten[r.clone()]);
                        }
                        Action::Event(_) => {}
                    }
                }
                &self.scratch
            }
        };
        self.records.clear();
        let written = ptls::lock(out).tls.encrypt(plain, &mut self.records);
        if let Err(e) = written {
            return Err(TlsError::new_err(e.to_string()));
        }
        let bytes = PyBytes::new(py, &self.records);
        if self.scratch.capacity() > MAX_KEPT_REWRITE.max(self.base_capacity) {
            self.scratch = Vec::new();
        }
        if self.records.capacity() > MAX_KEPT_REWRITE.max(self.base_capacity) {
            self.records = Vec::new();
        }
        Ok(Some(bytes))
    }

    /// Decrypts the `n` ciphertext bytes the loop read into `cipher` into the framing buffer;
    /// returns the plaintext length.
    fn decrypt(&mut self, n: usize) -> PyResult<usize> {
        let RecvBuffer {
            tls_in,
            buf,
            start,
            end,
            ..
        } = self;
        let Some(tls) = tls_in.as_ref() else {
            return Ok(0);
        };
        let free = tls.cipher.capacity();
        if n > free {
            return Err(PyValueError::new_err(format!(
                "advance({n}) exceeds the {free} free bytes"
            )));
        }
        // SAFETY: the loop wrote `[0, n)` before calling `buffer_updated`; it writes nothing
        // while we run (we hold the GIL), and `[0, n)` is not referenced elsewhere.
        let data = unsafe { tls.cipher.slice(0, n) };
        let mut sink = PlainTail {
            buf,
            start,
            end,
            added: 0,
        };
        let fed = ptls::lock(&tls.core).tls.feed(data, &mut sink);
        let added = sink.added;
        fed.map_err(|e| TlsError::new_err(e.to_string()))?;
        Ok(added)
    }

    /// With TLS attached, what `prepare` does without it: once everything received was
    /// returned, the framing buffer starts over at offset 0 and shrinks back to its base
    /// capacity after a large message (memory per connection stays bounded).  Legal here:
    /// with TLS attached the framing buffer is never exported (the cipher buffer is).
    #[inline]
    fn settle_tls_plain(&mut self) {
        if self.tls_in.is_none() || self.start != self.end {
            return;
        }
        self.start = 0;
        self.end = 0;
        if self.buf.capacity() > self.base_capacity {
            // SAFETY: with TLS attached the framing buffer is never exported; nothing to keep.
            unsafe { self.buf.reallocate(self.base_capacity, 0, 0) };
        }
    }

    /// `start <= end <= cap` (with the `debug-invariants` feature).
    #[inline]
    fn check_invariants(&self) {
        #[cfg(feature = "debug-invariants")]
        assert!(
            self.start <= self.end && self.end <= self.buf.capacity(),
            "RecvBuffer indices out of order: {} {} {}",
            self.start,
            self.end,
            self.buf.capacity()
        );
    }

    fn check_server(&self, what: &str) -> PyResult<()> {
        match self.direction {
            Direction::Server => Ok(()),
            Direction::Client => Err(PyValueError::new_err(format!(
                "{what} is for a SERVER buffer (rows come from the server)"
            ))),
        }
    }

    fn check_not_exported(&self) -> PyResult<()> {
        match self.exports.load(Ordering::Acquire) {
            0 => Ok(()),
            n => Err(PyBufferError::new_err(format!(
                "receive buffer has {n} live export(s): release every view before prepare()"
            ))),
        }
    }
}

#[pymethods]
impl RecvBuffer {
    #[new]
    #[pyo3(signature = (direction, session=None, *, capacity=65536, max_message=1 << 30))]
    fn new(
        direction: u8,
        session: Option<PyRef<'_, SessionState>>,
        capacity: usize,
        max_message: usize,
    ) -> PyResult<Self> {
        let direction = match direction {
            CLIENT => Direction::Client,
            SERVER => Direction::Server,
            _ => return Err(PyValueError::new_err("direction must be CLIENT or SERVER")),
        };
        if capacity == 0 {
            return Err(PyValueError::new_err("capacity must be positive"));
        }
        let mut framer = Framer::new();
        framer.set_max_message(max_message);
        if session.is_some() && direction == Direction::Server {
            framer.set_whole(SERVER_WHOLE);
        }
        Ok(RecvBuffer {
            buf: RawBuf::new(capacity),
            start: 0,
            end: 0,
            base_capacity: capacity,
            exports: AtomicUsize::new(0),
            direction,
            framer,
            mode: Mode::Framing,
            session: session.map(|s| Arc::clone(&s.inner)),
            actions: Vec::new(),
            plan: None,
            rewritten: Vec::new(),
            rewritten_at: Vec::new(),
            at_barrier: false,
            server_tracked: SERVER_TRACKED,
            ids: Vec::new(),
            tls_in: None,
            tls_out: None,
            scratch: Vec::new(),
            records: Vec::new(),
            verdicts: None,
            hits: Hits::new(),
        })
    }

    /// Makes room for the next read.  Returns whether TLS is attached: the loop then reads
    /// ciphertext into a buffer that never moves or grows (the framing buffer is compacted and
    /// shrunk by `advance`), so nothing is done here and a caller may keep one view of this
    /// buffer for every read instead of calling this per read.
    fn prepare(&mut self, sizehint: isize) -> PyResult<bool> {
        if self.tls_in.is_some() {
            return Ok(true);
        }
        self.check_not_exported()?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.capacity() > self.base_capacity {
                // Shrink back after a large event message: memory per connection stays bounded.
                // SAFETY: no export is alive (checked above); nothing to keep.
                unsafe { self.buf.reallocate(self.base_capacity, 0, 0) };
            }
        }
        // A message at `start` that must arrive whole: room for all of it is what counts.
        let need = self.need();
        let floor = MIN_FREE.min(self.base_capacity);
        let hint = usize::try_from(sizehint)
            .unwrap_or(0)
            .min(self.base_capacity);
        let want_free = floor.max(hint);
        let cap = self.buf.capacity();
        let roomy = |start: usize, end: usize, free_wanted: usize| {
            if need > 0 {
                start + need <= cap
            } else {
                cap - end >= free_wanted
            }
        };
        if roomy(self.start, self.end, want_free) {
            return Ok(false);
        }
        let unparsed = self.end - self.start;
        if self.start > 0 {
            // Cheap in the steady state: what is left is a partial header or a partial
            // must-be-whole message (pass-through messages stream out).
            // SAFETY: no export is alive (checked above).
            unsafe { self.buf.compact(self.start, self.end) };
            self.start = 0;
            self.end = unparsed;
        }
        if roomy(0, unparsed, floor) {
            return Ok(false);
        }
        let required = need.max(unparsed + want_free);
        // Exactly the size of a pending message (shrunk back once it is consumed); otherwise
        // doubling, so that a caller accumulating bytes does not reallocate on every read.
        let new_cap = if need > 0 {
            required
        } else {
            required.max(cap.saturating_mul(2))
        };
        // SAFETY: no export is alive (checked above); `[0, unparsed)` is kept.
        unsafe { self.buf.reallocate(new_cap, 0, unparsed) };
        self.check_invariants();
        Ok(false)
    }

    fn __len__(&self) -> usize {
        match &self.tls_in {
            Some(t) => t.cipher.capacity(),
            None => self.buf.capacity() - self.end,
        }
    }

    /// Exports the writable free tail `[end, cap)`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.try_borrow()?;
        let (ptr, len) = match &this.tls_in {
            // TLS: the loop reads ciphertext, decrypted by `advance`
            Some(t) => (t.cipher.ptr_at(0), t.cipher.capacity()),
            None => (this.buf.ptr_at(this.end), this.buf.capacity() - this.end),
        };
        if len == 0 {
            // Both loops treat an empty buffer as fatal; say why.
            return Err(PyBufferError::new_err(
                "receive buffer is full: call prepare() first",
            ));
        }
        let ptr = ptr.cast::<c_void>();
        let len = isize::try_from(len).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        // SAFETY: `view` is the valid, writable `Py_buffer` CPython passes to bf_getbuffer;
        // `ptr..ptr+len` is the free tail of our allocation, which stays allocated and unmoved
        // until the matching release: `prepare` (the only place that moves or frees it) refuses
        // while `exports > 0`, and FillInfo takes a strong reference to `slf` (`view.obj`), so
        // the buffer outlives the view.  Rust never references the tail while it is exported.
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr, len, 0, flags) };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `&self` and an atomic: a release must never fail on a borrow conflict (it would leak the
    /// export count and lock the buffer forever).
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }

    #[pyo3(signature = (n, encrypt=false))]
    fn advance<'py>(
        &mut self,
        py: Python<'py>,
        n: usize,
        encrypt: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = if self.tls_in.is_some() {
            match self.decrypt(n) {
                Ok(k) => k,
                Err(e) => {
                    self.at_barrier = false;
                    return Err(e);
                }
            }
        } else {
            let free = self.buf.capacity() - self.end;
            if n > free {
                return Err(PyValueError::new_err(format!(
                    "advance({n}) exceeds the {free} free bytes"
                )));
            }
            self.end += n;
            n
        };
        let before = self.framer.messages();
        if self.mode != Mode::Framing {
            stats::add_traffic(self.direction, n as u64, 0);
            if self.mode == Mode::Failed {
                return Err(MaskingError::new_err(
                    "the stream was closed by an earlier masking error",
                ));
            }
            return Ok(py.None().into_bound(py));
        }
        let consumed = match self.frame(py) {
            Ok(o) => o.consumed,
            Err(e) => {
                stats::add_traffic(self.direction, n as u64, 0);
                self.at_barrier = false;
                return Err(match e {
                    FrameError::UnmaskedRow { .. } => MaskingError::new_err(e.to_string()),
                    _ => framing_error(&e),
                });
            }
        };
        stats::add_traffic(self.direction, n as u64, self.framer.messages() - before);
        if self.plan.is_some() {
            if let Err(e) = self.rewrite_rows() {
                // Some rows of this read may have been counted, the plan may have ended: the
                // stream cannot go on consistently.  Nothing of this read is returned.
                self.mode = Mode::Failed;
                self.plan = None;
                self.at_barrier = false;
                return Err(MaskingError::new_err(e));
            }
            let out = self.build_result(py, encrypt);
            self.rewritten_at.clear();
            if self.rewritten.capacity() > MAX_KEPT_REWRITE.max(self.base_capacity) {
                // After a huge row: memory per connection stays bounded.
                self.rewritten = Vec::new();
            }
            self.start += consumed;
            self.settle_plan();
            self.settle_tls_plain();
            self.check_invariants();
            return out;
        }
        let out = self.build_result(py, encrypt);
        self.start += consumed;
        self.settle_tls_plain();
        self.check_invariants();
        out
    }

    /// Attaches this side's TLS connection (after its handshake): from now on the loop reads
    /// ciphertext and `advance` decrypts it.  Plaintext the connection decrypted already (the
    /// client's first message often came with its Finished) is received at once.  Returns its
    /// length.
    fn attach_tls(&mut self, conn: &TlsConnection) -> PyResult<usize> {
        self.check_not_exported()?;
        if self.tls_in.is_some() {
            return Err(PyValueError::new_err(
                "a TLS connection is attached already",
            ));
        }
        let core = Arc::clone(&conn.core);
        let plain = std::mem::take(&mut ptls::lock(&core).plain);
        let mut sink = PlainTail {
            buf: &mut self.buf,
            start: &mut self.start,
            end: &mut self.end,
            added: 0,
        };
        let mut src: &[u8] = &plain;
        while !src.is_empty() {
            sink.fill_from(src.len(), &mut src)
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        }
        self.tls_in = Some(TlsIn {
            core,
            cipher: RawBuf::new(self.base_capacity.max(MIN_FREE)),
        });
        Ok(plain.len())
    }

    /// The peer's TLS connection, into which `advance(n, encrypt=True)` encrypts (None: stop).
    fn set_output_tls(&mut self, conn: Option<&TlsConnection>) {
        self.tls_out = conn.map(|c| Arc::clone(&c.core));
    }

    /// Whether a TLS connection is attached (the loop reads ciphertext).
    #[getter]
    fn tls(&self) -> bool {
        self.tls_in.is_some()
    }

    fn take_startup<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let unparsed = self.unparsed();
        match startup::parse(unparsed) {
            Ok(Some(len)) => {
                let packet = PyBytes::new(py, &unparsed[..len]);
                self.start += len;
                stats::add_traffic(self.direction, 0, 1);
                Ok(Some(packet))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(framing_error(&e)),
        }
    }

    fn set_startup_mode(&mut self, on: bool) {
        if self.mode != Mode::Failed {
            self.mode = if on { Mode::Startup } else { Mode::Framing };
        }
    }

    fn set_events(&mut self, tags: &[u8]) {
        self.framer.set_events(TagSet::from_tags(tags));
    }

    /// The session is recorded (or no longer): the messages the statement log reads are framed
    /// whole and the server's outcomes are tracked.  Call it after
    /// `SessionState.start_recording` (the server side tells the log where the stream is).
    fn set_recording(&mut self, on: bool) {
        match self.direction {
            Direction::Client => self.framer.set_whole(if on {
                CLIENT_RECORDED_WHOLE
            } else {
                TagSet::EMPTY
            }),
            Direction::Server => {
                let (whole, tracked) = if on {
                    (
                        SERVER_WHOLE.union(SERVER_RECORDED_WHOLE),
                        SERVER_TRACKED.union(SERVER_RECORDED),
                    )
                } else {
                    (SERVER_WHOLE, SERVER_TRACKED)
                };
                if let Some(session) = &self.session {
                    self.framer.set_whole(whole);
                    if let Some(log) = lock(session).log.as_mut() {
                        log.set_server_position(self.framer.bytes());
                    }
                }
                self.server_tracked = tracked;
            }
        }
    }

    /// Client side: answer Queries the verdict `cache` allows under decision `scope` without
    /// surfacing them (None: surface every Query again).  `max_frame`: larger Query messages
    /// surface (the statement size limit); `events`: keep each hit's verdict and text for
    /// `take_verdict_hits` (else only their count); `grant_scope`: the principal's standing
    /// grants' scope (`VerdictCache.insert_grant`), looked up when `scope` has no entry.
    ///
    /// `log`: the decision log the lines of answered Queries are written to natively (each
    /// line carries `log_prefix`, the session's members, and a `sql` excerpt of at most
    /// `max_sql_bytes` bytes when `record_sql`); entries without a rendered line then surface
    /// (a grant's entry has none).
    #[pyo3(signature = (
        cache, scope=0, *, max_frame=usize::MAX, events=false, log=None, log_prefix=&b""[..],
        max_sql_bytes=4096, record_sql=true, grant_scope=None, queries=true, parses=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn set_verdicts(
        &mut self,
        cache: Option<PyRef<'_, VerdictCache>>,
        scope: u64,
        max_frame: usize,
        events: bool,
        log: Option<PyRef<'_, DecisionLog>>,
        log_prefix: &[u8],
        max_sql_bytes: usize,
        record_sql: bool,
        grant_scope: Option<u64>,
        queries: bool,
        parses: Option<Vec<ParseSpec>>,
    ) -> PyResult<()> {
        if self.direction != Direction::Client {
            return Err(PyValueError::new_err(
                "set_verdicts is for a CLIENT buffer (Queries come from the client)",
            ));
        }
        let parses: Vec<ParseEntry> = parses
            .unwrap_or_default()
            .into_iter()
            .map(ParseEntry::new)
            .collect();
        self.verdicts = cache.map(|c| {
            let armed = c
                .arm(scope, grant_scope, max_frame, events)
                .with_parses(queries, parses);
            match &log {
                Some(l) => armed.with_log(l.hit_log(log_prefix, max_sql_bytes, record_sql)),
                None => armed,
            }
        });
        Ok(())
    }

    #[getter]
    fn verdicts_armed(&self) -> bool {
        self.verdicts.is_some()
    }

    /// Hits waiting with their verdicts (`events` armed): the control plane drains them.
    #[getter]
    fn verdict_events(&self) -> usize {
        self.hits.events.len()
    }

    /// The Queries answered natively since the last call: (count, [(verdict, text), ...]); the
    /// list holds the hits kept with their verdicts (`events` armed), in order.
    fn take_verdict_hits(&mut self, py: Python<'_>) -> (u64, HitEvents) {
        let count = std::mem::take(&mut self.hits.count);
        (count, drain_events(py, &mut self.hits))
    }

    /// Of the Queries answered natively since the last call, those run on standing grants
    /// (`set_verdicts(grant_scope=...)`); call it with `take_verdict_hits`.
    fn take_grant_hits(&mut self) -> u64 {
        std::mem::take(&mut self.hits.grants)
    }

    fn set_all_events(&mut self, on: bool) {
        self.framer.set_all_events(on);
    }

    fn set_barrier_events(&mut self, tags: &[u8]) {
        self.framer.set_barrier(TagSet::from_tags(tags));
    }

    #[getter]
    fn at_barrier(&self) -> bool {
        self.at_barrier
    }

    fn set_row_plan(&mut self, plan: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.check_server("set_row_plan")?;
        let installed = plan.map(install).transpose()?;
        // The old plan's counts go to its object before it is dropped.
        if let Some(old) = self.plan.as_mut() {
            let mut sink = old.tallies.lock().unwrap_or_else(|e| e.into_inner());
            old.rewriter.drain_tallies(&mut sink);
        }
        match &installed {
            None => self.framer.set_row_plan(None, false),
            Some(p) => self
                .framer
                .set_row_plan(Some(p.rewriter.tag()), !p.rewriter.is_passthrough()),
        }
        self.plan = installed;
        Ok(())
    }

    #[getter]
    fn row_plan_active(&self) -> bool {
        self.framer.row_plan_active()
    }

    fn set_mask_required(&mut self, on: bool) -> PyResult<()> {
        self.check_server("set_mask_required")?;
        self.framer.set_mask_required(on);
        Ok(())
    }

    #[getter]
    fn mask_required(&self) -> bool {
        self.framer.mask_required()
    }

    #[getter]
    fn get_max_message(&self) -> usize {
        self.framer.max_message()
    }

    #[setter]
    fn set_max_message(&mut self, value: usize) {
        self.framer.set_max_message(value);
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.end - self.start
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    #[getter]
    fn exports(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }

    #[getter]
    fn direction(&self) -> u8 {
        match self.direction {
            Direction::Client => CLIENT,
            Direction::Server => SERVER,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<RecvBuffer {} buffered={} capacity={} exports={}>",
            if self.direction == Direction::Client {
                "CLIENT"
            } else {
                "SERVER"
            },
            self.end - self.start,
            self.buf.capacity(),
            self.exports.load(Ordering::Acquire),
        )
    }
}

/// Appends the pieces of `run` to `list` as one bytes object (one copy, no intermediate buffer).
fn flush_run<'py>(
    py: Python<'py>,
    run: &mut Vec<&[u8]>,
    list: &Bound<'py, PyList>,
) -> PyResult<()> {
    match run.as_slice() {
        [] => return Ok(()),
        [one] => list.append(PyBytes::new(py, one))?,
        pieces => {
            let total = pieces.iter().map(|p| p.len()).sum();
            let bytes = PyBytes::new_with(py, total, |buf| {
                let mut at = 0;
                for p in pieces {
                    buf[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                Ok(())
            })?;
            list.append(bytes)?;
        }
    }
    run.clear();
    Ok(())
}
