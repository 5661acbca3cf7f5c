//! One compiled route: its conditions and what it does with the requests it takes.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use super::RequestFacts;
use super::matcher::{HeaderMatch, HostPattern, PathMatch, prefix_matches};
use sluice_runtime::{RouteFilter, Tenant};
use sluice_upstream::Upstream;

/// A route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Name used in logs and metrics.
    pub name: Arc<str>,
    /// Client addresses and countries refused before any filter runs.
    pub access: Arc<sluice_access::AccessRules>,
    /// Hosts it takes; empty means any.
    pub hosts: Vec<HostPattern>,
    /// Its path condition.
    pub path: PathMatch,
    /// Methods it takes; empty means any.
    pub methods: Vec<Method>,
    /// Header conditions, all of which must hold.
    pub headers: Vec<HeaderMatch>,
    /// What it does with a request.
    pub action: RouteAction,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// The tenant whose grants apply to the route's filters.
    pub tenant: Arc<Tenant>,
    /// The filter chain, in request order.
    pub filters: Vec<RouteFilter>,
    /// Largest body a filter gets buffered whole.
    pub max_filter_body_bytes: usize,
    /// Response compression, when the route compresses.
    pub compression: Option<Arc<sluice_http::compression::CompressionSettings>>,
    /// HTTP caching, when the route caches.
    pub cache: Option<Arc<sluice_cache::CacheSettings>>,
    /// Its responses advertise the listener's HTTP/3 (`Alt-Svc`), when the listener has it.
    pub alt_svc: bool,
    /// Handles on its request counters and latency histogram, found once.
    pub figures: crate::telemetry::metrics::RouteFigures,
    /// The route's meter (requests and response bytes, for its tenant's usage), found once and
    /// kept across reloads.
    pub usage: Arc<sluice_runtime::metering::Usage>,
    /// Its live figures for the dashboard (kept across reloads by route name).
    pub live: Arc<crate::telemetry::live::RouteLive>,
    /// Each filter's live figures, in chain order: the filter's, and its canary's.
    pub filter_live: Vec<FilterLiveFigures>,
}

/// A filter's live figures, and its canary's when it has one.
#[derive(Debug)]
pub struct FilterLiveFigures {
    /// The filter's own version.
    pub filter: Arc<crate::telemetry::live::FilterLive>,
    /// Its canary's.
    pub canary: Option<Arc<crate::telemetry::live::FilterLive>>,
    /// Its shadow's comparisons, when it has a shadow.
    pub shadow: Option<Arc<crate::telemetry::shadows::ShadowTally>>,
}

/// What a route does with a request it takes.
#[derive(Debug)]
pub enum RouteAction {
    /// Forward to an upstream.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
}

/// Where and how a route forwards.
#[derive(Debug)]
pub struct Forward {
    /// Where to: one upstream, or several sharing the traffic by weight.
    pub backends: Backends,
    /// A copy of a share of requests for a shadow upstream.
    pub mirror: Option<Mirror>,
    /// How the path changes on the way.
    pub rewrite: PathRewrite,
    /// How long to wait for the upstream's response headers.
    pub timeout: Duration,
    /// Keep the client's Host header rather than sending the server's address.
    pub preserve_host: bool,
}

/// The upstreams a route forwards to, with their shares of its requests (a canary split).
#[derive(Debug)]
pub struct Backends {
    choices: Vec<(Arc<Upstream>, u32)>,
    total: u32,
}

impl Backends {
    /// All requests to one upstream.
    pub fn single(upstream: Arc<Upstream>) -> Self {
        Self { choices: vec![(upstream, 1)], total: 1 }
    }

    /// Requests split by weight (each at least 1) over the upstreams.
    pub fn weighted(choices: Vec<(Arc<Upstream>, u32)>) -> Self {
        let total = choices.iter().map(|(_, weight)| weight).sum();
        Self { choices, total }
    }

    /// The upstream for one request: drawn at random by weight.
    pub fn pick(&self) -> &Arc<Upstream> {
        if self.choices.len() == 1 {
            return &self.choices[0].0;
        }
        let mut draw = rand::Rng::random_range(&mut rand::rng(), 0..self.total);
        for (upstream, weight) in &self.choices {
            if draw < *weight {
                return upstream;
            }
            draw -= weight;
        }
        &self.choices[self.choices.len() - 1].0
    }

