//! The rule set's literal prefilter: most of the CRS's regular expressions cannot match a value
//! that lacks one of a few literals (`union`, `<script`, `/etc/`). Each linear-time pattern's
//! required literals are worked out from its syntax once, when the rule set is compiled; one
//! Aho-Corasick automaton holds every pattern's literals. A request's value is scanned once
//! (per transformed form) for all of them, and a rule runs its regex only on values where one of
//! its literals turned up. Nothing changes what matches: a pattern without a usable literal set
//! always runs.
//!
//! Literals are compared without regard to ASCII case (a superset of what a case-sensitive
//! pattern matches, which a prefilter may be), and cut to [`LITERAL_BYTES`]: a match that
//! contains a literal contains its prefix.

use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex_automata::util::syntax;
use regex_syntax::hir::{Class, Hir, HirKind};

/// Literals longer than this are cut: the automaton stays small and a prefix is as telling.
const LITERAL_BYTES: usize = 6;
/// The most literals one set may hold (the CRS's command lists are long alternations).
const SET_LIMIT: usize = 2048;
/// The most literals a cross product of pieces may make (they grow fast).
const PRODUCT_LIMIT: usize = 256;
/// A class with more members than this is not spelled out.
const CLASS_LIMIT: usize = 8;

/// A finite set of byte strings, lower case, each at most [`LITERAL_BYTES`] long unless exact.
type Set = BTreeSet<Vec<u8>>;

/// What a piece of a pattern tells: every string it matches (when there are few), and a set
/// of which every match contains one.
struct Facts {
    exact: Option<Set>,
    required: Option<Set>,
}

/// The literals of which every match of `pattern` (a PCRE pattern as [`super::operators`]
/// compiles it) contains one, when the set is worth scanning for; `None` otherwise.
pub fn required_literals(pattern: &str, syntax: &syntax::Config) -> Option<Vec<Vec<u8>>> {
    let hir = syntax::parse_with(pattern, syntax).ok()?;
    let facts = facts(&hir);
    let set = facts.required.or(facts.exact.filter(|exact| !exact.contains(&Vec::new())))?;
    let set: Set = set
        .into_iter()
        .map(|mut literal| {
            literal.truncate(LITERAL_BYTES);
            literal
        })
        .collect();
    worth_scanning(&set).then(|| set.into_iter().collect())
}

/// Whether a set rules out enough values: no empty literal, and no single letter, digit or
/// space (found nearly everywhere, each a match the scan would report).
fn worth_scanning(set: &Set) -> bool {
    !set.is_empty()
        && set.len() <= SET_LIMIT
        && set.iter().all(|literal| match literal.as_slice() {
            [] => false,
            [byte] => !byte.is_ascii_alphanumeric() && *byte != b' ',
            _ => true,
        })
}

/// How telling a required set is: its least telling literal (longer ones are rarer; a single
/// letter, digit or space tells nothing), then fewer literals.
fn quality(set: &Set) -> (usize, std::cmp::Reverse<usize>) {
    let telling = |literal: &Vec<u8>| match literal.as_slice() {
        [byte] if byte.is_ascii_alphanumeric() || *byte == b' ' => 0,
        literal => literal.len().min(LITERAL_BYTES),
    };
    (set.iter().map(telling).min().unwrap_or(0), std::cmp::Reverse(set.len()))
}

fn better(current: Option<Set>, candidate: Option<Set>) -> Option<Set> {
    match (current, candidate) {
        (None, candidate) => candidate,
        (current, None) => current,
        (Some(current), Some(candidate)) => {
            if quality(&candidate) > quality(&current) {
                Some(candidate)
            } else {
                Some(current)
            }
        }
    }
}

fn single(literal: Vec<u8>) -> Set {
    Set::from([literal])
}

/// Every concatenation of one string from `left` and one from `right`, when there are few.
fn product(left: &Set, right: &Set) -> Option<Set> {
    if left.len().saturating_mul(right.len()) > PRODUCT_LIMIT {
        return None;
    }
    let mut out = Set::new();
    for a in left {
        for b in right {
            let mut joined = a.clone();
            joined.extend_from_slice(b);
            out.insert(joined);
        }
    }
    Some(out)
}

fn union(sets: impl IntoIterator<Item = Option<Set>>) -> Option<Set> {
    let mut out = Set::new();
    for set in sets {
        out.extend(set?);
        if out.len() > SET_LIMIT {
            return None;
        }
    }
    Some(out)
}

