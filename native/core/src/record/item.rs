//! What goes into the record queue: statements the engine completed, and records the control
//! plane built (session start and end, masking counts, ...).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use super::sql::StatementText;

/// The policy's decision about a statement, as the control plane reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `allow`, `deny`, `approve`, `refuse`...
    pub action: String,
    pub rule: String,
    /// The policy's own fingerprint of the statement (pglast), when it has one.
    pub fingerprint: String,
    /// The SQLSTATE the client got instead of running the statement, when the gateway refused
    /// it as it decided (a refusal noted later is kept on the statement itself).
    pub sqlstate: Option<String>,
    /// The approval this statement ran (or was held) under, if any.
    pub approval: Option<String>,
}

/// A statement text as the session knows it: from a Query, a Parse, a FunctionCall, or a name
/// the engine did not see prepared.  Shared by the portals bound from it.
#[derive(Debug)]
pub struct Slot {
    pub text: Option<StatementText>,
    /// The prepared statement's name, for one whose text is unknown (SQL PREPARE).
    pub name: Option<String>,
    decision: Mutex<Option<Arc<Decision>>>,
    /// The record's members for this text (`,"sql":...`), serialised once by the writer for a
    /// statement executed more than once (prepared statements).
    json: OnceLock<Box<[u8]>>,
}

impl Slot {
    pub fn new(text: Option<StatementText>, name: Option<String>) -> Arc<Slot> {
        Arc::new(Slot {
            text,
            name,
            decision: Mutex::new(None),
            json: OnceLock::new(),
        })
    }

    pub fn decision(&self) -> Option<Arc<Decision>> {
        self.decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The members `members` writes for this text: cached when the slot is shared (a prepared
    /// statement or portal the session still knows), written directly otherwise.
    pub fn write_json(self: &Arc<Self>, out: &mut Vec<u8>, members: impl Fn(&Slot, &mut Vec<u8>)) {
        if let Some(cached) = self.json.get() {
            out.extend_from_slice(cached);
            return;
        }
        if Arc::strong_count(self) <= 1 {
            members(self, out);
            return;
        }
        let mut own = Vec::with_capacity(128);
        members(self, &mut own);
        out.extend_from_slice(&own);
        let _ = self.json.set(own.into_boxed_slice());
    }

    pub fn set_decision(&self, d: Arc<Decision>) {
        *self.decision.lock().unwrap_or_else(PoisonError::into_inner) = Some(d);
    }
}

/// How a statement reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A simple-protocol Query (possibly several statements).
    Simple,
    /// An extended-protocol Execute of a portal.
    Extended,
    /// A Parse the server refused (nothing was executed).
    Parse,
    /// A protocol-level FunctionCall.
    Function,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Simple => "simple",
            Path::Extended => "extended",
            Path::Parse => "parse",
            Path::Function => "function",
        }
    }
}

/// How a statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Completed (every command of a Query).
    Ok,
    /// The server reported an error (the first one's SQLSTATE is kept).
    Error,
    /// A portal stopped at its row limit (PortalSuspended): it may be executed again.
    Suspended,
    /// Not run: an earlier message of its pipeline failed, so the server skipped it.
    Skipped,
    /// The session ended before the statement did (disconnect mid-result, shutdown).
    Interrupted,
    /// The gateway did not let it run (policy denial, approval needed, audit unavailable...).
    Refused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Suspended => "suspended",
            Status::Skipped => "skipped",
            Status::Interrupted => "interrupted",
            Status::Refused => "refused",
        }
    }
}

/// A command tag (`SELECT 3`, `INSERT 0 1`...) held inline: PostgreSQL's own are at most 64
/// bytes (``COMPLETION_TAG_BUFSIZE``), a longer one is cut.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    len: u8,
    bytes: [u8; 64],
}

impl Tag {
    pub fn new(text: &[u8]) -> Tag {
        let n = text.len().min(64);
        let mut bytes = [0u8; 64];
        bytes[..n].copy_from_slice(&text[..n]);
        // n <= 64
        #[allow(clippy::cast_possible_truncation)]
        let len = n as u8;
        Tag { len, bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The tag as text (bytes that are not UTF-8 replaced).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// The row count at its end (`INSERT 0 5` -> 5), if it has one.
    pub fn count(&self) -> Option<u64> {
        let b = self.as_bytes();
        let sp = b.iter().rposition(|&c| c == b' ')?;
        let digits = &b[sp + 1..];
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        )
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tag({:?})", self.text())
    }
}

/// One statement as it ended.
#[derive(Debug, Clone)]
pub struct StatementRecord {
    /// Per-session statement number (1, 2, ...).
    pub stmt: u64,
    pub path: Path,
    pub slot: Arc<Slot>,
    /// Snapshot of the decision in force when the statement ended.
    pub decision: Option<Arc<Decision>>,
    pub started: SystemTime,
    pub duration_us: u64,
    pub status: Status,
    /// The last command tag (`SELECT 3`, `INSERT 0 1`...).
    pub tag: Option<Tag>,
    /// Commands completed (more than one for a multi-statement Query).
    pub commands: u32,
    /// Rows per the command tags, or rows sent when no tag said.
    pub rows: u64,
    /// Bytes of the server's response the client was sent.
    pub bytes: u64,
    pub sqlstate: Option<[u8; 5]>,
}

/// What one queued record is about.
#[derive(Debug, Clone)]
pub enum Body {
    Statement(Box<StatementRecord>),
    /// A JSON fragment from the control plane: the members after `"kind":` (without braces),
    /// e.g. `"session_start","principal":{...}`.  `terminator`: the session's last record.
    Fragment {
        members: String,
        terminator: bool,
    },
}

/// One record waiting to be written.
#[derive(Debug, Clone)]
pub struct Item {
    pub sid: Arc<str>,
    pub ts: SystemTime,
    pub body: Body,
}

/// Per-session sums, for the session's end record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub statements: u64,
    pub errors: u64,
    /// Statements the gateway did not let run (any decision but allow).
    pub refused: u64,
    /// Of those, denied by the policy (`deny`).
    pub denied: u64,
    /// Of those, held for an approval (`approve`).
    pub held: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl Totals {
    pub fn add(&mut self, r: &StatementRecord) {
        self.statements += 1;
        match r.status {
            Status::Error => self.errors += 1,
            Status::Refused => self.refused += 1,
            _ => {}
        }
        if let Some(d) = &r.decision {
            match d.action.as_str() {
                "deny" => self.denied += 1,
                "approve" => self.held += 1,
                _ => {}
            }
        }
        self.rows += r.rows;
        self.bytes += r.bytes;
    }
}
