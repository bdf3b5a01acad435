//! One session's statements as the engine sees them go by: texts from the client's messages,
//! outcomes from the server's replies, matched in order without a Python call.
//!
//! The client side numbers the messages the control plane may decide on (Query, Parse, Bind,
//! Execute, FunctionCall: their *ids*, also stamped on the surfaced `Message`s) and queues what the
//! server will answer: a Query or a FunctionCall (answered up to its ReadyForQuery), an Execute
//! (CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse), a Parse (ParseComplete
//! or ErrorResponse), a Sync (ReadyForQuery).  The server's replies come in that order; after an
//! error the server skips to the next Sync, so the Executes it skipped are recorded as such.
//!
//! Statement texts follow the server: a named statement's text is known once ParseComplete
//! confirms it (a Bind pipelined behind its Parse uses the Parse's text, which is what will run
//! if anything does); portals keep the statement they were bound from.  A statement prepared with
//! SQL `PREPARE` has no text here (`sql: null`, its name is recorded).
//!
//! Outcomes: the last command tag, rows (the tags' counts, or the DataRow / CopyData messages
//! sent when no tag said), bytes of the response (from stream positions, nothing per row),
//! the first SQLSTATE, the duration from the client's message to the reply that ended it.
//! Per row the only work is one counter increment.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::item::{Body, Decision, Item, Path, Slot, StatementRecord, Status, Tag, Totals};
use super::queue::RecordQueue;
use super::sql::statement_text;
use crate::tags::{backend, frontend};
use crate::tagset::TagSet;

/// Backend tags a recording session tracks (besides what [`crate::session`] tracks).
pub const SERVER_RECORDED: TagSet = TagSet::from_tags(&[
    backend::READY_FOR_QUERY_TAG,
    backend::COPY_IN_RESPONSE_TAG,
    backend::COMMAND_COMPLETE_TAG,
    backend::ERROR_RESPONSE_TAG,
    backend::EMPTY_QUERY_RESPONSE_TAG,
    backend::PORTAL_SUSPENDED_TAG,
    backend::PARSE_COMPLETE_TAG,
    backend::DATA_ROW_TAG,
    backend::COPY_DATA_TAG,
]);

/// Backend tags whose body a recording session reads: they must be framed whole.
pub const SERVER_RECORDED_WHOLE: TagSet = TagSet::from_tags(&[
    backend::READY_FOR_QUERY_TAG,
    backend::COMMAND_COMPLETE_TAG,
    backend::ERROR_RESPONSE_TAG,
]);

/// Frontend tags whose body a recording session reads: they must be framed whole.
pub const CLIENT_RECORDED_WHOLE: TagSet = TagSet::from_tags(&[
    frontend::QUERY_TAG,
    frontend::PARSE_TAG,
    frontend::BIND_TAG,
    frontend::EXECUTE_TAG,
    frontend::FUNCTION_CALL_TAG,
    frontend::CLOSE_TAG,
]);

/// Message ids remembered for decisions on Parse / Bind (the control plane decides while it
/// handles the read's events, so only recent ones matter).
const RECENT_MAX: usize = 4096;
/// Named statements / portals remembered; past this the maps are cleared (their later
/// executions are recorded without text).
const NAMES_MAX: usize = 8192;
/// Distinct statement fingerprints remembered per session (for the session index).
pub const FINGERPRINTS_MAX: usize = 1024;

/// How statement texts are recorded.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Longest excerpt kept, in bytes.
    pub max_excerpt: usize,
    /// Replace every constant by a `$n` parameter (credentials are always redacted).
    pub redact_literals: bool,
    /// The control plane decides on Parse and Bind messages (a statement policy): remember
    /// which statement each one was, by id.  Without a policy nobody asks, and nothing is kept.
    pub decisions: bool,
}

/// Prepared statements or portals by name; the unnamed one (the common case: one per
/// execution with most drivers) is kept apart, without hashing its name.
#[derive(Debug, Default)]
struct Names {
    unnamed: Option<Arc<Slot>>,
    named: HashMap<Vec<u8>, Arc<Slot>>,
}

impl Names {
    fn get(&self, name: &[u8]) -> Option<&Arc<Slot>> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    fn insert(&mut self, name: &[u8], slot: Arc<Slot>) {
        if name.is_empty() {
            self.unnamed = Some(slot);
            return;
        }
        if self.named.len() >= NAMES_MAX {
            self.named.clear();
        }
        self.named.insert(name.to_vec(), slot);
    }

    fn remove(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }
}

