//! Typed values: decoding, masking and encoding again a value of a PostgreSQL type, in the
//! text and the binary wire format, so that a masked value is still a valid value of its type.
//! One file per type family (as pydantic-core has one validator per type).
//!
//! A plan column whose type is not masked as plain text carries a [`Codec`] (its type, built by
//! the control plane from the catalog once per RowDescription) and its [`Format`].
//! [`Codec::mask`] asks the column's [`ValueMask`](crate::mask::ValueMask) *what* to mask: the
//! whole value for a column rule ([`whole`](crate::mask::ValueMask::whole)), the spans a
//! content scan finds in the value's text form otherwise
//! ([`find`](crate::mask::ValueMask::find)); and applies each operator in the type's domain:
//!
//! - [`text`]: text-likes (text, varchar, bpchar, name, citext, enums): the bytes are the text
//! - [`bytea`]: bytes, `\x` hex or escape text format
//! - [`json`]: json and jsonb (version byte); the result is always valid JSON
//! - [`decimal`]: the digit domain shared by [`int`] (int2/4/8) and [`numeric`]
//! - [`inet`]: inet and cidr (same family and prefix)
//! - [`uuid`], [`float`], [`boolean`], [`datetime`] (date, time, timetz, timestamp(tz)),
//!   [`interval`]: types that cannot carry a detectable entity: a content scan keeps them, a
//!   column rule gives a value of the type
//! - [`mod@array`], [`composite`] (named composites and anonymous records): element by element
//! - [`range`]: ranges and multiranges over a scannable subtype (a masked range is `empty`)
//! - [`hstore`]: the extension's key/value type, keys and values as text
//! - [`builtin`]: the codec of each built-in type OID
//!
//! Fail closed: a value that does not decode as its declared type becomes NULL (counted as
//! `INVALID_VALUE`), a value of a type the engine cannot read becomes NULL whenever it would
//! have to be masked (`UNKNOWN_TYPE`); nothing passes because it could not be read.

pub mod array;
pub mod boolean;
pub mod builtin;
pub mod bytea;
pub mod composite;
mod cx;
pub mod datetime;
pub mod decimal;
pub mod float;
pub mod hstore;
pub mod inet;
pub mod int;
pub mod interval;
pub mod json;
pub mod numeric;
pub mod range;
pub mod text;
pub mod uuid;

#[cfg(test)]
mod tests;

use std::fmt;

pub use array::ArrayCodec;
pub use composite::Attribute;
pub use cx::{Cx, Scratch};

use crate::mask::{entity_id, EntityId, Finding, Outcome};

/// The wire format of a value (a RowDescription / Bind format code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    /// The format of a protocol format code (0 text, 1 binary); `None` for any other.
    pub fn from_code(code: i64) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }

    /// The other format (what a value is transcoded to).
    pub fn other(self) -> Format {
        match self {
            Format::Text => Format::Binary,
            Format::Binary => Format::Text,
        }
    }
}

/// How the values of one type are read, masked and written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Text-likes: the binary format is the text itself.
    Text,
    Bytea,
    Json,
    Jsonb,
    Int2,
    Int4,
    Int8,
    Numeric,
    Inet,
    Cidr,
    Uuid,
    Float4,
    Float8,
    Bool,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Array(Box<ArrayCodec>),
    /// A named composite (a table's row type, `CREATE TYPE ... AS`): its attributes' types.
    Composite(Box<[Attribute]>),
    /// An anonymous record (`ROW(...)`): attribute types come with each binary value.
    Record,
    /// A range over a subtype a content scan reads (a masked range is `empty`: [`range`]).
    Range(Box<Codec>),
    /// A multirange over such a range type (masked ranges are dropped: [`range`]).
    Multirange(Box<Codec>),
    /// The `hstore` extension's type: keys and values masked as text ([`hstore`]).
    Hstore,
    /// A known type that cannot carry a detectable entity and has no masked form of its own
    /// (ranges, geometric types, money, bit strings...): a content scan keeps its values, a
    /// column rule makes them NULL.
    Other,
    /// A type the engine cannot read (an extension's base type...): NULL whenever a value must
    /// be masked (in text format a content scan keeps the values it finds nothing in).
    Unknown,
}

