//! Per-tenant metering through a running proxy: a filter's guest CPU time as the kernel counts
//! it, in `/metrics` and `GET /tenants/usage`; tenants' usage kept apart; usage across a reload.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use serde_json::Value;
use sluice_http::body;
use sluice_runtime::{CallContext, FailurePolicy, FilterPool, FilterSpec, HeadOutcome, Isolation, Plugin, RequestHead, Tenant};
use sluice_tests::{Origin, TestProxy, admin_text, http1_client, plugin, send};

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(now.tv_sec).unwrap(), u32::try_from(now.tv_nsec).unwrap())
}

fn context() -> CallContext {
    CallContext {
        route: "calibration".into(),
        filter: "cpu".into(),
        tenant: Arc::new(Tenant::default_tenant()),
        request_id: "calibration".into(),
        client_ip: "192.0.2.1".parse().unwrap(),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(sluice_runtime::NoUpstreams),
        deadline: None,
    }
}

/// The CPU time `calls` calls of the cpu-bound filter with `x-work: rounds` take, as the kernel
/// counts this thread's: the filter's calls enter the guest directly, on this thread.
async fn cpu_of_calls(pool: &Arc<FilterPool>, rounds: u64, calls: u32) -> Duration {
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = RequestHead {
        parts: http::Request::get("/").header("x-work", rounds.to_string()).body(()).unwrap().into_parts().0,
        cache_key: None,
    };
    let before = thread_cpu();
    for _ in 0..calls {
        assert!(matches!(instance.on_request(&mut head).await.unwrap(), HeadOutcome::Continue));
    }
    thread_cpu() - before
}

/// Rounds of the filter's work that take about `target` of CPU per call here, and what 1,000
/// such calls take, measured outside the proxy on this thread.
async fn calibrate(target: Duration) -> (u64, Duration) {
    let runtime = sluice_tests::filter_runtime();
    let component = Plugin::load_file(&runtime, "cpu", &plugin("tests/plugins/cpu-bound")).unwrap();
    let spec = FilterSpec {
        route: "calibration".into(),
        name: "cpu".into(),
        plugin: Arc::new(component),
        config: "null".into(),
        on_error: FailurePolicy::FailClosed,
        isolation: Isolation::Instance,
        tenant: Arc::new(Tenant::default_tenant()),
    };
    let pool = FilterPool::prepare(runtime, spec).await.unwrap();
    let probe_rounds = 100_000;
    let probe = cpu_of_calls(&pool, probe_rounds, 20).await / 20;
    let rounds = (probe_rounds as f64 * target.as_secs_f64() / probe.as_secs_f64()) as u64;
    assert!(pool.calls_directly(), "calibration calls stay on this thread");
    let measured = cpu_of_calls(&pool, rounds, 1000).await;
    {
        let before_meter = sluice_tests::filter_runtime().services().usage.totals()[0].1.guest_cpu_ns;
        let mut instance = pool.checkout(context()).await.unwrap();
        let mut head = RequestHead { parts: http::Request::get("/").body(()).unwrap().into_parts().0, cache_key: None };
        let mut response = http::Response::new(()).into_parts().0;
        let before = thread_cpu();
        for _ in 0..1000 {
            instance.on_response(&mut head, &mut response).await.unwrap();
        }
        let took = thread_cpu() - before;
        let after_meter = sluice_tests::filter_runtime().services().usage.totals()[0].1.guest_cpu_ns;
        eprintln!("response calls: thread {:?}, meter {:?}", took, Duration::from_nanos(after_meter - before_meter));
    }
    eprintln!("calibration: {:?} measured, meter {:?}", measured, sluice_tests::filter_runtime().services().usage.totals());
    (rounds, measured)
}

async fn usage(admin: std::net::SocketAddr, query: &str) -> Value {
    serde_json::from_str(&admin_text(admin, &format!("/tenants/usage{query}")).await).expect("usage report is JSON")
}

/// The one interval's entry for `tenant`.
fn tenant_usage<'a>(report: &'a Value, tenant: &str) -> Option<&'a Value> {
    let intervals = report["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 1, "{report}");
    intervals[0]["tenants"].as_array()?.iter().find(|entry| entry["tenant"] == tenant)
}

fn route_usage<'a>(tenant: &'a Value, route: &str) -> &'a Value {
    tenant["routes"].as_array().unwrap().iter().find(|entry| entry["route"] == route).unwrap_or_else(|| panic!("{tenant}"))
}

