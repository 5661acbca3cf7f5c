//! Every way a request can fail, and the one place failures become responses.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};

use sluice_http::body::{self, ProxyBody};

use super::state::RequestState;

/// Which side of the proxy a failure belongs to; it decides the status class and whom the log
/// line should alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we will not serve.
    Client,
    /// The upstream could not be reached or did not answer in time.
    Upstream,
    /// A filter failed (trapped, ran out of time or memory, answered nonsense) and its policy
    /// is fail-closed.
    Filter,
    /// Sluice itself failed.
    Internal,
}

/// Why a request got an error response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route takes the request.
    #[error("no route matches the request")]
    NoRoute,
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's address, country or a ban refuses it (access control).
    #[error("access refused by the {} list", refusal.as_str())]
    Forbidden {
        /// Which list.
        refusal: sluice_access::Refusal,
    },
    /// A method a reverse proxy does not serve (CONNECT).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body is larger than the route allows.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The route's limit.
        limit: u64,
    },
    /// No connection could be made to the chosen server.
    #[error("cannot connect to {server}: {reason}")]
    UpstreamConnect {
        /// The server's address.
        server: String,
        /// What the connector said.
        reason: String,
    },
    /// The upstream sent no response headers within the route's timeout.
    #[error("no response from {server} within {timeout_ms} ms")]
    UpstreamTimeout {
        /// The server's address.
        server: String,
        /// The route's timeout.
        timeout_ms: u128,
    },
    /// The exchange with the upstream failed after connecting.
    #[error("request to {server} failed: {reason}")]
    UpstreamFailed {
        /// The server's address.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The upstream already has its limit of requests in flight.
    #[error("the upstream has its limit of {limit} requests in flight")]
    UpstreamOverflow {
        /// The limit (`max_requests`).
        limit: usize,
    },
    /// The client's request body broke off (bad chunked framing, or the client left mid-upload).
    #[error("the request body broke off: {reason}")]
    ClientBody {
        /// What went wrong.
        reason: String,
    },
    /// The route's timeout ran out while the client was still sending its request body.
    #[error("the request body had not arrived within {timeout_ms} ms")]
    RequestBodyTimeout {
        /// The time allowed.
        timeout_ms: u128,
    },
    /// The client went away before the response head was ready.
    #[error("the client closed the connection before the response")]
    ClientClosed,
    /// The response body failed after its head had gone to the client (a fail-closed filter in
    /// the response body, or the upstream's body breaking off); the client got a cut response.
    #[error("the response body broke off: {message}")]
    ResponseBodyFailed {
        /// Whose failure it was.
        side: Side,
        /// A short name for metrics labels.
        kind: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A fail-closed filter failed.
    #[error(transparent)]
    Filter(#[from] sluice_runtime::FilterError),
    /// Sluice could not build the upstream request.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::BadRequest(_) | Self::ClientBody { .. } => StatusCode::BAD_REQUEST,
            Self::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            // nginx's code for a request whose client left; never sent, only logged.
            Self::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::ResponseBodyFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamConnect { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamOverflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Filter(error) => error.status(),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whose failure it is.
    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute
            | Self::Forbidden { .. }
            | Self::BadRequest(_)
            | Self::MethodNotAllowed
            | Self::BodyTooLarge { .. }
            | Self::ClientBody { .. }
            | Self::RequestBodyTimeout { .. }
            | Self::ClientClosed => Side::Client,
            Self::ResponseBodyFailed { side, .. } => *side,
            Self::UpstreamConnect { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamOverflow { .. } => Side::Upstream,
            Self::Filter(_) => Side::Filter,
            Self::Internal(_) => Side::Internal,
        }
    }

    /// Whether the client's connection closes after the error response: after a malformed
    /// request, the connection's framing cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_) | Self::MethodNotAllowed | Self::ClientBody { .. } | Self::RequestBodyTimeout { .. }
        )
    }

    /// A short name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::Forbidden { .. } => "access_refused",
            Self::BadRequest(_) => "bad_request",
            Self::ClientBody { .. } => "client_body",
            Self::RequestBodyTimeout { .. } => "request_body_timeout",
            Self::ClientClosed => "client_closed",
            Self::ResponseBodyFailed { kind, .. } => kind,
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UpstreamConnect { .. } => "upstream_connect",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::UpstreamOverflow { .. } => "upstream_overflow",
            Self::Filter(_) => "filter",
            Self::Internal(_) => "internal",
        }
    }
}

/// The response to a request that failed with `error`, which `state` keeps for the log line.
pub(crate) fn respond(error: ProxyError, state: &mut RequestState) -> Response<ProxyBody> {
    let mut response = error_response(&error, state.id.as_str());
    // HTTP/2 frames each stream apart: only an HTTP/1 connection has to go.
    if error.closes_connection() && state.version < Version::HTTP_2 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Nothing of a failed request is stored.
    state.fill = None;
    state.error = Some(error);
    response
}

/// The response for `error`: the status, its reason and the request id, in plain text so that a
/// user can quote it to whoever reads the logs. Details of upstreams stay in the log.
pub fn error_response(error: &ProxyError, request_id: &str) -> Response<ProxyBody> {
    local_response(error.status(), request_id)
}

/// A short plain-text response naming the status and the request id.
pub fn local_response(status: StatusCode, request_id: &str) -> Response<ProxyBody> {
    let text = format!("{} {}\nrequest id: {request_id}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_names_status_and_request_id() {
        let error = ProxyError::UpstreamTimeout { server: "10.0.0.1:80".into(), timeout_ms: 5 };
        let response = error_response(&error, "abc123");
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "504 Gateway Timeout\nrequest id: abc123\n");
        assert_eq!(error.side(), Side::Upstream);
    }
}
