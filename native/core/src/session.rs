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

use std::collections::VecDeque;
use std::time::Instant;

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
]);

/// Backend tags the tracker looks at (it reads their body, so they must be framed whole).
pub const SERVER_TRACKED: TagSet = TagSet::from_tags(&[backend::READY_FOR_QUERY_TAG]);

/// Request bookkeeping of one client session.
#[derive(Debug, Clone, Default)]
pub struct SessionTracker {
    /// When each request not yet answered by ReadyForQuery was seen, oldest first.
    pending: VecDeque<Instant>,
    /// Extended-protocol messages seen since the last Sync.
    unsynced: bool,
    /// Status byte of the last ReadyForQuery; 0 before any.
    tx_status: u8,
}

impl SessionTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A message from the client (call for every frontend message, or only [`CLIENT_TRACKED`]).
    #[inline]
    pub fn on_client(&mut self, tag: u8, now: Instant) {
        match tag {
            frontend::QUERY_TAG | frontend::FUNCTION_CALL_TAG => self.pending.push_back(now),
            frontend::SYNC_TAG => {
                self.pending.push_back(now);
                self.unsynced = false;
            }
            frontend::PARSE_TAG
            | frontend::BIND_TAG
            | frontend::EXECUTE_TAG
            | frontend::DESCRIBE_TAG
            | frontend::CLOSE_TAG
            | frontend::FLUSH_TAG => self.unsynced = true,
            _ => {}
        }
    }

    /// A message from the server, `frame` being its bytes (tag and length included) as far as
    /// they have arrived.  On ReadyForQuery: pops the oldest request (none is fine: the one that
    /// ends start-up answers no request), records its latency, keeps the status byte.
    #[inline]
    pub fn on_server(&mut self, tag: u8, frame: &[u8], now: Instant) {
        if tag != backend::READY_FOR_QUERY_TAG {
            return;
        }
        if let Some(&status) = frame.get(5) {
            self.tx_status = status;
        }
        if let Some(sent) = self.pending.pop_front() {
            stats::record_latency(now.saturating_duration_since(sent));
        }
    }

    /// Forgets the oldest pending request without recording a latency: for a request the
    /// gateway answered itself instead of forwarding.  False if none was pending.
    pub fn discard_request(&mut self) -> bool {
        self.pending.pop_front().is_some()
    }

    /// Requests not yet answered by ReadyForQuery.
    #[inline]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the server may be executing something for this client.
    #[inline]
    pub fn busy(&self) -> bool {
        !self.pending.is_empty() || self.unsynced
    }

    /// Status byte of the last ReadyForQuery (`b'I'`, `b'T'`, `b'E'`), 0 before any.
    #[inline]
    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z_IDLE: &[u8] = &[b'Z', 0, 0, 0, 5, b'I'];
    const Z_IN_TX: &[u8] = &[b'Z', 0, 0, 0, 5, b'T'];

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

    #[test]
    fn tracked_sets() {
        for t in *b"QSFPBEDCH" {
            assert!(CLIENT_TRACKED.contains(t));
        }
        assert!(!CLIENT_TRACKED.contains(b'd'));
        assert!(SERVER_TRACKED.contains(b'Z') && !SERVER_TRACKED.contains(b'S'));
    }
}