impl Codec {
    /// Whether a content scan could change a value of this type (false: columns of it are
    /// kept whole when they are only scanned).
    pub fn scannable(&self) -> bool {
        match self {
            Codec::Text
            | Codec::Bytea
            | Codec::Json
            | Codec::Jsonb
            | Codec::Int2
            | Codec::Int4
            | Codec::Int8
            | Codec::Numeric
            | Codec::Inet
            | Codec::Cidr
            | Codec::Record
            | Codec::Hstore
            | Codec::Unknown => true,
            Codec::Uuid
            | Codec::Float4
            | Codec::Float8
            | Codec::Bool
            | Codec::Date
            | Codec::Time
            | Codec::TimeTz
            | Codec::Timestamp
            | Codec::TimestampTz
            | Codec::Interval
            | Codec::Other => false,
            Codec::Array(a) => a.elem.scannable(),
            Codec::Range(sub) | Codec::Multirange(sub) => sub.scannable(),
            Codec::Composite(attrs) => attrs.iter().any(|a| a.codec.scannable()),
        }
    }

    /// The codec's name (as `veilgate_native.Codec` spells it).
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Text => "text",
            Codec::Bytea => "bytea",
            Codec::Json => "json",
            Codec::Jsonb => "jsonb",
            Codec::Int2 => "int2",
            Codec::Int4 => "int4",
            Codec::Int8 => "int8",
            Codec::Numeric => "numeric",
            Codec::Inet => "inet",
            Codec::Cidr => "cidr",
            Codec::Uuid => "uuid",
            Codec::Float4 => "float4",
            Codec::Float8 => "float8",
            Codec::Bool => "bool",
            Codec::Date => "date",
            Codec::Time => "time",
            Codec::TimeTz => "timetz",
            Codec::Timestamp => "timestamp",
            Codec::TimestampTz => "timestamptz",
            Codec::Interval => "interval",
            Codec::Array(_) => "array",
            Codec::Composite(_) => "composite",
            Codec::Record => "record",
            Codec::Range(_) => "range",
            Codec::Multirange(_) => "multirange",
            Codec::Hstore => "hstore",
            Codec::Other => "other",
            Codec::Unknown => "unknown",
        }
    }

    /// The scalar codec called `name` (see [`Codec::name`]; not array or composite).
    pub fn scalar(name: &str) -> Option<Codec> {
        Some(match name {
            "text" => Codec::Text,
            "bytea" => Codec::Bytea,
            "json" => Codec::Json,
            "jsonb" => Codec::Jsonb,
            "int2" => Codec::Int2,
            "int4" => Codec::Int4,
            "int8" => Codec::Int8,
            "numeric" => Codec::Numeric,
            "inet" => Codec::Inet,
            "cidr" => Codec::Cidr,
            "uuid" => Codec::Uuid,
            "float4" => Codec::Float4,
            "float8" => Codec::Float8,
            "bool" => Codec::Bool,
            "date" => Codec::Date,
            "time" => Codec::Time,
            "timetz" => Codec::TimeTz,
            "timestamp" => Codec::Timestamp,
            "timestamptz" => Codec::TimestampTz,
            "interval" => Codec::Interval,
            "record" => Codec::Record,
            "hstore" => Codec::Hstore,
            "other" => Codec::Other,
            "unknown" => Codec::Unknown,
            _ => return None,
        })
    }

    /// Masks one non-NULL `value` of this type in format `fmt` through `cx.mask`.  On
    /// [`Outcome::Written`] the masked value (in the same format) was appended to `out`; on
    /// the other outcomes `out` is as it was.
    pub fn mask(&self, fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
        let at = out.len();
        let outcome = self.mask_into(fmt, value, cx, out);
        if outcome != Outcome::Written {
            out.truncate(at);
        }
        outcome
    }

    fn mask_into(&self, fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
        match self {
            Codec::Text => text::mask(value, cx, out),
            Codec::Bytea => bytea::mask(fmt, value, cx, out),
            Codec::Json => json::mask(false, fmt, value, cx, out),
            Codec::Jsonb => json::mask(true, fmt, value, cx, out),
            Codec::Int2 => int::mask(int::Width::W2, fmt, value, cx, out),
            Codec::Int4 => int::mask(int::Width::W4, fmt, value, cx, out),
            Codec::Int8 => int::mask(int::Width::W8, fmt, value, cx, out),
            Codec::Numeric => numeric::mask(fmt, value, cx, out),
            Codec::Inet => inet::mask(false, fmt, value, cx, out),
            Codec::Cidr => inet::mask(true, fmt, value, cx, out),
            Codec::Uuid => uuid::mask(fmt, value, cx, out),
            Codec::Float4 => float::mask(float::Width::F4, fmt, value, cx, out),
            Codec::Float8 => float::mask(float::Width::F8, fmt, value, cx, out),
            Codec::Bool => boolean::mask(fmt, value, cx, out),
            Codec::Date => datetime::mask(datetime::Kind::Date, fmt, value, cx, out),
            Codec::Time => datetime::mask(datetime::Kind::Time, fmt, value, cx, out),
            Codec::TimeTz => datetime::mask(datetime::Kind::TimeTz, fmt, value, cx, out),
            Codec::Timestamp => datetime::mask(datetime::Kind::Timestamp, fmt, value, cx, out),
            Codec::TimestampTz => datetime::mask(datetime::Kind::TimestampTz, fmt, value, cx, out),
            Codec::Interval => interval::mask(fmt, value, cx, out),
            Codec::Array(a) => array::mask(a, fmt, value, cx, out),
            Codec::Composite(attrs) => composite::mask(Some(attrs), fmt, value, cx, out),
            Codec::Record => composite::mask(None, fmt, value, cx, out),
            Codec::Range(sub) => range::mask(sub, fmt, value, cx, out),
            Codec::Multirange(sub) => range::mask_multi(sub, fmt, value, cx, out),
            Codec::Hstore => hstore::mask(fmt, value, cx, out),
            Codec::Other => other(cx),
            Codec::Unknown => text::mask_unknown(fmt, value, cx),
        }
    }

    /// `value` (in format `from`) re-encoded in the other format, as the server would send it;
    /// `None` when it does not decode.  What masking reads and writes, for tests and tools.
    pub fn transcode(&self, from: Format, value: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let ok = match self {
            Codec::Text => {
                out.extend_from_slice(value);
                true
            }
            Codec::Bytea => bytea::transcode(from, value, &mut out),
            Codec::Json | Codec::Jsonb => {
                json::transcode(self == &Codec::Jsonb, from, value, &mut out)
            }
            Codec::Int2 => int::transcode(int::Width::W2, from, value, &mut out),
            Codec::Int4 => int::transcode(int::Width::W4, from, value, &mut out),
            Codec::Int8 => int::transcode(int::Width::W8, from, value, &mut out),
            Codec::Numeric => numeric::transcode(from, value, &mut out),
            Codec::Inet => inet::transcode(false, from, value, &mut out),
            Codec::Cidr => inet::transcode(true, from, value, &mut out),
            Codec::Uuid => uuid::transcode(from, value, &mut out),
            Codec::Float4 => float::transcode(float::Width::F4, from, value, &mut out),
            Codec::Float8 => float::transcode(float::Width::F8, from, value, &mut out),
            Codec::Bool => boolean::transcode(from, value, &mut out),
            Codec::Date => datetime::transcode(datetime::Kind::Date, from, value, &mut out),
            Codec::Time => datetime::transcode(datetime::Kind::Time, from, value, &mut out),
            Codec::TimeTz => datetime::transcode(datetime::Kind::TimeTz, from, value, &mut out),
            Codec::Timestamp => {
                datetime::transcode(datetime::Kind::Timestamp, from, value, &mut out)
            }
            Codec::TimestampTz => {
                datetime::transcode(datetime::Kind::TimestampTz, from, value, &mut out)
            }
            Codec::Interval => interval::transcode(from, value, &mut out),
            Codec::Array(_)
            | Codec::Composite(_)
            | Codec::Record
            | Codec::Range(_)
            | Codec::Multirange(_)
            | Codec::Hstore
            | Codec::Other
            | Codec::Unknown => false,
        };
        ok.then_some(out)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Array(a) => write!(f, "{}[]", a.elem),
            Codec::Range(sub) => write!(f, "range({sub})"),
            Codec::Multirange(sub) => write!(f, "multirange({sub})"),
            Codec::Composite(attrs) => {
                f.write_str("(")?;
                for (i, a) in attrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}", a.codec)?;
                }
                f.write_str(")")
            }
            other => f.write_str(other.name()),
        }
    }
}

