//! What the admin API shows, as JSON: the configuration generation and its last reload
//! (`/status`), routes with their filter chains (`/routes`), plugins (`/plugins`), tenants with
//! their grants and use (`/tenants`, `/tenants/usage`), upstream servers (`/upstreams`), the
//! cache (`/cache`), live per-route figures (`/live`) and shadow filters' comparisons
//! (`/shadows`). The schemas are in
//! docs/operations.md.
//!
//! `/routes` and `/live` take `?search=TEXT` (routes whose name contains it), `?offset=N` and
//! `?limit=N`, for a configuration of thousands of routes.

use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Admin, error_response, json_response};
use crate::config::Snapshot;
use crate::routing::{HeaderCondition, HostPattern, PathMatch, PathRewrite, Route, RouteAction};
use sluice_http::body::ProxyBody;
use sluice_runtime::{FailurePolicy, InstanceCount, Isolation, RouteFilter, Tenant};
use sluice_upstream::Availability;

/// Whether `path` is one of the reads here.
pub(super) fn serves(path: &str) -> bool {
    matches!(
        path,
        "/status"
            | "/routes"
            | "/plugins"
            | "/tenants"
            | "/tenants/usage"
            | "/upstreams"
            | "/cache"
            | "/live"
            | "/shadows"
    )
}

/// Answers a read.
pub(super) fn read(request: &Request<Incoming>, admin: &Admin, path: &str) -> Response<ProxyBody> {
    let snapshot = admin.snapshot.load();
    let page = match Page::parse(request.uri().query()) {
        Ok(page) => page,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let body = match path {
        "/status" => status(admin, &snapshot),
        "/routes" => {
            page.apply("routes", snapshot.routes.routes().iter().map(|route| (&*route.name, route)), route_json)
        }
        "/plugins" => plugins(&snapshot),
        "/tenants" => tenants(&snapshot),
        "/tenants/usage" => return tenants_usage(request, &snapshot),
        "/upstreams" => upstreams(&snapshot),
        "/cache" => cache(admin, &snapshot),
        "/live" => live(&snapshot, &page),
        "/shadows" => snapshot.services.shadows.report(),
        _ => return error_response(StatusCode::NOT_FOUND, "not found"),
    };
    json_response(StatusCode::OK, &body)
}

/// `?search=&offset=&limit=`: which part of a long list to answer with.
#[derive(Debug, Default)]
struct Page {
    search: Option<String>,
    offset: usize,
    limit: Option<usize>,
}

impl Page {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut page = Page::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let number = || value.parse::<usize>().map_err(|_| format!("{key} must be a whole number, not {value:?}"));
            match &*key {
                "search" if !value.is_empty() => page.search = Some(value.to_lowercase()),
                "offset" => page.offset = number()?,
                "limit" => page.limit = Some(number()?),
                _ => {}
            }
        }
        Ok(page)
    }

    fn matches(&self, name: &str) -> bool {
        self.search.as_ref().is_none_or(|search| name.to_lowercase().contains(search))
    }

    /// `{"total": N, "offset": N, KEY: [...]}` of the items whose name matches, this page of them.
    fn apply<'a, T: 'a>(
        &self,
        key: &str,
        items: impl Iterator<Item = (&'a str, T)>,
        describe: impl Fn(T) -> Value,
    ) -> Value {
        let matching: Vec<T> = items.filter(|(name, _)| self.matches(name)).map(|(_, item)| item).collect();
        let total = matching.len();
        let shown: Vec<Value> =
            matching.into_iter().skip(self.offset).take(self.limit.unwrap_or(usize::MAX)).map(describe).collect();
        let mut body = serde_json::Map::new();
        body.insert("total".into(), json!(total));
        body.insert("offset".into(), json!(self.offset));
        body.insert(key.into(), Value::Array(shown));
        Value::Object(body)
    }
}

/// `GET /status`: the configuration generation, its source and plugins, and the last reload.
fn status(admin: &Admin, snapshot: &Snapshot) -> Value {
    let reload = admin.reloader.status();
    json!({
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
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn policy_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::FailClosed => "fail-closed",
        FailurePolicy::FailOpen => "fail-open",
    }
}

fn isolation_name(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::Instance => "instance",
        Isolation::Request => "request",
    }
}

fn instances_json(count: InstanceCount) -> Value {
    json!({ "warm": count.warm, "busy": count.busy })
}

