//! The verification keys: static ones from config, and a JWK set fetched from an upstream and
//! cached.

use serde::Deserialize;

use crate::verify::{Algorithm, KeyMaterial};

/// A key as written in config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id; tokens whose header names a `kid` use only keys with that id.
    pub kid: Option<String>,
    /// Restrict the key to one algorithm (required for secrets: `HS256`, `HS384` or `HS512`).
    pub alg: Option<String>,
    /// A shared secret, as text.
    pub secret: Option<String>,
    /// A shared secret, base64-encoded (for binary secrets).
    pub secret_base64: Option<String>,
    /// A public key in PEM.
    pub pem: Option<String>,
}

/// One usable key.
#[derive(Debug, Clone)]
pub struct Key {
    /// Its id.
    pub kid: Option<String>,
    /// The one algorithm it is for, if restricted.
    pub algorithm: Option<Algorithm>,
    /// The key.
    pub material: KeyMaterial,
}

impl Key {
    /// Builds a key from config.
    pub fn from_config(config: &KeyConfig) -> Result<Self, String> {
        use base64::Engine;
        let algorithm = match &config.alg {
            Some(name) => Some(Algorithm::from_name(name).ok_or_else(|| format!("unknown alg {name:?}"))?),
            None => None,
        };
        let material = match (&config.secret, &config.secret_base64, &config.pem) {
            (Some(secret), None, None) => KeyMaterial::Hmac(secret.as_bytes().to_vec()),
            (None, Some(encoded), None) => KeyMaterial::Hmac(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|err| format!("secret_base64: {err}"))?,
            ),
            (None, None, Some(pem)) => KeyMaterial::from_public_pem(pem)?,
            _ => return Err("give exactly one of secret, secret_base64 and pem".into()),
        };
        if let KeyMaterial::Hmac(secret) = &material {
            if !matches!(algorithm, Some(Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512)) {
                return Err("a secret needs alg = \"HS256\", \"HS384\" or \"HS512\"".into());
            }
            if secret.len() < 32 {
                return Err(format!("the secret has {} bytes; HMAC secrets need at least 32", secret.len()));
            }
        }
        Ok(Self { kid: config.kid.clone(), algorithm, material })
    }

    /// Whether this key may check a token with `algorithm` and `kid`.
    pub fn fits(&self, algorithm: Algorithm, kid: Option<&str>) -> bool {
        self.algorithm.is_none_or(|own| own == algorithm) && kid.is_none_or(|kid| self.kid.as_deref() == Some(kid))
    }
}

/// The keys of a JWK set (`{"keys": [...]}`). Keys marked for encryption (`"use": "enc"`) are
/// skipped, and so are key types this filter does not know, so that one new key in an
/// identity provider's set does not disable the rest.
pub fn parse_jwks(set: &serde_json::Value) -> Result<(Vec<Key>, Vec<String>), String> {
    let entries = set.get("keys").and_then(|keys| keys.as_array()).ok_or("a JWK set needs a \"keys\" list")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, jwk) in entries.iter().enumerate() {
        if jwk.get("use").and_then(|value| value.as_str()) == Some("enc") {
            continue;
        }
        let kid = jwk.get("kid").and_then(|kid| kid.as_str()).map(str::to_owned);
        let algorithm = jwk.get("alg").and_then(|alg| alg.as_str()).and_then(Algorithm::from_name);
        match KeyMaterial::from_jwk(jwk) {
            Ok(material) => keys.push(Key { kid, algorithm, material }),
            Err(reason) => skipped.push(format!("keys[{index}]: {reason}")),
        }
    }
    Ok((keys, skipped))
}

/// A JWK set fetched from an upstream, refreshed on its TTL and when a token names a key id
/// the set lacks (at most once per `refresh_interval`, so forged key ids cannot flood the
/// identity provider).
#[derive(Debug, Default)]
pub struct JwksCache {
    keys: Vec<Key>,
    fetched_at_ms: Option<u64>,
    last_attempt_ms: Option<u64>,
}

/// How the cache decides to fetch.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// How long a fetched set is used.
    pub ttl_ms: u64,
    /// The least time between two fetches.
    pub refresh_interval_ms: u64,
}

impl JwksCache {
    /// The cached keys (and whether they were just fetched), fetching first when the set is
    /// missing or stale, or lacks `kid`.
    /// A failed fetch keeps the stale keys (an identity provider outage should not log every
    /// user out) and returns the reason for the log.
    pub fn keys(
        &mut self,
        now_ms: u64,
        policy: RefreshPolicy,
        kid: Option<&str>,
        fetch: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> (&[Key], bool, Option<String>) {
        let stale = self.fetched_at_ms.is_none_or(|at| now_ms >= at + policy.ttl_ms);
        let unknown_kid = kid.is_some_and(|kid| !self.keys.iter().any(|key| key.kid.as_deref() == Some(kid)));
        let may_fetch = self.last_attempt_ms.is_none_or(|at| now_ms >= at + policy.refresh_interval_ms);
        let mut problem = None;
        let mut refreshed = false;
        if (stale || unknown_kid) && may_fetch {
            self.last_attempt_ms = Some(now_ms);
            let parsed = fetch().and_then(|body| {
                let json: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|err| format!("not JSON: {err}"))?;
                parse_jwks(&json)
            });
            match parsed {
                Ok((keys, skipped)) => {
                    self.keys = keys;
                    self.fetched_at_ms = Some(now_ms);
                    refreshed = true;
                    if !skipped.is_empty() {
                        problem = Some(format!("skipped keys in the JWK set: {}", skipped.join("; ")));
                    }
                }
                Err(reason) => problem = Some(format!("fetching the JWK set failed: {reason}")),
            }
        }
        (&self.keys, refreshed, problem)
    }
}
