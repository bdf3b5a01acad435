//! Span finders: the built-in detectors ([`BuiltinScanner`]), custom regexes ([`RegexScanner`])
//! and dictionaries ([`DictionaryScanner`]), and the overlap resolution between them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::hybrid;
use regex_automata::meta::Regex;
use regex_automata::util::pool::Pool;
use regex_automata::{Anchored, Input, Match, PatternID};

use super::boundary::{is_word_byte, word_bounded};
use super::candidates::{self, Kind, LAZY_DFA_CACHE};
use super::entity::Builtin;
use super::prefilter::{shape_ok, Families, Starts};
use super::validate::email;
use super::value::EntityId;

/// A sensitive span `[start, end)` of a value (byte offsets) and the entity found there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub entity: EntityId,
}

impl Span {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The built-in detectors for a set of entities: one combined automaton plus validation, run
/// only where [`super::prefilter`] says a candidate may start.
#[derive(Debug)]
pub struct BuiltinScanner {
    regex: Regex,
    /// The same alternatives without EMAIL (the last one, so pattern ids agree with `regex`):
    /// an email's local part stays alive over long runs of digits, dots and dashes, so
    /// anchored searches at the openings the prefilter finds would each run to the end of the
    /// run.  Emails are searched on their own, once per `@` (see [`Starts::email_at`]).
    openers: hybrid::dfa::DFA,
    /// Search caches for `openers`, one per thread (taken once per value).
    opener_caches: CachePool,
    families: Families,
    kinds: Vec<Kind>,
    ids: Vec<EntityId>,
}

impl BuiltinScanner {
    /// The scanner for `entities`, compiled once per distinct set and shared.
    pub fn shared(entities: &[Builtin]) -> Arc<BuiltinScanner> {
        static CACHE: OnceLock<Mutex<HashMap<u8, Arc<BuiltinScanner>>>> = OnceLock::new();
        let key = Builtin::ALL
            .iter()
            .enumerate()
            .filter(|(_, b)| entities.contains(b))
            .fold(0u8, |k, (i, _)| k | (1 << i));
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            cache
                .entry(key)
                .or_insert_with(|| Arc::new(BuiltinScanner::new(entities))),
        )
    }

