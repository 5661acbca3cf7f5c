//! The CORS policy: which origins, methods and headers are allowed, and the headers that say so.
//!
//! Follows the Fetch standard's CORS protocol: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered here and never reaches the upstream; an actual
//! request from an allowed origin gets `Access-Control-Allow-Origin` and friends on its response.
//! Requests from other origins pass untouched and the browser withholds the response from the page.

use serde::Deserialize;

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Allowed origins: exact (`https://app.example.com`), one wildcard label and deeper
    /// (`https://*.example.com`), or `*` for any.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive); `["*"]` allows any (not with
    /// credentials, where the requested ones are echoed instead).
    pub allowed_headers: Vec<String>,
    /// Response headers the page may read.
    pub exposed_headers: Vec<String>,
    /// Whether cookies and HTTP authentication may be sent.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, in seconds.
    pub max_age: u32,
    /// Send preflights the policy refuses on to the upstream instead of answering 403.
    pub forward_refused_preflights: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: vec!["GET".into(), "HEAD".into(), "POST".into()],
            allowed_headers: Vec::new(),
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age: 600,
            forward_refused_preflights: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    Any,
    Exact(String),
    /// `scheme://*.suffix`: the scheme and `.suffix` with at least one label before it.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    origins: Vec<OriginPattern>,
    methods: Vec<String>,
    headers: Vec<String>,
    any_header: bool,
    exposed: String,
    credentials: bool,
    max_age: String,
    forward_refused: bool,
}

/// What a request is, for CORS.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a CORS request (no `Origin`) or an origin not allowed: leave it alone.
    Untouched,
    /// An actual request from an allowed origin: add these headers to its response.
    Actual(Vec<(String, String)>),
    /// A preflight the policy allows: answer 204 with these headers.
    PreflightAllowed(Vec<(String, String)>),
    /// A preflight the policy refuses, and why.
    PreflightRefused(String),
}

impl Policy {
    /// Validates and compiles a config.
    pub fn new(config: Config) -> Result<Self, String> {
        if config.allowed_origins.is_empty() {
            return Err("allowed_origins is empty: list the origins allowed, or \"*\"".into());
        }
        let origins =
            config.allowed_origins.iter().map(|origin| parse_origin(origin)).collect::<Result<Vec<_>, _>>()?;
        let any_header = config.allowed_headers.iter().any(|header| header == "*");
        if config.allow_credentials && origins.contains(&OriginPattern::Any) {
            return Err("allow_credentials cannot be combined with the origin \"*\": browsers refuse it, and \
                        echoing every origin with credentials would let any site act as the user; list the origins"
                .into());
        }
        for method in &config.allowed_methods {
            if method.is_empty() || !method.bytes().all(|byte| byte.is_ascii_alphabetic()) {
                return Err(format!("allowed_methods: {method:?} is not a method"));
            }
        }
        Ok(Self {
            origins,
            methods: config.allowed_methods.iter().map(|method| method.to_ascii_uppercase()).collect(),
            headers: config.allowed_headers.iter().map(|header| header.to_ascii_lowercase()).collect(),
            any_header,
            exposed: config.exposed_headers.join(", "),
            credentials: config.allow_credentials,
            max_age: config.max_age.to_string(),
            forward_refused: config.forward_refused_preflights,
        })
    }

    /// Whether refused preflights go on to the upstream.
    pub fn forwards_refused_preflights(&self) -> bool {
        self.forward_refused
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|pattern| match pattern {
            OriginPattern::Any => true,
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginPattern::Subdomains { scheme, suffix } => {
                origin.split_once("://").is_some_and(|(their_scheme, host)| {
                    their_scheme.eq_ignore_ascii_case(scheme)
                        && host.len() > suffix.len()
                        && host.to_ascii_lowercase().ends_with(suffix.as_str())
                        && !host[..host.len() - suffix.len()].contains(['/', '@'])
                })
            }
        })
    }

    /// `Access-Control-Allow-Origin` and, where the answer depends on the origin, `Vary`.
    fn origin_headers(&self, origin: &str, headers: &mut Vec<(String, String)>) {
        if self.origins == [OriginPattern::Any] && !self.credentials {
            headers.push(("access-control-allow-origin".into(), "*".into()));
        } else {
            headers.push(("access-control-allow-origin".into(), origin.into()));
            headers.push(("vary".into(), "Origin".into()));
        }
        if self.credentials {
            headers.push(("access-control-allow-credentials".into(), "true".into()));
        }
    }

    /// Classifies a request by its method and CORS headers.
    pub fn check(
        &self,
        method: &str,
        origin: Option<&str>,
        request_method: Option<&str>,
        request_headers: Option<&str>,
    ) -> Verdict {
        let Some(origin) = origin else { return Verdict::Untouched };
        let preflight = method.eq_ignore_ascii_case("OPTIONS") && request_method.is_some();
        if !self.origin_allowed(origin) {
            return if preflight {
                Verdict::PreflightRefused(format!("origin {origin} is not allowed"))
            } else {
                Verdict::Untouched
            };
        }
        let mut headers = Vec::new();
        self.origin_headers(origin, &mut headers);
        let Some(wanted_method) = request_method.filter(|_| preflight) else {
            if !self.exposed.is_empty() {
                headers.push(("access-control-expose-headers".into(), self.exposed.clone()));
            }
            return Verdict::Actual(headers);
        };
        if !self.methods.iter().any(|allowed| allowed == wanted_method) {
            return Verdict::PreflightRefused(format!("method {wanted_method} is not allowed"));
        }
        let wanted_headers: Vec<String> = request_headers
            .unwrap_or_default()
            .split(',')
            .map(|header| header.trim().to_ascii_lowercase())
            .filter(|header| !header.is_empty())
            .collect();
        if !self.any_header
            && let Some(refused) = wanted_headers.iter().find(|header| !self.headers.contains(header))
        {
            return Verdict::PreflightRefused(format!("header {refused} is not allowed"));
        }
        headers.push(("access-control-allow-methods".into(), self.methods.join(", ")));
        if !wanted_headers.is_empty() {
            // With credentials `*` means the literal header name `*`: echo the requested ones.
            let allowed = if self.any_header && !self.credentials { "*".into() } else { wanted_headers.join(", ") };
            headers.push(("access-control-allow-headers".into(), allowed));
        }
        headers.push(("access-control-max-age".into(), self.max_age.clone()));
        if !headers.iter().any(|(name, _)| name == "vary") {
            headers.push(("vary".into(), "Origin".into()));
        }
        headers.push(("vary".into(), "Access-Control-Request-Method, Access-Control-Request-Headers".into()));
        Verdict::PreflightAllowed(headers)
    }
}