/// The entity values nulled because they did not decode as their type count under.
pub fn invalid_value() -> EntityId {
    static ID: std::sync::OnceLock<EntityId> = std::sync::OnceLock::new();
    *ID.get_or_init(|| entity_id("INVALID_VALUE"))
}

/// The entity values nulled because their type cannot be read count under.
pub fn unknown_type() -> EntityId {
    static ID: std::sync::OnceLock<EntityId> = std::sync::OnceLock::new();
    *ID.get_or_init(|| entity_id("UNKNOWN_TYPE"))
}

/// A value that does not decode as its type: NULL, counted.
pub(crate) fn invalid(cx: &mut Cx<'_>) -> Outcome {
    cx.tally.add(invalid_value(), 1);
    Outcome::Null
}

/// Masks a container value (array, composite) one level deeper: `walk` returns whether it
/// changed anything, `None` when the value does not parse (then it is NULL).  Past
/// [`cx::MAX_NESTING`] levels the value is NULL without being read.
pub(crate) fn nested(cx: &mut Cx<'_>, walk: impl FnOnce(&mut Cx<'_>) -> Option<bool>) -> Outcome {
    if cx.depth >= cx::MAX_NESTING {
        return invalid(cx);
    }
    cx.depth += 1;
    let res = walk(cx);
    cx.depth -= 1;
    match res {
        Some(true) => Outcome::Written,
        Some(false) => Outcome::Unchanged,
        None => invalid(cx),
    }
}