/// One version of a filter (the filter's own, or its canary's).
fn filter_version_json(filter: &RouteFilter) -> Value {
    let spec = &filter.spec;
    json!({
        "place": crate::config::place_in_chain(&filter.key),
        "plugin": &*spec.plugin.name,
        "digest": spec.plugin.digest,
        "world": spec.plugin.world(),
        "on_error": policy_name(spec.on_error),
        "isolation": isolation_name(spec.isolation),
        "config": serde_json::from_str::<Value>(&spec.config).unwrap_or(Value::Null),
        "instances": filter.pool().map(|pool| instances_json(pool.instances())),
        "position": filter.position.map(|(line, column)| json!({ "line": line, "column": column })),
    })
}

fn path_json(path: &PathMatch) -> Value {
    match path {
        PathMatch::Any => json!({ "any": true }),
        PathMatch::Exact(path) => json!({ "exact": path }),
        PathMatch::Prefix(prefix) => json!({ "prefix": prefix }),
        PathMatch::Regex(regex) => json!({ "regex": regex.as_str() }),
    }
}

fn rewrite_json(rewrite: &PathRewrite) -> Value {
    match rewrite {
        PathRewrite::None => Value::Null,
        PathRewrite::Prefix { prefix, replacement } => json!({ "prefix": prefix, "replacement": replacement }),
    }
}

/// One route as `/routes` shows it.
fn route_json(route: &std::sync::Arc<Route>) -> Value {
    let hosts: Vec<String> = route
        .hosts
        .iter()
        .map(|host| match host {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::Wildcard(suffix) => format!("*.{suffix}"),
        })
        .collect();
    let headers: Vec<Value> = route
        .headers
        .iter()
        .map(|header| {
            let condition = match &header.condition {
                HeaderCondition::Equals(value) => json!({ "equals": value }),
                HeaderCondition::Regex(regex) => json!({ "regex": regex.as_str() }),
                HeaderCondition::Present => json!({ "present": true }),
                HeaderCondition::Absent => json!({ "absent": true }),
            };
            json!({ "name": header.name.as_str(), "condition": condition })
        })
        .collect();
    let action = match &route.action {
        RouteAction::Forward(forward) => json!({
            "forward": {
                "upstreams": forward.backends.choices().iter()
                    .map(|(upstream, weight)| json!({ "upstream": &*upstream.name, "weight": weight }))
                    .collect::<Vec<_>>(),
                "mirror": forward.mirror.as_ref().map(|mirror| json!({ "upstream": &*mirror.upstream.name, "percent": mirror.percent })),
                "rewrite": rewrite_json(&forward.rewrite),
                "timeout_ms": u64::try_from(forward.timeout.as_millis()).unwrap_or(u64::MAX),
                "preserve_host": forward.preserve_host,
            }
        }),
        RouteAction::Redirect(redirect) => json!({
            "redirect": {
                "status": redirect.status.as_u16(),
                "scheme": redirect.scheme,
                "host": redirect.host,
                "path": redirect.path,
                "rewrite": rewrite_json(&redirect.rewrite),
                "keep_query": redirect.keep_query,
            }
        }),
    };
    let filters: Vec<Value> = route
        .filters
        .iter()
        .map(|filter| {
            let mut described = filter_version_json(filter);
            if let Some(canary) = &filter.canary {
                let mut version = filter_version_json(&canary.filter);
                version["percent"] = json!(canary.percent);
                version["sticky"] = json!(canary.sticky);
                described["canary"] = version;
            }
            if let Some(shadow) = &filter.shadow {
                let mut version = filter_version_json(&shadow.filter);
                version["percent"] = json!(shadow.percent);
                described["shadow"] = version;
            }
            described
        })
        .collect();
    let cache = route.cache.as_ref().map(|cache| {
        json!({
            "default_ttl_s": cache.default_ttl.as_secs(),
            "max_object_bytes": cache.max_object_bytes,
            "stale_while_revalidate_s": cache.stale_while_revalidate.as_secs(),
            "stale_if_error_s": cache.stale_if_error.as_secs(),
            "keep_stale_s": cache.keep_stale.as_secs(),
            "bypass_headers": cache.bypass_headers.iter().map(|name| name.as_str()).collect::<Vec<_>>(),
            "bypass_cookies": cache.bypass_cookies,
            "tag_header": cache.tag_header.as_str(),
            "lock_timeout_ms": u64::try_from(cache.lock_timeout.as_millis()).unwrap_or(u64::MAX),
            "targeted_fields": cache.targeted_fields.iter().map(|name| name.as_str()).collect::<Vec<_>>(),
            "heuristics": cache.heuristics,
        })
    });
    let compression = route.compression.as_ref().map(|compression| {
        json!({
            "encodings": compression.encodings.iter().map(|encoding| encoding.token()).collect::<Vec<_>>(),
            "min_bytes": compression.min_bytes,
            "content_types": compression.content_types,
            "level": format!("{:?}", compression.level).to_lowercase(),
        })
    });
    json!({
        "name": &*route.name,
        "tenant": &*route.tenant.name,
        "hosts": hosts,
        "path": path_json(&route.path),
        "methods": route.methods.iter().map(|method| method.as_str()).collect::<Vec<_>>(),
        "headers": headers,
        "access_rules": !route.access.is_empty(),
        "action": action,
        "max_body_bytes": route.max_body_bytes,
        "max_filter_body_bytes": route.max_filter_body_bytes,
        "filters": filters,
        "cache": cache,
        "compression": compression,
    })
}

