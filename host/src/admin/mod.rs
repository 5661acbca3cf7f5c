//! The admin listener: `/metrics` (Prometheus text format), `/healthz`, `/upstreams` (each
//! upstream's servers with their health, ejection and load, as JSON), `/status` (configuration
//! generation, plugins, the last reload error), `GET /blocks` (bans in force), `POST /reload`,
//! `GET /tenants/usage` (each tenant's usage per interval, for billing), `POST /cache/purge`,
//! `POST /blocks` and `DELETE /blocks` (token-protected). It serves operators, not clients, so it binds to loopback unless configured
//! otherwise.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Snapshot;
use crate::reload::Reloader;
use crate::telemetry::metrics::Metrics;
use sluice_cache::{HttpCache, PurgeTarget};
use sluice_http::body::{self, ProxyBody};
use sluice_upstream::Availability;

/// What the admin endpoints read and act on.
#[derive(Debug)]
pub struct Admin {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The running configuration.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Reloads.
    pub reloader: Arc<Reloader>,
    /// The token `POST /reload` and `POST /cache/purge` require.
    pub reload_token: Option<Arc<str>>,
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
    response
}

async fn answer(request: Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let stored = admin.cache.stored_size();
            admin.metrics.cache_bytes.set(i64::try_from(stored.bytes).unwrap_or(i64::MAX));
            admin.metrics.cache_entries.set(i64::try_from(stored.keys).unwrap_or(i64::MAX));
            let bans = blocks(admin).active().len();
            admin.metrics.bans_active.set(i64::try_from(bans).unwrap_or(i64::MAX));
            text_response(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                admin.metrics.encode_off_workers().await,
            )
        }
        (&Method::GET, "/healthz") => text_response(StatusCode::OK, TEXT, "ok\n".to_owned()),
        (&Method::GET, "/upstreams") => text_response(StatusCode::OK, JSON, upstreams(&admin.snapshot.load())),
        (&Method::GET, "/status") => text_response(StatusCode::OK, JSON, status(admin)),
        (&Method::POST, "/reload") => reload(&request, admin).await,
        (&Method::POST, "/cache/purge") => purge(request, admin).await,
        (&Method::GET, "/blocks") => text_response(StatusCode::OK, JSON, list_bans(admin)),
        (&Method::POST, "/blocks") => add_ban(request, admin).await,
        (&Method::DELETE, "/blocks") => lift_ban(&request, admin),
        (&Method::GET, "/tenants/usage") => tenants_usage(&request, admin),
        (
            _,
            "/metrics" | "/healthz" | "/upstreams" | "/status" | "/reload" | "/cache/purge" | "/blocks"
            | "/tenants/usage",
        ) => text_response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n".to_owned()),
        _ => text_response(StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
    }
}

/// `GET /tenants/usage`: what each tenant used, per interval (see docs/operations.md).
fn tenants_usage(request: &Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    const JSON: &str = "application/json";
    use crate::telemetry::usage::{UsageQuery, usage_report};
    match UsageQuery::parse(request.uri().query()) {
        Ok(query) => {
            let ledger = admin.snapshot.load().services.runtime.services().usage.clone();
            text_response(StatusCode::OK, JSON, format!("{}\n", usage_report(&ledger, &query)))
        }
        Err(message) => {
            text_response(StatusCode::BAD_REQUEST, JSON, format!("{}\n", serde_json::json!({ "error": message })))
        }
    }
}

/// Compares without an early exit, so the time taken says nothing about how much of a guess
/// was right.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Checks `Authorization: Bearer <admin.reload_token>`; the error is the response to send.
#[allow(clippy::result_large_err)]
fn check_token(request: &Request<Incoming>, admin: &Admin) -> Result<(), Response<ProxyBody>> {
    const JSON: &str = "application/json";
    let Some(token) = &admin.reload_token else {
        let message = serde_json::json!({"error": "changes over HTTP are off: set admin.reload_token"});
        return Err(text_response(StatusCode::FORBIDDEN, JSON, format!("{message}\n")));
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same_secret(presented.as_bytes(), token.as_bytes()) {
        let mut response = text_response(
            StatusCode::UNAUTHORIZED,
            JSON,
            format!("{}\n", serde_json::json!({"error": "bad or missing token"})),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sluice-admin\""));
        return Err(response);
    }
    Ok(())
}

/// What `POST /cache/purge` takes: exactly one of key, prefix and tag, optionally one route.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    key: Option<String>,
    prefix: Option<String>,
    tag: Option<String>,
    route: Option<String>,
}