    fn new(entities: &[Builtin]) -> BuiltinScanner {
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| entities.contains(&k.entity()))
            .collect();
        let openers =
            candidates::build_forward(kinds.strip_suffix(&[Kind::Email]).unwrap_or(&kinds));
        BuiltinScanner {
            regex: candidates::build(&kinds),
            openers: openers.clone(),
            opener_caches: Pool::new(Box::new(move || openers.create_cache())),
            families: Families::new(&kinds),
            ids: kinds.iter().map(|k| k.entity().id()).collect(),
            kinds,
        }
    }

    /// True if no built-in entity is detected.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Calls `emit` for every validated span, in order; spans never overlap.
    ///
    /// After a rejected candidate the scan resumes one byte after its start, or after the digit
    /// run it starts with (a valid value may start inside the candidate).  Each search is charged the bytes it matched over; once a value has
    /// cost [`RESCAN_BUDGET_FACTOR`] times its length, rejected candidates are skipped whole, so
    /// adversarial input (long runs of near-candidates) stays linear.
    pub fn scan(&self, text: &[u8], emit: impl FnMut(Span)) {
        self.scan_prefiltered(text, rescan_budget(text), emit);
    }

    fn scan_prefiltered(&self, text: &[u8], budget: usize, emit: impl FnMut(Span)) {
        let mut starts = Starts::new(&self.families, text);
        // Short values (names, codes, statuses) where nothing can start: settled by one
        // block's masks, before the other streams or a search cache are set up.
        if text.len() <= SHORT_VALUE && starts.nothing_opens() {
            return;
        }
        let mut cache = self.opener_caches.get();
        self.scan_with(text, budget, emit, |at| {
            self.find_from(text, at, &mut starts, &mut cache)
        });
    }

    /// [`BuiltinScanner::scan`] with an unlimited rescan budget (for tests comparing it with
    /// [`BuiltinScanner::scan_unfiltered`]: they propose different rejected candidates, so
    /// their budgets would run out at different places).
    #[cfg(test)]
    pub fn scan_unbudgeted(&self, text: &[u8], emit: impl FnMut(Span)) {
        self.scan_prefiltered(text, usize::MAX, emit);
    }

    /// The leftmost candidate at or after `at`: the anchored match at the first prefilter
    /// position that has one.  Equal to an unanchored leftmost-first search from `at` (no match
    /// starts at a position the prefilter skips, or at one whose anchored search failed), except
    /// that candidates glued to a word on their left, which every validator but email's and
    /// keyword's rejects, are never proposed.
    fn find_from(
        &self,
        text: &[u8],
        mut at: usize,
        starts: &mut Starts<'_>,
        cache: &mut hybrid::dfa::Cache,
    ) -> Option<Match> {
        loop {
            let p = starts.next(at)?;
            // Leftmost-first: at one start, EMAIL (the last alternative) only wins when no
            // other alternative matches there.
            let input = Input::new(text).range(p..).anchored(Anchored::Yes);
            match self.openers.try_search_fwd(cache, &input) {
                Ok(Some(h)) => return Some(Match::new(h.pattern(), p..h.offset())),
                Ok(None) => {}
                // The lazy DFA gave up (its cache thrashed): the meta engine falls back to an
                // NFA engine.  Openers' pattern ids are the combined automaton's.
                Err(_) => {
                    let input = input.anchored(Anchored::Yes);
                    if let Some(m) = self.regex.search(&input) {
                        if self.kinds[m.pattern().as_usize()] != Kind::Email {
                            return Some(m);
                        }
                    }
                }
            }
            if starts.email_at(p) {
                let email = PatternID::new_unchecked(self.kinds.len() - 1);
                let input = Input::new(text)
                    .range(p..)
                    .anchored(Anchored::Pattern(email));
                if let Some(m) = self.regex.search(&input) {
                    return Some(m);
                }
                starts.missed(p);
            }
            at = p + 1;
        }
    }

    /// [`BuiltinScanner::scan`] without the prefilter: one unanchored search per candidate (the
    /// reference the prefiltered scan is tested against), with an unlimited rescan budget.
    #[cfg(test)]
    pub fn scan_unfiltered(&self, text: &[u8], emit: impl FnMut(Span)) {
        self.scan_with(text, usize::MAX, emit, |at| {
            self.regex.search(&Input::new(text).range(at..))
        });
    }

    /// The scan loop over candidates from `find` (the leftmost candidate at or after a position).
    fn scan_with(
        &self,
        text: &[u8],
        mut budget: usize,
        mut emit: impl FnMut(Span),
        mut find: impl FnMut(usize) -> Option<Match>,
    ) {
        if self.kinds.is_empty() {
            return;
        }
        let mut at = 0;
        let mut local_run = LocalRun::default();
        while at < text.len() {
            let Some(m) = find(at) else {
                return;
            };
            let (start, end) = (m.start(), m.end());
            budget = budget.saturating_sub(SEARCH_COST + end - at);
            let pid = m.pattern().as_usize();
            let found = match self.kinds[pid].validate(text, (start, end)) {
                Some(r) => Some(self.longer_email(text, start, (r, pid), &mut local_run)),
                None if budget > 0 => self.retry_at(text, start, pid, &mut budget, &mut local_run),
                None => None,
            };
            match found {
                // A validator may widen a span to the left (an email's non-ASCII local part),
                // never over a span already emitted.
                Some(((s, e), pid)) if e > s.max(at) => {
                    emit(Span {
                        start: s.max(at),
                        end: e,
                        entity: self.ids[pid],
                    });
                    at = e;
                }
                _ if budget > 0 => at = resume_after_rejection(text, start),
                _ => at = end.max(start + 1),
            }
        }
    }

    /// EMAIL has the lowest priority (see [`Kind::ALL`]): when a valid candidate is followed by
    /// an address character, an email starting at the same byte may be the longer value
    /// (`4111111111111111@example.com`).
    fn longer_email(
        &self,
        text: &[u8],
        start: usize,
        found: Found,
        local_run: &mut LocalRun,
    ) -> Found {
        let ((_, e), pid) = found;
        let email = self.kinds.len() - 1;
        let next = text.get(e).copied().unwrap_or(b' ');
        if self.kinds[pid] == Kind::Email
            || self.kinds[email] != Kind::Email
            || !(next == b'@' || email::is_local_part_byte(next))
            || !local_run.ends_at_at(text, start)
        {
            return found;
        }
        match self.anchored(text, start, email) {
            Some(r) if r.1 > e => (r, email),
            _ => found,
        }
    }

    /// A valid match of alternative `pid` anchored at `start`.
    fn anchored(&self, text: &[u8], start: usize, pid: usize) -> Option<(usize, usize)> {
        let input = Input::new(text)
            .range(start..)
            .anchored(Anchored::Pattern(PatternID::new_unchecked(pid)));
        let m = self.regex.search(&input)?;
        self.kinds[pid].validate(text, (m.start(), m.end()))
    }

    /// The first alternative failed validation at `start`: the longest valid match of any other
    /// alternative anchored at the same byte.
    fn retry_at(
        &self,
        text: &[u8],
        start: usize,
        failed: usize,
        budget: &mut usize,
        local_run: &mut LocalRun,
    ) -> Option<Found> {
        let mut best: Option<Found> = None;
        // Only a keyword (`DB_PASSWORD=`) may start right after a letter or digit; every other
        // alternative needs a boundary there (an email is widened to its word start anyway).
        let mid_word = start > 0 && is_word_byte(text[start - 1]);
        for (pid, kind) in self.kinds.iter().enumerate() {
            if pid == failed || !kind.may_start(text[start]) || !shape_ok(*kind, text, start) {
                continue;
            }
            if mid_word && *kind != Kind::KeywordSecret {
                continue;
            }
            // An anchored email search runs to the end of the local-part run: only worth it
            // when that run ends at an `@`.
            if *kind == Kind::Email && !local_run.ends_at_at(text, start) {
                continue;
            }
            *budget = budget.saturating_sub(SEARCH_COST);
            if let Some(r) = self.anchored(text, start, pid) {
                *budget = budget.saturating_sub(r.1 - start);
                if best.is_none_or(|((s, e), _)| r.1 - r.0 > e - s) {
                    best = Some((r, pid));
                }
            }
        }
        best
    }
}

