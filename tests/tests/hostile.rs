//! Hostile filters fail only their own request, by their policy, with a log line naming route,
//! filter and request id, while requests on other routes keep succeeding.

use std::sync::Arc;

use http::{Request, StatusCode};
use sluice_http::body;
use sluice_tests::{Collected, Origin, TestProxy, capture_logs, get, http1_client, logged_failure, plugin, send};

async fn hostile_proxy(origin: &Origin) -> TestProxy {
    capture_logs();
    let route = |name: &str, mode: &str, extra: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\ntenant = \"attacker\"\nupstream = \"app\"\n\
             filters = [{{ plugin = \"hostile\", config = {{ mode = \"{mode}\", upstream = \"secret\" }}{extra} }}]\n"
        )
    };
    let routes = [
        route("loop", "loop", ""),
        route("memory", "memory", ""),
        route("trap", "trap", ""),
        route("bad-header", "bad-header", ""),
        route("callout", "callout", ""),
        route("loop-open", "loop", ", on_error = \"fail-open\""),
        "[[route]]\nname = \"callout-granted\"\npath_prefix = \"/callout-granted\"\ntenant = \"victim\"\nupstream = \"app\"\n\
         filters = [{ plugin = \"hostile\", config = { mode = \"callout\", upstream = \"secret\" } }]\n"
            .to_owned(),
        "[[route]]\nname = \"work\"\npath_prefix = \"/work\"\ntenant = \"victim\"\nupstream = \"app\"\n\
         filters = [{ plugin = \"hostile\", config = { mode = \"work\", work_ms = 10, upstream = \"secret\" } }]\n"
            .to_owned(),
        "[[route]]\nname = \"good\"\npath_prefix = \"/good\"\ntenant = \"victim\"\nupstream = \"app\"\n\
         filters = [{ plugin = \"hostile\", config = { mode = \"none\" } }]\n"
            .to_owned(),
    ];
    TestProxy::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[upstream.secret]
servers = [{{ addr = "{origin}" }}]
[tenant.attacker]
memory_mb = 16
cpu_ms_per_call = 20
[tenant.victim]
callouts = ["secret"]
[plugin.hostile]
source = "{hostile}"
{routes}
"#,
        origin = origin.addr,
        hostile = plugin("tests/plugins/hostile").display(),
        routes = routes.concat(),
    ))
    .await
}

fn request_id(response: &Collected) -> String {
    response.headers["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_filters_fail_only_their_own_requests() {
    let origin = Origin::echo("app").await;
    let proxy = Arc::new(hostile_proxy(&origin).await);

    // Good traffic runs alongside the attacks for their whole duration.
    let good = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                statuses.push(get(&proxy, "a", "/good").await.status);
            }
            statuses
        })
    };
    let attacks = ["/loop", "/memory", "/trap"].map(|path| {
        let proxy = proxy.clone();
        tokio::spawn(async move { get(&proxy, "a", path).await })
    });

    for (attack, expected_kind) in attacks.into_iter().zip(["cpu_limit", "memory_limit", "trap"]) {
        let response = attack.await.unwrap();
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR, "{expected_kind}: {}", response.text());
        let id = request_id(&response);
        assert!(response.text().contains(&id));
        let line = logged_failure(&id);
        assert_eq!(line["error.kind"], expected_kind, "{line}");
        assert_eq!(line["filter"], "hostile");
        assert_eq!(line["tenant"], "attacker");
        assert_eq!(line["policy"], "fail-closed");
        assert!(line["route"].is_string());
    }
    let good = good.await.unwrap();
    assert!(good.iter().all(|status| *status == StatusCode::OK), "{good:?}");

    // The trap's log line carries the guest's panic message and a backtrace with function names.
    let trap = get(&proxy, "a", "/trap").await;
    let line = logged_failure(&request_id(&trap));
    assert!(line["guest_message"].as_str().unwrap().contains("hostile filter gave up on purpose"), "{line}");
    assert!(line["message"].as_str().unwrap().contains("on_request"), "{line}");

    // Broken instances were thrown away: the routes still answer, and fail again the same way.
    assert_eq!(get(&proxy, "a", "/loop").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK);
}

