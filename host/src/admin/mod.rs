//! The admin listener: the dashboard at `/` (`dashboard`), what the proxy knows as JSON
//! (`inventory`: `/status`, `/routes`, `/plugins`, `/tenants`, `/upstreams`, `/cache`, `/live`,
//! `/shadows`, `/tenants/usage`, `/blocks`), `/metrics` (Prometheus text format), `/healthz`,
//! and the changes (`changes`: `POST /reload`, `POST /cache/purge`, `POST /blocks`,
//! `DELETE /blocks`).
//!
//! Changes need `Authorization: Bearer <admin.reload_token>`. Reads need `admin.read_token` (or
//! the write token) when it is set, for admin listeners not on loopback; `/healthz` and the
//! dashboard's own files never do, as they say nothing about the proxy. The listener binds to
//! loopback unless configured otherwise: it serves operators, not clients.

mod changes;
mod dashboard;
mod inventory;

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Snapshot;
use crate::reload::Reloader;
use crate::telemetry::metrics::Metrics;
use sluice_cache::HttpCache;
use sluice_http::body::{self, ProxyBody};

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the admin endpoints read and act on.
#[derive(Debug)]
pub struct Admin {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The running configuration (its `admin.reload_token` and `admin.read_token` apply).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Reloads.
    pub reloader: Arc<Reloader>,
    /// The HTTP cache, for purges and its size figures.
    pub cache: Arc<HttpCache>,
    /// The other instances purges are shared with (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Accepts admin connections until `drain` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, drain: CancellationToken) {
    loop {
        let (stream, _peer) = tokio::select! {
            () = drain.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(answer(request, &admin).await) }
            });
            if let Err(err) =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %err, "admin connection ended with an error");
            }
        });
    }
}

fn text_response(status: StatusCode, content_type: &'static str, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // What the admin API says is live: never from a cache.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    text_response(status, JSON, format!("{value}\n"))
}

fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// Who may do what on the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone who reaches the listener: health and the dashboard's own files.
    Open,
    /// Reads of what the proxy knows: `admin.read_token` when set (the write token also does).
    Read,
    /// Changes: `admin.reload_token`.
    Write,
}

async fn answer(request: Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let Some(access) = access_of(&method, &path) else {
        let known = access_of(&Method::GET, &path).is_some()
            || access_of(&Method::POST, &path).is_some()
            || access_of(&Method::DELETE, &path).is_some();
        return if known {
            text_response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n".to_owned())
        } else {
            text_response(StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned())
        };
    };
    if let Err(refused) = check_access(&request, admin, access) {
        return refused;
    }
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => text_response(StatusCode::OK, TEXT, "ok\n".to_owned()),
        (Method::GET, path) if dashboard::serves(path) => dashboard::asset(&request, path),
        (Method::GET, "/metrics") => metrics(admin).await,
        (Method::POST, "/reload") => changes::reload(&request, admin).await,
        (Method::POST, "/cache/purge") => changes::purge(request, admin).await,
        (Method::GET, "/blocks") => text_response(StatusCode::OK, JSON, changes::list_bans(admin)),
        (Method::POST, "/blocks") => changes::add_ban(request, admin).await,
        (Method::DELETE, "/blocks") => changes::lift_ban(&request, admin),
        (Method::GET, path) => inventory::read(&request, admin, path),
        _ => text_response(StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
    }
}

/// Who may call `method` on `path`; `None`: no such endpoint.
fn access_of(method: &Method, path: &str) -> Option<Access> {
    match *method {
        Method::GET if path == "/healthz" || dashboard::serves(path) => Some(Access::Open),
        Method::GET if path == "/metrics" || path == "/blocks" || inventory::serves(path) => Some(Access::Read),
        Method::POST if matches!(path, "/reload" | "/cache/purge" | "/blocks") => Some(Access::Write),
        Method::DELETE if path == "/blocks" => Some(Access::Write),
        _ => None,
    }
}

/// `GET /metrics`, with the cache and ban gauges brought up to date first.
async fn metrics(admin: &Admin) -> Response<ProxyBody> {
    let stored = admin.cache.stored_size();
    admin.metrics.cache_bytes.set(i64::try_from(stored.bytes).unwrap_or(i64::MAX));
    admin.metrics.cache_entries.set(i64::try_from(stored.keys).unwrap_or(i64::MAX));
    let bans = changes::blocks(admin).active().len();
    admin.metrics.bans_active.set(i64::try_from(bans).unwrap_or(i64::MAX));
    text_response(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        admin.metrics.encode_off_workers().await,
    )
}

/// Compares without an early exit, so the time taken says nothing about how much of a guess
/// was right.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Checks the bearer token `access` needs against the running configuration's; the error is
/// the response to send.
#[allow(clippy::result_large_err)]
fn check_access(request: &Request<Incoming>, admin: &Admin, access: Access) -> Result<(), Response<ProxyBody>> {
    let snapshot = admin.snapshot.load();
    let write = snapshot.admin_reload_token.as_deref();
    let read = snapshot.admin_read_token.as_deref();
    let accepted: Vec<&str> = match access {
        Access::Open => return Ok(()),
        Access::Read if read.is_none() => return Ok(()),
        Access::Read => read.into_iter().chain(write).collect(),
        Access::Write => match write {
            Some(token) => vec![token],
            None => {
                return Err(error_response(StatusCode::FORBIDDEN, "changes over HTTP are off: set admin.reload_token"));
            }
        },
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Every accepted token is compared, so the time taken does not say which one was close.
    let matched =
        accepted.iter().fold(false, |matched, token| same_secret(presented.as_bytes(), token.as_bytes()) | matched);
    if !matched {
        let mut response = error_response(StatusCode::UNAUTHORIZED, "bad or missing token");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sluice-admin\""));
        return Err(response);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_one_access_level() {
        assert_eq!(access_of(&Method::GET, "/healthz"), Some(Access::Open));
        assert_eq!(access_of(&Method::GET, "/"), Some(Access::Open));
        for path in
            ["/metrics", "/status", "/routes", "/plugins", "/tenants", "/live", "/upstreams", "/cache", "/shadows"]
        {
            assert_eq!(access_of(&Method::GET, path), Some(Access::Read), "{path}");
        }
        assert_eq!(access_of(&Method::GET, "/tenants/usage"), Some(Access::Read));
        for path in ["/reload", "/cache/purge", "/blocks"] {
            assert_eq!(access_of(&Method::POST, path), Some(Access::Write), "{path}");
        }
        assert_eq!(access_of(&Method::DELETE, "/blocks"), Some(Access::Write));
        assert_eq!(access_of(&Method::POST, "/routes"), None);
        assert_eq!(access_of(&Method::GET, "/nothing"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
    }
}
