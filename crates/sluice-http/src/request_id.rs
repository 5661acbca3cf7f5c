//! Request ids: taken from `X-Request-Id` when the client sent a usable one, so that a trace
//! spans every hop, and generated otherwise. An id is kept as the header value it is sent as,
//! so putting it on the upstream request and on the response copies nothing.

use std::fmt;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The request id header, set on the upstream request and on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id taken as it is.
const MAX_LEN: usize = 200;

/// One request's id: short visible ASCII, ready to be sent as a header value.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever kept, which is always text.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value (shares its bytes).
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The request's id: the incoming `X-Request-Id` if it is short visible ASCII, else a new one.
pub fn request_id(headers: &HeaderMap) -> RequestId {
    headers
        .get(X_REQUEST_ID)
        .filter(|id| !id.is_empty() && id.len() <= MAX_LEN && id.as_bytes().iter().all(u8::is_ascii_graphic))
        .map_or_else(new_request_id, |id| RequestId(id.clone()))
}

/// A fresh random id: 32 hex digits.
pub fn new_request_id() -> RequestId {
    let mut digits = [0u8; uuid::fmt::Simple::LENGTH];
    let text = uuid::Uuid::new_v4().simple().encode_lower(&mut digits);
    RequestId(HeaderValue::from_str(text).expect("hex digits are a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_ids_are_kept_others_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, "trace-42".parse().unwrap());
        assert_eq!(request_id(&headers).as_str(), "trace-42");
        headers.insert(X_REQUEST_ID, "has space".parse().unwrap());
        assert_eq!(request_id(&headers).as_str().len(), 32);
        headers.insert(X_REQUEST_ID, "x".repeat(MAX_LEN + 1).parse().unwrap());
        assert_eq!(request_id(&headers).as_str().len(), 32);
        headers.insert(X_REQUEST_ID, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert_eq!(request_id(&headers).as_str().len(), 32);
        let fresh = new_request_id();
        assert!(fresh.as_str().bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(fresh.header_value(), fresh.as_str());
    }
}