#[tokio::test]
async fn fail_open_skips_the_failing_filter() {
    let origin = Origin::echo("app").await;
    let proxy = hostile_proxy(&origin).await;
    let response = get(&proxy, "a", "/loop-open").await;
    assert_eq!(response.status, StatusCode::OK);
    let line = logged_failure(&request_id(&response));
    assert_eq!(line["policy"], "fail-open");
    assert_eq!(line["error.kind"], "cpu_limit");
}

#[tokio::test]
async fn invalid_headers_from_a_guest_are_refused() {
    let origin = Origin::echo("app").await;
    let proxy = hostile_proxy(&origin).await;
    let response = get(&proxy, "a", "/bad-header").await;
    assert_eq!(response.status, StatusCode::OK);
    let echo = response.echo();
    assert_eq!(echo.header("x-refused-name").as_deref(), Some("invalid header name \"bad header name\""));
    assert_eq!(echo.header("x-refused-value").as_deref(), Some("invalid value for header x-bad-value"));
    assert_eq!(echo.header("x-refused-framing").as_deref(), Some("header content-length is managed by the host"));
    assert_eq!(echo.header("x-bad-value"), None);
}

#[tokio::test]
async fn callouts_to_upstreams_not_granted_are_refused() {
    let origin = Origin::echo("app").await;
    let proxy = hostile_proxy(&origin).await;
    let response = get(&proxy, "a", "/callout").await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert!(
        response.text().contains("NotGranted(\"tenant attacker may not call upstream \\\"secret\\\"\")"),
        "{}",
        response.text()
    );
    // The origin never saw the callout.
    assert_eq!(origin.connections_accepted(), 0);
}

#[tokio::test]
async fn callouts_to_granted_upstreams_are_answered() {
    let origin = Origin::echo("app").await;
    let proxy = hostile_proxy(&origin).await;
    let response = get(&proxy, "a", "/callout-granted").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    // The filter answered with the upstream's reply to its callout.
    assert_eq!(response.echo().uri(), "/secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_but_legitimate_call_moves_to_the_long_call_threads_and_its_callouts_are_answered() {
    let origin = Origin::echo("app").await;
    let proxy = hostile_proxy(&origin).await;
    // Each call computes for 10 ms, past the point where a call becomes a long call, then calls
    // out: the callout is sent from the proxy's workers and answered.
    for _ in 0..3 {
        let response = get(&proxy, "a", "/work").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.echo().uri(), "/secret");
    }
    // The upstream's pooled connections serve short calls' callouts and proxied requests alike.
    let response = get(&proxy, "a", "/callout-granted").await;
    assert_eq!(response.echo().uri(), "/secret");
    assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK);

    let admin = proxy.admin.unwrap();
    let metrics = send(&http1_client(), Request::get(format!("http://{admin}/metrics")).body(body::empty()).unwrap())
        .await
        .text();
    let long_calls = "sluice_filter_long_calls_total{route=\"work\",filter=\"hostile\",tenant=\"victim\"} 3";
    assert!(metrics.contains(long_calls), "{metrics}");
    assert!(!metrics.contains("sluice_filter_long_calls_total{route=\"good\""), "short calls stay on the workers");
}

#[tokio::test]
async fn tenants_may_use_only_the_plugins_they_were_granted() {
    let origin = Origin::echo("app").await;
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.hostile]
source = "{hostile}"
[plugin.hello]
source = "{hello}"
[tenant.narrow]
plugins = ["hello"]
[[route]]
upstream = "app"
tenant = "narrow"
filters = [{{ plugin = "hello" }}, {{ plugin = "hostile", config = {{ mode = "none" }} }}]
"#,
        origin = origin.addr,
        hostile = plugin("tests/plugins/hostile").display(),
        hello = plugin("examples/hello-filter").display(),
    );
    let error =
        sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config).expect_err("the grant is enforced");
    assert_eq!(error.key, "route[0].filters[1].plugin");
    assert!(error.message.contains("tenant narrow may not use plugin \"hostile\""), "{error}");
    let unknown = config.replace("plugins = [\"hello\"]", "plugins = [\"nope\"]");
    let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &unknown)
        .expect_err("an unknown plugin in a grant");
    assert_eq!(error.key, "tenant.narrow.plugins[0]");
}

