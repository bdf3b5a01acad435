//! The batch walk over received bytes.
//!
//! Given the unparsed bytes of a receive buffer, [`Framer::frame`] walks every message it can and
//! appends an ordered list of [`Action`]s: byte ranges to forward as they are (adjacent forwarded
//! messages coalesced into one range) and whole messages surfaced as events.  It never copies and
//! never reads a forwarded body.
//!
//! - A pass-through message that has only partly arrived is streamed: its available prefix is
//!   forwarded now and the framer remembers how many bytes of it are still to come, so a huge
//!   DataRow never has to fit in the buffer.
//! - An event message (and a pass-through message whose body an observer needs, see
//!   [`Framer::set_whole`]) is only handed out whole; until then [`FrameOutcome::need`] says how
//!   large the buffer must be, from the first unconsumed byte, to hold it.
//! - Barrier events ([`Framer::set_barrier`]) end the walk right after them, so the caller can
//!   change the rules (install a plan) before the messages that follow are framed.
//! - Row plans ([`Framer::set_row_plan`]): while a plan is active, its rows (DataRow or
//!   CopyData) are handed out whole as [`Action::Rewrite`] and the messages that end a result
//!   set clear the plan, in stream order.  With [`Framer::set_mask_required`], a row with no
//!   plan is an error ([`FrameError::UnmaskedRow`]).
//!
//! With no plan, no barrier and no required masking, the walk does exactly the work it did
//! before those existed: one tag-set lookup per whole message.

use std::ops::Range;

use crate::error::FrameError;
use crate::header::{Header, MAX_BODY};
use crate::tags::backend::{
    COMMAND_COMPLETE_TAG, COPY_DATA_TAG, COPY_DONE_TAG, DATA_ROW_TAG, EMPTY_QUERY_RESPONSE_TAG,
    ERROR_RESPONSE_TAG, NO_DATA_TAG, PORTAL_SUSPENDED_TAG, READY_FOR_QUERY_TAG,
    ROW_DESCRIPTION_TAG,
};
use crate::tagset::TagSet;

/// Default limit on a message body (1 GiB, as PostgreSQL's `MaxAllocSize` roughly).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// The messages a row plan rewrites: DataRow (result sets) and CopyData (COPY TO STDOUT).
pub const ROW_TAGS: TagSet = TagSet::from_tags(&[DATA_ROW_TAG, COPY_DATA_TAG]);

/// Server messages that end a result set, and with it the row plan made for it: its rows are
/// over (CommandComplete, PortalSuspended, EmptyQueryResponse, ErrorResponse, ReadyForQuery,
/// NoData, CopyDone), or a new result set begins (RowDescription).
pub const ROW_ENDS: TagSet = TagSet::from_tags(&[
    COMMAND_COMPLETE_TAG,
    PORTAL_SUSPENDED_TAG,
    EMPTY_QUERY_RESPONSE_TAG,
    ERROR_RESPONSE_TAG,
    READY_FOR_QUERY_TAG,
    NO_DATA_TAG,
    ROW_DESCRIPTION_TAG,
    COPY_DONE_TAG,
]);

/// What to do with a range of the framed bytes (offsets into the slice given to `frame`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward these bytes unchanged (one or more messages, or a piece of one).
    Forward(Range<usize>),
    /// One whole message (tag, length, body) to surface as an event.
    Event(Range<usize>),
    /// One whole row message (tag, length, body) to rewrite through the active row plan.
    Rewrite(Range<usize>),
}

/// The result of one [`Framer::frame`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameOutcome {
    /// Bytes from the start of the slice that the actions cover; the caller drops them.
    pub consumed: usize,
    /// When non-zero: the size of the message at `consumed` that must arrive whole before
    /// framing can go on; the buffer needs room for this many bytes from that offset.
    pub need: usize,
    /// The walk stopped right after a barrier event (the last action); bytes may remain.
    pub barrier: bool,
}

