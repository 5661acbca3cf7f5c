//! Shadow filters: a new version decides on a copy of live traffic without effect, its
//! disagreements with the real filter counted exactly; a shadow that traps or loops fails no
//! request; promoting it keeps its warm instance.

use std::time::Duration;

use http::Request;
use serde_json::Value;
use sluice::config::Snapshot;
use sluice::server::Server;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, http1_client, plugin, send};

/// A proxy whose `shop` route runs `filter` (an entry of `filters`, with its `shadow`), with
/// `sections` added to the file.
fn config(origin: &Origin, filter: &str, sections: &str) -> String {
    format!(
        r#"
[server]
watch = false
[admin]
bind = "127.0.0.1:0"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.probe]
source = "{probe}"
[plugin.hostile]
source = "{hostile}"
{sections}
[[route]]
name = "shop"
upstream = "app"
filters = [{filter}]
"#,
        origin = origin.addr,
        probe = plugin("tests/plugins/probe").display(),
        hostile = plugin("tests/plugins/hostile").display(),
    )
}

async fn shadows(admin: std::net::SocketAddr) -> Value {
    let text = sluice_tests::admin_text(admin, "/shadows").await;
    let report: Value = serde_json::from_str(&text).expect("JSON from /shadows");
    report["shadows"][0].clone()
}

