//! Per-request cost of each of Sluice's filters (plugins/): one request through every phase the
//! filter asks for, on a warm instance, with a realistic config and request. The `hello-filter`
//! row is the floor: a filter that sets one header.
//!
//! Run: `cargo bench -p sluice-benches --bench plugins`

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use sluice_benches::repo_root;
use sluice_runtime::{
    CallContext, FailurePolicy, FilterInstance, FilterPool, FilterSpec, Isolation, Phases, Plugin, RequestHead,
    Runtime, Tenant,
};

fn context() -> CallContext {
    CallContext {
        route: "bench".into(),
        filter: "bench".into(),
        tenant: Arc::new(Tenant::default_tenant()),
        request_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        client_ip: "192.0.2.1".parse().unwrap(),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(sluice_runtime::NoUpstreams),
        deadline: None,
    }
}

/// A filter under test: its crate, config, and what the request carries for it.
struct Case {
    name: &'static str,
    plugin: &'static str,
    config: String,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    request_body: Option<&'static str>,
    response_body: Option<String>,
    /// A header made anew for every request (outside the timing), such as a token never seen.
    fresh: Option<fn() -> (&'static str, String)>,
}

/// A bearer token with a unique id, signed with the test RSA key: one the filter has not seen.
fn unseen_rs256_token() -> (&'static str, String) {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let claims = serde_json::json!({"sub": "alice", "iss": "https://id.example", "aud": "api", "exp": 4_000_000_000u64, "jti": serial});
    let key = EncodingKey::from_rsa_pem(key("rsa.key").as_bytes()).unwrap();
    ("authorization", format!("Bearer {}", encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()))
}

fn key(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("plugins/jwt-auth/tests/keys").join(name)).unwrap()
}