/// Hashes `u64` keys the gateway made itself (message ids, fingerprints) with one multiply:
/// no per-lookup SipHash on the data path.
#[derive(Debug, Default, Clone, Copy)]
struct MixHasher(u64);

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.0 ^= self.0 >> 32;
    }
}

type MixMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<MixHasher>>;

#[derive(Debug)]
struct Entry {
    id: u64,
    stmt: u64,
    path: Path,
    slot: Arc<Slot>,
    decision: Option<Arc<Decision>>,
    started: Instant,
    tag: Option<Tag>,
    commands: u32,
    tag_rows: Option<u64>,
    rows_sent: u64,
    sqlstate: Option<[u8; 5]>,
    /// The gateway answered it with this SQLSTATE instead of running it.
    refused: Option<[u8; 5]>,
}

#[derive(Debug)]
enum Expect {
    Query(Entry),
    Function(Entry),
    Execute(Entry),
    Parse {
        id: u64,
        name: Vec<u8>,
        slot: Arc<Slot>,
        started: Instant,
        refused: Option<[u8; 5]>,
    },
    Sync {
        id: u64,
        after_execute: bool,
    },
}

impl Expect {
    fn id(&self) -> u64 {
        match self {
            Expect::Query(e) | Expect::Function(e) | Expect::Execute(e) => e.id,
            Expect::Parse { id, .. } | Expect::Sync { id, .. } => *id,
        }
    }
}

/// The statement log of one recording session.
#[derive(Debug)]
pub struct StatementLog {
    sid: Arc<str>,
    queue: Arc<RecordQueue>,
    cfg: LogConfig,
    wall: SystemTime,
    mono: Instant,
    next_id: u64,
    next_stmt: u64,
    expect: VecDeque<Expect>,
    statements: Names,
    portals: Names,
    recent: MixMap<Arc<Slot>>,
    recent_order: VecDeque<u64>,
    done: Vec<Item>,
    totals: Totals,
    /// The session's distinct statements (first text seen per fingerprint), bounded.
    fingerprints: MixMap<Arc<Slot>>,
    copy_in: bool,
    after_execute: bool,
    resp_start: u64,
    /// End of the last server message seen (the response so far of an interrupted statement).
    server_end: u64,
    finished: bool,
}

fn cstr(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = body.get(at..)?;
    let end = memchr::memchr(0, rest)?;
    Some((&rest[..end], at + end + 1))
}

/// The SQLSTATE of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> Option<[u8; 5]> {
    let mut at = 0;
    while let Some(&code) = body.get(at) {
        if code == 0 {
            return None;
        }
        let (value, next) = cstr(body, at + 1)?;
        if code == b'C' {
            return value.try_into().ok();
        }
        at = next;
    }
    None
}

/// The tag of a CommandComplete body (up to its NUL).
fn command_tag(body: &[u8]) -> Tag {
    let end = memchr::memchr(0, body).unwrap_or(body.len());
    Tag::new(&body[..end])
}

