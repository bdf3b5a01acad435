//! veilgate's sans-IO engine: PostgreSQL message framing, request tracking and DataRow views.
//!
//! Nothing here knows about sockets or Python.  The binding crate (`veilgate-native`) owns the
//! receive buffers and hands byte slices in; this crate answers with ranges and decisions.
//!
//! One file per concept:
//! - [`direction`]: [`Direction`], client or server
//! - [`tags`]: message type bytes (`*_TAG`), per direction
//! - [`error`]: [`FrameError`], the one error type of malformed framing
//! - [`header`]: [`Header::parse`], the tag + Int32 length of a tagged message
//! - [`startup`]: untagged start-up packets (StartupMessage, SSLRequest, CancelRequest, ...)
//! - [`tagset`]: [`TagSet`], a 256-bit set of message tags
//! - [`framer`]: [`Framer`], the batch walk that turns bytes into forward ranges and events
//! - [`session`]: [`SessionTracker`], requests in flight between a client and the server
//! - [`stats`]: process-wide counters and the statement latency histogram
//! - [`datarow`]: [`DataRowRanges`], per-column ranges over a DataRow body
//! - [`mask`]: PII/secret detectors and masking operators ([`mask::ValueMask`])
//! - [`codec`]: typed values (numbers, addresses, dates, arrays, records...) decoded, masked and
//!   encoded in both wire formats
//! - [`rewrite`]: DataRow / CopyData rewriting through a column plan
//! - [`record`]: session recording (statement log, record queue, hash-chained serialisation)
//! - [`shape`]: PostgreSQL's scanner and the literal-normalised shape key of a statement
//! - [`tls`]: the TLS record layer of both connection sides (rustls)

pub mod codec;
pub mod datarow;
pub mod direction;
pub mod error;
pub mod framer;
pub mod header;
pub mod mask;
pub mod record;
pub mod rewrite;
pub mod session;
pub mod shape;
pub mod startup;
pub mod stats;
pub mod tags;
pub mod tagset;
pub mod tls;

pub use datarow::{DataRowError, DataRowRanges};
pub use direction::Direction;
pub use error::FrameError;
pub use framer::{Action, FrameOutcome, Framer};
pub use header::Header;
pub use session::SessionTracker;
pub use tagset::TagSet;
