//! The queue between the data path (which only pushes) and the writer (which takes batches).
//!
//! Bounded: past `capacity` records a push is dropped and counted, per session, so the writer can
//! put a `gap` record in that session's chain when it writes the session's next record.  The
//! writer waits on a condition variable: it wakes at its flush interval, or early once a batch's
//! worth of records is waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::item::Item;

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    /// Records dropped per session since its last written record.
    dropped: HashMap<Arc<str>, u64>,
    closed: bool,
}

/// A bounded multi-producer queue of records.
#[derive(Debug)]
pub struct RecordQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
    capacity: usize,
    wake_at: usize,
    dropped_total: AtomicU64,
    pushed_total: AtomicU64,
}

/// What one `take` returned.
#[derive(Debug, Default)]
pub struct Taken {
    pub items: Vec<Item>,
    /// Records dropped per session (the writer records a gap before their next record).
    pub dropped: HashMap<Arc<str>, u64>,
}

impl RecordQueue {
    /// `capacity`: records held at most; `wake_at`: queued records that wake the writer early.
    pub fn new(capacity: usize, wake_at: usize) -> RecordQueue {
        RecordQueue {
            inner: Mutex::new(Inner::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            wake_at: wake_at.max(1),
            dropped_total: AtomicU64::new(0),
            pushed_total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues records (one lock for all of them).  Returns how many were dropped.
    pub fn push_all(&self, items: impl IntoIterator<Item = Item>) -> u64 {
        let mut dropped = 0u64;
        let mut pushed = 0u64;
        let wake;
        {
            let mut g = self.lock();
            for item in items {
                if g.items.len() >= self.capacity || g.closed {
                    *g.dropped.entry(item.sid).or_insert(0) += 1;
                    dropped += 1;
                } else {
                    g.items.push_back(item);
                    pushed += 1;
                }
            }
            wake = g.items.len() >= self.wake_at;
        }
        if wake {
            self.ready.notify_one();
        }
        if dropped > 0 {
            self.dropped_total.fetch_add(dropped, Relaxed);
        }
        self.pushed_total.fetch_add(pushed, Relaxed);
        dropped
    }

    pub fn push(&self, item: Item) -> bool {
        self.push_all(std::iter::once(item)) == 0
    }

    /// Waits up to `timeout` for a batch's worth of records (or a `wake`), then takes at most
    /// `max` records and the drop counts.
    pub fn take(&self, max: usize, timeout: Duration) -> Taken {
        let mut g = self.lock();
        if g.items.len() < self.wake_at && !g.closed && !timeout.is_zero() {
            g = self
                .ready
                .wait_timeout(g, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = g.items.len().min(max);
        Taken {
            items: g.items.drain(..n).collect(),
            dropped: std::mem::take(&mut g.dropped),
        }
    }

    /// Wakes a waiting `take` now (flush, rotation, shutdown).
    pub fn wake(&self) {
        self.ready.notify_all();
    }

    /// Refuses further pushes (they are counted as dropped) and wakes the writer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Relaxed)
    }

    pub fn pushed_total(&self) -> u64 {
        self.pushed_total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::item::Body;
    use std::time::SystemTime;

    fn item(sid: &str) -> Item {
        Item {
            sid: Arc::from(sid),
            ts: SystemTime::UNIX_EPOCH,
            body: Body::Fragment {
                members: "\"x\"".into(),
                terminator: false,
            },
        }
    }

    #[test]
    fn bounded_with_per_session_drop_counts() {
        let q = RecordQueue::new(2, 100);
        assert_eq!(q.push_all([item("a"), item("b"), item("a"), item("b")]), 2);
        assert_eq!(q.dropped_total(), 2);
        let t = q.take(10, Duration::ZERO);
        assert_eq!(t.items.len(), 2);
        assert_eq!(t.dropped.get("a"), Some(&1));
        assert_eq!(t.dropped.get("b"), Some(&1));
        assert!(q.take(10, Duration::ZERO).dropped.is_empty());
        q.close();
        assert!(!q.push(item("a")));
    }

    #[test]
    fn take_respects_max_and_order() {
        let q = RecordQueue::new(10, 1);
        q.push_all((0..5).map(|i| item(&i.to_string())));
        let t = q.take(3, Duration::from_secs(1));
        let sids: Vec<&str> = t.items.iter().map(|i| &*i.sid).collect();
        assert_eq!(sids, ["0", "1", "2"]);
        assert_eq!(q.len(), 2);
    }
}
