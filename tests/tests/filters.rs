//! Filter chains through a running proxy, with real components built from this repository.

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, get, http1_client, plugin, send};

/// An origin that answers with the request body it got, in three chunks.
async fn body_echo_origin() -> Origin {
    Origin::start(|request| {
        Box::pin(async move {
            let status = request.headers().get("x-want-status").and_then(|v| v.to_str().ok()?.parse().ok());
            let received = request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
            let text = if received.is_empty() { bytes::Bytes::from_static(b"one two three") } else { received };
            let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, sluice_http::body::BoxError>> = text
                .chunks(text.len().div_ceil(3).max(1))
                .map(|chunk| Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(chunk))))
                .collect();
            let mut response =
                Response::new(body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(chunks))));
            *response.status_mut() = StatusCode::from_u16(status.unwrap_or(200)).unwrap();
            response
        })
    })
    .await
}

/// Config with the probe filter (`tests/plugins/probe` in Rust or `tests/plugins/go-probe`, its Go
/// twin) as plugin `probe`.
fn probe_config(origin: &Origin, probe: &str, routes: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.probe]
source = "{probe}"
{routes}
"#,
        origin = origin.addr,
        probe = plugin(probe).display(),
    )
}

/// The probe tests, run against the Rust probe and its Go twin: the same chain semantics, phase
/// by phase, whichever language a filter is written in.
macro_rules! with_each_probe {
    ($($test:ident),* $(,)?) => {
        mod rust {
            $(#[tokio::test]
            async fn $test() {
                super::$test("tests/plugins/probe").await
            })*
        }
        mod go {
            $(#[tokio::test]
            async fn $test() {
                super::$test("tests/plugins/go-probe").await
            })*
        }
    };
}

with_each_probe!(
    request_phase_runs_in_order_and_response_phase_in_reverse,
    a_local_response_ends_the_chain_before_the_upstream,
    a_response_phase_can_replace_the_response,
    filters_can_rewrite_the_path,
    request_bodies_are_buffered_for_filters_that_ask,
    response_bodies_stream_chunk_by_chunk_through_filters,
    buffered_response_bodies_let_filters_change_the_head,
    one_plugin_serves_many_routes_with_their_own_configs,
    warm_instances_are_reused_unless_requests_are_isolated,
    key_value_state_is_namespaced_per_tenant,
    a_config_the_filter_refuses_stops_the_start_naming_route_and_filter,
    unknown_config_keys_are_refused_by_the_sdk
);

async fn request_phase_runs_in_order_and_response_phase_in_reverse(probe: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        r#"
[[route]]
upstream = "app"
filters = [
  { plugin = "probe", config = { tag = "first" } },
  { plugin = "probe", config = { tag = "second" } },
]
"#,
    ))
    .await;
    let response = get(&proxy, "a", "/").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.echo().header_values("x-chain"), vec!["first", "second"]);
    let order: Vec<&str> = response.headers.get_all("x-chain-response").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(order, vec!["second", "first"]);
    // In the response phase the request head can be read but not changed.
    assert_eq!(response.headers["x-first-saw-request-readonly"], "true");
}

async fn a_local_response_ends_the_chain_before_the_upstream(probe: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        r#"
[[route]]
upstream = "app"
filters = [
  { plugin = "probe", config = { tag = "guard", deny_path = "/admin" } },
  { plugin = "probe", config = { tag = "never", deny_path = "/admin" } },
]
"#,
    ))
    .await;
    let response = get(&proxy, "a", "/admin").await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(response.text(), "denied by guard\n");
    assert!(response.headers.contains_key("x-request-id"));
    assert_eq!(origin.connections_accepted(), 0, "the upstream saw a denied request");

    assert_eq!(get(&proxy, "a", "/public").await.status, 200);
}

async fn a_response_phase_can_replace_the_response(probe: &str) {
    let origin = body_echo_origin().await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        "[[route]]\nupstream = \"app\"\nfilters = [{ plugin = \"probe\", config = { tag = \"p\", replace_status = 503 } }]\n",
    ))
    .await;
    let request = Request::get(proxy.url("/")).header("x-want-status", "503").body(body::empty()).unwrap();
    let response = send(&http1_client(), request).await;
    assert_eq!(response.status.as_u16(), 418);
    assert_eq!(response.text(), "replaced by p\n");
}

