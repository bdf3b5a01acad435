//! The contract between value maskers (detectors + operators, [`crate::mask`]) and the row
//! rewriters ([`crate::rewrite`]): a rewriter hands each column value to a [`ValueMask`] and
//! copies, replaces or NULLs it according to the [`Outcome`].

use std::sync::{Mutex, OnceLock};

use super::operator::Operator;

/// Index of an entity name in the process-wide registry ([`entity_id`], [`entity_name`]).
pub type EntityId = u16;

/// What a [`ValueMask`] did with one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing sensitive: the caller forwards the original bytes (nothing was written).
    Unchanged,
    /// The replacement was appended to `out` (starting at `out.len()` at the call).
    Written,
    /// The value must become SQL NULL (nothing was written).
    Null,
}

/// Counts of masked values per entity (indexed by [`EntityId`]); never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    counts: Vec<u64>,
}

impl Tally {
    pub fn new() -> Self {
        Tally::default()
    }

    #[inline]
    pub fn add(&mut self, entity: EntityId, n: u64) {
        let i = usize::from(entity);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
    }

    /// Counts indexed by entity id (entities never seen may be missing or 0).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn clear(&mut self) {
        self.counts.clear();
    }

    pub fn merge(&mut self, other: &Tally) {
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add(id_of(i), n);
            }
        }
    }

    /// `(entity name, count)` for every non-zero count.
    pub fn named(&self) -> Vec<(String, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (entity_name(id_of(i)), n))
            .collect()
    }
}

/// Masks whole column values.  Implemented by detector maskers (scan the value, rewrite the
/// spans found) and by column operators (rewrite the whole value).
///
/// Typed values (numbers, addresses, dates... see [`crate::codec`]) are not masked as text:
/// their codec asks [`ValueMask::whole`] or [`ValueMask::find`] *what* to mask and with which
/// [`Operator`], and applies the operator in the value's own domain so that the result stays
/// a valid value of its type.
pub trait ValueMask: Send + Sync {
    /// Masks one value: the raw bytes of one column (text format, or a text-like binary value),
    /// in the session's client encoding (ASCII-compatible).  Counts what it masked in `tally`.
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome;

    /// The operator applied to every whole value (a column rule), or `None` for a content
    /// scanner (then [`ValueMask::find`] says what to mask).  The default, for masks that know
    /// nothing of typed values, nulls them: fail closed.
    fn whole(&self) -> Option<Finding<'_>> {
        Some(Finding {
            start: 0,
            end: 0,
            entity: *NULLED.get_or_init(|| entity_id("MASKED")),
            operator: &NULL_OPERATOR,
            tag: b"<MASKED>",
        })
    }

    /// The spans a content scanner finds in `text` (the text form of a typed value), sorted and
    /// disjoint, each with the operator of its entity.  Counts nothing.  Only called when
    /// [`ValueMask::whole`] is `None`.
    fn find<'m>(&'m self, _text: &[u8], _found: &mut Vec<Finding<'m>>) {}

    /// Masks the text of a json / jsonb value.  The default masks it as text; the json codec
    /// checks that the result is still JSON (and redacts the whole value if it is not).  This
    /// is where a JSON-aware masker (mask string leaves, keep the structure) plugs in.
    fn mask_json(&self, text: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        self.mask_value(text, out, tally)
    }
}

/// Something a [`ValueMask`] masks in a typed value: a span of its text form (the whole value
/// for a column rule), the entity it counts under and the operator to apply.
#[derive(Debug, Clone, Copy)]
pub struct Finding<'m> {
    pub start: usize,
    pub end: usize,
    pub entity: EntityId,
    pub operator: &'m Operator,
    /// The entity's `<NAME>` tag (what `replace` without a constant writes into text).
    pub tag: &'m [u8],
}

static NULL_OPERATOR: Operator = Operator::Null;
static NULLED: OnceLock<EntityId> = OnceLock::new();

/// A registry or tally index as an id: indices come from the registry, which never grows past
/// `EntityId::MAX` entries (see [`entity_id`]).
fn id_of(i: usize) -> EntityId {
    EntityId::try_from(i).expect("entity ids fit in EntityId")
}

fn registry() -> &'static Mutex<Vec<String>> {
    static REGISTRY: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

/// The id of an entity name (registered on first use; the same name always gets the same id).
pub fn entity_id(name: &str) -> EntityId {
    let mut names = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = names.iter().position(|n| n == name) {
        return id_of(i);
    }
    assert!(
        names.len() < usize::from(EntityId::MAX),
        "too many entity names"
    );
    names.push(name.to_owned());
    id_of(names.len() - 1)
}

/// The name registered for `id` (`"?"` for an id never registered).
pub fn entity_name(id: EntityId) -> String {
    let names = registry().lock().unwrap_or_else(|e| e.into_inner());
    names
        .get(usize::from(id))
        .cloned()
        .unwrap_or_else(|| "?".to_owned())
}