/// A required set from an exact one: only when no member is empty (an empty match requires
/// nothing).
fn as_required(exact: &Option<Set>) -> Option<Set> {
    exact.as_ref().filter(|set| !set.contains(&Vec::new())).cloned()
}

fn facts(hir: &Hir) -> Facts {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Facts { exact: Some(single(Vec::new())), required: None },
        HirKind::Literal(literal) => {
            let exact = single(literal.0.to_ascii_lowercase());
            Facts { required: Some(exact.clone()), exact: Some(exact) }
        }
        HirKind::Class(class) => {
            let exact = class_members(class);
            Facts { required: exact.clone(), exact }
        }
        HirKind::Capture(capture) => facts(&capture.sub),
        HirKind::Repetition(repetition) => {
            let inner = facts(&repetition.sub);
            if repetition.min == 0 {
                let exact = match (repetition.max, inner.exact) {
                    (Some(1), Some(mut exact)) => {
                        exact.insert(Vec::new());
                        Some(exact)
                    }
                    _ => None,
                };
                return Facts { exact, required: None };
            }
            let required = better(inner.required.clone(), as_required(&inner.exact));
            let exact = match (repetition.max, &inner.exact) {
                (Some(max), Some(exact)) if max == repetition.min && max <= 4 => {
                    let mut power = exact.clone();
                    for _ in 1..max {
                        match product(&power, exact) {
                            Some(next) => power = next,
                            None => return Facts { exact: None, required },
                        }
                    }
                    Some(power)
                }
                _ => None,
            };
            Facts { exact, required }
        }
        HirKind::Alternation(children) => {
            let children: Vec<Facts> = children.iter().map(facts).collect();
            let exact = union(children.iter().map(|child| child.exact.clone()));
            let required =
                union(children.iter().map(|child| better(child.required.clone(), as_required(&child.exact))));
            Facts { exact, required }
        }
        HirKind::Concat(children) => {
            let children: Vec<Facts> = children.iter().map(facts).collect();
            let mut required = None;
            for child in &children {
                required = better(required, child.required.clone());
            }
            // Runs of exact pieces: every match holds one of their products.
            for start in 0..children.len() {
                let mut run: Option<Set> = None;
                for child in &children[start..] {
                    let Some(exact) = &child.exact else { break };
                    let next = match &run {
                        None => Some(exact.clone()),
                        Some(run) => product(run, exact),
                    };
                    let Some(next) = next else { break };
                    required = better(required, as_required(&Some(next.clone())));
                    run = Some(next);
                }
            }
            let mut exact = Some(single(Vec::new()));
            for child in &children {
                exact = match (exact, &child.exact) {
                    (Some(run), Some(next)) => product(&run, next),
                    _ => None,
                };
            }
            Facts { exact, required }
        }
    }
}

/// A small class's members as one-byte strings, folded to lower case.
fn class_members(class: &Class) -> Option<Set> {
    let Class::Bytes(bytes) = class else { return None };
    let mut out = Set::new();
    for range in bytes.ranges() {
        if usize::from(range.end() - range.start()) >= CLASS_LIMIT {
            return None;
        }
        for byte in range.start()..=range.end() {
            out.insert(vec![byte.to_ascii_lowercase()]);
            if out.len() > CLASS_LIMIT {
                return None;
            }
        }
    }
    Some(out)
}

/// Collects the rule set's patterns' literal sets while it loads.
#[derive(Default)]
pub struct PrefilterBuilder {
    sets: Vec<Vec<Vec<u8>>>,
}

impl PrefilterBuilder {
    /// The slot a pattern's literal set takes, if it has one worth scanning for.
    pub fn add(&mut self, pattern: &str, syntax: &syntax::Config) -> Option<u32> {
        let literals = required_literals(pattern, syntax)?;
        self.sets.push(literals);
        Some(u32::try_from(self.sets.len() - 1).expect("fewer than 2^32 patterns"))
    }

    pub fn build(self) -> Prefilter {
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<u32>> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for (slot, set) in self.sets.iter().enumerate() {
            for literal in set {
                let id = *index.entry(literal.clone()).or_insert_with(|| {
                    literals.push(literal.clone());
                    owners.push(Vec::new());
                    literals.len() - 1
                });
                owners[id].push(slot as u32);
            }
        }
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&literals)
            .ok();
        Prefilter { automaton, owners, words: self.sets.len().div_ceil(64) }
    }
}

