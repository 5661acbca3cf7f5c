//! Authenticating one token: pick the keys that fit it, check the signature, then the claims.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::{JwksCache, Key, KeyConfig, RefreshPolicy};
use crate::token::{ClaimRules, Token};
use crate::verify::Algorithm;

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Keys given in config.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// An inline JWK set (`{"keys": [...]}`).
    pub jwks: Option<Value>,
    /// A JWK set fetched from an upstream the tenant was granted.
    pub jwks_url: Option<JwksUrl>,
    /// Algorithms accepted; default: all that the keys support.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Accepted issuers; empty: any.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences; empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway: u64,
    /// Refuse tokens without `exp`.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Claims every token must have.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The header carrying `Bearer <token>`.
    #[serde(default = "default_header")]
    pub header: String,
    /// A cookie that may carry the token instead.
    pub cookie: Option<String>,
    /// Claims to forward upstream: claim name to header name. Headers of these names sent by the
    /// client are removed first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Keep the token in the request sent upstream.
    #[serde(default = "yes")]
    pub forward_token: bool,
    /// The realm in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// Where a JWK set is fetched from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksUrl {
    /// The upstream (by name) serving it.
    pub upstream: String,
    /// Its path.
    pub path: String,
    /// How long a fetched set is used, seconds.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: u64,
    /// The least time between fetches (also on unknown key ids), seconds.
    #[serde(default = "default_refresh")]
    pub refresh_interval: u64,
}

fn default_leeway() -> u64 {
    60
}
fn yes() -> bool {
    true
}
fn default_header() -> String {
    "authorization".into()
}
fn default_realm() -> String {
    "sluice".into()
}
fn default_cache_ttl() -> u64 {
    600
}
fn default_refresh() -> u64 {
    30
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token at all (RFC 6750: the challenge carries no error code).
    Missing,
    /// A token that failed, and why.
    Invalid(String),
}

/// How many verified tokens an instance remembers.
const VERIFIED_CAPACITY: usize = 512;
/// How long a remembered signature counts, so that a key dropped from a JWK set stops
/// vouching for its tokens soon after.
const VERIFIED_TTL_MS: u64 = 300_000;

/// Static keys, the JWKS cache, the rules, and the tokens whose signatures were checked lately.
#[derive(Debug)]
pub struct Authenticator {
    static_keys: Vec<Key>,
    jwks: Option<(JwksCache, RefreshPolicy)>,
    allowed: Vec<Algorithm>,
    rules: ClaimRules,
    /// Token text to its claims and when its signature was verified. A client sends the same
    /// token many times; an RSA verification in Wasm costs close to a millisecond, a lookup
    /// well under a microsecond. Claims are still checked on every request.
    verified: HashMap<String, (Map<String, Value>, u64)>,
}

impl Authenticator {
    /// Validates the key and claim settings of `config`.
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut static_keys = config
            .keys
            .iter()
            .enumerate()
            .map(|(index, key)| Key::from_config(key).map_err(|err| format!("keys[{index}]: {err}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(set) = &config.jwks {
            let (keys, skipped) = crate::keys::parse_jwks(set).map_err(|err| format!("jwks: {err}"))?;
            if let Some(problem) = skipped.first() {
                return Err(format!("jwks: {problem}"));
            }
            static_keys.extend(keys);
        }
        let jwks = config.jwks_url.as_ref().map(|url| {
            let policy =
                RefreshPolicy { ttl_ms: url.cache_ttl * 1000, refresh_interval_ms: url.refresh_interval * 1000 };
            (JwksCache::default(), policy)
        });
        if static_keys.is_empty() && jwks.is_none() {
            return Err("no keys: give keys, jwks or jwks_url".into());
        }
        let allowed = config
            .algorithms
            .iter()
            .map(|name| Algorithm::from_name(name).ok_or_else(|| format!("algorithms: {name:?} is not supported")))
            .collect::<Result<Vec<_>, _>>()?;
        let rules = ClaimRules {
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway,
            require_exp: config.require_exp,
            required: config.required_claims.clone(),
        };
        Ok(Self { static_keys, jwks, allowed, rules, verified: HashMap::new() })
    }

    /// Verifies `token` at `now_ms`. `fetch_jwks` is called only when the JWK set must be
    /// (re)fetched; `log` receives fetch problems.
    pub fn authenticate(
        &mut self,
        token: Option<&str>,
        now_ms: u64,
        fetch_jwks: impl FnOnce() -> Result<Vec<u8>, String>,
        log: impl FnOnce(&str),
    ) -> Result<Map<String, Value>, AuthError> {
        let text = token.filter(|token| !token.is_empty()).ok_or(AuthError::Missing)?;
        if let Some((claims, at)) = self.verified.get(text)
            && now_ms < at + VERIFIED_TTL_MS
        {
            self.rules.check(claims, now_ms / 1000).map_err(AuthError::Invalid)?;
            return Ok(claims.clone());
        }
        let token = Token::parse(text).map_err(AuthError::Invalid)?;
        if !self.allowed.is_empty() && !self.allowed.contains(&token.algorithm) {
            return Err(AuthError::Invalid("the token's algorithm is not accepted here".into()));
        }
        let kid = token.kid.as_deref();
        let fits = |key: &&Key| key.fits(token.algorithm, kid);
        let mut verified = self
            .static_keys
            .iter()
            .filter(fits)
            .any(|key| key.material.verify(token.algorithm, token.signing_input, &token.signature));
        if !verified && let Some((cache, policy)) = &mut self.jwks {
            let (keys, refreshed, problem) = cache.keys(now_ms, *policy, kid, fetch_jwks);
            if let Some(problem) = problem {
                log(&problem);
            }
            verified = keys
                .iter()
                .filter(fits)
                .any(|key| key.material.verify(token.algorithm, token.signing_input, &token.signature));
            if refreshed {
                // The key set changed: signatures checked against the old one no longer count.
                self.verified.clear();
            }
        }
        if !verified {
            return Err(AuthError::Invalid("the signature does not verify with any configured key".into()));
        }
        self.rules.check(&token.claims, now_ms / 1000).map_err(AuthError::Invalid)?;
        if self.verified.len() >= VERIFIED_CAPACITY {
            self.verified.retain(|_, (_, at)| now_ms < *at + VERIFIED_TTL_MS);
            if self.verified.len() >= VERIFIED_CAPACITY {
                self.verified.clear();
            }
        }
        self.verified.insert(text.to_owned(), (token.claims.clone(), now_ms));
        Ok(token.claims)
    }
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name` in a Cookie header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim())
    })
}
