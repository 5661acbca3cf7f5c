//! Request ids: taken from `X-Request-Id` when the client sent a usable one, so that a trace
//! spans every hop, and generated otherwise.

use http::HeaderMap;
use http::header::HeaderName;

/// The request id header, set on the upstream request and on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id taken as it is.
const MAX_LEN: usize = 200;

/// The request's id: the incoming `X-Request-Id` if it is short visible ASCII, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|byte| byte.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_owned)
}

/// A fresh random id: 32 hex digits.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_ids_are_kept_others_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, "trace-42".parse().unwrap());
        assert_eq!(request_id(&headers), "trace-42");
        headers.insert(X_REQUEST_ID, "has space".parse().unwrap());
        assert_eq!(request_id(&headers).len(), 32);
        headers.insert(X_REQUEST_ID, "x".repeat(MAX_LEN + 1).parse().unwrap());
        assert_eq!(request_id(&headers).len(), 32);
    }
}
