//! The conditions a route puts on a request: host pattern, path, headers.

use http::HeaderMap;
use http::header::HeaderName;
use regex::Regex;

/// A host condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com`: this host only.
    Exact(String),
    /// `*.example.com`, stored as `example.com`: any subdomain at any depth, not the bare domain.
    Wildcard(String),
}

impl HostPattern {
    /// Parses a host as written in a route.
    pub fn parse(written: &str) -> Result<Self, String> {
        let lower = written.trim_end_matches('.').to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("invalid wildcard host {written:?}: use the form \"*.example.com\""));
            }
            return Ok(Self::Wildcard(suffix.to_owned()));
        }
        if lower.is_empty() || lower.contains('*') {
            return Err(format!(
                "invalid host {written:?}: a wildcard may only be a leading \"*.\" as in \"*.example.com\""
            ));
        }
        if lower.contains(':') && !lower.starts_with('[') {
            return Err(format!("invalid host {written:?}: routes match hosts without a port"));
        }
        Ok(Self::Exact(lower))
    }
}

/// A path condition.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// This path exactly.
    Exact(String),
    /// Paths under this prefix. `/api` takes `/api` and `/api/...` but not `/apix`; a prefix ending
    /// in `/` takes anything that starts with it.
    Prefix(String),
    /// Paths the expression finds a match in.
    Regex(Regex),
}

impl PathMatch {
    /// Whether `path` (without query) satisfies the condition.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => prefix_matches(prefix, path),
            Self::Regex(regex) => regex.is_match(path),
        }
    }

    /// Rank for precedence: exact over regex over prefix (longer first) over none.
    pub(crate) fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(_) => (3, 0),
            Self::Regex(_) => (2, 0),
            Self::Prefix(prefix) => (1, prefix.len()),
            Self::Any => (0, 0),
        }
    }
}

/// Prefix match on path-segment boundaries.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A condition on one request header.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// The header.
    pub name: HeaderName,
    /// What its value must be.
    pub condition: HeaderCondition,
}

/// What a header's value must satisfy.
#[derive(Debug, Clone)]
pub enum HeaderCondition {
    /// Some value equals this exactly.
    Equals(String),
    /// Some value matches this expression.
    Regex(Regex),
    /// The header is present.
    Present,
    /// The header is absent.
    Absent,
}

impl HeaderMatch {
    /// Whether the request's headers satisfy the condition. With several values for the name,
    /// any one matching is enough.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.condition {
            HeaderCondition::Present => values.next().is_some(),
            HeaderCondition::Absent => values.next().is_none(),
            HeaderCondition::Equals(expected) => values.any(|value| value.as_bytes() == expected.as_bytes()),
            HeaderCondition::Regex(regex) => values.any(|value| value.to_str().is_ok_and(|text| regex.is_match(text))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_respect_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/users"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn host_patterns_parse() {
        assert_eq!(HostPattern::parse("API.example.com").unwrap(), HostPattern::Exact("api.example.com".into()));
        assert_eq!(HostPattern::parse("*.example.com").unwrap(), HostPattern::Wildcard("example.com".into()));
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("example.com:80").is_err());
    }

    #[test]
    fn header_conditions() {
        let mut headers = HeaderMap::new();
        headers.append("x-env", "blue".parse().unwrap());
        headers.append("x-env", "canary".parse().unwrap());
        let name = HeaderName::from_static("x-env");
        let check = |condition| HeaderMatch { name: name.clone(), condition }.matches(&headers);
        assert!(check(HeaderCondition::Equals("canary".into())));
        assert!(!check(HeaderCondition::Equals("green".into())));
        assert!(check(HeaderCondition::Regex(Regex::new("^can").unwrap())));
        assert!(check(HeaderCondition::Present));
        assert!(!check(HeaderCondition::Absent));
    }
}