/// Waits until the shadow has compared `steps` phases; past a generous deadline the test fails
/// with what it saw.
async fn settled(admin: std::net::SocketAddr, steps: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    loop {
        ticks.tick().await;
        let shadow = shadows(admin).await;
        let disagreed: u64 =
            shadow["disagreed"].as_object().map_or(0, |kinds| kinds.values().filter_map(Value::as_u64).sum());
        let seen = shadow["agreed"].as_u64().unwrap_or(0) + disagreed;
        if seen >= steps {
            return shadow;
        }
        assert!(tokio::time::Instant::now() < deadline, "the shadow never caught up: {shadow}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_blocks_what_the_filter_lets_through_changes_nothing_and_is_counted_exactly() {
    let origin = Origin::echo("app").await;
    let filter = r#"{ plugin = "probe", config = { tag = "real" }, shadow = { plugin = "probe", config = { tag = "strict", deny_path = "/" } } }"#;
    let proxy = TestProxy::start(&config(&origin, filter, "")).await;
    let admin = proxy.admin.expect("admin listener");
    const REQUESTS: u64 = 25;
    for _ in 0..REQUESTS {
        let request = Request::get(proxy.url("/")).header("host", "shop.test").body(body::empty()).unwrap();
        let answer = send(&http1_client(), request).await;
        // The real filter decides: through, with its headers and none of the shadow's.
        assert_eq!(answer.status, 200);
        let echo = answer.echo();
        assert_eq!(echo.header_values("x-chain"), ["real"]);
        assert!(echo.header("x-strict-instance-requests").is_none(), "the shadow's change reached the origin");
        assert_eq!(answer.headers.get_all("x-chain-response").iter().count(), 1);
    }
    // Per request: the request phase disagrees on the decision (403 against continue), the
    // response phase on the headers (each appends its own tag).
    let shadow = settled(admin, 2 * REQUESTS).await;
    assert_eq!(shadow["disagreed"]["decision"], REQUESTS, "{shadow}");
    assert_eq!(shadow["disagreed"]["headers"], REQUESTS, "{shadow}");
    assert_eq!(shadow["agreed"], 0, "{shadow}");
    assert_eq!((shadow["skipped"].as_u64(), shadow["failed"].as_u64()), (Some(0), Some(0)), "{shadow}");
    assert_eq!(shadow["place"], "filters[0].shadow");
    let recent = &shadow["recent_disagreements"][0];
    assert!(recent["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{recent}");

    let metrics = sluice_tests::admin_text(admin, "/metrics").await;
    let decision = format!(
        "sluice_filter_shadow_comparisons_total{{route=\"shop\",filter=\"filters[0].shadow\",shadow=\"probe\",result=\"disagree\",disagreement=\"decision\"}} {REQUESTS}"
    );
    assert!(metrics.contains(&decision), "{metrics}");
    let routes: Value = serde_json::from_str(&sluice_tests::admin_text(admin, "/routes").await).unwrap();
    assert_eq!(routes["routes"][0]["filters"][0]["shadow"]["config"]["deny_path"], "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_traps_or_loops_fails_no_request() {
    for mode in ["trap", "loop"] {
        let origin = Origin::echo("app").await;
        let filter = format!(
            r#"{{ plugin = "probe", config = {{ tag = "real" }}, shadow = {{ plugin = "hostile", config = {{ mode = "{mode}" }} }} }}"#
        );
        let tenant = "[tenant.default]\ncpu_ms_per_call = 20\n";
        let proxy = TestProxy::start(&config(&origin, &filter, tenant)).await;
        for _ in 0..10 {
            let request = Request::get(proxy.url("/")).header("host", "shop.test").body(body::empty()).unwrap();
            let answer = send(&http1_client(), request).await;
            assert_eq!(answer.status, 200, "{mode}: a failing shadow failed a request");
            assert_eq!(answer.echo().header_values("x-chain"), ["real"]);
        }
        let admin = proxy.admin.expect("admin listener");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let shadow = loop {
            ticks.tick().await;
            let shadow = shadows(admin).await;
            if shadow["failed"].as_u64().unwrap_or(0) >= 1 {
                break shadow;
            }
            assert!(tokio::time::Instant::now() < deadline, "{mode}: the failure was never counted: {shadow}");
        };
        // It rests after failing: the requests that came meanwhile were not shadowed.
        assert!(shadow["skipped"].as_u64().unwrap_or(0) >= 1, "{mode}: {shadow}");
        assert_eq!(shadow["agreed"], 0, "{mode}: {shadow}");
    }
}

/// Waits until the shadow's instance is back in its pool, warm and idle.
async fn shadow_instance_back(admin: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    loop {
        ticks.tick().await;
        let routes: Value = serde_json::from_str(&sluice_tests::admin_text(admin, "/routes").await).unwrap();
        let instances = routes["routes"][0]["filters"][0]["shadow"]["instances"].clone();
        if instances["busy"] == 0 && instances["warm"] == 1 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the shadow's instance never came back: {instances}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_shadow_keeps_its_warm_instance() {
    let origin = Origin::echo("app").await;
    let folder =
        sluice_tests::repo_root().join("target/test-configs").join(format!("shadow-promote-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("test folder");
    let path = folder.join("sluice.toml");
    let before =
        r#"{ plugin = "probe", config = { tag = "old" }, shadow = { plugin = "probe", config = { tag = "next" } } }"#;
    std::fs::write(&path, config(&origin, before, "")).expect("write config");
    let server =
        Server::start(Snapshot::from_file(&sluice_tests::services(), &path).expect("config")).await.expect("start");
    let address = server.listener_addrs()[0].1;
    let admin = server.admin_addr().expect("admin listener");
    let get = || async move {
        let request =
            Request::get(format!("http://{address}/")).header("host", "shop.test").body(body::empty()).unwrap();
        send(&http1_client(), request).await
    };
    for served in 1..=3 {
        assert_eq!(get().await.status, 200);
        // One request at a time through the shadow, so that one instance sees all three.
        settled(admin, 2 * served).await;
        shadow_instance_back(admin).await;
    }

    // The shadow's plugin and config become the filter's: its warm instance serves on, having
    // seen the three requests it shadowed.
    std::fs::write(&path, config(&origin, r#"{ plugin = "probe", config = { tag = "next" } }"#, "")).expect("promote");
    server.reloader().reload_from_source().await.expect("the promotion loads");
    let answer = get().await;
    assert_eq!(answer.echo().header_values("x-chain"), ["next"]);
    assert_eq!(answer.echo().header("x-next-instance-requests").as_deref(), Some("4"));
    let report: Value = serde_json::from_str(&sluice_tests::admin_text(admin, "/shadows").await).unwrap();
    assert_eq!(report["shadows"].as_array().map(Vec::len), Some(0), "a promoted shadow is no longer listed");
    server.shutdown_within(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_shadow_share_out_of_range_is_refused_with_its_key() {
    let origin = Origin::echo("app").await;
    let filter = r#"{ plugin = "probe", config = { tag = "real" }, shadow = { plugin = "probe", percent = 0 } }"#;
    let error = Snapshot::from_toml(&sluice_tests::services(), &config(&origin, filter, "")).expect_err("refused");
    assert_eq!(error.key, "route[0].filters[0].shadow.percent");
    let filter = r#"{ plugin = "probe", shadow = { plugin = "nothing" } }"#;
    let error = Snapshot::from_toml(&sluice_tests::services(), &config(&origin, filter, "")).expect_err("refused");
    assert!(error.message.contains("no plugin named \"nothing\""), "{error}");
}
