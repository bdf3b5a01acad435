//! Session recording: what the engine contributes to the tamper-evident session record.
//!
//! - [`sql`]: the recorded form of a statement text (bounded excerpt, credentials redacted,
//!   fingerprint)
//! - [`item`]: the records queued (statements, control-plane fragments) and their parts
//! - [`log`]: [`StatementLog`], one session's statements and outcomes, matched from the wire
//! - [`queue`]: [`RecordQueue`], the bounded queue between the data path and the writer
//! - [`chain`]: [`Chain`], serialisation into hash-chained, HMAC-sealed JSON lines
//! - [`json`]: the few JSON and time helpers the writer needs
//!
//! The data path only pushes into the queue; serialising, hashing and signing happen in the
//! writer (a thread of the control plane that calls [`Chain::seal`] without the GIL).

pub mod chain;
pub mod item;
pub mod json;
pub mod log;
pub mod queue;
pub mod sql;

pub use chain::{Batch, Chain};
pub use item::{Body, Decision, Item, Path, Slot, StatementRecord, Status, Totals};
pub use log::{LogConfig, StatementLog};
pub use queue::{RecordQueue, Taken};
