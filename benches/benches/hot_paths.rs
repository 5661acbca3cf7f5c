//! The proxy's per-request work outside the filters: finding the route among 1, 100 and 10,000,
//! and rewriting the headers of a forwarded request and its response.
//!
//! Run: `cargo bench -p sluice-benches --bench hot_paths`

use std::fmt::Write;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use sluice::config::Snapshot;
use sluice::pipeline::forwarding::{ClientSide, prepare_client_response, prepare_upstream_request};
use sluice::routing::RequestFacts;

const LISTENER_AND_UPSTREAM: &str = r#"
[[listener]]
bind = "127.0.0.1:0"

[upstream.origin]
servers = [{ addr = "127.0.0.1:9" }]
"#;

/// A configuration with `count` routes of the given shape, all to one upstream.
fn routes(count: usize, shape: RouteShape) -> Snapshot {
    let mut config = String::from(LISTENER_AND_UPSTREAM);
    for index in 0..count {
        let condition = match shape {
            RouteShape::HostPerRoute => format!("host = \"svc{index}.example.com\"\npath_prefix = \"/\""),
            RouteShape::PrefixPerRoute => format!("path_prefix = \"/svc{index}/\""),
        };
        write!(config, "\n[[route]]\nname = \"r{index}\"\n{condition}\nupstream = \"origin\"\n").unwrap();
    }
    Snapshot::from_toml(&sluice::config::Services::with_default_cache().expect("the filter runtime starts"), &config)
        .expect("benchmark config compiles")
}

#[derive(Clone, Copy)]
enum RouteShape {
    /// Virtual hosting: each route owns a host name (looked up by host).
    HostPerRoute,
    /// One host, routes told apart by path prefix (tried in specificity order).
    PrefixPerRoute,
}

fn route_matching(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route matching");
    for count in [1, 100, 10_000] {
        // The request matches the last route written, the worst place for a scan.
        let last = count - 1;
        let by_host = routes(count, RouteShape::HostPerRoute);
        let host = format!("svc{last}.example.com");
        let facts = RequestFacts { host: &host, path: "/products/42", method: &Method::GET, headers: &headers };
        group.bench_with_input(BenchmarkId::new("host per route", count), &facts, |b, facts| {
            b.iter(|| assert!(by_host.routes.match_request(black_box(facts)).is_some()))
        });

        let by_prefix = routes(count, RouteShape::PrefixPerRoute);
        let path = format!("/svc{last}/products/42");
        let facts = RequestFacts { host: "shop.example.com", path: &path, method: &Method::GET, headers: &headers };
        group.bench_with_input(BenchmarkId::new("path prefix per route", count), &facts, |b, facts| {
            b.iter(|| assert!(by_prefix.routes.match_request(black_box(facts)).is_some()))
        });
    }
    group.finish();
}

/// A browser's request head: ten headers, one of them a hop-by-hop `Connection`.
fn browser_request() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let own = [("host", "shop.example"), ("connection", "keep-alive")];
    for (name, value) in sluice_benches::BROWSER_HEADERS.into_iter().chain(own) {
        headers.insert(name, value.parse().unwrap());
    }
    headers
}

fn origin_response() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "100"),
        ("date", "Mon, 23 Nov 2026 00:00:00 GMT"),
        ("server", "origin/1.0"),
        ("x-powered-by", "framework"),
        ("cache-control", "max-age=60"),
        ("keep-alive", "timeout=5"),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    headers
}

fn header_processing(c: &mut Criterion) {
    let snapshot = Snapshot::from_toml(
        &sluice::config::Services::with_default_cache().expect("the filter runtime starts"),
        &format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{LISTENER_AND_UPSTREAM}"),
    )
    .unwrap();
    let settings = &snapshot.server;
    let request = browser_request();
    let response = origin_response();
    let mut group = c.benchmark_group("header processing");
    group.bench_function("forwarded request, 10 headers, untrusted peer", |b| {
        // As a connection passes it: the peer's header value made once at accept.
        let peer_header = http::HeaderValue::from_static("192.0.2.1");
        let client = ClientSide {
            peer: "192.0.2.1".parse().unwrap(),
            scheme: "http",
            host: Some("shop.example"),
            peer_header: Some(&peer_header),
        };
        b.iter_batched_ref(
            || request.clone(),
            |headers| prepare_upstream_request(headers, &client, settings),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("forwarded request, 10 headers, trusted peer", |b| {
        let client = ClientSide {
            peer: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            host: Some("shop.example"),
            peer_header: None,
        };
        b.iter_batched_ref(
            || request.clone(),
            |headers| prepare_upstream_request(headers, &client, settings),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("response, 7 headers", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| prepare_client_response(headers, false, settings),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, route_matching, header_processing);
criterion_main!(benches);