fn cases() -> Vec<Case> {
    let claims =
        serde_json::json!({"sub": "alice", "iss": "https://id.example", "aud": "api", "exp": 4_000_000_000u64});
    let rs256 =
        encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(key("rsa.key").as_bytes()).unwrap())
            .unwrap();
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    let hs256 = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap();
    let jwt_config = serde_json::json!({
        "keys": [{"pem": key("rsa.pub")}, {"alg": "HS256", "secret": secret}],
        "issuers": ["https://id.example"], "audiences": ["api"], "forward_claims": {"sub": "x-user"}
    })
    .to_string();
    // Two keys' digests; the request below presents neither, which costs the same hash and
    // lookup as a known key plus building the 401.
    let api_key_digest = "3a8e3a6f0d2b4b2e9bb9f7a7c5f1c6a0d3c58c9e4a1fbd0d2e6b7b3c1e9a4f20";
    let mut order = String::from(r#"{"order": 1042, "items": ["#);
    for index in 0..40 {
        order.push_str(&format!(
            r#"{{"sku": "SKU-{index:04}", "qty": {}, "note": "gift wrap, please"}},"#,
            index % 3 + 1
        ));
    }
    order.push_str(r#"{"card": "4111 1111 1111 1111", "email": "jane@example.com"}]}"#);
    let mut cases = vec![
        Case {
            name: "hello-filter",
            plugin: "examples/hello-filter",
            config: "null".into(),
            method: "GET",
            path: "/products/42?ref=home",
            headers: vec![],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "header-rewrite",
            plugin: "plugins/header-rewrite",
            config: r#"{"security_headers": true, "request": [{"op": "set", "name": "x-client", "value": "{client_ip} {request_id}"}, {"op": "remove", "name": "x-internal"}], "response": [{"op": "remove", "name": "server"}]}"#.into(),
            method: "GET",
            path: "/products/42?ref=home",
            headers: vec![("x-internal", "1".into())],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "cors",
            plugin: "plugins/cors",
            config: r#"{"allowed_origins": ["https://app.example.com", "https://*.example.org"], "exposed_headers": ["x-total"]}"#.into(),
            method: "GET",
            path: "/api/items",
            headers: vec![("origin", "https://shop.example.org".into())],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "api-key",
            plugin: "plugins/api-key",
            config: format!(r#"{{"keys": [{{"consumer": "billing", "sha256": "{api_key_digest}"}}, {{"consumer": "search", "sha256": "{}"}}]}}"#, "0".repeat(64)),
            method: "GET",
            path: "/api/items",
            // An unknown key: the full lookup, then a 401.
            headers: vec![("x-api-key", "k-unknown-5678".into())],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "cache-key",
            plugin: "plugins/cache-key",
            config: r#"{"query_exclude": ["utm_*"], "headers": ["accept-language"], "device_class": true}"#.into(),
            method: "GET",
            path: "/shop?page=2&sort=price&utm_source=mail",
            headers: vec![],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "rate-limit",
            plugin: "plugins/rate-limit",
            config: r#"{"limit": 1000000000, "period": "1s", "key": "header:x-user"}"#.into(),
            method: "GET",
            path: "/api/items",
            headers: vec![("x-user", "alice".into())],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "jwt-auth (RS256, token seen before)",
            plugin: "plugins/jwt-auth",
            config: jwt_config.clone(),
            method: "GET",
            path: "/api/items",
            headers: vec![("authorization", format!("Bearer {rs256}"))],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "jwt-auth (RS256, token not seen before)",
            plugin: "plugins/jwt-auth",
            config: jwt_config.clone(),
            method: "GET",
            path: "/api/items",
            headers: vec![],
            request_body: None,
            response_body: None,
            fresh: Some(unseen_rs256_token),
        },
        Case {
            name: "jwt-auth (HS256)",
            plugin: "plugins/jwt-auth",
            config: jwt_config,
            method: "GET",
            path: "/api/items",
            headers: vec![("authorization", format!("Bearer {hs256}"))],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "redact (2.8 KB JSON response)",
            plugin: "plugins/redact",
            config: "null".into(),
            method: "GET",
            path: "/orders/1042",
            headers: vec![],
            request_body: None,
            response_body: Some(order.clone()),
            fresh: None,
        },
        Case {
            name: "waf (query, 8 headers)",
            plugin: "plugins/waf",
            config: "null".into(),
            method: "GET",
            path: "/search?q=O%27Reilly+books&page=2&sort=relevance",
            headers: vec![],
            request_body: None,
            response_body: None,
            fresh: None,
        },
        Case {
            name: "waf (2.8 KB JSON body)",
            plugin: "plugins/waf",
            config: "null".into(),
            method: "POST",
            path: "/api/orders",
            headers: vec![("content-type", "application/json".into()), ("content-length", order.len().to_string())],
            request_body: Some(Box::leak(order.into_boxed_str())),
            response_body: None,
            fresh: None,
        },
    ];
    // The SecLang engine on Debian's OWASP CRS, beside the built-in rules' rows: a typical
    // browser request (query, 8 headers) and a 4 KiB JSON body, for each rule set.
    let json = Box::leak(json_body_of(4096).into_boxed_str());
    for (label, config) in [
        ("built-in", "null".to_owned()),
        ("CRS PL1", crs_config(1, false)),
        ("CRS PL2", crs_config(2, false)),
        ("built-in + CRS PL1", crs_config(1, true)),
    ] {
        cases.push(Case {
            name: Box::leak(format!("waf {label} (browser GET)").into_boxed_str()),
            plugin: "plugins/waf",
            config: config.clone(),
            method: "GET",
            path: "/search?q=O%27Reilly+books&page=2&sort=relevance",
            headers: vec![],
            request_body: None,
            response_body: None,
            fresh: None,
        });
        cases.push(Case {
            name: Box::leak(format!("waf {label} (4 KiB JSON body)").into_boxed_str()),
            plugin: "plugins/waf",
            config,
            method: "POST",
            path: "/api/orders",
            headers: vec![("content-type", "application/json".into()), ("content-length", json.len().to_string())],
            request_body: Some(json),
            response_body: None,
            fresh: None,
        });
    }
    with_baseline(cases)
}

/// With `SLUICE_BENCH_BASELINE=DIR` (another checkout of this repository, such as a worktree
/// of the commit before a change), each case runs twice in a row: this checkout's filter, then
/// the same case with DIR's build of the filter, named `... [baseline]`. Both are measured in
/// the same run, which is what a change's figure should be compared with on a noisy machine.
fn with_baseline(cases: Vec<Case>) -> Vec<Case> {
    let Ok(baseline) = std::env::var("SLUICE_BENCH_BASELINE") else { return cases };
    let mut paired = Vec::with_capacity(cases.len() * 2);
    for case in cases {
        let twin = Case {
            name: Box::leak(format!("{} [baseline]", case.name).into_boxed_str()),
            plugin: Box::leak(format!("{baseline}/{}", case.plugin).into_boxed_str()),
            config: case.config.clone(),
            method: case.method,
            path: case.path,
            headers: case.headers.clone(),
            request_body: case.request_body,
            response_body: case.response_body.clone(),
            fresh: case.fresh,
        };
        paired.push(case);
        paired.push(twin);
    }
    paired
}

/// The default tenant; for the CRS rows one whose calls may take 500 ms of CPU, as a route
/// running the CRS on bodies needs (see plugins/waf/README.md).
fn tenant_for(case: &Case) -> Tenant {
    let mut tenant = Tenant::default_tenant();
    if case.config.contains("\"rule_set\"") {
        tenant.cpu_per_call = std::time::Duration::from_millis(500);
    }
    tenant
}

/// The waf's config for Debian's CRS at `paranoia`, with the rule files added as the host adds
/// a filter entry's `files`.
fn crs_config(paranoia: u8, builtin: bool) -> String {
    let folder = std::env::var("SLUICE_CRS_RULES").unwrap_or_else(|_| "/usr/share/modsecurity-crs/rules".into());
    let mut files = serde_json::Map::new();
    for entry in std::fs::read_dir(&folder).unwrap_or_else(|err| panic!("{folder}: {err} (install modsecurity-crs)")) {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, serde_json::Value::String(std::fs::read_to_string(&path).unwrap()));
        }
    }
    serde_json::json!({
        "builtin_rules": builtin,
        "rule_set": { "load": ["crs"], "paranoia_level": paranoia },
        "files": { "crs": { "root": folder, "files": files } },
    })
    .to_string()
}

