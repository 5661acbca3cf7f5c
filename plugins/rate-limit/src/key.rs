//! What a limit counts by: the client's IP, a header, or a claim of the bearer token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Where the limit key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client's IP address.
    ClientIp,
    /// A request header's value.
    Header(String),
    /// A claim in the `Authorization: Bearer` JSON Web Token. The token is not verified here:
    /// put `jwt-auth` before this filter so only verified tokens reach it.
    Claim(String),
}

impl KeySource {
    /// Parses `client-ip`, `header:NAME` or `claim:NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "client-ip" => Ok(Self::ClientIp),
            Some(("header", name)) if !name.is_empty() => Ok(Self::Header(name.to_ascii_lowercase())),
            Some(("claim", name)) if !name.is_empty() => Ok(Self::Claim(name.to_owned())),
            _ => Err(format!("key {text:?} must be \"client-ip\", \"header:NAME\" or \"claim:NAME\"")),
        }
    }

    /// A short label for metrics and key names.
    pub fn label(&self) -> String {
        match self {
            Self::ClientIp => "ip".into(),
            Self::Header(name) => format!("h.{name}"),
            Self::Claim(name) => format!("c.{name}"),
        }
    }
}

/// The value of claim `name` in a bearer token's payload, as text.
pub fn bearer_claim(authorization: &str, name: &str) -> Option<String> {
    let token = authorization.strip_prefix("Bearer ").or_else(|| authorization.strip_prefix("bearer "))?;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get(name)? {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(KeySource::parse("client-ip"), Ok(KeySource::ClientIp));
        assert_eq!(KeySource::parse("header:X-User"), Ok(KeySource::Header("x-user".into())));
        assert_eq!(KeySource::parse("claim:sub"), Ok(KeySource::Claim("sub".into())));
        assert!(KeySource::parse("cookie:a").is_err());
        assert!(KeySource::parse("header:").is_err());
    }

    #[test]
    fn claims_come_from_the_bearer_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","tier":3}"#);
        let header = format!("Bearer eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln");
        assert_eq!(bearer_claim(&header, "sub").as_deref(), Some("alice"));
        assert_eq!(bearer_claim(&header, "tier").as_deref(), Some("3"));
        assert_eq!(bearer_claim(&header, "missing"), None);
        assert_eq!(bearer_claim("Basic YTpi", "sub"), None);
        assert_eq!(bearer_claim("Bearer not-a-token", "sub"), None);
    }
}