/// End position of a message starting at `pos` (from its length field).
fn frame_end(pos: u64, frame: &[u8]) -> u64 {
    let len = frame
        .get(1..5)
        .map_or(4, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    pos + 1 + u64::try_from(len.max(4)).unwrap_or(4)
}

impl StatementLog {
    pub fn new(sid: &str, queue: Arc<RecordQueue>, cfg: LogConfig) -> StatementLog {
        StatementLog {
            sid: Arc::from(sid),
            queue,
            cfg,
            wall: SystemTime::now(),
            mono: Instant::now(),
            next_id: 0,
            next_stmt: 0,
            expect: VecDeque::new(),
            statements: Names::default(),
            portals: Names::default(),
            recent: MixMap::default(),
            recent_order: VecDeque::new(),
            done: Vec::new(),
            totals: Totals::default(),
            fingerprints: MixMap::default(),
            copy_in: false,
            after_execute: false,
            resp_start: 0,
            server_end: 0,
            finished: false,
        }
    }

    pub fn sid(&self) -> &Arc<str> {
        &self.sid
    }

    /// The server stream is at `pos` now (what came before, the start-up, is no statement's).
    pub fn set_server_position(&mut self, pos: u64) {
        self.resp_start = self.resp_start.max(pos);
        self.server_end = self.server_end.max(pos);
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The session's distinct statements: (fingerprint, excerpt), at most
    /// [`FINGERPRINTS_MAX`].
    pub fn fingerprints(&self) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = self
            .fingerprints
            .iter()
            .filter_map(|(fp, slot)| slot.text.as_ref().map(|t| (*fp, t.excerpt.clone())))
            .collect();
        out.sort_unstable_by_key(|(fp, _)| *fp);
        out
    }

    fn wall_at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.mono)
    }

    fn text_slot(&self, text: &[u8]) -> Arc<Slot> {
        Slot::new(
            Some(statement_text(
                text,
                self.cfg.max_excerpt,
                self.cfg.redact_literals,
            )),
            None,
        )
    }

    fn entry(&mut self, id: u64, path: Path, slot: Arc<Slot>, now: Instant) -> Entry {
        self.next_stmt += 1;
        Entry {
            id,
            stmt: self.next_stmt,
            path,
            slot,
            decision: None,
            started: now,
            tag: None,
            commands: 0,
            tag_rows: None,
            rows_sent: 0,
            sqlstate: None,
            refused: None,
        }
    }

    fn remember(&mut self, id: u64, slot: &Arc<Slot>) {
        if !self.cfg.decisions {
            return;
        }
        self.recent.insert(id, Arc::clone(slot));
        self.recent_order.push_back(id);
        if self.recent_order.len() > RECENT_MAX {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// The statement `name` will be when the server gets to a Bind sent now.
    fn statement_slot(&self, name: &[u8]) -> Arc<Slot> {
        for e in self.expect.iter().rev() {
            if let Expect::Parse { name: n, slot, .. } = e {
                if n == name {
                    return Arc::clone(slot);
                }
            }
        }
        match self.statements.get(name) {
            Some(s) => Arc::clone(s),
            None => Slot::new(None, Some(String::from_utf8_lossy(name).into_owned())),
        }
    }

    /// A frontend message (whole for [`CLIENT_RECORDED_WHOLE`]).  Returns its id (0: none).
    pub fn on_client(&mut self, tag: u8, frame: &[u8], now: Instant) -> u64 {
        if self.finished {
            return 0;
        }
        let body = frame.get(5..).unwrap_or_default();
        let is_execute = tag == frontend::EXECUTE_TAG;
        let flush = tag == frontend::FLUSH_TAG;
        let id = match tag {
            frontend::QUERY_TAG => {
                self.next_id += 1;
                let id = self.next_id;
                let text = cstr(body, 0).map_or(body, |(t, _)| t);
                let slot = self.text_slot(text);
                let e = self.entry(id, Path::Simple, slot, now);
                // a simple Query drops the unnamed statement
                self.statements.remove(b"");
                self.expect.push_back(Expect::Query(e));
                id
            }
            frontend::FUNCTION_CALL_TAG => {
                self.next_id += 1;
                let id = self.next_id;
                let oid = body
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let slot = self.text_slot(format!("<FunctionCall oid={oid}>").as_bytes());
                let e = self.entry(id, Path::Function, slot, now);
                self.expect.push_back(Expect::Function(e));
                id
            }
            frontend::PARSE_TAG => {
                self.next_id += 1;
                let id = self.next_id;
                if let Some((name, at)) = cstr(body, 0) {
                    let text = cstr(body, at).map_or(&body[at..], |(t, _)| t);
                    let slot = self.text_slot(text);
                    self.remember(id, &slot);
                    self.expect.push_back(Expect::Parse {
                        id,
                        name: name.to_vec(),
                        slot,
                        started: now,
                        refused: None,
                    });
                }
                id
            }
            frontend::BIND_TAG => {
                self.next_id += 1;
                let id = self.next_id;
                if let Some((portal, at)) = cstr(body, 0) {
                    if let Some((stmt, _)) = cstr(body, at) {
                        let slot = self.statement_slot(stmt);
                        self.remember(id, &slot);
                        self.portals.insert(portal, slot);
                    }
                }
                id
            }
            frontend::EXECUTE_TAG => {
                self.next_id += 1;
                let id = self.next_id;
                let portal = cstr(body, 0).map_or(&b""[..], |(p, _)| p);
                let slot = match self.portals.get(portal) {
                    Some(s) => Arc::clone(s),
                    None => Slot::new(None, Some(String::from_utf8_lossy(portal).into_owned())),
                };
                let e = self.entry(id, Path::Extended, slot, now);
                self.expect.push_back(Expect::Execute(e));
                id
            }
            frontend::SYNC_TAG => {
                if !self.copy_in {
                    self.expect.push_back(Expect::Sync {
                        id: self.next_id,
                        after_execute: self.after_execute,
                    });
                }
                0
            }
            frontend::CLOSE_TAG => {
                if let Some((name, _)) = cstr(body, 1) {
                    match body.first() {
                        Some(b'S') => {
                            self.statements.remove(name);
                        }
                        Some(b'P') => {
                            self.portals.remove(name);
                        }
                        _ => {}
                    }
                }
                0
            }
            frontend::COPY_DONE_TAG | frontend::COPY_FAIL_TAG => {
                self.copy_in = false;
                0
            }
            _ => 0,
        };
        if !flush {
            self.after_execute = is_execute;
        }
        id
    }

    /// A backend message starting at stream position `pos` (whole for
    /// [`SERVER_RECORDED_WHOLE`]).
    pub fn on_server(&mut self, tag: u8, frame: &[u8], pos: u64, now: Instant) {
        if self.finished {
            return;
        }
        self.server_end = self.server_end.max(frame_end(pos, frame));
        match tag {
            backend::DATA_ROW_TAG | backend::COPY_DATA_TAG => {
                if let Some(Expect::Query(e) | Expect::Execute(e)) = self.expect.front_mut() {
                    e.rows_sent += 1;
                }
            }
            backend::COMMAND_COMPLETE_TAG => {
                let tag = command_tag(frame.get(5..).unwrap_or_default());
                let count = tag.count();
                let execute_done = match self.expect.front_mut() {
                    Some(Expect::Query(e)) => {
                        e.commands += 1;
                        if let Some(n) = count {
                            *e.tag_rows.get_or_insert(0) += n;
                        }
                        e.tag = Some(tag);
                        false
                    }
                    Some(Expect::Execute(e)) => {
                        e.commands += 1;
                        e.tag_rows = count;
                        e.tag = Some(tag);
                        true
                    }
                    _ => false,
                };
                if execute_done {
                    self.complete_front(Status::Ok, frame_end(pos, frame), now);
                }
            }
            backend::EMPTY_QUERY_RESPONSE_TAG => {
                if let Some(Expect::Execute(_)) = self.expect.front() {
                    self.complete_front(Status::Ok, frame_end(pos, frame), now);
                }
            }
            backend::PORTAL_SUSPENDED_TAG => {
                if let Some(Expect::Execute(_)) = self.expect.front() {
                    self.complete_front(Status::Suspended, frame_end(pos, frame), now);
                }
            }
            backend::ERROR_RESPONSE_TAG => self.on_error(frame, pos, now),
            backend::PARSE_COMPLETE_TAG => {
                let at = self
                    .expect
                    .iter()
                    .position(|e| matches!(e, Expect::Parse { .. } | Expect::Sync { .. }));
                if let Some(i) = at {
                    if let Some(Expect::Parse { .. }) = self.expect.get(i) {
                        if let Some(Expect::Parse { name, slot, .. }) = self.expect.remove(i) {
                            self.statements.insert(&name, slot);
                        }
                    }
                }
            }
            backend::COPY_IN_RESPONSE_TAG => {
                self.copy_in = true;
                if let (
                    Some(Expect::Execute(_)),
                    Some(Expect::Sync {
                        after_execute: true,
                        ..
                    }),
                ) = (self.expect.front(), self.expect.get(1))
                {
                    // read by the server in copy-in mode and ignored: no ReadyForQuery for it
                    self.expect.remove(1);
                }
            }
            backend::READY_FOR_QUERY_TAG => self.on_ready(frame, pos, now),
            _ => {}
        }
    }

    fn on_error(&mut self, frame: &[u8], pos: u64, now: Instant) {
        let state = sqlstate(frame.get(5..).unwrap_or_default());
        let end = frame_end(pos, frame);
        match self.expect.front_mut() {
            Some(Expect::Query(e) | Expect::Function(e)) => {
                if e.sqlstate.is_none() {
                    e.sqlstate = state;
                }
                return;
            }
            Some(Expect::Execute(e)) => e.sqlstate = state,
            Some(Expect::Parse { .. }) => {}
            _ => return,
        }
        match self.expect.pop_front() {
            Some(Expect::Execute(e)) => self.finish_entry(e, Status::Error, end, now),
            Some(Expect::Parse {
                id,
                slot,
                started,
                refused,
                ..
            }) => {
                let mut e = self.entry(id, Path::Parse, slot, started);
                e.sqlstate = state;
                e.refused = refused;
                self.finish_entry(e, Status::Error, end, now);
            }
            _ => {}
        }
        // the server skips to the next Sync
        while let Some(front) = self.expect.front() {
            match front {
                Expect::Sync { .. } | Expect::Query(_) | Expect::Function(_) => break,
                Expect::Execute(_) => {
                    if let Some(Expect::Execute(e)) = self.expect.pop_front() {
                        let end = self.resp_start;
                        self.finish_entry(e, Status::Skipped, end, now);
                    }
                }
                Expect::Parse { .. } => {
                    self.expect.pop_front();
                }
            }
        }
    }

    fn on_ready(&mut self, frame: &[u8], pos: u64, now: Instant) {
        self.copy_in = false;
        let end = frame_end(pos, frame);
        while let Some(front) = self.expect.pop_front() {
            match front {
                Expect::Query(e) | Expect::Function(e) => {
                    let status = if e.sqlstate.is_some() {
                        Status::Error
                    } else {
                        Status::Ok
                    };
                    self.finish_entry(e, status, end, now);
                    break;
                }
                Expect::Sync { .. } => break,
                Expect::Execute(e) => {
                    let at = self.resp_start;
                    self.finish_entry(e, Status::Skipped, at, now);
                }
                Expect::Parse { .. } => {}
            }
        }
        self.resp_start = end;
    }

    fn complete_front(&mut self, status: Status, end: u64, now: Instant) {
        if let Some(Expect::Query(e) | Expect::Function(e) | Expect::Execute(e)) =
            self.expect.pop_front()
        {
            self.finish_entry(e, status, end, now);
        }
    }

    fn finish_entry(&mut self, e: Entry, status: Status, end: u64, now: Instant) {
        let bytes = end.saturating_sub(self.resp_start);
        self.resp_start = self.resp_start.max(end);
        let decision = e.decision.clone().or_else(|| e.slot.decision());
        let mut status = status;
        let mut state = e.sqlstate;
        let refused = e.refused.or_else(|| {
            decision
                .as_ref()
                .and_then(|d| d.sqlstate.as_ref())
                .and_then(|s| s.as_bytes().try_into().ok())
        });
        if let Some(code) = refused {
            if status != Status::Skipped {
                status = Status::Refused;
                state = Some(code);
            }
        }
        let rows = e.tag_rows.unwrap_or(e.rows_sent);
        let duration = now.saturating_duration_since(e.started);
        let record = StatementRecord {
            stmt: e.stmt,
            path: e.path,
            slot: e.slot,
            decision,
            started: self.wall_at(e.started),
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            status,
            tag: e.tag,
            commands: e.commands,
            rows,
            bytes,
            sqlstate: state,
        };
        self.totals.add(&record);
        if let Some(t) = &record.slot.text {
            if self.fingerprints.len() < FINGERPRINTS_MAX {
                self.fingerprints
                    .entry(t.fingerprint)
                    .or_insert_with(|| Arc::clone(&record.slot));
            }
        }
        self.done.push(Item {
            sid: Arc::clone(&self.sid),
            ts: self.wall_at(now),
            body: Body::Statement(Box::new(record)),
        });
    }

    /// Attaches the policy's decision to message `id` (a Query, FunctionCall or Execute: that
    /// statement; a Parse or Bind: the statement it prepares or binds).  False if unknown.
    pub fn decide(&mut self, id: u64, d: Arc<Decision>) -> bool {
        let i = self.expect.partition_point(|e| e.id() < id);
        let mut at = i;
        while let Some(e) = self.expect.get_mut(at) {
            if e.id() != id {
                break;
            }
            match e {
                Expect::Query(e) | Expect::Function(e) | Expect::Execute(e) => {
                    e.decision = Some(d);
                    return true;
                }
                Expect::Parse { slot, .. } => {
                    slot.set_decision(d);
                    return true;
                }
                Expect::Sync { .. } => {}
            }
            at += 1;
        }
        match self.recent.get(&id) {
            Some(slot) => {
                slot.set_decision(d);
                true
            }
            None => false,
        }
    }

    /// The gateway answered message `id` with `sqlstate` instead of running it: a Query,
    /// FunctionCall or Execute is that statement; a Bind is the next Execute after it.  False if
    /// unknown.
    pub fn refuse(&mut self, id: u64, sqlstate: [u8; 5]) -> bool {
        let i = self.expect.partition_point(|e| e.id() < id);
        for e in self.expect.range_mut(i..) {
            match e {
                Expect::Query(e) | Expect::Function(e) | Expect::Execute(e)
                    if e.id == id || e.path == Path::Extended =>
                {
                    e.refused = Some(sqlstate);
                    return true;
                }
                Expect::Parse {
                    id: pid, refused, ..
                } if *pid == id => {
                    *refused = Some(sqlstate);
                    return true;
                }
                Expect::Query(_) | Expect::Function(_) | Expect::Execute(_) => return false,
                Expect::Parse { .. } | Expect::Sync { .. } => {}
            }
        }
        false
    }

    /// The gateway answered the oldest request itself (it never reached the server).
    pub fn discard(&mut self, sqlstate: Option<[u8; 5]>, now: Instant) {
        let at = self.expect.iter().position(|e| {
            matches!(
                e,
                Expect::Query(_) | Expect::Function(_) | Expect::Sync { .. }
            )
        });
        if let Some(i) = at {
            if let Some(Expect::Query(mut e) | Expect::Function(mut e)) = self.expect.remove(i) {
                e.sqlstate = sqlstate.or(e.sqlstate);
                let end = self.resp_start;
                self.finish_entry(e, Status::Refused, end, now);
            }
        }
    }

    /// The session ends: statements still in flight are recorded as interrupted; nothing is
    /// recorded after this.
    pub fn finish(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        while let Some(front) = self.expect.pop_front() {
            if let Expect::Query(e) | Expect::Function(e) | Expect::Execute(e) = front {
                let end = self.server_end;
                self.finish_entry(e, Status::Interrupted, end, now);
            }
        }
        self.finished = true;
        self.flush();
    }

    /// Hands the statements completed so far to the queue (one lock).
    pub fn flush(&mut self) {
        if !self.done.is_empty() {
            self.queue.push_all(self.done.drain(..));
        }
    }

    /// Statements waiting for a reply.
    pub fn in_flight(&self) -> usize {
        self.expect
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Expect::Query(_) | Expect::Function(_) | Expect::Execute(_)
                )
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let len = i32::try_from(body.len() + 4).unwrap();
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn cs(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    fn error(code: &str) -> Vec<u8> {
        let mut b = b"SERROR\0".to_vec();
        b.push(b'C');
        b.extend_from_slice(code.as_bytes());
        b.extend_from_slice(b"\0Mboom\0\0");
        msg(b'E', &b)
    }

    struct Sim {
        log: StatementLog,
        queue: Arc<RecordQueue>,
        pos: u64,
        now: Instant,
    }

    impl Sim {
        fn new() -> Sim {
            let queue = Arc::new(RecordQueue::new(1000, 1000));
            let cfg = LogConfig {
                max_excerpt: 1024,
                redact_literals: false,
                decisions: true,
            };
            Sim {
                log: StatementLog::new("s1", Arc::clone(&queue), cfg),
                queue,
                pos: 0,
                now: Instant::now(),
            }
        }

        fn client(&mut self, frames: &[Vec<u8>]) -> Vec<u64> {
            frames
                .iter()
                .map(|f| self.log.on_client(f[0], f, self.now))
                .collect()
        }

        fn server(&mut self, frames: &[Vec<u8>]) {
            self.now += Duration::from_micros(10);
            for f in frames {
                self.log.on_server(f[0], f, self.pos, self.now);
                self.pos += f.len() as u64;
            }
            self.log.flush();
        }

        fn records(&self) -> Vec<StatementRecord> {
            self.queue
                .take(1000, Duration::ZERO)
                .items
                .into_iter()
                .map(|i| match i.body {
                    Body::Statement(r) => *r,
                    Body::Fragment { .. } => panic!("fragment"),
                })
                .collect()
        }
    }

    fn text(r: &StatementRecord) -> Option<&str> {
        r.slot.text.as_ref().map(|t| t.excerpt.as_str())
    }

    fn deny(sqlstate: &str) -> Arc<Decision> {
        Arc::new(Decision {
            action: "deny".into(),
            rule: "r1".into(),
            fingerprint: "fp".into(),
            sqlstate: Some(sqlstate.into()),
            approval: None,
        })
    }

    fn approve() -> Arc<Decision> {
        Arc::new(Decision {
            action: "approve".into(),
            rule: "r2".into(),
            fingerprint: "fp".into(),
            sqlstate: None,
            approval: None,
        })
    }

    #[test]
    fn simple_query_outcome() {
        let mut s = Sim::new();
        let ids = s.client(&[msg(b'Q', b"select 1\0")]);
        assert_eq!(ids, vec![1]);
        let replies = [
            msg(b'T', b"xx"),
            msg(b'D', b"row"),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ];
        let total: usize = replies.iter().map(Vec::len).sum();
        s.server(&replies);
        let r = s.records();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!((r.stmt, r.path, r.status), (1, Path::Simple, Status::Ok));
        assert_eq!(text(r), Some("select 1"));
        assert_eq!(
            r.tag.map(|t| t.text().into_owned()).as_deref(),
            Some("SELECT 1")
        );
        assert_eq!((r.rows, r.bytes), (1, total as u64));
        assert!(r.duration_us >= 10);
        assert_eq!(s.log.totals().statements, 1);
    }

    #[test]
    fn multi_statement_query_with_an_error() {
        let mut s = Sim::new();
        s.client(&[msg(b'Q', b"select 1; select x\0")]);
        s.server(&[
            msg(b'T', b""),
            msg(b'D', b""),
            msg(b'C', b"SELECT 1\0"),
            error("42703"),
            msg(b'Z', b"I"),
        ]);
        let r = &s.records()[0];
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.sqlstate, Some(*b"42703"));
        assert_eq!((r.commands, r.rows), (1, 1));
    }

    #[test]
    fn extended_pipeline_uses_the_parse_text() {
        let mut s = Sim::new();
        let ids = s.client(&[
            msg(b'P', &cs(&[b"s1", b"select $1"])),
            msg(b'B', &cs(&[b"", b"s1"])),
            msg(b'D', b"P\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        assert_eq!(ids, vec![1, 2, 0, 3, 0]);
        s.server(&[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'T', b""),
            msg(b'D', b""),
            msg(b'D', b""),
            msg(b'C', b"SELECT 2\0"),
            msg(b'Z', b"I"),
        ]);
        let r = &s.records()[0];
        assert_eq!((r.path, r.status, r.rows), (Path::Extended, Status::Ok, 2));
        assert_eq!(text(r), Some("select $1"));
        // the next execution of the named statement: Bind/Execute/Sync only
        s.client(&[
            msg(b'B', &cs(&[b"", b"s1"])),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        s.server(&[msg(b'2', b""), msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")]);
        let r = &s.records()[0];
        assert_eq!((r.stmt, text(r)), (2, Some("select $1")));
    }

    #[test]
    fn parse_error_then_skipped_execute_and_old_text_kept() {
        let mut s = Sim::new();
        s.client(&[msg(b'P', &cs(&[b"s", b"select 1"])), msg(b'S', b"")]);
        s.server(&[msg(b'1', b""), msg(b'Z', b"I")]);
        assert!(s.records().is_empty());
        s.client(&[
            msg(b'P', &cs(&[b"s", b"selec 2"])),
            msg(b'B', &cs(&[b"", b"s"])),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        s.server(&[error("42601"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].path, r[0].status), (Path::Parse, Status::Error));
        assert_eq!(text(&r[0]), Some("selec 2"));
        assert_eq!(r[0].sqlstate, Some(*b"42601"));
        assert_eq!((r[1].path, r[1].status), (Path::Extended, Status::Skipped));
        // the failed Parse left the old statement in place
        s.client(&[
            msg(b'B', &cs(&[b"", b"s"])),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        s.server(&[msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")]);
        assert_eq!(text(&s.records()[0]), Some("select 1"));
    }

    #[test]
    fn decisions_attach_by_message_id() {
        let mut s = Sim::new();
        let ids = s.client(&[msg(b'Q', b"drop table t\0")]);
        assert!(s.log.decide(ids[0], deny("42501")));
        // a decision alone says what the policy said; the refusal says what the gateway did
        s.server(&[error("42703"), msg(b'Z', b"I")]);
        let r = &s.records()[0];
        assert_eq!((r.status, r.sqlstate), (Status::Refused, Some(*b"42501")));
        assert_eq!(r.decision.as_ref().unwrap().rule, "r1");
        assert_eq!(s.log.totals().refused, 1);
        // a decision on a Parse applies to the executions of that statement
        let ids = s.client(&[
            msg(b'P', &cs(&[b"", b"delete from t"])),
            msg(b'B', &cs(&[b"", b""])),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        assert!(s.log.decide(ids[0], deny("42501")));
        s.server(&[error("42703"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!((r[0].path, r[0].status), (Path::Parse, Status::Refused));
        assert_eq!(r[1].status, Status::Skipped);
        assert!(!s.log.decide(999, deny("42501")));
        // an approval the policy wants: refused later (no grant) by the Query's id ...
        let ids = s.client(&[msg(b'Q', b"delete from t\0")]);
        assert!(s.log.decide(ids[0], approve()));
        assert!(s.log.refuse(ids[0], *b"42Z01"));
        s.server(&[error("42703"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!(
            (r[0].status, r[0].sqlstate),
            (Status::Refused, Some(*b"42Z01"))
        );
        // ... or run under a grant: the decision is kept, the outcome is the server's
        let ids = s.client(&[msg(b'Q', b"delete from t\0")]);
        assert!(s.log.decide(ids[0], approve()));
        s.server(&[msg(b'C', b"DELETE 3\0"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!((r[0].status, r[0].rows), (Status::Ok, 3));
        assert_eq!(r[0].decision.as_ref().unwrap().action, "approve");
        // a Bind refused: the Execute after it
        let ids = s.client(&[msg(b'P', &cs(&[b"", b"delete from t"])), msg(b'S', b"")]);
        s.server(&[msg(b'1', b""), msg(b'Z', b"I")]);
        assert!(s.records().is_empty() && ids[0] > 0);
        let ids = s.client(&[
            msg(b'B', &cs(&[b"", b""])),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        assert!(s.log.refuse(ids[0], *b"42Z01"));
        s.server(&[error("42703"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!(
            (r[0].path, r[0].status, r[0].sqlstate),
            (Path::Extended, Status::Refused, Some(*b"42Z01"))
        );
    }

    #[test]
    fn copy_in_with_a_pipelined_sync() {
        let mut s = Sim::new();
        s.client(&[
            msg(b'P', &cs(&[b"", b"copy t from stdin"])),
            msg(b'B', &cs(&[b"", b""])),
            msg(b'D', b"P\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        s.server(&[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'n', b""),
            msg(b'G', b"\0\0\0"),
        ]);
        s.client(&[
            msg(b'd', b"1\n"),
            msg(b'S', b""),
            msg(b'c', b""),
            msg(b'S', b""),
        ]);
        s.server(&[msg(b'C', b"COPY 1\0"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].status, r[0].rows), (Status::Ok, 1));
        assert_eq!(s.log.in_flight(), 0);
        assert!(s.log.expect.is_empty(), "{:?}", s.log.expect);
    }

    #[test]
    fn suspended_portal_and_interrupted_statement() {
        let mut s = Sim::new();
        s.client(&[
            msg(b'P', &cs(&[b"", b"select g from generate_series(1,3) g"])),
            msg(b'B', &cs(&[b"c", b""])),
            msg(b'E', b"c\0\0\0\0\x01"),
            msg(b'H', b""),
        ]);
        s.server(&[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'D', b""),
            msg(b's', b""),
        ]);
        let r = s.records();
        assert_eq!((r[0].status, r[0].rows), (Status::Suspended, 1));
        s.client(&[msg(b'E', b"c\0\0\0\0\0")]);
        s.server(&[msg(b'D', b"")]);
        s.log.finish(s.now);
        let r = s.records();
        assert_eq!((r[0].status, r[0].rows), (Status::Interrupted, 1));
        assert_eq!(text(&r[0]), Some("select g from generate_series(1,3) g"));
        // nothing is recorded after the end
        assert_eq!(s.client(&[msg(b'Q', b"select 1\0")]), vec![0]);
    }

    #[test]
    fn discard_and_unknown_statements() {
        let mut s = Sim::new();
        s.client(&[msg(b'F', b"\0\0\0\x10")]);
        s.log.discard(Some(*b"0A000"), s.now);
        s.log.flush();
        let r = s.records();
        assert_eq!((r[0].path, r[0].status), (Path::Function, Status::Refused));
        assert_eq!(r[0].sqlstate, Some(*b"0A000"));
        assert_eq!(text(&r[0]), Some("<FunctionCall oid=16>"));
        // a statement prepared with SQL PREPARE: no text, its name
        s.client(&[
            msg(b'B', &cs(&[b"", b"sqlprep"])),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        s.server(&[msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")]);
        let r = s.records();
        assert_eq!(text(&r[0]), None);
        assert_eq!(r[0].slot.name.as_deref(), Some("sqlprep"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut s = Sim::new();
        for tag in 0..=255u8 {
            for body in [&b""[..], b"\0", b"\xff\xff", b"E\0\0", b"C"] {
                let f = msg(tag, body);
                s.log.on_client(tag, &f, s.now);
                s.log.on_server(tag, &f, 0, s.now);
                s.log.on_client(tag, &f[..1], s.now);
                s.log.on_server(tag, &f[..2], 0, s.now);
            }
        }
        s.log.finish(s.now);
    }
}
