//! `VerdictCache`: allowed statements answered natively (issue 15 item 2).
//!
//! The policy engine fills it with what it allowed (a Query text's verdict, under the decision
//! scope of the session: tier, search path, shadows), keyed by the literal-normalised shape
//! ([`veilgate_core::shape`]) when the engine shares that verdict between texts that differ only
//! in constants, else by the exact text.  A client `RecvBuffer` armed with it
//! (`set_verdicts`) forwards a Query whose key is in it without surfacing it: the control plane
//! is not called, the statement log gets the decision at once, and the hit waits in the buffer
//! for the control plane's decision event (drained in one call per read, `take_verdict_hits`).
//!
//! Only `allow` verdicts are ever inserted (the engine's side decides which: never an approval,
//! never one that changes the session, never one that depends on session state) -- and
//! *grants* (`insert_grant`, issue 13): an `approve` verdict a principal holds a standing grant
//! for (a grant without a use limit), under a scope of that principal's own (the control plane
//! allocates it; a client buffer is armed with it beside its decision scope).  A grant entry
//! answers only while its [`GrantHandle`] is live and before its deadline (a monotonic instant),
//! and counts each use in the handle, which the control plane holds and drains (the store's use
//! count, the metrics); `GrantHandle.revoke` turns every entry of that grant into a miss at once.  A miss, or
//! anything unusual about the message (too large, no terminator, not UTF-8, a NUL, text the
//! namespace mirror would have to see), surfaces the Query as before: any doubt is a miss.
//! `clear` (policy reload) drops every entry at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use veilgate_core::record::Decision;
use veilgate_core::shape::Shaper;

use crate::decision_log::HitLog;

/// Queries answered natively by every cache of the process (the metrics' count).
static HITS: AtomicU64 = AtomicU64::new(0);
/// Of those, the ones answered on a grant (not allows: the metrics count them apart).
static GRANT_HITS: AtomicU64 = AtomicU64::new(0);

/// One grant as the native cache uses it: live until revoked or past its deadline; its uses
/// counted here until the control plane takes them.
struct GrantState {
    live: AtomicBool,
    deadline: Instant,
    uses: AtomicU64,
    total: AtomicU64,
}

