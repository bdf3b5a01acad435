//! The codec of each built-in type OID (the OIDs are fixed in every PostgreSQL release).  The
//! control plane builds codecs for other types (domains, enums, arrays and composites of
//! them, extension types) from the catalog; anonymous records name their attributes' types
//! by OID in each binary value, and get them here.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{ArrayCodec, Codec};

/// Built-in scalar types: OID and codec.
const SCALARS: &[(u32, Codec)] = &[
    (25, Codec::Text),    // text
    (1043, Codec::Text),  // varchar
    (1042, Codec::Text),  // bpchar
    (19, Codec::Text),    // name
    (705, Codec::Text),   // unknown
    (1790, Codec::Text),  // refcursor
    (17, Codec::Bytea),   // bytea
    (114, Codec::Json),   // json
    (3802, Codec::Jsonb), // jsonb
    (21, Codec::Int2),
    (23, Codec::Int4),
    (20, Codec::Int8),
    (1700, Codec::Numeric),
    (869, Codec::Inet),
    (650, Codec::Cidr),
    (2950, Codec::Uuid),
    (700, Codec::Float4),
    (701, Codec::Float8),
    (16, Codec::Bool),
    (1082, Codec::Date),
    (1083, Codec::Time),
    (1266, Codec::TimeTz),
    (1114, Codec::Timestamp),
    (1184, Codec::TimestampTz),
    (1186, Codec::Interval),
    (2249, Codec::Record),
    // Types that cannot carry a detectable entity and have no masked form.
    (18, Codec::Other),   // "char"
    (26, Codec::Other),   // oid
    (27, Codec::Other),   // tid
    (28, Codec::Other),   // xid
    (29, Codec::Other),   // cid
    (5069, Codec::Other), // xid8
    (790, Codec::Other),  // money
    (1560, Codec::Other), // bit
    (1562, Codec::Other), // varbit
    (600, Codec::Other),  // point
    (601, Codec::Other),  // lseg
    (602, Codec::Other),  // path
    (603, Codec::Other),  // box
    (604, Codec::Other),  // polygon
    (628, Codec::Other),  // line
    (718, Codec::Other),  // circle
    (829, Codec::Other),  // macaddr
    (774, Codec::Other),  // macaddr8
    (3220, Codec::Other), // pg_lsn
    (2970, Codec::Other), // txid_snapshot
    (5038, Codec::Other), // pg_snapshot
    (2278, Codec::Other), // void
    (24, Codec::Other),   // regproc
    (2202, Codec::Other), // regprocedure
    (2203, Codec::Other), // regoper
    (2204, Codec::Other), // regoperator
    (2205, Codec::Other), // regclass
    (2206, Codec::Other), // regtype
    (3734, Codec::Other), // regconfig
    (3769, Codec::Other), // regdictionary
    (4089, Codec::Other), // regnamespace
    (4096, Codec::Other), // regrole
    (4191, Codec::Other), // regcollation
    (3904, Codec::Other), // int4range
    (3906, Codec::Other), // numrange
    (3908, Codec::Other), // tsrange
    (3910, Codec::Other), // tstzrange
    (3912, Codec::Other), // daterange
    (3926, Codec::Other), // int8range
    (4451, Codec::Other), // int4multirange
    (4532, Codec::Other), // nummultirange
    (4533, Codec::Other), // tsmultirange
    (4534, Codec::Other), // tstzmultirange
    (4535, Codec::Other), // datemultirange
    (4536, Codec::Other), // int8multirange
    // Text inside that the engine does not parse: NULL when masked.
    (142, Codec::Unknown),  // xml
    (3614, Codec::Unknown), // tsvector
    (3615, Codec::Unknown), // tsquery
    (4072, Codec::Unknown), // jsonpath
];

/// Built-in array types: array OID, element OID.
const ARRAYS: &[(u32, u32)] = &[
    (1009, 25),
    (1015, 1043),
    (1014, 1042),
    (1003, 19),
    (1001, 17),
    (199, 114),
    (3807, 3802),
    (1005, 21),
    (1007, 23),
    (1016, 20),
    (1231, 1700),
    (1041, 869),
    (651, 650),
    (2951, 2950),
    (1021, 700),
    (1022, 701),
    (1000, 16),
    (1182, 1082),
    (1183, 1083),
    (1270, 1266),
    (1115, 1114),
    (1185, 1184),
    (1187, 1186),
    (2287, 2249),
    (1028, 26),
    (791, 790),
    (143, 142),
    (3643, 3614),
];

/// The codec of a built-in type, `None` for a type this table does not know.
pub fn builtin(oid: u32) -> Option<Codec> {
    builtin_ref(oid).cloned()
}

/// [`builtin`] without a copy (what anonymous records look up per attribute).
pub fn builtin_ref(oid: u32) -> Option<&'static Codec> {
    static TABLE: OnceLock<HashMap<u32, Codec>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut t: HashMap<u32, Codec> = SCALARS.iter().cloned().collect();
            for &(array, elem) in ARRAYS {
                let elem_codec = t.get(&elem).expect("array elements are listed").clone();
                let codec = Codec::Array(Box::new(ArrayCodec {
                    elem: elem_codec,
                    elem_oid: elem,
                    delimiter: b',',
                }));
                t.insert(array, codec);
            }
            t
        })
        .get(&oid)
}