/// Framing state of one direction of one connection.
#[derive(Debug, Clone)]
pub struct Framer {
    /// Tags surfaced as events (`TagSet::ALL` while `all_events`).
    surfaced: TagSet,
    /// The tags chosen with `set_events`, kept while `all_events` overrides them.
    events: TagSet,
    all_events: bool,
    /// Pass-through tags that must still arrive whole (an observer reads their body).
    whole_passthrough: TagSet,
    /// Events after which the walk stops.
    barrier: TagSet,
    /// The row tag of the active plan (empty: no plan).  Cleared by [`ROW_ENDS`].
    rows: TagSet,
    /// Whether the active plan's rows are handed out to be rewritten (false: a plan that keeps
    /// every column, whose rows are forwarded like any other message).
    rewrite_rows: bool,
    mask_required: bool,
    /// `rows` while `rewrite_rows`: handed out as [`Action::Rewrite`].
    rewrite: TagSet,
    /// Row tags that are an error: [`ROW_TAGS`] not covered by a plan, while masking is required.
    forbidden: TagSet,
    /// [`ROW_ENDS`] while a plan is active.
    ends: TagSet,
    /// The tags the walk must look at: `surfaced ∪ rewrite ∪ forbidden ∪ ends`.
    special: TagSet,
    /// Only handed out whole: `special ∪ whole_passthrough`.
    whole: TagSet,
    max_message: usize,
    /// Bytes of a streamed pass-through message still to forward.
    remaining: usize,
    messages: u64,
    bytes: u64,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    /// A framer that forwards everything, with the default message size limit.
    pub fn new() -> Self {
        Framer {
            surfaced: TagSet::EMPTY,
            events: TagSet::EMPTY,
            all_events: false,
            whole_passthrough: TagSet::EMPTY,
            barrier: TagSet::EMPTY,
            rows: TagSet::EMPTY,
            rewrite_rows: false,
            mask_required: false,
            rewrite: TagSet::EMPTY,
            forbidden: TagSet::EMPTY,
            ends: TagSet::EMPTY,
            special: TagSet::EMPTY,
            whole: TagSet::EMPTY,
            max_message: DEFAULT_MAX_MESSAGE,
            remaining: 0,
            messages: 0,
            bytes: 0,
        }
    }

    /// Tags to surface as [`Action::Event`]s; every other message is forwarded.
    pub fn set_events(&mut self, tags: TagSet) {
        self.events = tags;
        self.refresh_sets();
    }

    /// Surface every message as an event (overrides [`Framer::set_events`] while on).
    pub fn set_all_events(&mut self, on: bool) {
        self.all_events = on;
        self.refresh_sets();
    }

    /// Pass-through tags that are still only forwarded whole, so an observer sees their body.
    pub fn set_whole(&mut self, tags: TagSet) {
        self.whole_passthrough = tags;
        self.refresh_sets();
    }

    /// Events after which [`Framer::frame`] stops (they must also be events to count).
    pub fn set_barrier(&mut self, tags: TagSet) {
        self.barrier = tags;
    }

    #[inline]
    pub fn barrier(&self) -> TagSet {
        self.barrier
    }

    /// Installs a row plan for the messages framed from now on: `tag` is DataRow or CopyData
    /// (`None` removes the plan).  While `rewrite`, those rows are handed out whole as
    /// [`Action::Rewrite`]; otherwise (a plan that changes nothing) they are forwarded.  Either
    /// way the plan lasts until the next [`ROW_ENDS`] message, which are then framed whole.
    pub fn set_row_plan(&mut self, tag: Option<u8>, rewrite: bool) {
        self.rows = tag.map_or(TagSet::EMPTY, |t| TagSet::from_tags(&[t]));
        self.rewrite_rows = rewrite;
        self.refresh_sets();
    }

    /// Whether a row plan is active (installed and not yet ended by a [`ROW_ENDS`] message).
    #[inline]
    pub fn row_plan_active(&self) -> bool {
        !self.rows.is_empty()
    }

    /// While on, a DataRow or CopyData not covered by an active plan is an error.
    pub fn set_mask_required(&mut self, on: bool) {
        self.mask_required = on;
        self.refresh_sets();
    }

    #[inline]
    pub fn mask_required(&self) -> bool {
        self.mask_required
    }

    fn refresh_sets(&mut self) {
        self.surfaced = if self.all_events {
            TagSet::ALL
        } else {
            self.events
        };
        self.rewrite = if self.rewrite_rows {
            self.rows
        } else {
            TagSet::EMPTY
        };
        self.forbidden = TagSet::EMPTY;
        if self.mask_required {
            for t in [DATA_ROW_TAG, COPY_DATA_TAG] {
                if !self.rows.contains(t) {
                    self.forbidden.insert(t);
                }
            }
        }
        self.ends = if self.rows.is_empty() {
            TagSet::EMPTY
        } else {
            ROW_ENDS
        };
        self.special = self
            .surfaced
            .union(self.rewrite)
            .union(self.forbidden)
            .union(self.ends);
        self.whole = self.special.union(self.whole_passthrough);
    }

