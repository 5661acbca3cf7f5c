//! The admin listener: `/metrics` (Prometheus text format), `/healthz` and `/upstreams` (each
//! upstream's servers with their health, ejection and load, as JSON). It serves operators, not
//! clients, so it binds to loopback unless configured otherwise.

pub mod metrics;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{self, ProxyBody};
use crate::config::Snapshot;
use crate::upstream::Availability;
use metrics::Metrics;

/// Accepts admin connections until `drain` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    drain: CancellationToken,
) {
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
        let metrics = metrics.clone();
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = answer(&request, &metrics, &snapshot.load());
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(err) =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %err, "admin connection ended with an error");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &Metrics, snapshot: &Snapshot) -> Response<ProxyBody> {
    let (status, content_type, text) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned()),
        (&Method::GET, "/upstreams") => (StatusCode::OK, "application/json", upstreams(snapshot)),
        (_, "/metrics" | "/healthz" | "/upstreams") => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n".to_owned())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".to_owned()),
    };
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Every upstream's servers with their state, for `/upstreams`.
fn upstreams(snapshot: &Snapshot) -> String {
    let now = Instant::now();
    let upstreams: serde_json::Map<String, serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, upstream)| {
            let servers: Vec<serde_json::Value> = upstream
                .servers()
                .iter()
                .map(|state| {
                    let availability = match state.availability(now) {
                        Availability::Available => "available",
                        Availability::Unhealthy => "unhealthy",
                        Availability::Ejected => "ejected",
                    };
                    serde_json::json!({
                        "address": state.server.authority.as_str(),
                        "weight": state.server.weight,
                        "state": availability,
                        "in_flight": state.in_flight(),
                        "latency_ewma_us": state.latency_ewma_us(),
                    })
                })
                .collect();
            (name.clone(), serde_json::json!({ "servers": servers }))
        })
        .collect();
    let mut text = serde_json::Value::Object(upstreams).to_string();
    text.push('\n');
    text
}
