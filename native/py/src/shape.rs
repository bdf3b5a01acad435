//! `sql_tokens` / `shape_key`: the native scanner and shape key, for tests and tools (the data
//! path computes keys inside `RecvBuffer`, see `verdict`).

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use veilgate_core::shape::{Kind, Shaper};

/// The name pglast's scanner gives a token kind (keywords and identifiers: `WORD`).
fn kind_name(kind: Kind, first: u8) -> String {
    match kind {
        Kind::Word => "WORD".into(),
        Kind::QuotedIdent => "QIDENT".into(),
        Kind::UIdent => "UIDENT".into(),
        Kind::Sconst => "SCONST".into(),
        Kind::Usconst => "USCONST".into(),
        Kind::Bconst => "BCONST".into(),
        Kind::Xconst => "XCONST".into(),
        Kind::Iconst => "ICONST".into(),
        Kind::Fconst => "FCONST".into(),
        Kind::Param => "PARAM".into(),
        Kind::Op => "Op".into(),
        Kind::Typecast => "TYPECAST".into(),
        Kind::DotDot => "DOT_DOT".into(),
        Kind::ColonEquals => "COLON_EQUALS".into(),
        Kind::EqualsGreater => "EQUALS_GREATER".into(),
        Kind::LessEquals => "LESS_EQUALS".into(),
        Kind::GreaterEquals => "GREATER_EQUALS".into(),
        Kind::NotEquals => "NOT_EQUALS".into(),
        Kind::Char => format!("ASCII_{first}"),
        Kind::CComment => "C_COMMENT".into(),
        Kind::SqlComment => "SQL_COMMENT".into(),
        Kind::Nchar => "NCHAR".into(),
    }
}

/// The tokens of `text` as (start, end, kind name), byte offsets, end exclusive; None when the
/// scanner refuses the text (or it is not UTF-8, or holds a NUL).
#[pyfunction]
pub fn sql_tokens(text: &[u8]) -> Option<Vec<(u32, u32, String)>> {
    let mut shaper = Shaper::new();
    let tokens = shaper.tokens_of(text)?;
    Some(
        tokens
            .iter()
            .map(|t| (t.start, t.end, kind_name(t.kind, text[t.start as usize])))
            .collect(),
    )
}

/// The shape key of `text` (None: it has none; see `veilgate_core::shape`).
#[pyfunction]
pub fn shape_key<'py>(py: Python<'py>, text: &[u8]) -> Option<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    Shaper::new()
        .key(text, &mut out)
        .then(|| PyBytes::new(py, &out))
}