/// Every version of every filter in the running routes.
fn route_filters(snapshot: &Snapshot) -> impl Iterator<Item = (&Route, &RouteFilter)> {
    snapshot
        .routes
        .routes()
        .iter()
        .flat_map(|route| route.filters.iter().flat_map(RouteFilter::versions).map(move |filter| (&**route, filter)))
}

/// `GET /plugins`: each plugin, where it comes from, what it is and what runs of it now.
fn plugins(snapshot: &Snapshot) -> Value {
    let plugins: Vec<Value> = snapshot
        .plugins
        .iter()
        .map(|(name, plugin)| {
            let mut instances = InstanceCount::default();
            let mut used_by = Vec::new();
            for (route, filter) in
                route_filters(snapshot).filter(|(_, filter)| filter.spec.plugin.digest == plugin.digest)
            {
                if let Some(pool) = filter.pool() {
                    let count = pool.instances();
                    instances.warm += count.warm;
                    instances.busy += count.busy;
                }
                used_by.push(json!({
                    "route": &*route.name,
                    "place": crate::config::place_in_chain(&filter.key),
                    "tenant": &*filter.spec.tenant.name,
                }));
            }
            json!({
                "name": name,
                "source": snapshot.plugin_origins.get(name),
                "digest": plugin.digest,
                "world": plugin.world(),
                "capabilities": plugin.capabilities(),
                "config_schema": plugin.config_schema(),
                "instances": instances_json(instances),
                "used_by": used_by,
            })
        })
        .collect();
    json!({ "plugins": plugins })
}

fn grants_json(tenant: &Tenant) -> Value {
    json!({
        "memory_bytes": tenant.memory_bytes,
        "cpu_per_call_ms": u64::try_from(tenant.cpu_per_call.as_millis()).unwrap_or(u64::MAX),
        "cpu_ms_per_second": tenant.cpu_rate.as_ref().map(|rate| rate.ms_per_second),
        "max_instances": tenant.max_instances,
        "call_timeout_ms": u64::try_from(tenant.call_timeout.as_millis()).unwrap_or(u64::MAX),
        "callouts": tenant.callouts,
        "kv": {
            "max_keys": tenant.kv.max_keys,
            "max_bytes": tenant.kv.max_bytes,
            "backend": if tenant.kv_backend.is_remote() { "redis" } else { "memory" },
        },
        "plugins": tenant.plugins,
        "metric_series": tenant.metric_series,
        "log_lines_per_second": tenant.log_lines_per_second,
        "bans": tenant.bans.map(|bans| json!({
            "max_duration_s": bans.max_duration.as_secs(),
            "max_entries": bans.max_entries,
        })),
    })
}

/// `GET /tenants`: each tenant's grants, and what it uses now and has used since the start.
fn tenants(snapshot: &Snapshot) -> Value {
    let services = snapshot.services.runtime.services();
    let totals = services.usage.totals();
    let tenants: Vec<Value> = snapshot
        .tenants
        .values()
        .map(|tenant| {
            let mut used = sluice_runtime::metering::UsageFigures::default();
            for (_, figures) in totals.iter().filter(|(key, _)| key.tenant == tenant.name) {
                used.absorb(figures);
            }
            let mut instances = InstanceCount::default();
            let mut filters = 0;
            for (_, filter) in route_filters(snapshot).filter(|(_, filter)| filter.spec.tenant.name == tenant.name) {
                filters += 1;
                if let Some(pool) = filter.pool() {
                    let count = pool.instances();
                    instances.warm += count.warm;
                    instances.busy += count.busy;
                }
            }
            let routes = snapshot.routes.routes().iter().filter(|route| route.tenant.name == tenant.name).count();
            json!({
                "name": &*tenant.name,
                "grants": grants_json(tenant),
                "routes": routes,
                "filters": filters,
                "now": {
                    "instances": instances_json(instances),
                    "memory_bytes": used.memory_live_bytes,
                    "kv_keys": (!tenant.kv_backend.is_remote()).then(|| services.kv.len(&tenant.name)),
                    "long_call_running": tenant.long_calls.available() == 0,
                },
                "since_start": {
                    "guest_cpu_seconds": used.guest_cpu_seconds(),
                    "calls": used.calls,
                    "instances_started": used.instances_started,
                    "memory_peak_bytes": used.memory_peak_bytes,
                    "memory_byte_seconds": used.memory_byte_seconds(),
                    "callouts": used.callouts,
                    "callout_bytes": used.callout_bytes,
                    "kv_operations": used.kv_operations,
                    "kv_bytes": used.kv_bytes,
                    "requests": used.requests,
                    "response_bytes": used.response_bytes,
                },
            })
        })
        .collect();
    json!({ "tenants": tenants })
}

