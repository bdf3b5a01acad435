//! [`Masker`]: detectors + per-entity operators, and [`ColumnOperator`]: one operator for a
//! whole value.  Both implement [`ValueMask`], the interface the row rewriters call per value.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use super::entity::Builtin;
use super::fold::{fold, Folded};
use super::json;
use super::operator::Operator;
use super::scan::{resolve_overlaps, BuiltinScanner, DictionaryScanner, RegexScanner, Span};
use super::value::{entity_id, EntityId, Finding, Outcome, Tally, ValueMask};

/// Span buffers larger than this (a value with that many findings) are not kept per thread.
const MAX_KEPT_SPANS: usize = 4096;

/// What a [`Masker`] detects and how it masks each entity.
#[derive(Debug, Clone, Default)]
pub struct MaskerConfig {
    /// Built-in entities to detect (names from [`super::BUILTIN_ENTITIES`]); `None` = all.
    pub entities: Option<Vec<String>>,
    /// Operator per entity name (built-in or custom; a built-in that is not detected is
    /// ignored); others use `default_operator`.
    pub operators: Vec<(String, Operator)>,
    /// The operator for entities without their own (default: replace with `<ENTITY>`).
    pub default_operator: Operator,
    /// `(entity, regex)`: custom entities found by regex (Rust `regex` syntax, Unicode).
    pub custom_patterns: Vec<(String, String)>,
    /// `(entity, terms)`: custom entities found as whole words, ASCII case-insensitively.
    pub dictionaries: Vec<(String, Vec<String>)>,
}

/// Why a [`MaskerConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskerError {
    UnknownEntity(String),
    BadPattern { entity: String, message: String },
    BadDictionary { message: String },
}

impl fmt::Display for MaskerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskerError::UnknownEntity(name) => write!(f, "unknown entity {name:?}"),
            MaskerError::BadPattern { entity, message } => {
                write!(f, "bad pattern for entity {entity:?}: {message}")
            }
            MaskerError::BadDictionary { message } => write!(f, "bad dictionary: {message}"),
        }
    }
}

impl std::error::Error for MaskerError {}

/// One entity a masker knows: its id, name, operator and `<NAME>` tag.
#[derive(Debug, Clone)]
struct EntityRule {
    id: EntityId,
    name: String,
    operator: Operator,
    tag: Vec<u8>,
}

/// Finds sensitive spans in a value and masks each with its entity's operator.
#[derive(Debug)]
pub struct Masker {
    builtin: Arc<BuiltinScanner>,
    regexes: Option<RegexScanner>,
    dictionary: Option<DictionaryScanner>,
    rules: Vec<EntityRule>,
    /// Entity id -> index into `rules` (`u16::MAX`: not ours).
    slot: Vec<u16>,
}

impl Masker {
    /// All built-in entities, each replaced by its tag.
    pub fn builtin() -> Masker {
        Masker::new(MaskerConfig::default()).expect("the default configuration is valid")
    }

