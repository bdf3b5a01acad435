//! Feeds arbitrary bytes, cut into arbitrary reads, through the framer like a receive buffer:
//! append, frame, drop what was consumed.  Must never panic; `debug-invariants` checks that the
//! actions tile the consumed bytes.  Also checks that the cut points do not change the output.
//! Row plans, barriers and required masking are drawn too: the plan is installed at the start
//! and again at every barrier, as the control plane does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate_core::{startup, Action, Framer, TagSet};

/// The row rules: plan tag (installed at the start and at each barrier), rewrite, required.
#[derive(Clone, Copy)]
struct Rows {
    plan: Option<u8>,
    rewrite: bool,
    required: bool,
}

/// Forwarded bytes and event frames, in order (forwarded runs merged).
fn run(
    data: &[u8],
    cuts: &[usize],
    events: TagSet,
    all: bool,
    max: usize,
    rows: Rows,
) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
    let mut f = Framer::new();
    f.set_events(events);
    f.set_all_events(all);
    f.set_whole(TagSet::from_tags(b"Z"));
    f.set_max_message(max);
    f.set_mask_required(rows.required);
    if rows.plan.is_some() {
        f.set_barrier(events);
    }
    f.set_row_plan(rows.plan, rows.rewrite);
    let mut pending = Vec::new();
    let mut actions = Vec::new();
    let mut forwarded = Vec::new();
    let mut evs = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain([data.len()].iter()) {
        pending.extend_from_slice(&data[prev..c]);
        prev = c;
        loop {
            actions.clear();
            match f.frame(&pending, &mut actions, |_, _| {}) {
                Ok(o) => {
                    for a in &actions {
                        match a {
                            Action::Forward(r) => forwarded.extend_from_slice(&pending[r.clone()]),
                            Action::Event(r) | Action::Rewrite(r) => {
                                evs.push(pending[r.clone()].to_vec());
                                forwarded.push(0xEE); // marks the event's place in the order
                            }
                        }
                    }
                    let _ = f.need(&pending[o.consumed..]);
                    pending.drain(..o.consumed);
                    if !o.barrier {
                        break;
                    }
                    f.set_row_plan(rows.plan, rows.rewrite);
                }
                Err(_) => return (forwarded, evs, true),
            }
        }
    }
    (forwarded, evs, false)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, rest)) = input.split_first() else {
        return;
    };
    let Some((&ncuts, data)) = rest.split_first() else {
        return;
    };
    let _ = startup::parse(data);
    let max = [0usize, 3, 64, 4096, 1 << 30][usize::from(cfg % 5)];
    let all = cfg & 0x80 != 0;
    let events = TagSet::from_tags(&data[..data.len().min(usize::from(cfg >> 5 & 3))]);
    // Cut points derived from the data itself, sorted.
    let mut cuts: Vec<usize> = data
        .iter()
        .take(usize::from(ncuts % 16))
        .enumerate()
        .map(|(i, &b)| (usize::from(b) * 131 + i * 7) % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    let rows = Rows {
        plan: [None, Some(b'D'), Some(b'd'), Some(b'D')][usize::from(ncuts >> 4 & 3)],
        rewrite: ncuts & 0x40 != 0,
        required: ncuts & 0x80 != 0,
    };
    let one = run(data, &[], events, all, max, rows);
    let many = run(data, &cuts, events, all, max, rows);
    // Same verdict; on success, the same output.
    assert_eq!(one.2, many.2);
    if !one.2 {
        assert_eq!((one.0, one.1), (many.0, many.1));
    }
});
