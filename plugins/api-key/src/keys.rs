//! The key table and the decision for one request, on plain data.
//!
//! Keys are stored as SHA-256 digests: the config (and anything that leaks it) never holds a
//! usable key. A presented key is hashed and looked up by digest, so lookup time says nothing
//! about how close a guess was.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The accepted keys.
    pub keys: Vec<KeyConfig>,
    /// The header that carries the key.
    pub header: String,
    /// A query parameter that may carry the key instead (none by default: keys in URLs end up
    /// in logs).
    pub query_param: Option<String>,
    /// The header the consumer's name is forwarded in (any value the client sent is dropped).
    pub consumer_header: String,
    /// Remove the key from the request before it goes upstream.
    pub hide_credentials: bool,
    /// Consumers allowed on this route; empty allows every known consumer.
    pub allowed_consumers: Vec<String>,
    /// The realm in `WWW-Authenticate`.
    pub realm: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            header: "x-api-key".into(),
            query_param: None,
            consumer_header: "x-consumer".into(),
            hide_credentials: true,
            allowed_consumers: Vec::new(),
            realm: "sluice".into(),
        }
    }
}

/// One key: who it belongs to and its digest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The consumer's name, forwarded upstream.
    pub consumer: String,
    /// The key's SHA-256, in hex (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A known key of an allowed consumer.
    Allowed {
        /// The consumer.
        consumer: &'a str,
    },
    /// No key, or an unknown one: 401.
    Unauthenticated(&'static str),
    /// A known key whose consumer may not use this route: 403.
    Forbidden {
        /// The consumer.
        consumer: &'a str,
    },
}

/// The compiled key table.
#[derive(Debug)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], String>,
    allowed: Vec<String>,
}

impl KeyTable {
    /// Validates the keys: each digest is 64 hex digits and appears once.
    pub fn new(keys: &[KeyConfig], allowed: Vec<String>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("keys is empty: no request could pass".into());
        }
        let mut by_digest = HashMap::new();
        for (index, key) in keys.iter().enumerate() {
            let digest: [u8; 32] = hex::decode(key.sha256.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| format!("keys[{index}].sha256 is not 64 hex digits (a SHA-256 digest)"))?;
            if key.consumer.is_empty() {
                return Err(format!("keys[{index}].consumer is empty"));
            }
            if let Some(other) = by_digest.insert(digest, key.consumer.clone()) {
                return Err(format!("keys[{index}] repeats the key of consumer {other:?}"));
            }
        }
        for consumer in &allowed {
            if !by_digest.values().any(|known| known == consumer) {
                return Err(format!("allowed_consumers names {consumer:?}, which has no key"));
            }
        }
        Ok(Self { by_digest, allowed })
    }

    /// Decides on a presented key.
    pub fn check(&self, presented: Option<&[u8]>) -> Outcome<'_> {
        let Some(key) = presented.filter(|key| !key.is_empty()) else {
            return Outcome::Unauthenticated("no API key");
        };
        let digest: [u8; 32] = Sha256::digest(key).into();
        match self.by_digest.get(&digest) {
            None => Outcome::Unauthenticated("unknown API key"),
            Some(consumer) if self.allowed.is_empty() || self.allowed.contains(consumer) => {
                Outcome::Allowed { consumer }
            }
            Some(consumer) => Outcome::Forbidden { consumer },
        }
    }
}

/// The value of query parameter `name` (decoded), if present.
pub fn query_value(path_with_query: &str, name: &str) -> Option<String> {
    let (_, query) = path_with_query.split_once('?')?;
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// `path_with_query` without parameter `name`; the other parameters keep their exact encoding.
pub fn without_query_param(path_with_query: &str, name: &str) -> String {
    let Some((path, query)) = path_with_query.split_once('?') else { return path_with_query.to_owned() };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let raw_name = pair.split('=').next().unwrap_or_default();
            form_urlencoded::parse(raw_name.as_bytes()).next().is_none_or(|(key, _)| key != name)
        })
        .collect();
    if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn table(allowed: &[&str]) -> KeyTable {
        let keys = vec![
            KeyConfig { consumer: "billing".into(), sha256: digest("k-billing-1") },
            KeyConfig { consumer: "search".into(), sha256: digest("k-search-1").to_uppercase() },
        ];
        KeyTable::new(&keys, allowed.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn known_keys_name_their_consumer() {
        let table = table(&[]);
        assert_eq!(table.check(Some(b"k-billing-1")), Outcome::Allowed { consumer: "billing" });
        assert_eq!(table.check(Some(b"k-search-1")), Outcome::Allowed { consumer: "search" });
        assert_eq!(table.check(Some(b"k-billing-2")), Outcome::Unauthenticated("unknown API key"));
        assert_eq!(table.check(Some(b"")), Outcome::Unauthenticated("no API key"));
        assert_eq!(table.check(None), Outcome::Unauthenticated("no API key"));
    }

    #[test]
    fn consumers_outside_the_route_list_are_forbidden() {
        let table = table(&["search"]);
        assert_eq!(table.check(Some(b"k-billing-1")), Outcome::Forbidden { consumer: "billing" });
        assert_eq!(table.check(Some(b"k-search-1")), Outcome::Allowed { consumer: "search" });
    }

    #[test]
    fn bad_tables_are_refused() {
        let key = |sha256: &str| vec![KeyConfig { consumer: "a".into(), sha256: sha256.into() }];
        assert!(KeyTable::new(&key("abc"), vec![]).unwrap_err().contains("keys[0].sha256"));
        assert!(KeyTable::new(&[], vec![]).unwrap_err().contains("empty"));
        assert!(KeyTable::new(&key(&digest("x")), vec!["b".into()]).unwrap_err().contains("\"b\""));
        let twice = vec![
            KeyConfig { consumer: "a".into(), sha256: digest("x") },
            KeyConfig { consumer: "b".into(), sha256: digest("x") },
        ];
        assert!(KeyTable::new(&twice, vec![]).unwrap_err().contains("repeats"));
    }

    #[test]
    fn query_keys_are_read_and_removed_exactly() {
        assert_eq!(query_value("/a?x=1&api_key=k%2B1", "api_key").as_deref(), Some("k+1"));
        assert_eq!(query_value("/a", "api_key"), None);
        assert_eq!(without_query_param("/a?x=%20&api_key=k&y", "api_key"), "/a?x=%20&y");
        assert_eq!(without_query_param("/a?api_key=k", "api_key"), "/a");
        assert_eq!(without_query_param("/a?api%5Fkey=k&z=1", "api_key"), "/a?z=1");
    }
}
