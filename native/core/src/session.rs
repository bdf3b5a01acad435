//! Requests in flight between one client and the server, shared by the session's two receive
//! directions.
//!
//! The client side counts the messages that the server answers with exactly one ReadyForQuery
//! (Query, Sync, FunctionCall) and notes extended-protocol messages sent since the last Sync.
//! The server side pops one request per ReadyForQuery and records its latency.  From that the
//! gateway knows whether the server may be executing something for this client (a CancelRequest
//! is only forwarded then).
//!
//! Tags are read per direction: from a client `'S'` is Sync, `'D'` Describe and `'C'` Close;
//! from a server the same bytes are ParameterStatus, DataRow and CommandComplete.
//!
//! COPY FROM STDIN: the server ignores Sync (and Flush) while in copy-in mode.  So a Sync the
//! client sent right behind the Execute that started the COPY (libpq pipelines `P B D E S`, then
//! sends another Sync after CopyDone) gets no ReadyForQuery; nor does a Sync sent between
//! CopyInResponse and CopyDone / CopyFail.  The tracker drops such Syncs, so `pending` does not
//! leak and the session does not look busy forever.

use std::collections::VecDeque;
use std::time::Instant;

use crate::record::StatementLog;
use crate::stats;
use crate::tags::{backend, frontend};
use crate::tagset::TagSet;

/// Frontend tags the tracker looks at.
pub const CLIENT_TRACKED: TagSet = TagSet::from_tags(&[
    frontend::QUERY_TAG,
    frontend::SYNC_TAG,
    frontend::FUNCTION_CALL_TAG,
    frontend::PARSE_TAG,
    frontend::BIND_TAG,
    frontend::EXECUTE_TAG,
    frontend::DESCRIBE_TAG,
    frontend::CLOSE_TAG,
    frontend::FLUSH_TAG,
    frontend::COPY_DONE_TAG,
    frontend::COPY_FAIL_TAG,
]);

/// Backend tags the tracker looks at.
pub const SERVER_TRACKED: TagSet = TagSet::from_tags(&[
    backend::READY_FOR_QUERY_TAG,
    backend::COPY_IN_RESPONSE_TAG,
    backend::ERROR_RESPONSE_TAG,
]);

/// Backend tags whose body the tracker reads: they must be framed whole.
pub const SERVER_WHOLE: TagSet =
    TagSet::from_tags(&[backend::READY_FOR_QUERY_TAG, backend::ERROR_RESPONSE_TAG]);

/// Distinct SQLSTATE classes a session counts; later ones count as [`OTHER_CLASS`].
pub const MAX_ERROR_CLASSES: usize = 32;

/// The class of an error whose SQLSTATE is missing or not two ASCII letters/digits.
pub const OTHER_CLASS: [u8; 2] = *b"??";

/// One request the server answers with one ReadyForQuery.
#[derive(Debug, Clone, Copy)]
struct Request {
    sent: Instant,
    /// A Sync that directly followed an Execute (Flushes aside): the server ignores it if that
    /// Execute started a COPY FROM STDIN.
    sync_after_execute: bool,
}