/// The rescan budget of a value (see [`BuiltinScanner::scan`]).
fn rescan_budget(text: &[u8]) -> usize {
    text.len().saturating_mul(RESCAN_BUDGET_FACTOR) + RESCAN_BUDGET_MIN
}

/// Values up to this many bytes (one classified block) are first checked by
/// [`Starts::nothing_opens`].
const SHORT_VALUE: usize = 64;

/// Per-thread caches of a lazy DFA.
type CachePool = Pool<hybrid::dfa::Cache, Box<dyn Fn() -> hybrid::dfa::Cache + Send + Sync>>;

/// Where to search next after a candidate at `start` was rejected (with no other alternative
/// valid there): one byte on, or past the whole digit run `start` begins.  Nothing valid starts
/// inside a digit run: every alternative that can start with a digit needs a non-word byte
/// before it.
fn resume_after_rejection(text: &[u8], start: usize) -> usize {
    let digits = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    start + digits.max(1)
}

/// Where the run of email local-part bytes containing a position ends (cached: the scan only
/// moves forward, so finding run ends costs one pass over the value in total).
#[derive(Default)]
struct LocalRun {
    end: usize,
}

impl LocalRun {
    /// True if the local-part run from `start` is followed by `@`.
    fn ends_at_at(&mut self, text: &[u8], start: usize) -> bool {
        if start >= self.end {
            self.end = start
                + text[start..]
                    .iter()
                    .position(|&b| !email::is_local_part_byte(b))
                    .unwrap_or(text.len() - start);
        }
        text.get(self.end) == Some(&b'@')
    }
}

/// A validated span and the alternative (pattern id) that found it.
type Found = ((usize, usize), usize);

