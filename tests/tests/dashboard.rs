//! The dashboard in a real browser (headless Chromium): it loads with no console errors, counts
//! a route's requests as they arrive, pages and searches a thousand routes, shows an origin
//! that stopped as unhealthy and a failed reload's error, purges only with the token, and asks
//! for the read token when reads need one. The screenshots in docs/ come from here
//! (`SLUICE_SCREENSHOT_DIR=docs/images`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Request;
use sluice::config::Snapshot;
use sluice::server::Server;
use sluice_http::body;
use sluice_tests::browser::Browser;
use sluice_tests::{Origin, TestProxy, http1_client, plugin, send};

const WRITE_TOKEN: &str = "dashboard-write-token-0123";
const READ_TOKEN: &str = "dashboard-read-token-0123";

/// `count` plain routes (`route-0000`, ...) on host `bulk.test`, each to `app`.
fn bulk_routes(count: usize) -> String {
    (0..count)
        .map(|index| {
            format!("[[route]]\nname = \"route-{index:04}\"\nhost = [\"bulk.test\"]\npath = \"/r/{index}\"\nupstream = \"app\"\n")
        })
        .collect()
}

/// A proxy in front of `origins` with an admin listener, a `shop` route through the probe
/// filter, a caching `cached` route, and `extra` appended.
fn config(origins: &[&Origin], health_check: &str, extra: &str) -> String {
    let servers: Vec<String> = origins.iter().map(|origin| format!("{{ addr = \"{}\" }}", origin.addr)).collect();
    format!(
        r#"
[server]
watch = false
[admin]
bind = "127.0.0.1:0"
reload_token = "{WRITE_TOKEN}"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{servers}]
{health_check}
[plugin.probe]
source = "{probe}"
[[route]]
name = "shop"
host = ["shop.test"]
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "shop" }}, shadow = {{ plugin = "probe", config = {{ tag = "strict", deny_path = "/" }} }} }}]
[[route]]
name = "cached"
host = ["app.test"]
upstream = "app"
cache = {{}}
{extra}
"#,
        servers = servers.join(", "),
        probe = plugin("tests/plugins/probe").display(),
    )
}

/// An origin whose answers may be cached for ten minutes.
async fn cacheable_origin() -> Origin {
    Origin::start(|_request| {
        Box::pin(async {
            let mut response = http::Response::new(body::full("cacheable"));
            response.headers_mut().insert("cache-control", http::HeaderValue::from_static("max-age=600"));
            response
        })
    })
    .await
}

async fn get(proxy: &TestProxy, host: &str, path: &str) -> sluice_tests::Collected {
    let request = Request::get(proxy.url(path)).header("host", host).body(body::empty()).expect("request");
    send(&http1_client(), request).await
}

fn admin_url(proxy: &TestProxy, fragment: &str) -> String {
    format!("http://{}/{fragment}", proxy.admin.expect("admin listener"))
}