/// An order-like JSON document of about `size` bytes: nested objects, strings, numbers.
fn json_body_of(size: usize) -> String {
    let mut items = Vec::new();
    let mut index = 0;
    while serde_json::to_string(&items).unwrap().len() < size - 120 {
        items.push(serde_json::json!({
            "sku": format!("SKU-{index:05}"),
            "name": format!("Walnut desk organiser, model {index}"),
            "quantity": index % 4 + 1,
            "price": {"amount": 1999 + index * 10, "currency": "EUR"},
            "note": "Leave at the front door if nobody answers",
        }));
        index += 1;
    }
    serde_json::json!({"customer": {"id": 1042, "email": "alice@example.com"}, "items": items}).to_string()
}

fn head(case: &Case) -> RequestHead {
    let mut builder = http::Request::builder().method(case.method).uri(case.path).header("host", "shop.example");
    for (name, value) in sluice_benches::BROWSER_HEADERS {
        builder = builder.header(name, value);
    }
    for (name, value) in &case.headers {
        builder = builder.header(*name, value.as_str());
    }
    if let Some(make) = case.fresh {
        let (name, value) = make();
        builder = builder.header(name, value);
    }
    RequestHead { parts: builder.body(()).unwrap().into_parts().0, cache_key: None }
}

fn response(case: &Case) -> http::response::Parts {
    let content_type = if case.response_body.is_some() { "application/json" } else { "text/html" };
    http::Response::builder()
        .header("content-type", content_type)
        .header("server", "origin")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// One request through every phase the filter wants.
async fn one_request(instance: &mut FilterInstance, phases: Phases, case: &Case, mut request: RequestHead) {
    instance.on_request(&mut request).await.unwrap();
    if let (true, Some(body)) = (phases.contains(Phases::REQUEST_BODY), case.request_body) {
        instance.on_request_body(&mut request, Bytes::from_static(body.as_bytes())).await.unwrap();
    }
    let mut response = response(case);
    if phases.contains(Phases::RESPONSE_HEADERS) {
        instance.on_response(&mut request, &mut response).await.unwrap();
    }
    if let (true, Some(body)) = (phases.contains(Phases::RESPONSE_BODY), &case.response_body) {
        instance.on_response_body(&mut request, &mut response, false, Bytes::from(body.clone()), true).await.unwrap();
    }
}

fn plugins(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sluice_runtime = Arc::new(Runtime::with_default_cache().unwrap());
    let mut group = c.benchmark_group("plugins");
    for case in cases() {
        let path = sluice_benches::plugin(case.plugin);
        let plugin = Plugin::load_file(&sluice_runtime, case.name, &path).unwrap();
        let spec = FilterSpec {
            route: "bench".into(),
            name: case.name.into(),
            plugin: Arc::new(plugin),
            config: case.config.clone(),
            on_error: FailurePolicy::FailClosed,
            isolation: Isolation::Instance,
            tenant: Arc::new(tenant_for(&case)),
        };
        let pool = runtime.block_on(FilterPool::prepare(sluice_runtime.clone(), spec)).unwrap();
        let phases = pool.phases();
        let mut instance = runtime.block_on(pool.checkout(context())).unwrap();
        group.bench_function(case.name, |b| {
            b.iter_batched(
                || head(&case),
                |request| runtime.block_on(one_request(&mut instance, phases, &case, request)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