impl GrantState {
    /// Counts one use if the grant may be used now.
    #[inline]
    fn use_once(&self) -> bool {
        if !self.live.load(Ordering::Acquire) || Instant::now() >= self.deadline {
            return false;
        }
        self.uses.fetch_add(1, Ordering::AcqRel);
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A standing grant the verdict cache may answer from (made by the control plane for a grant
/// without a use limit, `ttl_s` being what is left of its lifetime).
#[pyclass(module = "veilgate_native", frozen)]
pub struct GrantHandle {
    state: Arc<GrantState>,
}

#[pymethods]
impl GrantHandle {
    #[new]
    fn new(ttl_s: f64) -> Self {
        let ttl = if ttl_s.is_finite() && ttl_s > 0.0 {
            // bounded: a year (Instant + a huge Duration would overflow)
            Duration::from_secs_f64(ttl_s.min(366.0 * 86400.0))
        } else {
            Duration::ZERO
        };
        GrantHandle {
            state: Arc::new(GrantState {
                live: AtomicBool::new(ttl > Duration::ZERO),
                deadline: Instant::now() + ttl,
                uses: AtomicU64::new(0),
                total: AtomicU64::new(0),
            }),
        }
    }

    /// No entry answers on this grant any more (revoked, ended, reloaded, forgotten).
    fn revoke(&self) {
        self.state.live.store(false, Ordering::Release);
    }

    /// Not revoked and before its deadline.
    #[getter]
    fn live(&self) -> bool {
        self.state.live.load(Ordering::Acquire) && Instant::now() < self.state.deadline
    }

    /// The uses counted since the last call (and resets them).
    fn take_uses(&self) -> u64 {
        self.state.uses.swap(0, Ordering::AcqRel)
    }

    /// Every use counted natively.
    #[getter]
    fn total_uses(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    fn __repr__(&self) -> String {
        format!(
            "<GrantHandle live={} uses={} total={}>",
            self.live(),
            self.state.uses.load(Ordering::Relaxed),
            self.state.total.load(Ordering::Relaxed)
        )
    }
}

const SHAPE: u8 = b'S';
const EXACT: u8 = b'E';

/// Fixed cost charged per entry besides its key (the map slot, the decision, the verdict
/// reference).
const ENTRY_OVERHEAD: usize = 160;

struct Entry {
    verdict: Py<PyAny>,
    decision: Arc<Decision>,
    /// The verdict's members of a decision-log line (`"fingerprint":...` to `"reason":...`),
    /// rendered by the control plane: a buffer armed with a decision log answers only entries
    /// that have them.
    event: Option<Box<[u8]>>,
    /// What the entry is charged (its key, the verdict it keeps alive, the overhead).
    cost: usize,
    /// Set for a grant's entry: it answers while the grant may be used (each use counted).
    grant: Option<Arc<GrantState>>,
}

struct Inner {
    map: HashMap<Vec<u8>, Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    generation: u64,
    hits: u64,
    inserts: u64,
}

impl Inner {
    fn evict_for(&mut self, cost: usize) {
        while !self.map.is_empty()
            && (self.map.len() >= self.max_entries || self.bytes + cost > self.max_bytes)
        {
            // any entry: a dropped entry only costs a miss
            let Some(k) = self.map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = self.map.remove(&k) {
                self.bytes = self.bytes.saturating_sub(old.cost);
            }
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[inline]
fn find_byte(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&x| x == b)
}

/// Python's `bytes.isspace` set (what `bytes.strip()` strips).
#[inline]
fn py_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

const EFFECT_WORDS: [&[u8]; 13] = [
    b"prepare",
    b"deallocate",
    b"declare",
    b"close",
    b"discard",
    b"begin",
    b"start",
    b"commit",
    b"end",
    b"rollback",
    b"abort",
    b"savepoint",
    b"release",
];

/// `veilgate.gateway.sqleffects.may_have_effects` on a Query body (with its NUL): whether the
/// namespace mirror must see this Query.  Ported byte for byte (the mirror's own fast path).
pub fn may_have_effects(body: &[u8]) -> bool {
    let start = body
        .iter()
        .position(|&b| !py_space(b))
        .unwrap_or(body.len());
    let mut head = &body[start..];
    match head.first() {
        None | Some(0) => return false,
        Some(b'/' | b'-') => return true,
        _ => {}
    }
    if let Some(end) = find_byte(0, head) {
        head = &head[..end];
    }
    let mut t = head;
    while let [rest @ .., last] = t {
        if py_space(*last) {
            t = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., b';'] = t {
        t = rest;
    }
    if find_byte(b';', t).is_some() {
        return true;
    }
    let first = &head[..head.len().min(12)];
    let word_end = first
        .iter()
        .position(|&b| py_space(b))
        .unwrap_or(first.len());
    let word = &first[..word_end];
    if word.is_empty() {
        return false;
    }
    EFFECT_WORDS
        .iter()
        .any(|w| word.len() >= w.len() && word[..w.len()].eq_ignore_ascii_case(w))
}

/// The text of a Query body (up to its NUL), if it may be keyed: UTF-8, one terminator at the
/// end.
fn query_text(body: &[u8]) -> Option<&[u8]> {
    let end = find_byte(0, body)?;
    if end + 1 != body.len() {
        return None;
    }
    let text = &body[..end];
    std::str::from_utf8(text).ok()?;
    Some(text)
}

/// Reusable key buffers of one reader.
#[derive(Default)]
pub struct Keyer {
    shaper: Shaper,
    shape: Vec<u8>,
    key: Vec<u8>,
}

impl Keyer {
    /// The entry for `text` under `scope`: its shape key first (computed by the caller into
    /// `self.shape`; `shaped`: it has one), then the exact text.
    fn find_keyed<'a>(
        &mut self,
        inner: &'a Inner,
        scope: u64,
        text: &[u8],
        shaped: bool,
    ) -> Option<&'a Entry> {
        if shaped {
            self.key.clear();
            self.key.extend_from_slice(&scope.to_le_bytes());
            self.key.push(SHAPE);
            self.key.extend_from_slice(&self.shape);
            if let Some(e) = inner.map.get(&self.key) {
                return Some(e);
            }
        }
        if find_byte(0, text).is_some() {
            return None;
        }
        self.key.clear();
        self.key.extend_from_slice(&scope.to_le_bytes());
        self.key.push(EXACT);
        self.key.extend_from_slice(text);
        inner.map.get(&self.key)
    }
}

/// A Parse a client buffer answers natively: the control plane's statement `name` already
/// holds exactly `text` on the server, allowed by the current policy.  Parsing it again
/// changes nothing the gateway follows (a named one fails as a duplicate; the unnamed one holds
/// the same text again, or none if that Parse fails: a later Bind is the server's to refuse).
pub struct ParseEntry {
    name: Vec<u8>,
    text: Vec<u8>,
    verdict: Py<PyAny>,
    decision: Arc<Decision>,
    event: Option<Box<[u8]>>,
}

/// What `RecvBuffer.set_verdicts(parses=...)` takes per statement: (name, text, verdict, rule,
/// fingerprint, decision-log members or None).
pub type ParseSpec = (Vec<u8>, Vec<u8>, Py<PyAny>, String, String, Option<Vec<u8>>);

impl ParseEntry {
    pub fn new(spec: ParseSpec) -> ParseEntry {
        let (name, text, verdict, rule, fingerprint, event) = spec;
        ParseEntry {
            name,
            text,
            verdict,
            decision: Arc::new(Decision {
                action: "allow".to_owned(),
                rule,
                fingerprint,
                sqlstate: None,
                approval: None,
            }),
            event: event.map(Vec::into_boxed_slice),
        }
    }
}

/// A client buffer's arming: which cache, under which scope, with which limits.
pub struct Armed {
    cache: Arc<Mutex<Inner>>,
    generation: u64,
    scope: u64,
    /// The principal's grant scope (its standing grants' entries), if it may have any.
    grant_scope: Option<u64>,
    /// A lookup for tests and tools, not the data path: a grant's entry is never answered
    /// (that would count a use).
    probe: bool,
    max_frame: usize,
    events: bool,
    keyer: Keyer,
    /// Where the lines of answered Queries go (the decision log), if anywhere natively.
    log: Option<HitLog>,
    /// Queries are answered (else only the Parses of `parses`).
    queries: bool,
    /// Parses answered natively (see [`ParseEntry`]).
    parses: Vec<ParseEntry>,
}

/// What the buffer keeps per answered Query until the control plane drains it.
pub struct Hits {
    /// (verdict, the Query's text) per hit, when the control plane wants events.
    pub events: Vec<(Py<PyAny>, Vec<u8>)>,
    /// Hits since the last drain.
    pub count: u64,
    /// Of `count`, the hits answered on a standing grant.
    pub grants: u64,
}

impl Hits {
    pub fn new() -> Hits {
        Hits {
            events: Vec::new(),
            count: 0,
            grants: 0,
        }
    }
}

impl Armed {
    /// Answers the whole Query message `frame` if the cache allows it: the decision for the
    /// statement log, after noting the hit.  None: surface it.
    pub fn answer(
        &mut self,
        py: Python<'_>,
        frame: &[u8],
        hits: &mut Hits,
    ) -> Option<Arc<Decision>> {
        if !self.queries || frame.len() > self.max_frame {
            return None;
        }
        let body = frame.get(5..)?;
        if may_have_effects(body) {
            return None;
        }
        let text = query_text(body)?;
        if find_byte(b'\\', text).is_some() {
            // may read differently with standard_conforming_strings off, which a statement
            // in flight may have set: the control plane judges both readings
            return None;
        }
        let inner = lock(&self.cache);
        if inner.generation != self.generation {
            return None; // reloaded since the session was armed: the control plane re-arms
        }
        let keyer = &mut self.keyer;
        let shaped = keyer.shaper.key(text, &mut keyer.shape);
        let mut entry = keyer.find_keyed(&inner, self.scope, text, shaped);
        if entry.is_none() {
            if let Some(gs) = self.grant_scope {
                entry = keyer.find_keyed(&inner, gs, text, shaped);
            }
        }
        let entry = entry?;
        if self.log.is_some() && entry.event.is_none() {
            // no line, no answer: the control plane logs it (a grant's entry has none: its
            // use is counted and audited there)
            return None;
        }
        // a grant's entry answers only while the grant may be used (that use counted)
        let granted = match &entry.grant {
            None => false,
            Some(g) if !self.probe && g.use_once() => true,
            Some(_) => return None,
        };
        if let Some(log) = self.log.as_mut() {
            log.hit(entry.event.as_deref()?, text);
        }
        let decision = Arc::clone(&entry.decision);
        if self.events {
            hits.events
                .push((entry.verdict.clone_ref(py), text.to_vec()));
        }
        drop(inner);
        hits.count += 1;
        HITS.fetch_add(1, Ordering::Relaxed);
        if granted {
            hits.grants += 1;
            GRANT_HITS.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.cache).hits += 1;
        Some(decision)
    }

    /// Answers the whole Parse message `frame` if it re-parses a statement of `parses` with
    /// its exact name and text (parameter types aside: the policy judges the text): the
    /// decision for the statement log, after noting the hit.  None: surface it.
    pub fn answer_parse(
        &mut self,
        py: Python<'_>,
        frame: &[u8],
        hits: &mut Hits,
    ) -> Option<Arc<Decision>> {
        if self.parses.is_empty() || frame.len() > self.max_frame {
            return None;
        }
        let declared = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
        if declared + 1 != frame.len() {
            return None; // not one whole message
        }
        let body = frame.get(5..)?;
        let n = find_byte(0, body)?;
        let name = &body[..n];
        let rest = &body[n + 1..];
        let t = find_byte(0, rest)?;
        let text = &rest[..t];
        if find_byte(b'\\', text).is_some() {
            return None; // as for a Query: both readings are judged in Python
        }
        let entry = self
            .parses
            .iter()
            .find(|e| e.name == name && e.text == text)?;
        {
            let inner = lock(&self.cache);
            if inner.generation != self.generation {
                return None; // reloaded: the control plane judges it again
            }
        }
        if let Some(log) = self.log.as_mut() {
            log.hit(entry.event.as_deref()?, text);
        }
        if self.events {
            hits.events
                .push((entry.verdict.clone_ref(py), text.to_vec()));
        }
        hits.count += 1;
        HITS.fetch_add(1, Ordering::Relaxed);
        lock(&self.cache).hits += 1;
        Some(Arc::clone(&entry.decision))
    }

    /// Only the Parses of `parses` are answered (`queries`: Queries too).
    pub fn with_parses(mut self, queries: bool, parses: Vec<ParseEntry>) -> Armed {
        self.queries = queries;
        self.parses = parses;
        self
    }

    /// The lines of answered Queries written to `log` (a decision log's handle for this
    /// session).
    pub fn with_log(mut self, log: HitLog) -> Armed {
        self.log = Some(log);
        self
    }

    /// Writes the decision-log lines of the Queries answered since the last call (one write;
    /// called at the end of each read's framing).
    pub fn flush_log(&mut self) {
        if let Some(log) = self.log.as_mut() {
            log.flush();
        }
    }
}

#[pyclass(module = "veilgate_native", frozen)]
pub struct VerdictCache {
    inner: Arc<Mutex<Inner>>,
}

impl VerdictCache {
    pub fn arm(
        &self,
        scope: u64,
        grant_scope: Option<u64>,
        max_frame: usize,
        events: bool,
    ) -> Armed {
        let generation = lock(&self.inner).generation;
        Armed {
            cache: Arc::clone(&self.inner),
            generation,
            scope,
            grant_scope,
            probe: false,
            max_frame,
            events,
            keyer: Keyer::default(),
            log: None,
            queries: true,
            parses: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        scope: u64,
        text: &[u8],
        shape: bool,
        verdict: Py<PyAny>,
        decision: Decision,
        cost: usize,
        event: Option<&[u8]>,
        grant: Option<Arc<GrantState>>,
    ) -> bool {
        if std::str::from_utf8(text).is_err() || find_byte(0, text).is_some() {
            return false;
        }
        let mut key = Vec::with_capacity(text.len() + 16);
        key.extend_from_slice(&scope.to_le_bytes());
        if shape {
            let mut k = Vec::new();
            if !Shaper::new().key(text, &mut k) {
                return false;
            }
            key.push(SHAPE);
            key.extend_from_slice(&k);
        } else {
            key.push(EXACT);
            key.extend_from_slice(text);
        }
        let event: Option<Box<[u8]>> = event.map(Box::from);
        let cost = key.len() + ENTRY_OVERHEAD + cost + event.as_ref().map_or(0, |e| e.len());
        let mut inner = lock(&self.inner);
        if cost > inner.max_bytes {
            return false;
        }
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes = inner.bytes.saturating_sub(old.cost);
        }
        inner.evict_for(cost);
        inner.map.insert(
            key,
            Entry {
                verdict,
                decision: Arc::new(decision),
                event,
                cost,
                grant,
            },
        );
        inner.bytes += cost;
        inner.inserts += 1;
        true
    }
}

#[pymethods]
impl VerdictCache {
    #[new]
    #[pyo3(signature = (*, max_entries=16384, max_bytes=8 << 20))]
    fn new(max_entries: usize, max_bytes: usize) -> PyResult<Self> {
        if max_entries == 0 {
            return Err(PyValueError::new_err("max_entries must be positive"));
        }
        Ok(VerdictCache {
            inner: Arc::new(Mutex::new(Inner {
                map: HashMap::new(),
                bytes: 0,
                max_entries,
                max_bytes,
                generation: 0,
                hits: 0,
                inserts: 0,
            })),
        })
    }

    /// Remembers that `verdict` (an allow) answers `text` under `scope`: keyed by its shape
    /// when `shape` (the engine shares the verdict between texts that differ only in
    /// constants), else by the exact text.  `rule` and `fingerprint` go to the statement log of
    /// each hit; `cost`: the bytes the verdict keeps alive (charged with the key); `event`: the
    /// verdict's members of a decision-log line (buffers armed with a decision log answer only
    /// entries that have them).  False when the text cannot be keyed (not UTF-8, a NUL, no
    /// shape) or the entry alone is over budget.
    #[pyo3(signature = (scope, text, shape, verdict, rule, fingerprint, cost=0, event=None))]
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        scope: u64,
        text: &[u8],
        shape: bool,
        verdict: Py<PyAny>,
        rule: &str,
        fingerprint: &str,
        cost: usize,
        event: Option<&[u8]>,
    ) -> bool {
        let decision = Decision {
            action: "allow".to_owned(),
            rule: rule.to_owned(),
            fingerprint: fingerprint.to_owned(),
            sqlstate: None,
            approval: None,
        };
        self.put(scope, text, shape, verdict, decision, cost, event, None)
    }

    /// Remembers that `text` runs on `grant` under `grant_scope` (a principal's own scope, see
    /// the module doc): `verdict` is what the hit events carry (the control plane's record of
    /// the grant's use), `rule` / `fingerprint` / `approval` (the request id) go to the
    /// statement log as an `approve` decision.  Keyed as `insert` keys.  The entry answers while
    /// `grant` is live, counting each use in it.
    #[pyo3(signature = (grant_scope, text, shape, verdict, rule, fingerprint, approval, grant, cost=0))]
    #[allow(clippy::too_many_arguments)]
    fn insert_grant(
        &self,
        grant_scope: u64,
        text: &[u8],
        shape: bool,
        verdict: Py<PyAny>,
        rule: &str,
        fingerprint: &str,
        approval: &str,
        grant: PyRef<'_, GrantHandle>,
        cost: usize,
    ) -> bool {
        let decision = Decision {
            action: "approve".to_owned(),
            rule: rule.to_owned(),
            fingerprint: fingerprint.to_owned(),
            sqlstate: None,
            approval: Some(approval.to_owned()),
        };
        let state = Arc::clone(&grant.state);
        self.put(
            grant_scope,
            text,
            shape,
            verdict,
            decision,
            cost,
            None,
            Some(state),
        )
    }

    /// The verdict a client buffer armed with `scope` would answer the Query text `text` with
    /// (None: it would surface it).  The same path as the buffer's, for tests and tools.
    fn lookup(&self, py: Python<'_>, scope: u64, text: &[u8]) -> Option<Py<PyAny>> {
        let mut frame = Vec::with_capacity(text.len() + 6);
        frame.push(b'Q');
        frame.extend_from_slice(&u32::try_from(text.len() + 5).ok()?.to_be_bytes());
        frame.extend_from_slice(text);
        frame.push(0);
        let mut armed = self.arm(scope, None, usize::MAX, true);
        armed.probe = true;
        let mut hits = Hits::new();
        armed.answer(py, &frame, &mut hits)?;
        // a lookup is not a hit of the data path
        HITS.fetch_sub(1, Ordering::Relaxed);
        lock(&self.inner).hits -= 1;
        hits.events.pop().map(|(v, _)| v)
    }

    /// Drops the entries of grants that are no longer live (revoked or past their deadline:
    /// they answer nothing already; this frees them).  Returns how many were dropped.
    fn purge_grants(&self) -> usize {
        let mut inner = lock(&self.inner);
        let before = inner.map.len();
        let mut freed = 0;
        inner.map.retain(|_, e| {
            let keep = e
                .grant
                .as_ref()
                .is_none_or(|g| g.live.load(Ordering::Acquire) && Instant::now() < g.deadline);
            if !keep {
                freed += e.cost;
            }
            keep
        });
        inner.bytes = inner.bytes.saturating_sub(freed);
        before - inner.map.len()
    }

    /// Drops every entry (a policy reload): buffers armed before answer nothing until re-armed.
    fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.map.clear();
        inner.bytes = 0;
        inner.generation += 1;
    }

    #[getter]
    fn generation(&self) -> u64 {
        lock(&self.inner).generation
    }

    #[getter]
    fn hits(&self) -> u64 {
        lock(&self.inner).hits
    }

    #[getter]
    fn inserts(&self) -> u64 {
        lock(&self.inner).inserts
    }

    #[getter]
    fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }

    fn __len__(&self) -> usize {
        lock(&self.inner).map.len()
    }

    fn __repr__(&self) -> String {
        let inner = lock(&self.inner);
        format!(
            "<VerdictCache entries={} bytes={} generation={} hits={}>",
            inner.map.len(),
            inner.bytes,
            inner.generation,
            inner.hits
        )
    }
}

/// Queries answered natively so far by every verdict cache of the process.
#[pyfunction]
pub fn verdict_hits() -> u64 {
    HITS.load(Ordering::Relaxed)
}

/// Of `verdict_hits`, the Queries answered on a standing grant (approve rules).
#[pyfunction]
pub fn grant_hits() -> u64 {
    GRANT_HITS.load(Ordering::Relaxed)
}

/// The native `may_have_effects` (for the differential test against the mirror's).
#[pyfunction]
#[pyo3(name = "may_have_effects")]
pub fn py_may_have_effects(body: &[u8]) -> bool {
    may_have_effects(body)
}

/// Drained hits as Python values: (verdict, text bytes) pairs, in order.
pub type HitEvents = Vec<(Py<PyAny>, Py<PyBytes>)>;

/// Drains the kept hits as Python values.
pub fn drain_events(py: Python<'_>, hits: &mut Hits) -> HitEvents {
    hits.events
        .drain(..)
        .map(|(v, t)| (v, PyBytes::new(py, &t).unbind()))
        .collect()
}
