//! Per-tenant metering through a running proxy: a filter's guest CPU time as the kernel counts
//! it, in `/metrics` and `GET /tenants/usage`; tenants' usage kept apart; usage across a reload.

use std::time::Duration;

use http::Request;
use serde_json::Value;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, admin_text, http1_client, plugin, send};

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(now.tv_sec).unwrap(), u32::try_from(now.tv_nsec).unwrap())
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
    tenant["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["route"] == route)
        .unwrap_or_else(|| panic!("{tenant}"))
}

/// The value of the `/metrics` series `name` whose labels include every one of `labels`.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels.iter().all(|label| set.contains(label)).then(|| value.trim().parse().ok())?
    })
}

/// Each call's spin: under the 2 ms after which a call is a long call and moves, so every call
/// runs on the proxy's worker.
const SPIN: Duration = Duration::from_millis(1);

/// Sends `requests` requests whose filter call spins for `spin`, one after another, and says
/// what share of the time this thread had a CPU meanwhile. The filter spins for `spin` of
/// wall-clock time: that much CPU while its thread has a CPU. On a busy machine the thread may
/// wait for one meanwhile, which the kernel does not count and neither does the meter.
async fn send_spinning(proxy: &TestProxy, requests: usize, spin: Duration) -> f64 {
    let client = http1_client();
    let (cpu_before, wall_before) = (thread_cpu(), std::time::Instant::now());
    for _ in 0..requests {
        let spin = spin.as_millis().to_string();
        let request = Request::get(proxy.url("/")).header("x-spin", spin).body(body::empty()).unwrap();
        assert_eq!(send(&client, request).await.status, 200);
    }
    ((thread_cpu() - cpu_before).as_secs_f64() / wall_before.elapsed().as_secs_f64()).min(1.0)
}

/// The spinning was `spun` of wall-clock time, which is that much CPU when the thread had a CPU
/// throughout (`on_cpu` near 1, as on a machine that is not overloaded): then the charge is
/// within 10% of it. On an overloaded machine the CPU it got is not known from here, only
/// bounded: no more than the wall-clock time, and at least the thread's share of it over the
/// whole run (a thread that spins gets no less than one that also waits).
fn assert_charged_the_spinning(charged: f64, spun: f64, on_cpu: f64) {
    let said =
        format!("charged {charged:.4} s of guest CPU for spinning {spun:.4} s ({on_cpu:.2} of the time on a CPU)");
    if on_cpu >= 0.9 {
        assert!((charged - spun).abs() <= spun * 0.10, "{said}");
    } else {
        assert!(charged <= spun * 1.10 && charged >= spun * on_cpu * 0.9, "{said}");
    }
}

// The client, the proxy and the origin all run on this test's thread.
#[tokio::test(flavor = "current_thread")]
async fn a_cpu_bound_filter_is_charged_its_cpu_time_within_ten_percent() {
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
    // Each call also costs what the host does in it for the guest (its host calls, the heads
    // lent to it), which a debug build makes large: a first round of calls that do not spin
    // measures it, and what the second round was charged beyond that is the spinning alone.
    let baseline = {
        send_spinning(&proxy, 1000, Duration::ZERO).await;
        let report = usage(admin, "").await;
        let tenant = tenant_usage(&report, "metered").unwrap_or_else(|| panic!("{report}"));
        route_usage(tenant, "burn")["filters"][0]["guest_cpu_seconds"].as_f64().unwrap()
    };
    let on_cpu = send_spinning(&proxy, 1000, SPIN).await;
    let spun = 1000.0 * SPIN.as_secs_f64();

    let report = usage(admin, "").await;
    let tenant = tenant_usage(&report, "metered").unwrap_or_else(|| panic!("{report}"));
    let route = route_usage(tenant, "burn");
    assert_eq!(route["requests"], 2000, "{route}");
    let filter = &route["filters"][0];
    assert_eq!(filter["filter"], "cpu");
    // The SDK's default phases: a request-head and a response-head call per request (the
    // response call does no work of its own).
    assert_eq!(filter["calls"], 4000, "{filter}");
    assert_eq!(filter["instances_started"], 1, "{filter}");
    assert!(filter["memory_peak_bytes"].as_u64().unwrap() >= 1 << 20, "{filter}");
    assert!(filter["memory_byte_seconds"].as_f64().unwrap() > 0.0, "{filter}");
    // Both rounds had the calls' own cost; the second one spun on top.
    let charged = filter["guest_cpu_seconds"].as_f64().unwrap() - 2.0 * baseline;
    assert_charged_the_spinning(charged, spun, on_cpu);
    // The tenant's totals are its routes' and filters' together.
    assert_eq!(tenant["usage"]["calls"], 4000);
    assert_eq!(tenant["usage"]["requests"], 2000);

    let metrics = admin_text(admin, "/metrics").await;
    let labels = ["tenant=\"metered\"", "route=\"burn\"", "filter=\"cpu\""];
    let exported =
        series(&metrics, "sluice_tenant_guest_cpu_seconds_total", &labels).expect("guest CPU series") - 2.0 * baseline;
    assert!((exported - charged).abs() <= charged * 0.01, "/metrics says {exported:.4} s, the report {charged:.4} s");
    assert_eq!(series(&metrics, "sluice_tenant_filter_calls_total", &labels), Some(4000.0));
    assert_eq!(series(&metrics, "sluice_tenant_requests_total", &labels[..2]), Some(2000.0));
}

/// Two tenants' routes; `acme_route_keys` go at the end of acme's route.
fn two_tenants(origin: &Origin, probe: &std::path::Path, acme_route_keys: &str) -> String {
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
{acme_route_keys}
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