    /// The upstreams with their weights.
    pub fn choices(&self) -> &[(Arc<Upstream>, u32)] {
        &self.choices
    }
}

/// Requests copied to a shadow upstream, whose answers are thrown away.
#[derive(Debug)]
pub struct Mirror {
    /// Where copies go.
    pub upstream: Arc<Upstream>,
    /// The share of requests copied, 0 to 100.
    pub percent: f64,
}

impl Mirror {
    /// Whether this request is copied.
    pub fn takes_this_one(&self) -> bool {
        self.percent >= 100.0 || rand::Rng::random_bool(&mut rand::rng(), self.percent / 100.0)
    }
}

/// A change to the path before forwarding or redirecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// Leave it.
    None,
    /// Replace the matched `prefix` with `replacement` (empty to strip it).
    Prefix {
        /// The route's `path_prefix`.
        prefix: String,
        /// What takes its place.
        replacement: String,
    },
}

impl PathRewrite {
    /// The rewritten path and query.
    pub fn apply(&self, path: &str, query: Option<&str>) -> String {
        let path = match self {
            Self::None => path.to_owned(),
            Self::Prefix { prefix, replacement } if prefix_matches(prefix, path) => {
                let rest = &path[prefix.len()..];
                // Keep exactly one slash at the seam: "/v2" + "/users", "/v2/" + "users".
                let mut joined = replacement.trim_end_matches('/').to_owned();
                if !rest.starts_with('/') {
                    joined.push('/');
                }
                joined.push_str(rest);
                joined
            }
            Self::Prefix { .. } => path.to_owned(),
        };
        match query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        }
    }
}

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// Target scheme; the request's when absent.
    pub scheme: Option<String>,
    /// Target host; the request's when absent.
    pub host: Option<String>,
    /// Target path; the request's (after any prefix rewrite) when absent.
    pub path: Option<String>,
    /// How the request's path is rewritten when `path` is absent.
    pub rewrite: PathRewrite,
    /// Keep the request's query string.
    pub keep_query: bool,
}

impl Redirect {
    /// The `Location` for a request with this scheme, host, path and query.
    pub fn location(&self, scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(host);
        let query = query.filter(|_| self.keep_query);
        let path_and_query = match &self.path {
            Some(path) => match query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            },
            None => self.rewrite.apply(path, query),
        };
        format!("{scheme}://{host}{path_and_query}")
    }
}

impl Route {
    /// Whether every condition other than the host holds (the table has already chosen by host).
    pub(crate) fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        self.path.matches(facts.path)
            && (self.methods.is_empty() || self.methods.contains(facts.method))
            && self.headers.iter().all(|header| header.matches(facts.headers))
    }

    /// Path rank, then the number of other conditions: larger is more specific.
    pub(crate) fn specificity(&self) -> ((u8, usize), usize) {
        let conditions = usize::from(!self.methods.is_empty()) + self.headers.len();
        (self.path.rank(), conditions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(prefix: &str, replacement: &str) -> PathRewrite {
        PathRewrite::Prefix { prefix: prefix.into(), replacement: replacement.into() }
    }

    #[test]
    fn prefix_rewrites() {
        assert_eq!(prefix("/api", "").apply("/api/users", Some("a=1")), "/users?a=1");
        assert_eq!(prefix("/api", "").apply("/api", None), "/");
        assert_eq!(prefix("/api/", "").apply("/api/users", None), "/users");
        assert_eq!(prefix("/api", "/v2").apply("/api/users", None), "/v2/users");
        assert_eq!(prefix("/api", "/v2/").apply("/api/users", None), "/v2/users");
        assert_eq!(prefix("/api", "/v2").apply("/api", None), "/v2/");
        assert_eq!(PathRewrite::None.apply("/x", Some("q")), "/x?q");
    }

    #[test]
    fn redirect_locations() {
        let redirect = Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            scheme: Some("https".into()),
            host: None,
            path: None,
            rewrite: PathRewrite::None,
            keep_query: true,
        };
        assert_eq!(redirect.location("http", "example.com", "/a", Some("b=1")), "https://example.com/a?b=1");
        let fixed = Redirect { path: Some("/new".into()), keep_query: false, ..redirect };
        assert_eq!(fixed.location("http", "example.com", "/a", Some("b=1")), "https://example.com/new");
    }
}