/// Where screenshots go: `SLUICE_SCREENSHOT_DIR` (docs/images for the documentation), else a
/// folder under target/.
fn screenshot_dir() -> PathBuf {
    let dir = match std::env::var_os("SLUICE_SCREENSHOT_DIR") {
        Some(dir) => sluice_tests::repo_root().join(dir),
        None => sluice_tests::repo_root().join("target/tmp").join(format!("screenshots-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn save_screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{name}: not a real screenshot");
    std::fs::write(screenshot_dir().join(name), png).expect("write the screenshot");
}

/// Sends requests to `host` until dropped, so the live figures have something to show.
struct Traffic(Arc<AtomicBool>);

impl Traffic {
    fn start(proxy: &TestProxy, host: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (proxy.url("/"), stop.clone());
        tokio::spawn(async move {
            let client = http1_client();
            while !flag.load(Ordering::Relaxed) {
                let request = Request::get(&url).header("host", host).body(body::empty()).expect("request");
                send(&client, request).await;
            }
        });
        Self(stop)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_loads_clean_counts_requests_live_and_pages_a_thousand_routes() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&[&origin], "", &bulk_routes(1000))).await;
    let browser = Browser::start().await;

    browser.open(&admin_url(&proxy, "")).await;
    browser.wait_for_text("#connection", "that it is live", |text| text.starts_with("live")).await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the dashboard logged errors: {errors:?}");

    browser.open(&admin_url(&proxy, "#/routes")).await;
    let count = browser.wait_for_text("#route-count", "the routes", |text| text.contains("1,002 of 1,002")).await;
    assert!(count.contains("routes"), "{count}");
    let rows = browser.run_script("return document.querySelectorAll('#routes-body tr').length").await;
    assert_eq!(rows, 50, "a page shows 50 routes, not all of them");
    browser.fill("#route-search", "route-0999").await;
    browser.wait_for_text("#route-count", "one match", |text| text.starts_with("1 of 1,002")).await;
    // The page redraws every second: read through the wait, which tries again on a redrawn row.
    browser.wait_for_text("#routes-body tr td a", "the match", |text| text == "route-0999").await;
    browser.fill("#route-search", "shop").await;

    let requests = "#routes-body tr[data-route=\"shop\"] td[data-field=\"requests\"]";
    browser.wait_for_text(requests, "no requests yet", |text| text == "0").await;
    for _ in 0..7 {
        assert_eq!(get(&proxy, "shop.test", "/").await.status, 200);
    }
    browser.wait_for_text(requests, "the seven requests", |text| text == "7").await;

    // The pictures in docs/operations.md, taken with traffic flowing.
    let traffic = Traffic::start(&proxy, "shop.test");
    browser.open(&admin_url(&proxy, "#/")).await;
    let count = |text: &str| text.split_whitespace().next().and_then(|n| n.replace(',', "").parse::<u64>().ok());
    browser.wait_for_text("#overview-requests", "the traffic", |text| count(text).is_some_and(|n| n >= 40)).await;
    browser.wait_for_text("#overview-rps", "a request rate", |text| text != "-" && text != "0.0").await;
    browser.wait_for_text("#overview-latency", "latencies", |text| !text.starts_with('-')).await;
    save_screenshot(&browser, "dashboard-overview.png").await;
    browser.open(&admin_url(&proxy, "#/routes/shop")).await;
    let calls = "#route-filters tr[data-place=\"filters[0]\"] td[data-field=\"calls\"]";
    browser.wait_for_text(calls, "the filter's calls", |text| count(text).is_some_and(|n| n >= 120)).await;
    let p99 = "#route-filters tr[data-place=\"filters[0]\"] td[data-field=\"p99\"]";
    browser.wait_for_text(p99, "the filter's call times", |text| text != "-").await;
    // The shadow blocks what the filter lets through: the page counts its disagreements.
    let disagreed = "#route-shadows tr[data-place=\"filters[0].shadow\"] td[data-field=\"disagreed\"]";
    browser.wait_for_text(disagreed, "the shadow's disagreements", |text| count(text).is_some_and(|n| n > 0)).await;
    save_screenshot(&browser, "dashboard-route.png").await;
    drop(traffic);

    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the dashboard logged errors: {errors:?}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_origin_turns_unhealthy_and_a_failed_reload_shows_its_error() {
    let steady = Origin::echo("steady").await;
    let doomed = Origin::echo("doomed").await;
    let doomed_addr = doomed.addr.to_string();
    let health = "health_check = { path = \"/\", interval = \"200ms\", timeout = \"1s\", rise = 1, fall = 1 }";
    let folder =
        sluice_tests::repo_root().join("target/test-configs").join(format!("dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("test folder");
    let path = folder.join("sluice.toml");
    std::fs::write(&path, config(&[&steady, &doomed], health, "")).expect("write config");
    let server =
        Server::start(Snapshot::from_file(&sluice_tests::services(), &path).expect("config")).await.expect("start");
    let admin = server.admin_addr().expect("admin listener");
    let browser = Browser::start().await;

    browser.open(&format!("http://{admin}/#/upstreams")).await;
    let state = format!("tr[data-server=\"{doomed_addr}\"] td[data-field=\"state\"]");
    browser.wait_for_text(&state, "the server available", |text| text == "available").await;
    drop(doomed);
    browser.wait_for_text(&state, "the stopped server unhealthy", |text| text == "unhealthy").await;
    let steady_state = format!("tr[data-server=\"{}\"] td[data-field=\"state\"]", steady.addr);
    browser.wait_for_text(&steady_state, "the other server still available", |text| text == "available").await;

    // A broken file, reloaded from the page's own form: the overview says why it failed.
    std::fs::write(&path, "[[listener]]\nbind = 7\n").expect("break the config");
    browser.open(&format!("http://{admin}/#/")).await;
    browser.wait_for_text("#connection", "that it is live", |text| text.starts_with("live")).await;
    let hidden = browser.run_script("return document.getElementById('reload-error').hidden").await;
    assert_eq!(hidden, true, "no reload has failed yet");
    browser.fill("#reload-form input[name=\"token\"]", WRITE_TOKEN).await;
    browser.click("#reload-form button[type=\"submit\"]").await;
    browser.wait_for_text("#reload-result", "the refusal", |text| text.contains("422")).await;
    let error = browser.wait_for_text("#reload-error-text", "the reload's error", |text| !text.is_empty()).await;
    assert!(error.contains("listener[0].bind"), "{error}");
    let hidden = browser.run_script("return document.getElementById('reload-error').hidden").await;
    assert_eq!(hidden, false, "the failed reload is shown");
    browser.wait_for_text("#overview-generation", "the running generation kept", |text| text == "1").await;
    browser.close().await;
    server.shutdown_within(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_from_the_page_removes_the_entry_only_with_the_token() {
    let origin = cacheable_origin().await;
    let proxy = TestProxy::start(&config(&[&origin], "", "")).await;
    let cache_status = |response: &sluice_tests::Collected| {
        response.headers.get("cache-status").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
    };
    get(&proxy, "app.test", "/doc/d").await;
    assert!(cache_status(&get(&proxy, "app.test", "/doc/d").await).starts_with("sluice; hit"));

    let browser = Browser::start().await;
    browser.open(&admin_url(&proxy, "#/cache")).await;
    browser.wait_for_text("#cache-entries", "the stored entry", |text| text == "1").await;
    browser.fill("#purge-form input[name=\"value\"]", "app.test/doc/d").await;
    browser.click("#purge-form button[type=\"submit\"]").await;
    let refused = browser.wait_for_text("#purge-result", "the refusal", |text| text.starts_with("refused")).await;
    assert!(refused.contains("401"), "{refused}");
    assert!(cache_status(&get(&proxy, "app.test", "/doc/d").await).starts_with("sluice; hit"), "still cached");

    browser.fill("#purge-form input[name=\"token\"]", "not-the-token-at-all").await;
    browser.click("#purge-form button[type=\"submit\"]").await;
    browser.wait_for_text("#purge-result", "a second refusal", |text| text.starts_with("refused (401)")).await;

    browser.fill("#purge-form input[name=\"token\"]", WRITE_TOKEN).await;
    browser.click("#purge-form button[type=\"submit\"]").await;
    browser.wait_for_text("#purge-result", "the purge", |text| text == "purged 1 entry").await;
    let after = cache_status(&get(&proxy, "app.test", "/doc/d").await);
    assert!(!after.starts_with("sluice; hit"), "the purged entry is gone: {after}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_read_token_the_page_asks_for_it_before_showing_anything() {
    let origin = Origin::echo("app").await;
    let admin_section = format!("[admin]\nbind = \"127.0.0.1:0\"\nread_token = \"{READ_TOKEN}\"\n");
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n{admin_section}[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nname = \"private\"\nupstream = \"app\"\n",
        origin.addr
    ))
    .await;
    let browser = Browser::start().await;
    browser.open(&admin_url(&proxy, "#/routes")).await;
    browser.wait_for_text("#connection", "that it needs the token", |text| text == "token needed").await;
    assert_eq!(browser.run_script("return document.getElementById('read-token').hidden").await, false);
    assert_eq!(browser.run_script("return document.querySelectorAll('#routes-body tr').length").await, 0);

    browser.fill("#read-token input[name=\"token\"]", READ_TOKEN).await;
    browser.click("#read-token button[type=\"submit\"]").await;
    browser.wait_for_text("#connection", "that it is live", |text| text.starts_with("live")).await;
    browser.wait_for_text("#routes-body tr[data-route=\"private\"] td a", "the route", |text| text == "private").await;
    assert_eq!(browser.run_script("return document.getElementById('read-token').hidden").await, true);
    browser.close().await;
}