    pub fn new(config: MaskerConfig) -> Result<Masker, MaskerError> {
        let builtins: Vec<Builtin> = match &config.entities {
            None => Builtin::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| Builtin::from_name(n).ok_or_else(|| MaskerError::UnknownEntity(n.clone())))
                .collect::<Result<_, _>>()?,
        };
        let mut names: Vec<String> = Builtin::ALL
            .iter()
            .filter(|b| builtins.contains(b))
            .map(|b| b.name().to_owned())
            .collect();
        let custom = config.custom_patterns.iter().map(|(e, _)| e);
        let dict = config.dictionaries.iter().map(|(e, _)| e);
        for name in custom.chain(dict) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        // An operator for a built-in left out of `entities` is accepted (one policy may pair a
        // full operator table with a subset of detectors); any other unknown name is a typo.
        for (name, _) in &config.operators {
            if !names.contains(name) && Builtin::from_name(name).is_none() {
                return Err(MaskerError::UnknownEntity(name.clone()));
            }
        }
        let rules: Vec<EntityRule> = names
            .into_iter()
            .map(|name| {
                let operator = config
                    .operators
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == name)
                    .map_or_else(|| config.default_operator.clone(), |(_, op)| op.clone());
                EntityRule {
                    id: entity_id(&name),
                    tag: format!("<{name}>").into_bytes(),
                    name,
                    operator,
                }
            })
            .collect();
        let mut slot = vec![
            u16::MAX;
            rules
                .iter()
                .map(|r| usize::from(r.id) + 1)
                .max()
                .unwrap_or(0)
        ];
        for (i, r) in rules.iter().enumerate() {
            slot[usize::from(r.id)] = u16::try_from(i).expect("fewer than 65535 entities");
        }

        let patterns: Vec<(EntityId, String)> = config
            .custom_patterns
            .iter()
            .map(|(e, p)| (entity_id(e), p.clone()))
            .collect();
        let regexes = if patterns.is_empty() {
            None
        } else {
            Some(
                RegexScanner::new(&patterns).map_err(|(i, message)| MaskerError::BadPattern {
                    entity: config.custom_patterns[i].0.clone(),
                    message,
                })?,
            )
        };
        let terms: Vec<(EntityId, String)> = config
            .dictionaries
            .iter()
            .flat_map(|(e, ts)| {
                let id = entity_id(e);
                ts.iter().map(move |t| (id, t.clone()))
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let dictionary = if terms.is_empty() {
            None
        } else {
            Some(
                DictionaryScanner::new(&terms)
                    .map_err(|message| MaskerError::BadDictionary { message })?,
            )
        };
        Ok(Masker {
            builtin: BuiltinScanner::shared(&builtins),
            regexes,
            dictionary,
            rules,
            slot,
        })
    }

    /// Names of the entities this masker detects (built-ins first, then custom ones).
    pub fn entities(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name.clone()).collect()
    }

    /// The sensitive spans of `text`: sorted, never overlapping (the longest wins a clash).
    pub fn scan(&self, text: &[u8]) -> Vec<Span> {
        let mut spans = Vec::new();
        self.scan_folding(text, &mut spans);
        spans
    }

    /// [`Masker::scan`] into `spans` (cleared first), and the folded copy the built-in
    /// detectors read when `text` holds full-width forms (see [`super::fold`]); spans are
    /// offsets of `text` either way.
    fn scan_folding(&self, text: &[u8], spans: &mut Vec<Span>) -> Option<Folded> {
        spans.clear();
        let folded = if self.builtin.is_empty() {
            None
        } else {
            fold(text)
        };
        match &folded {
            None => self.builtin.scan(text, |s| spans.push(s)),
            Some(f) => self.builtin.scan(&f.text, |s| {
                spans.push(Span {
                    start: f.original(s.start),
                    end: f.original(s.end),
                    entity: s.entity,
                });
            }),
        }
        if self.regexes.is_none() && self.dictionary.is_none() {
            return folded; // already ordered and disjoint
        }
        if let Some(r) = &self.regexes {
            r.scan(text, |s| spans.push(s));
        }
        if let Some(d) = &self.dictionary {
            d.scan(text, |s| spans.push(s));
        }
        resolve_overlaps(spans);
        folded
    }

    /// The name of an entity id found by [`Masker::scan`] (`"?"` if it is not one of ours).
    pub fn name(&self, id: EntityId) -> &str {
        match self.slot.get(usize::from(id)) {
            Some(&i) if i != u16::MAX => &self.rules[usize::from(i)].name,
            _ => "?",
        }
    }

    fn rule(&self, id: EntityId) -> &EntityRule {
        &self.rules[usize::from(self.slot[usize::from(id)])]
    }
}

