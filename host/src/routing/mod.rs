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

mod bucket;
mod matcher;
mod route;

use std::collections::HashMap;
use std::sync::Arc;

use bucket::Bucket;

use http::{HeaderMap, Method};

pub use matcher::{HeaderCondition, HeaderMatch, HostPattern, PathMatch};
pub use route::{Backends, FilterLiveFigures, Forward, Mirror, PathRewrite, Redirect, Route, RouteAction};

/// The compiled routes, indexed by host, then by path within each host, so that finding the
/// route costs about the same among ten thousand routes as among ten.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Exact host -> its routes.
    exact_hosts: HashMap<String, Bucket>,
    /// Wildcard suffix (`example.com` for `*.example.com`) -> its routes.
    wildcard_hosts: HashMap<String, Bucket>,
    /// Routes with no host condition.
    any_host: Bucket,
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
        let mut exact_hosts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard_hosts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            if route.hosts.is_empty() {
                any_host.push(index);
            }
            for host in &route.hosts {
                let bucket = match host {
                    HostPattern::Exact(name) => exact_hosts.entry(name.clone()).or_default(),
                    HostPattern::Wildcard(suffix) => wildcard_hosts.entry(suffix.clone()).or_default(),
                };
                bucket.push(index);
            }
        }
        let bucket = |mut indices: Vec<usize>| {
            // Stable sort: equal specificity keeps file order.
            indices.sort_by_key(|&index| std::cmp::Reverse(routes[index].specificity()));
            Bucket::new(&routes, indices)
        };
        let exact_hosts = exact_hosts.into_iter().map(|(host, indices)| (host, bucket(indices))).collect();
        let wildcard_hosts = wildcard_hosts.into_iter().map(|(suffix, indices)| (suffix, bucket(indices))).collect();
        let any_host = bucket(any_host);
        Self { routes, exact_hosts, wildcard_hosts, any_host }
    }

    /// The most specific route whose conditions all hold for the request, if any.
    pub fn match_request(&self, facts: &RequestFacts<'_>) -> Option<&Arc<Route>> {
        let found = |bucket: &Bucket| bucket.first_match(&self.routes, facts).map(|index| &self.routes[index]);
        if let Some(route) = self.exact_hosts.get(facts.host).and_then(found) {
            return Some(route);
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: for a.b.example.com try b.example.com, then example.com, then com.
            let mut rest = facts.host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(route) = self.wildcard_hosts.get(rest).and_then(found) {
                    return Some(route);
                }
            }
        }
        found(&self.any_host)
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

    /// The precedence rules applied by brute force: every route, most specific host rank first,
    /// then most specific route, then file order.
    fn scan<'a>(routes: &'a [Arc<Route>], facts: &RequestFacts<'_>) -> Option<&'a Arc<Route>> {
        let host_rank = |route: &Route| {
            route
                .hosts
                .iter()
                .filter_map(|pattern| match pattern {
                    HostPattern::Exact(name) => (name == facts.host).then_some(usize::MAX),
                    HostPattern::Wildcard(suffix) => {
                        let under = facts.host.strip_suffix(suffix.as_str()).is_some_and(|rest| rest.ends_with('.'));
                        under.then_some(suffix.len())
                    }
                })
                .max()
                .or(route.hosts.is_empty().then_some(0))
        };
        let mut ranked: Vec<(usize, usize)> =
            routes.iter().enumerate().filter_map(|(index, route)| Some((host_rank(route)?, index))).collect();
        ranked.sort_by_key(|&(rank, index)| (std::cmp::Reverse((rank, routes[index].specificity())), index));
        ranked.into_iter().map(|(_, index)| &routes[index]).find(|route| route.matches(facts))
    }

    #[test]
    fn the_index_picks_what_a_scan_in_precedence_order_picks() {
        // A deterministic mix of hosts, paths, methods and headers, many of them overlapping.
        let mut seed = 0x2545_f491_u64;
        let mut next = move |bound: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % bound
        };
        let hosts = ["", "host = \"a.example.com\"\n", "host = \"*.example.com\"\n", "host = \"*.b.example.com\"\n"];
        let segments = ["api", "v1", "users", "static", "x"];
        let mut config = String::from(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.o]\nservers = [{ addr = \"127.0.0.1:9\" }]\n",
        );
        for index in 0..400 {
            let depth = 1 + next(3);
            let path: String = (0..depth).map(|_| format!("/{}", segments[next(segments.len())])).collect();
            let condition = match next(5) {
                0 => format!("path = \"{path}\"\n"),
                1 => format!("path_prefix = \"{path}\"\n"),
                2 => format!("path_prefix = \"{path}/\"\n"),
                3 => format!("path_regex = \"^{path}\"\n"),
                _ => String::new(),
            };
            let method = if next(4) == 0 { "methods = [\"POST\"]\n" } else { "" };
            let header = if next(4) == 0 { "headers = [{ name = \"x-v\", value = \"1\" }]\n" } else { "" };
            let host = hosts[next(hosts.len())];
            config.push_str(&format!(
                "[[route]]\nname = \"r{index}\"\n{host}{condition}{method}{header}upstream = \"o\"\n"
            ));
        }
        let snapshot = crate::config::Snapshot::from_toml(&crate::config::Services::for_tests(), &config).unwrap();
        let routes = snapshot.routes.routes();
        let mut with_header = HeaderMap::new();
        with_header.insert("x-v", "1".parse().unwrap());
        let no_header = HeaderMap::new();
        for _ in 0..5000 {
            let depth = next(4);
            let mut path: String = (0..depth).map(|_| format!("/{}", segments[next(segments.len())])).collect();
            if path.is_empty() || next(5) == 0 {
                path.push('/');
            }
            let host = ["a.example.com", "z.example.com", "c.b.example.com", "other.test"][next(4)];
            let method = if next(3) == 0 { Method::POST } else { Method::GET };
            let headers = if next(2) == 0 { &with_header } else { &no_header };
            let facts = RequestFacts { host, path: &path, method: &method, headers };
            let indexed = snapshot.routes.match_request(&facts).map(|route| route.name.clone());
            let scanned = scan(routes, &facts).map(|route| route.name.clone());
            assert_eq!(indexed, scanned, "{method} {host}{path}");
        }
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