/// `POST /cache/purge` with a JSON body such as `{"tag": "products"}`; token-protected.
async fn purge(request: Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    const JSON: &str = "application/json";
    if let Err(refused) = check_token(&request, admin) {
        return refused;
    }
    let bad = |message: String| {
        text_response(StatusCode::BAD_REQUEST, JSON, format!("{}\n", serde_json::json!({"error": message})))
    };
    let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return bad(format!("could not read the body: {err}")),
    };
    let wanted: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(wanted) => wanted,
        Err(err) => return bad(format!("expected {{\"key\" | \"prefix\" | \"tag\": ..., \"route\"?: ...}}: {err}")),
    };
    let target = match (&wanted.key, &wanted.prefix, &wanted.tag) {
        (Some(key), None, None) => PurgeTarget::Key(key),
        (None, Some(prefix), None) => PurgeTarget::Prefix(prefix),
        (None, None, Some(tag)) => PurgeTarget::Tag(tag),
        _ => return bad("give exactly one of key, prefix and tag".to_owned()),
    };
    let purged = admin.cache.purge(target, wanted.route.as_deref());
    if let Some(cluster) = &admin.cluster {
        cluster.purged(target, wanted.route.as_deref());
    }
    admin.metrics.cache_purged.inc_by(purged as u64);
    tracing::info!(?target, route = wanted.route.as_deref().unwrap_or("*"), purged, "cache purged");
    text_response(StatusCode::OK, JSON, format!("{}\n", serde_json::json!({"purged": purged})))
}

/// The block list: the runtime's, which outlives every configuration generation.
fn blocks(admin: &Admin) -> Arc<sluice_access::BlockList> {
    admin.snapshot.load().services.runtime.services().blocks.clone()
}

fn ban_json(ban: &sluice_access::Ban) -> serde_json::Value {
    let now = Instant::now();
    let (scope, tenant) = match &ban.scope {
        sluice_access::BanScope::All => ("all", None),
        sluice_access::BanScope::Tenant(name) => ("tenant", Some(name.to_string())),
    };
    let origin = match &ban.origin {
        sluice_access::BanOrigin::Admin => serde_json::json!({"by": "admin"}),
        sluice_access::BanOrigin::Filter { route, filter } => {
            serde_json::json!({"by": "filter", "route": &**route, "filter": &**filter})
        }
    };
    serde_json::json!({
        "address": ban.network.to_string(),
        "scope": scope,
        "tenant": tenant,
        "reason": ban.reason,
        "origin": origin,
        "expires_at": humantime::format_rfc3339_millis(ban.until_wall).to_string(),
        "expires_in_ms": u64::try_from(ban.until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
    })
}

/// `GET /blocks`: every ban in force, soonest to end first.
fn list_bans(admin: &Admin) -> String {
    let bans: Vec<serde_json::Value> = blocks(admin).active().iter().map(ban_json).collect();
    format!("{}\n", serde_json::json!({ "bans": bans }))
}

/// What `POST /blocks` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    /// An address or a CIDR range.
    address: String,
    /// How long, such as `10m` or `1h 30m`.
    duration: String,
    /// Why (kept with the ban, shown by `GET /blocks`).
    #[serde(default)]
    reason: String,
    /// Close only this tenant's routes (default: every route).
    tenant: Option<String>,
}