#[tokio::test]
async fn key_value_namespaces_keep_tenants_apart() {
    let origin = Origin::echo("app").await;
    // Both tenants' filters use the very same keys; each tenant has its own namespace.
    let route = |tenant: &str| {
        format!(
            "[[route]]\npath_prefix = \"/{tenant}\"\ntenant = \"{tenant}\"\nupstream = \"app\"\n\
             filters = [{{ plugin = \"rate_limit\", config = {{ limit = 1, period = \"1h\", key = \"header:x-user\", scope = \"shared\" }} }}]\n"
        )
    };
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.rate_limit]\nsource = \"{limiter}\"\n[tenant.a]\n[tenant.b]\n{a}{b}",
        origin = origin.addr,
        limiter = plugin("plugins/rate-limit").display(),
        a = route("a"),
        b = route("b"),
    ))
    .await;
    let ask = |path: &'static str| {
        let request = http::Request::get(proxy.url(path))
            .header("host", "a")
            .header("x-user", "alice")
            .body(sluice_http::body::empty())
            .unwrap();
        async move { sluice_tests::send(&sluice_tests::http1_client(), request).await.status }
    };
    assert_eq!(ask("/a").await, StatusCode::OK);
    assert_eq!(ask("/a").await, StatusCode::TOO_MANY_REQUESTS, "tenant a used up its limit");
    assert_eq!(ask("/b").await, StatusCode::OK, "tenant b's counter under the same key is its own");
}

#[tokio::test]
async fn a_tenant_over_its_cpu_rate_is_paused_not_failed_and_its_call_limit_still_holds() {
    capture_logs();
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.hostile]
source = "{hostile}"
[tenant.slow]
cpu_ms_per_call = 30
cpu_ms_per_second = 50
[[route]]
path_prefix = "/loop"
tenant = "slow"
upstream = "app"
filters = [{{ plugin = "hostile", config = {{ mode = "loop" }} }}]
[[route]]
path_prefix = "/ok"
tenant = "slow"
upstream = "app"
filters = [{{ plugin = "hostile", config = {{ mode = "none" }} }}]
"#,
        origin = origin.addr,
        hostile = plugin("tests/plugins/hostile").display(),
    ))
    .await;
    // The runaway call is paused again and again past the rate, and still ends at its 30 ms of
    // guest time with the CPU-limit failure.
    let looped = get(&proxy, "a", "/loop").await;
    assert_eq!(looped.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(logged_failure(&request_id(&looped))["error.kind"], "cpu_limit");
    // Calls that stay within their means are unaffected.
    assert_eq!(get(&proxy, "a", "/ok").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_guest_reaching_for_files_and_environment_through_wasi_gets_neither() {
    capture_logs();
    let origin = Origin::echo("app").await;
    let probe = plugin("tests/plugins/wasi-probe");
    // The component really imports WASI: the preview 1 adapter turned its calls into WASI 0.2.
    let bytes = std::fs::read(&probe).unwrap();
    let loaded =
        sluice_runtime::Plugin::load(&sluice_tests::filter_runtime(), "wasi-probe", &bytes).expect("the probe loads");
    assert!(loaded.capabilities().contains(&"wasi".to_owned()), "{:?}", loaded.capabilities());

    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.probe]\nsource = \"{probe}\"\n[tenant.a]\n\
         [[route]]\npath_prefix = \"/probe\"\ntenant = \"a\"\nupstream = \"app\"\nfilters = [{{ plugin = \"probe\" }}]\n\
         [[route]]\nupstream = \"app\"\n",
        origin = origin.addr,
        probe = probe.display(),
    ))
    .await;
    let response = get(&proxy, "a", "/probe").await;
    assert_eq!(response.status, StatusCode::OK);
    // errno 8 is EBADF: descriptor 3, where a preopened directory would be, does not exist, so
    // nothing can be opened relative to it; and the environment is empty.
    assert_eq!(response.text(), "prestat=8 open=8 environment=0");
    assert_eq!(get(&proxy, "b", "/other").await.status, StatusCode::OK, "other routes unaffected");
}
