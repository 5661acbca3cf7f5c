//! The routes that share one host condition, in precedence order, indexed by path so that a
//! lookup among thousands of routes checks only the few that could take the request.
//!
//! The answer is always the one a scan in precedence order would give: exact paths and prefixes
//! are looked up by the request path's own prefixes, routes with a regular expression or no path
//! condition are always candidates, and of the candidates whose conditions all hold, the one
//! earliest in precedence order wins.

use std::collections::HashMap;
use std::sync::Arc;

use super::matcher::PathMatch;
use super::{RequestFacts, Route};

/// Routes of one host rank. Positions are indices into `order`, so a smaller position is a more
/// specific route; every position list is ascending.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    /// Indices into the table's routes, most specific first.
    order: Vec<usize>,
    /// Exact path -> positions.
    exact: HashMap<String, Vec<usize>>,
    /// Path prefix as written -> positions.
    prefix: HashMap<String, Vec<usize>>,
    /// The lengths of the prefixes in `prefix` (bit `n` for length `n`, the last bit for any
    /// longer), so that most of a path's candidate prefixes are skipped without hashing.
    prefix_lengths: u128,
    /// Positions of routes that match paths by regular expression or not at all.
    unindexed: Vec<usize>,
}

/// Up to this many routes, checking each in order is faster than hashing the path's prefixes.
const SCAN_AT_MOST: usize = 8;

impl Bucket {
    /// Indexes `indices` (into `routes`), which must be sorted most specific first.
    pub(super) fn new(routes: &[Arc<Route>], order: Vec<usize>) -> Self {
        let mut bucket = Self { order, ..Self::default() };
        for (position, &index) in bucket.order.iter().enumerate() {
            match &routes[index].path {
                PathMatch::Exact(path) => bucket.exact.entry(path.clone()).or_default().push(position),
                PathMatch::Prefix(prefix) => {
                    bucket.prefix_lengths |= length_bit(prefix.len());
                    bucket.prefix.entry(prefix.clone()).or_default().push(position);
                }
                PathMatch::Regex(_) | PathMatch::Any => bucket.unindexed.push(position),
            }
        }
        bucket
    }

    /// The index of the most specific route in the bucket whose conditions all hold.
    pub(super) fn first_match(&self, routes: &[Arc<Route>], facts: &RequestFacts<'_>) -> Option<usize> {
        if self.order.len() <= SCAN_AT_MOST {
            return self.order.iter().copied().find(|&index| routes[index].matches(facts));
        }
        let mut best: Option<usize> = None;
        let mut consider = |positions: &[usize]| {
            for &position in positions {
                if best.is_some_and(|best| position >= best) {
                    // Ascending: nothing later in this list can beat what was found.
                    return;
                }
                if routes[self.order[position]].matches(facts) {
                    best = Some(position);
                    return;
                }
            }
        };
        if let Some(positions) = self.exact.get(facts.path) {
            consider(positions);
        }
        if !self.prefix.is_empty() {
            let lengths = self.prefix_lengths;
            for candidate in path_prefixes(facts.path).filter(|candidate| lengths & length_bit(candidate.len()) != 0) {
                if let Some(positions) = self.prefix.get(candidate) {
                    consider(positions);
                }
            }
        }
        consider(&self.unindexed);
        best.map(|position| self.order[position])
    }
}

fn length_bit(length: usize) -> u128 {
    1 << length.min(127)
}

/// Every prefix a `path_prefix` route could have and still take `path`: the path up to each `/`
/// (with and without it), and the whole path.
fn path_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let whole = (!path.ends_with('/')).then_some(path);
    path.match_indices('/')
        .flat_map(move |(slash, _)| [(slash > 0).then(|| &path[..slash]), Some(&path[..=slash])])
        .flatten()
        .chain(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_prefixes_cover_segment_boundaries() {
        let candidates: Vec<&str> = path_prefixes("/api/v1/users").collect();
        assert_eq!(candidates, ["/", "/api", "/api/", "/api/v1", "/api/v1/", "/api/v1/users"]);
        let candidates: Vec<&str> = path_prefixes("/api/").collect();
        assert_eq!(candidates, ["/", "/api", "/api/"]);
    }
}