/// `GET /tenants/usage`: what each tenant used, per interval (see docs/operations.md).
fn tenants_usage(request: &Request<Incoming>, snapshot: &Snapshot) -> Response<ProxyBody> {
    use crate::telemetry::usage::{UsageQuery, usage_report};
    match UsageQuery::parse(request.uri().query()) {
        Ok(query) => {
            let ledger = snapshot.services.runtime.services().usage.clone();
            json_response(StatusCode::OK, &usage_report(&ledger, &query))
        }
        Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
    }
}

/// `GET /upstreams`: every upstream's servers with their health, ejections and load.
fn upstreams(snapshot: &Snapshot) -> Value {
    let now = Instant::now();
    let upstreams: serde_json::Map<String, Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, upstream)| {
            let servers: Vec<Value> = upstream
                .servers()
                .iter()
                .map(|state| {
                    let availability = match state.availability(now) {
                        Availability::Available => "available",
                        Availability::Unhealthy => "unhealthy",
                        Availability::Ejected => "ejected",
                    };
                    json!({
                        "address": state.server.authority.as_str(),
                        "weight": state.server.weight,
                        "state": availability,
                        "in_flight": state.in_flight(),
                        "latency_ewma_us": state.latency_ewma_us(),
                        "ejections": state.ejections(),
                    })
                })
                .collect();
            let policy = upstream.policy();
            let health_check = policy.health_check.as_ref().map(|check| {
                json!({
                    "interval_ms": u64::try_from(check.interval.as_millis()).unwrap_or(u64::MAX),
                    "timeout_ms": u64::try_from(check.timeout.as_millis()).unwrap_or(u64::MAX),
                    "rise": check.rise,
                    "fall": check.fall,
                })
            });
            let described = json!({
                "servers": servers,
                "balancer": format!("{:?}", policy.balancer).to_lowercase(),
                "health_check": health_check,
                "outlier_detection": policy.outlier.is_some(),
            });
            (name.clone(), described)
        })
        .collect();
    Value::Object(upstreams)
}

/// `GET /cache`: what the HTTP cache holds, and each caching route's hit ratio now.
fn cache(admin: &Admin, snapshot: &Snapshot) -> Value {
    let stored = admin.cache.stored_size();
    let figures = snapshot.services.live.figures();
    let routes: Vec<Value> = snapshot
        .routes
        .routes()
        .iter()
        .filter(|route| route.cache.is_some())
        .map(|route| {
            let hit_ratio = figures
                .routes
                .iter()
                .find(|figures| *figures.name == *route.name)
                .and_then(|figures| figures.figures.cache_hit_ratio);
            json!({ "route": &*route.name, "hit_ratio": hit_ratio })
        })
        .collect();
    json!({
        "stored_bytes": stored.bytes,
        "entries": stored.keys,
        "max_bytes": snapshot.cache_max_bytes,
        "hit_ratio": figures.totals.cache_hit_ratio,
        "window_seconds": figures.window_seconds,
        "routes": routes,
    })
}

/// `GET /live`: requests/s, error rate, p50/p99 and each filter's calls over the last seconds,
/// for the running routes.
fn live(snapshot: &Snapshot, page: &Page) -> Value {
    let figures = snapshot.services.live.figures();
    let running: std::collections::HashSet<&str> = snapshot.routes.routes().iter().map(|route| &*route.name).collect();
    let routes = figures.routes.iter().filter(|route| running.contains(route.name.as_str()));
    let mut body = page.apply("routes", routes.map(|route| (route.name.as_str(), route)), |route| {
        serde_json::to_value(route).unwrap_or(Value::Null)
    });
    body["window_seconds"] = json!(figures.window_seconds);
    body["totals"] = serde_json::to_value(&figures.totals).unwrap_or(Value::Null);
    body
}
