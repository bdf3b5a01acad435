//! Feeds arbitrary bytes, cut into arbitrary reads, through the framer like a receive buffer:
//! append, frame, drop what was consumed.  Must never panic; `debug-invariants` checks that the
//! actions tile the consumed bytes.  Also checks that the cut points do not change the output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate_core::{startup, Action, Framer, TagSet};

/// Forwarded bytes and event frames, in order (forwarded runs merged).
fn run(
    data: &[u8],
    cuts: &[usize],
    events: TagSet,
    all: bool,
    max: usize,
) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
    let mut f = Framer::new();
    f.set_events(events);
    f.set_all_events(all);
    f.set_whole(TagSet::from_tags(b"Z"));
    f.set_max_message(max);
    let mut pending = Vec::new();
    let mut actions = Vec::new();
    let mut forwarded = Vec::new();
    let mut evs = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain([data.len()].iter()) {
        pending.extend_from_slice(&data[prev..c]);
        prev = c;
        actions.clear();
        match f.frame(&pending, &mut actions, |_, _| {}) {
            Ok(o) => {
                for a in &actions {
                    match a {
                        Action::Forward(r) => forwarded.extend_from_slice(&pending[r.clone()]),
                        Action::Event(r) => {
                            evs.push(pending[r.clone()].to_vec());
                            forwarded.push(0xEE); // marks the event's place in the order
                        }
                    }
                }
                let _ = f.need(&pending[o.consumed..]);
                pending.drain(..o.consumed);
            }
            Err(_) => return (forwarded, evs, true),
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
    let one = run(data, &[], events, all, max);
    let many = run(data, &cuts, events, all, max);
    // Same verdict; on success, the same output.
    assert_eq!(one.2, many.2);
    if !one.2 {
        assert_eq!((one.0, one.1), (many.0, many.1));
    }
});
