//! Arbitrary DataRow and CopyData bodies through the row rewriters (every COPY format), with
//! plans of every column action.  Never a panic; on success the output is one well-framed
//! message whose length field is right, a keep-only plan gives back the input, and on error
//! nothing is appended.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use veilgate_core::mask::{Outcome, Tally, ValueMask};
use veilgate_core::rewrite::{
    rewrite_datarow, ColumnAction, CopyFormat, CopyPlan, CopyRewriter, RowPlan,
};

/// Wraps the value in bytes every COPY format must escape or quote.
struct Lengthen;

impl ValueMask for Lengthen {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        out.push(b'"');
        out.extend_from_slice(value);
        out.extend_from_slice(b"\t,\n\r\\");
        tally.add(0, 1);
        Outcome::Written
    }
}

struct Nuller;

impl ValueMask for Nuller {
    fn mask_value(&self, _: &[u8], _: &mut Vec<u8>, _: &mut Tally) -> Outcome {
        Outcome::Null
    }
}

fn action(code: u8) -> ColumnAction {
    match code % 5 {
        0 => ColumnAction::Keep,
        1 => ColumnAction::Null,
        2 => ColumnAction::Text(Arc::new(Lengthen)),
        3 => ColumnAction::Jsonb(Arc::new(Lengthen)),
        _ => ColumnAction::Text(Arc::new(Nuller)),
    }
}

/// The output holds exactly one message with `tag` and a right length field.
fn check_framed(tag: u8, out: &[u8]) {
    assert_eq!(out[0], tag);
    let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]);
    assert_eq!(usize::try_from(len).unwrap(), out.len() - 1);
}

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, rest)) = input.split_first() else {
        return;
    };
    let Some((&ncols, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(ncols % 6);
    let (codes, data) = rest.split_at(n.min(rest.len()));
    let columns: Vec<ColumnAction> = codes.iter().map(|&c| action(c)).collect();
    let keep = vec![ColumnAction::Keep; columns.len()];

    // DataRow.
    let plan = RowPlan::new(columns.clone());
    let mut tallies = plan.new_tallies();
    let mut out = Vec::new();
    if rewrite_datarow(data, &plan, &mut out, &mut tallies).is_ok() {
        check_framed(b'D', &out);
    } else {
        assert!(out.is_empty());
    }
    let mut same = Vec::new();
    let keep_plan = RowPlan::new(keep.clone());
    let mut keep_tallies = keep_plan.new_tallies();
    if rewrite_datarow(data, &keep_plan, &mut same, &mut keep_tallies).is_ok() {
        assert_eq!(&same[5..], data);
    }

    // CopyData, cut into messages at 0xfe bytes.
    let format = match cfg % 3 {
        0 => CopyFormat::Text {
            delimiter: if cfg & 0x10 != 0 { b'|' } else { b'\t' },
            null: b"\\N".to_vec(),
            header: cfg & 0x20 != 0,
        },
        1 => CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: if cfg & 0x10 != 0 { b'\\' } else { b'"' },
            null: Vec::new(),
            header: cfg & 0x20 != 0,
        },
        _ => CopyFormat::Binary,
    };
    let mut masked = CopyRewriter::new(Arc::new(CopyPlan::new(format.clone(), columns).unwrap()));
    let mut kept = CopyRewriter::new(Arc::new(CopyPlan::new(format, keep).unwrap()));
    for body in data.split(|&b| b == 0xfe) {
        let mut out = Vec::new();
        match masked.rewrite_copydata(body, &mut out) {
            Ok(()) => check_framed(b'd', &out),
            Err(_) => assert!(out.is_empty()),
        }
        let mut same = Vec::new();
        if kept.rewrite_copydata(body, &mut same).is_ok() {
            assert_eq!(&same[5..], body);
        }
    }
});