/// The value of the `/metrics` series `name` whose labels include every one of `labels`.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels.iter().all(|label| set.contains(label)).then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "current_thread")]
async fn a_cpu_bound_filter_is_charged_its_cpu_time_within_ten_percent() {
    // Under the 2 ms after which a call is a long call and moves: each call stays on a worker.
    let (rounds, calibrated) = calibrate(Duration::from_micros(700)).await;
    let origin = Origin::echo("app").await;
    let cpu_bound = plugin("tests/plugins/cpu-bound");
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.cpu]
source = "{cpu_bound}"
[tenant.metered]
[[route]]
name = "burn"
tenant = "metered"
upstream = "app"
filters = [{{ plugin = "cpu" }}]
"#,
        origin = origin.addr,
        cpu_bound = cpu_bound.display(),
    );
    let proxy = TestProxy::start(&config).await;
    let admin = proxy.admin.expect("admin listener");
    let client = http1_client();
    let loop_start = thread_cpu();
    let wall = std::time::Instant::now();
    for _ in 0..1000 {
        let request = Request::get(proxy.url("/")).header("x-work", rounds.to_string()).body(body::empty()).unwrap();
        assert_eq!(send(&client, request).await.status, 200);
    }
    eprintln!("whole loop: thread {:?} wall {:?}", thread_cpu() - loop_start, wall.elapsed());

    let report = usage(admin, "").await;
    let tenant = tenant_usage(&report, "metered").unwrap_or_else(|| panic!("{report}"));
    let route = route_usage(tenant, "burn");
    assert_eq!(route["requests"], 1000, "{route}");
    let filter = &route["filters"][0];
    assert_eq!(filter["filter"], "cpu");
    // The SDK's default phases: a request-head and a response-head call per request (the
    // response call does no work of its own).
    assert_eq!(filter["calls"], 2000, "{filter}");
    assert_eq!(filter["instances_started"], 1, "{filter}");
    assert!(filter["memory_peak_bytes"].as_u64().unwrap() >= 1 << 20, "{filter}");
    assert!(filter["memory_byte_seconds"].as_f64().unwrap() > 0.0, "{filter}");
    let charged = filter["guest_cpu_seconds"].as_f64().unwrap();
    let expected = calibrated.as_secs_f64();
    assert!(
        (charged - expected).abs() <= expected * 0.10,
        "charged {charged:.4} s of guest CPU for 1,000 calls that take {expected:.4} s on this thread"
    );
    // The tenant's totals are its routes' and filters' together.
    assert_eq!(tenant["usage"]["calls"], 2000);
    assert_eq!(tenant["usage"]["requests"], 1000);

    let metrics = admin_text(admin, "/metrics").await;
    let labels = ["tenant=\"metered\"", "route=\"burn\"", "filter=\"cpu\""];
    let exported = series(&metrics, "sluice_tenant_guest_cpu_seconds_total", &labels).expect("guest CPU series");
    assert!((exported - expected).abs() <= expected * 0.10, "/metrics says {exported:.4} s, expected {expected:.4} s");
    assert_eq!(series(&metrics, "sluice_tenant_filter_calls_total", &labels), Some(2000.0));
    assert_eq!(series(&metrics, "sluice_tenant_requests_total", &labels[..2]), Some(1000.0));
}

fn two_tenants(origin: &Origin, probe: &std::path::Path, extra_header: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.probe]
source = "{probe}"
[tenant.acme]
[tenant.globex]
[[route]]
name = "acme"
path_prefix = "/acme"
tenant = "acme"
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "a", count = true }} }}]
{extra_header}
[[route]]
name = "globex"
path_prefix = "/globex"
tenant = "globex"
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "g" }} }}]
"#,
        origin = origin.addr,
        probe = probe.display(),
    )
}

async fn get_times(proxy: &TestProxy, path: &str, times: usize) {
    let client = http1_client();
    for _ in 0..times {
        let answer = send(&client, Request::get(proxy.url(path)).body(body::empty()).unwrap()).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
}

#[tokio::test]
async fn tenants_usage_never_mixes_and_survives_a_reload() {
    let origin = Origin::echo("app").await;
    let probe = plugin("tests/plugins/probe");
    let proxy = TestProxy::start(&two_tenants(&origin, &probe, "")).await;
    let admin = proxy.admin.expect("admin listener");
    get_times(&proxy, "/acme/x", 3).await;
    get_times(&proxy, "/globex/y", 5).await;

    let report = usage(admin, "").await;
    let acme = tenant_usage(&report, "acme").expect("acme's usage");
    let globex = tenant_usage(&report, "globex").expect("globex's usage");
    assert_eq!(acme["usage"]["requests"], 3, "{acme}");
    assert_eq!(globex["usage"]["requests"], 5, "{globex}");
    // Each probe call: a request-head and a response-head call.
    assert_eq!(acme["usage"]["calls"], 6, "{acme}");
    assert_eq!(globex["usage"]["calls"], 10, "{globex}");
    // Only acme's filter counts in the key-value store.
    assert_eq!(acme["usage"]["kv_operations"], 3, "{acme}");
    assert_eq!(globex["usage"]["kv_operations"], 0, "{globex}");
    assert!(acme["routes"].as_array().unwrap().iter().all(|route| route["route"] == "acme"), "{acme}");
    // A tenant asked for alone is all there is.
    let only = usage(admin, "?tenant=globex").await;
    assert_eq!(only["intervals"][0]["tenants"].as_array().unwrap().len(), 1, "{only}");

    // A reload that changes acme's route keeps what was counted, and counts on.
    let changed = two_tenants(&origin, &probe, "preserve_host = true");
    proxy.server().reloader().reload_from_toml(&changed).await.expect("reload");
    get_times(&proxy, "/acme/x", 2).await;
    let report = usage(admin, "").await;
    let acme = tenant_usage(&report, "acme").expect("acme's usage");
    assert_eq!(acme["usage"]["requests"], 5, "{acme}");
    assert_eq!(acme["usage"]["kv_operations"], 5, "{acme}");
    assert_eq!(tenant_usage(&report, "globex").unwrap()["usage"]["requests"], 5);

    // Per interval: the intervals together hold the same, and a bad query names its parameter.
    let per_minute = usage(admin, "?interval=60").await;
    let requests: u64 = per_minute["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|interval| interval["tenants"].as_array().unwrap().clone())
        .filter(|tenant| tenant["tenant"] == "acme")
        .map(|tenant| tenant["usage"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 5, "{per_minute}");
    let refused = send(
        &http1_client(),
        Request::get(format!("http://{admin}/tenants/usage?since=yesterday")).body(body::empty()).unwrap(),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("since"), "{}", refused.text());
}
