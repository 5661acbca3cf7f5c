//! The route table: which route serves a request.
//!
//! Precedence, most specific first:
//! 1. **Host**: an exact host beats a wildcard; a longer wildcard (`*.api.example.com`) beats a
//!    shorter one (`*.example.com`); both beat routes with no host.
//! 2. **Path**, among routes of the same host rank: an exact `path`, then `path_regex` routes, then
//!    `path_prefix` routes by prefix length (longest first), then routes with no path condition.
//! 3. **Conditions**: more method and header conditions win.
//! 4. **File order** breaks any remaining tie.
//!
//! A route is taken only if all its conditions hold; when none of a host's routes does, the search
//! goes on to less specific hosts, so a catch-all route serves whatever nothing else took.

mod matcher;
mod route;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

pub use matcher::{HeaderCondition, HeaderMatch, HostPattern, PathMatch};
pub use route::{PathRewrite, Redirect, Route, RouteAction};

/// The compiled routes, indexed by host for lookup without scanning unrelated routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Exact host -> indices into `routes`, most specific first.
    exact_hosts: HashMap<String, Vec<usize>>,
    /// Wildcard suffix (`example.com` for `*.example.com`) -> indices, most specific first.
    wildcard_hosts: HashMap<String, Vec<usize>>,
    /// Routes with no host condition, most specific first.
    any_host: Vec<usize>,
}

/// What a route match looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Host without port, lower case.
    pub host: &'a str,
    /// Path without query, normalised.
    pub path: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl RouteTable {
    /// Builds the table from routes in file order.
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut table = Self { routes, ..Self::default() };
        for (index, route) in table.routes.iter().enumerate() {
            if route.hosts.is_empty() {
                table.any_host.push(index);
            }
            for host in &route.hosts {
                let bucket = match host {
                    HostPattern::Exact(name) => table.exact_hosts.entry(name.clone()).or_default(),
                    HostPattern::Wildcard(suffix) => table.wildcard_hosts.entry(suffix.clone()).or_default(),
                };
                bucket.push(index);
            }
        }
        let routes = &table.routes;
        let by_specificity = |indices: &mut Vec<usize>| {
            // Stable sort: equal specificity keeps file order.
            indices.sort_by_key(|&index| std::cmp::Reverse(routes[index].specificity()));
        };
        table.exact_hosts.values_mut().for_each(by_specificity);
        table.wildcard_hosts.values_mut().for_each(by_specificity);
        by_specificity(&mut table.any_host);
        table
    }

    /// The most specific route whose conditions all hold for the request, if any.
    pub fn match_request(&self, facts: &RequestFacts<'_>) -> Option<&Arc<Route>> {
        let first_match =
            |indices: &[usize]| indices.iter().map(|&index| &self.routes[index]).find(|route| route.matches(facts));
        if let Some(route) = self.exact_hosts.get(facts.host).and_then(|indices| first_match(indices)) {
            return Some(route);
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: for a.b.example.com try b.example.com, then example.com, then com.
            let mut rest = facts.host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(route) = self.wildcard_hosts.get(rest).and_then(|indices| first_match(indices)) {
                    return Some(route);
                }
            }
        }
        first_match(&self.any_host)
    }

    /// All routes in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// Lower-cases a host, dropping any port and trailing dot, as routes compare hosts.
pub fn normalize_host(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        authority.find(']').map_or(authority, |end| &authority[..=end])
    } else {
        authority.rsplit_once(':').map_or(authority, |(host, _port)| host)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
