//! The dashboard: one page, its script and its style sheet, built into the binary (no CDN, no
//! build step: it works offline and on an air-gapped host). The page reads the same JSON
//! endpoints as any other client of the admin API and polls them every second; it holds no
//! data itself, so its files are served without a token and it asks for one when the reads
//! need it.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use sluice_http::body::{self, ProxyBody};

/// The dashboard's files: path, content type, contents.
const ASSETS: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("dashboard/index.html")),
    ("/dashboard.js", "text/javascript; charset=utf-8", include_str!("dashboard/dashboard.js")),
    ("/dashboard.css", "text/css; charset=utf-8", include_str!("dashboard/dashboard.css")),
];

/// Scripts and styles only from the admin listener itself; no frames, no other origins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `path` is one of the dashboard's files.
pub(super) fn serves(path: &str) -> bool {
    ASSETS.iter().any(|(asset, _, _)| *asset == path) || path == "/index.html"
}

/// A fingerprint of the files as built, for `ETag`.
fn etag() -> &'static HeaderValue {
    static ETAG: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for (path, _, contents) in ASSETS {
            (path, contents).hash(&mut hasher);
        }
        HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish())).expect("hex is a valid header value")
    });
    &ETAG
}

/// Answers `GET` for one of the dashboard's files.
pub(super) fn asset(request: &Request<Incoming>, path: &str) -> Response<ProxyBody> {
    let path = if path == "/index.html" { "/" } else { path };
    let Some((_, content_type, contents)) = ASSETS.iter().find(|(asset, _, _)| *asset == path) else {
        return super::text_response(StatusCode::NOT_FOUND, super::TEXT, "not found\n".to_owned());
    };
    let revalidated = request.headers().get(header::IF_NONE_MATCH).is_some_and(|tag| tag == etag());
    let mut response = if revalidated {
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(body::full(*contents));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag().clone());
    // Kept, but checked each time: a new Sluice brings a new dashboard.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