/// Appends one binary element or attribute (Int32 length, -1 for NULL, then the bytes) of
/// `value` masked by `codec`; returns its outcome, `None` when the masked value is too long.
pub(crate) fn write_element(
    codec: &Codec,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let outcome = codec.mask(Format::Binary, value, cx, out);
    match outcome {
        Outcome::Unchanged => out.extend_from_slice(value),
        Outcome::Written => {}
        Outcome::Null => {
            out.truncate(at);
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Some(outcome);
        }
    }
    let len = i32::try_from(out.len() - at - 4).ok()?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Some(outcome)
}

/// The big-endian Int32 at `at`, if `b` holds one there.
pub(crate) fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads one field of a composite or range literal in the text format, from `pos`: inside
/// double quotes `""` is a quote, and a backslash takes the next byte anywhere; what the field
/// says (quotes and escapes removed) goes to `field`.  `stop` is asked about every other byte
/// outside quotes: `Some(true)` ends the field there, `Some(false)` takes it, `None` rejects the
/// literal.  Returns the terminator's position and whether any part of the field was quoted (a
/// quoted empty field is an empty string, an unquoted one is absent); `None` when the literal
/// ends first or `stop` rejects it.
pub(crate) fn read_field(
    value: &[u8],
    mut pos: usize,
    field: &mut Vec<u8>,
    stop: impl Fn(u8) -> Option<bool>,
) -> Option<(usize, bool)> {
    let mut in_quotes = false;
    let mut quoted = false;
    loop {
        let c = *value.get(pos)?;
        match c {
            b'\\' => {
                field.push(*value.get(pos + 1)?);
                pos += 2;
                continue;
            }
            b'"' if in_quotes && value.get(pos + 1) == Some(&b'"') => {
                field.push(b'"');
                pos += 2;
                continue;
            }
            b'"' => {
                in_quotes = !in_quotes;
                quoted = true;
                pos += 1;
                continue;
            }
            _ if in_quotes => {}
            _ => {
                if stop(c)? {
                    return Some((pos, quoted));
                }
            }
        }
        field.push(c);
        pos += 1;
    }
}

/// A type without a masked form: kept by a content scan, NULL under a column rule.
fn other(cx: &mut Cx<'_>) -> Outcome {
    match cx.mask.whole() {
        None => Outcome::Unchanged,
        Some(f) => {
            cx.tally.add(f.entity, 1);
            Outcome::Null
        }
    }
}

/// The column rule's finding for a type that a content scan keeps (`None`: keep the value).
/// The finding is counted.
pub(crate) fn rule<'m>(cx: &mut Cx<'m>) -> Option<Finding<'m>> {
    let f = cx.mask.whole()?;
    cx.tally.add(f.entity, 1);
    Some(f)
}

/// What masks `text` (the text form of a value): the whole of it under a column rule, the
/// spans a content scan finds otherwise (sorted, disjoint).  Nothing is counted.
pub(crate) fn findings<'m>(cx: &Cx<'m>, text: &[u8], found: &mut Vec<Finding<'m>>) {
    match cx.mask.whole() {
        Some(f) => found.push(Finding {
            start: 0,
            end: text.len(),
            ..f
        }),
        None => cx.mask.find(text, found),
    }
}