fn parse_origin(origin: &str) -> Result<OriginPattern, String> {
    if origin == "*" {
        return Ok(OriginPattern::Any);
    }
    let (scheme, host) = origin
        .split_once("://")
        .ok_or_else(|| format!("allowed_origins: {origin:?} needs a scheme, as in https://app.example.com"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("allowed_origins: {origin:?} must be scheme://host[:port], with no path"));
    }
    match host.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(OriginPattern::Subdomains {
            scheme: scheme.to_ascii_lowercase(),
            suffix: format!(".{}", suffix.to_ascii_lowercase()),
        }),
        _ if host.contains('*') => Err(format!(
            "allowed_origins: {origin:?}: a wildcard may only be the first label, as in https://*.example.com"
        )),
        _ => Ok(OriginPattern::Exact(origin.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        Policy::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn exact_and_wildcard_origins() {
        let policy = policy(r#"{"allowed_origins": ["https://app.example.com", "https://*.example.org"]}"#);
        assert!(policy.origin_allowed("https://app.example.com"));
        assert!(policy.origin_allowed("https://a.b.example.org"));
        assert!(!policy.origin_allowed("https://example.org"), "the wildcard needs a label");
        assert!(!policy.origin_allowed("http://a.example.org"), "the scheme must match");
        assert!(!policy.origin_allowed("https://evil-example.org"));
        assert!(!policy.origin_allowed("https://app.example.com.evil.net"));
        assert!(!policy.origin_allowed("https://user@x.example.org"));
    }

    #[test]
    fn actual_requests_get_origin_and_exposed_headers() {
        let policy = policy(
            r#"{"allowed_origins": ["https://app.example.com"], "exposed_headers": ["x-total"], "allow_credentials": true}"#,
        );
        let Verdict::Actual(headers) = policy.check("GET", Some("https://app.example.com"), None, None) else {
            panic!("an allowed origin")
        };
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(header(&headers, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&headers, "access-control-expose-headers"), Some("x-total"));
        assert_eq!(header(&headers, "vary"), Some("Origin"));
        assert_eq!(policy.check("GET", Some("https://other.test"), None, None), Verdict::Untouched);
        assert_eq!(policy.check("GET", None, None, None), Verdict::Untouched);
    }

    #[test]
    fn any_origin_without_credentials_answers_star() {
        let policy = policy(r#"{"allowed_origins": ["*"]}"#);
        let Verdict::Actual(headers) = policy.check("GET", Some("https://x.test"), None, None) else { panic!() };
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&headers, "vary"), None);
    }

    #[test]
    fn preflights_check_method_and_headers() {
        let policy = policy(
            r#"{"allowed_origins": ["https://app.example.com"], "allowed_methods": ["GET", "PUT"],
                "allowed_headers": ["Content-Type", "X-Token"], "max_age": 300}"#,
        );
        let origin = Some("https://app.example.com");
        let Verdict::PreflightAllowed(headers) =
            policy.check("OPTIONS", origin, Some("PUT"), Some("x-token, content-type"))
        else {
            panic!("allowed preflight")
        };
        assert_eq!(header(&headers, "access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(header(&headers, "access-control-allow-headers"), Some("x-token, content-type"));
        assert_eq!(header(&headers, "access-control-max-age"), Some("300"));
        assert!(
            matches!(policy.check("OPTIONS", origin, Some("DELETE"), None), Verdict::PreflightRefused(why) if why.contains("DELETE"))
        );
        assert!(
            matches!(policy.check("OPTIONS", origin, Some("GET"), Some("x-other")), Verdict::PreflightRefused(why) if why.contains("x-other"))
        );
        assert!(matches!(
            policy.check("OPTIONS", Some("https://evil.test"), Some("GET"), None),
            Verdict::PreflightRefused(_)
        ));
        // An OPTIONS without Access-Control-Request-Method is an ordinary request.
        assert!(matches!(policy.check("OPTIONS", origin, None, None), Verdict::Actual(_)));
    }

    #[test]
    fn configs_that_would_be_unsafe_or_wrong_are_refused() {
        let refused = |json: &str| Policy::new(serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(refused(r#"{"allowed_origins": ["*"], "allow_credentials": true}"#).contains("credentials"));
        assert!(refused(r#"{"allowed_origins": []}"#).contains("empty"));
        assert!(refused(r#"{"allowed_origins": ["app.example.com"]}"#).contains("scheme"));
        assert!(refused(r#"{"allowed_origins": ["https://a.*.example.com"]}"#).contains("first label"));
        assert!(refused(r#"{"allowed_origins": ["*"], "allowed_methods": ["G T"]}"#).contains("not a method"));
    }
}