impl ValueMask for Masker {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        // Text that is a JSON object or array (JSON kept in a text column, a JSON line) is
        // masked leaf by leaf so that it stays JSON; anything else is masked as text.
        if json::looks_like_container(value) {
            let at = out.len();
            let mut local = Tally::new();
            let leaves = json::Leaves {
                default: Some(&TextOnly(self)),
                paths: &[],
            };
            if let Ok(outcome) = json::mask_container(value, &leaves, out, &mut local) {
                tally.merge(&local);
                return outcome;
            }
            out.truncate(at);
        }
        self.mask_text(value, out, tally)
    }

    fn whole(&self) -> Option<Finding<'_>> {
        None
    }

    /// JSON-aware: string leaves are decoded, scanned and re-encoded, numbers stay numbers, the
    /// structure and keys are kept (see [`super::json`]).
    fn mask_json(&self, text: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        let leaves = json::Leaves {
            default: Some(&TextOnly(self)),
            paths: &[],
        };
        json::mask_document(text, &leaves, out, tally)
    }

    fn find<'m>(&'m self, text: &[u8], found: &mut Vec<Finding<'m>>) {
        for s in self.scan(text) {
            let rule = self.rule(s.entity);
            found.push(Finding {
                start: s.start,
                end: s.end,
                entity: s.entity,
                operator: &rule.operator,
                tag: &rule.tag,
            });
        }
    }
}

/// A [`Masker`] that masks leaves as text (a JSON string leaf holding `{...}` is text).
struct TextOnly<'a>(&'a Masker);

impl ValueMask for TextOnly<'_> {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        self.0.mask_text(value, out, tally)
    }
}

impl Masker {
    /// Masks `value` as text: every span found, with its entity's operator.
    fn mask_text(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        thread_local! {
            /// The spans of the value being masked: one buffer per thread, so that masking a
            /// value allocates nothing but its output.
            static SPANS: Cell<Vec<Span>> = const { Cell::new(Vec::new()) };
        }
        // Taken, not borrowed: a nested call (none today) would start from an empty buffer.
        let mut spans = SPANS.take();
        let outcome = self.mask_spans(value, &mut spans, out, tally);
        if spans.capacity() <= MAX_KEPT_SPANS {
            SPANS.set(spans);
        }
        outcome
    }

    fn mask_spans(
        &self,
        value: &[u8],
        spans: &mut Vec<Span>,
        out: &mut Vec<u8>,
        tally: &mut Tally,
    ) -> Outcome {
        let folded = self.scan_folding(value, spans);
        if spans.is_empty() {
            return Outcome::Unchanged;
        }
        let mark = out.len();
        out.reserve(value.len() + 8 * spans.len());
        let mut pos = 0;
        for s in spans.iter() {
            out.extend_from_slice(&value[pos..s.start]);
            let rule = self.rule(s.entity);
            tally.add(s.entity, 1);
            // A span written in full-width forms is masked as its ASCII form: `partial` and
            // `hash` keep non-ASCII bytes, which would leave the number readable.
            let span = match &folded {
                Some(f) => {
                    let (a, b) = (f.folded(s.start), f.folded(s.end));
                    if f.changed(a, b) {
                        &f.text[a..b]
                    } else {
                        &value[s.start..s.end]
                    }
                }
                None => &value[s.start..s.end],
            };
            if !rule.operator.apply(span, &rule.tag, out) {
                out.truncate(mark);
                return Outcome::Null;
            }
            pos = s.end;
        }
        out.extend_from_slice(&value[pos..]);
        Outcome::Written
    }
}

/// One operator applied to a whole value (a column rule), counted under one entity name.
#[derive(Debug, Clone)]
pub struct ColumnOperator {
    operator: Operator,
    entity: EntityId,
    tag: Vec<u8>,
}

impl ColumnOperator {
    /// `entity` is the name the masked values count under (`"COLUMN"` by convention) and the
    /// tag `replace` writes when it has no constant (`<COLUMN>`).
    pub fn new(operator: Operator, entity: &str) -> ColumnOperator {
        ColumnOperator {
            operator,
            entity: entity_id(entity),
            tag: format!("<{entity}>").into_bytes(),
        }
    }

    pub fn operator(&self) -> &Operator {
        &self.operator
    }
}

impl ValueMask for ColumnOperator {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        tally.add(self.entity, 1);
        let mark = out.len();
        if self.operator.apply(value, &self.tag, out) {
            Outcome::Written
        } else {
            out.truncate(mark);
            Outcome::Null
        }
    }

    fn whole(&self) -> Option<Finding<'_>> {
        Some(Finding {
            start: 0,
            end: 0,
            entity: self.entity,
            operator: &self.operator,
            tag: &self.tag,
        })
    }
}
