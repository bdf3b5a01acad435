//! Arbitrary bytes through every codec, in both formats, with a content scanner and every
//! column operator: never a panic; `Unchanged` and `Null` append nothing; a value that decodes
//! as its type masks into a value that decodes as its type too; transcoding a value that
//! decodes and back gives the server's form again.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veilgate_core::codec::{ArrayCodec, Attribute, Codec, Cx, Format, Scratch};
use veilgate_core::mask::{
    ColumnOperator, HashKey, Masker, MaskerConfig, Operator, Outcome, Tally, ValueMask,
};

fn codecs() -> &'static [Codec] {
    static C: OnceLock<Vec<Codec>> = OnceLock::new();
    C.get_or_init(|| {
        let mut v: Vec<Codec> = [
            "text", "bytea", "json", "jsonb", "int2", "int4", "int8", "numeric", "inet", "cidr",
            "uuid", "float4", "float8", "bool", "date", "time", "timetz", "timestamp",
            "timestamptz", "interval", "record", "other", "unknown",
        ]
        .iter()
        .map(|n| Codec::scalar(n).expect("a scalar codec"))
        .collect();
        v.push(Codec::Array(Box::new(ArrayCodec {
            elem: Codec::Inet,
            elem_oid: 869,
            delimiter: b',',
        })));
        v.push(Codec::Composite(
            [(25, Codec::Text), (1700, Codec::Numeric), (1009, Codec::Record)]
                .into_iter()
                .map(|(oid, codec)| Attribute { oid, codec })
                .collect(),
        ));
        v
    })
}

fn masks() -> &'static [Box<dyn ValueMask>] {
    static M: OnceLock<Vec<Box<dyn ValueMask>>> = OnceLock::new();
    M.get_or_init(|| {
        let scanner = Masker::new(MaskerConfig {
            operators: vec![(
                "CREDIT_CARD".into(),
                Operator::Partial {
                    keep_first: 0,
                    keep_last: 4,
                    mask_char: '*',
                    keep_separators: true,
                },
            )],
            ..MaskerConfig::default()
        })
        .expect("valid config");
        let ops = [
            Operator::Replace(None),
            Operator::Redact,
            Operator::Partial {
                keep_first: 1,
                keep_last: 2,
                mask_char: '#',
                keep_separators: false,
            },
            Operator::Hash(HashKey::new(b"fuzz")),
            Operator::Null,
        ];
        let mut v: Vec<Box<dyn ValueMask>> = vec![Box::new(scanner)];
        v.extend(
            ops.into_iter()
                .map(|op| Box::new(ColumnOperator::new(op, "COLUMN")) as Box<dyn ValueMask>),
        );
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let codec = &codecs()[usize::from(pick) % codecs().len()];
    let fmt = if pick & 0x80 == 0 { Format::Text } else { Format::Binary };
    let decodes = codec.transcode(fmt, value);
    if let Some(other) = &decodes {
        let back_fmt = if fmt == Format::Text { Format::Binary } else { Format::Text };
        let back = codec.transcode(back_fmt, other).expect("the other form decodes");
        assert!(codec.transcode(fmt, &back).is_some());
    }
    let mut scratch = Scratch::new();
    for mask in masks() {
        let mut tally = Tally::new();
        let mut out = b"head".to_vec();
        let mut cx = Cx::new(&**mask, &mut tally, &mut scratch);
        match codec.mask(fmt, value, &mut cx, &mut out) {
            Outcome::Unchanged | Outcome::Null => assert_eq!(out, b"head"),
            Outcome::Written => {
                assert!(out.starts_with(b"head"));
                if decodes.is_some() {
                    assert!(codec.transcode(fmt, &out[4..]).is_some(), "{codec}");
                }
            }
        }
    }
});