async fn filters_can_rewrite_the_path(probe: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        "[[route]]\nupstream = \"app\"\nfilters = [{ plugin = \"probe\", config = { tag = \"p\", rewrite_path = \"/old\" } }]\n",
    ))
    .await;
    assert_eq!(get(&proxy, "a", "/old?q=1").await.echo().uri(), "/rewritten");
}

async fn request_bodies_are_buffered_for_filters_that_ask(probe: &str) {
    let origin = body_echo_origin().await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        r#"
[[route]]
upstream = "app"
max_filter_body_bytes = 64
filters = [{ plugin = "probe", config = { tag = "p", upper_request_body = true, deny_body = "DROP TABLE" } }]
"#,
    ))
    .await;
    let client = http1_client();
    let post = |text: &'static str| Request::post(proxy.url("/")).body(sluice_tests::full(text)).unwrap();

    let response = send(&client, post("hello filters")).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "HELLO FILTERS");

    let response = send(&client, post("x DROP TABLE y")).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(response.text(), "body refused by p\n");

    // Past the filter body limit the client gets 413.
    let response = send(&client, post("this body is longer than sixty-four bytes, which is the limit set")).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
}

async fn response_bodies_stream_chunk_by_chunk_through_filters(probe: &str) {
    let origin = body_echo_origin().await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        "[[route]]\nupstream = \"app\"\nfilters = [{ plugin = \"probe\", config = { tag = \"p\", upper_response_body = true } }]\n",
    ))
    .await;
    let response = get(&proxy, "a", "/").await;
    assert_eq!(response.status, 200);
    // The origin sent three chunks; the filter counted them and flushed at the end.
    assert_eq!(response.text(), "ONE TWO THREE[3 chunks]");
}

async fn buffered_response_bodies_let_filters_change_the_head(probe: &str) {
    let origin = body_echo_origin().await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        "[[route]]\nupstream = \"app\"\nfilters = [{ plugin = \"probe\", config = { tag = \"p\", append_response_body = \"!\" } }]\n",
    ))
    .await;
    let response = get(&proxy, "a", "/").await;
    assert_eq!(response.text(), "one two three!");
    assert_eq!(response.headers["x-buffered"], "yes");
    assert_eq!(response.headers["content-length"], "14");
}

async fn one_plugin_serves_many_routes_with_their_own_configs(probe: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        r#"
[[route]]
path_prefix = "/a"
upstream = "app"
filters = [{ plugin = "probe", config = { tag = "alpha" } }]
[[route]]
path_prefix = "/b"
upstream = "app"
filters = [{ plugin = "probe", config = { tag = "beta", deny_path = "/b/no" } }]
"#,
    ))
    .await;
    assert_eq!(get(&proxy, "a", "/a").await.echo().header_values("x-chain"), vec!["alpha"]);
    assert_eq!(get(&proxy, "a", "/b").await.echo().header_values("x-chain"), vec!["beta"]);
    assert_eq!(get(&proxy, "a", "/b/no").await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&proxy, "a", "/a/no").await.status, 200);
}

async fn warm_instances_are_reused_unless_requests_are_isolated(probe: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        r#"
[[route]]
path_prefix = "/warm"
upstream = "app"
filters = [{ plugin = "probe", config = { tag = "warm" } }]
[[route]]
path_prefix = "/isolated"
upstream = "app"
filters = [{ plugin = "probe", config = { tag = "isolated" }, isolation = "request" }]
"#,
    ))
    .await;
    let mut warm = Vec::new();
    let mut isolated = Vec::new();
    for _ in 0..3 {
        warm.push(get(&proxy, "a", "/warm").await.echo().header("x-warm-instance-requests").unwrap());
        isolated.push(get(&proxy, "a", "/isolated").await.echo().header("x-isolated-instance-requests").unwrap());
    }
    assert_eq!(warm, vec!["1", "2", "3"]);
    assert_eq!(isolated, vec!["1", "1", "1"]);
}