    /// The walk's handling of a whole message (`whole`) whose tag is in `special`: an event, a
    /// row to rewrite, a row refused, or a message that ends the row plan (then forwarded).
    /// Returns whether the walk stops here (a barrier event).
    // Out of line: the walk's per-message loop stays as small as it was without plans.
    #[inline(never)]
    fn special_message(
        &mut self,
        tag: u8,
        whole: Range<usize>,
        answered: bool,
        run: &mut Option<usize>,
        actions: &mut Vec<Action>,
    ) -> Result<bool, FrameError> {
        if self.forbidden.contains(tag) {
            return Err(FrameError::UnmaskedRow { tag });
        }
        let action = if self.rewrite.contains(tag) {
            Action::Rewrite(whole)
        } else {
            if self.ends.contains(tag) {
                self.rows = TagSet::EMPTY;
                self.refresh_sets();
            }
            if answered || !self.surfaced.contains(tag) {
                run.get_or_insert(whole.start);
                return Ok(false);
            }
            Action::Event(whole)
        };
        if let Some(s) = run.take() {
            actions.push(Action::Forward(s..action_start(&action)));
        }
        let stop = matches!(action, Action::Event(_)) && self.barrier.contains(tag);
        actions.push(action);
        Ok(stop)
    }

    /// The largest body accepted (clamped to what an Int32 length can describe).
    pub fn set_max_message(&mut self, max_body: usize) {
        self.max_message = max_body.min(MAX_BODY);
    }

    #[inline]
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    #[inline]
    pub fn events(&self) -> TagSet {
        self.events
    }

    #[inline]
    pub fn all_events(&self) -> bool {
        self.all_events
    }

    /// Bytes of a streamed pass-through message still to forward (0 between messages).
    #[inline]
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Messages framed so far (a streamed message counts once, when it starts).
    #[inline]
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a message with this tag is only handed out whole.
    #[inline]
    pub fn is_whole(&self, tag: u8) -> bool {
        self.whole.contains(tag)
    }

    /// The `need` that [`Framer::frame`] would report for unconsumed bytes `buf`, without
    /// framing: the size of a must-be-whole message at its start that has not fully arrived.
    /// Malformed headers report 0 (framing will raise the error).
    #[inline]
    pub fn need(&self, buf: &[u8]) -> usize {
        if self.remaining > 0 {
            return 0;
        }
        match Header::parse_limited(buf, self.max_message) {
            Ok(Some(h)) if buf.len() < h.frame_len() && self.whole.contains(h.tag()) => {
                h.frame_len()
            }
            _ => 0,
        }
    }

    /// Frames `buf` (the unconsumed bytes, oldest first), appending actions to `actions`.
    ///
    /// `observe(tag, bytes)` is called once per message as it is consumed, in stream order,
    /// with the message's bytes as far as they have arrived (always whole for the tags in
    /// [`Framer::set_events`] and [`Framer::set_whole`]).
    ///
    /// On `Err` nothing is committed: the framer's state is as before the call, and the actions
    /// appended by this call must be discarded.  The stream is then unusable.
    #[inline]
    pub fn frame<F>(
        &mut self,
        buf: &[u8],
        actions: &mut Vec<Action>,
        mut observe: F,
    ) -> Result<FrameOutcome, FrameError>
    where
        F: FnMut(u8, &[u8]),
    {
        self.frame_answering(buf, actions, |tag, bytes| {
            observe(tag, bytes);
            false
        })
    }

    /// [`Framer::frame`] where `observe` may answer an event message itself: when it returns
    /// true for a whole message whose tag is surfaced, the message is forwarded like a
    /// pass-through one (no [`Action::Event`], no barrier stop).  The verdict cache uses it: a
    /// Query it allows natively never reaches the control plane.
    #[inline]
    pub fn frame_answering<F>(
        &mut self,
        buf: &[u8],
        actions: &mut Vec<Action>,
        observe: F,
    ) -> Result<FrameOutcome, FrameError>
    where
        F: FnMut(u8, &[u8]) -> bool,
    {
        // The only state the walk changes before committing: a row plan it ends.
        let rows = self.rows;
        let res = self.walk(buf, actions, observe);
        if res.is_err() && self.rows != rows {
            self.rows = rows;
            self.refresh_sets();
        }
        res
    }