/// Bytes a value may be rescanned over, as a multiple of its length (plus a floor), before
/// rejected candidates are skipped whole instead of retried one byte later.
pub const RESCAN_BUDGET_FACTOR: usize = 8;
pub const RESCAN_BUDGET_MIN: usize = 4096;
/// What one search costs against the budget, beyond the bytes it matched over.
const SEARCH_COST: usize = 32;

/// User regexes, each under an entity name, as one multi-pattern automaton.
#[derive(Debug)]
pub struct RegexScanner {
    regex: Regex,
    ids: Vec<EntityId>,
}

impl RegexScanner {
    /// Compiles `(entity id, pattern)` pairs; the error names the first pattern that failed.
    pub fn new(patterns: &[(EntityId, String)]) -> Result<RegexScanner, (usize, String)> {
        let texts: Vec<&str> = patterns.iter().map(|(_, p)| p.as_str()).collect();
        // Compile one by one first so a syntax error points at its pattern.
        for (i, p) in texts.iter().enumerate() {
            Regex::new(p).map_err(|e| {
                let detail = e
                    .syntax_error()
                    .map_or_else(|| e.to_string(), ToString::to_string);
                (i, detail)
            })?;
        }
        let regex = Regex::builder()
            .configure(
                Regex::config()
                    .hybrid_cache_capacity(LAZY_DFA_CACHE)
                    .nfa_size_limit(Some(16 << 20)),
            )
            .build_many(&texts)
            .map_err(|e| (0, e.to_string()))?;
        Ok(RegexScanner {
            regex,
            ids: patterns.iter().map(|&(id, _)| id).collect(),
        })
    }

    pub fn scan(&self, text: &[u8], mut emit: impl FnMut(Span)) {
        for m in self.regex.find_iter(text) {
            if m.start() < m.end() {
                emit(Span {
                    start: m.start(),
                    end: m.end(),
                    entity: self.ids[m.pattern().as_usize()],
                });
            }
        }
    }
}

/// Dictionary terms: whole words, ASCII case-insensitive, one Aho-Corasick automaton.
#[derive(Debug)]
pub struct DictionaryScanner {
    automaton: AhoCorasick,
    ids: Vec<EntityId>,
}

impl DictionaryScanner {
    /// `(entity id, term)` pairs; empty terms are ignored.
    pub fn new(terms: &[(EntityId, String)]) -> Result<DictionaryScanner, String> {
        let terms: Vec<&(EntityId, String)> = terms.iter().filter(|(_, t)| !t.is_empty()).collect();
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(terms.iter().map(|(_, t)| t.as_bytes()))
            .map_err(|e| e.to_string())?;
        Ok(DictionaryScanner {
            automaton,
            ids: terms.iter().map(|&&(id, _)| id).collect(),
        })
    }

    /// Every whole-word occurrence (they may overlap; [`resolve_overlaps`] picks among them).
    pub fn scan(&self, text: &[u8], mut emit: impl FnMut(Span)) {
        for m in self.automaton.find_overlapping_iter(text) {
            if word_bounded(text, m.start(), m.end()) {
                emit(Span {
                    start: m.start(),
                    end: m.end(),
                    entity: self.ids[m.pattern().as_usize()],
                });
            }
        }
    }
}

/// Keeps a set of non-overlapping spans: longer spans win, then earlier ones, then the earlier
/// source (built-in spans are pushed first).  Sorts the result by start.
pub fn resolve_overlaps(spans: &mut Vec<Span>) {
    // Stable sort: among equal (length, start), the earlier source stays first.
    spans.sort_by(|a, b| b.len().cmp(&a.len()).then(a.start.cmp(&b.start)));
    let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
    for &s in spans.iter() {
        let i = kept.partition_point(|k| k.start < s.start);
        let clashes_before = i > 0 && kept[i - 1].end > s.start;
        let clashes_after = kept.get(i).is_some_and(|k| k.start < s.end);
        if !clashes_before && !clashes_after {
            kept.insert(i, s);
        }
    }
    *spans = kept;
}
