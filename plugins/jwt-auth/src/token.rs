//! Reading a compact JWS and checking its claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::verify::Algorithm;

/// A token split into its parts, signature not yet checked.
#[derive(Debug)]
pub struct Token<'a> {
    /// The algorithm its header names.
    pub algorithm: Algorithm,
    /// Its key id, if any.
    pub kid: Option<String>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The signature.
    pub signature: Vec<u8>,
    /// The claims.
    pub claims: Map<String, Value>,
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| format!("the {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("the {what} is not a JSON object")),
    }
}

impl<'a> Token<'a> {
    /// Splits and decodes `text`; refuses `alg: none`, unknown algorithms and critical
    /// extensions this verifier does not understand.
    pub fn parse(text: &'a str) -> Result<Self, String> {
        let mut parts = text.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the token is not three dot-separated parts".into());
        };
        let header_map = decode_json(header, "token header")?;
        let name = header_map.get("alg").and_then(Value::as_str).unwrap_or_default();
        let algorithm = Algorithm::from_name(name).ok_or_else(|| format!("algorithm {name:?} is not accepted"))?;
        if header_map.contains_key("crit") {
            return Err("the token has critical header extensions".into());
        }
        let kid = header_map.get("kid").and_then(Value::as_str).map(str::to_owned);
        let claims = decode_json(payload, "token payload")?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "the signature is not base64url".to_owned())?;
        let signing_input = &text.as_bytes()[..header.len() + 1 + payload.len()];
        Ok(Self { algorithm, kid, signing_input, signature, claims })
    }
}

/// What a token's claims must satisfy.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// Accepted issuers (`iss`); empty: any.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`, a string or a list); empty: any.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Claims that must be present.
    pub required: Vec<String>,
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or_else(|| format!("the {name} claim is not a number")),
    }
}

impl ClaimRules {
    /// Checks `claims` at `now` (seconds since the epoch).
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), String> {
        let now = now as f64;
        let leeway = self.leeway as f64;
        match numeric_date(claims, "exp")? {
            Some(exp) if now >= exp + leeway => return Err("the token has expired".into()),
            None if self.require_exp => return Err("the token has no expiry (exp)".into()),
            _ => {}
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now + leeway < nbf
        {
            return Err("the token is not valid yet (nbf)".into());
        }
        if !self.issuers.is_empty() {
            let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
            if !self.issuers.iter().any(|accepted| accepted == issuer) {
                return Err(format!("issuer {issuer:?} is not accepted"));
            }
        }
        if !self.audiences.is_empty() {
            let audiences: Vec<&str> = match claims.get("aud") {
                Some(Value::String(one)) => vec![one.as_str()],
                Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !audiences.iter().any(|aud| self.audiences.iter().any(|accepted| accepted == aud)) {
                return Err("the token is not for this audience".into());
            }
        }
        if let Some(missing) = self.required.iter().find(|claim| !claims.contains_key(claim.as_str())) {
            return Err(format!("the token lacks the {missing} claim"));
        }
        Ok(())
    }
}

/// A claim as a header value: strings as they are, anything else as JSON.
pub fn claim_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