async fn key_value_state_is_namespaced_per_tenant(probe: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&probe_config(
        &origin,
        probe,
        r#"
[admin]
bind = "127.0.0.1:0"
[tenant.acme]
[tenant.globex]
[[route]]
path_prefix = "/acme"
tenant = "acme"
upstream = "app"
filters = [{ plugin = "probe", config = { tag = "a", count = true } }]
[[route]]
path_prefix = "/globex"
tenant = "globex"
upstream = "app"
filters = [{ plugin = "probe", config = { tag = "g", count = true } }]
"#,
    ))
    .await;
    let count = |path: &'static str| {
        let proxy = &proxy;
        async move { get(proxy, "a", path).await.echo().header("x-count").unwrap() }
    };
    assert_eq!(count("/acme").await, "1");
    assert_eq!(count("/acme").await, "2");
    assert_eq!(count("/globex").await, "1");
    assert_eq!(count("/acme").await, "3");

    // What filters count through the metrics host call shows up on /metrics, by tenant.
    let admin = proxy.admin.unwrap();
    let metrics = send(&http1_client(), Request::get(format!("http://{admin}/metrics")).body(body::empty()).unwrap())
        .await
        .text();
    assert!(
        metrics.contains(
            "sluice_filter_counter_total{tenant=\"acme\",plugin=\"probe\",name=\"probe_requests\",tag=\"a\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_hello_filter_example_runs() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [plugin.hello]\nsource = \"{}\"\n[[route]]\nupstream = \"app\"\nfilters = [{{ plugin = \"hello\" }}]\n",
        origin.addr,
        plugin("examples/hello-filter").display()
    ))
    .await;
    assert_eq!(get(&proxy, "a", "/").await.echo().header("x-hello").as_deref(), Some("from a Wasm filter"));
}

async fn a_config_the_filter_refuses_stops_the_start_naming_route_and_filter(probe: &str) {
    let origin = Origin::echo("app").await;
    let config = probe_config(
        &origin,
        probe,
        "[[route]]\nname = \"picky\"\nupstream = \"app\"\nfilters = [{ plugin = \"probe\", config = { refuse = true } }]\n",
    );
    let snapshot = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config).unwrap();
    let error = snapshot.prepare_filters().await.expect_err("the filter refuses its config");
    assert_eq!(error.key, "route[0].filters[0]");
    assert!(error.message.contains("filter probe: config refused: refused on purpose"), "{error}");
    assert!(error.position.is_some());
}

async fn unknown_config_keys_are_refused_by_the_sdk(probe: &str) {
    let origin = Origin::echo("app").await;
    let config = probe_config(
        &origin,
        probe,
        "[[route]]\nupstream = \"app\"\nfilters = [{ plugin = \"probe\", config = { colour = \"red\" } }]\n",
    );
    let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config)
        .unwrap()
        .prepare_filters()
        .await
        .unwrap_err();
    // serde says "unknown field `colour`", Go's encoding/json `unknown field "colour"`.
    assert!(error.message.contains("unknown field") && error.message.contains("colour"), "{error}");
}

fn canary_config(origin: &Origin, sticky: bool) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.probe]
source = "{probe}"
[plugin.probe_next]
source = "{probe}"
[[route]]
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "stable" }}, canary = {{ plugin = "probe_next", percent = 30, sticky = {sticky}, config = {{ tag = "canary" }} }} }}]
"#,
        origin = origin.addr,
        probe = plugin("tests/plugins/probe").display(),
    )
}

#[tokio::test]
async fn a_canary_version_takes_its_share_of_requests() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&canary_config(&origin, false)).await;
    let client = http1_client();
    let mut canary = 0;
    for _ in 0..1000 {
        let request = Request::get(proxy.url("/")).header("host", "a").body(body::empty()).unwrap();
        let response = send(&client, request).await;
        match response.headers["x-chain-response"].to_str().unwrap() {
            "canary" => canary += 1,
            "stable" => {}
            other => panic!("unexpected version {other}"),
        }
    }
    // 30% of 1000, within six points (over four standard deviations of a fair split).
    assert!((240..=360).contains(&canary), "{canary} of 1000 went to the canary");
}

#[tokio::test]
async fn a_sticky_canary_keeps_each_client_on_one_version() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&canary_config(&origin, true)).await;
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let response = get(&proxy, "a", "/").await;
        versions.insert(response.headers["x-chain-response"].to_str().unwrap().to_owned());
    }
    assert_eq!(versions.len(), 1, "one client, one version: {versions:?}");
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &canary_config(&origin, true).replace("percent = 30", "percent = 0"),
    )
    .expect_err("0% is no canary");
    assert_eq!(error.key, "route[0].filters[0].canary.percent");
}