/// `POST /blocks` with `{"address": "192.0.2.7", "duration": "10m", "reason": "...",
/// "tenant"?: "..."}`; token-protected. Banning an address banned already extends the ban.
async fn add_ban(request: Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    const JSON: &str = "application/json";
    if let Err(refused) = check_token(&request, admin) {
        return refused;
    }
    let bad = |message: String| {
        text_response(StatusCode::BAD_REQUEST, JSON, format!("{}\n", serde_json::json!({"error": message})))
    };
    let body = match http_body_util::Limited::new(request.into_body(), 16 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return bad(format!("could not read the body: {err}")),
    };
    let wanted: BanBody = match serde_json::from_slice(&body) {
        Ok(wanted) => wanted,
        Err(err) => {
            return bad(format!(
                "expected {{\"address\": ..., \"duration\": ..., \"reason\"?: ..., \"tenant\"?: ...}}: {err}"
            ));
        }
    };
    let Some(network) = sluice_access::parse_network(&wanted.address) else {
        return bad(format!("{:?} is not an address or a CIDR range", wanted.address));
    };
    let duration = match humantime::parse_duration(&wanted.duration) {
        Ok(duration) => duration,
        Err(err) => return bad(format!("duration {:?}: {err}", wanted.duration)),
    };
    if wanted.reason.len() > 1024 {
        return bad("reason: at most 1024 bytes".to_owned());
    }
    let scope = match wanted.tenant {
        Some(tenant) => sluice_access::BanScope::Tenant(tenant.into()),
        None => sluice_access::BanScope::All,
    };
    let ban = sluice_access::BanRequest {
        network,
        scope,
        duration,
        reason: wanted.reason,
        origin: sluice_access::BanOrigin::Admin,
        tenant_limit: usize::MAX,
    };
    match blocks(admin).ban(ban) {
        Ok(ban) => {
            tracing::info!(target: "sluice::access", address = %ban.network, reason = %ban.reason, duration = ?duration, "client banned by the admin API");
            text_response(StatusCode::CREATED, JSON, format!("{}\n", ban_json(&ban)))
        }
        Err(err @ sluice_access::BanError::Full { .. }) => text_response(
            StatusCode::INSUFFICIENT_STORAGE,
            JSON,
            format!("{}\n", serde_json::json!({"error": err.to_string()})),
        ),
        Err(err) => bad(err.to_string()),
    }
}

/// `DELETE /blocks?address=192.0.2.7[&tenant=NAME]`: lifts the bans on exactly that address or
/// range (in every scope unless a tenant is named); token-protected.
fn lift_ban(request: &Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    const JSON: &str = "application/json";
    if let Err(refused) = check_token(request, admin) {
        return refused;
    }
    let query = request.uri().query().unwrap_or("");
    let value = |name: &str| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
    };
    let Some(network) = value("address").as_deref().and_then(sluice_access::parse_network) else {
        let message = serde_json::json!({"error": "give ?address=ADDRESS or ?address=RANGE"});
        return text_response(StatusCode::BAD_REQUEST, JSON, format!("{message}\n"));
    };
    let scope = value("tenant").map(|tenant| sluice_access::BanScope::Tenant(tenant.into()));
    let lifted = blocks(admin).lift(network, scope.as_ref());
    tracing::info!(target: "sluice::access", address = %network, lifted, "bans lifted by the admin API");
    text_response(StatusCode::OK, JSON, format!("{}\n", serde_json::json!({"lifted": lifted})))
}

/// `POST /reload`: re-reads the configuration file; `Authorization: Bearer <admin.reload_token>`.
/// It answers `202` at once and reloads in the background (a reload may build plugins for
/// minutes), its outcome in `GET /status`; with `?wait=true` it answers when the reload is done.
async fn reload(request: &Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    const JSON: &str = "application/json";
    if let Err(refused) = check_token(request, admin) {
        return refused;
    }
    let wait = request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair == "wait=true"));
    if !wait && admin.reloader.reload_from_source_in_background() {
        let generation = admin.reloader.status().generation;
        let body = serde_json::json!({"accepted": true, "generation": generation, "status": "/status"});
        return text_response(StatusCode::ACCEPTED, JSON, format!("{body}\n"));
    }
    match admin.reloader.reload_from_source().await {
        Ok(generation) => {
            text_response(StatusCode::OK, JSON, format!("{}\n", serde_json::json!({"generation": generation})))
        }
        Err(error) => {
            let generation = admin.reloader.status().generation;
            let body = serde_json::json!({"error": error.to_string(), "generation": generation});
            text_response(StatusCode::UNPROCESSABLE_ENTITY, JSON, format!("{body}\n"))
        }
    }
}

/// `GET /status`: the configuration generation, its source and plugins, and the last reload.
fn status(admin: &Admin) -> String {
    let snapshot = admin.snapshot.load();
    let reload = admin.reloader.status();
    let body = serde_json::json!({
        "generation": reload.generation,
        "loaded_at": reload.loaded_at,
        "source": snapshot.source.as_ref().map(|path| path.display().to_string()),
        "reload_attempts": reload.attempts,
        "reload_in_progress": admin.reloader.reload_in_progress(),
        "last_error": reload.last_error,
        "pending_restart": reload.pending_restart,
        "routes": snapshot.routes.routes().len(),
        "upstreams": snapshot.upstreams.keys().collect::<Vec<_>>(),
        "plugins": snapshot.plugin_digests(),
    });
    format!("{body}\n")
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