/// The compiled prefilter of a rule set.
#[derive(Debug)]
pub struct Prefilter {
    automaton: Option<AhoCorasick>,
    /// For each literal, the slots (patterns) it stands for.
    owners: Vec<Vec<u32>>,
    words: usize,
}

impl Default for Prefilter {
    fn default() -> Self {
        PrefilterBuilder::default().build()
    }
}

/// Which patterns' literals a value holds.
#[derive(Debug, Clone)]
pub struct Hits(Box<[u64]>);

impl Hits {
    pub fn contains(&self, slot: u32) -> bool {
        self.0.get(slot as usize / 64).is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }
}

impl Prefilter {
    /// Scans a value once for every pattern's literals.
    pub fn scan(&self, value: &[u8]) -> Hits {
        let mut hits = vec![0u64; self.words].into_boxed_slice();
        if let Some(automaton) = &self.automaton {
            for found in automaton.find_overlapping_iter(value) {
                for slot in &self.owners[found.pattern().as_usize()] {
                    hits[*slot as usize / 64] |= 1 << (slot % 64);
                }
            }
        }
        Hits(hits)
    }

    pub fn slots(&self) -> usize {
        self.owners.iter().flatten().map(|slot| *slot as usize + 1).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> syntax::Config {
        syntax::Config::new().unicode(false).utf8(false).dot_matches_new_line(true)
    }

    fn literals(pattern: &str) -> Option<Vec<String>> {
        required_literals(pattern, &config())
            .map(|set| set.into_iter().map(|literal| String::from_utf8(literal).unwrap()).collect())
    }

    #[test]
    fn alternations_of_words_are_their_words() {
        assert_eq!(literals(r"(?i)\b(?:union|select)\b"), Some(vec!["select".into(), "union".into()]));
        // As telling as the products `add table` and `alter table` (both cut to six bytes), and
        // one literal instead of two.
        assert_eq!(literals(r"(?i)a(?:dd|lter) table"), Some(vec![" table".into()]));
        assert_eq!(literals(r"(?i)(?:add|alter)_(?:table|index)"), Some(vec!["_index".into(), "_table".into()]));
    }

    #[test]
    fn the_longest_required_piece_is_chosen() {
        // `<` alone would do, `<script` tells more.
        assert_eq!(literals(r"(?i)<script[^>]*>"), Some(vec!["<scrip".into()]));
        assert_eq!(literals(r"(?i)(?:etc|proc)/passwd"), Some(vec!["/passw".into()]));
    }

    #[test]
    fn patterns_that_may_match_anything_have_no_set() {
        assert_eq!(literals(r"^[\d.:]+$"), None);
        assert_eq!(literals(r"a?b*"), None);
        assert_eq!(literals(r"(?:union|x*)"), None);
        // A lone letter is everywhere.
        assert_eq!(literals(r"[a-z]+e[a-z]+"), None);
    }

    #[test]
    fn rare_single_bytes_are_kept() {
        assert_eq!(literals(r"[<>]"), Some(vec!["<".into(), ">".into()]));
        // `or` says more than `'`.
        assert_eq!(literals(r"'\s*or"), Some(vec!["or".into()]));
        assert_eq!(literals(r"(?:;|&&|\|)\s*[a-z]+"), Some(vec!["&&".into(), ";".into(), "|".into()]));
    }

    #[test]
    fn a_value_without_the_literals_is_ruled_out_and_one_with_them_is_not() {
        let mut builder = PrefilterBuilder::default();
        // Case folds both ways: the literal is lower case, the value need not be.
        let union = builder.add(r"(?i)\bunion\b.+\bselect\b", &config()).unwrap();
        let script = builder.add(r"<script", &config()).unwrap();
        assert_eq!(builder.add(r".*", &config()), None);
        let prefilter = builder.build();
        let hits = prefilter.scan(b"1 UNION ALL SELECT password");
        assert!(hits.contains(union) && !hits.contains(script));
        let hits = prefilter.scan(b"<SCRIPT>alert(1)</script>");
        assert!(!hits.contains(union) && hits.contains(script));
        let hits = prefilter.scan(b"an ordinary search");
        assert!(!hits.contains(union) && !hits.contains(script));
    }
}
