//! What the admin API changes: cache purges, client bans and reloads. The caller checks the
//! write token (`admin.reload_token`) before any of these runs.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Admin, JSON, text_response};
use sluice_cache::PurgeTarget;
use sluice_http::body::ProxyBody;

/// What `POST /cache/purge` takes: exactly one of key, prefix and tag, optionally one route.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    key: Option<String>,
    prefix: Option<String>,
    tag: Option<String>,
    route: Option<String>,
}

fn bad(message: String) -> Response<ProxyBody> {
    super::error_response(StatusCode::BAD_REQUEST, &message)
}

/// Reads a JSON body of at most `limit` bytes as a `T`; the error is the `400` to send, saying
/// what was `expected`.
#[allow(clippy::result_large_err)]
async fn json_body<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    limit: usize,
    expected: &str,
) -> Result<T, Response<ProxyBody>> {
    let body = match http_body_util::Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return Err(bad(format!("could not read the body: {err}"))),
    };
    serde_json::from_slice(&body).map_err(|err| bad(format!("expected {expected}: {err}")))
}

/// `POST /cache/purge` with a JSON body such as `{"tag": "products"}`; token-protected.
pub(super) async fn purge(request: Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    let expected = "{\"key\" | \"prefix\" | \"tag\": ..., \"route\"?: ...}";
    let wanted: PurgeRequest = match json_body(request, 64 * 1024, expected).await {
        Ok(wanted) => wanted,
        Err(refused) => return refused,
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
pub(super) fn blocks(admin: &Admin) -> Arc<sluice_access::BlockList> {
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
pub(super) fn list_bans(admin: &Admin) -> String {
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
pub(super) async fn add_ban(request: Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
    let expected = "{\"address\": ..., \"duration\": ..., \"reason\"?: ..., \"tenant\"?: ...}";
    let wanted: BanBody = match json_body(request, 16 * 1024, expected).await {
        Ok(wanted) => wanted,
        Err(refused) => return refused,
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
pub(super) fn lift_ban(request: &Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
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
pub(super) async fn reload(request: &Request<Incoming>, admin: &Admin) -> Response<ProxyBody> {
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
