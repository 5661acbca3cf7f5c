//! Phase 1, admission: what no route may see is refused here (CONNECT and TRACE, a missing,
//! ambiguous or credential-carrying Host, a path that climbs above the root), a listener that
//! only redirects to HTTPS answers, and the path is normalised (RFC 3986 section 6.2.2:
//! percent-encoded unreserved characters decoded, the rest upper-cased, dot-segments resolved)
//! so that routing, filters and the upstream all see the same one: `/%61dmin` and
//! `/x/%2e%2e/admin` are `/admin` to every route. An encoded `/` (`%2F`) stays encoded.

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use sluice_http::body::{self, ProxyBody};

use super::errors::ProxyError;
use super::forwarding;
use super::state::RequestState;
use crate::routing::normalize_host;

/// A client's request body, whichever protocol brought it: hyper's for HTTP/1.1 and HTTP/2 (no
/// box on the hot path), boxed for HTTP/3.
pub(crate) enum ClientBody {
    /// From hyper's server.
    Hyper(Incoming),
    /// From any other server (HTTP/3's QUIC streams).
    Boxed(ProxyBody),
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, body::BoxError>>> {
        match self.get_mut() {
            Self::Hyper(incoming) => std::pin::Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Self::Boxed(boxed) => std::pin::Pin::new(boxed).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(incoming) => incoming.is_end_stream(),
            Self::Boxed(boxed) => boxed.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(incoming) => incoming.size_hint(),
            Self::Boxed(boxed) => boxed.size_hint(),
        }
    }
}

/// A request that passed admission.
pub(crate) struct Admitted {
    /// Its head, with the normalised path.
    pub(crate) parts: http::request::Parts,
    /// Its body, as it streams in.
    pub(crate) body: ClientBody,
    /// The host the client asked for, with port, as it sent it.
    pub(crate) authority: Option<String>,
    /// That host, lower case and without port, for routing.
    pub(crate) host: String,
    /// The normalised path and the query.
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// The client's side of a protocol switch it asked for (HTTP/1.1 `Upgrade`).
    pub(crate) client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// What admission made of a request.
// Made and taken apart once per request: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission {
    /// On to routing.
    Admitted(Admitted),
    /// Answered already: the listener redirects every request to HTTPS.
    Answered(Response<ProxyBody>),
}

/// Admits `request` or says why not.
pub(crate) fn admit(mut request: Request<ClientBody>, state: &RequestState) -> Result<Admission, ProxyError> {
    // CONNECT would make the proxy a tunnel to anywhere; TRACE would echo the request back,
    // headers the proxy adds included.
    if request.method() == Method::CONNECT || request.method() == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed);
    }
    let authority = request_authority(&request)?;
    if let Some(port) = state.connection.redirect_to_https {
        let host = authority.as_deref().map(normalize_host).unwrap_or_else(|| "localhost".to_owned());
        let host = if port == 443 { host } else { format!("{host}:{port}") };
        let path_and_query = request.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        return Ok(Admission::Answered(redirect_response(
            StatusCode::PERMANENT_REDIRECT,
            &format!("https://{host}{path_and_query}"),
        )));
    }
    let host = authority.as_deref().map(normalize_host).unwrap_or_default();
    let path = normalize_path(request.uri().path()).ok_or(ProxyError::BadRequest("invalid path"))?;
    let query = request.uri().query().map(str::to_owned);
    let client_upgrade = forwarding::requested_upgrade(request.headers())
        .filter(|_| request.version() == Version::HTTP_11)
        .map(|_| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    if parts.uri.path() != path {
        let with_query = match &query {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let mut uri_parts = std::mem::take(&mut parts.uri).into_parts();
        uri_parts.path_and_query =
            Some(PathAndQuery::try_from(with_query).map_err(|_| ProxyError::BadRequest("invalid path"))?);
        parts.uri = Uri::from_parts(uri_parts).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    }
    Ok(Admission::Admitted(Admitted { parts, body, authority, host, path, query, client_upgrade }))
}

/// The host the client asked for, with port: the URI's authority (HTTP/2, absolute-form) or the
/// Host header. HTTP/1.1 requires one (RFC 9112 section 3.2).
fn request_authority<B>(request: &Request<B>) -> Result<Option<String>, ProxyError> {
    // Credentials have no place in an HTTP authority (RFC 9110 section 4.2.4, RFC 9112
    // section 3.2): a request that carries them is refused, not routed on what follows the `@`.
    if let Some(authority) = request.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest("credentials in the authority"));
        }
        return Ok(Some(authority.as_str().to_owned()));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (Some(host), None) => {
            let host = host.to_str().map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            if host.contains('@') || host.parse::<http::uri::Authority>().is_err() {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            Ok(Some(host.to_owned()))
        }
        (None, _) if request.version() == Version::HTTP_11 => Err(ProxyError::BadRequest("missing Host header")),
        (None, _) => Ok(None),
    }
}

/// Normalises percent-encoding (RFC 3986 section 6.2.2.2): escapes of unreserved characters
/// are decoded, other escapes get upper-case hex digits. `None` for a broken escape.
fn normalize_percent_encoding(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut normalized = String::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'%' {
            normalized.push(char::from(bytes[index]));
            index += 1;
            continue;
        }
        let hex = bytes.get(index + 1..index + 3)?;
        let decoded = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
            normalized.push(char::from(decoded));
        } else {
            normalized.push('%');
            normalized.push_str(&std::str::from_utf8(hex).ok()?.to_ascii_uppercase());
        }
        index += 3;
    }
    Some(std::borrow::Cow::Owned(normalized))
}

/// Normalises percent-encoding, then resolves `.` and `..` segments (RFC 3986 section 5.2.4), so
/// that routes cannot be bypassed with `/public/../admin`, `/public/%2e%2e/admin` or `/%61dmin`.
/// `None` for a path that is not absolute, has a broken escape, or climbs above the root.
fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    // The path of a parsed URI is ASCII: escapes decode only to unreserved ASCII characters.
    let path = normalize_percent_encoding(path)?;
    if !path.split('/').any(|segment| segment == "." || segment == "..") {
        return Some(path.into_owned());
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop()?;
                trailing_slash = true;
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if trailing_slash && !normalized.ends_with('/') {
        normalized.push('/');
    }
    Some(normalized)
}

/// A redirect to `location` (a 400 when `location` is not a valid header value).
pub(crate) fn redirect_response(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    match HeaderValue::try_from(location) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize_path("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(normalize_path("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/..").as_deref(), None);
        assert_eq!(normalize_path("*"), None);
    }

    #[test]
    fn percent_encoding_is_normalised_before_dot_segments() {
        assert_eq!(normalize_path("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/x/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/x/%2E./admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a%2fb%3f").as_deref(), Some("/a%2Fb%3F"), "reserved characters stay encoded");
        assert_eq!(normalize_path("/caf%c3%a9").as_deref(), Some("/caf%C3%A9"));
        assert_eq!(normalize_path("/%2e%2e/etc"), None, "climbs above the root");
        assert_eq!(normalize_path("/bad%zz"), None);
        assert_eq!(normalize_path("/cut%4"), None);
    }
}