/// Request bookkeeping of one client session.
#[derive(Debug, Default)]
pub struct SessionTracker {
    /// Requests not yet answered by ReadyForQuery, oldest first.
    pending: VecDeque<Request>,
    /// Extended-protocol messages seen since the last Sync.
    unsynced: bool,
    /// The last client message (Flushes aside) was an Execute.
    after_execute: bool,
    /// The server sent CopyInResponse and the client has not yet ended the copy.
    copy_in: bool,
    /// Status byte of the last ReadyForQuery; 0 before any.
    tx_status: u8,
    /// Tracked client messages since the server last answered everything (a ReadyForQuery
    /// with no request pending and nothing unsynced): while this is at most 1, the message
    /// being judged is the only one, and the server reads it with the settings it last
    /// reported (its ParameterStatus comes before that ReadyForQuery).
    since_ready: u32,
    /// Requests the server answered (one per ReadyForQuery that popped one).
    statements: u64,
    /// Errors by SQLSTATE class (the server's ErrorResponses and the gateway's own refusals),
    /// at most [`MAX_ERROR_CLASSES`] entries.
    error_classes: Vec<([u8; 2], u64)>,
    /// This session's statement latencies: non-cumulative counts per bucket of
    /// [`stats::LATENCY_BUCKETS`] (the last one `+Inf`), and their sum.
    latency_buckets: [u64; stats::LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: u64,
    /// The session's statement log while it is recorded ([`crate::record`]); the receive
    /// buffers feed it under the same lock.
    pub log: Option<Box<StatementLog>>,
}

impl SessionTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A message from the client (call for every frontend message, or only [`CLIENT_TRACKED`]).
    #[inline]
    pub fn on_client(&mut self, tag: u8, now: Instant) {
        let request = |sync_after_execute| Request {
            sent: now,
            sync_after_execute,
        };
        self.since_ready = self.since_ready.saturating_add(1);
        match tag {
            frontend::QUERY_TAG | frontend::FUNCTION_CALL_TAG => {
                // Its ReadyForQuery also means every extended message sent before it was
                // processed, so it ends "unsynced" activity just as a Sync does.
                self.pending.push_back(request(false));
                self.unsynced = false;
                self.after_execute = false;
            }
            frontend::SYNC_TAG => {
                if !self.copy_in {
                    self.pending.push_back(request(self.after_execute));
                }
                self.unsynced = false;
                self.after_execute = false;
            }
            frontend::EXECUTE_TAG => {
                self.unsynced = true;
                self.after_execute = true;
            }
            frontend::FLUSH_TAG => self.unsynced = true,
            frontend::PARSE_TAG
            | frontend::BIND_TAG
            | frontend::DESCRIBE_TAG
            | frontend::CLOSE_TAG => {
                self.unsynced = true;
                self.after_execute = false;
            }
            frontend::COPY_DONE_TAG | frontend::COPY_FAIL_TAG => {
                self.copy_in = false;
                self.after_execute = false;
            }
            _ => {}
        }
    }

    /// A message from the server, `frame` being its bytes (tag and length included) as far as
    /// they have arrived (whole for [`SERVER_WHOLE`]).  On ReadyForQuery: pops the oldest
    /// request (none is fine: the one that ends start-up answers no request), records its
    /// latency, keeps the status byte.  On CopyInResponse: enters copy-in.
    #[inline]
    pub fn on_server(&mut self, tag: u8, frame: &[u8], now: Instant) {
        match tag {
            backend::ERROR_RESPONSE_TAG => {
                self.count_error(error_class(frame.get(5..).unwrap_or_default()));
            }
            backend::READY_FOR_QUERY_TAG => {
                if let Some(&status) = frame.get(5) {
                    self.tx_status = status;
                }
                self.copy_in = false;
                if let Some(r) = self.pending.pop_front() {
                    self.statements += 1;
                    let (i, ns) = stats::record_latency(now.saturating_duration_since(r.sent));
                    self.latency_buckets[i] += 1;
                    self.latency_sum_ns = self.latency_sum_ns.saturating_add(ns);
                }
                if self.pending.is_empty() && !self.unsynced {
                    self.since_ready = 0;
                }
            }
            backend::COPY_IN_RESPONSE_TAG => {
                self.copy_in = true;
                // Everything before this request was answered; if it ends in a Sync right
                // behind the COPY's Execute, the server reads that Sync in copy-in mode and
                // ignores it.
                if self.pending.front().is_some_and(|r| r.sync_after_execute) {
                    self.pending.pop_front();
                }
            }
            _ => {}
        }
    }

    /// Forgets the oldest pending request without recording a latency: for a request the
    /// gateway answered itself instead of forwarding.  False if none was pending.
    pub fn discard_request(&mut self) -> bool {
        self.pending.pop_front().is_some()
    }

    /// Counts one error of SQLSTATE class `class` (the gateway's own refusals call this).
    pub fn count_error(&mut self, class: [u8; 2]) {
        let class = if class.iter().all(u8::is_ascii_alphanumeric) {
            class
        } else {
            OTHER_CLASS
        };
        if let Some(entry) = self.error_classes.iter_mut().find(|(c, _)| *c == class) {
            entry.1 += 1;
        } else if self.error_classes.len() < MAX_ERROR_CLASSES {
            self.error_classes.push((class, 1));
        } else {
            self.count_error(OTHER_CLASS);
        }
    }

    /// Requests the server answered with ReadyForQuery.
    #[inline]
    pub fn statements(&self) -> u64 {
        self.statements
    }