    #[inline]
    fn walk<F>(
        &mut self,
        buf: &[u8],
        actions: &mut Vec<Action>,
        mut observe: F,
    ) -> Result<FrameOutcome, FrameError>
    where
        F: FnMut(u8, &[u8]) -> bool,
    {
        let len = buf.len();
        #[cfg(any(test, feature = "debug-invariants"))]
        let first_action = actions.len();
        let mut pos = 0;
        let mut need = 0;
        let mut barrier = false;
        let mut remaining = self.remaining;
        let mut messages = 0u64;
        // Start of the current run of forwarded bytes, flushed at an event or at the end.
        let mut run: Option<usize> = None;

        if remaining > 0 {
            pos = remaining.min(len);
            remaining -= pos;
            if pos > 0 {
                run = Some(0);
            }
        }
        if remaining == 0 {
            // In locals: the loop only reloads them after `special_message`, which may change
            // them (a plan that ends).
            let max_message = self.max_message;
            let mut special = self.special;
            loop {
                let rest = &buf[pos..];
                let Some(h) = Header::parse_limited(rest, max_message)? else {
                    break;
                };
                let tag = h.tag();
                let flen = h.frame_len();
                if rest.len() >= flen {
                    let answered = observe(tag, &rest[..flen]);
                    messages += 1;
                    if special.contains(tag) {
                        let stop = self.special_message(
                            tag,
                            pos..pos + flen,
                            answered,
                            &mut run,
                            actions,
                        )?;
                        special = self.special;
                        pos += flen;
                        if stop {
                            barrier = true;
                            break;
                        }
                        continue;
                    }
                    if run.is_none() {
                        run = Some(pos);
                    }
                    pos += flen;
                } else if self.whole.contains(tag) {
                    if self.forbidden.contains(tag) {
                        return Err(FrameError::UnmaskedRow { tag });
                    }
                    need = flen;
                    break;
                } else {
                    let _ = observe(tag, rest);
                    messages += 1;
                    if run.is_none() {
                        run = Some(pos);
                    }
                    remaining = flen - rest.len();
                    pos = len;
                    break;
                }
            }
        }
        if let Some(s) = run {
            actions.push(Action::Forward(s..pos));
        }
        #[cfg(any(test, feature = "debug-invariants"))]
        check_actions(&actions[first_action..], pos);
        self.remaining = remaining;
        self.messages += messages;
        self.bytes += pos as u64;
        Ok(FrameOutcome {
            consumed: pos,
            need,
            barrier,
        })
    }
}

fn action_start(a: &Action) -> usize {
    match a {
        Action::Forward(r) | Action::Event(r) | Action::Rewrite(r) => r.start,
    }
}

