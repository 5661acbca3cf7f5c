//! Composing a cache key from the parts of a request a route says matter.
//!
//! The key is canonical: query parameters are decoded, filtered, sorted and re-encoded, so two
//! requests that differ only in parameter order or percent-encoding share a cache entry.
//! Parts are written as `name=value` between `|`, each value encoded so that no value can
//! imitate a separator.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Include the method.
    pub method: bool,
    /// Include the host (lower case, default ports dropped).
    pub host: bool,
    /// Include the path.
    pub path: bool,
    /// Which query parameters: `"all"` (default) or `"none"`, narrowed by the lists below.
    pub query: QueryMode,
    /// Only these parameters (names; a trailing `*` matches a prefix).
    pub query_include: Vec<String>,
    /// Never these parameters (same syntax), such as tracking parameters.
    pub query_exclude: Vec<String>,
    /// Request headers whose values are part of the key.
    pub headers: Vec<String>,
    /// Cookies whose values are part of the key.
    pub cookies: Vec<String>,
    /// Include a device class from User-Agent: `mobile`, `tablet`, `bot` or `desktop`.
    pub device_class: bool,
    /// Text put in front of every key, for separating caches that share a store.
    pub prefix: String,
    /// Replace the key by its SHA-256 (hex): fixed length whatever the request.
    pub hash: bool,
    /// Also send the key back in this response header, to see what was cached under what.
    pub response_header: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            method: true,
            host: true,
            path: true,
            query: QueryMode::All,
            query_include: Vec::new(),
            query_exclude: Vec::new(),
            headers: Vec::new(),
            cookies: Vec::new(),
            device_class: false,
            prefix: String::new(),
            hash: false,
            response_header: None,
        }
    }
}

/// Which query parameters take part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// All of them (subject to include and exclude lists).
    All,
    /// None.
    None,
}

/// The parts of a request a key may use.
pub trait KeySource {
    /// The method.
    fn method(&self) -> String;
    /// The Host.
    fn host(&self) -> String;
    /// Path and query.
    fn path_with_query(&self) -> String;
    /// A header's values.
    fn header_all(&self, name: &str) -> Vec<Vec<u8>>;
}

/// A validated key recipe.
#[derive(Debug)]
pub struct KeyBuilder {
    config: Config,
}

impl KeyBuilder {
    /// Checks the config for contradictions.
    pub fn new(mut config: Config) -> Result<Self, String> {
        if config.query == QueryMode::None && !(config.query_include.is_empty() && config.query_exclude.is_empty()) {
            return Err("query = \"none\" leaves nothing for query_include / query_exclude to choose from".into());
        }
        for header in &mut config.headers {
            *header = header.to_ascii_lowercase();
        }
        if let Some(header) = &mut config.response_header {
            *header = header.to_ascii_lowercase();
        }
        let parts = config.method as usize
            + config.host as usize
            + config.path as usize
            + (config.query == QueryMode::All) as usize
            + config.headers.len()
            + config.cookies.len()
            + config.device_class as usize;
        if parts == 0 {
            return Err("the key has no parts: every request would share one cache entry".into());
        }
        Ok(Self { config })
    }

    /// The response header to show the key in, if any.
    pub fn response_header(&self) -> Option<&str> {
        self.config.response_header.as_deref()
    }

    /// The key for `request`.
    pub fn key(&self, request: &dyn KeySource) -> String {
        let config = &self.config;
        let mut parts: Vec<String> = Vec::new();
        if config.method {
            parts.push(format!("m={}", request.method()));
        }
        if config.host {
            parts.push(format!("h={}", encode(&normalise_host(&request.host()))));
        }
        let path_with_query = request.path_with_query();
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        if config.path {
            parts.push(format!("p={path}"));
        }
        if config.query == QueryMode::All {
            let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .filter(|(name, _)| self.query_param_wanted(name))
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            pairs.sort();
            let canonical = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
            parts.push(format!("q={}", encode(&canonical)));
        }
        for name in &config.headers {
            let values: Vec<String> =
                request.header_all(name).iter().map(|value| String::from_utf8_lossy(value).into_owned()).collect();
            parts.push(format!("hdr.{name}={}", encode(&values.join(","))));
        }
        if !config.cookies.is_empty() {
            let cookie_headers = request.header_all("cookie");
            for name in &config.cookies {
                let value = cookie_value(&cookie_headers, name).unwrap_or_default();
                parts.push(format!("ck.{name}={}", encode(&value)));
            }
        }
        if config.device_class {
            let agent = request.header_all("user-agent").into_iter().next().unwrap_or_default();
            parts.push(format!("d={}", device_class(&String::from_utf8_lossy(&agent))));
        }
        let key = format!("{}{}", config.prefix, parts.join("|"));
        if config.hash { format!("{}{}", config.prefix, hex::encode(Sha256::digest(key.as_bytes()))) } else { key }
    }

    fn query_param_wanted(&self, name: &str) -> bool {
        let matches = |pattern: &String| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        };
        (self.config.query_include.is_empty() || self.config.query_include.iter().any(matches))
            && !self.config.query_exclude.iter().any(matches)
    }
}

/// Percent-encodes the characters that structure the key.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '%' | '|' | '=' => out.push_str(&format!("%{:02X}", ch as u32)),
            _ => out.push(ch),
        }
    }
    out
}