    /// This session's latency histogram: non-cumulative bucket counts (last: `+Inf`) and the
    /// sum in nanoseconds.
    pub fn latency(&self) -> (&[u64], u64) {
        (&self.latency_buckets, self.latency_sum_ns)
    }

    /// Errors by SQLSTATE class, in first-seen order.
    pub fn error_classes(&self) -> &[([u8; 2], u64)] {
        &self.error_classes
    }

    /// Requests not yet answered by ReadyForQuery.
    #[inline]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Tracked client messages framed since the server last answered everything: 1 while the
    /// message being judged is the first since then (the server's reported settings apply to
    /// it); more when anything sent before it may still change them.
    #[inline]
    pub fn since_ready(&self) -> u32 {
        self.since_ready
    }

    /// Whether the server may be executing something for this client.
    #[inline]
    pub fn busy(&self) -> bool {
        !self.pending.is_empty() || self.unsynced || self.copy_in
    }

    /// Status byte of the last ReadyForQuery (`b'I'`, `b'T'`, `b'E'`), 0 before any.
    #[inline]
    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }
}

/// The SQLSTATE class (first two characters of the `C` field) of an ErrorResponse body;
/// [`OTHER_CLASS`] when it has none.
fn error_class(body: &[u8]) -> [u8; 2] {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        if code == b'C' && end >= 2 {
            return [tail[0], tail[1]];
        }
        rest = &tail[end + 1..];
    }
    OTHER_CLASS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_error_classes_are_counted() {
        let now = Instant::now();
        let mut s = SessionTracker::new();
        s.on_server(b'Z', Z_IDLE, now); // start-up: no statement
        s.on_client(b'Q', now);
        let mut e = vec![b'E', 0, 0, 0, 0];
        e.extend_from_slice(b"SERROR\0C42P01\0Mno such table\0\0");
        s.on_server(b'E', &e, now);
        s.on_server(b'Z', Z_IDLE, now);
        s.on_client(b'Q', now);
        s.on_server(b'E', &[b'E', 0, 0, 0, 5, 0], now); // no code at all
        s.on_server(b'Z', Z_IDLE, now);
        s.count_error(*b"\x00\xff");
        assert_eq!(s.statements(), 2);
        let (buckets, _sum) = s.latency();
        assert_eq!(buckets.iter().sum::<u64>(), 2);
        assert_eq!(s.error_classes(), &[(*b"42", 1), (OTHER_CLASS, 2)]);
        for i in 0..100u8 {
            s.count_error([b'A' + i % 26, b'0' + i / 26]);
        }
        assert_eq!(s.error_classes().len(), MAX_ERROR_CLASSES);
        let total: u64 = s.error_classes().iter().map(|(_, n)| n).sum();
        assert_eq!(total, 103);
    }

    const Z_IDLE: &[u8] = &[b'Z', 0, 0, 0, 5, b'I'];
    const Z_IN_TX: &[u8] = &[b'Z', 0, 0, 0, 5, b'T'];

    #[test]
    fn query_after_unsynced_extended_messages_ends_busy_at_its_ready_for_query() {
        let now = Instant::now();
        let mut t = SessionTracker::new();
        for tag in [
            frontend::PARSE_TAG,
            frontend::BIND_TAG,
            frontend::EXECUTE_TAG,
        ] {
            t.on_client(tag, now);
        }
        assert!(t.busy());
        t.on_client(frontend::QUERY_TAG, now);
        assert!(t.busy());
        t.on_server(backend::READY_FOR_QUERY_TAG, Z_IDLE, now);
        assert!(!t.busy());
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn simple_query_round_trip() {
        let now = Instant::now();
        let mut s = SessionTracker::new();
        assert_eq!((s.pending(), s.busy(), s.tx_status()), (0, false, 0));
        // The ReadyForQuery that ends start-up answers no request.
        s.on_server(b'Z', Z_IDLE, now);
        assert_eq!((s.pending(), s.busy(), s.tx_status()), (0, false, b'I'));
        s.on_client(b'Q', now);
        assert_eq!((s.pending(), s.busy()), (1, true));
        // Server-side 'S', 'D', 'C' are ParameterStatus, DataRow, CommandComplete: ignored.
        for t in [b'T', b'D', b'C', b'S'] {
            s.on_server(t, &[t, 0, 0, 0, 4], now);
        }
        assert_eq!(s.pending(), 1);
        s.on_server(b'Z', Z_IN_TX, now);
        assert_eq!((s.pending(), s.busy(), s.tx_status()), (0, false, b'T'));
    }

    #[test]
    fn extended_protocol_is_busy_until_synced_and_answered() {
        let now = Instant::now();
        let mut s = SessionTracker::new();
        for t in [b'P', b'B', b'D', b'E', b'H'] {
            s.on_client(t, now);
            assert_eq!((s.pending(), s.busy()), (0, true));
        }
        s.on_client(b'S', now);
        assert_eq!((s.pending(), s.busy()), (1, true));
        s.on_server(b'Z', Z_IDLE, now);
        assert!(!s.busy());
        s.on_client(b'C', now);
        assert!(s.busy());
    }

    #[test]
    fn pipelined_requests_and_saturating_pops() {
        let now = Instant::now();
        let mut s = SessionTracker::new();
        s.on_client(b'Q', now);
        s.on_client(b'F', now);
        s.on_client(b'X', now);
        s.on_client(b'p', now);
        assert_eq!(s.pending(), 2);
        s.on_server(b'Z', Z_IDLE, now);
        s.on_server(b'Z', Z_IDLE, now);
        s.on_server(b'Z', Z_IDLE, now);
        assert_eq!((s.pending(), s.busy()), (0, false));
        // A truncated ReadyForQuery keeps the old status.
        s.on_server(b'Z', &Z_IN_TX[..5], now);
        assert_eq!(s.tx_status(), b'I');
        s.on_client(b'Q', now);
        assert!(s.discard_request());
        assert!(!s.discard_request());
    }

    const G: &[u8] = &[b'G', 0, 0, 0, 7, 0, 0, 0];

    #[test]
    fn extended_copy_in_with_pipelined_sync() {
        // libpq PQexecParams("COPY t FROM STDIN"): P B D E S, then data, CopyDone, Sync.
        let now = Instant::now();
        let mut s = SessionTracker::new();
        for t in *b"PBDES" {
            s.on_client(t, now);
        }
        assert_eq!(s.pending(), 1);
        s.on_server(b'1', &[], now);
        s.on_server(b'G', G, now);
        // The pipelined Sync is ignored by the server; copying is still "busy".
        assert_eq!((s.pending(), s.busy()), (0, true));
        s.on_client(b'd', now);
        s.on_client(b'S', now); // ignored during copy-in too
        s.on_client(b'c', now);
        s.on_client(b'S', now);
        assert_eq!((s.pending(), s.busy()), (1, true));
        s.on_server(b'C', &[], now);
        s.on_server(b'Z', Z_IDLE, now);
        assert_eq!((s.pending(), s.busy()), (0, false));
    }

    #[test]
    fn copy_in_without_a_pipelined_sync() {
        let now = Instant::now();
        let mut s = SessionTracker::new();
        // Extended, flushed, Sync only after CopyDone.
        for t in *b"PBEH" {
            s.on_client(t, now);
        }
        s.on_server(b'G', G, now);
        assert_eq!(s.pending(), 0);
        s.on_client(b'f', now);
        s.on_client(b'S', now);
        s.on_server(b'Z', Z_IDLE, now);
        assert_eq!((s.pending(), s.busy()), (0, false));
        // Simple-query COPY: the Query itself is answered.
        s.on_client(b'Q', now);
        s.on_server(b'G', G, now);
        assert_eq!(s.pending(), 1);
        s.on_client(b'c', now);
        s.on_server(b'Z', Z_IDLE, now);
        assert_eq!((s.pending(), s.busy()), (0, false));
        // A Sync after a non-Execute is not taken for a COPY's.
        for t in *b"PBESPS" {
            s.on_client(t, now);
        }
        s.on_server(b'Z', Z_IDLE, now);
        s.on_server(b'G', G, now);
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn tracked_sets() {
        for t in *b"QSFPBEDCH" {
            assert!(CLIENT_TRACKED.contains(t));
        }
        assert!(!CLIENT_TRACKED.contains(b'd'));
        assert!(SERVER_TRACKED.contains(b'Z') && !SERVER_TRACKED.contains(b'S'));
        assert!(SERVER_TRACKED.contains(b'G') && !SERVER_WHOLE.contains(b'G'));
    }
}