/// The `debug-invariants` check: the actions tile `[0, consumed)` in order, none is empty, and
/// no two forwarded ranges are adjacent (they would have been coalesced).
#[cfg(any(test, feature = "debug-invariants"))]
fn check_actions(actions: &[Action], consumed: usize) {
    let mut at = 0;
    let mut last_forward = false;
    for a in actions {
        let (r, forward) = match a {
            Action::Forward(r) => (r, true),
            Action::Event(r) | Action::Rewrite(r) => (r, false),
        };
        assert!(
            r.start == at && r.start < r.end,
            "actions must tile the input: {actions:?}"
        );
        assert!(
            !(forward && last_forward),
            "adjacent forwards not coalesced: {actions:?}"
        );
        at = r.end;
        last_forward = forward;
    }
    assert_eq!(at, consumed, "actions must cover what was consumed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let len = i32::try_from(body.len() + 4).unwrap();
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn frame_all(f: &mut Framer, buf: &[u8]) -> (Vec<Action>, FrameOutcome) {
        let mut actions = Vec::new();
        let out = f.frame(buf, &mut actions, |_, _| {}).unwrap();
        (actions, out)
    }

    #[test]
    fn coalesces_forwarded_messages_into_one_range() {
        let mut stream = msg(b'D', b"row1");
        stream.extend(msg(b'D', b"row2"));
        stream.extend(msg(b'C', b"SELECT 2\0"));
        let mut f = Framer::new();
        let (actions, out) = frame_all(&mut f, &stream);
        assert_eq!(actions, vec![Action::Forward(0..stream.len())]);
        assert_eq!(
            out,
            FrameOutcome {
                consumed: stream.len(),
                need: 0,
                barrier: false,
            }
        );
        assert_eq!((f.messages(), f.bytes()), (3, stream.len() as u64));
    }

    #[test]
    fn events_split_the_forwarded_runs() {
        let a = msg(b'D', b"a");
        let q = msg(b'Q', b"select 1\0");
        let mut stream = a.clone();
        stream.extend(&q);
        stream.extend(&a);
        let mut f = Framer::new();
        f.set_events(TagSet::from_tags(b"Q"));
        let (actions, _) = frame_all(&mut f, &stream);
        let (x, y) = (a.len(), a.len() + q.len());
        assert_eq!(
            actions,
            vec![
                Action::Forward(0..x),
                Action::Event(x..y),
                Action::Forward(y..stream.len())
            ]
        );
        f.set_all_events(true);
        let (actions, _) = frame_all(&mut f, &stream);
        assert_eq!(
            actions,
            vec![
                Action::Event(0..x),
                Action::Event(x..y),
                Action::Event(y..stream.len())
            ]
        );
        f.set_all_events(false);
        assert_eq!(f.events(), TagSet::from_tags(b"Q"));
        assert!(!f.all_events());
    }

    #[test]
    fn partial_pass_through_streams_out() {
        let big = msg(b'D', &[7u8; 100]);
        let mut f = Framer::new();
        let (actions, out) = frame_all(&mut f, &big[..30]);
        assert_eq!(actions, vec![Action::Forward(0..30)]);
        assert_eq!(out.consumed, 30);
        assert_eq!(f.remaining(), 75);
        // The rest of it, then a whole message.
        let mut rest = big[30..].to_vec();
        rest.extend(msg(b'Z', b"I"));
        let (actions, out) = frame_all(&mut f, &rest);
        assert_eq!(actions, vec![Action::Forward(0..rest.len())]);
        assert_eq!(out.consumed, rest.len());
        assert_eq!((f.remaining(), f.messages()), (0, 2));
        // A header split across reads is left for later, not streamed.
        let (actions, out) = frame_all(&mut f, &big[..3]);
        assert_eq!((actions, out), (vec![], FrameOutcome::default()));
    }

    #[test]
    fn partial_event_reports_need() {
        let q = msg(b'Q', &[b'x'; 50]);
        let mut f = Framer::new();
        f.set_events(TagSet::from_tags(b"Q"));
        let mut stream = msg(b'S', b"");
        let s = stream.len();
        stream.extend(&q[..20]);
        let (actions, out) = frame_all(&mut f, &stream);
        assert_eq!(actions, vec![Action::Forward(0..s)]);
        assert_eq!(
            out,
            FrameOutcome {
                consumed: s,
                need: q.len(),
                barrier: false,
            }
        );
        assert_eq!(f.need(&stream[s..]), q.len());
        assert_eq!(f.need(&q), 0);
    }

    #[test]
    fn whole_pass_through_waits_and_observes_the_body() {
        let z = msg(b'Z', b"T");
        let mut f = Framer::new();
        f.set_whole(TagSet::from_tags(b"Z"));
        assert!(f.is_whole(b'Z'));
        let (actions, out) = frame_all(&mut f, &z[..5]);
        assert_eq!((actions, out.need), (vec![], 6));
        let mut seen = Vec::new();
        let mut actions = Vec::new();
        f.frame(&z, &mut actions, |t, b| seen.push((t, b.to_vec())))
            .unwrap();
        assert_eq!(actions, vec![Action::Forward(0..6)]);
        assert_eq!(seen, vec![(b'Z', z.clone())]);
    }

    #[test]
    fn errors_commit_nothing() {
        let mut stream = msg(b'D', b"ok");
        stream.extend([b'D', 0, 0, 0, 3]);
        let mut f = Framer::new();
        let mut actions = Vec::new();
        let err = f.frame(&stream, &mut actions, |_, _| {}).unwrap_err();
        assert_eq!(err, FrameError::LengthTooSmall { tag: b'D', len: 3 });
        assert_eq!((f.messages(), f.bytes(), f.remaining()), (0, 0, 0));
        f.set_max_message(1);
        let err = f
            .frame(&msg(b'D', b"ok"), &mut actions, |_, _| {})
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::MessageTooLarge { max_body: 1, .. }
        ));
        assert_eq!(f.max_message(), 1);
        f.set_max_message(usize::MAX);
        assert_eq!(f.max_message(), MAX_BODY);
    }

    #[test]
    fn a_barrier_event_ends_the_walk() {
        let t = msg(b'T', b"desc");
        let d = msg(b'D', b"row");
        let mut stream = msg(b'1', b"");
        let a = stream.len();
        stream.extend(&t);
        stream.extend(&d);
        let mut f = Framer::new();
        f.set_events(TagSet::from_tags(b"TZ"));
        f.set_barrier(TagSet::from_tags(b"TC"));
        assert_eq!(f.barrier(), TagSet::from_tags(b"TC"));
        let (actions, out) = frame_all(&mut f, &stream);
        let b = a + t.len();
        assert_eq!(actions, vec![Action::Forward(0..a), Action::Event(a..b)]);
        assert_eq!((out.consumed, out.need, out.barrier), (b, 0, true));
        // The rest frames on the next call; 'C' is a barrier but not an event: no stop.
        let mut rest = stream[b..].to_vec();
        rest.extend(msg(b'C', b"SELECT 1\0"));
        let (actions, out) = frame_all(&mut f, &rest);
        assert_eq!(actions, vec![Action::Forward(0..rest.len())]);
        assert!(!out.barrier);
        assert_eq!(&rest[..d.len()], d.as_slice());
    }

    #[test]
    fn an_answered_event_is_forwarded_without_a_barrier_stop() {
        // Q (answered) Q (not answered: an event and a barrier) Q
        let q1 = msg(b'Q', b"select 1\0");
        let q2 = msg(b'Q', b"select 2\0");
        let mut stream = q1.clone();
        stream.extend(&q2);
        stream.extend(&q1);
        let mut f = Framer::new();
        f.set_events(TagSet::from_tags(b"Q"));
        f.set_barrier(TagSet::from_tags(b"Q"));
        let mut actions = Vec::new();
        let mut seen = 0;
        let out = f
            .frame_answering(&stream, &mut actions, |tag, bytes| {
                seen += 1;
                tag == b'Q' && bytes == q1.as_slice()
            })
            .unwrap();
        let a = q1.len();
        let b = a + q2.len();
        assert_eq!(actions, vec![Action::Forward(0..a), Action::Event(a..b)]);
        assert_eq!((out.consumed, out.barrier, seen), (b, true, 2));
        // answered messages coalesce with pass-through bytes into one forwarded run
        let mut rest = stream[b..].to_vec();
        rest.extend(msg(b'S', b""));
        let mut actions = Vec::new();
        let out = f.frame_answering(&rest, &mut actions, |_, _| true).unwrap();
        assert_eq!(actions, vec![Action::Forward(0..rest.len())]);
        assert!(!out.barrier);
    }

    #[test]
    fn a_row_plan_hands_rows_out_until_the_result_set_ends() {
        let d = msg(b'D', b"row");
        let n = msg(b'N', b"notice");
        let c = msg(b'C', b"SELECT 2\0");
        let mut stream = d.clone();
        stream.extend(&n);
        stream.extend(&d);
        stream.extend(&c);
        stream.extend(&d);
        let mut f = Framer::new();
        f.set_row_plan(Some(b'D'), true);
        assert!(f.row_plan_active());
        let (actions, out) = frame_all(&mut f, &stream);
        let (x, y, z) = (d.len(), d.len() + n.len(), 2 * d.len() + n.len());
        assert_eq!(
            actions,
            vec![
                Action::Rewrite(0..x),
                Action::Forward(x..y),
                Action::Rewrite(y..z),
                // CommandComplete ended the plan: the last row is forwarded with it.
                Action::Forward(z..stream.len()),
            ]
        );
        assert_eq!(out.consumed, stream.len());
        assert!(!f.row_plan_active());
    }

    #[test]
    fn plan_rows_and_result_ends_must_arrive_whole() {
        let d = msg(b'D', &[b'x'; 40]);
        let mut f = Framer::new();
        f.set_row_plan(Some(b'D'), true);
        let (actions, out) = frame_all(&mut f, &d[..20]);
        assert_eq!((actions, out.need), (vec![], d.len()));
        // A result end is whole too, so that the plan ends exactly there.
        let c = msg(b'C', b"SELECT 1\0");
        let (actions, out) = frame_all(&mut f, &c[..7]);
        assert_eq!((actions, out.need), (vec![], c.len()));
        assert_eq!(f.need(&c[..7]), c.len());
        // A pass-through plan forwards its rows (streamed when partial) but still ends at 'C'.
        f.set_row_plan(Some(b'D'), false);
        let (actions, _) = frame_all(&mut f, &d[..20]);
        assert_eq!(actions, vec![Action::Forward(0..20)]);
        assert!(f.row_plan_active());
        let mut rest = d[20..].to_vec();
        rest.extend(&c);
        frame_all(&mut f, &rest);
        assert!(!f.row_plan_active());
        f.set_row_plan(Some(b'd'), true);
        f.set_row_plan(None, true);
        assert!(!f.row_plan_active());
    }

    #[test]
    fn every_result_end_clears_the_plan() {
        for &tag in b"CsIEZnTc" {
            let mut f = Framer::new();
            f.set_row_plan(Some(b'd'), true);
            let mut stream = msg(tag, b"x");
            stream.extend(msg(b'd', b"after"));
            let (actions, _) = frame_all(&mut f, &stream);
            assert_eq!(actions, vec![Action::Forward(0..stream.len())], "{tag}");
            assert!(!f.row_plan_active());
        }
        // A row tag other than the plan's is forwarded and does not end it.
        let mut f = Framer::new();
        f.set_row_plan(Some(b'd'), true);
        let (actions, _) = frame_all(&mut f, &msg(b'D', b""));
        assert_eq!(actions, vec![Action::Forward(0..5)]);
        assert!(f.row_plan_active());
    }

    #[test]
    fn mask_required_refuses_rows_without_a_plan() {
        let mut f = Framer::new();
        f.set_mask_required(true);
        assert!(f.mask_required());
        let mut actions = Vec::new();
        // Refused from its header on: nothing of it waits in the buffer.
        let d = msg(b'D', &[b'x'; 40]);
        let err = f.frame(&d[..10], &mut actions, |_, _| {}).unwrap_err();
        assert_eq!(err, FrameError::UnmaskedRow { tag: b'D' });
        let err = f
            .frame(&msg(b'd', b""), &mut actions, |_, _| {})
            .unwrap_err();
        assert_eq!(err, FrameError::UnmaskedRow { tag: b'd' });
        assert!(err.to_string().contains("masking"));
        // With a plan its rows pass; after the plan ends they are refused again, and the error
        // leaves the plan as it was before the call.
        f.set_row_plan(Some(b'D'), true);
        let mut stream = d.clone();
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'D', b""));
        let err = f.frame(&stream, &mut actions, |_, _| {}).unwrap_err();
        assert_eq!(err, FrameError::UnmaskedRow { tag: b'D' });
        assert!(f.row_plan_active());
        assert_eq!((f.messages(), f.bytes()), (0, 0));
        let (actions, _) = frame_all(&mut f, &stream[..stream.len() - 5]);
        assert_eq!(actions.len(), 2);
        f.set_mask_required(false);
        let (actions, _) = frame_all(&mut f, &msg(b'D', b""));
        assert_eq!(actions, vec![Action::Forward(0..5)]);
    }

    #[test]
    fn splits_like_one_feed_with_plans_and_barriers() {
        // T (barrier) D D C Z T D C Z, the plan installed at each barrier.
        let mut stream = Vec::new();
        for _ in 0..2 {
            stream.extend(msg(b'T', b"t"));
            stream.extend(msg(b'D', b"r1"));
            stream.extend(msg(b'D', b"r2"));
            stream.extend(msg(b'C', b"c\0"));
            stream.extend(msg(b'Z', b"I"));
        }
        let setup = Setup {
            barrier: b"T".to_vec(),
            plan: Some((b'D', true)),
            mask_required: true,
            ..events_only(b"TZ")
        };
        let (one, rest, _) = run_chunks(&setup, &[&stream]);
        assert!(rest.is_empty());
        let one = one.unwrap();
        let rows = one.iter().filter(|i| matches!(i, Item::Rw(_))).count();
        assert_eq!(rows, 4);
        for cut in 0..stream.len() {
            let (many, _, _) = run_chunks(&setup, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(many.unwrap(), one, "cut at {cut}");
        }
    }

    /// Output normalized for comparison: forwarded bytes merged, events whole.
    #[derive(Debug, PartialEq, Eq)]
    enum Item {
        Fwd(Vec<u8>),
        Ev(Vec<u8>),
        Rw(Vec<u8>),
    }

    fn push_item(out: &mut Vec<Item>, item: Item) {
        if let (Some(Item::Fwd(last)), Item::Fwd(b)) = (out.last_mut(), &item) {
            last.extend_from_slice(b);
            return;
        }
        out.push(item);
    }

    /// Output, bytes left unconsumed, runs of observed tags.
    type Run = (Result<Vec<Item>, FrameError>, Vec<u8>, Vec<(u8, usize)>);

    /// How `run_chunks` sets up the framer and reacts to barriers.
    #[derive(Debug, Clone, Default)]
    struct Setup {
        events: Vec<u8>,
        barrier: Vec<u8>,
        /// Installed at the start and again at every barrier: (row tag, rewrite).
        plan: Option<(u8, bool)>,
        mask_required: bool,
    }

    fn events_only(events: &[u8]) -> Setup {
        Setup {
            events: events.to_vec(),
            ..Setup::default()
        }
    }

    /// Feeds `chunks` like a receive buffer would: append, frame (again after each barrier,
    /// installing the plan), drop what was consumed.
    fn run_chunks(setup: &Setup, chunks: &[&[u8]]) -> Run {
        let mut f = Framer::new();
        f.set_events(TagSet::from_tags(&setup.events));
        f.set_whole(TagSet::from_tags(b"Z"));
        f.set_barrier(TagSet::from_tags(&setup.barrier));
        f.set_mask_required(setup.mask_required);
        let install = |f: &mut Framer| {
            if let Some((tag, rewrite)) = setup.plan {
                f.set_row_plan(Some(tag), rewrite);
            }
        };
        install(&mut f);
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut actions = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            loop {
                actions.clear();
                let res = f.frame(&pending, &mut actions, |t, _| seen.push(t));
                let o = match res {
                    Ok(o) => o,
                    Err(e) => return (Err(e), pending, vec![]),
                };
                for a in &actions {
                    match a {
                        Action::Forward(r) => {
                            push_item(&mut out, Item::Fwd(pending[r.clone()].to_vec()))
                        }
                        Action::Event(r) => out.push(Item::Ev(pending[r.clone()].to_vec())),
                        Action::Rewrite(r) => out.push(Item::Rw(pending[r.clone()].to_vec())),
                    }
                }
                if o.need > 0 {
                    assert!(o.need > pending.len() - o.consumed);
                }
                pending.drain(..o.consumed);
                if !o.barrier {
                    break;
                }
                install(&mut f);
            }
        }
        let counts = seen.iter().fold(Vec::<(u8, usize)>::new(), |mut acc, &t| {
            match acc.last_mut() {
                Some((lt, n)) if *lt == t => *n += 1,
                _ => acc.push((t, 1)),
            }
            acc
        });
        (Ok(out), pending, counts)
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        let tag = prop::sample::select(b"QPBEDSZTCdHKRcsIn".to_vec());
        prop::collection::vec((tag, prop::collection::vec(any::<u8>(), 0..300)), 0..40)
            .prop_map(|msgs| msgs.iter().flat_map(|(t, b)| msg(*t, b)).collect())
    }

    fn split(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([stream.len()]) {
            chunks.push(stream[prev..c].to_vec());
            prev = c;
        }
        chunks
    }

    proptest! {
        #[test]
        fn any_split_frames_like_one_feed(
            stream in arb_stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..30),
            events in prop::collection::vec(prop::sample::select(b"QPDZTC".to_vec()), 0..4),
            barrier in prop::collection::vec(prop::sample::select(b"TZH".to_vec()), 0..2),
            plan in prop::option::of((prop::sample::select(b"Dd".to_vec()), any::<bool>())),
            mask_required in any::<bool>(),
        ) {
            let setup = Setup { events, barrier, plan, mask_required };
            let (one, rest_one, seen_one) = run_chunks(&setup, &[&stream]);
            let chunks = split(&stream, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let (many, rest_many, seen_many) = run_chunks(&setup, &refs);
            // Same verdict whatever the cuts (a row with no plan is an error when required).
            prop_assert_eq!(one.is_ok(), many.is_ok());
            if let (Err(a), Err(b)) = (&one, &many) {
                prop_assert_eq!(a, b);
                prop_assert!(setup.mask_required);
                return Ok(());
            }
            prop_assert!(rest_one.is_empty());
            prop_assert!(rest_many.is_empty());
            prop_assert_eq!(one.as_ref().unwrap(), many.as_ref().unwrap());
            prop_assert_eq!(seen_one, seen_many);
            // Everything comes out, in order; only the plan's rows are handed out to rewrite.
            let items = many.unwrap();
            for i in &items {
                if let Item::Rw(b) = i {
                    prop_assert_eq!(Some(b[0]), setup.plan.filter(|p| p.1).map(|p| p.0));
                }
            }
            let flat: Vec<u8> = items.into_iter().flat_map(|i| match i {
                Item::Fwd(b) | Item::Ev(b) | Item::Rw(b) => b,
            }).collect();
            prop_assert_eq!(flat, stream);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
            max in 0usize..5000,
            all in any::<bool>(),
        ) {
            let chunks = split(&bytes, &cuts);
            let mut f = Framer::new();
            f.set_max_message(max);
            f.set_all_events(all);
            let mut pending = Vec::new();
            let mut actions = Vec::new();
            for c in &chunks {
                pending.extend_from_slice(c);
                actions.clear();
                match f.frame(&pending, &mut actions, |_, _| {}) {
                    Ok(o) => {
                        prop_assert!(o.consumed <= pending.len());
                        for a in &actions {
                            let (Action::Forward(r) | Action::Event(r) | Action::Rewrite(r)) = a;
                            prop_assert!(r.start < r.end && r.end <= o.consumed);
                        }
                        let _ = f.need(&pending[o.consumed..]);
                        pending.drain(..o.consumed);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