/// Lower case, and without the scheme's default port (which is the same host).
fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    host.strip_suffix(":80").or_else(|| host.strip_suffix(":443")).map(str::to_owned).unwrap_or(host)
}

/// The value of cookie `name` across every Cookie header.
fn cookie_value(headers: &[Vec<u8>], name: &str) -> Option<String> {
    for header in headers {
        for pair in String::from_utf8_lossy(header).split(';') {
            if let Some((key, value)) = pair.split_once('=')
                && key.trim() == name
            {
                return Some(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}

/// A coarse device class from a User-Agent: what sites commonly vary their pages on.
pub fn device_class(user_agent: &str) -> &'static str {
    let agent = user_agent.to_ascii_lowercase();
    if ["bot", "crawler", "spider", "slurp", "curl/", "wget/"].iter().any(|word| agent.contains(word)) {
        "bot"
    } else if agent.contains("ipad")
        || agent.contains("tablet")
        || (agent.contains("android") && !agent.contains("mobile"))
    {
        "tablet"
    } else if ["mobi", "iphone", "ipod", "android", "windows phone"].iter().any(|word| agent.contains(word)) {
        "mobile"
    } else {
        "desktop"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        method: &'static str,
        host: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl KeySource for Fake {
        fn method(&self) -> String {
            self.method.into()
        }
        fn host(&self) -> String {
            self.host.into()
        }
        fn path_with_query(&self) -> String {
            self.path.into()
        }
        fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
            self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_bytes().to_vec()).collect()
        }
    }

    fn get(path: &'static str) -> Fake {
        Fake { method: "GET", host: "Shop.Example:443", path, headers: Vec::new() }
    }

    fn builder(json: &str) -> KeyBuilder {
        KeyBuilder::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn the_default_key_is_method_host_path_and_sorted_query() {
        let keys = builder("{}");
        assert_eq!(keys.key(&get("/items?b=2&a=1")), "m=GET|h=shop.example|p=/items|q=a%3D1&b%3D2");
        // Order and encoding do not matter.
        assert_eq!(keys.key(&get("/items?a=%31&b=2")), keys.key(&get("/items?b=2&a=1")));
        assert_ne!(keys.key(&get("/items?a=1")), keys.key(&get("/items?a=2")));
    }

    #[test]
    fn include_and_exclude_choose_parameters() {
        let keys = builder(r#"{"query_exclude": ["utm_*", "fbclid"]}"#);
        assert_eq!(keys.key(&get("/p?id=7&utm_source=x&fbclid=y")), keys.key(&get("/p?id=7")));
        let keys = builder(r#"{"query_include": ["page", "sort"]}"#);
        assert_eq!(keys.key(&get("/p?page=2&session=abc&sort=asc")), keys.key(&get("/p?sort=asc&page=2")));
        let keys = builder(r#"{"query": "none"}"#);
        assert_eq!(keys.key(&get("/p?page=2")), keys.key(&get("/p")));
    }

    #[test]
    fn headers_cookies_and_device_class_take_part() {
        let keys = builder(
            r#"{"method": false, "host": false, "headers": ["Accept-Language"], "cookies": ["tier"], "device_class": true}"#,
        );
        let mut request = get("/");
        request.headers = vec![
            ("accept-language", "de"),
            ("cookie", "session=s1; tier=gold"),
            ("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"),
        ];
        assert_eq!(keys.key(&request), "p=/|q=|hdr.accept-language=de|ck.tier=gold|d=mobile");
        request.headers[1] = ("cookie", "tier=silver; session=s2");
        assert!(keys.key(&request).contains("ck.tier=silver"));
    }

    #[test]
    fn values_cannot_forge_separators() {
        let keys = builder(r#"{"headers": ["x-a", "x-b"]}"#);
        let mut one = get("/");
        one.headers = vec![("x-a", "1|hdr.x-b=2")];
        let mut two = get("/");
        two.headers = vec![("x-a", "1"), ("x-b", "2")];
        assert_ne!(keys.key(&one), keys.key(&two));
    }

    #[test]
    fn hashed_keys_are_fixed_length_and_keep_the_prefix() {
        let keys = builder(r#"{"hash": true, "prefix": "v2:"}"#);
        let key = keys.key(&get("/a?x=1"));
        assert!(key.starts_with("v2:") && key.len() == 3 + 64, "{key}");
        assert_ne!(key, keys.key(&get("/a?x=2")));
    }

    #[test]
    fn device_classes() {
        assert_eq!(device_class("Mozilla/5.0 (Linux; Android 14; Pixel 8) Mobile Safari/537.36"), "mobile");
        assert_eq!(device_class("Mozilla/5.0 (Linux; Android 14; SM-X710) Safari/537.36"), "tablet");
        assert_eq!(device_class("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)"), "tablet");
        assert_eq!(device_class("Mozilla/5.0 (compatible; Googlebot/2.1)"), "bot");
        assert_eq!(device_class("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"), "desktop");
    }

    #[test]
    fn empty_and_contradictory_recipes_are_refused() {
        let refused = |json: &str| KeyBuilder::new(serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(refused(r#"{"method": false, "host": false, "path": false, "query": "none"}"#).contains("no parts"));
        assert!(refused(r#"{"query": "none", "query_include": ["a"]}"#).contains("none"));
    }
}
